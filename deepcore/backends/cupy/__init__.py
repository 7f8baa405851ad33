"""The CuPy backend: cuBLAS GEMMs and the CUDA C kernels of deepcore.kernels.cuda on GPU N.

cupy is imported only when the backend is instantiated or probed (never by `import deepcore`).
"""

from ...errors import CudaOutOfMemoryError
from .backend import BACKEND_CLASS, CupyBackend
from .probe import INSTALL_HINT, probe

__all__ = ["BACKEND_CLASS", "CudaOutOfMemoryError", "CupyBackend", "INSTALL_HINT", "probe"]
