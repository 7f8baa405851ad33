"""Default fused optimizer updates of the backend contract, written once against `xp`.

Each rule's per-element formula is one `*_packed(param, grad, state..., hp, flags)` method that
reads its scalars from a row packed by deepcore.backends.hyper (the one order every backend and
route shares); the keyword methods (`sgd_update`, ...) pack a row and call it. Everything changes
`param` and its state arrays in place with PyTorch's eager rule.
"""

from __future__ import annotations

from typing import Any

from . import hyper


class UpdateKernels:
    """In-place SGD, Adam/AdamW and RMSprop updates."""

    xp: Any
    copy_: Any

    # ------------------------------------------------------------------ keyword API
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
        group = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                     weight_decay=weight_decay, maximize=maximize)  # fmt: skip
        hp, flags = hyper.pack("sgd", group, first_step=first_step)
        self.sgd_packed(param, grad, buf, hp, flags)

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
        group = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
                     decoupled=decoupled, amsgrad=amsgrad, maximize=maximize)  # fmt: skip
        hp, flags = hyper.pack("adam", group, step=step)
        self.adam_packed(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, hp, flags)

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
        group = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                     centered=centered, maximize=maximize)  # fmt: skip
        hp, flags = hyper.pack("rmsprop", group)
        self.rmsprop_packed(param, grad, square_avg, momentum_buffer, grad_avg, hp, flags)

    # ------------------------------------------------------------------ the formulas
    def sgd_packed(self, param: Any, grad: Any, buf: Any, hp: Any, flags: Any) -> None:
        """SGD on a packed row: hp [lr, momentum, 1-dampening, wd], flags [nesterov, maximize,
        first_step]."""
        t = param.dtype.type
        lr, momentum, one_m_damp, wd = t(hp[0]), t(hp[1]), t(hp[2]), t(hp[3])
        nesterov, maximize, first = flags[0], flags[1], flags[2]
        g = -grad if maximize else grad
        if wd != 0:
            g = g + wd * param
        if momentum != 0:
            if first:
                self.copy_(buf, g)
            else:
                buf *= momentum
                buf += one_m_damp * g
            g = g + momentum * buf if nesterov else buf
        param -= lr * g

    def adam_packed(self, param: Any, grad: Any, exp_avg: Any, exp_avg_sq: Any,
                    max_exp_avg_sq: Any, hp: Any, flags: Any) -> None:  # fmt: skip
        """Adam/AdamW on a packed row: hp [lr/bc1, beta1, 1-beta1, beta2, 1-beta2, sqrt(bc2),
        eps, wd, 1-lr*wd], flags [decoupled, amsgrad, maximize]."""
        xp = self.xp
        t = param.dtype.type
        lr_bc1, beta1, one_m_b1, beta2, one_m_b2, bc2_sqrt, eps, wd, decay = map(t, hp[:9])
        decoupled, amsgrad, maximize = flags[0], flags[1], flags[2]
        g = -grad if maximize else grad
        if wd != 0:
            if decoupled:
                param *= decay
            else:
                g = g + wd * param
        exp_avg *= beta1
        exp_avg += one_m_b1 * g
        exp_avg_sq *= beta2
        exp_avg_sq += one_m_b2 * g * g
        second = exp_avg_sq
        if amsgrad:
            xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            second = max_exp_avg_sq
        denom = xp.sqrt(second) / bc2_sqrt + eps
        param -= lr_bc1 * exp_avg / denom

    def rmsprop_packed(self, param: Any, grad: Any, square_avg: Any, momentum_buffer: Any,
                       grad_avg: Any, hp: Any, flags: Any) -> None:  # fmt: skip
        """RMSprop on a packed row: hp [lr, alpha, 1-alpha, eps, wd, momentum], flags [centered,
        maximize]."""
        xp = self.xp
        t = param.dtype.type
        lr, alpha, one_m_alpha, eps, wd, momentum = map(t, hp[:6])
        centered, maximize = flags[0], flags[1]
        g = -grad if maximize else grad
        if wd != 0:
            g = g + wd * param
        square_avg *= alpha
        square_avg += one_m_alpha * g * g
        if centered:
            grad_avg *= alpha
            grad_avg += one_m_alpha * g
            avg = xp.sqrt(square_avg - grad_avg * grad_avg) + eps
        else:
            avg = xp.sqrt(square_avg) + eps
        if momentum > 0:
            momentum_buffer *= momentum
            momentum_buffer += g / avg
            param -= lr * momentum_buffer
        else:
            param -= lr * g / avg
