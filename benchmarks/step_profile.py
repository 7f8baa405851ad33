"""Where a training step's time goes: its GEMMs and everything else, per backend and workload.

    python benchmarks/step_profile.py                          # numpy and numba; mnist, wide; sgd
    python benchmarks/step_profile.py --backends numba --workloads wide --optimizer adam --rounds 15

Method. Each round, interleaved across backends, times (synchronized, one clock read a phase):
- `step`: `Trainer.train_step(x, y)`, what `deepcore bench` times (a backend's fused whole-step
  path when it has one);
- the same step written layer by layer through the public API, one phase at a time: forward
  `model(x)`, `loss_fn(out, y)`, `model.backward(loss_fn.backward())`, `opt.step()` +
  `opt.zero_grad()` (`update`);
- the step's GEMMs alone, back to back through `backend.gemm` on the same shapes and transposes
  (forward x @ W.T; backward dW = d.T @ x and dX = d @ W except for the first layer).
Medians over the steps (`--stat min`: the least disturbed step of each phase, for a loaded
machine). `fwd other` = forward - its GEMMs (bias, activation, Python);
`bwd other` = backward - its GEMMs (activation gradient, bias gradient, Python); `step - GEMMs`
is all the fused step spends outside the GEMMs. `--json PATH` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

import deepcore as dc
from deepcore.bench.runners import optimizer_config
from deepcore.bench.workloads import WORKLOADS, initial_state, make_batches
from deepcore.train import Trainer

PHASES = ("step", "forward", "loss", "backward", "update", "gemm_fwd", "gemm_bwd")


class Profile:
    """One backend and workload: the model, a trainer, a layered loop and the GEMM operands."""

    def __init__(self, backend: str, workload: str, optimizer: str, dtype: str) -> None:
        w = WORKLOADS[workload]
        self.be = be = dc.get_backend(backend)
        if hasattr(be, "warmup"):
            be.warmup([dtype])
        state = initial_state(w, dtype, 0)
        self.batches = [(be.asarray(x), be.asarray(y)) for x, y in make_batches(w, dtype, 0)]
        self.name, self.workload = be.name, w
        cfg = optimizer_config(optimizer, 0.01 if optimizer == "sgd" else 1e-3)
        opt_cls = dc.optim.SGD if optimizer == "sgd" else dc.optim.Adam
        models = []
        for _ in range(2):  # one trained by the Trainer, one by the layered loop
            m = dc.nn.mlp(list(w.sizes), "relu", backend=be, dtype=dtype)
            m.load_state_dict(state)
            models.append((m, opt_cls(m.parameters(), **cfg)))
        self.trainer = Trainer(models[0][0], "cross_entropy", models[0][1])
        self.model, self.opt = models[1]
        self.loss_fn = dc.nn.CrossEntropyLoss()
        rng = np.random.default_rng(0)
        arr = lambda *s: be.asarray(rng.standard_normal(s).astype(dtype))  # noqa: E731
        m_ = w.batch
        self.fwd, self.bwd = [], []  # (a, b, trans_a, trans_b, out)
        for i, (k, n) in enumerate(zip(w.sizes[:-1], w.sizes[1:], strict=False)):
            x, wt, d = arr(m_, k), arr(n, k), arr(m_, n)
            self.fwd.append((x, wt, False, True, arr(m_, n)))
            self.bwd.append((d, x, True, False, arr(n, k)))
            if i:
                self.bwd.append((d, wt, False, False, arr(m_, k)))
        self.times: dict[str, list[float]] = {p: [] for p in PHASES}
        self.i = 0
        self.steps = 1  # steps a round (set from a timed warm-up round)

    def _clock(self, phase: str, t0: float) -> float:
        self.be.synchronize()
        t = time.perf_counter()
        self.times[phase].append(t - t0)
        return t

    def round(self, steps: int) -> None:
        """`steps` of each kind, each phase's time a step recorded."""
        be = self.be
        for _ in range(steps):
            x, y = self.batches[self.i % len(self.batches)]
            self.i += 1
            be.synchronize()
            t = time.perf_counter()
            self.trainer.train_step(x, y)
            t = self._clock("step", t)
            out = self.model(x)
            t = self._clock("forward", t)
            self.loss_fn(out, y)
            t = self._clock("loss", t)
            self.model.backward(self.loss_fn.backward())
            t = self._clock("backward", t)
            self.opt.step()
            self.opt.zero_grad()
            t = self._clock("update", t)
            for a, b, ta, tb, o in self.fwd:
                be.gemm(a, b, trans_a=ta, trans_b=tb, out=o)
            t = self._clock("gemm_fwd", t)
            for a, b, ta, tb, o in self.bwd:
                be.gemm(a, b, trans_a=ta, trans_b=tb, out=o)
            self._clock("gemm_bwd", t)

    def row(self, stat: str = "median") -> dict[str, Any]:
        pick = min if stat == "min" else statistics.median
        ms = {p: 1e3 * pick(v) for p, v in self.times.items()}
        gemm = ms["gemm_fwd"] + ms["gemm_bwd"]
        layered = ms["forward"] + ms["loss"] + ms["backward"] + ms["update"]
        flops = self.workload.flops_per_step
        return {
            "backend": self.name,
            "workload": self.workload.name,
            **{f"{p}_ms": v for p, v in ms.items()},
            "gemm_ms": gemm,
            "layered_ms": layered,
            "fwd_other_ms": ms["forward"] - ms["gemm_fwd"],
            "bwd_other_ms": ms["backward"] - ms["gemm_bwd"],
            "step_minus_gemm_ms": ms["step"] - gemm,
            "gemm_share": gemm / ms["step"],
            "gemm_gflops": flops / gemm / 1e6,
            "samples": len(self.times["step"]),
            "stat": stat,
        }


COLUMNS = (
    ("backend", "backend", "{}"),
    ("workload", "workload", "{}"),
    ("step ms", "step_ms", "{:.2f}"),
    ("GEMMs ms", "gemm_ms", "{:.2f}"),
    ("GEMM share", "gemm_share", "{:.0%}"),
    ("step - GEMMs", "step_minus_gemm_ms", "{:.2f}"),
    ("layered ms", "layered_ms", "{:.2f}"),
    ("fwd GEMMs", "gemm_fwd_ms", "{:.2f}"),
    ("fwd other", "fwd_other_ms", "{:.2f}"),
    ("loss", "loss_ms", "{:.2f}"),
    ("bwd GEMMs", "gemm_bwd_ms", "{:.2f}"),
    ("bwd other", "bwd_other_ms", "{:.2f}"),
    ("update", "update_ms", "{:.2f}"),
    ("GEMM GFLOP/s", "gemm_gflops", "{:.0f}"),
)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|"
    body = ["| " + " | ".join(f.format(r[k]) for _, k, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="numpy,numba")
    p.add_argument("--workloads", default="mnist,wide")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (median reported)")
    p.add_argument("--seconds", type=float, default=0.3, help="about this long a round")
    p.add_argument("--stat", default="median", choices=("median", "min"),
                   help="per phase: the median step, or the fastest (least disturbed)")  # fmt: skip
    p.add_argument("--json", default=None, help="write the rows as JSON")
    args = p.parse_args(argv)
    rows = []
    for wname in args.workloads.split(","):
        if wname not in WORKLOADS:
            p.error(f"unknown workload {wname!r}; expected one of {', '.join(WORKLOADS)}")
        profs = [Profile(b, wname, args.optimizer, args.dtype) for b in args.backends.split(",")]
        for prof in profs:  # warm-up, and a step count for a round of ~--seconds
            t = time.perf_counter()
            prof.round(1)
            prof.steps = max(1, int(args.seconds / (time.perf_counter() - t)))
            prof.times = {k: [] for k in PHASES}
        for _ in range(args.rounds):
            for prof in profs:
                time.sleep(0.2)  # the previous backend's BLAS threads stop spinning
                prof.round(prof.steps)
        rows += [prof.row(args.stat) for prof in profs]
        print(f"{wname}: done", file=sys.stderr)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
