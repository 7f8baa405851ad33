"""Issue 18's checkpoint cases, one test each: refusals are CheckpointErrors naming file and
field, load_into validates before it writes, forged configs allocate nothing, corrupt values and
flipped bits are refused, diverged state is never saved over a good file, temp files of killed
writers are cleaned up, and loading and saving need no second copy of the data."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ckpt_tools import raw, rewrite

import deepcore as dc
from deepcore import _checkpoint_format as fmt
from deepcore.errors import CheckpointError, NonFiniteError
from deepcore.io import CheckpointEveryEpoch, load_into
from deepcore.train import Trainer, load_trainer

_DATA = dc.data.make_blobs(n_samples=32, n_features=4, n_classes=3, seed=0)


def _trainer(amsgrad: bool = False) -> Trainer:
    dc.seed(0)
    model = dc.nn.mlp([4, 6, 3])
    opt = dc.optim.Adam(model.parameters(), lr=1e-2, amsgrad=amsgrad)
    sched = dc.optim.CosineAnnealingLR(opt, T_max=4)
    return Trainer(model, "cross_entropy", opt, scheduler=sched, seed=0)


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    t = _trainer()
    t.fit(_DATA, epochs=2, batch_size=16, progress=False)
    return dc.save(tmp_path / "run.safetensors", trainer=t)


def _refused(path: Path, *words: str) -> str:
    for load in (dc.load, load_trainer):
        with pytest.raises(CheckpointError) as info:
            load(path)
        msg = str(info.value)
        assert str(path) in msg, msg
        for w in words:
            assert w in msg, msg
    return msg


def _set_meta(key: str, value: Any):  # noqa: ANN202
    def edit(tensors: dict, info: dict) -> None:
        target, *rest = key.split(".")
        if not rest:
            info[target] = value
            return
        node = info[target]
        for k in rest[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(rest[-1]) if isinstance(node, list) else rest[-1]] = value

    return edit


# ------------------------------------------------------------------ item 1: only CheckpointError
@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("epoch", float("nan"), "epoch"),
        ("epoch", "NaN", "epoch"),
        ("epoch", "null", "epoch"),
        ("epoch", "1e400", "epoch"),
        ("epoch", 1e400, "epoch"),
        ("scheduler.state.T_max", 0, "scheduler.T_max"),
        ("optimizer.param_groups", [], "optimizer.param_groups"),
        ("optimizer.scalars", None, "optimizer.scalars"),
        ("trainer.loss", None, "trainer.loss"),
        ("model.config.layers", [], "model config"),
        ("rng", {"bit_generator": "PCG64", "state": 3}, "rng"),
    ],
)
def test_bad_metadata_values_are_checkpoint_errors(
    ckpt: Path, key: str, value: Any, field: str
) -> None:
    rewrite(ckpt, _set_meta(key, value))
    _refused(ckpt, field)


def test_scheduler_state_missing_is_a_checkpoint_error(ckpt: Path) -> None:
    rewrite(ckpt, lambda t, info: info["scheduler"].pop("state"))
    _refused(ckpt, "scheduler")


def test_deeply_nested_extra_is_a_checkpoint_error(ckpt: Path) -> None:
    tensors, meta = raw(ckpt)
    meta["extra"] = "[" * 50_000 + "]" * 50_000
    meta.pop(fmt.CHECKSUM)
    ckpt.unlink()
    ckpt.write_bytes(fmt.encode(tensors, meta))
    _refused(ckpt, "'extra'")


def test_cli_resume_of_a_bad_file_is_one_line(ckpt: Path, capsys: pytest.CaptureFixture) -> None:
    from deepcore.cli import main

    rewrite(ckpt, _set_meta("scheduler.state.T_max", 0))
    assert main(["train", "--backend", "numpy", "--resume", str(ckpt), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt) in err[0] and "T_max" in err[0], err


# ------------------------------------------------------------------ item 2: validate, then write
def _objects() -> tuple[Any, Any, Any]:
    model = dc.nn.mlp([4, 6, 3])
    opt = dc.optim.Adam(model.parameters(), lr=5e-3)
    return model, opt, dc.optim.CosineAnnealingLR(opt, T_max=4)


def _snapshot(model: Any, opt: Any, sched: Any) -> str:
    sd = opt.state_dict()
    return repr(
        (
            {k: v.tolist() for k, v in model.state_dict().items()},
            {i: {k: np.asarray(v).tolist() for k, v in s.items()} for i, s in sd["state"].items()},
            sd["param_groups"],
            sched.state_dict(),
        )
    )


@pytest.mark.parametrize(
    "edit",
    [
        _set_meta("scheduler.state.last_epoch", "x"),  # fails after the optimizer was loaded
        _set_meta("scheduler.class", "StepLR"),
        _set_meta("optimizer.param_groups.0.lr", -1.0),
        lambda t, info: t.update({"optim.state.1.exp_avg_sq": -np.abs(t["optim.state.1.exp_avg"])}),
        lambda t, info: t.update({"2.bias": np.full_like(t["2.bias"], np.nan)}),
    ],
)
def test_load_into_changes_nothing_when_it_fails(ckpt: Path, edit: Any) -> None:
    model, opt, sched = _objects()
    loss_fn = dc.nn.CrossEntropyLoss()
    loss_fn(model(_DATA.X[:8]), _DATA.y[:8])
    model.backward(loss_fn.backward())
    opt.step()  # give the optimizer state to lose
    before = _snapshot(model, opt, sched)
    rewrite(ckpt, edit)
    with pytest.raises(CheckpointError) as info:
        load_into(ckpt, model, opt, sched)
    assert str(ckpt) in str(info.value)
    assert _snapshot(model, opt, sched) == before


def test_load_into_refuses_another_optimizer_class(ckpt: Path) -> None:
    model = dc.nn.mlp([4, 6, 3])
    before = repr(model.state_dict())
    with pytest.raises(CheckpointError, match="optimizer.class is Adam.*SGD"):
        load_into(ckpt, model, dc.optim.SGD(model.parameters(), lr=0.1))
    assert repr(model.state_dict()) == before


# ------------------------------------------------------------------ item 3: no allocation
def test_forged_config_is_refused_before_anything_is_built(ckpt: Path) -> None:
    """A config of Linear(8192, 8192) over the small file's tensors: refused from the header,
    without allocating the 256 MB the config describes."""
    rewrite(
        ckpt,
        _set_meta(
            "model.config.layers.0",
            {"type": "Linear", "in_features": 8192, "out_features": 8192, "bias": True},
        ),  # fmt: skip
    )
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"shape \(6, 4\), the model config says"):
            dc.load(ckpt)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MB allocated to refuse a 3 KB file"


# ------------------------------------------------------------------ item 4: corrupt values
def _poke(name: str, value: float):  # noqa: ANN202
    return lambda t, info: t[name].reshape(-1).__setitem__(0, value)


def _swap(name: str, fn: Any):  # noqa: ANN202
    return lambda t, info: t.update({name: fn(t[name])})


def _rename(name: str, new: str):  # noqa: ANN202
    return lambda t, info: t.update({new: t.pop(name)})


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (_poke("0.weight", np.nan), ("'0.weight'", "non-finite")),
        (_poke("optim.state.0.exp_avg", np.inf), ("exp_avg", "non-finite")),
        (_swap("optim.state.2.exp_avg_sq", lambda a: -a - 1), ("exp_avg_sq", "negative")),
        (_swap("0.weight", lambda a: a.view(np.int32)), ("'0.weight'", "int32")),
        (_swap("0.weight", lambda a: a.view(np.uint32)), ("'0.weight'", "uint32")),
        (_set_meta("scheduler.state.eta_min", float("nan")), ("scheduler.eta_min",)),
        (_set_meta("scheduler.state.base_lrs", [float("nan")]), ("scheduler.base_lrs",)),
        (_set_meta("optimizer.param_groups.0.lr", float("nan")), ("lr",)),
        (_set_meta("epoch", -1), ("epoch",)),
        (_set_meta("epoch", 1.5), ("epoch",)),
        (_set_meta("epoch", True), ("epoch",)),
        (_rename("optim.state.1.exp_avg", "optim.state.1.exp_avgX"), ("exp_avgX",)),
    ],
)
def test_corrupt_values_are_refused(ckpt: Path, edit: Any, words: tuple[str, ...]) -> None:
    rewrite(ckpt, edit)  # re-signed: the checksums match, the values themselves are refused
    _refused(ckpt, *words)


def test_flipped_bits_in_tensor_data_fail_the_checksum(ckpt: Path) -> None:
    blob = bytearray(ckpt.read_bytes())
    blob[-5] ^= 0x10  # inside the last tensor's data
    ckpt.unlink()
    ckpt.write_bytes(bytes(blob))
    _refused(ckpt, "checksum mismatch in tensor")


# ------------------------------------------------------------------ item 5: diverged state
def test_non_finite_state_is_never_saved_over_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "run.safetensors"
    t = _trainer()
    t.fit(_DATA, epochs=2, batch_size=16, progress=False, callbacks=[CheckpointEveryEpoch(path)])
    good = path.read_bytes()
    t.model[0].weight.data[...] = np.nan  # what a diverged update leaves
    with pytest.raises(NonFiniteError) as info:
        CheckpointEveryEpoch(path)(t)
    assert "not saved" in str(info.value) and "still holds epoch 2" in str(info.value)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.safetensors"]


def test_cli_divergence_keeps_the_last_good_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The issue's two commands: the second run diverges at once and must not replace the
    first run's checkpoint with NaN weights."""
    from deepcore.cli import main

    path = str(tmp_path / "run.safetensors")
    common = ["train", "--backend", "numpy", "--quiet", "--hidden", "16", "--save", path]
    assert main([*common, "--epochs", "2", "--batch-size", "256"]) == 0
    good = Path(path).read_bytes()
    bad = ["--optimizer", "adam", "--lr", "1e38", "--batch-size", "1437", "--epochs", "3"]
    assert main([*common, *bad]) == 2
    err = capsys.readouterr().err
    assert "not saved" in err and "still holds epoch 2" in err, err
    assert Path(path).read_bytes() == good


# ------------------------------------------------------------------ item 6: stale temp files
def test_stale_temp_files_of_the_same_target_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    target = tmp_path / "run.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".run.safetensors.{dead}.deadbeef.tmp"
    legacy = tmp_path / ".run.safetensors.k2j3h4g5.tmp"  # an older deepcore's mkstemp name
    live = tmp_path / f".run.safetensors.{os.getppid()}.cafe0123.tmp"  # a live writer's
    other = tmp_path / f".other.safetensors.{dead}.deadbeef.tmp"  # another target's
    for p in (stale, legacy, live, other):
        p.write_bytes(b"x" * 1000)
    os.utime(legacy, (1e9, 1e9))
    dc.save(target, dc.nn.mlp([3, 2]))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([target.name, live.name, other.name])


# ------------------------------------------------------------------ item 10: memory
def _big_trainer() -> Trainer:
    model = dc.nn.mlp([1024, 1024, 1024, 10])  # 2.1 M weights: 8.4 MB, 25 MB with Adam's state
    opt = dc.optim.Adam(model.parameters())
    x = np.random.default_rng(0).standard_normal((8, 1024)).astype(np.float32)
    t = Trainer(model, "cross_entropy", opt)
    t.train_step(x, np.zeros(8, np.int64))
    return t


def test_save_and_load_need_no_second_copy(tmp_path: Path) -> None:
    """Python-heap peaks (tracemalloc sees NumPy's buffers): saving allocates nothing like the
    state's size (it writes from the live arrays); loading allocates the file's size once
    (tensors read into the new model's arrays; no staging copy)."""
    t = _big_trainer()
    path = tmp_path / "big.safetensors"
    dc.save(path, trainer=t)  # warm imports
    size = path.stat().st_size
    tracemalloc.start()
    try:
        dc.save(path, trainer=t)
        save_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        ck = dc.load(path)
        load_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ck.epoch == 0
    assert save_peak < 0.1 * size, f"save: {save_peak / size:.2f}x the checkpoint"
    assert load_peak < 1.1 * size, f"load: {load_peak / size:.2f}x the checkpoint"


def test_file_is_plain_safetensors(ckpt: Path) -> None:
    """Our own writer's output reads with the safetensors package, tensor for tensor."""
    from safetensors.numpy import load_file

    theirs = load_file(str(ckpt))
    ours, meta = fmt.read(ckpt)
    assert theirs.keys() == ours.keys()
    for k in ours:
        assert theirs[k].dtype == ours[k].dtype and np.array_equal(theirs[k], ours[k])
    assert json.loads(meta["epoch"]) == 2


def test_format_1_files_without_checksums_still_load(ckpt: Path) -> None:
    """Checkpoints of deepcore before format 2 (no checksum field) load, with every value check;
    a format-2 file whose checksum field was removed is refused."""
    from safetensors.numpy import save_file

    tensors, meta = raw(ckpt)
    meta.pop(fmt.CHECKSUM)
    old = ckpt.with_name("v1.safetensors")
    save_file(tensors, str(old), metadata={**meta, "format_version": "1"})
    assert dc.load(old).epoch == 2 and load_trainer(old).epoch == 2
    stripped = ckpt.with_name("stripped.safetensors")
    save_file(tensors, str(stripped), metadata=meta)
    _refused(stripped, "checksum")
