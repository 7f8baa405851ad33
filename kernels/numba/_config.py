"""Numba settings shared by every kernel module: the cache directory and the compile options.

Imported only by the Numba backend (it imports numba). The cache goes next to the sources when
that is writable (numba's default), else to ~/.cache/deepcore/numba; when neither is writable the
kernels compile without a cache and a warning says so.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path


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

#: Numba's OpenMP threads spin after each parallel region by default; on a 2-core machine they
#: then fight OpenBLAS's threads for the cores (measured: mnist layer-by-layer step 44 ms with
#: spinning vs 6.4 ms passive, same process shape). Passive unless the user chose a policy.
#: Read by the OpenMP runtime when it loads (numba's omp pool loads at the first parallel run).
#: The variables set here, so tools can tell them from the user's (deepcore.bench.remote starts
#: its anchors without them). Process-wide: an OpenMP runtime loaded later in this process
#: (PyTorch's shares the same libgomp) waits passively too; see the README.
INJECTED_ENV: dict[str, str] = {}


def _mkl_blas_expected() -> bool:
    """True when the Numba backend's GEMMs will run on MKL (deepcore.backends._mkl), whose GNU
    threading layer runs in this same libgomp pool."""
    if os.environ.get("DEEPCORE_NUMBA_BLAS", "auto") == "numpy":
        return False
    try:
        importlib.metadata.distribution("mkl")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


#: Passive waiting keeps idle OpenMP threads off the cores OpenBLAS's own threads need between
#: kernels. With MKL as the BLAS the GEMMs and the kernels share libgomp's threads, and passive
#: waiting would make every GEMM wake them (mnist GEMMs: 3.0 ms passive vs 1.9 ms with
#: libgomp's default short spin), so the default is kept.
if "OMP_WAIT_POLICY" not in os.environ and not _mkl_blas_expected():
    os.environ["OMP_WAIT_POLICY"] = INJECTED_ENV["OMP_WAIT_POLICY"] = "passive"

import numba  # noqa: E402  (after NUMBA_CACHE_DIR is set)

if CACHE_DIR is not None:
    numba.config.CACHE_DIR = CACHE_DIR

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


@contextlib.contextmanager
def slp_vectorize() -> Iterator[None]:
    """Compile inside this block with LLVM's SLP vectorizer on (numba leaves it off).

    The GEMM micro-kernel is straight-line code over register accumulators: only the SLP pass
    turns it into SIMD FMAs (measured 9.9 -> 122 GFLOP/s on one core). Scoped, so user code
    compiled elsewhere in the process keeps numba's default.
    """
    old = numba.config.SLP_VECTORIZE
    numba.config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = old
