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

from .cli_resume import (
    DEFAULTS,
    _apply_resume,
    _check_fits_data,
    _cli_facts,
    _cli_record,
    _replan_schedule,
    _resume,
    _run_settings,
)
from .errors import UsageError


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
    warm = _warmup(backend, dtype, depth, log, args.precision)
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


def _warmup(backend: Any, dtype: str, depth: int, log: Any, precision: str = "float32") -> float:
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
        kw = {"precision": precision} if precision != "float32" else {}  # older backends
        backend.warmup(dtypes=(dtype,), depths=(depth,), **kw)
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


def _write_json(path: str, obj: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a file."""
    from pathlib import Path

    from ._atomic import atomic_write

    atomic_write(Path(path), (json.dumps(obj, indent=2) + "\n").encode())
