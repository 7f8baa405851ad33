"""Dense GEMM, C = alpha * op(A) @ op(B) + beta * C, from a register-blocked SIMD micro-kernel.

Structure (after GotoBLAS/BLIS, sized for a core with ~48 KiB L1 and >= 1 MiB L2):
- micro-kernel (micro.py): an MR x NR block of C in MR*NV vector registers (NR = NV vectors of
  the host's width: 6 x 64 floats on AVX-512 hosts);
- B is packed per (KC x NC_STRIPS*NR) block into NR-wide strips (k-major, zero-padded; op(B) =
  B.T is transposed in registers, lanes x lanes at a time), so the micro-kernel reads it with
  unit stride; the block stays in L2. A small B = op(B) may be read in place instead (DIRECT_B);
- A is read in place: six row offsets and a stride, so op(A) = A or A.T costs nothing (packing
  A measured no faster here, even at 16 KiB strides);
- threads own disjoint rectangles of C (a grid chosen per shape, see `choose_grid`), so no two
  threads write one element and each packs only the B it reads;
- narrow outputs (op(B) = B.T with n < NR / 2, e.g. 10 classes) run as row dot products;
- epilogues: once a row strip of C is final, a weight gradient can update its parameter (an
  optimizer rule) and a forward product can add its bias and activation, while it is in cache.

Every element of C is summed over k in one fixed order (KC blocks in sequence, k ascending in a
block, one FMA chain) by one thread: results do not depend on the thread count or the grid.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._config import GEMM_OPTS
from .elementwise import bias_act_flat
from .micro import MR, NV, NV_HALF, micro, row_offsets
from .optimizers import update_flat
from .simd import (
    VECTOR_BYTES,
    host_cpu_id,
    lanes,
    lanes_of,
    vfma,
    vload,
    vstore,
    vsum,
    vtranspose,
    vzero,
)

#: K block: the B micro-panel (KC x NR, 64 KiB) streams from L2; A's strip (MR x KC) stays in L1.
KC = 256
#: NR-wide strips per packed B block: KC x 8 NR (512 KiB) stays in L2.
NC_STRIPS = 8
#: `mode` bit of the gemm entry points (the backend chooses it per shape): read op(B) = B in
#: place instead of packing it. Measured on the mnist GEMMs (B <= 1 MiB): 0-10% faster; on the
#: wide ones (B of 4-64 MiB, rows 16 KiB apart): 10-15% slower.
DIRECT_B = 1
#: Thread-grid cost of packing one element of B, in units of one micro-kernel k step: measured
#: ~0.4 cycles an element (rows copied or transposed in registers) against 12 cycles a k step
#: (24 FMAs at two a cycle).
_PACK_COST = 0.4 / 12.0


def kernel_id() -> str:
    """What decides this kernel's machine code and speed: the target CPU and the blocking."""
    return f"{host_cpu_id()} vec{VECTOR_BYTES} mr{MR} nv{NV} kc{KC} nc{NC_STRIPS}"


def nr_of(dtype) -> int:  # type: ignore[no-untyped-def]
    """Columns of the register block for `dtype` on this host."""
    return NV * lanes_of(np.dtype(dtype))


def no_epilogue(dtype) -> tuple:  # type: ignore[no-untyped-def]
    """The `ep` argument for a plain GEMM (rule code -1, empty arrays of dtype)."""
    e = np.empty(0, dtype)
    return (np.int64(-1), e, e, e, e, np.zeros(9, dtype), np.zeros(3, np.int64))


def no_activation(dtype) -> tuple:  # type: ignore[no-untyped-def]
    """The `fe` argument for a GEMM without a bias + activation epilogue."""
    e = np.empty(0, dtype)
    return (np.int64(-1), np.dtype(dtype).type(0), e, e)


def workspace_size(dtype) -> int:  # type: ignore[no-untyped-def]
    """Elements of one thread's workspace row: the packed B block and an edge tile."""
    nr = nr_of(dtype)
    return KC * NC_STRIPS * nr + MR * nr


@njit(**GEMM_OPTS)
def pack_b(b, ldb, tb, p0, kc, j0, nc, pb):
    """op(B)[p0:p0+kc, j0:j0+nc] -> pb as NR-wide strips [strip][p][0:NR], zero-padded.

    op(B)[p, j] is b[p*ldb + j] (tb False: rows copied by vectors) or b[j*ldb + p] (tb True: a
    transpose, lanes x lanes blocks through registers; measured 0.4 cycles per element, a
    plain copy's speed, against 2 for element-by-element copies).
    """
    L = lanes(pb)
    nr = NV * L
    z = pb.dtype.type(0)
    for s in range(-(-nc // nr)):
        base = s * nr * kc
        c0 = j0 + s * nr
        cols = min(nr, j0 + nc - c0)
        if not tb:
            for p in range(kc):
                src = (p0 + p) * ldb + c0
                dst = base + p * nr
                if cols == nr:
                    for v in range(NV):
                        vstore(pb, dst + v * L, vload(b, src + v * L))
                else:
                    for j in range(cols):
                        pb[dst + j] = b[src + j]
                    for j in range(cols, nr):
                        pb[dst + j] = z
            continue
        kl = kc - kc % L
        cl = cols - cols % L
        for g in range(0, cl, L):  # L x L blocks transposed in registers
            s0 = (c0 + g) * ldb + p0
            for q in range(0, kl, L):
                vtranspose(b, s0 + q, ldb, pb, base + q * nr + g, nr)
            for i in range(L):  # the K tail
                for p in range(kl, kc):
                    pb[base + p * nr + g + i] = b[s0 + i * ldb + p]
        for j in range(cl, nr):  # the last columns, then zero padding
            if j < cols:
                s0 = (c0 + j) * ldb + p0
                for p in range(kc):
                    pb[base + p * nr + j] = b[s0 + p]
            else:
                for p in range(kc):
                    pb[base + p * nr + j] = z


@njit(**GEMM_OPTS)
def gemm_block(a, ta, b, tb, c, alpha, beta, i_lo, i_hi, j_lo, j_hi, ws, mode, ep, fe):
    """C[i_lo:i_hi, j_lo:j_hi] of C = alpha * op(a) @ op(b) + beta * C on one thread.

    a, b, c are C-contiguous matrices (c is m x n); ws is this thread's workspace
    (workspace_size elements). k >= 1. ep = (rule, p, s1, s2, s3, hp, flags): with rule >= 0
    (optimizers.SGD or ADAM) C is a weight gradient and each row strip, once final, updates the
    same elements of the flat parameter p and its state (optimizers.update_flat) while the strip
    is still in cache: the same operations, so the same bits, as a separate pass over p.
    fe = (activation code, alpha, bias, out): with code >= 0, each final row strip gets
    C += bias and out = act(C) (elementwise.bias_act_flat; out flat, C's shape), likewise.
    """
    m, n = c.shape
    k = a.shape[0] if ta else a.shape[1]
    lda = a.shape[1]
    ldb = b.shape[1]
    af = a.reshape(-1)
    bf = b.reshape(-1)
    cf = c.reshape(-1)
    L = lanes(ws)
    nr = NV * L
    half = NV_HALF * L
    ncols = NC_STRIPS * nr
    pb = ws[: KC * ncols]
    tmp = ws[KC * ncols : KC * ncols + MR * nr]
    direct = not tb and (mode & DIRECT_B) != 0  # B read in place (no packing) but a partial strip
    nkb = -(-k // KC)
    kcs = -(-k // nkb)  # equal K blocks: no short tail block
    for jc in range(j_lo, j_hi, ncols):
        nc = min(ncols, j_hi - jc)
        for kb in range(nkb):
            p0 = kb * kcs
            kc = min(kcs, k - p0)
            first = kb == 0
            if direct:  # only a partial last strip needs packing
                full = nc - nc % nr
                if full < nc:
                    pack_b(bf, ldb, tb, p0, kc, jc + full, nc - full, pb[full * kc :])
            else:
                pack_b(bf, ldb, tb, p0, kc, jc, nc, pb)
            for i0 in range(i_lo, i_hi, MR):
                mr = min(MR, i_hi - i0)
                if ta:  # A[r, p] = a[p0 + p, i0 + r]
                    aps = lda
                    o0, o1, o2, o3, o4, o5 = row_offsets(p0 * lda + i0, 1, mr - 1)
                else:  # A[r, p] = a[i0 + r, p0 + p]
                    aps = 1
                    o0, o1, o2, o3, o4, o5 = row_offsets(i0 * lda + p0, lda, mr - 1)
                for s in range(-(-nc // nr)):
                    j0 = jc + s * nr
                    w = min(nr, jc + nc - j0)
                    if direct and (w == nr or w == half):
                        bsrc, bo, bps = bf, p0 * ldb + j0, ldb
                    else:
                        bsrc, bo, bps = pb, s * nr * kc, nr
                    if w > half:
                        micro(af, o0, o1, o2, o3, o4, o5, aps, bsrc, bo, bps, kc, cf,
                              i0 * n + j0, n, mr, w, first, alpha, beta, tmp, NV)  # fmt: skip
                    else:  # a narrow last strip: the half-width block computes less padding
                        micro(af, o0, o1, o2, o3, o4, o5, aps, bsrc, bo, bps, kc, cf,
                              i0 * n + j0, n, mr, w, first, alpha, beta, tmp, NV_HALF)  # fmt: skip
                if ep[0] >= 0 and kb == nkb - 1:  # these rows of C are final: the update
                    for r in range(mr):
                        lo = (i0 + r) * n + jc
                        update_flat(lo, lo + nc, ep[1], cf, ep[2], ep[3], ep[4], ep[0], ep[5],
                                    ep[6])  # fmt: skip
                if fe[0] >= 0 and kb == nkb - 1:  # these rows of C are final: bias, activation
                    bias = fe[2][jc : jc + nc]
                    for r in range(mr):
                        lo = (i0 + r) * n + jc
                        bias_act_flat(cf, fe[3], lo, lo + nc, bias, fe[0], fe[1])


def choose_grid(m: int, n: int, k: int, nthreads: int, nr: int) -> tuple[int, int]:
    """(threads along M, threads along N) for this shape: the split with the least estimated
    per-thread time, counting micro-kernel k steps and the B elements each thread packs."""
    best = (nthreads, 1)
    best_cost = -1.0
    si = -(-m // MR)
    sj = -(-n // nr)
    for tm in range(1, nthreads + 1):
        if nthreads % tm:
            continue
        tn = nthreads // tm
        rows = -(-si // tm)
        strips = -(-sj // tn)
        cost = rows * strips * k + _PACK_COST * k * min(n, strips * nr)
        if best_cost < 0 or cost < best_cost:
            best, best_cost = (tm, tn), cost
    return best


@njit(parallel=True, **GEMM_OPTS)
def gemm_parallel(a, ta, b, tb, c, alpha, beta, ws, tm, tn, mode, ep, fe):
    """gemm_block over a tm x tn grid of C's MR- and NR-aligned rectangles, one per thread."""
    m, n = c.shape
    nr = NV * lanes(ws)
    si = -(-m // MR)
    sj = -(-n // nr)
    rows = -(-si // tm) * MR
    cols = -(-sj // tn) * nr
    for t in prange(tm * tn):
        i_lo = (t // tn) * rows
        j_lo = (t % tn) * cols
        i_hi = min(m, i_lo + rows)
        j_hi = min(n, j_lo + cols)
        if i_lo < i_hi and j_lo < j_hi:
            gemm_block(a, ta, b, tb, c, alpha, beta, i_lo, i_hi, j_lo, j_hi, ws[t], mode, ep, fe)


@njit(**GEMM_OPTS)
def dot_rows(a, b, c, alpha, beta, i_lo, i_hi):
    """c[i, j] = alpha * dot(a[i], b[j]) (+ beta * c[i, j]) for rows i_lo:i_hi: op(B) = b.T with
    few columns (n < NR / 2, e.g. 10 classes), where the register block would compute mostly
    padding. Each dot keeps one vector of partial sums (k mod lanes), added as a fixed tree,
    then the k tail: a fixed order, independent of threads."""
    n, k = b.shape
    L = lanes(b)
    kl = k - k % L
    af = a.reshape(-1)
    bf = b.reshape(-1)
    z = vzero(b)
    for i in range(i_lo, i_hi):
        ar = i * k
        j = 0
        while j < n:
            w = min(4, n - j)  # up to four dots share each load of a's row
            b0 = j * k
            b1 = (j + min(1, w - 1)) * k
            b2 = (j + min(2, w - 1)) * k
            b3 = (j + min(3, w - 1)) * k
            s0 = s1 = s2 = s3 = z
            for p in range(0, kl, L):
                x = vload(af, ar + p)
                s0 = vfma(x, vload(bf, b0 + p), s0)
                s1 = vfma(x, vload(bf, b1 + p), s1)
                s2 = vfma(x, vload(bf, b2 + p), s2)
                s3 = vfma(x, vload(bf, b3 + p), s3)
            t0, t1, t2, t3 = vsum(s0), vsum(s1), vsum(s2), vsum(s3)
            for p in range(kl, k):
                x = af[ar + p]
                t0 += x * bf[b0 + p]
                t1 += x * bf[b1 + p]
                t2 += x * bf[b2 + p]
                t3 += x * bf[b3 + p]
            for q, t in enumerate((t0, t1, t2, t3)):
                if q < w:
                    if beta == 0:
                        c[i, j + q] = alpha * t
                    else:
                        c[i, j + q] = beta * c[i, j + q] + alpha * t
            j += w


@njit(parallel=True, **GEMM_OPTS)
def dot_rows_parallel(a, b, c, alpha, beta, nthreads):
    """dot_rows over nthreads contiguous row ranges."""
    m = c.shape[0]
    per = -(-m // nthreads)
    for t in prange(nthreads):
        dot_rows(a, b, c, alpha, beta, t * per, min(m, (t + 1) * per))


def gemm_serial(a, ta, b, tb, c, alpha, beta, ws, mode, ep=None, fe=None):  # type: ignore[no-untyped-def]
    """The whole of C on the calling thread: gemm_block called from Python (a compiled wrapper
    would cost another ~3 s of first-run compilation for nothing)."""
    m, n = c.shape
    ep = no_epilogue(c.dtype) if ep is None else ep
    fe = no_activation(c.dtype) if fe is None else fe
    gemm_block(a, ta, b, tb, c, alpha, beta, 0, m, 0, n, ws[0], mode, ep, fe)
