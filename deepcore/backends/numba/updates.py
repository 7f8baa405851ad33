"""The Numba backend's fused losses and in-place optimizer updates (one pass each).

A mixin of NumbaBackend (deepcore/backends/numba.py): it uses the backend's kernel namespace
`_k`, `_dummy` and `_jit_ok`, and falls back to the base class (`super()`) for inputs the
kernels do not take (non-contiguous arrays, a foreign dtype).
"""

from __future__ import annotations

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


class NumbaLossUpdateMixin:
    """softmax_cross_entropy, labels_in_range, bce_with_logits, mse, sgd_update, adam_update,
    rmsprop_update."""

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

    def labels_in_range(self, labels: np.ndarray, n_classes: int) -> bool:
        """One compiled pass (a NumPy reduction costs ~3 us inside a small step)."""
        return bool(self._k.losses.labels_in_range(labels, n_classes))

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

    def sgd_packed(self, param: Any, grad: Any, buf: Any, hp: Any, flags: Any) -> None:
        """torch.optim.SGD's rule, fused in place (one pass over param, grad, buf)."""
        momentum = hp[1]
        flat = self._flat(param, grad, buf if momentum != 0.0 else None)
        if flat is None:
            return super().sgd_packed(param, grad, buf, hp, flags)
        t = param.dtype.type
        scal = (t(hp[0]), t(momentum), t(hp[2]), bool(flags[0]), t(hp[3]))
        self._opt_run("sgd", flat, *scal, bool(flags[1]), bool(flags[2]))

    def adam_packed(self, param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any,
                    max_exp_avg_sq: Any, hp: Any, flags: Any) -> None:  # fmt: skip
        """torch.optim.Adam / AdamW, fused in place."""
        amsgrad = bool(flags[1])
        flat = self._flat(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq if amsgrad else None)
        if flat is None:
            return super().adam_packed(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, hp,
                                       flags)  # fmt: skip
        t = param.dtype.type
        self._opt_run("adam", flat, *(t(v) for v in hp[:9]), *(bool(f) for f in flags[:3]))

    def rmsprop_packed(self, param: Any, grad: Any, square_avg: Any, momentum_buffer: Any,
                       grad_avg: Any, hp: Any, flags: Any) -> None:  # fmt: skip
        """torch.optim.RMSprop, fused in place."""
        centered = bool(flags[0])
        flat = self._flat(
            param, grad, square_avg, momentum_buffer if hp[5] > 0 else None,
            grad_avg if centered else None,
        )  # fmt: skip
        if flat is None:
            return super().rmsprop_packed(param, grad, square_avg, momentum_buffer, grad_avg,
                                          hp, flags)  # fmt: skip
        t = param.dtype.type
        self._opt_run("rmsprop", flat, *(t(v) for v in hp[:6]), centered, bool(flags[1]))
