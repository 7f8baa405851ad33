"""Layers, activations, losses and containers. Layers compute only through their Backend."""

from __future__ import annotations

from typing import Any

from ..backends import Backend
from .activation import (
    GELU,
    Activation,
    Dropout,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    Threshold,
)
from .container import Sequential
from .linear import Linear
from .loss import BCEWithLogitsLoss, CrossEntropyLoss, Loss, MSELoss
from .module import Module, Parameter
from .perceptron import ConvergenceWarning, Perceptron

__all__ = [
    "Module",
    "Parameter",
    "Sequential",
    "Linear",
    "Activation",
    "Identity",
    "ReLU",
    "LeakyReLU",
    "Sigmoid",
    "Tanh",
    "GELU",
    "Softmax",
    "Threshold",
    "Dropout",
    "Loss",
    "CrossEntropyLoss",
    "BCEWithLogitsLoss",
    "MSELoss",
    "Perceptron",
    "ConvergenceWarning",
    "build",
    "mlp",
]

_BUILDABLE = {
    c.__name__: c
    for c in (Linear, Identity, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, Softmax, Threshold, Dropout)
}
ACTIVATION_NAMES = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "gelu": GELU,
    "identity": Identity,
}


def build(config: dict[str, Any], *, backend: str | Backend | None = None, dtype: Any = None):
    """Rebuild a module from `module.config()` (fresh initial weights; load a state dict after)."""
    kind = config.get("type")
    if kind == "Sequential":
        return Sequential(*(build(c, backend=backend, dtype=dtype) for c in config["layers"]))
    cls = _BUILDABLE.get(kind)
    if cls is None:
        raise ValueError(f"cannot build a module of type {kind!r}")
    kwargs = {k: v for k, v in config.items() if k != "type"}
    return cls(**kwargs, backend=backend, dtype=dtype)


def mlp(
    sizes: list[int],
    activation: str = "relu",
    *,
    dropout: float = 0.0,
    backend: str | Backend | None = None,
    dtype: Any = None,
) -> Sequential:
    """Sequential MLP: Linear(sizes[i], sizes[i+1]) with `activation` between hidden layers."""
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least an input and an output size, got {sizes}")
    if activation not in ACTIVATION_NAMES:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATION_NAMES)}"
        )
    layers: list[Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(Linear(a, b, backend=backend, dtype=dtype))
        if i < len(sizes) - 2:
            layers.append(ACTIVATION_NAMES[activation](backend=backend, dtype=dtype))
            if dropout > 0:
                layers.append(Dropout(dropout, backend=backend, dtype=dtype))
    return Sequential(*layers)
