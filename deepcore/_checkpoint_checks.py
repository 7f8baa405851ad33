"""Every check a checkpoint passes before anything is built or written.

`check` takes what `_checkpoint_format.read` returned and validates every metadata field and
every tensor against each other: the model config against the stored shapes (so nothing is
allocated for a forged config), optimizer and scheduler state against their classes' schemas,
finiteness and value domains. Each refusal is a CheckpointError naming the file and the field;
nothing else escapes, and nothing is built here.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .errors import CheckpointError

OPTIM_PREFIX = "optim.state."
_MAX_INT = 2**53
_MAX_DEPTH = 16
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


def _size(v: Any) -> bool:
    return _is_int(v) and 1 <= v <= _MAX_INT


#: every module `deepcore.nn.build` makes, with the fields of its config and their checks
_LAYERS: dict[str, dict[str, Any]] = {
    "Linear": {"in_features": _size, "out_features": _size, "bias": lambda v: isinstance(v, bool)},
    "Identity": {},
    "ReLU": {},
    "Sigmoid": {},
    "Tanh": {},
    "LeakyReLU": {"negative_slope": lambda v: _is_real(v) and v > 0},
    "GELU": {"approximate": lambda v: v in ("none", "tanh")},
    "Softmax": {"dim": lambda v: _is_int(v) and v in (-1, 1)},
    "Threshold": {"threshold": lambda v: _is_real(v)},
    "Dropout": {"p": lambda v: _is_real(v) and 0 <= v <= 1},
}


@dataclass
class Checked:
    """The validated contents of a checkpoint, ready to build from or load into objects."""

    weights: dict[str, np.ndarray]
    dtype: str
    config: dict[str, Any] | None
    epoch: int
    step: int
    rng: dict[str, Any] | None
    data_rng: dict[str, Any] | None
    extra: dict[str, Any]
    optimizer: dict[str, Any] | None
    #: {param index: {state name: tensor key in the file}} and {param index: {name: number}}
    state_tensors: dict[int, dict[str, str]] = field(default_factory=dict)
    state_scalars: dict[int, dict[str, int]] = field(default_factory=dict)
    scheduler: dict[str, Any] | None = None
    trainer: dict[str, Any] | None = None


class _Fail:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, where: str, what: str) -> NoReturn:
        raise CheckpointError(f"{self.path}: {where}: {what}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _count(fail: _Fail, where: str, v: Any, low: int = 0) -> int:
    if not _is_int(v) or not low <= v <= _MAX_INT:
        fail(where, f"must be an integer >= {low}, got {v!r}")
    return v


def _real(fail: _Fail, where: str, v: Any, low: float = 0.0, high: float = math.inf) -> float:
    if not _is_real(v) or not low <= v <= high:
        fail(where, f"must be a finite number in [{low:g}, {high:g}], got {v!r}")
    return float(v)


def all_finite(a: np.ndarray) -> bool:
    """True when every element of the float array `a` is finite (checked in 1M-element chunks,
    so a large tensor needs no full-size temporary)."""
    flat = a.reshape(-1)
    step = 1 << 20
    return all(np.isfinite(flat[i : i + step]).all() for i in range(0, flat.size, step))


def _non_negative(a: np.ndarray) -> bool:
    flat = a.reshape(-1)
    step = 1 << 20
    return all((flat[i : i + step] >= 0).all() for i in range(0, flat.size, step))


def _generator_state(fail: _Fail, where: str, state: Any) -> dict[str, Any] | None:
    """A bit-generator state that a fresh PCG64 accepts (refused otherwise)."""
    if state is None:
        return None
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        fail(where, "must be a PCG64 generator state")
    try:
        np.random.PCG64().state = state
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for bad states
        fail(where, f"bad generator state ({type(exc).__name__})")
    return state


# ---------------------------------------------------------------------------------------- model
def expected_parameters(fail: _Fail, config: Any) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes the module described by `config` would have, without
    building it (so a forged config cannot make us allocate)."""
    out: dict[str, tuple[int, ...]] = {}

    def walk(cfg: Any, prefix: str, depth: int) -> None:
        where = f"model config{' at ' + prefix if prefix else ''}"
        if depth > _MAX_DEPTH:
            fail(where, f"nested deeper than {_MAX_DEPTH} levels")
        if not isinstance(cfg, dict) or not isinstance(cfg.get("type"), str):
            fail(where, "must be an object with a 'type'")
        kind = cfg["type"]
        if kind == "Sequential":
            layers = cfg.get("layers")
            if set(cfg) != {"type", "layers"} or not isinstance(layers, list) or not layers:
                fail(where, "a Sequential needs a non-empty 'layers' list")
            for i, sub in enumerate(layers):
                walk(sub, f"{prefix}.{i}" if prefix else str(i), depth + 1)
            return
        if kind not in _LAYERS:
            fail(where, f"unknown module type {kind!r}")
        fields = _LAYERS[kind]
        if set(cfg) - {"type"} != set(fields):
            fail(
                where,
                f"a {kind} is described by {sorted(fields)}, got {sorted(set(cfg) - {'type'})}",
            )
        for key, ok in fields.items():
            if not ok(cfg[key]):
                fail(f"{where}.{key}", f"bad value {cfg[key]!r} for a {kind}")
        if kind == "Linear":
            name = f"{prefix}." if prefix else ""
            out[f"{name}weight"] = (cfg["out_features"], cfg["in_features"])
            if cfg["bias"]:
                out[f"{name}bias"] = (cfg["out_features"],)

    walk(config, "", 0)
    return out


def _check_model(fail: _Fail, info: dict[str, Any], weights: dict[str, np.ndarray]) -> tuple:
    model = info.get("model")
    if not isinstance(model, dict):
        fail("metadata field 'model'", "missing or not an object")
    dtype = model.get("dtype")
    if dtype not in ("float32", "float64"):
        fail("model.dtype", f"must be 'float32' or 'float64', got {dtype!r}")
    config = model.get("config")
    if config is not None:
        expected = expected_parameters(fail, config)
        missing = [k for k in expected if k not in weights]
        unexpected = [k for k in weights if k not in expected]
        if missing or unexpected:
            fail(
                "tensors",
                f"do not match the model config: missing {missing}, unexpected {unexpected}",
            )
        for name, shape in expected.items():
            if tuple(weights[name].shape) != shape:
                fail(
                    f"tensor {name!r}",
                    f"has shape {tuple(weights[name].shape)}, the model config says {shape}",
                )
    for name, a in weights.items():
        _check_dtype(fail, f"tensor {name!r}", a, dtype)
    return dtype, config


def _check_dtype(fail: _Fail, where: str, a: Any, dtype: str) -> None:
    if a.dtype != np.dtype(dtype):
        fail(where, f"has dtype {a.dtype}, the checkpoint's model is {dtype}")


# ---------------------------------------------------------------------------------------- optim
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


def check(path: Path, tensors: dict[str, Any], info: dict[str, Any]) -> Checked:
    """Validate a checkpoint's metadata against its tensors' names, shapes and dtypes (arrays or
    header specs: no data is needed); a CheckpointError names the first bad field."""
    fail = _Fail(path)
    known = {"model", "epoch", "step", "rng", "data_rng", "extra", "optimizer", "scheduler"}
    unknown = sorted(set(info) - known - {"trainer", "checksum"})
    if unknown:
        fail(f"metadata field {unknown[0]!r}", "is not part of a deepcore checkpoint")
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX)}
    dtype, config = _check_model(fail, info, weights)
    epoch = _count(fail, "epoch", info.get("epoch", 0))
    step = _count(fail, "step", info.get("step", 0))
    extra = info.get("extra", {})
    if not isinstance(extra, dict):
        fail("extra", "must be a JSON object")
    out = Checked(
        weights=weights,
        dtype=dtype,
        config=config,
        epoch=epoch,
        step=step,
        rng=_generator_state(fail, "rng", info.get("rng")),
        data_rng=_generator_state(fail, "data_rng", info.get("data_rng")),
        extra=extra,
        optimizer=info.get("optimizer"),
    )
    if out.optimizer is not None:
        out.state_tensors, out.state_scalars = _check_optimizer(
            fail, out.optimizer, weights, tensors, dtype
        )
    elif len(weights) != len(tensors):
        fail("tensors", "hold optimizer state but the metadata has no optimizer")
    if info.get("scheduler") is not None:
        if out.optimizer is None:
            fail("metadata field 'scheduler'", "a scheduler needs an optimizer")
        out.scheduler = _check_scheduler(
            fail, info["scheduler"], len(out.optimizer["param_groups"])
        )
    if info.get("trainer") is not None:
        if out.optimizer is None:
            fail("metadata field 'trainer'", "trainer state needs an optimizer")
        out.trainer = _check_trainer(fail, info["trainer"])
    return out


def check_data(path: Path, tensors: dict[str, np.ndarray], checked: Checked) -> None:
    """The value checks that need the data: every tensor finite, running means of squares
    non-negative, AMSGrad's maximum not below the mean it bounds."""
    fail = _Fail(path)
    for name, a in tensors.items():
        if not all_finite(a):
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            fail(f"tensor {name!r}", f"has {bad} non-finite values (NaN or Inf)")
    for i, st in checked.state_tensors.items():
        for sname, key in st.items():
            if sname in _NON_NEGATIVE_STATE and not _non_negative(tensors[key]):
                fail(f"tensor {key!r}", "has negative values (a running mean of squares cannot)")
        if "max_exp_avg_sq" in st and not _non_negative(
            tensors[st["max_exp_avg_sq"]] - tensors[st["exp_avg_sq"]]
        ):
            fail(f"optimizer state of parameter {i}", "max_exp_avg_sq is below exp_avg_sq")
