"""Optional Intel MKL GEMM for the Numba backend (`pip install 'deepcore[mkl]'`).

PyTorch's CPU GEMM is MKL; NumPy's wheels bring OpenBLAS, whose GEMMs took 1.07-1.21x MKL's
time at the benchmark's MLP shapes on the dev VM (benchmarks/numba_steps.py, BENCHMARKS.md).
When the `mkl` package is installed, the Numba backend calls its `cblas_?gemm` through ctypes.
MKL is set up to share the GNU OpenMP runtime that Numba's `omp` threading layer uses (no third
thread pool) and to run in conditional numerical reproducibility mode, so the same seed gives
the same bits run to run.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_THREADING_GNU = 3  # mkl_service.h: MKL_THREADING_GNU
_CBWR_AUTO_STRICT = 2 | 0x10000  # MKL_CBWR_AUTO | MKL_CBWR_STRICT: reproducible at any alignment
_INT_MAX = 2**31 - 1  # mkl_rt's default LP64 interface: 32-bit integers


class Mkl:
    """MKL's cblas_sgemm/dgemm on NumPy arrays (2-D, each C- or F-contiguous; out C-contiguous)."""

    def __init__(self, lib: Any, path: str, threading: str = "GNU OpenMP threads") -> None:
        self.path = path
        self.threading = threading
        self._lib = lib
        args = [ctypes.c_int] * 6
        self._fns = {}
        for char, ct in (("s", ctypes.c_float), ("d", ctypes.c_double)):
            fn = getattr(lib, f"cblas_{char}gemm")
            fn.restype = None
            fn.argtypes = [*args, ct, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                           ctypes.c_int, ct, ctypes.c_void_p, ctypes.c_int]  # fmt: skip
            self._fns[np.dtype(np.float32 if char == "s" else np.float64)] = fn
        buf = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(buf, len(buf))
        full = buf.value.decode(errors="replace")
        found = re.search(r"Version (\S+)", full)
        self.version = f"MKL {found.group(1)}" if found else full
        #: MKL's code-path branch for reproducibility (0/1: off, 2: auto, higher: pinned ISA)
        self.cbwr_branch = int(lib.MKL_CBWR_Get(1))

    def set_num_threads(self, n: int) -> None:
        self._lib.MKL_Set_Num_Threads(int(n))

    def gemm(self, a: Any, b: Any, out: Any, alpha: float = 1.0, beta: float = 0.0) -> bool:
        """out = alpha * a @ b + beta * out; False (nothing done) for a layout MKL can't take."""
        fn = self._fns.get(out.dtype)
        if fn is None or a.dtype != out.dtype or b.dtype != out.dtype:
            return False
        if a.ndim != 2 or b.ndim != 2 or out.ndim != 2 or not out.flags.c_contiguous:
            return False
        m, k = a.shape
        n = out.shape[1]
        if b.shape != (k, n) or out.shape[0] != m:
            return False
        if max(m, n, k) > _INT_MAX or min(m, n, k) == 0:
            return False
        ta, lda = _layout(a)
        tb, ldb = _layout(b)
        if ta is None or tb is None:
            return False
        if np.may_share_memory(out, a) or np.may_share_memory(out, b):
            return False  # BLAS would read what it already overwrote (NumPy buffers instead)
        fn(_ROW_MAJOR, ta, tb, m, n, k, alpha, a.ctypes.data, lda, b.ctypes.data, ldb, beta,
           out.ctypes.data, max(n, 1))  # fmt: skip
        return True

    def matmul(self, a: Any, b: Any, out: Any) -> Any:
        """np.matmul(a, b, out=out) for 2-D arrays, on MKL where the layout allows."""
        if not self.gemm(a, b, out):
            np.matmul(a, b, out=out)
        return out


def _layout(x: Any) -> tuple[int | None, int]:
    """(CBLAS transpose flag, leading dimension) of a 2-D array as row-major storage."""
    if x.flags.c_contiguous:
        return _NO_TRANS, max(x.shape[1], 1)
    if x.flags.f_contiguous:
        return _TRANS, max(x.shape[0], 1)
    return None, 0


def _library_path() -> Path:
    """libmkl_rt from the installed `mkl` distribution (its wheel puts it in <prefix>/lib)."""
    try:
        files = importlib.metadata.files("mkl") or []
    except importlib.metadata.PackageNotFoundError:
        raise OSError("the mkl package is not installed (pip install 'deepcore[mkl]')") from None
    libs = sorted(
        (f for f in files if f.name.startswith("libmkl_rt.so")), key=lambda f: len(f.name)
    )
    if not libs:
        raise OSError("the mkl package has no libmkl_rt.so (only Linux wheels are supported)")
    return Path(str(libs[0].locate())).resolve()


@functools.lru_cache(maxsize=1)
def load() -> Mkl | str:
    """The process's MKL, set up once; or why it can't be used (a string)."""
    try:
        path = _library_path()
        # MKL's GNU threading layer runs on libgomp: check it loads before MKL needs it (a
        # missing threading library is a fatal error inside MKL, not an exception).
        ctypes.CDLL("libgomp.so.1")
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return f"MKL could not be loaded: {exc}"
    layer = os.environ.get("MKL_THREADING_LAYER")  # the user's choice stands
    if layer is None:
        lib.MKL_Set_Threading_Layer(_THREADING_GNU)
    if "MKL_CBWR" not in os.environ:
        lib.MKL_CBWR_Set(_CBWR_AUTO_STRICT)  # fails harmlessly if MKL already computed
    mkl = Mkl(lib, str(path), "GNU OpenMP threads" if layer is None else f"{layer} threading")
    from ... import threads

    mkl.set_num_threads(threads.get_num_threads())
    return mkl
