"""Clock and memory: warm-up, synchronized timed windows with a median, the machine's GEMM rate
measured in the same run, and peak-memory probes that do not lie about BLAS.

tracemalloc only sees Python allocations (NumPy's data buffers from its allocator, but not BLAS
workspaces or torch's own allocator), so host memory is the process's resident set size (RSS):
the peak over the row, from Linux's VmHWM after resetting it, or the RSS difference from psutil /
getrusage when that is unavailable. GPU rows use the CuPy pool's bytes or torch's peak counter.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .runners import Runner


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class HostMemory:
    """Peak resident memory added while a row runs (bytes)."""

    def __init__(self) -> None:
        self.method = "rss-peak (VmHWM)"
        self.base = 0
        try:  # writing 5 resets the peak to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.method = ""
        rss = _status_kb("VmRSS")
        if not self.method or rss is None:
            self.method, self.base = self._fallback_rss()
        else:
            self.base = rss * 1024

    @staticmethod
    def _fallback_rss() -> tuple[str, int]:
        try:
            import psutil

            return "rss-delta (psutil)", int(psutil.Process().memory_info().rss)
        except ImportError:
            import resource

            return "maxrss-delta (getrusage)", resource.getrusage(
                resource.RUSAGE_SELF
            ).ru_maxrss * 1024

    def peak(self) -> int:
        if self.method.startswith("rss-peak"):
            hwm = _status_kb("VmHWM")
            return max(0, (hwm or 0) * 1024 - self.base)
        _, now = self._fallback_rss()
        return max(0, now - self.base)


class CupyPoolMemory:
    """Bytes the CuPy default memory pool grew by (it caches freed blocks, so this is its peak)."""

    method = "cupy pool"

    def __init__(self) -> None:
        import cupy

        self.pool = cupy.get_default_memory_pool()
        self.pool.free_all_blocks()
        self.base = int(self.pool.total_bytes())

    def peak(self) -> int:
        return max(0, int(self.pool.total_bytes()) - self.base)


class TorchCudaMemory:
    """torch.cuda's peak allocated bytes since the row began."""

    method = "torch.cuda peak"

    def __init__(self) -> None:
        import torch

        self.torch = torch
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self.base = int(torch.cuda.memory_allocated())

    def peak(self) -> int:
        return max(0, int(self.torch.cuda.max_memory_allocated()) - self.base)


@dataclass
class Measurement:
    """What timing one runner on one row produced."""

    losses: list[float] = field(default_factory=list)
    warmup_s: float = 0.0
    compile_s: float = 0.0
    samples_per_s: float = 0.0
    window_rates: list[float] = field(default_factory=list)
    steps_per_window: int = 0
    step_s: float = 0.0
    error: str = ""


def measure(
    runner: Runner,
    host_batches: list[tuple[np.ndarray, np.ndarray]],
    *,
    gate_steps: int,
    budget_s: float,
    windows: int,
    min_windows: int = 3,
) -> Measurement:
    """Warm up, train `gate_steps` steps recording losses (the correctness gate; the first step
    is the JIT/compile step and is reported as warm-up), then time windows of steps.

    Each window: synchronize, read the clock, run steps, synchronize, read the clock. Windows
    last about budget_s / windows (at least one step); at least `min_windows` are timed. The
    throughput is the median window's samples per second.
    """
    m = Measurement()
    m.compile_s = runner.warmup()
    batches = [runner.put(x, y) for x, y in host_batches]
    runner.synchronize()
    step_times = []
    for i in range(max(1, gate_steps)):
        t = time.perf_counter()
        m.losses.append(runner.loss_step(batches[i % len(batches)]))
        runner.synchronize()
        step_times.append(time.perf_counter() - t)
    m.warmup_s = m.compile_s + step_times[0] if m.compile_s else step_times[0]
    # One untimed step through the timed path (it may differ from loss_step).
    t = time.perf_counter()
    runner.step(batches[0])
    runner.synchronize()
    step_times.append(time.perf_counter() - t)
    est = statistics.median(step_times[1:])
    per_window = budget_s / max(1, windows)
    m.steps_per_window = spw = max(1, int(per_window / max(est, 1e-9)))
    n_windows = max(min_windows, min(windows, math.ceil(budget_s / (spw * est))))
    batch = len(host_batches[0][1])
    k = 0
    for _ in range(n_windows):
        runner.synchronize()
        t = time.perf_counter()
        for _ in range(spw):
            runner.step(batches[k % len(batches)])
            k += 1
        runner.synchronize()
        dt = time.perf_counter() - t
        m.window_rates.append(spw * batch / dt)
    m.samples_per_s = statistics.median(m.window_rates)
    m.step_s = batch / m.samples_per_s
    return m


def gemm_rate(
    size: int, dtype: str, *, repeats: int = 7, xp: Any = np, sync: Callable[[], None] | None = None
) -> float:
    """Median GFLOP/s of `size`^3 matmuls (2 size^3 FLOPs each) with `xp` (numpy or cupy)."""
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((size, size)).astype(dtype))
    b = xp.asarray(rng.standard_normal((size, size)).astype(dtype))
    out = xp.empty((size, size), dtype=dtype)
    sync = sync or (lambda: None)
    xp.matmul(a, b, out=out)  # warm-up (thread pool start, cuBLAS handle)
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        xp.matmul(a, b, out=out)
        sync()
        times.append(time.perf_counter() - t)
    return 2.0 * size**3 / statistics.median(times) / 1e9
