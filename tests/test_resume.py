"""Exact resume: k steps, save, load, N-k steps equals N steps bitwise on the same backend.

Covers weights, the loss curve, batch order (the shuffling generator), dropout masks (deepcore's
generator), optimizer state and step counters, and the scheduler. The Trainer resumes at epoch
boundaries; the hand-written loop below resumes at any step.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

import deepcore as dc
from deepcore.io import CheckpointEveryEpoch, save_trainer
from deepcore.train import Trainer, load_trainer


@functools.lru_cache(maxsize=1)
def _digits() -> dc.data.Dataset:
    return dc.data.load_dataset("digits")[0]


def _model(backend: str = "numpy") -> dc.nn.Sequential:
    return dc.nn.mlp([64, 32, 16, 10], dropout=0.25, backend=backend)


def _optimizer(name: str, model: dc.nn.Module) -> dc.optim.Optimizer:
    if name == "sgd":
        return dc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    return dc.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)


def _trainer(opt: str, backend: str) -> Trainer:
    dc.seed(0)
    model = _model(backend)
    optimizer = _optimizer(opt, model)
    scheduler = dc.optim.StepLR(optimizer, step_size=2, gamma=0.5)
    return Trainer(model, "cross_entropy", optimizer, scheduler=scheduler, seed=7)


def _curve(trainer: Trainer) -> list[tuple[float, float, float]]:
    return [(e["loss"], e["accuracy"], e["lr"]) for e in trainer.history.epochs]


def _assert_same_weights(a: dc.nn.Module, b: dc.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert np.array_equal(sa[name], sb[name]), name


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_trainer_resume_at_epoch_boundary_is_bitwise(
    backend_name: str, opt: str, tmp_path: Path
) -> None:
    data = _digits()
    straight = _trainer(opt, backend_name)
    straight.fit(data, epochs=5, progress=False)

    first = _trainer(opt, backend_name)
    first.fit(data, epochs=2, progress=False)
    save_trainer(tmp_path / "run.safetensors", first)
    dc.seed(12345)  # scramble deepcore's generator: load must restore it
    resumed = load_trainer(tmp_path / "run.safetensors", backend=backend_name)
    assert (resumed.epoch, resumed.step) == (2, first.step)
    resumed.fit(data, epochs=3, progress=False)

    assert _curve(resumed) == _curve(straight)
    assert resumed.step == straight.step
    assert resumed.scheduler.last_epoch == straight.scheduler.last_epoch
    _assert_same_weights(resumed.model, straight.model)


def test_cli_style_resume_with_checkpoint_every_epoch(tmp_path: Path) -> None:
    """What `deepcore train --save P` then `--resume P --save P` does, ending where 4 epochs do."""
    data, path = _digits(), tmp_path / "ckpt.safetensors"
    straight = _trainer("adam", "numpy")
    straight.fit(data, epochs=4, progress=False)

    run = _trainer("adam", "numpy")
    run.fit(data, epochs=3, progress=False, callbacks=[CheckpointEveryEpoch(path)])
    resumed = load_trainer(path)
    resumed.fit(
        data, epochs=4 - resumed.epoch, progress=False, callbacks=[CheckpointEveryEpoch(path)]
    )
    assert _curve(resumed) == _curve(straight)
    _assert_same_weights(resumed.model, straight.model)
    assert dc.load(path).epoch == 4


def _loop(model, optimizer, scheduler, rng, start: int, stop: int, losses: list) -> None:  # noqa: ANN001
    """A hand-written loop: each step samples its batch from `rng`, the lr warms up per step."""
    data = _digits()
    loss_fn = dc.nn.CrossEntropyLoss(backend=model.backend)
    for _ in range(start, stop):
        idx = rng.choice(len(data.X), size=32, replace=False)
        loss = loss_fn(model(data.X[idx]), data.y[idx])
        model.backward(loss_fn.backward(), need_input_grad=False)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        losses.append(float(loss))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("k", [1, 17, 33])
def test_low_level_loop_resumes_at_any_step(opt: str, k: int, tmp_path: Path) -> None:
    n = 40

    def fresh():
        dc.seed(0)
        model = _model()
        optimizer = _optimizer(opt, model)
        scheduler = dc.optim.WarmupCosineLR(optimizer, warmup=10, total=n)
        return model, optimizer, scheduler, np.random.default_rng(3)

    ref_losses: list[float] = []
    ref_model, *rest = fresh()
    _loop(ref_model, *rest, 0, n, ref_losses)

    losses: list[float] = []
    model, optimizer, scheduler, rng = fresh()
    _loop(model, optimizer, scheduler, rng, 0, k, losses)
    dc.save(tmp_path / "k.safetensors", model, optimizer, scheduler, rng=rng, step=k)
    dc.seed(99)
    ck = dc.load(tmp_path / "k.safetensors")
    assert ck.step == k and type(ck.optimizer) is type(optimizer)
    assert type(ck.scheduler) is dc.optim.WarmupCosineLR
    _loop(ck.model, ck.optimizer, ck.scheduler, ck.data_rng(), k, n, losses)

    assert losses == ref_losses
    _assert_same_weights(ck.model, ref_model)


def test_load_on_every_backend_and_dtype_continues_close(
    backend_name: str, dtype: str, tmp_path: Path
) -> None:
    """A numpy float32 checkpoint loads on any backend and dtype and predicts the same."""
    data = _digits()
    t = _trainer("adam", "numpy")
    t.fit(data, epochs=1, progress=False)
    dc.save(tmp_path / "c.safetensors", trainer=t)
    ck = dc.load(tmp_path / "c.safetensors", backend=backend_name, dtype=dtype)
    assert ck.model.backend.name.startswith(backend_name) and ck.model.dtype == dtype
    assert all(p.backend is ck.model.backend for p in ck.optimizer._params())
    expected = dc.predict(t.model, data.X[:50])
    got = dc.predict(ck.model, data.X[:50])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    resumed = load_trainer(tmp_path / "c.safetensors", backend=backend_name, dtype=dtype)
    resumed.fit(data, epochs=1, progress=False)
    assert resumed.epoch == 2 and np.isfinite(resumed.history.last["loss"])
