"""The Numba backend's fused stages: a whole MLP's forward and backward (`mlp_forward`,
`mlp_backward`) and a whole optimizer update (`multi_update`), one call each.

A stage runs one of two routes with the same maths, chosen by size (`step_path`):
- compiled: a small MLP's stage is one single-threaded call of kernels/numba/step.py (Python and
  dispatch overhead would otherwise dominate work of a few tens of microseconds);
- layered: larger models, and every bf16 stage, go layer by layer on the backend's GEMM (JIT
  kernel or BLAS, multithreaded; bf16: the vdpbf16ps kernel) with bias + activation inside the
  forward GEMM.
Validation happens once per set of arrays (a plan cached by their identities).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...errors import ShapeError
from .. import hyper
from .._stages import MLPTape, check_precision
from ..base import ACTIVATIONS, FLOAT_DTYPES, Backend, check_activation
from .layered import NumbaLayeredMixin
from .updates import PARALLEL_ELEMENTS

#: A stage whose products do at most this many multiply-adds (batch x weights) takes the
#: compiled route (BENCHMARKS.md: the one-thread compiled step wins up to ~8.7 M on 2 cores).
FUSED_STEP_MAX_WORK = 8_000_000
_PLANS_MAX = 64


class _Net:
    """Validated weights/biases/activations of one MLP, and per-batch workspaces."""

    __slots__ = ("arrays", "acts", "dt", "nl", "ok", "codes", "work", "ws", "nomask", "grads")


class _Update:
    """The arrays of one multi-tensor update and their flat views."""

    __slots__ = ("arrays", "nstate", "flat", "size")


def _same(cached: Any, arrays: tuple) -> bool:
    return (
        cached is not None
        and len(cached.arrays) == len(arrays)
        and all(map(operator.is_, cached.arrays, arrays))
    )


class NumbaStagesMixin(NumbaLayeredMixin):
    """Fused stages for NumbaBackend (needs its _k, _dummy and per-layer methods)."""

    _k: Any
    _dummy: Any
    _matmul: Any
    _matmul_fused: Any
    _use_jit: Any
    _mkl: Any
    #: Whether the compile target has vector FMA (without it the compiled route is slow).
    fma: bool = True
    #: Route of the fused stages: "auto" (by size), "compiled" (one call) or "layered".
    step_path: str = "auto"
    #: Whether this backend's stages are fused calls (read by the step planner).
    fused_stages = True
    #: bf16 runs the layered route on the bf16 kernel (fp16 runs module by module).
    fused_precisions = ("float32", "bf16")

    # ------------------------------------------------------------------ plans
    def _net(self, weights: Sequence[Any], biases: Sequence[Any], acts: Sequence[str]) -> _Net:
        arrays = (*weights, *biases)
        acts = tuple(acts)
        last = self.__dict__.get("_last_net")
        if _same(last, arrays) and last.acts == acts:
            return last
        nets = self.__dict__.setdefault("_nets", {})
        key = (tuple(map(id, arrays)), acts)
        net = nets.get(key)
        if net is None or not _same(net, arrays):
            if len(nets) >= _PLANS_MAX:
                nets.clear()
            net = nets[key] = self._make_net(weights, biases, acts, arrays)
        self._last_net = net
        return net

    def _make_net(self, weights: Any, biases: Any, acts: tuple, arrays: tuple) -> _Net:
        nl = len(weights)
        if not (len(biases) == len(acts) == nl) or nl == 0:
            raise ValueError("fused MLP: one weight, bias and activation per layer")
        n = _Net()
        n.arrays, n.acts, n.nl = arrays, acts, nl
        n.dt = dt = weights[0].dtype
        n.codes = tuple(ACTIVATIONS.index(check_activation(a)) for a in acts)
        ok = all(
            isinstance(a, np.ndarray) and a.dtype == dt and a.flags.c_contiguous
            for a in (*weights, *(b for b in biases if b is not None))
        )
        ok = ok and dt.name in FLOAT_DTYPES and all(b is not None for b in biases)
        ok = ok and all(w.ndim == 2 for w in weights) and all(b.ndim == 1 for b in biases)
        n.ok = (
            ok
            and all(weights[l].shape[1] == weights[l - 1].shape[0] for l in range(1, nl))
            and all(b.shape == (w.shape[0],) for w, b in zip(weights, biases, strict=True))
        )
        n.work = sum(w.size for w in weights)
        n.ws = {}
        n.nomask = ((False,) * nl, (self._dummy(dt, 2),) * nl)
        n.grads = None  # the last gradient arrays checked for the kernels
        return n

    def _workspace(self, net: _Net, weights: Any, m: int, masked: tuple) -> tuple[Any, ...]:
        """Per-layer buffers for batch m: z, out, in (the masked output; `out` itself without
        a mask), d (m x out), each weight's packed transpose and one MR x NR edge tile."""
        ws = net.ws.get((m, masked))
        if ws is None:
            dt = net.dt
            g = self._k.gemm
            nr = g.nr_of(dt)
            outs = [w.shape[0] for w in weights]
            zs = tuple(np.empty((m, o), dt) for o in outs)
            as_ = tuple(np.empty((m, o), dt) for o in outs)
            trio = zip(outs, as_, masked, strict=True)
            ins = tuple(np.empty((m, o), dt) if mk else a for o, a, mk in trio)
            ds = tuple(np.empty((m, o), dt) for o in outs)
            wts = tuple(np.empty(-(-o // nr) * nr * w.shape[1], dt)
                        for o, w in zip(outs, weights, strict=True))  # fmt: skip
            ws = net.ws[(m, masked)] = (zs, as_, ins, ds, wts, np.empty(g.MR * nr, dt))
        return ws

    def _compiled(self, net: _Net, x: Any) -> bool:
        """Whether this batch takes the one-call route."""
        path = self.step_path
        return (
            net.ok
            and path != "layered"
            and (path == "compiled" or (self.fma and x.shape[0] * net.work <= FUSED_STEP_MAX_WORK))
            and isinstance(x, np.ndarray)
            and x.ndim == 2
            and x.dtype == net.dt
            and x.flags.c_contiguous
            and x.shape[1] == net.arrays[0].shape[1]
            and x.shape[0] > 0
        )

    def step_route(self, work: int, batch: int) -> str:
        """ "compiled" or "layered": the route a stage of `work` multiply-adds per sample over
        `batch` samples takes (for the planner's record)."""
        path = self.step_path
        if path != "auto":
            return path
        return "compiled" if self.fma and batch * work <= FUSED_STEP_MAX_WORK else "layered"

    def _masks(self, net: _Net, masks: Any, m: int) -> tuple[tuple, tuple]:
        """(pattern, arrays): masks as the kernels take them (empty arrays where none)."""
        if not masks:
            return net.nomask
        pattern = tuple(mk is not None for mk in masks)
        arrs = tuple(
            self._dummy(net.dt, 2) if mk is None else np.ascontiguousarray(mk, net.dt)
            for mk in masks
        )
        for mk in arrs:
            if mk.size and mk.shape[0] != m:
                raise ShapeError(f"dropout mask has shape {mk.shape}, batch has {m} rows")
        return pattern, arrs

    # ------------------------------------------------------------------ stages
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
        net = self._net(weights, biases, activations)
        if precision != "float32" or not self._compiled(net, x):
            check_precision(precision, self.fused_precisions, "mlp_forward")
            return self._layered_forward(net, weights, biases, x, alpha, masks, precision)
        m = x.shape[0]
        pattern, marr = self._masks(net, masks, m)
        zs, outs, ins, ds, wts, tmp = self._workspace(net, weights, m, pattern)
        self._k.step.mlp_forward(tuple(weights), tuple(biases), net.codes, net.dt.type(alpha),
                                 x, marr, zs, outs, ins, wts, tmp)  # fmt: skip
        tape = MLPTape(tuple(weights), net.acts, alpha, x, marr, zs, outs, ins)
        tape.extra = (net, ds, True)  # (net, d buffers, whether backward takes one call)
        return ins[-1].copy(), tape  # the caller keeps its output; the workspace is reused

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
        extra = tape.extra
        if extra is None or accumulate:  # base's per-layer route accumulates
            return Backend.mlp_backward(
                self, tape, grad_output, weight_grads, bias_grads, accumulate=accumulate,
                need_input_grad=need_input_grad, on_layer=on_layer,
            )  # fmt: skip
        net, ds, compiled = extra
        d_last = ds[-1]
        g = grad_output if type(grad_output) is np.ndarray else self.asarray(grad_output)
        if g.shape != d_last.shape:
            raise ShapeError(f"grad_output has shape {g.shape}, the output has {d_last.shape}")
        np.copyto(d_last, g)  # the kernels overwrite their d buffers (casting safely)
        x = tape.x
        grads = (*weight_grads, *bias_grads)
        ok = net.grads is not None and all(map(operator.is_, net.grads, grads))
        if not ok:
            ok = all(
                isinstance(a, np.ndarray) and a.dtype == net.dt and a.flags.c_contiguous
                for a in grads
            )
            net.grads = grads if ok else None
        dx = np.empty(x.shape, net.dt) if need_input_grad else ds[0][:0]
        if ok and compiled:
            self._k.step.mlp_backward(tape.weights, tuple(weight_grads), tuple(bias_grads),
                                      net.codes, net.dt.type(tape.alpha), x, tape.masks,
                                      tape.pre, tape.out, tape.ins, ds, dx)  # fmt: skip
            if on_layer is not None:  # one call computed them all
                for l in range(net.nl - 1, -1, -1):
                    on_layer(l)
            return dx if need_input_grad else None
        return self._layered_backward(net, tape, ds, weight_grads, bias_grads, dx,
                                      need_input_grad, None, on_layer)  # fmt: skip

    def multi_update(
        self,
        rule: str,
        params: Sequence[Any],
        grads: Sequence[Any],
        state: Sequence[Sequence[Any]],
        hp: Any,
        flags: Any,
    ) -> None:
        """Every parameter's update by `rule` in one compiled call (rows of hp/flags per
        parameter, deepcore.backends.hyper's order); base's per-parameter loop otherwise."""
        arrays = (*params, *grads, *(a for s in state for a in s if a is not None))
        plan = self.__dict__.get("_last_update")
        if plan is None or plan.nstate != len(state) or not _same(plan, arrays):
            plan = self._last_update = self._update_plan(params, grads, state, arrays)
        if plan.flat is None or hp.dtype != params[0].dtype:
            return Backend.multi_update(self, rule, params, grads, state, hp, flags)
        k = self._k.step
        fn = k.update_params_parallel if plan.size >= PARALLEL_ELEMENTS else k.update_params
        fn(*plan.flat, hyper.RULES.index(rule), hp, flags)
        return None

    def _update_plan(self, params: Any, grads: Any, state: Any, arrays: tuple) -> _Update:
        """The flat views `multi_update`'s kernel takes (flat None: the kernels cannot)."""
        plan = _Update()
        plan.arrays, plan.nstate, plan.flat, plan.size = arrays, len(state), None, 0
        p0 = params[0]
        dt = p0.dtype if isinstance(p0, np.ndarray) else None
        ok = dt is not None and dt.name in FLOAT_DTYPES
        st = [list(s) for s in state]
        while len(st) < 3:
            st.append([None] * len(params))
        for a, q in zip(
            (*params, *grads, *(x for s in st for x in s)),
            (*params, *params, *(params * 3)),
            strict=True,
        ):
            if a is None:
                continue
            ok = ok and (isinstance(a, np.ndarray) and a.dtype == dt and a.flags.c_contiguous
                         and a.size == q.size)  # fmt: skip
        if not ok:
            return plan
        d = self._dummy(dt, 1)
        plan.flat = (
            tuple(p.reshape(-1) for p in params),
            tuple(g.reshape(-1) for g in grads),
            *(tuple(d if a is None else a.reshape(-1) for a in s) for s in st),
        )
        plan.size = sum(p.size for p in params)
        return plan
