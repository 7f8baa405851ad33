"""deepcore.selftest: the numpy backend against itself, the CuPy backend through the TEST DOUBLE
(tests/cupy_double.py; host-compiled kernels, no GPU), and the 'cupy unavailable' answer."""

from __future__ import annotations

import cupy_double
import pytest
from deepcore.kernels.cuda import host

from deepcore.selftest import run_selftest


def test_numpy_against_itself_passes_and_prints_one_line_per_check(capsys):
    assert run_selftest("numpy", steps=5, timings=False)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip().startswith(("ok", "FAIL"))]
    assert len(lines) > 40 and all(line.strip().startswith("ok") for line in lines)
    assert "max_abs=" in out and "tol=" in out and "training 5 steps" in out
    assert "all checks passed" in out


def test_unavailable_cupy_returns_false_and_says_why(capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cupy", None)  # as if cupy were not installed
    from deepcore import backends

    monkeypatch.setattr(backends, "_instances", {})
    assert run_selftest("cupy") is False
    assert "not installed" in capsys.readouterr().out


@pytest.mark.skipif(not host.available()[0], reason="the double runs host-compiled kernels")
@pytest.mark.parametrize("variant", host.VARIANTS)
def test_cupy_backend_through_the_double_passes(capsys, variant):
    """selftest's tolerances hold for both host builds: as written and with a GPU's FMA/FTZ."""
    if variant == "gpu" and not host.fma_available()[0]:
        pytest.skip(host.fma_available()[1])
    with cupy_double.installed(variant=variant) as state:
        from deepcore.backends.cupy import CupyBackend

        assert run_selftest(CupyBackend(0), steps=5, timings=False)
        assert state.launches, "the self-test must exercise the kernels"
    out = capsys.readouterr().out
    assert "Double GPU" in out and "FAIL" not in out


def test_a_wrong_kernel_is_caught(capsys):
    from deepcore.backends.numpy import NumpyBackend

    class Broken(NumpyBackend):
        name = "broken"

        def softmax(self, x, out=None):
            return super().softmax(x * 1.01, out=out)

    assert run_selftest(Broken(), steps=2, timings=False) is False
    out = capsys.readouterr().out
    assert "FAIL" in out and "SOME CHECKS FAILED" in out
