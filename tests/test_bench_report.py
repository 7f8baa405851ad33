"""`deepcore bench`'s reports without running a benchmark: --compare, the disturbed-window mark,
the table footer's BLAS and peak lines, the plot's title; the step profile script."""

from __future__ import annotations

import io

import pytest

from deepcore.bench import compare, report
from deepcore.bench.timing import disturbed


def _row(runner: str, rate: float, **kw: object) -> dict:
    base = {"runner": runner, "workload": "mnist", "sizes": [784, 512, 10], "batch": 128,
            "optimizer": "sgd", "dtype": "float32", "samples_per_s": rate}  # fmt: skip
    return {**base, **kw}


def test_compare_flags_rows_more_than_ten_percent_slower():
    old = {"rows": [_row("numpy", 1000.0), _row("numba", 1000.0), _row("gone", 5.0)],
           "gemm_gflops": {"cpu-float32": 200.0}}  # fmt: skip
    new = {"rows": [_row("numpy", 910.0), _row("numba", 899.0, disturbed=True),
                    _row("new", 1.0), _row("numpy", 10.0, dtype="float64")],
           "gemm_gflops": {"cpu-float32": 100.0}}  # fmt: skip
    got = {r["runner"]: r for r in compare.compare(new, old)}
    assert set(got) == {"numpy", "numba"}  # rows in both runs only, matched on every key field
    assert got["numpy"]["ratio"] == pytest.approx(0.91) and not got["numpy"]["slower"]
    assert got["numba"]["slower"] and got["numba"]["disturbed"]
    assert compare.gemm_ratio(new, old) == pytest.approx(0.5)
    new["compare"] = {"against": "old.json", "threshold": compare.SLOWER,
                      "gemm_ratio": 0.5, "rows": list(got.values())}  # fmt: skip
    out = io.StringIO()
    compare.render(new, out)
    text = out.getvalue()
    assert (
        "0.91x" in text
        and "0.90x" in text
        and "SLOWER" in text
        and "1 of 2 rows more than 10% slower" in text
    )
    assert "GEMM rate changed 0.50x" in text


def test_disturbed_window_marks_the_row():
    assert not disturbed([100, 110, 95], 100)
    assert disturbed([100, 40, 101], 100)  # a stall
    assert disturbed([100, 160, 101], 100)


def test_plot_title_names_machine_and_blas_kernels():
    result = {"machine": {"cpu": "AMD EPYC", "cores_usable": 2, "date": "2026-12-02",
                          "loadavg_1_5_15": [0.5, 0, 0],
                          "blas": [{"library": "openblas", "version": "0.3.31",
                                    "architecture": "Haswell"}],
                          "blas_env": {"OPENBLAS_CORETYPE": "Haswell"}}}  # fmt: skip
    title = report.plot_title(result)
    assert "AMD EPYC" in title and "openblas 0.3.31 Haswell" in title
    assert "OPENBLAS_CORETYPE=Haswell" in title and "load 0.5" in title


def test_footer_reports_blas_kernels_peak_and_warnings():
    result = {"rows": [], "gemm_gflops": {}, "gemm_size": 64,
              "peak_gflops": {"float32": 200.0, "float64": 100.0, "formula": "f"},
              "machine": {"blas": [{"library": "openblas", "version": "0.3.31",
                                    "architecture": "Haswell", "threads": 2}],
                          "blas_env": {"OPENBLAS_CORETYPE": "Haswell"},
                          "blas_warnings": ["WARNING: OPENBLAS_CORETYPE=Haswell"]}}  # fmt: skip
    notes = "\n".join(report.footnotes(result))
    assert "BLAS: openblas 0.3.31 Haswell kernels, 2 threads." in notes
    assert "float32 200 GFLOP/s" in notes and "OPENBLAS_CORETYPE=Haswell" in notes
    assert "\nWARNING: OPENBLAS_CORETYPE=Haswell" in notes


def test_report_main_prints_markdown_or_one_error_line(tmp_path, capsys):
    import json

    good = tmp_path / "bench.json"
    result = {"rows": [_row("numpy", 1000.0, status="ok")], "gemm_gflops": {}, "gemm_size": 64,
              "machine": {"blas": [], "blas_env": {}, "blas_warnings": []}}  # fmt: skip
    good.write_text(json.dumps(result))
    assert report.main([str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| backend | workload |") and "| numpy | mnist | sgd |" in out
    for bad, content in (("missing.json", None), ("text.json", "not json"), ("rows.json", "[1]")):
        path = tmp_path / bad
        if content is not None:
            path.write_text(content)
        assert report.main([str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"error: {path}: not a readable")


def test_relate_shares_and_the_loop_ratio():
    """% gemm against the fastest rate, % peak against the row's precision (bf16 autocast rows
    against the bf16 peak), `x loop` a backend over its own hand-written loop, anchors apart."""
    from deepcore.bench.suite import _relate

    sizes = [10, 20, 5]  # 325 parameters: GFLOP/s = 6 x 325 x samples/s / 1e9
    rows = [
        _row("numba", 1e6, sizes=sizes, kind="backend", status="ok"),
        _row("loop-numba", 5e5, sizes=sizes, kind="loop", status="ok"),
        _row("torch-cpu-bf16", 2e6, sizes=sizes, kind="anchor", status="ok"),
        _row("numpy", 1e6, sizes=sizes, kind="backend", status="FAILED"),
    ]
    peak = {"float32": 10.0, "float64": 5.0, "bf16": 20.0}
    _relate(rows, {"cpu-float32": 1.0, "cpu-float32-jit": 3.9, "cpu-float64": 9.0}, peak)
    numba, loop, bf16, failed = rows
    assert numba["gflops"] == pytest.approx(1.95)
    assert numba["gemm_share"] == pytest.approx(1.95 / 3.9)
    assert numba["peak_share"] == pytest.approx(0.195)
    assert bf16["peak_share"] == pytest.approx(3.9 / 20.0)
    assert numba["ratios"] == {"loop": pytest.approx(2.0), "torch-cpu-bf16": pytest.approx(0.5)}
    assert "loop" not in loop["ratios"] and failed["ratios"] == {}


def test_step_profile_splits_a_step(tmp_path, capsys):
    """benchmarks/step_profile.py: the step, its GEMMs alone and the layered phases, as a
    markdown table and JSON whose derived columns add up."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "step_profile.py"
    spec = importlib.util.spec_from_file_location("step_profile", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "p.json"
    argv = ["--backends", "numpy", "--workloads", "small", "--rounds", "2", "--seconds", "0.01"]
    assert mod.main([*argv, "--json", str(out)]) == 0
    assert "| backend | workload | step ms | GEMMs ms |" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())
    assert row["backend"] == "numpy" and row["samples"] >= 2
    assert row["gemm_ms"] == pytest.approx(row["gemm_fwd_ms"] + row["gemm_bwd_ms"])
    assert row["fwd_other_ms"] == pytest.approx(row["forward_ms"] - row["gemm_fwd_ms"])
    assert row["step_minus_gemm_ms"] == pytest.approx(row["step_ms"] - row["gemm_ms"])
    assert min(row[f"{p}_ms"] for p in mod.PHASES) > 0
