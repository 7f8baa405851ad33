"""The Numba backend's whole training step (`fused_mlp_step`): forward, softmax
cross-entropy, backward and the optimizer update of an MLP as one call.

Small models run as one compiled single-threaded call of kernels/numba/step.py; larger ones and
bf16 steps run layer by layer (layered.py): large float32 weights are updated inside their
gradient GEMM, while the gradient is in cache, and the other parameters in one compiled call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import ShapeError
from .. import hyper
from .._stages import check_precision
from ..base import Backend
from .stages import _PLANS_MAX, NumbaStagesMixin, _Net, _same


class _Plan:
    """A _Net plus gradients and optimizer state for the whole step."""

    __slots__ = ("arrays", "net", "nstate", "ok", "params", "flat", "pflat", "gflat", "size",
                 "rest", "hp", "flags", "hp_rows", "last_hp")  # fmt: skip


class NumbaStepMixin(NumbaStagesMixin):
    """fused_mlp_step for NumbaBackend."""

    # ------------------------------------------------------------------ the whole step
    def fused_mlp_step(
        self,
        weights: Sequence[Any],
        biases: Sequence[Any],
        weight_grads: Sequence[Any],
        bias_grads: Sequence[Any],
        activations: Sequence[str],
        x: Any,
        labels: Any,
        optimizer: str = "sgd",
        *,
        lr: float = 0.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        first_step: bool = False,
        step: int = 1,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        decoupled: bool = False,
        amsgrad: bool = False,
        weight_decay: float = 0.0,
        maximize: bool = False,
        state: Sequence[Sequence[Any]] = (),
        alpha: float = 0.01,
        masks: Sequence[Any] | None = None,
        rows: tuple[Any, Any] | None = None,
        logits_out: Any = None,
        precision: str = "float32",
    ) -> Any:
        """One training step of an MLP with softmax cross-entropy; returns the 0-d loss.

        Layer l: a_l = act_l(a_{l-1} @ W_l.T + b_l) (times masks[l] when given); the last
        layer's output are the logits. Grads are overwritten; params and `state` are updated
        in place. `state` holds per-parameter lists ordered weights then biases (flat or
        param-shaped) in hyper.STATE_KEYS order. The hyperparameters come as keywords (one
        group) or as `rows` = (hp, flags), one packed row per parameter (hyper.pack).
        `precision` "bf16": every GEMM on bf16 operands (as `gemm_bf16`), layer by layer.
        """
        check_precision(precision, self.fused_precisions, "fused_mlp_step")
        if optimizer not in hyper.RULES:
            raise ValueError(
                f"fused_mlp_step: optimizer must be one of {', '.join(hyper.RULES)}, "
                f"not {optimizer!r}"
            )
        if rows is None and optimizer == "rmsprop":  # its alpha and centered are not keywords
            raise ValueError("fused_mlp_step: rmsprop takes its hyperparameters as rows=")
        plan = self._plan(weights, biases, weight_grads, bias_grads, activations, state)
        net = plan.net
        labels = np.asarray(labels)
        if labels.dtype != np.int64:
            labels = labels.astype(np.int64)
        if rows is None:
            group = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                         betas=(beta1, beta2), eps=eps, decoupled=decoupled, amsgrad=amsgrad,
                         weight_decay=weight_decay, maximize=maximize)  # fmt: skip
            packed = hyper.pack(optimizer, group, step=step, first_step=first_step)
            if (optimizer, packed) != plan.last_hp[1:]:  # a numpy write costs ~1 us
                hp, fl = hyper.rows([packed] * (2 * net.nl), net.dt)
                plan.hp[...] = hp
                plan.flags[...] = fl
                plan.last_hp = (hyper.RULES.index(optimizer), optimizer, packed)
        else:
            plan.last_hp = (hyper.RULES.index(optimizer), optimizer, None)
        opt = plan.last_hp[0]
        hp, flags = plan.hp, plan.flags
        if rows is not None:
            hp, flags = rows
            ok = hp.shape == plan.hp.shape and hp.dtype == net.dt and hp.flags.c_contiguous
            if not (ok and flags.dtype == plan.flags.dtype and flags.flags.c_contiguous):
                plan.hp[...] = hp  # the kernels' dtype and layout (and the GEMM epilogue's rows)
                plan.flags[...] = flags
                hp, flags = plan.hp, plan.flags
        if precision != "float32" or not (plan.ok and self._compiled(net, x)):
            if hp is not plan.hp:
                plan.hp[...] = hp  # the layered route's GEMM epilogue reads plan's rows
                plan.flags[...] = flags
            return self._layered_step(plan, weights, biases, weight_grads, bias_grads, x,
                                      labels, optimizer, alpha, masks, logits_out,
                                      precision)  # fmt: skip
        m = x.shape[0]
        if labels.shape != (m,):
            raise ShapeError(f"labels have shape {labels.shape}, expected ({m},)")
        pattern, marr = self._masks(net, masks, m)
        zs, outs, ins, ds, wts, tmp = self._workspace(net, weights, m, pattern)
        loss = np.empty((), net.dt)  # fresh: callers may keep losses across steps
        args = (*plan.params, net.codes, net.dt.type(alpha), x, labels, marr, ins, opt,
                *plan.flat, hp, flags, zs, outs, ds, wts, tmp, loss)  # fmt: skip
        if not self._k.step.mlp_step(*args):
            raise IndexError(f"labels must lie in [0, {weights[-1].shape[0]})")
        if logits_out is not None:
            logits_out[...] = ins[-1]  # this step's logits (before the update)
        return loss

    def _plan(self, weights: Any, biases: Any, wgrads: Any, bgrads: Any, acts: Any,
              state: Any) -> _Plan:  # fmt: skip
        """The validated plan for these arrays (cached by identity: the cache holds them)."""
        arrays = (*weights, *biases, *wgrads, *bgrads, *(a for s in state for a in s))
        last = self.__dict__.get("_last_plan")
        if _same(last, arrays) and last.nstate == len(state) and last.net.acts == tuple(acts):
            return last  # the same weights and biases: the last plan's net holds them
        net = self._net(weights, biases, acts)
        key = (tuple(map(id, arrays)), len(state), id(net))
        plans = self.__dict__.setdefault("_plans", {})
        plan = plans.get(key)
        if plan is None or not _same(plan, arrays) or plan.net is not net:
            if len(plans) >= _PLANS_MAX:
                plans.clear()
            plan = plans[key] = self._make_plan(net, weights, biases, wgrads, bgrads, state,
                                                arrays)  # fmt: skip
        self._last_plan = plan
        return plan

    def _make_plan(self, net: _Net, weights: Any, biases: Any, wgrads: Any, bgrads: Any,
                   state: Any, arrays: tuple[Any, ...]) -> _Plan:  # fmt: skip
        nl = net.nl
        if not (len(wgrads) == len(bgrads) == nl):
            raise ValueError("fused_mlp_step: one weight, bias, grads and activation per layer")
        p = _Plan()
        p.arrays, p.net, p.nstate = arrays, net, len(state)
        dt = net.dt
        params = [*weights, *biases]
        ok = net.ok and all(
            isinstance(a, np.ndarray) and a.dtype == dt and a.flags.c_contiguous
            for a in (*wgrads, *bgrads)
        )
        empty = [self._dummy(dt, 1)] * (2 * nl)
        st = [empty if all(a is None for a in s) else list(s) for s in state]
        for s in st:
            if s is empty:
                continue
            ok = ok and len(s) == 2 * nl and all(
                isinstance(a, np.ndarray) and a.dtype == dt and a.flags.c_contiguous
                and a.size == q.size for a, q in zip(s, params, strict=False)
            )  # fmt: skip
        while len(st) < 3:
            st.append(empty)
        p.ok = ok
        p.size = sum(a.size for a in params)
        p.params = (tuple(weights), tuple(biases), tuple(wgrads), tuple(bgrads))
        p.flat = tuple(tuple(a.reshape(-1) for a in s) for s in st)
        if ok:
            p.pflat = tuple(a.reshape(-1) for a in params)
            p.gflat = tuple(a.reshape(-1) for a in (*wgrads, *bgrads))
        p.hp, p.flags = hyper.rows([((), ())] * (2 * nl), dt)
        p.hp_rows = tuple(p.hp[i] for i in range(2 * nl))
        p.last_hp = (0, None, None)  # (code, rule, packed) the rows hold
        p.rest = {}  # fused-update pattern -> the parameters left to the update call
        return p

    def _layered_step(self, plan: _Plan, weights: Any, biases: Any, wgrads: Any, bgrads: Any,
                      x: Any, labels: Any, optimizer: str, alpha: float, masks: Any,
                      logits_out: Any, precision: str) -> Any:  # fmt: skip
        """fused_mlp_step layer by layer (large models, bf16; layered.py), or through the
        public stages for arrays the kernels do not take."""
        net = plan.net
        x = self.asarray(x)
        if not (plan.ok and self._direct(net, x)):
            return self._staged_step(plan, weights, biases, wgrads, bgrads, x, labels,
                                     optimizer, alpha, masks, logits_out, precision)  # fmt: skip
        return self._layered_step_direct(plan, weights, biases, wgrads, bgrads, x, labels,
                                         alpha, masks, logits_out, precision)  # fmt: skip

    def _staged_step(self, plan: _Plan, weights: Any, biases: Any, wgrads: Any, bgrads: Any,
                     x: Any, labels: Any, optimizer: str, alpha: float, masks: Any,
                     logits_out: Any, precision: str) -> Any:  # fmt: skip
        """The same step through the backend's public stages (arrays the kernels do not take)."""
        logits, tape = Backend.mlp_forward(self, weights, biases, plan.net.acts, x, alpha=alpha,
                                           masks=masks, precision=precision)  # fmt: skip
        loss, d = self.softmax_cross_entropy(logits, labels)
        if logits_out is not None:
            logits_out[...] = logits
        Backend.mlp_backward(self, tape, d, wgrads, bgrads, need_input_grad=False)
        params = (*weights, *biases)
        st = [
            [a.reshape(q.shape) if a.size == q.size else None for a, q in zip(s, params)]  # noqa: B905
            for s in plan.flat
        ]
        self.multi_update(optimizer, [*weights, *biases], [*wgrads, *bgrads], st,
                          plan.hp, plan.flags)  # fmt: skip
        return loss
