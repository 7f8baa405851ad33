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

import deepcore as dc
from deepcore.backends.base import ACTIVATIONS, NEEDS_PREACTIVATION
from deepcore.errors import BackendMismatchError, DtypeError, ShapeError


# --------------------------------------------------------------------------- arrays
def test_registry_name_and_device(backend, backend_name):
    assert backend.name.split(":")[0] == backend_name
    assert backend.device == "cpu" or backend.device.startswith("cuda")
    assert dc.get_backend(backend_name) is backend  # one instance per process


@pytest.mark.parametrize("shape", [(0,), (1,), (3, 33), (2, 3, 4)])
def test_empty_zeros(backend, dtype, shape):
    e = backend.empty(shape, dtype)
    assert tuple(e.shape) == shape and backend.owns(e)
    check_dtype(e, dtype)
    z = backend.zeros(shape, dtype)
    check_dtype(z, dtype)
    np.testing.assert_array_equal(host(z), np.zeros(shape))


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


@settings(FIXTURE_SETTINGS)
@given(
    labels=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 12), max_size=70),
    n_classes=st.integers(1, 11),
)
def test_labels_in_range_matches_the_comparison(backend, labels, n_classes):
    t = np.array(labels, dtype=np.int64)
    want = bool(((t >= 0) & (t < n_classes)).all())
    assert backend.labels_in_range(t, n_classes) is want


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
    out = backend.fill_(backend.empty((cols,), dtype), 99.0)
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
