"""Median time of one `Trainer.train_step` of a small MLP, for A/B runs of two checkouts.

Run it with each version's interpreter in turn, several times, on a quiet machine:
    python benchmarks/train_step_time.py --optimizer adam
It prints the step's median over rounds and which deepcore it imported.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import deepcore as dc
from deepcore.train import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizer", default="adam", help="sgd, adam, adamw or rmsprop")
    ap.add_argument("--sizes", default="64,128,10", help="layer sizes")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=2000, help="steps per round")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, sizes[0])).astype("float32")
    y = rng.integers(0, sizes[-1], args.batch)
    dc.seed(0)
    model = dc.nn.mlp(sizes).to(args.backend)
    trainer = Trainer(model, "cross_entropy", args.optimizer, lr=1e-3)
    for _ in range(200):  # compile and settle
        trainer.train_step(x, y)
    times = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(x, y)
        times.append((time.perf_counter() - t0) / args.steps)
    route = getattr(trainer, "step_route", "?")
    print(f"{args.optimizer} {args.sizes} b{args.batch} on {args.backend}: "
          f"{np.median(times) * 1e6:.1f} us/step (route {route}; {dc.__file__})")  # fmt: skip


if __name__ == "__main__":
    main()
