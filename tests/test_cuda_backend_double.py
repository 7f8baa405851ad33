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
