"""`deepcore.backends.cupy.probe` answers every availability question without raising.

Each branch is driven with monkeypatched fakes (the CuPy test double, tests/cupy_double.py, with
its runtime functions replaced), so this runs the same with or without CuPy or a GPU.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import subprocess
import sys

import cupy_double
import pytest

from deepcore.backends import cupy as cupy_backend


def test_importing_the_backend_module_does_not_import_cupy():
    code = "import deepcore, deepcore.backends.cupy, sys; assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cupy_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # find_spec -> None: "not installed"
    ok, reason = cupy_backend.probe()
    assert not ok and "not installed" in reason and "deepcore[cuda12]" in reason


class _BrokenCupyFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds a 'cupy' whose import fails, as a wheel for the wrong CUDA does."""

    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self) if name == "cupy" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError("libcudart.so.12: cannot open shared object file")


def test_cupy_fails_to_import(monkeypatch):
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenCupyFinder(), *sys.meta_path])
    ok, reason = cupy_backend.probe()
    assert not ok and "failed to import" in reason and "libcudart.so.12" in reason


def _raise(exc):
    def fn(*args, **kwargs):
        raise exc

    return fn


def test_no_device_visible_runtime_error():
    with cupy_double.installed():
        runtime = sys.modules["cupy.cuda.runtime"]
        runtime.getDeviceCount = _raise(runtime.CUDARuntimeError("cudaErrorNoDevice"))
        ok, reason = cupy_backend.probe()
    assert not ok and "no CUDA device visible" in reason and "cudaErrorNoDevice" in reason


def test_no_device_visible_zero_count():
    with cupy_double.installed(device_count=0):
        ok, reason = cupy_backend.probe()
    assert not ok and "no CUDA device visible" in reason


def test_device_index_out_of_range():
    with cupy_double.installed(device_count=2):
        assert cupy_backend.probe(1)[0]
        ok, reason = cupy_backend.probe(2)
    assert not ok and "device 2 does not exist" in reason and "0..1" in reason


def test_driver_too_old_for_the_runtime():
    with cupy_double.installed(driver_version=11080, runtime_version=12040):
        ok, reason = cupy_backend.probe()
    assert not ok and "driver supports CUDA 11.8" in reason and "12.4" in reason


def test_older_minor_driver_is_allowed_and_said():
    with cupy_double.installed(driver_version=12020, runtime_version=12040):
        ok, reason = cupy_backend.probe()
    assert ok and "minor-version compatibility" in reason


def test_device_that_fails_a_real_launch():
    with cupy_double.installed():
        sys.modules["cupy"].asarray = _raise(RuntimeError("cudaErrorDevicesUnavailable"))
        ok, reason = cupy_backend.probe()
    assert not ok and "smoke test" in reason and "cudaErrorDevicesUnavailable" in reason


def test_probe_never_raises():
    with cupy_double.installed():
        sys.modules["cupy.cuda.runtime"].getDeviceProperties = _raise(OSError("driver crashed"))
        ok, reason = cupy_backend.probe()
    assert not ok and "driver crashed" in reason


def test_success_names_device_capability_and_cuda():
    with cupy_double.installed(capability=(9, 0), runtime_version=13000, driver_version=13000):
        ok, reason = cupy_backend.probe(0)
    assert ok and reason == "Double GPU (test double, not a GPU), compute capability 9.0, CUDA 13.0"


def test_registry_reports_the_reason_when_cupy_is_unavailable():
    import deepcore as dc
    from deepcore.errors import BackendUnavailableError

    avail = dc.available_backends()["cupy"]
    if avail.available:
        pytest.skip("a working GPU is present")
    with pytest.raises(BackendUnavailableError, match=avail.reason[:20]):
        dc.get_backend("cupy")


NO_CUBLAS = 'ImportError: Failure finding "libcublasLt.so.12": not found'
NO_HEADERS = "RuntimeError: Failed to find CUDA headers. Please install CUDA toolkit headers"


@pytest.mark.parametrize(
    "broken,named,not_named",
    [
        ({"cublas": NO_CUBLAS}, ["cuBLAS: ImportError: Failure finding"], ["NVRTC"]),
        ({"nvrtc": NO_HEADERS}, ["NVRTC: RuntimeError: Failed to find CUDA headers"], ["cuBLAS"]),
        ({"cublas": NO_CUBLAS, "nvrtc": NO_HEADERS}, ["cuBLAS: ", "NVRTC: "], []),
    ],
)
def test_missing_cuda_libraries_are_each_named_before_available(broken, named, not_named):
    """cupy without [ctk]: the probe runs NVRTC and a cuBLAS GEMM before saying available, and
    names each missing piece on its own line, with the extra that brings them."""
    with cupy_double.installed(broken=broken):
        ok, reason = cupy_backend.probe()
    assert not ok
    head, *pieces = reason.splitlines()
    assert "deepcore[cuda12]" in head and "cupy-cuda12x[ctk]" in head and "Double GPU" in head
    assert len(pieces) == len(broken)
    for text in named:
        assert any(text in line for line in pieces), (text, pieces)
    for text in not_named:
        assert text not in "\n".join(pieces)


def test_get_backend_refuses_cleanly_instead_of_failing_inside(monkeypatch):
    """Before: probe said available, then CupyBackend() died importing cupy.cublas."""
    from deepcore import backends
    from deepcore.errors import BackendUnavailableError

    monkeypatch.setattr(backends, "_instances", {})
    with cupy_double.installed(broken={"cublas": NO_CUBLAS}):
        with pytest.raises(BackendUnavailableError, match="cuBLAS: ImportError"):
            backends.get_backend("cupy")
    assert "cupy:0" not in backends._instances


def test_the_probe_runs_deepcores_own_kernel_and_a_gemm():
    with cupy_double.installed() as state:
        ok, _ = cupy_backend.probe()
        assert ok
        assert [m["names"] for m in state.modules] == [
            ("dc_bias_act<float>", "dc_act_backward<float>")
        ]
        assert state.modules[0]["options"] == ("--std=c++17",)
        assert [name for name, *_ in state.launches] == ["dc_bias_act<float>"]
        assert len(state.gemm_math_modes) == 1


def test_info_names_each_missing_piece_on_its_own_line(capsys):
    from deepcore.cli import main

    with cupy_double.installed(broken={"cublas": NO_CUBLAS, "nvrtc": NO_HEADERS}):
        assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["cupy", "unavailable"])
    assert "deepcore[cuda12]" in lines[start]
    assert lines[start + 1].strip().startswith("NVRTC: RuntimeError: Failed to find CUDA headers")
    assert lines[start + 2].strip().startswith("cuBLAS: ImportError: Failure finding")
