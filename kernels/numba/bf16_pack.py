"""Packing for the bf16 GEMM (bf16.py): float32 -> bf16 by round to nearest even, two bf16 of
consecutive k in one 32-bit word (low half = even k), 16 words a vector.

A becomes rows of k pairs (m x kq words); op(B) becomes NR-wide strips [strip][pair][NR] words,
zero-padded, the layout `vdpbf16ps` multiplies lane by lane. The rounding runs on integer
vectors (`vbf16_rows`, `vbf16_adjacent`: a few integer ops and one shuffle a vector) with
the scalar `bf16_bits` for the tails; both give the same bits. A transposed operand is first
paired along its rows into a staging buffer, then transposed as 32-bit words, 16 x 16 in
registers.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.extending import intrinsic

from ._config import OPTS
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


@njit(**OPTS)
def _transpose_words(src, r0, r1, cols, dst, d_off, d_ld):
    """dst[d_off + c*d_ld + (r - r0)] = src[r*cols + c] for r0 <= r < r1, c < cols: 16 x 16
    blocks through registers (simd.vtranspose), the edges element by element."""
    L = lanes(src)
    rl = r0 + (r1 - r0) - (r1 - r0) % L
    cl = cols - cols % L
    for r in range(r0, rl, L):
        for c in range(0, cl, L):
            vtranspose(src, r * cols + c, cols, dst, d_off + c * d_ld + (r - r0), d_ld)
        for c in range(cl, cols):
            for i in range(L):
                dst[d_off + c * d_ld + r - r0 + i] = src[(r + i) * cols + c]
    for r in range(rl, r1):
        for c in range(cols):
            dst[d_off + c * d_ld + r - r0] = src[r * cols + c]


def _pack_a(a, ta, out, tmp):
    """op(a) (m x k) -> out (m x kq words, kq = ceil(k/2)): out[i, q] = bf16(op(a)[i, 2q]) |
    bf16(op(a)[i, 2q+1]) << 16, zero for k's odd tail. op(a) = a.T goes through tmp (kq x m
    words: rows of a paired, then transposed in registers); tmp has >= kq * m words. a must be
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
    for q in prange(kq):
        _pair_rows(u, q, 0, tmp, q * m, m)
    nb = -(-m // 16)
    for blk in prange(nb):  # out rows blk*16.. = tmp columns: out = tmp.T
        c0 = blk * 16
        c1 = min(m, c0 + 16)
        # rows of out c0:c1 from tmp[:, c0:c1]: transpose tmp's (kq x 16) column block
        for q0 in range(0, kq, 16):
            q1 = min(kq, q0 + 16)
            if q1 - q0 == 16 and c1 - c0 == 16:
                vtranspose(tmp, q0 * m + c0, m, of, c0 * kq + q0, kq)
            else:
                for q in range(q0, q1):
                    for c in range(c0, c1):
                        of[c * kq + q] = tmp[q * m + c]


def _pack_b(b, tb, out, tmp):
    """op(b) (k x n) -> out (strips x kq x NR words): out[s, q, j] = bf16(op(b)[2q, s*NR+j]) |
    bf16(op(b)[2q+1, s*NR+j]) << 16, zero past n and for k's odd tail. op(b) = b.T goes
    through tmp (n x kq words: rows of b paired, then transposed in registers). b must be
    C-contiguous (the vector loads index it flat)."""
    if not b.flags.c_contiguous:
        raise ValueError("pack_b: b must be C-contiguous")
    ns, kq, nr = out.shape
    n = b.shape[0] if tb else b.shape[1]
    u = b.view(np.uint32)
    of = out.reshape(-1)
    z = np.uint32(0)
    if not tb:
        for q in prange(kq):  # two rows of b at a time, straight into their strips
            for s in range(ns):
                j0 = s * nr
                w = min(nr, n - j0)
                o = (s * kq + q) * nr
                _pair_rows(u, q, j0, of, o, w)
                for j in range(w, nr):
                    of[o + j] = z
        return
    for j in prange(n):
        _pair_along_rows(u, j, tmp, j * kq, b.shape[1])
    for s in prange(ns):
        j0 = s * nr
        w = min(nr, n - j0)
        _transpose_words(tmp, j0, j0 + w, kq, of, s * kq * nr, nr)
        for q in range(kq):
            for j in range(w, nr):
                of[(s * kq + q) * nr + j] = z


#: The packs on all threads (large operands) and on the calling thread (small ones: a parallel
#: region costs more than the work, and far more on a loaded machine).
pack_a = njit(parallel=True, **OPTS)(_pack_a)
pack_b = njit(parallel=True, **OPTS)(_pack_b)
pack_a_serial = njit(**OPTS)(_pack_a)
pack_b_serial = njit(**OPTS)(_pack_b)
#: Words from which a pack runs on all threads.
PARALLEL_PACK_WORDS = 1 << 16
