"""Fused losses: loss and gradient in one pass per row. Sums run in row order (deterministic)."""

from __future__ import annotations

import math

from numba import njit

from ._config import OPTS


@njit(**OPTS)
def softmax_cross_entropy(logits, labels, grad, loss):
    """loss[()] = mean over rows of logsumexp(z) - z[label]; grad = (softmax(z) - onehot) / n.

    One pass per row: max, then exp and its sum, then the gradient. grad may be logits.
    Returns False, touching nothing, when a label is out of range.
    """
    m, n = logits.shape
    for i in range(m):
        if labels[i] < 0 or labels[i] >= n:
            return False
    t = logits.dtype.type
    total = t(0)
    inv = t(m)
    for i in range(m):
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
        total += math.log(s) + mx - zl
        for j in range(n):
            grad[i, j] = grad[i, j] / s
        grad[i, lab] -= t(1)
        for j in range(n):
            grad[i, j] = grad[i, j] / inv
    loss[()] = total / inv
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
