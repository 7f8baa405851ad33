"""The CuPy backend's bf16 / fp16 GEMMs (cuBLAS gemmEx) on the CuPy TEST DOUBLE.

The double runs the real backend code: the `dc_round16` kernel host-compiled from half.cu, and a
`gemmEx` that checks its arguments and multiplies the 16-bit buffers its pointers name
(tests/cupy_double_blas.py). References: the NumPy backend's gemm_bf16 / gemm_fp16 (operands
rounded by ml_dtypes / NumPy, float32 matmul) and float64 products of the rounded operands.
Nothing here ran on a GPU.
"""

from __future__ import annotations

import cupy_double
import numpy as np
import pytest
from deepcore.kernels.cuda import host

import deepcore as dc
from deepcore.backends.numpy import NumpyBackend
from deepcore.errors import DtypeError
from deepcore.precision import round_bf16, round_fp16

ml_dtypes = pytest.importorskip("ml_dtypes")
ok, why = host.available()
pytestmark = pytest.mark.skipif(not ok, reason=f"the double runs host-compiled kernels: {why}")

NB = NumpyBackend()
ROUND = {"bf16": round_bf16, "fp16": round_fp16}
CODE = {"bf16": 14, "fp16": 2}  # CUDA_R_16BF, CUDA_R_16F
KERNEL = {"bf16": "dc_round16<__nv_bfloat16>", "fp16": "dc_round16<__half>"}


@pytest.fixture
def gpu():
    with cupy_double.installed() as state:
        from deepcore.backends.cupy import CupyBackend

        yield CupyBackend(0), state


def rand(shape, seed, scale=1.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (5, 33, 31), (67, 100, 10)])
@pytest.mark.parametrize(("ta", "tb"), [(False, False), (True, False), (False, True),
                                        (True, True)])  # fmt: skip
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (0.5, -2.0)])
def test_gemm16_matches_the_numpy_reference(gpu, precision, m, k, n, ta, tb, alpha, beta):
    be, state = gpu
    a = rand((k, m) if ta else (m, k), 1)
    b = rand((n, k) if tb else (k, n), 2)
    c0 = rand((m, n), 3)
    out = be.asarray(c0)
    got = getattr(be, f"gemm_{precision}")(be.asarray(a), be.asarray(b), ta, tb, alpha, beta, out)
    assert got is out
    want = getattr(NB, f"gemm_{precision}")(a, b, ta, tb, alpha, beta, c0.copy())
    ra, rb = ROUND[precision](a).astype(np.float64), ROUND[precision](b).astype(np.float64)
    mag = abs(alpha) * np.abs(ra.T if ta else ra) @ np.abs(rb.T if tb else rb) + abs(beta) * abs(c0)
    bound = (k + 3) * 2.0**-24 * mag + 1e-30  # float32 sums in any order, from rounded operands
    exact = alpha * (ra.T if ta else ra) @ (rb.T if tb else rb) + beta * c0.astype(np.float64)
    host_out = np.asarray(out.view(np.ndarray))
    assert (np.abs(host_out - exact) <= bound).all()
    assert (np.abs(host_out - want) <= 2 * bound).all()
    # one gemmEx call, with cuBLAS's column-major view of the row-major operands
    (call,) = state.gemmex_calls
    assert call["Atype"] == call["Btype"] == CODE[precision] and call["Ctype"] == 0
    assert call["computeType"] == 68 and call["algo"] == -1  # COMPUTE_32F, GEMM_DEFAULT
    assert (call["m"], call["n"], call["k"]) == (n, m, k)  # C^T = op(B)^T op(A)^T
    assert (call["transa"], call["transb"]) == (int(tb), int(ta))
    assert (call["lda"], call["ldb"], call["ldc"]) == (b.shape[1], a.shape[1], n)
    assert call["C"] == out.data.ptr  # written in place
    rounds = [name for name, _, _ in state.launches]
    assert rounds == [KERNEL[precision]] * 2  # each operand rounded once, on the device


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gemm16_operand_bits_are_the_reference_roundings(gpu, precision):
    """The 16-bit buffers gemmEx reads hold exactly ml_dtypes' / NumPy's rounding of a and b
    (ties included): read back through the recorded pointers."""
    be, state = gpu
    ulp = 2.0**-8 if precision == "bf16" else 2.0**-11
    a = np.array([[1 + ulp / 2, 1 + 3 * ulp / 2, -(1 + ulp / 2), 3.0]], np.float32)
    b = rand((4, 2), 5)
    getattr(be, f"gemm_{precision}")(be.asarray(a), be.asarray(b))
    (call,) = state.gemmex_calls
    buf_a, buf_b = be._half_bufs["a"], be._half_bufs["b"]
    assert (call["B"], call["A"]) == (buf_a.data.ptr, buf_b.data.ptr)  # cuBLAS's B is our a
    ref = ml_dtypes.bfloat16 if precision == "bf16" else np.float16
    for buf, x in ((buf_a, a), (buf_b, b)):
        bits = np.asarray(buf.view(np.ndarray))[: x.size]
        np.testing.assert_array_equal(bits, x.reshape(-1).astype(ref).view(np.uint16))


def test_gemm16_edge_cases(gpu):
    be, state = gpu
    z = be.gemm_bf16(be.asarray(np.zeros((0, 3), np.float32)), be.asarray(rand((3, 4), 0)))
    assert z.shape == (0, 4)
    out = be.asarray(np.full((2, 4), 3.0, np.float32))
    be.gemm_fp16(be.asarray(np.zeros((2, 0), np.float32)), be.asarray(np.zeros((0, 4),
                 np.float32)), beta=0.5, out=out)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(out), 1.5)
    assert state.gemmex_calls == []  # empty products never reach cuBLAS
    # a Fortran-ordered out: computed into a C-ordered copy, written back
    a, b, c0 = rand((3, 5), 1), rand((5, 4), 2), rand((3, 4), 3)
    out = be.asarray(np.ascontiguousarray(c0.T)).T
    assert not out.flags.c_contiguous
    be.gemm_fp16(be.asarray(a), be.asarray(b), beta=1.0, out=out)
    want = NB.gemm_fp16(a, b, beta=1.0, out=c0.copy())
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-6, atol=1e-6)
    # out aliasing an operand: both are rounded before C is written
    sq = rand((6, 6), 4)
    x = be.asarray(sq)
    be.gemm_bf16(x, x, out=x)
    np.testing.assert_allclose(np.asarray(x), NB.gemm_bf16(sq, sq), rtol=1e-6, atol=1e-5)


def test_gemm16_refuses_float64_in_one_line(gpu):
    be, _ = gpu
    x = be.asarray(np.ones((2, 2)))
    for precision in ("bf16", "fp16"):
        with pytest.raises(DtypeError, match=rf"^gemm_{precision}: operands must be float32, got "
                                             r"float64 and float64$"):  # fmt: skip
            getattr(be, f"gemm_{precision}")(x, x)


def test_the_double_rejects_what_cublas_rejects(gpu):
    """The gemmEx double can fail: a leading dimension too small, a wrong compute type."""
    be, state = gpu
    import cupy_backends.cuda.libs.cublas as lib

    a = be.asarray(np.zeros((4, 4), np.uint16))
    c = be.asarray(np.zeros((4, 4), np.float32))
    one = np.ones(2, np.float32)
    args = [1234, 0, 0, 4, 4, 4, one.ctypes.data, a.data.ptr, 14, 4, a.data.ptr, 14, 4,
            one.ctypes.data + 4, c.data.ptr, 0, 4, 68, -1]  # fmt: skip
    lib.gemmEx(*args)
    with pytest.raises(RuntimeError, match="INVALID_VALUE"):
        lib.gemmEx(*args[:9], 3, *args[10:])
    with pytest.raises(RuntimeError, match="NOT_SUPPORTED"):
        lib.gemmEx(*args[:17], 77, -1)  # CUBLAS_COMPUTE_32F_FAST_TF32 is not what we ask for
    with pytest.raises(RuntimeError, match="needs .* bytes"):
        lib.gemmEx(*args[:3], 8, *args[4:9], 8, *args[10:16], 8, 68, -1)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_linear_layer_under_autocast_matches_numpy(gpu, precision):
    be, state = gpu
    dc.seed(0)
    ref = dc.nn.mlp([20, 16, 7], "gelu", backend="numpy")
    dc.seed(0)
    dev = dc.nn.mlp([20, 16, 7], "gelu", backend="numpy").to(be)
    x, g = rand((9, 20), 7), rand((9, 7), 8)
    with dc.autocast("bfloat16" if precision == "bf16" else "float16"):
        y_ref, y_dev = ref(x), dev(be.asarray(x))
        ref.backward(g)
        dev.backward(be.asarray(g))
    np.testing.assert_allclose(np.asarray(y_dev), y_ref, rtol=1e-4, atol=1e-5)
    for p, q in zip(dev.parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(be.to_host(p.grad), q.grad, rtol=1e-4, atol=1e-5)
    assert len(state.gemmex_calls) == 2 + 4  # 2 forward, 2 weight-gradient, 2 input-gradient


def test_fp16_training_on_the_double_skips_an_overflow_and_matches_numpy(gpu):
    be, state = gpu
    from deepcore.amp import GradScaler
    from deepcore.data import load_digits
    from deepcore.train import Trainer

    d = load_digits()
    X, y = d.X[:128].astype(np.float32), d.y[:128]
    trainers = []
    for backend in ("numpy", be):
        dc.seed(0)
        model = dc.nn.mlp([64, 32, 10], "relu", backend="numpy").to(backend)
        t = Trainer(model, "cross_entropy", "sgd", lr=0.05, seed=0, precision="fp16")
        t.scaler = GradScaler(init_scale=2.0**30)  # overflows fp16 at first: skipped steps
        trainers.append(t)
    before = [be.to_host(p.data).copy() for p in trainers[1].model.parameters()]
    reads = state.host_reads
    trainers[1].train_step(be.asarray(X[:64]), be.asarray(y[:64]))
    assert trainers[1].scaler.skipped_steps == 1 and trainers[1].scaler.get_scale() == 2.0**29
    assert state.host_reads - reads == 1  # the scaler's finite check: one read per step
    for p, b in zip(trainers[1].model.parameters(), before, strict=True):
        np.testing.assert_array_equal(be.to_host(p.data), b)
    trainers[0].train_step(X[:64], y[:64])
    for i in range(1, 12):
        for t, dev in zip(trainers, (False, True), strict=True):
            xb, yb = X[i % 2 * 64 : (i % 2 + 1) * 64], y[i % 2 * 64 : (i % 2 + 1) * 64]
            t.train_step(be.asarray(xb) if dev else xb, be.asarray(yb) if dev else yb)
    assert trainers[0].scaler.state_dict() == trainers[1].scaler.state_dict()
    assert trainers[1].scaler.skipped_steps >= 2
    for p, q in zip(trainers[1].model.parameters(), trainers[0].model.parameters(), strict=True):
        np.testing.assert_allclose(be.to_host(p.data), q.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_round_on_the_device_is_the_reference_rounding(gpu, precision):
    """round_bf16 / round_fp16 run dc_round16 then dc_widen16: equal to ml_dtypes / NumPy
    (NaN stays NaN; CUDA makes it the canonical NaN), shape kept, also for a transposed view."""
    be, state = gpu
    ulp = 2.0**-8 if precision == "bf16" else 2.0**-11
    x = np.array([[1 + ulp / 2, 1 + 3 * ulp / 2, 7e4, -1e-8], [np.nan, np.inf, 0.1, -0.0]],
                 np.float32)  # fmt: skip
    got = getattr(be, f"round_{precision}")(be.asarray(x).T)
    want = ROUND[precision](x.T)
    assert got.shape == (4, 2) and got.dtype == np.float32
    h = np.asarray(got.view(np.ndarray))
    np.testing.assert_array_equal(np.isnan(h), np.isnan(want))
    ok = ~np.isnan(want)
    assert (h[ok].view(np.uint32) == want[ok].view(np.uint32)).all()  # -0.0 included
    storage = "__nv_bfloat16" if precision == "bf16" else "__half"
    assert [n for n, _, _ in state.launches] == [f"dc_round16<{storage}>", f"dc_widen16<{storage}>"]
