"""The whole-step fast path gives the layer-by-layer results, and is used only where it applies."""

from __future__ import annotations

import numpy as np
import pytest

import deepcore as dc
from deepcore.fused import plan_fused_step
from deepcore.train import Trainer


def _fused_backends():
    names = [n for n, av in dc.available_backends().items() if av.available]
    return [n for n in names if hasattr(dc.get_backend(n), "fused_mlp_step")] or [
        pytest.param("numba", marks=pytest.mark.skip(reason="no backend offers a fused step"))
    ]


def _data(n=96, d=12, c=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float64), rng.integers(0, c, n)


def _make_opt(name, params):
    return {
        "sgd": lambda: dc.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3),
        "nesterov": lambda: dc.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
        "plain_sgd": lambda: dc.optim.SGD(params, lr=0.05),
        "adam": lambda: dc.optim.Adam(params, lr=1e-2, weight_decay=1e-3),
        "adamw": lambda: dc.optim.AdamW(params, lr=1e-2, amsgrad=True),
    }[name]()


def _train(backend, dtype, opt_name, fused, act="relu"):
    X, y = _data()
    dc.seed(3)
    model = dc.nn.mlp([12, 16, 8, 5], act, backend=backend, dtype=dtype)
    trainer = Trainer(
        model, "cross_entropy", _make_opt(opt_name, model.parameters()), seed=1, fused=fused
    )
    trainer.fit((X, y), epochs=3, batch_size=16, progress=False)
    return trainer, [p.numpy() for p in model.parameters()]


@pytest.mark.parametrize("backend_name", _fused_backends())
@pytest.mark.parametrize("opt_name", ["sgd", "nesterov", "plain_sgd", "adam", "adamw"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_step_equals_layer_by_layer(backend_name, opt_name, dtype):
    fused, wf = _train(backend_name, dtype, opt_name, fused=True)
    plain, wp = _train(backend_name, dtype, opt_name, fused=False)
    assert fused._fused_step is not None and plain._fused_step is None
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-11)
    for a, b in zip(wf, wp, strict=True):
        np.testing.assert_allclose(a, b, **tol)
    np.testing.assert_allclose(fused.history["loss"], plain.history["loss"], **tol)
    # train accuracy comes from the fused step's logits as from the layer path's
    np.testing.assert_allclose(fused.history["accuracy"], plain.history["accuracy"], atol=0.02)
    assert len(fused.history["accuracy"]) == 3


@pytest.mark.parametrize("backend_name", _fused_backends())
@pytest.mark.parametrize("act", ["tanh", "leaky_relu", "gelu", "sigmoid"])
def test_fused_step_other_activations(backend_name, act):
    _, wf = _train(backend_name, "float64", "adam", fused=True, act=act)
    _, wp = _train(backend_name, "float64", "adam", fused=False, act=act)
    for a, b in zip(wf, wp, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-11)


def test_plan_declines_what_it_does_not_cover():
    be = dc.get_backend("numpy")
    model = dc.nn.mlp([4, 8, 3], backend=be)
    loss = dc.nn.CrossEntropyLoss()
    opt = dc.optim.SGD(model.parameters(), lr=0.1)
    assert plan_fused_step(model, loss, opt) is None  # numpy has no fused step

    class FakeFused(type(be)):
        name = "fake-fused"

        def fused_mlp_step(self, *a, **k):  # pragma: no cover - never called here
            raise AssertionError

    fake = FakeFused()
    for m, lf, make in [
        (dc.nn.mlp([4, 8, 3], dropout=0.5, backend=fake), loss, dc.optim.SGD),
        (dc.nn.mlp([4, 8, 3], backend=fake), dc.nn.MSELoss(), dc.optim.SGD),
        (dc.nn.mlp([4, 8, 3], backend=fake), loss, dc.optim.RMSprop),
        (dc.nn.Sequential(dc.nn.Linear(4, 3, bias=False, backend=fake)), loss, dc.optim.SGD),
    ]:
        assert plan_fused_step(m, lf, make(m.parameters(), lr=0.1)) is None
    ok = dc.nn.mlp([4, 8, 3], backend=fake)
    assert plan_fused_step(ok, loss, dc.optim.Adam(ok.parameters())) is not None


def test_fused_true_without_support_is_a_clear_error():
    model = dc.nn.mlp([4, 8, 3], backend="numpy")
    trainer = Trainer(model, "cross_entropy", "sgd", fused=True)
    X, y = _data(n=8, d=4, c=3)
    with pytest.raises(ValueError, match="no fused step"):
        trainer.fit((X, y), epochs=1, batch_size=4, progress=False)
