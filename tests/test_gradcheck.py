"""Finite-difference gradient checks (float64, central differences) for every layer and loss,
on every backend: input gradients and parameter gradients (weight, bias)."""

from __future__ import annotations

import numpy as np
import pytest

import deepcore as dc
from deepcore.errors import NoGradientError

EPS = 1e-6
RTOL, ATOL = 1e-6, 1e-8
BATCH, IN, OUT = 3, 4, 5


def _numeric(f, h: np.ndarray) -> np.ndarray:
    """Central differences of scalar f at host array h (h is restored)."""
    g = np.zeros_like(h)
    for idx in np.ndindex(*h.shape):
        old = h[idx]
        h[idx] = old + EPS
        fp = f(h)
        h[idx] = old - EPS
        fm = f(h)
        h[idx] = old
        g[idx] = (fp - fm) / (2 * EPS)
    return g


def check_module(model, x: np.ndarray, *, mask_seed: int | None = None) -> None:
    """Analytic input/parameter gradients of L = sum(model(x) * R) against central differences."""
    be = model.backend
    model.train()

    def forward(xh: np.ndarray):
        if mask_seed is not None:
            dc.seed(mask_seed)  # the same dropout mask every time
        return model(be.asarray(xh))

    out = forward(x)
    r = np.random.default_rng(1).standard_normal(tuple(out.shape))
    for p in model.parameters():
        p.grad = None
    dx = dc.to_numpy(model.backward(be.asarray(r)))
    analytic = {n: dc.to_numpy(p.grad) for n, p in model.named_parameters()}

    def loss_at_x(xh: np.ndarray) -> float:
        return float((dc.to_numpy(forward(xh)) * r).sum())

    np.testing.assert_allclose(
        dx, _numeric(loss_at_x, x.copy()), rtol=RTOL, atol=ATOL, err_msg="input"
    )
    for name, p in model.named_parameters():
        original = p.numpy()

        def loss_at_p(h: np.ndarray, p=p) -> float:
            p.data = be.asarray(h.copy())
            return loss_at_x(x)

        num = _numeric(loss_at_p, original.copy())
        p.data = be.asarray(original)
        np.testing.assert_allclose(analytic[name], num, rtol=RTOL, atol=ATOL, err_msg=name)


def _x(shape=(BATCH, IN), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


ACTIVATIONS = {
    "relu": lambda **kw: dc.nn.ReLU(**kw),
    "leaky_relu": lambda **kw: dc.nn.LeakyReLU(0.1, **kw),
    "sigmoid": lambda **kw: dc.nn.Sigmoid(**kw),
    "tanh": lambda **kw: dc.nn.Tanh(**kw),
    "gelu": lambda **kw: dc.nn.GELU(**kw),
    "gelu_tanh": lambda **kw: dc.nn.GELU("tanh", **kw),
    "identity": lambda **kw: dc.nn.Identity(**kw),
}


@pytest.mark.parametrize("bias", [True, False])
def test_linear(backend_name, bias):
    layer = dc.nn.Linear(IN, OUT, bias=bias, backend=backend_name, dtype="float64")
    assert len(list(layer.parameters())) == (2 if bias else 1)
    check_module(layer, _x())


@pytest.mark.parametrize("kind", list(ACTIVATIONS))
def test_activation_standalone(backend_name, kind):
    act = ACTIVATIONS[kind](backend=backend_name, dtype="float64")
    check_module(act, 2 * _x((BATCH, 7)))


@pytest.mark.parametrize("kind", list(ACTIVATIONS))
@pytest.mark.parametrize("bias", [True, False])
def test_activation_fused_after_linear(backend_name, kind, bias):
    kw = dict(backend=backend_name, dtype="float64")
    model = dc.nn.Sequential(
        dc.nn.Linear(IN, OUT, bias=bias, **kw),
        ACTIVATIONS[kind](**kw),
        dc.nn.Linear(OUT, 2, **kw),
    )
    check_module(model, _x())
    assert model._tape is not None  # a plain MLP: the whole forward ran as one fused stage


def test_fused_and_unfused_sequential_agree(backend_name):
    kw = dict(backend=backend_name, dtype="float64")
    model = dc.nn.Sequential(
        dc.nn.Linear(IN, OUT, **kw), dc.nn.GELU(**kw), dc.nn.Linear(OUT, 3, **kw)
    )
    x = _x()
    y_fused = dc.to_numpy(model(x))
    model.fuse = False
    np.testing.assert_allclose(dc.to_numpy(model(x)), y_fused, rtol=1e-13, atol=1e-14)
    check_module(model, x)


def test_softmax(backend_name):
    check_module(dc.nn.Softmax(backend=backend_name, dtype="float64"), _x((BATCH, 6)))


def test_softmax_in_sequential(backend_name):
    kw = dict(backend=backend_name, dtype="float64")
    model = dc.nn.Sequential(dc.nn.Linear(IN, OUT, **kw), dc.nn.Softmax(**kw))
    check_module(model, _x())


def test_dropout_with_fixed_mask(backend_name):
    kw = dict(backend=backend_name, dtype="float64")
    drop = dc.nn.Dropout(0.4, **kw)
    check_module(drop, _x((6, 7)), mask_seed=3)
    model = dc.nn.Sequential(
        dc.nn.Linear(IN, OUT, **kw), dc.nn.Tanh(**kw), dc.nn.Dropout(0.4, **kw)
    )
    check_module(model, _x(), mask_seed=5)


def test_identity(backend_name):
    check_module(dc.nn.Identity(backend=backend_name, dtype="float64"), _x())


def test_deeper_mlp(backend_name):
    model = dc.nn.mlp([IN, 6, 5, 3], "tanh", backend=backend_name, dtype="float64")
    check_module(model, _x())


# ---------------------------------------------------------------------------- losses
def _targets(kind: str, shape: tuple[int, int], seed: int = 2):
    r = np.random.default_rng(seed)
    if kind == "ce":
        return r.integers(0, shape[1], shape[0])
    if kind == "bce":
        return r.random(shape)
    return r.standard_normal(shape)


LOSSES = {"ce": dc.nn.CrossEntropyLoss, "bce": dc.nn.BCEWithLogitsLoss, "mse": dc.nn.MSELoss}


@pytest.mark.parametrize("kind", list(LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(1, 1), (4, 3)])
def test_loss_input_gradient(backend_name, kind, reduction, shape):
    loss_fn = LOSSES[kind](reduction, backend=backend_name, dtype="float64")
    be = loss_fn.backend
    z = 2 * _x(shape, seed=7)
    t = _targets(kind, shape)
    loss = loss_fn(be.asarray(z), t)
    assert np.dtype(loss.dtype) == np.float64
    grad = dc.to_numpy(loss_fn.backward())
    num = _numeric(lambda h: float(loss_fn(be.asarray(h), t)), z.copy())
    np.testing.assert_allclose(grad, num, rtol=RTOL, atol=ATOL)
    # backward(grad_output) scales the gradient (the chain rule through a scalar)
    loss_fn(be.asarray(z), t)
    np.testing.assert_allclose(dc.to_numpy(loss_fn.backward(2.5)), 2.5 * grad, rtol=1e-14)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_sum_is_mean_times_count(backend_name, kind):
    z = _x((4, 3), seed=9)
    t = _targets(kind, (4, 3))
    mean = LOSSES[kind]("mean", backend=backend_name, dtype="float64")
    total = LOSSES[kind]("sum", backend=backend_name, dtype="float64")
    count = 4 if kind == "ce" else 12
    np.testing.assert_allclose(float(total(z, t)), count * float(mean(z, t)), rtol=1e-13)


@pytest.mark.parametrize("kind", list(LOSSES))
def test_model_and_loss_parameter_gradients(backend_name, kind):
    """End to end: d(loss)/d(weights) of Linear -> ReLU -> Linear -> loss."""
    kw = dict(backend=backend_name, dtype="float64")
    model = dc.nn.Sequential(
        dc.nn.Linear(IN, OUT, **kw), dc.nn.ReLU(**kw), dc.nn.Linear(OUT, 3, **kw)
    )
    loss_fn = LOSSES[kind](**kw)
    x, t = _x(), _targets(kind, (BATCH, 3))
    loss_fn(model(x), t)
    model.backward(loss_fn.backward())
    for name, p in model.named_parameters():
        original = p.numpy()

        def f(h, p=p):
            p.data = model.backend.asarray(h.copy())
            return float(loss_fn(model(x), t))

        num = _numeric(f, original.copy())
        p.data = model.backend.asarray(original)
        np.testing.assert_allclose(dc.to_numpy(p.grad), num, rtol=RTOL, atol=ATOL, err_msg=name)


def test_gradients_accumulate_until_zero_grad(backend_name):
    layer = dc.nn.Linear(IN, OUT, backend=backend_name, dtype="float64")
    x = _x()
    r = np.ones((BATCH, OUT))
    layer(x)
    layer.backward(r)
    once = {n: dc.to_numpy(p.grad) for n, p in layer.named_parameters()}
    layer(x)
    layer.backward(r)
    for n, p in layer.named_parameters():
        np.testing.assert_allclose(dc.to_numpy(p.grad), 2 * once[n], rtol=1e-14)
    layer.zero_grad()
    assert all(p.grad is None for p in layer.parameters())
    layer(x)
    layer.backward(r)  # after zero_grad the gradient is written afresh, not accumulated
    for n, p in layer.named_parameters():
        np.testing.assert_allclose(dc.to_numpy(p.grad), once[n], rtol=1e-14)


def test_threshold_has_no_gradient(backend_name):
    th = dc.nn.Threshold(0.0, backend=backend_name, dtype="float64")
    y = th(np.array([[-1.0, 0.0, 2.0]]))
    np.testing.assert_array_equal(dc.to_numpy(y), [[0.0, 1.0, 1.0]])
    with pytest.raises(NoGradientError, match="backpropagation") as info:
        th.backward(np.ones((1, 3)))
    msg = str(info.value)
    assert "Sigmoid" in msg and "Perceptron" in msg  # says what to use instead
    model = dc.nn.Sequential(dc.nn.Linear(3, 2, backend=backend_name, dtype="float64"), th)
    model(np.ones((1, 3)))
    with pytest.raises(NoGradientError):
        model.backward(np.ones((1, 2)))
