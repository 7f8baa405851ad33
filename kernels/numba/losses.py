"""Fused losses: loss and gradient in one pass per row. Sums run in row order (deterministic)."""

from __future__ import annotations

import math

from numba import njit, prange

from ._config import OPTS

#: Rows per parallel chunk of softmax_cross_entropy_parallel.
CHUNK = 16


@njit(**OPTS)
def _sce_row(i, logits, labels, grad, inv):
    """Row i: grad[i] = (softmax(z) - onehot) / inv; returns logsumexp(z) - z[label]. One pass
    for the max, one for exp and its sum, one for the gradient."""
    n = logits.shape[1]
    t = logits.dtype.type
    mx = logits[i, 0]
    for j in range(1, n):
        if logits[i, j] > mx:
            mx = logits[i, j]
    lab = labels[i]
    zl = logits[i, lab]
    s = t(0)
    for j in range(n):
        e = math.exp(logits[i, j] - mx)
        grad[i, j] = e
        s += e
    term = math.log(s) + mx - zl
    for j in range(n):
        grad[i, j] = grad[i, j] / s
    grad[i, lab] -= t(1)
    for j in range(n):
        grad[i, j] = grad[i, j] / inv
    return term


@njit(**OPTS)
def labels_in_range(labels, n):
    """Whether every label lies in [0, n) (the host check before a step changes anything)."""
    for i in range(labels.shape[0]):
        if labels[i] < 0 or labels[i] >= n:
            return False
    return True


@njit(**OPTS)
def softmax_cross_entropy(logits, labels, grad, loss):
    """loss[()] = mean over rows of logsumexp(z) - z[label]; grad = (softmax(z) - onehot) / n,
    rows in order. grad may be logits. Returns False, touching nothing, when a label is out of
    range."""
    m, n = logits.shape
    for i in range(m):
        if labels[i] < 0 or labels[i] >= n:
            return False
    t = logits.dtype.type
    total = t(0)
    inv = t(m)
    for i in range(m):
        total += _sce_row(i, logits, labels, grad, inv)
    loss[()] = total / inv
    return True


@njit(**OPTS)
def softmax_cross_entropy_rows(lo, hi, logits, labels, grad, terms):
    """Rows lo..hi of softmax_cross_entropy: the gradient rows, and each row's loss term in
    terms[i]; labels already checked."""
    inv = logits.dtype.type(logits.shape[0])
    for i in range(lo, hi):
        terms[i] = _sce_row(i, logits, labels, grad, inv)


@njit(parallel=True, **OPTS)
def softmax_cross_entropy_parallel(logits, labels, grad, loss, terms):
    """softmax_cross_entropy over row chunks in parallel, the row terms then summed in row
    order: the same operations, so the same bits, as the serial kernel (tested)."""
    m, n = logits.shape
    for i in range(m):
        if labels[i] < 0 or labels[i] >= n:
            return False
    for c in prange(-(-m // CHUNK)):
        softmax_cross_entropy_rows(c * CHUNK, min(m, c * CHUNK + CHUNK), logits, labels, grad,
                                   terms)  # fmt: skip
    t = logits.dtype.type
    total = t(0)
    for i in range(m):
        total += terms[i]
    loss[()] = total / t(m)
    return True


@njit(**OPTS)
def bce_with_logits(logits, targets, grad, loss):
    """Mean of max(z,0) - z*t + log1p(exp(-|z|)); grad = (sigmoid(z) - t) / size. grad may be z."""
    m, n = logits.shape
    t = logits.dtype.type
    size = t(m * n)
    total = t(0)
    for i in range(m):
        for j in range(n):
            z = logits[i, j]
            y = targets[i, j]
            e = math.exp(-abs(z))
            total += (max(z, t(0)) - z * y) + math.log1p(e)
            sg = t(1) / (t(1) + e) if z >= 0 else e / (t(1) + e)
            grad[i, j] = (sg - y) / size
    loss[()] = total / size


@njit(**OPTS)
def mse(pred, target, grad, loss):
    """Mean of (pred - target)^2; grad = 2 (pred - target) / size. grad may be pred."""
    m, n = pred.shape
    t = pred.dtype.type
    scale = t(2.0 / (m * n))
    total = t(0)
    for i in range(m):
        for j in range(n):
            d = pred[i, j] - target[i, j]
            total += d * d
            grad[i, j] = d * scale
    loss[()] = total / t(m * n)
