"""CuPy backend: arrays on one CUDA GPU, GEMMs on cuBLAS, fused CUDA C kernels for the rest.

The kernels are the CUDA C sources in `deepcore/kernels/cuda/*.cu`, compiled lazily by NVRTC
through `cupy.RawModule`, once per device and dtype, on first use. Nothing in a training step
reads a value back to the host: losses are 0-d device arrays, reductions finish on the device.

TF32 is off by default, so float32 GEMMs are true float32 as on the CPU backends. Turn it on
with `CupyBackend(0, allow_tf32=True)`, `get_backend("cupy").allow_tf32 = True` or
`DEEPCORE_TF32=1` (read when the backend is created). deepcore sets cuBLAS's math mode around
each of its GEMMs, so CuPy's own `CUPY_TF32` does not change deepcore's results either way.

Importing this module never imports cupy; `probe()` never raises.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from typing import Any

import numpy as np

from ...errors import CudaOutOfMemoryError, DtypeError
from ...kernels.cuda import NVRTC_OPTIONS, geometry, source
from ...kernels.cuda.spec import KERNELS, kernels_in, marshal
from ..base import ACTIVATIONS, FLOAT_DTYPES, array_backend_name, check_activation
from .half import CupyHalfMixin
from .probe import INSTALL_HINT as INSTALL_HINT  # re-exported
from .probe import _text, _version
from .probe import probe as probe  # the registry calls deepcore.backends.cupy.probe
from .steps import CupyStepsMixin

_CUBLAS_DEFAULT_MATH = 0
_CUBLAS_TF32_TENSOR_OP_MATH = 3


def _on_device(fn: Any) -> Any:
    """Run a backend method with its GPU current, and turn CuPy's OOM into a clear error."""

    @functools.wraps(fn)
    def wrapper(self: CupyBackend, *args: Any, **kwargs: Any) -> Any:
        try:
            with self._device:
                return fn(self, *args, **kwargs)
        except self._oom_type as exc:
            raise self._out_of_memory(str(exc), fn.__name__) from exc

    return wrapper


class CupyBackend(CupyHalfMixin, CupyStepsMixin):
    """Backend on CUDA GPU number `device_index`, through CuPy (cuBLAS + NVRTC kernels)."""

    name = "cupy:0"
    device = "cuda:0"
    xp: Any = None

    def __init__(self, device_index: int = 0, allow_tf32: bool | None = None) -> None:
        super().__init__()
        cupy = importlib.import_module("cupy")
        self.xp = cupy
        self.index = int(device_index)
        self.name = f"cupy:{self.index}"
        self.device = f"cuda:{self.index}"
        if allow_tf32 is None:
            allow_tf32 = os.environ.get("DEEPCORE_TF32", "0").strip() == "1"
        #: Let float32 GEMMs use TF32 tensor cores (faster, ~10-bit mantissa inputs).
        self.allow_tf32 = bool(allow_tf32)
        self._device = cupy.cuda.Device(self.index)
        self._oom_type = cupy.cuda.memory.OutOfMemoryError
        self._cublas = importlib.import_module("cupy.cublas")
        self._modules: dict[tuple[str, str], Any] = {}
        self._functions: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ arrays
    def empty(self, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        return self._alloc(lambda: self.xp.empty(shape, dtype=dtype), shape, dtype)

    def zeros(self, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        return self._alloc(lambda: self.xp.zeros(shape, dtype=dtype), shape, dtype)

    def owns(self, x: Any) -> bool:
        return isinstance(x, self.xp.ndarray) and x.device.id == self.index

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """A device array from host data (NumPy arrays included: for a GPU backend they are host
        data, converted to `dtype` at this boundary) or one of this backend's own arrays."""
        if self.owns(x) or array_backend_name(x) not in (None, "numpy"):
            return super().asarray(x, dtype=dtype)
        return self._from_host(np.asarray(x, dtype=dtype))

    def _from_host(self, x: np.ndarray) -> Any:
        return self._alloc(lambda: self.xp.asarray(np.ascontiguousarray(x)), x.shape, x.dtype)

    def to_host(self, x: Any) -> np.ndarray:
        return self.xp.asnumpy(x)

    def synchronize(self) -> None:
        self._device.synchronize()

    def _alloc(self, make: Any, shape: Any, dtype: Any) -> Any:
        try:
            with self._device:
                return make()
        except self._oom_type as exc:
            shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            raise self._out_of_memory(
                f"asked for {nbytes:,} bytes (shape {shape}, {np.dtype(dtype).name}); {exc}",
                "allocation",
            ) from exc

    def _out_of_memory(self, detail: str, where: str) -> CudaOutOfMemoryError:
        try:  # CuPy's default pool answers for the current device: make it this backend's
            with self._device:
                held = self.xp.get_default_memory_pool().total_bytes()
            held = f"; the memory pool of {self.device} holds {held:,} bytes"
        except Exception:
            held = ""
        return CudaOutOfMemoryError(
            f"CUDA out of memory on {self.device} ({self.name}) in {where}: {detail}{held}. "
            "Try a smaller batch size (or a smaller model)."
        )

    # ------------------------------------------------------------------ kernels
    def _kernel(self, name: str, dtype: str) -> Any:
        """The compiled kernel; its module (one .cu, one dtype) is built on first use."""
        fn = self._functions.get((name, dtype))
        if fn is None:
            spec = KERNELS[name]
            mod = self._modules.get((spec.source, dtype))
            if mod is None:
                mod = self.xp.RawModule(
                    code=source(spec.source),
                    options=NVRTC_OPTIONS,
                    name_expressions=[k.name_expression(dtype) for k in kernels_in(spec.source)],
                )
                self._modules[(spec.source, dtype)] = mod
            fn = self._functions[(name, dtype)] = mod.get_function(spec.name_expression(dtype))
        return fn

    def _launch(self, name: str, dtype: str, geom: tuple[Any, Any], *args: Any) -> None:
        grid, block = geom
        self._kernel(name, dtype)(grid, block, marshal(KERNELS[name], dtype, args))

    def _fast(self, *arrays: Any) -> str | None:
        """The common dtype when every array is a C-contiguous float array of this backend
        (the kernels' precondition), else None to fall back to the generic path."""
        dtype = None
        for a in arrays:
            if a is None:
                continue
            if not self.owns(a):
                self.check(a)
            if dtype is None:
                dtype = a.dtype.name
            elif a.dtype.name != dtype:
                raise DtypeError(f"{self.name}: mixed dtypes {dtype} and {a.dtype.name}")
            if not a.flags.c_contiguous:
                return None
        return dtype if dtype in FLOAT_DTYPES else None

    def _new(self, like: Any, out: Any) -> Any:
        return out if out is not None else self.empty(like.shape, like.dtype.name)

    # ------------------------------------------------------------------ dense
    def gemm(
        self,
        a: Any,
        b: Any,
        trans_a: bool = False,
        trans_b: bool = False,
        alpha: float = 1.0,
        beta: float = 0.0,
        out: Any = None,
    ) -> Any:
        """out = alpha * op(a) @ op(b) + beta * out on cuBLAS (transpose flags, no copies).

        Empty products never reach cuBLAS: it rejects a leading dimension of 0, which is what
        CuPy derives for an operand with no rows or no columns."""
        self._fast(a, b, out)
        m, n, out = self._gemm_args(a, b, trans_a, trans_b, beta, out)
        k = a.shape[0] if trans_a else a.shape[1]
        if m == 0 or n == 0:
            return out
        if k == 0:  # op(a) @ op(b) is all zeros: out = beta * out
            return self.fill_(out, 0.0) if beta == 0.0 else self.scale_(out, beta)
        tf32 = self.allow_tf32 and a.dtype.name == "float32"
        prev, want, set_mode = self._math_mode(tf32)
        try:
            self._cublas.gemm(
                "T" if trans_a else "N", "T" if trans_b else "N", a, b,
                out=out, alpha=alpha, beta=beta,
            )  # fmt: skip
        finally:
            if prev != want:
                set_mode(prev)
        return out

    def _math_mode(self, tf32: bool) -> tuple[int, int, Any]:
        """Put cuBLAS's handle in TF32 or default (full float32) math; (previous, wanted, set).

        The handle is shared with CuPy, so the caller restores `previous` after its GEMM. A CuPy
        without get/setMathMode leaves the handle alone: its default math is full float32."""
        lib = importlib.import_module("cupy_backends.cuda.libs.cublas")
        get, put = getattr(lib, "getMathMode", None), getattr(lib, "setMathMode", None)
        want = _CUBLAS_TF32_TENSOR_OP_MATH if tf32 else _CUBLAS_DEFAULT_MATH
        want = getattr(lib, "CUBLAS_TF32_TENSOR_OP_MATH" if tf32 else "CUBLAS_DEFAULT_MATH", want)
        if get is None or put is None:
            return want, want, None
        handle = self.xp.cuda.device.get_cublas_handle()
        prev = get(handle)
        if prev != want:
            put(handle, want)
        return prev, want, lambda mode: put(handle, mode)

    def bias_add(self, x: Any, b: Any, out: Any = None) -> Any:
        dtype = self._fast(x, b, out)
        if dtype is None or x.ndim != 2 or b.shape != (x.shape[1],):
            return super().bias_add(x, b, out=out)
        out = self._new(x, out)
        self._epilogue(x, b, x, out, "identity", 0.0, 1, dtype)
        return out

    def _epilogue(self, z: Any, b: Any, pre: Any, out: Any, kind: str, alpha: float, flags: int,
                  dtype: str) -> None:  # fmt: skip
        rows, cols = (z.shape[0], z.shape[1]) if z.ndim == 2 else (1, z.size)
        if rows * cols:
            self._launch(
                "dc_bias_act", dtype, geometry.elementwise(rows * cols),
                z, z if b is None else b, pre, out, rows, cols, ACTIVATIONS.index(kind), alpha,
                flags,
            )  # fmt: skip

    def bias_grad(self, dy: Any, out: Any = None, accumulate: bool = False) -> Any:
        dtype = self._fast(dy, out)
        if dtype is None or dy.ndim != 2 or (accumulate and out is None):
            return super().bias_grad(dy, out=out, accumulate=accumulate)
        out = out if out is not None else self.empty((dy.shape[1],), dtype)
        self._col_sum("identity", dy, dy, dy, dy, out, 0.0, int(accumulate), dtype)
        return out

    def _col_sum(self, kind: str, dy: Any, x: Any, y: Any, dz: Any, db: Any, alpha: float,
                 flags: int, dtype: str) -> None:  # fmt: skip
        rows, cols = dy.shape
        if cols:
            self._launch(
                "dc_col_sum_act", dtype, geometry.columns(cols),
                dy, x, y, dz, db, rows, cols, ACTIVATIONS.index(kind), alpha, flags,
            )  # fmt: skip

    # ------------------------------------------------------------------ activations
    def activation(self, kind: str, x: Any, alpha: float = 0.01, out: Any = None) -> Any:
        check_activation(kind)
        dtype = self._fast(x, out)
        if dtype is None:
            return super().activation(kind, x, alpha=alpha, out=out)
        out = self._new(x, out)
        self._epilogue(x.reshape(-1), None, out, out, kind, alpha, 0, dtype)
        return out

    def activation_backward(
        self, kind: str, dy: Any, x: Any = None, y: Any = None, alpha: float = 0.01,
        out: Any = None,
    ) -> Any:  # fmt: skip
        check_activation(kind)
        dtype = self._fast(dy, x, y, out)
        if dtype is None or kind == "identity":
            return super().activation_backward(kind, dy, x=x, y=y, alpha=alpha, out=out)
        out = self._new(dy, out)
        if dy.size:
            self._launch(
                "dc_act_backward", dtype, geometry.elementwise(dy.size),
                dy, dy if x is None else x, dy if y is None else y, out, dy.size,
                ACTIVATIONS.index(kind), alpha,
            )  # fmt: skip
        return out

    def activation_backward_bias_grad(
        self, kind: str, dy: Any, x: Any = None, y: Any = None, alpha: float = 0.01,
        dx_out: Any = None, db_out: Any = None, accumulate_db: bool = False,
    ) -> tuple[Any, Any]:  # fmt: skip
        """One pass: dz = act'(.) * dy and db (+)= column sums of dz."""
        check_activation(kind)
        dtype = self._fast(dy, x, y, dx_out, db_out)
        if dtype is None or dy.ndim != 2 or (accumulate_db and db_out is None):
            return super().activation_backward_bias_grad(
                kind, dy, x=x, y=y, alpha=alpha, dx_out=dx_out, db_out=db_out,
                accumulate_db=accumulate_db,
            )  # fmt: skip
        dz = self._new(dy, dx_out)
        db = db_out if db_out is not None else self.empty((dy.shape[1],), dtype)
        x = dy if x is None else x
        y = dy if y is None else y
        self._col_sum(kind, dy, x, y, dz, db, alpha, 2 | int(accumulate_db), dtype)
        return dz, db

    def linear(
        self, x: Any, w: Any, b: Any = None, activation: str = "identity", alpha: float = 0.01,
        out: Any = None, pre_out: Any = None,
    ) -> Any:  # fmt: skip
        """act(x @ w.T + b): one cuBLAS GEMM, then one fused bias + activation pass."""
        return self._linear(self.gemm, x, w, b, activation, alpha, out, pre_out)

    def _linear(self, gemm: Any, x: Any, w: Any, b: Any, activation: str, alpha: float,
                out: Any, pre_out: Any) -> Any:  # fmt: skip
        """`linear` with its GEMM done by `gemm` (gemm, gemm_bf16 or gemm_fp16)."""
        check_activation(activation)
        z = gemm(x, w, trans_b=True, out=pre_out if pre_out is not None else out)
        dtype = self._fast(z, b, out)
        if dtype is None:  # non-contiguous: Backend.linear's epilogue on z (already computed)
            if b is not None:
                self.bias_add(z, b, out=z)
            if activation == "identity":
                return z if out is None or out is z else self.copy_(out, z)
            return self.activation(
                activation, z, alpha=alpha, out=out if pre_out is not None else z
            )
        flags = 0 if b is None else 1
        if pre_out is not None:
            result, flags = self._new(z, out), flags | 2
        else:
            result = z
        self._epilogue(z, b, z, result, activation, alpha, flags, dtype)
        return result

    def softmax(self, x: Any, out: Any = None) -> Any:
        dtype = self._fast(x, out)
        if dtype is None or x.ndim != 2:
            return super().softmax(x, out=out)
        out = self._new(x, out)
        rows, cols = x.shape
        if rows and cols:
            self._launch("dc_softmax", dtype, geometry.rows(rows, cols), x, out, rows, cols)
        return out

    def _erf(self, x: Any) -> Any:
        """erf on the device (CuPy's own ufunc: no SciPy, no host round trip). Only the generic
        paths (non-contiguous arrays) use it; the kernels have their own erf."""
        return importlib.import_module("cupyx.scipy.special").erf(x)

    # ------------------------------------------------------------------ facts
    def info(self) -> dict[str, Any]:
        """Device name, compute capability, memory pool use, CUDA and CuPy versions."""
        runtime = self.xp.cuda.runtime
        props = runtime.getDeviceProperties(self.index)
        pool = self.xp.get_default_memory_pool()
        with self._device:
            used, total = pool.used_bytes(), pool.total_bytes()
        return {
            **super().info(),
            "device_name": _text(props["name"]),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "device_memory_bytes": int(props.get("totalGlobalMem", 0)),
            "memory_pool_used_bytes": int(used),
            "memory_pool_total_bytes": int(total),
            "cuda_runtime": _version(runtime.runtimeGetVersion()),
            "cuda_driver": _version(runtime.driverGetVersion()),
            "cupy": self.xp.__version__,
            "tf32": self.allow_tf32,
        }


# Every public method runs with this backend's GPU current (CuPy launches raw kernels and cuBLAS
# on the current device, with no check), whichever class of the MRO defines it (the loss and
# update mixins included), and reports OOM clearly. Allocation handles its own device.
_NOT_ON_DEVICE = {"owns", "check", "to_host", "synchronize", "info", "empty", "zeros", "full"}


def on_device_methods(cls: type) -> list[str]:
    """The methods `_on_device` wraps: every public callable of `cls`, inherited ones too."""
    names = []
    for name in sorted(dir(cls)):
        if name.startswith("_") and name != "_from_host" or name in _NOT_ON_DEVICE:
            continue
        if callable(getattr(cls, name)) and not isinstance(getattr(cls, name), type):
            names.append(name)
    return names


for _name in on_device_methods(CupyBackend):
    setattr(CupyBackend, _name, _on_device(getattr(CupyBackend, _name)))

BACKEND_CLASS = CupyBackend
