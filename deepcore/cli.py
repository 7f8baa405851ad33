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
#: What `deepcore train` uses when a flag is not given (and a resumed run did not record).
DEFAULTS: dict[str, Any] = {
    "hidden": [256, 128],
    "activation": "relu",
    "dropout": 0.2,
    "schedule": "cosine",
    "optimizer": "adam",
    "dtype": "float32",
    "batch_size": 32,
    "seed": 0,
}
_ACTIVATION_FLAGS = {"ReLU": "relu", "LeakyReLU": "leaky_relu", "Tanh": "tanh",
                     "Sigmoid": "sigmoid", "GELU": "gelu"}  # fmt: skip


def _load_data(args: argparse.Namespace) -> tuple[Any, Any]:
    from .data import load_dataset

    kw: dict[str, Any] = {"dtype": args.dtype}
    if args.dataset == "mnist":
        if not args.data_dir:
            raise UsageError("--dataset mnist needs --data-dir DIR holding the MNIST IDX files")
        kw["data_dir"] = args.data_dir
    elif args.dataset in ("csv", "npz"):
        if not args.path:
            label = "--label COLUMN" if args.dataset == "csv" else "arrays X and y, or --label"
            raise UsageError(f"--dataset {args.dataset} needs --path FILE ({label})")
        kw["path"] = args.path
        label = (
            args.label if args.label is not None else ("label" if args.dataset == "csv" else None)
        )
        if isinstance(label, str) and label.lstrip("-").isdigit():
            label = int(label)
        kw["label"] = label
    if args.dataset not in ("mnist",):
        kw["seed"] = args.seed
    return load_dataset(args.dataset, **kw)


def _check_output(path: str | None, flag: str) -> None:
    """Refuse an output path that cannot be written, before any data is loaded or trained on."""
    if path is None:
        return
    import tempfile
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a file path inside it")
    parent = p.parent
    if not parent.exists():
        raise UsageError(f"{flag} {path}: directory {parent} does not exist; create it first")
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: {parent} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):  # unnamed where possible: nothing left behind
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write in {parent} ({exc.strerror})") from None


def _check_save_target(path: str | None, resume: str | None) -> str | None:
    """Refuse to overwrite a file that is not a deepcore checkpoint; returns a note when an
    earlier run's checkpoint will be replaced."""
    if path is None or not os.path.exists(path):
        return None
    from pathlib import Path

    from . import _checkpoint_format as fmt
    from .errors import CheckpointError

    try:
        epoch = json.loads(fmt.read_metadata(Path(path)).get("epoch", "0"))
    except (CheckpointError, ValueError):
        raise UsageError(
            f"--save {path}: the file exists and is not a deepcore checkpoint; refusing to "
            f"overwrite it"
        ) from None
    if resume and os.path.realpath(resume) == os.path.realpath(path):
        return None
    return f"--save {path}: replacing the checkpoint there (epoch {epoch} of an earlier run)"


def _on_disk(path: str | None) -> str:
    """What the checkpoint file holds now, read from its header (not what we meant to save)."""
    if path is None:
        return ""
    from pathlib import Path

    from . import _checkpoint_format as fmt
    from .errors import CheckpointError

    try:
        epoch = json.loads(fmt.read_metadata(Path(path)).get("epoch", "0"))
    except FileNotFoundError:
        return f"; nothing saved to {path} yet"
    except (CheckpointError, ValueError, OSError):
        return f"; nothing saved to {path} yet" if not os.path.exists(path) else ""
    return f"; {path} holds epoch {epoch}"


def _run_settings(trainer: Any, cli: dict[str, Any]) -> dict[str, Any]:
    """The settings a checkpointed run used, read from its model, optimizer and scheduler (and
    the batch size and seed `deepcore train` recorded)."""
    from .nn import Dropout, Linear
    from .optim import CosineAnnealingLR

    model = trainer.model
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    acts = [_ACTIVATION_FLAGS[type(m).__name__] for m in model.modules()
            if type(m).__name__ in _ACTIVATION_FLAGS]  # fmt: skip
    drops = [m.p for m in model.modules() if isinstance(m, Dropout)]
    sched = trainer.scheduler
    out = {
        "hidden": [m.out_features for m in linears[:-1]],
        "activation": acts[0] if acts else DEFAULTS["activation"],
        "dropout": drops[0] if drops else 0.0,
        "schedule": "cosine" if isinstance(sched, CosineAnnealingLR) else
                    ("none" if sched is None else type(sched).__name__),
        "optimizer": type(trainer.optimizer).__name__.lower(),
        "lr": trainer.optimizer.param_groups[0].get("initial_lr"),
        "dtype": model.dtype,
    }  # fmt: skip
    for key in ("batch_size", "seed"):
        if isinstance(cli.get(key), int):
            out[key] = cli[key]
    return out


def _flag(key: str, value: Any) -> str:
    shown = ",".join(map(str, value)) if isinstance(value, list) else f"{value:g}" \
        if isinstance(value, float) else value  # fmt: skip
    return f"--{key.replace('_', '-')} {shown}"


def _apply_resume(args: argparse.Namespace, settings: dict[str, Any]) -> None:
    """Take every setting from the checkpoint; a flag that disagrees is refused in one line."""
    conflicts = []
    for key, saved in settings.items():
        given = getattr(args, key)
        if given is None:
            setattr(args, key, saved)
        elif key in ("lr", "dropout") and abs(given - saved) <= 1e-12 * max(abs(saved), 1e-300):
            setattr(args, key, saved)
        elif given != saved:
            conflicts.append((key, given, saved))
    if conflicts:
        raise UsageError(
            f"--resume {args.resume}: "
            + ", ".join(_flag(k, g) for k, g, _ in conflicts)
            + " conflict"
            + ("s" if len(conflicts) == 1 else "")
            + " with the checkpoint ("
            + ", ".join(_flag(k, s) for k, _, s in conflicts)
            + "); drop "
            + ("it" if len(conflicts) == 1 else "them")
            + " to continue that run, or start a new run without --resume"
        )


def _replan_schedule(trainer: Any, epochs: int) -> str:
    """Re-plan a cosine schedule over the new total: from the saved epoch on, the lr follows the
    schedule a run started with `--epochs N` would have had. Returns the line to print."""
    from .optim import CosineAnnealingLR

    sched = trainer.scheduler
    if sched is None:
        return "schedule: none (constant lr), as saved"
    if not isinstance(sched, CosineAnnealingLR):
        return f"schedule: {type(sched).__name__} kept as saved"
    old = sched.T_max
    total = max(epochs, 1)
    if old != total:
        sched.T_max = total
        for g, lr in zip(trainer.optimizer.param_groups, sched.get_lr(), strict=True):
            g["lr"] = lr
    lr = trainer.optimizer.param_groups[0]["lr"]
    what = f"re-planned over {total} epochs (was {old})" if old != total else f"over {total} epochs"
    return f"schedule: cosine {what}: lr {lr:.3g} at epoch {trainer.epoch + 1}, 0 at epoch {total}"


def cmd_train(args: argparse.Namespace) -> int:
    import deepcore as dc

    from .errors import NonFiniteError
    from .optim import CosineAnnealingLR
    from .train import Trainer, make_optimizer

    log = sys.stderr
    save_path = args.save or args.resume  # a resumed run keeps saving to its file
    _check_output(save_path, "--save" if args.save else "--resume")
    _check_output(args.json, "--json")
    replacing = _check_save_target(args.save, args.resume)
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    backend = dc.get_backend(args.backend)
    trainer: Trainer | None = None
    if args.resume:
        trainer = _resume(args, backend)
        _apply_resume(args, _run_settings(trainer, _cli_record(args.resume)))
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    train, test = _load_data(args)
    if train.task != "classification":
        raise UsageError(
            f"{args.dataset}: the labels look continuous; deepcore train does classification "
            f"(use deepcore.sklearn.MLPRegressor for regression)"
        )
    epochs = args.epochs if args.epochs is not None else (10 if args.dataset == "mnist" else 40)
    if args.standardize:
        train, test = dc.data.standardize(train, test)
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 1e-3)
    notes = []
    if trainer is not None:
        _check_fits_data(args.resume, trainer.model, train, args.dataset)
        if epochs < trainer.epoch:
            raise UsageError(
                f"--epochs {epochs} is the total number of epochs, and {args.resume} already "
                f"has {trainer.epoch}; ask for more"
            )
        notes.append(
            f"resume: epoch {trainer.epoch} of {args.resume}; model, optimizer, lr, schedule, "
            f"dtype, batch size and seed taken from it"
        )
        notes.append(_replan_schedule(trainer, epochs))
    else:
        dc.seed(args.seed)
        sizes = [train.n_features, *args.hidden, train.n_classes]
        model = dc.nn.mlp(
            sizes, args.activation, dropout=args.dropout, backend=backend, dtype=args.dtype
        )
        opt = make_optimizer(args.optimizer, model.parameters(), lr)
        sched = CosineAnnealingLR(opt, max(epochs, 1)) if args.schedule == "cosine" else None
        trainer = Trainer(model, "cross_entropy", opt, scheduler=sched, seed=args.seed)
    callbacks = []
    saver = None
    if save_path:
        saver = _checkpoint_callback(save_path, _cli_facts(args))
        callbacks.append(saver)
        if replacing:
            notes.append(replacing)
        if not args.save:
            notes.append(f"checkpoint: saving to {save_path}, the resumed file (--save PATH "
                         f"writes elsewhere)")  # fmt: skip
    model = trainer.model
    dtype = model.dtype
    opt_name = type(trainer.optimizer).__name__
    lr = trainer.optimizer.param_groups[0].get("initial_lr", lr)
    shape = "-".join(
        [str(m.in_features) for m in model.modules() if hasattr(m, "in_features")][:1]
        + [str(m.out_features) for m in model.modules() if hasattr(m, "out_features")]
    )
    start = trainer.epoch
    remaining = max(0, epochs - start)
    print(
        f"deepcore train: {args.dataset} ({len(train)} train / {len(test)} test, "
        f"{train.n_features} features, {train.n_classes} classes) | MLP {shape} | {opt_name} "
        f"lr={lr:g} | batch {args.batch_size} | "
        + (f"epochs {start + 1}-{epochs}" if args.resume else f"{epochs} epochs")
        + f" | backend {backend.name} ({dtype})",
        file=log,
    )
    for note in notes:
        print(note, file=log)
    warm = _warmup(backend, dtype, log)
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
        print(f"deepcore train: interrupted{_on_disk(save_path)}", file=log)
        return 130
    except NonFiniteError as exc:
        where = _on_disk(save_path)
        text = str(exc)
        raise NonFiniteError(text + where if where and "not saved" not in text else text) from None
    seconds = time.perf_counter() - t0
    metrics = trainer.evaluate(test)
    samples = len(train) * remaining
    result = {
        "test_accuracy": metrics["accuracy"],
        "test_loss": metrics["loss"],
        "train_loss": history.last.get("loss"),
        "train_accuracy": history.last.get("accuracy"),
        "epochs": trainer.epoch,
        "epochs_run": remaining,
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
        "samples_per_second": samples / seconds if seconds > 0 and samples else None,
    }
    ran = f"epochs {start + 1}-{trainer.epoch}" if start else f"{remaining} epochs"
    print(
        f"test accuracy {result['test_accuracy']:.4f} | test loss {result['test_loss']:.4f} | "
        + (
            f"{ran} in {seconds:.2f} s ({result['samples_per_second'] or 0:,.0f} samples/s "
            f"on {backend.name}" + (f"; JIT warm-up {warm:.1f} s apart" if warm else "") + ")"
            if remaining
            else f"no epochs to run: {args.resume} already has {trainer.epoch}"
        )
    )
    if saver is not None:
        print(f"checkpoint: {_on_disk(save_path)[2:]}", file=log)
    if args.json:
        _write_json(args.json, result)
    return 0


def _check_fits_data(path: str, model: Any, train: Any, dataset: str) -> None:
    """A resumed model must take the data's features and predict its classes."""
    from .nn import Linear

    linears = [m for m in model.modules() if isinstance(m, Linear)]
    n_in, n_out = linears[0].in_features, linears[-1].out_features
    if (n_in, n_out) != (train.n_features, train.n_classes):
        raise UsageError(
            f"--resume {path}: its model takes {n_in} features and predicts {n_out} classes, "
            f"but {dataset} has {train.n_features} features and {train.n_classes} classes"
        )


def _cli_facts(args: argparse.Namespace) -> dict[str, Any]:
    """What a checkpoint records of the command line, for --resume to take back."""
    return {"cli": {"dataset": args.dataset, "batch_size": args.batch_size, "seed": args.seed}}


def _cli_record(path: str) -> dict[str, Any]:
    from pathlib import Path

    from . import _checkpoint_format as fmt

    try:
        extra = json.loads(fmt.read_metadata(Path(path)).get("extra", "{}"))
    except ValueError:
        return {}
    cli = extra.get("cli") if isinstance(extra, dict) else None
    return cli if isinstance(cli, dict) else {}


def _warmup(backend: Any, dtype: str, log: Any) -> float:
    """Compile JIT kernels before the clock starts, showing that it is alive; returns the
    seconds it took."""
    warm = getattr(backend, "warmup", None)
    if warm is None:
        return 0.0
    import threading

    what = f"{backend.name}: compiling kernels (the first run on a machine takes about a minute; " \
        f"cached after)"  # fmt: skip
    print(f"{what} ...", file=log, flush=True)
    done = threading.Event()
    t0 = time.perf_counter()
    tty = log.isatty() if hasattr(log, "isatty") else False

    def tick() -> None:  # a live elapsed-time line on a terminal, a line every 15 s elsewhere
        every = 0.5 if tty else 15.0
        while not done.wait(every):
            elapsed = time.perf_counter() - t0
            if tty:
                print(f"\r{backend.name}: compiling ... {elapsed:4.0f} s", end="", file=log,
                      flush=True)  # fmt: skip
            else:
                print(f"{backend.name}: still compiling ({elapsed:.0f} s)", file=log, flush=True)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        warm(dtypes=(dtype,))
    finally:
        done.set()
        if ticker.is_alive():
            ticker.join()
    seconds = time.perf_counter() - t0
    print(("\r" if tty else "") + f"{backend.name}: ready in {seconds:.1f} s", file=log)
    return seconds


def _checkpoint_callback(path: str, extra: dict[str, Any]) -> Any:
    from .io import CheckpointEveryEpoch

    return CheckpointEveryEpoch(path, extra=extra)


def _resume(args: argparse.Namespace, backend: Any) -> Any:
    from .train import load_trainer

    return load_trainer(args.resume, backend=backend)


def _write_json(path: str, obj: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a file."""
    from pathlib import Path

    from . import _checkpoint_format as fmt

    fmt.atomic_write(Path(path), (json.dumps(obj, indent=2) + "\n").encode())


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
