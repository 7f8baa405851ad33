"""Mixed precision policy: which GEMMs run on 16-bit (bfloat16 or float16) operands.

As PyTorch's `torch.autocast` and Keras's `mixed_bfloat16`: inside `with autocast("bfloat16"):`
every Linear's GEMMs (forward, input gradient, weight gradient) round their operands to bfloat16
(round to nearest even) and accumulate in float32. Master weights, weight gradients, optimizer
state, biases, activations, the loss, softmax and every reduction stay float32. The policy is a
ContextVar, so threads and asyncio tasks each see their own.

`autocast("float16")` does the same with IEEE half operands. Half has bf16's precision plus 3 bits
but a far narrower range (6e-8 to 65504): small gradients underflow to 0 and large ones overflow
to inf, so fp16 training scales the loss gradient (deepcore.amp.GradScaler, which `Trainer(...,
precision="fp16")` installs), as PyTorch's GradScaler does.

NumPy's bfloat16 dtype comes from `ml_dtypes` (the library JAX uses), imported on first use:
`pip install deepcore[bf16]`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

#: Precision names: "float32" (no autocast), "bf16" and "fp16" (bfloat16 / float16 GEMM operands).
PRECISIONS = ("float32", "bf16", "fp16")
_ALIASES = {
    None: "float32",
    "float32": "float32",
    "fp32": "float32",
    "32": "float32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "bf16-mixed": "bf16",
    "mixed_bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "16-mixed": "fp16",
    "mixed_float16": "fp16",
}

_current: contextvars.ContextVar[str] = contextvars.ContextVar(
    "deepcore_precision", default="float32"
)


def normalize_precision(precision: Any) -> str:
    """'float32', 'bf16' or 'fp16' from a user's spelling; anything else is one clear ValueError."""
    key = precision.lower() if isinstance(precision, str) else precision
    try:
        return _ALIASES[key]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown precision {precision!r}; expected one of float32, bf16 (bfloat16), "
            "fp16 (float16)"
        ) from None


def get_precision() -> str:
    """The precision in force here: 'bf16' inside `autocast("bfloat16")`, 'fp16' inside
    `autocast("float16")`, else 'float32'."""
    return _current.get()


def is_bf16() -> bool:
    """True when GEMMs should run on bfloat16 operands (inside `autocast("bfloat16")`)."""
    return _current.get() == "bf16"


@contextmanager
def autocast(dtype: Any = "bfloat16", enabled: bool = True) -> Iterator[None]:
    """Run Linear GEMMs inside the block on `dtype` operands with float32 accumulation.

    `dtype`: "bfloat16"/"bf16", "float16"/"fp16" (or "float32", which turns autocast off, as
    `enabled=False`). Wrap forward, loss and backward; the optimizer step may run inside or
    outside (it always updates the float32 master weights). Nested blocks restore the outer
    setting on exit. float16 needs loss scaling (deepcore.amp.GradScaler) to train well.
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


def round_fp16(x: Any) -> np.ndarray:
    """x (a host array) rounded to the nearest IEEE float16 (ties to even; beyond 65504 to inf;
    below 2^-24 to 0), returned as float32: the value an fp16 GEMM multiplies."""
    with np.errstate(over="ignore"):  # overflow to inf is the point: the loss scaler sees it
        return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)
