"""Shared pieces of the backend conformance suite (tests/test_backend_contract*.py):
independent float64 NumPy references and small helpers. Not a test module."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, settings

import deepcore as dc

FIXTURE_SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
COLS = [1, 3, 31, 33, 1000]


class ForeignArray:
    """Stands in for an array of another library (deepcore names it by its module)."""

    __module__ = "torch"
    shape = (2, 2)
    dtype = np.dtype("float32")
    ndim = 2


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def host(x) -> np.ndarray:
    return dc.to_numpy(x)


def put(backend, a: np.ndarray, dtype: str):
    """A backend array holding `a` cast to dtype, and the float64 view of the cast values."""
    cast = np.asarray(a).astype(dtype)
    return backend.asarray(cast), cast.astype(np.float64)


def check_dtype(x, dtype: str) -> None:
    assert np.dtype(x.dtype).name == dtype, f"result is {x.dtype}, expected {dtype}"


# --------------------------------------------------------------------------- references
def erf64(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def ref_activation(kind: str, x: np.ndarray, alpha: float) -> np.ndarray:
    if kind == "identity":
        return x.copy()
    if kind == "relu":
        return np.where(x > 0, x, 0.0)
    if kind == "leaky_relu":
        return np.where(x > 0, x, alpha * x)
    if kind == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * x))
    if kind == "tanh":
        return np.tanh(x)
    if kind == "gelu":
        return x * 0.5 * (1.0 + erf64(x / math.sqrt(2.0)))
    if kind == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    raise AssertionError(kind)


def ref_activation_derivative(kind: str, x: np.ndarray, alpha: float) -> np.ndarray:
    if kind == "identity":
        return np.ones_like(x)
    if kind == "relu":
        return (x > 0).astype(np.float64)
    if kind == "leaky_relu":
        return np.where(x > 0, 1.0, alpha)
    if kind == "sigmoid":
        s = 0.5 * (1.0 + np.tanh(0.5 * x))
        return s * (1.0 - s)
    if kind == "tanh":
        return 1.0 / np.cosh(x) ** 2
    if kind == "gelu":
        phi = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return 0.5 * (1.0 + erf64(x / math.sqrt(2.0))) + x * phi
    if kind == "gelu_tanh":
        k = math.sqrt(2.0 / math.pi)
        u = k * (x + 0.044715 * x**3)
        du = k * (1.0 + 3 * 0.044715 * x**2)
        return 0.5 * (1.0 + np.tanh(u)) + 0.5 * x * du / np.cosh(u) ** 2
    raise AssertionError(kind)


def ref_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_cross_entropy(z: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    n, c = z.shape
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    loss = float(np.mean(lse - z[np.arange(n), labels]))
    onehot = np.zeros_like(z)
    onehot[np.arange(n), labels] = 1.0
    return loss, (ref_softmax(z) - onehot) / n


def ref_bce(z: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    # -[t log s + (1 - t) log(1 - s)] with log s = -log(1 + e^-z), log(1 - s) = -log(1 + e^z)
    loss = float(np.mean(t * np.logaddexp(0.0, -z) + (1.0 - t) * np.logaddexp(0.0, z)))
    s = 0.5 * (1.0 + np.tanh(0.5 * z))
    return loss, (s - t) / z.size


def away_from_zero(x: np.ndarray, gap: float = 1e-3) -> np.ndarray:
    """Inputs clear of the kinks of relu / leaky_relu (and of their sign test)."""
    return np.where(np.abs(x) < gap, np.sign(x + 1e-300) * gap * 2 + x, x)
