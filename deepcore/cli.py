"""The `deepcore` command: train | bench | info | selftest.

Errors a user can cause (bad arguments, missing files, unavailable backends, bad data) end in one
clear line on stderr and exit status 2; only a bug in deepcore shows a traceback.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

from .errors import UsageError

DATASETS = ("digits", "mnist", "csv", "npz", "spirals", "moons")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "gelu")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def _hidden(text: str) -> list[int]:
    if text.strip() in ("", "none"):
        return []
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes like 256,128, got {text!r}"
        ) from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepcore",
        description="Train and benchmark multilayer perceptrons on NumPy, Numba or CuPy.",
    )
    parser.add_argument("--version", action="version", version=f"deepcore {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{train,bench,info,selftest}")

    t = sub.add_parser(
        "train",
        help="train an MLP (default: the bundled digits, auto backend, Adam)",
        description="Train an MLP and report held-out accuracy. With no arguments: the bundled "
        "UCI digits, the fastest available backend, a 256-128 ReLU MLP, Adam.",
    )
    t.add_argument("--dataset", choices=DATASETS, default="digits")
    t.add_argument("--data-dir", help="directory holding the four MNIST IDX files (mnist)")
    t.add_argument("--path", help="CSV or NPZ file of features and a label column (csv, npz)")
    t.add_argument(
        "--label",
        help="label column: name or index (csv: default 'label'; npz: arrays X and y by default)",
    )
    t.add_argument("--hidden", type=_hidden, help="hidden sizes (default: 256,128)")
    t.add_argument("--activation", choices=ACTIVATIONS, help="default: relu")
    t.add_argument("--dropout", type=float, help="dropout after each hidden layer (default: 0.2)")
    t.add_argument(
        "--schedule",
        choices=("cosine", "none"),
        help="learning-rate schedule (default: cosine over --epochs)",
    )
    t.add_argument(
        "--no-standardize",
        dest="standardize",
        action="store_false",
        help="keep raw features (default: scale to zero mean, unit variance using train stats)",
    )
    t.add_argument("--optimizer", choices=OPTIMIZERS, help="default: adam")
    t.add_argument("--lr", type=_positive_float, default=None, help="default: 1e-3 (sgd: 0.05)")
    t.add_argument("--epochs", type=_non_negative_int, default=None, help="default: 40 (mnist: 10)")
    t.add_argument("--batch-size", type=_positive_int, help="default: 32")
    t.add_argument("--seed", type=_non_negative_int, help="default: 0")
    t.add_argument("--backend", default=os.environ.get("DEEPCORE_BACKEND") or "auto")
    t.add_argument("--dtype", choices=("float32", "float64"), help="default: float32")
    t.add_argument(
        "--precision",
        choices=("float32", "bf16", "fp16"),
        default="float32",
        help="bf16 / fp16: GEMMs on bfloat16 / float16 operands, float32 weights and "
        "accumulation (float32 only); fp16 with dynamic loss scaling",
    )
    t.add_argument("--save", metavar="PATH", help="checkpoint after every epoch (safetensors)")
    t.add_argument(
        "--resume",
        metavar="PATH",
        help="continue a saved run up to --epochs in total: model, optimizer, lr, schedule "
        "(re-planned over the new total), dtype, batch size, seed and shuffling come from the "
        "checkpoint, and it keeps saving there unless --save says otherwise",
    )
    t.add_argument("--json", metavar="PATH", help="write the final metrics as a JSON object")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    b = sub.add_parser("bench", help="compare training throughput of every backend and anchors")
    try:
        from . import bench

        bench.add_arguments(b)
    except (ImportError, AttributeError) as exc:  # a broken bench must not break train
        b.set_defaults(_bench_missing=str(exc))

    sub.add_parser("info", help="versions, backends (with reasons), BLAS and threads")

    s = sub.add_parser("selftest", help="check a backend's kernels against NumPy on this machine")
    s.add_argument(
        "--backend", default="auto", help="backend to check (default: auto, the best available)"
    )
    s.add_argument("--json", metavar="PATH", help="write the full report (errors, timings) here")
    s.add_argument("--no-timings", action="store_true", help="skip the GEMM and step timings")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .errors import DeepcoreError

    try:
        if args.command == "train":
            from .cli_train import cmd_train

            return cmd_train(args)
        if args.command == "bench":
            if getattr(args, "_bench_missing", None):
                raise UsageError(f"the benchmark suite cannot load: {args._bench_missing}")
            from . import bench

            return int(bench.run(args) or 0)
        if args.command == "info":
            return cmd_info()
        if args.command == "selftest":
            return cmd_selftest(args)
    except KeyboardInterrupt:
        print("deepcore: interrupted", file=sys.stderr)
        _end_job_if_distributed(130)
        return 130
    except (UsageError, DeepcoreError, ValueError, TypeError, OSError, ImportError) as exc:
        comm = _distributed_comm()
        collective = getattr(exc, "collective", False)  # every rank raised it at one point
        if comm is None or not collective or comm.is_root:  # then rank 0 alone says it
            rank = f" (rank {comm.rank} of {comm.size})" if comm is not None else ""
            print(f"deepcore {args.command}: error{rank}: {_one_line(exc)}", file=sys.stderr)
        if not collective:  # the other ranks may be waiting in a collective: end them
            _end_job_if_distributed(2)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


def _distributed_comm() -> Any:
    """The data-parallel communicator when this is one rank of several, else None."""
    if "deepcore.distributed" not in sys.modules:
        return None
    comm = sys.modules["deepcore.distributed"].active()
    return comm if comm is not None and comm.size > 1 else None


def _end_job_if_distributed(code: int) -> None:
    """One rank failed alone: end every rank (MPI_Abort) rather than leave them waiting."""
    comm = _distributed_comm()
    if comm is not None:
        comm.abort(code)


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return " ".join(text.split())


def _start_distributed() -> Any:
    """Under mpiexec with several processes: the communicator (deepcore.distributed); else None,
    without importing mpi4py."""
    from . import distributed

    if not distributed.launched():
        return None
    comm = distributed.init()
    return comm if comm.size > 1 else None


def _rank_backend(spec: str, local_rank: int) -> str:
    """Each rank on its own GPU: "cupy" (or "auto" resolving to cupy) means cupy:<local_rank>."""
    from .backends import get_backend

    name = get_backend("auto").name if spec == "auto" else spec
    return f"cupy:{local_rank}" if name.partition(":")[0] == "cupy" else name


def cmd_info() -> int:
    import numpy as np

    import deepcore as dc

    print(f"deepcore {_version()}  python {platform.python_version()}  numpy {np.__version__}")
    print(f"platform {platform.platform()}  cpus {os.cpu_count()}")
    print(f"default backend: {dc.backends.current_backend_name()}{_train_pick(dc)}")
    print("backends:")
    for name, av in dc.available_backends().items():
        mark = "available" if av.available else "unavailable"
        first, *more = av.reason.splitlines() or [""]
        print(f"  {name:6s} {mark:11s} {first}")
        for line in more:  # e.g. one line per missing CUDA library
            print(f"{'':21s}{line.strip()}")
    from .backends.numpy import blas_info

    facts = dict(blas_info())
    try:
        from .threads import threading_info

        facts.update(threading_info())
    except ImportError:
        pass
    for k, v in facts.items():
        if not k.startswith("blas"):  # each BLAS library is printed below, kernels included
            print(f"{k}: {v}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        if var in os.environ:
            print(f"{var}={os.environ[var]}")
    _machine_lines()
    for name, av in dc.available_backends().items():
        if av.available and name != "numpy":
            info = dc.get_backend(name).info()
            print(f"{name}:")  # one fact a line; the process-wide ones printed above are left out
            for k, v in info.items():
                if k != "name" and facts.get(k, object()) != v:
                    print(f"  {k}: {v}")
    return 0


def _train_pick(dc: Any) -> str:
    """What `deepcore train` picks when given no --backend (DEEPCORE_BACKEND, else auto)."""
    spec = os.environ.get("DEEPCORE_BACKEND") or "auto"
    try:
        name = dc.get_backend(spec).name
    except Exception as exc:  # noqa: BLE001 - reported, not raised: info must always print
        return f"; `deepcore train` would fail: {_one_line(exc)}"
    return f"; `deepcore train` picks {name}" + (f" ({spec})" if spec != name else "")


def _machine_lines() -> None:
    """CPU, each BLAS's kernels (and a warning when a variable holds them back), peak FLOP/s."""
    from . import machine

    print(f"cpu: {machine.cpu_model()}, {machine.physical_cores()} cores, "
          f"{(machine.cpu_level(machine.cpu_flags()) or 'unknown').upper()}")  # fmt: skip
    for lib in machine.blas_libraries():
        print(f"blas library: {machine.describe_blas(lib)}")
    for var, value in machine.blas_env().items():
        print(f"{var}={value}")
    for line in machine.blas_warnings():
        print(line)
    peak = machine.peak()
    if peak is None:
        print("peak: not measured (needs numba)")
        return
    print(f"peak GFLOP/s: float32 {peak['float32']:.0f}, float64 {peak['float64']:.0f} "
          f"= {peak['formula']}")  # fmt: skip
    if "bf16" in peak:
        print(f"peak GFLOP/s: bf16 {peak['bf16']:.0f} = {peak.get('bf16_formula', '')}")
    for gpu in peak.get("gpu", []):
        print(f"peak GFLOP/s: {gpu['device']} float32 {gpu['float32']:.0f}")


# ---------------------------------------------------------------------- selftest
def cmd_selftest(args: argparse.Namespace) -> int:
    try:
        from .selftest import run_selftest
    except ImportError as exc:
        raise UsageError(f"the self-test is not available: {exc}") from None
    from .backends import get_backend

    if args.json:  # before any work: a report nobody can write is a usage error
        parent = os.path.dirname(os.path.abspath(args.json))
        if os.path.isdir(args.json):
            raise UsageError(f"--json {args.json} is a directory; give a file path for the report")
        if not os.path.isdir(parent):
            raise UsageError(f"--json {args.json}: no such directory {parent!r}")
    backend = get_backend(args.backend)  # unknown or unavailable: one line, exit 2
    ok = run_selftest(backend, verbose=True, json_path=args.json, timings=not args.no_timings)
    if args.json:
        print(f"selftest: report written to {args.json}")
    return 0 if ok else 1


def _version() -> str:
    from . import __version__

    return __version__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
