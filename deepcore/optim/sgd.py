"""SGD with momentum, dampening, Nesterov and weight decay: torch.optim.SGD's rule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..backends import hyper
from ..nn.module import Parameter
from .optimizer import Optimizer


class SGD(Optimizer):
    """Stochastic gradient descent, as torch.optim.SGD."""

    rule = "sgd"

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

    def _prepare(self, p: Parameter, state: dict[str, Any], group: dict) -> tuple[Any, list]:
        if group["momentum"] == 0.0:
            return False, [None]
        first = state.get("momentum_buffer") is None
        return first, [self._buffer(p, state, "momentum_buffer", zero=False)]

    def _pack(self, group: dict, key: Any) -> tuple:
        return hyper.pack("sgd", group, first_step=key)
