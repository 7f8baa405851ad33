"""16-bit GEMMs of the backend contract (a mixin of Backend): `round_bf16` / `round_fp16`,
`gemm_bf16` / `gemm_fp16` and `linear_bf16` / `linear_fp16` (deepcore.precision).

The versions here are the reference, on every backend: float32 operands rounded to bfloat16 or
IEEE float16 (to nearest even), multiplied and summed by the float32 `gemm`; alpha, beta, `out`,
bias and activation stay float32. Correct, not fast; device backends override the GEMMs (numba:
`vdpbf16ps`; cupy: cuBLAS `gemmEx`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import DtypeError


class HalfKernels:
    """round_* / gemm_* / linear_* for bf16 and fp16 (see the module docstring)."""

    xp: Any

    def round_bf16(self, x: Any) -> Any:
        """float32 x rounded to the nearest bfloat16 (ties to even), as float32 values. On the
        host through ml_dtypes' bfloat16 (an independent implementation: the reference)."""
        if self.xp is np:
            from ..precision import round_bf16

            return round_bf16(x)
        u = self.xp.ascontiguousarray(x, dtype="float32").view("uint32")
        r = (u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000  # NaNs stay NaN: their top bits stay
        return self.xp.where(self.xp.isnan(x), x, r.view("float32")).astype("float32")

    def round_fp16(self, x: Any) -> Any:
        """float32 x rounded to the nearest float16 (ties to even, overflow to inf), as float32
        values. On the host through NumPy's float16 cast (the reference)."""
        if self.xp is np:
            from ..precision import round_fp16

            return round_fp16(x)
        return self.xp.asarray(x, dtype="float32").astype("float16").astype("float32")

    def gemm_bf16(self, a: Any, b: Any, trans_a: bool = False, trans_b: bool = False,
                  alpha: float = 1.0, beta: float = 0.0, out: Any = None) -> Any:  # fmt: skip
        """`gemm` on bfloat16 operands with float32 accumulation."""
        return self._gemm16_reference("gemm_bf16", self.round_bf16, a, b, trans_a, trans_b,
                                      alpha, beta, out)  # fmt: skip

    def gemm_fp16(self, a: Any, b: Any, trans_a: bool = False, trans_b: bool = False,
                  alpha: float = 1.0, beta: float = 0.0, out: Any = None) -> Any:  # fmt: skip
        """`gemm` on float16 operands with float32 accumulation."""
        return self._gemm16_reference("gemm_fp16", self.round_fp16, a, b, trans_a, trans_b,
                                      alpha, beta, out)  # fmt: skip

    def linear_bf16(self, x: Any, w: Any, b: Any = None, activation: str = "identity",
                    alpha: float = 0.01, out: Any = None, pre_out: Any = None) -> Any:  # fmt: skip
        """`linear` with its GEMM on bf16 operands (gemm_bf16)."""
        return self._linear16(self.gemm_bf16, x, w, b, activation, alpha, out, pre_out)

    def linear_fp16(self, x: Any, w: Any, b: Any = None, activation: str = "identity",
                    alpha: float = 0.01, out: Any = None, pre_out: Any = None) -> Any:  # fmt: skip
        """`linear` with its GEMM on float16 operands (gemm_fp16)."""
        return self._linear16(self.gemm_fp16, x, w, b, activation, alpha, out, pre_out)

    def _gemm16_reference(self, name: str, round16: Callable[[Any], Any], a: Any, b: Any,
                          trans_a: bool, trans_b: bool, alpha: float, beta: float,
                          out: Any) -> Any:  # fmt: skip
        from .base import Backend

        if a.dtype != np.float32 or b.dtype != np.float32:
            raise DtypeError(f"{name}: operands must be float32, got {a.dtype} and {b.dtype}")
        be: Any = self
        be._gemm_args(a, b, trans_a, trans_b, beta, out)
        return Backend.gemm(be, round16(a), round16(b), trans_a, trans_b, alpha, beta, out)

    def _linear16(self, gemm: Callable[..., Any], x: Any, w: Any, b: Any, activation: str,
                  alpha: float, out: Any, pre_out: Any) -> Any:  # fmt: skip
        be: Any = self
        z = gemm(x, w, trans_b=True, out=pre_out if pre_out is not None else out)
        if b is not None:
            be.bias_add(z, b, out=z)
        if activation == "identity":
            return z if out is None or out is z else be.copy_(out, z)
        return be.activation(activation, z, alpha=alpha, out=out if pre_out is not None else z)
