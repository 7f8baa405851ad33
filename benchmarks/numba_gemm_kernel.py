"""The JIT GEMM kernels on their own against BLAS (np.matmul with out=), float32, one run.

Run: python benchmarks/numba_gemm_kernel.py [--rounds 9] [--sizes 32,64,1024]

Goals (issue 3): the JIT GEMM >= 40% of BLAS at 1024^3, and faster than BLAS at 64^3 and below.
Every size runs the register-blocked kernel of deepcore.kernels.numba.gemm (one thread up to
64^3, all threads above, as the backend dispatches it); sizes up to 64^3 also run `small_gemm`,
the unpacked kernel of the compiled whole-step path. Operands are C-contiguous, outputs
preallocated, so the numbers are kernel time plus the bare call overhead. Contenders alternate
round by round, each block after a pause so that no thread pool is still spinning from another.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np


def _block(fn: Callable[[], object], n: int) -> float:
    time.sleep(0.15)
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sizes", default="32,64,1024")
    args = parser.parse_args()

    from deepcore import threads
    from deepcore.backends import get_backend

    be = get_backend("numba")
    k = be._k  # the kernel modules, loaded by the backend (numba imported lazily)
    g = k.gemm
    nthreads = threads.get_num_threads()
    print(f"{k.simd.VECTOR_BYTES * 8}-bit vectors, {g.MR} x {g.nr_of('float32')} register block,"
          f" {nthreads} threads; BLAS = np.matmul")  # fmt: skip
    rng = np.random.default_rng(0)
    one, zero = np.float32(1), np.float32(0)
    ep0 = (g.no_epilogue("float32"), g.no_activation("float32"))
    print(f"{'size':>7}  {'BLAS':>10}  {'JIT':>10}  {'JIT/BLAS speed':>14}  kernel")
    for size in (int(s) for s in args.sizes.split(",")):
        a = rng.standard_normal((size, size), dtype=np.float32)
        b = rng.standard_normal((size, size), dtype=np.float32)
        c_blas = np.empty((size, size), np.float32)
        c_jit = np.empty((size, size), np.float32)
        work = size**3
        par = nthreads > 1 and work >= 80**3
        tm, tn = g.choose_grid(size, size, size, nthreads, g.nr_of("float32")) if par else (1, 1)
        ws = np.empty((tm * tn, g.workspace_size("float32")), np.float32)
        jits: dict[str, Callable[[], object]] = {}
        if par:
            name = f"gemm_parallel ({tm} x {tn} threads)"
            jits[name] = lambda a=a, b=b, c=c_jit, ws=ws, tm=tm, tn=tn: g.gemm_parallel(
                a, False, b, False, c, one, zero, ws, tm, tn, 0, *ep0
            )
        else:
            jits["gemm_serial"] = lambda a=a, b=b, c=c_jit, ws=ws: g.gemm_serial(
                a, False, b, False, c, one, zero, ws, g.DIRECT_B, *ep0
            )
        if size <= 64:
            k.step.small_gemm(a, False, b, c_jit)  # compile
            jits["small_gemm (compiled step)"] = lambda a=a, b=b, c=c_jit: k.step.small_gemm(
                a, False, b, c
            )

        def blas(a: np.ndarray = a, b: np.ndarray = b, c: np.ndarray = c_blas) -> None:
            np.matmul(a, b, out=c)

        blas()
        n = max(1, int(5e-3 / (2 * work / 1e11)))
        times: dict[str, list[float]] = {"blas": [], **{name: [] for name in jits}}
        for fn in jits.values():
            fn()
            np.testing.assert_allclose(c_jit, c_blas, rtol=1e-3, atol=1e-3 * size)
        for _ in range(args.rounds):
            times["blas"].append(_block(blas, n))
            for name, fn in jits.items():
                times[name].append(_block(fn, n))
        mb = statistics.median(times["blas"])
        unit, scale = ("us", 1e6) if size <= 64 else ("ms", 1e3)
        for name in jits:
            mj = statistics.median(times[name])
            print(
                f"{size:>5}^3  {mb * scale:8.2f}{unit}  {mj * scale:8.2f}{unit}  "
                f"{mb / mj:13.2f}x  {name}"
            )


if __name__ == "__main__":
    main()
