"""The CuPy backend's bf16 and fp16 GEMMs (a mixin of CupyBackend): cuBLAS `gemmEx` on 16-bit
operands with 32-bit compute, the tensor-core path of PyTorch's autocast and CuPy's own
float16 matmul.

`gemm_bf16` / `gemm_fp16` keep the contract of `Backend.gemm_bf16`: float32 operands, rounded to
bf16 / IEEE half (to nearest even; half overflows to inf) once per call by the `dc_round16`
kernel (kernels/cuda/half.cu) into 16-bit buffers, then one `cublasGemmEx` with
CUDA_R_16BF / CUDA_R_16F operands, CUBLAS_COMPUTE_32F (float32 accumulation) and a float32 C
(alpha, beta and out float32). cuBLAS picks tensor cores for these types itself under its
default math mode; CUBLAS_GEMM_DEFAULT is the algorithm (the *_TENSOR_OP ones are deprecated).

Row-major operands are handed to column-major cuBLAS as their transposes: C^T = op(B)^T op(A)^T,
so cuBLAS computes an (n x m) product from B then A, each with its row length as leading
dimension, and writes C in place (ldc = n) when out is C-contiguous.

Not run on a GPU: under tests/cupy_double.py the `gemmEx` call's arguments are checked and its
product computed with NumPy from the very buffers the pointers name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import DtypeError
from ...kernels.cuda import geometry
from ..base import Backend

# cudaDataType_t / cublasComputeType_t / cublasGemmAlgo_t values (library_types.h, cublas_api.h)
# for a CuPy that does not export a name.
_CUDA_R_32F, _CUDA_R_16F, _CUDA_R_16BF = 0, 2, 14
_CUBLAS_COMPUTE_32F = 68
_CUBLAS_GEMM_DEFAULT = -1
_CUBLAS_OP_N, _CUBLAS_OP_T = 0, 1
#: The 16-bit storage type of each precision: its name in kernels/cuda/spec.py and cudaDataType.
_TYPES = {"bf16": ("bfloat16", "CUDA_R_16BF", _CUDA_R_16BF),
          "fp16": ("float16", "CUDA_R_16F", _CUDA_R_16F)}  # fmt: skip


class CupyHalfMixin(Backend):
    """gemm_bf16 / gemm_fp16 (and through them linear_*) / round_bf16 / round_fp16 for
    CupyBackend (needs its _launch and _linear)."""

    _launch: Any
    _linear: Any

    def gemm_bf16(
        self,
        a: Any,
        b: Any,
        trans_a: bool = False,
        trans_b: bool = False,
        alpha: float = 1.0,
        beta: float = 0.0,
        out: Any = None,
    ) -> Any:
        """Backend.gemm_bf16 on cuBLAS gemmEx (bf16 operands, float32 compute and output)."""
        return self._gemm16("bf16", a, b, trans_a, trans_b, alpha, beta, out)

    def gemm_fp16(
        self,
        a: Any,
        b: Any,
        trans_a: bool = False,
        trans_b: bool = False,
        alpha: float = 1.0,
        beta: float = 0.0,
        out: Any = None,
    ) -> Any:
        """Backend.gemm_fp16 on cuBLAS gemmEx (half operands, float32 compute and output)."""
        return self._gemm16("fp16", a, b, trans_a, trans_b, alpha, beta, out)

    def _linear16(self, gemm: Callable[..., Any], x: Any, w: Any, b: Any, activation: str,
                  alpha: float, out: Any, pre_out: Any) -> Any:  # fmt: skip
        """linear_bf16 / linear_fp16: one gemmEx, then the float32 bias + activation kernel."""
        return self._linear(gemm, x, w, b, activation, alpha, out, pre_out)

    def round_bf16(self, x: Any) -> Any:
        """float32 x rounded to bf16 on the device (CUDA's __float2bfloat16_rn), as float32."""
        return self._round_trip("bfloat16", x)

    def round_fp16(self, x: Any) -> Any:
        """float32 x rounded to half on the device (CUDA's __float2half_rn), as float32."""
        return self._round_trip("float16", x)

    def _round_trip(self, storage: str, x: Any) -> Any:
        x = self.xp.ascontiguousarray(x, dtype="float32")
        out = self.empty(x.shape, "float32")
        if x.size:
            bits = self.empty(x.shape, "uint16")
            geom = geometry.elementwise(x.size)
            self._launch("dc_round16", storage, geom, x, bits, x.size)
            self._launch("dc_widen16", storage, geom, bits, out, x.size)
        return out

    # ------------------------------------------------------------------ the call
    def _gemm16(self, precision: str, a: Any, b: Any, ta: bool, tb: bool, alpha: float,
                beta: float, out: Any) -> Any:  # fmt: skip
        if a.dtype != np.float32 or b.dtype != np.float32:
            raise DtypeError(
                f"gemm_{precision}: operands must be float32, got {a.dtype} and {b.dtype}"
            )
        self.check(a, b, out, where=f"gemm_{precision}")
        m, n, out = self._gemm_args(a, b, ta, tb, beta, out)
        k = a.shape[0] if ta else a.shape[1]
        if m == 0 or n == 0:
            return out
        if k == 0:  # op(a) @ op(b) is all zeros: out = beta * out
            return self.fill_(out, 0.0) if beta == 0.0 else self.scale_(out, beta)
        storage, name, code = _TYPES[precision]
        a16 = self._round16(storage, a, "a")  # both rounded before out is written: out may
        b16 = self._round16(storage, b, "b")  # alias a or b
        target = out if out.flags.c_contiguous else self.xp.ascontiguousarray(out)
        runtime = self.xp.cuda.runtime
        code = getattr(runtime, name, code)
        lib = importlib.import_module("cupy_backends.cuda.libs.cublas")
        scalars = np.array([alpha, beta], np.float32)  # host pointers (CuPy's pointer mode)
        op_n = getattr(lib, "CUBLAS_OP_N", _CUBLAS_OP_N)
        op_t = getattr(lib, "CUBLAS_OP_T", _CUBLAS_OP_T)
        lib.gemmEx(
            self.xp.cuda.device.get_cublas_handle(),
            op_t if tb else op_n, op_t if ta else op_n, n, m, k,
            scalars.ctypes.data,
            b16.data.ptr, code, b.shape[1],
            a16.data.ptr, code, a.shape[1],
            scalars.ctypes.data + 4,
            target.data.ptr, getattr(runtime, "CUDA_R_32F", _CUDA_R_32F), n,
            getattr(lib, "CUBLAS_COMPUTE_32F", _CUBLAS_COMPUTE_32F),
            getattr(lib, "CUBLAS_GEMM_DEFAULT", _CUBLAS_GEMM_DEFAULT),
        )  # fmt: skip
        if target is not out:
            self.copy_(out, target)
        return out

    def _round16(self, storage: str, x: Any, tag: str) -> Any:
        """x (float32) rounded into a reusable 16-bit buffer (uint16 bits), same shape and
        C order: one per operand tag, grown to the largest GEMM seen."""
        x = self.xp.ascontiguousarray(x)
        bufs = self.__dict__.setdefault("_half_bufs", {})
        buf = bufs.get(tag)
        if buf is None or buf.size < x.size:
            buf = bufs[tag] = self.empty((x.size,), "uint16")
        y = buf[: x.size]
        self._launch("dc_round16", storage, geometry.elementwise(x.size), x, y, x.size)
        return y.reshape(x.shape)
