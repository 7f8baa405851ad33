"""The benchmark run: for every workload, dtype and optimizer, train the same steps from the same
weights on every backend and anchor, gate them on their losses, time them, and relate the rows.

A backend that is fast but wrong must not win: its first `gate_steps` losses must match the NumPy
backend's (rtol 1e-3 in float32, 1e-9 in float64) or its row is FAILED and never ranked.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import machine as _machine
from . import anchors as anc
from .machine import blas_threads, machine_info, thread_counts
from .remote import RemoteRunner
from .runners import DeepcoreLoopRunner, DeepcoreRunner, Runner, Skip
from .timing import (
    CupyPoolMemory,
    HostMemory,
    TorchCudaMemory,
    disturbed,
    gemm_rate,
    prepare,
    time_interleaved,
)
from .workloads import DEFAULT_LR, Workload, initial_state, make_batches

GATE_RTOL = {"float32": 1e-3, "float64": 1e-9}
#: Backends whose bf16 rows `--bf16` adds (the CPU ones; the NumPy one is their reference).
BF16_BACKENDS = ("numpy", "numba")
Log = Callable[[str], None]


@dataclass
class BenchConfig:
    """Everything a run needs; built from command-line arguments by `deepcore.bench.config`."""

    workloads: list[Workload]
    backends: list[str]
    optimizers: list[str] = field(default_factory=lambda: ["sgd", "adam"])
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    anchors: list[str] = field(default_factory=lambda: list(anc.ANCHORS))
    budget_s: float = 1.5
    windows: int = 5
    gate_steps: int | None = None
    seed: int = 0
    gemm_size: int = 1024
    threads: int | None = None
    lr: float | None = None
    sklearn_compare: bool = True
    peak: bool = True
    #: Also time the CPU backends with precision="bf16" (rows NAME-bf16, float32 rows only).
    bf16: bool = False


@dataclass
class Spec:
    name: str
    kind: str
    make: Callable[[], Runner]
    memory: Callable[[], Any]


def gate_check(
    losses: list[float], ref: list[float] | None, dtype: str, rtol: float | None = None
) -> tuple[bool, float]:
    """(passed, largest relative deviation) of a runner's gate losses from the reference's;
    `rtol` replaces the dtype's tolerance (bf16 autocast rows)."""
    if ref is None or len(losses) != len(ref) or not all(math.isfinite(v) for v in losses):
        return False, math.inf
    dev = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(losses, ref, strict=True))
    return dev <= (rtol or GATE_RTOL[dtype]), dev


def _specs(
    cfg: BenchConfig, w: Workload, opt: str, dtype: str, state: Any, lr: float, threads: int
) -> list:
    """Backends first (numpy leads, so its losses are the reference), then the anchors.
    PyTorch runs in its own process (deepcore.bench.remote: one libgomp per process)."""
    args = (w, opt, dtype, state, lr)
    specs = []
    for name in sorted(cfg.backends, key=lambda n: n != "numpy"):
        mem = CupyPoolMemory if name.startswith("cupy") else HostMemory
        specs.append(Spec(name, "backend", lambda n=name: DeepcoreRunner(n, *args), mem))
        if "loop" in cfg.anchors:
            loop = lambda n=name: DeepcoreLoopRunner(n, *args)  # noqa: E731
            specs.append(Spec(f"loop-{name}", "loop", loop, mem))
    if cfg.bf16 and dtype == "float32":
        for name in sorted(set(cfg.backends) & set(BF16_BACKENDS), key=lambda n: n != "numpy"):
            make = lambda n=name: DeepcoreRunner(n, *args, precision="bf16")  # noqa: E731
            specs.append(Spec(f"{name}-bf16", "backend", make, HostMemory))
    if "torch" in cfg.anchors:
        specs.append(
            Spec("torch-cpu", "anchor", lambda: RemoteRunner("torch", *args, threads), HostMemory)
        )
        if anc.torch_cuda_available():
            specs.append(
                Spec(
                    "torch-cuda",
                    "anchor",
                    lambda: RemoteRunner("torch", *args, threads, device="cuda"),
                    TorchCudaMemory,
                )
            )
    if "torch-bf16" in cfg.anchors and dtype == "float32":
        bf16 = lambda: RemoteRunner("torch", *args, threads, bf16=True)  # noqa: E731
        specs.append(Spec("torch-cpu-bf16", "anchor", bf16, HostMemory))
    if "jax" in cfg.anchors:
        specs.append(Spec("jax", "anchor", lambda: RemoteRunner("jax", *args, threads), HostMemory))
    if "sklearn" in cfg.anchors:
        specs.append(Spec("sklearn", "anchor", lambda: anc.SklearnRunner(*args), HostMemory))
    if "numpy-loop" in cfg.anchors:
        specs.append(
            Spec(
                "numpy-loop",
                "anchor",
                lambda: anc.NumpyLoopRunner(*args),
                HostMemory,
            )
        )
    return specs


def _row_base(spec: Spec, w: Workload, opt: str, dtype: str) -> dict[str, Any]:
    return {
        "runner": spec.name,
        "kind": spec.kind,
        "workload": w.name,
        "sizes": list(w.sizes),
        "batch": w.batch,
        "optimizer": opt,
        "dtype": dtype,
    }


def _prepare_spec(spec: Spec, w: Workload, batches: list, gate_steps: int) -> tuple[Any, dict]:
    """Build the runner and run its gate steps; memory is the peak over building, the gate and
    one more step (weights, optimizer state, activations, workspaces)."""
    gc.collect()
    probe = spec.memory()
    runner = spec.make()
    m = prepare(runner, batches, gate_steps)
    remote = isinstance(runner, RemoteRunner)
    peak = runner.peak_memory() if remote else probe.peak()
    row = {
        "device": runner.device,
        "gated": runner.gated,
        "gate_rtol": runner.gate_rtol,
        "gate_note": runner.gate_note,
        "losses": m.losses,
        "warmup_s": m.warmup_s,
        "compile_s": m.compile_s,
        "peak_mem_mb": peak / 2**20,
        "mem_method": probe.method,
        "own_process": remote,
        "info": runner.info(),
    }
    return m, row


def _finish_row(row: dict, m: Any) -> None:
    rates = m.window_rates
    row.update(
        samples_per_s=m.samples_per_s,
        step_ms=m.batch / m.samples_per_s * 1e3,
        window_rates=rates,
        steps_per_window=m.steps_per_window,
        spread=(max(rates) - min(rates)) / m.samples_per_s,
        disturbed=disturbed(rates, m.samples_per_s),
    )


def _reference(
    cfg: BenchConfig,
    w: Workload,
    dtype: str,
    opt: str,
    state: Any,
    lr: float,
    batches: list,
    gate_steps: int,
    precision: str = "float32",
) -> list[float]:
    """The NumPy backend's gate losses (trained here only when numpy is not being timed); with
    precision="bf16" its bf16 reference, which the NAME-bf16 rows are gated against."""
    runner = DeepcoreRunner("numpy", w, opt, dtype, state, lr, precision)
    return [runner.loss_step(runner.put(*batches[i % len(batches)])) for i in range(gate_steps)]


def _threads(cfg: BenchConfig, stack: contextlib.ExitStack, log: Log) -> int:
    """Pin every library to the same thread count (ours): --threads, else BLAS's own."""
    n = cfg.threads or blas_threads() or os.cpu_count() or 1
    if cfg.threads:
        try:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(limits=n))
        except ImportError:
            log("note: threadpoolctl is not installed; BLAS threads are not limited")
        try:
            from .. import set_num_threads

            set_num_threads(n)
        except (ImportError, AttributeError):
            pass
    return n  # torch gets n in its own process (deepcore.bench.remote)


def _gemm_rates(cfg: BenchConfig) -> dict[str, float]:
    """GFLOP/s of an n^3 matmul: NumPy's BLAS; when the numba backend is benchmarked, its JIT
    GEMM and MKL (when it runs on it); cuBLAS. The fastest is the machine's rate."""
    rates = {f"cpu-{d}": gemm_rate(cfg.gemm_size, d) for d in cfg.dtypes}
    if "numba" in cfg.backends:
        from ..backends import get_backend

        try:
            be: Any = get_backend("numba")
            mkl = be._mkl()
        except Exception:  # numba unavailable or misconfigured: its rows say why
            be = mkl = None
        for d in cfg.dtypes if be is not None else ():
            rates[f"cpu-{d}-jit"] = gemm_rate(
                cfg.gemm_size, d, matmul=lambda a, b, out: be._jit_gemm(a, 0, b, 0, out, 1, 0)
            )
        if mkl is not None:
            for d in cfg.dtypes:
                rates[f"cpu-{d}-mkl"] = gemm_rate(cfg.gemm_size, d, matmul=mkl.matmul)
    if any(b.startswith("cupy") for b in cfg.backends):
        import cupy

        sync = cupy.cuda.Device().synchronize
        for d in cfg.dtypes:
            rates[f"cuda-{d}"] = gemm_rate(cfg.gemm_size, d, xp=cupy, sync=sync)
    return rates


def _relate(rows: list[dict], gemm: dict[str, float], peak: dict[str, Any] | None) -> None:
    """GFLOP/s, shares of the GEMM rate and of the peak, each row's speed ratio to every anchor
    and a backend row's ratio to its own hand-written loop ('loop')."""
    for r in rows:
        if "samples_per_s" not in r:
            continue
        params = sum(a * b + b for a, b in zip(r["sizes"][:-1], r["sizes"][1:], strict=False))
        r["gflops"] = 6.0 * params * r["samples_per_s"] / 1e9
        dev = "cuda" if str(r.get("device", "cpu")).startswith("cuda") else "cpu"
        key = f"{dev}-{r['dtype']}"  # the machine's rate: the fastest BLAS measured here
        rate = max((v for k, v in gemm.items() if k == key or k.startswith(key + "-")), default=0)
        r["gemm_share"] = r["gflops"] / rate if rate else None
        r["peak_share"] = None
        # bf16 autocast rows run their GEMMs in bf16: their share is of the bf16 peak
        prec = "bf16" if r["runner"].endswith("-bf16") else r["dtype"]
        if peak and dev == "cpu" and peak.get(prec):
            r["peak_share"] = r["gflops"] / peak[prec]
        elif peak and dev == "cuda" and peak.get("gpu") and r["dtype"] == "float32":
            r["peak_share"] = r["gflops"] / peak["gpu"][0]["float32"]
    ranked = [r for r in rows if r.get("status") in ("ok", "not gated")]
    for r in rows:
        r["ratios"] = {}
        if r not in ranked:
            continue
        for a in ranked:
            same = (a["workload"], a["optimizer"], a["dtype"]) == (
                r["workload"],
                r["optimizer"],
                r["dtype"],
            )
            if a["kind"] == "anchor" and same and a is not r:
                r["ratios"][a["runner"]] = r["samples_per_s"] / a["samples_per_s"]
            if r["kind"] == "backend" and same and a["runner"] == "loop-" + r["runner"]:
                r["ratios"]["loop"] = r["samples_per_s"] / a["samples_per_s"]


def run_suite(cfg: BenchConfig, log: Log | None = None) -> dict[str, Any]:
    """Run every row; returns {"rows", "machine", "gemm_gflops", "config", "notes"}."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    notes: list[str] = []
    for a in list(cfg.anchors):
        ok, why = anc.anchor_available(a)
        if not ok:
            notes.append(f"anchor {a} skipped: {why}")
            log(notes[-1])
            cfg.anchors.remove(a)
    rows: list[dict[str, Any]] = []
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    with contextlib.ExitStack() as stack:
        threads = _threads(cfg, stack, log)
        sample_peak = _machine.peak_sample if cfg.peak else lambda: None
        if cfg.peak:
            log("measuring the peak (FMA throughput of one core) ...")
        peaks = [sample_peak()]
        if peaks[0]:
            log(f"  float32 {peaks[0]['float32']:.0f} GFLOP/s = {peaks[0]['formula']}")
        log(f"threads: {threads}; measuring GEMM rate at {cfg.gemm_size}^3 ...")
        gemm_samples = [_gemm_rates(cfg)]
        log("  " + ", ".join(f"{k}: {v:.1f} GFLOP/s" for k, v in gemm_samples[0].items()))
        combos = [(w, d, o) for w in cfg.workloads for d in cfg.dtypes for o in cfg.optimizers]
        skipped: set[str] = set()
        for i, (w, dtype, opt) in enumerate(combos, 1):
            lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[opt]
            gate_steps = cfg.gate_steps or w.gate_steps
            state = initial_state(w, dtype, cfg.seed)
            batches = make_batches(w, dtype, cfg.seed)
            log(f"[{i}/{len(combos)}] {w.name} ({w.shape}, batch {w.batch}) {opt} {dtype}")
            ref = ref16 = None
            if "numpy" not in cfg.backends:
                ref = _reference(cfg, w, dtype, opt, state, lr, batches, gate_steps)
                if cfg.bf16 and dtype == "float32" and "numba" in cfg.backends:
                    ref16 = _reference(cfg, w, dtype, opt, state, lr, batches, gate_steps, "bf16")
            timed: list[tuple[dict, Any]] = []
            for spec in _specs(cfg, w, opt, dtype, state, lr, threads):
                row = _row_base(spec, w, opt, dtype)
                try:
                    m, info = _prepare_spec(spec, w, batches, gate_steps)
                except Skip as exc:
                    if spec.name not in skipped:
                        notes.append(f"{spec.name} skipped: {exc}")
                        log("  " + notes[-1])
                    skipped.add(spec.name)
                    continue
                except Exception as exc:  # one broken runner must not end the run
                    row.update(status="error", error=f"{type(exc).__name__}: {exc}")
                    rows.append(row)
                    log(f"  {spec.name:<15} ERROR {row['error']}")
                    continue
                row.update(info)
                if spec.name == "numpy" and ref is None:
                    ref = row["losses"]
                if spec.name == "numpy-bf16" and ref16 is None:
                    ref16 = row["losses"]
                # bf16 rows: against NumPy's bf16 losses (only GEMM summation orders differ)
                want = ref16 if spec.kind == "backend" and spec.name.endswith("-bf16") else ref
                ok, dev = gate_check(row["losses"], want, dtype, row.get("gate_rtol"))
                row["gate_dev"] = dev
                row["status"] = ("ok" if ok else "FAILED") if row["gated"] else "not gated"
                rows.append(row)
                timed.append((row, m))
            gemm_samples.append(_gemm_rates(cfg))
            peaks.append(sample_peak())
            try:
                time_interleaved([m for _, m in timed], cfg.budget_s, cfg.windows)
            except Exception as exc:
                for row, _ in timed:
                    row.update(status="error", error=f"timing: {type(exc).__name__}: {exc}")
                log(f"  timing failed: {type(exc).__name__}: {exc}")
                continue
            for row, m in timed:
                _finish_row(row, m)
                flag = "" if row["status"] == "ok" else f"  [{row['status']}]"
                log(
                    f"  {row['runner']:<15} {row['samples_per_s']:>12,.0f} samples/s  "
                    f"warm-up {row['warmup_s']:.2f}s  gate dev {row['gate_dev']:.1e}{flag}"
                )
            for _, m in timed:
                if isinstance(m.runner, RemoteRunner):
                    m.runner.close()
            del timed
        gemm_samples.append(_gemm_rates(cfg))
        if "numba" in cfg.backends and any(r["runner"] == "numba" for r in rows):
            from ..backends import get_backend

            notes.append(f"numba backend GEMMs: {get_backend('numba').gemm_info()}")
        # The machine's rate is the best of all samples: under load, the least disturbed one.
        gemm = {k: max(g[k] for g in gemm_samples) for k in gemm_samples[0]}
        peak = max((p for p in peaks if p), key=lambda p: p["float32"], default=None)
        best16 = max(
            (p for p in peaks if p and p.get("bf16")), key=lambda p: p["bf16"], default=None
        )
        if peak and best16:  # each precision's best sample (load only ever slows a probe)
            peak = {**peak, "bf16": best16["bf16"], "bf16_formula": best16.get("bf16_formula")}
        _relate(rows, gemm, peak)
        machine = machine_info()
        machine["threads"] = thread_counts()
        if "torch" in cfg.anchors:
            machine["threads"]["torch"] = threads  # set in its own process
        machine["loadavg_start"] = load_start
    return {
        "rows": rows,
        "machine": machine,
        "gemm_gflops": gemm,
        "gemm_gflops_samples": gemm_samples,
        "gemm_size": cfg.gemm_size,
        "peak_gflops": peak,
        "peak_gflops_samples": [p["float32"] if p else None for p in peaks],
        "notes": notes,
        "config": {
            "workloads": [w.describe() for w in cfg.workloads],
            "backends": cfg.backends,
            "optimizers": cfg.optimizers,
            "dtypes": cfg.dtypes,
            "anchors": cfg.anchors,
            "bf16": cfg.bf16,
            "budget_s": cfg.budget_s,
            "windows": cfg.windows,
            "seed": cfg.seed,
            "threads": threads,
            "lr": cfg.lr or DEFAULT_LR,
            "gate_rtol": GATE_RTOL,
        },
    }
