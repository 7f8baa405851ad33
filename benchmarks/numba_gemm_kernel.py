"""The JIT GEMM kernels on their own against BLAS (np.matmul with out=), float32, one run.

Run: python benchmarks/numba_gemm_kernel.py [--rounds 9]

Goals (issue 3): the JIT GEMM >= 40% of BLAS at 1024^3, and faster than BLAS at 64^3 and below.
Small sizes call `small_gemm` (no packing; what the fused whole-step path uses), 1024^3 calls
the packed, parallel `gemm_parallel`; both with preallocated outputs and C-contiguous inputs,
so the numbers are kernel time plus the bare call overhead. Contenders alternate round by
round, with a pause before each block so no thread pool is still spinning from the other.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def _block(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    time.sleep(0.2)
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    from deepcore.backends import get_backend

    be = get_backend("numba")
    k = be._k  # the kernel modules, loaded by the backend (numba imported lazily)
    rng = np.random.default_rng(0)
    print(f"{'size':>6}  {'BLAS':>10}  {'JIT':>10}  JIT/BLAS speed  kernel")
    for size in (32, 64, 1024):
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        c_blas = np.empty((size, size), np.float32)
        c_jit = np.zeros((size, size), np.float32)
        if size <= 64:
            name = "small_gemm"

            # 32 and 64 are whole register blocks (SMR x SNR), so no edge loop runs and every
            # output is written, not accumulated: no zero-fill needed between calls.
            assert size % k.step.SMR == 0 and size % k.step.SNR == 0

            def jit(a=a, b=b, c=c_jit) -> None:
                k.step.small_gemm(a, False, b, c)

            be._run(k.step.small_gemm, ("bench-small",), a, False, b, c_jit)
            n = 2000
        else:
            name = "gemm_parallel (packed)"
            sa, sb = k.gemm.packed_sizes(size, size, size)
            pa, pb = np.empty(sa, np.float32), np.empty(sb, np.float32)
            one, zero = np.float32(1), np.float32(0)

            def jit(a=a, b=b, c=c_jit, pa=pa, pb=pb, one=one, zero=zero) -> None:
                k.gemm.gemm_parallel(a, b, c, False, False, one, zero, pa, pb)

            be._run(k.gemm.gemm_parallel, ("bench-par",), a, b, c_jit, False, False, one,
                    zero, pa, pb)  # fmt: skip
            n = 3

        def blas(a=a, b=b, c=c_blas) -> None:
            np.matmul(a, b, out=c)

        jit()
        blas()
        np.testing.assert_allclose(c_jit, c_blas, rtol=1e-3, atol=1e-3 * size)
        t_blas, t_jit = [], []
        for _ in range(args.rounds):
            t_blas.append(_block(blas, n))
            t_jit.append(_block(jit, n))
        mb, mj = statistics.median(t_blas), statistics.median(t_jit)
        unit, scale = ("us", 1e6) if size <= 64 else ("ms", 1e3)
        print(
            f"{size:>5}^3  {mb * scale:8.2f}{unit}  {mj * scale:8.2f}{unit}  "
            f"{mb / mj:13.2f}x  {name}"
        )


if __name__ == "__main__":
    main()
