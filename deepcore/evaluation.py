"""Evaluation and prediction: mean loss / accuracy and batched outputs in eval mode, and the
checks that data passed to fit / evaluate is a well-formed (X, y) pair."""

from __future__ import annotations

from typing import Any

import numpy as np

from .data import Dataset
from .errors import NonFiniteError, ShapeError
from .nn import CrossEntropyLoss, Loss, Module
from .nn.loss import BCEWithLogitsLoss, MSELoss

LOSSES: dict[str, type[Loss]] = {
    "cross_entropy": CrossEntropyLoss,
    "bce_with_logits": BCEWithLogitsLoss,
    "mse": MSELoss,
}


def _as_xy(data: Dataset | tuple[Any, Any], what: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, Dataset):
        X, y = data.X, data.y
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        X, y = np.asarray(data[0]), np.asarray(data[1])
    else:
        raise TypeError(f"{what} must be a deepcore Dataset or an (X, y) pair")
    if X.ndim != 2:
        raise ShapeError(f"{what}: X must be 2-D (samples, features), got shape {X.shape}")
    if len(X) == 0:
        raise ValueError(f"{what} is empty: no samples to train or evaluate on")
    if len(X) != len(y):
        raise ShapeError(f"{what}: X has {len(X)} samples but y has {len(y)}")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))[0]
        raise NonFiniteError(
            f"{what}: X has a non-finite value ({X[tuple(bad)]}) at row {bad[0]}, column {bad[1]}"
        )
    return X, y


def _column_targets(y: np.ndarray, classify: bool) -> np.ndarray:
    """Regression / binary targets of shape (n,) (as a Dataset holds them) as the (n, 1) column
    a one-output model predicts; class labels stay 1-D."""
    return y.reshape(-1, 1) if not classify and y.ndim == 1 else y


def evaluate(
    model: Module,
    data: Dataset | tuple[Any, Any],
    *,
    loss_fn: Loss | str = "cross_entropy",
    batch_size: int = 512,
) -> dict[str, float]:
    """Mean loss and, for cross-entropy, accuracy of `model` on `data` (eval mode)."""
    X, y = _as_xy(data, "evaluation data")
    if isinstance(loss_fn, str):
        loss_fn = LOSSES[loss_fn](backend=model.backend, dtype=model.dtype)
    return _evaluate_arrays(model, X, y, loss_fn, batch_size=batch_size)


def _evaluate_arrays(
    model: Module,
    X: np.ndarray,
    y: np.ndarray,
    loss_fn: Loss,
    *,
    batch_size: int,
    comm: Any = None,
) -> dict[str, float]:
    """`evaluate` on arrays already checked by `_as_xy` (fit checks its validation set once);
    with a data-parallel `comm`, this rank evaluates its slice and the sums are reduced."""
    loss_fn.backend = model.backend
    classify = isinstance(loss_fn, CrossEntropyLoss)
    y = _column_targets(y, classify)
    n_all = len(X)
    if comm is not None and comm.size > 1:
        from .distributed import shard_bounds

        lo, hi = shard_bounds(n_all, comm.rank, comm.size)
        X, y = X[lo:hi], y[lo:hi]
    was = model.training
    model.eval()
    total, correct = 0.0, 0
    try:
        for start in range(0, len(X), batch_size):
            xb, yb = X[start : start + batch_size], y[start : start + batch_size]
            logits = model(xb)
            total += float(loss_fn(logits, yb)) * len(xb)
            if classify:
                correct += int(model.backend.count_correct(logits, yb))
    finally:
        model.train(was)
    if comm is not None and comm.size > 1:
        total, correct = (float(v) for v in comm.allreduce_sum([total, correct]))
    out = {"loss": total / n_all}
    if classify:
        out["accuracy"] = float(correct) / n_all
    return out


def predict(model: Module, X: Any, *, batch_size: int = 512) -> np.ndarray:
    """Host array of the model's outputs for X, computed in eval mode in batches."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ShapeError(f"predict: X must be 2-D (samples, features), got shape {X.shape}")
    was = model.training
    model.eval()
    try:
        parts = [
            model.backend.to_host(model(X[s : s + batch_size]))
            for s in range(0, len(X), batch_size)
        ]
    finally:
        model.train(was)
    return np.concatenate(parts) if parts else np.empty((0, 0), dtype=model.dtype)
