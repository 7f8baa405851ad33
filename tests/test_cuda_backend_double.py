"""CupyBackend's real Python code, end to end, on a CuPy TEST DOUBLE (tests/cupy_double.py).

No GPU is involved: "device" arrays are host arrays in disguise and the kernels are the CUDA
sources compiled for the CPU. What this proves: the backend's marshalling, launch geometry,
dtype dispatch, out= handling, optimizer calls, OOM/device handling and "no host read in a
step" -- all compared with the NumPy backend. What it cannot prove: anything about a real GPU.
"""

from __future__ import annotations

import cupy_double
import numpy as np
import pytest
from deepcore.kernels.cuda import host

from deepcore.backends.base import ACTIVATIONS
from deepcore.backends.numpy import NumpyBackend
from deepcore.errors import BackendMismatchError, DtypeError

ok, why = host.available()
pytestmark = pytest.mark.skipif(not ok, reason=f"the double runs host-compiled kernels: {why}")

NB = NumpyBackend()
SHAPES = [(1, 1), (7, 31), (5, 33), (3, 1000)]


@pytest.fixture
def gpu():
    """(CupyBackend on device 0 of the double, the double's recorded state)."""
    with cupy_double.installed() as state:
        from deepcore.backends.cupy import CupyBackend

        yield CupyBackend(0), state


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    return request.param


def rand(shape, dtype, seed, scale=1.5):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def close(actual, expected, dtype, terms=1):
    rtol, atol = (3e-5, 3e-6) if dtype == "float32" else (1e-12, 1e-13)
    g = max(1.0, terms**0.5)
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rtol * g, atol=atol * g)


def test_arrays_live_on_the_device(gpu, dtype):
    b, state = gpu
    x = b.asarray(rand((3, 4), dtype, 0))
    assert type(x).__module__ == "cupy" and b.owns(x) and x.dtype == dtype
    assert not b.owns(np.zeros(3))
    h = b.to_host(x)
    assert type(h) is np.ndarray and state.transfers_to_host == 1
    with pytest.raises(DtypeError):
        b.asarray(x, dtype="float64" if dtype == "float32" else "float32")


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 0.0), (2.0, 1.0), (1.0, -0.5)])
def test_gemm_transposes_and_scales(gpu, dtype, ta, tb, alpha, beta):
    b, _ = gpu
    m, k, n = 5, 33, 31
    a = rand((k, m) if ta else (m, k), dtype, 1)
    c = rand((n, k) if tb else (k, n), dtype, 2)
    out0 = rand((m, n), dtype, 3)
    out = b.asarray(out0) if beta else None
    got = b.gemm(b.asarray(a), b.asarray(c), ta, tb, alpha, beta, out=out)
    ref = NB.gemm(a, c, ta, tb, alpha, beta, out=out0.copy() if beta else None)
    close(b.to_host(got), ref, dtype, terms=k)


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_pre", [False, True])
def test_linear_epilogue(gpu, dtype, kind, shape, with_pre):
    b, _ = gpu
    rows, cols = shape
    x, w, bias = rand((rows, 17), dtype, 4), rand((cols, 17), dtype, 5), rand(cols, dtype, 6)
    pre = b.empty((rows, cols), dtype) if with_pre else None
    y = b.linear(b.asarray(x), b.asarray(w), b.asarray(bias), kind, alpha=0.1, pre_out=pre)
    ref_pre = np.empty((rows, cols), dtype) if with_pre else None
    ref = NB.linear(x, w, bias, kind, alpha=0.1, pre_out=ref_pre)
    close(b.to_host(y), ref, dtype, terms=17)
    if with_pre:
        close(b.to_host(pre), ref_pre, dtype, terms=17)


@pytest.mark.parametrize("kind", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_activations_and_fused_backward(gpu, dtype, kind, shape):
    b, _ = gpu
    x, dy = rand(shape, dtype, 7), rand(shape, dtype, 8)
    y = NB.activation(kind, x)
    X, DY, Y = b.asarray(x), b.asarray(dy), b.asarray(y)
    close(b.to_host(b.activation(kind, X)), y, dtype)
    # GELU-tanh's 1 + tanh cancels; tolerances follow the largest term (see the emulation test)
    atol = 8 * np.finfo(dtype).eps * np.abs(dy).max() * shape[0] ** 0.5
    ref_dx = NB.activation_backward(kind, dy, x=x, y=y)
    got_dx = b.to_host(b.activation_backward(kind, DY, x=X, y=Y))
    np.testing.assert_allclose(
        got_dx, ref_dx, rtol=3e-5 if dtype == "float32" else 1e-12, atol=atol
    )
    db0 = rand(shape[1], dtype, 9)
    DB = b.asarray(db0)
    dz, db = b.activation_backward_bias_grad(kind, DY, x=X, y=Y, db_out=DB, accumulate_db=True)
    rdz, rdb = NB.activation_backward_bias_grad(
        kind, dy, x=x, y=y, db_out=db0.copy(), accumulate_db=True
    )
    assert db is DB
    np.testing.assert_allclose(
        b.to_host(dz), rdz, rtol=3e-5 if dtype == "float32" else 1e-12, atol=atol
    )
    np.testing.assert_allclose(
        b.to_host(db), rdb, rtol=1e-4 if dtype == "float32" else 1e-11, atol=atol
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_bias_add_bias_grad_softmax(gpu, dtype, shape):
    b, _ = gpu
    x, v = rand(shape, dtype, 10, 5.0), rand(shape[1], dtype, 11)
    X = b.asarray(x)
    close(b.to_host(b.bias_add(X, b.asarray(v))), x + v, dtype)
    close(b.to_host(b.bias_grad(X)), x.sum(axis=0), dtype, terms=shape[0])
    close(b.to_host(b.softmax(X)), NB.softmax(x), dtype, terms=shape[1])


@pytest.mark.parametrize("shape", SHAPES)
def test_losses_are_0d_device_arrays_matching_numpy(gpu, dtype, shape):
    b, state = gpu
    z = rand(shape, dtype, 12, 3.0)
    labels = np.random.default_rng(13).integers(0, shape[1], shape[0])
    targets = np.random.default_rng(14).random(shape).astype(dtype)
    Z = b.asarray(z)
    for got, ref, terms in [
        (b.softmax_cross_entropy(Z, labels), NB.softmax_cross_entropy(z, labels), z.size),
        (b.bce_with_logits(Z, b.asarray(targets)), NB.bce_with_logits(z, targets), z.size),
        (b.mse(Z, b.asarray(targets)), NB.mse(z, targets), z.size),
    ]:
        loss, grad = got
        assert type(loss).__module__ == "cupy" and loss.ndim == 0 and loss.dtype == dtype
        close(b.to_host(loss), ref[0], dtype, terms=terms)
        close(b.to_host(grad), ref[1], dtype, terms=shape[1])
    assert state.host_reads == 0


def test_optimizer_updates_match_numpy_over_steps(gpu, dtype):
    b, _ = gpu
    n = (33, 31)
    p0 = rand(n, dtype, 15)
    cases = [
        ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), 1),
        ("sgd", dict(lr=0.1), 0),
        (
            "adam",
            dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, decoupled=True),
            2,
        ),
        ("adam", dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-8, amsgrad=True, maximize=True), 3),
        ("rmsprop", dict(lr=0.01, alpha=0.99, eps=1e-8, centered=True, momentum=0.5), 3),
    ]
    for opt, kw, nstate in cases:
        p, rp = b.asarray(p0), p0.copy()
        st = [b.zeros(n, dtype) for _ in range(nstate)]
        rst = [np.zeros(n, dtype) for _ in range(nstate)]
        for step in range(1, 4):
            g = rand(n, dtype, 100 + step)
            if opt == "sgd":
                b.sgd_update(p, b.asarray(g), st[0] if st else None, first_step=step == 1, **kw)
                NB.sgd_update(rp, g, rst[0] if rst else None, first_step=step == 1, **kw)
            elif opt == "adam":
                extra = {"max_exp_avg_sq": st[2]} if nstate == 3 else {}
                b.adam_update(p, b.asarray(g), st[0], st[1], step=step, **kw, **extra)
                extra = {"max_exp_avg_sq": rst[2]} if nstate == 3 else {}
                NB.adam_update(rp, g, rst[0], rst[1], step=step, **kw, **extra)
            else:
                b.rmsprop_update(
                    p, b.asarray(g), st[0], grad_avg=st[1], momentum_buffer=st[2], **kw
                )
                NB.rmsprop_update(rp, g, rst[0], grad_avg=rst[1], momentum_buffer=rst[2], **kw)
        close(b.to_host(p), rp, dtype)


def test_training_step_never_reads_the_device_and_matches_numpy(gpu, dtype):
    import deepcore as dc
    import deepcore.nn as nn
    from deepcore.train import Trainer

    b, state = gpu
    X = rand((64, 20), dtype, 16)
    y = np.random.default_rng(17).integers(0, 10, 64)
    losses = {}
    for name, backend in (("numpy", NB), ("cupy", b)):
        dc.seed(0)  # same initial weights on both backends
        model = nn.mlp([20, 33, 10], "gelu", backend=backend, dtype=dtype)
        trainer = Trainer(model, "cross_entropy", "adam", lr=1e-2)
        xb, yb = backend.asarray(X), backend.asarray(y)
        state.host_reads = 0
        steps = [trainer.train_step(xb, yb) for _ in range(5)]
        if name == "cupy":
            assert state.host_reads == 0, "a training step read a value back from the device"
            used = {launch[0].split("<")[0] for launch in state.launches}
            assert {"dc_bias_act", "dc_col_sum_act", "dc_softmax_xent", "dc_adam"} <= used
        losses[name] = [float(backend.to_host(s)) for s in steps]
    close(losses["cupy"], losses["numpy"], dtype, terms=64 * 33)


def test_kernels_compile_once_per_source_and_dtype(gpu):
    b, state = gpu
    for dtype in ("float32", "float64", "float32"):
        x = b.asarray(rand((4, 5), dtype, 18))
        b.softmax(x)
        b.activation("relu", x)
        b.mse(x, x)
    sources = sorted((m["names"][0], len(m["names"])) for m in state.modules)
    assert len(state.modules) == 6  # (reduce, elementwise, losses) x (float, double)
    assert all("--std=c++17" in m["options"] for m in state.modules)
    assert any(name.endswith("<double>") for name, _ in sources)


def test_tf32_is_off_by_default_and_opt_in(gpu, monkeypatch):
    b, state = gpu
    from deepcore.backends.cupy import CupyBackend

    a32, a64 = b.asarray(rand((4, 4), "float32", 19)), b.asarray(rand((4, 4), "float64", 19))
    state.math_mode = 5  # someone else's setting on the shared handle
    b.gemm(a32, a32)
    assert state.gemm_math_modes[-1] == 0 and state.math_mode == 5  # restored afterwards
    b.allow_tf32 = True
    b.gemm(a32, a32)
    b.gemm(a64, a64)
    assert state.gemm_math_modes[-2:] == [3, 0]  # TF32 only ever for float32
    monkeypatch.setenv("DEEPCORE_TF32", "1")
    assert CupyBackend(0).allow_tf32 and not CupyBackend(0, allow_tf32=False).allow_tf32
    monkeypatch.setenv("CUPY_TF32", "1")
    monkeypatch.delenv("DEEPCORE_TF32")
    assert not CupyBackend(0).allow_tf32


def test_out_of_memory_names_bytes_device_and_batch_size(gpu):
    from deepcore.backends.cupy import CudaOutOfMemoryError

    b, state = gpu
    state.memory_limit = state.allocated_bytes + 1000
    with pytest.raises(CudaOutOfMemoryError) as err:
        b.empty((512, 1024), "float32")
    msg = str(err.value)
    assert "2,097,152 bytes" in msg and "cuda:0" in msg and "smaller batch size" in msg
    assert isinstance(err.value, MemoryError)
    with pytest.raises(CudaOutOfMemoryError, match="smaller batch size"):
        b.asarray(np.zeros((100, 100)))


def test_second_device_and_mismatched_arrays(dtype):
    with cupy_double.installed(device_count=2) as state:
        from deepcore.backends.cupy import CupyBackend

        b0, b1 = CupyBackend(0), CupyBackend(1)
        assert (b1.name, b1.device) == ("cupy:1", "cuda:1")
        x1 = b1.asarray(rand((3, 5), dtype, 20))
        assert b1.owns(x1) and not b0.owns(x1)
        y1 = b1.softmax(x1)  # launched with device 1 current, as the double checks
        assert y1.device.id == 1 and state.current_device == 0
        with pytest.raises(BackendMismatchError):
            b0.softmax(x1)


def test_mixed_dtypes_are_an_error_not_an_upcast(gpu):
    b, _ = gpu
    x = b.asarray(rand((3, 4), "float32", 21))
    with pytest.raises(DtypeError):
        b.bias_add(x, b.asarray(rand(4, "float64", 22)))


def test_info_and_synchronize(gpu):
    b, state = gpu
    b.zeros((10,), "float32")
    info = b.info()
    assert info["device_name"].startswith("Double GPU") and info["compute_capability"] == "8.0"
    assert info["memory_pool_used_bytes"] >= 40 and info["cuda_runtime"] == "12.4"
    assert {"cuda_driver", "cupy", "memory_pool_total_bytes", "tf32"} <= set(info)
    b.synchronize()
    assert state.synchronized == 1


def test_backend_has_exactly_the_contract_signatures(gpu):
    import inspect

    from deepcore.backends.base import Backend

    b, _ = gpu
    for name, fn in vars(Backend).items():
        if callable(fn) and not name.startswith("_"):
            assert inspect.signature(getattr(type(b), name)) == inspect.signature(fn), name


def test_the_generic_contract_suite_passes_for_cupy_on_the_double():
    """The lead's backend-parametrized contract tests, with the double standing in for CuPy
    (so the registry offers "cupy"): the same command includes cupy once a GPU is there."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    if not (tests / "test_backend_contract.py").exists():
        pytest.skip("no generic contract suite in this checkout")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "cupy_double", "-k", "cupy",
           "-p", "no:cacheprovider", str(tests / "test_backend_contract.py"),
           str(tests / "test_backend_contract_updates.py")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tests.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]


# ---------------------------------------------------------------- issue 17: device, OOM, empty GEMM
def _public_methods(cls):
    """Every public method of a backend class, inherited ones included (not a hand-kept list)."""
    return sorted(n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n)))


def _recipes(b, dtype):
    """One call per public method, with device arrays of `b` (made fresh per call)."""
    r = lambda shape, seed: b.asarray(rand(shape, dtype, seed))  # noqa: E731
    labels = np.array([0, 2, 1, 4, 3, 0], dtype=np.int64)
    opt = dict(lr=0.1)
    return {
        "empty": lambda: b.empty((3, 4), dtype),
        "zeros": lambda: b.zeros((3, 4), dtype),
        "full": lambda: b.full((3, 4), 2.0, dtype),
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
        "step": lambda: b.step(r((3, 4), 11)),
        "argmax": lambda: b.argmax(r((6, 5), 12)),
        "count_correct": lambda: b.count_correct(r((6, 5), 13), labels),
        "all_finite": lambda: b.all_finite(r((3, 4), 14)),
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
        "info": lambda: b.info(),
    }


def _device_ids(result):
    """Device ids of every device array in a (nested) result."""
    if isinstance(result, (list, tuple)):
        return [d for item in result for d in _device_ids(item)]
    if type(result).__module__ == "cupy":
        return [result.device.id]
    return []


@pytest.mark.parametrize("dtype", ["float32", "float64"])
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
