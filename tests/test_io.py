"""Checkpoint format and atomic saving: names, metadata, round trips, interop, crash safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deepcore as dc
from deepcore import _atomic
from deepcore import _checkpoint_format as fmt
from deepcore.errors import CheckpointError
from deepcore.io import load_into
from deepcore.train import Trainer


def _trained(opt: str = "adam") -> Trainer:
    data = dc.data.make_blobs(n_samples=120, n_features=6, n_classes=3, seed=0)
    model = dc.nn.mlp([6, 8, 3], dropout=0.1)
    optimizer = (
        dc.optim.Adam(model.parameters(), lr=1e-2)
        if opt == "adam"
        else dc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    )
    sched = dc.optim.CosineAnnealingLR(optimizer, T_max=5)
    t = Trainer(model, "cross_entropy", optimizer, scheduler=sched, seed=1)
    t.fit(data, epochs=2, batch_size=32, progress=False)
    return t


def test_file_layout_is_plain_safetensors_with_torch_names(tmp_path: Path) -> None:
    from safetensors import safe_open

    t = _trained()
    path = dc.save(tmp_path / "m.safetensors", trainer=t, extra={"note": "hi", "n": 3})
    with safe_open(path, framework="np") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert {"0.weight", "0.bias", "3.weight", "3.bias"} <= keys
    assert {"optim.state.0.exp_avg", "optim.state.3.exp_avg_sq"} <= keys
    assert meta["format"] == fmt.FORMAT and meta["format_version"] == str(fmt.FORMAT_VERSION)
    assert meta["deepcore_version"] == dc.__version__
    assert json.loads(meta["model"])["config"] == t.model.config()
    opt = json.loads(meta["optimizer"])
    assert opt["class"] == "Adam" and opt["param_names"][0] == "0.weight"
    assert opt["scalars"]["0"]["step"] == t.step
    assert json.loads(meta["scheduler"])["class"] == "CosineAnnealingLR"
    assert json.loads(meta["epoch"]) == 2 and json.loads(meta["step"]) == t.step
    assert set(json.loads(meta["data_rng"])) >= {"bit_generator", "state"}
    assert json.loads(meta["extra"]) == {"note": "hi", "n": 3}


def test_round_trip_restores_everything(tmp_path: Path) -> None:
    t = _trained("sgd")
    dc.save(tmp_path / "m.safetensors", trainer=t, extra={"run": "a"})
    ck = dc.load(tmp_path / "m.safetensors")
    for name, value in t.model.state_dict().items():
        assert np.array_equal(ck.model.state_dict()[name], value)
    assert ck.config == t.model.config() and ck.metadata == {"run": "a"}
    assert (ck.epoch, ck.step) == (t.epoch, t.step)
    assert ck.deepcore_version == dc.__version__ and ck.format_version == fmt.FORMAT_VERSION
    assert ck.optimizer.param_groups[0]["lr"] == t.optimizer.param_groups[0]["lr"]
    assert ck.optimizer.param_groups[0]["momentum"] == 0.9
    theirs, mine = t.optimizer.state_dict(), ck.optimizer.state_dict()
    for i, st in theirs["state"].items():
        assert np.array_equal(mine["state"][i]["momentum_buffer"], st["momentum_buffer"])
    assert ck.scheduler.state_dict() == t.scheduler.state_dict()
    assert ck.data_rng().bit_generator.state == t.rng.bit_generator.state
    assert ck.trainer["history"] == t.history.epochs


def test_model_only_and_float64(tmp_path: Path) -> None:
    model = dc.nn.mlp([3, 4, 2], activation="tanh", dtype="float64")
    dc.save(tmp_path / "m.safetensors", model)
    ck = dc.load(tmp_path / "m.safetensors")
    assert ck.optimizer is None and ck.scheduler is None and ck.model.dtype == "float64"
    assert np.array_equal(ck.model[0].weight.numpy(), model[0].weight.numpy())
    assert dc.load(tmp_path / "m.safetensors", dtype="float32").model.dtype == "float32"


def test_load_leaves_rng_alone_when_asked(tmp_path: Path) -> None:
    from deepcore import random as dc_random

    dc.save(tmp_path / "m.safetensors", dc.nn.mlp([3, 2]))
    dc.seed(5)
    before = dc_random.get_state()
    dc.load(tmp_path / "m.safetensors", restore_rng=False)
    assert dc_random.get_state() == before


def test_weights_load_into_torch(tmp_path: Path, torch) -> None:  # noqa: ANN001
    from safetensors.torch import load_file

    model = dc.nn.mlp([5, 7, 3])
    path = dc.save(tmp_path / "m.safetensors", model, dc.optim.Adam(model.parameters()))
    weights = {k: v for k, v in load_file(path).items() if not k.startswith("optim.")}
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    net.load_state_dict(weights)
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    expected = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(dc.predict(model, x), expected, rtol=1e-5, atol=1e-6)


def test_load_into_checks_every_shape_before_writing(tmp_path: Path) -> None:
    dc.save(tmp_path / "m.safetensors", dc.nn.mlp([6, 8, 3]))
    other = dc.nn.mlp([6, 9, 3])
    before = other.state_dict()
    with pytest.raises(CheckpointError) as info:
        load_into(tmp_path / "m.safetensors", other)
    msg = str(info.value)
    assert "m.safetensors" in msg and "'0.weight'" in msg and "(8, 6)" in msg and "(9, 6)" in msg
    for name, value in other.state_dict().items():
        assert np.array_equal(value, before[name]), "the model must be unchanged"
    with pytest.raises(CheckpointError, match="missing"):
        load_into(tmp_path / "m.safetensors", dc.nn.mlp([6, 8, 8, 3]))


def test_load_into_bad_optimizer_leaves_model_unchanged(tmp_path: Path) -> None:
    model = dc.nn.mlp([6, 8, 3])
    dc.save(tmp_path / "m.safetensors", model, dc.optim.Adam(model.parameters()))
    fresh = dc.nn.mlp([6, 8, 3])
    before = fresh.state_dict()
    params = list(fresh.parameters())
    two_groups = dc.optim.Adam([{"params": params[:2]}, {"params": params[2:]}])
    with pytest.raises(CheckpointError, match="parameter groups"):
        load_into(tmp_path / "m.safetensors", fresh, two_groups)
    for name, value in fresh.state_dict().items():
        assert np.array_equal(value, before[name])


def test_load_into_restores_optimizer_and_scheduler(tmp_path: Path) -> None:
    t = _trained()
    dc.save(tmp_path / "m.safetensors", trainer=t)
    model = dc.nn.mlp([6, 8, 3], dropout=0.1)
    opt = dc.optim.Adam(model.parameters(), lr=1e-2)
    sched = dc.optim.CosineAnnealingLR(opt, T_max=5)
    load_into(tmp_path / "m.safetensors", model, opt, sched)
    assert opt.state_dict()["state"][0]["step"] == t.step
    assert sched.last_epoch == t.scheduler.last_epoch
    assert opt.param_groups[0]["lr"] == t.optimizer.param_groups[0]["lr"]


def test_import_deepcore_does_not_import_safetensors() -> None:
    code = "import sys, deepcore, deepcore.io; print('safetensors' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ atomic saving
def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_interrupted_save_keeps_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    path = tmp_path / "ckpt.safetensors"
    old_model = dc.nn.mlp([4, 3])
    dc.save(path, old_model, extra={"generation": 1})
    old_bytes = path.read_bytes()

    def half_then_fail(f, data) -> None:  # noqa: ANN001
        f.write(data[: len(data) // 2])
        f.flush()
        raise error

    monkeypatch.setattr(_atomic, "_write_all", half_then_fail)
    with pytest.raises(type(error)):
        dc.save(path, dc.nn.mlp([4, 3]), extra={"generation": 2})
    assert path.read_bytes() == old_bytes
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    assert dc.load(path).metadata == {"generation": 1}


def test_failure_at_replace_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ckpt.safetensors"
    dc.save(path, dc.nn.mlp([4, 3]))
    old = path.read_bytes()

    def boom(src, dst) -> None:  # noqa: ANN001
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="rename failed"):
        dc.save(path, dc.nn.mlp([4, 3]))
    assert path.read_bytes() == old and _leftovers(tmp_path) == []


def test_unsaveable_metadata_fails_before_touching_disk(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    dc.save(path, dc.nn.mlp([4, 3]))
    old = path.read_bytes()
    with pytest.raises(TypeError, match="cannot store"):
        dc.save(path, dc.nn.mlp([4, 3]), extra={"bad": object()})
    assert path.read_bytes() == old and _leftovers(tmp_path) == []


def test_save_keeps_file_mode_and_new_files_are_readable(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    dc.save(path, dc.nn.mlp([4, 3]))
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o644
        path.chmod(0o600)
        dc.save(path, dc.nn.mlp([4, 3]))
        assert path.stat().st_mode & 0o777 == 0o600
