"""CUDA C sources for the CuPy backend, plus the host-emulation shim used in tests.

`source(name)` returns a .cu file with its local `#include "x.cuh"` lines inlined, which is what
`cupy.RawModule` compiles (inlining keeps CuPy's kernel cache keyed on the full text).
`geometry` chooses launch sizes; `spec` lists every kernel's signature.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

#: The directory holding the .cu / .cuh / .h files (shipped as package data).
SOURCE_DIR = Path(__file__).resolve().parent
#: Every kernel source compiled into the backend.
SOURCES = ("elementwise.cu", "reduce.cu", "losses.cu", "optim.cu", "half.cu")
#: What the backend passes to `cupy.RawModule(options=...)`; CuPy adds its own (see nvrtc.py).
NVRTC_OPTIONS: tuple[str, ...] = ("--std=c++17",)

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


@cache
def source(name: str) -> str:
    """The text of `name` with local includes inlined once each (they use #pragma once)."""
    seen: set[str] = set()

    def expand(fname: str) -> str:
        if fname in seen:
            return ""
        seen.add(fname)
        text = (SOURCE_DIR / fname).read_text()
        if fname == "emulate.h":  # host only: never sent to NVRTC
            return ""
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text).replace("#pragma once", "")

    return expand(name)
