"""Dynamic loss scaling for fp16 training, as PyTorch's `torch.amp.GradScaler`.

float16 GEMM operands lose gradients below 2^-24 (6e-8) to zero. The scaler multiplies the loss
gradient by `scale` (2^16 to start) before backward, so the gradients reach the fp16 GEMMs large;
after backward it divides the float32 gradients by `scale` and checks them. A non-finite value
(a scaled gradient overflowed 65504 and became inf, or NaN) skips the update and halves the
scale; `growth_interval` clean steps in a row double it. The scale stays a power of two times
`init_scale`, so scaling and unscaling are exact.

With a Trainer, `precision="fp16"` installs one as the step's last gradient hook (after any
all-reduce, so every rank sees the same verdict). In a hand-written loop::

    scaler = dc.amp.GradScaler()
    with dc.autocast("float16"):
        loss = loss_fn(model(xb), yb)
        model.backward(scaler.scale(loss_fn.backward()))
    scaler.step(opt)   # unscale, check, then opt.step() unless a gradient is inf/NaN
    scaler.update()    # halve the scale after a skip, double it after growth_interval clean steps
    opt.zero_grad()

Checking for inf/NaN reads one flag back to the host per step (on a GPU, a sync; PyTorch's
GradScaler reads it too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class GradScaler:
    """Scales the loss gradient, unscales and checks the parameter gradients, adapts the scale.

    Also a gradient hook of the step engine (deepcore.engine): `scale_loss_grad(grad)` before
    backward, `hook(params)` after it (unscale + check; returns False to skip the update), and
    `after_update(params)`. `found_inf` says whether the last checked step was skipped."""

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        for name, v, ok in (
            ("init_scale", init_scale, init_scale > 0 and math.isfinite(init_scale)),
            ("growth_factor", growth_factor, growth_factor > 1),
            ("backoff_factor", backoff_factor, 0 < backoff_factor < 1),
            ("growth_interval", growth_interval,
             isinstance(growth_interval, int) and growth_interval >= 1),
        ):  # fmt: skip
            if not ok:
                raise ValueError(f"GradScaler: bad {name} {v!r}")
        self.scale_value = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self.enabled = bool(enabled)
        self.growth_tracker = 0  # clean steps since the scale last changed
        self.found_inf = False
        self.skipped_steps = 0
        self._checked = False  # step() or the hook has checked this step's gradients

    # ------------------------------------------------------------------ the loop's API
    def get_scale(self) -> float:
        return self.scale_value if self.enabled else 1.0

    def scale(self, grad: Any) -> Any:
        """The loss gradient times the scale (in place: `grad` is the loss's own output)."""
        if not self.enabled:
            return grad
        grad *= grad.dtype.type(self.scale_value)
        return grad

    def unscale_(self, params: list[Any]) -> bool:
        """Divide every gradient of `params` by the scale in place; True when all are finite."""
        self._checked = True
        if not self.enabled:
            self.found_inf = False
            return True
        grads = [p.grad for p in params if p.grad is not None]
        inv = 1.0 / self.scale_value  # exact: the scale is a power of two times init_scale
        finite = True
        if grads:
            be = params[0].backend
            flags = [be.xp.isfinite(be.scale_(g, inv)).all() for g in grads]
            ok = flags[0]
            for f in flags[1:]:
                ok = ok & f
            finite = bool(ok)  # the one host read of the step
        self.found_inf = not finite
        return finite

    def step(self, optimizer: Any) -> bool:
        """Unscale and check the optimizer's gradients (unless `unscale_` already did), then
        run `optimizer.step()` if they are finite. Returns whether the step ran."""
        if not self._checked:
            self.unscale_([p for g in optimizer.param_groups for p in g["params"]])
        if self.found_inf:
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Back off after a skipped step; grow after `growth_interval` clean ones in a row."""
        if not self.enabled:
            return
        if self.found_inf:
            self.scale_value *= self.backoff_factor
            self.growth_tracker = 0
            self.skipped_steps += 1
        else:
            self.growth_tracker += 1
            if self.growth_tracker == self.growth_interval:
                self.scale_value *= self.growth_factor
                self.growth_tracker = 0
        self.found_inf = False
        self._checked = False

    # ------------------------------------------------------------------ as an engine hook
    def scale_loss_grad(self, grad: Any) -> Any:
        return self.scale(grad)

    def __call__(self, params: list[Any]) -> bool:
        """After backward: unscale and check; False skips the update (the scale is adapted)."""
        finite = self.unscale_(params)
        self.update()
        return finite

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The scale and counters, plain Python numbers (as PyTorch's, plus skipped_steps)."""
        return {
            "scale": self.scale_value,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "growth_tracker": self.growth_tracker,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict()` returned, checked before anything changes."""
        fresh = GradScaler(
            state["scale"], state["growth_factor"], state["backoff_factor"],
            state["growth_interval"],
        )  # fmt: skip
        tracker, skipped = state["growth_tracker"], state.get("skipped_steps", 0)
        for name, v in (("growth_tracker", tracker), ("skipped_steps", skipped)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"GradScaler state: {name} must be an integer >= 0, got {v!r}")
        self.scale_value = fresh.scale_value
        self.growth_factor, self.backoff_factor = fresh.growth_factor, fresh.backoff_factor
        self.growth_interval = fresh.growth_interval
        self.growth_tracker, self.skipped_steps = tracker, skipped

    def __repr__(self) -> str:
        return f"GradScaler(scale={self.scale_value:g}, growth_tracker={self.growth_tracker})"
