"""A whole training step of a small MLP in one compiled call: forward, softmax cross-entropy,
backward and the optimizer update, one thread, no allocation.

For small models a step is ~20 kernel launches of a few microseconds each; Python and dispatch
overhead would dominate, so the whole step is one function over tuples of preallocated arrays.

The products use the GEMM's register-blocked micro-kernel (gemm.micro) without its K and N
blocking (small models fit the caches) and read their operands in place where the layout allows:
- forward  z = x @ W.T: W.T packed first (gemm.pack_b, transposed in registers); a narrow output
  (e.g. 10 classes) runs as row dot products (gemm.dot_rows);
- dW = dz.T @ a and da = dz @ W: both operands read in place (rows of a and W are contiguous).
Each output element is summed in one fixed order (FMA contraction only, no reassociation), so
the step is bitwise reproducible. Bias, activation and the activation's backward are applied to
a row while it is in L1.

Layout: layer l computes z[l] = a[l-1] @ W[l].T + b[l], a[l] = act_l(z[l]) with a[-1] = x.
Optimizer state: per-parameter 1-D arrays, weights 0..L-1 then biases L..2L-1.
"""

from __future__ import annotations

from numba import njit, prange

from ._config import GEMM_OPTS, OPTS
from .elementwise import IDENTITY, RELU, act_grad, bias_act_flat
from .gemm import dot_rows, pack_b
from .losses import softmax_cross_entropy
from .micro import MR, NV, NV_HALF, micro, row_offsets
from .optimizers import ADAM, CHUNK, RMSPROP, SGD, update_flat
from .simd import lanes

__all__ = [
    "ADAM", "RMSPROP", "SGD", "mlp_backward", "mlp_forward", "mlp_step", "small_gemm",
    "update_params", "update_params_parallel",
]  # fmt: skip


@njit(**OPTS)
def _update_range(lo, hi, p, g, i, s1, s2, s3, opt, hp, flags):
    """Elements lo:hi of parameter i's optimizer update (flattened views; s1..s3 per-parameter
    state lists; hp, flags: one row per parameter, deepcore.backends.hyper's order)."""
    update_flat(lo, hi, p, g, s1[i], s2[i], s3[i], opt, hp[i], flags[i])


@njit(**OPTS)
def _update(p, g, i, s1, s2, s3, opt, hp, flags):
    """One parameter's optimizer update (flattened views)."""
    _update_range(0, p.shape[0], p, g, i, s1, s2, s3, opt, hp, flags)


@njit(**OPTS)
def update_params(ps, gs, s1, s2, s3, opt, hp, flags):
    """_update on every flat parameter: a whole optimizer step in one call; the same bits as
    the per-parameter kernels (tested)."""
    for i in range(len(ps)):
        _update(ps[i], gs[i], i, s1, s2, s3, opt, hp, flags)


@njit(parallel=True, **OPTS)
def update_params_parallel(ps, gs, s1, s2, s3, opt, hp, flags):
    """update_params over fixed chunks of all parameters in one prange (same bits: every
    element's update is independent of the others)."""
    total = 0
    for i in range(len(ps)):
        total += -(-ps[i].shape[0] // CHUNK)
    for c in prange(total):
        i = 0
        first = 0  # chunks before parameter i
        while first + -(-ps[i].shape[0] // CHUNK) <= c:
            first += -(-ps[i].shape[0] // CHUNK)
            i += 1
        lo = (c - first) * CHUNK
        hi = min(ps[i].shape[0], lo + CHUNK)
        _update_range(lo, hi, ps[i], gs[i], i, s1, s2, s3, opt, hp, flags)


@njit(**GEMM_OPTS)
def _edge(a, ta, b, c, i_lo, i_hi, j_lo, j_hi):
    """c[i_lo:i_hi, j_lo:j_hi] = op(a) @ b by rank-1 row updates, k ascending. Row slices
    indexed from 0 (no negative-index wraparound), so the j loops vectorize."""
    k = b.shape[0]
    zero = c.dtype.type(0)
    for i in range(i_lo, i_hi):
        cr = c[i, j_lo:j_hi]
        for j in range(cr.shape[0]):
            cr[j] = zero
        for p in range(k):
            v = a[p, i] if ta else a[i, p]
            br = b[p, j_lo:j_hi]
            for j in range(cr.shape[0]):
                cr[j] += v * br[j]


@njit(**GEMM_OPTS)
def small_gemm(a, ta, b, c):
    """c = op(a) @ b, op(a) = a.T when ta; b row-major (k, n), read in place (no packing).
    Whole NR-wide column strips run the GEMM's register-blocked micro-kernel (the last row
    strip may be short), then a half-width strip where one fits, the last columns rank-1
    updates; every sum runs over k in order, one FMA chain per element."""
    m, n = c.shape
    k = b.shape[0]
    nr = NV * lanes(c)
    nb = n - n % nr  # whole strips end here
    half = nr // 2
    nh = nb + half if NV >= 2 and n - nb >= half else nb  # then perhaps one half strip
    af = a.reshape(-1)
    bf = b.reshape(-1)
    cf = c.reshape(-1)
    lda = a.shape[1]
    one = c.dtype.type(1)
    zero = c.dtype.type(0)
    for i0 in range(0, m, MR):
        last = min(MR, m - i0) - 1  # rows past the end repeat the last (computed, not stored)
        if ta:  # A[r, p] = a[p, i0 + r]
            aps = lda
            o0, o1, o2, o3, o4, o5 = row_offsets(i0, 1, last)
        else:  # A[r, p] = a[i0 + r, p]
            aps = 1
            o0, o1, o2, o3, o4, o5 = row_offsets(i0 * lda, lda, last)
        for j0 in range(0, nb, nr):
            micro(af, o0, o1, o2, o3, o4, o5, aps, bf, j0, n, k, cf, i0 * n + j0, n, last + 1, nr,
                  True, one, zero, cf, NV)  # fmt: skip
        if nh > nb:  # a half-width strip (NV // 2 vectors) before the last columns
            micro(af, o0, o1, o2, o3, o4, o5, aps, bf, nb, n, k, cf, i0 * n + nb, n, last + 1,
                  nh - nb, True, one, zero, cf, NV_HALF)  # fmt: skip
    if nh < n:
        _edge(a, ta, b, c, 0, m, nh, n)


@njit(**GEMM_OPTS)
def packed_gemm(a, pb, c, tmp):
    """c = a @ B with B packed by gemm.pack_b into NR-wide strips over all of k = a.shape[1];
    tmp (MR x NR) takes the last, narrower strip."""
    m, n = c.shape
    k = a.shape[1]
    nr = NV * lanes(c)
    af = a.reshape(-1)
    cf = c.reshape(-1)
    one = c.dtype.type(1)
    zero = c.dtype.type(0)
    for i0 in range(0, m, MR):
        last = min(MR, m - i0) - 1  # rows past the end repeat the last (computed, not stored)
        o0, o1, o2, o3, o4, o5 = row_offsets(i0 * k, k, last)
        for s in range(-(-n // nr)):
            j0 = s * nr
            micro(af, o0, o1, o2, o3, o4, o5, 1, pb, s * nr * k, nr, k, cf, i0 * n + j0, n,
                  last + 1, min(nr, n - j0), True, one, zero, tmp, NV)  # fmt: skip


@njit(**GEMM_OPTS)
def forward_layer(a, w, wt, b, code, alpha, z, out, tmp):
    """z = a @ w.T + b (pre-activation), out = act(z); wt gets w.T packed first (transposed
    in registers: ~0.4 cycles an element, against ~2 for a loop of element copies)."""
    no, ni = w.shape
    if 2 * no < NV * lanes(z):  # a narrow output (e.g. 10 classes): row dot products
        dot_rows(a, w, z, z.dtype.type(1), z.dtype.type(0), 0, a.shape[0])
    else:
        pack_b(w.reshape(-1), ni, True, 0, ni, 0, no, wt)
        packed_gemm(a, wt, z, tmp)
    zf = z.reshape(-1)
    of = out.reshape(-1)
    for i in range(a.shape[0]):  # z += b, out = act(z): the layered route's kernel, row by row
        bias_act_flat(zf, of, i * no, (i + 1) * no, b, code, alpha)


@njit(**GEMM_OPTS)
def backward_layer(d, code, z, y, alpha, a, w, gw, gb, da):
    """d: dL/d(output) of the layer, turned in place into dL/dz; gb = column sums of dz; gw =
    dz.T @ a; da = dz @ w (da has 0 rows for the first layer: skipped)."""
    m, no = d.shape
    for o in range(no):
        gb[o] = 0
    zero = alpha - alpha
    for i in range(m):
        if code == RELU:
            for o in range(no):
                g = d[i, o] if y[i, o] > zero else zero * d[i, o]
                d[i, o] = g
                gb[o] += g
        elif code != IDENTITY:
            for o in range(no):
                g = act_grad(d[i, o], z[i, o], y[i, o], code, alpha)
                d[i, o] = g
                gb[o] += g
        else:
            for o in range(no):
                gb[o] += d[i, o]
    small_gemm(d, True, a, gw)
    if da.shape[0] != 0:
        small_gemm(d, False, w, da)


@njit(**GEMM_OPTS)
def mlp_forward(ws, bs, acts, alpha, x, masks, zs, outs, ins, wts, tmp):
    """Layer l: zs[l] = src @ ws[l].T + bs[l], outs[l] = act(zs[l]), src = x or ins[l - 1].
    A layer with a dropout mask (masks[l] not empty) gets ins[l] = outs[l] * masks[l]; without
    one, ins[l] is outs[l] (the caller passes the same array)."""
    for l in range(len(ws)):
        src = x if l == 0 else ins[l - 1]
        forward_layer(src, ws[l], wts[l], bs[l], acts[l], alpha, zs[l], outs[l], tmp)
        if masks[l].shape[0] != 0:
            o, mk, dst = outs[l], masks[l], ins[l]
            for i in range(o.shape[0]):
                for j in range(o.shape[1]):
                    dst[i, j] = o[i, j] * mk[i, j]


@njit(**GEMM_OPTS)
def mlp_backward(ws, gws, gbs, acts, alpha, x, masks, zs, outs, ins, ds, dx):
    """Backward of mlp_forward: ds[L-1] holds dL/d(ins[L-1]) on entry; every ds[l] is
    overwritten; gradients gws, gbs overwritten; dx gets dL/dx unless it has 0 rows."""
    nl = len(ws)
    for l in range(nl - 1, -1, -1):
        d = ds[l]
        if masks[l].shape[0] != 0:  # through the dropout after this layer
            mk = masks[l]
            for i in range(d.shape[0]):
                for j in range(d.shape[1]):
                    d[i, j] = d[i, j] * mk[i, j]
        src = x if l == 0 else ins[l - 1]
        da = ds[l - 1] if l > 0 else dx
        backward_layer(d, acts[l], zs[l], outs[l], alpha, src, ws[l], gws[l], gbs[l], da)


@njit(**GEMM_OPTS)
def mlp_step(ws, bs, gws, gbs, acts, alpha, x, labels, masks, ins, opt, s1, s2, s3, hp, flags,
             zs, outs, ds, wts, tmp, loss):  # fmt: skip
    """Forward, cross-entropy, backward (grads overwritten) and update; loss[()] gets the loss.

    Returns False (nothing updated) when a label is out of range.
    """
    nl = len(ws)
    ncls = outs[nl - 1].shape[1]
    m = x.shape[0]
    for i in range(m):
        if labels[i] < 0 or labels[i] >= ncls:
            return False
    mlp_forward(ws, bs, acts, alpha, x, masks, zs, outs, ins, wts, tmp)
    softmax_cross_entropy(outs[nl - 1], labels, ds[nl - 1], loss)
    mlp_backward(ws, gws, gbs, acts, alpha, x, masks, zs, outs, ins, ds, ds[0][:0])
    for l in range(nl):
        _update(ws[l].reshape(-1), gws[l].reshape(-1), l, s1, s2, s3, opt, hp, flags)
        _update(bs[l], gbs[l], nl + l, s1, s2, s3, opt, hp, flags)
    return True
