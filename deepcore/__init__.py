"""deepcore: multilayer perceptrons with swappable compute backends (NumPy, Numba, CuPy).

`import deepcore` needs only NumPy: numba, cupy, tqdm, safetensors and scikit-learn are imported
when first used.
"""

from __future__ import annotations

from typing import Any

from . import data, nn, optim
from .backends import (
    Backend,
    available_backends,
    get_backend,
    get_default_backend,
    set_default_backend,
    use_backend,
)
from .backends.base import to_numpy
from .errors import (
    BackendMismatchError,
    BackendUnavailableError,
    CheckpointError,
    CudaOutOfMemoryError,
    DeepcoreError,
    DtypeError,
    NoGradientError,
    NonFiniteError,
    ShapeError,
)
from .random import get_rng, seed

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Backend",
    "available_backends",
    "get_backend",
    "get_default_backend",
    "set_default_backend",
    "use_backend",
    "seed",
    "get_rng",
    "to_numpy",
    "set_num_threads",
    "get_num_threads",
    "autocast",
    "GradScaler",
    "fit",
    "evaluate",
    "predict",
    "History",
    "save",
    "load",
    "nn",
    "optim",
    "data",
    "DeepcoreError",
    "BackendUnavailableError",
    "BackendMismatchError",
    "ShapeError",
    "DtypeError",
    "NoGradientError",
    "NonFiniteError",
    "CheckpointError",
    "CudaOutOfMemoryError",
]


_LAZY = {
    "fit": ("train", "fit"),
    "evaluate": ("evaluation", "evaluate"),
    "predict": ("evaluation", "predict"),
    "History": ("history", "History"),
    "save": ("io", "save"),
    "load": ("io", "load"),
    "autocast": ("precision", "autocast"),
    "GradScaler": ("amp", "GradScaler"),
    "set_num_threads": ("threads", "set_num_threads"),
    "get_num_threads": ("threads", "get_num_threads"),
}

_SUBMODULES = ("train", "io", "threads", "bench", "sklearn", "selftest", "cli", "amp")


def __getattr__(name: str) -> Any:
    # Heavier parts load on first use, keeping `import deepcore` light.
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'deepcore' has no attribute {name!r}")
