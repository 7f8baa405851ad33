"""Interleaved A/B of the numba backend's layered step: `Trainer.train_step` with settings
toggled per variant, one process, rounds taking turns; per-step min / p10 / median.

    python benchmarks/layered_ab.py --optimizer adam --rounds 15
    python benchmarks/layered_ab.py --variants '[{"gemm_update_min": 0, "HEAD_MAX_WORK": 0}, {}]'

A variant maps backend attributes (e.g. gemm_update_min) or layered.py constants (upper case,
e.g. HEAD_MAX_WORK) to values; the default variants are the layered step before issue 16's
changes (every weight updated in its GEMM epilogue, no output-layer call), the update change
alone, and the current defaults. On a loaded machine read the min (the least disturbed step).
"""

from __future__ import annotations

import argparse
import json
import time

import deepcore as dc
import deepcore.backends.numba.layered as layered
from deepcore.bench.runners import optimizer_config
from deepcore.bench.workloads import WORKLOADS, initial_state, make_batches
from deepcore.train import Trainer

DEFAULT = [
    {"gemm_update_min": 0, "HEAD_MAX_WORK": 0},
    {"gemm_update_min": 1 << 20, "HEAD_MAX_WORK": 0},
    {"gemm_update_min": 1 << 20, "HEAD_MAX_WORK": 1 << 21},
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    p.add_argument("--workload", default="mnist")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=60, help="steps a round")
    p.add_argument("--variants", default=json.dumps(DEFAULT))
    a = p.parse_args()
    w = WORKLOADS[a.workload]
    be = dc.get_backend("numba")
    be.warmup(["float32"])
    state = initial_state(w, "float32", 0)
    batches = [(be.asarray(x), be.asarray(y)) for x, y in make_batches(w, "float32", 0)]
    cfg = optimizer_config(a.optimizer, 0.01 if a.optimizer == "sgd" else 1e-3)
    runs = []
    for v in json.loads(a.variants):
        m = dc.nn.mlp(list(w.sizes), "relu", backend=be, dtype="float32")
        m.load_state_dict(state)
        opt = (dc.optim.SGD if a.optimizer == "sgd" else dc.optim.Adam)(m.parameters(), **cfg)
        runs.append((v, Trainer(m, "cross_entropy", opt), []))

    def apply(v: dict) -> None:
        for k, val in v.items():
            setattr(layered if k.isupper() else be, k, val)

    for v, tr, _ in runs:  # warm-up
        apply(v)
        for i in range(a.steps):
            tr.train_step(*batches[i % len(batches)])
    for _ in range(a.rounds):
        for v, tr, ts in runs:
            apply(v)
            time.sleep(0.05)
            for i in range(a.steps):
                t = time.perf_counter()
                tr.train_step(*batches[i % len(batches)])
                ts.append(1e3 * (time.perf_counter() - t))
    q = lambda ts, f: sorted(ts)[int(f * (len(ts) - 1))]  # noqa: E731
    base = [q(runs[0][2], f) for f in (0.0, 0.1, 0.5)]
    for v, tr, ts in runs:
        qs = [q(ts, f) for f in (0.0, 0.1, 0.5)]
        ratios = " ".join(f"{x / b:.3f}" for x, b in zip(qs, base, strict=True))
        print(f"{json.dumps(v):55s} min/p10/median ms {qs[0]:.3f} {qs[1]:.3f} {qs[2]:.3f}"
              f"  ratios {ratios}  route {tr.step_route}")  # fmt: skip


if __name__ == "__main__":
    main()
