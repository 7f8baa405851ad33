"""The OpenMP wait policy, set before the Numba backend's kernels first run in parallel.

Numba's `omp` threads run the kernels. After each parallel region libgomp's threads spin for a
while before they sleep (its default), which is what back-to-back parallel GEMMs want, but on 2
cores a spinning thread takes a core from OpenBLAS's own threads. Measured here:
- GEMMs on OpenBLAS: the mnist layer-by-layer step took 44 ms with spinning threads, 6.4 ms with
  OMP_WAIT_POLICY=passive;
- GEMMs on the JIT kernel: the mnist GEMMs took 2.35 ms passive, 1.15 ms with the default
  (every GEMM is a parallel region that must wake the threads); on MKL, whose GNU threading
  layer is the same libgomp pool: 3.0 ms passive, 1.9 ms default.
So the policy is passive exactly when the large GEMMs will run on OpenBLAS. libgomp reads the
variable once, when it loads, for the whole process: a PyTorch model trained later in this
process waits passively too (README). The user's own OMP_WAIT_POLICY always stands.
"""

from __future__ import annotations

import importlib.metadata
import os

from . import gemm_choice

#: Variables set here, so tools can tell them from the user's (deepcore.bench.remote starts its
#: anchors without them).
INJECTED_ENV: dict[str, str] = {}


def _mkl_installed() -> bool:
    try:
        importlib.metadata.distribution("mkl")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def openblas_runs_large_gemms(gemm_impl: str, blas: str) -> bool:
    """Whether the backend's large GEMMs are expected on OpenBLAS: `gemm_impl` forces it, else
    the machine's stored choice (see gemm_choice) or, before one is measured, the vector width
    (the JIT kernel was the faster where it gets 512-bit registers; BLAS elsewhere)."""
    if gemm_impl == "jit" or (blas != "numpy" and _mkl_installed()):
        return False
    from ...kernels.numba import gemm, simd

    if gemm_impl == "blas" or not simd.HAS_FMA:  # without FMA, auto runs GEMMs on BLAS
        return True
    from ...machine import cpu_model

    stored = gemm_choice.expects_jit(gemm_choice.cache_path(), cpu_model(), gemm.kernel_id())
    if stored is not None:
        return not stored
    return gemm.VECTOR_BYTES < 64


def set_wait_policy(gemm_impl: str, blas: str) -> None:
    """OMP_WAIT_POLICY=passive when large GEMMs will run on OpenBLAS and the user set none."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    if openblas_runs_large_gemms(gemm_impl, blas):
        os.environ["OMP_WAIT_POLICY"] = INJECTED_ENV["OMP_WAIT_POLICY"] = "passive"
