"""CuPy's `RawModule` compile, reproduced with the real NVRTC and no GPU (a test instrument).

`cupy.RawModule(code=, options=, name_expressions=)` hands NVRTC more than the caller's options.
In CuPy 14.2.0 (cupy/_core/core.pyx `assemble_cupy_compiler_options`, cupy/cuda/compiler.py
`_compile_with_cache_cuda` and `_compile_using_nvrtc_no_warning`) the list becomes:

    -I<cupy>/_core/include/cupy/_cccl/{cub,thrust,libcudacxx}   (bundled CCCL first)
    <the caller's options>        (+ --std=c++17 when they name no standard)
    -I<cupy>/_core/include        (CuPy's headers)
    -I<CUDA headers>              (cuda.pathfinder's 'cudart' headers; CuPy raises without them)
    -ftz=true                     (always)
    -arch=sm_XY                   (cubin for the device's arch, capped at NVRTC's newest)
    --device-as-default-execution-space

and every name expression is added before compiling and looked up (lowered) after. `compile()`
does the same through ctypes on the NVRTC shared library that pip's CUDA wheels provide
(`nvidia-cuda-nvrtc-cu12`, found by `cuda.pathfinder`, as CuPy finds it).
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

#: The CuPy release whose option assembly `cupy_options` reproduces.
CUPY_VERSION = "14.2.0"


def cupy_options(
    options: tuple[str, ...], arch: str, cupy_include: str | Path, cuda_include: str | Path
) -> tuple[str, ...]:
    """The options CuPy's RawModule passes NVRTC for the caller's `options` on an sm_`arch`
    device (arch as '80'), given CuPy's include directory and the CUDA headers' directory."""
    inc = str(cupy_include)
    opts = tuple(options)
    if all("-std=" not in o for o in opts):  # also matches --std=
        opts += ("--std=c++17",)
    cccl = tuple(f"-I{inc}/cupy/_cccl/{d}" for d in ("cub", "thrust", "libcudacxx"))
    opts = (*cccl, *opts, f"-I{inc}", f"-I{cuda_include}", "-ftz=true")
    return (*opts, f"-arch=sm_{arch}", "--device-as-default-execution-space")


@dataclass(frozen=True)
class Compiled:
    """What NVRTC produced: the cubin, each name expression's lowered (mangled) name, the log."""

    cubin: bytes
    lowered: dict[str, str]
    log: str


class NvrtcError(RuntimeError):
    """NVRTC refused the program; the message carries its log."""


def _on_sys_path(patterns: tuple[str, ...]) -> Path | None:
    """The first match of a glob under a sys.path entry: pip's nvidia/ wheels in a venv layered
    on another (cuda.pathfinder searches only the running interpreter's site-packages)."""
    for entry in sys.path:
        for pattern in patterns:
            found = sorted(Path(entry or ".").glob(pattern))
            if found:
                return found[-1]
    return None


@cache
def library() -> ctypes.CDLL:
    """libnvrtc from pip's CUDA wheels (or the system), located as CuPy locates it."""
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        path = load_nvidia_dynamic_lib("nvrtc").abs_path
    except Exception as exc:
        found = _on_sys_path(
            ("nvidia/cuda_nvrtc/lib/libnvrtc.so.*", "nvidia/cu1*/lib/libnvrtc.so.*")
        )
        if found is None:
            raise NvrtcError(f"NVRTC not found ({exc}); pip install 'deepcore[dev]'") from exc
        path = str(found)
    lib = ctypes.CDLL(path)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


@cache
def cuda_headers() -> Path:
    """The CUDA headers' directory CuPy passes with -I (cuda.pathfinder's 'cudart' headers)."""
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        found = find_nvidia_header_directory("cudart")
    except Exception:
        found = None
    if found is None:
        hit = _on_sys_path(("nvidia/cuda_runtime/include/cuda_runtime.h",
                            "nvidia/cu1*/include/cuda_runtime.h"))  # fmt: skip
        if hit is None:
            raise NvrtcError("CUDA headers not found; pip install 'deepcore[dev]'")
        found = str(hit.parent)
    return Path(found)


def version() -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(library().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def supported_archs() -> tuple[int, ...]:
    """The sm_XY numbers this NVRTC compiles for."""
    lib = library()
    n = ctypes.c_int()
    _check(lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
    archs = (ctypes.c_int * n.value)()
    _check(lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
    return tuple(archs)


def _check(status: int, what: str, log: str = "") -> None:
    if status != 0:
        msg = library().nvrtcGetErrorString(status).decode()
        raise NvrtcError(f"{what}: {msg}" + (f"\n{log}" if log else ""))


def _strings(items: list[str] | tuple[str, ...]) -> ctypes.Array:
    return (ctypes.c_char_p * len(items))(*(s.encode() for s in items))


def compile(  # noqa: A001 - the NVRTC verb
    code: str, options: tuple[str, ...], name_expressions: tuple[str, ...], name: str = "kern.cu"
) -> Compiled:
    """nvrtcCreateProgram + AddNameExpression + CompileProgram + GetCUBIN + GetLoweredName, as
    CuPy's _NVRTCProgram does (no headers passed in memory)."""
    lib = library()
    prog = ctypes.c_void_p()
    _check(
        lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), name.encode(), 0, None, None),
        "nvrtcCreateProgram",
    )
    try:
        for expr in name_expressions:
            _check(lib.nvrtcAddNameExpression(prog, expr.encode()), "nvrtcAddNameExpression")
        status = lib.nvrtcCompileProgram(prog, len(options), _strings(options))
        size = ctypes.c_size_t()
        _check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.value.decode(errors="replace").strip()
        _check(status, f"nvrtcCompileProgram({' '.join(options)})", log)
        _check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        lowered = {}
        for expr in name_expressions:
            out = ctypes.c_char_p()
            _check(lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)), expr)
            lowered[expr] = out.value.decode()
        return Compiled(cubin.raw, lowered, log)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
