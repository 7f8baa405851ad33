"""Activation modules, Dropout and Identity. Elementwise activations fuse into a preceding
Linear inside Sequential; standing alone they call the backend's activation kernels."""

from __future__ import annotations

from typing import Any

from .. import random as dc_random
from ..backends import Backend
from ..errors import NoGradientError
from .module import Module


class Activation(Module):
    """An elementwise activation `kind` (see deepcore.backends.base.ACTIVATIONS)."""

    kind = "identity"
    fusable = True

    def __init__(self, *, backend: str | Backend | None = None, dtype: Any = None) -> None:
        super().__init__(backend=backend, dtype=dtype)
        self.alpha = 0.0
        self._cache_x: Any = None
        self._cache_y: Any = None

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        y = self.backend.activation(self.kind, x, alpha=self.alpha)
        self._cache_x, self._cache_y = x, y  # eval mode too, as PyTorch: backward stays right
        return y

    def backward(self, grad_output: Any) -> Any:
        if self._cache_y is None:
            raise RuntimeError(f"{self._label()}: backward called before a forward")
        dy = self._input(grad_output)
        return self.backend.activation_backward(
            self.kind, dy, x=self._cache_x, y=self._cache_y, alpha=self.alpha
        )

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__}


class Identity(Activation):
    """Returns its input unchanged."""

    kind = "identity"

    def forward(self, x: Any) -> Any:
        return self._input(x)

    def backward(self, grad_output: Any) -> Any:
        return self._input(grad_output)


class ReLU(Activation):
    """max(x, 0)."""

    kind = "relu"


class LeakyReLU(Activation):
    """x if x > 0 else negative_slope * x."""

    kind = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01, **kw: Any) -> None:
        super().__init__(**kw)
        if not negative_slope > 0:
            # The backward pass reads the sign of the output, which needs a positive slope.
            raise ValueError(f"LeakyReLU: negative_slope must be > 0, got {negative_slope}")
        self.alpha = float(negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.alpha}"

    def config(self) -> dict[str, Any]:
        return {"type": "LeakyReLU", "negative_slope": self.alpha}


class Sigmoid(Activation):
    """1 / (1 + exp(-x))."""

    kind = "sigmoid"


class Tanh(Activation):
    """tanh(x)."""

    kind = "tanh"


class GELU(Activation):
    """x * Phi(x); approximate='tanh' uses PyTorch's tanh form."""

    def __init__(self, approximate: str = "none", **kw: Any) -> None:
        super().__init__(**kw)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.kind = "gelu" if approximate == "none" else "gelu_tanh"

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"

    def config(self) -> dict[str, Any]:
        return {"type": "GELU", "approximate": self.approximate}


class Softmax(Activation):
    """Row-wise softmax over the features (dim=-1). Not fused: it is not elementwise."""

    kind = "softmax"
    fusable = False

    def __init__(self, dim: int = -1, **kw: Any) -> None:
        super().__init__(**kw)
        if dim not in (-1, 1):
            raise ValueError(f"Softmax: only dim=-1 (features) is supported, got {dim}")
        self.dim = dim

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        y = self.backend.softmax(x)
        self._cache_y = y
        return y

    def backward(self, grad_output: Any) -> Any:
        if self._cache_y is None:
            raise RuntimeError("Softmax: backward called before a forward")
        return self.backend.softmax_backward(self._input(grad_output), self._cache_y)

    def config(self) -> dict[str, Any]:
        return {"type": "Softmax", "dim": self.dim}


class Threshold(Activation):
    """The perceptron's step: 1 where x >= threshold, else 0. It has no gradient.

    Unlike torch.nn.Threshold (which passes x through above the threshold), this is the
    Heaviside step of the classic perceptron; its backward raises NoGradientError.
    """

    kind = "step"
    fusable = False

    def __init__(self, threshold: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.threshold = float(threshold)

    def forward(self, x: Any) -> Any:
        return self.backend.heaviside(self._input(x), self.threshold)

    def backward(self, grad_output: Any) -> Any:
        raise NoGradientError(
            "Threshold (step) has zero gradient almost everywhere and none at the step, so it "
            "cannot be trained by backpropagation; use Sigmoid or ReLU, or train a "
            "dc.nn.Perceptron with the perceptron learning rule"
        )

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"

    def config(self) -> dict[str, Any]:
        return {"type": "Threshold", "threshold": self.threshold}


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the rest
    by 1/(1-p); in eval, the identity. Masks come from deepcore's seeded host generator."""

    def __init__(self, p: float = 0.5, **kw: Any) -> None:
        super().__init__(**kw)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p = float(p)
        self._cache_mask: Any = None

    def forward(self, x: Any) -> Any:
        x = self._input(x)
        if not self.training or self.p == 0.0:
            self._cache_mask = None
            return x
        mask = self._cache_mask = self.mask(tuple(x.shape))
        return self.backend.mul(x, mask)

    def mask(self, shape: tuple[int, ...]) -> Any:
        """A training-mode mask on the backend: 0 (probability p) or 1/(1-p), drawn from
        deepcore's seeded host generator (the fused MLP stages use the same masks)."""
        if self.p == 1.0:
            return self.backend.zeros(shape, self.dtype)
        return self.backend.asarray(dc_random.dropout_mask(shape, self.p, self.dtype))

    def backward(self, grad_output: Any) -> Any:
        dy = self._input(grad_output)
        if self._cache_mask is None:
            return dy
        return self.backend.mul(dy, self._cache_mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def config(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p}
