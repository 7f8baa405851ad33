"""fp16 GEMMs of the backend contract (a mixin of Backend): `round_fp16`, `gemm_fp16` and
`linear_fp16`, the float16 counterparts of `round_bf16`, `gemm_bf16` and `linear_bf16`.

The versions here are the reference, on every backend: operands rounded to IEEE float16 (to
nearest even, overflowing to inf), multiplied and summed by the float32 `gemm`. Correct, not fast
(on a CPU it is a float32 GEMM plus two roundings); the cupy backend overrides them with cuBLAS
`gemmEx` on half operands.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DtypeError


class HalfKernels:
    """round_fp16 / gemm_fp16 / linear_fp16 (see the module docstring)."""

    xp: Any

    def round_fp16(self, x: Any) -> Any:
        """float32 x rounded to the nearest float16 (ties to even, overflow to inf), as float32
        values. On the host through NumPy's float16 cast (the reference)."""
        if self.xp is np:
            from ..precision import round_fp16

            return round_fp16(x)
        return self.xp.asarray(x, dtype="float32").astype("float16").astype("float32")

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
        """`gemm` on float16 operands with float32 accumulation: a and b (float32) are rounded
        to float16, multiplied and summed in float32; alpha, beta and out stay float32."""
        from .base import Backend

        if a.dtype != np.float32 or b.dtype != np.float32:
            raise DtypeError(f"gemm_fp16: operands must be float32, got {a.dtype} and {b.dtype}")
        be: Any = self
        be._gemm_args(a, b, trans_a, trans_b, beta, out)
        return Backend.gemm(be, self.round_fp16(a), self.round_fp16(b), trans_a, trans_b,
                            alpha, beta, out)  # fmt: skip

    def linear_fp16(
        self,
        x: Any,
        w: Any,
        b: Any = None,
        activation: str = "identity",
        alpha: float = 0.01,
        out: Any = None,
        pre_out: Any = None,
    ) -> Any:
        """`linear` with its GEMM on float16 operands (gemm_fp16); bias and activation in
        float32."""
        be: Any = self
        target = pre_out if pre_out is not None else out
        z = self.gemm_fp16(x, w, trans_b=True, out=target)
        if b is not None:
            be.bias_add(z, b, out=z)
        if activation == "identity":
            if out is None or out is z:
                return z
            return be.copy_(out, z)
        return be.activation(activation, z, alpha=alpha, out=out if pre_out is not None else z)
