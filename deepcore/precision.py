"""Mixed precision policy: which GEMMs run on bfloat16 operands.

As PyTorch's `torch.autocast` and Keras's `mixed_bfloat16`: inside `with autocast("bfloat16"):`
every Linear's GEMMs (forward, input gradient, weight gradient) round their operands to bfloat16
(round to nearest even) and accumulate in float32. Master weights, weight gradients, optimizer
state, biases, activations, the loss, softmax and every reduction stay float32. The policy is a
ContextVar, so threads and asyncio tasks each see their own.

NumPy's bfloat16 dtype comes from `ml_dtypes` (the library JAX uses), imported on first use:
`pip install deepcore[bf16]`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

#: Precision names: "float32" (no autocast) and "bf16" (bfloat16 GEMM operands).
PRECISIONS = ("float32", "bf16")
_ALIASES = {
    None: "float32",
    "float32": "float32",
    "fp32": "float32",
    "32": "float32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "bf16-mixed": "bf16",
    "mixed_bfloat16": "bf16",
}

_current: contextvars.ContextVar[str] = contextvars.ContextVar(
    "deepcore_precision", default="float32"
)


def normalize_precision(precision: Any) -> str:
    """'float32' or 'bf16' from a user's spelling; anything else is one clear ValueError."""
    key = precision.lower() if isinstance(precision, str) else precision
    if key in ("fp16", "float16", "half", "16-mixed"):
        raise ValueError(
            "precision 'fp16' is not available: deepcore trains in float32 or bf16 "
            "(fp16 with loss scaling is planned for the cupy backend)"
        )
    try:
        return _ALIASES[key]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown precision {precision!r}; expected one of float32, bf16 (or bfloat16)"
        ) from None


def get_precision() -> str:
    """The precision in force here: 'bf16' inside `autocast("bfloat16")`, else 'float32'."""
    return _current.get()


def is_bf16() -> bool:
    """True when GEMMs should run on bfloat16 operands (inside `autocast("bfloat16")`)."""
    return _current.get() == "bf16"


@contextmanager
def autocast(dtype: Any = "bfloat16", enabled: bool = True) -> Iterator[None]:
    """Run Linear GEMMs inside the block on `dtype` operands with float32 accumulation.

    `dtype`: "bfloat16"/"bf16" (or "float32", which turns autocast off, as `enabled=False`).
    Wrap forward, loss and backward; the optimizer step may run inside or outside (it always
    updates the float32 master weights). Nested blocks restore the outer setting on exit.
    """
    if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and hasattr(dtype, "dtype")):
        dtype = np.dtype(dtype).name
    precision = normalize_precision(dtype) if enabled else "float32"
    token = _current.set(precision)
    try:
        yield
    finally:
        _current.reset(token)


def bfloat16() -> Any:
    """NumPy's bfloat16 dtype (`ml_dtypes.bfloat16`); a one-line ImportError if it is missing."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError(
            "bf16 needs the ml_dtypes package: pip install 'deepcore[bf16]'"
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


def round_bf16(x: Any) -> np.ndarray:
    """x (a host array) rounded to the nearest bfloat16 (ties to even), returned as float32:
    the value a bf16 GEMM multiplies."""
    return np.asarray(x, dtype=np.float32).astype(bfloat16()).astype(np.float32)
