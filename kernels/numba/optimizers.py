"""Fused in-place optimizer updates over flattened parameters: one pass reads param, grad and
state once and writes them once. Same operation order as base.Backend (PyTorch's eager rules), so
results match the NumPy backend to the last bit where no transcendental is involved.

Each rule is a serial `*_range(lo, hi, ...)` plus a `prange` wrapper over fixed chunks.
Arrays that a configuration does not use are passed as empty arrays of the same dtype.

Every loop runs over 0-based slices `[lo:hi]`: indexing with `i in range(lo, hi)` makes numba
emit a negative-index wraparound check (lo is only known at run time) that keeps LLVM from
vectorizing, and the common configurations get branch-free loops for the same reason (measured,
SGD with momentum: 401k elements serial 0.45 -> 0.19 ms, 16.8M parallel 14.7 -> 5.9 ms). Vector
lanes do the same IEEE operations in the same order as the scalar loop, so results are unchanged
to the last bit (tests/test_numba_kernels.py checks every rule against the NumPy backend).
"""

from __future__ import annotations

import math

from numba import njit, prange

CHUNK = 16384
#: Rule codes of `update_flat` (and the whole-step kernels); their order is RULES in
#: deepcore/backends/hyper.py, which also packs each rule's hp and flags rows.
SGD, ADAM, RMSPROP = 0, 1, 2

from ._config import OPTS  # noqa: E402


@njit(**OPTS)
def sgd_range(lo, hi, p, g, buf, lr, momentum, one_m_damp, nesterov, wd, maximize, first):
    """torch.optim.SGD on elements lo..hi."""
    p, g = p[lo:hi], g[lo:hi]
    n = p.shape[0]
    if momentum == 0 and not maximize and wd == 0:
        for i in range(n):
            p[i] -= lr * g[i]
        return
    if momentum != 0:
        buf = buf[lo:hi]
    if momentum != 0 and not (maximize or nesterov or first) and wd == 0:
        # the common case as a branch-free loop (vectorizes); same operations, same order
        for i in range(n):
            b = buf[i] * momentum + one_m_damp * g[i]
            buf[i] = b
            p[i] -= lr * b
        return
    for i in range(n):
        d = -g[i] if maximize else g[i]
        if wd != 0:
            d = d + wd * p[i]
        if momentum != 0:
            if first:
                b = d
            else:
                b = buf[i] * momentum + one_m_damp * d
            buf[i] = b
            d = d + momentum * b if nesterov else b
        p[i] -= lr * d


@njit(parallel=True, **OPTS)
def sgd(p, g, buf, lr, momentum, one_m_damp, nesterov, wd, maximize, first):
    n = p.shape[0]
    for c in prange(-(-n // CHUNK)):
        lo = c * CHUNK
        hi = min(n, lo + CHUNK)
        sgd_range(lo, hi, p, g, buf, lr, momentum, one_m_damp, nesterov, wd, maximize, first)


@njit(**OPTS)
def adam_range(
    lo, hi, p, g, m1, m2, mx, lr_bc1, beta1, one_m_b1, beta2, one_m_b2, bc2_sqrt, eps, wd,
    decay_factor, decoupled, amsgrad, maximize,
):  # fmt: skip
    """torch.optim.Adam / AdamW on elements lo..hi (bias corrections folded in on the host)."""
    p, g, m1, m2 = p[lo:hi], g[lo:hi], m1[lo:hi], m2[lo:hi]
    n = p.shape[0]
    if not (maximize or amsgrad) and (wd == 0 or decoupled):
        # Adam without weight decay, and AdamW: branch-free, so it vectorizes. Without decay
        # the factor is 1, and p * 1 is p exactly: the same results as the general loop.
        df = decay_factor if wd != 0 else p.dtype.type(1)
        for i in range(n):
            d = g[i]
            a = m1[i] * beta1 + one_m_b1 * d
            m1[i] = a
            v = m2[i] * beta2 + one_m_b2 * d * d
            m2[i] = v
            denom = math.sqrt(v) / bc2_sqrt + eps
            p[i] = p[i] * df - lr_bc1 * a / denom
        return
    if amsgrad:
        mx = mx[lo:hi]
    for i in range(n):
        d = -g[i] if maximize else g[i]
        if wd != 0:
            if decoupled:
                p[i] *= decay_factor
            else:
                d = d + wd * p[i]
        a = m1[i] * beta1 + one_m_b1 * d
        m1[i] = a
        v = m2[i] * beta2 + one_m_b2 * d * d
        m2[i] = v
        if amsgrad:
            v = max(mx[i], v)
            mx[i] = v
        denom = math.sqrt(v) / bc2_sqrt + eps
        p[i] -= lr_bc1 * a / denom


@njit(parallel=True, **OPTS)
def adam(
    p, g, m1, m2, mx, lr_bc1, beta1, one_m_b1, beta2, one_m_b2, bc2_sqrt, eps, wd, decay_factor,
    decoupled, amsgrad, maximize,
):  # fmt: skip
    n = p.shape[0]
    for c in prange(-(-n // CHUNK)):
        lo = c * CHUNK
        hi = min(n, lo + CHUNK)
        adam_range(
            lo, hi, p, g, m1, m2, mx, lr_bc1, beta1, one_m_b1, beta2, one_m_b2, bc2_sqrt, eps,
            wd, decay_factor, decoupled, amsgrad, maximize,
        )  # fmt: skip


@njit(**OPTS)
def rmsprop_range(
    lo, hi, p, g, sq, buf, gavg, lr, alpha, one_m_alpha, eps, wd, momentum, centered, maximize
):
    """torch.optim.RMSprop on elements lo..hi."""
    p, g, sq = p[lo:hi], g[lo:hi], sq[lo:hi]
    n = p.shape[0]
    if not (maximize or centered) and wd == 0 and momentum == 0:
        for i in range(n):  # the default configuration, branch-free
            d = g[i]
            s = sq[i] * alpha + one_m_alpha * d * d
            sq[i] = s
            p[i] -= lr * d / (math.sqrt(s) + eps)
        return
    if centered:
        gavg = gavg[lo:hi]
    if momentum > 0:
        buf = buf[lo:hi]
    for i in range(n):
        d = -g[i] if maximize else g[i]
        if wd != 0:
            d = d + wd * p[i]
        s = sq[i] * alpha + one_m_alpha * d * d
        sq[i] = s
        if centered:
            ga = gavg[i] * alpha + one_m_alpha * d
            gavg[i] = ga
            avg = math.sqrt(s - ga * ga) + eps
        else:
            avg = math.sqrt(s) + eps
        if momentum > 0:
            b = buf[i] * momentum + d / avg
            buf[i] = b
            p[i] -= lr * b
        else:
            p[i] -= lr * d / avg


@njit(parallel=True, **OPTS)
def rmsprop(p, g, sq, buf, gavg, lr, alpha, one_m_alpha, eps, wd, momentum, centered, maximize):
    n = p.shape[0]
    for c in prange(-(-n // CHUNK)):
        lo = c * CHUNK
        hi = min(n, lo + CHUNK)
        rmsprop_range(
            lo, hi, p, g, sq, buf, gavg, lr, alpha, one_m_alpha, eps, wd, momentum, centered,
            maximize,
        )  # fmt: skip


@njit(**OPTS)
def update_flat(lo, hi, p, g, s1, s2, s3, opt, hp, flags):
    """Elements lo:hi of one parameter's update by rule `opt` (flat views; s1..s3 its state:
    SGD's momentum buffer; Adam's exp_avg, exp_avg_sq, max_exp_avg_sq; RMSprop's square_avg,
    momentum_buffer, grad_avg; empty when unused). hp, flags: the rule's row (hyper.pack)."""
    if opt == SGD:
        sgd_range(
            lo, hi, p, g, s1, hp[0], hp[1], hp[2], flags[0] != 0, hp[3], flags[1] != 0,
            flags[2] != 0,
        )  # fmt: skip
    elif opt == ADAM:
        adam_range(
            lo, hi, p, g, s1, s2, s3, hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], hp[6], hp[7],
            hp[8], flags[0] != 0, flags[1] != 0, flags[2] != 0,
        )  # fmt: skip
    else:
        rmsprop_range(
            lo, hi, p, g, s1, s2, s3, hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], flags[0] != 0,
            flags[1] != 0,
        )  # fmt: skip
