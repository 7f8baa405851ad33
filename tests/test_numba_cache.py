"""The Numba kernels' disk cache is dropped when any kernel source changes: Numba invalidates a
cached function only when its own file changes, so a caller cached with an old callee from
another file (a `git pull` of an editable install) would run stale code."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("numba")

from deepcore.kernels.numba import _config  # noqa: E402


def test_sources_digest_follows_every_source(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    d0 = _config.sources_digest(tmp_path)
    assert _config.sources_digest(tmp_path) == d0
    (tmp_path / "b.py").write_text("y = 3\n")  # one callee's file changes
    d1 = _config.sources_digest(tmp_path)
    assert d1 != d0
    (tmp_path / "notes.txt").write_text("not a source")
    assert _config.sources_digest(tmp_path) == d1


def test_stale_entries_are_dropped_once_per_new_digest(tmp_path: Path) -> None:
    names = [
        "bf16.gemm_block-216.py311.nbi",
        "bf16.gemm_block-216.py311.1.nbc",
        "simd.cpython-311.pyc",
    ]
    for n in names:
        (tmp_path / n).write_bytes(b"old")
    assert _config.drop_stale_entries(tmp_path, "d1") == 2  # no digest recorded: stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deepcore-kernels.digest", names[2]]
    (tmp_path / names[0]).write_bytes(b"new")  # compiled under d1
    assert _config.drop_stale_entries(tmp_path, "d1") == 0
    assert (tmp_path / names[0]).exists()
    assert _config.drop_stale_entries(tmp_path, "d2") == 1
    assert (tmp_path / "deepcore-kernels.digest").read_text() == "d2"


def test_the_kernel_cache_records_the_current_sources() -> None:
    if _config._cache is None:
        pytest.skip("no Numba cache here")
    stamp = _config._cache / "deepcore-kernels.digest"
    assert stamp.read_text() == _config.sources_digest()
