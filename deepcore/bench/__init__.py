"""`deepcore bench`: training throughput of every available backend beside PyTorch,
scikit-learn and a plain NumPy loop, gated on correctness, measured in one run.

    deepcore bench                                  # small, mnist, wide; sgd+adam; float32
    deepcore bench --backend numpy,numba --workload mnist --dtype float32,float64
    deepcore bench --sizes 784,1024,10 --batch 256 --json out.json --plot out.png
    deepcore bench --json new.json --compare old.json      # ratios to an earlier run

The CLI calls `add_arguments(parser)` and `run(args)`. Importing this package imports only the
standard library and NumPy; torch, sklearn, matplotlib and rich load when a run needs them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .workloads import DTYPES, OPTIMIZERS, WORKLOADS, Workload, custom_workload, parse_sizes

__all__ = ["add_arguments", "run", "config_from_args", "BenchError", "ANCHOR_NAMES"]

ANCHOR_NAMES = ("torch", "torch-bf16", "jax", "sklearn", "numpy-loop", "loop")


class BenchError(ValueError):
    """A bad benchmark argument; the message says what is accepted."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `deepcore bench` options to `parser`."""
    p = parser.add_argument
    p(
        "--workload",
        "-w",
        default=None,
        help=f"comma-separated workloads: {', '.join(WORKLOADS)} (default: all, or only the "
        "custom one when --sizes is given)",
    )
    p("--sizes", default=None, help="custom MLP layer sizes, e.g. 784,1024,10 (adds 'custom')")
    p(
        "--batch",
        type=int,
        default=None,
        help="batch size of the custom workload (default 128); with no --sizes, overrides the "
        "batch of every selected workload",
    )
    p(
        "--backend",
        "-b",
        default="all",
        help="comma-separated backends (default: every available one)",
    )
    p("--optimizer", "-o", default="sgd,adam", help="sgd (momentum 0.9) and/or adam")
    p("--dtype", "-d", default="float32", help="float32 and/or float64 (comma-separated)")
    p(
        "--anchors",
        default=",".join(ANCHOR_NAMES),
        help="comparison anchors (default: all): torch, torch-bf16 (autocast), jax, sklearn (and "
        "its digits comparison), numpy-loop, loop (deepcore's hand-written loop on each "
        "backend), or 'none'",
    )
    p(
        "--budget",
        type=float,
        default=1.5,
        help="seconds of timed windows per row (default 1.5; slow rows still time 3 windows)",
    )
    p("--windows", type=int, default=5, help="timed windows per row; the median is reported")
    p(
        "--gate-steps",
        type=int,
        default=None,
        help="steps compared against the numpy backend before timing (default 5; wide 3)",
    )
    p("--lr", type=float, default=None, help="learning rate (default: sgd 0.01, adam 0.001)")
    p("--seed", type=int, default=0, help="seed of the weights and synthetic batches")
    p(
        "--threads",
        type=int,
        default=None,
        help="threads for BLAS, deepcore and torch (default: BLAS's own count)",
    )
    p("--gemm-size", type=int, default=1024, help="n of the n^3 matmul giving the GEMM rate")
    p(
        "--no-sklearn-compare",
        action="store_true",
        help="skip the scikit-learn comparison (accuracy and fit time on digits)",
    )
    p(
        "--no-peak",
        action="store_true",
        help="skip measuring the peak FLOP rate (about 0.4 s a row; no %% peak column)",
    )
    p(
        "--bf16",
        action="store_true",
        help="also time the numpy and numba backends with precision bf16 (rows numpy-bf16, "
        "numba-bf16; float32 rows only), gated against the numpy backend's bf16 losses",
    )
    p("--json", metavar="PATH", default=None, help="write rows and machine info as JSON")
    p("--plot", metavar="PATH", default=None, help="write a PNG bar chart (needs matplotlib)")
    p(
        "--compare",
        metavar="OLD.json",
        default=None,
        help="print each row's samples/s over the same row of an earlier --json run and flag "
        "rows more than 10%% slower",
    )
    p("--quiet", "-q", action="store_true", help="no progress lines on stderr")


def _split(text: str | None) -> list[str]:
    return [s.strip().lower() for s in (text or "").split(",") if s.strip()]


def _choose(kind: str, given: list[str], allowed: tuple[str, ...] | list[str]) -> list[str]:
    if not given:
        raise BenchError(f"no {kind} given; expected one or more of {', '.join(allowed)}")
    for g in given:
        if g not in allowed:
            raise BenchError(f"unknown {kind} {g!r}; expected one of {', '.join(allowed)}")
    return list(dict.fromkeys(given))


def _backends(text: str) -> list[str]:
    from ..backends import available_backends

    avail = available_backends()
    if text.strip().lower() in ("all", ""):
        return [name for name, a in avail.items() if a.available]
    names = []
    for spec in _split(text):
        base = spec.partition(":")[0]
        if base not in avail:
            raise BenchError(f"unknown backend {spec!r}; expected one of {', '.join(avail)}")
        if not avail[base].available:
            raise BenchError(f"backend {spec!r} is not available here: {avail[base].reason}")
        names.append(spec)
    return list(dict.fromkeys(names))


def config_from_args(args: argparse.Namespace) -> Any:
    """Validate the arguments into a BenchConfig; BenchError with a clear message otherwise."""
    from .suite import BenchConfig

    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
    workloads: list[Workload] = []
    batch = get("batch")
    if batch is not None and batch < 1:
        raise BenchError(f"--batch must be a positive integer, got {batch}")
    if get("workload"):
        for name in _choose("workload", _split(get("workload")), (*WORKLOADS, "custom")):
            if name != "custom":
                workloads.append(WORKLOADS[name])
    if get("sizes"):
        try:
            sizes = parse_sizes(get("sizes"))
        except ValueError as exc:
            raise BenchError(str(exc)) from None
        workloads.append(custom_workload(sizes, batch or 128))
    elif "custom" in _split(get("workload")):
        raise BenchError("the custom workload needs --sizes, e.g. --sizes 784,1024,10")
    if not workloads:
        workloads = list(WORKLOADS.values())
    if batch is not None and not get("sizes"):
        from dataclasses import replace

        workloads = [replace(w, batch=batch) for w in workloads]
    anchors = _split(get("anchors", ",".join(ANCHOR_NAMES)))
    anchors = [] if anchors == ["none"] else _choose("anchor", anchors, ANCHOR_NAMES)
    for name, v, low in (
        ("--budget", get("budget", 1.5), 0),
        ("--windows", get("windows", 5), 0),
        ("--gemm-size", get("gemm_size", 1024), 0),
    ):
        if not v > low:
            raise BenchError(f"{name} must be positive, got {v}")
    if get("gate_steps") is not None and get("gate_steps") < 1:
        raise BenchError(f"--gate-steps must be at least 1, got {get('gate_steps')}")
    if get("threads") is not None and get("threads") < 1:
        raise BenchError(f"--threads must be at least 1, got {get('threads')}")
    if get("lr") is not None and not get("lr") > 0:
        raise BenchError(f"--lr must be positive, got {get('lr')}")
    return BenchConfig(
        workloads=workloads,
        backends=_backends(get("backend", "all") or "all"),
        optimizers=_choose("optimizer", _split(get("optimizer", "sgd,adam")), OPTIMIZERS),
        dtypes=_choose("dtype", _split(get("dtype", "float32")), DTYPES),
        anchors=anchors,
        budget_s=float(get("budget", 1.5)),
        windows=int(get("windows", 5)),
        gate_steps=get("gate_steps"),
        seed=int(get("seed", 0)),
        gemm_size=int(get("gemm_size", 1024)),
        threads=get("threads"),
        lr=get("lr"),
        peak=not get("no_peak", False),
        bf16=bool(get("bf16", False)),
        sklearn_compare="sklearn" in anchors and not get("no_sklearn_compare", False),
    )


def load_sklearn_compare() -> Any:
    """The scikit-learn comparison module (deepcore.bench.sklearn_compare, or the repository's
    benchmarks/sklearn_compare.py), or None when neither exists."""
    try:
        return importlib.import_module(".sklearn_compare", __name__)
    except ImportError:
        pass
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "sklearn_compare.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("deepcore_benchmarks_sklearn_compare", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sklearn_compare(cfg: Any, result: dict[str, Any], log: Any) -> None:
    if not cfg.sklearn_compare or importlib.util.find_spec("sklearn") is None:
        return
    try:
        module = load_sklearn_compare()
        if module is None or not hasattr(module, "compare"):
            return
        log("scikit-learn comparison (digits) ...")
        result["sklearn_compare"] = list(
            module.compare(dataset="digits", backends=cfg.backends, seed=cfg.seed)
        )
    except Exception as exc:  # someone else's module: report, do not fail the run
        result["notes"].append(f"sklearn comparison failed: {type(exc).__name__}: {exc}")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when every row passed its gate, 1 when one FAILED or errored,
    2 for bad arguments."""
    from . import compare, report
    from .suite import run_suite

    try:
        cfg = config_from_args(args)
        old = compare.load_previous(args.compare) if getattr(args, "compare", None) else None
    except (BenchError, ValueError) as exc:
        print(f"deepcore bench: error: {exc}", file=sys.stderr)
        return 2
    quiet = getattr(args, "quiet", False)

    def log(s: str) -> None:
        if not quiet:
            print(s, file=sys.stderr, flush=True)

    if getattr(args, "plot", None) and importlib.util.find_spec("matplotlib") is None:
        print(
            "deepcore bench: error: --plot needs matplotlib (pip install matplotlib)",
            file=sys.stderr,
        )
        return 2
    result = run_suite(cfg, log)
    _sklearn_compare(cfg, result, log)
    if old is not None:
        result["compare"] = {
            "against": str(args.compare),
            "against_date": old.get("machine", {}).get("date"),
            "threshold": compare.SLOWER,
            "gemm_ratio": compare.gemm_ratio(result, old),
            "rows": compare.compare(result, old),
        }
    report.render(result)
    compare.render(result, sys.stdout)
    if getattr(args, "json", None):
        report.write_json(args.json, result)
        log(f"wrote {args.json}")
    if getattr(args, "plot", None):
        report.plot(args.plot, result)
        log(f"wrote {args.plot}")
    bad = [r for r in result["rows"] if r.get("status") in ("FAILED", "error")]
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m deepcore.bench` until the CLI wires `deepcore bench`."""
    parser = argparse.ArgumentParser(prog="deepcore bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
