"""Backend registry and selection.

Precedence: an explicit `backend=` argument or `model.to(name)`; the innermost
`with use_backend(name)`; `set_default_backend(name)`; the `DEEPCORE_BACKEND` environment variable
(read on first use, not at import); else "numpy". "auto" means cupy if a GPU really works, else
numba if installed, else numpy. Backend modules are imported only when first asked for, so
`import deepcore` imports neither numba nor cupy.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..errors import BackendUnavailableError
from .base import Backend

__all__ = [
    "Backend",
    "Availability",
    "available_backends",
    "get_backend",
    "use_backend",
    "set_default_backend",
    "get_default_backend",
    "BACKEND_NAMES",
    "register_backend",
]

#: name -> module that defines `BACKEND_CLASS` and `probe(device) -> (ok, reason)`.
_MODULES = {
    "numpy": "deepcore.backends.numpy",
    "numba": "deepcore.backends.numba",
    "cupy": "deepcore.backends.cupy",
}
BACKEND_NAMES = tuple(_MODULES)
ENV_VAR = "DEEPCORE_BACKEND"
#: Installed packages may add backends under this entry-point group (name = module path).
ENTRY_POINT_GROUP = "deepcore.backends"
_entry_points_loaded = False


def register_backend(name: str, module: str) -> None:
    """Make backend `name` selectable: `module` (a dotted path, imported on first use) defines
    `BACKEND_CLASS` (a Backend subclass) and `probe(device) -> (ok, reason)`."""
    global BACKEND_NAMES
    if not name.isidentifier() or name != name.lower() or name == "auto":
        raise ValueError(
            f"backend name must be a lower-case identifier other than 'auto': {name!r}"
        )
    if _MODULES.get(name, module) != module:
        raise ValueError(f"backend {name!r} is already registered as {_MODULES[name]!r}")
    _MODULES[name] = module
    BACKEND_NAMES = tuple(_MODULES)


def _load_entry_points() -> None:
    """Register the backends installed packages declare (once, on first use)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _MODULES:
            register_backend(ep.name, ep.value)


_instances: dict[str, Backend] = {}
_lock = threading.Lock()
_context: ContextVar[str | None] = ContextVar("deepcore_backend", default=None)
_default: str | None = None


@dataclass(frozen=True)
class Availability:
    """Whether a backend can run here and, when not, why."""

    name: str
    available: bool
    reason: str

    def __bool__(self) -> bool:
        return self.available


def _split(spec: str) -> tuple[str, int | None]:
    """'cupy:1' -> ('cupy', 1); 'numpy' -> ('numpy', None)."""
    _load_entry_points()
    spec = spec.strip().lower()
    base, colon, dev = spec.partition(":")
    if base not in _MODULES and base != "auto":
        raise ValueError(
            f"unknown backend {spec!r}; expected one of {', '.join(BACKEND_NAMES)}, "
            f"'cupy:N' or 'auto'"
        )
    if colon:
        if base != "cupy" or not dev.isdigit():
            why = (
                "only cupy takes a device index, as 'cupy:N'"
                if base != "cupy"
                else "the device index must be a non-negative integer, as 'cupy:0'"
            )
            raise ValueError(
                f"bad backend {spec!r}: {why}; "
                f"expected one of {', '.join(BACKEND_NAMES)}, 'cupy:N' or 'auto'"
            )
        return base, int(dev)
    return base, None


def _probe(base: str, device: int | None) -> tuple[bool, str]:
    try:
        module = importlib.import_module(_MODULES[base])
        return module.probe(device)
    except Exception as exc:  # a broken install must not break selection ("auto") or reports
        return False, f"probe failed: {type(exc).__name__}: {exc}"


def available_backends() -> dict[str, Availability]:
    """Every backend with whether it can run here and the reason when it cannot."""
    _load_entry_points()
    result = {}
    for base in BACKEND_NAMES:
        try:
            ok, reason = _probe(base, None)
        except Exception as exc:  # a broken install must not break the report
            ok, reason = False, f"probe failed: {type(exc).__name__}: {exc}"
        result[base] = Availability(base, ok, reason)
    return result


def _resolve_auto() -> str:
    for base in ("cupy", "numba"):
        ok, _ = _probe(base, None)
        if ok:
            return base
    return "numpy"


def _canonical(spec: str) -> str:
    base, dev = _split(spec)
    if base == "auto":
        base = _resolve_auto()
    if base == "cupy":
        return f"cupy:{dev or 0}"
    return base


def get_backend(spec: str | Backend | None = None) -> Backend:
    """The Backend for `spec` (a name, 'cupy:N', 'auto', a Backend) or the current selection."""
    if isinstance(spec, Backend):
        return spec
    if spec is None:
        spec = current_backend_name()
    if not isinstance(spec, str):
        raise TypeError(f"backend must be a name or a Backend, not {type(spec).__name__}")
    name = _canonical(spec)
    inst = _instances.get(name)
    if inst is not None:
        return inst
    with _lock:
        inst = _instances.get(name)
        if inst is None:
            base, _, dev = name.partition(":")
            ok, reason = _probe(base, int(dev) if dev else None)
            if not ok:
                raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
            module = importlib.import_module(_MODULES[base])
            inst = module.BACKEND_CLASS(int(dev)) if dev else module.BACKEND_CLASS()
            _instances[name] = inst
    return inst


def current_backend_name() -> str:
    """The name selection would use now (before resolving 'auto')."""
    ctx = _context.get()
    if ctx is not None:
        return ctx
    if _default is not None:
        return _default
    env = os.environ.get(ENV_VAR, "").strip()
    return env or "numpy"


def set_default_backend(spec: str | Backend | None) -> None:
    """Set the process-wide default (below `use_backend` contexts); None clears it."""
    global _default
    if spec is None:
        _default = None
        return
    _default = get_backend(spec).name


def get_default_backend() -> Backend:
    """The backend that would be used now with no explicit choice."""
    return get_backend(None)


@contextlib.contextmanager
def use_backend(spec: str | Backend) -> Iterator[Backend]:
    """Within the block, layers and data built without an explicit backend use this one."""
    backend = get_backend(spec)
    token = _context.set(backend.name)
    try:
        yield backend
    finally:
        _context.reset(token)


def owning_backend(x: Any) -> Backend | None:
    """An already-created backend whose arrays are of x's kind (a cupy array finds cupy)."""
    for inst in list(_instances.values()):
        if inst.owns(x):
            return inst
    return None


def _reset_for_tests() -> Any:
    """Forget the default (tests only)."""
    global _default
    _default = None
