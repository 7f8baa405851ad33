"""Default fused optimizer updates of the backend contract, written once against `xp`.

Each changes `param` and its state arrays in place with PyTorch's eager rule; scalars (bias
corrections included) arrive as Python floats computed on the host.
"""

from __future__ import annotations

import math
from typing import Any


class UpdateKernels:
    """In-place SGD, Adam/AdamW and RMSprop updates."""

    xp: Any

    def sgd_update(
        self,
        param: Any,
        grad: Any,
        buf: Any,
        *,
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        maximize: bool = False,
        first_step: bool = False,
    ) -> None:
        """torch.optim.SGD's rule, in place. `buf` is the momentum buffer (None without momentum);
        on the first step it is set to the (decayed) gradient, as PyTorch does."""
        t = param.dtype.type
        g = -grad if maximize else grad
        if weight_decay != 0.0:
            g = g + t(weight_decay) * param
        if momentum != 0.0:
            if first_step:
                self.copy_(buf, g)
            else:
                buf *= t(momentum)
                buf += t(1.0 - dampening) * g
            g = g + t(momentum) * buf if nesterov else buf
        param -= t(lr) * g

    def adam_update(
        self,
        param: Any,
        grad: Any,
        exp_avg: Any,
        exp_avg_sq: Any,
        *,
        step: int,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        amsgrad: bool = False,
        max_exp_avg_sq: Any = None,
        maximize: bool = False,
    ) -> None:
        """torch.optim.Adam (decoupled=False) / AdamW (decoupled=True), in place; step >= 1."""
        xp = self.xp
        t = param.dtype.type
        g = -grad if maximize else grad
        if weight_decay != 0.0:
            if decoupled:
                param *= t(1.0 - lr * weight_decay)
            else:
                g = g + t(weight_decay) * param
        exp_avg *= t(beta1)
        exp_avg += t(1.0 - beta1) * g
        exp_avg_sq *= t(beta2)
        exp_avg_sq += t(1.0 - beta2) * g * g
        bc1 = 1.0 - beta1**step
        bc2_sqrt = math.sqrt(1.0 - beta2**step)
        second = exp_avg_sq
        if amsgrad:
            xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            second = max_exp_avg_sq
        denom = xp.sqrt(second) / t(bc2_sqrt) + t(eps)
        param -= t(lr / bc1) * exp_avg / denom

    def rmsprop_update(
        self,
        param: Any,
        grad: Any,
        square_avg: Any,
        *,
        lr: float,
        alpha: float,
        eps: float,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        momentum_buffer: Any = None,
        centered: bool = False,
        grad_avg: Any = None,
        maximize: bool = False,
    ) -> None:
        """torch.optim.RMSprop's rule, in place."""
        xp = self.xp
        t = param.dtype.type
        g = -grad if maximize else grad
        if weight_decay != 0.0:
            g = g + t(weight_decay) * param
        square_avg *= t(alpha)
        square_avg += t(1.0 - alpha) * g * g
        if centered:
            grad_avg *= t(alpha)
            grad_avg += t(1.0 - alpha) * g
            avg = xp.sqrt(square_avg - grad_avg * grad_avg) + t(eps)
        else:
            avg = xp.sqrt(square_avg) + t(eps)
        if momentum > 0.0:
            momentum_buffer *= t(momentum)
            momentum_buffer += g / avg
            param -= t(lr) * momentum_buffer
        else:
            param -= t(lr) * g / avg
