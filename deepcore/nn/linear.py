"""Linear: y = x @ W.T + b, with W stored (out_features, in_features) as in PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..backends import Backend
from ..backends.base import NEEDS_PREACTIVATION
from ..errors import ShapeError
from ..precision import get_precision
from . import init
from .module import Module, Parameter, Recent

if TYPE_CHECKING:
    from .activation import Activation


class Linear(Module):
    """Affine layer. Forward is one fused `backend.linear` call (GEMM + bias + optional
    activation epilogue); backward is the fused activation/bias-gradient pass plus two GEMMs:
    dW += dz.T @ x, dx = dz @ W."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        backend: str | Backend | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(backend=backend, dtype=dtype)
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Linear: {name} must be a positive integer, got {v!r}")
        self.in_features = in_features
        self.out_features = out_features
        w, b = init.linear_default(out_features, in_features, self.dtype)
        self.weight = Parameter(self.backend.asarray(w), self.backend)
        self.bias = Parameter(self.backend.asarray(b), self.backend) if bias else None
        self._cache_x: Any = None
        self._cache_y: Any = None
        self._cache_pre: Any = None

    def forward(self, x: Any, activation: Activation | None = None) -> Any:
        Recent.backend = self.backend
        x = self._input(x, self.in_features)
        be = self.backend
        kind = activation.kind if activation is not None else "identity"
        alpha = activation.alpha if activation is not None else 0.0
        n = x.shape[0]
        y = be.empty((n, self.out_features), self.dtype)
        pre = be.empty((n, self.out_features), self.dtype) if kind in NEEDS_PREACTIVATION else None
        b = self.bias.data if self.bias is not None else None
        half = self._half()
        linear = be.linear if half is None else getattr(be, f"linear_{half}")
        linear(x, self.weight.data, b, activation=kind, alpha=alpha, out=y, pre_out=pre)
        # cached in eval mode too (as PyTorch records it): backward after an eval forward uses
        # this forward's activations, never an earlier training forward's
        self._cache_x, self._cache_y, self._cache_pre = x, y, pre
        return y

    def backward(
        self,
        grad_output: Any,
        activation: Activation | None = None,
        *,
        need_input_grad: bool = True,
    ) -> Any:
        if self._cache_x is None:
            raise RuntimeError(f"{self._label()}: backward called before a forward")
        be = self.backend
        dy = self._input(grad_output)
        x, y, pre = self._cache_x, self._cache_y, self._cache_pre
        if tuple(dy.shape) != tuple(y.shape):
            raise ShapeError(
                f"{self._label()}: grad_output has shape {tuple(dy.shape)}, "
                f"expected {tuple(y.shape)}"
            )
        bias = self.bias if self.bias is not None and self.bias.requires_grad else None
        if bias is not None:
            db, accumulate = bias.grad_target()
        if activation is not None and activation.kind != "identity":
            if bias is not None:
                dz, _ = be.activation_backward_bias_grad(
                    activation.kind,
                    dy,
                    x=pre,
                    y=y,
                    alpha=activation.alpha,
                    db_out=db,
                    accumulate_db=accumulate,
                )
            else:
                dz = be.activation_backward(activation.kind, dy, x=pre, y=y, alpha=activation.alpha)
        else:
            dz = dy
            if bias is not None:
                be.bias_grad(dz, out=db, accumulate=accumulate)
        if bias is not None:
            bias.grad_written()
        half = self._half()
        gemm = be.gemm if half is None else getattr(be, f"gemm_{half}")
        if self.weight.requires_grad:
            dw, accumulate = self.weight.grad_target()
            gemm(dz, x, trans_a=True, beta=1.0 if accumulate else 0.0, out=dw)
            self.weight.grad_written()
        if not need_input_grad:
            return None
        return gemm(dz, self.weight.data)

    def _half(self) -> str | None:
        """ "bf16" or "fp16" inside `autocast("bfloat16")` / `autocast("float16")` for a float32
        layer, else None (float64 layers ignore autocast, as PyTorch's CPU autocast leaves
        float64 alone)."""
        precision = get_precision()
        return precision if precision != "float32" and self.dtype == "float32" else None

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )

    def config(self) -> dict[str, Any]:
        return {
            "type": "Linear",
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
        }
