"""Default fused losses of the backend contract, written once against `xp` (see base.py)."""

from __future__ import annotations

from typing import Any


class LossKernels:
    """Softmax cross-entropy, BCE with logits and MSE: each returns (0-d loss, gradient)."""

    xp: Any

    def softmax_cross_entropy(
        self, logits: Any, labels: Any, grad_out: Any = None
    ) -> tuple[Any, Any]:
        """Mean cross-entropy of integer labels and its gradient softmax(logits) - onehot, / n."""
        xp = self.xp
        n = logits.shape[0]
        t = logits.dtype.type
        rows = xp.arange(n)
        # One exp pass: e = exp(z - max) gives both softmax (e / sum) and the log-sum-exp
        # (max + log sum), which stays accurate where softmax underflows to 0.
        row_max = logits.max(axis=1, keepdims=True)
        grad = xp.subtract(logits, row_max, out=grad_out)
        picked = grad[rows, labels]  # z_y - max, before exp overwrites it
        xp.exp(grad, out=grad)
        total = grad.sum(axis=1, keepdims=True)
        loss = (xp.log(total[:, 0]) - picked).sum() / t(n)
        grad /= total
        grad[rows, labels] -= t(1)
        grad /= t(n)
        return xp.asarray(loss, dtype=logits.dtype), grad

    def bce_with_logits(self, logits: Any, targets: Any, grad_out: Any = None) -> tuple[Any, Any]:
        """Mean binary cross-entropy on logits, in the stable max(z,0) - z*t + log1p(exp(-|z|))."""
        xp = self.xp
        t = logits.dtype.type
        size = logits.size
        loss = (
            xp.maximum(logits, 0) - logits * targets + xp.log1p(xp.exp(-xp.abs(logits)))
        ).sum() / t(size)
        grad = self._sigmoid(logits, grad_out)
        grad -= targets
        grad /= t(size)
        return xp.asarray(loss, dtype=logits.dtype), grad

    def mse(self, pred: Any, target: Any, grad_out: Any = None) -> tuple[Any, Any]:
        """Mean squared error over all elements and its gradient 2 (pred - target) / size."""
        xp = self.xp
        t = pred.dtype.type
        diff = xp.subtract(pred, target, out=grad_out)
        loss = self.sum_squares(diff) / t(pred.size)
        diff *= t(2.0 / pred.size)
        return xp.asarray(loss, dtype=pred.dtype), diff
