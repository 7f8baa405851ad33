"""Numba backend: NumPy arrays, hot paths in @njit kernels (deepcore.kernels.numba).

numba is imported only when this backend is instantiated (never by `import deepcore`). GEMMs go
to the JIT kernel or to BLAS, whichever measured faster here (_numba_gemm); elementwise, loss
and optimizer kernels are fused single passes; `fused_mlp_step` runs a whole training step (one
compiled call for small MLPs, layer by layer with fused epilogues for larger ones).
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ... import threads
from .. import hyper
from ..base import ACTIVATIONS, check_activation
from . import mkl as _mkl
from .bf16 import NumbaBf16Mixin
from .gemm import NumbaGemmMixin, check_blas, check_gemm_impl
from .memory import aligned_empty
from .stages import FUSED_STEP_MAX_WORK
from .step import NumbaStepMixin
from .updates import _FLOAT_TYPES, PARALLEL_ELEMENTS, NumbaLossUpdateMixin

__all__ = ["FUSED_STEP_MAX_WORK", "NumbaBackend", "probe"]

#: Bytes from which `NumbaBackend.empty` starts an array on a 64-byte cache line: the bf16
#: GEMM writes a large output (a weight gradient) by streaming stores, which need it.
ALIGNED_BYTES = 1 << 20


def probe(device: int | None = None) -> tuple[bool, str]:
    """(True, version) when numba imports; else (False, why)."""
    if importlib.util.find_spec("numba") is None:
        return False, "numba is not installed (pip install 'deepcore[numba]')"
    try:
        import numba
    except Exception as exc:  # a broken install (e.g. numpy too new for this numba)
        return False, f"numba failed to import: {type(exc).__name__}: {exc}"
    return True, f"numba {numba.__version__}"


def _kernels(gemm_impl: str, blas: str) -> Any:
    """The kernel modules (imports numba), after the OpenMP wait policy is chosen."""
    from . import env as _numba_env

    _numba_env.set_wait_policy(gemm_impl, blas)
    names = ("gemm", "simd", "elementwise", "losses", "optimizers", "step", "head", "_config")
    mods = {n: importlib.import_module(f"deepcore.kernels.numba.{n}") for n in names}
    return type("Kernels", (), mods)


class NumbaBackend(NumbaLossUpdateMixin, NumbaStepMixin, NumbaBf16Mixin, NumbaGemmMixin):
    """CPU backend: NumPy arrays, Numba-JIT kernels, BLAS where BLAS is faster."""

    name = "numba"
    device = "cpu"
    xp = np
    whole_step = True
    compiles = True
    #: Whether the target the kernels are compiled for has vector FMA (kernels/numba/simd.py).
    #: Without it (x86-64 baseline, Sandy Bridge) the JIT GEMM is far slower than BLAS: GEMMs
    #: run on BLAS and the training step layer by layer, unless forced (gemm_impl, step_path).
    fma: bool = True

    def __init__(self) -> None:
        super().__init__()
        check_blas(self.blas)  # DEEPCORE_NUMBA_BLAS, checked up front (MKL loads on first use)
        check_gemm_impl(self.gemm_impl)  # DEEPCORE_NUMBA_GEMM, likewise
        self._k = _kernels(self.gemm_impl, self.blas)
        self.fma = bool(self._k.simd.HAS_FMA)
        self._dummies: dict[tuple[str, int], np.ndarray] = {}

    # ------------------------------------------------------------------ plumbing
    def empty(self, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        """An uninitialized array; from ALIGNED_BYTES on, cache-line aligned."""
        dt = np.dtype(dtype)
        if int(np.prod(shape)) * dt.itemsize < ALIGNED_BYTES:
            return np.empty(shape, dt)
        return aligned_empty(shape, dt)

    def _dummy(self, dtype: Any, ndim: int) -> np.ndarray:
        """An empty array standing in for an unused optional operand (one type per dtype)."""
        key = (np.dtype(dtype), ndim)
        d = self._dummies.get(key)
        if d is None:
            d = self._dummies[key] = np.empty((0,) * ndim, dtype=dtype)
        return d

    @staticmethod
    def _jit_ok(x: Any, *others: Any) -> bool:
        """True when the kernels take these: x 2-D float, all C-contiguous numpy, one dtype."""
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype.type not in _FLOAT_TYPES:
            return False
        return all(
            o is None or (isinstance(o, np.ndarray) and o.flags.c_contiguous and o.dtype == x.dtype)
            for o in (x, *others)
        )

    # ------------------------------------------------------------------ dense
    def bias_add(self, x: Any, b: Any, out: Any = None) -> Any:
        return self._bias_act(x, b, "identity", 0.0, out, None)

    def bias_grad(self, dy: Any, out: Any = None, accumulate: bool = False) -> Any:
        """Column sums of dy, rows in order (deterministic); BLAS-free single pass."""
        if not self._jit_ok(dy, out):
            return super().bias_grad(dy, out=out, accumulate=accumulate)
        if out is None:
            out = np.empty(dy.shape[1], dy.dtype)
        self._k.elementwise.bias_grad(dy, out, bool(accumulate))
        return out

    # ------------------------------------------------------------------ activations
    def _bias_act(self, z: Any, b: Any, kind: str, alpha: float, out: Any, pre: Any) -> Any:
        """out = act(z + b) in one pass (pre gets z + b when given)."""
        code = ACTIVATIONS.index(check_activation(kind))
        if out is None:
            out = np.empty(z.shape, z.dtype)
        if not self._jit_ok(z, b, out, pre):
            if b is not None:
                z = super().bias_add(z, b, out=pre if pre is not None else out)
            return super().activation(kind, z, alpha=alpha, out=out)
        t = z.dtype.type
        e = self._k.elementwise
        par = z.size >= PARALLEL_ELEMENTS
        args = (
            z,
            b if b is not None else self._dummy(z.dtype, 1),
            b is not None,
            code,
            t(alpha),
            out,
            pre if pre is not None else self._dummy(z.dtype, 2),
            pre is not None,
        )
        if par:
            e.bias_act(*args)
        else:
            e.bias_act_rows(0, z.shape[0], *args)
        return out

    def activation(self, kind: str, x: Any, alpha: float = 0.01, out: Any = None) -> Any:
        return self._bias_act(x, None, kind, alpha, out, None)

    def activation_backward(
        self,
        kind: str,
        dy: Any,
        x: Any = None,
        y: Any = None,
        alpha: float = 0.01,
        out: Any = None,
    ) -> Any:
        code = ACTIVATIONS.index(check_activation(kind))
        if not self._jit_ok(dy, x, y, out):
            return super().activation_backward(kind, dy, x=x, y=y, alpha=alpha, out=out)
        if out is None:
            out = np.empty(dy.shape, dy.dtype)
        d2 = self._dummy(dy.dtype, 2)
        xx = x if x is not None else d2
        args = (code, dy, xx, y if y is not None else d2, dy.dtype.type(alpha), out)
        e = self._k.elementwise
        if dy.size >= PARALLEL_ELEMENTS:
            e.act_backward(*args)
        else:
            e.act_backward_rows(0, dy.shape[0], *args)
        return out

    def activation_backward_bias_grad(
        self,
        kind: str,
        dy: Any,
        x: Any = None,
        y: Any = None,
        alpha: float = 0.01,
        dx_out: Any = None,
        db_out: Any = None,
        accumulate_db: bool = False,
    ) -> tuple[Any, Any]:
        """Fused: dz = activation backward of dy and db (+)= column sums of dz, one pass.

        A thread owns a fixed block of 64 columns and sums them row by row: bitwise
        reproducible for any thread count.
        """
        code = ACTIVATIONS.index(check_activation(kind))
        if not self._jit_ok(dy, x, y, dx_out, db_out):
            return super().activation_backward_bias_grad(
                kind, dy, x, y, alpha, dx_out, db_out, accumulate_db
            )
        if dx_out is None:
            dx_out = np.empty(dy.shape, dy.dtype)
        if db_out is None:
            db_out = np.empty(dy.shape[1], dy.dtype)
        d2 = self._dummy(dy.dtype, 2)
        args = (
            code,
            dy,
            x if x is not None else d2,
            y if y is not None else d2,
            dy.dtype.type(alpha),
            dx_out,
            db_out,
            bool(accumulate_db),
        )
        e = self._k.elementwise
        if dy.size >= PARALLEL_ELEMENTS:
            e.act_backward_bias_grad(*args, threads.get_num_threads())
        else:
            e.act_backward_bias_grad_cols(0, dy.shape[1], *args)
        return dx_out, db_out

    def linear(
        self,
        x: Any,
        w: Any,
        b: Any = None,
        activation: str = "identity",
        alpha: float = 0.01,
        out: Any = None,
        pre_out: Any = None,
    ) -> Any:
        """act(x @ w.T + b): GEMM (JIT or BLAS) then bias + activation in one pass over out."""
        check_activation(activation)
        z = self.gemm(x, w, trans_b=True, out=pre_out if pre_out is not None else out)
        if out is None:
            out = z if pre_out is None else np.empty(z.shape, z.dtype)
        if b is None and activation == "identity":
            return z if out is z else self.copy_(out, z)
        return self._bias_act(z, b, activation, alpha, out, pre_out)

    def softmax(self, x: Any, out: Any = None) -> Any:
        if not self._jit_ok(x, out):
            return super().softmax(x, out=out)
        if out is None:
            out = np.empty(x.shape, x.dtype)
        e = self._k.elementwise
        if x.size >= PARALLEL_ELEMENTS:
            e.softmax(x, out)
        else:
            e.softmax_rows(0, x.shape[0], x, out)
        return out

    # ------------------------------------------------------------------ setup
    def warmup(self, dtypes: Sequence[str] = ("float32",), depths: Sequence[int] = (), *,
               precision: str = "float32") -> float:  # fmt: skip
        """Compile (or load from the cache) every kernel for `dtypes` and the fused stages for
        MLPs of `depths` Linear layers, and settle the JIT-vs-BLAS choice for them (measured
        once per machine); with precision "bf16", the bf16 GEMM and its packs too. Returns the
        seconds taken."""
        start = time.perf_counter()
        for name in dtypes:
            _exercise(self, np.dtype(name))
            for depth in depths:
                if depth != 2:
                    _exercise_stages(self, np.dtype(name), depth)
            if self.gemm_impl == "auto" and self.fma:
                self.gemm_choices(name)
        if precision == "bf16" and self._bf16_kernels() is not None:
            one = lambda *shape: np.ones(shape, np.float32)  # noqa: E731 - m, k, n = 3, 5, 4
            for ta, tb in ((False, True), (False, False), (True, False), (True, True)):
                self.gemm_bf16(one(5, 3) if ta else one(3, 5), one(4, 5) if tb else one(5, 4),
                               ta, tb)  # fmt: skip
            self.linear_bf16(one(3, 5), one(4, 5), one(4), "relu")
            self.gemm_bf16(one(512, 256), one(256, 512))  # the parallel GEMM and packs
        return time.perf_counter() - start

    def info(self) -> dict[str, Any]:
        from ... import threads

        cfg = self._k._config
        return {
            **super().info(),
            "numba": importlib.import_module("numba").__version__,
            "numba_cache": cfg.CACHE_DIR or ("in-tree __pycache__" if cfg.CACHE else "off"),
            "gemm": self.gemm_info(),
            "simd": self._k.simd.TARGET.describe(),
            "bf16": self.bf16_info(),
            "blas": self._blas_info(),
            **threads.threading_info(),
        }

    def _blas_info(self) -> str:
        """Which BLAS the GEMMs use, for `deepcore info` and benchmark records."""
        try:
            mkl = self._mkl()
        except (ValueError, RuntimeError) as exc:
            return f"error: {exc}"
        if mkl is not None:
            cnr = "reproducible" if mkl.cbwr_branch >= 2 else "not reproducible (CBWR off)"
            return f"{mkl.version}, {mkl.threading}, {cnr}"
        why = "" if self.blas == "numpy" else f" ({_mkl.load()})"
        return f"numpy's BLAS{why}"


BACKEND_CLASS = NumbaBackend


def _exercise(be: NumbaBackend, dt: np.dtype) -> None:
    """Run every kernel once on tiny arrays of dtype `dt` (serial and parallel variants)."""
    rng = np.random.default_rng(0)
    for m in (3, 260):  # 260 x 260: above every parallel threshold
        a = rng.standard_normal((m, m)).astype(dt)
        old = be.gemm_impl
        try:
            be.gemm_impl = "jit"
            be.gemm(a, a, trans_b=True)
            be.gemm(a, a[:10], trans_b=True)  # narrow output: row dot products
        finally:
            be.gemm_impl = old
        b = a[0].copy()
        for kind in ACTIVATIONS:
            y = be.linear(a, a, b, kind, pre_out=np.empty_like(a))
            be.activation_backward_bias_grad(kind, a, x=a, y=y)
            be.activation_backward(kind, a, x=a, y=y)
        be.bias_grad(a)
        be.softmax(a)
        labels = np.zeros(m, np.int64)
        be.softmax_cross_entropy(a, labels)
        be.labels_in_range(labels, 2)
        be.bce_with_logits(a, a)
        be.mse(a, a)
        p = a.copy()
        be.sgd_update(p, a, np.zeros_like(a), lr=0.1, momentum=0.9)
        z = np.zeros_like(a)
        be.adam_update(p, a, z, z.copy(), step=1, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                       amsgrad=True, max_exp_avg_sq=z.copy())  # fmt: skip
        be.rmsprop_update(p, a, np.zeros_like(a), lr=0.1, alpha=0.9, eps=1e-8, momentum=0.9,
                          momentum_buffer=np.zeros_like(a), centered=True,
                          grad_avg=np.zeros_like(a))  # fmt: skip
    _exercise_stages(be, dt, 2)


def _exercise_stages(be: NumbaBackend, dt: np.dtype, depth: int) -> None:
    """The fused stages and the whole step once, for an MLP of `depth` Linear layers."""
    rng = np.random.default_rng(0)
    t = dt.type
    sizes = [3] + [4] * (depth - 1) + [2]
    w = [rng.standard_normal((o, i)).astype(dt) for i, o in zip(sizes, sizes[1:], strict=False)]
    bs = [np.zeros(o, dt) for o in sizes[1:]]
    acts = ("relu",) * (depth - 1) + ("identity",)
    x = rng.standard_normal((5, 3)).astype(dt)
    y = np.zeros(5, np.int64)
    grads = ([np.empty_like(v) for v in w], [np.empty_like(v) for v in bs])
    state = [[np.zeros(v.size, dt) for v in (*w, *bs)] for _ in range(3)]
    be.fused_mlp_step(w, bs, *grads, acts, x, y, "sgd", lr=t(0.1), momentum=0.9,
                      state=state[:1])  # fmt: skip
    be.fused_mlp_step(w, bs, *grads, acts, x, y, "adam", lr=0.1, state=state[:2])
    masks = [(rng.random((5, 4)) > 0.5).astype(dt)] * (depth - 1) + [None]
    for mk in (None, masks):
        out, tape = be.mlp_forward(w, bs, acts, x, masks=mk)
        be.mlp_backward(tape, out, *grads)
    be.fused_mlp_step(w, bs, *grads, acts, x, y, "sgd", lr=0.1, masks=masks)
    hp, flags = hyper.rows([hyper.pack("sgd", dict(lr=0.1, momentum=0.9, dampening=0.0,
                                                   nesterov=False))] * (2 * depth), dt)  # fmt: skip
    be.multi_update("sgd", [*w, *bs], [*grads[0], *grads[1]], state[:1], hp, flags)
