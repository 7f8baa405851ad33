"""Every CUDA module through the REAL NVRTC, as CuPy's RawModule would compile it (no GPU needed).

The inputs are captured from the backend itself: CupyBackend runs on the CuPy test double, which
records each `RawModule(code=, options=, name_expressions=)` it is asked for (one per source and
dtype). Each is then compiled for sm_75, sm_80 and sm_90 by libnvrtc from pip's CUDA wheels
(the dev extra), with the options CuPy 14.2 adds (kernels/cuda/nvrtc.py: -ftz=true, the include
paths, -arch=sm_XY, --device-as-default-execution-space), and every name expression must lower
to its kernel. Warnings fail. These tests must run, not skip, where the dev extra installs NVRTC
(Linux x86-64 and aarch64).

CuPy itself is not installed here: its include directory is a stand-in with CuPy's layout (the
kernels include no header, so only the option text matters); the CUDA headers are real.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cupy_double
import pytest
from deepcore.kernels.cuda import NVRTC_OPTIONS, SOURCES, nvrtc, source
from deepcore.kernels.cuda.spec import KERNELS, MANGLED, kernels_in

ARCHS = ("75", "80", "90")
WHEELS_HERE = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")


def _nvrtc_or_skip() -> None:
    """Where the dev extra installs NVRTC a missing one is a failure, elsewhere a skip."""
    try:
        nvrtc.library()
    except Exception as exc:
        if WHEELS_HERE:
            pytest.fail(f"NVRTC must be present here (pip install -e '.[dev]'): {exc}")
        pytest.skip(f"no NVRTC wheel for {sys.platform}/{platform.machine()}: {exc}")


@pytest.fixture(scope="module")
def requested() -> list[dict]:
    """The RawModules the backend asks CuPy for: every kernel, each of its dtypes."""
    with cupy_double.installed() as state:
        from deepcore.backends.cupy import CupyBackend

        b = CupyBackend(0)
        for name, k in KERNELS.items():
            for dtype in k.dtypes:
                b._kernel(name, dtype)
        return list(state.modules)


@pytest.fixture(scope="module")
def cupy_include(tmp_path_factory: pytest.TempPathFactory) -> Path:
    inc = tmp_path_factory.mktemp("cupy") / "_core" / "include"
    for d in ("cub", "thrust", "libcudacxx"):
        (inc / "cupy" / "_cccl" / d).mkdir(parents=True)
    return inc


@pytest.fixture(scope="module")
def compiled(requested: list[dict], cupy_include: Path) -> dict:
    """(arch, first name expression) -> Compiled or the exception, compiled in parallel."""
    _nvrtc_or_skip()
    jobs = [(arch, m) for arch in ARCHS for m in requested]

    def run(job):
        arch, m = job
        opts = nvrtc.cupy_options(m["options"], arch, cupy_include, nvrtc.cuda_headers())
        try:
            return nvrtc.compile(m["code"], opts, m["names"])
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(run, jobs))
    return {(arch, m["names"][0]): r for (arch, m), r in zip(jobs, results, strict=True)}


#: (source, dtype) of every module: float32 and float64, or bf16 and half for half.cu.
MODULES = [(s, dt) for s in SOURCES for dt in kernels_in(s)[0].dtypes]


def test_nvrtc_the_backend_asks_for_one_module_per_source_and_dtype(requested):
    got = set()
    for m in requested:
        src = next(s for s in SOURCES if source(s) == m["code"])
        first = kernels_in(src)[0]
        dt = next(d for d in first.dtypes if m["names"][0] == first.name_expression(d))
        assert m["names"] == tuple(k.name_expression(dt) for k in kernels_in(src))
        assert m["options"] == NVRTC_OPTIONS
        assert '#include "' not in m["code"]  # CUDA's own headers (<cuda_fp16.h>) are allowed
        got.add((src, dt))
    assert got == set(MODULES) and len(requested) == len(MODULES)
    assert {"bfloat16", "float16"} <= {dt for _, dt in got}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("src", "dtype"), MODULES)
def test_nvrtc_compiles_every_module(compiled, arch, src, dtype):
    names = tuple(k.name_expression(dtype) for k in kernels_in(src))
    result = compiled[(arch, names[0])]
    if isinstance(result, Exception):
        raise result
    assert result.cubin[:4] == b"\x7fELF", "NVRTC should emit a cubin for sm_XY, as under CuPy"
    assert result.log == "", f"NVRTC warned:\n{result.log}"
    c = MANGLED[dtype]
    for expr in names:
        kernel = expr.split("<")[0]
        assert result.lowered[expr].startswith(f"_Z{len(kernel)}{kernel}I{c}E"), (
            expr,
            result.lowered[expr],
        )


def test_nvrtc_gets_cupys_options(cupy_include):
    _nvrtc_or_skip()
    opts = nvrtc.cupy_options(NVRTC_OPTIONS, "80", cupy_include, nvrtc.cuda_headers())
    assert opts.count("--std=c++17") == 1 and opts.count("-ftz=true") == 1
    assert opts[-2:] == ("-arch=sm_80", "--device-as-default-execution-space")
    includes = [o[2:] for o in opts if o.startswith("-I")]
    assert includes[:3] == [
        f"{cupy_include}/cupy/_cccl/{d}" for d in ("cub", "thrust", "libcudacxx")
    ]
    assert includes[3] == str(cupy_include) and (Path(includes[4]) / "cuda_runtime.h").is_file()
    # with no standard given, CuPy adds C++17 itself
    assert "--std=c++17" in nvrtc.cupy_options((), "80", cupy_include, "/x")
    assert int(ARCHS[-1]) in nvrtc.supported_archs()


def test_nvrtc_reports_a_broken_kernel_with_its_log(cupy_include):
    """The harness can fail: a type error is an NvrtcError carrying NVRTC's message."""
    _nvrtc_or_skip()
    bad = source("elementwise.cu").replace("T v = z[i];", "T v = z;")
    opts = nvrtc.cupy_options(NVRTC_OPTIONS, "75", cupy_include, nvrtc.cuda_headers())
    with pytest.raises(nvrtc.NvrtcError, match=r"(?s)COMPILATION.*error"):
        nvrtc.compile(bad, opts, ("dc_bias_act<float>",))


def test_nvrtc_ftz_changes_the_float32_code(cupy_include):
    """-ftz=true reaches NVRTC: the float32 cubin differs from one built without it."""
    _nvrtc_or_skip()
    opts = nvrtc.cupy_options(NVRTC_OPTIONS, "80", cupy_include, nvrtc.cuda_headers())
    names = ("dc_bias_act<float>", "dc_act_backward<float>")
    with_ftz = nvrtc.compile(source("elementwise.cu"), opts, names).cubin
    no_ftz = tuple(o for o in opts if o != "-ftz=true")
    assert nvrtc.compile(source("elementwise.cu"), no_ftz, names).cubin != with_ftz


def test_extras_bring_cupys_cuda_libraries_and_ci_brings_nvrtc():
    import tomllib

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    assert any(re.match(r"cupy-cuda12x\[ctk\]", d) for d in extras["cuda12"])
    assert any(re.match(r"cupy-cuda13x\[ctk\]", d) for d in extras["cuda13"])
    assert any("nvrtc" in d for d in extras["dev"]) and any("cudart" in d for d in extras["dev"])
