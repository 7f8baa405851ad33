"""Machine and library facts recorded beside every result: CPU, cores, BLAS, threads, GPU,
versions, date and load (these shared machines are noisy, and the load says how noisy)."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from importlib import metadata
from typing import Any

from .. import machine as _machine
from ..machine import cpu_model

__all__ = ["cpu_model", "machine_info", "blas_pools", "blas_threads", "thread_counts", "versions"]

_PACKAGES = (
    "deepcore",
    "numpy",
    "numba",
    "torch",
    "scikit-learn",
    "cupy-cuda12x",
    "cupy-cuda13x",
    "threadpoolctl",
    "jax",
    "optax",
    "mkl",
    "matplotlib",
    "rich",
    "psutil",
)


def versions() -> dict[str, str | None]:
    """Installed versions (None when missing), read without importing the packages."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def blas_pools() -> list[dict[str, Any]]:
    """Every native thread pool threadpoolctl sees (BLAS, OpenMP), or [] without it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "version", "num_threads", "architecture", "prefix")
    return [{k: p.get(k) for k in keep} for p in threadpool_info()]


def blas_threads() -> int | None:
    for p in blas_pools():
        if p["user_api"] == "blas":
            return p["num_threads"]
    return None


def gpu_info() -> dict[str, Any]:
    """CUDA devices as cupy and torch see them (only libraries already installed are asked)."""
    info: dict[str, Any] = {}
    mods = sys.modules
    try:
        import importlib.util

        if importlib.util.find_spec("cupy") is not None:
            import cupy

            n = cupy.cuda.runtime.getDeviceCount()
            info["cupy_devices"] = [
                cupy.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(n)
            ]
            info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    except Exception as exc:  # no driver, no device: say so
        info["cupy_error"] = f"{type(exc).__name__}: {exc}"
    if "torch" in mods:
        torch = mods["torch"]
        info["torch_cuda"] = bool(torch.cuda.is_available())
        if info["torch_cuda"]:
            info["torch_cuda_device"] = torch.cuda.get_device_name(0)
            info["torch_cuda_version"] = torch.version.cuda
    return info


def thread_counts() -> dict[str, Any]:
    """Thread counts of every library in play (only those already imported are asked)."""
    out: dict[str, Any] = {"blas": blas_threads()}
    mods = sys.modules
    if "torch" in mods:
        out["torch"] = mods["torch"].get_num_threads()
    if "numba" in mods:
        try:
            out["numba"] = mods["numba"].get_num_threads()
        except Exception:
            pass
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        if os.environ.get(var):
            out[var] = os.environ[var]
    return out


def machine_info() -> dict[str, Any]:
    """Everything worth knowing to read (or distrust) a set of numbers later."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "loadavg_1_5_15": load,
        "cpu_level": _machine.cpu_level(_machine.cpu_flags()),
        "cores_physical": _machine.physical_cores(),
        "threadpools": blas_pools(),
        "blas": _machine.blas_libraries(),
        "blas_env": _machine.blas_env(),
        "blas_warnings": _machine.blas_warnings(),
        "threads": thread_counts(),
        "gpu": gpu_info(),
        "versions": versions(),
    }
