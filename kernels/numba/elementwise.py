"""Elementwise and row-wise kernels: fused bias + activation, activation backward with the bias
gradient, softmax. Activations are integer codes (index in base.ACTIVATIONS).

Each kernel is a serial `*_rows(lo, hi, ...)` over a range of rows plus a `prange` wrapper over
fixed row chunks; the backend calls the serial one for small arrays (no thread start-up). Scalars
are made with `x.dtype.type(...)`, so float32 stays float32 throughout.
"""

from __future__ import annotations

import math

from numba import njit, prange

from ._config import OPTS

IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, GELU, GELU_TANH = range(7)
#: Rows per parallel chunk.
CHUNK = 16


@njit(inline="always", **OPTS)
def act(v, code, alpha):
    """Activation `code` of the scalar v, in v's type."""
    t = type(v)
    if code == IDENTITY:
        return v
    if code == RELU:
        return v if v > 0 else t(0)
    if code == LEAKY_RELU:
        return v if v > 0 else v * alpha
    if code == SIGMOID:
        if v >= 0:
            return t(1) / (t(1) + math.exp(-v))
        e = math.exp(v)
        return e / (t(1) + e)
    if code == TANH:
        return math.tanh(v)
    if code == GELU:
        return v * (t(0.5) * (t(1) + math.erf(v * t(0.7071067811865476))))
    c = t(0.7978845608028654)
    return v * t(0.5) * (t(1) + math.tanh(c * (v + t(0.044715) * v * v * v)))


@njit(inline="always", **OPTS)
def act_grad(d, x, y, code, alpha):
    """dL/dx for one element from dL/dy = d, input x (GELU) and output y (the others)."""
    t = type(d)
    if code == IDENTITY:
        return d
    if code == RELU:
        return d if y > 0 else t(0) * d
    if code == LEAKY_RELU:
        return d if y > 0 else d * alpha
    if code == SIGMOID:
        return d * (y * (t(1) - y))
    if code == TANH:
        return d * (t(1) - y * y)
    if code == GELU:
        cdf = t(0.5) * (t(1) + math.erf(x * t(0.7071067811865476)))
        pdf = math.exp(t(-0.5) * x * x) * t(0.3989422804014327)
        return d * (cdf + x * pdf)
    c = t(0.7978845608028654)
    x2 = x * x
    th = math.tanh(c * (x + t(0.044715) * x2 * x))
    return d * (
        t(0.5) * (t(1) + th) + t(0.5) * x * (t(1) - th * th) * c * (t(1) + t(3 * 0.044715) * x2)
    )


@njit(**OPTS)
def _relu_rows(lo, hi, z, b, out, pre, has_pre):
    """bias + ReLU rows, one branch-free loop per aliasing pattern. LLVM vectorizes a loop only
    after a run-time check that its arrays do not overlap; in-place calls (pre or out being z)
    would fail it and run scalar, so each pattern reads and writes the aliased array through one
    name (measured: 128 x 512 in place, 46 -> ~20 us)."""
    n = z.shape[1]
    zero = b.dtype.type(0)
    zp = z.ctypes.data
    pre_is_z = has_pre and pre.ctypes.data == zp
    out_is_z = out.ctypes.data == zp
    for i in range(lo, hi):
        zr, outr = z[i], out[i]
        if pre_is_z and not out_is_z:  # z <- z + b, out <- relu
            for j in range(n):
                v = zr[j] + b[j]
                zr[j] = v
                outr[j] = v if v > zero else zero
        elif has_pre and out_is_z and not pre_is_z:  # pre <- z + b, z <- relu
            prer = pre[i]
            for j in range(n):
                v = zr[j] + b[j]
                prer[j] = v
                zr[j] = v if v > zero else zero
        elif has_pre and not pre_is_z:  # three arrays
            prer = pre[i]
            for j in range(n):
                v = zr[j] + b[j]
                prer[j] = v
                outr[j] = v if v > zero else zero
        elif out_is_z:  # z <- relu(z + b) (pre, if given, is z too: out's value wins)
            for j in range(n):
                v = zr[j] + b[j]
                zr[j] = v if v > zero else zero
        else:  # out <- relu(z + b)
            for j in range(n):
                v = zr[j] + b[j]
                outr[j] = v if v > zero else zero


@njit(**OPTS)
def bias_act_rows(lo, hi, z, b, has_b, code, alpha, out, pre, has_pre):
    """Rows lo..hi: v = z + b; pre = v (if has_pre); out = act(v). z may be out or pre."""
    n = z.shape[1]
    if code == RELU and has_b:  # the common case: vectorized loops
        _relu_rows(lo, hi, z, b, out, pre, has_pre)
        return
    for i in range(lo, hi):
        for j in range(n):
            v = z[i, j] + b[j] if has_b else z[i, j]
            if has_pre:
                pre[i, j] = v
            out[i, j] = act(v, code, alpha)


@njit(**OPTS)
def bias_act_flat(z, out, lo, hi, b, code, alpha):
    """One row segment, flat views: z[lo:hi] += b (b has hi-lo elements; z keeps the
    pre-activation) and out[lo:hi] = act of it. The operations of bias_act_rows, so the same
    bits; the GEMM kernel calls it on each row strip of its output while the strip is in cache."""
    zs, os = z[lo:hi], out[lo:hi]
    zero = b.dtype.type(0)
    if code == RELU:  # branch-free loops: vectorize
        for j in range(zs.shape[0]):
            v = zs[j] + b[j]
            zs[j] = v
            os[j] = v if v > zero else zero
    elif code == IDENTITY:
        for j in range(zs.shape[0]):
            v = zs[j] + b[j]
            zs[j] = v
            os[j] = v
    else:
        for j in range(zs.shape[0]):
            v = zs[j] + b[j]
            zs[j] = v
            os[j] = act(v, code, alpha)


@njit(parallel=True, **OPTS)
def bias_act(z, b, has_b, code, alpha, out, pre, has_pre):
    """Parallel `bias_act_rows` over fixed row chunks."""
    m = z.shape[0]
    for c in prange(-(-m // CHUNK)):
        bias_act_rows(
            c * CHUNK, min(m, c * CHUNK + CHUNK), z, b, has_b, code, alpha, out, pre, has_pre
        )


@njit(**OPTS)
def act_backward_rows(lo, hi, code, dy, x, y, alpha, out):
    """Rows lo..hi of out = activation backward of dy (x or y may be dummies when unused)."""
    n = dy.shape[1]
    use_x = code == GELU or code == GELU_TANH
    for i in range(lo, hi):
        for j in range(n):
            if use_x:
                out[i, j] = act_grad(dy[i, j], x[i, j], x[i, j], code, alpha)
            else:
                out[i, j] = act_grad(dy[i, j], y[i, j], y[i, j], code, alpha)


@njit(parallel=True, **OPTS)
def act_backward(code, dy, x, y, alpha, out):
    m = dy.shape[0]
    for c in prange(-(-m // CHUNK)):
        act_backward_rows(c * CHUNK, min(m, c * CHUNK + CHUNK), code, dy, x, y, alpha, out)


@njit(**OPTS)
def act_backward_bias_grad_cols(lo, hi, code, dy, x, y, alpha, dx, db, accumulate):
    """Columns lo..hi: dx = act backward of dy and db[j] (+)= sum over rows of dx[:, j].

    Each column is summed by one thread, rows in order: bitwise the same for any thread count.
    """
    m = dy.shape[0]
    use_x = code == GELU or code == GELU_TANH
    if not accumulate:
        for j in range(lo, hi):
            db[j] = 0
    in_place = dx.ctypes.data == dy.ctypes.data  # one name for it, or LLVM stays scalar
    if code == IDENTITY:  # dx = dy: the column sums, and a copy unless in place
        dbs = db[lo:hi]
        for i in range(m):
            dyr = dy[i, lo:hi]
            if not in_place:
                dx[i, lo:hi] = dyr
            for j in range(dbs.shape[0]):
                dbs[j] += dyr[j]
        return
    if code == RELU:  # branch-free over 0-based row slices: vectorizes; same sums, same order
        dbs = db[lo:hi]
        zero = alpha - alpha
        for i in range(m):
            dyr, yr = dy[i, lo:hi], y[i, lo:hi]
            if in_place:
                for j in range(dbs.shape[0]):
                    g = dyr[j] if yr[j] > zero else zero * dyr[j]
                    dyr[j] = g
                    dbs[j] += g
            else:
                dxr = dx[i, lo:hi]
                for j in range(dbs.shape[0]):
                    g = dyr[j] if yr[j] > zero else zero * dyr[j]
                    dxr[j] = g
                    dbs[j] += g
        return
    for i in range(m):
        for j in range(lo, hi):
            s = x[i, j] if use_x else y[i, j]
            g = act_grad(dy[i, j], s, s, code, alpha)
            dx[i, j] = g
            db[j] += g


@njit(parallel=True, **OPTS)
def act_backward_bias_grad(code, dy, x, y, alpha, dx, db, accumulate, nthreads):
    """Parallel over one block of columns a thread: each row is read as one long run (blocks of
    64 columns strode over every row, ~3x slower at 512 x 4096). A thread owns each of its
    columns' whole sum, rows in order, so the bits do not depend on the blocks."""
    n = dy.shape[1]
    w = -(-n // max(1, nthreads))
    w = -(-w // 16) * 16
    for c in prange(-(-n // w)):
        act_backward_bias_grad_cols(
            c * w, min(n, c * w + w), code, dy, x, y, alpha, dx, db, accumulate
        )


@njit(**OPTS)
def bias_grad(dy, db, accumulate):
    """db (+)= column sums of dy, rows in order (serial: one pass over dy, contiguous)."""
    m, n = dy.shape
    if not accumulate:
        for j in range(n):
            db[j] = 0
    for i in range(m):
        for j in range(n):
            db[j] += dy[i, j]


@njit(**OPTS)
def softmax_rows(lo, hi, x, out):
    """Row-wise softmax, max-subtracted: out = exp(x - max) / sum (out may be x)."""
    n = x.shape[1]
    for i in range(lo, hi):
        mx = x[i, 0]
        for j in range(1, n):
            if x[i, j] > mx:
                mx = x[i, j]
        s = x[i, 0] - x[i, 0]
        for j in range(n):
            e = math.exp(x[i, j] - mx)
            out[i, j] = e
            s += e
        for j in range(n):
            out[i, j] /= s


@njit(parallel=True, **OPTS)
def softmax(x, out):
    m = x.shape[0]
    for c in prange(-(-m // CHUNK)):
        softmax_rows(c * CHUNK, min(m, c * CHUNK + CHUNK), x, out)
