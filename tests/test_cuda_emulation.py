"""Every CUDA kernel, executed on the CPU, against the NumPy backend.

The .cu sources are compiled for the host with g++ behind kernels/cuda/emulate.h (blocks in
order, a block's threads as fibers that honour __syncthreads) and launched with the geometry
the CuPy backend uses. Outputs sit between guard bands, so an out-of-bounds write fails the test.
This checks the kernels' arithmetic and indexing; it is not a GPU run.

Every test runs on both host builds (host.VARIANTS): "strict" (each operation rounded as written)
and "gpu" (FMA contraction and float32 flush-to-zero, as NVRTC under CuPy), against the same
tolerances (TOL below, the ones README and selftest document).
"""

from __future__ import annotations

import numpy as np
import pytest
from deepcore.kernels.cuda import geometry, host

from deepcore.backends.base import ACTIVATIONS
from deepcore.backends.numpy import NumpyBackend

ok, why = host.available()
pytestmark = pytest.mark.skipif(not ok, reason=f"host emulation needs a C++ compiler: {why}")

NB = NumpyBackend()
SHAPES = [(1, 1), (3, 31), (5, 33), (2, 1000), (67, 10)]
PAD = 64
SENTINEL = -12345.5
TOL = {"float32": {"rtol": 2e-5, "atol": 2e-6}, "float64": {"rtol": 1e-12, "atol": 1e-13}}


@pytest.fixture(scope="module", params=host.VARIANTS)
def hk(request: pytest.FixtureRequest) -> host.HostKernels:
    if request.param == "gpu" and not host.fma_available()[0]:
        pytest.skip(f"the gpu build needs FMA instructions: {host.fma_available()[1]}")
    return host.build(request.param)


@pytest.fixture(params=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> str:
    return request.param


class Guarded:
    """An output array with sentinel bands on both sides, to catch out-of-bounds writes."""

    def __init__(self, shape: tuple[int, ...], dtype: str, init: np.ndarray | None = None):
        size = int(np.prod(shape))
        self.buf = np.full(size + 2 * PAD, SENTINEL, dtype=dtype)
        self.a = self.buf[PAD : PAD + size].reshape(shape)
        if init is not None:
            self.a[...] = init

    def check(self) -> np.ndarray:
        assert (self.buf[:PAD] == SENTINEL).all() and (self.buf[-PAD:] == SENTINEL).all(), (
            "kernel wrote outside its output"
        )
        return self.a


def rand(shape, dtype, seed=0, scale=2.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def close(actual, expected, dtype, terms=1):
    t = TOL[dtype]
    grow = max(1.0, terms**0.5)
    np.testing.assert_allclose(actual, expected, rtol=t["rtol"] * grow, atol=t["atol"] * grow)


def close_grad(actual, expected, dtype, dy, terms=1):
    """Activation gradients: 1 + tanh(.) cancels for negative x (GELU-tanh), so allow a few
    ulps of the largest term |dy|, not of the (possibly tiny) result."""
    atol = 8 * np.finfo(dtype).eps * np.abs(dy).max() * max(1.0, terms**0.5)
    np.testing.assert_allclose(actual, expected, rtol=TOL[dtype]["rtol"] * terms**0.5, atol=atol)


def T(dtype, v):  # noqa: N802 - the kernel's scalar type
    return np.dtype(dtype).type(v)


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_act_is_the_linear_epilogue(hk, dtype, kind, shape):
    z, b = rand(shape, dtype, 1), rand(shape[1], dtype, 2)
    pre, out = Guarded(shape, dtype), Guarded(shape, dtype)
    rows, cols = shape
    hk.launch(
        "dc_bias_act",
        dtype,
        *geometry.elementwise(rows * cols),
        (
            z,
            b,
            pre.a,
            out.a,
            np.int64(rows),
            np.int64(cols),
            np.int32(ACTIVATIONS.index(kind)),
            T(dtype, 0.1),
            np.int32(3),
        ),
    )
    close(pre.check(), z + b, dtype)
    close(out.check(), NB.activation(kind, z + b, alpha=0.1), dtype)


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("n", [1, 31, 33, 1000])
def test_activation_backward(hk, dtype, kind, n):
    x, dy = rand(n, dtype, 3), rand(n, dtype, 4)
    y = NB.activation(kind, x, alpha=0.2)
    dx = Guarded((n,), dtype)
    hk.launch(
        "dc_act_backward",
        dtype,
        *geometry.elementwise(n),
        (dy, x, y, dx.a, np.int64(n), np.int32(ACTIVATIONS.index(kind)), T(dtype, 0.2)),
    )
    close_grad(dx.check(), NB.activation_backward(kind, dy, x=x, y=y, alpha=0.2), dtype, dy)


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_fused_activation_backward_and_bias_grad(hk, dtype, kind, shape, accumulate):
    x, dy = rand(shape, dtype, 5), rand(shape, dtype, 6)
    y = NB.activation(kind, x)
    db0 = rand(shape[1], dtype, 7)
    dz, db = Guarded(shape, dtype), Guarded((shape[1],), dtype, db0)
    rows, cols = shape
    hk.launch(
        "dc_col_sum_act",
        dtype,
        *geometry.columns(cols),
        (
            dy,
            x,
            y,
            dz.a,
            db.a,
            np.int64(rows),
            np.int64(cols),
            np.int32(ACTIVATIONS.index(kind)),
            T(dtype, 0.01),
            np.int32(2 | accumulate),
        ),
    )
    ref_dz, ref_db = NB.activation_backward_bias_grad(
        kind, dy, x=x, y=y, db_out=db0.copy(), accumulate_db=accumulate
    )
    close_grad(dz.check(), ref_dz, dtype, dy)
    close_grad(db.check(), ref_db, dtype, dy, terms=rows)


@pytest.mark.parametrize("shape", SHAPES + [(4, 257)])
@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_softmax_rows(hk, dtype, shape, scale):
    x = rand(shape, dtype, 8, scale)
    out = Guarded(shape, dtype)
    hk.launch(
        "dc_softmax",
        dtype,
        *geometry.rows(*shape),
        (x, out.a, np.int64(shape[0]), np.int64(shape[1])),
    )
    close(out.check(), NB.softmax(x), dtype, terms=shape[1])


def finish(hk, dtype, partials, count, divisor):
    loss = Guarded((), dtype)
    hk.launch(
        "dc_sum_finish",
        dtype,
        *geometry.finisher(),
        (partials, np.int64(count), T(dtype, divisor), loss.a),
    )
    return loss.check()


@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_cross_entropy(hk, dtype, shape):
    rows, cols = shape
    z = rand(shape, dtype, 9, 3.0)
    labels = np.random.default_rng(10).integers(0, cols, rows).astype(np.int64)
    grad, row_loss = Guarded(shape, dtype), Guarded((rows,), dtype)
    hk.launch(
        "dc_softmax_xent",
        dtype,
        *geometry.rows(rows, cols),
        (z, labels, grad.a, row_loss.a, np.int64(rows), np.int64(cols), T(dtype, rows)),
    )
    loss = finish(hk, dtype, row_loss.check(), rows, rows)
    ref_loss, ref_grad = NB.softmax_cross_entropy(z, labels)
    close(grad.check(), ref_grad, dtype, terms=cols)
    close(loss, ref_loss, dtype, terms=rows * cols)


def test_softmax_cross_entropy_flags_a_bad_label_with_nan(hk):
    z = rand((2, 3), "float32", 11)
    labels = np.array([1, 7], dtype=np.int64)
    grad, row_loss = np.empty_like(z), np.empty(2, "float32")
    hk.launch(
        "dc_softmax_xent",
        "float32",
        *geometry.rows(2, 3),
        (z, labels, grad, row_loss, np.int64(2), np.int64(3), np.float32(2)),
    )
    assert np.isfinite(row_loss[0]) and np.isnan(row_loss[1])


@pytest.mark.parametrize("name", ["dc_bce_logits", "dc_mse"])
@pytest.mark.parametrize("n", [1, 31, 33, 1000, 70_001])
def test_pointwise_losses(hk, dtype, name, n):
    a = rand(n, dtype, 12, 4.0)
    t = (
        np.random.default_rng(13).random(n).astype(dtype)
        if name == "dc_bce_logits"
        else rand(n, dtype, 14)
    )
    grid, block = geometry.reduction(n)
    grad, partials = Guarded((n,), dtype), Guarded((grid[0],), dtype)
    scale = n if name == "dc_bce_logits" else 2.0 / n
    hk.launch(name, dtype, grid, block, (a, t, grad.a, partials.a, np.int64(n), T(dtype, scale)))
    loss = finish(hk, dtype, partials.check(), grid[0], n)
    ref_loss, ref_grad = (NB.bce_with_logits if name == "dc_bce_logits" else NB.mse)(a, t)
    close(grad.check(), ref_grad, dtype)
    close(loss, ref_loss, dtype, terms=n)


@pytest.mark.parametrize("grid", [1, 3, 7])
def test_grid_stride_loops_cover_everything_with_any_grid(hk, grid):
    n = 5000
    a, t = rand(n, "float64", 15), rand(n, "float64", 16)
    grad, partials = np.empty(n), np.empty(grid)
    hk.launch(
        "dc_mse",
        "float64",
        grid,
        geometry.MAX_BLOCK,
        (a, t, grad, partials, np.int64(n), 2.0 / np.float64(n)),
    )
    ref_loss, ref_grad = NB.mse(a, t)
    close(grad, ref_grad, "float64")
    close(finish(hk, "float64", partials, grid, n), ref_loss, "float64", terms=n)


SGD_CASES = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    {"momentum": 0.5, "dampening": 0.3, "maximize": True},
]


@pytest.mark.parametrize("cfg", SGD_CASES)
def test_sgd_update_steps(hk, dtype, cfg):
    n = 1000
    p, ref_p = rand(n, dtype, 17), rand(n, dtype, 17)
    buf, ref_buf = np.zeros(n, dtype), np.zeros(n, dtype)
    m, damp, wd = cfg.get("momentum", 0.0), cfg.get("dampening", 0.0), cfg.get("weight_decay", 0.0)
    for step in range(3):
        g = rand(n, dtype, 100 + step)
        flags = (
            int(cfg.get("maximize", False))
            | 2 * (wd != 0)
            | 4 * (m != 0)
            | 8 * cfg.get("nesterov", False)
            | 16 * (step == 0)
        )
        hk.launch(
            "dc_sgd",
            dtype,
            *geometry.elementwise(n),
            (
                p,
                g,
                buf,
                np.int64(n),
                T(dtype, 0.1),
                T(dtype, m),
                T(dtype, 1 - damp),
                T(dtype, wd),
                np.int32(flags),
            ),
        )
        NB.sgd_update(ref_p, g, ref_buf if m else None, lr=0.1, first_step=step == 0, **cfg)
    close(p, ref_p, dtype)


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled": True},
        {"amsgrad": True, "maximize": True},
    ],
)
def test_adam_update_steps(hk, dtype, cfg):
    n, lr, b1, b2, eps = 33, 0.01, 0.9, 0.999, 1e-8
    p, ref_p = rand(n, dtype, 18), rand(n, dtype, 18)
    st = [np.zeros(n, dtype) for _ in range(3)]
    ref = [np.zeros(n, dtype) for _ in range(3)]
    wd, dec, ams = (
        cfg.get("weight_decay", 0.0),
        cfg.get("decoupled", False),
        cfg.get("amsgrad", False),
    )
    for step in range(1, 4):
        g = rand(n, dtype, 200 + step)
        flags = (
            int(cfg.get("maximize", False))
            | 2 * (wd != 0 and dec)
            | 4 * (wd != 0 and not dec)
            | 8 * ams
        )
        hk.launch(
            "dc_adam",
            dtype,
            *geometry.elementwise(n),
            (
                p,
                g,
                st[0],
                st[1],
                st[2],
                np.int64(n),
                T(dtype, 1 - lr * wd),
                T(dtype, wd),
                T(dtype, b1),
                T(dtype, 1 - b1),
                T(dtype, b2),
                T(dtype, 1 - b2),
                T(dtype, lr / (1 - b1**step)),
                T(dtype, (1 - b2**step) ** 0.5),
                T(dtype, eps),
                np.int32(flags),
            ),
        )
        NB.adam_update(
            ref_p,
            g,
            ref[0],
            ref[1],
            step=step,
            lr=lr,
            beta1=b1,
            beta2=b2,
            eps=eps,
            max_exp_avg_sq=ref[2],
            **cfg,
        )
    close(p, ref_p, dtype)


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"centered": True},
        {"momentum": 0.9, "weight_decay": 0.1},
        {"centered": True, "momentum": 0.5, "maximize": True},
    ],
)
def test_rmsprop_update_steps(hk, dtype, cfg):
    n, lr, alpha, eps = 31, 0.01, 0.99, 1e-8
    p, ref_p = rand(n, dtype, 19), rand(n, dtype, 19)
    st = [np.zeros(n, dtype) for _ in range(3)]
    ref = [np.zeros(n, dtype) for _ in range(3)]
    wd, mom = cfg.get("weight_decay", 0.0), cfg.get("momentum", 0.0)
    for step in range(3):
        g = rand(n, dtype, 300 + step)
        flags = (
            int(cfg.get("maximize", False))
            | 2 * (wd != 0)
            | 4 * cfg.get("centered", False)
            | 8 * (mom > 0)
        )
        hk.launch(
            "dc_rmsprop",
            dtype,
            *geometry.elementwise(n),
            (
                p,
                g,
                st[0],
                st[1],
                st[2],
                np.int64(n),
                T(dtype, lr),
                T(dtype, alpha),
                T(dtype, 1 - alpha),
                T(dtype, eps),
                T(dtype, wd),
                T(dtype, mom),
                np.int32(flags),
            ),
        )
        NB.rmsprop_update(
            ref_p,
            g,
            ref[0],
            lr=lr,
            alpha=alpha,
            eps=eps,
            grad_avg=ref[1],
            momentum_buffer=ref[2],
            **cfg,
        )
    close(p, ref_p, dtype)


def test_bad_launch_configuration_is_an_error(hk):
    x = np.zeros(4, "float32")
    with pytest.raises(host.EmulationError, match="launch configuration"):
        hk.launch("dc_softmax", "float32", 1, 2048, (x, x, np.int64(1), np.int64(4)))


def test_arguments_are_checked_like_a_real_launch_would_not(hk):
    x = np.zeros(4, "float32")
    with pytest.raises(TypeError, match="numpy float32 scalar"):
        hk.launch("dc_mse", "float32", 1, 256, (x, x, x, x, np.int64(4), 0.5))
    with pytest.raises(TypeError, match="C-contiguous float32"):
        hk.launch(
            "dc_mse",
            "float32",
            1,
            256,
            (x, x.astype("float64"), x, x, np.int64(4), np.float32(0.5)),
        )


def test_the_gpu_build_really_contracts_and_flushes():
    """The "gpu" build differs from "strict" where a GPU would: float32 denormals flush to zero
    (float64 ones do not), and multiply-adds round once (some float32 results change in the
    last bit), while both stay within TOL of NumPy."""
    ok_fma, why_fma = host.fma_available()
    if not ok_fma:
        pytest.skip(f"the gpu build needs FMA instructions: {why_fma}")
    strict, gpu = host.build("strict"), host.build("gpu")
    for dtype, tiny in (("float32", 1e-39), ("float64", 1e-310)):
        z = np.full(4, tiny, dtype)
        outs = []
        for hk in (strict, gpu):
            out = np.empty(4, dtype)
            args = (z, z, out, out, np.int64(1), np.int64(4), np.int32(0), T(dtype, 0), np.int32(1))
            hk.launch("dc_bias_act", dtype, 1, 256, args)
            outs.append(out[0])
        assert outs[0] == 2 * np.dtype(dtype).type(tiny)
        assert outs[1] == (0.0 if dtype == "float32" else outs[0]), (dtype, outs)
    n = 4096
    p0, g = rand(n, "float32", 30), rand(n, "float32", 31)
    results = []
    for hk in (strict, gpu):
        p, buf = p0.copy(), np.zeros(n, "float32")
        args = (p, g, buf, np.int64(n), T("float32", 0.1), T("float32", 0.9), T("float32", 1.0),
                T("float32", 0.01), np.int32(2 | 4 | 8))  # fmt: skip
        hk.launch("dc_sgd", "float32", *geometry.elementwise(n), args)
        results.append(p)
    ref = p0.copy()
    NB.sgd_update(ref, g, np.zeros(n, "float32"), lr=0.1, momentum=0.9, nesterov=True,
                  weight_decay=0.01, first_step=True)  # fmt: skip
    assert (results[0] != results[1]).any(), "no FMA contraction in the gpu build"
    for r in results:
        close(r, ref, "float32")
