"""NumPy backend: the reference implementation, BLAS for GEMMs, NumPy ufuncs for the rest.

The whole contract is the base class written against `numpy`; this file only names it and
describes the machine. It is the reference the other backends are tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Backend


def probe(device: int | None = None) -> tuple[bool, str]:
    """NumPy is a hard dependency: always available."""
    return True, f"numpy {np.__version__}"


class NumpyBackend(Backend):
    """CPU backend on NumPy and its BLAS."""

    name = "numpy"
    device = "cpu"
    xp = np

    def info(self) -> dict[str, Any]:
        return {**super().info(), "numpy": np.__version__, **blas_info()}


def blas_info() -> dict[str, Any]:
    """BLAS library and thread count, from threadpoolctl when it is installed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"blas": "unknown (install threadpoolctl to see it)"}
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if not pools:
        return {"blas": "none found"}
    p = pools[0]
    return {
        "blas": f"{p.get('internal_api')} {p.get('version')}",
        "blas_threads": p.get("num_threads"),
        "blas_arch": p.get("architecture"),
    }


BACKEND_CLASS = NumpyBackend
