"""SGD with momentum, dampening, Nesterov and weight decay: torch.optim.SGD's rule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..nn.module import Parameter
from .optimizer import Optimizer


class SGD(Optimizer):
    """Stochastic gradient descent, as torch.optim.SGD (one fused backend call per parameter)."""

    def __init__(
        self,
        params: Iterable[Parameter] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def _validate(self, hp: dict[str, Any]) -> None:
        super()._validate(hp)
        if not hp["momentum"] >= 0.0:
            raise ValueError(f"SGD: invalid momentum {hp['momentum']!r} (need >= 0)")
        if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum and zero dampening")

    def _update(self, p: Parameter, grad: Any, state: dict[str, Any], group: dict) -> None:
        momentum = group["momentum"]
        first = False
        buf = None
        if momentum != 0.0:
            first = state.get("momentum_buffer") is None
            buf = self._buffer(p, state, "momentum_buffer", zero=False)
        p.backend.sgd_update(
            p.data,
            grad,
            buf,
            lr=group["lr"],
            momentum=momentum,
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
            first_step=first,
        )
