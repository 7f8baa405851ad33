"""`deepcore train`: load data, build or resume a run, train it, report, checkpoint.

Everything a user can get wrong is refused in one line before any work: output paths, flags
that conflict with a resumed checkpoint, a checkpoint that does not fit the data. A resumed run
takes its settings from the checkpoint and re-plans a cosine schedule over the new total.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from .errors import UsageError

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

    from .cli import _end_job_if_distributed, _rank_backend, _start_distributed
    from .errors import NonFiniteError
    from .optim import CosineAnnealingLR
    from .train import Trainer, make_optimizer

    comm = _start_distributed()
    root = comm is None or comm.is_root
    if comm is not None and args.backend.partition(":")[0] in ("cupy", "auto"):
        args.backend = _rank_backend(args.backend, comm.local_rank)
    log = sys.stderr if root else open(os.devnull, "w")  # noqa: SIM115 - one rank reports
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
    if args.precision != "float32" and trainer.model.dtype != "float32":
        raise UsageError(
            f"--precision {args.precision} needs --dtype float32, not {trainer.model.dtype}"
        )
    trainer.precision = args.precision
    if comm is not None:
        from .distributed import data_parallel

        data_parallel(trainer, comm)  # same setup on every rank, rank 0's state, all-reduce
    callbacks = []
    saver = None
    if save_path and root:  # rank 0 writes, atomically
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
        + f" | backend {backend.name} ({dtype}"
        + (f", {args.precision} GEMMs)" if args.precision != "float32" else ")")
        + (f" | {comm.size} ranks" if comm is not None else ""),
        file=log,
    )
    for note in notes:
        print(note, file=log)
    depth = sum(1 for m in model.modules() if hasattr(m, "out_features"))
    warm = _warmup(backend, dtype, depth, log)
    t0 = time.perf_counter()
    try:
        history = trainer.fit(
            train,
            epochs=remaining,
            batch_size=args.batch_size,
            validation=None,
            progress=not args.quiet and root,
            callbacks=callbacks,
        )
    except KeyboardInterrupt:
        print(f"deepcore train: interrupted{_on_disk(save_path)}", file=log)
        _end_job_if_distributed(130)  # a rank may be inside a collective: end them all
        return 130
    except NonFiniteError as exc:
        where = _on_disk(save_path)
        text = str(exc)
        raise NonFiniteError(text + where if where and "not saved" not in text else text) from None
    seconds = time.perf_counter() - t0
    metrics = trainer.evaluate(test)  # data-parallel: a slice per rank, sums reduced
    if not root:
        return 0
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
        "precision": args.precision,
        **(
            {
                "loss_scale": trainer.scaler.scale_value,
                "skipped_steps": trainer.scaler.skipped_steps,
            }
            if trainer.scaler is not None and args.precision == "fp16"
            else {}
        ),
        "dataset": args.dataset,
        "hidden": args.hidden,
        "optimizer": args.optimizer,
        "lr": lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_seconds": seconds,
        "warmup_seconds": warm,
        "samples_per_second": samples / seconds if seconds > 0 and samples else None,
        "step_route": trainer.step_route,
        "step_fused": trainer.step_engine().fused,
        "ranks": comm.size if comm is not None else 1,
    }
    ran = f"epochs {start + 1}-{trainer.epoch}" if start else f"{remaining} epochs"
    print(
        f"test accuracy {result['test_accuracy']:.4f} | test loss {result['test_loss']:.4f} | "
        + (
            f"{ran} in {seconds:.2f} s ({result['samples_per_second'] or 0:,.0f} samples/s "
            f"on {backend.name}, step route {trainer.step_route}"
            + (f"; JIT warm-up {warm:.1f} s apart" if warm else "")
            + ")"
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


def _warmup(backend: Any, dtype: str, depth: int, log: Any) -> float:
    """Compile JIT kernels (for an MLP of `depth` layers) before the clock starts, showing that
    it is alive; returns the seconds it took."""
    if not backend.compiles:
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
        backend.warmup(dtypes=(dtype,), depths=(depth,))
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

    from ._atomic import atomic_write

    atomic_write(Path(path), (json.dumps(obj, indent=2) + "\n").encode())
