"""Which GEMM the Numba backend runs for a shape, its JIT kernel or BLAS: measured on this
machine, not guessed.

A GEMM's work m*n*k puts it in one of two classes: `small` (<= 64^3: OpenBLAS runs one thread
there and call overhead decides) and `large`. For each class the JIT kernel and BLAS are timed on
one probe shape, through the very calls the backend makes, in alternating rounds; the faster
wins. The choices are kept in a JSON file in the user's cache directory, keyed by everything that
can change them (CPU, vector width, BLAS library, version and kernel architecture, the variables
that force BLAS kernels, thread count, dtype, deepcore version), so later runs on
this machine reuse them without measuring and the same seed gives the same bits run to run.
Delete the file (`deepcore info` prints its path) to measure again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Largest m*n*k of the `small` class: OpenBLAS's single-thread limit (GEMM_MULTITHREAD_THRESHOLD
#: x 65536 = 4 x 64^3 in its sources; 64^3 leaves a margin).
SMALL_WORK = 64**3
#: The probe shape (m, n, k) timed for each class.
PROBES = {"small": (64, 64, 64), "large": (256, 512, 512)}
#: Seconds to sleep before timing the JIT kernel after BLAS: OpenBLAS's worker keeps spinning for
#: ~0.1 s after a call and would take a core from the JIT kernel's threads.
_SETTLE = 0.12
_FILE = "numba-gemm-choice.json"


def size_class(work: int) -> str:
    """'small' or 'large' for a GEMM of m*n*k = work."""
    return "small" if work <= SMALL_WORK else "large"


@dataclass(frozen=True)
class Choice:
    """The outcome for one size class: the faster GEMM and the medians it was chosen on."""

    jit: bool
    jit_seconds: float
    blas_seconds: float
    measured: str  # ISO date and time

    def describe(self) -> str:
        unit, scale = ("us", 1e6) if self.jit_seconds < 1e-3 else ("ms", 1e3)
        who = "jit" if self.jit else "blas"
        return (f"{who} (jit {self.jit_seconds * scale:.1f} {unit} vs blas "
                f"{self.blas_seconds * scale:.1f} {unit})")  # fmt: skip


def cache_path() -> Path | None:
    """The choice file: $DEEPCORE_CACHE_DIR, else $XDG_CACHE_HOME/deepcore, else ~/.cache/deepcore;
    None when that directory cannot be created."""
    root = os.environ.get("DEEPCORE_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(base) / "deepcore")
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return path / _FILE


def machine_key(
    cpu: str, kernel: str, blas: str, threads: int, dtype: str, version: str, env: str = ""
) -> str:
    """The file's key for one configuration (long fields hashed to keep it readable). `blas`
    names the library, version and kernel architecture; `env` the set BLAS kernel variables
    (deepcore.machine.blas_env_key), so a choice measured under one kernel is not reused under
    another."""
    digest = _kernel_digest(kernel)
    blas = f"{blas} [{env}]" if env else blas
    return f"deepcore {version} | {cpu} | kernel {digest} | {blas} | {threads} threads | {dtype}"


def _kernel_digest(kernel: str) -> str:
    return hashlib.sha256(kernel.encode()).hexdigest()[:12]


def expects_jit(path: Path | None, cpu: str, kernel: str) -> bool | None:
    """Whether any stored float32 choice for this CPU and kernel put large GEMMs on the JIT
    kernel (None when there is none)."""
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
        tag = f"| {cpu} | kernel {_kernel_digest(kernel)} |"
        found = [bool(v["large"]["jit"]) for k, v in data.items()
                 if tag in k and k.endswith("| float32")]  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return any(found) if found else None


def load(path: Path | None, key: str) -> dict[str, Choice] | None:
    """The stored choices for key, or None (no file, no entry, or an unreadable file)."""
    if path is None:
        return None
    try:
        entry = json.loads(path.read_text())[key]
        return {cls: Choice(**entry[cls]) for cls in PROBES}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path: Path | None, key: str, choices: dict[str, Choice]) -> bool:
    """Add key's choices to the file atomically (a temp file renamed over it); False if the
    directory is not writable (the choices then last for this process only)."""
    if path is None:
        return False
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[key] = {cls: asdict(c) for cls, c in choices.items()}
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".gemm-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        return False
    return True


def measure(jit: Callable[[], Any], blas: Callable[[], Any], work: int, rounds: int = 7) -> Choice:
    """Time jit() and blas() (one GEMM each) call by call in alternating rounds; the lower
    median wins. Medians of single calls, because on a shared VM a parallel call now and then
    waits milliseconds for a descheduled core (seen here: one 128^3 call in ~60 took 8 ms)."""
    jit()
    blas()
    calls = max(3, min(200, int(1e-3 / max(work / 2e11, 1e-7))))  # ~1 ms per round
    t_jit: list[float] = []
    t_blas: list[float] = []
    clock = time.perf_counter
    for _ in range(rounds):
        for fn, out in ((jit, t_jit), (blas, t_blas)):
            if fn is jit and work > SMALL_WORK:
                time.sleep(_SETTLE)
            fn()  # wakes the thread pool (~0.3 ms after a pause), untimed
            for _ in range(calls):
                start = clock()
                fn()
                out.append(clock() - start)
    tj, tb = statistics.median(t_jit), statistics.median(t_blas)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Choice(jit=tj < tb, jit_seconds=tj, blas_seconds=tb, measured=now)
