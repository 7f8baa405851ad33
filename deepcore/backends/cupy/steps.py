"""The CuPy backend's training-step kernels: fused losses and optimizer updates.

Split from cupy.py for size; `CupyBackend` inherits these. Each method launches one CUDA kernel
(losses: two, the second finishing the mean on the device) with the exact semantics of the
`Backend` method it overrides, and falls back to that method for arrays the kernels do not take
(non-contiguous). Nothing here reads a value back to the host.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...kernels.cuda import geometry
from ..base import Backend


class CupyStepsMixin(Backend):
    """Losses and optimizer updates on the device; needs CupyBackend's _fast/_launch/_new."""

    _fast: Any
    _launch: Any
    _new: Any

    # ------------------------------------------------------------------ losses
    def _finish(self, partials: Any, count: int, divisor: int, dtype: str) -> Any:
        loss = self.empty((), dtype)  # fresh: callers may keep losses across steps
        self._launch("dc_sum_finish", dtype, geometry.finisher(), partials, count, divisor, loss)
        return loss

    def softmax_cross_entropy(
        self, logits: Any, labels: Any, grad_out: Any = None
    ) -> tuple[Any, Any]:
        dtype = self._fast(logits, grad_out)
        labels = self.asarray(labels)
        if labels.dtype != np.int64:
            labels = labels.astype(np.int64)
        if dtype is None or logits.ndim != 2 or not labels.flags.c_contiguous:
            return super().softmax_cross_entropy(logits, labels, grad_out=grad_out)
        rows, cols = logits.shape
        grad = self._new(logits, grad_out)
        row_loss = self.scratch("xent_rows", (rows,), dtype)
        grid = geometry.rows(rows, cols)
        self._launch(
            "dc_softmax_xent", dtype, grid, logits, labels, grad, row_loss, rows, cols, rows
        )
        return self._finish(row_loss, rows, rows, dtype), grad

    def _pointwise_loss(self, name: str, a: Any, t: Any, grad_out: Any, scale: float) -> Any:
        dtype = a.dtype.name
        n = a.size
        grad = self._new(a, grad_out)
        grid, block = geometry.reduction(n)
        partials = self.scratch(f"{name}_partials", (grid[0],), dtype)
        self._launch(name, dtype, (grid, block), a, t, grad, partials, n, scale)
        return self._finish(partials, grid[0], n, dtype), grad

    def bce_with_logits(self, logits: Any, targets: Any, grad_out: Any = None) -> tuple[Any, Any]:
        targets = self.asarray(targets, dtype=logits.dtype)
        if self._fast(logits, targets, grad_out) is None or logits.size == 0:
            return super().bce_with_logits(logits, targets, grad_out=grad_out)
        return self._pointwise_loss("dc_bce_logits", logits, targets, grad_out, logits.size)

    def mse(self, pred: Any, target: Any, grad_out: Any = None) -> tuple[Any, Any]:
        target = self.asarray(target, dtype=pred.dtype)
        if self._fast(pred, target, grad_out) is None or pred.size == 0:
            return super().mse(pred, target, grad_out=grad_out)
        return self._pointwise_loss("dc_mse", pred, target, grad_out, 2.0 / pred.size)

    # ------------------------------------------------------------------ optimizer updates
    def sgd_update(self, param: Any, grad: Any, buf: Any, *, lr: float, momentum: float = 0.0,
                   dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                   maximize: bool = False, first_step: bool = False) -> None:  # fmt: skip
        dtype = self._fast(param, grad, buf)
        if dtype is None:
            return super().sgd_update(
                param, grad, buf, lr=lr, momentum=momentum, dampening=dampening,
                nesterov=nesterov, weight_decay=weight_decay, maximize=maximize,
                first_step=first_step,
            )  # fmt: skip
        flags = (int(maximize) | 2 * (weight_decay != 0.0) | 4 * (momentum != 0.0)
                 | 8 * bool(nesterov) | 16 * bool(first_step))  # fmt: skip
        self._launch(
            "dc_sgd", dtype, geometry.elementwise(param.size), param, grad,
            param if buf is None else buf, param.size, lr, momentum, 1.0 - dampening,
            weight_decay, flags,
        )  # fmt: skip

    def adam_update(self, param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any, *, step: int,
                    lr: float, beta1: float, beta2: float, eps: float, weight_decay: float = 0.0,
                    decoupled: bool = False, amsgrad: bool = False, max_exp_avg_sq: Any = None,
                    maximize: bool = False) -> None:  # fmt: skip
        dtype = self._fast(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq)
        if dtype is None:
            return super().adam_update(
                param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2,
                eps=eps, weight_decay=weight_decay, decoupled=decoupled, amsgrad=amsgrad,
                max_exp_avg_sq=max_exp_avg_sq, maximize=maximize,
            )  # fmt: skip
        decay = weight_decay != 0.0
        flags = int(maximize) | 2 * (decay and decoupled) | 4 * (decay and not decoupled)
        flags |= 8 * bool(amsgrad)
        self._launch(
            "dc_adam", dtype, geometry.elementwise(param.size), param, grad, exp_avg,
            exp_avg_sq, max_exp_avg_sq if amsgrad else exp_avg_sq, param.size,
            1.0 - lr * weight_decay, weight_decay, beta1, 1.0 - beta1, beta2, 1.0 - beta2,
            lr / (1.0 - beta1**step), math.sqrt(1.0 - beta2**step), eps, flags,
        )  # fmt: skip

    def rmsprop_update(self, param: Any, grad: Any, square_avg: Any, *, lr: float, alpha: float,
                       eps: float, weight_decay: float = 0.0, momentum: float = 0.0,
                       momentum_buffer: Any = None, centered: bool = False, grad_avg: Any = None,
                       maximize: bool = False) -> None:  # fmt: skip
        dtype = self._fast(param, grad, square_avg, momentum_buffer, grad_avg)
        if dtype is None:
            return super().rmsprop_update(
                param, grad, square_avg, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                momentum=momentum, momentum_buffer=momentum_buffer, centered=centered,
                grad_avg=grad_avg, maximize=maximize,
            )  # fmt: skip
        flags = (int(maximize) | 2 * (weight_decay != 0.0) | 4 * bool(centered)
                 | 8 * (momentum > 0.0))  # fmt: skip
        self._launch(
            "dc_rmsprop", dtype, geometry.elementwise(param.size), param, grad, square_avg,
            grad_avg if centered else square_avg,
            momentum_buffer if momentum > 0.0 else square_avg, param.size, lr, alpha,
            1.0 - alpha, eps, weight_decay, momentum, flags,
        )  # fmt: skip
