"""Numba optimizer kernels, the whole-step path and deepcore.threads."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from deepcore import threads  # noqa: E402
from deepcore.backends import get_backend  # noqa: E402
from deepcore.backends.numpy import NumpyBackend  # noqa: E402

DTYPES = ("float32", "float64")


def _gemm_choices() -> list[str]:
    from deepcore.backends.numba import mkl as _mkl

    return ["jit", "numpy"] + ([] if isinstance(_mkl.load(), str) else ["mkl"])


#: The Numba backend's GEMMs: its JIT kernel, NumPy's BLAS, and MKL where installed.
GEMMS = _gemm_choices()


def use_gemm(nb, monkeypatch, which: str) -> None:
    """Run nb's GEMMs on `which` (GEMMS), small test GEMMs included."""
    monkeypatch.setattr(nb, "gemm_impl", "jit" if which == "jit" else "blas")
    if which != "jit":
        monkeypatch.setattr(nb, "blas", which)
        monkeypatch.setattr("deepcore.backends.numba.gemm.MKL_MIN_WORK", 0)


@pytest.fixture(scope="module")
def nb():
    return get_backend("numba")


def _states(rng, shape, dt, n):
    return [np.abs(rng.standard_normal(shape)).astype(dt) for _ in range(n)]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("size", [1, 1000, 70_000])
@pytest.mark.parametrize(
    "rule,kw",
    [
        ("sgd", {"lr": 0.1}),
        ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
        ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True}),
        ("sgd", {"lr": 0.1, "momentum": 0.9, "first_step": True}),
        ("adam", {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "step": 3}),
        (
            "adam",
            {
                "lr": 1e-3,
                "beta1": 0.8,
                "beta2": 0.99,
                "eps": 1e-8,
                "step": 1,
                "weight_decay": 0.1,
                "decoupled": True,
                "amsgrad": True,
            },
        ),  # fmt: skip
        (
            "adam",
            {
                "lr": 1e-3,
                "beta1": 0.9,
                "beta2": 0.999,
                "eps": 1e-8,
                "step": 7,
                "weight_decay": 0.1,
                "maximize": True,
            },
        ),  # fmt: skip
        ("rmsprop", {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8}),
        (
            "rmsprop",
            {
                "lr": 1e-2,
                "alpha": 0.9,
                "eps": 1e-8,
                "momentum": 0.9,
                "centered": True,
                "weight_decay": 0.01,
            },
        ),  # fmt: skip
    ],
)
def test_optimizer_matches_reference_bitwise(nb, dt, size, rule, kw):
    rng = np.random.default_rng(size)
    shape = (size,) if size < 1000 else (size // 100, 100)
    p, g = _states(rng, shape, dt, 2)
    s = _states(rng, shape, dt, 3)
    s[2] *= 0.01  # centered RMSprop: keep square_avg - grad_avg**2 positive
    runs = []
    for be in (nb, NumpyBackend()):
        pp, ss = p.copy(), [a.copy() for a in s]
        if rule == "sgd":
            be.sgd_update(pp, g, ss[0], **kw)
        elif rule == "adam":
            be.adam_update(pp, g, ss[0], ss[1], max_exp_avg_sq=ss[2], **kw)
        else:
            be.rmsprop_update(pp, g, ss[0], momentum_buffer=ss[1], grad_avg=ss[2], **kw)
        assert pp.dtype == np.dtype(dt)
        runs.append((pp, ss))
    (p1, s1), (p2, s2) = runs
    # same operation order and host-side scalars: equal up to sqrt/division rounding only
    np.testing.assert_allclose(p1, p2, rtol=1e-6 if dt == "float32" else 1e-14, atol=0)
    for a, b in zip(s1, s2, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6 if dt == "float32" else 1e-14, atol=0)
    if rule == "sgd":
        assert np.array_equal(p1, p2)


def _reference_step(ws, bs, acts, x, labels, opt, state, hp):
    """Plain NumPy float64 maths of one MLP step (forward, CE, backward, update)."""
    ws = [w.astype(np.float64) for w in ws]
    bs = [b.astype(np.float64) for b in bs]
    f = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh, "identity": lambda z: z}
    df = {"relu": lambda z, a: (a > 0) * 1.0, "tanh": lambda z, a: 1 - a * a,
          "identity": lambda z, a: 1.0}  # fmt: skip
    inputs, zs = [x.astype(np.float64)], []
    for w, b, a in zip(ws, bs, acts, strict=True):
        zs.append(inputs[-1] @ w.T + b)
        inputs.append(f[a](zs[-1]))
    z = inputs[-1]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    sm = e / e.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -np.log(sm[np.arange(n), labels]).mean()
    d = sm
    d[np.arange(n), labels] -= 1
    d /= n
    gws, gbs = [None] * len(ws), [None] * len(ws)
    for l in range(len(ws) - 1, -1, -1):
        d = d * df[acts[l]](zs[l], inputs[l + 1])
        gws[l], gbs[l] = d.T @ inputs[l], d.sum(axis=0)
        d = d @ ws[l]
    params, grads = [*ws, *bs], [*gws, *gbs]
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if opt == "sgd":
            buf = state[0][i].reshape(p.shape).astype(np.float64)
            buf = hp["momentum"] * buf + g
            p -= hp["lr"] * buf
        else:
            m1 = 0.1 * g
            v = 0.001 * g * g
            p -= hp["lr"] / 0.1 * m1 / (np.sqrt(v) / np.sqrt(0.001) + 1e-8)
    return loss, params, grads


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("big", [False, True])
def test_fused_mlp_step_matches_layer_maths(nb, dt, opt, big, monkeypatch):
    if big:  # force the layer-by-layer route
        monkeypatch.setattr(nb, "step_path", "layered")
    rng = np.random.default_rng(7)
    sizes = (13, 33, 31, 10)
    ws = [
        rng.standard_normal((o, i)).astype(dt) * 0.3 for i, o in zip(sizes, sizes[1:], strict=False)
    ]
    bs = [rng.standard_normal(o).astype(dt) * 0.1 for o in sizes[1:]]
    x = rng.standard_normal((5, 13)).astype(dt)
    labels = rng.integers(0, 10, 5)
    acts = ("relu", "tanh", "identity")
    scale = [1.0 if opt == "sgd" else 0.0, 0.0]  # Adam state starts at zero (step 1)
    state = [[rng.standard_normal(a.size).astype(dt) * s for a in (*ws, *bs)] for s in scale]
    hp = {"lr": 0.05, "momentum": 0.9}
    want_loss, want_p, want_g = _reference_step(ws, bs, acts, x, labels, opt, state, hp)
    gws = [np.empty_like(w) for w in ws]
    gbs = [np.empty_like(b) for b in bs]
    kw = {"momentum": 0.9} if opt == "sgd" else {"step": 1}
    loss = nb.fused_mlp_step(ws, bs, gws, gbs, acts, x, labels, opt, lr=0.05,
                             state=state[: 1 if opt == "sgd" else 2], **kw)  # fmt: skip
    tol = 2e-5 if dt == "float32" else 1e-12
    assert loss.shape == () and loss.dtype == np.dtype(dt)
    np.testing.assert_allclose(loss, want_loss, rtol=tol)
    for got, want in zip([*gws, *gbs], want_g, strict=True):
        np.testing.assert_allclose(got, want, rtol=tol * 10, atol=tol)
    for got, want in zip([*ws, *bs], want_p, strict=True):
        np.testing.assert_allclose(got, want, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("gemm", GEMMS)
def test_fused_step_bitwise_reproducible(nb, monkeypatch, gemm):
    use_gemm(nb, monkeypatch, gemm)
    monkeypatch.setattr(nb, "step_path", "layered")
    rng = np.random.default_rng(1)
    ws0 = [rng.standard_normal(s).astype("float32") for s in ((16, 8), (4, 16))]
    bs0 = [np.zeros(16, "float32"), np.zeros(4, "float32")]
    x = rng.standard_normal((9, 8)).astype("float32")
    y = rng.integers(0, 4, 9)
    results = []
    for _ in range(2):
        ws, bs = [w.copy() for w in ws0], [b.copy() for b in bs0]
        gws, gbs = [np.empty_like(w) for w in ws], [np.empty_like(b) for b in bs]
        for _ in range(3):
            nb.fused_mlp_step(ws, bs, gws, gbs, ("relu", "identity"), x, y, "sgd", lr=0.1)
        results.append([*ws, *bs])
    for a, b in zip(*results, strict=True):
        assert np.array_equal(a, b)


def test_threads_api(nb):
    old = threads.get_num_threads()
    with pytest.raises(ValueError, match=">= 1"):
        threads.set_num_threads(0)
    threads.set_num_threads(1)
    assert threads.get_num_threads() == 1
    threads.set_num_threads(old)
    info = threads.threading_info()
    assert {"numba_threads", "blas_threads", "numba_threading_layer"} <= set(info)
    assert nb.info()["name"] == "numba"


def test_warmup_returns_seconds(nb):
    assert nb.warmup(("float32",)) >= 0.0


@pytest.mark.parametrize("sizes,batch", [((64, 128, 10), 32), ((40, 70, 36, 3), 9)])
def test_compiled_step_matches_layered_route(nb, monkeypatch, sizes, batch):
    """The one-call kernel (register blocks, edges, narrow dot products) against the layered
    route (BLAS + per-layer kernels) over three SGD-momentum steps."""
    rng = np.random.default_rng(3)
    ws0 = [(rng.standard_normal((o, i)) / np.sqrt(i)).astype("float32")
           for i, o in zip(sizes, sizes[1:], strict=False)]  # fmt: skip
    bs0 = [rng.standard_normal(o).astype("float32") * 0.1 for o in sizes[1:]]
    x = rng.standard_normal((batch, sizes[0])).astype("float32")
    y = rng.integers(0, sizes[-1], batch)
    acts = ("relu",) * (len(sizes) - 2) + ("identity",)
    out = []
    for path in ("compiled", "layered"):
        monkeypatch.setattr(nb, "step_path", path)
        ws, bs = [w.copy() for w in ws0], [b.copy() for b in bs0]
        gws, gbs = [np.empty_like(w) for w in ws], [np.empty_like(b) for b in bs]
        state = ([np.zeros_like(p) for p in (*ws, *bs)],)
        losses = [
            float(nb.fused_mlp_step(ws, bs, gws, gbs, acts, x, y, "sgd", lr=0.05, momentum=0.9,
                                    first_step=i == 0, state=state))
            for i in range(3)
        ]  # fmt: skip
        out.append((losses, [*ws, *bs, *gws, *gbs]))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5)
    for a, b in zip(out[0][1], out[1][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


LAYERED_CASES = [
    ("sgd", dict(momentum=0.9)),
    ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict()),
    ("adam", dict()),
    ("adam", dict(weight_decay=0.1, decoupled=True, amsgrad=True)),
]


@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("opt,hp", LAYERED_CASES, ids=str)
def test_layered_step_equals_public_methods_bitwise(nb, monkeypatch, dt, opt, hp, gemm):
    """The layered route's shortcuts (BLAS called directly, every parameter updated in one
    serial compiled call) change nothing: three steps give the same bits as the backend's
    public per-layer methods called one by one (their updates run the parallel kernels for
    W0 and W1 here)."""
    from deepcore.backends.numba import updates as _numba_updates

    monkeypatch.setattr(nb, "step_path", "layered")
    use_gemm(nb, monkeypatch, gemm)
    monkeypatch.setattr(nb, "parallel_step_update", 0)  # off OpenBLAS: the parallel update
    monkeypatch.setattr(_numba_updates, "PARALLEL_ELEMENTS", 600)  # public: W0, W1 parallel
    rng = np.random.default_rng(11)
    sizes, batch = (30, 40, 20, 7), 16
    ws0 = [(rng.standard_normal((o, i)) / np.sqrt(i)).astype(dt)
           for i, o in zip(sizes, sizes[1:], strict=False)]  # fmt: skip
    bs0 = [rng.standard_normal(o).astype(dt) * 0.1 for o in sizes[1:]]
    acts = ("relu", "tanh", "identity")
    nst = 1 if opt == "sgd" else 3
    batches = [
        (rng.standard_normal((batch, sizes[0])).astype(dt), rng.integers(0, sizes[-1], batch))
        for _ in range(3)
    ]
    runs = []
    for fused in (True, False):
        ws, bs = [w.copy() for w in ws0], [b.copy() for b in bs0]
        gws, gbs = [np.empty_like(w) for w in ws], [np.empty_like(b) for b in bs]
        state = [[np.zeros(p.size, dt) for p in (*ws, *bs)] for _ in range(nst)]
        for t, (x, y) in enumerate(batches, start=1):
            kw = dict(hp, lr=0.05, first_step=t == 1) if opt == "sgd" else dict(hp, lr=0.01)
            if fused:
                st = state[:1] if opt == "sgd" and hp else [] if opt == "sgd" else state
                if opt == "adam" and not hp.get("amsgrad"):
                    st = state[:2]
                extra = {} if opt == "sgd" else {"step": t}
                nb.fused_mlp_step(ws, bs, gws, gbs, acts, x, y, opt, state=st, **kw, **extra)
                continue
            a, zs = [x], []
            for l in range(3):
                z = nb.gemm(a[-1], ws[l], trans_b=True)
                zs.append(z.copy())
                a.append(nb.linear(a[-1], ws[l], bs[l], acts[l]))
            _, d = nb.softmax_cross_entropy(a[-1], y)
            for l in range(2, -1, -1):
                d, gbs[l] = nb.activation_backward_bias_grad(acts[l], d, x=zs[l], y=a[l + 1])
                gws[l] = nb.gemm(d, a[l], trans_a=True)
                d = nb.gemm(d, ws[l])
            for i, (p, g) in enumerate(zip([*ws, *bs], [*gws, *gbs], strict=True)):
                s = [q[i].reshape(p.shape) for q in state]
                if opt == "sgd":
                    nb.sgd_update(p, g, s[0] if hp else None, **kw)
                else:
                    nb.adam_update(
                        p, g, s[0], s[1], step=t, beta1=0.9, beta2=0.999, eps=1e-8,
                        max_exp_avg_sq=s[2] if hp.get("amsgrad") else None, **kw,
                    )  # fmt: skip
        runs.append([*ws, *bs, *gws, *gbs])
    bad = [i for i, (g, w) in enumerate(zip(*runs, strict=True)) if not np.array_equal(g, w)]
    assert not bad, bad


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_parallel_update_params_equals_serial_bitwise(nb, opt):
    """The one-prange update over all parameters (chunks crossing parameter boundaries, a
    parameter of exactly one chunk, one of a single element) gives the serial call's bits."""
    from deepcore.kernels.numba import step
    from deepcore.kernels.numba.optimizers import CHUNK

    sizes = (2 * CHUNK + 7, 1, CHUNK, 3 * CHUNK - 1, 100)
    hp = np.array([0.05, 0.9, 1.0, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0], np.float32)
    flags = np.zeros(3, np.int64)
    if opt == "adam":
        hp[:] = [1e-3 / 0.1, 0.9, 0.1, 0.999, 0.001, np.sqrt(0.001), 1e-8, 0.0, 1.0]
    out = []
    for fn in (step.update_params, step.update_params_parallel):
        r = np.random.default_rng(5)
        ps = tuple(r.standard_normal(n).astype("float32") for n in sizes)
        gs = tuple(r.standard_normal(n).astype("float32") for n in sizes)
        s1 = tuple(np.abs(r.standard_normal(n)).astype("float32") for n in sizes)
        s2 = tuple(np.abs(r.standard_normal(n)).astype("float32") for n in sizes)
        s3 = tuple(np.zeros(1, "float32") for _ in sizes)
        before = [p.copy() for p in ps]
        rows = np.tile(hp, (len(sizes), 1)), np.tile(flags, (len(sizes), 1))
        fn(ps, gs, s1, s2, s3, step.SGD if opt == "sgd" else step.ADAM, *rows)
        assert all((p != q).any() for p, q in zip(ps, before, strict=True))  # all updated
        out.append((*ps, *s1, *s2))
    for a, b in zip(*out, strict=True):
        assert np.array_equal(a, b)


def test_fused_step_refuses_rmsprop_without_its_rows(nb):
    """RMSprop's alpha and centered have no keywords: without rows= the call is refused."""
    w = [np.ones((4, 3), "float32"), np.ones((2, 4), "float32")]
    b = [np.zeros(4, "float32"), np.zeros(2, "float32")]
    g = ([np.empty_like(v) for v in w], [np.empty_like(v) for v in b])
    with pytest.raises(ValueError, match="rmsprop takes its hyperparameters as rows="):
        nb.fused_mlp_step(w, b, *g, ("relu", "identity"), np.ones((2, 3), "float32"),
                          np.zeros(2, np.int64), "rmsprop", lr=0.1)  # fmt: skip
