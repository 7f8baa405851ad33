"""Thread counts for the CPU backends: Numba's parallel loops and the BLAS library.

Never imports numba: when numba is not imported yet, NUMBA_NUM_THREADS is set for its import.
Numba kernels never call BLAS inside a parallel loop, so the two pools do not oversubscribe.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def set_num_threads(n: int) -> None:
    """Use n threads for Numba parallel kernels and for BLAS (via threadpoolctl, if installed)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be an integer >= 1, got {n!r}")
    numba = sys.modules.get("numba")
    if numba is None:
        os.environ["NUMBA_NUM_THREADS"] = str(n)
    else:
        limit = numba.config.NUMBA_NUM_THREADS
        if n > limit:
            raise ValueError(
                f"set_num_threads: numba was started with {limit} threads; n={n} is more "
                "(set NUMBA_NUM_THREADS before numba is imported to raise the limit)"
            )
        numba.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=n, user_api="blas")


def get_num_threads() -> int:
    """Numba's current thread count (or what it will start with when not imported yet)."""
    numba = sys.modules.get("numba")
    if numba is not None:
        return int(numba.get_num_threads())
    env = os.environ.get("NUMBA_NUM_THREADS")
    return int(env) if env else (os.cpu_count() or 1)


def threading_info() -> dict[str, Any]:
    """For `deepcore info`: Numba's threading layer and thread count, BLAS threads."""
    info: dict[str, Any] = {"numba_threads": get_num_threads()}
    numba = sys.modules.get("numba")
    if numba is not None:
        try:
            info["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            info["numba_threading_layer"] = "not started (no parallel kernel has run yet)"
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info["blas_threads"] = "unknown (install threadpoolctl)"
        return info
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if len(pools) > 1:  # e.g. NumPy's OpenBLAS and the Numba backend's MKL
        info["blas_threads"] = ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in pools)
    else:
        info["blas_threads"] = pools[0].get("num_threads") if pools else None
    return info
