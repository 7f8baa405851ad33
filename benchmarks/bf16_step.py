"""bf16 mixed precision on the CPU: the numba bf16 GEMM at 2048^3 against the machine's bf16
peak and PyTorch's bf16 matmul, and whole training steps (wide, mnist) of deepcore numba bf16
against PyTorch `torch.autocast("cpu", dtype=torch.bfloat16)` and deepcore's float32 step.

Run: python benchmarks/bf16_step.py [--what peak,gemm,steps] [--workloads wide,mnist]
         [--threads 2] [--rounds 9]

All contenders run in this one process, interleaved: each round times one block of each (a
pause first so no other thread pool is still spinning); the figures are medians over rounds, so
load drifting over the run hits every contender alike. The peak is deepcore.machine's (as
`deepcore info` states it): the clock from a dependent FMA chain, the bf16 rate from 16
independent `vdpbf16ps` chains held in registers on one thread; peak = threads x instructions
a cycle x 32 bf16 pairs x 2 flops x clock.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

WORKLOADS = {"wide": ((1024, 4096, 4096, 1024), 512), "mnist": ((784, 512, 512, 10), 128)}


def _median_rounds(contenders: dict[str, Any], rounds: int, pause: float = 0.2) -> dict:
    """{name: [seconds per call, one sample a round]} with contenders interleaved per round."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, (fn, reps) in contenders.items():
            time.sleep(pause)
            fn()
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - t) / reps)
    return times


# ------------------------------------------------------------------ the peak
def measure_peak(threads: int, samples: int = 5) -> dict[str, float]:
    """deepcore.machine's estimate (as `deepcore info` states it), the best of a few samples,
    with `threads` cores."""
    from deepcore import machine

    best = max((machine.measure_fma() for _ in range(samples)), key=lambda f: f["bf16_per_s"])
    pk = machine.peak_from(best, threads, machine.cpu_flags())
    return {"clock_ghz": pk["clock_ghz"], "vdpbf16ps_per_cycle": best["bf16_per_s"] / (
        pk["clock_ghz"] * 1e9), "peak_gflops": pk["bf16"]}  # fmt: skip


# ------------------------------------------------------------------ the GEMM
def bench_gemm(n: int, rounds: int) -> dict[str, list[float]]:
    import torch

    import deepcore as dc

    be = dc.get_backend("numba")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    ta, tb = torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()
    tc = torch.empty((n, n), dtype=torch.bfloat16)
    contenders = {
        "deepcore numba bf16": (lambda: be.gemm_bf16(a, b, out=c), 3),
        "torch.matmul bf16": (lambda: torch.matmul(ta, tb, out=tc), 3),
        "deepcore numba float32": (lambda: be.gemm(a, b, out=c), 2),
    }
    return _median_rounds(contenders, rounds)


# ------------------------------------------------------------------ training steps
def bench_steps(name: str, rounds: int) -> dict[str, list[float]]:
    import torch

    import deepcore as dc
    from deepcore.train import Trainer

    sizes, batch = WORKLOADS[name]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    dc.seed(0)
    proto = dc.nn.mlp(list(sizes), "relu", backend="numba")
    state = proto.state_dict()

    def deepcore_step(precision: str) -> Any:
        m = dc.nn.mlp(list(sizes), "relu", backend="numba")
        m.load_state_dict(state)
        opt = dc.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)  # as torch's below
        t = Trainer(m, "cross_entropy", opt, precision=precision)
        return lambda: t.train_step(X, y)

    def torch_step(bf16: bool) -> Any:
        layers: list[Any] = []
        for i in range(len(sizes) - 1):
            lin = torch.nn.Linear(sizes[i], sizes[i + 1])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(state[f"{2 * i}.weight"]))
                lin.bias.copy_(torch.from_numpy(state[f"{2 * i}.bias"]))
            layers += [lin, torch.nn.ReLU()]
        net = torch.nn.Sequential(*layers[:-1])
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(net(xt), yt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    reps = 3 if name == "wide" else 20
    contenders = {
        "deepcore numba bf16": (deepcore_step("bf16"), reps),
        "torch bf16 autocast": (torch_step(True), reps),
        "deepcore numba float32": (deepcore_step("float32"), reps),
        "torch float32": (torch_step(False), reps),
    }
    return _median_rounds(contenders, rounds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", default="peak,gemm,steps")
    p.add_argument("--workloads", default="wide,mnist")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--n", type=int, default=2048, help="GEMM size (n x n x n)")
    args = p.parse_args()
    import torch

    import deepcore as dc

    dc.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    what = args.what.split(",")
    peak = None
    print(f"# {args.threads} threads, {args.rounds} interleaved rounds, medians (min in brackets)")
    if "peak" in what:
        pk = measure_peak(args.threads)
        peak = pk["peak_gflops"]
        print(f"clock {pk['clock_ghz']:.2f} GHz | vdpbf16ps {pk['vdpbf16ps_per_cycle']:.2f}/cycle "
              f"| bf16 peak {peak:.0f} GFLOP/s ({args.threads} threads)")  # fmt: skip
    if "gemm" in what:
        flops = 2.0 * args.n**3
        res = bench_gemm(args.n, args.rounds)
        base = statistics.median(res["torch.matmul bf16"])
        for name, ts in res.items():
            med = statistics.median(ts)
            rate = flops / med / 1e9
            extra = f" | {rate / peak:.0%} of peak" if peak else ""
            print(f"gemm {args.n}^3 {name:24s} {rate:7.0f} GFLOP/s [{flops / min(ts) / 1e9:.0f}]"
                  f" | x torch bf16 {base / med:.2f}{extra}")  # fmt: skip
    if "steps" in what:
        for wl in args.workloads.split(","):
            res = bench_steps(wl, args.rounds)
            batch = WORKLOADS[wl][1]
            med = {k: statistics.median(v) for k, v in res.items()}
            for name, ts in res.items():
                print(f"{wl:6s} {name:24s} {batch / med[name]:9.0f} samples/s "
                      f"[{batch / min(ts):.0f}] | x torch bf16 "
                      f"{med['torch bf16 autocast'] / med[name]:.2f} | x deepcore float32 "
                      f"{med['deepcore numba float32'] / med[name]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
