"""The training step: forward -> loss -> backward -> gradient hooks -> update, planned once.

`plan_step` looks at what is present (model, loss, optimizer, hooks, gradient clipping) and
picks one route, recorded as `TrainStep.route`:

- "fused-step": the backend runs the whole step in one call (`fused_mlp_step`; numba): a plain
  MLP (dropout allowed), mean cross-entropy, an SGD/Adam/AdamW/RMSprop optimizer over exactly
  the model's parameters (any number of groups), no hooks between backward and update;
- "fused-stages": the stages as separate calls, each fused by the backend: the whole MLP forward
  in one call, the loss, the whole backward in one call, the hooks, then one multi-tensor update
  over every parameter (`multi_update`); taken when hooks or clipping sit between backward and
  update, or the loss is not cross-entropy;
- "stages": the same stages module by module (a model that is not a plain MLP, a backend
  without fused stages, or a precision not in the backend's `fused_precisions`: fp16, and bf16
  outside numba).

Every route computes the same maths (tests pin each against the module-by-module reference);
a hand-written loop (`model(x)`, `loss_fn(...)`, `model.backward(...)`, `opt.step()`) is the
"fused-stages"/"stages" route and reaches the same kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .nn import CrossEntropyLoss, Module, Sequential
from .nn.container import MLPLayers
from .nn.loss import check_labels
from .optim import Optimizer
from .optim.clip import clip_grad_norm_

ROUTES = ("fused-step", "fused-stages", "stages")


class GradientHook(Protocol):
    """Runs after backward and before the update on the trainable parameters (it may change
    their `.grad` arrays in place: all-reduce, unscale, checks; a parameter whose grad is None
    had no gradient this step). Returning False skips this step's update (every hook still
    runs; deepcore.amp.GradScaler on inf/NaN). Optional methods: `scale_loss_grad(grad)`, which
    returns the loss gradient backward starts from (loss scaling); `grad_ready(params)`, called
    as soon as backward has produced those parameters' gradients (last layer first), and
    `after_update(params)`, called after the update."""

    def __call__(self, params: list[Any]) -> bool | None: ...


class TrainStep:
    """One planned training step: `step(x, y)` -> (0-d loss, logits). `route` names the route,
    `fused` says whether any stage ran fused, `why` why the whole step was not fused."""

    def __init__(
        self,
        model: Module,
        loss_fn: Any,
        optimizer: Optimizer,
        *,
        grad_hooks: Sequence[GradientHook] = (),
        clip_grad_norm: float | None = None,
        fused: bool | str = "auto",
        precision: str = "float32",
    ) -> None:
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        be = model.backend
        #: the GEMMs' precision (float64 layers ignore autocast, as Linear does)
        self.precision = precision if model.dtype == "float32" else "float32"
        self.grad_hooks = list(grad_hooks)
        self.clip_grad_norm = clip_grad_norm
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.spec: MLPLayers | None = None
        if isinstance(model, Sequential) and model.fuse and self.precision in be.fused_precisions:
            self.spec = model.mlp()
        self.why = self._whole_step_refusal() if fused is not False else "fused=False"
        if self.why is None:
            self.route = "fused-step"
        elif self.spec is not None and be.fused_stages:
            self.route = "fused-stages"
        else:
            self.route = "stages"
        if fused is True and self.route != "fused-step":
            raise ValueError(
                f"fused=True, but the {be.name} backend cannot run this step as one call: "
                f"{self.why}"
            )
        self.fused = self.route != "stages"
        self._perm: Any = None
        self._state: Any = None
        self._logits_buf: Any = None

    def _whole_step_refusal(self) -> str | None:
        """Why the whole step cannot be one backend call (None when it can)."""
        model, loss_fn, opt, spec = self.model, self.loss_fn, self.optimizer, self.spec
        if self.precision not in model.backend.fused_precisions:
            return (f"{self.precision} runs module by module (no fused {self.precision} stages "
                    f"on the {model.backend.name} backend)")  # fmt: skip
        if not model.backend.whole_step:
            return f"the {model.backend.name} backend has no whole-step kernel"
        if spec is None:
            return "the model is not a plain MLP (Linear [activation] [Dropout], repeated)"
        if self.grad_hooks or self.clip_grad_norm is not None:
            return "gradient hooks or clipping run between backward and update"
        if type(loss_fn) is not CrossEntropyLoss or loss_fn.reduction != "mean":
            return "the loss is not mean cross-entropy"
        if opt.rule is None:
            return f"{type(opt).__name__} has no packed update rule"
        if any(lin.bias is None for lin in spec.linears):
            return "a Linear has no bias"
        if spec.acts[-1] != "identity" or spec.dropouts[-1] is not None:
            return "the last Linear's output is not the logits"
        mine = {id(p) for p in spec.params}
        theirs = [id(p) for g in opt.param_groups for p in g["params"]]
        if len(theirs) != len(mine) or set(theirs) != mine:
            return "the optimizer does not hold exactly the model's parameters"
        return None

    def __call__(self, xb: Any, yb: Any) -> tuple[Any, Any]:
        if self.route == "fused-step":
            return self._whole(xb, yb)
        model, loss_fn, opt, hooks = self.model, self.loss_fn, self.optimizer, self.grad_hooks
        if len(xb) == 0:  # an empty share (data-parallel): no gradient, but the hooks still run
            loss, logits = model.backend.zeros((), model.dtype), None
        else:
            logits = model(xb)
            loss = loss_fn(logits, yb)
            grad = loss_fn.backward()
            for h in hooks:
                if hasattr(h, "scale_loss_grad"):
                    grad = h.scale_loss_grad(grad)
            ready = [h.grad_ready for h in hooks if hasattr(h, "grad_ready")]
            if ready and isinstance(model, Sequential):

                def tell(params: list[Any]) -> None:
                    for r in ready:
                        r(params)

                model.backward(grad, need_input_grad=False, grad_ready=tell)
            else:
                model.backward(grad, need_input_grad=False)
                for r in ready:
                    r([p for p in self.params if p._grad_live])
        verdicts = [hook(self.params) for hook in hooks]
        if all(v is not False for v in verdicts):  # a hook returning False skips the update
            if self.clip_grad_norm is not None:
                clip_grad_norm_(self.params, self.clip_grad_norm)
            opt.step()
            for hook in hooks:
                if hasattr(hook, "after_update"):
                    hook.after_update(self.params)
        opt.zero_grad()
        return loss, logits

    def _whole(self, xb: Any, yb: Any) -> tuple[Any, Any]:
        """The whole step as one backend call, with the optimizer's packed arguments."""
        spec, model, opt = self.spec, self.model, self.optimizer
        assert spec is not None
        be = model.backend
        lins = spec.linears
        x = lins[0]._input(xb, lins[0].in_features)
        n, classes = x.shape[0], lins[-1].out_features
        labels = yb
        if not be.owns(yb) or be.device == "cpu":  # host labels: the one shared check, before
            labels = check_labels(yb, n, classes, be)  # anything (state, step counts) changes
        for p in spec.params:  # the kernel overwrites every gradient
            p.grad_target()
            p._grad_live = True
        args = opt.update_args()
        assert args is not None
        perm, hp, flags = self._order(args.params, args.hp, args.flags, args.uniform)
        nl = len(lins)
        state = self._state_in_order(args.state, perm)
        logits = self._logits_buf
        if logits is None or logits.shape != (n, classes) or not be.owns(logits):
            logits = self._logits_buf = be.empty((n, classes), model.dtype)
        loss = be.fused_mlp_step(
            [lin.weight.data for lin in lins],
            [lin.bias.data for lin in lins],
            [p._grad for p in spec.params[:nl]],
            [p._grad for p in spec.params[nl:]],
            spec.acts,
            x,
            labels,
            args.rule,
            state=state,
            rows=(hp, flags),
            alpha=spec.alpha,
            masks=spec.masks(n, model.training),
            logits_out=logits,
            precision=self.precision,
        )
        opt.zero_grad()
        return loss, logits

    def _state_in_order(self, state: list[list[Any]], perm: list[int]) -> list[list[Any]]:
        """The optimizer's state lists in the MLP's order, unused trailing lists dropped (kept
        while the optimizer hands over the same lists, as it does from step to step)."""
        last = self._state
        if last is not None and last[0] is state and last[1] is perm:
            return last[2]
        out = [[s[i] for i in perm] for s in state]
        while out and all(a is None for a in out[-1]):
            out.pop()
        self._state = (state, perm, out)
        return out

    def _order(self, params: list[Any], hp: Any, flags: Any,
               uniform: bool) -> tuple[list[int], Any, Any]:  # fmt: skip
        """Positions in the optimizer's order of the MLP's weights, then its biases, and the
        hyperparameter rows in that order (written into buffers kept from step to step; the
        rows as they are when they are all the same)."""
        key = tuple(map(id, params))
        if self._perm is None or self._perm[0] != key or self._perm[2].shape != hp.shape:
            where = {id(p): i for i, p in enumerate(params)}
            assert self.spec is not None
            perm = [where[id(p)] for p in self.spec.params]
            self._perm = (key, perm, hp[perm], flags[perm])
        _, perm, hp_out, flags_out = self._perm
        if uniform:
            return perm, hp, flags
        np.take(hp, perm, axis=0, out=hp_out)
        np.take(flags, perm, axis=0, out=flags_out)
        return perm, hp_out, flags_out


def plan_step(
    model: Module,
    loss_fn: Any,
    optimizer: Optimizer,
    *,
    grad_hooks: Sequence[GradientHook] = (),
    clip_grad_norm: float | None = None,
    fused: bool | str = "auto",
    precision: str = "float32",
) -> TrainStep:
    """The training step for this model, loss, optimizer and hooks (see the module docstring).
    With precision "bf16" or "fp16" the caller runs it under `deepcore.autocast` (fp16 with a
    deepcore.amp.GradScaler among the hooks)."""
    return TrainStep(
        model,
        loss_fn,
        optimizer,
        grad_hooks=grad_hooks,
        clip_grad_norm=clip_grad_norm,
        fused=fused,
        precision=precision,
    )
