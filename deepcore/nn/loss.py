"""Losses. Each forward is one fused backend call returning the loss (a 0-d array on the
backend; `float(loss)` reads it) and caching the gradient that `backward()` returns."""

from __future__ import annotations

from typing import Any

from ..backends import Backend
from ..errors import DtypeError, ShapeError
from .module import Module, Recent


class Loss(Module):
    """Base: `loss = fn(input, target)`, then `fn.backward()` gives d(loss)/d(input)."""

    def __init__(
        self, reduction: str = "mean", *, backend: str | Backend | None = None, dtype: Any = None
    ) -> None:
        super().__init__(backend=backend, dtype=dtype)
        self._follow = backend is None  # compute where the model's last forward did
        if reduction not in ("mean", "sum"):
            raise ValueError(f"{type(self).__name__}: reduction must be 'mean' or 'sum'")
        self.reduction = reduction
        self._cache_grad: Any = None
        self._np_dtype: Any = None

    def __call__(self, input: Any, target: Any) -> Any:  # noqa: A002 - PyTorch's name
        return self.forward(input, target)

    def forward(self, input: Any, target: Any) -> Any:  # noqa: A002
        logits = self._prediction(input)
        target = self._target(target, logits)
        loss, grad = self._fused(logits, target)
        if self.reduction == "sum":
            scale = float(self._count(logits))
            loss = loss * logits.dtype.type(scale)
            self.backend.scale_(grad, scale)
        self._cache_grad = grad
        return loss

    def backward(self, grad_output: Any = None) -> Any:
        """d(loss)/d(input), times grad_output (a float) when given."""
        if self._cache_grad is None:
            raise RuntimeError(f"{type(self).__name__}: backward called before forward")
        grad = self._cache_grad
        if grad_output is not None and float(grad_output) != 1.0:
            grad = self.backend.mul(grad, grad.dtype.type(float(grad_output)))
        return grad

    def _prediction(self, input: Any) -> Any:  # noqa: A002
        # The loss follows the dtype and backend of the predictions it is given.
        recent = Recent.backend
        if self._follow and recent is not None and recent is not self.backend:
            if recent.owns(input):
                self.backend = recent
        if not self.backend.owns(input):
            from ..backends import owning_backend

            self.backend = owning_backend(input) or self.backend
        x = self.backend.asarray(input)
        if x.dtype.kind != "f" or x.dtype.itemsize not in (4, 8):
            raise DtypeError(f"{type(self).__name__}: predictions must be float, got {x.dtype}")
        if x.dtype != self._np_dtype:
            self.dtype = x.dtype.name
            self._np_dtype = x.dtype
        return x

    def _count(self, logits: Any) -> int:
        return int(logits.size)

    def _same_shape_target(self, target: Any, logits: Any) -> Any:
        # Host data (on a CPU backend every NumPy array is host data) is converted to the
        # model's dtype at this boundary, as inputs are; a device array must already match.
        host = self.backend.device == "cpu" or not self.backend.owns(target)
        t = self.backend.asarray(target, dtype=logits.dtype if host else None)
        if t.dtype != logits.dtype:
            raise DtypeError(
                f"{type(self).__name__}: target dtype {t.dtype} differs from input {logits.dtype}"
            )
        if tuple(t.shape) != tuple(logits.shape):
            raise ShapeError(
                f"{type(self).__name__}: target shape {tuple(t.shape)} differs from "
                f"input shape {tuple(logits.shape)}"
            )
        return t


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy on logits (batch, classes) with integer class labels (batch,)."""

    def forward(self, input: Any, target: Any) -> Any:  # noqa: A002
        return super().forward(input, target)

    def _target(self, target: Any, logits: Any) -> Any:
        if logits.ndim != 2:
            raise ShapeError(
                f"CrossEntropyLoss: logits must be (batch, classes), got {tuple(logits.shape)}"
            )
        n, c = logits.shape
        be = self.backend
        if be.device == "cpu" or not be.owns(target):  # host labels: validate here, once
            return be.asarray(check_labels(target, n, c, be))
        if target.dtype.kind not in "iu" or target.shape != (n,):
            raise ShapeError(
                f"CrossEntropyLoss: labels must be integers of shape ({n},), "
                f"got {target.dtype} {tuple(target.shape)}"
            )
        return target  # device labels are not read back to check their range

    def _fused(self, logits: Any, labels: Any) -> tuple[Any, Any]:
        return self.backend.softmax_cross_entropy(logits, labels)

    def _count(self, logits: Any) -> int:
        return int(logits.shape[0])


def check_labels(labels: Any, n_rows: int, n_classes: int, backend: Any = None) -> Any:
    """Class labels as int64 after one check shared by every backend and route: shape (n_rows,),
    whole numbers (int, or float holding whole values) in [0, n_classes - 1]. A bad label is a
    ValueError naming its value, its row and the allowed range. int64 labels of the right shape
    take one pass (`backend.labels_in_range`, when a backend is given)."""
    import numpy as np  # host-side validation of user labels, not compute

    if type(labels) is np.ndarray and labels.dtype == np.int64 and labels.shape == (n_rows,):
        if labels.flags.c_contiguous and backend is not None:
            if backend.labels_in_range(labels, n_classes):
                return labels
        elif n_rows == 0 or np.maximum.reduce(labels.view(np.uint64)) < n_classes:
            return labels
    t = np.asarray(labels)
    if t.ndim != 1 or t.shape[0] != n_rows:
        raise ShapeError(
            f"CrossEntropyLoss: labels must have shape ({n_rows},) to match the logits, "
            f"got {tuple(t.shape)}"
        )
    kind = t.dtype.kind
    if kind == "f":
        whole = np.isfinite(t) & (t == np.round(t))
        if not whole.all():
            row = int(np.flatnonzero(~whole)[0])
            raise ValueError(
                f"CrossEntropyLoss: label {t[row].item()} at row {row} is not a whole number "
                f"({_allowed(n_classes)})"
            )
    elif kind not in "iu":
        raise DtypeError(f"CrossEntropyLoss: labels must be integer class indices, got {t.dtype}")
    if t.size and _out_of_range(t, n_classes):
        row = int(np.flatnonzero((t < 0) | (t >= n_classes))[0])
        value = t[row].item()
        value = int(value) if float(value).is_integer() else value
        raise ValueError(
            f"CrossEntropyLoss: label {value} at row {row} is out of range ({_allowed(n_classes)})"
        )
    return t if t.dtype == np.int64 else t.astype(np.int64)


def _allowed(n_classes: int) -> str:
    return f"labels must be whole numbers in [0, {n_classes - 1}] for {n_classes} classes"


def _out_of_range(t: Any, n_classes: int) -> bool:
    """Whether any label lies outside [0, n_classes): for integers one reduction (negative
    values read as unsigned are huge); floats (already whole) get the explicit test."""
    import numpy as np

    if t.dtype.kind == "i":
        t = t.view(f"u{t.dtype.itemsize}")
    elif t.dtype.kind != "u":
        return bool(((t < 0) | (t >= n_classes)).any())
    return bool(np.maximum.reduce(t, axis=None) >= n_classes)


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits with float targets in [0, 1] of the same shape."""

    def _target(self, target: Any, logits: Any) -> Any:
        return self._same_shape_target(target, logits)

    def _fused(self, logits: Any, targets: Any) -> tuple[Any, Any]:
        return self.backend.bce_with_logits(logits, targets)


class MSELoss(Loss):
    """Mean squared error over all elements."""

    def _target(self, target: Any, pred: Any) -> Any:
        return self._same_shape_target(target, pred)

    def _fused(self, pred: Any, target: Any) -> tuple[Any, Any]:
        return self.backend.mse(pred, target)
