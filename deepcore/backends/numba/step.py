"""The Numba backend's whole-training-step path (`fused_mlp_step`), split from numba.py for size.

Two routes with the same maths:
- compiled: a small MLP's whole step is one call of kernels/numba/step.py (one thread; Python
  and dispatch overhead would otherwise dominate a step of a few tens of microseconds);
- layered: larger models go layer by layer through the backend's own methods, GEMMs on BLAS
  (multithreaded) and the epilogues on the Numba kernels, every buffer preallocated.

Validation is done once per set of arrays (a plan cached by their identities), so a steady-state
step costs one dict lookup plus the checks on the batch.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from ... import threads
from ...errors import ShapeError
from ..base import ACTIVATIONS, FLOAT_DTYPES, Backend, check_activation
from .gemm_choice import SMALL_WORK
from .updates import adam_scalars

#: MLPs whose step does at most this many multiply-adds per sample-batch take the compiled
#: route (64-128-10 at batch 32: 0.3 M). Measured with both routes on the same models (2 cores,
#: Zen 5 VM, the layered route on the JIT GEMM): the one-thread compiled step was 1.56-2.35x
#: faster up to 2.3 M (64-256-128-10 at batch 32, 256-256-10 at batch 32), 1.17x at 4.4 M
#: (256-256-10 at batch 64), even at 8.7 M (256-512-10 at batch 64), and 1.28x slower at 17 M
#: (512-512-10 at batch 64). (On the Xeon VM, against the layered route on BLAS: ~4 M.)
FUSED_STEP_MAX_WORK = 8_000_000
_PLANS_MAX = 64


class _Plan:
    """Validated arrays of one model + optimizer state, and their preallocated workspace."""

    __slots__ = ("arrays", "dt", "nl", "ok", "work", "params", "state", "flat", "codes", "hp",
                 "flags", "ws", "pflat", "gflat", "size", "rest", "acts", "nstate",
                 "last_hp")  # fmt: skip


class NumbaStepMixin(Backend):
    """fused_mlp_step for NumbaBackend (needs its _k, _dummy and per-layer methods)."""

    _k: Any
    _dummy: Any
    _matmul: Any
    _matmul_fused: Any
    _use_jit: Any
    _mkl: Any
    fma: bool
    #: fused_mlp_step's route: "auto" (by size), "compiled" (one call) or "layered".
    step_path: str = "auto"
    #: Parameters (elements, all layers) from which the layered step's update runs in parallel
    #: when the GEMMs run on MKL (whose threads are the kernels' threads; see _layered_step).
    parallel_step_update: int = 1 << 16

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
        lr: float,
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
        logits_out: Any = None,
    ) -> Any:
        """One SGD/Adam training step of an MLP with softmax cross-entropy; returns the 0-d loss.

        Layer l: a_l = act_l(a_{l-1} @ W_l.T + b_l); the last layer's output are the logits.
        Grads are overwritten; params and `state` are updated in place. `state` holds per-param
        lists ordered weights then biases (each flat or param-shaped): SGD (momentum_buffers,)
        (or () without momentum); Adam (exp_avgs, exp_avg_sqs) or, with amsgrad,
        (..., max_exp_avg_sqs). Small models run as one compiled call; larger ones layer by layer.
        """
        if optimizer not in ("sgd", "adam"):
            raise ValueError(
                f"fused_mlp_step: optimizer must be 'sgd' or 'adam', not {optimizer!r}"
            )
        plan = self._plan(weights, biases, weight_grads, bias_grads, activations, state)
        labels = np.asarray(labels)
        if labels.dtype != np.int64:
            labels = labels.astype(np.int64)
        dt = plan.dt
        m = x.shape[0] if getattr(x, "ndim", 0) == 2 else -1
        path = self.step_path
        compiled = (
            plan.ok
            and path != "layered"
            and (path == "compiled" or (self.fma and m * plan.work <= FUSED_STEP_MAX_WORK))
            and isinstance(x, np.ndarray)
            and x.dtype == dt
            and x.flags.c_contiguous
            and x.shape[1] == weights[0].shape[1]
        )
        if optimizer == "sgd":
            sc: tuple = (lr, momentum, 1.0 - dampening, weight_decay, nesterov, maximize,
                         first_step)  # fmt: skip
            if sc != plan.last_hp:  # written when they change (a numpy write costs ~1 us)
                plan.hp[:4] = sc[:4]
                plan.flags[:] = sc[4:]
        else:
            sc = adam_scalars(
                dt, step, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize
            )
            if sc != plan.last_hp:
                plan.hp[:] = sc[:9]
                plan.flags[:] = sc[9:]
        plan.last_hp = sc
        if not compiled:
            return self._layered_step(
                weights, biases, weight_grads, bias_grads, activations, x, labels, optimizer,
                plan, dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                     first_step=first_step, step=step, beta1=beta1, beta2=beta2, eps=eps,
                     decoupled=decoupled, amsgrad=amsgrad, weight_decay=weight_decay,
                     maximize=maximize), alpha, logits_out,
            )  # fmt: skip
        if labels.shape != (m,):
            raise ShapeError(f"labels have shape {labels.shape}, expected ({m},)")
        ws = self._workspace(plan, m)
        loss = np.empty((), dt)  # fresh: callers may keep losses across steps
        k = self._k.step
        opt = k.SGD if optimizer == "sgd" else k.ADAM
        args = (*plan.params, plan.codes, dt.type(alpha), x, labels, opt, *plan.flat, plan.hp,
                plan.flags, *ws, loss)  # fmt: skip
        if not k.mlp_step(*args):
            raise IndexError(f"labels must lie in [0, {weights[-1].shape[0]})")
        if logits_out is not None:
            logits_out[...] = ws[1][-1]  # this step's logits (before the update)
        return loss

    def _plan(self, weights: Any, biases: Any, wgrads: Any, bgrads: Any, acts: Any,
              state: Any) -> _Plan:  # fmt: skip
        """The validated plan for these arrays (cached by identity: the cache holds them)."""
        arrays = (*weights, *biases, *wgrads, *bgrads, *(a for s in state for a in s))
        last = self.__dict__.get("_last_plan")  # steady state: the same arrays as last step
        same = (
            last is not None and len(last.arrays) == len(arrays) and last.nstate == len(state)
            and last.acts == tuple(acts) and all(map(operator.is_, last.arrays, arrays))
        )  # fmt: skip
        if same:
            return last
        key = (tuple(map(id, arrays)), tuple(acts), len(state))
        plans = self.__dict__.setdefault("_plans", {})
        plan = plans.get(key)
        if plan is not None and all(a is b for a, b in zip(plan.arrays, arrays, strict=True)):
            self._last_plan = plan
            return plan
        if len(plans) >= _PLANS_MAX:
            plans.clear()
        plan = plans[key] = self._make_plan(weights, biases, wgrads, bgrads, acts, state, arrays)
        plan.acts, plan.nstate = tuple(acts), len(state)
        self._last_plan = plan
        return plan

    def _make_plan(self, weights: Any, biases: Any, wgrads: Any, bgrads: Any, acts: Any,
                   state: Any, arrays: tuple[Any, ...]) -> _Plan:  # fmt: skip
        nl = len(weights)
        if not (len(biases) == len(wgrads) == len(bgrads) == len(acts) == nl):
            raise ValueError("fused_mlp_step: one weight, bias, grads and activation per layer")
        p = _Plan()
        p.arrays, p.nl = arrays, nl
        p.dt = dt = weights[0].dtype
        p.codes = tuple(ACTIVATIONS.index(check_activation(a)) for a in acts)
        params = [*weights, *biases]
        ok = all(
            isinstance(a, np.ndarray) and a.dtype == dt and a.flags.c_contiguous
            for a in (*params, *wgrads, *bgrads)
        )
        ok = ok and dt.name in FLOAT_DTYPES and all(b is not None for b in biases)
        ok = ok and all(w.ndim == 2 for w in weights) and all(b.ndim == 1 for b in biases)
        ok = (
            ok
            and all(weights[l].shape[1] == weights[l - 1].shape[0] for l in range(1, nl))
            and all(b.shape == (w.shape[0],) for w, b in zip(weights, biases, strict=True))
        )
        st = [list(s) for s in state]
        for s in st:
            ok = ok and len(s) == 2 * nl and all(
                isinstance(a, np.ndarray) and a.dtype == dt and a.flags.c_contiguous
                and a.size == q.size for a, q in zip(s, params, strict=False)
            )  # fmt: skip
        empty = [self._dummy(dt, 1)] * (2 * nl)
        while len(st) < 3:
            st.append(empty)
        p.state = st
        p.ok = ok
        p.work = sum(w.size for w in weights)
        p.size = p.work + sum(b.size for b in biases)
        if ok:
            p.params = (tuple(weights), tuple(biases), tuple(wgrads), tuple(bgrads))
            p.flat = tuple(tuple(a.reshape(-1) for a in s) for s in st)
            p.pflat = tuple(a.reshape(-1) for a in params)
            p.gflat = tuple(a.reshape(-1) for a in (*wgrads, *bgrads))
        p.hp = np.zeros(9, dt)
        p.flags = np.zeros(3, np.int64)
        p.last_hp = None  # the hyperparameters hp and flags hold
        p.ws = {}
        p.rest = {}  # fused-update pattern -> the parameters left to the update call
        return p

    def _workspace(self, plan: _Plan, m: int) -> tuple[Any, ...]:
        """Per-layer buffers for batch m: z, a, d (m x out), each weight's packed transpose
        (whole NR-wide strips), and one MR x NR edge tile."""
        ws = plan.ws.get(m)
        if ws is None:
            dt = plan.dt
            g = self._k.gemm
            nr = g.nr_of(dt)
            outs = [w.shape[0] for w in plan.params[0]]
            zs = tuple(np.empty((m, o), dt) for o in outs)
            as_ = tuple(np.empty((m, o), dt) for o in outs)
            ds = tuple(np.empty((m, o), dt) for o in outs)
            wts = tuple(np.empty(-(-o // nr) * nr * w.shape[1], dt)
                        for o, w in zip(outs, plan.params[0], strict=True))  # fmt: skip
            ws = plan.ws[m] = (zs, as_, ds, wts, np.empty(g.MR * nr, dt))
        return ws

    def _openblas_threads(self, m: int, plan: _Plan) -> bool:
        """True when this step's largest GEMM runs on NumPy's BLAS with its own threads, whose
        worker keeps spinning after each call: the update then runs on one thread."""
        work = m * max(w.size for w in plan.params[0])
        return work > SMALL_WORK and not self._use_jit(work, plan.dt) and self._mkl() is None

    def _layer_buffers(self, weights: Any, m: int, dt: Any) -> tuple[Any, ...]:
        outs = [w.shape[0] for w in weights]
        zs = [self.scratch(f"step_z{i}", (m, o), dt) for i, o in enumerate(outs)]
        as_ = [self.scratch(f"step_a{i}", (m, o), dt) for i, o in enumerate(outs)]
        ds = [self.scratch(f"step_d{i}", (m, o), dt) for i, o in enumerate(outs)]
        return zs, as_, ds

    def _layered_step(
        self, weights: Any, biases: Any, wgrads: Any, bgrads: Any, acts: Any, x: Any,
        labels: Any, optimizer: str, plan: _Plan, hyper: dict[str, Any], alpha: float,
        logits_out: Any = None,
    ) -> Any:  # fmt: skip
        """fused_mlp_step's maths layer by layer (large models).

        On a validated plan (C-contiguous NumPy arrays of one dtype) the GEMMs go straight to
        `_matmul` (the JIT kernel or BLAS, as the public gemm chooses): the per-call checks of
        the public methods cost ~0.2 ms of a 3 ms mnist step. A weight whose gradient GEMM runs
        on the JIT kernel is updated inside that GEMM, row strip by row strip while the gradient
        is in cache (wide sgd: the separate update pass took 8.4 ms of a 205 ms step); the
        other parameters are updated by one compiled call afterwards, in parallel unless the
        GEMMs run on OpenBLAS, whose worker keeps spinning on the other core for a while after
        each call (there a parallel update was no faster: wide serial 286 and 314 ms per step,
        parallel 289-326 ms). Otherwise the public methods run, with their checks. The maths
        and its order are the same on every route (tested bitwise).
        """
        nl = len(weights)
        x = self.asarray(x)
        dt = x.dtype
        if any(w.dtype != dt for w in weights):
            raise ValueError(f"fused_mlp_step: x is {dt}, weights are {weights[0].dtype}")
        zs, outs, ds = self._layer_buffers(weights, x.shape[0], dt)
        direct = (
            plan.ok and isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype == dt
            and x.flags.c_contiguous and x.shape[1] == weights[0].shape[1] and x.shape[0] > 0
        )  # fmt: skip
        m = x.shape[0]
        nt = threads.get_num_threads()
        inputs = [x]
        t = dt.type
        for l in range(nl):
            if direct:  # z = x @ W.T, then z += b and out = act(z), in the GEMM when it can
                fe = (plan.codes[l], t(alpha), biases[l], outs[l].reshape(-1))
                if not self._matmul_fused(inputs[-1], False, weights[l], True, zs[l], nt, fe=fe):
                    self._bias_act(zs[l], biases[l], acts[l], alpha, outs[l], zs[l])
            else:
                self.linear(inputs[-1], weights[l], biases[l], acts[l], alpha, out=outs[l],
                            pre_out=zs[l])  # fmt: skip
            inputs.append(outs[l])
        loss, d = self.softmax_cross_entropy(outs[-1], labels, grad_out=ds[-1])
        if logits_out is not None:
            logits_out[...] = outs[-1]
        k = self._k.step
        opt = k.SGD if optimizer == "sgd" else k.ADAM
        fused = [False] * nl
        for l in range(nl - 1, -1, -1):
            d, _ = self.activation_backward_bias_grad(
                acts[l], d, x=zs[l], y=outs[l], alpha=alpha, dx_out=d, db_out=bgrads[l]
            )
            if direct:  # dX first: the update fused into the dW GEMM changes W[l]
                d_prev = d
                if l > 0:
                    d_prev = self._matmul(d, False, weights[l], False, ds[l - 1], nthreads=nt)
                ep = (opt, plan.pflat[l], plan.flat[0][l], plan.flat[1][l], plan.flat[2][l],
                      plan.hp, plan.flags)  # fmt: skip
                fused[l] = self._matmul_fused(d, True, inputs[l], False, wgrads[l], nt, ep=ep)
                d = d_prev
            else:
                self.gemm(d, inputs[l], trans_a=True, out=wgrads[l])
                if l > 0:
                    d = self.gemm(d, weights[l], out=ds[l - 1])
        params = [*weights, *biases]
        if direct:  # the parameters no GEMM updated, in one compiled call (see the docstring)
            rest = plan.rest.get(tuple(fused))
            if rest is None:
                keep = [i for i in range(2 * nl) if i >= nl or not fused[i]]
                sub = lambda t: tuple(t[i] for i in keep)  # noqa: E731
                rest = plan.rest[tuple(fused)] = (
                    sub(plan.pflat), sub(plan.gflat), *(sub(f) for f in plan.flat),
                    sum(plan.pflat[i].size for i in keep),
                )  # fmt: skip
            par = rest[-1] >= self.parallel_step_update and not self._openblas_threads(m, plan)
            fn = k.update_params_parallel if par else k.update_params
            fn(*rest[:5], opt, plan.hp, plan.flags)
            return loss
        h = hyper
        st = [
            [a.reshape(p.shape) if a.size else a for a, p in zip(s, params, strict=False)]
            for s in plan.state
        ]
        for i, (p, g) in enumerate(zip(params, [*wgrads, *bgrads], strict=True)):
            if optimizer == "sgd":
                self.sgd_update(
                    p, g, st[0][i] if h["momentum"] else None, lr=h["lr"], momentum=h["momentum"],
                    dampening=h["dampening"], nesterov=h["nesterov"],
                    weight_decay=h["weight_decay"], maximize=h["maximize"],
                    first_step=h["first_step"],
                )  # fmt: skip
            else:
                self.adam_update(
                    p, g, st[0][i], st[1][i], step=h["step"], lr=h["lr"], beta1=h["beta1"],
                    beta2=h["beta2"], eps=h["eps"], weight_decay=h["weight_decay"],
                    decoupled=h["decoupled"], amsgrad=h["amsgrad"],
                    max_exp_avg_sq=st[2][i] if h["amsgrad"] else None, maximize=h["maximize"],
                )  # fmt: skip
        return loss
