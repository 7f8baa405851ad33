"""Every check a checkpoint passes before anything is built or written.

`check` takes what `_checkpoint_format.read` returned and validates every metadata field and
every tensor against each other: the model config against the stored shapes (so nothing is
allocated for a forged config), optimizer and scheduler state against their classes' schemas,
finiteness and value domains. Each refusal is a CheckpointError naming the file and the field;
finiteness and value domains (training state: _checkpoint_optim; field checks: _checkpoint_fields).
Each refusal is a CheckpointError naming the file and the field; nothing else escapes, and
nothing is built here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._checkpoint_fields import (
    _MAX_DEPTH,
    _MAX_INT,
    OPTIM_PREFIX,
    _check_dtype,
    _count,
    _Fail,
    _generator_state,
    _is_int,
    _is_real,
    _non_negative,
    all_finite,
)
from ._checkpoint_optim import (
    _NON_NEGATIVE_STATE,
    _check_optimizer,
    _check_scheduler,
    _check_trainer,
)


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
