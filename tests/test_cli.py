"""The `deepcore` command as a user meets it: defaults, JSON output, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import deepcore as dc
from deepcore.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deepcore.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_train_defaults_reach_97_percent_on_digits(tmp_path):
    """The issue's bar: the default run reaches >= 97% held-out accuracy on the digits."""
    out = tmp_path / "metrics.json"
    assert main(["train", "--backend", "numpy", "--quiet", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["test_accuracy"] >= 0.97
    for key in ("test_accuracy", "test_loss", "epochs", "backend", "train_seconds"):
        assert key in metrics
    assert metrics["samples_per_second"] > 0
    assert metrics["epochs"] == 40
    assert metrics["backend"] == "numpy"


def test_train_prints_progress_and_result(tmp_path):
    proc = run_cli("train", "--backend", "numpy", "--epochs", "2", "--dataset", "moons")
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/2" in proc.stderr and "epoch 2/2" in proc.stderr
    assert "test accuracy" in proc.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--epochs", "x"], "--epochs"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--lr", "-1"], "--lr"),
        (["train", "--hidden", "12,a"], "--hidden"),
        (["train", "--dataset", "imagenet"], "--dataset"),
        (["train", "--backend", "tensorflow"], "unknown backend 'tensorflow'"),
        (["train", "--dataset", "csv"], "--path"),
        (["train", "--dataset", "mnist"], "--data-dir"),
        (["train", "--dataset", "csv", "--path", "/nonexistent/x.csv"], "x.csv"),
        (["train", "--dropout", "1.5"], "--dropout"),
    ],
)
def test_bad_arguments_give_one_clear_line(args, needle):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 15  # argparse's usage + one line


def test_mnist_dir_without_files_names_them(tmp_path):
    proc = run_cli("train", "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "train-images-idx3-ubyte" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_csv_training_with_string_labels(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    labels = np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")
    path = tmp_path / "d.csv"
    lines = ["a,b,c,target"] + [f"{r[0]},{r[1]},{r[2]},{t}" for r, t in zip(X, labels, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "m.json"
    code = main(
        ["train", "--backend", "numpy", "--dataset", "csv", "--path", str(path), "--label",
         "target", "--epochs", "30", "--quiet", "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    assert json.loads(out.read_text())["test_accuracy"] > 0.8


def test_no_arguments_prints_help():
    proc = run_cli()
    assert proc.returncode == 0
    assert "train" in proc.stdout and "bench" in proc.stdout


def test_info_lists_every_backend_with_reason():
    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    for name in ("numpy", "numba", "cupy"):
        assert name in proc.stdout
    assert "blas" in proc.stdout
    if dc.available_backends()["numba"]:  # the GEMM setting and the vector width, a line each
        assert "\n  gemm: auto" in proc.stdout and "\n  simd: " in proc.stdout


def test_save_then_resume_equals_one_straight_run(tmp_path):
    """`--save` then `--resume` up to the same total gives the straight run's result exactly."""
    ckpt, a, b = tmp_path / "run.safetensors", tmp_path / "a.json", tmp_path / "b.json"
    common = ["train", "--backend", "numpy", "--quiet", "--schedule", "none", "--dropout", "0.1"]
    assert main([*common, "--epochs", "4", "--json", str(a)]) == 0
    assert main([*common, "--epochs", "2", "--save", str(ckpt)]) == 0
    assert main([*common, "--epochs", "4", "--resume", str(ckpt), "--json", str(b)]) == 0
    straight, resumed = json.loads(a.read_text()), json.loads(b.read_text())
    assert resumed["epochs"] == straight["epochs"] == 4
    assert resumed["test_loss"] == straight["test_loss"]  # bitwise: same backend, same seed


def test_resume_from_a_broken_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    proc = run_cli("train", "--backend", "numpy", "--resume", str(bad))
    assert proc.returncode == 2
    assert "bad.safetensors" in proc.stderr and "Traceback" not in proc.stderr
