"""dc.fit / evaluate / predict on the bundled digits and on small synthetic sets."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

import deepcore as dc
from deepcore.errors import NonFiniteError


@pytest.fixture(scope="module")
def digits():
    return dc.data.load_dataset("digits")


def ref_ce(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def test_fit_digits_reaches_95_percent(backend_name, digits):
    train, test = digits
    dc.seed(0)
    model = dc.nn.mlp([64, 128, 10], backend=backend_name)
    t0 = time.perf_counter()
    history = dc.fit(
        model, train, validation=test, epochs=20, batch_size=32, lr=3e-3, progress=False
    )
    assert time.perf_counter() - t0 < 30  # "a few seconds"; generous for a shared machine
    assert history.last["val_accuracy"] > 0.95, history["val_accuracy"]

    # History: one record per epoch with the documented keys
    assert len(history) == 20
    assert history["epoch"] == list(range(1, 21))
    for key in ("loss", "val_loss", "val_accuracy", "seconds", "lr"):
        assert len(history[key]) == 20, key
    assert len(history["accuracy"]) == 20  # every backend, the fused step path included
    assert history["lr"] == [3e-3] * 20
    assert all(0 <= a <= 1 for a in history["accuracy"] + history["val_accuracy"])
    assert history["loss"][-1] < history["loss"][0]
    assert all(s > 0 for s in history["seconds"])

    # the recorded validation metrics agree with an independent computation from predict
    logits = dc.predict(model, test.X)
    assert logits.shape == (len(test.X), 10) and logits.dtype == np.float32
    acc = float((logits.argmax(axis=1) == test.y).mean())
    assert history.last["val_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert history.last["val_loss"] == pytest.approx(ref_ce(logits, test.y), rel=1e-4)
    metrics = dc.evaluate(model, test)
    assert metrics["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert metrics["loss"] == pytest.approx(ref_ce(logits, test.y), rel=1e-4)
    assert model.training  # evaluate/predict restore the mode


def test_fit_is_reproducible(digits):
    train, _ = digits

    def run():
        dc.seed(1)
        model = dc.nn.mlp([64, 16, 10])
        h = dc.fit(model, train, epochs=2, batch_size=64, seed=3, progress=False)
        return h["loss"], model.state_dict()

    (la, wa), (lb, wb) = run(), run()
    assert la == lb
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])


def test_predict_and_evaluate_shapes_and_batching():
    dc.seed(0)
    model = dc.nn.mlp([5, 7, 3], dtype="float64")
    X = np.random.default_rng(0).standard_normal((23, 5))
    y = np.arange(23) % 3
    full = dc.predict(model, X, batch_size=1000)
    parts = dc.predict(model, X, batch_size=4)
    assert full.shape == (23, 3) and full.dtype == np.float64
    np.testing.assert_allclose(parts, full, rtol=1e-14)
    model.eval()
    np.testing.assert_allclose(dc.to_numpy(model(X)), full, rtol=1e-14)
    m1 = dc.evaluate(model, (X, y), batch_size=5)
    m2 = dc.evaluate(model, (X, y), batch_size=100)
    assert set(m1) == {"loss", "accuracy"}
    assert m1["loss"] == pytest.approx(ref_ce(full, y), rel=1e-12)
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-12)
    assert m1["accuracy"] == float((full.argmax(1) == y).mean())
    with pytest.raises(dc.ShapeError):
        dc.predict(model, np.ones(5))


def test_fit_regression_with_mse():
    """Regression targets as a Dataset holds them, shape (n,), train a one-output model."""
    r = np.random.default_rng(0)
    X = r.standard_normal((200, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3
    dc.seed(0)
    model = dc.nn.mlp([3, 1], dtype="float64")
    h = dc.fit(model, (X, y), loss="mse", lr=0.05, epochs=30, batch_size=20, progress=False,
               validation=(X, y))  # fmt: skip
    assert "accuracy" not in h.last
    assert h.last["val_loss"] < 1e-3
    w = model[0].weight.numpy()[0]
    np.testing.assert_allclose(w, [1.0, -2.0, 0.5], atol=0.02)
    pred = dc.predict(model, X)[:, 0]
    assert dc.evaluate(model, (X, y), loss_fn="mse")["loss"] == pytest.approx(
        np.mean((pred - y) ** 2), rel=1e-10
    )


def test_fit_with_scheduler_and_clipping(digits):
    train, _ = digits
    dc.seed(0)
    model = dc.nn.mlp([64, 16, 10])
    opt = dc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = dc.optim.StepLR(opt, step_size=1, gamma=0.5)
    seen = []
    h = dc.fit(model, train, optimizer=opt, scheduler=sched, epochs=3, progress=False,
               clip_grad_norm=1.0, callbacks=[lambda tr: seen.append(tr.epoch)])  # fmt: skip
    assert h["lr"] == pytest.approx([0.05, 0.025, 0.0125])
    assert seen == [1, 2, 3]


def test_fit_rejects_empty_data():
    model = dc.nn.mlp([4, 3])
    with pytest.raises(ValueError, match="empty"):
        dc.fit(model, (np.empty((0, 4)), np.empty(0, dtype=int)), progress=False)


def test_fit_rejects_nan_naming_row_and_column():
    model = dc.nn.mlp([4, 3])
    X = np.ones((10, 4))
    X[6, 2] = np.nan
    with pytest.raises(NonFiniteError, match=r"row 6, column 2"):
        dc.fit(model, (X, np.zeros(10, dtype=int)), progress=False)
    X[6, 2] = np.inf
    with pytest.raises(NonFiniteError, match=r"row 6, column 2"):
        dc.fit(model, (np.ones((10, 4)), np.zeros(10, int)), validation=(X, np.zeros(10, int)),
               progress=False)  # fmt: skip


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"batch_size": -3}, {"epochs": -1}])
def test_fit_rejects_bad_counts(kw):
    model = dc.nn.mlp([4, 3])
    before = model.state_dict()
    with pytest.raises(ValueError, match="batch_size|epochs"):
        dc.fit(model, (np.ones((10, 4)), np.zeros(10, dtype=int)), progress=False, **kw)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_fit_rejects_mismatched_lengths_and_1d_x():
    model = dc.nn.mlp([4, 3])
    with pytest.raises(dc.ShapeError, match="10 samples but y has 9"):
        dc.fit(model, (np.ones((10, 4)), np.zeros(9, dtype=int)), progress=False)
    with pytest.raises(dc.ShapeError, match="2-D"):
        dc.fit(model, (np.ones(10), np.zeros(10, dtype=int)), progress=False)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_exploding_loss_stops_naming_the_step():
    r = np.random.default_rng(0)
    X = r.standard_normal((100, 3))
    y = X.sum(axis=1)
    dc.seed(0)
    model = dc.nn.mlp([3, 8, 1])
    with pytest.raises(NonFiniteError) as info:
        dc.fit(model, (X, y), loss="mse", optimizer="sgd", lr=1e6, epochs=5, batch_size=10,
               progress=False)  # fmt: skip
    msg = str(info.value)
    match = re.search(r"step (\d+)", msg)
    assert match and int(match.group(1)) >= 1, msg
    assert "learning rate" in msg


def test_zero_epochs_is_a_no_op():
    model = dc.nn.mlp([4, 3])
    before = model.state_dict()
    h = dc.fit(model, (np.ones((10, 4)), np.zeros(10, dtype=int)), epochs=0, progress=False)
    assert len(h) == 0 and h.last == {}
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
