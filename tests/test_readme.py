"""Every ```python block of the README runs as written, in a fresh interpreter, with the bundled
data (on the numpy backend: "numba" in a block is read as "numpy", so no compiling is needed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index: int, tmp_path: Path) -> None:
    code = BLOCKS[index].replace('"numba"', '"numpy"')
    if "deepcore.sklearn" in code:
        pytest.importorskip("sklearn")
    env = {**os.environ, "DEEPCORE_BACKEND": "numpy"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"README block {index}:\n{code}\n{proc.stderr[-3000:]}"
