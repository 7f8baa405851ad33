"""Every CUDA source compiles with nvcc for the architectures we target (no GPU needed).

Runs when nvcc is on PATH, else skips with the reason. CUDA 13's nvcc dropped sm_70 (Volta):
on such a toolkit the sm_70 case is skipped saying so, and sm_75 (the lowest it supports) is
compiled in its place. Warnings are errors. Also checks the inlined text handed to NVRTC
(through cupy.RawModule) compiles and defines every kernel of the signature table for both dtypes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
from deepcore.kernels.cuda import SOURCE_DIR, SOURCES, source
from deepcore.kernels.cuda.spec import KERNELS, MANGLED

NVCC = shutil.which("nvcc")
TARGETS = ("sm_70", "sm_75", "sm_80", "sm_90")
FLAGS = ("-std=c++17", "-Werror", "all-warnings", f"-I{SOURCE_DIR}")

pytestmark = pytest.mark.skipif(
    NVCC is None, reason="nvcc not found on PATH: CUDA compile check skipped"
)


@cache
def supported_archs() -> tuple[str, ...]:
    out = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True, check=True)
    return tuple(a.replace("compute_", "sm_") for a in out.stdout.split())


def nvcc_version() -> str:
    out = subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+)", out)
    return m.group(1) if m else "unknown"


def compile_all(arch: str, out_dir: Path, mode: str = "--cubin") -> None:
    """Compile every source for `arch` in parallel; fail with nvcc's messages."""
    procs = []
    for name in SOURCES:
        target = out_dir / f"{name}.{arch}.{mode.strip('-')}"
        cmd = [NVCC, f"-arch={arch}", mode, *FLAGS, str(SOURCE_DIR / name), "-o", str(target)]
        procs.append(
            (
                name,
                subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
            )
        )
    failures = []
    for name, p in procs:
        output, _ = p.communicate(timeout=170)
        if p.returncode != 0:
            failures.append(f"{name} for {arch}:\n{output}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("arch", TARGETS)
def test_sources_compile_for_arch(arch: str, tmp_path: Path) -> None:
    if arch not in supported_archs():
        lowest = min(supported_archs(), key=lambda a: int(a[3:]))
        pytest.skip(
            f"nvcc {nvcc_version()} does not support {arch} (CUDA 13 dropped Volta); "
            f"its lowest target {lowest} is compiled instead"
        )
    compile_all(arch, tmp_path)


def test_lowest_supported_arch_is_among_targets() -> None:
    """When a target is dropped, the lowest arch the toolkit still has is compiled instead."""
    lowest = min(supported_archs(), key=lambda a: int(a[3:]))
    assert lowest in TARGETS, f"add {lowest} to TARGETS: it is nvcc's lowest architecture now"


def test_nvrtc_text_compiles_and_defines_every_kernel(tmp_path: Path) -> None:
    """The inlined sources (what RawModule hands NVRTC) compile and export the instantiations of
    every kernel in the signature table (float and double; the 16-bit ones bf16 and half)."""
    arch = min((a for a in supported_archs() if int(a[3:]) >= 75), key=lambda a: int(a[3:]))
    ptx = []
    for name in SOURCES:
        text = source(name)
        assert '#include "' not in text, f"{name}: NVRTC has no include path for this file"
        src = tmp_path / name
        src.write_text(text)
        out = tmp_path / f"{name}.ptx"
        cmd = [NVCC, f"-arch={arch}", "--ptx", *FLAGS[:3], str(src), "-o", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        ptx.append(out.read_text())
    entries = "\n".join(line for text in ptx for line in text.splitlines() if ".entry" in line)
    for k in KERNELS.values():
        for dt in k.dtypes:  # Itanium mangling of name<float>, name<__half>, ...
            c = MANGLED[dt]
            assert f"{len(k.name)}{k.name}I{c}E" in entries, f"{k.name}<{c}> missing from PTX"
