"""Kernel-level benchmarks on every available backend: GEMM (each transpose), the fused linear
epilogue, activation backward + bias gradient, softmax cross-entropy and the optimizer updates.

Each benchmark synchronizes the device inside the timed call (a GPU kernel is not done when it
returns), warms up (JIT compile) before timing, and checks its result against NumPy afterwards:
a fast but wrong kernel fails here instead of winning.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

#: The same switch as benchmarks/conftest.py: real sizes instead of the smoke pass.
FULL = os.environ.get("DEEPCORE_BENCH_FULL", "") not in ("", "0")

#: (m, k, n): op(a) is (m, k), op(b) is (k, n).
GEMM_SHAPES = (
    [(64, 64, 64), (128, 784, 512), (512, 1024, 4096), (1024, 1024, 1024)]
    if FULL
    else [(32, 48, 40), (64, 64, 64)]
)
#: (batch, features) of activations, as in the mnist and wide workloads.
ACT_SHAPES = [(128, 512), (512, 4096)] if FULL else [(32, 64)]
PARAM_SIZES = [512 * 784, 4096 * 4096] if FULL else [4096]
RTOL = {"float32": 1e-4, "float64": 1e-10}


def timed(backend: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
    """fn then a device synchronize, after one untimed warm-up call (compiles JIT kernels)."""

    def call() -> Any:
        out = fn()
        backend.synchronize()
        return out

    call()
    return call


def host(backend: Any, x: Any) -> np.ndarray:
    return backend.to_host(x)


def rand(backend: Any, shape: tuple[int, ...], dtype: str, seed: int = 0) -> Any:
    return backend.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def label(backend: Any, benchmark: Any, group: str, **info: Any) -> None:
    benchmark.group = group
    benchmark.name = backend.name
    benchmark.extra_info.update(backend=backend.name, **info)


@pytest.mark.parametrize("trans", ["NN", "TN", "NT"])
@pytest.mark.parametrize("shape", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm(benchmark: Any, backend: Any, dtype: str, shape: tuple[int, int, int], trans: str):
    m, k, n = shape
    ta, tb = trans[0] == "T", trans[1] == "T"
    a = rand(backend, (k, m) if ta else (m, k), dtype, 1)
    b = rand(backend, (n, k) if tb else (k, n), dtype, 2)
    out = backend.empty((m, n), dtype)
    label(backend, benchmark, f"gemm {m}x{k}x{n} {trans} {dtype}", gflop=2 * m * k * n / 1e9)
    benchmark(timed(backend, lambda: backend.gemm(a, b, trans_a=ta, trans_b=tb, out=out)))
    ha, hb = host(backend, a), host(backend, b)
    ref = (ha.T if ta else ha) @ (hb.T if tb else hb)
    np.testing.assert_allclose(host(backend, out), ref, rtol=RTOL[dtype] * k, atol=RTOL[dtype] * k)


@pytest.mark.parametrize("shape", ACT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_relu(benchmark: Any, backend: Any, dtype: str, shape: tuple[int, int]):
    batch, features = shape
    x = rand(backend, (batch, features), dtype, 1)
    w = rand(backend, (features, features), dtype, 2)
    b = rand(backend, (features,), dtype, 3)
    out = backend.empty((batch, features), dtype)
    label(backend, benchmark, f"linear+relu {batch}x{features}x{features} {dtype}")
    benchmark(timed(backend, lambda: backend.linear(x, w, b, activation="relu", out=out)))
    ref = np.maximum(host(backend, x) @ host(backend, w).T + host(backend, b), 0)
    tol = RTOL[dtype] * features
    np.testing.assert_allclose(host(backend, out), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", ACT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_relu_backward_bias_grad(benchmark: Any, backend: Any, dtype: str, shape: tuple[int, int]):
    dy = rand(backend, shape, dtype, 1)
    y = backend.asarray(np.maximum(host(backend, rand(backend, shape, dtype, 2)), 0))
    dz = backend.empty(shape, dtype)
    db = backend.empty((shape[1],), dtype)
    label(backend, benchmark, f"relu backward+bias grad {shape[0]}x{shape[1]} {dtype}")

    def call() -> Any:
        return backend.activation_backward_bias_grad("relu", dy, y=y, dx_out=dz, db_out=db)

    benchmark(timed(backend, call))
    ref = host(backend, dy) * (host(backend, y) > 0)
    np.testing.assert_allclose(host(backend, dz), ref, rtol=RTOL[dtype])
    tol = RTOL[dtype] * shape[0]
    np.testing.assert_allclose(host(backend, db), ref.sum(axis=0), rtol=tol, atol=tol)


@pytest.mark.parametrize("batch,classes", [(128, 10), (512, 1024)] if FULL else [(32, 10)])
def test_softmax_cross_entropy(benchmark: Any, backend: Any, dtype: str, batch: int, classes: int):
    logits = rand(backend, (batch, classes), dtype, 1)
    labels_host = np.random.default_rng(2).integers(0, classes, batch)
    labels = backend.asarray(labels_host)
    grad = backend.empty((batch, classes), dtype)
    label(backend, benchmark, f"softmax cross-entropy {batch}x{classes} {dtype}")
    loss, _ = benchmark(
        timed(backend, lambda: backend.softmax_cross_entropy(logits, labels, grad_out=grad))
    )
    z = host(backend, logits).astype(np.float64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    ref = float(np.mean(lse - z[np.arange(batch), labels_host]))
    assert float(host(backend, loss)) == pytest.approx(ref, rel=RTOL[dtype] * 10)


@pytest.mark.parametrize("size", PARAM_SIZES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_update(benchmark: Any, backend: Any, dtype: str, optimizer: str, size: int):
    p = rand(backend, (size,), dtype, 1)
    g = rand(backend, (size,), dtype, 2)
    s1, s2 = backend.zeros((size,), dtype), backend.zeros((size,), dtype)
    label(backend, benchmark, f"{optimizer} update {size} {dtype}")
    if optimizer == "sgd":

        def call() -> None:
            backend.sgd_update(p, g, s1, lr=1e-3, momentum=0.9)

    else:

        def call() -> None:
            backend.adam_update(p, g, s1, s2, step=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)

    before = host(backend, p)
    benchmark(timed(backend, call))
    after = host(backend, p)
    assert np.isfinite(after).all() and not np.array_equal(before, after)
