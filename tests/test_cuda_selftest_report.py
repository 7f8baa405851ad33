"""`deepcore selftest`: the best available backend by default, the JSON report (errors against
NumPy, tolerances, timings against BENCHMARKS.md's goals) and its command-line errors. Timings run
at toy sizes here; the numbers are never asserted (the machine is shared), only their presence."""

from __future__ import annotations

import json

import cupy_double
import pytest
from deepcore.kernels.cuda import host

from deepcore import selftest_speed
from deepcore.cli import main
from deepcore.selftest import run_selftest

TOY = {"small": ((6, 8, 3), 4), "mnist": ((7, 9, 9, 3), 5), "wide": ((8, 16, 16, 8), 6)}


@pytest.fixture
def toy_sizes(monkeypatch):
    monkeypatch.setattr(selftest_speed, "WORKLOADS", TOY)
    monkeypatch.setattr(selftest_speed, "GEMM_SIZES", {"cpu": (32,), "gpu": (32, 48)})


def test_workloads_are_benchmarks_defaults():
    workloads = pytest.importorskip("deepcore.bench.workloads").WORKLOADS
    for name, (sizes, batch) in selftest_speed.WORKLOADS.items():
        assert (tuple(workloads[name].sizes), workloads[name].batch) == (sizes, batch), name


def test_json_report_has_every_error_tolerance_and_timing(tmp_path, toy_sizes):
    path = tmp_path / "report.json"
    assert run_selftest("numpy", verbose=False, steps=3, json_path=path)
    r = json.loads(path.read_text())
    assert r["passed"] is True and r["backend"] == "numpy" and r["reference"] == "numpy"
    assert len(r["checks"]) > 40
    for c in r["checks"]:
        assert {"name", "dtype", "max_abs", "max_rel", "rtol", "atol", "passed"} <= set(c)
        assert c["max_abs"] <= c["atol"] * 10 and c["rtol"] > 0
    assert [t["dtype"] for t in r["training"]] == ["float32", "float64"]
    t = r["timings"]
    assert [g["n"] for g in t["gemm"]] == [32] and t["gemm_best_gflops"] > 0
    assert [s["workload"] for s in t["steps"]] == list(TOY)
    for s in t["steps"]:
        assert s["seconds_per_step"] > 0 and s["gflops"] > 0 and s["percent_of_gemm"] > 0
    assert t["goals"] and all(g["met"] is None for g in t["goals"])  # CPU: deepcore bench


@pytest.mark.skipif(not host.available()[0], reason="the double runs host-compiled kernels")
def test_gpu_goals_are_read_from_the_cupy_timings(toy_sizes, capsys):
    """Through the CuPy double (not a GPU): the goals BENCHMARKS.md sets for CuPy are each
    answered (wide as a share of the best GEMM; PyTorch CUDA 'not measured' without it)."""
    with cupy_double.installed():
        from deepcore.backends.cupy import CupyBackend

        t = selftest_speed.measure(CupyBackend(0), budget=0.05)
    assert [g["n"] for g in t["gemm"]] == [32, 48]
    goals = {g["goal"]: g for g in t["goals"]}
    wide = goals["CuPy: wide >= 70% of cuBLAS sgemm"]
    assert isinstance(wide["met"], bool) and wide["measured"] > 0
    for name in ("mnist", "wide"):
        g = goals[f"CuPy: {name} >= 0.9x PyTorch CUDA"]
        assert g["met"] is None and "not installed" in g["note"]
    assert "goal CuPy: wide >= 70% of cuBLAS sgemm" in capsys.readouterr().out


def test_no_arguments_tests_the_best_available_backend(monkeypatch, capsys):
    from deepcore import backends

    seen = []
    monkeypatch.setattr(backends, "_resolve_auto", lambda: seen.append(1) or "numpy")
    monkeypatch.setattr(backends, "_instances", {})
    assert main(["selftest", "--no-timings"]) == 0
    out = capsys.readouterr().out
    assert seen and "selftest: numpy against numpy" in out and "all checks passed" in out


def test_cli_writes_the_report(tmp_path, toy_sizes, capsys):
    path = tmp_path / "r.json"
    assert main(["selftest", "--backend", "numpy", "--json", str(path)]) == 0
    assert json.loads(path.read_text())["timings"]["steps"]
    assert f"report written to {path}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--backend", "tpu"], "unknown backend 'tpu'"),
        (["--backend", "cupy:x"], "bad backend 'cupy:x'"),
        (["--json", "/no/such/dir/r.json"], "--json /no/such/dir/r.json: no such directory"),
        (["--json", "/"], "--json / is a directory"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2_before_any_work(argv, message, capsys):
    assert main(["selftest", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no check ran
    lines = captured.err.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("deepcore selftest: error:") and message in lines[0]
    )


def test_unavailable_backend_is_one_line_and_exit_2(monkeypatch, capsys):
    import sys

    from deepcore import backends

    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(backends, "_instances", {})
    assert main(["selftest", "--backend", "cupy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'cupy:0' is not available" in err[0] and "not installed" in err[0]
