"""Parameter and Module: the device-agnostic layer stack (containers: container.py).

Layers hold their arrays on one Backend and compute only through its methods; they never import
an array library. Backprop is explicit: `forward` caches what `backward` needs, and
`backward(grad_output)` accumulates parameter gradients and returns the input gradient.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..backends import Backend, get_backend
from ..backends.base import normalize_dtype, to_numpy
from ..errors import BackendMismatchError, DtypeError, ShapeError


class Parameter:
    """A trainable array on a backend and its gradient.

    As in PyTorch, `grad` is None until a backward pass writes it and again after
    `zero_grad()`; the buffer behind it is kept, so the next backward writes into it directly
    (no zero-fill, no accumulate pass) and steady-state training allocates nothing.
    """

    __slots__ = ("data", "_grad", "_grad_live", "backend", "requires_grad")

    def __init__(self, data: Any, backend: Backend, requires_grad: bool = True) -> None:
        self.data = data
        self._grad: Any = None
        self._grad_live = False
        self.backend = backend
        self.requires_grad = requires_grad

    @property
    def grad(self) -> Any:
        return self._grad if self._grad_live else None

    @grad.setter
    def grad(self, value: Any) -> None:
        if value is None:
            self._grad_live = False
        else:
            self._grad, self._grad_live = value, True

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> str:
        return self.data.dtype.name

    def numpy(self) -> Any:
        """Host copy of the values."""
        return self.backend.to_host(self.data)

    def grad_target(self) -> tuple[Any, bool]:
        """(buffer, accumulate): where a backward pass writes this gradient, and whether it adds
        to a live gradient (True) or overwrites (False). Call `grad_written()` after writing."""
        if self._grad is None:
            self._grad = self.backend.empty(self.shape, self.data.dtype)
        return self._grad, self._grad_live

    def grad_written(self) -> None:
        """Mark the buffer from `grad_target` as holding this parameter's gradient."""
        self._grad_live = True

    def grad_buffer(self) -> Any:
        """The live gradient array, zero-filled if there was none."""
        buf, live = self.grad_target()
        if not live:
            self.backend.fill_(buf, 0.0)
            self._grad_live = True
        return buf

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradient (grad becomes None; the buffer is kept) or zero it in place."""
        if set_to_none:
            self._grad_live = False
        elif self._grad_live:
            self.backend.fill_(self._grad, 0.0)

    def to(self, backend: Backend, dtype: str | None = None) -> None:
        """Move values (and the gradient buffer, if any) to `backend`, optionally casting."""
        dtype = dtype or self.dtype
        self.data = _move(self.data, self.backend, backend, dtype)
        if self._grad is not None:
            self._grad = _move(self._grad, self.backend, backend, dtype)
        self.backend = backend

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, backend={self.backend.name})"


def _move(x: Any, src: Backend, dst: Backend, dtype: str) -> Any:
    if src is dst and x.dtype.name == dtype:
        return x
    return dst.asarray(src.to_host(x).astype(dtype, copy=False))


class Recent:
    """The backend of the latest model forward: a loss built without `backend=` computes there
    (numpy and numba share array types, so the array alone cannot say which was meant)."""

    backend: Backend | None = None


class Module:
    """Base class of layers and containers, shaped after torch.nn.Module."""

    def __init__(self, *, backend: str | Backend | None = None, dtype: Any = None) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        self.backend = get_backend(backend)
        self.dtype = normalize_dtype(dtype)
        self.training = True

    # ---- registration (attribute assignment, as in PyTorch)
    def __setattr__(self, name: str, value: Any) -> None:
        # Parameters and submodules are registered and also kept in __dict__, so reading
        # `self.weight` in a hot loop is a plain attribute lookup.
        d = self.__dict__
        if isinstance(value, Parameter):
            d["_parameters"][name] = value
        elif isinstance(value, Module):
            d["_modules"][name] = value
        elif value is None and name in d.get("_parameters", ()):
            d["_parameters"][name] = None
        d[name] = value

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        if name in d.get("_parameters", {}):
            return d["_parameters"][name]
        if name in d.get("_modules", {}):
            return d["_modules"][name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # ---- computation
    def forward(self, x: Any) -> Any:
        raise NotImplementedError

    def backward(self, grad_output: Any) -> Any:
        raise NotImplementedError

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    def _input(self, x: Any, features: int | None = None) -> Any:
        """x as an array of this module's backend and dtype, with a clear error otherwise."""
        try:
            x = self.backend.asarray(x, dtype=self.dtype)
        except (DtypeError, BackendMismatchError) as exc:
            raise type(exc)(f"{self._label()}: {exc}") from None
        if features is not None and (x.ndim != 2 or x.shape[1] != features):
            raise ShapeError(
                f"{self._label()} expects input of shape (batch, {features}), got {tuple(x.shape)}"
            )
        return x

    def _label(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    # ---- traversal
    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, p in self._parameters.items():
            if p is not None:
                yield (f"{prefix}.{name}" if prefix else name), p
        for name, m in self._modules.items():
            yield from m.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    # ---- modes and gradients
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every gradient: to None (PyTorch's default; buffers are kept for reuse) or,
        with set_to_none=False, to zeros in place."""
        for p in self.parameters():
            p.zero_grad(set_to_none)

    # ---- devices and dtypes
    def to(self, backend: str | Backend | None = None, *, dtype: Any = None) -> Module:
        """Move every parameter and gradient to `backend` and/or cast to `dtype`; returns self."""
        target = get_backend(backend) if backend is not None else self.backend
        dt = normalize_dtype(dtype) if dtype is not None else None
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None:
                    p.to(target, dt)
            m.backend = target
            if dt is not None:
                m.dtype = dt
            m._clear_cache()
        return self

    def float(self) -> Module:
        return self.to(dtype="float32")

    def double(self) -> Module:
        return self.to(dtype="float64")

    def _clear_cache(self) -> None:
        """Drop arrays cached by forward (called when the module moves)."""
        for key in [k for k in self.__dict__ if k.startswith("_cache_")]:
            self.__dict__[key] = None

    # ---- state
    def state_dict(self) -> OrderedDict[str, Any]:
        """Host NumPy copies of every parameter, with PyTorch's names and shapes."""
        return OrderedDict((n, p.numpy()) for n, p in self.named_parameters())

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Copy values from a state dict (NumPy arrays, or anything with .numpy() such as torch
        tensors); shapes must match exactly. With strict, names must match both ways."""
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(
                f"state dict does not fit {type(self).__name__}: missing {missing}, "
                f"unexpected {unexpected}"
            )
        staged = {}
        for name, p in own.items():
            if name not in state:
                continue
            value = to_numpy(state[name])
            if tuple(value.shape) != p.shape:
                raise ShapeError(
                    f"parameter {name!r}: state dict has shape {tuple(value.shape)}, "
                    f"the model expects {p.shape}"
                )
            staged[name] = value
        for name, value in staged.items():  # all checked before anything is written
            p = own[name]
            p.data = p.backend.asarray(value.astype(p.dtype, copy=False))  # already a copy

    # ---- description
    def extra_repr(self) -> str:
        return ""

    def config(self) -> dict[str, Any]:
        """JSON-able description from which `deepcore.nn.build` rebuilds this module."""
        raise NotImplementedError(f"{type(self).__name__} does not describe its configuration")

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            lines[0] = f"{type(self).__name__}("
            for name, m in self._modules.items():
                sub = repr(m).replace("\n", "\n  ")
                lines.append(f"  ({name}): {sub}")
            lines.append(")")
            return "\n".join(lines)
        return lines[0] + ")"


def parameters_backend(params: Iterable[Parameter]) -> Backend:
    """The one backend all `params` live on, or a BackendMismatchError naming two."""
    backend = None
    for p in params:
        if backend is None:
            backend = p.backend
        elif p.backend is not backend:
            raise BackendMismatchError(
                f"parameters live on two backends ({backend.name} and {p.backend.name}); "
                f"move the model with model.to(name) before building the optimizer"
            )
    if backend is None:
        raise ValueError("no parameters given")
    return backend
