"""The backend contract.

`Backend` implements every kernel once through its array module `xp` (NumPy or CuPy); a device
backend overrides only its hot paths and may fall back to `super()`. Layers and optimizers call
these methods and nothing else. Every method that produces an array accepts `out=`.

Conventions (shared by every backend and by the CUDA and Numba kernels):
- 2-D activations are (batch, features); a Linear weight is (out_features, in_features).
- Float arrays are float32 or float64; all float operands of a call share one dtype.
- Losses are means over the batch (cross-entropy) or over all elements (BCE, MSE) and return
  `(loss, grad)`: a 0-d array on the device and d(loss)/d(input).
- Optimizer updates change `param` and their state arrays in place; scalars arrive as Python
  floats computed on the host (bias corrections included), exactly as PyTorch's eager path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import BackendMismatchError, DtypeError, ShapeError
from ._half import HalfKernels
from ._losses import LossKernels
from ._stages import NEEDS_PREACTIVATION, StageKernels  # noqa: F401 - part of the contract
from ._updates import UpdateKernels

FLOAT_DTYPES = ("float32", "float64")
ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh")

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def normalize_dtype(dtype: Any) -> str:
    """'float32' or 'float64' from anything numpy understands; anything else is a DtypeError."""
    name = np.dtype(dtype).name if dtype is not None else "float32"
    if name not in FLOAT_DTYPES:
        raise DtypeError(f"deepcore computes in float32 or float64, not {name}")
    return name


def check_activation(kind: str) -> str:
    if kind not in ACTIVATIONS:
        raise ValueError(f"unknown activation {kind!r}; expected one of {', '.join(ACTIVATIONS)}")
    return kind


class Backend(LossKernels, UpdateKernels, StageKernels, HalfKernels):
    """Base backend: the whole contract, written once against the array module `xp`.

    The loss, optimizer-update, fused-stage and fp16 defaults live in _losses.py, _updates.py,
    _stages.py and _half.py. Optional capabilities are declared as class attributes (below),
    not probed.
    """

    #: Registry name: "numpy", "numba", "cupy:0".
    name: str = "base"
    #: Device the arrays live on: "cpu" or "cuda:N".
    device: str = "cpu"
    #: The array module (numpy or cupy).
    xp: Any = np
    #: Capability: mlp_forward / mlp_backward / multi_update run as fused calls (else the
    #: defaults here loop over layers and parameters with the same maths).
    fused_stages: bool = False
    #: Capability: `fused_mlp_step` (a whole training step of an MLP in one call).
    whole_step: bool = False
    #: Precisions (deepcore.precision) the step planner and Sequential run through the fused
    #: stages and the whole step; the others run module by module.
    fused_precisions: tuple[str, ...] = ("float32",)
    #: Capability: kernels compile on first use (`warmup` compiles them up front).
    compiles: bool = False

    def __init__(self) -> None:
        self._scratch: dict[tuple[Any, ...], Any] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.device}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Backends are per-process singletons: pickle by name.
        from . import get_backend

        return (get_backend, (self.name,))

    # ------------------------------------------------------------------ arrays
    def empty(self, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        return self.xp.zeros(shape, dtype=dtype)

    def owns(self, x: Any) -> bool:
        """True when `x` is an array of this backend's kind."""
        return isinstance(x, np.ndarray)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """An array of this backend from a host array (cast to `dtype` if given) or one of its own.

        Host data is converted at this boundary (to the model's dtype, as scikit-learn does); a
        device array of another dtype or of another backend is an error, never a silent copy.
        Kernels themselves never mix dtypes.
        """
        if self.owns(x):
            if dtype is not None and x.dtype != np.dtype(dtype):
                if self.device == "cpu":  # host data: the explicit boundary conversion
                    return np.ascontiguousarray(x, dtype=dtype)
                raise DtypeError(
                    f"{self.name} array has dtype {x.dtype}, expected {np.dtype(dtype).name}; "
                    f"convert it explicitly (x.astype({np.dtype(dtype).name!r}))"
                )
            return x
        other = array_backend_name(x)
        if other is not None and other != "numpy":
            raise BackendMismatchError(
                f"got a {other} array where a {self.name} array was expected; "
                f"move it with deepcore.to_numpy(x) or move the model with .to({other!r})"
            )
        return self._from_host(np.asarray(x, dtype=dtype))

    def _from_host(self, x: np.ndarray) -> Any:
        return np.ascontiguousarray(x)

    def to_host(self, x: Any) -> np.ndarray:
        """A host NumPy copy of `x` (never a view of a buffer the backend may reuse)."""
        return np.array(x, copy=True)

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""

    def check(self, *arrays: Any, where: str = "") -> None:
        """Raise BackendMismatchError unless every array belongs to this backend."""
        for a in arrays:
            if a is not None and not self.owns(a):
                other = array_backend_name(a) or type(a).__name__
                at = f" in {where}" if where else ""
                raise BackendMismatchError(
                    f"{other} array passed to the {self.name} backend{at}; "
                    f"move the data or the model so both live on one backend"
                )

    def scratch(self, tag: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """A reusable work buffer keyed by (tag, shape, dtype): no allocation in steady state."""
        key = (tag, shape, dtype)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = self.empty(tuple(shape), np.dtype(dtype))
        return buf

    def copy_(self, dst: Any, src: Any) -> Any:
        dst[...] = src
        return dst

    def fill_(self, x: Any, value: float) -> Any:
        x.fill(value)
        return x

    def mul(self, a: Any, b: Any, out: Any = None) -> Any:
        return self.xp.multiply(a, b, out=out)

    def scale_(self, x: Any, factor: Any) -> Any:
        """x *= factor in place; factor may be a float or a 0-d array on this backend."""
        self.xp.multiply(x, factor, out=x)
        return x

    def sum_squares(self, x: Any) -> Any:
        """0-d array: the sum of squares of x, accumulated in x's dtype."""
        flat = x.reshape(-1)
        return self.xp.dot(flat, flat)

    def heaviside(self, x: Any, threshold: float = 0.0, out: Any = None) -> Any:
        """Heaviside step: 1 where x >= threshold, else 0 (the perceptron's activation)."""
        if out is None:
            out = self.empty(x.shape, x.dtype)
        out[...] = x >= x.dtype.type(threshold)
        return out

    def labels_in_range(self, labels: np.ndarray, n_classes: int) -> bool:
        """Whether every host int64 label of the 1-D `labels` lies in [0, n_classes): one
        reduction (negative values read as unsigned are huge)."""
        return labels.size == 0 or bool(np.maximum.reduce(labels.view(np.uint64)) < n_classes)

    def count_correct(self, logits: Any, labels: Any) -> Any:
        """0-d integer array: how many rows' argmax equals the label (no host read)."""
        labels = self.asarray(labels)
        return (self.xp.argmax(logits, axis=1) == labels).sum()

    # ------------------------------------------------------------------ dense
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
        """out = alpha * op(a) @ op(b) + beta * out, op = transpose where asked."""
        m, n, out = self._gemm_args(a, b, trans_a, trans_b, beta, out)
        a2 = a.T if trans_a else a
        b2 = b.T if trans_b else b
        if beta == 0.0:
            self.xp.matmul(a2, b2, out=out)
            if alpha != 1.0:
                out *= alpha
            return out
        tmp = self.scratch("gemm", (m, n), a.dtype)
        self.xp.matmul(a2, b2, out=tmp)
        if alpha != 1.0:
            tmp *= alpha
        if beta != 1.0:
            out *= beta
        out += tmp
        return out

    def _gemm_args(
        self, a: Any, b: Any, trans_a: bool, trans_b: bool, beta: float, out: Any
    ) -> tuple[int, int, Any]:
        """Check a GEMM's operands (every backend's gemm calls this); returns m, n and `out`,
        allocated when not given."""
        if a.ndim != 2 or b.ndim != 2:
            raise ShapeError(f"gemm: operands must be 2-D, got {_opname(a, trans_a)} and "
                             f"{_opname(b, trans_b)}")  # fmt: skip
        m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
        k2, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
        if k != k2:
            raise ShapeError(
                f"gemm: cannot multiply {_opname(a, trans_a)} by {_opname(b, trans_b)}"
            )
        if a.dtype != b.dtype:
            raise DtypeError(f"gemm: operand dtypes differ ({a.dtype} and {b.dtype})")
        if out is None:
            if beta != 0.0:
                raise ValueError("gemm: beta != 0 needs out=")
            out = self.empty((m, n), a.dtype)
        elif out.dtype != a.dtype:
            raise DtypeError(f"gemm: out has dtype {out.dtype}, expected {a.dtype}")
        elif out.shape != (m, n):
            raise ShapeError(f"gemm: out has shape {out.shape}, expected {(m, n)}")
        return m, n, out

    def bias_add(self, x: Any, b: Any, out: Any = None) -> Any:
        return self.xp.add(x, b, out=out)

    def bias_grad(self, dy: Any, out: Any = None, accumulate: bool = False) -> Any:
        """Column sums of dy (the gradient of a bias); added into `out` when accumulate."""
        if accumulate:
            out += dy.sum(axis=0)
            return out
        return self.xp.sum(dy, axis=0, out=out)

    # ------------------------------------------------------------------ activations
    def activation(self, kind: str, x: Any, alpha: float = 0.01, out: Any = None) -> Any:
        """Elementwise activation `kind` of x."""
        xp = self.xp
        if out is None:
            out = self.empty(x.shape, x.dtype)
        if kind == "identity":
            return self.copy_(out, x) if out is not x else out
        if kind == "relu":
            return xp.maximum(x, 0, out=out)
        if kind == "leaky_relu":
            return xp.multiply(x, xp.where(x > 0, x.dtype.type(1), x.dtype.type(alpha)), out=out)
        if kind == "sigmoid":
            return self._sigmoid(x, out)
        if kind == "tanh":
            return xp.tanh(x, out=out)
        if kind == "gelu":
            cdf = 0.5 * (1.0 + self._erf(x * x.dtype.type(_INV_SQRT_2)))
            return xp.multiply(x, cdf, out=out)
        if kind == "gelu_tanh":
            c = x.dtype.type(_SQRT_2_OVER_PI)
            inner = xp.tanh(c * (x + x.dtype.type(0.044715) * x * x * x))
            return xp.multiply(x * x.dtype.type(0.5), 1.0 + inner, out=out)
        check_activation(kind)
        raise AssertionError(kind)

    def activation_backward(
        self,
        kind: str,
        dy: Any,
        x: Any = None,
        y: Any = None,
        alpha: float = 0.01,
        out: Any = None,
    ) -> Any:
        """dL/dx from dL/dy. Uses the output y, except GELU which needs the input x."""
        xp = self.xp
        t = dy.dtype.type
        if kind == "identity":
            return self.copy_(out, dy) if out is not None else dy.copy()
        if kind == "relu":
            return xp.multiply(dy, y > 0, out=out)
        if kind == "leaky_relu":
            return xp.multiply(dy, xp.where(y > 0, t(1), t(alpha)), out=out)
        if kind == "sigmoid":
            return xp.multiply(dy, y * (t(1) - y), out=out)
        if kind == "tanh":
            return xp.multiply(dy, t(1) - y * y, out=out)
        if kind == "gelu":
            cdf = t(0.5) * (t(1) + self._erf(x * t(_INV_SQRT_2)))
            pdf = xp.exp(t(-0.5) * x * x) * t(_INV_SQRT_2PI)
            return xp.multiply(dy, cdf + x * pdf, out=out)
        if kind == "gelu_tanh":
            c = t(_SQRT_2_OVER_PI)
            x2 = x * x
            th = xp.tanh(c * (x + t(0.044715) * x2 * x))
            d = t(0.5) * (t(1) + th) + t(0.5) * x * (t(1) - th * th) * c * (
                t(1) + t(3 * 0.044715) * x2
            )
            return xp.multiply(dy, d, out=out)
        check_activation(kind)
        raise AssertionError(kind)

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
        """Fused: dz = activation_backward(dy) and db (+)= column sums of dz."""
        dz = self.activation_backward(kind, dy, x=x, y=y, alpha=alpha, out=dx_out)
        db = self.bias_grad(dz, out=db_out, accumulate=accumulate_db)
        return dz, db

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
        """Fused linear epilogue: out = act(x @ w.T + b).

        When `pre_out` is given the pre-activation is written there too (GELU's backward needs it).
        """
        target = pre_out if pre_out is not None else out
        z = self.gemm(x, w, trans_b=True, out=target)
        if b is not None:
            self.bias_add(z, b, out=z)
        if activation == "identity":
            if out is None or out is z:
                return z
            return self.copy_(out, z)
        return self.activation(activation, z, alpha=alpha, out=out if pre_out is not None else z)

    def softmax(self, x: Any, out: Any = None) -> Any:
        """Row-wise softmax, max-subtracted."""
        xp = self.xp
        out = xp.subtract(x, x.max(axis=1, keepdims=True), out=out)
        xp.exp(out, out=out)
        out /= out.sum(axis=1, keepdims=True)
        return out

    def softmax_backward(self, dy: Any, y: Any, out: Any = None) -> Any:
        dot = (dy * y).sum(axis=1, keepdims=True)
        return self.xp.multiply(y, dy - dot, out=out)

    # ------------------------------------------------------------------ helpers
    def _sigmoid(self, x: Any, out: Any = None) -> Any:
        """Overflow-free logistic: exp of a non-positive number only."""
        xp = self.xp
        t = x.dtype.type
        e = xp.exp(-xp.abs(x))
        return xp.divide(xp.where(x >= 0, t(1), e), t(1) + e, out=out)

    def _erf(self, x: Any) -> Any:
        return _host_erf(x)

    def warmup(self, dtypes: Sequence[str] = ("float32",), depths: Sequence[int] = (), *,
               precision: str = "float32") -> float:  # fmt: skip
        """Compile what a JIT backend compiles on first use (nothing here; `precision` "bf16"
        or "fp16" adds its 16-bit GEMMs); returns seconds."""
        return 0.0

    def info(self) -> dict[str, Any]:
        """Facts for `deepcore info`: versions, device, threads."""
        return {"name": self.name, "device": self.device}


def _opname(a: Any, trans: bool) -> str:
    return f"{tuple(a.shape)}{'.T' if trans else ''}"


def array_backend_name(x: Any) -> str | None:
    """'numpy' / 'cupy' for an array of that library, else None (no array library imported)."""
    mod = type(x).__module__.split(".")[0]
    if mod == "numpy" and isinstance(x, np.ndarray):
        return "numpy"
    if mod == "cupy":
        return "cupy"
    if mod == "torch":
        return "torch"
    return None


def to_numpy(x: Any) -> np.ndarray:
    """A host NumPy copy of any array: a backend's (NumPy, CuPy), a torch tensor, or a list.

    Always a copy, so later steps (which reuse buffers) cannot change it.
    """
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    elif type(x).__module__.split(".")[0] == "cupy":
        return x.get()
    return np.array(x, copy=True)


def _host_erf(x: np.ndarray) -> np.ndarray:
    """erf on a host array: SciPy's ufunc when installed, else math.erf element by element."""
    try:
        from scipy.special import erf
    except ImportError:
        erf = np.frompyfunc(math.erf, 1, 1)
        return erf(x).astype(x.dtype)
    return erf(x).astype(x.dtype, copy=False)
