"""Numba backend kernels against the NumPy reference backend and float64 formulas."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from deepcore.backends import get_backend  # noqa: E402
from deepcore.backends.base import ACTIVATIONS  # noqa: E402
from deepcore.backends.numpy import NumpyBackend  # noqa: E402

DTYPES = ("float32", "float64")
TOL = {"float32": 2e-5, "float64": 1e-12}


@pytest.fixture(scope="module")
def nb():
    return get_backend("numba")


@pytest.fixture(scope="module")
def ref():
    return NumpyBackend()


def rand(rng, shape, dt):
    return rng.standard_normal(shape).astype(dt)


def close(a, b, dt, scale=1.0):
    a64 = np.asarray(a, np.float64)
    b64 = np.asarray(b, np.float64)
    err = np.abs(a64 - b64).max(initial=0.0) / max(1.0, np.abs(b64).max(initial=0.0))
    assert err <= TOL[dt] * scale, err


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("impl", ["jit", "blas"])
@pytest.mark.parametrize(
    "m,n,k", [(1, 1, 1), (3, 33, 31), (64, 127, 1), (33, 1000, 3), (127, 64, 300)]
)
def test_gemm_all_transposes(nb, dt, impl, m, n, k, monkeypatch):
    monkeypatch.setattr(nb, "gemm_impl", impl)
    rng = np.random.default_rng(m * n + k)
    for ta in (False, True):
        for tb in (False, True):
            a = rand(rng, (k, m) if ta else (m, k), dt)
            b = rand(rng, (n, k) if tb else (k, n), dt)
            c = rand(rng, (m, n), dt)
            want = 0.5 * ((a.T if ta else a).astype(np.float64) @ (b.T if tb else b)) - 2.0 * c
            got = nb.gemm(a, b, trans_a=ta, trans_b=tb, alpha=0.5, beta=-2.0, out=c)
            assert got is c and got.dtype == np.dtype(dt)
            close(got, want, dt, scale=k**0.5)
            plain = nb.gemm(a, b, trans_a=ta, trans_b=tb)
            close(plain, (a.T if ta else a).astype(np.float64) @ (b.T if tb else b), dt, k**0.5)


def test_gemm_parallel_matches_and_is_deterministic(nb, monkeypatch):
    monkeypatch.setattr(nb, "gemm_impl", "jit")
    rng = np.random.default_rng(0)
    a, b = rand(rng, (200, 300), "float32"), rand(rng, (260, 300), "float32")
    c1 = nb.gemm(a, b, trans_b=True)
    c2 = nb.gemm(a, b, trans_b=True)
    assert np.array_equal(c1, c2)
    close(c1, a.astype(np.float64) @ b.T, "float32", 20)


def test_gemm_beta_zero_ignores_nan_out(nb, monkeypatch):
    monkeypatch.setattr(nb, "gemm_impl", "jit")
    a = np.ones((4, 5), np.float32)
    out = np.full((4, 4), np.nan, np.float32)
    nb.gemm(a, a, trans_b=True, out=out)
    assert np.array_equal(out, np.full((4, 4), 5, np.float32))


def test_gemm_impl_env_and_bad_value(nb, monkeypatch):
    monkeypatch.setattr(nb, "gemm_impl", "fast")
    a = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="gemm_impl"):
        nb.gemm(a, a)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 3), (31, 33), (300, 260)])
def test_linear_and_backward_match_reference(nb, ref, dt, kind, shape):
    rng = np.random.default_rng(len(kind))
    m, n = shape
    x, w, b = rand(rng, (m, 17), dt), rand(rng, (n, 17), dt), rand(rng, (n,), dt)
    p1, p2 = np.empty((m, n), dt), np.empty((m, n), dt)
    y1 = nb.linear(x, w, b, kind, alpha=0.1, pre_out=p1)
    y2 = ref.linear(x, w, b, kind, alpha=0.1, pre_out=p2)
    assert y1.dtype == np.dtype(dt)
    close(p1, p2, dt, 10)
    close(y1, y2, dt, 10)
    dy = rand(rng, (m, n), dt)
    dx1, db1 = nb.activation_backward_bias_grad(kind, dy, x=p2, y=y2, alpha=0.1)
    dx2, db2 = ref.activation_backward_bias_grad(kind, dy, x=p2, y=y2, alpha=0.1)
    close(dx1, dx2, dt, 10)
    close(db1, db2, dt, 10 * m**0.5)
    close(nb.activation_backward(kind, dy, x=p2, y=y2, alpha=0.1), dx2, dt, 10)
    close(nb.activation(kind, p2, alpha=0.1), y2, dt, 10)
    # bitwise reproducible column sums; accumulate adds into db
    dx3, db3 = nb.activation_backward_bias_grad(kind, dy, x=p2, y=y2, alpha=0.1)
    assert np.array_equal(db1, db3) and np.array_equal(dx1, dx3)
    acc = db3.copy()
    kw = {"x": p2, "y": y2, "alpha": 0.1, "db_out": acc, "accumulate_db": True}
    nb.activation_backward_bias_grad(kind, dy, **kw)
    close(acc, 2 * db2.astype(np.float64), dt, 20 * m**0.5)


@pytest.mark.parametrize("kind", ["relu", "identity", "tanh"])
@pytest.mark.parametrize("in_place", [False, True])
def test_parallel_bias_grad_same_bits_for_any_thread_count(nb, kind, in_place):
    """Above PARALLEL_ELEMENTS the fused activation backward runs on all threads, a block of
    columns each: the same bits as one thread summing every column row by row, and the float64
    formula within float32 rounding."""
    import deepcore as dc
    from deepcore.backends.numba.updates import PARALLEL_ELEMENTS

    rng = np.random.default_rng(3)
    m, n = 300, -(-PARALLEL_ELEMENTS // 300) + 37  # n not a multiple of 16
    y = rng.standard_normal((m, n)).astype(np.float32)
    if kind == "relu":
        y = np.maximum(y, 0)
    elif kind == "tanh":
        y = np.tanh(y)
    dy = rng.standard_normal((m, n)).astype(np.float32)
    got = {}
    before = dc.get_num_threads()
    try:
        for t in (1, 2, 3):
            dc.set_num_threads(min(t, before) if t > 1 else 1)
            d = dy.copy()
            out = d if in_place else np.empty_like(d)
            dx, db = nb.activation_backward_bias_grad(kind, d, y=y, dx_out=out)
            got[t] = (dx.copy(), db.copy())
    finally:
        dc.set_num_threads(before)
    serial = (np.empty_like(dy), np.empty(n, np.float32))
    code = ACTIVATIONS.index(kind)
    nb._k.elementwise.act_backward_bias_grad_cols(0, n, code, dy, y, y, np.float32(0.01),
                                                  *serial, False)  # fmt: skip
    for dx, db in got.values():
        np.testing.assert_array_equal(dx, serial[0])
        np.testing.assert_array_equal(db, serial[1])
    deriv = {
        "relu": (y > 0).astype(np.float64),
        "identity": 1.0,
        "tanh": 1.0 - y.astype(np.float64) ** 2,
    }
    dz64 = dy.astype(np.float64) * deriv[kind]
    np.testing.assert_allclose(got[1][0], dz64, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[1][1], dz64.sum(0), rtol=1e-4, atol=1e-4)


def test_gelu_independent_formula(nb):
    import math

    x = np.linspace(-4, 4, 64).reshape(2, 32)
    want = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(x)
    close(nb.activation("gelu", x), want, "float64")


@pytest.mark.parametrize("dt", DTYPES)
def test_bias_softmax_in_place(nb, ref, dt):
    rng = np.random.default_rng(3)
    x, b = rand(rng, (127, 64), dt), rand(rng, (64,), dt)
    want = x.astype(np.float64) + b
    assert nb.bias_add(x, b, out=x) is x
    close(x, want, dt)
    close(nb.bias_grad(x), want.sum(axis=0), dt, 50)
    s = ref.softmax(x.copy())
    assert nb.softmax(x, out=x) is x
    close(x, s, dt)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 10), (127, 33)])
def test_losses_match_reference(nb, ref, dt, shape):
    rng = np.random.default_rng(shape[0])
    z = rand(rng, shape, dt) * 5
    labels = rng.integers(0, shape[1], shape[0])
    for name, target in (
        ("softmax_cross_entropy", labels),
        ("bce_with_logits", rng.random(shape).astype(dt)),
        ("mse", rand(rng, shape, dt)),
    ):
        l1, g1 = getattr(nb, name)(z, target)
        l2, g2 = getattr(ref, name)(z, target)
        assert l1.shape == () and l1.dtype == np.dtype(dt) and g1.dtype == np.dtype(dt)
        close(l1, l2, dt, 10)
        close(g1, g2, dt, 10)
        out = np.empty_like(z)
        assert getattr(nb, name)(z, target, grad_out=out)[1] is out
    with pytest.raises(IndexError):
        nb.softmax_cross_entropy(z, np.full(shape[0], shape[1]))


UPDATE_CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.3, nesterov=False)),
    ("sgd", dict(lr=0.1, momentum=0.8, nesterov=True, weight_decay=0.1)),
    ("sgd", dict(lr=0.1, weight_decay=0.05, maximize=True)),
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.01, weight_decay=0.1, decoupled=True)),
    ("adam", dict(lr=0.01, weight_decay=0.1)),
    ("adam", dict(lr=0.01, amsgrad=True, maximize=True)),
    ("rmsprop", dict(lr=0.01, alpha=0.99, eps=1e-8)),
    ("rmsprop", dict(lr=0.01, alpha=0.9, eps=1e-6, centered=True, momentum=0.9, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01, alpha=0.99, eps=1e-8, maximize=True)),
]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("n", [1, 1037, (1 << 20) + 3])  # the last runs the prange kernels
@pytest.mark.parametrize("rule,hp", UPDATE_CASES, ids=lambda c: str(c))
def test_updates_bitwise_equal_numpy(nb, ref, dt, n, rule, hp):
    """The vectorized fast paths and the general loops do NumPy's IEEE operations in NumPy's
    order (no contraction): 5 steps give the same bits as the NumPy backend."""
    rng = np.random.default_rng(n)
    p0 = rand(rng, n, dt)
    nstate = {"sgd": 1, "adam": 3, "rmsprop": 3}[rule]
    runs = []
    for be in (nb, ref):
        p = p0.copy()
        state = [np.zeros(n, dt) for _ in range(nstate)]
        for step in range(1, 6):
            g = rand(np.random.default_rng(step), n, dt)
            if rule == "sgd":
                be.sgd_update(p, g, state[0], first_step=step == 1, **hp)
            elif rule == "adam":
                vmax = state[2] if hp.get("amsgrad") else None
                be.adam_update(
                    p, g, state[0], state[1], step=step, beta1=0.9, beta2=0.99, eps=1e-8,
                    max_exp_avg_sq=vmax, **hp,
                )  # fmt: skip
            else:
                be.rmsprop_update(p, g, state[0], momentum_buffer=state[1], grad_avg=state[2], **hp)
        runs.append((p, state))
    (p_nb, s_nb), (p_ref, s_ref) = runs
    np.testing.assert_array_equal(p_nb, p_ref)
    for a, b in zip(s_nb, s_ref, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize(
    "pattern", ["distinct", "pre_is_z", "out_is_z", "out_is_z_no_pre", "no_pre"]
)
def test_bias_relu_every_aliasing_pattern(nb, dt, pattern):
    """Each in-place pattern has its own vectorized loop; all give z + b and relu exactly."""
    rng = np.random.default_rng(7)
    z0, b = rand(rng, (37, 129), dt), rand(rng, 129, dt)
    v = z0 + b
    z = z0.copy()
    out = z if pattern.startswith("out_is_z") else np.full_like(z, np.nan)
    pre = {"pre_is_z": z, "distinct": np.full_like(z, np.nan), "out_is_z": np.full_like(z, 7)}
    pre_arr = pre.get(pattern)
    nb._bias_act(z, b, "relu", 0.0, out, pre_arr)
    np.testing.assert_array_equal(out, np.maximum(v, 0))
    if pre_arr is not None:
        np.testing.assert_array_equal(pre_arr, v)


@pytest.mark.parametrize("in_place", [True, False])
def test_relu_backward_bias_grad_in_place(nb, ref, in_place):
    rng = np.random.default_rng(8)
    dy, y = rand(rng, (300, 70), "float32"), rand(rng, (300, 70), "float32")
    want_dx, want_db = ref.activation_backward_bias_grad("relu", dy.copy(), y=y)
    dx = dy if in_place else np.empty_like(dy)
    db = np.empty(70, np.float32)
    nb.activation_backward_bias_grad("relu", dy, y=y, dx_out=dx, db_out=db)
    np.testing.assert_array_equal(dx, want_dx)
    close(db, want_db, "float32")


def test_ieee_kernels_keep_their_flags_when_first_reached_from_a_gemm_kernel():
    """numba compiles a callee with its first caller's fastmath flags unless the callee sets
    them (numba/numba#7168). The kernels' OPTS spell fastmath=False, so an update first
    compiled from a GEMM-flagged (FMA-contracting) kernel still rounds a*b and a-b apart."""
    from deepcore.kernels.numba._config import GEMM_OPTS, OPTS
    from numba import njit

    def sub_scaled(p, g, lr):
        for i in range(p.shape[0]):
            p[i] -= lr * g[i]

    inner = njit(**{**OPTS, "cache": False})(sub_scaled)

    @njit(**{**GEMM_OPTS, "cache": False})
    def outer(p, g, lr):
        inner(p, g, lr)

    rng = np.random.default_rng(5)
    p, g, lr = rand(rng, 999, "float32"), rand(rng, 999, "float32"), np.float32(0.05)
    want = p - lr * g  # NumPy: a rounded product, then a rounded difference
    fused = (p.astype(np.float64) - np.float64(lr) * g).astype(np.float32)  # one rounding
    assert not np.array_equal(want, fused)  # the data can tell the two apart
    got_outer, got_inner = p.copy(), p.copy()
    outer(got_outer, g, lr)  # compiles `inner` first, from the contracting caller
    inner(got_inner, g, lr)
    np.testing.assert_array_equal(got_outer, want)
    np.testing.assert_array_equal(got_inner, want)


@pytest.mark.parametrize("dt", DTYPES)
def test_parallel_softmax_cross_entropy_equals_the_serial_kernel_bitwise(nb, dt):
    """Large logits take the row-parallel kernel: the same loss and gradient bits as the
    serial one (row terms summed in row order), and the same refusal of a bad label."""
    from deepcore.backends.numba import updates as _numba_updates

    lk = nb._k.losses
    rng = np.random.default_rng(5)
    m, n = 300, _numba_updates.PARALLEL_LOSS_ELEMENTS // 300 + 1  # just above the threshold
    z = rand(rng, (m, n), dt) * 3
    y = rng.integers(0, n, m)
    loss, grad = nb.softmax_cross_entropy(z, y)
    want_loss, want_grad = np.empty((), dt), np.empty((m, n), dt)
    assert lk.softmax_cross_entropy(z, y, want_grad, want_loss)
    assert loss == want_loss and np.array_equal(grad, want_grad)
    y[7] = n
    with pytest.raises(IndexError, match="labels must lie in"):
        nb.softmax_cross_entropy(z, y)
