"""Whether the CuPy backend can run here, and why not: `probe()` never raises and never needs a
GPU to answer. Split from cupy.py (which re-exports `probe` for the registry).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

INSTALL_HINT = "pip install 'deepcore[cuda12]' or 'deepcore[cuda13]'"


def _version(v: int) -> str:
    """12040 -> '12.4' (CUDA's encoding of versions)."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def probe(device: int | None = None) -> tuple[bool, str]:
    """(True, '<name>, compute capability X.Y, CUDA a.b') when device N really works, else
    (False, why). Never raises."""
    try:
        return _probe(0 if device is None else int(device))
    except Exception as exc:  # a broken driver or install must not break the caller
        return False, f"cupy probe failed: {type(exc).__name__}: {exc}"


def _probe(index: int) -> tuple[bool, str]:
    if importlib.util.find_spec("cupy") is None:
        return False, f"cupy is not installed ({INSTALL_HINT})"
    try:
        cupy = importlib.import_module("cupy")
    except Exception as exc:
        return False, f"cupy failed to import: {type(exc).__name__}: {exc}"
    runtime = cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
    except runtime.CUDARuntimeError as exc:
        return False, f"no CUDA device visible ({exc})"
    if count == 0:
        return False, "no CUDA device visible (check the driver and CUDA_VISIBLE_DEVICES)"
    if not 0 <= index < count:
        return False, f"CUDA device {index} does not exist ({count} visible: 0..{count - 1})"
    driver, rt = runtime.driverGetVersion(), runtime.runtimeGetVersion()
    note = ""
    if driver // 1000 < rt // 1000:
        return False, (
            f"the NVIDIA driver supports CUDA {_version(driver)}, older than the CUDA runtime "
            f"{_version(rt)} cupy was built for: update the driver or install the cupy wheel "
            f"for CUDA {driver // 1000} (deepcore[cuda{driver // 1000}])"
        )
    if driver < rt:
        note = f" (driver CUDA {_version(driver)}: minor-version compatibility)"
    props = runtime.getDeviceProperties(index)
    try:  # a tiny real launch: "visible" is not "works" (e.g. a busy or broken device)
        with cupy.cuda.Device(index):
            (cupy.arange(4, dtype="float32") * 2).sum()
            cupy.cuda.Device(index).synchronize()
    except Exception as exc:
        return False, f"CUDA device {index} failed a smoke test: {type(exc).__name__}: {exc}"
    return True, (
        f"{_text(props['name'])}, compute capability {props['major']}.{props['minor']}, "
        f"CUDA {_version(rt)}{note}"
    )
