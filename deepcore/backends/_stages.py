"""Default fused stages of the backend contract: a whole MLP's forward and backward and a whole
optimizer update, written once through the per-layer and per-parameter methods. A backend with
`fused_stages = True` overrides them with single calls that compute the same maths. With
precision "bf16" or "fp16" the GEMMs are the 16-bit ones (`linear_bf16`, `gemm_bf16`, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..precision import PRECISIONS
from .hyper import STATE_KEYS

#: Activations whose backward needs the pre-activation; the others use the output.
NEEDS_PREACTIVATION = frozenset({"gelu", "gelu_tanh"})


class MLPTape:
    """What an MLP forward keeps for its backward: per layer l the input (x, then ins[l-1]),
    the pre-activation pre[l] (None where the backward does not need it), the activation's
    output out[l], the dropout mask masks[l] (None, or an empty array, where none) and ins[l]
    (out[l] * masks[l], or out[l] itself)."""

    __slots__ = ("weights", "acts", "alpha", "x", "masks", "pre", "out", "ins", "extra",
                 "precision")  # fmt: skip

    def __init__(self, weights: tuple, acts: tuple, alpha: float, x: Any, masks: Any, pre: Any,
                 out: Any, ins: Any, precision: str = "float32") -> None:  # fmt: skip
        self.weights, self.acts, self.alpha, self.x = weights, acts, alpha, x
        self.masks, self.pre, self.out, self.ins = masks, pre, out, ins
        self.precision = precision  # the GEMMs' operands: "float32", "bf16" or "fp16"
        self.extra: Any = None  # a backend's own bookkeeping


def _has(mask: Any) -> bool:
    return mask is not None and mask.size != 0


def check_precision(precision: str, supported: tuple[str, ...], name: str) -> None:
    """One clear error for a precision these stages do not take."""
    if precision not in supported:
        raise ValueError(f"{name}: precision must be one of {', '.join(supported)}, "
                         f"not {precision!r}")  # fmt: skip


class StageKernels:
    """mlp_forward, mlp_backward and multi_update through the backend's other methods."""

    empty: Any
    linear: Any
    mul: Any
    gemm: Any
    bias_grad: Any
    activation_backward_bias_grad: Any
    activation_backward: Any

    def mlp_forward(
        self,
        weights: Sequence[Any],
        biases: Sequence[Any],
        activations: Sequence[str],
        x: Any,
        *,
        alpha: float = 0.01,
        masks: Sequence[Any] | None = None,
        precision: str = "float32",
    ) -> tuple[Any, MLPTape]:
        """Layers l: out = act_l(src @ W_l.T + b_l), src = x then the previous layer's output
        (times its dropout mask when masks[l] is given); the GEMMs on `precision` operands
        (deepcore.precision). Returns (output, tape)."""
        check_precision(precision, PRECISIONS, "mlp_forward")
        linear = self.linear if precision == "float32" else getattr(self, f"linear_{precision}")
        masks = list(masks) if masks else [None] * len(weights)
        pres, outs, ins = [], [], []
        src = x
        for w, b, kind, mk in zip(weights, biases, activations, masks, strict=True):
            n = src.shape[0]
            y = self.empty((n, w.shape[0]), w.dtype)
            pre = self.empty((n, w.shape[0]), w.dtype) if kind in NEEDS_PREACTIVATION else None
            linear(src, w, b, activation=kind, alpha=alpha, out=y, pre_out=pre)
            nxt = self.mul(y, mk) if _has(mk) else y
            pres.append(pre)
            outs.append(y)
            ins.append(nxt)
            src = nxt
        tape = MLPTape(tuple(weights), tuple(activations), alpha, x,
                       tuple(masks), tuple(pres), tuple(outs), tuple(ins), precision)  # fmt: skip
        return src, tape

    def mlp_backward(
        self,
        tape: MLPTape,
        grad_output: Any,
        weight_grads: Sequence[Any],
        bias_grads: Sequence[Any | None],
        *,
        accumulate: bool = False,
        need_input_grad: bool = True,
        on_layer: Callable[[int], None] | None = None,
    ) -> Any:
        """Backward of `mlp_forward`: writes (or, with accumulate, adds) each layer's weight
        and bias gradients; returns dL/dx, or None when not needed. `on_layer(l)` is called as
        soon as layer l's gradients are complete (last layer first). The GEMMs on the tape's
        precision."""
        prec = tape.precision
        gemm = self.gemm if prec == "float32" else getattr(self, f"gemm_{prec}")
        d = grad_output
        nl = len(tape.weights)
        for l in range(nl - 1, -1, -1):
            if _has(tape.masks[l]):
                d = self.mul(d, tape.masks[l])
            kind, db = tape.acts[l], bias_grads[l]
            if kind != "identity":
                if db is not None:
                    d, _ = self.activation_backward_bias_grad(
                        kind, d, x=tape.pre[l], y=tape.out[l], alpha=tape.alpha, db_out=db,
                        accumulate_db=accumulate,
                    )  # fmt: skip
                else:
                    d = self.activation_backward(kind, d, x=tape.pre[l], y=tape.out[l],
                                                 alpha=tape.alpha)  # fmt: skip
            elif db is not None:
                self.bias_grad(d, out=db, accumulate=accumulate)
            src = tape.x if l == 0 else tape.ins[l - 1]
            if weight_grads[l] is not None:
                gemm(d, src, trans_a=True, beta=1.0 if accumulate else 0.0,
                     out=weight_grads[l])  # fmt: skip
            if on_layer is not None:
                on_layer(l)
            if l > 0 or need_input_grad:
                d = gemm(d, tape.weights[l])
        return d if need_input_grad else None

    def multi_update(
        self,
        rule: str,
        params: Sequence[Any],
        grads: Sequence[Any],
        state: Sequence[Sequence[Any]],
        hp: Any,
        flags: Any,
    ) -> None:
        """Every parameter's update by `rule`; hp and flags hold one packed row per parameter
        (deepcore.backends.hyper.pack's order); state lists follow hyper.STATE_KEYS[rule]."""
        n = len(params)
        st = [list(s) + [None] * (n - len(s)) for s in state]
        st += [[None] * n] * (len(STATE_KEYS[rule]) - len(st))
        fn = getattr(self, f"{rule}_packed")
        hp, flags = hp.tolist(), flags.tolist()  # Python numbers: reading array rows costs ~us
        for i, args in enumerate(zip(params, grads, *st, strict=True)):
            fn(*args, hp[i], flags[i])
