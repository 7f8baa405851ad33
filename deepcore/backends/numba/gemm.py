"""The Numba backend's GEMMs (a mixin of NumbaBackend, split from numba.py for size).

Each GEMM runs on the JIT kernel (deepcore.kernels.numba.gemm) or on BLAS (MKL when the optional
`mkl` package is installed and selected, else NumPy's), whichever `gemm_choice` measured faster
on this machine for the GEMM's size class. The kernel's variant (one thread, a thread grid, or
row dot products for narrow outputs) is planned once per shape and thread count.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ... import threads
from ...errors import BackendUnavailableError, DtypeError
from ..base import Backend
from . import gemm_choice
from . import mkl as _mkl

#: m*n*k up to which GEMMs stay on NumPy's BLAS when BLAS runs on MKL: OpenBLAS runs these on
#: one thread and MKL's fixed cost per call is higher (32x128x10: 2.2 vs 11.6 us; 64^3: 5.1 vs
#: 14.6 us on the Xeon dev VM).
MKL_MIN_WORK = 64**3
#: m*n*k from which the JIT kernel runs on all threads (measured, 2 cores: one thread 3.7 vs
#: 3.9 us at 64^3, 17.5 vs 10.5 us at 96^3).
PARALLEL_GEMM_WORK = 80**3
#: op(B) = B is read in place, not packed, when B has at most this many bytes (see gemm.DIRECT_B).
DIRECT_B_BYTES = 1 << 20
_SERIAL, _PARALLEL, _DOT, _DOT_PARALLEL = range(4)


def check_blas(choice: str) -> str:
    if choice not in ("auto", "mkl", "numpy"):
        raise ValueError(f"NumbaBackend.blas must be auto, mkl or numpy, not {choice!r}")
    return choice


def check_gemm_impl(choice: str) -> str:
    if choice not in ("auto", "jit", "blas"):
        raise ValueError(f"NumbaBackend.gemm_impl must be auto, jit or blas, not {choice!r}")
    return choice


class NumbaGemmMixin(Backend):
    """gemm and the backend-internal `_matmul` for NumbaBackend (needs its `_k` kernels)."""

    _k: Any
    fma: bool
    #: "auto" (the faster of the JIT kernel and BLAS, measured per size class), "jit" or "blas";
    #: the DEEPCORE_NUMBA_GEMM environment variable sets it.
    gemm_impl: str = os.environ.get("DEEPCORE_NUMBA_GEMM", "auto")
    #: The BLAS: "auto" (MKL when the optional `mkl` package loads, else NumPy's), "mkl" or
    #: "numpy"; the DEEPCORE_NUMBA_BLAS environment variable sets it.
    blas: str = os.environ.get("DEEPCORE_NUMBA_BLAS", "auto")

    # ------------------------------------------------------------------ which GEMM
    def _mkl(self) -> Any:
        """The MKL wrapper when `blas` selects it, else None (NumPy's matmul)."""
        choice = check_blas(self.blas)
        if choice == "numpy":
            return None
        mkl = _mkl.load()
        if isinstance(mkl, str):
            if choice == "mkl":
                raise BackendUnavailableError(f"NumbaBackend.blas is 'mkl' but {mkl}")
            return None
        return mkl

    def _blas_name(self) -> str:
        """The BLAS the GEMMs may run on: library, version and kernel architecture."""
        from ...machine import numpy_blas

        lib = numpy_blas()
        own = f"{lib['library']} {lib['version']} {lib['architecture']}" if lib else "numpy's BLAS"
        mkl = self._mkl()
        return f"{mkl.version} ({own} up to 64^3)" if mkl is not None else own

    def _gemm_key(self, dt: np.dtype, nthreads: int | None = None) -> tuple[str, Any, int]:
        n = threads.get_num_threads() if nthreads is None else nthreads
        return (dt.char, check_blas(self.blas), n)

    def gemm_choices(self, dtype: Any = "float32", measure: bool = True) -> dict[str, Any] | None:
        """{'small': Choice, 'large': Choice} for dtype at the current thread count and BLAS:
        from memory, else from the choice file, else measured now and saved (None if `measure`
        is False and nothing is known yet)."""
        dt = np.dtype(dtype)
        mem = self.__dict__.setdefault("_choices", {})
        key = self._gemm_key(dt)
        found = mem.get(key)
        if found is not None:
            return found
        from ... import __version__
        from ...machine import blas_env_key, cpu_model

        file_key = gemm_choice.machine_key(
            cpu_model(),
            self._k.gemm.kernel_id(),
            self._blas_name(),
            threads.get_num_threads(),
            dt.name,
            __version__,
            blas_env_key(),
        )
        path = gemm_choice.cache_path()
        found = gemm_choice.load(path, file_key)
        if found is None:
            if not measure:
                return None
            found = self._measure_gemm(dt)
            gemm_choice.save(path, file_key, found)
        mem[key] = found
        return found

    def _measure_gemm(self, dt: np.dtype) -> dict[str, Any]:
        rng = np.random.default_rng(0)
        out: dict[str, Any] = {}
        for cls, (m, n, k) in gemm_choice.PROBES.items():
            a = rng.standard_normal((m, k)).astype(dt)
            b = rng.standard_normal((k, n)).astype(dt)
            c1, c2 = np.empty((m, n), dt), np.empty((m, n), dt)
            out[cls] = gemm_choice.measure(
                lambda a=a, b=b, c=c1: self._jit_gemm(a, False, b, False, c, 1.0, 0.0),
                lambda a=a, b=b, c=c2: self._blas_gemm(a, False, b, False, c, 1.0, 0.0),
                m * n * k,
            )
        return out

    def _use_jit(self, work: int, dt: np.dtype, nthreads: int | None = None) -> bool:
        impl = self.gemm_impl
        if impl == "jit":
            return True
        if impl == "blas":
            return False
        check_gemm_impl(impl)
        if not self.fma:  # no vector FMA: the JIT kernel is ~65x slower than BLAS
            return False
        mem = self.__dict__.get("_choices")
        choices = mem.get(self._gemm_key(dt, nthreads)) if mem else None
        if choices is None:
            choices = self.gemm_choices(dt)
        return bool(choices[gemm_choice.size_class(work)].jit)

    # ------------------------------------------------------------------ the two GEMMs
    def _jit_plan(self, m: int, n: int, k: int, ta: bool, tb: bool, dt: np.dtype,
                  nthreads: int) -> tuple:  # fmt: skip
        """(variant, threads along M, threads along N, mode) for this shape (cached)."""
        key = (m, n, k, ta, tb, dt.char, nthreads)
        plans = self.__dict__.setdefault("_jit_plans", {})
        plan = plans.get(key)
        if plan is None:
            if len(plans) >= 4096:  # many distinct shapes (e.g. varying batch sizes): start over
                plans.clear()
            g = self._k.gemm
            nr = g.nr_of(dt)
            par = nthreads > 1 and m * n * k >= PARALLEL_GEMM_WORK
            if tb and not ta and 2 * n < nr:  # narrow output (e.g. 10 classes): row dots
                plan = (_DOT_PARALLEL if par else _DOT, nthreads, 1, 0)
            else:
                tm, tn = g.choose_grid(m, n, k, nthreads, nr) if par else (1, 1)
                direct = not tb and k * n * dt.itemsize <= DIRECT_B_BYTES
                plan = (_PARALLEL if par else _SERIAL, tm, tn, g.DIRECT_B if direct else 0)
            plans[key] = plan
        return plan

    def _no_epilogues(self, dt: np.dtype) -> tuple[tuple, tuple]:
        """The kernel's (ep, fe) arguments for a GEMM with neither epilogue (made once)."""
        eps = self.__dict__.setdefault("_no_ep", {})
        both = eps.get(dt.char)
        if both is None:
            g = self._k.gemm
            both = eps[dt.char] = (g.no_epilogue(dt), g.no_activation(dt))
        return both

    def _jit_gemm(self, a: Any, ta: bool, b: Any, tb: bool, out: Any, alpha: float,
                  beta: float, nthreads: int | None = None, ep: Any = None,
                  fe: Any = None) -> Any:  # fmt: skip
        """out = alpha * op(a) @ op(b) + beta * out on the JIT kernel (out C-contiguous, not
        overlapping a or b; k >= 1). `ep` (an optimizer update) and `fe` (bias + activation)
        are fused into the kernel's last pass over out (kernels/numba/gemm.py gemm_block); only
        its register-blocked variants take them (see `_matmul_fused`)."""
        m, n = out.shape
        k = a.shape[0] if ta else a.shape[1]
        dt = out.dtype
        nt = threads.get_num_threads() if nthreads is None else nthreads
        variant, tm, tn, mode = self._jit_plan(m, n, k, ta, tb, dt, nt)
        a = np.ascontiguousarray(a)
        b = np.ascontiguousarray(b)
        t = dt.type
        g = self._k.gemm
        if variant == _DOT:
            g.dot_rows(a, b, out, t(alpha), t(beta), 0, m)
        elif variant == _DOT_PARALLEL:
            g.dot_rows_parallel(a, b, out, t(alpha), t(beta), tm)
        else:
            ws = self.scratch("gemm_ws", (tm * tn, g.workspace_size(dt)), dt)
            if ep is None or fe is None:
                no_ep, no_fe = self._no_epilogues(dt)
                ep = no_ep if ep is None else ep
                fe = no_fe if fe is None else fe
            if variant == _SERIAL:
                g.gemm_block(a, ta, b, tb, out, t(alpha), t(beta), 0, m, 0, n, ws[0], mode, ep, fe)
            else:
                g.gemm_parallel(a, ta, b, tb, out, t(alpha), t(beta), ws, tm, tn, mode, ep, fe)
        return out

    def _blas_gemm(self, a: Any, ta: bool, b: Any, tb: bool, out: Any, alpha: float,
                   beta: float) -> Any:  # fmt: skip
        """The same on BLAS: MKL above MKL_MIN_WORK when selected, else NumPy's matmul."""
        a2, b2 = (a.T if ta else a), (b.T if tb else b)
        m, n = out.shape
        mkl = self._mkl()
        if (
            mkl is not None
            and m * n * a2.shape[1] > MKL_MIN_WORK
            and mkl.gemm(a2, b2, out, alpha, beta)
        ):
            return out
        if alpha == 1.0 and beta == 0.0:
            return np.matmul(a2, b2, out=out)
        return Backend.gemm(self, a, b, ta, tb, alpha, beta, out)

    def _matmul(self, a: Any, ta: bool, b: Any, tb: bool, out: Any, alpha: float = 1.0,
                beta: float = 0.0, nthreads: int | None = None) -> Any:  # fmt: skip
        """out = alpha * op(a) @ op(b) + beta * out on the faster GEMM for its size. For checked
        operands: 2-D, one float dtype, matching shapes, k >= 1, out C-contiguous and apart.
        `nthreads`: the current thread count, when the caller has it (saves a query)."""
        m, n = out.shape
        work = m * n * (a.shape[0] if ta else a.shape[1])
        nt = threads.get_num_threads() if nthreads is None else nthreads
        if self._use_jit(work, out.dtype, nt):
            return self._jit_gemm(a, ta, b, tb, out, alpha, beta, nt)
        return self._blas_gemm(a, ta, b, tb, out, alpha, beta)

    def _matmul_fused(self, a: Any, ta: bool, b: Any, tb: bool, out: Any, nthreads: int,
                      ep: Any = None, fe: Any = None) -> bool:  # fmt: skip
        """out = op(a) @ op(b) as `_matmul`. When that runs on the JIT kernel's register-blocked
        variant, the epilogues `ep` (update) and `fe` (bias + activation) run inside it and the
        result is True; else False, and the caller still has to apply them."""
        m, n = out.shape
        k = a.shape[0] if ta else a.shape[1]
        dt = out.dtype
        fusable = self._use_jit(m * n * k, dt, nthreads) and self._jit_plan(
            m, n, k, ta, tb, dt, nthreads
        )[0] in (_SERIAL, _PARALLEL)
        if fusable:
            self._jit_gemm(a, ta, b, tb, out, 1.0, 0.0, nthreads, ep, fe)
        else:
            self._matmul(a, ta, b, tb, out, nthreads=nthreads)
        return fusable

    def gemm(
        self,
        a: Any,
        b: Any,
        trans_a: bool = False,
        trans_b: bool = False,
        alpha: float = 1.0,
        beta: float = 0.0,
        out: Any = None,
    ) -> Any:
        """out = alpha * op(a) @ op(b) + beta * out on the JIT kernel or BLAS, whichever this
        machine runs faster at this size (`gemm_impl` forces one)."""
        m, n, out = self._gemm_args(a, b, trans_a, trans_b, beta, out)
        k = a.shape[0] if trans_a else a.shape[1]
        ok = (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and isinstance(out, np.ndarray)
            and a.dtype == b.dtype == out.dtype
            and out.flags.c_contiguous
            and k > 0
            and not np.may_share_memory(out, a)
            and not np.may_share_memory(out, b)
        )
        if not ok or m == 0 or n == 0:
            return super().gemm(a, b, trans_a, trans_b, alpha, beta, out)
        if a.dtype.type not in (np.float32, np.float64):
            raise DtypeError(f"gemm: deepcore computes in float32 or float64, not {a.dtype}")
        return self._matmul(a, bool(trans_a), b, bool(trans_b), out, alpha, beta)

    def gemm_info(self) -> str:
        """One line for `deepcore info`: the GEMM setting and, where measured, the choices."""
        if self.gemm_impl != "auto":
            return f"{self.gemm_impl} (forced)"
        if not self.fma:
            return "auto: blas (the JIT kernel's target has no vector FMA)"
        parts = []
        for name in ("float32", "float64"):
            try:
                ch = self.gemm_choices(name, measure=False)
            except (ValueError, RuntimeError) as exc:
                return f"auto (error: {exc})"
            if ch is not None:
                parts.append(
                    f"{name}: small {ch['small'].describe()}, large {ch['large'].describe()}"
                )
        where = gemm_choice.cache_path() or "not saved: no writable cache directory"
        if not parts:
            return f"auto (jit or blas, measured on first use; kept in {where})"
        return f"auto; {'; '.join(parts)}; kept in {where}"
