"""Backend conformance suite, part 2: fused losses and in-place optimizer updates of every
backend against independent float64 NumPy formulas (part 1: tests/test_backend_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest
from contract_refs import (  # noqa: F401 - shared references of the suite
    COLS,
    FIXTURE_SETTINGS,
    ForeignArray,
    away_from_zero,
    check_dtype,
    erf64,
    host,
    put,
    ref_activation,
    ref_activation_derivative,
    ref_bce,
    ref_cross_entropy,
    ref_softmax,
    rng,
)
from hypothesis import given, settings
from hypothesis import strategies as st


# --------------------------------------------------------------------------- losses
@pytest.mark.parametrize("n,c", [(1, 1), (1, 3), (7, 10), (64, 33), (5, 1000)])
def test_softmax_cross_entropy(backend, dtype, tol, n, c):
    r = rng(n * c)
    z, z64 = put(backend, 3 * r.standard_normal((n, c)), dtype)
    labels = r.integers(0, c, n)
    loss, grad = backend.softmax_cross_entropy(z, backend.asarray(labels))
    check_dtype(loss, dtype)
    check_dtype(grad, dtype)
    assert tuple(np.shape(loss)) == () and tuple(grad.shape) == (n, c)
    ref_loss, ref_grad = ref_cross_entropy(z64, labels)
    np.testing.assert_allclose(float(loss), ref_loss, **tol(dtype, terms=c, scale=4))
    np.testing.assert_allclose(host(grad), ref_grad, **tol(dtype, terms=c, scale=4))
    gout = backend.empty((n, c), dtype)
    _, g2 = backend.softmax_cross_entropy(z, backend.asarray(labels), grad_out=gout)
    assert g2 is gout
    np.testing.assert_allclose(host(gout), ref_grad, **tol(dtype, terms=c, scale=4))


@settings(FIXTURE_SETTINGS)
@given(
    n=st.integers(1, 12),
    c=st.integers(2, 12),
    spread=st.sampled_from([0.1, 1.0, 30.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_softmax_cross_entropy_random_logits(backend, dtype, tol, n, c, spread, seed):
    r = rng(seed)
    z, z64 = put(backend, spread * r.standard_normal((n, c)), dtype)
    labels = r.integers(0, c, n)
    loss, grad = backend.softmax_cross_entropy(z, backend.asarray(labels))
    ref_loss, ref_grad = ref_cross_entropy(z64, labels)
    assert float(loss) >= -1e-6
    np.testing.assert_allclose(float(loss), ref_loss, **tol(dtype, terms=c, scale=10))
    np.testing.assert_allclose(host(grad), ref_grad, **tol(dtype, terms=c, scale=10))
    # each row of the gradient sums to zero (softmax sums to one, minus a one-hot)
    np.testing.assert_allclose(
        host(grad).sum(axis=1), 0.0, atol=1e-5 if dtype == "float32" else 1e-13
    )


def test_softmax_cross_entropy_extreme_logits(backend, dtype):
    z64 = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [1e4, 1e4, -1e4]])
    labels = np.array([1, 1, 2])
    z, z64 = put(backend, z64, dtype)
    loss, grad = backend.softmax_cross_entropy(z, backend.asarray(labels))
    assert np.isfinite(float(loss)) and np.isfinite(host(grad)).all()
    ref_loss, ref_grad = ref_cross_entropy(z64, labels)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
    np.testing.assert_allclose(host(grad), ref_grad, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (5, 33)])
def test_bce_with_logits(backend, dtype, tol, shape):
    r = rng(sum(shape))
    z, z64 = put(backend, 3 * r.standard_normal(shape), dtype)
    t, t64 = put(backend, r.random(shape), dtype)
    loss, grad = backend.bce_with_logits(z, t)
    check_dtype(loss, dtype)
    check_dtype(grad, dtype)
    ref_loss, ref_grad = ref_bce(z64, t64)
    size = int(np.prod(shape))
    np.testing.assert_allclose(float(loss), ref_loss, **tol(dtype, terms=size, scale=4))
    np.testing.assert_allclose(host(grad), ref_grad, **tol(dtype, scale=4))
    gout = backend.empty(shape, dtype)
    _, g2 = backend.bce_with_logits(z, t, grad_out=gout)
    assert g2 is gout


def test_bce_with_logits_extreme_logits(backend, dtype):
    z, z64 = put(backend, np.array([[1e4, -1e4, 1e4, -1e4, 0.0]]), dtype)
    t, t64 = put(backend, np.array([[1.0, 0.0, 0.0, 1.0, 0.5]]), dtype)
    loss, grad = backend.bce_with_logits(z, t)
    assert np.isfinite(float(loss)) and np.isfinite(host(grad)).all()
    ref_loss, ref_grad = ref_bce(z64, t64)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
    np.testing.assert_allclose(host(grad), ref_grad, atol=1e-7)


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (4, 1000)])
def test_mse(backend, dtype, tol, shape):
    r = rng(sum(shape))
    p, p64 = put(backend, r.standard_normal(shape), dtype)
    t, t64 = put(backend, r.standard_normal(shape), dtype)
    loss, grad = backend.mse(p, t)
    check_dtype(loss, dtype)
    check_dtype(grad, dtype)
    size = p64.size
    np.testing.assert_allclose(float(loss), np.mean((p64 - t64) ** 2), **tol(dtype, size, 4))
    np.testing.assert_allclose(host(grad), 2 * (p64 - t64) / size, **tol(dtype, scale=4))
    np.testing.assert_array_equal(host(p), p64)  # inputs untouched
    gout = backend.empty(shape, dtype)
    _, g2 = backend.mse(p, t, grad_out=gout)
    assert g2 is gout


# --------------------------------------------------------------------------- optimizers
def _opt_tensors(backend, dtype, shape=(3, 5), seed=0):
    r = rng(seed)
    p, p64 = put(backend, r.standard_normal(shape), dtype)
    grads = [r.standard_normal(shape).astype(dtype).astype(np.float64) for _ in range(4)]
    return p, p64, grads


SGD_CASES = [
    dict(momentum=0.0),
    dict(momentum=0.9),
    dict(momentum=0.9, dampening=0.3),
    dict(momentum=0.8, nesterov=True),
    dict(momentum=0.9, nesterov=True, weight_decay=0.1),
    dict(momentum=0.0, weight_decay=0.05, maximize=True),
    dict(momentum=0.5, dampening=0.1, weight_decay=0.01, maximize=True),
]


@pytest.mark.parametrize("hp", SGD_CASES, ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_sgd_update(backend, dtype, tol, hp):
    lr = 0.1
    mom, damp = hp.get("momentum", 0.0), hp.get("dampening", 0.0)
    nest, wd, maxi = hp.get("nesterov", False), hp.get("weight_decay", 0.0), hp.get("maximize")
    p, w, grads = _opt_tensors(backend, dtype)
    buf = backend.zeros(w.shape, dtype) if mom else None
    ref_buf = None
    for i, g64 in enumerate(grads):
        # reference: torch.optim.SGD, written out
        d = -g64 if maxi else g64
        d = d + wd * w
        if mom:
            ref_buf = d.copy() if ref_buf is None else mom * ref_buf + (1 - damp) * d
            d = d + mom * ref_buf if nest else ref_buf
        w = w - lr * d
        g = backend.asarray(g64.astype(dtype))
        backend.sgd_update(p, g, buf, lr=lr, first_step=(i == 0), **hp)
        check_dtype(p, dtype)
        np.testing.assert_allclose(host(p), w, **tol(dtype, scale=10))
        if mom:
            np.testing.assert_allclose(host(buf), ref_buf, **tol(dtype, scale=10))
        np.testing.assert_array_equal(host(g), g64)  # the gradient is not modified


@pytest.mark.parametrize("decoupled", [False, True], ids=["adam", "adamw"])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("maximize", [False, True])
def test_adam_update(backend, dtype, tol, decoupled, amsgrad, weight_decay, maximize):
    lr, b1, b2, eps = 0.01, 0.9, 0.99, 1e-8
    p, w, grads = _opt_tensors(backend, dtype, seed=2)
    m_ = backend.zeros(w.shape, dtype)
    v_ = backend.zeros(w.shape, dtype)
    vmax = backend.zeros(w.shape, dtype) if amsgrad else None
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    vhat = np.zeros_like(w)
    for step, g64 in enumerate(grads * 2, start=1):
        g64 = g64 * (0.5 if step % 2 else 2.0)  # vary magnitude so amsgrad's max matters
        d = -g64 if maximize else g64
        if decoupled:
            w = w * (1 - lr * weight_decay)
        else:
            d = d + weight_decay * w
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        vhat = np.maximum(vhat, v)
        mhat = m / (1 - b1**step)
        second = (vhat if amsgrad else v) / (1 - b2**step)
        w = w - lr * mhat / (np.sqrt(second) + eps)
        g = backend.asarray(g64.astype(dtype))
        backend.adam_update(
            p, g, m_, v_, step=step, lr=lr, beta1=b1, beta2=b2, eps=eps,
            weight_decay=weight_decay, decoupled=decoupled, amsgrad=amsgrad,
            max_exp_avg_sq=vmax, maximize=maximize,
        )  # fmt: skip
        check_dtype(p, dtype)
        np.testing.assert_allclose(host(p), w, **tol(dtype, scale=30))
        np.testing.assert_allclose(host(m_), m, **tol(dtype, scale=10))
        np.testing.assert_allclose(host(v_), v, **tol(dtype, scale=10))
        if amsgrad:
            np.testing.assert_allclose(host(vmax), vhat, **tol(dtype, scale=10))


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("maximize", [False, True])
def test_rmsprop_update(backend, dtype, tol, centered, momentum, weight_decay, maximize):
    lr, alpha, eps = 0.01, 0.9, 1e-8
    p, w, grads = _opt_tensors(backend, dtype, seed=3)
    sq_ = backend.zeros(w.shape, dtype)
    buf_ = backend.zeros(w.shape, dtype) if momentum else None
    gavg_ = backend.zeros(w.shape, dtype) if centered else None
    sq = np.zeros_like(w)
    buf = np.zeros_like(w)
    gavg = np.zeros_like(w)
    for g64 in grads:
        d = -g64 if maximize else g64
        d = d + weight_decay * w
        sq = alpha * sq + (1 - alpha) * d * d
        if centered:
            gavg = alpha * gavg + (1 - alpha) * d
            avg = np.sqrt(sq - gavg * gavg) + eps
        else:
            avg = np.sqrt(sq) + eps
        if momentum:
            buf = momentum * buf + d / avg
            w = w - lr * buf
        else:
            w = w - lr * d / avg
        g = backend.asarray(g64.astype(dtype))
        backend.rmsprop_update(
            p, g, sq_, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
            momentum=momentum, momentum_buffer=buf_, centered=centered, grad_avg=gavg_,
            maximize=maximize,
        )  # fmt: skip
        check_dtype(p, dtype)
        np.testing.assert_allclose(host(p), w, **tol(dtype, scale=100))
        np.testing.assert_allclose(host(sq_), sq, **tol(dtype, scale=10))
        if centered:
            np.testing.assert_allclose(host(gavg_), gavg, **tol(dtype, scale=10))


# --------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("shape", [(1,), (3, 33), (2, 1000)])
def test_sum_squares(backend, dtype, tol, shape):
    x, x64 = put(backend, rng().standard_normal(shape), dtype)
    s = backend.sum_squares(x)
    check_dtype(s, dtype)
    np.testing.assert_allclose(float(s), (x64**2).sum(), **tol(dtype, terms=x64.size, scale=3))


def test_scale_(backend, dtype, tol):
    x, x64 = put(backend, rng().standard_normal((3, 31)), dtype)
    assert backend.scale_(x, 0.25) is x
    check_dtype(x, dtype)
    np.testing.assert_allclose(host(x), x64 * 0.25, **tol(dtype))
    factor = backend.asarray(np.array(-2.0, dtype))  # a 0-d array on this backend
    backend.scale_(x, factor)
    check_dtype(x, dtype)
    np.testing.assert_allclose(host(x), x64 * -0.5, **tol(dtype))


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_heaviside(backend, dtype, threshold):
    x, x64 = put(backend, np.array([[-1.0, 0.0, 0.5, 0.49, 2.0]]), dtype)
    y = backend.heaviside(x, threshold)
    check_dtype(y, dtype)
    np.testing.assert_array_equal(host(y), (x64 >= threshold).astype(float))
    out = backend.empty((1, 5), dtype)
    assert backend.heaviside(x, threshold, out=out) is out


@pytest.mark.parametrize("n,c", [(1, 1), (10, 3), (257, 33)])
def test_count_correct(backend, dtype, n, c):
    r = rng(n + c)
    z, z64 = put(backend, r.standard_normal((n, c)), dtype)
    labels = r.integers(0, c, n)
    expected = int((z64.argmax(axis=1) == labels).sum())
    assert int(backend.count_correct(z, labels)) == expected
    assert int(backend.count_correct(z, backend.asarray(labels))) == expected


def test_every_backend_keeps_the_base_signatures(backend):
    """A device backend may override methods but not change their signatures (as thinc)."""
    import inspect

    from deepcore.backends.base import Backend

    for name, fn in inspect.getmembers(Backend, inspect.isfunction):
        if name.startswith("__"):
            continue
        mine = getattr(type(backend), name)
        assert inspect.signature(mine) == inspect.signature(fn), name


def test_backend_pickles_by_name(backend):
    import pickle

    assert pickle.loads(pickle.dumps(backend)) is backend
