"""The GEMM micro-kernel: an MR x NR block of C held in MR * NV SIMD registers (NR = NV vectors
of the target's width: 6 x 4 zmm = 6 x 64 floats with AVX-512, 6 x 4 NEON q = 6 x 16 on ARM64,
6 x 2 ymm = 6 x 16 with AVX2, 6 x 2 xmm = 6 x 8 on the SSE-only x86-64 baseline).

Each k step loads NV vectors of B, broadcasts MR values of A and issues MR * NV FMAs: 24 FMAs
against 10 loads, enough independent FMAs to cover their latency on both FMA pipes (measured
150-200 GFLOP/s on one core of the Zen 5 VM at 1024^3, where OpenBLAS's AVX2 kernel ran ~110).
A and B are addressed by offsets and strides, so the callers (gemm.py, step.py) choose packed
or in-place operands.
"""

from __future__ import annotations

from numba import literally, njit

from ._config import GEMM_OPTS
from .simd import (
    VECTOR_REGISTERS,
    lanes,
    vadd,
    vbroadcast,
    vfma,
    vload,
    vmul,
    vsplat,
    vstore,
    vzero,
)

#: Rows of the register block (broadcasts of A per k step).
MR = 6
#: Vectors per row of the register block: 6 x 4 = 24 accumulators with 32 vector registers
#: (AVX-512, NEON), 6 x 2 = 12 with 16 (AVX2, SSE); with the NV vectors of B and a broadcast of
#: A, 29 of 32 or 15 of 16 registers are live in the k loop: none spills (checked in the
#: assembly, tests/test_numba_gemm.py).
NV = 4 if VECTOR_REGISTERS == 32 else 2
#: Vectors per row of the half-width block for narrow strips (e.g. 32 float32 columns).
NV_HALF = NV // 2


@njit(inline="always", **GEMM_OPTS)
def row_offsets(o, step, last):
    """The six A row offsets `micro` takes: row r at o + min(r, last) * step (rows past `last`
    repeat it, so a short strip reads nothing out of bounds)."""
    return (o, o + min(1, last) * step, o + min(2, last) * step, o + min(3, last) * step,
            o + min(4, last) * step, o + min(5, last) * step)  # fmt: skip


@njit(**GEMM_OPTS)
def _store(c, co, ldc, r, x0, x1, x2, x3, nv, first, va, vb, zero_beta, L):
    """Row r of a full-width tile: c[co + r*ldc : ... + nv*L] (=|+=) alpha * x (+ beta * c)."""
    o = co + r * ldc
    x0 = vmul(va, x0)
    if nv >= 2:
        x1 = vmul(va, x1)
    if nv == 4:
        x2 = vmul(va, x2)
        x3 = vmul(va, x3)
    if not first:
        x0 = vadd(vload(c, o), x0)
        if nv >= 2:
            x1 = vadd(vload(c, o + L), x1)
        if nv == 4:
            x2 = vadd(vload(c, o + 2 * L), x2)
            x3 = vadd(vload(c, o + 3 * L), x3)
    elif not zero_beta:
        x0 = vadd(vmul(vb, vload(c, o)), x0)
        if nv >= 2:
            x1 = vadd(vmul(vb, vload(c, o + L)), x1)
        if nv == 4:
            x2 = vadd(vmul(vb, vload(c, o + 2 * L)), x2)
            x3 = vadd(vmul(vb, vload(c, o + 3 * L)), x3)
    vstore(c, o, x0)
    if nv >= 2:
        vstore(c, o + L, x1)
    if nv == 4:
        vstore(c, o + 2 * L, x2)
        vstore(c, o + 3 * L, x3)


@njit(**GEMM_OPTS)
def _spill(t, o, x0, x1, x2, x3, nv, L):
    """One row of the block into t[o : o + nv*L]."""
    vstore(t, o, x0)
    if nv >= 2:
        vstore(t, o + L, x1)
    if nv == 4:
        vstore(t, o + 2 * L, x2)
        vstore(t, o + 3 * L, x3)


@njit(**GEMM_OPTS)
def _store_edge(c, co, ldc, mr, nr, tmp, ld, first, alpha, beta):
    """The mr x nr corner of a tile from tmp (rows ld apart); same maths as _store."""
    for r in range(mr):
        t = tmp[r * ld : r * ld + nr]
        cr = c[co + r * ldc : co + r * ldc + nr]
        if not first:
            for j in range(nr):
                cr[j] = cr[j] + alpha * t[j]
        elif beta == 0:
            for j in range(nr):
                cr[j] = alpha * t[j]
        else:
            for j in range(nr):
                cr[j] = beta * cr[j] + alpha * t[j]


@njit(**GEMM_OPTS)
def micro(a, a0, a1, a2, a3, a4, a5, aps, b, bo, bps, kc, c, co, ldc, mr, nr, first, alpha, beta,
          tmp, nv):  # fmt: skip
    """C[tile] (=|+=) alpha * sum_p A[r, p] * B[p, :] over kc steps (+ beta * C on the first
    K block), for a tile of MR rows and nv vectors (nv = NV, or NV // 2 for narrow strips; a
    compile-time constant). A[r, p] is a[a_r + p*aps]; B[p, :] is b[bo + p*bps :] (bps = the
    tile's width for a packed strip); the tile's row r starts at c[co + r*ldc]. Rows >= mr and
    columns >= nr are computed, not stored (A's rows >= mr repeat row mr-1, so nothing is read
    out of bounds); a tile narrower than nv vectors goes through tmp (MR x nv vectors), a
    full-width one is stored from registers."""
    nv = literally(nv)
    L = lanes(b)
    nr_full = nv * L
    z = vzero(b)
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = c20 = c21 = c22 = c23 = z
    c30 = c31 = c32 = c33 = c40 = c41 = c42 = c43 = c50 = c51 = c52 = c53 = z
    for p in range(kc):
        o = bo + p * bps
        q = p * aps
        b0 = vload(b, o)
        if nv >= 2:
            b1 = vload(b, o + L)
        if nv == 4:
            b2 = vload(b, o + 2 * L)
            b3 = vload(b, o + 3 * L)
        x = vbroadcast(a, a0 + q)
        c00 = vfma(x, b0, c00)
        if nv >= 2:
            c01 = vfma(x, b1, c01)
        if nv == 4:
            c02 = vfma(x, b2, c02)
            c03 = vfma(x, b3, c03)
        x = vbroadcast(a, a1 + q)
        c10 = vfma(x, b0, c10)
        if nv >= 2:
            c11 = vfma(x, b1, c11)
        if nv == 4:
            c12 = vfma(x, b2, c12)
            c13 = vfma(x, b3, c13)
        x = vbroadcast(a, a2 + q)
        c20 = vfma(x, b0, c20)
        if nv >= 2:
            c21 = vfma(x, b1, c21)
        if nv == 4:
            c22 = vfma(x, b2, c22)
            c23 = vfma(x, b3, c23)
        x = vbroadcast(a, a3 + q)
        c30 = vfma(x, b0, c30)
        if nv >= 2:
            c31 = vfma(x, b1, c31)
        if nv == 4:
            c32 = vfma(x, b2, c32)
            c33 = vfma(x, b3, c33)
        x = vbroadcast(a, a4 + q)
        c40 = vfma(x, b0, c40)
        if nv >= 2:
            c41 = vfma(x, b1, c41)
        if nv == 4:
            c42 = vfma(x, b2, c42)
            c43 = vfma(x, b3, c43)
        x = vbroadcast(a, a5 + q)
        c50 = vfma(x, b0, c50)
        if nv >= 2:
            c51 = vfma(x, b1, c51)
        if nv == 4:
            c52 = vfma(x, b2, c52)
            c53 = vfma(x, b3, c53)
    if nr == nr_full:  # whole rows of the block: vector stores of the first mr
        va = vsplat(b, alpha)
        vb = vsplat(b, beta)
        zb = beta == 0
        _store(c, co, ldc, 0, c00, c01, c02, c03, nv, first, va, vb, zb, L)
        if mr > 1:
            _store(c, co, ldc, 1, c10, c11, c12, c13, nv, first, va, vb, zb, L)
        if mr > 2:
            _store(c, co, ldc, 2, c20, c21, c22, c23, nv, first, va, vb, zb, L)
        if mr > 3:
            _store(c, co, ldc, 3, c30, c31, c32, c33, nv, first, va, vb, zb, L)
        if mr > 4:
            _store(c, co, ldc, 4, c40, c41, c42, c43, nv, first, va, vb, zb, L)
        if mr > 5:
            _store(c, co, ldc, 5, c50, c51, c52, c53, nv, first, va, vb, zb, L)
        return
    _spill(tmp, 0, c00, c01, c02, c03, nv, L)  # the block to tmp unscaled, then its corner
    _spill(tmp, nr_full, c10, c11, c12, c13, nv, L)
    _spill(tmp, 2 * nr_full, c20, c21, c22, c23, nv, L)
    _spill(tmp, 3 * nr_full, c30, c31, c32, c33, nv, L)
    _spill(tmp, 4 * nr_full, c40, c41, c42, c43, nv, L)
    _spill(tmp, 5 * nr_full, c50, c51, c52, c53, nv, L)
    _store_edge(c, co, ldc, mr, nr, tmp, nr_full, first, alpha, beta)
