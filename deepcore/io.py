"""Checkpoints: save and load a model, its optimizer, scheduler and training state.

One safetensors file per checkpoint (no pickle anywhere). Tensors: the weights under PyTorch's
names ("0.weight", "0.bias", ...) and optimizer state as "optim.state.<i>.<name>". Metadata (JSON
strings): format and version, deepcore version, the model config, the optimizer class and its
param_groups, the scheduler state, epoch, step, deepcore's RNG state and the data-shuffling RNG
state. `load` rebuilds everything on any backend, whichever backend saved it. Saving is atomic:
the previous checkpoint survives a crash or Ctrl-C during `save`.

Exact resume: a checkpoint taken after a Trainer epoch resumes bitwise on the same backend
(weights, loss curve, batch order, dropout masks). The Trainer resumes at epoch boundaries
(deepcore.train.load_trainer); a hand-written loop can save at any step (pass its shuffling
generator as `rng=`).

Nothing corrupt loads and nothing bad is saved: every tensor and metadata field carries a
checksum, `load`/`load_into` check every field, shape and value (finite weights and state,
counters, hyperparameters, schedules) before building or writing anything, and `save` refuses
state that `load` would refuse (NaN weights after a diverged step), leaving the old file.
Every refusal is a CheckpointError (NonFiniteError on save) naming the file and the field.
Memory: `save` writes from the live arrays, `load` reads each tensor straight into its array.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _checkpoint_checks as checks
from . import _checkpoint_format as fmt
from . import _checkpoint_restore as restore
from . import random as dc_random
from .backends import Backend, get_backend
from .backends.base import normalize_dtype, to_numpy
from .errors import CheckpointError, NonFiniteError
from .nn.module import Module
from .optim.optimizer import Optimizer
from .optim.schedulers import LRScheduler

if TYPE_CHECKING:
    from .train import Trainer  # for annotations only: io never imports train

__all__ = [
    "Checkpoint",
    "CheckpointEveryEpoch",
    "save",
    "load",
    "load_into",
    "save_trainer",
]

_OPTIM_PREFIX = checks.OPTIM_PREFIX
#: Metadata fields stored as plain strings; every other field is JSON.
_PLAIN = ("format", "format_version", "deepcore_version", fmt.CHECKSUM)
PathLike = str | os.PathLike


@dataclass
class Checkpoint:
    """What `load` returns: rebuilt objects plus the counters and RNG states of the run."""

    path: Path
    model: Module
    optimizer: Optimizer | None = None
    scheduler: LRScheduler | None = None
    epoch: int = 0
    step: int = 0
    #: deepcore's global generator (weights init, dropout); `load` has already restored it.
    rng_state: dict[str, Any] | None = None
    #: the data-shuffling generator (Trainer.rng or the `rng=` given to save).
    data_rng_state: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    #: the `extra` dict given to save.
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Trainer facts (loss, clip_grad_norm, history) when saved from a Trainer.
    trainer: dict[str, Any] | None = None
    deepcore_version: str = ""
    format_version: int = fmt.FORMAT_VERSION

    def data_rng(self) -> np.random.Generator:
        """A Generator in the saved data-shuffling state (a fresh one if none was saved)."""
        rng = np.random.default_rng()
        if self.data_rng_state is not None:
            rng.bit_generator.state = self.data_rng_state
        return rng


# ---------------------------------------------------------------------------------------- save
def save(
    path: PathLike,
    model: Module | None = None,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    *,
    trainer: Trainer | None = None,
    extra: dict[str, Any] | None = None,
    rng: np.random.Generator | None = None,
    epoch: int | None = None,
    step: int | None = None,
) -> Path:
    """Write a checkpoint of `model` (and optimizer, scheduler) to `path` atomically.

    With `trainer`, its model, optimizer, scheduler and `trainer.state_dict()` (counters,
    history, shuffling generator) are saved (explicit arguments win). `rng` is a hand-written
    loop's shuffling generator, `epoch`/`step` its counters; `extra` is any JSON-able dict,
    returned as Checkpoint.metadata. Non-finite weights or state raise NonFiniteError and
    leave the file on disk as it was.
    """
    from . import __version__

    facts: dict[str, Any] | None = None
    if trainer is not None:
        facts = trainer.state_dict(arrays=False)
        model = trainer.model if model is None else model
        optimizer = trainer.optimizer if optimizer is None else optimizer
        scheduler = trainer.scheduler if scheduler is None else scheduler
        epoch = facts["epoch"] if epoch is None else epoch
        step = facts["step"] if step is None else step
    if not isinstance(model, Module):
        raise TypeError(f"save needs a deepcore Module, got {type(model).__name__}")
    target = Path(path)
    tensors = {n: _host(p.data, model.dtype) for n, p in model.named_parameters()}
    try:
        config: dict[str, Any] | None = model.config()
    except NotImplementedError:
        config = None  # loadable only with load_into
    meta: dict[str, Any] = {
        "format": fmt.FORMAT,
        "format_version": str(fmt.FORMAT_VERSION),
        "deepcore_version": __version__,
        "model": {"config": config, "dtype": model.dtype, "backend": model.backend.name},
        "epoch": epoch or 0,
        "step": step or 0,
        "rng": dc_random.get_state(),
        "extra": extra or {},
    }
    if rng is not None:
        meta["data_rng"] = rng.bit_generator.state
    elif facts is not None:
        meta["data_rng"] = facts["rng"]
    if optimizer is not None:
        meta["optimizer"] = _optimizer_meta(model, optimizer, tensors)
    if scheduler is not None:
        meta["scheduler"] = {"class": type(scheduler).__name__, "state": scheduler.state_dict()}
    if facts is not None:
        meta["trainer"] = {k: facts[k] for k in ("loss", "clip_grad_norm", "history")}
        if facts.get("scaler") is not None:  # fp16's loss scaler (deepcore.amp)
            meta["trainer"]["scaler"] = facts["scaler"]
    strings = {k: v if k in _PLAIN else fmt.dumps(v) for k, v in meta.items()}
    _check_saveable(target, tensors, strings)  # everything checked before the disk is touched
    fmt.write(target, tensors, strings)
    return target


def _host(x: Any, dtype: str) -> np.ndarray:
    """A host array of `x` in `dtype`: the live array itself on CPU backends (no copy)."""
    a = x if isinstance(x, np.ndarray) else to_numpy(x)
    return a.astype(dtype, copy=False)


def _on_disk(path: Path) -> str:
    """What `path` holds now, for messages about a save that did not happen."""
    if not path.exists():
        return f"nothing was written to {path}"
    try:
        epoch = json.loads(fmt.read_metadata(path).get("epoch", "0"))
    except (CheckpointError, ValueError):
        return f"{path} was left as it was"
    return f"{path} still holds epoch {epoch}, the last good one"


def _check_saveable(path: Path, tensors: dict[str, np.ndarray], strings: dict[str, str]) -> None:
    """Refuse to save what load would refuse (non-finite weights first: a diverged run)."""
    for name, a in tensors.items():
        if a.dtype.kind == "f" and not checks.all_finite(a):
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise NonFiniteError(
                f"not saved: {name!r} has {bad:,} of {a.size:,} values non-finite (NaN or Inf), "
                f"the training diverged; {_on_disk(path)}"
            )
    info = {k: json.loads(v) for k, v in strings.items() if k not in _PLAIN}
    try:
        checks.check_data(path, tensors, checks.check(path, tensors, info))
    except CheckpointError as exc:
        raise CheckpointError(f"not saved ({_on_disk(path)}): {exc}") from None


def _optimizer_meta(model: Module, opt: Optimizer, tensors: dict[str, np.ndarray]) -> dict:
    """The optimizer's class, hyperparameters and per-parameter numbers; its state arrays go
    into `tensors` as the live arrays (no copies on CPU backends)."""
    names = {id(p): n for n, p in model.named_parameters()}
    params = opt._params()
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(
            f"the optimizer holds parameters that are not in the model (indices {missing}); "
            f"save the model the optimizer was built on"
        )
    index = {id(p): i for i, p in enumerate(params)}
    scalars: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(params):
        for k, v in (opt.state.get(id(p)) or {}).items():
            if hasattr(v, "shape") and v.ndim > 0:
                tensors[f"{_OPTIM_PREFIX}{i}.{k}"] = _host(v, model.dtype)
            elif v is not None:
                scalars.setdefault(str(i), {})[k] = v.item() if hasattr(v, "item") else v
    groups = [
        {
            **{k: v for k, v in g.items() if k != "params"},
            "params": [index[id(p)] for p in g["params"]],
        }
        for g in opt.param_groups
    ]
    return {
        "class": type(opt).__name__,
        "param_names": [names[id(p)] for p in params],
        "param_groups": groups,
        "scalars": scalars,
    }


# ---------------------------------------------------------------------------------------- load
def load(
    path: PathLike,
    *,
    backend: str | Backend | None = None,
    dtype: Any = None,
    restore_rng: bool = True,
) -> Checkpoint:
    """Read the checkpoint at `path` and rebuild model, optimizer and scheduler on `backend`
    (default: the current selection) in `dtype` (default: the saved one).

    Every field, shape and value is checked before anything is built. With `restore_rng` (the
    default) deepcore's global generator is put back in its saved state, so dropout masks
    continue exactly; pass False to leave it alone (e.g. for inference).
    """
    p = Path(path)
    target_backend = get_backend(backend)
    target_dtype = normalize_dtype(dtype) if dtype is not None else None
    with fmt.Reader(p) as reader:
        info = _meta(p, reader.meta)
        c = checks.check(p, dict(reader.specs), info)  # config vs shapes: nothing built yet
        if c.config is None:
            raise CheckpointError(
                f"{p}: the model has no config, so load cannot rebuild it; build the model "
                f"yourself and call deepcore.io.load_into(path, model)"
            )
        model = restore.build_model(p, c, target_backend, target_dtype or c.dtype)
        named = dict(model.named_parameters())
        tensors = {}
        for name, spec in reader.specs.items():  # read straight into the new parameters
            prm = named.get(name)
            into = prm.data if prm is not None and restore.can_read_into(prm, spec) else None
            tensors[name] = reader.read(name, out=into)
    checks.check_data(p, tensors, c)
    restore.write_weights(model, tensors)
    ckpt = Checkpoint(path=p, model=model, config=c.config)
    if c.optimizer is not None:
        ckpt.optimizer = restore.build_optimizer(p, model, c.optimizer)
        restore.write_optimizer(
            ckpt.optimizer, [named[n] for n in c.optimizer["param_names"]], c, tensors
        )
    if c.scheduler is not None:
        ckpt.scheduler = restore.build_scheduler(p, ckpt.optimizer, c.scheduler)
    _facts(ckpt, c, reader.meta)
    if restore_rng and ckpt.rng_state is not None:
        dc_random.set_state(ckpt.rng_state)
    return ckpt


def load_into(
    path: PathLike,
    model: Module,
    optimizer: Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    *,
    restore_rng: bool = True,
) -> Checkpoint:
    """Load a checkpoint's state into objects you built. Everything is checked before anything
    is written (names and shapes against the model, the optimizer's class and groups, the
    scheduler's class, every value): on any problem a CheckpointError names the file and the
    field, and model, optimizer and scheduler are unchanged."""
    p = Path(path)
    with fmt.Reader(p) as reader:
        info = _meta(p, reader.meta)
        c = checks.check(p, dict(reader.specs), info)
        restore.check_fits(p, model, c.weights)
        opt_params = restore.check_optimizer_fits(p, model, optimizer, c) if optimizer else None
        if scheduler is not None:
            restore.check_scheduler_fits(p, scheduler, optimizer, c)
        tensors = {name: reader.read(name) for name in reader.specs}
    checks.check_data(p, tensors, c)
    # every check passed: write
    restore.write_weights(model, tensors)
    if optimizer is not None and opt_params is not None:
        restore.write_optimizer(optimizer, opt_params, c, tensors)
    if scheduler is not None and c.scheduler is not None:
        scheduler.load_state_dict(dict(c.scheduler["state"]))
    ckpt = Checkpoint(path=p, model=model, optimizer=optimizer, scheduler=scheduler)
    ckpt.config = c.config
    _facts(ckpt, c, reader.meta)
    if restore_rng and ckpt.rng_state is not None:
        dc_random.set_state(ckpt.rng_state)
    return ckpt


def _meta(p: Path, meta: dict[str, str]) -> dict[str, Any]:
    info: dict[str, Any] = {k: fmt.loads(p, meta, k) for k in meta if k not in _PLAIN}
    if not isinstance(info.get("model"), dict):
        raise CheckpointError(f"{p}: metadata has no model description")
    return info


def _facts(ckpt: Checkpoint, c: checks.Checked, meta: dict[str, str]) -> None:
    ckpt.epoch, ckpt.step = c.epoch, c.step
    ckpt.rng_state, ckpt.data_rng_state = c.rng, c.data_rng
    ckpt.metadata = c.extra
    ckpt.trainer = c.trainer
    ckpt.deepcore_version = meta.get("deepcore_version", "")
    ckpt.format_version = int(meta["format_version"])


# ---------------------------------------------------------------------------------------- trainer
def save_trainer(path: PathLike, trainer: Trainer, *, extra: dict[str, Any] | None = None) -> Path:
    """Checkpoint everything a Trainer needs to resume exactly (same as save(trainer=...));
    deepcore.train.load_trainer reads it back."""
    return save(path, trainer=trainer, extra=extra)


class CheckpointEveryEpoch:
    """Trainer callback: save the whole trainer to `path` after every `every` completed epochs.

    Each save is atomic, so when training stops (NonFiniteError, Ctrl-C, a crash) the file holds
    the last completed epoch intact; a diverged state is never saved over it. `saved_epoch` is
    the epoch the file holds once a save has finished (None before).
    Use: trainer.fit(..., callbacks=[CheckpointEveryEpoch(p)]).
    """

    def __init__(self, path: PathLike, every: int = 1, extra: dict[str, Any] | None = None):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"CheckpointEveryEpoch: every must be a positive integer, got {every}")
        self.path = Path(path)
        self.every = every
        self.extra = extra
        self.saved_epoch: int | None = None

    def __call__(self, trainer: Trainer) -> None:
        epoch = trainer.state_dict(arrays=False)["epoch"]
        if epoch % self.every == 0:
            save(self.path, trainer=trainer, extra=self.extra)
            self.saved_epoch = epoch
