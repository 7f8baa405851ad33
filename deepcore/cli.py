"""The `deepcore` command: train | bench | info | selftest.

Errors a user can cause (bad arguments, missing files, unavailable backends, bad data) end in one
clear line on stderr and exit status 2; only a bug in deepcore shows a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

DATASETS = ("digits", "mnist", "csv", "npz", "spirals", "moons")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "gelu")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")


class UsageError(Exception):
    """A problem with what the user asked for, reported as one line."""


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
    t.add_argument("--label", default="label", help="label column: name or index (csv, npz)")
    t.add_argument("--hidden", type=_hidden, default=[256, 128], help="hidden sizes, e.g. 256,128")
    t.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    t.add_argument("--dropout", type=float, default=0.2, help="dropout after each hidden layer")
    t.add_argument(
        "--schedule", choices=("cosine", "none"), default="cosine", help="learning-rate schedule"
    )
    t.add_argument(
        "--no-standardize",
        dest="standardize",
        action="store_false",
        help="keep raw features (default: scale to zero mean, unit variance using train stats)",
    )
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    t.add_argument("--lr", type=_positive_float, default=None, help="default: 1e-3 (sgd: 0.05)")
    t.add_argument("--epochs", type=_non_negative_int, default=None, help="default: 40 (mnist: 10)")
    t.add_argument("--batch-size", type=_positive_int, default=32)
    t.add_argument("--seed", type=_non_negative_int, default=0)
    t.add_argument("--backend", default=os.environ.get("DEEPCORE_BACKEND") or "auto")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    t.add_argument("--save", metavar="PATH", help="checkpoint after every epoch (safetensors)")
    t.add_argument(
        "--resume",
        metavar="PATH",
        help="continue a saved run up to --epochs in total (model, optimizer, schedule and "
        "shuffling come from the checkpoint)",
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


# ---------------------------------------------------------------------- train
def _load_data(args: argparse.Namespace) -> tuple[Any, Any]:
    from .data import load_dataset

    kw: dict[str, Any] = {"dtype": args.dtype}
    if args.dataset == "mnist":
        if not args.data_dir:
            raise UsageError("--dataset mnist needs --data-dir DIR holding the MNIST IDX files")
        kw["data_dir"] = args.data_dir
    elif args.dataset in ("csv", "npz"):
        if not args.path:
            raise UsageError(f"--dataset {args.dataset} needs --path FILE (and --label COLUMN)")
        kw["path"] = args.path
        kw["label"] = int(args.label) if args.label.lstrip("-").isdigit() else args.label
    if args.dataset not in ("mnist",):
        kw["seed"] = args.seed
    return load_dataset(args.dataset, **kw)


def cmd_train(args: argparse.Namespace) -> int:
    import deepcore as dc

    from .optim import CosineAnnealingLR
    from .train import Trainer, make_optimizer

    backend = dc.get_backend(args.backend)
    train, test = _load_data(args)
    if train.task != "classification":
        raise UsageError(
            f"{args.dataset}: the labels look continuous; deepcore train does classification "
            f"(use deepcore.sklearn.MLPRegressor for regression)"
        )
    epochs = args.epochs if args.epochs is not None else (10 if args.dataset == "mnist" else 40)
    if not 0.0 <= args.dropout < 1.0:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    if args.standardize:
        train, test = dc.data.standardize(train, test)
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 1e-3)
    dc.seed(args.seed)
    sizes = [train.n_features, *args.hidden, train.n_classes]
    trainer: Trainer
    if args.resume:
        trainer = _resume(args, backend)
    else:
        model = dc.nn.mlp(
            sizes, args.activation, dropout=args.dropout, backend=backend, dtype=args.dtype
        )
        opt = make_optimizer(args.optimizer, model.parameters(), lr)
        sched = CosineAnnealingLR(opt, max(epochs, 1)) if args.schedule == "cosine" else None
        trainer = Trainer(model, "cross_entropy", opt, scheduler=sched, seed=args.seed)
    callbacks = []
    if args.save:
        callbacks.append(_checkpoint_callback(args.save))
    model = trainer.model
    dtype = model.dtype
    opt_name = type(trainer.optimizer).__name__
    lr = trainer.optimizer.param_groups[0].get("initial_lr", lr)
    shape = "-".join(
        [str(m.in_features) for m in model.modules() if hasattr(m, "in_features")][:1]
        + [str(m.out_features) for m in model.modules() if hasattr(m, "out_features")]
    )
    remaining = max(0, epochs - trainer.epoch) if args.resume else epochs
    log = sys.stderr
    print(
        f"deepcore train: {args.dataset} ({len(train)} train / {len(test)} test, "
        f"{train.n_features} features, {train.n_classes} classes) | MLP {shape} | {opt_name} "
        f"lr={lr:g} | batch {args.batch_size} | "
        + (f"epochs {trainer.epoch + 1}-{epochs}" if args.resume else f"{epochs} epochs")
        + f" | backend {backend.name} ({dtype})",
        file=log,
    )
    if hasattr(backend, "warmup"):
        print(f"{backend.name}: compiling kernels (cached after the first run) ...", file=log)
    warm = _warmup(backend, dtype)
    if hasattr(backend, "warmup"):
        print(f"{backend.name}: ready in {warm:.1f} s", file=log)
    t0 = time.perf_counter()
    try:
        history = trainer.fit(
            train,
            epochs=remaining,
            batch_size=args.batch_size,
            validation=None,
            progress=not args.quiet,
            callbacks=callbacks,
        )
    except KeyboardInterrupt:
        where = (
            f"; epoch {trainer.epoch} (the last completed) is saved in {args.save}"
            if args.save and trainer.epoch > 0
            else ""
        )
        print(f"deepcore train: interrupted{where}", file=log)
        return 130
    seconds = time.perf_counter() - t0
    metrics = trainer.evaluate(test)
    samples = len(train) * remaining
    result = {
        "test_accuracy": metrics["accuracy"],
        "test_loss": metrics["loss"],
        "train_loss": history.last.get("loss"),
        "train_accuracy": history.last.get("accuracy"),
        "epochs": trainer.epoch,
        "backend": backend.name,
        "dtype": dtype,
        "dataset": args.dataset,
        "hidden": args.hidden,
        "optimizer": args.optimizer,
        "lr": lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_seconds": seconds,
        "warmup_seconds": warm,
        "samples_per_second": samples / seconds if seconds > 0 else None,
    }
    print(
        f"test accuracy {result['test_accuracy']:.4f} | test loss {result['test_loss']:.4f} | "
        f"{trainer.epoch} epochs in {seconds:.2f} s "
        f"({result['samples_per_second'] or 0:,.0f} samples/s on {backend.name}"
        + (f"; JIT warm-up {warm:.1f} s apart" if warm else "")
        + ")"
    )
    if args.save:
        print(f"checkpoint: {args.save}", file=log)
    if args.json:
        _write_json(args.json, result)
    return 0


def _warmup(backend: Any, dtype: str) -> float:
    """Compile JIT kernels before the clock starts; returns the seconds it took."""
    warm = getattr(backend, "warmup", None)
    if warm is None:
        return 0.0
    t0 = time.perf_counter()
    warm(dtypes=(dtype,))
    return time.perf_counter() - t0


def _checkpoint_callback(path: str) -> Any:
    try:
        from .io import CheckpointEveryEpoch
    except ImportError as exc:
        raise UsageError(f"--save needs deepcore.io: {exc}") from None
    return CheckpointEveryEpoch(path)


def _resume(args: argparse.Namespace, backend: Any) -> Any:
    try:
        from .train import load_trainer
    except ImportError as exc:
        raise UsageError(f"--resume needs deepcore.io: {exc}") from None
    return load_trainer(args.resume, backend=backend)


def _write_json(path: str, obj: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


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
