"""Dense GEMM: C = alpha * op(A) @ op(B) + beta * C with packed panels and a register-blocked
micro-kernel (see _micro), parallel over output tiles.

Packing copies op(A) into MR-row strips and op(B) into NR-column strips, k-major, zero-padded to
whole strips, so the micro-kernel reads both with unit stride whatever the transposes. Each output
element is summed over K in one fixed order (KC blocks, in sequence) by one thread: the result does
not depend on the thread count or the schedule.
"""

from __future__ import annotations

from numba import njit, prange

from ._config import GEMM_OPTS
from ._micro import MR, NR, micro

#: K block: an NR-wide strip of B over KC steps (32 KiB in float32) stays in L1.
KC = 256
#: Rows and columns of C per parallel tile (multiples of MR and NR).
MC = 64
NC = 256


def packed_sizes(m: int, n: int, k: int) -> tuple[int, int]:
    """Lengths of the packed A and B buffers for an (m x k) @ (k x n) product."""
    return -(-m // MR) * MR * k, -(-n // NR) * NR * k


@njit(**GEMM_OPTS)
def pack_a_strip(a, trans_a, s, m, k, pa):
    """Strip s of op(A) (rows s*MR..) into pa[s*MR*k:], layout [p][i], zero-padded rows."""
    base = s * MR * k
    i0 = s * MR
    rows = min(MR, m - i0)
    z = 0
    if trans_a:
        for p in range(k):
            o = base + p * MR
            for i in range(rows):
                pa[o + i] = a[p, i0 + i]
            for i in range(rows, MR):
                pa[o + i] = z
    else:
        for p in range(k):
            o = base + p * MR
            for i in range(rows, MR):
                pa[o + i] = z
        for i in range(rows):
            for p in range(k):
                pa[base + p * MR + i] = a[i0 + i, p]


@njit(**GEMM_OPTS)
def pack_b_strip(b, trans_b, t, n, k, pb):
    """Strip t of op(B) (columns t*NR..) into pb[t*NR*k:], layout [p][j], zero-padded columns."""
    base = t * NR * k
    j0 = t * NR
    cols = min(NR, n - j0)
    z = 0
    if trans_b:
        for p in range(k):
            o = base + p * NR
            for j in range(cols, NR):
                pb[o + j] = z
        for j in range(cols):
            for p in range(k):
                pb[base + p * NR + j] = b[j0 + j, p]
    else:
        for p in range(k):
            o = base + p * NR
            for j in range(cols):
                pb[o + j] = b[p, j0 + j]
            for j in range(cols, NR):
                pb[o + j] = z


@njit(**GEMM_OPTS)
def compute_tile(pa, pb, c, k, alpha, beta, i_lo, i_hi, j_lo, j_hi):
    """C[i_lo:i_hi, j_lo:j_hi] from packed panels; i_lo, j_lo are multiples of MR, NR."""
    for pc in range(0, k, KC):
        kc = min(KC, k - pc)
        first = pc == 0
        for j0 in range(j_lo, j_hi, NR):
            bo = (j0 // NR) * NR * k + pc * NR
            nr = min(NR, j_hi - j0)
            for i0 in range(i_lo, i_hi, MR):
                ao = (i0 // MR) * MR * k + pc * MR
                micro(pa, ao, pb, bo, kc, c, i0, j0, min(MR, i_hi - i0), nr, alpha, beta, first)


@njit(**GEMM_OPTS)
def gemm_serial(a, b, c, trans_a, trans_b, alpha, beta, pa, pb):
    """One-thread GEMM (small shapes: no parallel-region start-up). k >= 1."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    for s in range(-(-m // MR)):
        pack_a_strip(a, trans_a, s, m, k, pa)
    for t in range(-(-n // NR)):
        pack_b_strip(b, trans_b, t, n, k, pb)
    compute_tile(pa, pb, c, k, alpha, beta, 0, m, 0, n)


@njit(parallel=True, **GEMM_OPTS)
def gemm_parallel(a, b, c, trans_a, trans_b, alpha, beta, pa, pb):
    """GEMM parallel over packing strips, then over MC x NC output tiles. k >= 1."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    sa = -(-m // MR)
    sb = -(-n // NR)
    for s in prange(sa + sb):
        if s < sa:
            pack_a_strip(a, trans_a, s, m, k, pa)
        else:
            pack_b_strip(b, trans_b, s - sa, n, k, pb)
    ti = -(-m // MC)
    tj = -(-n // NC)
    for t in prange(ti * tj):
        i_lo = (t // tj) * MC
        j_lo = (t % tj) * NC
        compute_tile(pa, pb, c, k, alpha, beta, i_lo, min(m, i_lo + MC), j_lo, min(n, j_lo + NC))
