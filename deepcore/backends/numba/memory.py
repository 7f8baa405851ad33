"""Aligned host arrays for the Numba kernels: non-temporal (streaming) stores need whole
vectors on aligned addresses, and a cache-line start keeps a vector load in one line."""

from __future__ import annotations

from typing import Any

import numpy as np


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialized C-contiguous array starting on a 64-byte cache line."""
    dt = np.dtype(dtype)
    size = int(np.prod(shape)) * dt.itemsize
    raw = np.empty(size + 64, np.uint8)
    off = -raw.ctypes.data % 64
    return raw[off : off + size].view(dt).reshape(shape)
