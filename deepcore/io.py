"""Checkpoints: save and load a model, its optimizer, scheduler and training state.

One safetensors file per checkpoint (no pickle anywhere). Tensors: the weights under PyTorch's
names ("0.weight", "0.bias", ...) and optimizer state as "optim.state.<i>.<name>". Metadata (JSON
strings): format and version, deepcore version, the model config, the optimizer class and its
param_groups, the scheduler state, epoch, step, deepcore's RNG state and the data-shuffling RNG
state. `load` rebuilds everything on any backend, whichever backend saved it. Saving is atomic:
the previous checkpoint survives a crash or Ctrl-C during `save`.

Exact resume: a checkpoint taken after a Trainer epoch resumes bitwise on the same backend
(weights, loss curve, batch order, dropout masks). The Trainer resumes at epoch boundaries; a
hand-written loop can save at any step (pass its shuffling generator as `rng=`).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _checkpoint_format as fmt
from . import random as dc_random
from .backends import Backend
from .errors import CheckpointError, ShapeError
from .nn.module import Module
from .optim.optimizer import Optimizer
from .optim.schedulers import LRScheduler

if TYPE_CHECKING:
    from .train import Trainer

__all__ = [
    "Checkpoint",
    "CheckpointEveryEpoch",
    "save",
    "load",
    "load_into",
    "save_trainer",
    "load_trainer",
]

_OPTIM_PREFIX = "optim.state."
#: Metadata fields stored as plain strings; every other field is JSON.
_PLAIN = ("format", "format_version", "deepcore_version")
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

    With `trainer`, its model, optimizer, scheduler, counters, history and shuffling generator
    are saved (explicit arguments win). `rng` is a hand-written loop's shuffling generator,
    `epoch`/`step` its counters; `extra` is any JSON-able dict, returned as Checkpoint.metadata.
    """
    from . import __version__

    if trainer is not None:
        model = trainer.model if model is None else model
        optimizer = trainer.optimizer if optimizer is None else optimizer
        scheduler = trainer.scheduler if scheduler is None else scheduler
        rng = trainer.rng if rng is None else rng
        epoch = trainer.epoch if epoch is None else epoch
        step = trainer.step if step is None else step
    if not isinstance(model, Module):
        raise TypeError(f"save needs a deepcore Module, got {type(model).__name__}")
    tensors: dict[str, np.ndarray] = dict(model.state_dict())
    try:
        config: dict[str, Any] | None = model.config()
    except NotImplementedError:
        config = None  # loadable only with load_into
    meta: dict[str, Any] = {
        "format": fmt.FORMAT,
        "format_version": str(fmt.FORMAT_VERSION),
        "deepcore_version": __version__,
        "model": {"config": config, "dtype": model.dtype, "backend": model.backend.name},
        "epoch": int(epoch or 0),
        "step": int(step or 0),
        "rng": dc_random.get_state(),
        "extra": extra or {},
    }
    if rng is not None:
        meta["data_rng"] = rng.bit_generator.state
    if optimizer is not None:
        meta["optimizer"] = _optimizer_meta(model, optimizer, tensors)
    if scheduler is not None:
        meta["scheduler"] = {"class": type(scheduler).__name__, "state": scheduler.state_dict()}
    if trainer is not None:
        meta["trainer"] = {
            "loss": {
                "type": _loss_name(trainer.loss_fn),
                "reduction": trainer.loss_fn.reduction,
            },
            "clip_grad_norm": trainer.clip_grad_norm,
            "history": trainer.history.epochs,
        }
    strings = {k: v if k in _PLAIN else fmt.dumps(v) for k, v in meta.items()}
    data = fmt.encode(tensors, strings)  # everything serialised before the disk is touched
    target = Path(path)
    fmt.atomic_write(target, data)
    return target


def _loss_name(loss: Any) -> str:
    """The deepcore loss class behind `loss` (a user subclass resumes as its deepcore base)."""
    for cls in type(loss).__mro__:
        if cls.__module__ == "deepcore.nn.loss" and cls.__name__ != "Loss":
            return cls.__name__
    return type(loss).__name__


def _optimizer_meta(model: Module, opt: Optimizer, tensors: dict[str, np.ndarray]) -> dict:
    names = {id(p): n for n, p in model.named_parameters()}
    params = opt._params()
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(
            f"the optimizer holds parameters that are not in the model (indices {missing}); "
            f"save the model the optimizer was built on"
        )
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, np.ndarray) and v.ndim > 0:
                tensors[f"{_OPTIM_PREFIX}{i}.{k}"] = v
            elif v is not None:
                scalars.setdefault(str(i), {})[k] = v.item() if hasattr(v, "item") else v
    return {
        "class": type(opt).__name__,
        "param_names": [names[id(p)] for p in params],
        "param_groups": sd["param_groups"],
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

    With `restore_rng` (the default) deepcore's global generator is put back in its saved state,
    so dropout masks continue exactly; pass False to leave it alone (e.g. for inference).
    """
    from .nn import build

    p = Path(path)
    tensors, meta = fmt.read(p)
    info = _meta(p, meta)
    model_info = info["model"]
    config = model_info.get("config")
    if config is None:
        raise CheckpointError(
            f"{p}: the model has no config, so load cannot rebuild it; build the model yourself "
            f"and call deepcore.io.load_into(path, model)"
        )
    saved_rng = dc_random.get_state()
    try:
        model = build(config, backend=backend, dtype=dtype or model_info.get("dtype"))
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{p}: cannot rebuild the model from its config ({exc})") from None
    finally:
        dc_random.set_state(saved_rng)  # building drew initial weights; undo that
    ckpt = Checkpoint(path=p, model=model, config=config)
    _fill(ckpt, p, tensors, info, rebuild=True)
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
    """Load a checkpoint's state into objects you built. All shapes are checked before anything
    is written: on a mismatch a CheckpointError names the parameter and both shapes, and the
    model is unchanged."""
    p = Path(path)
    tensors, meta = fmt.read(p)
    info = _meta(p, meta)
    ckpt = Checkpoint(path=p, model=model, optimizer=optimizer, scheduler=scheduler)
    ckpt.config = info["model"].get("config")
    _fill(ckpt, p, tensors, info, rebuild=False)
    if restore_rng and ckpt.rng_state is not None:
        dc_random.set_state(ckpt.rng_state)
    return ckpt


def _meta(p: Path, meta: dict[str, str]) -> dict[str, Any]:
    info: dict[str, Any] = {k: fmt.loads(p, meta, k) for k in meta if k not in _PLAIN}
    if not isinstance(info.get("model"), dict):
        raise CheckpointError(f"{p}: metadata has no model description")
    info["format_version"] = int(meta["format_version"])
    info["deepcore_version"] = meta.get("deepcore_version", "")
    return info


def _fill(ckpt: Checkpoint, p: Path, tensors: dict, info: dict, *, rebuild: bool) -> None:
    """Load weights, optimizer and scheduler state into ckpt's objects (building them if asked)."""
    weights = {k: v for k, v in tensors.items() if not k.startswith(_OPTIM_PREFIX)}
    _check_fits(p, ckpt.model, weights)  # every check before anything is written
    opt_info = info.get("optimizer")
    if opt_info is not None and (rebuild or ckpt.optimizer is not None):
        try:
            if ckpt.optimizer is None:
                ckpt.optimizer = _build_optimizer(ckpt.model, opt_info)
            ckpt.optimizer.load_state_dict(_optimizer_state(opt_info, tensors))
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{p}: bad optimizer state ({exc})") from None
    sched_info = info.get("scheduler")
    if sched_info is not None and ckpt.optimizer is not None:
        if ckpt.scheduler is None and rebuild:
            ckpt.scheduler = _build_scheduler(p, ckpt.optimizer, sched_info)
        elif ckpt.scheduler is not None:
            ckpt.scheduler.load_state_dict(dict(sched_info["state"]))
    try:
        ckpt.model.load_state_dict(weights)
    except (KeyError, ShapeError) as exc:
        raise CheckpointError(f"{p}: does not fit the model: {exc.args[0]}") from None
    ckpt.epoch = int(info.get("epoch", 0))
    ckpt.step = int(info.get("step", 0))
    ckpt.rng_state = info.get("rng")
    ckpt.data_rng_state = info.get("data_rng")
    ckpt.metadata = info.get("extra") or {}
    ckpt.trainer = info.get("trainer")
    ckpt.deepcore_version = str(info.get("deepcore_version", ""))
    ckpt.format_version = info["format_version"]


def _check_fits(p: Path, model: Module, weights: dict[str, np.ndarray]) -> None:
    """CheckpointError naming the first parameter whose name or shape does not fit `model`."""
    own = {n: prm.shape for n, prm in model.named_parameters()}
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{p}: does not fit the model: missing {missing}, unexpected {unexpected}"
        )
    for name, shape in own.items():
        if tuple(weights[name].shape) != shape:
            raise CheckpointError(
                f"{p}: does not fit the model: parameter {name!r} has shape "
                f"{tuple(weights[name].shape)} in the checkpoint, the model expects {shape}"
            )


def _build_optimizer(model: Module, opt_info: dict[str, Any]) -> Optimizer:
    from . import optim

    cls = getattr(optim, opt_info["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise ValueError(f"unknown optimizer class {opt_info['class']!r}")
    named = dict(model.named_parameters())
    names = opt_info["param_names"]
    groups = []
    for g in opt_info["param_groups"]:
        hp = {k: tuple(v) if isinstance(v, list) else v for k, v in g.items() if k != "params"}
        groups.append({**hp, "params": [named[names[i]] for i in g["params"]]})
    accepted = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in groups[0].items() if k in accepted and k != "params"}
    return cls(groups, **kwargs)


def _optimizer_state(opt_info: dict[str, Any], tensors: dict[str, np.ndarray]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPTIM_PREFIX):
            index, _, name = key[len(_OPTIM_PREFIX) :].partition(".")
            state.setdefault(int(index), {})[name] = value
    for index, scalars in opt_info.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(scalars)
    return {"state": state, "param_groups": opt_info["param_groups"]}


def _build_scheduler(p: Path, opt: Optimizer, info: dict[str, Any]) -> LRScheduler:
    from .optim import schedulers

    cls = getattr(schedulers, info.get("class", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, LRScheduler)):
        raise CheckpointError(f"{p}: unknown scheduler class {info.get('class')!r}")
    sched = cls.__new__(cls)  # state_dict holds every attribute; skip __init__'s first step
    sched.optimizer = opt
    sched.load_state_dict(dict(info["state"]))
    return sched


# ---------------------------------------------------------------------------------------- trainer
def save_trainer(path: PathLike, trainer: Trainer, *, extra: dict[str, Any] | None = None) -> Path:
    """Checkpoint everything a Trainer needs to resume exactly (same as save(trainer=...))."""
    return save(path, trainer=trainer, extra=extra)


def load_trainer(
    path: PathLike, *, backend: str | Backend | None = None, dtype: Any = None
) -> Trainer:
    """A Trainer rebuilt from a checkpoint saved with a trainer, ready for `fit(...)` to go on
    from the saved epoch: model, loss, optimizer, scheduler, counters, history and both RNGs."""
    from .train import LOSSES, History, Trainer

    ckpt = load(path, backend=backend, dtype=dtype)
    facts = ckpt.trainer
    if facts is None or ckpt.optimizer is None:
        raise CheckpointError(
            f"{ckpt.path}: saved without a trainer; use deepcore.load and build a Trainer"
        )
    loss_name = facts["loss"]["type"]
    by_class = {cls.__name__: cls for cls in LOSSES.values()}
    if loss_name not in by_class:
        raise CheckpointError(f"{ckpt.path}: unknown loss {loss_name!r}")
    loss = by_class[loss_name](
        facts["loss"].get("reduction", "mean"), backend=ckpt.model.backend, dtype=ckpt.model.dtype
    )
    trainer = Trainer(
        ckpt.model,
        loss,
        ckpt.optimizer,
        scheduler=ckpt.scheduler,
        seed=None,
        clip_grad_norm=facts.get("clip_grad_norm"),
    )
    trainer.rng = ckpt.data_rng()
    trainer.epoch, trainer.step = ckpt.epoch, ckpt.step
    trainer.history = History(list(facts.get("history", [])))
    return trainer


class CheckpointEveryEpoch:
    """Trainer callback: save the whole trainer to `path` after every `every` completed epochs.

    Each save is atomic, so when training stops (NonFiniteError, Ctrl-C, a crash) the file holds
    the last completed epoch intact. Use: trainer.fit(..., callbacks=[CheckpointEveryEpoch(p)]).
    """

    def __init__(self, path: PathLike, every: int = 1, extra: dict[str, Any] | None = None):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"CheckpointEveryEpoch: every must be a positive integer, got {every}")
        self.path = Path(path)
        self.every = every
        self.extra = extra

    def __call__(self, trainer: Trainer) -> None:
        if trainer.epoch % self.every == 0:
            save(self.path, trainer=trainer, extra=self.extra)
