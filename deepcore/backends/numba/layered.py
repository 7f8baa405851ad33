"""The Numba backend's layered route (models above the compiled route's size, and every bf16
step): forward, backward and the whole training step layer by layer on the backend's GEMM (JIT
kernel or BLAS, multithreaded; bf16: the vdpbf16ps kernel), with bias + activation inside the
forward GEMMs.

In the whole float32 step (`_layered_step_direct`) a narrow output layer (e.g. 10 classes), the
loss and that layer's backward run as one serial compiled call (kernels/numba/head.py), and
weights up to `gemm_update_min` elements are updated by one multi-tensor call after the
backward; larger weights are updated inside their gradient GEMM, while the gradient is in cache.
A bf16 step runs every layer's GEMMs on the bf16 kernel and updates every parameter in the
multi-tensor call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import threads
from ...errors import ShapeError
from .._stages import MLPTape
from ..base import Backend
from .gemm_choice import SMALL_WORK
from .updates import PARALLEL_ELEMENTS

#: The output layer runs as one serial call (head.head_step) when it is narrow (fewer than
#: half a register block of outputs) and batch x its weights is at most this many
#: multiply-adds (mnist: 128 x 10 x 512 = 655 k; its three products then take ~40 us on one
#: thread, against three parallel GEMMs plus four other calls).
HEAD_MAX_WORK = 1 << 21


class NumbaLayeredMixin(Backend):
    """Layered forward, backward and step for NumbaBackend (needs its plans and GEMMs)."""

    _k: Any
    _masks: Any
    _workspace: Any
    _matmul: Any
    _matmul_fused: Any
    _bias_act: Any
    _use_jit: Any
    _mkl: Any
    _bf16_matmul: Any
    _bf16_matmul_fused: Any
    _bf16_kernels: Any
    _bf16_wt: Any
    #: Parameters (elements, all layers) from which the layered step's update runs in parallel
    #: when the GEMMs run on MKL (whose threads are the kernels' threads).
    parallel_step_update: int = 1 << 16
    #: Elements of a float32 weight from which the layered step updates it inside its gradient GEMM;
    #: smaller weights join the one multi-tensor update after the backward. Measured (one
    #: thread, mnist's 512x784 and 512x512 weights, which fit L3): the per-row update in the
    #: epilogue cost 1.4-2.8x a separate pass (SGD 162 vs 58 us, Adam 298 vs 177 us); above
    #: the caches the epilogue saves reading the gradient back from memory (wide).
    gemm_update_min: int = 1 << 20

    def _direct(self, net: Any, x: Any) -> bool:
        return (
            isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype == net.dt
            and x.flags.c_contiguous and x.shape[1] == net.arrays[0].shape[1] and x.shape[0] > 0
        )  # fmt: skip

    def _gemms(self, precision: str) -> tuple[Any, Any]:
        """(`_matmul`, `_matmul_fused`) for GEMMs on `precision` operands ("float32", "bf16")."""
        if precision == "bf16":
            return self._bf16_matmul, self._bf16_matmul_fused
        return self._matmul, self._matmul_fused

    def _forward_layers(self, net: Any, weights: Any, biases: Any, x: Any, alpha: float,
                        pattern: tuple, marr: tuple, ws: tuple, upto: int,
                        precision: str = "float32", wts: Any = None) -> None:  # fmt: skip
        """Layers 0..upto-1 into the workspace `ws` (zs, outs, ins, ...). wts (bf16, a list
        of nl Nones): each layer but the first whose forward GEMM can also pack its weight for
        the input gradient (`_bf16_wt`) gets that packed weight, for the backward of this step."""
        zs, outs, ins = ws[0], ws[1], ws[2]
        matmul_fused = self._gemms(precision)[1]
        nt = threads.get_num_threads()
        t = net.dt.type
        src = x
        for l in range(upto):
            fe = (net.codes[l], t(alpha), biases[l], outs[l].reshape(-1))
            kw = {}
            if wts is not None and l > 0:
                wts[l] = kw["wt"] = self._bf16_wt(f"wt{l}", x.shape[0], weights[l], nt)
            if not matmul_fused(src, False, weights[l], True, zs[l], nt, fe=fe, **kw):
                if wts is not None:  # the kernel did not run: nothing was packed
                    wts[l] = None
                self._bias_act(zs[l], biases[l], net.acts[l], alpha, outs[l], zs[l])
            if pattern[l]:
                np.multiply(outs[l], marr[l], out=ins[l])
            src = ins[l]

    def _layered_forward(self, net: Any, weights: Any, biases: Any, x: Any, alpha: float,
                         masks: Any, precision: str = "float32",
                         ) -> tuple[Any, MLPTape]:  # fmt: skip
        """The forward layer by layer: bias + activation inside the GEMM where it can."""
        if not (net.ok and self._direct(net, x)):
            return Backend.mlp_forward(self, weights, biases, net.acts, x, alpha=alpha,
                                       masks=masks, precision=precision)  # fmt: skip
        pattern, marr = self._masks(net, masks, x.shape[0])
        ws = self._workspace(net, weights, x.shape[0], pattern)
        self._forward_layers(net, weights, biases, x, alpha, pattern, marr, ws, net.nl, precision)
        zs, outs, ins, ds = ws[:4]
        tape = MLPTape(tuple(weights), net.acts, alpha, x, marr, zs, outs, ins, precision)
        tape.extra = (net, ds, False)  # backward runs layer by layer too
        return ins[-1].copy(), tape

    def _layered_backward(self, net: Any, tape: MLPTape, ds: Any, wgrads: Any, bgrads: Any,
                          dx: Any, need_dx: bool, plan: Any = None, on_layer: Any = None,
                          top: int | None = None, wts: Any = None) -> Any:  # fmt: skip
        """Backward layer by layer from layer `top` (default the last; ds[top] holds
        dL/d(its output)), the GEMMs on the tape's precision. With a whole-step plan, each
        float32 weight of at least gemm_update_min elements whose gradient GEMM runs on the JIT
        kernel is updated inside it (returns the list of layers updated so); else returns dx (or
        None). bf16 weights all join the multi-tensor update: inside the bf16 kernel the update
        made the wide step 13% slower (BENCHMARKS.md). wts: `_forward_layers`'s packed
        weights of this step (bf16), read by the input-gradient GEMMs."""
        nl = net.nl
        top = nl - 1 if top is None else top
        nt = threads.get_num_threads()
        weights, x = tape.weights, tape.x
        fused = [False] * nl
        e = self._k.elementwise
        t = net.dt.type
        d = ds[top]
        matmul, matmul_fused = self._gemms(tape.precision)
        update_min = self.gemm_update_min if tape.precision == "float32" else None
        for l in range(top, -1, -1):
            if tape.masks[l].size:
                np.multiply(d, tape.masks[l], out=d)
            if plan is not None and d.size < PARALLEL_ELEMENTS:  # checked arrays
                e.act_backward_bias_grad_cols(0, d.shape[1], net.codes[l], d, tape.pre[l],
                                              tape.out[l], t(tape.alpha), d, bgrads[l],
                                              False)  # fmt: skip
            else:
                self.activation_backward_bias_grad(
                    net.acts[l], d, x=tape.pre[l], y=tape.out[l], alpha=tape.alpha, dx_out=d,
                    db_out=bgrads[l],
                )  # fmt: skip
            src = x if l == 0 else tape.ins[l - 1]
            d_prev = None  # dX first: an update fused into the dW GEMM changes W[l]
            if l > 0 and wts is not None and wts[l] is not None:
                d_prev = matmul(d, False, weights[l], False, ds[l - 1], nthreads=nt, bp=wts[l])
            elif l > 0:
                d_prev = matmul(d, False, weights[l], False, ds[l - 1], nthreads=nt)
            elif need_dx:
                d_prev = matmul(d, False, weights[l], False, dx, nthreads=nt)
            if plan is not None and update_min is not None and wgrads[l].size >= update_min:
                ep = (plan.last_hp[0], plan.pflat[l], plan.flat[0][l], plan.flat[1][l],
                      plan.flat[2][l], plan.hp_rows[l], plan.flags[l])  # fmt: skip
                fused[l] = matmul_fused(d, True, src, False, wgrads[l], nt, ep=ep)
            else:
                matmul(d, True, src, False, wgrads[l], nthreads=nt)
            if on_layer is not None:
                on_layer(l)
            d = d_prev
        if plan is not None:
            return fused
        return dx if need_dx else None

    def _head(self, net: Any, weights: Any, m: int) -> bool:
        """Whether the step's output layer runs as one serial call (head.head_step): narrow and
        small, its GEMMs on the JIT kernel (the head runs its micro-kernel), and its weight
        gradient's sum over the batch one K block (so the same bits as the GEMM's)."""
        w, g = weights[-1], self._k.gemm
        work = m * w.size
        return (
            2 * w.shape[0] < g.nr_of(net.dt) and work <= HEAD_MAX_WORK and m <= g.KC
            and self._use_jit(work, net.dt)
        )  # fmt: skip

    def _openblas_threads(self, m: int, net: Any, weights: Any) -> bool:
        """True when this step's largest GEMM runs on NumPy's BLAS with its own threads, whose
        worker keeps spinning after each call: the update then runs on one thread."""
        work = m * max(w.size for w in weights)
        return work > SMALL_WORK and not self._use_jit(work, net.dt) and self._mkl() is None

    def _layered_step_direct(self, plan: Any, weights: Any, biases: Any, wgrads: Any,
                             bgrads: Any, x: Any, labels: Any, alpha: float, masks: Any,
                             logits_out: Any, precision: str = "float32") -> Any:  # fmt: skip
        """fused_mlp_step layer by layer on checked arrays (plan.ok, x direct): forward, loss
        and backward (float32: the output layer in one call where `_head`), then the update of
        the parameters not updated inside their gradient GEMMs in one call. Returns the loss."""
        net = plan.net
        nl, m = net.nl, x.shape[0]
        pattern, marr = self._masks(net, masks, m)
        ws = self._workspace(net, weights, m, pattern)
        zs, outs, ins, ds, wts, tmp = ws
        tape = MLPTape(tuple(weights), net.acts, alpha, x, marr, zs, outs, ins, precision)
        f32 = precision == "float32"
        if f32 and self._head(net, weights, m):
            if labels.shape != (m,):
                raise ShapeError(f"labels have shape {labels.shape}, expected ({m},)")
            self._forward_layers(net, weights, biases, x, alpha, pattern, marr, ws, nl - 1)
            src = x if nl == 1 else ins[-2]
            da = ds[-2] if nl > 1 else ds[0][:0]
            loss = np.empty((), net.dt)  # fresh: callers may keep losses across steps
            if not self._k.head.head_step(src, weights[-1], wts[-1], biases[-1], net.codes[-1],
                                          net.dt.type(alpha), marr[-1], zs[-1], outs[-1],
                                          ins[-1], labels, ds[-1], loss, wgrads[-1],
                                          bgrads[-1], da, tmp):  # fmt: skip
                raise IndexError(f"labels must lie in [0, {weights[-1].shape[0]})")
            if logits_out is not None:
                logits_out[...] = ins[-1]
            fused = [False] * nl
            if nl > 1:
                fused = self._layered_backward(net, tape, ds, wgrads, bgrads, None, False,
                                               plan, top=nl - 2)  # fmt: skip
        else:  # (bf16: the forward also packs each large weight for its input gradient)
            wts = None if f32 or self._bf16_kernels() is None else [None] * nl
            self._forward_layers(net, weights, biases, x, alpha, pattern, marr, ws, nl, precision,
                                 wts)  # fmt: skip
            loss, _ = self.softmax_cross_entropy(ins[-1], labels, grad_out=ds[-1])
            if logits_out is not None:
                logits_out[...] = ins[-1]
            fused = self._layered_backward(net, tape, ds, wgrads, bgrads, None, False, plan,
                                           wts=wts)  # fmt: skip
        rest = plan.rest.get(tuple(fused))
        if rest is None:
            keep = [i for i in range(2 * nl) if i >= nl or not fused[i]]
            sub = lambda t: tuple(t[i] for i in keep)  # noqa: E731
            hp, fl = plan.hp[keep], plan.flags[keep]
            rest = plan.rest[tuple(fused)] = (
                sub(plan.pflat), sub(plan.gflat), *(sub(f) for f in plan.flat),
                sum(plan.pflat[i].size for i in keep), keep, hp, fl,
            )  # fmt: skip
        keep, hp, fl = rest[6], rest[7], rest[8]
        hp[...] = plan.hp[keep]
        fl[...] = plan.flags[keep]
        par = rest[5] >= self.parallel_step_update and not (
            f32 and self._openblas_threads(m, net, weights)
        )
        k = self._k.step
        fn = k.update_params_parallel if par else k.update_params
        fn(*rest[:5], plan.last_hp[0], hp, fl)
        return loss
