"""A TEST DOUBLE of CuPy for machines without a GPU. It is not CuPy and proves nothing about GPUs.

What it is: a fake `cupy` package (plus `cupy.cublas` and `cupy_backends...cublas`) installed
into `sys.modules` by the `install()` helper, so `deepcore.backends.cupy.CupyBackend` runs its
real Python code end to end: argument marshalling, launch geometry, dtype dispatch, out=
handling, the optimizer calls, OOM and device handling.

- "Device arrays" are `numpy.ndarray` subclasses named `cupy.ndarray`, tagged with a device id.
  Reading one on the host (`float()`, `bool()`, `.item()`, ...) is counted in
  `state.host_reads`, so tests can prove a training step never syncs.
- `RawModule(code=, options=, name_expressions=)` records what would go to NVRTC; its
  `get_function(expr)` returns a kernel that runs the *host-compiled* CUDA source
  (deepcore.kernels.cuda.host, g++ + emulate.h) over the grid/block it is launched with, after
  checking the arguments the way a real launch would silently not (dtype, contiguity, exact
  scalar types, device).
- `cupy.cublas.gemm` is NumPy's matmul with cuBLAS's transpose/alpha/beta contract, and records
  the cuBLAS math mode (TF32 or not) in force at each call.

What it proves: the Python glue and the kernels' arithmetic. What it does not: NVRTC compilation
(see test_cuda_nvcc.py for nvcc), real concurrency, memory behaviour, speed.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import re
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from deepcore.kernels.cuda import host


@dataclass
class State:
    """Everything the double records; tests read and tweak it."""

    device_count: int = 1
    current_device: int = 0
    driver_version: int = 12040
    runtime_version: int = 12040
    device_name: str = "Double GPU (test double, not a GPU)"
    capability: tuple[int, int] = (8, 0)
    memory_limit: int | None = None
    allocated_bytes: int = 0
    host_reads: int = 0
    transfers_to_host: int = 0
    modules: list[dict[str, Any]] = field(default_factory=list)
    launches: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    gemm_math_modes: list[int] = field(default_factory=list)
    math_mode: int = 0
    synchronized: int = 0


STATE = State()


class OutOfMemoryError(MemoryError):
    """Like cupy.cuda.memory.OutOfMemoryError(size, total, limit)."""

    def __init__(self, size: int, total: int, limit: int = 0) -> None:
        super().__init__(
            f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes)"
        )
        self.size = size


class CUDARuntimeError(RuntimeError):
    """Like cupy.cuda.runtime.CUDARuntimeError."""


class _DeviceRef:
    def __init__(self, i: int) -> None:
        self.id = i


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """A 'device' array: host memory tagged with a device id; host reads are counted."""

    def __array_finalize__(self, obj: Any) -> None:
        self._device_id = getattr(obj, "_device_id", STATE.current_device)

    def __array_wrap__(self, obj: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # CuPy reductions give 0-d device arrays, never host scalars; out= arrays stay themselves.
        if isinstance(obj, ndarray):
            return obj
        return np.asarray(obj).view(ndarray)

    @property
    def device(self) -> _DeviceRef:
        return _DeviceRef(self._device_id)

    def _read(self) -> None:
        STATE.host_reads += 1

    def __float__(self) -> float:
        self._read()
        return float(np.asarray(self.view(np.ndarray)))

    def __int__(self) -> int:
        self._read()
        return int(np.asarray(self.view(np.ndarray)))

    def __bool__(self) -> bool:
        self._read()
        return bool(self.view(np.ndarray))

    def item(self, *args: Any) -> Any:
        self._read()
        return self.view(np.ndarray).item(*args)

    def tolist(self) -> Any:
        self._read()
        return self.view(np.ndarray).tolist()

    def get(self) -> np.ndarray:
        return asnumpy(self)


ndarray.__module__ = "cupy"


def _to_device(a: Any) -> Any:
    if isinstance(a, ndarray):
        return a
    if isinstance(a, (np.ndarray, np.generic)):
        arr = np.array(a, copy=True)
        _charge(arr.nbytes)
        return arr.view(ndarray)
    return a


def _charge(nbytes: int) -> None:
    if STATE.memory_limit is not None and STATE.allocated_bytes + nbytes > STATE.memory_limit:
        raise OutOfMemoryError(nbytes, STATE.allocated_bytes)
    STATE.allocated_bytes += nbytes


def _creator(fn: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> ndarray:
        arr = fn(*args, **kwargs)
        _charge(arr.nbytes)
        return np.ascontiguousarray(arr).view(ndarray) if arr.ndim else arr.view(ndarray)

    return make


def asnumpy(a: Any) -> np.ndarray:
    STATE.transfers_to_host += 1
    return np.array(np.asarray(a).view(np.ndarray), copy=True)


def asarray(a: Any, dtype: Any = None) -> ndarray:
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == np.dtype(dtype) else a.astype(dtype)
    return _to_device(np.asarray(a, dtype=dtype))


class Device:
    """cupy.cuda.Device: a context manager making device `i` current."""

    def __init__(self, i: int = 0) -> None:
        self.id = int(i)
        self._saved: list[int] = []

    def __enter__(self) -> Device:
        if not 0 <= self.id < STATE.device_count:
            raise CUDARuntimeError(f"cudaErrorInvalidDevice: device {self.id}")
        self._saved.append(STATE.current_device)
        STATE.current_device = self.id
        return self

    def __exit__(self, *exc: Any) -> None:
        STATE.current_device = self._saved.pop()

    def synchronize(self) -> None:
        STATE.synchronized += 1

    @property
    def compute_capability(self) -> str:
        return f"{STATE.capability[0]}{STATE.capability[1]}"


class MemoryPool:
    def used_bytes(self) -> int:
        return STATE.allocated_bytes

    def total_bytes(self) -> int:
        return STATE.allocated_bytes


_POOL = MemoryPool()
_EXPR = re.compile(r"^(\w+)<(float|double)>$")


class RawModule:
    """Records the NVRTC request; kernels run host-compiled through emulate.h."""

    def __init__(self, code: str, options: tuple = (), name_expressions: Any = None, **kw: Any):
        if "#include" in code:
            raise AssertionError("NVRTC would not find local includes: sources must be inlined")
        self.code, self.options = code, tuple(options)
        self.name_expressions = tuple(name_expressions or ())
        STATE.modules.append({"options": self.options, "names": self.name_expressions})

    def get_function(self, name: str) -> Any:
        if name not in self.name_expressions:
            raise KeyError(f"{name} was not in name_expressions (CuPy would raise too)")
        kernel, ctype = _EXPR.match(name).groups()  # type: ignore[union-attr]
        if f"void {kernel}(" not in self.code:
            raise AssertionError(f"{kernel} is not defined in the module source")
        dtype = {"float": "float32", "double": "float64"}[ctype]

        def launch(grid: Any, block: Any, args: tuple, shared_mem: int = 0) -> None:
            for a in args:
                if isinstance(a, np.ndarray) and not isinstance(a, ndarray):
                    raise TypeError(f"{name}: host numpy array passed to a device kernel")
                if isinstance(a, ndarray) and a._device_id != STATE.current_device:
                    raise ValueError(f"{name}: array on device {a._device_id} launched on "
                                     f"device {STATE.current_device}")  # fmt: skip
            STATE.launches.append((name, tuple(np.atleast_1d(grid)), tuple(np.atleast_1d(block))))
            host.build().launch(kernel, dtype, grid, block, args)

        return launch


def gemm(transa: str, transb: str, a: Any, b: Any, out: Any = None, alpha: float = 1.0,
         beta: float = 0.0) -> Any:  # fmt: skip
    """cupy.cublas.gemm: out = alpha * op(a) @ op(b) + beta * out, in the operands' dtype."""
    assert a.ndim == b.ndim == 2 and a.dtype == b.dtype
    STATE.gemm_math_modes.append(STATE.math_mode)
    a2 = a.view(np.ndarray).T if transa == "T" else a.view(np.ndarray)
    b2 = b.view(np.ndarray).T if transb == "T" else b.view(np.ndarray)
    prod = a2 @ b2
    t = a.dtype.type
    if out is None:
        out = _creator(np.empty)(prod.shape, dtype=a.dtype)
        beta = 0.0
    assert out.shape == prod.shape and out.dtype == a.dtype
    o = out.view(np.ndarray)
    if alpha != 1.0:
        prod *= t(alpha)
    if beta == 0.0:
        o[...] = prod
    else:
        o *= t(beta)
        o += prod
    return out


def _numpy_passthrough(name: str) -> Any:
    attr = getattr(np, name)
    if isinstance(attr, type) or not callable(attr):
        return attr

    def call(*args: Any, **kwargs: Any) -> Any:
        result = attr(*args, **kwargs)
        if isinstance(result, ndarray):
            return result
        if isinstance(result, (np.ndarray, np.generic)):
            return np.asarray(result).view(ndarray)
        return result

    return call


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    return mod


def build_modules() -> dict[str, types.ModuleType]:
    """The fake modules, keyed by the name each takes in sys.modules."""
    runtime = _module(
        "cupy.cuda.runtime",
        CUDARuntimeError=CUDARuntimeError,
        getDeviceCount=lambda: STATE.device_count,
        runtimeGetVersion=lambda: STATE.runtime_version,
        driverGetVersion=lambda: STATE.driver_version,
        getDeviceProperties=lambda i: {
            "name": STATE.device_name.encode(),
            "major": STATE.capability[0],
            "minor": STATE.capability[1],
            "totalGlobalMem": 16 * 2**30,
        },
        deviceSynchronize=lambda: None,
    )
    memory = _module("cupy.cuda.memory", OutOfMemoryError=OutOfMemoryError)
    device = _module("cupy.cuda.device", get_cublas_handle=lambda: 1234, Device=Device)
    cuda = _module("cupy.cuda", runtime=runtime, memory=memory, device=device, Device=Device)
    cublas = _module("cupy.cublas", gemm=gemm)
    libcublas = _module(
        "cupy_backends.cuda.libs.cublas",
        CUBLAS_DEFAULT_MATH=0,
        CUBLAS_TF32_TENSOR_OP_MATH=3,
        getMathMode=lambda handle: STATE.math_mode,
        setMathMode=lambda handle, mode: setattr(STATE, "math_mode", mode),
    )
    cupy = _module(
        "cupy",
        __version__="0.0+double",
        ndarray=ndarray,
        cuda=cuda,
        cublas=cublas,
        RawModule=RawModule,
        asnumpy=asnumpy,
        asarray=asarray,
        array=asarray,
        ascontiguousarray=lambda a, dtype=None: asarray(np.ascontiguousarray(a, dtype=dtype)),
        empty=_creator(np.empty),
        zeros=_creator(np.zeros),
        full=_creator(np.full),
        arange=_creator(np.arange),
        get_default_memory_pool=lambda: _POOL,
    )
    cupy.__getattr__ = _numpy_passthrough  # type: ignore[method-assign]
    backends_pkg = _module("cupy_backends")
    return {
        "cupy": cupy,
        "cupy.cuda": cuda,
        "cupy.cuda.runtime": runtime,
        "cupy.cuda.memory": memory,
        "cupy.cuda.device": device,
        "cupy.cublas": cublas,
        "cupy_backends": backends_pkg,
        "cupy_backends.cuda": _module("cupy_backends.cuda"),
        "cupy_backends.cuda.libs": _module("cupy_backends.cuda.libs"),
        "cupy_backends.cuda.libs.cublas": libcublas,
    }


@contextlib.contextmanager
def installed(**settings: Any) -> Any:
    """Install the double into sys.modules (restoring what was there), with a fresh State."""
    global STATE
    saved_state = STATE
    STATE = State(**settings)
    saved = {name: sys.modules.get(name) for name in build_modules()}
    sys.modules.update(build_modules())
    try:
        yield STATE
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
        STATE = saved_state


def pytest_load_initial_conftests(early_config: Any, parser: Any, args: Any) -> None:
    """`PYTHONPATH=tests pytest -p cupy_double ...` runs a whole suite with the double standing
    in for CuPy, so the registry offers "cupy" and every backend-parametrized test includes it."""
    global _SESSION
    _SESSION = installed()
    _SESSION.__enter__()


_SESSION: Any = None
