"""The step engine: the route it plans for each standard configuration, and that every route
gives the module-by-module reference's results (same backend, same seed, same batches)."""

from __future__ import annotations

import numpy as np
import pytest

import deepcore as dc
from deepcore.engine import plan_step
from deepcore.train import Trainer

AVAILABLE = [n for n, av in dc.available_backends().items() if av.available]
NUMBA = pytest.mark.skipif("numba" not in AVAILABLE, reason="numba is not installed")
TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-9, atol=1e-11)}


def _data(n=96, d=12, c=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, c, n)


def _opt(name, model):
    w = [m.weight for m in model if isinstance(m, dc.nn.Linear)]
    b = [m.bias for m in model if isinstance(m, dc.nn.Linear)]
    return {
        "sgd": lambda: dc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3),
        "nesterov": lambda: dc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True),
        "plain_sgd": lambda: dc.optim.SGD(model.parameters(), lr=0.05),
        "adam": lambda: dc.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3),
        "adamw": lambda: dc.optim.AdamW(model.parameters(), lr=1e-2, amsgrad=True),
        "rmsprop": lambda: dc.optim.RMSprop(model.parameters(), lr=1e-3, centered=True),
        "groups": lambda: dc.optim.SGD(
            [{"params": w, "weight_decay": 0.05}, {"params": b, "lr": 0.01}], lr=0.05, momentum=0.5
        ),
        "groups_adamw": lambda: dc.optim.AdamW(
            [{"params": w, "weight_decay": 0.1}, {"params": b, "weight_decay": 0.0}], lr=1e-2
        ),
    }[name]()


def _train(backend, dtype, opt_name, *, fuse, dropout=0.0, act="relu", clip=None, hooks=()):
    X, y = _data()
    dc.seed(3)
    model = dc.nn.mlp([12, 16, 8, 5], act, dropout=dropout, backend=backend, dtype=dtype)
    model.fuse = fuse
    trainer = Trainer(
        model,
        "cross_entropy",
        _opt(opt_name, model),
        seed=1,
        fused="auto" if fuse else False,
        clip_grad_norm=clip,
        grad_hooks=hooks,
    )
    trainer.fit((X, y), epochs=3, batch_size=16, progress=False)
    return trainer, [p.numpy() for p in model.parameters()]


def _assert_same(a, b, dtype):
    for u, v in zip(a, b, strict=True):
        np.testing.assert_allclose(u, v, **TOL[dtype])


CONFIGS = [  # (optimizer, dropout, clip, route on a backend with fused stages)
    ("sgd", 0.0, None, "fused-step"),
    ("nesterov", 0.0, None, "fused-step"),
    ("plain_sgd", 0.0, None, "fused-step"),
    ("adam", 0.2, None, "fused-step"),  # the CLI's default model: dropout 0.2, Adam
    ("adamw", 0.0, None, "fused-step"),
    ("rmsprop", 0.0, None, "fused-step"),
    ("groups", 0.0, None, "fused-step"),
    ("groups_adamw", 0.3, None, "fused-step"),
    ("sgd", 0.2, 0.5, "fused-stages"),  # clip_grad_norm_ sits between backward and update
]


@pytest.mark.parametrize("backend_name", AVAILABLE)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt_name,dropout,clip,route", CONFIGS, ids=str)
def test_trainer_route_equals_module_by_module(backend_name, dtype, opt_name, dropout, clip, route):
    fused, wf = _train(backend_name, dtype, opt_name, fuse=True, dropout=dropout, clip=clip)
    ref, wr = _train(backend_name, dtype, opt_name, fuse=False, dropout=dropout, clip=clip)
    be = dc.get_backend(backend_name)
    if be.whole_step:
        assert fused.step_route == route
    elif be.fused_stages:
        assert fused.step_route == "fused-stages"
    else:
        assert fused.step_route == "stages"
    assert ref.step_route == "stages" and not ref.step_engine().fused
    assert fused.step_engine().fused == (fused.step_route != "stages")
    _assert_same(wf, wr, dtype)
    np.testing.assert_allclose(fused.history["loss"], ref.history["loss"], **TOL[dtype])
    np.testing.assert_allclose(fused.history["accuracy"], ref.history["accuracy"], atol=0.02)


@pytest.mark.parametrize("backend_name", AVAILABLE)
@pytest.mark.parametrize("act", ["tanh", "leaky_relu", "gelu", "sigmoid"])
def test_other_activations(backend_name, act):
    _, wf = _train(backend_name, "float64", "adam", fuse=True, act=act, dropout=0.1)
    _, wr = _train(backend_name, "float64", "adam", fuse=False, act=act, dropout=0.1)
    _assert_same(wf, wr, "float64")


class _Scale:
    """A gradient hook: multiplies every gradient by `factor`, recording what it saw."""

    def __init__(self, factor):
        self.factor, self.seen, self.ready = factor, 0, 0

    def grad_ready(self, params):
        self.ready += 1

    def __call__(self, params):
        self.seen += 1
        for p in params:
            p.backend.scale_(p.grad, self.factor)


@pytest.mark.parametrize("backend_name", AVAILABLE)
def test_hook_runs_between_backward_and_update(backend_name):
    """A hook keeps the stages fused, sees every gradient, and its change reaches the update:
    halving the gradients of plain SGD equals halving the learning rate."""
    hook = _Scale(0.5)
    t, wh = _train(backend_name, "float64", "plain_sgd", fuse=True, hooks=[hook])
    assert hook.seen == t.step == 18 and hook.ready == 3 * 18  # grad_ready once per layer
    be = dc.get_backend(backend_name)
    assert t.step_route == ("fused-stages" if be.fused_stages else "stages")
    X, y = _data()
    dc.seed(3)
    model = dc.nn.mlp([12, 16, 8, 5], backend=backend_name, dtype="float64")
    ref = Trainer(model, "cross_entropy", dc.optim.SGD(model.parameters(), lr=0.025), seed=1)
    ref.fit((X, y), epochs=3, batch_size=16, progress=False)
    _assert_same(wh, [p.numpy() for p in model.parameters()], "float64")


def _hand_loop(backend, fuse, dropout, steps=4, accumulate=False):
    rng = np.random.default_rng(5)
    dc.seed(7)
    model = dc.nn.mlp([10, 32, 16, 4], dropout=dropout).to(backend, dtype="float64")
    model.fuse = fuse
    loss_fn = dc.nn.CrossEntropyLoss()
    opt = dc.optim.Adam(model.parameters(), lr=1e-2)
    losses, grads = [], []
    for _ in range(steps):
        x, y = rng.standard_normal((9, 10)), rng.integers(0, 4, 9)
        logits = model(x)
        loss = loss_fn(logits, y)
        dx = model.backward(loss_fn.backward())
        if accumulate:  # a second backward adds to the live gradients, as in PyTorch
            loss_fn(model(x), y)
            model.backward(loss_fn.backward())
        grads.append([p.grad.copy() for p in model.parameters()] + [np.asarray(dx)])
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses, grads, [p.numpy() for p in model.parameters()]


@pytest.mark.parametrize("backend_name", AVAILABLE)
@pytest.mark.parametrize("dropout", [0.0, 0.25])
@pytest.mark.parametrize("accumulate", [False, True])
def test_hand_loop_equals_module_by_module(backend_name, dropout, accumulate):
    """model(x), model.backward(g) and opt.step() (each one fused call where the backend has
    fused stages) give the module-by-module results, input gradient and accumulation too."""
    fused = _hand_loop(backend_name, True, dropout, accumulate=accumulate)
    ref = _hand_loop(backend_name, False, dropout, accumulate=accumulate)
    np.testing.assert_allclose(fused[0], ref[0], rtol=1e-10)
    for gf, gr in zip(fused[1], ref[1], strict=True):
        _assert_same(gf, gr, "float64")
    _assert_same(fused[2], ref[2], "float64")


@NUMBA
def test_hand_loop_is_one_call_per_stage(monkeypatch):
    """On numba a whole MLP's forward, backward and update are one compiled call each."""
    be = dc.get_backend("numba")
    calls = []
    k = be._k.step
    for name in ("mlp_forward", "mlp_backward", "update_params"):
        fn = getattr(k, name)
        monkeypatch.setattr(k, name, lambda *a, _f=fn, _n=name: (calls.append(_n), _f(*a))[1])
    model = dc.nn.mlp([8, 16, 16, 3], dropout=0.1).to("numba")
    loss_fn = dc.nn.CrossEntropyLoss()
    opt = dc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = np.ones((4, 8), "float32"), np.array([0, 1, 2, 0])
    loss_fn(model(x), y)
    model.backward(loss_fn.backward())
    opt.step()
    assert calls == ["mlp_forward", "mlp_backward", "update_params"]
    assert loss_fn.backend is be  # a loss built without backend= computes where the model did


def test_plan_records_why_not_fused():
    be = dc.get_backend("numpy")
    model = dc.nn.mlp([4, 8, 3], backend=be)
    step = plan_step(model, dc.nn.CrossEntropyLoss(), dc.optim.SGD(model.parameters(), lr=0.1))
    assert step.route == "stages" and not step.fused and "no whole-step kernel" in step.why


@NUMBA
def test_planner_declines_what_the_whole_step_does_not_cover():
    be = dc.get_backend("numba")
    ce = dc.nn.CrossEntropyLoss()

    def route(model, loss=ce, opt=None, **kw):
        opt = opt or dc.optim.SGD(model.parameters(), lr=0.1)
        return plan_step(model, loss, opt, **kw)

    ok = dc.nn.mlp([4, 8, 3], backend=be)
    assert route(ok).route == "fused-step" and route(ok).why is None
    assert route(ok, loss=dc.nn.MSELoss()).route == "fused-stages"
    assert route(ok, clip_grad_norm=1.0).route == "fused-stages"
    assert route(ok, grad_hooks=[_Scale(1.0)]).route == "fused-stages"
    assert route(ok, fused=False).route == "fused-stages"
    part = dc.optim.SGD([ok[0].weight], lr=0.1)
    assert "exactly the model's parameters" in route(ok, opt=part).why
    no_bias = dc.nn.Sequential(dc.nn.Linear(4, 3, bias=False, backend=be))
    assert route(no_bias).route == "fused-stages"
    odd = dc.nn.Sequential(dc.nn.Linear(4, 3, backend=be), dc.nn.Softmax(backend=be))
    assert route(odd).route == "stages"


def test_fused_true_without_support_is_a_clear_error():
    model = dc.nn.mlp([4, 8, 3], backend="numpy")
    trainer = Trainer(model, "cross_entropy", "sgd", fused=True)
    X, y = _data(n=8, d=4, c=3)
    with pytest.raises(ValueError, match="no whole-step kernel"):
        trainer.fit((X, y), epochs=1, batch_size=4, progress=False)


@pytest.mark.parametrize("rule", ["sgd", "adam", "rmsprop"])
@pytest.mark.parametrize("backend_name", AVAILABLE)
def test_multi_update_equals_per_parameter_updates_bitwise(backend_name, rule):
    """One multi-tensor call over every parameter gives the per-parameter methods' bits."""
    from deepcore.backends import hyper

    be = dc.get_backend(backend_name)
    shapes = [(7, 5), (5,), (300, 40), (3,)]
    group = dict(lr=0.01, momentum=0.9, dampening=0.1, nesterov=False, weight_decay=0.01,
                 maximize=False, betas=(0.9, 0.99), eps=1e-8, amsgrad=True, decoupled=True,
                 alpha=0.9, centered=True)  # fmt: skip
    if rule == "rmsprop":
        group["momentum"] = 0.5

    def make():
        r = np.random.default_rng(3)
        ps = [be.asarray(r.standard_normal(s).astype("float32")) for s in shapes]
        gs = [be.asarray(r.standard_normal(s).astype("float32")) for s in shapes]
        st = [[be.asarray((np.abs(r.standard_normal(s)) * 0.1**k).astype("float32"))
               for s in shapes] for k in range(len(hyper.STATE_KEYS[rule]))]  # fmt: skip
        return ps, gs, st

    packed = [hyper.pack(rule, group, step=3, first_step=False)] * len(shapes)
    hp, flags = hyper.rows(packed, "float32")
    ps, gs, st = make()
    be.multi_update(rule, ps, gs, st, hp, flags)
    qs, hs, su = make()
    for i in range(len(shapes)):
        getattr(be, f"{rule}_packed")(qs[i], hs[i], *(s[i] for s in su), hp[i], flags[i])
    for a, b in zip([*ps, *(x for s in st for x in s)], [*qs, *(x for s in su for x in s)],
                    strict=True):  # fmt: skip
        assert np.isfinite(be.to_host(a)).all()
        assert np.array_equal(be.to_host(a), be.to_host(b))


@pytest.mark.parametrize("kind", ["classifier", "binary", "regressor"])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_sklearn_estimators_run_the_engine(kind, solver):
    """Each estimator's step goes through the engine (fused stages on a backend that has them,
    the L2 term as per-group weight decay inside the update) and matches the module-by-module
    numpy backend."""
    pytest.importorskip("sklearn")
    from deepcore.sklearn import MLPClassifier, MLPRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    y = {"classifier": rng.integers(0, 3, 120), "binary": rng.integers(0, 2, 120),
         "regressor": X @ rng.normal(size=(6, 2))}[kind]  # fmt: skip
    est = MLPRegressor if kind == "regressor" else MLPClassifier
    params = dict(hidden_layer_sizes=(16, 8), solver=solver, alpha=1e-2, max_iter=5,
                  batch_size=32, random_state=0, dtype="float64", tol=0.0)  # fmt: skip
    fits = {}
    for name in AVAILABLE:
        with pytest.warns(Warning):  # max_iter reached: ConvergenceWarning
            fits[name] = est(**params, backend=name).fit(X, y)
        be = dc.get_backend(name)
        assert fits[name].step_route_ == ("fused-stages" if be.fused_stages else "stages")
    ref = fits["numpy"]
    for fit in fits.values():
        np.testing.assert_allclose(fit.loss_curve_, ref.loss_curve_, rtol=1e-9)
        for a, b in zip(fit.coefs_ + fit.intercepts_, ref.coefs_ + ref.intercepts_, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_optimizer_steady_state_follows_changes_made_between_steps():
    """The optimizer reuses its last step's kernel arguments only while nothing changed: a new
    learning rate, replaced state or a parameter without gradient each take effect at once, as
    in a freshly built optimizer fed the same history (compared to the per-parameter rule)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(32, 6)), rng.integers(0, 3, 32)

    def run(fresh_each_step):
        dc.seed(1)
        model = dc.nn.mlp([6, 8, 3], backend="numpy", dtype="float64")
        opt = dc.optim.Adam(model.parameters(), lr=1e-2)
        loss_fn = dc.nn.CrossEntropyLoss()
        for t in range(6):
            if fresh_each_step:
                opt.__dict__.pop("_steady", None)
            if t == 2:
                opt.param_groups[0]["lr"] = 5e-3
            if t == 4:
                opt.state = {}  # restart the moments by hand
            loss_fn(model(X), y)
            model.backward(loss_fn.backward())
            if t == 3:
                model[0].bias.grad = None  # this parameter sits out one step
            opt.step()
            opt.zero_grad()
        return [p.numpy() for p in model.parameters()]

    for a, b in zip(run(False), run(True), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend_name", AVAILABLE)
def test_sequential_fuses_again_after_a_layer_is_unfrozen(backend_name):
    """Freezing a parameter sends the stack module by module; unfreezing it fuses it again."""
    model = dc.nn.mlp([4, 8, 3], backend=backend_name)
    x = np.ones((2, 4), "float32")
    model[0].weight.requires_grad = False
    model(x)
    assert model._tape is None
    model[0].weight.requires_grad = True
    model(x)
    assert model._tape is not None
