"""Measure where the Numba JIT GEMM stops beating BLAS (np.matmul with out=), float32.

Run: python benchmarks/numba_gemm_threshold.py. Prints per shape the median time of each path
(through NumbaBackend.gemm, so dispatch overhead counts) and the JIT/BLAS ratio; the largest
m*n*k where JIT is faster is the value for deepcore.backends.numba.JIT_GEMM_MAX_WORK.
"""

from __future__ import annotations

import time

import numpy as np


def median_time(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    from deepcore.backends import get_backend

    be = get_backend("numba")
    print(f"warmup (compile or cache load): {be.warmup(('float32',)):.2f} s")
    rng = np.random.default_rng(0)
    shapes = [(n, n, n) for n in (8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024)]
    shapes += [(32, 128, 64), (32, 10, 128), (128, 512, 784), (128, 10, 512)]
    best = 0
    print(f"{'m x n x k':>18} {'jit us':>10} {'blas us':>10} {'jit/blas':>9} {'jit GF/s':>9}")
    for m, n, k in shapes:
        a = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((n, k)).astype(np.float32)
        out = np.empty((m, n), np.float32)
        repeat = max(5, min(300, int(3e8 / (m * n * k))))
        res = {}
        for impl in ("jit", "blas"):
            be.gemm_impl = impl
            be.gemm(a, w, trans_b=True, out=out)
            res[impl] = median_time(
                lambda a=a, w=w, out=out: be.gemm(a, w, trans_b=True, out=out), repeat
            )
        be.gemm_impl = "auto"
        ratio = res["jit"] / res["blas"]
        if ratio < 1.0 and m == n == k:
            best = max(best, m * n * k)
        gf = 2 * m * n * k / res["jit"] / 1e9
        print(
            f"{f'{m}x{n}x{k}':>18} {res['jit'] * 1e6:10.1f} {res['blas'] * 1e6:10.1f} "
            f"{ratio:9.2f} {gf:9.1f}"
        )
    print(f"largest square m*n*k where JIT wins: {best} (= {round(best ** (1 / 3))}^3)")


if __name__ == "__main__":
    main()
