"""Compile the CUDA kernels for the host (g++ + emulate.h) and call them through ctypes.

This is how the kernels' arithmetic is tested on machines without a GPU: the same .cu text the
backend hands to NVRTC is compiled with -DDC_HOST_EMULATION, and one generated `extern "C"`
launcher per kernel and dtype runs it over an emulated grid (see emulate.h). Arguments are
checked the way a real launch would silently not be: arrays must have the kernel's dtype and be
C-contiguous, scalars must be numpy scalars of the exact type.

Two builds (VARIANTS): "strict" rounds every operation as written (-ffp-contract=off), like the
NumPy reference; "gpu" has a GPU's floating-point behaviour under CuPy: multiply-adds contracted
into FMAs (NVRTC's default --fmad=true) and float32 denormals flushed to zero (CuPy's
-ftz=true). Tests check the documented tolerances against both.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from . import SOURCE_DIR, SOURCES
from .spec import KERNELS, Kernel

CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra")
#: Host builds of the kernels: "strict" (as written) and "gpu" (FMA contraction + float32 FTZ).
VARIANTS = ("strict", "gpu")
_CTYPES = {"float32": ctypes.c_float, "float64": ctypes.c_double, "int64": ctypes.c_int64}
_CTYPES["int32"] = ctypes.c_int32
_CTYPES["uint16"] = ctypes.c_uint16
_ERRORS = {1: "invalid launch configuration", 2: "__syncthreads() divergence in a block"}


class EmulationError(RuntimeError):
    """An emulated launch failed the way a GPU launch would (bad geometry, divergent barrier)."""


def launcher_name(kernel: Kernel, dtype: str) -> str:
    return f"{kernel.name}__{dtype}"


def variant_flags(variant: str) -> tuple[str, ...]:
    """g++ flags of a build: "strict" never fuses; "gpu" fuses a*b+c into an FMA wherever the
    compiler can (as NVRTC does) and flushes float32 denormals in float launches."""
    if variant == "strict":
        return ("-ffp-contract=off",)
    if variant != "gpu":
        raise ValueError(f"unknown emulation variant {variant!r}; expected one of {VARIANTS}")
    flags = ("-ffp-contract=fast", "-DDC_EMULATE_FTZ")
    if platform.machine() in ("x86_64", "AMD64", "i686"):
        flags += ("-mfma",)  # fused multiply-add instructions exist only with FMA3
    return flags


def fma_available() -> tuple[bool, str]:
    """Whether this CPU runs FMA instructions (the "gpu" build needs them on x86-64)."""
    if platform.machine() not in ("x86_64", "AMD64", "i686"):
        return True, platform.machine()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False, "cannot read /proc/cpuinfo to check for FMA3"
    return (" fma" in flags), "FMA3" if " fma" in flags else "this x86-64 CPU has no FMA3"


def generate_launchers() -> str:
    """C++ text: the sources, a signature check and an extern "C" launcher per kernel and dtype."""
    lines = [f'#include "{s}"' for s in SOURCES]
    lines.append("#include <type_traits>")
    for k in KERNELS.values():
        for dt in k.dtypes:
            decls = [p.c_decl(dt) for p in k.params]
            expr = k.name_expression(dt)
            lines.append(
                f"static_assert(std::is_same<decltype(&{expr}), void (*)({', '.join(decls)})>"
                f'::value, "spec.py disagrees with the source about {expr}");'
            )
            params = ", ".join(f"{d} {p.name}" for d, p in zip(decls, k.params, strict=True))
            names = ", ".join(p.name for p in k.params)
            ftz = "#ifdef DC_EMULATE_FTZ\n    dc_emu::FlushToZero ftz;\n#endif\n"
            lines.append(
                f'extern "C" int {launcher_name(k, dt)}(unsigned gx, unsigned gy, unsigned gz, '
                f"unsigned bx, unsigned by, unsigned bz, {params}) {{\n"
                + (ftz if dt == "float32" else "")
                + f"    return dc_emu::launch(dim3(gx, gy, gz), dim3(bx, by, bz), "
                f"[=]() {{ {expr}({names}); }});\n}}"
            )
    return "\n".join(lines) + "\n"


def compile_host_library(out_dir: Path, variant: str = "strict") -> Path:
    """Build the emulation library in `out_dir`; raises with g++'s output on failure."""
    cpp = out_dir / f"dc_cuda_host_{variant}.cpp"
    lib = out_dir / f"dc_cuda_host_{variant}.so"
    cpp.write_text(generate_launchers())
    cmd = [CXX, *CXXFLAGS, *variant_flags(variant), "-DDC_HOST_EMULATION", f"-I{SOURCE_DIR}",
           str(cpp), "-o", str(lib)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or proc.stderr.strip():
        raise RuntimeError(f"host build of the CUDA kernels failed or warned:\n{proc.stderr}")
    return lib


class HostKernels:
    """The emulation library loaded with ctypes; `launch` runs one kernel over a grid."""

    def __init__(self, lib_path: Path, variant: str = "strict") -> None:
        self.path = lib_path
        self.variant = variant
        self._lib = ctypes.CDLL(str(lib_path))
        self._funcs: dict[tuple[str, str], Any] = {}
        for k in KERNELS.values():
            for dt in k.dtypes:
                f = getattr(self._lib, launcher_name(k, dt))
                types = [ctypes.c_uint] * 6
                for p in k.params:
                    types.append(
                        ctypes.c_void_p if p.is_pointer else _CTYPES[p.element_dtype(dt).name]
                    )
                f.argtypes = types
                f.restype = ctypes.c_int
                self._funcs[(k.name, dt)] = f

    def launch(
        self,
        name: str,
        dtype: str,
        grid: int | Sequence[int],
        block: int | Sequence[int],
        args: Sequence[Any],
    ) -> None:
        """Run kernel `name` for `dtype` over (grid, block) with `args`, checked strictly."""
        kernel = KERNELS[name]
        if len(args) != len(kernel.params):
            raise TypeError(f"{name} takes {len(kernel.params)} arguments, got {len(args)}")
        c_args = []
        for p, a in zip(kernel.params, args, strict=True):
            want = p.element_dtype(dtype)
            if p.is_pointer:
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{name}: {p.name} must be an array, got {type(a).__name__}")
                if a.dtype != want or not a.flags.c_contiguous:
                    raise TypeError(
                        f"{name}: {p.name} must be a C-contiguous {want} array, got "
                        f"{a.dtype} (c_contiguous={a.flags.c_contiguous})"
                    )
                c_args.append(a.ctypes.data)
            else:
                if type(a) is not want.type:
                    raise TypeError(
                        f"{name}: {p.name} must be a numpy {want} scalar, got {type(a).__name__} "
                        "(a real launch would pass the wrong bytes)"
                    )
                c_args.append(a.item())
        rc = self._funcs[(name, dtype)](*_dim3(grid), *_dim3(block), *c_args)
        if rc:
            raise EmulationError(f"{name}<{dtype}>: {_ERRORS.get(rc, rc)}")


def _dim3(d: int | Sequence[int]) -> tuple[int, int, int]:
    t = (d,) if isinstance(d, int) else tuple(int(v) for v in d)
    if not 1 <= len(t) <= 3:
        raise ValueError(f"bad launch dimension {d!r}")
    return t + (1,) * (3 - len(t))  # type: ignore[return-value]


@cache
def build(variant: str = "strict") -> HostKernels:
    """Compile a variant once per process into a fresh temporary directory (removed at exit)."""
    variant_flags(variant)  # unknown names fail before compiling
    tmp = Path(tempfile.mkdtemp(prefix="deepcore-cuda-host-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return HostKernels(compile_host_library(tmp, variant), variant)


def available() -> tuple[bool, str]:
    """Whether a host C++ compiler is on PATH (the emulation needs one)."""
    found = shutil.which(CXX)
    return (True, found) if found else (False, f"{CXX} not found on PATH")
