"""bfloat16 GEMM: C (float32) = alpha * op(A) @ op(B) + beta * C with A and B rounded to bf16,
products summed in float32 by AVX512_BF16's `vdpbf16ps` (32 bf16 pairs a zmm, 64 flops).

- packing (bf16_pack.py): float32 -> bf16 by round to nearest even, two bf16 of consecutive k
  in one 32-bit word (low half = even k). A is packed whole before the GEMM (parallel for large
  ones) into rows of k pairs (m x kq words); op(B) in the GEMM, one block at a time into the
  thread's buffer, as NR-wide strips [strip][pair][NR] words, zero-padded, the layout
  `vdpbf16ps` multiplies lane by lane.
- micro-kernel: an MR x NR block of C in MR * NV zmm accumulators (6 x 4 = 24, as the float32
  kernel in micro.py); per k pair it loads NV vectors of B, broadcasts MR words of A and issues
  24 `vdpbf16ps`. The stores, edges and epilogues are micro.py's.
- blocking and threads as gemm.py: K blocks of KC pairs, B blocks of NC_STRIPS strips (512 KiB,
  in L2), threads on disjoint rectangles of C (gemm.choose_grid), so every element of C is
  summed in one fixed order whatever the thread count. While a tile's last strip sums, the next
  tile's rows of A are prefetched into L2 (a tall A, e.g. a weight gradient's, lives in L3).
- a large C written once (a weight gradient) may be written by non-temporal stores.

`vdpbf16ps` treats bf16 subnormals as zero and flushes subnormal results (Intel SDM), so values
below ~1e-38 differ from a reference that keeps them; nothing else differs but summation order.
Needs a CPU with AVX512_BF16 (`has_avx512_bf16`); the backend emulates it elsewhere.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import literally, njit, prange
from numba.core import cgutils

from ._config import GEMM_OPTS
from .bf16_pack import (  # noqa: F401  (the packs are this module's API too)
    PARALLEL_PACK_WORDS,
    bf16_bits,
    pack_a,
    pack_a_serial,
    pack_b_block,
)
from .cache_hints import prefetch_read, prefetch_write, store_fence, vstream
from .elementwise import bias_act_flat
from .gemm import choose_grid
from .micro import MR, _spill, _store, _store_edge, row_offsets
from .optimizers import update_flat
from .simd import (
    Vec,
    _host_cpu,
    intrinsic,
    lanes,
    vbroadcast,
    vload,
    vmul,
    vsplat,
    vzero,
)

#: Vectors per row of the register block (4 zmm = 64 float32 columns), and of the half block.
NV = 4
NV_HALF = 2
#: float32 lanes (and bf16 pairs) per zmm register.
LANES = 16
#: Columns of the register block.
NR = NV * LANES
#: K block in bf16 pairs (1024 k): a B micro-panel (KC x NR words, 128 KiB) streams from L2;
#: against 256 pairs, C is read and written half as often (2-5% at 2048^3, BENCHMARKS.md).
KC = 512
#: NR-wide strips per B block: KC x 4 NR words (512 KiB) stays in L2.
NC_STRIPS = 4
#: Words of a thread's packed B block.
_PB_WORDS = KC * NC_STRIPS * NR


def has_avx512_bf16() -> bool:
    """True when the CPU the kernels compile for has AVX512_BF16 (the `vdpbf16ps` instruction)
    and LLVM keeps 512-bit vectors whole there."""
    from .simd import VECTOR_BYTES

    return "+avx512bf16" in _host_cpu()[1].split(",") and VECTOR_BYTES == 64


class _BFloat(ir.Type):
    """LLVM's `bfloat` scalar type (llvmlite.ir has none); only named in a vector type."""

    def _to_string(self) -> str:
        return "bfloat"


_V32BF16 = ir.VectorType(_BFloat(), 32)


@intrinsic
def vdpbf16(typingctx, acc, a, b):  # type: ignore[no-untyped-def]
    """acc + a.bf16[2i] * b.bf16[2i] + a.bf16[2i+1] * b.bf16[2i+1] in each float32 lane i: one
    `vdpbf16ps` (llvm.x86.avx512bf16.dpbf16ps.512; LLVM >= 17 takes <32 x bfloat> operands).
    acc: 16 float32 lanes; a, b: 16 int32 lanes, each two bf16 (low half first)."""
    if not (isinstance(acc, Vec) and isinstance(a, Vec) and a == b and acc.lanes == a.lanes == 16):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        c, x, y = args
        fty = ir.FunctionType(c.type, [c.type, _V32BF16, _V32BF16])
        fn = cgutils.get_or_insert_function(builder.module, fty, "llvm.x86.avx512bf16.dpbf16ps.512")
        return builder.call(fn, [c, builder.bitcast(x, _V32BF16), builder.bitcast(y, _V32BF16)])

    return acc(acc, a, b), codegen


@njit(**GEMM_OPTS)
def _stream(c, o, va, x0, x1, x2, x3, nv, L):
    """c[o : o + nv*L] = alpha * x by non-temporal stores (o vector-aligned)."""
    vstream(c, o, vmul(va, x0))
    vstream(c, o + L, vmul(va, x1))
    if nv == 4:
        vstream(c, o + 2 * L, vmul(va, x2))
        vstream(c, o + 3 * L, vmul(va, x3))


@njit(**GEMM_OPTS)
def micro(a, a0, a1, a2, a3, a4, a5, b, bo, kc, c, co, ldc, mr, nr, first, alpha, beta, tmp, nv,
          stream):  # fmt: skip
    """C[tile] (=|+=) alpha * sum_q A[r, q] . B[q, :] over kc pairs (+ beta * C on the first K
    block): micro.micro's contract with bf16 pairs. A[r, q] is the word a[a_r + q]; B[q, :] the
    NR words b[bo + q*NR :]; nv = NV or NV_HALF (compile-time). stream: C = alpha * sum (first
    and beta == 0) written by non-temporal stores to full-width rows (vector-aligned)."""
    nv = literally(nv)
    L = lanes(c)
    nr_full = nv * L
    z = vzero(c)
    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = c20 = c21 = c22 = c23 = z
    c30 = c31 = c32 = c33 = c40 = c41 = c42 = c43 = c50 = c51 = c52 = c53 = z
    stream = stream and nr == nr_full
    if nr == nr_full and not stream:  # C's rows arrive while the sum runs (a missed store stalls)
        for r in range(mr):
            for v in range(nv):
                prefetch_write(c, co + r * ldc + v * L)
    for q in range(kc):
        o = bo + q * NR
        b0 = vload(b, o)
        b1 = vload(b, o + L)
        if nv == 4:
            b2 = vload(b, o + 2 * L)
            b3 = vload(b, o + 3 * L)
        x = vbroadcast(a, a0 + q)
        c00 = vdpbf16(c00, x, b0)
        c01 = vdpbf16(c01, x, b1)
        if nv == 4:
            c02 = vdpbf16(c02, x, b2)
            c03 = vdpbf16(c03, x, b3)
        x = vbroadcast(a, a1 + q)
        c10 = vdpbf16(c10, x, b0)
        c11 = vdpbf16(c11, x, b1)
        if nv == 4:
            c12 = vdpbf16(c12, x, b2)
            c13 = vdpbf16(c13, x, b3)
        x = vbroadcast(a, a2 + q)
        c20 = vdpbf16(c20, x, b0)
        c21 = vdpbf16(c21, x, b1)
        if nv == 4:
            c22 = vdpbf16(c22, x, b2)
            c23 = vdpbf16(c23, x, b3)
        x = vbroadcast(a, a3 + q)
        c30 = vdpbf16(c30, x, b0)
        c31 = vdpbf16(c31, x, b1)
        if nv == 4:
            c32 = vdpbf16(c32, x, b2)
            c33 = vdpbf16(c33, x, b3)
        x = vbroadcast(a, a4 + q)
        c40 = vdpbf16(c40, x, b0)
        c41 = vdpbf16(c41, x, b1)
        if nv == 4:
            c42 = vdpbf16(c42, x, b2)
            c43 = vdpbf16(c43, x, b3)
        x = vbroadcast(a, a5 + q)
        c50 = vdpbf16(c50, x, b0)
        c51 = vdpbf16(c51, x, b1)
        if nv == 4:
            c52 = vdpbf16(c52, x, b2)
            c53 = vdpbf16(c53, x, b3)
    if stream:
        va = vsplat(c, alpha)
        _stream(c, co, va, c00, c01, c02, c03, nv, L)
        if mr > 1:
            _stream(c, co + ldc, va, c10, c11, c12, c13, nv, L)
        if mr > 2:
            _stream(c, co + 2 * ldc, va, c20, c21, c22, c23, nv, L)
        if mr > 3:
            _stream(c, co + 3 * ldc, va, c30, c31, c32, c33, nv, L)
        if mr > 4:
            _stream(c, co + 4 * ldc, va, c40, c41, c42, c43, nv, L)
        if mr > 5:
            _stream(c, co + 5 * ldc, va, c50, c51, c52, c53, nv, L)
        return
    if nr == nr_full:
        va = vsplat(c, alpha)
        vb = vsplat(c, beta)
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
    _spill(tmp, 0, c00, c01, c02, c03, nv, L)
    _spill(tmp, nr_full, c10, c11, c12, c13, nv, L)
    _spill(tmp, 2 * nr_full, c20, c21, c22, c23, nv, L)
    _spill(tmp, 3 * nr_full, c30, c31, c32, c33, nv, L)
    _spill(tmp, 4 * nr_full, c40, c41, c42, c43, nv, L)
    _spill(tmp, 5 * nr_full, c50, c51, c52, c53, nv, L)
    _store_edge(c, co, ldc, mr, nr, tmp, nr_full, first, alpha, beta)


@njit(**GEMM_OPTS)
def gemm_block(ap, b, tb, bp, wt, c, alpha, beta, i_lo, i_hi, j_lo, j_hi, ws, ep, fe, stream):
    """C[i_lo:i_hi, j_lo:j_hi] of C = alpha * A @ op(b) + beta * C on one thread, from A packed
    by pack_a and b (float32, C-contiguous) packed here block by block into the thread's
    workspace ws (workspace_words); j_lo is a multiple of NR. bp (empty: none): op(b) packed
    already, whole, as strips [n/NR][kq][NR] (n a multiple of NR): read in place of packing.
    wt (empty: none): see pack_b_block; written here as the blocks are packed.
    ep (an optimizer update) and fe (bias + activation) as gemm.gemm_block:
    applied to each row strip once it is final, while it is in cache. stream: write C by
    non-temporal stores where C is written once (one K block, beta == 0, no epilogue) and is
    aligned; for a large C that nothing reads soon (a weight gradient)."""
    m, n = c.shape
    kq = ap.shape[1]
    af = ap.reshape(-1)
    u = b.view(np.uint32)
    cf = c.reshape(-1)
    pb = ws[:_PB_WORDS]
    pre = bp.size > 0
    buf = ws[_PB_WORDS : _PB_WORDS + LANES * LANES]
    tmp = ws[_PB_WORDS + LANES * LANES :].view(np.float32)
    half = NV_HALF * LANES
    ncols = NC_STRIPS * NR
    nkb = -(-kq // KC)
    kcs = -(-kq // nkb)
    stream = (stream and nkb == 1 and beta == 0 and ep[0] < 0 and fe[0] < 0 and n % LANES == 0
              and cf.ctypes.data % (4 * LANES) == 0)  # fmt: skip
    for jc in range(j_lo, j_hi, ncols):
        nc = min(ncols, j_hi - jc)
        for kb in range(nkb):
            q0 = kb * kcs
            kc = min(kcs, kq - q0)
            first = kb == 0
            if pre:
                bsrc = bp
            else:
                pack_b_block(u, tb, q0, kc, jc, nc, NR, pb, buf, wt)
                bsrc = pb
            for i0 in range(i_lo, i_hi, MR):
                mr = min(MR, i_hi - i0)
                o0, o1, o2, o3, o4, o5 = row_offsets(i0 * kq + q0, kq, mr - 1)
                ns = -(-nc // NR)
                for s in range(ns):
                    j0 = jc + s * NR
                    w = min(NR, jc + nc - j0)
                    bo = (j0 // NR) * kq * NR + q0 * NR if pre else s * kc * NR
                    if nkb == 1 and s == ns - 1:  # the next tile's A rows into L2 meanwhile
                        for r in range(i0 + MR, min(i_hi, i0 + 2 * MR)):
                            for q in range(q0, q0 + kc, LANES):
                                prefetch_read(af, r * kq + q)
                    if w > half:
                        micro(af, o0, o1, o2, o3, o4, o5, bsrc, bo, kc, cf, i0 * n + j0, n, mr, w,
                              first, alpha, beta, tmp, NV, stream)  # fmt: skip
                    else:
                        micro(af, o0, o1, o2, o3, o4, o5, bsrc, bo, kc, cf, i0 * n + j0, n, mr, w,
                              first, alpha, beta, tmp, NV_HALF, stream)  # fmt: skip
                if ep[0] >= 0 and kb == nkb - 1:
                    for r in range(mr):
                        lo = (i0 + r) * n + jc
                        update_flat(lo, lo + nc, ep[1], cf, ep[2], ep[3], ep[4], ep[0], ep[5],
                                    ep[6])  # fmt: skip
                if fe[0] >= 0 and kb == nkb - 1:
                    bias = fe[2][jc : jc + nc]
                    for r in range(mr):
                        lo = (i0 + r) * n + jc
                        bias_act_flat(cf, fe[3], lo, lo + nc, bias, fe[0], fe[1])
    if stream or wt.size > 0:
        store_fence()


@njit(parallel=True, **GEMM_OPTS)
def gemm_parallel(ap, b, tb, bp, wt, c, alpha, beta, ws, tm, tn, ep, fe, stream):
    """gemm_block over a tm x tn grid of C's MR- and NR-aligned rectangles, one per thread."""
    m, n = c.shape
    si = -(-m // MR)
    sj = -(-n // NR)
    rows = -(-si // tm) * MR
    cols = -(-sj // tn) * NR
    for t in prange(tm * tn):
        i_lo = (t // tn) * rows
        j_lo = (t % tn) * cols
        i_hi = min(m, i_lo + rows)
        j_hi = min(n, j_lo + cols)
        if i_lo < i_hi and j_lo < j_hi:
            gemm_block(ap, b, tb, bp, wt, c, alpha, beta, i_lo, i_hi, j_lo, j_hi, ws[t], ep, fe,
                       stream)  # fmt: skip


def grid(m: int, n: int, k: int, nthreads: int) -> tuple[int, int]:
    """(threads along M, threads along N) for this shape (gemm.choose_grid's cost model)."""
    return choose_grid(m, n, -(-k // 2), nthreads, NR)


def packed_a_shape(m: int, k: int) -> tuple[int, int]:
    """Shape of the packed A: m x kq words (kq = ceil(k/2) pairs)."""
    return m, -(-k // 2)


def packed_b_shape(k: int, n: int) -> tuple[int, int, int]:
    """Shape of a whole packed op(B) (k x n): strips x kq x NR words, as gemm_block's bp."""
    return -(-n // NR), -(-k // 2), NR


def workspace_words() -> int:
    """uint32 words of one thread's workspace: a packed B block, a 16 x 16 transpose buffer and
    an edge tile (float32)."""
    return _PB_WORDS + LANES * LANES + MR * NR
