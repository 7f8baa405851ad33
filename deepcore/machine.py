"""CPU and BLAS facts: the CPU's model and features, which kernels each BLAS library runs (and
whether an environment variable holds it to older ones), and the machine's peak FLOP rate.

Sits below the backends (they key their GEMM choices on these facts) and imports only the
standard library at import time; threadpoolctl and Numba load when asked.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Mapping
from typing import Any

#: Variables that hold a BLAS to kernels of a given instruction set instead of the detected ones.
BLAS_ENV_VARS = ("OPENBLAS_CORETYPE", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE")

#: x86 instruction-set levels, lowest first (what a kernel needs / what a CPU has).
LEVELS = ("sse", "avx", "avx2", "avx512")

#: OpenBLAS core types (lower case) by the level of their kernels; names not listed (ARM, POWER,
#: ...) are not judged.
_OPENBLAS_LEVEL = {
    "sse": "katmai coppermine northwood prescott banias yonah core2 penryn dunnington nehalem "
    "atom athlon opteron opteron_sse3 barcelona bobcat nano",
    "avx": "sandybridge bulldozer piledriver",
    "avx2": "haswell zen steamroller excavator",
    "avx512": "skylakex cooperlake sapphirerapids",
}
_OPENBLAS = {name: level for level, names in _OPENBLAS_LEVEL.items() for name in names.split()}
#: MKL_DEBUG_CPU_TYPE values with a known meaning (5 is the usual "use AVX2 on AMD").
_MKL_DEBUG = {"5": "avx2", "4": "avx"}


def _cpuinfo_text() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return fh.read()
    except OSError:
        return ""


def _first_field(text: str, names: tuple[str, ...]) -> str | None:
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in names:
            return value.strip()
    return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    name = _first_field(text, ("model name",))
    return name or platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (x86 `flags`, ARM `Features`) from /proc/cpuinfo; empty elsewhere."""
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    return frozenset((_first_field(text, ("flags", "features")) or "").lower().split())


def cpu_level(flags: frozenset[str] | set[str]) -> str | None:
    """The highest x86 level in LEVELS the flags support (None when not x86)."""
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    if "avx" in flags:
        return "avx"
    return "sse" if "sse2" in flags else None


def forced_level(var: str, value: str) -> str | None:
    """The instruction-set level a BLAS variable's value holds its kernels to (None: not judged)."""
    v = value.strip().lower()
    if var == "OPENBLAS_CORETYPE":
        return _OPENBLAS.get(v)
    if var == "MKL_ENABLE_INSTRUCTIONS":
        for prefix, level in (("avx512", "avx512"), ("avx10", "avx512"), ("avx2", "avx2"),
                              ("avx", "avx"), ("sse", "sse")):  # fmt: skip
            if v.startswith(prefix):
                return level
        return None
    if var == "MKL_DEBUG_CPU_TYPE":
        return _MKL_DEBUG.get(v)
    return None


def blas_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The BLAS kernel variables that are set (name -> value)."""
    env = os.environ if environ is None else environ
    return {k: env[k] for k in BLAS_ENV_VARS if env.get(k)}


def blas_env_key(environ: Mapping[str, str] | None = None) -> str:
    """The set BLAS kernel variables as one string (for cache keys); '' when none is set."""
    return " ".join(f"{k}={v}" for k, v in sorted(blas_env(environ).items()))


def blas_warnings(
    flags: frozenset[str] | set[str] | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """One line per variable that holds a BLAS to kernels older than this CPU supports."""
    have = cpu_level(cpu_flags() if flags is None else flags)
    if have is None:
        return []
    out = []
    for var, value in blas_env(environ).items():
        held = forced_level(var, value)
        if held is not None and LEVELS.index(held) < LEVELS.index(have):
            who = "OpenBLAS" if var.startswith("OPENBLAS") else "MKL"
            out.append(
                f"WARNING: {var}={value} holds {who} to {held.upper()} kernels on a CPU with "
                f"{have.upper()}; unset it to run its detected kernels"
            )
    return out


def blas_libraries(pools: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each BLAS library loaded in this process: library, version, kernel architecture, threads
    (threadpoolctl's view; [] without it). `pools` is threadpoolctl's output, for tests."""
    if pools is None:
        try:
            from threadpoolctl import threadpool_info
        except ImportError:
            return []
        pools = threadpool_info()
    return [
        {
            "library": p.get("internal_api"),
            "version": p.get("version"),
            "architecture": p.get("architecture"),
            "threads": p.get("num_threads"),
            "threading_layer": p.get("threading_layer"),
            "path": p.get("filepath"),
        }
        for p in pools
        if p.get("user_api") == "blas"
    ]


def numpy_blas(libs: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """NumPy's own BLAS among blas_libraries() (others, e.g. SciPy's or MKL, load beside it)."""
    import numpy as np

    libs = blas_libraries() if libs is None else libs
    home = os.path.dirname(os.path.dirname(np.__file__))
    mine = [b for b in libs if str(b.get("path") or "").startswith(os.path.join(home, "numpy"))]
    return (mine or [b for b in libs if b["library"] != "mkl"] or libs or [None])[0]


def describe_blas(lib: Mapping[str, Any]) -> str:
    """'openblas 0.3.31 SkylakeX kernels, 2 threads' for one entry of blas_libraries()."""
    arch = f" {lib['architecture']} kernels" if lib.get("architecture") else ""
    return f"{lib.get('library')} {lib.get('version')}{arch}, {lib.get('threads')} threads"


# ------------------------------------------------------------------------------------ peak
def physical_cores(cpuinfo: str | None = None) -> int:
    """Cores this process may use, counting SMT siblings (which share FMA units) once."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    try:
        siblings = int(_first_field(text, ("siblings",)) or 0)
        cores = int(_first_field(text, ("cpu cores",)) or 0)
    except ValueError:
        siblings = cores = 0
    per_core = siblings // cores if siblings and cores and siblings >= cores else 1
    return max(1, usable // per_core)


#: Independent FMA chains in the throughput loop: enough to fill 2 pipes of 5-cycle latency,
#: few enough to stay in 16 vector registers.
_CHAINS = 10
#: Cycles of one dependent FMA (Skylake and later, Zen 3 and later; Haswell and Zen 1-2 take 5).
FMA_LATENCY = 4


@functools.lru_cache(maxsize=1)
def _fma_kernels() -> Any:
    """(throughput loop, dependent chain, lanes of float32), compiled with Numba on first use."""
    from numba import njit

    from deepcore.kernels.numba.simd import VECTOR_BYTES, vadd, vfma, vload, vstore

    @njit(cache=False)
    def throughput(n, buf):  # type: ignore[no-untyped-def]
        a, m, c = vload(buf, 0), vload(buf, 16), vload(buf, 32)
        x0 = x1 = x2 = x3 = x4 = x5 = x6 = x7 = x8 = x9 = a
        for _ in range(n):
            x0 = vfma(x0, m, c)
            x1 = vfma(x1, m, c)
            x2 = vfma(x2, m, c)
            x3 = vfma(x3, m, c)
            x4 = vfma(x4, m, c)
            x5 = vfma(x5, m, c)
            x6 = vfma(x6, m, c)
            x7 = vfma(x7, m, c)
            x8 = vfma(x8, m, c)
            x9 = vfma(x9, m, c)
        s = vadd(vadd(vadd(x0, x1), vadd(x2, x3)), vadd(vadd(x4, x5), vadd(x6, x7)))
        vstore(buf, 48, vadd(s, vadd(x8, x9)))

    @njit(cache=False)
    def chain(n, buf):  # type: ignore[no-untyped-def]
        x, m, c = vload(buf, 0), vload(buf, 16), vload(buf, 32)
        for _ in range(n):
            x = vfma(x, m, c)
        vstore(buf, 48, x)

    return throughput, chain, VECTOR_BYTES // 4


@functools.lru_cache(maxsize=1)
def _bf16_kernel() -> Any:
    """A `vdpbf16ps` throughput loop (None when the compiled target lacks AVX512_BF16): 16
    independent chains from 4 x 4 sources, 24 zmm registers in all. The GEMM's 6 x 4 block
    with its 10 sources needs 34 of the 32, and the spills LLVM then adds cut Zen 4's rate
    from 1.0 to 0.62 a cycle (measured): a probe must fit in the registers."""
    from numba import njit

    from deepcore.kernels.numba.bf16 import has_avx512_bf16, vdpbf16
    from deepcore.kernels.numba.simd import vadd, vload, vstore

    if not has_avx512_bf16():
        return None

    @njit(cache=False)
    def throughput(n, c, w):  # type: ignore[no-untyped-def]
        a0, a1, a2, a3 = vload(w, 0), vload(w, 16), vload(w, 32), vload(w, 48)
        b0, b1, b2, b3 = vload(w, 64), vload(w, 80), vload(w, 96), vload(w, 112)
        z = vload(c, 0)
        c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = z
        c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = z
        for _ in range(n):
            c00, c01, c02, c03 = (vdpbf16(c00, a0, b0), vdpbf16(c01, a0, b1),
                                  vdpbf16(c02, a0, b2), vdpbf16(c03, a0, b3))  # fmt: skip
            c10, c11, c12, c13 = (vdpbf16(c10, a1, b0), vdpbf16(c11, a1, b1),
                                  vdpbf16(c12, a1, b2), vdpbf16(c13, a1, b3))  # fmt: skip
            c20, c21, c22, c23 = (vdpbf16(c20, a2, b0), vdpbf16(c21, a2, b1),
                                  vdpbf16(c22, a2, b2), vdpbf16(c23, a2, b3))  # fmt: skip
            c30, c31, c32, c33 = (vdpbf16(c30, a3, b0), vdpbf16(c31, a3, b1),
                                  vdpbf16(c32, a3, b2), vdpbf16(c33, a3, b3))  # fmt: skip
        s = vadd(vadd(vadd(c00, c01), vadd(c02, c03)), vadd(vadd(c10, c11), vadd(c12, c13)))
        s = vadd(s, vadd(vadd(vadd(c20, c21), vadd(c22, c23)), vadd(vadd(c30, c31), c32)))
        vstore(c, 0, vadd(s, c33))

    return throughput


def _best_rate(fn: Any, work: int, seconds: float, repeats: int) -> float:
    """Best rate (units of `work` per second) of fn(n) over `repeats` runs of ~`seconds`."""
    fn(1)  # compile
    n = 1000
    while True:  # scale n until one run takes ~seconds
        t = time.perf_counter()
        fn(n)
        dt = time.perf_counter() - t
        if dt > seconds / 4 or n > 1 << 34:
            break
        n *= 4
    n = max(1, int(n * seconds / max(dt, 1e-9)))
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(n)
        rates.append(n * work / (time.perf_counter() - t))
    return max(rates)  # a disturbed run is only ever slower


def measure_fma(seconds: float = 0.002, repeats: int = 25) -> dict[str, float] | None:
    """One core's float32 FMA rate: {'fma_per_s': vector FMAs/s with independent chains,
    'chain_per_s': dependent FMAs/s, 'lanes': float32 lanes per vector, and 'bf16_per_s':
    512-bit `vdpbf16ps`/s where the kernels have AVX512_BF16}; None without Numba.
    Many short runs, best kept: on a loaded machine some run between preemptions."""
    try:
        import numpy as np

        throughput, chain, lanes = _fma_kernels()
    except Exception:  # no numba, or a target the SIMD module does not build for
        return None
    buf = np.full(64, 0.5, np.float32)
    buf[16:32], buf[32:48] = 0.9999, 1e-4
    fma = _best_rate(lambda n: throughput(n, buf), _CHAINS, seconds, repeats)
    dep = _best_rate(lambda n: chain(n, buf), 1, seconds, repeats)
    out = {"fma_per_s": fma, "chain_per_s": dep, "lanes": float(lanes)}
    try:
        bf16 = _bf16_kernel()
    except Exception:  # a target the bf16 kernels do not build for
        bf16 = None
    if bf16 is not None:
        c, w = np.zeros(16, np.float32), np.zeros(128, np.uint32)
        out["bf16_per_s"] = _best_rate(lambda n: bf16(n, c, w), 16, seconds, repeats)
    return out


def peak_from(
    fma: Mapping[str, float], cores: int, flags: frozenset[str] | set[str]
) -> dict[str, Any]:
    """Peak GFLOP/s from one core's measured FMA rates (see measure_fma): float32 = cores x
    vector FMAs/s x lanes x 2; float64 half that; bf16 = cores x `vdpbf16ps`/s x 32 pairs x 2
    where measured, else 2x float32 with AVX512_BF16 (two products per float32 lane); AMX's
    1024 flops a cycle a core with AMX_BF16."""
    lanes = int(fma["lanes"])
    clock = fma["chain_per_s"] * FMA_LATENCY
    per_cycle = fma["fma_per_s"] / clock
    f32 = cores * fma["fma_per_s"] * lanes * 2 / 1e9
    out: dict[str, Any] = {
        "float32": f32,
        "float64": f32 / 2,
        "clock_ghz": clock / 1e9,
        "formula": f"{cores} cores x {per_cycle:.1f} FMA/cycle x {lanes} lanes x 2 flops x "
        f"{clock / 1e9:.2f} GHz (clock from a dependent FMA chain, {FMA_LATENCY}-cycle latency)",
    }
    if "amx_bf16" in flags:
        out["bf16"] = cores * 1024 * clock / 1e9
        out["bf16_formula"] = f"{cores} cores x 1024 AMX flops/cycle x {clock / 1e9:.2f} GHz"
    elif fma.get("bf16_per_s"):
        out["bf16"] = cores * fma["bf16_per_s"] * 64 / 1e9
        out["bf16_formula"] = (
            f"{cores} cores x {fma['bf16_per_s'] / clock:.2f} vdpbf16ps/cycle x 32 pairs x "
            f"2 flops x {clock / 1e9:.2f} GHz"
        )
    elif "avx512_bf16" in flags:
        out["bf16"] = 2 * f32
        out["bf16_formula"] = "2 x float32 (AVX512_BF16: two products a float32 lane)"
    return out


_SM_CORES = {7: 64, 8: 64, 9: 128, 10: 128, 12: 128}  # float32 lanes an SM, by major version


def gpu_peaks() -> list[dict[str, Any]]:
    """Each CUDA device's float32 peak (SMs x lanes x 2 x clock), from an installed cupy."""
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        return []
    try:
        import cupy

        out = []
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            p = cupy.cuda.runtime.getDeviceProperties(i)
            major, minor = p["major"], p["minor"]
            lanes = 128 if (major, minor) in ((8, 6), (8, 7), (8, 9)) else _SM_CORES.get(major, 64)
            ghz = p["clockRate"] / 1e6
            f32 = p["multiProcessorCount"] * lanes * 2 * ghz
            out.append({"device": p["name"].decode(), "float32": f32})
        return out
    except Exception:  # no driver or no device: no GPU peak
        return []


@functools.lru_cache(maxsize=1)
def peak() -> dict[str, Any] | None:
    """This machine's peak GFLOP/s (float32, float64, bf16 where supported, 'gpu'), measured once
    a process; None when it cannot be measured (no Numba)."""
    return peak_sample()


def peak_sample() -> dict[str, Any] | None:
    """A fresh measurement of peak() (under load, take the best of several)."""
    fma = measure_fma()
    if fma is None:
        return None
    out = peak_from(fma, physical_cores(), cpu_flags())
    gpus = gpu_peaks()
    if gpus:
        out["gpu"] = gpus
    return out


def summary() -> dict[str, Any]:
    """CPU, BLAS and peak facts for `deepcore info` and benchmark records."""
    return {
        "cpu": cpu_model(),
        "cpu_level": cpu_level(cpu_flags()),
        "cores": physical_cores(),
        "blas": blas_libraries(),
        "blas_env": blas_env(),
        "blas_warnings": blas_warnings(),
        "peak_gflops": peak(),
    }
