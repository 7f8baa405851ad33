"""The one seeded host generator. Initial weights, dropout masks and shuffling draw from it,
on the host, so every backend starts from and sees the same numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

_rng: np.random.Generator = np.random.default_rng()


def seed(value: int) -> None:
    """Re-seed deepcore's generator (weights, dropout masks, shuffling)."""
    global _rng
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    _rng = np.random.default_rng(int(value))


def get_rng() -> np.random.Generator:
    """The generator deepcore draws from (a numpy.random.Generator)."""
    return _rng


def get_state() -> dict[str, Any]:
    """JSON-able state of the generator, for checkpoints."""
    return _rng.bit_generator.state


def set_state(state: dict[str, Any]) -> None:
    """Restore a state returned by :func:`get_state`."""
    _rng.bit_generator.state = state


def uniform(shape: tuple[int, ...], low: float, high: float, dtype: str) -> np.ndarray:
    """Host array of U(low, high) draws, generated in float64 then cast (same numbers per dtype)."""
    return _rng.uniform(low, high, size=shape).astype(dtype)


def dropout_mask(shape: tuple[int, ...], p: float, dtype: str) -> np.ndarray:
    """Host mask with entries 0 (prob. p) or 1/(1-p) (inverted dropout, as PyTorch)."""
    keep = _rng.random(size=shape) >= p
    return keep.astype(dtype) * np.asarray(1.0 / (1.0 - p), dtype=dtype)
