"""The Numba backend's bf16 GEMMs (a mixin of NumbaBackend): `gemm_bf16` and `linear_bf16` on the
AVX512_BF16 kernel (deepcore.kernels.numba.bf16), operands packed to bf16 once per call.

On a CPU without AVX512_BF16 the same calls are emulated: operands rounded to bf16 (as the NumPy
reference does) and multiplied by the float32 GEMM. Correct, but no faster than float32; a
warning says so once per process.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import numpy as np

from ... import threads
from ..base import ACTIVATIONS, Backend, check_activation
from .gemm import PARALLEL_GEMM_WORK
from .memory import aligned_empty

#: m*n*k from which the bf16 kernel runs on all threads (128^3): the float32 kernel's threshold
#: scaled by the bf16 kernel's 2-4x flops a cycle (an estimate, not measured on a quiet machine;
#: on the loaded one a parallel region cost up to 20 ms).
PARALLEL_BF16_WORK = 4 * PARALLEL_GEMM_WORK
#: Output bytes from which a GEMM written once (one K block, beta 0, no epilogue) stores C by
#: non-temporal stores: a weight gradient of 16 MiB and more is next read from memory by the
#: optimizer anyway, and streaming it spares the reads for ownership and the cache the GEMM's
#: operands live in (wide's weight-gradient GEMMs: 5-20% faster, BENCHMARKS.md).
STREAM_BYTES = 16 << 20
_warned = False


def _emulation_warning() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "deepcore: this CPU has no AVX512_BF16 (vdpbf16ps): bf16 GEMMs are emulated "
            "(operands rounded to bf16, float32 GEMM), correct but no faster than float32",
            RuntimeWarning,
            stacklevel=3,
        )


class NumbaBf16Mixin(Backend):
    """gemm_bf16 / linear_bf16 for NumbaBackend."""

    def _bf16_kernels(self) -> Any:
        """The bf16 kernel module, or None when the CPU lacks AVX512_BF16 (emulated path)."""
        k = self.__dict__.get("_bf16_k", False)
        if k is False:
            mod = importlib.import_module("deepcore.kernels.numba.bf16")
            k = self.__dict__["_bf16_k"] = mod if mod.has_avx512_bf16() else None
        return k

    def _bf16_buffer(self, tag: str, shape: tuple[int, ...]) -> np.ndarray:
        """A packed-operand buffer of `shape` (uint32 words): one per tag, grown to the largest
        GEMM seen, so a model's many GEMM shapes share one buffer (wide: 8 MiB)."""
        bufs = self.__dict__.setdefault("_bf16_bufs", {})
        size = int(np.prod(shape))
        buf = bufs.get(tag)
        if buf is None or buf.size < size:
            buf = bufs[tag] = aligned_empty((size,), np.uint32)  # (streamed into: `_bf16_wt`)
        return buf[:size].reshape(shape)

    def bf16_info(self) -> str:
        """One line for `deepcore info`: how bf16 GEMMs run here."""
        if self._bf16_kernels() is None:
            return "emulated (no AVX512_BF16: operands rounded, float32 GEMM)"
        return "AVX512_BF16 vdpbf16ps kernel"

    def gemm_bf16(
        self,
        a: Any,
        b: Any,
        trans_a: bool = False,
        trans_b: bool = False,
        alpha: float = 1.0,
        beta: float = 0.0,
        out: Any = None,
    ) -> Any:
        """Backend.gemm_bf16 on the vdpbf16ps kernel (float32 accumulation, one fixed summation
        order per element, independent of the thread count)."""
        return self._gemm_bf16(a, b, trans_a, trans_b, alpha, beta, out)[0]

    def _bf16_matmul(self, a: Any, ta: bool, b: Any, tb: bool, out: Any, alpha: float = 1.0,
                     beta: float = 0.0, nthreads: int | None = None,
                     bp: Any = None) -> Any:  # fmt: skip
        """`_matmul`'s contract (checked operands) on bf16 operands: the layered stages' GEMM.
        bp: op(b) already packed (`_bf16_wt`), read in place of b."""
        return self._gemm_bf16(a, b, ta, tb, alpha, beta, out, nt=nthreads, bp=bp)[0]

    def _bf16_matmul_fused(self, a: Any, ta: bool, b: Any, tb: bool, out: Any, nthreads: int,
                           fe: Any = None, wt: Any = None) -> bool:  # fmt: skip
        """`_matmul_fused`'s contract on bf16 operands, bias + activation `fe` only: True when
        `fe` ran inside the kernel (False: emulated, the caller applies it). wt: a buffer from
        `_bf16_wt` for this GEMM, filled with b's own packed layout as b.T is packed."""
        return self._gemm_bf16(a, b, ta, tb, 1.0, 0.0, out, fe, nthreads, wt=wt)[1]

    def _bf16_wt(self, tag: str, m: int, w: Any, nthreads: int) -> np.ndarray | None:
        """A buffer for the forward GEMM x @ w.T (m rows) to write w's packed layout into, for
        the input gradient d @ w to read instead of packing w again; None where that does not
        pay (w under STREAM_BYTES: it is still in cache for the backward's own pack; mnist's
        step was 10% slower) or the kernel cannot write it (no AVX512_BF16, w's rows not a
        multiple of 16 or its columns of 64, or the grid splits the batch, so that two
        threads would pack the same block)."""
        kern = self._bf16_kernels()
        if kern is None or not isinstance(w, np.ndarray) or w.dtype != np.float32:
            return None
        if w.nbytes < STREAM_BYTES:
            return None
        n, k = w.shape
        if n % kern.LANES or k % kern.NR or not w.flags.c_contiguous or m == 0:
            return None
        if nthreads > 1 and m * n * k >= PARALLEL_BF16_WORK and kern.grid(m, n, k, nthreads)[0] > 1:
            return None
        return self._bf16_buffer(tag, kern.packed_b_shape(n, k))  # op(B) = w: k = its rows

    def _gemm_bf16(self, a: Any, b: Any, ta: bool, tb: bool, alpha: float, beta: float,
                   out: Any, fe: Any = None, nt: int | None = None, bp: Any = None,
                   wt: Any = None) -> tuple[Any, bool]:  # fmt: skip
        """(out, whether the kernel ran): gemm_bf16 with an optional bias + activation epilogue
        `fe` (kernels' format); the caller applies `fe` itself when the kernel did not run
        (k == 0, emulation). bp, wt: see `_bf16_matmul`, `_bf16_matmul_fused` (callers that
        pass them have checked the kernel runs)."""
        if a.dtype != np.float32 or b.dtype != np.float32:
            return super().gemm_bf16(a, b, ta, tb, alpha, beta, out), False  # the one-line error
        m, n, out = self._gemm_args(a, b, ta, tb, beta, out)
        k = a.shape[0] if ta else a.shape[1]
        kern = self._bf16_kernels()
        ok = isinstance(out, np.ndarray) and out.flags.c_contiguous and k > 0 and m * n > 0
        if not ok:
            return super().gemm_bf16(a, b, ta, tb, alpha, beta, out), False
        if kern is None:
            _emulation_warning()
            ra, rb = self.round_bf16(a), self.round_bf16(b)
            return self._matmul(ra, bool(ta), rb, bool(tb), out, alpha, beta), False
        a = np.ascontiguousarray(a)
        b = np.ascontiguousarray(b)
        ap = self._bf16_buffer("a", kern.packed_a_shape(m, k))
        nt = threads.get_num_threads() if nt is None else nt
        big = nt > 1 and ap.size >= kern.PARALLEL_PACK_WORDS
        (kern.pack_a if big else kern.pack_a_serial)(a, bool(ta), ap)
        if np.may_share_memory(out, b):  # B is packed block by block while out is written
            b = b.copy()
        none = self._dummy(np.uint32, 1)
        if bp is not None and bp.shape != kern.packed_b_shape(k, n):
            raise ValueError(f"packed B has shape {bp.shape}, expected {kern.packed_b_shape(k, n)}")
        if wt is not None and (wt.ctypes.data % 64 or wt.shape != kern.packed_b_shape(n, k)):
            raise ValueError("wt must be a 64-byte aligned buffer from _bf16_wt for this weight")
        bp = none if bp is None else bp.reshape(-1)
        wt = none if wt is None else wt.reshape(-1)
        ep, no_fe = self._no_epilogues(np.dtype(np.float32))
        fe = no_fe if fe is None else fe
        stream = out.nbytes >= STREAM_BYTES  # the kernel checks when it may (aligned, ...)
        t = np.float32
        tb = bool(tb)
        if nt > 1 and m * n * k >= PARALLEL_BF16_WORK:
            tm, tn = kern.grid(m, n, k, nt)
            ws = self.scratch("bf16_ws", (tm * tn, kern.workspace_words()), np.uint32)
            kern.gemm_parallel(ap, b, tb, bp, wt, out, t(alpha), t(beta), ws, tm, tn, ep, fe,
                               stream)  # fmt: skip
        else:
            ws = self.scratch("bf16_ws", (1, kern.workspace_words()), np.uint32)
            kern.gemm_block(ap, b, tb, bp, wt, out, t(alpha), t(beta), 0, m, 0, n, ws[0], ep, fe,
                            stream)  # fmt: skip
        return out, True

    def linear_bf16(
        self,
        x: Any,
        w: Any,
        b: Any = None,
        activation: str = "identity",
        alpha: float = 0.01,
        out: Any = None,
        pre_out: Any = None,
    ) -> Any:
        """act(x @ w.T + b) with a bf16 GEMM; bias and activation (float32) run inside the
        kernel on each row strip of the output while it is in cache."""
        code = ACTIVATIONS.index(check_activation(activation))
        fusable = (
            b is not None
            and self._bf16_kernels() is not None
            and isinstance(x, np.ndarray)
            and x.dtype == np.float32
            and w.dtype == np.float32
            and b.dtype == np.float32
            and b.flags.c_contiguous
            and b.shape == (w.shape[0],)
            and x.shape[0] > 0
            and x.shape[-1] > 0
        )
        if not fusable:
            return super().linear_bf16(x, w, b, activation, alpha, out, pre_out)
        m, n = x.shape[0], w.shape[0]
        z = pre_out if pre_out is not None else out
        if z is None:
            z = np.empty((m, n), np.float32)
        dst = out if out is not None else z
        if not (z.flags.c_contiguous and dst.flags.c_contiguous):
            return super().linear_bf16(x, w, b, activation, alpha, out, pre_out)
        fe = (np.int64(code), np.float32(alpha), b, dst.reshape(-1))
        self._gemm_bf16(x, w, False, True, 1.0, 0.0, z, fe)  # (fusable: the kernel runs)
        return dst
