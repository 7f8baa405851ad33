"""`deepcore bench`: a tiny run completes, reports what it promises, and a wrong backend FAILS."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import types

import numpy as np
import pytest

import deepcore.backends as registry
from deepcore import bench
from deepcore.backends.numpy import NumpyBackend
from deepcore.bench import report
from deepcore.bench.suite import gate_check, run_suite

TINY = ["--sizes", "12,16,4", "--batch", "8", "--budget", "0.03", "--windows", "2"]
FAST = [*TINY, "--gemm-size", "64", "--no-sklearn-compare", "--no-peak", "--quiet"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deepcore bench")
    bench.add_arguments(parser)
    return parser.parse_args(argv)


class WrongGemmBackend(NumpyBackend):
    """Fast but wrong: every GEMM is 1% too large."""

    name = "wrongnp"

    def gemm(self, a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
        return super().gemm(a, b, trans_a, trans_b, alpha * 1.01, beta, out)


@pytest.fixture
def wrong_backend(monkeypatch: pytest.MonkeyPatch):
    """Register WrongGemmBackend as 'wrongnp' for one test."""
    mod = types.ModuleType("deepcore_test_wrong_backend")
    mod.probe = lambda device=None: (True, "test fake")
    mod.BACKEND_CLASS = WrongGemmBackend
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(registry._MODULES, "wrongnp", mod.__name__)
    monkeypatch.setattr(registry, "BACKEND_NAMES", (*registry.BACKEND_NAMES, "wrongnp"))
    yield "wrongnp"
    registry._instances.pop("wrongnp", None)


def test_tiny_run_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.run(
        parse([*FAST, "--backend", "numpy", "--anchors", "numpy-loop", "--json", str(out)])
    )
    assert code == 0
    text = capsys.readouterr().out
    for col in (
        "backend",
        "workload",
        "optimizer",
        "dtype",
        "gate",
        "samples/s",
        "warm-up s",
        "GFLOP/s",
        "% gemm",
        "peak MB",
        "x numpy-loop",
    ):
        assert col in text
    data = json.loads(out.read_text())
    assert {"rows", "machine", "gemm_gflops", "config"} <= set(data)
    rows = data["rows"]
    assert {(r["runner"], r["optimizer"]) for r in rows} == {
        (n, o) for n in ("numpy", "numpy-loop") for o in ("sgd", "adam")
    }
    for r in rows:
        assert r["status"] == "ok" and r["samples_per_s"] > 0 and r["gflops"] > 0
        assert r["workload"] == "custom" and r["sizes"] == [12, 16, 4] and r["batch"] == 8
        assert len(r["losses"]) == 5 and r["mem_method"]
    numpy_row = next(r for r in rows if r["runner"] == "numpy")
    assert set(numpy_row["ratios"]) == {"numpy-loop"}
    machine = data["machine"]
    for key in ("cpu", "cores_logical", "threads", "versions", "date", "gpu"):
        assert key in machine
    assert machine["versions"]["numpy"] == np.__version__


def test_wrong_backend_fails_the_gate(wrong_backend, capsys):
    code = bench.run(
        parse(
            [
                *FAST,
                "--backend",
                f"numpy,{wrong_backend}",
                "--anchors",
                "none",
                "--optimizer",
                "sgd",
            ]
        )
    )
    assert code == 1
    headers, cells = report.table(
        run_suite(
            bench.config_from_args(
                parse([*FAST, "--backend", wrong_backend, "--anchors", "numpy-loop"])
            ),
            log=lambda s: None,
        )["rows"]
    )
    by_runner = {c[0]: dict(zip(headers, c, strict=True)) for c in cells}
    wrong = [v for k, v in by_runner.items() if k.startswith(wrong_backend)]
    assert wrong and all(v["gate"] == "FAILED" for v in wrong)
    assert all(v["GFLOP/s"] == "-" and v["x numpy-loop"] == "" for v in wrong)
    assert "FAILED" in capsys.readouterr().out


def test_anchors_pass_the_gate_when_installed():
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    cfg = bench.config_from_args(
        parse(
            [
                *FAST,
                "--backend",
                "numpy",
                "--optimizer",
                "sgd",
                "--dtype",
                "float32,float64",
                "--gate-steps",
                "3",
                "--anchors",
                "torch,torch-bf16,sklearn,numpy-loop,loop",  # jax: its own test below
            ]
        )
    )
    rows = run_suite(cfg, log=lambda s: None)["rows"]
    want = {"numpy", "torch-cpu", "torch-cpu-bf16", "sklearn", "numpy-loop", "loop-numpy"}
    assert {r["runner"] for r in rows} >= want
    assert all(r["status"] == "ok" for r in rows), [(r["runner"], r.get("gate_dev")) for r in rows]
    # bf16 autocast rows: float32 only, gated at bf16's tolerance, and not bit-equal to float32
    bf16 = [r for r in rows if r["runner"] == "torch-cpu-bf16"]
    assert [r["dtype"] for r in bf16] == ["float32"] and bf16[0]["gate_rtol"] == 3e-2
    assert bf16[0]["gate_dev"] > 1e-7


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workload", "huge"], "unknown workload 'huge'"),
        (["--backend", "numpyy"], "unknown backend 'numpyy'"),
        (["--dtype", "float16"], "unknown dtype 'float16'"),
        (["--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'"),
        (["--anchors", "mxnet"], "unknown anchor 'mxnet'"),
        (["--sizes", "10"], "at least two positive integers"),
        (["--sizes", "a,b"], "comma-separated integers"),
        (["--workload", "custom"], "needs --sizes"),
        (["--budget", "0"], "--budget must be positive"),
        (["--batch", "0"], "--batch must be a positive integer"),
    ],
)
def test_bad_arguments_are_clear(argv, message, capsys):
    assert bench.run(parse(argv)) == 2
    err = capsys.readouterr().err
    assert "deepcore bench: error:" in err and message in err


def test_unavailable_backend_says_why(monkeypatch):
    monkeypatch.setattr(registry, "_probe", lambda base, dev: (base == "numpy", "no such thing"))
    with pytest.raises(bench.BenchError, match="not available here: no such thing"):
        bench.config_from_args(parse(["--backend", "numba"]))


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "bench.png"
    code = bench.run(
        parse(
            [
                *FAST,
                "--backend",
                "numpy",
                "--anchors",
                "numpy-loop",
                "--optimizer",
                "adam",
                "--plot",
                str(png),
            ]
        )
    )
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_tolerances():
    ref = [2.30, 2.25, 2.20]
    assert gate_check([2.3001, 2.2501, 2.2001], ref, "float32")[0]
    assert not gate_check([2.31, 2.25, 2.20], ref, "float32")[0]
    assert not gate_check([2.3001, 2.25, 2.20], ref, "float64")[0]
    assert not gate_check([float("nan"), 2.25, 2.20], ref, "float32")[0]
    assert not gate_check(ref[:2], ref, "float32")[0]


def test_import_is_light():
    code = (
        "import sys, deepcore.bench\n"
        "heavy = ('torch', 'sklearn', 'matplotlib', 'rich', 'numba')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_remote_env_drops_only_what_deepcore_injected(monkeypatch):
    from deepcore.bench import remote

    fake = types.SimpleNamespace(INJECTED_ENV={"OMP_WAIT_POLICY": "passive"})
    monkeypatch.setitem(sys.modules, "deepcore.backends.numba.env", fake)
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    monkeypatch.setenv("DEEPCORE_SOMETHING", "kept")
    env = remote._child_env()
    assert "OMP_WAIT_POLICY" not in env and env["DEEPCORE_SOMETHING"] == "kept"
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")  # the user's own choice stays
    assert remote._child_env()["OMP_WAIT_POLICY"] == "active"


def test_remote_torch_runner_trains_like_the_in_process_one():
    """Same losses as TorchRunner in this process, a positive clocked window, a clean close."""
    pytest.importorskip("torch")
    from deepcore.bench.anchors import TorchRunner
    from deepcore.bench.remote import RemoteRunner
    from deepcore.bench.workloads import WORKLOADS, initial_state, make_batches

    w = WORKLOADS["small"]
    state = initial_state(w, "float32", 0)
    host = make_batches(w, "float32", 0)
    here = TorchRunner(w, "sgd", "float32", state, 0.01)
    there = RemoteRunner("torch", w, "sgd", "float32", state, 0.01, 1)
    try:
        assert there.name == "torch-cpu" and there.device == "cpu"
        b_here = [here.put(x, y) for x, y in host]
        b_there = [there.put(x, y) for x, y in host]
        want = [here.loss_step(b_here[i]) for i in range(3)]
        got = [there.loss_step(b_there[i]) for i in range(3)]
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert there.timed_window(3, 4) > 0.0
        assert there.peak_memory() >= 0
    finally:
        there.close()
    assert there._proc is None
    with pytest.raises(RuntimeError, match="closed"):
        there.loss_step(0)


def test_remote_worker_reports_errors():
    from deepcore.bench.remote import RemoteRunner
    from deepcore.bench.workloads import WORKLOADS, initial_state

    w = WORKLOADS["small"]
    with pytest.raises(RuntimeError, match="no remote runner for 'mxnet'"):
        RemoteRunner("mxnet", w, "sgd", "float32", initial_state(w, "float32", 0), 0.01, 1)


def test_bench_never_imports_torch_in_its_own_process():
    """PyTorch shares libgomp with Numba: importing it in the benchmark's process would fix the
    OpenMP wait policy before deepcore's Numba backend chose it (and vice versa)."""
    pytest.importorskip("torch")
    code = (
        "import sys, argparse\n"
        "from deepcore import bench\n"
        "from deepcore.bench.suite import run_suite\n"
        "p = argparse.ArgumentParser(); bench.add_arguments(p)\n"
        f"args = p.parse_args({[*FAST, '--backend', 'numpy', '--optimizer', 'sgd']!r}"
        " + ['--anchors', 'torch'])\n"
        "rows = run_suite(bench.config_from_args(args), log=lambda s: None)['rows']\n"
        "assert any(r['runner'] == 'torch-cpu' and r['status'] == 'ok' for r in rows), rows\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_gemm_share_uses_the_fastest_blas_measured():
    """With the numba backend on MKL the suite also measures MKL's matmul rate, and '% gemm'
    is against the faster of the two (the machine's rate), not NumPy's BLAS alone."""
    pytest.importorskip("numba")
    from deepcore.backends.numba import mkl as _mkl

    cfg = bench.config_from_args(
        parse([*FAST, "--backend", "numba", "--anchors", "none", "--optimizer", "sgd"])
    )
    data = run_suite(cfg, log=lambda s: None)
    gemm = data["gemm_gflops"]
    assert ("cpu-float32-mkl" in gemm) == (not isinstance(_mkl.load(), str))
    (row,) = data["rows"]
    assert row["gemm_share"] == pytest.approx(row["gflops"] / max(gemm.values()))


def test_compare_against_an_earlier_run(tmp_path, capsys):
    old = tmp_path / "old.json"
    argv = [*FAST, "--backend", "numpy", "--anchors", "none", "--optimizer", "sgd"]
    assert bench.run(parse([*argv, "--json", str(old)])) == 0
    capsys.readouterr()
    assert bench.run(parse([*argv, "--compare", str(old)])) == 0
    out = capsys.readouterr().out
    assert f"compared with {old}" in out and "of 1 rows more than 10% slower" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it"),
        ("{not json", "not JSON"),
        ('{"a": 1}', "not a `deepcore bench --json` file"),
    ],
)
def test_bad_compare_file_is_one_line_before_any_work(tmp_path, capsys, content, message):
    path = tmp_path / "old.json"
    if content is not None:
        path.write_text(content)
    assert bench.run(parse(["--compare", str(path), "--quiet"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--compare {path}: {message}" in err


def test_json_carries_blas_kernels_peak_and_shares(tmp_path):
    pytest.importorskip("numba")
    out = tmp_path / "b.json"
    argv = [a for a in FAST if a != "--no-peak"]
    code = bench.run(parse([*argv, "--backend", "numpy", "--anchors", "loop", "--optimizer",
                            "adam", "--json", str(out)]))  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    peak = data["peak_gflops"]
    assert peak["float32"] > 0 and peak["float64"] == pytest.approx(peak["float32"] / 2)
    assert len(data["peak_gflops_samples"]) == 2 and "formula" in peak
    m = data["machine"]
    assert {"blas", "blas_env", "blas_warnings", "cpu_level", "cores_physical"} <= set(m)
    assert all({"library", "version", "architecture", "threads"} <= set(b) for b in m["blas"])
    rows = {r["runner"]: r for r in data["rows"]}
    assert set(rows) == {"numpy", "loop-numpy"}
    for r in rows.values():
        assert r["peak_share"] == pytest.approx(r["gflops"] / peak["float32"])
        assert isinstance(r["disturbed"], bool)
    # the backend's row over its own hand-written loop; losses of the loop match the backend's
    assert rows["numpy"]["ratios"] == {
        "loop": pytest.approx(rows["numpy"]["samples_per_s"] / rows["loop-numpy"]["samples_per_s"])
    }
    assert rows["loop-numpy"]["status"] == "ok" and rows["loop-numpy"]["kind"] == "loop"


def test_loop_runner_trains_like_the_trainer():
    """The hand-written loop (public API) and Trainer.train_step give the same losses."""
    from deepcore.bench.runners import DeepcoreLoopRunner, DeepcoreRunner
    from deepcore.bench.workloads import WORKLOADS, initial_state, make_batches

    w = WORKLOADS["small"]
    state, host = initial_state(w, "float64", 0), make_batches(w, "float64", 0)
    losses = []
    for cls in (DeepcoreRunner, DeepcoreLoopRunner):
        r = cls("numpy", w, "adam", "float64", state, 1e-3)
        losses.append([r.loss_step(r.put(*host[i])) for i in range(4)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-12)
    assert losses[0][3] != losses[0][0]  # it trains


def test_jax_anchor_matches_the_numpy_backend():
    """JAX's jit step (optax, or the jax.numpy update) trains to the numpy backend's losses."""
    pytest.importorskip("jax")
    from deepcore.bench.remote import RemoteRunner
    from deepcore.bench.runners import DeepcoreRunner
    from deepcore.bench.workloads import WORKLOADS, initial_state, make_batches

    w = WORKLOADS["small"]
    for opt, lr in (("sgd", 0.01), ("adam", 1e-3)):
        state, host = initial_state(w, "float64", 0), make_batches(w, "float64", 0)
        ref = DeepcoreRunner("numpy", w, opt, "float64", state, lr)
        want = [ref.loss_step(ref.put(*host[i])) for i in range(4)]
        jx = RemoteRunner("jax", w, opt, "float64", state, lr, 1)
        try:
            assert jx.name == "jax" and jx.warmup() > 0
            batches = [jx.put(x, y) for x, y in host]
            got = [jx.loss_step(batches[i]) for i in range(4)]
            assert "jax" in jx.info()
        finally:
            jx.close()
        np.testing.assert_allclose(got, want, rtol=1e-9)


def test_anchors_none_runs_no_sklearn_comparison():
    assert bench.config_from_args(parse(["--anchors", "none"])).sklearn_compare is False
    assert bench.config_from_args(parse(["--anchors", "torch"])).sklearn_compare is False
    assert bench.config_from_args(parse([])).sklearn_compare is True


@pytest.mark.parametrize("backends", ["numpy,numba", "numba"])
def test_bf16_rows_are_gated_against_the_numpy_bf16_reference(backends):
    """--bf16 adds NAME-bf16 rows (float32 only) gated at float32's tolerance against the NumPy
    backend's bf16 losses, trained untimed when numpy is not in the run; they get an
    `x torch-cpu-bf16` ratio like any backend row."""
    pytest.importorskip("numba")
    pytest.importorskip("ml_dtypes")
    anchors = "torch-bf16" if importlib.util.find_spec("torch") else "none"
    argv = [*FAST, "--backend", backends, "--anchors", anchors, "--optimizer", "sgd", "--bf16"]
    rows = run_suite(bench.config_from_args(parse([*argv, "--dtype", "float32,float64"])),
                     log=lambda s: None)["rows"]  # fmt: skip
    bf16 = {
        r["runner"]: r for r in rows if r["runner"].endswith("-bf16") and r["kind"] == "backend"
    }
    want = {f"{b}-bf16" for b in backends.split(",")}
    assert set(bf16) == want and all(r["dtype"] == "float32" for r in bf16.values())
    assert all(r["status"] == "ok" for r in bf16.values()), {
        k: r["gate_dev"] for k, r in bf16.items()
    }
    f32 = next(r for r in rows if r["runner"] == "numba" and r["dtype"] == "float32")
    assert bf16["numba-bf16"]["losses"] != f32["losses"]  # bf16 really ran
    if anchors != "none":
        assert "torch-cpu-bf16" in bf16["numba-bf16"]["ratios"]
