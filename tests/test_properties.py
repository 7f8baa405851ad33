"""Property-based tests (hypothesis): kernel identities on every backend, loader round trips.

Shapes, dtypes and values are drawn; every kernel result is compared with a float64 NumPy
reference or an exact identity (softmax rows sum to 1, cross-entropy gradient rows sum to 0).
Kept small (max_examples ~30) so the whole file runs in seconds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import deepcore as dc

# The `backend` fixture is a per-process singleton, safe to share across generated examples.
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
#: Per-operation relative error allowed, per dtype (a few ulp, scaled by the terms summed).
EPS = {"float32": 2e-6, "float64": 1e-14}

dtypes = st.sampled_from(["float32", "float64"])


@st.composite
def matrices(draw, max_rows: int = 12, max_cols: int = 10, bound: float = 20.0):  # noqa: ANN001, ANN201
    """(float64 host matrix, dtype) with moderate finite values, exactly representable in dtype."""
    dtype = draw(dtypes)
    shape = draw(st.tuples(st.integers(1, max_rows), st.integers(1, max_cols)))
    x = draw(
        hnp.arrays(
            np.float64,
            shape,
            elements=st.floats(-bound, bound, allow_nan=False, width=32),
        )
    )
    return x.astype(dtype).astype(np.float64), dtype


def _host(backend: dc.Backend, x) -> np.ndarray:  # noqa: ANN001
    return np.asarray(backend.to_host(x), dtype=np.float64)


@SETTINGS
@given(data=matrices())
def test_softmax_rows_sum_to_one(backend: dc.Backend, data) -> None:  # noqa: ANN001
    x, dtype = data
    y = _host(backend, backend.softmax(backend.asarray(x, dtype=dtype)))
    ref = np.exp(x - x.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    assert np.all(y >= 0)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=EPS[dtype] * x.shape[1] * 4)
    np.testing.assert_allclose(y, ref, rtol=EPS[dtype] * 20, atol=EPS[dtype] * 4)


@SETTINGS
@given(data=matrices(bound=30.0), seed=st.integers(0, 2**16))
def test_cross_entropy_matches_reference_and_grad_rows_sum_to_zero(
    backend: dc.Backend,
    data,  # noqa: ANN001
    seed: int,
) -> None:
    x, dtype = data
    n, c = x.shape
    labels = np.random.default_rng(seed).integers(0, c, n)
    loss, grad = backend.softmax_cross_entropy(
        backend.asarray(x, dtype=dtype), backend.asarray(labels)
    )
    lse = np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1)) + x.max(axis=1)
    ref_loss = float(np.mean(lse - x[np.arange(n), labels]))
    p = np.exp(x - lse[:, None])
    p[np.arange(n), labels] -= 1.0
    g = _host(backend, grad)
    scale = EPS[dtype] * 50 * max(1.0, float(np.abs(x).max()))
    assert float(loss) == pytest.approx(ref_loss, rel=scale, abs=scale)
    np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=EPS[dtype] * c * 4 / n)
    np.testing.assert_allclose(g, p / n, atol=EPS[dtype] * 8 / n)


@SETTINGS
@given(
    dtype=dtypes,
    mkn=st.tuples(st.integers(1, 24), st.integers(1, 24), st.integers(1, 24)),
    trans=st.tuples(st.booleans(), st.booleans()),
    alpha=st.sampled_from([1.0, 0.5, -2.0]),
    beta=st.sampled_from([0.0, 1.0, 0.25]),
    seed=st.integers(0, 2**16),
)
def test_gemm_matches_float64_reference(
    backend: dc.Backend,
    dtype: str,
    mkn: tuple[int, int, int],
    trans: tuple[bool, bool],
    alpha: float,
    beta: float,
    seed: int,
) -> None:
    m, k, n = mkn
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans[0] else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans[1] else (k, n)).astype(dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    op_a, op_b = (a64.T if trans[0] else a64), (b64.T if trans[1] else b64)
    ref = alpha * op_a @ op_b + beta * c0.astype(np.float64)
    out = backend.asarray(c0.copy())
    got = backend.gemm(
        backend.asarray(a), backend.asarray(b), trans_a=trans[0], trans_b=trans[1],
        alpha=alpha, beta=beta, out=out,
    )  # fmt: skip
    bound = EPS[dtype] * (k + 2) * (abs(alpha) * np.abs(op_a) @ np.abs(op_b) + abs(c0)) + 1e-30
    assert np.all(np.abs(_host(backend, got) - ref) <= bound * 4)


@SETTINGS
@given(data=matrices(bound=40.0), seed=st.integers(0, 2**16))
def test_bce_with_logits_matches_formula(backend: dc.Backend, data, seed: int) -> None:  # noqa: ANN001
    z, dtype = data
    t = np.random.default_rng(seed).random(z.shape).astype(dtype).astype(np.float64)
    loss, grad = backend.bce_with_logits(
        backend.asarray(z, dtype=dtype), backend.asarray(t, dtype=dtype)
    )
    ref_loss = np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))))
    sig = 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic
    tol = EPS[dtype] * 50
    assert float(loss) == pytest.approx(ref_loss, rel=tol, abs=tol)
    np.testing.assert_allclose(_host(backend, grad), (sig - t) / z.size, atol=tol / z.size)


@SETTINGS
@given(data=matrices(bound=100.0), seed=st.integers(0, 2**16))
def test_mse_matches_formula(backend: dc.Backend, data, seed: int) -> None:  # noqa: ANN001
    p, dtype = data
    t = np.random.default_rng(seed).standard_normal(p.shape).astype(dtype).astype(np.float64)
    loss, grad = backend.mse(backend.asarray(p, dtype=dtype), backend.asarray(t, dtype=dtype))
    ref_loss = np.mean((p - t) ** 2)
    tol = EPS[dtype] * 4 * max(1, p.size)
    assert float(loss) == pytest.approx(ref_loss, rel=tol, abs=tol)
    np.testing.assert_allclose(
        _host(backend, grad), 2 * (p - t) / p.size, rtol=EPS[dtype] * 4, atol=1e-300
    )


# ------------------------------------------------------------------ loaders
features = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 15), st.integers(1, 5)),
    elements=st.floats(-1e6, 1e6, allow_nan=False, width=32),
)
label_values = st.one_of(
    st.lists(st.integers(-3, 40), min_size=15, max_size=15),
    st.lists(st.sampled_from(["cat", "dog", "bird"]), min_size=15, max_size=15),
)


@settings(max_examples=30, deadline=None)
@given(X=features, labels=label_values, dtype=dtypes)
def test_csv_round_trip(X: np.ndarray, labels: list, dtype: str) -> None:
    y = np.array(labels[: len(X)])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.csv"
        header = ",".join([f"f{j}" for j in range(X.shape[1])] + ["label"])
        rows = [",".join([repr(float(v)) for v in x] + [str(t)]) for x, t in zip(X, y, strict=True)]
        path.write_text("\n".join([header, *rows]) + "\n")
        ds = dc.data.load_csv(path, dtype=dtype, task="classification")
    assert ds.X.dtype == np.dtype(dtype) and np.array_equal(ds.X, X.astype(dtype))
    assert ds.feature_names == tuple(f"f{j}" for j in range(X.shape[1]))
    assert np.array_equal(ds.classes[ds.y].astype(str), y.astype(str))


@settings(max_examples=30, deadline=None)
@given(X=features, labels=label_values, dtype=dtypes)
def test_npz_round_trip(X: np.ndarray, labels: list, dtype: str) -> None:
    y = np.array(labels[: len(X)])
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.npz"
        np.savez(path, X=X, y=y)
        ds = dc.data.load_npz(path, dtype=dtype, task="classification")
    assert np.array_equal(ds.X, X.astype(dtype)) and ds.n_classes == len(np.unique(y))
    assert np.array_equal(ds.classes[ds.y], np.unique(y)[np.unique(y, return_inverse=True)[1]])
