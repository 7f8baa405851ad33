"""A whole training step of a small MLP in one compiled call: forward, softmax cross-entropy,
backward and the optimizer update, one thread, no allocation.

For small models a step is ~20 kernel launches of a few microseconds each; Python and dispatch
overhead would dominate, so the whole step is one function over tuples of preallocated arrays.
The maths is the layer-by-layer path's: same kernels (gemm micro-kernel, activation, fused
backward + bias gradient, optimizer rules) in the same order.

Layout: layer l computes z[l] = a[l-1] @ W[l].T + b[l], a[l] = act_l(z[l]) with a[-1] = x.
Optimizer state arrays are 1-D, one per parameter: weights 0..L-1 then biases L..2L-1.
"""

from __future__ import annotations

from numba import njit

from ._config import GEMM_OPTS
from .elementwise import act_backward_bias_grad_cols, bias_act_rows
from .gemm import gemm_serial
from .losses import softmax_cross_entropy
from .optimizers import adam_range, sgd_range

SGD, ADAM = 0, 1
#: hp (floats, the params' dtype): SGD [lr, momentum, 1-dampening, weight_decay];
#: Adam [lr/bc1, beta1, 1-beta1, beta2, 1-beta2, sqrt(bc2), eps, weight_decay, 1-lr*wd].
#: flags (int64): SGD [nesterov, maximize, first_step]; Adam [decoupled, amsgrad, maximize].


@njit(**GEMM_OPTS)
def _update(p, g, i, s1, s2, s3, opt, hp, flags):
    """One parameter's optimizer update (flattened views)."""
    n = p.shape[0]
    if opt == SGD:
        sgd_range(
            0, n, p, g, s1[i], hp[0], hp[1], hp[2], flags[0] != 0, hp[3], flags[1] != 0,
            flags[2] != 0,
        )  # fmt: skip
    else:
        adam_range(
            0, n, p, g, s1[i], s2[i], s3[i], hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], hp[6],
            hp[7], hp[8], flags[0] != 0, flags[1] != 0, flags[2] != 0,
        )  # fmt: skip


@njit(**GEMM_OPTS)
def mlp_step(ws, bs, gws, gbs, acts, alpha, x, labels, opt, s1, s2, s3, hp, flags, zs, outs, ds,
             pa, pb, loss):  # fmt: skip
    """Forward, cross-entropy, backward (grads overwritten) and update; loss[()] gets the loss.

    Returns False (nothing updated) when a label is out of range.
    """
    nl = len(ws)
    t = x.dtype.type
    one = t(1)
    zero = t(0)
    m = x.shape[0]
    ncls = outs[nl - 1].shape[1]
    for i in range(m):
        if labels[i] < 0 or labels[i] >= ncls:
            return False
    for l in range(nl):
        src = x if l == 0 else outs[l - 1]
        gemm_serial(src, ws[l], zs[l], False, True, one, zero, pa, pb)
        bias_act_rows(0, m, zs[l], bs[l], True, acts[l], alpha, outs[l], zs[l], True)
    softmax_cross_entropy(outs[nl - 1], labels, ds[nl - 1], loss)
    for l in range(nl - 1, -1, -1):
        d = ds[l]
        act_backward_bias_grad_cols(
            0, d.shape[1], acts[l], d, zs[l], outs[l], alpha, d, gbs[l], False
        )
        src = x if l == 0 else outs[l - 1]
        gemm_serial(d, src, gws[l], True, False, one, zero, pa, pb)
        if l > 0:
            gemm_serial(d, ws[l], ds[l - 1], False, False, one, zero, pa, pb)
    for l in range(nl):
        _update(ws[l].reshape(-1), gws[l].reshape(-1), l, s1, s2, s3, opt, hp, flags)
        _update(bs[l], gbs[l], nl + l, s1, s2, s3, opt, hp, flags)
    return True
