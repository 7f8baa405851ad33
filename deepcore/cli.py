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
    s.add_argument("--backend", default="cupy", help="backend to check (default: cupy)")
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
        return 130
    except (UsageError, DeepcoreError, ValueError, TypeError, OSError, ImportError) as exc:
        print(f"deepcore {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, FileNotFoundError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return " ".join(text.split())


# ---------------------------------------------------------------------- info
def cmd_info() -> int:
    import numpy as np

    import deepcore as dc

    print(f"deepcore {_version()}  python {platform.python_version()}  numpy {np.__version__}")
    print(f"platform {platform.platform()}  cpus {os.cpu_count()}")
    print(f"default backend: {dc.backends.current_backend_name()}")
    print("backends:")
    for name, av in dc.available_backends().items():
        mark = "available" if av.available else "unavailable"
        print(f"  {name:6s} {mark:11s} {av.reason}")
    from .backends.numpy import blas_info

    facts = dict(blas_info())
    try:
        from .threads import threading_info

        facts.update(threading_info())
    except ImportError:
        pass
    for k, v in facts.items():
        print(f"{k}: {v}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        if var in os.environ:
            print(f"{var}={os.environ[var]}")
    for name, av in dc.available_backends().items():
        if av.available and name != "numpy":
            info = dc.get_backend(name).info()
            print(f"{name}:")  # one fact a line; the process-wide ones printed above are left out
            for k, v in info.items():
                if k != "name" and facts.get(k, object()) != v:
                    print(f"  {k}: {v}")
    return 0


# ---------------------------------------------------------------------- selftest
def cmd_selftest(args: argparse.Namespace) -> int:
    try:
        from .selftest import run_selftest
    except ImportError as exc:
        raise UsageError(f"the self-test is not available: {exc}") from None
    return 0 if run_selftest(backend=args.backend, verbose=True) else 1


def _version() -> str:
    from . import __version__

    return __version__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
