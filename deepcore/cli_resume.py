"""`deepcore train --resume`: the settings a checkpointed run used, flags that disagree with
them refused in one line, a cosine schedule re-planned over the new total, and the command-line
facts a checkpoint records for the next resume."""

from __future__ import annotations

import argparse
import json
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
#: Activation modules and the --activation flag that builds them.
_ACTIVATION_FLAGS = {"ReLU": "relu", "LeakyReLU": "leaky_relu", "Tanh": "tanh",
                     "Sigmoid": "sigmoid", "GELU": "gelu"}  # fmt: skip


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


def _resume(args: argparse.Namespace, backend: Any) -> Any:
    from .train import load_trainer

    return load_trainer(args.resume, backend=backend)
