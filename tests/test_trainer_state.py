"""Trainer.state_dict / load_state_dict: the Trainer owns its state, and checkpoint code uses it
without importing deepcore.train (arrows point down: train -> io)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import deepcore as dc
from deepcore.train import Trainer

_DATA = dc.data.make_blobs(n_samples=64, n_features=5, n_classes=3, seed=0)


def _trainer(seed: int) -> Trainer:
    dc.seed(seed)
    model = dc.nn.mlp([5, 8, 3], dropout=0.1)
    opt = dc.optim.Adam(model.parameters(), lr=1e-2)
    sched = dc.optim.StepLR(opt, step_size=1, gamma=0.7)
    return Trainer(model, "cross_entropy", opt, scheduler=sched, seed=seed)


def test_state_dict_round_trip_continues_identically() -> None:
    a = _trainer(0)
    a.fit(_DATA, epochs=2, batch_size=16, progress=False)
    b = _trainer(5)  # other weights, other generator
    b.load_state_dict(a.state_dict())
    assert (b.epoch, b.step) == (a.epoch, a.step) and b.history.epochs == a.history.epochs
    dc.seed(9)
    a.fit(_DATA, epochs=1, batch_size=16, progress=False)
    dc.seed(9)
    b.fit(_DATA, epochs=1, batch_size=16, progress=False)
    timing = ("seconds", "samples_per_second")
    last_a = {k: v for k, v in a.history.last.items() if k not in timing}
    assert last_a == {k: v for k, v in b.history.last.items() if k not in timing}
    for name, value in a.model.state_dict().items():
        assert np.array_equal(b.model.state_dict()[name], value), name


def test_state_dict_without_arrays_leaves_them_out() -> None:
    state = _trainer(0).state_dict(arrays=False)
    assert "model" not in state and "optimizer" not in state
    assert {"epoch", "step", "rng", "history", "loss", "clip_grad_norm", "scheduler"} <= set(state)


def test_io_does_not_import_train() -> None:
    code = "import sys, deepcore.io; print('deepcore.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_custom_loss_still_saves_and_loads_as_a_model(tmp_path) -> None:  # noqa: ANN001
    """A Loss that is not one of deepcore's can still be checkpointed (dc.load rebuilds model
    and optimizer); only load_trainer, which must rebuild the loss, refuses it by name."""
    import pytest

    from deepcore.errors import CheckpointError
    from deepcore.io import CheckpointEveryEpoch
    from deepcore.nn.loss import Loss
    from deepcore.train import load_trainer

    class Half(Loss):
        def _target(self, target, pred):  # noqa: ANN001, ANN202
            return self._same_shape_target(target, pred)

        def _fused(self, pred, target):  # noqa: ANN001, ANN202
            loss, grad = self.backend.mse(pred, target)
            return loss * loss.dtype.type(0.5), self.backend.mul(grad, grad.dtype.type(0.5))

    dc.seed(0)
    model = dc.nn.mlp([5, 1])
    X = _DATA.X
    t = Trainer(model, Half(), "sgd", lr=0.01)
    path = tmp_path / "c.safetensors"
    t.fit((X, X[:, 0].copy()), epochs=1, progress=False, callbacks=[CheckpointEveryEpoch(path)])
    assert dc.load(path).epoch == 1
    with pytest.raises(CheckpointError, match="unknown loss 'Half'"):
        load_trainer(path)
