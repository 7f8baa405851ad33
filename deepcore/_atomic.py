"""Replace a file atomically: a crash, SIGKILL or Ctrl-C at any moment leaves the old file or
the new one, never a torn one, and temp files of writers that were killed are removed by the
next write to the same target."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 20


def _write_all(f: IO[bytes], data: Any) -> None:
    """Write `data` in chunks (a seam the fault tests patch to fail half-way)."""
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        f.write(view[start : start + _CHUNK])


def temp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temps(path: Path) -> list[str]:
    """Delete temp files an earlier save of `path` left behind (a process killed mid-write).

    Temp names carry the writer's pid (``.NAME.<pid>.<random>.tmp``): files of a live process are
    kept (it may be saving now); those of our own pid are kept too (a save in another thread).
    Names without a pid (deepcore before format 2) are removed once an hour old.
    """
    prefix, removed = temp_prefix(path), []
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        middle = name[len(prefix) : -len(".tmp")]
        pid_text, _, token = middle.partition(".")
        stale = False
        if pid_text.isdigit() and token:
            pid = int(pid_text)
            stale = pid != os.getpid() and not _alive(pid)
        else:
            with contextlib.suppress(OSError):
                stale = time.time() - os.stat(path.parent / name).st_mtime > 3600
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)
                removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill would terminate it on Windows; keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or not allowed to ask: treat as alive
        return True
    return True


def atomic_write(path: Path, parts: Iterable[Any]) -> None:
    """Replace `path` with the concatenated byte buffers `parts`, so that a crash at any point
    leaves the old file or the new one.

    Write a temp file in the same directory, flush and fsync it, os.replace it onto the target,
    then fsync the directory so the rename itself is durable. On any exception (KeyboardInterrupt
    included) the temp file is removed and the old file is untouched; temp files of earlier
    writers that were killed (SIGKILL, power loss) are removed first.
    """
    if isinstance(parts, bytes | bytearray | memoryview):
        parts = [parts]
    directory = path.parent
    remove_stale_temps(path)
    tmp = directory / f"{temp_prefix(path)}{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(OSError):  # keep the old file's mode, else rw-r--r--
                os.fchmod(f.fileno(), path.stat().st_mode & 0o777 if path.exists() else 0o644)
            for part in parts:
                _write_all(f, part)
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
