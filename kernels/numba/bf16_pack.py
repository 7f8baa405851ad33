"""Packing for the bf16 GEMM (bf16.py): float32 -> bf16 by round to nearest even, two bf16 of
consecutive k in one 32-bit word (low half = even k), 16 words a vector.

A is packed whole, once per GEMM, into rows of k pairs (m x kq words); op(B) block by block
inside the GEMM (`pack_b_block`, as gemm.py packs float32), into NR-wide strips
[strip][pair][NR] words, zero-padded, the layout `vdpbf16ps` multiplies lane by lane: each
block goes to an L2-sized buffer its thread reads next, not to memory and back. The rounding
runs on integer vectors (`vbf16_rows`, `vbf16_adjacent`: a few integer ops and one shuffle a
vector) with the scalar `bf16_bits` for the tails; both give the same bits. A transposed
operand is paired and transposed in one pass: 16 x 16 blocks of words through a small buffer
and registers.
"""

from __future__ import annotations

from types import FunctionType

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.extending import intrinsic

from ._config import OPTS
from .cache_hints import prefetch_read, vstream
from .simd import Vec, lanes, vload, vstore, vtranspose, vzero

_I32 = ir.IntType(32)


def _splat32(ty: ir.VectorType, x: int) -> ir.Constant:
    return ir.Constant(ty, [ir.Constant(_I32, x)] * ty.count)


def _round_hi(b: ir.IRBuilder, u: ir.Value) -> ir.Value:
    """Each i32 lane (float32 bits) with its nearest bf16 (ties to even) in the high 16 bits
    (the low 16 are junk); NaNs stay NaN, made quiet. bf16_bits, before its shift."""
    t = u.type
    lsb = b.and_(b.lshr(u, _splat32(t, 16)), _splat32(t, 1))
    r = b.add(b.add(u, _splat32(t, 0x7FFF)), lsb)
    nan = b.icmp_unsigned(">", b.and_(u, _splat32(t, 0x7FFFFFFF)), _splat32(t, 0x7F800000))
    return b.select(nan, b.or_(u, _splat32(t, 0x00400000)), r)


def _u32(x) -> bool:  # type: ignore[no-untyped-def]
    return isinstance(x, Vec) and str(x.dtype) == "uint32"


@intrinsic
def vbf16_rows(typingctx, lo, hi):  # type: ignore[no-untyped-def]
    """Lane j: bf16(lo[j]) | bf16(hi[j]) << 16, lo and hi float32 bits (two rows of B)."""
    if not (_u32(lo) and lo == hi):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        rl, rh = _round_hi(builder, args[0]), _round_hi(builder, args[1])
        t = rl.type
        return builder.or_(builder.lshr(rl, _splat32(t, 16)), builder.and_(rh, _splat32(t, -65536)))

    return lo(lo, hi), codegen


@intrinsic
def vbf16_adjacent(typingctx, v0, v1):  # type: ignore[no-untyped-def]
    """Lane q: bf16(x[2q]) | bf16(x[2q+1]) << 16 for x = v0 then v1 (2 x lanes float32 of a row):
    the high halves of the rounded lanes, gathered by one 16-bit shuffle."""
    if not (_u32(v0) and v0 == v1):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        n = 2 * args[0].type.count
        i16 = ir.VectorType(ir.IntType(16), n)
        r0 = builder.bitcast(_round_hi(builder, args[0]), i16)
        r1 = builder.bitcast(_round_hi(builder, args[1]), i16)
        mask = ir.Constant(ir.VectorType(_I32, n), [2 * t + 1 for t in range(n)])
        return builder.bitcast(builder.shuffle_vector(r0, r1, mask), args[0].type)

    return v0(v0, v1), codegen


@njit(inline="always", **OPTS)
def bf16_bits(u):
    """The bf16 nearest the float32 with bits u (ties to even), as its 16 bits in a uint32:
    add 0x7FFF plus the lowest kept bit, drop 16 bits. NaNs stay NaN (made quiet)."""
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return (u >> np.uint32(16)) | np.uint32(0x40)
    return (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)


@njit(inline="always", **OPTS)
def _pair(lo, hi):
    return bf16_bits(lo) | (bf16_bits(hi) << np.uint32(16))


@njit(**OPTS)
def _pair_along_rows(u, i, out, o, k):
    """out[o + q] = the bf16 pair (u[i, 2q], u[i, 2q+1]) for q < ceil(k/2) (zero-padded);
    u C-contiguous."""
    L = lanes(out)
    base = i * k
    kp = k // 2
    q = 0
    while q + L <= kp:
        vstore(out, o + q, vbf16_adjacent(vload(u, base + 2 * q), vload(u, base + 2 * q + L)))
        q += L
    for t in range(q, kp):
        out[o + t] = _pair(u[i, 2 * t], u[i, 2 * t + 1])
    if k % 2:
        out[o + kp] = bf16_bits(u[i, k - 1])


@njit(**OPTS)
def _pair_rows(u, q, j0, out, o, n):
    """out[o + j] = the bf16 pair (u[2q, j0+j], u[2q+1, j0+j]) for j < n (zero past u's rows);
    u C-contiguous."""
    L = lanes(out)
    cols = u.shape[1]
    r0 = 2 * q * cols + j0
    full = 2 * q + 1 < u.shape[0]
    r1 = r0 + cols if full else r0
    j = 0
    while j + L <= n:
        hi = vload(u, r1 + j) if full else vzero(out)
        vstore(out, o + j, vbf16_rows(vload(u, r0 + j), hi))
        j += L
    if full:
        for t in range(j, n):
            out[o + t] = _pair(u[2 * q, j0 + t], u[2 * q + 1, j0 + t])
    else:
        for t in range(j, n):
            out[o + t] = bf16_bits(u[2 * q, j0 + t])


#: Columns of `a` per block of the transposing pack_a: few concurrent read streams, long runs
#: of writes (measured at 4096^2, 2 threads: 7.5 ms against 15 for a two-pass pack).
_A_COLS = 64
#: Row pairs ahead that the non-transposed B block pack prefetches: it reads each row of b as
#: a short run (the block's columns), rows 4 KiB+ apart, where the hardware prefetcher starts
#: late (1-5% on the wide step's input-gradient GEMMs; BENCHMARKS.md).
_PREFETCH_PAIRS = 8


@njit(inline="always", **OPTS)
def _row_word(u, r, q):
    """The pair (u[r, 2q], u[r, 2q+1]), or bf16(u[r, 2q]) alone when 2q+1 is past u's columns."""
    if 2 * q + 1 < u.shape[1]:
        return _pair(u[r, 2 * q], u[r, 2 * q + 1])
    return bf16_bits(u[r, 2 * q])


@njit(inline="always", **OPTS)
def _col_word(u, q, c):
    """The pair (u[2q, c], u[2q+1, c]), or bf16(u[2q, c]) alone when 2q+1 is past u's rows."""
    if 2 * q + 1 < u.shape[0]:
        return _pair(u[2 * q, c], u[2 * q + 1, c])
    return bf16_bits(u[2 * q, c])


def _pack_a(a, ta, out):
    """op(a) (m x k) -> out (m x kq words, kq = ceil(k/2)): out[i, q] = bf16(op(a)[i, 2q]) |
    bf16(op(a)[i, 2q+1]) << 16, zero for k's odd tail. For op(a) = a.T, blocks of 16 columns
    of a are paired down its rows and transposed 16 x 16 in registers, in one pass. a must be
    C-contiguous (the vector loads index it flat)."""
    if not a.flags.c_contiguous:
        raise ValueError("pack_a: a must be C-contiguous")
    m, kq = out.shape
    u = a.view(np.uint32)
    of = out.reshape(-1)
    if not ta:
        for i in prange(m):
            _pair_along_rows(u, i, of, i * kq, a.shape[1])
        return
    L = lanes(of)
    k = a.shape[0]
    kl = (k // 2) - (k // 2) % L  # pairs in whole 16-pair blocks
    for blk in prange(-(-m // _A_COLS)):
        buf = np.empty(L * L, np.uint32)
        i0 = blk * _A_COLS
        ie = min(m, i0 + _A_COLS)
        iv = ie - (ie - i0) % L
        for q in range(0, kl, L):
            for c in range(i0, iv, L):
                for t in range(L):
                    o = 2 * (q + t) * m + c
                    vstore(buf, t * L, vbf16_rows(vload(u, o), vload(u, o + m)))
                vtranspose(buf, 0, L, of, c * kq + q, kq)
        for i in range(i0, ie):  # the block's last columns and pairs, word by word
            for q in range(0 if i >= iv else kl, kq):
                of[i * kq + q] = _col_word(u, q, i)


@njit(**OPTS)
def pack_b_block(u, tb, q0, kc, j0, nc, nr, out, buf, wt):
    """Pairs q0 .. q0+kc of op(b)'s columns j0 .. j0+nc into out as ceil(nc/nr) strips
    [strip][pair][nr] words: out[(s*kc + q-q0)*nr + j] = bf16(op(b)[2q, c]) |
    bf16(op(b)[2q+1, c]) << 16 for column c = j0 + s*nr + j, zero past op(b)'s columns and
    for k's odd tail. u: b's float32 bits (C-contiguous; op(b) = b.T when tb); buf: L*L words
    for the 16 x 16 transposes of a transposed operand; nr a multiple of 2L.

    wt (tb only; empty: none): the same block of b also into b's own B layout, as whole
    strips over b's columns [strip][pair of b's rows][nr] (`pack_b_block` of b, not b.T):
    the input-gradient GEMM's B from the forward's read of a weight. Needs b's rows a multiple
    of L and its columns of nr, and wt vector-aligned (the caller checks): it is written by
    non-temporal stores (it is read a whole forward later); `store_fence` before it is read."""
    L = lanes(out)
    z = np.uint32(0)
    ns = -(-nc // nr)
    if not tb:  # rows 2q, 2q+1 of b, paired lane by lane: whole strips as vectors
        n = u.shape[1]
        nf = min(nc, n - j0) // nr
        for q in range(q0, q0 + kc):
            rp = 2 * (q + _PREFETCH_PAIRS)
            if q + _PREFETCH_PAIRS < q0 + kc and rp + 1 < u.shape[0]:
                for c in range(j0, min(n, j0 + nc), L):
                    prefetch_read(u, rp * n + c)
                    prefetch_read(u, rp * n + n + c)
            s0 = 0
            if 2 * q + 1 < u.shape[0]:
                r0 = 2 * q * n + j0
                for s in range(nf):
                    o = (s * kc + q - q0) * nr
                    for v in range(0, nr, L):
                        x = vbf16_rows(vload(u, r0 + s * nr + v), vload(u, r0 + n + s * nr + v))
                        vstore(out, o + v, x)
                s0 = nf
            for s in range(s0, ns):  # a partial strip, or the odd tail's row
                jj = j0 + s * nr
                w = min(nr, n - jj)
                o = (s * kc + q - q0) * nr
                _pair_rows(u, q, jj, out, o, w)
                for j in range(w, nr):
                    out[o + j] = z
        return
    n, k = u.shape  # op(b) = b.T: rows of b paired along them, 16 x 16 words transposed
    qe = q0 + (max(0, min(q0 + kc, k // 2) - q0) // L) * L  # end of the whole 16-pair blocks
    two = wt.size > 0
    kqt = n // 2
    for s in range(ns):
        for jl in range(0, nr, L):
            r0 = j0 + s * nr + jl
            ob = s * kc * nr + jl - q0 * nr
            if r0 + L <= n:
                for q in range(q0, qe, L):
                    c = 2 * q  # b's columns c .. c+2L, in one of wt's strips
                    ot = ((c // nr) * kqt + r0 // 2) * nr + c % nr
                    for i in range(0, L, 2):
                        o = (r0 + i) * k + c
                        x0, x1 = vload(u, o), vload(u, o + L)
                        y0, y1 = vload(u, o + k), vload(u, o + k + L)
                        vstore(buf, i * L, vbf16_adjacent(x0, x1))
                        vstore(buf, (i + 1) * L, vbf16_adjacent(y0, y1))
                        if two:
                            vstream(wt, ot + (i // 2) * nr, vbf16_rows(x0, y0))
                            vstream(wt, ot + (i // 2) * nr + L, vbf16_rows(x1, y1))
                    vtranspose(buf, 0, L, out, ob + q * nr, nr)
                for q in range(qe, q0 + kc):
                    for i in range(L):
                        out[ob + q * nr + i] = _row_word(u, r0 + i, q)
            else:  # the last strip's rows past n are zero
                for q in range(q0, q0 + kc):
                    for i in range(L):
                        w = z
                        if r0 + i < n:
                            w = _row_word(u, r0 + i, q)
                        out[ob + q * nr + i] = w


def _named(fn, name: str):  # type: ignore[no-untyped-def]
    """A copy of `fn` called `name`. Numba keys its on-disk cache on a function's name and
    bytecode, not on its compile flags: a serial and a parallel build of one function shared
    one cache entry, and a process could load the serial build for the parallel pack."""
    g = FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    g.__qualname__ = name
    return g


#: A's pack on all threads (large operands) and on the calling thread (small ones: a parallel
#: region costs more than the work, and far more on a loaded machine).
pack_a = njit(parallel=True, **OPTS)(_named(_pack_a, "pack_a"))
pack_a_serial = njit(**OPTS)(_named(_pack_a, "pack_a_serial"))
#: Words from which A's pack runs on all threads.
PARALLEL_PACK_WORDS = 1 << 16
