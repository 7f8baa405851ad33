"""deepcore.machine: CPU features, each BLAS's kernels, the warning for a BLAS held to older
kernels, the peak estimate, and the GEMM-choice key that follows the BLAS kernels."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deepcore import machine

ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9B45
siblings\t: 4
cpu cores\t: 2
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_bf16
"""
HASWELL = "model name\t: Intel(R) Xeon(R) CPU E5-2680 v3\nflags\t: sse sse2 avx avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 atomics\nCPU part\t: 0xd0c\n"
#: What threadpoolctl.threadpool_info() returns (one OpenBLAS forced to Haswell, one MKL, OpenMP).
POOLS = [
    {"user_api": "blas", "internal_api": "openblas", "num_threads": 2, "prefix": "libopenblas",
     "filepath": "/x/numpy.libs/libscipy_openblas64_.so", "version": "0.3.31",
     "threading_layer": "pthreads", "architecture": "Haswell"},
    {"user_api": "blas", "internal_api": "mkl", "num_threads": 2, "prefix": "libmkl_rt",
     "filepath": "/x/libmkl_rt.so.2", "version": "2025.0", "threading_layer": "gnu"},
    {"user_api": "openmp", "internal_api": "openmp", "num_threads": 2, "prefix": "libgomp",
     "filepath": "/x/libgomp.so.1", "version": None},
]  # fmt: skip


def test_cpu_facts_from_cpuinfo():
    assert machine.cpu_model(ZEN5) == "AMD EPYC 9B45"
    flags = machine.cpu_flags(ZEN5)
    assert "avx512_bf16" in flags and machine.cpu_level(flags) == "avx512"
    assert machine.cpu_level(machine.cpu_flags(HASWELL)) == "avx2"
    assert machine.cpu_level(machine.cpu_flags(ARM)) is None  # ARM: not judged
    assert "asimd" in machine.cpu_flags(ARM)
    assert machine.cpu_level({"avx512f", "avx2", "fma"}) == "avx2"  # no BW/VL/DQ: not SkylakeX


def test_physical_cores_count_smt_siblings_once(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    assert machine.physical_cores(ZEN5) == 2  # 4 siblings on 2 cores
    assert machine.physical_cores(HASWELL) == 4  # no sibling fields: every CPU counts


@pytest.mark.parametrize(
    ("env", "flags", "warns"),
    [
        (
            {"OPENBLAS_CORETYPE": "Haswell"},
            ZEN5,
            "OPENBLAS_CORETYPE=Haswell holds OpenBLAS to AVX2",
        ),
        ({"OPENBLAS_CORETYPE": "SkylakeX"}, ZEN5, None),
        ({"OPENBLAS_CORETYPE": "Haswell"}, HASWELL, None),  # what that CPU supports anyway
        ({"OPENBLAS_CORETYPE": "Sandybridge"}, HASWELL, "to AVX kernels on a CPU with AVX2"),
        ({"OPENBLAS_CORETYPE": "NEOVERSEN1"}, ARM, None),
        ({"OPENBLAS_CORETYPE": "someday"}, ZEN5, None),  # unknown names are not judged
        ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, ZEN5, "MKL_ENABLE_INSTRUCTIONS=AVX2 holds MKL"),
        ({"MKL_ENABLE_INSTRUCTIONS": "AVX512_E1"}, ZEN5, None),
        ({"MKL_DEBUG_CPU_TYPE": "5"}, ZEN5, "MKL_DEBUG_CPU_TYPE=5 holds MKL to AVX2"),
        ({"MKL_DEBUG_CPU_TYPE": "5"}, HASWELL, None),
        ({"OMP_NUM_THREADS": "1"}, ZEN5, None),
    ],
)
def test_blas_warning_when_a_variable_holds_kernels_back(env, flags, warns):
    got = machine.blas_warnings(machine.cpu_flags(flags), env)
    if warns is None:
        assert got == []
    else:
        (line,) = got
        assert warns in line and line.startswith("WARNING:") and "\n" not in line


def test_blas_libraries_from_threadpoolctl_output():
    libs = machine.blas_libraries(POOLS)
    assert [b["library"] for b in libs] == ["openblas", "mkl"]  # OpenMP is not a BLAS
    assert libs[0]["architecture"] == "Haswell" and libs[1]["architecture"] is None
    assert machine.describe_blas(libs[0]) == "openblas 0.3.31 Haswell kernels, 2 threads"
    assert machine.describe_blas(libs[1]) == "mkl 2025.0, 2 threads"
    assert machine.numpy_blas(libs[::-1])["library"] == "openblas"  # not MKL, whatever the order


def test_blas_env_key_names_only_the_kernel_variables():
    env = {"OPENBLAS_CORETYPE": "Haswell", "MKL_DEBUG_CPU_TYPE": "5", "OPENBLAS_L2_SIZE": "1"}
    assert machine.blas_env_key(env) == "MKL_DEBUG_CPU_TYPE=5 OPENBLAS_CORETYPE=Haswell"
    assert machine.blas_env_key({}) == ""


def test_peak_from_a_measured_fma_rate():
    """2 cores x (1 vector FMA a cycle at 3 GHz) x 16 lanes x 2 = 192 GFLOP/s float32."""
    fma = {"fma_per_s": 3e9, "chain_per_s": 0.75e9, "lanes": 16.0}
    p = machine.peak_from(fma, 2, machine.cpu_flags(ZEN5))
    assert p["float32"] == pytest.approx(192.0) and p["float64"] == pytest.approx(96.0)
    assert p["clock_ghz"] == pytest.approx(3.0)  # 0.75e9 dependent FMAs x 4 cycles each
    assert p["bf16"] == pytest.approx(384.0)  # AVX512_BF16: two products a float32 lane
    assert "2 cores x 1.0 FMA/cycle x 16 lanes x 2 flops x 3.00 GHz" in p["formula"]
    assert "bf16" not in machine.peak_from(fma, 2, machine.cpu_flags(HASWELL))
    assert machine.peak_from(fma, 1, {"amx_bf16"})["bf16"] == pytest.approx(1024 * 3.0)
    # a measured vdpbf16ps rate replaces the 2x estimate: 2 cores x 0.5/cycle x 64 flops x 3 GHz
    p = machine.peak_from({**fma, "bf16_per_s": 1.5e9}, 2, machine.cpu_flags(ZEN5))
    assert p["bf16"] == pytest.approx(192.0)
    assert "2 cores x 0.50 vdpbf16ps/cycle x 32 pairs x 2 flops x 3.00 GHz" in p["bf16_formula"]


def test_measured_fma_rate_is_consistent():
    """Independent chains run at least as fast as one dependent chain (same FMA), and the
    clock they imply is a plausible CPU clock."""
    pytest.importorskip("numba")
    fma = machine.measure_fma(seconds=0.01, repeats=3)
    assert fma is not None and fma["lanes"] in (4.0, 8.0, 16.0)
    assert fma["fma_per_s"] > fma["chain_per_s"] > 0
    p = machine.peak_from(fma, 1, set())
    assert 0.2 < p["clock_ghz"] < 8.0
    if "bf16_per_s" in fma:  # no faster than two vdpbf16ps a cycle
        assert 0 < fma["bf16_per_s"] < 2.5 * p["clock_ghz"] * 1e9
    assert p["float32"] == pytest.approx(fma["fma_per_s"] * fma["lanes"] * 2 / 1e9)


def test_gemm_choice_key_follows_the_blas_kernel_variables(monkeypatch, tmp_path):
    """A choice measured under OPENBLAS_CORETYPE=Haswell is not reused under the detected
    kernels: the variable is part of the choice file's key."""
    pytest.importorskip("numba")
    from deepcore.backends.numba import gemm_choice
    from deepcore.backends.numba.backend import NumbaBackend

    keys = []
    monkeypatch.setenv("DEEPCORE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gemm_choice, "load", lambda path, key: keys.append(key))
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    assert NumbaBackend().gemm_choices("float32", measure=False) is None
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert NumbaBackend().gemm_choices("float32", measure=False) is None
    assert keys[0] != keys[1] and "OPENBLAS_CORETYPE=Haswell" in keys[1]
    lib = machine.numpy_blas()
    if lib and lib.get("architecture"):  # the running kernel is in the key too
        assert lib["architecture"] in keys[0]
    a = gemm_choice.machine_key("cpu", "k", "openblas 0.3 Haswell", 2, "float32", "v")
    b = gemm_choice.machine_key("cpu", "k", "openblas 0.3 SkylakeX", 2, "float32", "v")
    assert a != b


def test_backends_do_not_import_bench():
    """Issue 13 item 5: the numba backend takes its CPU facts from deepcore.machine."""
    pytest.importorskip("numba")
    code = (
        "import sys\n"
        "from deepcore.backends.numba.backend import NumbaBackend\n"
        "from deepcore.backends.numba import env\n"
        "be = NumbaBackend(); be.gemm_choices('float32', measure=False); be.info()\n"
        "env.openblas_runs_large_gemms('auto', 'numpy')\n"
        "assert 'deepcore.bench' not in sys.modules, 'deepcore.bench imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_info_names_a_forced_blas_kernel_and_warns():
    """`OPENBLAS_CORETYPE=Haswell deepcore info` names the kernel running and warns in one line
    on a CPU with more than AVX2."""
    lib = machine.numpy_blas()
    if not lib or lib["library"] != "openblas":
        pytest.skip("NumPy's BLAS here is not OpenBLAS")
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell"}
    out = subprocess.run([sys.executable, "-m", "deepcore.cli", "info"], env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "Haswell kernels" in out and "OPENBLAS_CORETYPE=Haswell" in out
    assert "`deepcore train` picks" in out
    assert "peak GFLOP/s: float32" in out or "peak: not measured" in out
    warned = [line for line in out.splitlines() if line.startswith("WARNING: OPENBLAS_CORETYPE")]
    above = machine.cpu_level(machine.cpu_flags()) == "avx512"
    assert len(warned) == (1 if above else 0)
