"""deepcore.optim: each optimizer against its update rule written out here (float64), parameter
groups, zero_grad, state_dict round trips, validation, schedulers, gradient clipping."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import deepcore as dc
from deepcore.nn import Parameter
from deepcore.optim import (
    SGD,
    Adam,
    AdamW,
    CosineAnnealingLR,
    LinearLR,
    RMSprop,
    StepLR,
    WarmupCosineLR,
    clip_grad_norm_,
)

SHAPES = [(3, 4), (4,), (1, 1)]
STEPS = 6


def make_params(backend, seed=0, dtype="float64"):
    r = np.random.default_rng(seed)
    return [Parameter(backend.asarray(r.standard_normal(s).astype(dtype)), backend) for s in SHAPES]


def grads_for(step: int, seed: int = 100) -> list[np.ndarray]:
    r = np.random.default_rng(seed + step)
    return [r.standard_normal(s) * (1 + step % 3) for s in SHAPES]


def set_grads(params, grads) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = p.backend.asarray(np.array(g, dtype=p.dtype))  # a copy


# ---------------------------------------------------------------------------- references
class RefSGD:
    def __init__(self, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 maximize=False):  # fmt: skip
        self.hp = (lr, momentum, dampening, weight_decay, nesterov, maximize)
        self.buf: dict[int, np.ndarray] = {}

    def step(self, i, w, g):
        lr, mom, damp, wd, nest, maxi = self.hp
        d = (-g if maxi else g) + wd * w
        if mom:
            b = self.buf.get(i)
            b = d.copy() if b is None else mom * b + (1 - damp) * d
            self.buf[i] = b
            d = d + mom * b if nest else b
        return w - lr * d


class RefAdam:
    def __init__(self, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 decoupled=False, maximize=False):  # fmt: skip
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.wd, self.amsgrad, self.decoupled, self.maximize = (
            weight_decay, amsgrad, decoupled, maximize
        )  # fmt: skip
        self.st: dict[int, dict] = {}

    def step(self, i, w, g):
        s = self.st.setdefault(i, {"t": 0, "m": 0 * w, "v": 0 * w, "vmax": 0 * w})
        s["t"] += 1
        t = s["t"]
        d = -g if self.maximize else g
        if self.decoupled:
            w = w * (1 - self.lr * self.wd)
        else:
            d = d + self.wd * w
        s["m"] = self.b1 * s["m"] + (1 - self.b1) * d
        s["v"] = self.b2 * s["v"] + (1 - self.b2) * d**2
        s["vmax"] = np.maximum(s["vmax"], s["v"])
        v = s["vmax"] if self.amsgrad else s["v"]
        mhat = s["m"] / (1 - self.b1**t)
        vhat = v / (1 - self.b2**t)
        return w - self.lr * mhat / (np.sqrt(vhat) + self.eps)


class RefRMSprop:
    def __init__(self, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, maximize=False):  # fmt: skip
        self.hp = (lr, alpha, eps, weight_decay, momentum, centered, maximize)
        self.st: dict[int, dict] = {}

    def step(self, i, w, g):
        lr, a, eps, wd, mom, centered, maxi = self.hp
        s = self.st.setdefault(i, {"sq": 0 * w, "g": 0 * w, "b": 0 * w})
        d = (-g if maxi else g) + wd * w
        s["sq"] = a * s["sq"] + (1 - a) * d * d
        if centered:
            s["g"] = a * s["g"] + (1 - a) * d
            avg = np.sqrt(s["sq"] - s["g"] ** 2) + eps
        else:
            avg = np.sqrt(s["sq"]) + eps
        if mom:
            s["b"] = mom * s["b"] + d / avg
            return w - lr * s["b"]
        return w - lr * d / avg


CASES = [
    (SGD, RefSGD, dict(lr=0.1)),
    (SGD, RefSGD, dict(lr=0.05, momentum=0.9)),
    (SGD, RefSGD, dict(lr=0.05, momentum=0.9, dampening=0.5, weight_decay=0.01)),
    (SGD, RefSGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    (SGD, RefSGD, dict(lr=0.05, momentum=0.5, maximize=True)),
    (Adam, RefAdam, dict(lr=0.01)),
    (Adam, RefAdam, dict(lr=0.01, betas=(0.8, 0.9), weight_decay=0.1, amsgrad=True)),
    (Adam, RefAdam, dict(lr=0.01, maximize=True, eps=1e-3)),
    (AdamW, lambda **k: RefAdam(decoupled=True, **k), dict(lr=0.01, weight_decay=0.1)),
    (AdamW, lambda **k: RefAdam(decoupled=True, **k), dict(lr=0.01, amsgrad=True)),
    (RMSprop, RefRMSprop, dict(lr=0.01)),
    (RMSprop, RefRMSprop, dict(lr=0.01, alpha=0.9, centered=True, momentum=0.9)),
    (RMSprop, RefRMSprop, dict(lr=0.01, weight_decay=0.1, momentum=0.5, maximize=True)),
]


def _case_id(case) -> str:
    cls, _, hp = case
    return cls.__name__ + "-" + ",".join(f"{k}={v}" for k, v in hp.items())


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_optimizer_matches_its_formula(backend, case):
    cls, ref_cls, hp = case
    params = make_params(backend)
    ref = ref_cls(**hp)
    if cls is AdamW and "weight_decay" not in hp:
        ref.wd = 1e-2  # AdamW's default decay, as torch.optim.AdamW
    ws = [p.numpy() for p in params]
    opt = cls(params, **hp)
    for t in range(STEPS):
        gs = grads_for(t)
        set_grads(params, gs)
        opt.step()
        ws = [ref.step(i, w, g) for i, (w, g) in enumerate(zip(ws, gs, strict=True))]
        for p, w in zip(params, ws, strict=True):
            np.testing.assert_allclose(p.numpy(), w, rtol=1e-12, atol=1e-13)
            assert p.dtype == "float64"


def test_optimizer_keeps_float32(backend):
    params = make_params(backend, dtype="float32")
    for cls in (SGD, Adam, AdamW, RMSprop):
        opt = cls(params, lr=0.01) if cls is not SGD else cls(params, lr=0.01, momentum=0.9)
        set_grads(params, grads_for(0))
        opt.step()
        assert all(p.dtype == "float32" for p in params)
        for st in opt.state.values():
            for v in st.values():
                if hasattr(v, "dtype") and getattr(v, "ndim", 0) > 0:
                    assert np.dtype(v.dtype) == np.float32


def test_parameters_without_grad_are_skipped(backend):
    params = make_params(backend)
    before = [p.numpy() for p in params]
    opt = Adam(params, lr=0.1)
    params[0].grad = backend.asarray(np.ones(SHAPES[0]))
    opt.step()
    assert not np.array_equal(params[0].numpy(), before[0])
    for p, b in zip(params[1:], before[1:], strict=True):
        np.testing.assert_array_equal(p.numpy(), b)
    frozen = make_params(backend)[0]
    frozen.requires_grad = False
    frozen.grad = backend.asarray(np.ones(SHAPES[0]))
    w = frozen.numpy()
    SGD([frozen], lr=1.0).step()
    np.testing.assert_array_equal(frozen.numpy(), w)


def test_param_groups_with_different_lr(backend):
    a, b, c = make_params(backend)
    opt = SGD([{"params": [a, b]}, {"params": c, "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[0]["momentum"] == 0.0 and opt.param_groups[1]["momentum"] == 0.9
    ws = [p.numpy() for p in (a, b, c)]
    gs = grads_for(0)
    set_grads([a, b, c], gs)
    opt.step()
    np.testing.assert_allclose(a.numpy(), ws[0] - 0.1 * gs[0], rtol=1e-14)
    np.testing.assert_allclose(b.numpy(), ws[1] - 0.1 * gs[1], rtol=1e-14)
    np.testing.assert_allclose(c.numpy(), ws[2] - 0.5 * gs[2], rtol=1e-14)
    d = make_params(backend, seed=5)[0]
    opt.add_param_group({"params": [d], "lr": 0.01})
    assert opt.param_groups[-1]["lr"] == 0.01 and opt.param_groups[-1]["initial_lr"] == 0.01


def test_zero_grad(backend):
    params = make_params(backend)
    opt = SGD(params, lr=0.1)
    set_grads(params, grads_for(0))
    bufs = [p.grad for p in params]
    opt.zero_grad(set_to_none=False)
    for p, b in zip(params, bufs, strict=True):
        assert p.grad is b and not dc.to_numpy(b).any()
    opt.zero_grad()  # PyTorch's default: set to None
    assert all(p.grad is None for p in params)
    before = [dc.to_numpy(p.data) for p in params]
    opt.step()  # nothing to do without gradients
    for p, b in zip(params, before, strict=True):
        np.testing.assert_array_equal(dc.to_numpy(p.data), b)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_state_dict_round_trip_continues_identically(backend, case):
    cls, _, hp = case
    a_params = make_params(backend)
    opt_a = cls(a_params, **hp)
    for t in range(3):
        set_grads(a_params, grads_for(t))
        opt_a.step()
    saved = opt_a.state_dict()
    saved_copy = copy.deepcopy(saved)
    b_params = [Parameter(backend.asarray(p.numpy()), backend) for p in a_params]
    opt_b = cls(b_params, lr=123.0)  # different hyperparameters: the state dict restores them
    opt_b.load_state_dict(saved)
    assert opt_b.param_groups[0]["lr"] == hp["lr"]
    for t in range(3, STEPS):
        set_grads(a_params, grads_for(t))
        set_grads(b_params, grads_for(t))
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a_params, b_params, strict=True):
        np.testing.assert_array_equal(pa.numpy(), pb.numpy())
    # the saved dict was a snapshot: later steps did not change it
    for i, st in saved_copy["state"].items():
        for k, v in st.items():
            np.testing.assert_array_equal(saved["state"][i][k], v)


def test_state_dict_layout(backend):
    params = make_params(backend)
    opt = Adam([{"params": params[:2]}, {"params": params[2:], "lr": 0.5}], lr=0.1)
    set_grads(params, grads_for(0))
    opt.step()
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2]]
    assert sd["param_groups"][1]["lr"] == 0.5
    assert set(sd["state"]) == {0, 1, 2}
    assert sd["state"][0]["step"] == 1
    assert isinstance(sd["state"][0]["exp_avg"], np.ndarray)


def test_load_state_dict_rejects_a_different_layout(backend):
    params = make_params(backend)
    opt = SGD(params, lr=0.1, momentum=0.9)
    set_grads(params, grads_for(0))
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="group"):
        SGD(params[:2], lr=0.1).load_state_dict(sd)
    other = [Parameter(backend.asarray(np.zeros((2, 2))), backend)] + params[1:]
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        SGD(other, lr=0.1, momentum=0.9).load_state_dict(sd)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda ps: SGD(ps, lr=-0.1), "learning rate"),
        (lambda ps: Adam(ps, lr=-1e-3), "learning rate"),
        (lambda ps: SGD(ps, lr=0.1, weight_decay=-1.0), "weight_decay"),
        (lambda ps: SGD(ps, lr=0.1, momentum=-0.5), "momentum"),
        (lambda ps: SGD(ps, lr=0.1, nesterov=True), "Nesterov"),
        (lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
        (lambda ps: Adam(ps, betas=(1.0, 0.999)), "betas"),
        (lambda ps: Adam(ps, betas=(0.9, -0.1)), "betas"),
        (lambda ps: AdamW(ps, betas=(0.9, 1.5)), "betas"),
        (lambda ps: Adam(ps, eps=-1.0), "eps"),
        (lambda ps: RMSprop(ps, alpha=1.5), "alpha"),
        (lambda ps: RMSprop(ps, momentum=-1.0), "momentum"),
        (lambda ps: SGD([], lr=0.1), "empty"),
        (lambda ps: Adam(iter([])), "empty"),
        (lambda ps: SGD([ps[0], ps[1], ps[0]], lr=0.1), "more than once|duplicate"),
        (lambda ps: SGD([{"params": [ps[0]]}, {"params": [ps[0]]}], lr=0.1), "more than one"),
    ],
)
def test_validation_errors(backend, make, match):
    with pytest.raises(ValueError, match=match):
        make(make_params(backend))


def test_non_parameters_are_rejected(backend):
    with pytest.raises(TypeError, match="Parameter"):
        SGD([np.zeros(3)], lr=0.1)


def test_optimizer_on_a_model(backend_name):
    model = dc.nn.mlp([3, 4, 2], backend=backend_name, dtype="float64")
    opt = SGD(model.parameters(), lr=0.1)
    assert len(opt.param_groups[0]["params"]) == 4
    assert "lr: 0.1" in repr(opt)


# ---------------------------------------------------------------------------- schedulers
def _opt(lr=0.1, lr2=None):
    be = dc.get_backend("numpy")
    p = Parameter(be.asarray(np.zeros(2)), be)
    if lr2 is None:
        return SGD([p], lr=lr)
    q = Parameter(be.asarray(np.zeros(2)), be)
    return SGD([{"params": [p]}, {"params": [q], "lr": lr2}], lr=lr)


def _lrs(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr())
        sched.step()
    return out


def test_step_lr():
    opt = _opt(0.1, lr2=1.0)
    sched = StepLR(opt, step_size=3, gamma=0.5)
    lrs = _lrs(sched, 10)
    for e, (a, b) in enumerate(lrs):
        assert a == pytest.approx(0.1 * 0.5 ** (e // 3), rel=1e-14)
        assert b == pytest.approx(1.0 * 0.5 ** (e // 3), rel=1e-14)


def test_cosine_annealing_lr():
    opt = _opt(0.2)
    sched = CosineAnnealingLR(opt, T_max=7, eta_min=0.01)
    for e, (lr,) in enumerate(_lrs(sched, 8)):
        expected = 0.01 + 0.5 * (0.2 - 0.01) * (1 + math.cos(math.pi * e / 7))
        assert lr == pytest.approx(expected, rel=1e-13)
    assert opt.param_groups[0]["lr"] == pytest.approx(
        0.01 + 0.5 * 0.19 * (1 + math.cos(8 * math.pi / 7))
    )


def test_linear_lr():
    opt = _opt(0.3)
    sched = LinearLR(opt, start_factor=0.25, end_factor=1.0, total_iters=4)
    expected = [0.3 * f for f in (0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0, 1.0)]
    assert [lr for (lr,) in _lrs(sched, 7)] == pytest.approx(expected, rel=1e-13)


def test_warmup_cosine_lr():
    base, warmup, total, eta_min = 0.4, 4, 12, 0.02
    opt = _opt(base)
    sched = WarmupCosineLR(opt, warmup=warmup, total=total, eta_min=eta_min)
    lrs = [lr for (lr,) in _lrs(sched, total + 3)]
    ramp = lrs[: warmup + 1]
    assert 0 < ramp[0] < base
    assert np.allclose(np.diff(ramp), base / (warmup + 1))  # linear, reaching base at `warmup`
    assert ramp[-1] == pytest.approx(base)
    for e in range(warmup, total + 3):
        t = min(e - warmup, total - warmup) / (total - warmup)
        assert lrs[e] == pytest.approx(eta_min + (base - eta_min) * (1 + math.cos(math.pi * t)) / 2)
    assert lrs[total] == pytest.approx(eta_min) and lrs[-1] == pytest.approx(eta_min)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: StepLR(o, step_size=2, gamma=0.3),
        lambda o: CosineAnnealingLR(o, T_max=5),
        lambda o: LinearLR(o, 0.5, total_iters=3),
        lambda o: WarmupCosineLR(o, warmup=2, total=6),
    ],
)
def test_scheduler_state_dict(make):
    a_opt, b_opt = _opt(0.1), _opt(0.1)
    a, b = make(a_opt), make(b_opt)
    for _ in range(3):
        a.step()
    sd = a.state_dict()
    assert "optimizer" not in sd and sd["last_epoch"] == 3
    b.load_state_dict(sd)
    assert b.get_last_lr() == a.get_last_lr()
    assert b_opt.param_groups[0]["lr"] == a_opt.param_groups[0]["lr"]
    assert _lrs(a, 4) == _lrs(b, 4)


@pytest.mark.parametrize(
    "make",
    [
        lambda o: StepLR(o, step_size=0),
        lambda o: CosineAnnealingLR(o, T_max=0),
        lambda o: LinearLR(o, start_factor=0.0),
        lambda o: WarmupCosineLR(o, warmup=5, total=5),
    ],
)
def test_scheduler_validation(make):
    with pytest.raises(ValueError):
        make(_opt())


def test_scheduler_needs_a_deepcore_optimizer():
    with pytest.raises(TypeError):
        StepLR(object(), step_size=1)


# ---------------------------------------------------------------------------- clipping
def _clip_params(backend, scale=1.0):
    params = make_params(backend)
    gs = [g * scale for g in grads_for(0)]
    set_grads(params, gs)
    return params, gs


@pytest.mark.parametrize("max_norm", [0.5, 3.0])
def test_clip_grad_norm_l2(backend, max_norm):
    params, gs = _clip_params(backend)
    total = math.sqrt(sum(float((g**2).sum()) for g in gs))
    assert total > max_norm
    got = clip_grad_norm_(params, max_norm)
    assert got == pytest.approx(total, rel=1e-12)
    coef = max_norm / (total + 1e-6)
    for p, g in zip(params, gs, strict=True):
        np.testing.assert_allclose(dc.to_numpy(p.grad), g * coef, rtol=1e-12)
    new_total = math.sqrt(sum(float((dc.to_numpy(p.grad) ** 2).sum()) for p in params))
    assert new_total == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_norm_inf(backend):
    params, gs = _clip_params(backend)
    total = max(float(np.abs(g).max()) for g in gs)
    got = clip_grad_norm_(params, 0.1, norm_type=math.inf)
    assert got == pytest.approx(total, rel=1e-14)
    for p, g in zip(params, gs, strict=True):
        np.testing.assert_allclose(dc.to_numpy(p.grad), g * 0.1 / (total + 1e-6), rtol=1e-12)


def test_clip_grad_norm_nothing_to_clip(backend):
    params, gs = _clip_params(backend, scale=1e-3)
    total = math.sqrt(sum(float((g**2).sum()) for g in gs))
    assert clip_grad_norm_(params, 1.0) == pytest.approx(total, rel=1e-12)
    for p, g in zip(params, gs, strict=True):
        np.testing.assert_array_equal(dc.to_numpy(p.grad), g)
    fresh = make_params(backend)  # no gradients at all
    assert clip_grad_norm_(fresh, 1.0) == 0.0
    assert clip_grad_norm_(params[0], 1e9) == pytest.approx(np.sqrt((gs[0] ** 2).sum()))


def test_clip_grad_norm_errors(backend):
    params, _ = _clip_params(backend)
    with pytest.raises(ValueError, match="norm_type"):
        clip_grad_norm_(params, 1.0, norm_type=1.0)
    params[0].grad = backend.asarray(np.full(SHAPES[0], np.nan))
    with pytest.raises(dc.NonFiniteError):
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
