"""Exception types. Each names the layer, shape, dtype or backend at fault."""

from __future__ import annotations


class DeepcoreError(Exception):
    """Base class of every error deepcore raises on purpose."""


class BackendUnavailableError(DeepcoreError, RuntimeError):
    """A backend was asked for that cannot run here (not installed, no device, ...)."""


class BackendMismatchError(DeepcoreError, ValueError):
    """Arrays (or parameters) of two different backends met in one call."""


class ShapeError(DeepcoreError, ValueError):
    """An array has a shape the layer or kernel cannot accept."""


class DtypeError(DeepcoreError, TypeError):
    """An array has a dtype the layer or kernel cannot accept (deepcore never upcasts silently)."""


class NoGradientError(DeepcoreError, RuntimeError):
    """Backward was called through an operation that has no gradient (e.g. a step function)."""


class NonFiniteError(DeepcoreError, FloatingPointError):
    """NaN or Inf found in input data or in the loss."""


class CheckpointError(DeepcoreError, ValueError):
    """A checkpoint file is truncated, corrupt, foreign, or does not fit the model."""


class UsageError(DeepcoreError):
    """A command-line request that cannot be honoured (bad path, conflicting flags), reported by
    the `deepcore` command as one line."""


class CudaOutOfMemoryError(DeepcoreError, MemoryError):
    """The GPU ran out of memory; the message says how much was asked for, where, and suggests
    a smaller batch size."""
