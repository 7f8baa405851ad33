"""The self-test's timings: the backend's float32 GEMM and one training step per workload, read
against the speed goals of BENCHMARKS.md that one backend can check on its own.

A first look, not a benchmark: warm-up (JIT, kernel compiles) outside the clock, the device
synchronized around it, the median of a few windows. `deepcore bench` is the measurement of
record (interleaved runners, PyTorch and other anchors, correctness gates).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .backends.base import Backend

#: BENCHMARKS.md's default workloads: (layer sizes, batch); tests check deepcore.bench agrees.
WORKLOADS: dict[str, tuple[tuple[int, ...], int]] = {
    "small": ((64, 128, 10), 32),
    "mnist": ((784, 512, 512, 10), 128),
    "wide": ((1024, 4096, 4096, 1024), 512),
}
#: GEMM sizes timed (n for n^3): BENCHMARKS.md's 1024^3 reference, plus 4096^3 on a GPU.
GEMM_SIZES = {"cpu": (1024,), "gpu": (1024, 4096)}
#: BENCHMARKS.md: "CuPy: wide >= 70% of cuBLAS sgemm"; "CuPy: mnist/wide >= 0.9x PyTorch CUDA".
GPU_WIDE_SHARE_OF_GEMM = 0.70
GPU_VS_TORCH_CUDA = 0.9


def params(sizes: tuple[int, ...]) -> int:
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


def _median_window(be: Backend, run: Callable[[], Any], budget: float, windows: int = 5) -> float:
    """Seconds per call: the median over `windows` windows of at least one call each, sized so
    all windows take about `budget` seconds. The device is synchronized around every clock; a
    first call (compiles, lazy choices) stays outside it."""
    run()
    be.synchronize()
    t0 = time.perf_counter()
    run()
    be.synchronize()
    once = max(time.perf_counter() - t0, 1e-6)
    if once * windows > 2 * budget:  # a slow call (wide on a CPU): three single-call windows
        windows = 3
    calls = max(1, int(budget / windows / once))
    samples = []
    for _ in range(windows):
        be.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            run()
        be.synchronize()
        samples.append((time.perf_counter() - t0) / calls)
    return statistics.median(samples)


def time_gemm(be: Backend, budget: float) -> list[dict[str, Any]]:
    """float32 GEMM rate at 1024^3 (BENCHMARKS.md's reference size), and 4096^3 on a GPU."""
    sizes = GEMM_SIZES["cpu" if be.device == "cpu" else "gpu"]
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        a = be.asarray(rng.standard_normal((n, n)).astype(np.float32))
        b = be.asarray(rng.standard_normal((n, n)).astype(np.float32))
        out = be.empty((n, n), "float32")
        sec = _median_window(be, lambda a=a, b=b, out=out: be.gemm(a, b, out=out), budget)
        rows.append({"m": n, "k": n, "n": n, "dtype": "float32", "seconds": sec,
                     "gflops": 2.0 * n**3 / sec / 1e9})  # fmt: skip
    return rows


def time_step(be: Backend, sizes: tuple[int, ...], batch: int, budget: float) -> dict[str, Any]:
    """One SGD(momentum 0.9) training step of a ReLU MLP in float32, as `deepcore bench` runs."""
    import deepcore as dc
    from deepcore.nn import mlp
    from deepcore.train import Trainer

    rng = np.random.default_rng(0)
    X = be.asarray(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    y = be.asarray(rng.integers(0, sizes[-1], batch))
    dc.seed(0)
    trainer = Trainer(mlp(list(sizes), "relu", backend=be, dtype="float32"), "cross_entropy",
                      "sgd", lr=0.01)  # fmt: skip
    warm = getattr(be, "warmup", None)
    t0 = time.perf_counter()
    if warm is not None:
        warm(dtypes=("float32",))
    trainer.train_step(X, y)
    be.synchronize()
    warmup = time.perf_counter() - t0
    sec = _median_window(be, lambda: trainer.train_step(X, y), budget)
    flops = 6.0 * params(sizes) * batch
    return {"seconds_per_step": sec, "samples_per_second": batch / sec,
            "gflops": flops / sec / 1e9, "warmup_seconds": warmup}  # fmt: skip


def _torch_cuda_step(sizes: tuple[int, ...], batch: int, budget: float) -> float | None:
    """PyTorch's step on CUDA for the same workload, when torch with CUDA is installed."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    layers: list[Any] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    X = torch.randn(batch, sizes[0], device="cuda")
    y = torch.randint(0, sizes[-1], (batch,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(X), y).backward()
        opt.step()

    class _Sync:
        def synchronize(self) -> None:
            torch.cuda.synchronize()

    step()
    return _median_window(_Sync(), step, budget)  # type: ignore[arg-type]


def measure(be: Backend, budget: float = 1.0, say: Callable[..., None] = print) -> dict[str, Any]:
    """GEMM and step timings plus the goals they answer, as one JSON-ready dict."""
    warm = getattr(be, "warmup", None)
    if warm is not None:  # JIT compiles (numba) stay out of every clock
        warm(dtypes=("float32",))
    gemm = time_gemm(be, budget)
    best = max(r["gflops"] for r in gemm)
    for r in gemm:
        say(f"  time float32 gemm {r['m']}^3{'':17s} {r['seconds'] * 1e3:9.3f} ms  "
            f"{r['gflops']:8.1f} GFLOP/s")  # fmt: skip
    steps, goals = [], []
    on_gpu = be.device.startswith("cuda")
    for name, (sizes, batch) in WORKLOADS.items():
        row = {"workload": name, "sizes": list(sizes), "batch": batch, "optimizer": "sgd",
               **time_step(be, sizes, batch, budget)}  # fmt: skip
        row["percent_of_gemm"] = 100.0 * row["gflops"] / best
        torch_sec = _torch_cuda_step(sizes, batch, budget) if on_gpu else None
        row["torch_cuda_seconds_per_step"] = torch_sec
        steps.append(row)
        say(f"  time step {name:<6s} {'-'.join(map(str, sizes)):<20s} batch {batch:<4d}"
            f"{row['seconds_per_step'] * 1e3:9.3f} ms  {row['gflops']:8.1f} GFLOP/s "
            f"({row['percent_of_gemm']:.0f}% of gemm)")  # fmt: skip
        if on_gpu and name == "wide":
            share = row["gflops"] / best
            goals.append({"goal": "CuPy: wide >= 70% of cuBLAS sgemm", "measured": share,
                          "met": share >= GPU_WIDE_SHARE_OF_GEMM})  # fmt: skip
        if on_gpu and name in ("mnist", "wide"):
            ratio = None if torch_sec is None else torch_sec / row["seconds_per_step"]
            goals.append({
                "goal": f"CuPy: {name} >= 0.9x PyTorch CUDA", "measured": ratio,
                "met": None if ratio is None else ratio >= GPU_VS_TORCH_CUDA,
                "note": "torch with CUDA not installed" if ratio is None else "",
            })  # fmt: skip
    if not on_gpu:
        goals.append({"goal": "CPU goals (numba >= numpy, x PyTorch, % of sgemm)",
                      "measured": None, "met": None,
                      "note": "need interleaved anchors: run `deepcore bench`"})  # fmt: skip
    for g in goals:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
        measured = "" if g["measured"] is None else f" (measured {g['measured']:.2f})"
        say(f"  goal {g['goal']}: {verdict}{measured} {g.get('note', '')}".rstrip())
    return {"gemm": gemm, "gemm_best_gflops": best, "steps": steps, "goals": goals,
            "method": "median of 5 windows after warm-up, device synchronized; "
                      "not interleaved with anchors (deepcore bench is)"}  # fmt: skip
