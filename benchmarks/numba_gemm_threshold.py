"""Check the Numba backend's JIT-or-BLAS choice against per-shape measurements, float32.

Run: python benchmarks/numba_gemm_threshold.py [--rounds 5]

The backend measures one probe shape per size class (deepcore.backends.numba.gemm_choice: m*n*k up
to 64^3 and above) and runs each GEMM on the winner of its class. This script times both paths
through NumbaBackend.gemm (so dispatch overhead counts) at many shapes, squares and the MLP
workloads' own (x @ W.T, d.T @ x, d @ W), in alternating rounds, and prints the medians of
single calls, their JIT/BLAS ratio and the backend's choice, so a shape where the class rule
picks the slower path shows.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

SHAPES = [(n, n, n, "nn") for n in (8, 16, 32, 48, 64, 96, 128, 256, 512, 1024)] + [
    (32, 256, 64, "nt"),  # the digits MLP of `deepcore train` (batch 32)
    (32, 10, 128, "nt"),
    (256, 64, 32, "tn"),
    (128, 512, 784, "nt"),  # mnist
    (512, 784, 128, "tn"),
    (128, 512, 512, "nn"),
    (128, 10, 512, "nt"),
    (512, 4096, 1024, "nt"),  # wide
    (4096, 4096, 512, "tn"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from deepcore.backends import get_backend
    from deepcore.backends.numba.gemm_choice import size_class

    be = get_backend("numba")
    print(f"warm-up (compile or cache load, and the measured choice): "
          f"{be.warmup(('float32',)):.2f} s")  # fmt: skip
    print(f"choice: {be.gemm_info()}")
    choices = be.gemm_choices("float32")
    rng = np.random.default_rng(0)
    print(f"{'m x n x k':>18} {'op':>3} {'jit us':>10} {'blas us':>10} {'jit/blas':>9}  chosen")
    wrong = 0
    for m, n, k, op in SHAPES:
        ta, tb = op[0] == "t", op[1] == "t"
        a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
        b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
        out = np.empty((m, n), np.float32)
        calls = max(3, min(200, int(3e-3 / (2 * m * n * k / 1e11))))
        res: dict[str, list[float]] = {"jit": [], "blas": []}
        for _ in range(args.rounds):
            for impl in ("jit", "blas"):
                be.gemm_impl = impl
                time.sleep(0.12 if impl == "jit" else 0.0)  # OpenBLAS's worker stops spinning
                be.gemm(a, b, ta, tb, out=out)  # wakes the thread pool, untimed
                for _ in range(calls):  # single calls: the median ignores a descheduled core
                    start = time.perf_counter()
                    be.gemm(a, b, ta, tb, out=out)
                    res[impl].append(time.perf_counter() - start)
        be.gemm_impl = "auto"
        tj, tb_ = statistics.median(res["jit"]), statistics.median(res["blas"])
        jit = choices[size_class(m * n * k)].jit
        ok = (tj <= tb_) == jit or abs(tj / tb_ - 1) < 0.05
        wrong += not ok
        print(
            f"{f'{m}x{n}x{k}':>18} {op:>3} {tj * 1e6:10.1f} {tb_ * 1e6:10.1f} {tj / tb_:9.2f}  "
            f"{'jit' if jit else 'blas'}{'' if ok else '  <- the slower one'}"
        )
    print(f"{wrong} of {len(SHAPES)} shapes on the slower path (ties within 5% count as right)")


if __name__ == "__main__":
    main()
