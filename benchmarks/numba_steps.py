"""Whole training steps per workload: PyTorch (same threads, in its own process), the NumPy
backend, the Numba backend (its `auto` GEMM choice, layer by layer and fused; and with every
GEMM forced onto NumPy's BLAS), and the step's eight GEMMs alone on the JIT kernel and on BLAS
(the floor of any step built on that GEMM), interleaved in one run; prints medians and ratios.
With MKL installed (deepcore[mkl]) the step on MKL and MKL's GEMM floor are added.

Run: python benchmarks/numba_steps.py [--workloads small,mnist,wide] [--optimizer sgd]
         [--threads 2] [--rounds 15] [--alloc]

Every contender trains from the same initial weights on the same batches (SGD momentum 0.9 or
Adam, float32, the runners of deepcore.bench). Rounds interleave the contenders: each round times
one block of steps per contender (block ~30 ms, after a 0.25 s pause and one untimed step so
that no other contender's thread pool is still spinning), and the reported figure is the median
over rounds of the per-step time, so machine-wide load drifts hit every contender alike. The
sgemm rate (np.matmul float32 1024^3, out=) is sampled in the same rounds for the wide goal.
--alloc adds a tracemalloc check of the numba fused step: net and peak bytes over 100 steps
after warm-up (NumPy's data buffers are traced by tracemalloc).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc
from typing import Any

import numpy as np


def _layers(state: dict[str, np.ndarray]) -> list[int]:
    return sorted({int(k.split(".")[0]) for k in state})


class NumbaStep:
    """fused_mlp_step called directly with preallocated grads and momentum/Adam state."""

    def __init__(self, be: Any, w: Any, optimizer: str, dtype: str, state: Any, lr: float,
                 path: str, blas: str = "") -> None:  # fmt: skip
        """blas "" keeps the backend's GEMM choice; "numpy" or "mkl" forces BLAS GEMMs."""
        self.be, self.path, self.optimizer, self.lr = be, path, optimizer, lr
        self.gemm_impl = "blas" if blas else be.gemm_impl
        self.blas = blas or be.blas
        idx = _layers(state)
        self.W = [np.array(state[f"{i}.weight"], dtype=dtype) for i in idx]
        self.b = [np.array(state[f"{i}.bias"], dtype=dtype) for i in idx]
        self.gW = [np.empty_like(v) for v in self.W]
        self.gb = [np.empty_like(v) for v in self.b]
        self.acts = tuple(["relu"] * (len(idx) - 1) + ["identity"])
        params = self.W + self.b
        nstate = 1 if optimizer == "sgd" else 2
        self.state = tuple([np.zeros_like(p) for p in params] for _ in range(nstate))
        self.t = 0
        self.name = f"numba-{path}" + (f"-{blas}" if blas else "")

    def put(self, x: np.ndarray, y: np.ndarray) -> Any:
        return x, y

    def step(self, batch: Any) -> Any:
        x, y = batch
        be = self.be
        old = be.step_path, be.blas, be.gemm_impl
        be.step_path, be.blas, be.gemm_impl = self.path, self.blas, self.gemm_impl
        self.t += 1
        try:
            if self.optimizer == "sgd":
                return be.fused_mlp_step(
                    self.W, self.b, self.gW, self.gb, self.acts, x, y, "sgd", lr=self.lr,
                    momentum=0.9, first_step=self.t == 1, state=self.state,
                )  # fmt: skip
            return be.fused_mlp_step(
                self.W, self.b, self.gW, self.gb, self.acts, x, y, "adam", lr=self.lr,
                step=self.t, state=self.state,
            )  # fmt: skip
        finally:
            be.step_path, be.blas, be.gemm_impl = old

    def loss_step(self, batch: Any) -> float:
        return float(self.step(batch))


class GemmFloor:
    """Only the step's GEMMs (forward x @ W.T, backward d.T @ a and d @ W), same shapes,
    preallocated outputs: a lower bound on any training step built on this GEMM."""

    def __init__(self, w: Any, state: Any, dtype: str, name: str, mm: Any) -> None:
        self.name, self.mm = name, mm
        idx = _layers(state)
        self.W = [np.array(state[f"{i}.weight"], dtype=dtype) for i in idx]
        m = w.batch
        self.a = [np.zeros((m, W.shape[0]), dtype) for W in self.W]
        self.g = [np.empty_like(W) for W in self.W]

    def put(self, x: np.ndarray, y: np.ndarray) -> Any:
        return x

    def step(self, x: Any) -> Any:
        ins, mm = [x, *self.a[:-1]], self.mm
        for W, a_in, out in zip(self.W, ins, self.a, strict=True):
            mm(a_in, W.T, out)
        for l in range(len(self.W) - 1, -1, -1):
            d = self.a[l]
            mm(d.T, ins[l], self.g[l])
            if l > 0:
                mm(d, self.W[l], self.a[l - 1])

    def loss_step(self, x: Any) -> float:
        self.step(x)
        return float("nan")


def _time_block(fn: Any, n: int, settle: float = 0.0) -> float:
    """Seconds per call of n calls. With settle: first sleep (the previous contender's thread
    pools stop spinning: OpenBLAS spins ~0.1 s after a call, OpenMP pools a few ms) and run one
    untimed call (this contender's pools wake), so each block sees its own steady state."""
    if settle:
        time.sleep(settle)
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def _cycler(runner: Any, batches: list[Any]) -> Any:
    state = {"i": 0}

    def step() -> None:
        state["i"] += 1
        runner.step(batches[state["i"] % len(batches)])

    return step


def _remote_block(runner: Any, batches: list[Any]) -> Any:
    """The block function of a runner in its own process: it clocks its own steps."""
    state = {"i": 0}

    def block(n: int, settle: float = 0.0) -> float:
        if settle:
            time.sleep(settle)
            runner.step(batches[state["i"] % len(batches)])
        state["i"] += n
        return runner.timed_window(state["i"] - n, n) / n

    return block


def bench_workload(name: str, optimizer: str, threads: int, rounds: int, alloc: bool) -> None:
    from deepcore.backends import get_backend
    from deepcore.bench.remote import RemoteRunner
    from deepcore.bench.runners import DeepcoreRunner
    from deepcore.bench.workloads import DEFAULT_LR, WORKLOADS, initial_state, make_batches

    w = WORKLOADS[name]
    dtype = "float32"
    state = initial_state(w, dtype, 0)
    lr = DEFAULT_LR[optimizer]
    nb = get_backend("numba")

    def jit_mm(a: Any, b: Any, out: Any) -> Any:  # a.T / b.T views as the step passes them
        ta, tb = a.flags.f_contiguous and a.ndim == 2, b.flags.f_contiguous and b.ndim == 2
        return nb._jit_gemm(a.T if ta else a, ta, b.T if tb else b, tb, out, 1.0, 0.0)

    runners = [
        RemoteRunner("torch", w, optimizer, dtype, state, lr, threads),  # own process
        DeepcoreRunner("numpy", w, optimizer, dtype, state, lr),
        NumbaStep(nb, w, optimizer, dtype, state, lr, "layered"),
        NumbaStep(nb, w, optimizer, dtype, state, lr, "auto"),
        NumbaStep(nb, w, optimizer, dtype, state, lr, "auto", "numpy"),
        GemmFloor(w, state, dtype, "jit-gemms-only", jit_mm),
        GemmFloor(w, state, dtype, "blas-gemms-only", lambda a, b, out: np.matmul(a, b, out=out)),
    ]
    mkl = nb._mkl()
    if mkl is not None:  # the same step on MKL, and MKL's floor
        runners.insert(5, NumbaStep(nb, w, optimizer, dtype, state, lr, "auto", "mkl"))
        runners.append(GemmFloor(w, state, dtype, "mkl-gemms-only", mkl.matmul))
    host = make_batches(w, dtype, seed=0)
    # Same maths: the first steps' losses agree (loose: BLAS vs JIT summation order).
    losses = []
    for r in runners:
        b = [r.put(x, y) for x, y in host]
        losses.append([r.loss_step(b[i % len(b)]) for i in range(3)])
    ref = np.array(losses[1])
    for r, ls in zip(runners, losses, strict=True):
        if isinstance(r, GemmFloor):
            continue
        if not np.allclose(ls, ref, rtol=2e-3, atol=1e-4):
            print(f"  WARNING {r.name} losses {ls} differ from numpy {ref.tolist()}")
    fns = []  # block functions: (steps, settle seconds) -> seconds per step
    for r in runners:
        b = [r.put(x, y) for x, y in host]
        if isinstance(r, RemoteRunner):
            fns.append(_remote_block(r, b))
            continue
        fn = _cycler(r, b)
        for _ in range(3):
            fn()
        fns.append(lambda n, settle=0.0, fn=fn: _time_block(fn, n, settle))
    # Block size: ~30 ms of the slowest contender's step.
    probe = statistics.median(f(5) for f in fns)
    n = max(1, min(2000, int(0.03 / probe)))
    names = [r.name for r in runners]
    if name == "wide":
        a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
        c = np.empty_like(a)
        fns.append(lambda n, settle=0.0: _time_block(lambda: np.matmul(a, a, out=c), n, settle))
        names.append("sgemm1024")
        fns.append(lambda n, settle=0.0: _time_block(lambda: jit_mm(a, a, c), n, settle))
        names.append("jit-sgemm1024")
        if mkl is not None:
            fns.append(lambda n, settle=0.0: _time_block(lambda: mkl.matmul(a, a, c), n, settle))
            names.append("mkl-sgemm1024")
    times: dict[str, list[float]] = {k: [] for k in names}
    load0 = os.getloadavg()[0]
    for i in range(rounds):
        order = list(range(len(fns)))
        if i % 2:
            order.reverse()
        for j in order:
            times[names[j]].append(fns[j](5 if "sgemm1024" in names[j] else n, 0.25))
    load1 = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n== {name} {w.shape} batch {w.batch} {optimizer} float32, threads={threads} "
          f"torch in its own process, {rounds} rounds x {n} steps, "
          f"load {load0:.2f}->{load1:.2f}")  # fmt: skip
    base = med["torch-cpu"]
    for k in names:
        if "sgemm1024" in k:
            continue
        q = [t / base for t in times[k]]
        print(f"  {k:15s} median {med[k] * 1e6:10.1f} us   torch/this {base / med[k]:6.2f}x"
              f"   numpy/this {med['numpy'] / med[k]:6.2f}x   (IQR of time ratio to torch "
              f"{np.percentile(q, 25):.2f}-{np.percentile(q, 75):.2f})")  # fmt: skip
    for fl_name in ("jit-gemms-only", "blas-gemms-only", "mkl-gemms-only"):
        if fl_name in med:
            floor = med[fl_name]
            print(f"  floor ({fl_name}): the GEMMs alone take {floor / base * 100:.0f}% of torch's "
                  f"step, so a step on this GEMM is at most {base / floor:.2f}x torch "
                  f"(numba-auto spends {floor / med['numba-auto'] * 100:.0f}% of its step in "
                  "them)")  # fmt: skip
    if name == "wide":
        fl = w.flops_per_step
        steps = [k for k in names if "sgemm1024" not in k]
        for ref in [k for k in names if "sgemm1024" in k]:
            rate = 2 * 1024**3 / med[ref]
            print(
                f"  {ref}: {rate / 1e9:.1f} GFLOP/s; step GFLOP/s / this rate: "
                + ", ".join(f"{k} {fl / med[k] / rate * 100:.0f}%" for k in steps)
            )
    if alloc:
        r = runners[3]  # numba-auto
        b = [r.put(x, y) for x, y in host]
        fn = _cycler(r, b)
        for _ in range(5):
            fn()
        tracemalloc.start()
        snap0 = tracemalloc.take_snapshot()
        cur0, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        keep = [r.step(b[i % len(b)]) for i in range(100)]  # losses kept: count them
        cur1, peak = tracemalloc.get_traced_memory()
        snap1 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        diff = snap1.compare_to(snap0, "filename")
        numpy_domain = tracemalloc.DomainFilter(True, 389047)  # NumPy's data-buffer domain
        npd = list(snap1.filter_traces([numpy_domain]).statistics("filename"))
        cnt = sum(d.count_diff for d in diff)
        print(f"  alloc (numba fused, 100 steps, the 100 returned losses kept alive): net "
              f"{cur1 - cur0} B in {cnt} blocks; peak above start {peak - cur0} B; numpy data "
              f"blocks alive {sum(s.count for s in npd)} ({sum(s.size for s in npd)} B); "
              f"loss objects {len(keep)}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", default="small,mnist,wide")
    ap.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--alloc", action="store_true")
    args = ap.parse_args()
    from deepcore import threads

    threads.set_num_threads(args.threads)
    from deepcore.backends import get_backend

    nb = get_backend("numba")
    print(f"numba warmup {nb.warmup(('float32',)):.2f} s; load {os.getloadavg()}; "
          f"{nb.info()}")  # fmt: skip
    for name in args.workloads.split(","):
        bench_workload(name, args.optimizer, args.threads, args.rounds, args.alloc)


if __name__ == "__main__":
    main()
