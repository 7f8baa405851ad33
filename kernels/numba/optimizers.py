"""Fused in-place optimizer updates over flattened parameters: one pass reads param, grad and
state once and writes them once. Same operation order as base.Backend (PyTorch's eager rules), so
results match the NumPy backend to the last bit where no transcendental is involved.

Each rule is a serial `*_range(lo, hi, ...)` plus a `prange` wrapper over fixed chunks.
Arrays that a configuration does not use are passed as empty arrays of the same dtype.
"""

from __future__ import annotations

import math

from numba import njit, prange

CHUNK = 16384

from ._config import OPTS  # noqa: E402


@njit(**OPTS)
def sgd_range(lo, hi, p, g, buf, lr, momentum, one_m_damp, nesterov, wd, maximize, first):
    """torch.optim.SGD on elements lo..hi."""
    if momentum != 0 and not (maximize or nesterov or first) and wd == 0:
        # the common case as a branch-free loop (vectorizes); same operations, same order
        for i in range(lo, hi):
            b = buf[i] * momentum + one_m_damp * g[i]
            buf[i] = b
            p[i] -= lr * b
        return
    for i in range(lo, hi):
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
        sgd_range(
            c * CHUNK,
            min(n, c * CHUNK + CHUNK),
            p,
            g,
            buf,
            lr,
            momentum,
            one_m_damp,
            nesterov,
            wd,
            maximize,
            first,
        )


@njit(**OPTS)
def adam_range(
    lo,
    hi,
    p,
    g,
    m1,
    m2,
    mx,
    lr_bc1,
    beta1,
    one_m_b1,
    beta2,
    one_m_b2,
    bc2_sqrt,
    eps,
    wd,
    decay_factor,
    decoupled,
    amsgrad,
    maximize,
):
    """torch.optim.Adam / AdamW on elements lo..hi (bias corrections folded in on the host)."""
    for i in range(lo, hi):
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
    p,
    g,
    m1,
    m2,
    mx,
    lr_bc1,
    beta1,
    one_m_b1,
    beta2,
    one_m_b2,
    bc2_sqrt,
    eps,
    wd,
    decay_factor,
    decoupled,
    amsgrad,
    maximize,
):
    n = p.shape[0]
    for c in prange(-(-n // CHUNK)):
        adam_range(
            c * CHUNK,
            min(n, c * CHUNK + CHUNK),
            p,
            g,
            m1,
            m2,
            mx,
            lr_bc1,
            beta1,
            one_m_b1,
            beta2,
            one_m_b2,
            bc2_sqrt,
            eps,
            wd,
            decay_factor,
            decoupled,
            amsgrad,
            maximize,
        )


@njit(**OPTS)
def rmsprop_range(
    lo, hi, p, g, sq, buf, gavg, lr, alpha, one_m_alpha, eps, wd, momentum, centered, maximize
):
    """torch.optim.RMSprop on elements lo..hi."""
    for i in range(lo, hi):
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
        rmsprop_range(
            c * CHUNK,
            min(n, c * CHUNK + CHUNK),
            p,
            g,
            sq,
            buf,
            gavg,
            lr,
            alpha,
            one_m_alpha,
            eps,
            wd,
            momentum,
            centered,
            maximize,
        )
