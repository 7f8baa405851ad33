"""The whole-training-step fast path: when a backend offers `fused_mlp_step` (Numba) and the
model, loss and optimizer are of the plain kind it covers, one compiled call does forward, loss,
backward and update. Anything else takes the layer-by-layer path, which has the same maths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .nn import CrossEntropyLoss, Linear, Module, Sequential
from .nn.activation import Activation
from .nn.loss import _check_labels
from .optim import SGD, Adam, Optimizer

FusedStep = Callable[[Any, Any], Any]


def plan_fused_step(model: Module, loss_fn: Any, optimizer: Optimizer) -> FusedStep | None:
    """A callable (x, y) -> (0-d loss, logits) doing one fused step, or None when the path does
    not apply. The logits are a buffer reused by the next step: read them before it."""
    be = model.backend
    if not hasattr(be, "fused_mlp_step") or not isinstance(model, Sequential) or not model.fuse:
        return None
    if type(loss_fn) is not CrossEntropyLoss or loss_fn.reduction != "mean":
        return None
    if type(optimizer) not in (SGD, Adam) and type(optimizer).__name__ != "AdamW":
        return None
    if len(optimizer.param_groups) != 1:
        return None
    linears: list[Linear] = []
    acts: list[str] = []
    layers = list(model)
    i = 0
    while i < len(layers):
        layer = layers[i]
        if type(layer) is not Linear or layer.bias is None:
            return None
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        kind = "identity"
        if isinstance(nxt, Activation) and nxt.fusable:
            kind = nxt.kind
            i += 1
        elif nxt is not None and not isinstance(nxt, Linear):
            return None
        linears.append(layer)
        acts.append(kind)
        i += 1
    if acts[-1] != "identity":
        return None  # the logits must be the last Linear's output
    leaky = [a for a in layers if isinstance(a, Activation) and a.kind == "leaky_relu"]
    alpha = leaky[0].alpha if leaky else 0.01
    if len({a.alpha for a in leaky}) > 1:
        return None
    params = [lin.weight for lin in linears] + [lin.bias for lin in linears]
    group = optimizer.param_groups[0]
    if [id(p) for p in group["params"]] != [id(p) for p in model.parameters()]:
        return None
    if not all(p.requires_grad for p in params):
        return None
    n_classes = linears[-1].out_features
    is_adam = isinstance(optimizer, Adam)

    def step(xb: Any, yb: Any) -> Any:
        x = be.asarray(xb, dtype=model.dtype)
        if x.ndim != 2 or x.shape[1] != linears[0].in_features:
            x = linears[0]._input(x, linears[0].in_features)  # raises the layer's clear error
        if be.device == "cpu" or not be.owns(yb):  # host labels: the one shared check
            yb = _check_labels(yb, x.shape[0], n_classes)
        for p in params:
            p.grad_target()  # the fused kernel overwrites the gradient buffers
            p.grad_written()
            optimizer._follow(p, optimizer.state.setdefault(id(p), {}))
        states = [optimizer.state[id(p)] for p in params]
        common = dict(
            lr=group["lr"], weight_decay=group["weight_decay"], maximize=group["maximize"]
        )
        if is_adam:
            for st in states:
                st["step"] = int(st.get("step", 0)) + 1
            keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
            state = tuple(
                [optimizer._buffer(p, st, k) for p, st in zip(params, states, strict=True)]
                for k in keys
            )
            beta1, beta2 = group["betas"]
            kw = dict(
                step=states[0]["step"], beta1=beta1, beta2=beta2, eps=group["eps"],
                decoupled=optimizer.decoupled, amsgrad=group["amsgrad"],
            )  # fmt: skip
            opt_name = "adam"
        else:
            momentum = group["momentum"]
            first = False
            state = ()
            if momentum != 0.0:
                first = states[0].get("momentum_buffer") is None
                state = ([optimizer._buffer(p, st, "momentum_buffer", zero=False)
                          for p, st in zip(params, states, strict=True)],)  # fmt: skip
            kw = dict(
                momentum=momentum, dampening=group["dampening"], nesterov=group["nesterov"],
                first_step=first,
            )  # fmt: skip
            opt_name = "sgd"
        logits = be.scratch("fused_logits", (x.shape[0], n_classes), x.dtype)
        loss = be.fused_mlp_step(
            [lin.weight.data for lin in linears],
            [lin.bias.data for lin in linears],
            [lin.weight.grad for lin in linears],
            [lin.bias.grad for lin in linears],
            tuple(acts),
            x,
            yb,
            opt_name,
            state=state,
            alpha=alpha,
            logits_out=logits,
            **common,
            **kw,
        )
        return loss, logits

    return step
