"""Numba settings shared by every kernel module: the cache directory and the compile options.

Imported only by the Numba backend (it imports numba). The cache goes next to the sources when
that is writable (numba's default), else to ~/.cache/deepcore/numba; when neither is writable the
kernels compile without a cache and a warning says so.

Numba invalidates a cached function only when its own file changes, not when a function it
calls from another file does (Numba's "Notes on Caching"). After a `git pull` of an editable
install that changed, say, bf16_pack.py alone, bf16.py's cached GEMM would keep the old pack
compiled in (seen here: a crash). So the cache holds a digest of all these sources, and its
entries are dropped when the digest changes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

_HERE = Path(__file__).parent
_DIGEST_FILE = "deepcore-kernels.digest"


def sources_digest(folder: Path = _HERE) -> str:
    """A digest of every kernel source in `folder` (names and contents)."""
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def drop_stale_entries(cache: Path, digest: str) -> int:
    """Remove Numba's cache entries (*.nbi, *.nbc) in `cache` unless it records `digest`, then
    record it; returns how many were removed. Best effort: another process may be writing too,
    and Numba recompiles whatever it finds missing."""
    stamp = cache / _DIGEST_FILE
    try:
        if stamp.read_text() == digest:
            return 0
    except OSError:
        pass
    removed = 0
    for p in [*cache.glob("*.nbi"), *cache.glob("*.nbc")]:
        try:
            p.unlink()
            removed += 1
        except OSError:
            pass
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f"{_DIGEST_FILE}.{os.getpid()}"
        tmp.write_text(digest)
        tmp.replace(stamp)
    except OSError:
        pass
    return removed


def _writable(path: Path) -> bool:
    """True when files can be created in `path` (created if missing)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError:
        return False
    return True


def _choose_cache() -> tuple[bool, str | None]:
    """(cache enabled, cache dir or None for numba's in-tree default)."""
    user = os.environ.get("NUMBA_CACHE_DIR")
    if user:
        return (_writable(Path(user)), user)
    if _writable(Path(__file__).parent / "__pycache__"):
        return True, None
    fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "deepcore", "numba")
    if _writable(fallback):
        os.environ["NUMBA_CACHE_DIR"] = str(fallback)
        return True, str(fallback)
    return False, None


CACHE, CACHE_DIR = _choose_cache()
if not CACHE:
    warnings.warn(
        "deepcore: no writable Numba cache directory (tried the package's __pycache__, "
        "NUMBA_CACHE_DIR and ~/.cache/deepcore/numba); kernels compile on every start",
        RuntimeWarning,
        stacklevel=2,
    )

import numba  # noqa: E402  (after NUMBA_CACHE_DIR is set)

if CACHE_DIR is not None:
    numba.config.CACHE_DIR = CACHE_DIR


def _kernel_cache() -> Path | None:
    """Where Numba keeps these kernels' cache entries (its own locators' rule)."""
    if not CACHE:
        return None
    if CACHE_DIR is None:
        return _HERE / "__pycache__"
    try:
        from numba.core.caching import _CacheLocator

        return Path(CACHE_DIR, _CacheLocator.get_suitable_cache_subpath(__file__))
    except (ImportError, AttributeError):  # a Numba without this helper: entries are kept
        return None


_cache = _kernel_cache()
if _cache is not None:
    drop_stale_entries(_cache, sources_digest())

#: Compile options for elementwise and reduction kernels: IEEE semantics, no fastmath.
#: fastmath=False is spelled out because numba compiles a callee that leaves the option unset
#: with its first caller's flags and reuses that compilation for every later call
#: (numba/numba#7168): an update kernel first reached from the GEMM-flagged whole-step kernel
#: would otherwise contract a*b+c into FMAs everywhere, and results would depend on which
#: kernel happened to compile first (seen here: last-bit differences between step routes).
OPTS = {"cache": CACHE, "nogil": True, "error_model": "numpy", "fastmath": False}
#: GEMM kernels only allow contraction of a*b+c into one FMA. Why: without it each update is a
#: rounded multiply and a rounded add (half the FMA throughput); FMA rounds once, so results are
#: as accurate or better and still deterministic (no reassociation, no reordering of sums).
GEMM_OPTS = {**OPTS, "fastmath": {"contract"}}
