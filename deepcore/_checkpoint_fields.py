"""The field checks every checkpoint check is made of: each failure is one CheckpointError
naming the file and the field."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .errors import CheckpointError

OPTIM_PREFIX = "optim.state."
_MAX_INT = 2**53
_MAX_DEPTH = 16


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


def _check_dtype(fail: _Fail, where: str, a: Any, dtype: str) -> None:
    if a.dtype != np.dtype(dtype):
        fail(where, f"has dtype {a.dtype}, the checkpoint's model is {dtype}")
