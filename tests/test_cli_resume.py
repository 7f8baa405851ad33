"""`deepcore train` with --save/--resume as a user drives it: what is on disk is what is
reported, a resumed run re-plans its schedule and refuses conflicting flags, bad output paths and
mismatched checkpoints are refused before any training."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

import deepcore as dc
from deepcore import _atomic
from deepcore import _checkpoint_format as fmt
from deepcore.cli import main
from deepcore.cli_train import _warmup

_FAST = ["train", "--backend", "numpy", "--quiet", "--dataset", "moons", "--hidden", "8"]


def _run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main([*_FAST, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _epoch(path: Path) -> int:
    return json.loads(fmt.read_metadata(path)["epoch"])


# ------------------------------------------------------------------ item 7: Ctrl-C during a save
def test_ctrl_c_during_a_save_reports_what_is_on_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.safetensors"
    real, calls = _atomic._write_all, {"saves": 0}

    def interrupt_second_save(f, data) -> None:  # noqa: ANN001
        if len(data) and bytes(data[8:9]) == b"{":  # the header: a save begins
            calls["saves"] += 1
        if calls["saves"] == 2:
            real(f, data[: len(data) // 2])
            raise KeyboardInterrupt
        real(f, data)

    monkeypatch.setattr(_atomic, "_write_all", interrupt_second_save)
    code, _, err = _run(capsys, "--epochs", "5", "--save", str(path))
    assert code == 130
    assert f"interrupted; {path} holds epoch 1" in err, err
    assert _epoch(path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["run.safetensors"]


# ------------------------------------------------------------------ item 8: resume and schedule
def _lrs(path: Path) -> list[float]:
    trainer = json.loads(fmt.read_metadata(path)["trainer"])
    return [r["lr"] for r in trainer["history"]]


def test_resume_replans_the_schedule_over_the_new_total(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, straight = tmp_path / "a.safetensors", tmp_path / "s.safetensors"
    assert _run(capsys, "--epochs", "6", "--save", str(straight))[0] == 0
    assert _run(capsys, "--epochs", "3", "--save", str(a))[0] == 0
    code, out, err = _run(capsys, "--epochs", "6", "--resume", str(a))
    assert code == 0, err
    assert "schedule: cosine re-planned over 6 epochs (was 3)" in err
    assert f"saving to {a}, the resumed file" in err  # --resume without --save keeps saving
    assert "epochs 4-6 in" in out and "6 epochs in" not in out  # item 16: the epochs it ran
    assert _epoch(a) == 6
    resumed = _lrs(a)
    assert resumed[2] == 0.0  # the 3-epoch plan had reached 0 ...
    assert resumed[3:] == pytest.approx(_lrs(straight)[3:], rel=1e-12)  # ... then a 6-epoch one
    assert resumed[3] > 0


def test_resume_after_the_plan_ended_does_not_restart_at_lr_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a = tmp_path / "a.safetensors"
    assert _run(capsys, "--epochs", "4", "--save", str(a))[0] == 0
    assert _run(capsys, "--epochs", "6", "--resume", str(a))[0] == 0
    assert all(lr > 0 for lr in _lrs(a)[4:5])


def test_resume_refuses_conflicting_flags_and_accepts_agreeing_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a = tmp_path / "a.safetensors"
    assert _run(capsys, "--epochs", "2", "--save", str(a), "--lr", "0.002")[0] == 0
    before = a.read_bytes()
    for flags, named in [
        (["--hidden", "16"], "--hidden 16"),
        (["--optimizer", "sgd"], "--optimizer sgd"),
        (["--lr", "0.01"], "--lr 0.01"),
        (["--dtype", "float64"], "--dtype float64"),
        (["--activation", "tanh"], "--activation tanh"),
        (["--batch-size", "7"], "--batch-size 7"),
        (["--seed", "3"], "--seed 3"),
    ]:
        code, _, err = (
            main([*_FAST, "--epochs", "4", "--resume", str(a), *flags]),
            *(lambda o: (o.out, o.err))(capsys.readouterr()),
        )
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and named in lines[0] and str(a) in lines[0], err
    assert a.read_bytes() == before
    code, _, err = _run(capsys, "--epochs", "3", "--resume", str(a), "--lr", "0.002",
                        "--hidden", "8", "--dtype", "float32")  # fmt: skip
    assert code == 0, err
    assert "taken from it" in err


def test_resume_to_fewer_epochs_than_saved_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a = tmp_path / "a.safetensors"
    assert _run(capsys, "--epochs", "3", "--save", str(a))[0] == 0
    code, _, err = _run(capsys, "--epochs", "2", "--resume", str(a))
    assert code == 2 and "already has 3" in err


# ------------------------------------------------------------------ item 9: another architecture
def test_checkpoint_of_another_dataset_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    moons = tmp_path / "moons.safetensors"
    assert _run(capsys, "--epochs", "1", "--save", str(moons))[0] == 0
    code = main(["train", "--backend", "numpy", "--quiet", "--resume", str(moons)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(moons) in err and "2 features" in err and "64 features" in err, err
    assert "Traceback" not in err and "epoch 1/" not in err


# ------------------------------------------------------------------ item 12: output paths
@pytest.mark.parametrize(
    ("flag", "where", "words"),
    [
        ("--save", "missing/run.safetensors", "does not exist"),
        ("--save", ".", "is a directory"),
        ("--json", "missing/m.json", "does not exist"),
        ("--save", "data.csv", "not a deepcore checkpoint"),
    ],
)
def test_bad_output_paths_are_refused_before_training(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    flag: str,
    where: str,
    words: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("a,label\n1,0\n")
    t0 = time.perf_counter()
    code, out, err = _run(capsys, "--epochs", "50", flag, where)
    assert code == 2 and words in err and where in err, err
    assert "test accuracy" not in out and "deepcore train: moons" not in err  # nothing ran
    assert time.perf_counter() - t0 < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]
    assert (tmp_path / "data.csv").read_text() == "a,label\n1,0\n"


# ------------------------------------------------------------------ item 16: compile progress
class _SlowCompiler:
    name = "numba"
    compiles = True

    def warmup(self, dtypes: tuple[str, ...], depths: tuple[int, ...] = ()) -> None:
        time.sleep(1.3)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_compiling_shows_signs_of_life() -> None:
    log = _Terminal()
    seconds = _warmup(_SlowCompiler(), "float32", 3, log)
    text = log.getvalue()
    assert seconds >= 1.3
    assert "compiling kernels" in text and "about a minute" in text  # says what it costs
    ticks = [t for t in text.split("\r") if t.startswith("numba: compiling ...")]
    assert len(ticks) >= 2, text  # a live elapsed-time line on a terminal
    assert "ready in 1." in text


def test_resumed_model_without_warmup_backend_is_silent() -> None:
    log = io.StringIO()
    assert _warmup(dc.get_backend("numpy"), "float32", 3, log) == 0.0
    assert log.getvalue() == ""
