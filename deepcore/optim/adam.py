"""Adam and AdamW (decoupled weight decay): torch.optim.Adam / AdamW's rules."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..backends import hyper
from ..nn.module import Parameter
from .optimizer import Optimizer


class Adam(Optimizer):
    """Adam, as torch.optim.Adam: L2 weight decay added to the gradient."""

    rule = "adam"
    decoupled = False

    def __init__(
        self,
        params: Iterable[Parameter] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
        )
        super().__init__(params, defaults)

    def _validate(self, hp: dict[str, Any]) -> None:
        super()._validate(hp)
        betas = hp["betas"]
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{type(self).__name__}: betas must both be in [0, 1), got {betas}")
        if not hp["eps"] >= 0.0:
            raise ValueError(f"{type(self).__name__}: invalid eps {hp['eps']!r} (need >= 0)")

    def _prepare(self, p: Parameter, state: dict[str, Any], group: dict) -> tuple[Any, list]:
        step = state["step"] = int(state.get("step", 0)) + 1
        m = self._buffer(p, state, "exp_avg")
        v = self._buffer(p, state, "exp_avg_sq")
        vmax = self._buffer(p, state, "max_exp_avg_sq") if group["amsgrad"] else None
        return step, [m, v, vmax]

    counts_steps = True

    def _steady_key(self, step: int) -> Any:
        return step

    def _pack(self, group: dict, key: Any) -> tuple:
        return hyper.pack("adam", group, step=key, decoupled=self.decoupled)


class AdamW(Adam):
    """AdamW, as torch.optim.AdamW: decay applied to the weights, p *= 1 - lr * weight_decay."""

    decoupled = True

    def __init__(
        self,
        params: Iterable[Parameter] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)
