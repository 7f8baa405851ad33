"""Faults and bad input: each gives a clear error, and nothing already saved is lost."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import deepcore as dc
from deepcore.errors import CheckpointError, NonFiniteError
from deepcore.io import CheckpointEveryEpoch
from deepcore.train import Trainer, load_trainer


@pytest.fixture
def good(tmp_path: Path) -> Path:
    model = dc.nn.mlp([6, 5, 3])
    opt = dc.optim.Adam(model.parameters())
    loss_fn = dc.nn.CrossEntropyLoss()
    loss_fn(model(np.ones((2, 6), np.float32)), np.array([0, 1]))
    model.backward(loss_fn.backward())
    opt.step()
    return dc.save(tmp_path / "good.safetensors", model, opt)


def _expect(path: Path, *words: str) -> None:
    with pytest.raises(CheckpointError) as info:
        dc.load(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg


# ------------------------------------------------------------------ broken files
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.9, 0.999])
def test_truncated_checkpoint(good: Path, keep: float) -> None:
    data = good.read_bytes()
    cut = good.with_name("cut.safetensors")
    cut.write_bytes(data[: max(1, int(len(data) * keep))])
    _expect(cut, "truncated")


def test_random_bytes(tmp_path: Path) -> None:
    p = tmp_path / "noise.safetensors"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _expect(p, "not a safetensors file")


def test_corrupt_header(good: Path) -> None:
    data = bytearray(good.read_bytes())
    data[9:20] = b"#" * 11  # inside the JSON header
    good.write_bytes(bytes(data))
    _expect(good, "corrupt")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.safetensors"
    p.write_bytes(b"")
    _expect(p, "empty")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    _expect(tmp_path / "nope.safetensors", "no such")
    _expect(tmp_path, "directory")


def test_foreign_safetensors_file(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    p = tmp_path / "torch_style.safetensors"
    save_file({"weight": np.ones((2, 2), np.float32)}, str(p), metadata={"format": "pt"})
    _expect(p, "not a deepcore checkpoint")
    save_file({"weight": np.ones((2, 2), np.float32)}, str(p))
    _expect(p, "not a deepcore checkpoint")


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.marker),))


def test_pickle_file_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _Exploit()
    payload.marker = str(marker)
    p = tmp_path / "model.pt"
    for protocol in (2, 4, 5):
        p.write_bytes(pickle.dumps(payload, protocol=protocol))
        _expect(p, "pickle")
    assert not marker.exists()


def test_text_file(tmp_path: Path) -> None:
    p = tmp_path / "notes.safetensors"
    p.write_text("epoch,loss\n1,0.5\n2,0.4\n")
    _expect(p, "text file")


def test_newer_format_version(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    p = tmp_path / "future.safetensors"
    save_file({}, str(p), metadata={"format": "deepcore.checkpoint", "format_version": "99"})
    _expect(p, "newer", "upgrade")


def test_unknown_optimizer_class_is_a_checkpoint_error(good: Path) -> None:
    from ckpt_tools import rewrite

    rewrite(good, lambda t, info: info["optimizer"].update({"class": "Lion"}))
    _expect(good, "optimizer", "Lion")


def test_edited_header_fails_the_checksum(good: Path) -> None:
    from ckpt_tools import raw
    from safetensors.numpy import save_file

    tensors, meta = raw(good)
    meta["optimizer"] = meta["optimizer"].replace('"Adam"', '"Lion"')
    save_file(tensors, str(good), metadata=meta)
    _expect(good, "checksum")


# ------------------------------------------------------------------ training faults
def _blobs() -> dc.data.Dataset:
    return dc.data.make_blobs(n_samples=96, n_features=4, n_classes=3, seed=0)


class _FailAt(dc.nn.CrossEntropyLoss):
    """A loss that turns NaN (or raises KeyboardInterrupt) from training step `at` on."""

    def __init__(self, at: int, what: str) -> None:
        super().__init__()
        self.at, self.what, self.calls = at, what, 0

    def forward(self, input: Any, target: Any) -> Any:  # noqa: A002
        self.calls += 1
        loss = super().forward(input, target)
        if self.calls >= self.at:
            if self.what == "interrupt":
                raise KeyboardInterrupt
            return loss * loss.dtype.type(np.nan if self.what == "nan" else np.inf)
        return loss


def _snapshots(trainer: Trainer, store: dict) -> None:
    store[trainer.epoch] = trainer.model.state_dict()


@pytest.mark.parametrize("what", ["nan", "inf", "interrupt"])
def test_training_stops_and_keeps_last_completed_epoch(tmp_path: Path, what: str) -> None:
    """With per-epoch checkpoints, a non-finite loss or Ctrl-C in epoch 3 (4 batches per epoch)
    leaves the file holding epoch 2 intact."""
    path, seen = tmp_path / "run.safetensors", {}
    dc.seed(0)
    model = dc.nn.mlp([4, 8, 3])
    trainer = Trainer(model, _FailAt(at=10, what=what), "adam", lr=1e-2)
    expected = NonFiniteError if what != "interrupt" else KeyboardInterrupt
    with pytest.raises(expected) as info:
        trainer.fit(
            _blobs(),
            epochs=5,
            batch_size=24,
            progress=False,
            callbacks=[CheckpointEveryEpoch(path), lambda t: _snapshots(t, seen)],
        )
    if what != "interrupt":
        assert "step 10" in str(info.value) and what in str(info.value).lower()
    ck = dc.load(path)
    assert ck.epoch == 2 and ck.step == 8
    for name, value in seen[2].items():
        assert np.array_equal(ck.model.state_dict()[name], value)
    assert load_trainer(path).epoch == 2
    assert [p.name for p in tmp_path.iterdir()] == ["run.safetensors"]


def test_non_finite_input_names_row_and_column() -> None:
    X = np.zeros((5, 3), np.float32)
    X[3, 1] = np.nan
    trainer = Trainer(dc.nn.mlp([3, 2]), "cross_entropy", "sgd", lr=0.1)
    with pytest.raises(NonFiniteError, match=r"row 3, column 1"):
        trainer.fit((X, np.zeros(5, np.int64)), epochs=1, progress=False)
    X[3, 1] = np.inf
    with pytest.raises(NonFiniteError, match=r"inf.*row 3, column 1"):
        trainer.fit((X, np.zeros(5, np.int64)), epochs=1, progress=False)


@pytest.mark.parametrize("fused", [False, "auto"])
@pytest.mark.parametrize(
    ("y", "message"),
    [
        (
            [0, 1, 5, 1],
            r"label 5 at row 2 is out of range \(labels must be whole numbers in \[0, 1\]",
        ),
        (
            [0, -1, 1, 1],
            r"label -1 at row 1 is out of range \(labels must be whole numbers in \[0, 1\]",
        ),
        (
            [0.0, 1.0, 1.5, 0.0],
            r"label 1\.5 at row 2 is not a whole number \(labels must be whole numbers in \[0, 1\]",
        ),
        ([0.0, 1.0, 2.0, 0.0], r"label 2 at row 2 is out of range"),
    ],
)
def test_bad_labels_same_error_on_every_backend_and_route(
    backend_name: str, fused: bool | str, y: list, message: str
) -> None:
    """Float labels that are not whole and out-of-range labels: one ValueError naming value, row
    and range, whichever backend and route (the numba fused step used to truncate 1.5 to 1 and
    raise IndexError for 5)."""
    X = np.zeros((4, 3), np.float32)
    model = dc.nn.mlp([3, 2], backend=backend_name)
    trainer = Trainer(model, "cross_entropy", "sgd", lr=0.1, fused=fused)
    with pytest.raises(ValueError, match=message):
        trainer.fit((X, np.array(y)), epochs=1, batch_size=4, progress=False)
    loss_fn = dc.nn.CrossEntropyLoss()  # the hand-written loop meets the same check
    with pytest.raises(ValueError, match=message):
        loss_fn(model(X), np.array(y))


def test_whole_float_labels_train_like_integers() -> None:
    X = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    runs = []
    for labels in (y, y.astype(np.float64)):
        dc.seed(0)
        t = Trainer(dc.nn.mlp([3, 2]), "cross_entropy", "sgd", lr=0.1, seed=0)
        runs.append(t.fit((X, labels), epochs=2, batch_size=4, progress=False).last["loss"])
    assert runs[0] == runs[1]


def test_empty_dataset() -> None:
    trainer = Trainer(dc.nn.mlp([3, 2]), "cross_entropy", "sgd", lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        trainer.fit((np.zeros((0, 3), np.float32), np.zeros(0, np.int64)), progress=False)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda p: dc.optim.SGD(p, lr=-0.1), r"learning rate -0\.1"),
        (lambda p: dc.optim.Adam(p, lr=-1e-3), r"learning rate -0\.001"),
        (lambda p: dc.optim.Adam(p, betas=(0.9, 1.0)), r"betas.*\(0\.9, 1\.0\)"),
        (lambda p: dc.optim.Adam(p, betas=(-0.1, 0.9)), r"betas.*-0\.1"),
        (lambda p: dc.optim.SGD(p, lr=0.1, momentum=-0.5), r"momentum -0\.5"),
        (lambda p: dc.optim.AdamW(p, weight_decay=-1.0), r"weight_decay -1\.0"),
    ],
)
def test_invalid_hyperparameters(make: Any, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        make(dc.nn.mlp([3, 2]).parameters())


@pytest.mark.parametrize("bad", [0, -4])
def test_invalid_batch_size_and_epochs(bad: int) -> None:
    trainer = Trainer(dc.nn.mlp([3, 2]), "cross_entropy", "sgd", lr=0.1)
    data = (np.zeros((4, 3), np.float32), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match=rf"batch_size.*{bad}"):
        trainer.fit(data, batch_size=bad, progress=False)
    with pytest.raises(ValueError, match=r"every.*0"):
        CheckpointEveryEpoch("x.safetensors", every=0)
