"""CupyBackend on a two-device CuPy TEST DOUBLE: device placement, OOM, empty GEMMs, GELU without
SciPy, and the double's own strictness where real CuPy and cuBLAS are strict.

No GPU is involved (see tests/cupy_double.py for what the double is and is not). Each of the
backend tests here failed before its fix (issue 17: bugs 1, 3, 4, 5).
"""

from __future__ import annotations

import cupy_double
import numpy as np
import pytest
from deepcore.kernels.cuda import host

from deepcore.backends import hyper
from deepcore.backends.base import ACTIVATIONS
from deepcore.backends.numpy import NumpyBackend

ok, why = host.available()
pytestmark = pytest.mark.skipif(not ok, reason=f"the double runs host-compiled kernels: {why}")

NB = NumpyBackend()


@pytest.fixture
def gpu():
    with cupy_double.installed() as state:
        from deepcore.backends.cupy import CupyBackend

        yield CupyBackend(0), state


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


def rand(shape, dtype, seed, scale=1.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def close(actual, expected, dtype):
    rtol, atol = (3e-5, 3e-6) if dtype == "float32" else (1e-12, 1e-13)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol, atol=atol)


def _public_methods(cls):
    """Every public method of a backend class, inherited ones included (not a hand-kept list)."""
    return sorted(n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n)))


def _recipes(b, dtype):
    """One call per public method, with device arrays of `b` (made fresh per call)."""
    r = lambda shape, seed: b.asarray(rand(shape, dtype, seed))  # noqa: E731
    f32 = lambda shape, seed: b.asarray(rand(shape, "float32", seed))  # noqa: E731
    labels = np.array([0, 2, 1, 4, 3, 0], dtype=np.int64)
    opt = dict(lr=0.1)
    return {
        "empty": lambda: b.empty((3, 4), dtype),
        "zeros": lambda: b.zeros((3, 4), dtype),
        "owns": lambda: b.owns(r((2,), 0)),
        "asarray": lambda: b.asarray(rand((3, 4), dtype, 1)),
        "to_host": lambda: b.to_host(r((2,), 2)),
        "synchronize": lambda: b.synchronize(),
        "check": lambda: b.check(r((2,), 3)),
        "scratch": lambda: b.scratch("t", (3,), dtype),
        "copy_": lambda: b.copy_(r((3, 4), 4), r((3, 4), 5)),
        "fill_": lambda: b.fill_(r((3, 4), 6), 1.5),
        "mul": lambda: b.mul(r((3, 4), 7), r((3, 4), 8)),
        "scale_": lambda: b.scale_(r((3, 4), 9), 0.5),
        "sum_squares": lambda: b.sum_squares(r((3, 4), 10)),
        "heaviside": lambda: b.heaviside(r((3, 4), 11)),
        "count_correct": lambda: b.count_correct(r((6, 5), 13), labels),
        "labels_in_range": lambda: b.labels_in_range(labels, 5),  # host labels, a bool
        "gemm": lambda: b.gemm(r((5, 3), 15), r((4, 3), 16), trans_b=True),
        "bias_add": lambda: b.bias_add(r((3, 4), 17), r((4,), 18)),
        "bias_grad": lambda: b.bias_grad(r((3, 4), 19)),
        "activation": lambda: [
            b.activation(k, x) for k in ACTIVATIONS for x in (r((3, 4), 20), r((4, 3), 21).T)
        ],
        "activation_backward": lambda: [
            b.activation_backward(k, dy, x=x, y=x)
            for k in ACTIVATIONS
            for dy, x in ((r((3, 4), 22), r((3, 4), 23)), (r((4, 3), 24).T, r((4, 3), 25).T))
        ],
        "activation_backward_bias_grad": lambda: [
            b.activation_backward_bias_grad(k, r((3, 4), 26), x=r((3, 4), 27), y=r((3, 4), 28))
            for k in ACTIVATIONS
        ],
        "linear": lambda: b.linear(
            r((3, 5), 29), r((4, 5), 30), r((4,), 31), "gelu", pre_out=b.empty((3, 4), dtype)
        ),
        "softmax": lambda: b.softmax(r((3, 4), 32)),
        "softmax_backward": lambda: b.softmax_backward(r((3, 4), 33), r((3, 4), 34)),
        "softmax_cross_entropy": lambda: b.softmax_cross_entropy(r((6, 5), 35), labels),
        "bce_with_logits": lambda: b.bce_with_logits(r((3, 4), 36), r((3, 4), 37)),
        "mse": lambda: b.mse(r((3, 4), 38), r((3, 4), 39)),
        "sgd_update": lambda: b.sgd_update(
            r((3, 4), 40), r((3, 4), 41), r((3, 4), 42), momentum=0.9, **opt
        ),
        "adam_update": lambda: b.adam_update(
            r((3, 4), 43),
            r((3, 4), 44),
            r((3, 4), 45),
            b.zeros((3, 4), dtype),
            step=1,
            beta1=0.9,
            beta2=0.999,
            eps=1e-8,
            **opt,
        ),
        "rmsprop_update": lambda: b.rmsprop_update(
            r((3, 4), 46), r((3, 4), 47), b.zeros((3, 4), dtype), alpha=0.99, eps=1e-8, **opt
        ),
        "sgd_packed": lambda: b.sgd_packed(r((3, 4), 48), r((3, 4), 49), None, *row("sgd")),
        "adam_packed": lambda: b.adam_packed(
            r((3, 4), 50),
            r((3, 4), 51),
            b.zeros((3, 4), dtype),
            b.zeros((3, 4), dtype),
            None,
            *row("adam"),
        ),
        "rmsprop_packed": lambda: b.rmsprop_packed(
            r((3, 4), 52), r((3, 4), 53), b.zeros((3, 4), dtype), None, None, *row("rmsprop")
        ),
        "multi_update": lambda: b.multi_update(
            "sgd",
            [r((3, 4), 54), r((4,), 55)],
            [r((3, 4), 56), r((4,), 57)],
            [[None, None]],
            *hyper.rows([hyper.pack("sgd", SGD_GROUP)] * 2, dtype),
        ),
        "mlp_forward": lambda: b.mlp_forward(
            [r((4, 5), 58), r((2, 4), 59)],
            [r((4,), 60), r((2,), 61)],
            ("relu", "identity"),
            r((3, 5), 62),
            masks=[r((3, 4), 63), None],
        ),
        "mlp_backward": lambda: _mlp_backward(b, r),
        "warmup": lambda: b.warmup(),
        # bf16 GEMM operands are float32 whatever the test's dtype (master weights are float32)
        "round_bf16": lambda: b.round_bf16(f32((3, 4), 70)),
        "gemm_bf16": lambda: b.gemm_bf16(f32((5, 3), 71), f32((4, 3), 72), trans_b=True),
        "linear_bf16": lambda: b.linear_bf16(f32((3, 5), 73), f32((4, 5), 74), f32((4,), 75)),
        "round_fp16": lambda: b.round_fp16(f32((3, 4), 76)),
        "gemm_fp16": lambda: b.gemm_fp16(f32((5, 3), 77), f32((4, 3), 78), trans_b=True),
        "linear_fp16": lambda: b.linear_fp16(f32((3, 5), 79), f32((4, 5), 80), f32((4,), 81)),
        "info": lambda: b.info(),
    }


SGD_GROUP = dict(lr=0.1, momentum=0.0, dampening=0.0, nesterov=False)
ADAM_GROUP = dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, amsgrad=False)
RMS_GROUP = dict(lr=0.1, alpha=0.99, eps=1e-8, momentum=0.0, centered=False)


def row(rule):
    group = {"sgd": SGD_GROUP, "adam": ADAM_GROUP, "rmsprop": RMS_GROUP}[rule]
    hp, flags = hyper.pack(rule, group)
    return np.asarray(hp), np.asarray(flags)


def _mlp_backward(b, r):
    ws, bs = [r((4, 5), 64), r((2, 4), 65)], [r((4,), 66), r((2,), 67)]
    out, tape = b.mlp_forward(ws, bs, ("tanh", "identity"), r((3, 5), 68))
    wg, bg = [b.empty(w.shape, w.dtype) for w in ws], [b.empty(x.shape, x.dtype) for x in bs]
    return [b.mlp_backward(tape, r((3, 2), 69), wg, bg), *wg, *bg]


def _device_ids(result):
    """Device ids of every device array in a (nested) result."""
    if isinstance(result, (list, tuple)):
        return [d for item in result for d in _device_ids(item)]
    if type(result).__module__ == "cupy":
        return [result.device.id]
    return []


def test_every_public_method_runs_on_its_own_device(dtype):
    """On cupy:1, called while device 0 is current: every public method of the backend (listed
    from the class, mixins included) launches on device 1 (the double raises otherwise, where a
    GPU would fault or race) and every array it returns lives on device 1."""
    with cupy_double.installed(device_count=2) as state:
        from deepcore.backends.cupy import CupyBackend

        b1 = CupyBackend(1)
        recipes = _recipes(b1, dtype)
        methods = _public_methods(CupyBackend)
        missing = sorted(set(methods) - set(recipes))
        assert not missing, f"give these public methods a call in _recipes: {missing}"
        failures = []
        for name in methods:
            state.current_device = 0
            before = len(state.launches)
            try:
                result = recipes[name]()
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            wrong = [d for d in _device_ids(result) if d != 1]
            if wrong:
                failures.append(f"{name}: returned arrays on devices {wrong}")
            if state.current_device != 0:
                failures.append(f"{name}: left device {state.current_device} current")
            if name in ("softmax_cross_entropy", "mse", "sgd_update", "adam_update"):
                assert len(state.launches) > before, f"{name} did not reach its kernel"
        assert not failures, "\n".join(failures)


def test_out_of_memory_reports_the_backends_own_device_pool():
    from deepcore.backends.cupy import CudaOutOfMemoryError, CupyBackend

    with cupy_double.installed(device_count=2, memory_limit=10_000) as state:
        b0, b1 = CupyBackend(0), CupyBackend(1)
        b0.empty((1000,), "float64")  # 8,000 bytes on device 0
        b1.empty((100,), "float32")  # 400 bytes on device 1
        assert state.device_bytes == {0: 8000, 1: 400}
        with pytest.raises(CudaOutOfMemoryError) as err:
            b1.empty((5000,), "float32")
        msg = str(err.value)
        assert "cuda:1" in msg and "holds 400 bytes" in msg, msg
        with pytest.raises(CudaOutOfMemoryError, match="holds 400 bytes"):
            b1.asarray(np.zeros(5000))


EMPTY = [(0, 7, 5), (6, 7, 0), (6, 0, 5), (0, 0, 0)]


@pytest.mark.parametrize("m,k,n", EMPTY)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_empty_gemms_never_reach_cublas_with_a_zero_leading_dimension(gpu, m, k, n, ta, tb, beta):
    """cuBLAS rejects lda/ldb/ldc < max(1, rows): CuPy derives 0 for an empty operand, and the
    double rejects it as cuBLAS would. k = 0 gives beta * out; an empty out stays empty."""
    b, _ = gpu
    a = rand((k, m) if ta else (m, k), "float32", 50)
    w = rand((n, k) if tb else (k, n), "float32", 51)
    out0 = rand((m, n), "float32", 52)
    out = b.asarray(out0)
    got = b.gemm(b.asarray(a), b.asarray(w), ta, tb, 2.0, beta, out=out)
    assert got is out and got.shape == (m, n)
    ref = NB.gemm(a, w, ta, tb, 2.0, beta, out=out0.copy())
    np.testing.assert_array_equal(b.to_host(got), ref)
    if beta == 0.0:
        got = b.gemm(b.asarray(a), b.asarray(w), ta, tb)
        np.testing.assert_array_equal(b.to_host(got), np.zeros((m, n), "float32"))


def test_a_batch_of_zero_rows_trains_through_every_gemm(gpu):
    b, _ = gpu
    x, w, bias, dy = (b.asarray(rand(s, "float32", i)) for i, s in
                      enumerate([(0, 5), (4, 5), (4,), (0, 4)]))  # fmt: skip
    y = b.linear(x, w, bias, "relu")
    dw = b.gemm(dy, x, trans_a=True)  # k = 0: dW = 0
    dx = b.gemm(dy, w)  # m = 0
    assert y.shape == (0, 4) and dx.shape == (0, 5)
    np.testing.assert_array_equal(b.to_host(dw), np.zeros((4, 5), "float32"))


def test_gelu_on_a_non_contiguous_array_without_scipy(gpu, monkeypatch, dtype):
    """Non-contiguous arrays take the generic path, whose erf must stay on the device: without
    SciPy the host fallback (np.frompyfunc(math.erf)) is not a ufunc CuPy can run."""
    import sys

    for mod in ("scipy", "scipy.special"):
        monkeypatch.setitem(sys.modules, mod, None)
    b, _ = gpu
    x, dy = rand((5, 4), dtype, 53), rand((5, 4), dtype, 54)
    X = b.asarray(x.T.copy()).T  # the same values as a transposed view: not C-contiguous
    DY = b.asarray(dy.T.copy()).T
    assert not X.flags.c_contiguous
    for kind in ("gelu", "gelu_tanh"):
        close(b.to_host(b.activation(kind, X)), NB.activation(kind, x), dtype)
        close(b.to_host(b.activation_backward(kind, DY, x=X)),
              NB.activation_backward(kind, dy, x=x), dtype)  # fmt: skip


# ------------------------------------------------------- the double is strict where CuPy is
def test_double_gemm_follows_cupy_and_cublas(gpu):
    """cupy.cublas.gemm: out=None gives an F-order array; operands of any layout; a zero leading
    dimension is CUBLAS_STATUS_INVALID_VALUE; a device mismatch is an error."""
    _, state = gpu
    cp = __import__("cupy")
    a, w = rand((5, 3), "float64", 60), rand((3, 4), "float64", 61)
    A, W = cp.asarray(a), cp.asarray(w)
    got = cp.cublas.gemm("N", "N", A, W)
    assert got.flags.f_contiguous and not got.flags.c_contiguous
    np.testing.assert_allclose(got.view(np.ndarray), a @ w, rtol=1e-14)
    out = cp.asarray(np.ones((4, 5)))
    layouts = (
        cp.asarray,  # C order
        lambda h: cp.asarray(np.asfortranarray(h)),  # F order
        lambda h: cp.asarray(np.repeat(h, 2, axis=1))[:, ::2],  # neither: CuPy copies it
    )
    for layout in layouts:
        A2, W2 = layout(a), layout(w)
        assert A2.flags.f_contiguous == (layout is layouts[1]) or A2.shape[0] == 1
        cp.cublas.gemm("T", "T", W2, A2, out=out, alpha=2.0, beta=0.5)
    ref = np.ones((4, 5))
    for _ in range(3):
        ref = 2.0 * (w.T @ a.T) + 0.5 * ref
    np.testing.assert_allclose(out.view(np.ndarray), ref, rtol=1e-13)
    with pytest.raises(cupy_double.CUBLASError, match="INVALID_VALUE"):
        cp.cublas.gemm("N", "N", cp.asarray(np.ones((0, 3))), W, out=cp.empty((0, 4)))
    state.device_count = 2
    with cp.cuda.Device(1), pytest.raises(ValueError, match="Peer access is unavailable"):
        cp.cublas.gemm("N", "N", A, W)


def test_double_ufuncs_resolve_and_check_like_cupy(gpu):
    import math

    _, state = gpu
    cp = __import__("cupy")
    x = cp.asarray(np.linspace(-2, 2, 5))
    assert type(np.exp(x)).__module__ == "cupy" and type(x.sum()).__module__ == "cupy"
    with pytest.raises(TypeError):  # not a CuPy ufunc: NotImplemented, as CuPy answers
        np.frompyfunc(math.erf, 1, 1)(x)
    with pytest.raises(TypeError, match="host array"):
        np.add(x, np.ones(5))
    state.device_count = 2
    with cp.cuda.Device(1), pytest.raises(ValueError, match="different from the current"):
        np.add(x, x)
    erf = __import__("sys").modules["cupyx.scipy.special"].erf  # CuPy's own: no SciPy
    want = [math.erf(v) for v in np.linspace(-2, 2, 5)]
    np.testing.assert_allclose(erf(x).view(np.ndarray), want, rtol=1e-15)


def test_double_kernel_scalars_must_have_the_parameters_exact_type(gpu):
    """A Python float or a float64 for a `float` parameter would be the wrong bytes on a GPU."""
    b, _ = gpu
    cp = __import__("cupy")
    x = cp.asarray(np.ones(4, "float32"))
    fn = b._kernel("dc_mse", "float32")
    for bad in (0.5, np.float64(0.5)):
        with pytest.raises(TypeError, match="float32 scalar"):
            fn((1, 1, 1), (256, 1, 1), (x, x, x, x, np.int64(4), bad))


def test_training_on_cupy_1_stays_on_device_1():
    """A whole Trainer step on cupy:1 while device 0 is current: every launch and every
    parameter, gradient and optimizer state array lives on device 1."""
    import deepcore as dc
    from deepcore.train import Trainer

    with cupy_double.installed(device_count=2) as state:
        from deepcore.backends.cupy import CupyBackend

        b1 = CupyBackend(1)
        dc.seed(0)
        model = dc.nn.mlp([6, 9, 3], "gelu", backend=b1)
        trainer = Trainer(model, "cross_entropy", "adam", lr=1e-2)
        x = b1.asarray(rand((5, 6), "float32", 70))
        y = np.array([0, 1, 2, 1, 0])
        state.current_device = 0
        losses = [trainer.train_step(x, y) for _ in range(3)]
        assert {loss.device.id for loss in losses} == {1}
        arrays = [p.data for p in model.parameters()]
        arrays += [p.grad for p in model.parameters() if p.grad is not None]
        for st in trainer.optimizer.state.values():
            arrays += [v for v in st.values() if type(v).__module__ == "cupy"]
        assert arrays and {a.device.id for a in arrays} == {1}
        assert state.launches and state.current_device == 0
