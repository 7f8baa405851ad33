"""Whole training steps (forward, loss, backward, optimizer update) per workload on every
available backend, beside PyTorch on the CPU and the plain NumPy loop, in one group per
workload/optimizer/dtype. small and mnist by default; DEEPCORE_BENCH_FULL=1 adds wide.

The runners are the ones `deepcore bench` times (deepcore.bench.runners / anchors); this suite
gives the same steps pytest-benchmark's statistics, storage and comparison.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import pytest

from deepcore.bench.anchors import NumpyLoopRunner, TorchRunner
from deepcore.bench.runners import DeepcoreRunner
from deepcore.bench.workloads import DEFAULT_LR, WORKLOADS, initial_state, make_batches

#: The same switch as benchmarks/conftest.py: real sizes instead of the smoke pass.
FULL = os.environ.get("DEEPCORE_BENCH_FULL", "") not in ("", "0")

NAMES = ["small", "mnist", "wide"] if FULL else ["small", "mnist"]


def _bench_step(benchmark: Any, runner: Any, workload: str, optimizer: str, dtype: str) -> None:
    w = runner.workload
    batches = [runner.put(x, y) for x, y in make_batches(w, dtype, seed=0)]
    loss = runner.loss_step(batches[0])  # warm-up: JIT compile, thread pools, first allocation
    assert loss == loss and loss > 0
    benchmark.group = f"train step {workload} {optimizer} {dtype}"
    benchmark.name = runner.name
    benchmark.extra_info.update(runner=runner.name, samples_per_call=w.batch, sizes=list(w.sizes))
    it = iter(range(1 << 62))

    def step() -> None:
        runner.step(batches[next(it) % len(batches)])
        runner.synchronize()

    benchmark(step)


def _args(workload: str, optimizer: str, dtype: str) -> tuple:
    w = WORKLOADS[workload]
    return w, optimizer, dtype, initial_state(w, dtype, 0), DEFAULT_LR[optimizer]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("workload", NAMES)
def test_step_deepcore(benchmark: Any, backend: Any, dtype: str, workload: str, optimizer: str):
    runner = DeepcoreRunner(backend.name, *_args(workload, optimizer, dtype))
    _bench_step(benchmark, runner, workload, optimizer, dtype)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("workload", NAMES)
def test_step_numpy_loop(benchmark: Any, dtype: str, workload: str, optimizer: str):
    runner = NumpyLoopRunner(*_args(workload, optimizer, dtype))
    _bench_step(benchmark, runner, workload, optimizer, dtype)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("workload", NAMES)
def test_step_torch_cpu(benchmark: Any, dtype: str, workload: str, optimizer: str):
    runner = TorchRunner(*_args(workload, optimizer, dtype))
    _bench_step(benchmark, runner, workload, optimizer, dtype)
