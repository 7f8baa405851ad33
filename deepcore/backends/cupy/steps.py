"""The CuPy backend's training-step kernels: fused losses and optimizer updates.

Split from cupy.py for size; `CupyBackend` inherits these. Each method launches one CUDA kernel
(losses: two, the second finishing the mean on the device) with the exact semantics of the
`Backend` method it overrides, and falls back to that method for arrays the kernels do not take
(non-contiguous). Nothing here reads a value back to the host.
"""

from __future__ import annotations

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
    def sgd_packed(self, param: Any, grad: Any, buf: Any, hp: Any, flags: Any) -> None:
        """SGD on a packed row (deepcore.backends.hyper), one kernel launch."""
        dtype = self._fast(param, grad, buf)
        if dtype is None:
            return super().sgd_packed(param, grad, buf, hp, flags)
        lr, momentum, one_m_damp, wd = (float(v) for v in hp[:4])
        bits = (int(bool(flags[1])) | 2 * (wd != 0.0) | 4 * (momentum != 0.0)
                | 8 * bool(flags[0]) | 16 * bool(flags[2]))  # fmt: skip
        self._launch(
            "dc_sgd", dtype, geometry.elementwise(param.size), param, grad,
            param if buf is None else buf, param.size, lr, momentum, one_m_damp, wd, bits,
        )  # fmt: skip

    def adam_packed(self, param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any,
                    max_exp_avg_sq: Any, hp: Any, flags: Any) -> None:  # fmt: skip
        """Adam/AdamW on a packed row (bias corrections computed once, in hyper.pack)."""
        amsgrad = bool(flags[1])
        dtype = self._fast(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq if amsgrad else None)
        if dtype is None:
            return super().adam_packed(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, hp,
                                       flags)  # fmt: skip
        lr_bc1, b1, one_m_b1, b2, one_m_b2, bc2_sqrt, eps, wd, decay = (float(v) for v in hp[:9])
        decoupled, maximize = bool(flags[0]), bool(flags[2])
        bits = int(maximize) | 2 * (wd != 0.0 and decoupled) | 4 * (wd != 0.0 and not decoupled)
        bits |= 8 * amsgrad
        self._launch(
            "dc_adam", dtype, geometry.elementwise(param.size), param, grad, exp_avg,
            exp_avg_sq, max_exp_avg_sq if amsgrad else exp_avg_sq, param.size, decay, wd, b1,
            one_m_b1, b2, one_m_b2, lr_bc1, bc2_sqrt, eps, bits,
        )  # fmt: skip

    def rmsprop_packed(self, param: Any, grad: Any, square_avg: Any, momentum_buffer: Any,
                       grad_avg: Any, hp: Any, flags: Any) -> None:  # fmt: skip
        """RMSprop on a packed row, one kernel launch."""
        lr, alpha, one_m_alpha, eps, wd, momentum = (float(v) for v in hp[:6])
        centered, maximize = bool(flags[0]), bool(flags[1])
        dtype = self._fast(param, grad, square_avg, momentum_buffer if momentum > 0 else None,
                           grad_avg if centered else None)  # fmt: skip
        if dtype is None:
            return super().rmsprop_packed(param, grad, square_avg, momentum_buffer, grad_avg,
                                          hp, flags)  # fmt: skip
        bits = (int(maximize) | 2 * (wd != 0.0) | 4 * centered
                | 8 * (momentum > 0.0))  # fmt: skip
        self._launch(
            "dc_rmsprop", dtype, geometry.elementwise(param.size), param, grad, square_avg,
            grad_avg if centered else square_avg,
            momentum_buffer if momentum > 0.0 else square_avg, param.size, lr, alpha,
            one_m_alpha, eps, wd, momentum, bits,
        )  # fmt: skip
