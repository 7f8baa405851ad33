"""Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_."""

from __future__ import annotations

import math
from collections.abc import Iterable

from ..errors import NonFiniteError
from ..nn.module import Parameter, parameters_backend


def clip_grad_norm_(
    parameters: Iterable[Parameter] | Parameter,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> float:
    """Scale all gradients so their joint norm is at most `max_norm`; return the norm before.

    Reads one number back from the device (the total norm), which the clip decision needs.
    """
    params = [parameters] if isinstance(parameters, Parameter) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    be = parameters_backend(params)
    if norm_type == math.inf:
        total = max(float(abs(be.to_host(g)).max()) for g in grads)
    elif norm_type == 2.0:
        total = math.sqrt(sum(float(be.sum_squares(g)) for g in grads))
    else:
        raise ValueError(f"clip_grad_norm_: norm_type must be 2.0 or inf, got {norm_type}")
    if error_if_nonfinite and not math.isfinite(total):
        raise NonFiniteError(f"the total gradient norm is {total}; cannot clip")
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            be.scale_(g, g.dtype.type(coef))
    return total
