"""The Numba backend: JIT loops from deepcore.kernels.numba, its own SIMD GEMM or BLAS.

numba is imported only when the backend is instantiated (never by `import deepcore`).
"""

from .backend import BACKEND_CLASS, NumbaBackend, probe

__all__ = ["BACKEND_CLASS", "NumbaBackend", "probe"]
