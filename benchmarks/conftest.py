"""pytest-benchmark suites for deepcore: kernels and whole training steps on every available
backend, grouped so the backends of one kernel and shape share a table.

    pytest                                   # smoke pass: each benchmark runs once, small sizes
    pytest benchmarks --benchmark-enable --benchmark-only --benchmark-group-by=group
    DEEPCORE_BENCH_FULL=1 pytest benchmarks --benchmark-enable --benchmark-only \
        --benchmark-group-by=group --benchmark-json=bench.json       # full sizes, float64 too

The machine section of pytest-benchmark's JSON gains a "deepcore" entry: backends and why any is
unavailable, BLAS and thread pools, thread counts, GPU and library versions.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

import deepcore

#: Set DEEPCORE_BENCH_FULL=1 for the real sizes (1024^3 GEMMs, the wide workload, float64).
FULL = os.environ.get("DEEPCORE_BENCH_FULL", "") not in ("", "0")
_AVAILABILITY = deepcore.available_backends()
AVAILABLE = [name for name, a in _AVAILABILITY.items() if a.available]
DTYPES = ["float32", "float64"] if FULL else ["float32"]


def backend_params() -> list[Any]:
    """Every registered backend; the unavailable ones skipped with their reason."""
    return [
        pytest.param(
            name,
            id=name,
            marks=() if a.available else (pytest.mark.skip(reason=f"{name}: {a.reason}"),),
        )
        for name, a in _AVAILABILITY.items()
    ]


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> Any:
    """A Backend instance, once per available backend."""
    return deepcore.get_backend(request.param)


@pytest.fixture(params=DTYPES)
def dtype(request: pytest.FixtureRequest) -> str:
    return request.param


def pytest_benchmark_update_machine_info(config: Any, machine_info: dict[str, Any]) -> None:
    """Record what deepcore ran on beside pytest-benchmark's own CPU facts."""
    from deepcore.bench.machine import blas_pools, gpu_info, thread_counts, versions

    machine_info["deepcore"] = {
        "full": FULL,
        "backends": {
            n: {"available": a.available, "reason": a.reason} for n, a in _AVAILABILITY.items()
        },
        "threadpools": blas_pools(),
        "threads": thread_counts(),
        "gpu": gpu_info(),
        "versions": versions(),
    }
