"""The Numba backend's fused losses and in-place optimizer updates (one pass each).

A mixin of NumbaBackend (deepcore/backends/numba.py): it uses the backend's kernel namespace
`_k`, `_dummy` and `_jit_ok`, and falls back to the base class (`super()`) for inputs the
kernels do not take (non-contiguous arrays, a foreign dtype).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...errors import ShapeError

#: Float types the kernels take (comparing dtype.type is much cheaper than dtype.name).
_FLOAT_TYPES = (np.float32, np.float64)
#: Elements from which elementwise and optimizer kernels run their prange variants. Measured on
#: the mnist step (2 cores, BLAS GEMMs between them): parallel at 64 Ki elements was slower than
#: serial (6.6 vs 5.9 ms per step), so only arrays of 1 Mi elements and up go parallel.
PARALLEL_ELEMENTS = 1 << 20
#: Logits from which softmax cross-entropy runs in parallel: ~5 ns of exp and log per element,
#: so a few tens of thousands already outweigh starting the threads (wide's 512 x 1024 logits:
#: 2.2 ms serial).
PARALLEL_LOSS_ELEMENTS = 1 << 15


def adam_scalars(
    dtype: Any, step: int, lr: float, beta1: float, beta2: float, eps: float,
    weight_decay: float, decoupled: bool, amsgrad: bool, maximize: bool,
) -> tuple[Any, ...]:  # fmt: skip
    """The Adam kernel's scalars, computed on the host in float64 then cast, as base does."""
    t = np.dtype(dtype).type
    bc1 = 1.0 - beta1**step
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    return (
        t(lr / bc1), t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(bc2_sqrt), t(eps),
        t(weight_decay), t(1.0 - lr * weight_decay), bool(decoupled), bool(amsgrad),
        bool(maximize),
    )  # fmt: skip


class NumbaLossUpdateMixin:
    """softmax_cross_entropy, bce_with_logits, mse, sgd_update, adam_update, rmsprop_update."""

    _k: Any
    scratch: Any

    def _loss_ok(self, a: Any, b: Any, grad_out: Any) -> bool:
        return self._jit_ok(a, b, grad_out) and b.shape == a.shape

    def softmax_cross_entropy(
        self, logits: Any, labels: Any, grad_out: Any = None
    ) -> tuple[Any, Any]:
        """Fused: one pass per row computes the row's loss term and its gradient row."""
        if not self._jit_ok(logits, grad_out):
            return super().softmax_cross_entropy(logits, labels, grad_out)
        labels = np.asarray(labels)
        if labels.dtype != np.int64:  # int64 labels avoid this copy
            labels = labels.astype(np.int64)
        if labels.shape != (logits.shape[0],):
            raise ShapeError(f"labels have shape {labels.shape}, expected ({logits.shape[0]},)")
        grad = np.empty(logits.shape, logits.dtype) if grad_out is None else grad_out
        loss = np.empty((), logits.dtype)
        lk = self._k.losses
        if logits.size >= PARALLEL_LOSS_ELEMENTS:  # exp-bound: parallel pays off early
            terms = self.scratch("sce_terms", (logits.shape[0],), logits.dtype)
            ok = lk.softmax_cross_entropy_parallel(logits, labels, grad, loss, terms)
        else:
            ok = lk.softmax_cross_entropy(logits, labels, grad, loss)
        if not ok:
            raise IndexError(f"labels must lie in [0, {logits.shape[1]})")
        return loss, grad

    def bce_with_logits(self, logits: Any, targets: Any, grad_out: Any = None) -> tuple[Any, Any]:
        if not self._loss_ok(logits, targets, grad_out):
            return super().bce_with_logits(logits, targets, grad_out)
        grad = np.empty(logits.shape, logits.dtype) if grad_out is None else grad_out
        loss = np.empty((), logits.dtype)
        self._k.losses.bce_with_logits(logits, targets, grad, loss)
        return loss, grad

    def mse(self, pred: Any, target: Any, grad_out: Any = None) -> tuple[Any, Any]:
        if not self._loss_ok(pred, target, grad_out):
            return super().mse(pred, target, grad_out)
        grad = np.empty(pred.shape, pred.dtype) if grad_out is None else grad_out
        loss = np.empty((), pred.dtype)
        self._k.losses.mse(pred, target, grad, loss)
        return loss, grad

    # ------------------------------------------------------------------ optimizers
    def _flat(self, param: Any, *arrays: Any) -> list[Any] | None:
        """1-D views of param and same-shaped C-contiguous arrays (None entries -> dummies);
        None when the kernels cannot take them (the base path runs instead)."""
        if not isinstance(param, np.ndarray) or param.dtype.type not in _FLOAT_TYPES:
            return None
        out = []
        for a in (param, *arrays):
            if a is None:
                out.append(self._dummy(param.dtype, 1))
                continue
            if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
                return None
            if a.shape != param.shape or a.dtype != param.dtype:
                return None
            out.append(a.reshape(-1))
        return out

    def _opt_run(self, name: str, flat: list[Any], *scalars: Any) -> None:
        o = self._k.optimizers
        n = flat[0].shape[0]
        if n >= PARALLEL_ELEMENTS:
            getattr(o, name)(*flat, *scalars)
        else:
            getattr(o, name + "_range")(0, n, *flat, *scalars)

    def sgd_update(
        self,
        param: Any,
        grad: Any,
        buf: Any,
        *,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        maximize: bool = False,
        first_step: bool = False,
    ) -> None:
        """torch.optim.SGD's rule, fused in place (one pass over param, grad, buf)."""
        flat = self._flat(param, grad, buf if momentum != 0.0 else None)
        if flat is None:
            return super().sgd_update(
                param, grad, buf, lr=lr, momentum=momentum, dampening=dampening,
                nesterov=nesterov, weight_decay=weight_decay, maximize=maximize,
                first_step=first_step,
            )  # fmt: skip
        t = param.dtype.type
        scal = (t(lr), t(momentum), t(1.0 - dampening), bool(nesterov), t(weight_decay))
        self._opt_run("sgd", flat, *scal, bool(maximize), bool(first_step))

    def adam_update(
        self,
        param: Any,
        grad: Any,
        exp_avg: Any,
        exp_avg_sq: Any,
        *,
        step: int,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        amsgrad: bool = False,
        max_exp_avg_sq: Any = None,
        maximize: bool = False,
    ) -> None:
        """torch.optim.Adam / AdamW, fused in place; host-side bias corrections as base."""
        flat = self._flat(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq if amsgrad else None)
        if flat is None:
            return super().adam_update(
                param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2,
                eps=eps, weight_decay=weight_decay, decoupled=decoupled, amsgrad=amsgrad,
                max_exp_avg_sq=max_exp_avg_sq, maximize=maximize,
            )  # fmt: skip
        scal = adam_scalars(
            param.dtype, step, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize
        )
        self._opt_run("adam", flat, *scal)

    def rmsprop_update(
        self,
        param: Any,
        grad: Any,
        square_avg: Any,
        *,
        lr: float,
        alpha: float,
        eps: float,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        momentum_buffer: Any = None,
        centered: bool = False,
        grad_avg: Any = None,
        maximize: bool = False,
    ) -> None:
        """torch.optim.RMSprop, fused in place."""
        flat = self._flat(
            param, grad, square_avg, momentum_buffer if momentum > 0 else None,
            grad_avg if centered else None,
        )  # fmt: skip
        if flat is None:
            return super().rmsprop_update(
                param, grad, square_avg, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                momentum=momentum, momentum_buffer=momentum_buffer, centered=centered,
                grad_avg=grad_avg, maximize=maximize,
            )  # fmt: skip
        t = param.dtype.type
        scal = (t(lr), t(alpha), t(1.0 - alpha), t(eps), t(weight_decay), t(momentum))
        self._opt_run("rmsprop", flat, *scal, bool(centered), bool(maximize))
