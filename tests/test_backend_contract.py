"""Conformance suite: every method of the Backend contract, on every backend, in both dtypes.

Each expected value is a float64 NumPy formula written out here, independently of the NumPy
backend (which is itself only one of the backends under test). Inputs are drawn in float64,
cast to the dtype under test, and the reference is computed from the cast values, so only the
kernel's own rounding is measured.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepcore as dc
from deepcore.backends.base import ACTIVATIONS, NEEDS_PREACTIVATION
from deepcore.errors import BackendMismatchError, DtypeError, ShapeError

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


# --------------------------------------------------------------------------- arrays
def test_registry_name_and_device(backend, backend_name):
    assert backend.name.split(":")[0] == backend_name
    assert backend.device == "cpu" or backend.device.startswith("cuda")
    assert dc.get_backend(backend_name) is backend  # one instance per process


@pytest.mark.parametrize("shape", [(0,), (1,), (3, 33), (2, 3, 4)])
def test_empty_zeros_full(backend, dtype, shape):
    e = backend.empty(shape, dtype)
    assert tuple(e.shape) == shape and backend.owns(e)
    check_dtype(e, dtype)
    z = backend.zeros(shape, dtype)
    check_dtype(z, dtype)
    np.testing.assert_array_equal(host(z), np.zeros(shape))
    f = backend.full(shape, -2.5, dtype)
    check_dtype(f, dtype)
    np.testing.assert_array_equal(host(f), np.full(shape, -2.5))


def test_asarray_from_host_keeps_values_and_dtype(backend, dtype):
    a = rng().standard_normal((4, 5)).astype(dtype)
    x = backend.asarray(a)
    assert backend.owns(x)
    check_dtype(x, dtype)
    np.testing.assert_array_equal(host(x), a)
    # host data is converted at the boundary when a dtype is asked for
    y = backend.asarray(a.astype(np.float64), dtype=dtype)
    check_dtype(y, dtype)
    np.testing.assert_array_equal(host(y), a)
    # lists and ints are host data too
    lst = backend.asarray([[1, 2], [3, 4]], dtype=dtype)
    check_dtype(lst, dtype)
    np.testing.assert_array_equal(host(lst), [[1, 2], [3, 4]])


def test_asarray_own_array_is_not_copied(backend, dtype):
    x = backend.asarray(np.ones((2, 3), dtype))
    assert backend.asarray(x) is x
    assert backend.asarray(x, dtype=dtype) is x


def test_asarray_foreign_array_is_a_mismatch(backend):
    with pytest.raises(BackendMismatchError, match="torch"):
        backend.asarray(ForeignArray())


def test_asarray_device_array_of_other_dtype(backend):
    x = backend.asarray(np.arange(6.0).reshape(2, 3).astype("float64"))
    if backend.device == "cpu":
        # On the CPU a backend array is host data: the boundary conversion applies.
        y = backend.asarray(x, dtype="float32")
        check_dtype(y, "float32")
        np.testing.assert_array_equal(host(y), np.arange(6.0).reshape(2, 3))
    else:
        with pytest.raises(DtypeError, match="float64"):
            backend.asarray(x, dtype="float32")


def test_to_host_returns_an_independent_copy(backend, dtype):
    x = backend.asarray(np.ones((3, 4), dtype))
    h = backend.to_host(x)
    assert isinstance(h, np.ndarray)
    h[...] = 7.0
    np.testing.assert_array_equal(host(x), np.ones((3, 4)))
    h2 = backend.to_host(x)
    backend.fill_(x, 2.0)
    np.testing.assert_array_equal(h2, np.ones((3, 4)))
    assert h2.dtype == np.dtype(dtype)


def test_check(backend, dtype):
    a = backend.zeros((2,), dtype)
    backend.check(a, None, a)
    with pytest.raises(BackendMismatchError, match="in linear"):
        backend.check(a, ForeignArray(), where="linear")


def test_synchronize_scratch_copy_fill_mul(backend, dtype, tol):
    backend.synchronize()
    s1 = backend.scratch("t", (2, 3), dtype)
    s2 = backend.scratch("t", (2, 3), dtype)
    assert s1 is s2
    check_dtype(s1, dtype)
    a, a64 = put(backend, rng().standard_normal((2, 3)), dtype)
    b, b64 = put(backend, rng(1).standard_normal((2, 3)), dtype)
    d = backend.zeros((2, 3), dtype)
    backend.copy_(d, a)
    np.testing.assert_array_equal(host(d), a64)
    backend.fill_(d, 3.0)
    np.testing.assert_array_equal(host(d), np.full((2, 3), 3.0))
    m = backend.mul(a, b)
    check_dtype(m, dtype)
    np.testing.assert_allclose(host(m), a64 * b64, **tol(dtype))


# --------------------------------------------------------------------------- dense
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 31, 33), (33, 3, 1), (2, 1000, 3)])
def test_gemm_transposes(backend, dtype, tol, trans_a, trans_b, m, k, n):
    r = rng(m * 7 + k + n)
    a64 = r.standard_normal((k, m) if trans_a else (m, k))
    b64 = r.standard_normal((n, k) if trans_b else (k, n))
    a, a64 = put(backend, a64, dtype)
    b, b64 = put(backend, b64, dtype)
    out = backend.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
    check_dtype(out, dtype)
    expected = (a64.T if trans_a else a64) @ (b64.T if trans_b else b64)
    assert tuple(out.shape) == (m, n)
    np.testing.assert_allclose(host(out), expected, **tol(dtype, terms=k, scale=3))


@settings(FIXTURE_SETTINGS)
@given(
    m=st.integers(1, 17),
    k=st.integers(1, 40),
    n=st.integers(1, 17),
    alpha=st.sampled_from([1.0, -0.5, 2.0]),
    beta=st.sampled_from([0.0, 1.0, 0.25]),
    ta=st.booleans(),
    tb=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_gemm_alpha_beta_out(backend, dtype, tol, m, k, n, alpha, beta, ta, tb, seed):
    r = rng(seed)
    a, a64 = put(backend, r.standard_normal((k, m) if ta else (m, k)), dtype)
    b, b64 = put(backend, r.standard_normal((n, k) if tb else (k, n)), dtype)
    c, c64 = put(backend, r.standard_normal((m, n)), dtype)
    res = backend.gemm(a, b, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta, out=c)
    assert res is c
    check_dtype(c, dtype)
    expected = alpha * ((a64.T if ta else a64) @ (b64.T if tb else b64)) + beta * c64
    np.testing.assert_allclose(host(c), expected, **tol(dtype, terms=k + 1, scale=4))


def test_gemm_errors(backend, dtype):
    other = "float64" if dtype == "float32" else "float32"
    a = backend.zeros((2, 3), dtype)
    b = backend.zeros((3, 4), dtype)
    with pytest.raises(ShapeError, match=r"\(2, 3\)"):
        backend.gemm(a, a)
    with pytest.raises(ShapeError):
        backend.gemm(a, b, out=backend.zeros((4, 2), dtype))
    with pytest.raises(DtypeError):
        backend.gemm(a, b, out=backend.zeros((2, 4), other))
    with pytest.raises(DtypeError):
        backend.gemm(a, backend.zeros((3, 4), other))
    with pytest.raises(ValueError, match="out="):
        backend.gemm(a, b, beta=1.0)


@pytest.mark.parametrize("cols", COLS)
def test_bias_add(backend, dtype, tol, cols):
    r = rng(cols)
    x, x64 = put(backend, r.standard_normal((5, cols)), dtype)
    b, b64 = put(backend, r.standard_normal(cols), dtype)
    y = backend.bias_add(x, b)
    check_dtype(y, dtype)
    np.testing.assert_allclose(host(y), x64 + b64[None, :], **tol(dtype))
    out = backend.empty((5, cols), dtype)
    assert backend.bias_add(x, b, out=out) is out
    np.testing.assert_allclose(host(out), x64 + b64[None, :], **tol(dtype))


@pytest.mark.parametrize("cols", COLS)
@pytest.mark.parametrize("rows", [1, 7, 130])
def test_bias_grad(backend, dtype, tol, rows, cols):
    r = rng(rows + cols)
    dy, dy64 = put(backend, r.standard_normal((rows, cols)), dtype)
    db = backend.bias_grad(dy)
    check_dtype(db, dtype)
    assert tuple(db.shape) == (cols,)
    np.testing.assert_allclose(host(db), dy64.sum(axis=0), **tol(dtype, terms=rows, scale=3))
    acc, acc64 = put(backend, r.standard_normal(cols), dtype)
    res = backend.bias_grad(dy, out=acc, accumulate=True)
    assert res is acc
    np.testing.assert_allclose(
        host(acc), acc64 + dy64.sum(axis=0), **tol(dtype, terms=rows, scale=3)
    )
    out = backend.full((cols,), 99.0, dtype)
    backend.bias_grad(dy, out=out)  # not accumulating: overwritten
    np.testing.assert_allclose(host(out), dy64.sum(axis=0), **tol(dtype, terms=rows, scale=3))


# --------------------------------------------------------------------------- activations
@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("cols", [1, 3, 33, 1000])
def test_activation_forward(backend, dtype, tol, kind, cols):
    alpha = 0.07
    x, x64 = put(backend, away_from_zero(3 * rng(cols).standard_normal((4, cols))), dtype)
    y = backend.activation(kind, x, alpha=alpha)
    check_dtype(y, dtype)
    assert tuple(y.shape) == (4, cols)
    np.testing.assert_allclose(host(y), ref_activation(kind, x64, alpha), **tol(dtype, scale=2))
    out = backend.empty((4, cols), dtype)
    assert backend.activation(kind, x, alpha=alpha, out=out) is out
    np.testing.assert_allclose(host(out), ref_activation(kind, x64, alpha), **tol(dtype, scale=2))


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_in_place(backend, dtype, tol, kind):
    x, x64 = put(backend, away_from_zero(rng(3).standard_normal((3, 31))), dtype)
    y = backend.activation(kind, x, alpha=0.2, out=x)
    assert y is x
    np.testing.assert_allclose(host(x), ref_activation(kind, x64, 0.2), **tol(dtype, scale=2))


@pytest.mark.parametrize("kind", ACTIVATIONS)
def test_activation_extremes_are_finite(backend, dtype, tol, kind):
    big = 80.0 if dtype == "float32" else 700.0
    x, x64 = put(backend, np.array([[-big, -30.0, 0.0, 30.0, big]]), dtype)
    y = host(backend.activation(kind, x, alpha=0.01))
    assert np.isfinite(y).all(), y
    np.testing.assert_allclose(y, ref_activation(kind, x64, 0.01), **tol(dtype, scale=2))


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("cols", [1, 33, 1000])
def test_activation_backward(backend, dtype, tol, kind, cols):
    alpha = 0.07
    r = rng(cols + 1)
    x, x64 = put(backend, away_from_zero(2 * r.standard_normal((3, cols))), dtype)
    dy, dy64 = put(backend, r.standard_normal((3, cols)), dtype)
    y = backend.activation(kind, x, alpha=alpha)
    expected = dy64 * ref_activation_derivative(kind, x64, alpha)
    dx = backend.activation_backward(kind, dy, x=x, y=y, alpha=alpha)
    check_dtype(dx, dtype)
    np.testing.assert_allclose(host(dx), expected, **tol(dtype, scale=4))
    out = backend.empty((3, cols), dtype)
    assert backend.activation_backward(kind, dy, x=x, y=y, alpha=alpha, out=out) is out
    np.testing.assert_allclose(host(out), expected, **tol(dtype, scale=4))
    if kind not in NEEDS_PREACTIVATION:  # these kinds need only the output
        dx2 = backend.activation_backward(kind, dy, y=y, alpha=alpha)
        np.testing.assert_allclose(host(dx2), expected, **tol(dtype, scale=4))


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("accumulate", [False, True])
def test_activation_backward_bias_grad(backend, dtype, tol, kind, accumulate):
    alpha = 0.3
    r = rng(11)
    x, x64 = put(backend, away_from_zero(r.standard_normal((9, 33))), dtype)
    dy, dy64 = put(backend, r.standard_normal((9, 33)), dtype)
    db0, db064 = put(backend, r.standard_normal(33), dtype)
    y = backend.activation(kind, x, alpha=alpha)
    dz, db = backend.activation_backward_bias_grad(
        kind, dy, x=x, y=y, alpha=alpha, db_out=db0, accumulate_db=accumulate
    )
    dz64 = dy64 * ref_activation_derivative(kind, x64, alpha)
    check_dtype(dz, dtype)
    check_dtype(db, dtype)
    assert db is db0
    np.testing.assert_allclose(host(dz), dz64, **tol(dtype, scale=4))
    expected_db = dz64.sum(axis=0) + (db064 if accumulate else 0.0)
    np.testing.assert_allclose(host(db), expected_db, **tol(dtype, terms=9, scale=4))


def test_unknown_activation_is_a_value_error(backend):
    x = backend.zeros((2, 2), "float32")
    with pytest.raises(ValueError, match="swish"):
        backend.activation("swish", x)
    with pytest.raises(ValueError, match="swish"):
        backend.activation_backward("swish", x, x=x, y=x)


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,k,m", [(1, 1, 1), (5, 33, 31), (4, 3, 1000)])
def test_linear(backend, dtype, tol, kind, bias, n, k, m):
    alpha = 0.05
    r = rng(n + k + m)
    x, x64 = put(backend, r.standard_normal((n, k)), dtype)
    w, w64 = put(backend, r.standard_normal((m, k)) / math.sqrt(k), dtype)
    b, b64 = put(backend, r.standard_normal(m), dtype) if bias else (None, np.zeros(m))
    z64 = x64 @ w64.T + b64
    expected = ref_activation(kind, z64, alpha)
    tl = tol(dtype, terms=k, scale=4)
    y = backend.linear(x, w, b, activation=kind, alpha=alpha)
    check_dtype(y, dtype)
    assert tuple(y.shape) == (n, m)
    ok = np.abs(z64) > 1e-3  # relu-like kinks: compare where the sign is unambiguous
    np.testing.assert_allclose(host(y)[ok], expected[ok], **tl)
    out = backend.empty((n, m), dtype)
    pre = backend.empty((n, m), dtype)
    res = backend.linear(x, w, b, activation=kind, alpha=alpha, out=out, pre_out=pre)
    assert res is out
    np.testing.assert_allclose(host(out)[ok], expected[ok], **tl)
    np.testing.assert_allclose(host(pre), z64, **tl)
    out2 = backend.empty((n, m), dtype)
    assert backend.linear(x, w, b, activation=kind, alpha=alpha, out=out2) is out2
    np.testing.assert_allclose(host(out2)[ok], expected[ok], **tl)


@pytest.mark.parametrize("cols", COLS)
def test_softmax_and_backward(backend, dtype, tol, cols):
    r = rng(cols)
    x, x64 = put(backend, 4 * r.standard_normal((6, cols)), dtype)
    dy, dy64 = put(backend, r.standard_normal((6, cols)), dtype)
    y = backend.softmax(x)
    check_dtype(y, dtype)
    s = ref_softmax(x64)
    np.testing.assert_allclose(host(y), s, **tol(dtype, terms=cols, scale=4))
    np.testing.assert_allclose(host(y).sum(axis=1), 1.0, **tol(dtype, terms=cols, scale=4))
    out = backend.empty((6, cols), dtype)
    assert backend.softmax(x, out=out) is out
    # Jacobian-vector product written as J^T dy with J = diag(s) - s s^T per row
    expected = np.stack(
        [(np.diag(si) - np.outer(si, si)) @ di for si, di in zip(s, dy64, strict=True)]
    )
    dx = backend.softmax_backward(dy, y)
    check_dtype(dx, dtype)
    np.testing.assert_allclose(host(dx), expected, **tol(dtype, terms=cols, scale=10))
    out = backend.empty((6, cols), dtype)
    assert backend.softmax_backward(dy, y, out=out) is out


def test_softmax_extreme_logits(backend, dtype, tol):
    x, x64 = put(backend, np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]]), dtype)
    y = host(backend.softmax(x))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, ref_softmax(x64), **tol(dtype))


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
def test_step(backend, dtype, threshold):
    x, x64 = put(backend, np.array([[-1.0, 0.0, 0.5, 0.49, 2.0]]), dtype)
    y = backend.step(x, threshold)
    check_dtype(y, dtype)
    np.testing.assert_array_equal(host(y), (x64 >= threshold).astype(float))
    out = backend.empty((1, 5), dtype)
    assert backend.step(x, threshold, out=out) is out


@pytest.mark.parametrize("n,c", [(1, 1), (10, 3), (257, 33)])
def test_count_correct_and_argmax(backend, dtype, n, c):
    r = rng(n + c)
    z, z64 = put(backend, r.standard_normal((n, c)), dtype)
    labels = r.integers(0, c, n)
    expected = int((z64.argmax(axis=1) == labels).sum())
    assert int(backend.count_correct(z, labels)) == expected
    assert int(backend.count_correct(z, backend.asarray(labels))) == expected
    np.testing.assert_array_equal(host(backend.argmax(z, axis=1)), z64.argmax(axis=1))


def test_all_finite(backend, dtype):
    x, _ = put(backend, np.array([1.0, 2.0]), dtype)
    assert backend.all_finite(x) is True
    for bad in (np.nan, np.inf, -np.inf):
        y, _ = put(backend, np.array([1.0, bad]), dtype)
        assert backend.all_finite(y) is False


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
