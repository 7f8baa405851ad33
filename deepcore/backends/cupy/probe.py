"""Whether the CuPy backend can run here, and why not: `probe()` never raises and never needs a
GPU to answer. Split from backend.py (which re-exports `probe` for the registry).

"Available" means every piece the backend uses worked once on the device: memory and copies,
NVRTC compiling and running one of deepcore's own kernel modules (CuPy also needs the CUDA
headers for that), and a cuBLAS GEMM. CuPy 14's plain wheel ships none of NVRTC, the headers or
cuBLAS; its `[ctk]` extra (deepcore's `cuda12` / `cuda13` extras) brings them. Each piece that
fails is named on its own line of the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import numpy as np

INSTALL_HINT = "pip install 'deepcore[cuda12]' or 'deepcore[cuda13]'"


def _version(v: int) -> str:
    """12040 -> '12.4' (CUDA's encoding of versions)."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split()) or '(no message)'}"


def probe(device: int | None = None) -> tuple[bool, str]:
    """(True, '<name>, compute capability X.Y, CUDA a.b') when device N really works, else
    (False, why): a first line, then one line per missing or failing piece. Never raises."""
    try:
        return _probe(0 if device is None else int(device))
    except Exception as exc:  # a broken driver or install must not break the caller
        return False, f"cupy probe failed: {_one_line(exc)}"


def _probe(index: int) -> tuple[bool, str]:
    if importlib.util.find_spec("cupy") is None:
        return False, f"cupy is not installed ({INSTALL_HINT})"
    try:
        cupy = importlib.import_module("cupy")
    except Exception as exc:
        return False, f"cupy failed to import: {_one_line(exc)}"
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
    what = (
        f"{_text(props['name'])}, compute capability {props['major']}.{props['minor']}, "
        f"CUDA {_version(rt)}{note}"
    )
    try:  # "visible" is not "works" (e.g. a busy or broken device): memory and copies first
        with cupy.cuda.Device(index):
            _check_memory(cupy)
    except Exception as exc:
        return False, f"CUDA device {index} failed a smoke test: {_one_line(exc)}"
    missing = []
    for piece, check in (("NVRTC", _check_nvrtc), ("cuBLAS", _check_cublas)):
        try:
            with cupy.cuda.Device(index):
                check(cupy)
        except Exception as exc:
            missing.append(f"  {piece}: {_one_line(exc)}")
    if missing:
        major = rt // 1000
        head = (
            f"cupy {cupy.__version__} sees {what} but cannot run deepcore there; install CUDA's "
            f"libraries with pip install 'deepcore[cuda{major}]' (cupy-cuda{major}x[ctk]: "
            f"NVRTC, the CUDA headers, cuBLAS). Failing:"
        )
        return False, "\n".join([head, *missing])
    return True, what


def _check_memory(cupy: Any) -> None:
    """Allocate, copy in, copy out: no kernel (so no NVRTC) involved."""
    host = np.arange(4, dtype=np.float32)
    back = cupy.asnumpy(cupy.asarray(host))
    cupy.cuda.Device().synchronize()
    if not np.array_equal(back, host):
        raise RuntimeError(f"a host -> device -> host copy changed the data: {back}")


def _check_nvrtc(cupy: Any) -> None:
    """Compile deepcore's elementwise module with the backend's NVRTC options and run one kernel
    (a bias add on 4 values). CuPy memoizes the module, so the backend reuses this compile."""
    from ...kernels.cuda import NVRTC_OPTIONS, source
    from ...kernels.cuda.spec import KERNELS, kernels_in, marshal

    names = [k.name_expression("float32") for k in kernels_in("elementwise.cu")]
    module = cupy.RawModule(code=source("elementwise.cu"), options=NVRTC_OPTIONS,
                            name_expressions=names)  # fmt: skip
    kernel = module.get_function(KERNELS["dc_bias_act"].name_expression("float32"))
    z = cupy.asarray(np.arange(4, dtype=np.float32))
    b = cupy.asarray(np.ones(1, dtype=np.float32))
    out = cupy.asarray(np.zeros(4, dtype=np.float32))
    args = (z, b, out, out, 4, 1, 0, 0.0, 1)  # identity(z + b[col]) over 4 rows, 1 column
    kernel((1, 1, 1), (32, 1, 1), marshal(KERNELS["dc_bias_act"], "float32", args))
    got = cupy.asnumpy(out)
    if not np.array_equal(got, np.arange(1, 5, dtype=np.float32)):
        raise RuntimeError(f"dc_bias_act<float> computed {got.tolist()}, not [1, 2, 3, 4]")


def _check_cublas(cupy: Any) -> None:
    """One 2x2 float32 GEMM through cupy.cublas, as the backend calls it."""
    cublas = importlib.import_module("cupy.cublas")
    a = cupy.asarray(np.array([[1, 2], [3, 4]], dtype=np.float32))
    b = cupy.asarray(np.array([[5, 6], [7, 8]], dtype=np.float32))
    out = cupy.asarray(np.zeros((2, 2), dtype=np.float32))
    cublas.gemm("N", "N", a, b, out=out)
    got = cupy.asnumpy(out)
    if not np.array_equal(got, [[19, 22], [43, 50]]):
        raise RuntimeError(f"a 2x2 GEMM gave {got.tolist()}, not [[19, 22], [43, 50]]")
