"""A whole training step of a small MLP in one compiled call: forward, softmax cross-entropy,
backward and the optimizer update, one thread, no allocation.

For small models a step is ~20 kernel launches of a few microseconds each; Python and dispatch
overhead would dominate, so the whole step is one function over tuples of preallocated arrays.

Small shapes get no packing and no register-blocked micro-kernel (at 32 x 128 x 64 the packing and
the 4 x 32 block's padding on a 10-wide output cost more than they save). Every product is written
as rank-1 updates whose inner loop runs over a contiguous row, which LLVM vectorizes without
reassociating anything (FMA contraction only): each output element is still summed in one fixed
order (k ascending), so the step is bitwise reproducible.

- forward  z[i, :] = sum_k x[i, k] * Wt[k, :]  (Wt: a transposed copy of W refreshed every step)
- dW[o, :] = sum_i dz[i, o] * a[i, :]          (rows of dW and a are contiguous)
- da[i, :] = sum_o dz[i, o] * W[o, :]          (rows of W are contiguous)
Bias, activation and the activation's backward are applied to a row while it is in L1.

Layout: layer l computes z[l] = a[l-1] @ W[l].T + b[l], a[l] = act_l(z[l]) with a[-1] = x.
Optimizer state: per-parameter 1-D arrays, weights 0..L-1 then biases L..2L-1.
"""

from __future__ import annotations

from numba import njit, prange

from ._config import GEMM_OPTS, OPTS
from ._micro_small import SMR, SNR, block_nn, block_tn
from .elementwise import IDENTITY, RELU, act, act_grad
from .losses import softmax_cross_entropy
from .optimizers import ADAM, CHUNK, SGD, update_flat

__all__ = ["ADAM", "SGD", "mlp_step", "small_gemm", "update_params", "update_params_parallel"]


@njit(**OPTS)
def _update_range(lo, hi, p, g, i, s1, s2, s3, opt, hp, flags):
    """Elements lo:hi of parameter i's optimizer update (flattened views; s1..s3 per-parameter
    state lists)."""
    update_flat(lo, hi, p, g, s1[i], s2[i], s3[i], opt, hp, flags)


@njit(**OPTS)
def _update(p, g, i, s1, s2, s3, opt, hp, flags):
    """One parameter's optimizer update (flattened views)."""
    _update_range(0, p.shape[0], p, g, i, s1, s2, s3, opt, hp, flags)


@njit(**OPTS)
def update_params(ps, gs, s1, s2, s3, opt, hp, flags):
    """_update on every flat parameter (the layered step's whole update in one call); the same
    bits as the per-parameter kernels (tested)."""
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
    """c = op(a) @ b, op(a) = a.T when ta; b row-major (k, n). Full SMR x SNR blocks run the
    register-blocked kernel, the edges rank-1 updates; every sum runs over k in order."""
    m, n = c.shape
    k = b.shape[0]
    mb = m - m % SMR
    nb = n - n % SNR
    for i0 in range(0, mb, SMR):
        for j0 in range(0, nb, SNR):
            if ta:
                block_tn(a, b, c, i0, j0, k)
            else:
                block_nn(a, b, c, i0, j0, k)
    if nb < n:
        _edge(a, ta, b, c, 0, m, nb, n)
    if mb < m:
        _edge(a, ta, b, c, mb, m, 0, nb)


@njit(**GEMM_OPTS)
def dot_nt(a, w, c):
    """c = a @ w.T as row-by-row dot products (narrow outputs, e.g. 10 classes, where the
    32-wide register block would mostly compute padding). Each dot keeps 16 partial sums
    (k mod 16, one SIMD register) combined in a fixed tree, then the tail: a fixed order,
    so still bitwise reproducible, but not the k-ascending order of small_gemm."""
    m, k = a.shape
    n = w.shape[0]
    kb = k - k % 16
    zero = c.dtype.type(0)
    for i in range(m):
        ar = a[i]
        for o in range(n):
            wr = w[o]
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = zero
            s8 = s9 = s10 = s11 = s12 = s13 = s14 = s15 = zero
            for p in range(0, kb, 16):
                av = ar[p : p + 16]
                wv = wr[p : p + 16]
                s0 += av[0] * wv[0]
                s1 += av[1] * wv[1]
                s2 += av[2] * wv[2]
                s3 += av[3] * wv[3]
                s4 += av[4] * wv[4]
                s5 += av[5] * wv[5]
                s6 += av[6] * wv[6]
                s7 += av[7] * wv[7]
                s8 += av[8] * wv[8]
                s9 += av[9] * wv[9]
                s10 += av[10] * wv[10]
                s11 += av[11] * wv[11]
                s12 += av[12] * wv[12]
                s13 += av[13] * wv[13]
                s14 += av[14] * wv[14]
                s15 += av[15] * wv[15]
            s = (((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))) + (
                ((s8 + s9) + (s10 + s11)) + ((s12 + s13) + (s14 + s15))
            )
            for p in range(kb, k):
                s += ar[p] * wr[p]
            c[i, o] = s


@njit(**GEMM_OPTS)
def forward_layer(a, w, wt, b, code, alpha, z, out):
    """z = a @ w.T + b (pre-activation), out = act(z); wt gets w transposed first."""
    no, ni = w.shape
    if no < SNR:
        dot_nt(a, w, z)
    else:
        for k in range(ni):  # this order measured fastest (contiguous writes)
            for o in range(no):
                wt[k, o] = w[o, k]
        small_gemm(a, False, wt, z)
    m = a.shape[0]
    zero = alpha - alpha
    for i in range(m):  # relu and identity get their own loops: LLVM vectorizes those
        if code == RELU:
            for o in range(no):
                s = z[i, o] + b[o]
                z[i, o] = s
                out[i, o] = s if s > zero else zero
        elif code == IDENTITY:
            for o in range(no):
                s = z[i, o] + b[o]
                z[i, o] = s
                out[i, o] = s
        else:
            for o in range(no):
                s = z[i, o] + b[o]
                z[i, o] = s
                out[i, o] = act(s, code, alpha)


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
def mlp_step(ws, bs, gws, gbs, acts, alpha, x, labels, opt, s1, s2, s3, hp, flags, zs, outs, ds,
             wts, loss):  # fmt: skip
    """Forward, cross-entropy, backward (grads overwritten) and update; loss[()] gets the loss.

    Returns False (nothing updated) when a label is out of range.
    """
    nl = len(ws)
    ncls = outs[nl - 1].shape[1]
    m = x.shape[0]
    for i in range(m):
        if labels[i] < 0 or labels[i] >= ncls:
            return False
    for l in range(nl):
        src = x if l == 0 else outs[l - 1]
        forward_layer(src, ws[l], wts[l], bs[l], acts[l], alpha, zs[l], outs[l])
    softmax_cross_entropy(outs[nl - 1], labels, ds[nl - 1], loss)
    for l in range(nl - 1, -1, -1):
        src = x if l == 0 else outs[l - 1]
        da = ds[l - 1] if l > 0 else ds[l][:0]
        backward_layer(ds[l], acts[l], zs[l], outs[l], alpha, src, ws[l], gws[l], gbs[l], da)
    for l in range(nl):
        _update(ws[l].reshape(-1), gws[l].reshape(-1), l, s1, s2, s3, opt, hp, flags)
        _update(bs[l], gbs[l], nl + l, s1, s2, s3, opt, hp, flags)
    return True
