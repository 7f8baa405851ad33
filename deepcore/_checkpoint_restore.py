"""Building and filling objects from a checked checkpoint (the load side of deepcore.io).

The `*_fits` functions check a checkpoint against objects a user built (load_into) before
anything is written; the builders make new ones (load). Nothing here reads files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import _checkpoint_checks as checks
from . import _checkpoint_format as fmt
from . import random as dc_random
from .backends import Backend
from .errors import CheckpointError
from .nn.module import Module, Parameter
from .optim.optimizer import Optimizer
from .optim.schedulers import LRScheduler


def can_read_into(prm: Parameter, spec: fmt.Spec) -> bool:
    a = prm.data
    return (
        isinstance(a, np.ndarray)
        and a.dtype == spec.dtype
        and a.shape == spec.shape
        and a.flags.c_contiguous
        and a.flags.writeable
    )


def check_fits(p: Path, model: Module, weights: dict[str, Any]) -> None:
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


def check_optimizer_fits(
    p: Path, model: Module, opt: Optimizer, c: checks.Checked
) -> list[Parameter]:
    """The optimizer's parameters in the checkpoint's order, after checking that its class,
    parameters and groups are the checkpoint's."""
    saved = c.optimizer
    if saved is None:
        raise CheckpointError(f"{p}: holds no optimizer state to load into {type(opt).__name__}")
    if saved["class"] != type(opt).__name__:
        raise CheckpointError(
            f"{p}: optimizer.class is {saved['class']}, the optimizer given is {type(opt).__name__}"
        )
    names = {id(prm): n for n, prm in model.named_parameters()}
    params = opt._params()
    mine = [names.get(id(prm)) for prm in params]
    if mine != saved["param_names"]:
        raise CheckpointError(
            f"{p}: optimizer.param_names {saved['param_names']} differ from the given "
            f"optimizer's parameters {mine}"
        )
    groups = saved["param_groups"]
    if len(groups) != len(opt.param_groups):
        raise CheckpointError(
            f"{p}: optimizer state has {len(groups)} parameter groups, the optimizer given has "
            f"{len(opt.param_groups)}"
        )
    index = {id(prm): i for i, prm in enumerate(params)}
    for gi, (g, mg) in enumerate(zip(groups, opt.param_groups, strict=True)):
        if g["params"] != [index[id(prm)] for prm in mg["params"]]:
            raise CheckpointError(
                f"{p}: optimizer.param_groups[{gi}] holds other parameters than the given "
                f"optimizer's group {gi}"
            )
    return params


def check_scheduler_fits(
    p: Path, sched: LRScheduler, opt: Optimizer | None, c: checks.Checked
) -> None:
    if c.scheduler is None:
        raise CheckpointError(f"{p}: holds no scheduler state to load into {type(sched).__name__}")
    if c.scheduler["class"] != type(sched).__name__:
        raise CheckpointError(
            f"{p}: scheduler.class is {c.scheduler['class']}, the scheduler given is "
            f"{type(sched).__name__}"
        )
    if opt is None or sched.optimizer is not opt:
        raise CheckpointError(
            f"{p}: load a scheduler together with the optimizer it drives "
            f"(load_into(path, model, optimizer, scheduler))"
        )


def build_model(p: Path, c: checks.Checked, backend: Backend, dtype: str) -> Module:
    from .nn import build

    saved_rng = dc_random.get_state()
    try:
        return build(c.config, backend=backend, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - any failure to build is a bad config
        raise CheckpointError(
            f"{p}: model config: cannot rebuild the model ({type(exc).__name__}: {exc})"
        ) from None
    finally:
        dc_random.set_state(saved_rng)  # building drew initial weights; undo that


def build_optimizer(p: Path, model: Module, saved: dict[str, Any]) -> Optimizer:
    import inspect

    from . import optim

    cls = getattr(optim, saved["class"])
    named = dict(model.named_parameters())
    names = saved["param_names"]
    groups = []
    for g in saved["param_groups"]:
        hp = {k: tuple(v) if isinstance(v, list) else v for k, v in g.items() if k != "params"}
        groups.append({**hp, "params": [named[names[i]] for i in g["params"]]})
    accepted = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in groups[0].items() if k in accepted and k != "params"}
    try:
        opt = cls(groups, **kwargs)
        opt.load_state_dict({"state": {}, "param_groups": saved["param_groups"]})
    except Exception as exc:  # noqa: BLE001 - checked already; a refusal here is a bad file
        raise CheckpointError(f"{p}: optimizer: cannot rebuild it ({exc})") from None
    return opt


def write_optimizer(
    opt: Optimizer, params: list[Parameter], c: checks.Checked, tensors: dict[str, np.ndarray]
) -> None:
    """Hyperparameters and state into `opt` (all checked): state arrays are the freshly read
    ones, moved to each parameter's backend and dtype, so nothing is copied twice."""
    assert c.optimizer is not None
    opt.load_state_dict({"state": {}, "param_groups": c.optimizer["param_groups"]})
    state: dict[int, dict[str, Any]] = {}
    for i in sorted(set(c.state_tensors) | set(c.state_scalars)):
        prm = params[i]
        entry: dict[str, Any] = {
            k: prm.backend.asarray(tensors[key].astype(prm.dtype, copy=False))
            for k, key in c.state_tensors.get(i, {}).items()
        }
        entry.update(c.state_scalars.get(i, {}))
        state[id(prm)] = entry
    opt.state = state


def build_scheduler(p: Path, opt: Optimizer | None, saved: dict[str, Any]) -> LRScheduler:
    from .optim import schedulers

    cls = getattr(schedulers, saved["class"])
    sched = cls.__new__(cls)  # state_dict holds every attribute; skip __init__'s first step
    sched.optimizer = opt
    sched.load_state_dict(dict(saved["state"]))
    return sched


def write_weights(model: Module, tensors: dict[str, np.ndarray]) -> None:
    """Checked weights into the model without a staging copy: a parameter already read in place
    is left alone, a host one of the same dtype is overwritten in its own buffer, any other
    (another dtype, a device) goes through Module.load_state_dict."""
    rest = {}
    for name, prm in model.named_parameters():
        a = tensors[name]
        if a is prm.data:
            continue
        if (
            isinstance(prm.data, np.ndarray)
            and prm.data.dtype == a.dtype
            and prm.data.flags.writeable
        ):
            np.copyto(prm.data, a)
        else:
            rest[name] = a
    if rest:
        model.load_state_dict(rest, strict=False)
