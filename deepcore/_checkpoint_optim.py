"""Checks of a checkpoint's training state: optimizer groups and state tensors against the
optimizer class's schema, the scheduler's fields, the trainer's facts and loss scaler."""

from __future__ import annotations

import inspect
import math
from typing import Any

from ._checkpoint_fields import (
    _MAX_INT,
    OPTIM_PREFIX,
    _check_dtype,
    _count,
    _Fail,
    _is_int,
    _is_real,
    _real,
)

#: optimizer class -> (state tensors always present once a parameter has state, scalars)
_STATE = {
    "SGD": ((), ()),
    "Adam": (("exp_avg", "exp_avg_sq"), ("step",)),
    "AdamW": (("exp_avg", "exp_avg_sq"), ("step",)),
    "RMSprop": (("square_avg",), ("step",)),
}
_NON_NEGATIVE_STATE = ("exp_avg_sq", "max_exp_avg_sq", "square_avg")
_BOOL_HP = ("amsgrad", "maximize", "nesterov", "centered")
#: scheduler class -> its own state fields and their checks (besides base_lrs and last_epoch)
_SCHEDULERS: dict[str, dict[str, tuple[str, float, float]]] = {
    "StepLR": {"step_size": ("int", 1, _MAX_INT), "gamma": ("float", 0.0, math.inf)},
    "CosineAnnealingLR": {"T_max": ("int", 1, _MAX_INT), "eta_min": ("float", 0.0, math.inf)},
    "LinearLR": {
        "start_factor": ("float", 1e-300, 1.0),
        "end_factor": ("float", 0.0, 1.0),
        "total_iters": ("int", 0, _MAX_INT),
    },
    "WarmupCosineLR": {
        "warmup": ("int", 0, _MAX_INT),
        "total": ("int", 1, _MAX_INT),
        "eta_min": ("float", 0.0, math.inf),
    },
}


def _check_groups(fail: _Fail, cls: type, groups: Any, n_params: int) -> list[dict[str, Any]]:
    if not isinstance(groups, list) or not groups:
        fail("optimizer.param_groups", "must be a non-empty list")
    accepted = set(inspect.signature(cls).parameters) - {"params"}
    seen: list[int] = []
    for gi, g in enumerate(groups):
        where = f"optimizer.param_groups[{gi}]"
        if not isinstance(g, dict):
            fail(where, "must be an object")
        idx = g.get("params")
        if not isinstance(idx, list) or not idx or not all(_is_int(i) for i in idx):
            fail(f"{where}.params", "must be a non-empty list of parameter indices")
        seen.extend(idx)
        keys = set(g) - {"params", "initial_lr"}
        if keys != accepted:
            fail(
                where,
                f"hyperparameters {sorted(keys)} do not match {cls.__name__}'s {sorted(accepted)}",
            )
        for k in keys | ({"initial_lr"} & set(g)):
            v = g[k]
            if k in _BOOL_HP:
                if not isinstance(v, bool):
                    fail(f"{where}.{k}", f"must be true or false, got {v!r}")
            elif k == "betas":
                if not (isinstance(v, list) and len(v) == 2):
                    fail(f"{where}.betas", f"must be a pair, got {v!r}")
                for b in v:
                    _real(fail, f"{where}.betas", b, 0.0, 1.0 - 1e-12)
            elif k == "alpha":
                _real(fail, f"{where}.alpha", v, 0.0, 1.0)
            elif k == "dampening":
                _real(fail, f"{where}.dampening", v, -math.inf)
            else:
                _real(fail, f"{where}.{k}", v)
        hp = {k: tuple(v) if isinstance(v, list) else v for k, v in g.items() if k != "params"}
        try:
            cls._validate(cls.__new__(cls), hp)
        except (ValueError, TypeError, KeyError) as exc:
            fail(where, str(exc))
        if cls.__name__ == "SGD" and g["nesterov"] and (g["momentum"] <= 0 or g["dampening"]):
            fail(where, "Nesterov momentum needs a momentum and zero dampening")
    if sorted(seen) != list(range(n_params)):
        fail("optimizer.param_groups", f"must cover parameters 0..{n_params - 1} once each")
    return groups


def _check_optimizer(
    fail: _Fail, opt: Any, weights: dict[str, Any], tensors: dict[str, Any], dtype: str
) -> tuple[dict[int, dict[str, str]], dict[int, dict[str, int]]]:
    from . import optim

    if not isinstance(opt, dict) or set(opt) != {"class", "param_names", "param_groups", "scalars"}:
        fail("metadata field 'optimizer'", "must hold class, param_names, param_groups, scalars")
    name = opt["class"]
    cls = getattr(optim, name, None) if isinstance(name, str) else None
    if not isinstance(name, str) or name not in _STATE or not isinstance(cls, type):
        fail("optimizer.class", f"unknown optimizer class {name!r}")
    names = opt["param_names"]
    if (
        not isinstance(names, list)
        or not names
        or not all(isinstance(n, str) and n in weights for n in names)
        or len(set(names)) != len(names)
    ):
        fail("optimizer.param_names", "must list distinct parameters of the model")
    groups = _check_groups(fail, cls, opt["param_groups"], len(names))
    group_of = {i: g for g in groups for i in g["params"]}
    always, scalar_keys = _STATE[name]
    state: dict[int, dict[str, str]] = {}
    numbers: dict[int, dict[str, int]] = {}
    for key, a in tensors.items():
        if not key.startswith(OPTIM_PREFIX):
            continue
        index, _, sname = key[len(OPTIM_PREFIX) :].partition(".")
        if not (index.isascii() and index.isdigit() and int(index) < len(names)):
            fail(f"tensor {key!r}", "names no parameter of the optimizer")
        i = int(index)
        g = group_of[i]
        allowed = set(always)
        if name in ("Adam", "AdamW") and g["amsgrad"]:
            allowed.add("max_exp_avg_sq")
        if name == "SGD" and g["momentum"] != 0:
            allowed.add("momentum_buffer")
        if name == "RMSprop":
            allowed |= {"momentum_buffer"} if g["momentum"] > 0 else set()
            allowed |= {"grad_avg"} if g["centered"] else set()
        if sname not in allowed:
            fail(f"tensor {key!r}", f"is not state of {name} (expected one of {sorted(allowed)})")
        shape = tuple(weights[names[i]].shape)
        if tuple(a.shape) != shape:
            fail(f"tensor {key!r}", f"has shape {tuple(a.shape)}, its parameter has {shape}")
        _check_dtype(fail, f"tensor {key!r}", a, dtype)
        state.setdefault(i, {})[sname] = key
    scalars = opt["scalars"]
    if not isinstance(scalars, dict):
        fail("optimizer.scalars", "must be an object")
    for index, entry in scalars.items():
        where = f"optimizer.scalars[{index!r}]"
        if not (index.isascii() and index.isdigit() and int(index) < len(names)):
            fail(where, "names no parameter of the optimizer")
        if not isinstance(entry, dict) or set(entry) - set(scalar_keys):
            fail(where, f"{name} keeps only {list(scalar_keys)} as numbers")
        for k, v in entry.items():
            numbers.setdefault(int(index), {})[k] = _count(fail, f"{where}.{k}", v, 1)
    for i in set(state) | set(numbers):
        st = {**state.get(i, {}), **numbers.get(i, {})}
        g = group_of[i]
        need = set(always) | set(scalar_keys)
        if name in ("Adam", "AdamW") and g["amsgrad"]:
            need.add("max_exp_avg_sq")
        if name == "SGD" and g["momentum"] != 0:
            need.add("momentum_buffer")
        if name == "RMSprop":
            need |= {"momentum_buffer"} if g["momentum"] > 0 else set()
            need |= {"grad_avg"} if g["centered"] else set()
        missing = sorted(need - set(st))
        if missing:
            fail(f"optimizer state of parameter {i} ({names[i]})", f"is missing {missing}")
    return state, numbers


def _check_scheduler(fail: _Fail, sched: Any, n_groups: int) -> dict[str, Any]:
    if not isinstance(sched, dict) or set(sched) != {"class", "state"}:
        fail("metadata field 'scheduler'", "must hold class and state")
    name, state = sched["class"], sched["state"]
    if not isinstance(name, str) or name not in _SCHEDULERS:
        fail("scheduler.class", f"unknown scheduler class {name!r}")
    own = _SCHEDULERS[name]
    if not isinstance(state, dict) or set(state) != {"base_lrs", "last_epoch", *own}:
        keys = sorted(state) if isinstance(state, dict) else state
        fail("scheduler.state", f"{name} needs {sorted({'base_lrs', 'last_epoch', *own})}: {keys}")
    base = state["base_lrs"]
    if not isinstance(base, list) or len(base) != n_groups:
        fail("scheduler.base_lrs", f"must list one learning rate per group ({n_groups})")
    for lr in base:
        _real(fail, "scheduler.base_lrs", lr)
    _count(fail, "scheduler.last_epoch", state["last_epoch"], -1)
    for key, (kind, low, high) in own.items():
        if kind == "int":
            _count(fail, f"scheduler.{key}", state[key], int(low))
        else:
            _real(fail, f"scheduler.{key}", state[key], low, high)
    if name == "WarmupCosineLR" and not state["warmup"] < state["total"]:
        fail("scheduler", f"warmup {state['warmup']} must be below total {state['total']}")
    from .optim import schedulers

    probe = getattr(schedulers, name).__new__(getattr(schedulers, name))
    probe.__dict__.update(state)
    for lr in base:
        try:
            value = probe.lr_at(lr, state["last_epoch"])
        except (ArithmeticError, ValueError) as exc:
            fail("scheduler", f"gives no learning rate ({exc})")
        if not (_is_real(value) and value >= 0):
            fail("scheduler", f"gives learning rate {value!r} at epoch {state['last_epoch']}")
    return sched


_TRAINER_KEYS = {"loss", "clip_grad_norm", "history"}


def _check_scaler(fail: _Fail, sc: Any) -> None:
    """fp16's loss scaler state (deepcore.amp.GradScaler.state_dict)."""
    keys = {"scale", "growth_factor", "backoff_factor", "growth_interval", "growth_tracker",
            "skipped_steps"}  # fmt: skip
    if not isinstance(sc, dict) or set(sc) != keys:
        fail("trainer.scaler", f"must hold {', '.join(sorted(keys))}")
    _real(fail, "trainer.scaler.scale", sc["scale"], 1e-300, 1e300)
    _real(fail, "trainer.scaler.growth_factor", sc["growth_factor"], 1.0 + 1e-12, 1e300)
    _real(fail, "trainer.scaler.backoff_factor", sc["backoff_factor"], 1e-300, 1.0 - 1e-12)
    for key in ("growth_interval", "growth_tracker", "skipped_steps"):
        v = sc[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (key == "growth_interval"):
            fail(f"trainer.scaler.{key}", f"must be an integer >= 0 (interval >= 1), got {v!r}")


def _check_trainer(fail: _Fail, facts: Any) -> dict[str, Any]:
    if not isinstance(facts, dict) or set(facts) - {"scaler"} != _TRAINER_KEYS:
        fail("metadata field 'trainer'", "must hold loss, clip_grad_norm, history (and scaler)")
    if "scaler" in facts:
        _check_scaler(fail, facts["scaler"])
    loss = facts["loss"]
    if not isinstance(loss, dict) or set(loss) != {"type", "reduction"}:
        fail("trainer.loss", "must hold type and reduction")
    if not (isinstance(loss["type"], str) and 0 < len(loss["type"]) < 100):
        fail("trainer.loss.type", f"must be a loss class name, got {loss['type']!r}")
    if loss["reduction"] not in ("mean", "sum"):
        fail("trainer.loss.reduction", f"must be 'mean' or 'sum', got {loss['reduction']!r}")
    clip = facts["clip_grad_norm"]
    if clip is not None:
        _real(fail, "trainer.clip_grad_norm", clip, 1e-300)
    history = facts["history"]
    if not isinstance(history, list) or not all(
        isinstance(r, dict)
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)
            for v in r.values()
        )
        for r in history
    ):
        fail("trainer.history", "must be a list of {name: number} records")
    return facts
