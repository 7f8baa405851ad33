"""Data-parallel scaling on one machine: 1 rank x 2 threads against 2 ranks x 1 thread.

Run: python benchmarks/distributed_scaling.py [--workloads mnist,wide] [--backend numba]
         [--rounds 3] [--steps mnist=40,wide=4] [--optimizer sgd]

Per workload (deepcore.bench's shapes and batch sizes; the batch is the global batch), four
contenders train the same model on the same seeded synthetic batches, interleaved round by round
(median over rounds):
  1x2        one process, 2 threads, the ordinary Trainer (its fastest route);
  2x1        mpiexec -n 2, 1 thread each, deepcore.distributed (Iallreduce overlapped);
  2x1 block  the same with blocking Allreduce after backward (overlap=False);
  1x1        one process, 1 thread: for context (2x1 against 1x1 is the data-parallel speed-up
             with no thread pool in either, which a loaded machine distorts less).
Each process times `--steps` steps after two warm-up steps (JIT compiles). For the 2-rank runs
rank 0 also reports where the all-reduce time went (GradientAllReduce.stats): the exposed
all-reduce (waiting after backward, or the blocking call), packing/unpacking the buckets, and
the bare all-reduce of the same buckets with no compute around it, measured in the same
process; hidden = bare - exposed (overlap mode). mpiexec comes from PyPI's mpich wheel.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

DEFAULT_STEPS = {"small": 200, "mnist": 40, "wide": 4}


def worker(args: argparse.Namespace) -> None:
    """One process of one contender; rank 0 writes a JSON line to args.out."""
    import deepcore as dc
    from deepcore import distributed as dist
    from deepcore.bench.workloads import WORKLOADS
    from deepcore.train import Trainer, make_optimizer

    w = WORKLOADS[args.workload]
    comm = dist.init()
    steps = args.steps
    rng = np.random.default_rng(0)
    n = w.batch * (steps + 2)
    X = rng.standard_normal((n, w.sizes[0])).astype("float32")
    y = rng.integers(0, w.sizes[-1], n)
    dc.seed(0)
    model = dc.nn.mlp(list(w.sizes), "relu", backend=args.backend, dtype="float32")
    opt = make_optimizer(args.optimizer, model.parameters(), 0.01)
    trainer = Trainer(model, "cross_entropy", opt, seed=0)
    dist.data_parallel(trainer, comm, overlap=not args.blocking)
    warm = 2 * w.batch  # two steps, untimed: JIT compiles and first-touch allocations
    trainer.fit((X[:warm], y[:warm]), epochs=1, batch_size=w.batch, progress=False, shuffle=False)
    hook = trainer.grad_hooks[0] if trainer.grad_hooks else None
    if hook is not None:
        old = hook.stats
        hook.stats = type(old)(buckets=old.buckets, bytes_per_step=old.bytes_per_step)
    comm.barrier()
    t0 = time.perf_counter()
    trainer.fit((X[warm:], y[warm:]), epochs=1, batch_size=w.batch, progress=False, shuffle=False)
    comm.barrier()
    seconds = time.perf_counter() - t0
    row = {"samples_per_s": steps * w.batch / seconds, "step_ms": 1e3 * seconds / steps}
    if hook is not None:
        s = hook.stats
        row.update(
            exposed_ms=1e3 * s.exposed / s.steps,
            pack_unpack_ms=1e3 * (s.pack + s.unpack + s.launch) / s.steps,
            bytes=s.bytes_per_step,
            buckets=s.buckets,
            bare_ms=1e3 * bare_allreduce(hook, comm, repeats=max(3, min(steps, 10))),
        )
    if comm.rank == 0:
        with open(args.out, "w") as f:
            json.dump(row, f)


def bare_allreduce(hook, comm, repeats: int) -> float:  # noqa: ANN001
    """Median seconds of a blocking Allreduce of all the hook's buckets, nothing else running."""
    from mpi4py import MPI

    times = []
    for _ in range(repeats):
        comm.barrier()
        t0 = time.perf_counter()
        for b in hook._buckets:
            comm.mpi.Allreduce(MPI.IN_PLACE, b.buffer, op=MPI.SUM)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(workload: str, ranks: int, threads: int, blocking: bool, a: argparse.Namespace) -> dict:
    from deepcore.distributed import find_mpiexec

    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--workload",
        workload,
        "--out",
        out,
        "--backend",
        a.backend,
        "--optimizer",
        a.optimizer,
        "--steps",
        str(a.steps[workload]),
    ]
    cmd += ["--blocking"] if blocking else []  # fmt: skip
    if ranks > 1:
        cmd = [find_mpiexec() or "mpiexec", "-n", str(ranks), *cmd]
    subprocess.run(cmd, env=env, check=True, timeout=1800)
    with open(out) as f:
        row = json.load(f)
    os.unlink(out)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="mnist,wide")
    p.add_argument("--backend", default="numba")
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", default="", help="per workload, e.g. mnist=40,wide=4")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--blocking", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        a.steps = int(a.steps)
        return worker(a)
    a.steps = {**DEFAULT_STEPS, **{k: int(v) for k, v in
               (kv.split("=") for kv in a.steps.split(",") if kv)}}  # fmt: skip
    contenders = [("1x2", 1, 2, False), ("1x1", 1, 1, False), ("2x1", 2, 1, False),
                  ("2x1 block", 2, 1, True)]  # fmt: skip
    load = os.getloadavg()[0]
    print(f"backend {a.backend}, {a.optimizer}, float32, {os.cpu_count()} CPUs, "
          f"{a.rounds} interleaved rounds, load average {load:.1f} at start")  # fmt: skip
    for wl in a.workloads.split(","):
        rows: dict[str, list[dict]] = {c[0]: [] for c in contenders}
        for _ in range(a.rounds):
            for name, ranks, threads, blocking in contenders:
                rows[name].append(run(wl, ranks, threads, blocking, a))
        base = statistics.median(r["samples_per_s"] for r in rows["1x2"])
        print(f"\n{wl}: {a.steps[wl]} timed steps per run; load average now "
              f"{os.getloadavg()[0]:.1f}")  # fmt: skip
        print(
            f"{'contender':10s} {'samples/s':>10s} {'vs 1x2':>7s} {'step ms':>8s} "
            f"{'exposed':>8s} {'pack':>6s} {'bare AR':>8s} {'AR share':>8s} {'hidden':>7s}"
        )
        for name, _, _, _ in contenders:
            med = {k: statistics.median(r[k] for r in rows[name]) for k in rows[name][0]}
            line = (f"{name:10s} {med['samples_per_s']:10,.0f} {med['samples_per_s'] / base:7.0%} "
                    f"{med['step_ms']:8.1f}")  # fmt: skip
            if "exposed_ms" in med:
                share = (med["exposed_ms"] + med["pack_unpack_ms"]) / med["step_ms"]
                hidden = max(0.0, med["bare_ms"] - med["exposed_ms"])
                line += (f" {med['exposed_ms']:8.1f} {med['pack_unpack_ms']:6.1f} "
                         f"{med['bare_ms']:8.1f} {share:8.1%} {hidden:7.1f}")  # fmt: skip
                line += f"   ({med['bytes'] / 2**20:.1f} MiB in {med['buckets']:.0f} buckets)"
            print(line)


if __name__ == "__main__":
    main()
