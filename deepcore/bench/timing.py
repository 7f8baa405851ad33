"""Clock and memory: warm-up, synchronized timed windows with a median, the machine's GEMM rate
measured in the same run, and peak-memory probes that do not lie about BLAS.

tracemalloc only sees Python allocations (NumPy's data buffers from its allocator, but not BLAS
workspaces or torch's own allocator), so host memory is the process's resident set size (RSS):
the peak over the row, from Linux's VmHWM after resetting it, or the RSS difference from psutil /
getrusage when that is unavailable. GPU rows use the CuPy pool's bytes or torch's peak counter.
"""

from __future__ import annotations

import functools
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

    runner: Runner
    batches: list[Any]
    losses: list[float] = field(default_factory=list)
    warmup_s: float = 0.0
    compile_s: float = 0.0
    est_step_s: float = 0.0
    samples_per_s: float = 0.0
    window_rates: list[float] = field(default_factory=list)
    steps_per_window: int = 1
    n_windows: int = 0
    steps_done: int = 0
    batch: int = 0


def prepare(
    runner: Runner, host_batches: list[tuple[np.ndarray, np.ndarray]], gate_steps: int
) -> Measurement:
    """Warm up (`runner.warmup()`, the JIT compile), move the batches to the device, and train
    `gate_steps` steps recording their losses for the correctness gate. The first step's time
    (plus the compile seconds) is the warm-up; the others estimate the step time."""
    m = Measurement(runner, [], batch=len(host_batches[0][1]))
    m.compile_s = runner.warmup()
    m.batches = [runner.put(x, y) for x, y in host_batches]
    runner.synchronize()
    times = []
    for i in range(max(1, gate_steps)):
        t = time.perf_counter()
        m.losses.append(runner.loss_step(m.batches[i % len(m.batches)]))
        runner.synchronize()
        times.append(time.perf_counter() - t)
    m.warmup_s = m.compile_s + times[0]
    t = time.perf_counter()  # one untimed step through the timed path (it may differ)
    runner.step(m.batches[0])
    runner.synchronize()
    times.append(time.perf_counter() - t)
    m.est_step_s = statistics.median(times[1:])
    return m


def plan(m: Measurement, budget_s: float, windows: int, min_windows: int = 3) -> None:
    """Steps per window (a window lasts about budget_s / windows, at least one step) and the
    number of windows (at least `min_windows`, fewer than `windows` for very slow steps)."""
    est = max(m.est_step_s, 1e-9)
    m.steps_per_window = max(1, int(budget_s / max(1, windows) / est))
    m.n_windows = max(min_windows, min(windows, math.ceil(budget_s / (m.steps_per_window * est))))


#: Pause before each window. Thread pools keep spinning after their work is done (OpenBLAS's
#: workers ~0.1 s, 2^28 cycles), and a spinning pool of the previous runner would steal cores
#: from this one; after the pause one untimed step wakes this runner's own pools.
SETTLE_S = 0.2


def clock_steps(runner: Runner, batches: list[Any], first: int, steps: int) -> float:
    """Seconds for `steps` synchronized steps over `batches` from index `first` (cycling)."""
    runner.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        runner.step(batches[(first + i) % len(batches)])
    runner.synchronize()
    return time.perf_counter() - t


def window(m: Measurement, settle_s: float = SETTLE_S) -> None:
    """One timed window: settle, synchronize, clock, steps, synchronize, clock."""
    runner, batches = m.runner, m.batches
    if settle_s > 0:
        time.sleep(settle_s)
        if m.est_step_s < settle_s:  # slow steps wake their pools within the window anyway
            runner.step(batches[m.steps_done % len(batches)])
            m.steps_done += 1
            runner.synchronize()
    remote = getattr(runner, "timed_window", None)  # clocked in the runner's own process
    clock = remote if remote is not None else functools.partial(clock_steps, runner, batches)
    dt = clock(m.steps_done, m.steps_per_window)
    m.steps_done += m.steps_per_window
    m.window_rates.append(m.steps_per_window * m.batch / dt)


#: A window whose rate is this far from the row's median (either way) marks the row disturbed.
DISTURBED = 1.5


def disturbed(rates: list[float], median: float) -> bool:
    """Whether a window ran far from the median (the VM stalled, or another process ran)."""
    return any(r * DISTURBED < median or r > DISTURBED * median for r in rates)


def time_interleaved(ms: list[Measurement], budget_s: float, windows: int) -> None:
    """Time every runner of a row in turns, one window each per round, so a change in the
    machine's load during the row hits all of them alike; throughput is each one's median."""
    for m in ms:
        plan(m, budget_s, windows)
    for r in range(max((m.n_windows for m in ms), default=0)):
        for m in ms:
            if r < m.n_windows:
                window(m)
    for m in ms:
        m.samples_per_s = statistics.median(m.window_rates)


def gemm_rate(
    size: int,
    dtype: str,
    *,
    repeats: int = 7,
    xp: Any = np,
    sync: Callable[[], None] | None = None,
    matmul: Callable[[Any, Any, Any], Any] | None = None,
) -> float:
    """Median GFLOP/s of `size`^3 matmuls (2 size^3 FLOPs each) with `xp` (numpy or cupy), or
    with `matmul(a, b, out)` when given (another BLAS on NumPy arrays)."""
    rng = np.random.default_rng(0)
    a = xp.asarray(rng.standard_normal((size, size)).astype(dtype))
    b = xp.asarray(rng.standard_normal((size, size)).astype(dtype))
    out = xp.empty((size, size), dtype=dtype)
    sync = sync or (lambda: None)
    mm = matmul or (lambda a, b, out: xp.matmul(a, b, out=out))
    time.sleep(SETTLE_S)  # the previous runner's BLAS threads stop spinning
    mm(a, b, out)  # warm-up (thread pool start, cuBLAS handle)
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        mm(a, b, out)
        sync()
        times.append(time.perf_counter() - t)
    return 2.0 * size**3 / statistics.median(times) / 1e9
