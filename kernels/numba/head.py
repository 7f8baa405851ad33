"""The output layer of a layered training step in one serial compiled call: its forward, the
softmax cross-entropy and its backward (the layered route's narrow last layer, e.g. 10 classes).

Its three products are a few hundred thousand multiply-adds each (mnist: 128 x 10 x 512): run
as parallel GEMMs, each is a thread wake-up and join for ~20 us of work, and on a shared
machine a join waits for a descheduled thread. Here they run on the calling thread with the
whole-step kernel's layer functions (step.forward_layer, step.backward_layer): the same maths,
each sum in one fixed order.
"""

from __future__ import annotations

from numba import njit

from ._config import GEMM_OPTS
from .losses import softmax_cross_entropy
from .step import backward_layer, forward_layer


@njit(**GEMM_OPTS)
def head_step(src, w, wt, b, code, alpha, mask, z, out, inp, labels, d, loss, gw, gb, da, tmp):
    """z = src @ w.T + b, out = act(z), inp = out * mask (a mask with rows; inp is out
    without); loss[()] and d = dL/d(inp) of mean softmax cross-entropy over labels; then d
    becomes dL/dz in place, gb its column sums, gw = d.T @ src and da = dL/d(src) = d @ w (da
    with 0 rows: skipped). Returns False, touching nothing, when a label is out of range."""
    ncls = w.shape[0]
    for i in range(labels.shape[0]):
        if labels[i] < 0 or labels[i] >= ncls:
            return False
    forward_layer(src, w, wt, b, code, alpha, z, out, tmp)
    masked = mask.shape[0] != 0
    if masked:
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                inp[i, j] = out[i, j] * mask[i, j]
    softmax_cross_entropy(inp, labels, d, loss)
    if masked:
        for i in range(d.shape[0]):
            for j in range(d.shape[1]):
                d[i, j] = d[i, j] * mask[i, j]
    backward_layer(d, code, z, out, alpha, src, w, gw, gb, da)
    return True
