"""The perceptron of the classic tutorials: a Linear unit, a step, and Rosenblatt's rule."""

from __future__ import annotations

import warnings
from typing import Any

from ..backends import Backend
from ..errors import ShapeError
from .activation import Threshold
from .linear import Linear
from .module import Module


class ConvergenceWarning(UserWarning):
    """Training stopped before it converged."""


class Perceptron(Module):
    """Binary perceptron: predict step(w . x + b); train by w += lr (y - y_hat) x per sample.

    Learns any linearly separable labelling (AND, OR); on XOR it cannot converge, and `fit`
    says so with a ConvergenceWarning and `converged_ = False`.
    """

    def __init__(
        self,
        in_features: int,
        lr: float = 1.0,
        max_epochs: int = 100,
        *,
        backend: str | Backend | None = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(backend=backend, dtype=dtype)
        if not lr > 0:
            raise ValueError(f"Perceptron: lr must be > 0, got {lr}")
        self.in_features = in_features
        self.lr = float(lr)
        self.max_epochs = int(max_epochs)
        self.linear = Linear(in_features, 1, backend=self.backend, dtype=self.dtype)
        self.step = Threshold(0.0, backend=self.backend, dtype=self.dtype)
        # The classic rule starts from zero weights.
        self.backend.fill_(self.linear.weight.data, 0.0)
        self.backend.fill_(self.linear.bias.data, 0.0)
        self.converged_ = False
        self.n_epochs_ = 0

    def forward(self, x: Any) -> Any:
        """0/1 predictions of shape (batch, 1)."""
        return self.step(self.linear(x))

    def fit(self, X: Any, y: Any) -> Perceptron:
        """Train with the perceptron rule until an epoch makes no mistake or max_epochs pass."""
        be = self.backend
        X = self._input(X, self.in_features)
        labels = be.to_host(be.asarray(y)).astype(self.dtype).reshape(-1)
        if labels.shape[0] != X.shape[0]:
            raise ShapeError(f"Perceptron.fit: {X.shape[0]} samples but {labels.shape[0]} labels")
        if not ((labels == 0) | (labels == 1)).all():
            raise ValueError("Perceptron.fit: labels must be 0 or 1")
        w, b = self.linear.weight.data, self.linear.bias.data
        self.train()
        for epoch in range(1, self.max_epochs + 1):
            mistakes = 0
            for i in range(X.shape[0]):
                xi = X[i : i + 1]
                pred = float(be.to_host(self.forward(xi)).reshape(-1)[0])
                err = float(labels[i]) - pred
                if err != 0.0:
                    mistakes += 1
                    delta = be.asarray(labels[i : i + 1].reshape(1, 1) * 0 + err * self.lr)
                    be.gemm(delta, xi, trans_a=True, beta=1.0, out=w)  # w += lr * err * x
                    be.bias_grad(delta, out=b, accumulate=True)  # b += lr * err
            self.n_epochs_ = epoch
            if mistakes == 0:
                self.converged_ = True
                return self
        self.converged_ = False
        warnings.warn(
            f"Perceptron did not converge in {self.max_epochs} epochs: the classes are not "
            f"linearly separable (XOR is the classic example), so the perceptron rule cannot "
            f"find a separating line; use a hidden layer (dc.nn.Sequential with Linear + ReLU)",
            ConvergenceWarning,
            stacklevel=2,
        )
        return self

    def predict(self, X: Any) -> Any:
        """Host array of 0/1 predictions, shape (batch,)."""
        was = self.training
        self.eval()
        try:
            return self.backend.to_host(self.forward(X)).reshape(-1)
        finally:
            self.train(was)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, lr={self.lr}"
