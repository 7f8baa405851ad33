"""The checkpoint file: safetensors bytes, written atomically, read with checks.

A checkpoint is one safetensors file: tensors are plain little-endian arrays, everything else is
JSON strings in the header's ``__metadata__`` (str -> str). Nothing is ever unpickled. Reading
validates the file before safetensors sees it, so a truncated, empty, corrupt or foreign file
fails with a CheckpointError that says what is wrong with which file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, NoReturn

import numpy as np

from .errors import CheckpointError

#: Value of the "format" metadata key that marks a deepcore checkpoint.
FORMAT = "deepcore.checkpoint"
#: Bumped when the layout changes incompatibly; readers refuse newer versions.
FORMAT_VERSION = 1
_CHUNK = 1 << 20


def encode(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """The safetensors bytes of `tensors` with string `metadata` (safetensors imported here)."""
    from safetensors.numpy import save

    contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return save(contiguous, metadata=metadata)


def _write_all(f: IO[bytes], data: bytes) -> None:
    """Write `data` in chunks (a seam the fault tests patch to fail half-way)."""
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        f.write(view[start : start + _CHUNK])


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash at any point leaves the old file or the new.

    Write a temp file in the same directory, flush and fsync it, os.replace it onto the target,
    then fsync the directory so the rename itself is durable. On any exception (KeyboardInterrupt
    included) the temp file is removed and the old file is untouched.
    """
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError):  # keep the old file's mode, else rw-r--r--
                os.fchmod(f.fileno(), path.stat().st_mode & 0o777 if path.exists() else 0o644)
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # Windows cannot open a directory for fsync; replace is enough there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _looks_like_text(head: bytes) -> bool:
    return bool(head) and all(b in b"\t\n\r" or 32 <= b < 127 for b in head)


def _explain_unreadable(path: Path, data: bytes, n: int) -> NoReturn:
    """Raise the CheckpointError that best says why `data` is not a safetensors file."""
    size = len(data)
    if size == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes), not a checkpoint")
    if data[:1] == b"\x80" and size > 2 and 2 <= data[1] <= 5 and data[2] != 0:
        raise CheckpointError(
            f"{path}: is a Python pickle, not a safetensors checkpoint; deepcore never loads "
            f"pickles (they can run code)"
        )
    if _looks_like_text(data[:64]):
        raise CheckpointError(f"{path}: is a text file, not a safetensors checkpoint")
    if size < 8:
        raise CheckpointError(f"{path}: only {size} bytes; truncated or not a checkpoint")
    if n > size - 8:
        raise CheckpointError(
            f"{path}: truncated or not a safetensors file (header claims {n} bytes, "
            f"the file has {size})"
        )
    raise CheckpointError(f"{path}: corrupt or not a safetensors file (no JSON header)")


def read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors (host NumPy) and string metadata of the deepcore checkpoint at `path`."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    size = len(data)
    n = int.from_bytes(data[:8], "little") if size >= 8 else -1
    if not 0 <= n <= size - 8 or data[8:9] != b"{":
        _explain_unreadable(path, data, n)
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from None
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: a safetensors file but not a deepcore checkpoint (its metadata has no "
            f"format={FORMAT!r}); read plain weights with safetensors.numpy.load_file and "
            f"Module.load_state_dict"
        )
    _check_version(path, meta)
    _check_extent(path, header, size - 8 - n)
    from safetensors.numpy import load

    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{path}: corrupt tensor data ({exc})") from None
    return tensors, meta


def _check_version(path: Path, meta: dict[str, str]) -> None:
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: missing or bad format_version in metadata") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this deepcore reads "
            f"({FORMAT_VERSION}); upgrade deepcore"
        )


def _check_extent(path: Path, header: dict[str, Any], available: int) -> None:
    """The tensors' byte ranges must lie inside the file: catches truncation in the data."""
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}") from None
    if end > available:
        raise CheckpointError(
            f"{path}: truncated: the header needs {end} bytes of tensor data, the file holds "
            f"{available}"
        )


def dumps(value: Any) -> str:
    """JSON text of `value` (NumPy scalars and tuples allowed)."""
    return json.dumps(value, default=_jsonable, allow_nan=True)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    raise TypeError(f"cannot store a {type(v).__name__} in checkpoint metadata")


def loads(path: Path, meta: dict[str, str], key: str, default: Any = None) -> Any:
    """The JSON value of metadata field `key` (default when absent)."""
    text = meta.get(key)
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{path}: metadata field {key!r} is not valid JSON ({exc})") from None
