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
  the cuBLAS math mode (TF32 or not) in force at each call; `cublas.gemmEx` (the bf16/fp16
  GEMMs, on raw pointers: `ndarray.data.ptr`) is in tests/cupy_double_blas.py.

What it proves: the Python glue and the kernels' arithmetic. What it does not: NVRTC compilation
(test_cuda_nvrtc.py compiles with the real NVRTC), real concurrency, memory behaviour, speed.

Where the double is STRICTER than CuPy 14.2 (an error here, silent or a warning there):
- a raw-kernel launch checks every array is on the current device (CuPy does not check: a GPU
  reads device-1 pointers from device 0, an illegal address or a race under peer access);
- ufuncs and reductions on an array of another device raise ValueError, as CuPy does when
  peer access is unavailable (with peer access CuPy warns and runs, slowly, across devices);
- a raw-kernel scalar must be a numpy scalar of the parameter's exact type (CuPy passes a
  Python float as 8 bytes and a float kernel parameter reads garbage);
- a raw-kernel array must be C-contiguous and of the kernel's dtype (CuPy passes the pointer);
- `cupy.cublas.gemm` also checks every operand is on the current device.
Where it is AS STRICT as CuPy + cuBLAS:
- `cupy.cublas.gemm` derives leading dimensions and transposes exactly as cupy/cublas.py does
  and rejects what cuBLAS rejects (lda/ldb/ldc < max(1, rows), e.g. 0 for an empty operand:
  CUBLAS_STATUS_INVALID_VALUE); with `out=None` it returns a Fortran-order array, as CuPy;
- a ufunc that is neither NumPy's (by name) nor `cupyx.scipy.special`'s returns NotImplemented
  (a `np.frompyfunc` or SciPy-only ufunc on a device array ends in TypeError, as in CuPy), and a
  host `numpy.ndarray` operand of a ufunc is a TypeError;
- the default memory pool answers for the current device.
Where it is LOOSER than CuPy:
- `np.asarray(device_array)` and other NumPy functions that are not ufuncs (argmax, dot,
  indexing, copies) work without a device check; CuPy refuses implicit host conversion;
- kernels run on one host thread, in order: no data races, no real concurrency or streams;
- host math (glibc) stands in for CUDA's libdevice: last-bit differences are not modelled
  beyond the two emulation variants (see kernels/cuda/host.py);
- NVRTC is not run here (the code must only contain no local #include); the nvrtc tests do that;
- memory: a per-device byte count against `memory_limit`, no pool, no fragmentation.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import re
import sys
import types
from dataclasses import dataclass, field
from typing import Any

import cupy_double_blas as blas
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
    #: bytes held per device (what cupy.get_default_memory_pool() reports for the current one)
    device_bytes: dict[int, int] = field(default_factory=dict)
    #: pieces of the CUDA install to break, e.g. {"cublas": "ImportError: libcublasLt.so.12"}
    broken: dict[str, str] = field(default_factory=dict)
    #: which host build runs the kernels: "strict" or "gpu" (see deepcore.kernels.cuda.host)
    variant: str = "gpu"
    host_reads: int = 0
    transfers_to_host: int = 0
    modules: list[dict[str, Any]] = field(default_factory=list)
    launches: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    gemm_math_modes: list[int] = field(default_factory=list)
    #: the arguments of every cublas.gemmEx call (tests/cupy_double_blas.py)
    gemmex_calls: list[dict[str, Any]] = field(default_factory=list)
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


class CUBLASError(RuntimeError):
    """Like cupy_backends.cuda.libs.cublas.CUBLASError."""


def _broken(piece: str) -> None:
    if piece in STATE.broken:
        kind, _, msg = STATE.broken[piece].partition(": ")
        raise {"ImportError": ImportError, "RuntimeError": RuntimeError}.get(kind, RuntimeError)(
            msg or kind
        )


def _check_device(name: str, arrays: Any) -> None:
    """CuPy's _check_peer_access with peer access unavailable."""
    for a in arrays:
        if isinstance(a, ndarray) and a._device_id != STATE.current_device:
            raise ValueError(
                f"{name}: The device where the array resides ({a._device_id}) is different from "
                f"the current device ({STATE.current_device}). Peer access is unavailable "
                "between these devices."
            )


def _is_cupy_ufunc(ufunc: Any) -> bool:
    """CuPy resolves a NumPy ufunc by name in cupy, then in cupyx.scipy.special."""
    name = ufunc.__name__
    return getattr(np, name, None) is ufunc or name in _SPECIAL


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

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if not _is_cupy_ufunc(ufunc):
            return NotImplemented  # numpy then raises TypeError, as with CuPy
        out = kwargs.get("out", ())
        for a in (*inputs, *out):
            if isinstance(a, np.ndarray) and not isinstance(a, ndarray):
                raise TypeError(
                    f"Unsupported type <class 'numpy.ndarray'> in {ufunc.__name__}: a host array "
                    "where CuPy wants a device array (no implicit host-to-device copy)"
                )
        _check_device(ufunc.__name__, (*inputs, *out))

        def plain(a: Any) -> Any:
            return a.view(np.ndarray) if isinstance(a, ndarray) else a

        if out:
            kwargs["out"] = tuple(plain(a) for a in out)
        result = getattr(ufunc, method)(*(plain(a) for a in inputs), **kwargs)
        if out:
            return out[0] if len(out) == 1 else out
        if isinstance(result, tuple):
            return tuple(np.asarray(r).view(ndarray) for r in result)
        if result is None:
            return None
        return np.asarray(result).view(ndarray)  # on the current device, 0-d included

    @property
    def device(self) -> _DeviceRef:
        return _DeviceRef(self._device_id)

    @property
    def data(self) -> blas.MemoryPointer:  # type: ignore[override]
        """CuPy's MemoryPointer: `.ptr` is the address (for cuBLAS calls on raw pointers)."""
        return blas.MemoryPointer(self)

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
    """Allocate on the current device (each device has `memory_limit` bytes)."""
    dev = STATE.current_device
    held = STATE.device_bytes.get(dev, 0)
    if STATE.memory_limit is not None and held + nbytes > STATE.memory_limit:
        raise OutOfMemoryError(nbytes, held)
    STATE.device_bytes[dev] = held + nbytes
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
    """cupy.get_default_memory_pool(): its numbers are the current device's."""

    def used_bytes(self) -> int:
        return STATE.device_bytes.get(STATE.current_device, 0)

    def total_bytes(self) -> int:
        return STATE.device_bytes.get(STATE.current_device, 0)


_POOL = MemoryPool()


def _device_erf(x: Any) -> Any:
    """cupyx.scipy.special.erf: a device ufunc (math.erf per element), no SciPy involved."""
    if not isinstance(x, ndarray):
        raise TypeError(f"cupyx.scipy.special.erf: expected a cupy.ndarray, got {type(x)}")
    _check_device("erf", (x,))
    flat = x.view(np.ndarray)
    host_erf = np.frompyfunc(__import__("math").erf, 1, 1)
    return _creator(np.asarray)(host_erf(flat).astype(x.dtype))


_SPECIAL: dict[str, Any] = {"erf": _device_erf}
_EXPR = re.compile(r"^(\w+)<(float|double|__nv_bfloat16|__half)>$")
_EXPR_DTYPE = {"float": "float32", "double": "float64", "__nv_bfloat16": "bfloat16",
               "__half": "float16"}  # fmt: skip


class RawModule:
    """Records the NVRTC request; kernels run host-compiled through emulate.h."""

    def __init__(self, code: str, options: tuple = (), name_expressions: Any = None, **kw: Any):
        if '#include "' in code:  # CUDA's own headers (<cuda_fp16.h>) come with CuPy's -I
            raise AssertionError("NVRTC would not find local includes: sources must be inlined")
        self.code, self.options = code, tuple(options)
        self.name_expressions = tuple(name_expressions or ())
        STATE.modules.append(
            {"code": code, "options": self.options, "names": self.name_expressions}
        )

    def get_function(self, name: str) -> Any:
        _broken("nvrtc")  # CuPy compiles (NVRTC + the CUDA headers) on first get_function
        if name not in self.name_expressions:
            raise KeyError(f"{name} was not in name_expressions (CuPy would raise too)")
        kernel, ctype = _EXPR.match(name).groups()  # type: ignore[union-attr]
        if f"void {kernel}(" not in self.code:
            raise AssertionError(f"{kernel} is not defined in the module source")
        dtype = _EXPR_DTYPE[ctype]

        def launch(grid: Any, block: Any, args: tuple, shared_mem: int = 0) -> None:
            for a in args:
                if isinstance(a, np.ndarray) and not isinstance(a, ndarray):
                    raise TypeError(f"{name}: host numpy array passed to a device kernel")
                if isinstance(a, ndarray) and a._device_id != STATE.current_device:
                    raise ValueError(f"{name}: array on device {a._device_id} launched on "
                                     f"device {STATE.current_device}")  # fmt: skip
            STATE.launches.append((name, tuple(np.atleast_1d(grid)), tuple(np.atleast_1d(block))))
            plain = tuple(a.view(np.ndarray) if isinstance(a, ndarray) else a for a in args)
            host.build(STATE.variant).launch(kernel, dtype, grid, block, plain)

        return launch


_OP_N, _OP_T = 0, 1


def _decide_ld_and_trans(a: np.ndarray, trans: int) -> tuple[int | None, int]:
    """cupy/cublas.py's _decide_ld_and_trans (numpy's contiguity flags match CuPy's)."""
    if a.flags.f_contiguous:
        return a.shape[0], trans
    if a.flags.c_contiguous:
        return a.shape[1], 1 - trans
    return None, trans


def _cublas_gemm(transa: int, transb: int, m: int, n: int, k: int, a: np.ndarray, lda: int,
                 b: np.ndarray, ldb: int, c: np.ndarray, ldc: int, alpha: Any,
                 beta: Any) -> None:  # fmt: skip
    """cublas<t>gemm on column-major buffers, with cuBLAS's argument checks."""
    rows_a = m if transa == _OP_N else k
    rows_b = k if transb == _OP_N else n
    if min(m, n, k) < 0 or lda < max(1, rows_a) or ldb < max(1, rows_b) or ldc < max(1, m):
        raise CUBLASError(
            f"CUBLAS_STATUS_INVALID_VALUE: gemm(m={m}, n={n}, k={k}, lda={lda}, ldb={ldb}, "
            f"ldc={ldc}): a leading dimension below max(1, rows)"
        )
    if m == 0 or n == 0:
        return

    def col_major(buf: np.ndarray, rows: int, cols: int, ld: int) -> np.ndarray:
        flat = buf.ravel(order="K")  # a view: buf is C- or F-contiguous here
        return np.lib.stride_tricks.as_strided(
            flat, (rows, cols), (flat.itemsize, ld * flat.itemsize), writeable=True
        )

    op_a = col_major(a, rows_a, k if transa == _OP_N else m, lda)
    op_b = col_major(b, rows_b, n if transb == _OP_N else k, ldb)
    op_a = op_a if transa == _OP_N else op_a.T
    op_b = op_b if transb == _OP_N else op_b.T
    cm = col_major(c, m, n, ldc)
    prod = op_a @ op_b if k else np.zeros((m, n), c.dtype)
    prod *= alpha
    if beta == 0:
        cm[...] = prod  # cuBLAS does not read C when beta == 0 (NaN there is overwritten)
    else:
        cm *= beta
        cm += prod


def gemm(transa: str, transb: str, a: Any, b: Any, out: Any = None, alpha: float = 1.0,
         beta: float = 0.0) -> Any:  # fmt: skip
    """cupy.cublas.gemm, line for line: leading dimensions, transposes, output order."""
    _broken("cublas")
    assert a.ndim == b.ndim == 2
    assert a.dtype == b.dtype
    _check_device("cublas.gemm", (a, b, out))
    STATE.gemm_math_modes.append(STATE.math_mode)
    ta = {"N": _OP_N, "T": _OP_T}[transa]
    tb = {"N": _OP_N, "T": _OP_T}[transb]
    m, k = a.shape if ta == _OP_N else a.shape[::-1]
    if tb == _OP_N:
        n = b.shape[1]
        assert b.shape[0] == k
    else:
        n = b.shape[0]
        assert b.shape[1] == k
    if out is None:
        out = _creator(np.empty)((m, n), dtype=a.dtype)
        out = np.asfortranarray(out.view(np.ndarray)).view(ndarray)  # CuPy: order='F'
        beta = 0.0
    else:
        assert out.ndim == 2
        assert out.shape == (m, n)
        assert out.dtype == a.dtype
    t = a.dtype.type
    alpha, beta = t(alpha), t(beta)
    A, B, C = (x.view(np.ndarray) for x in (a, b, out))
    lda, ta = _decide_ld_and_trans(A, ta)
    ldb, tb = _decide_ld_and_trans(B, tb)
    if lda is not None and ldb is not None:
        if C.flags.f_contiguous:
            _cublas_gemm(ta, tb, m, n, k, A, lda, B, ldb, C, m, alpha, beta)
            return out
        if C.flags.c_contiguous:  # out.T = alpha * b.T @ a.T + beta * out.T
            _cublas_gemm(1 - tb, 1 - ta, n, m, k, B, ldb, A, lda, C, n, alpha, beta)
            return out
    if lda is None:
        lda, A = A.shape[0], np.asfortranarray(A)
    if ldb is None:
        ldb, B = B.shape[0], np.asfortranarray(B)
    c = C if C.flags.f_contiguous else np.asfortranarray(C)
    _cublas_gemm(ta, tb, m, n, k, A, lda, B, ldb, c, m, alpha, beta)
    if c is not C:
        C[...] = c
    return out


def _gemm_ex(*args: Any) -> None:
    """cupy_backends.cuda.libs.cublas.gemmEx (tests/cupy_double_blas.py)."""
    _broken("cublas")
    blas.gemm_ex(STATE, CUBLASError, *args)


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
        CUDA_R_32F=blas.CUDA_R_32F,
        CUDA_R_16F=blas.CUDA_R_16F,
        CUDA_R_16BF=blas.CUDA_R_16BF,
    )
    memory = _module("cupy.cuda.memory", OutOfMemoryError=OutOfMemoryError)
    device = _module("cupy.cuda.device", get_cublas_handle=lambda: 1234, Device=Device)
    cuda = _module("cupy.cuda", runtime=runtime, memory=memory, device=device, Device=Device)
    cublas = _module("cupy.cublas", gemm=gemm)
    special = _module("cupyx.scipy.special", erf=_SPECIAL["erf"])
    libcublas = _module(
        "cupy_backends.cuda.libs.cublas",
        CUBLAS_DEFAULT_MATH=0,
        CUBLAS_TF32_TENSOR_OP_MATH=3,
        getMathMode=lambda handle: STATE.math_mode,
        CUBLAS_OP_N=0,
        CUBLAS_OP_T=1,
        CUBLAS_COMPUTE_32F=blas.CUBLAS_COMPUTE_32F,
        CUBLAS_GEMM_DEFAULT=blas.CUBLAS_GEMM_DEFAULT,
        gemmEx=_gemm_ex,
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
        "cupyx": _module("cupyx"),
        "cupyx.scipy": _module("cupyx.scipy"),
        "cupyx.scipy.special": special,
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
    modules = build_modules()
    saved = {name: sys.modules.get(name) for name in modules}
    finder = None
    if "cublas" in STATE.broken:  # as CuPy 14 without [ctk]: `import cupy.cublas` fails
        del modules["cupy.cublas"], modules["cupy"].cublas
        finder = _FailingImport("cupy.cublas", STATE.broken["cublas"])
        sys.meta_path.insert(0, finder)
    for name in saved:
        sys.modules.pop(name, None)
    sys.modules.update(modules)
    try:
        yield STATE
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod
        STATE = saved_state


class _FailingImport(importlib.abc.MetaPathFinder):
    """Makes `import <name>` raise ImportError(message), as a missing shared library does."""

    def __init__(self, name: str, message: str) -> None:
        self.name, self.message = name, message.partition(": ")[2] or message

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname == self.name:
            raise ImportError(self.message)
        return None


def pytest_load_initial_conftests(early_config: Any, parser: Any, args: Any) -> None:
    """`PYTHONPATH=tests pytest -p cupy_double ...` runs a whole suite with the double standing
    in for CuPy, so the registry offers "cupy" and every backend-parametrized test includes it."""
    global _SESSION
    _SESSION = installed()
    _SESSION.__enter__()


_SESSION: Any = None
