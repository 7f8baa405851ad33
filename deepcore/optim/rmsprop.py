"""RMSprop: torch.optim.RMSprop's rule (optionally centered, with momentum)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..backends import hyper
from ..nn.module import Parameter
from .optimizer import Optimizer


class RMSprop(Optimizer):
    """RMSprop, as torch.optim.RMSprop."""

    rule = "rmsprop"

    def __init__(
        self,
        params: Iterable[Parameter] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def _validate(self, hp: dict[str, Any]) -> None:
        super()._validate(hp)
        if not 0.0 <= hp["alpha"] <= 1.0:
            raise ValueError(f"RMSprop: invalid alpha {hp['alpha']!r} (need 0 <= alpha <= 1)")
        if not hp["eps"] >= 0.0 or not hp["momentum"] >= 0.0:
            raise ValueError("RMSprop: eps and momentum must be >= 0")

    def _prepare(self, p: Parameter, state: dict[str, Any], group: dict) -> tuple[Any, list]:
        state["step"] = int(state.get("step", 0)) + 1
        sq = self._buffer(p, state, "square_avg")
        buf = self._buffer(p, state, "momentum_buffer") if group["momentum"] > 0 else None
        gavg = self._buffer(p, state, "grad_avg") if group["centered"] else None
        return None, [sq, buf, gavg]

    counts_steps = True

    def _steady_key(self, step: int) -> Any:
        return None

    def _pack(self, group: dict, key: Any) -> tuple:
        return hyper.pack("rmsprop", group)
