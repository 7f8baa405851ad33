"""Parity with PyTorch (skipped when torch is absent): state dicts in both directions, training
runs under each optimizer, losses and their gradients, GELU and LeakyReLU."""

from __future__ import annotations

import numpy as np
import pytest

import deepcore as dc

IN, HID, OUT, BATCH, STEPS = 8, 16, 4, 12, 20
TOL = {"float64": dict(rtol=1e-9, atol=1e-11), "float32": dict(rtol=2e-4, atol=2e-5)}


@pytest.fixture(autouse=True)
def _one_torch_thread(torch):
    """Tiny tensors: torch's thread pool only adds overhead on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torch_dtype(torch, dtype: str):
    return {"float32": torch.float32, "float64": torch.float64}[dtype]


def pair(torch, backend_name: str, dtype: str, act: str = "relu"):
    """The same MLP in deepcore and torch, torch loaded from deepcore's initial weights."""
    dc.seed(0)
    acts = {
        "relu": (dc.nn.ReLU, torch.nn.ReLU),
        "tanh": (dc.nn.Tanh, torch.nn.Tanh),
        "gelu": (dc.nn.GELU, torch.nn.GELU),
    }
    dca, tha = acts[act]
    kw = dict(backend=backend_name, dtype=dtype)
    ours = dc.nn.Sequential(
        dc.nn.Linear(IN, HID, **kw), dca(**kw), dc.nn.Linear(HID, HID, **kw), dca(**kw),
        dc.nn.Linear(HID, OUT, **kw),
    )  # fmt: skip
    theirs = torch.nn.Sequential(
        torch.nn.Linear(IN, HID), tha(), torch.nn.Linear(HID, HID), tha(), torch.nn.Linear(HID, OUT)
    ).to(torch_dtype(torch, dtype))
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs


def batches(dtype: str, n: int = STEPS):
    r = np.random.default_rng(7)
    for _ in range(n):
        yield r.standard_normal((BATCH, IN)).astype(dtype), r.integers(0, OUT, BATCH)


def test_state_dict_loads_into_torch_and_back(torch, backend_name, dtype):
    ours, theirs = pair(torch, backend_name, dtype)
    sd = ours.state_dict()
    tsd = theirs.state_dict()
    assert list(sd) == list(tsd)  # "0.weight", "0.bias", "2.weight", ...
    for k in sd:
        assert tuple(sd[k].shape) == tuple(tsd[k].shape), k
    x = np.random.default_rng(0).standard_normal((5, IN)).astype(dtype)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(dc.to_numpy(ours(x)), expected, **TOL[dtype])

    # reverse: torch's own initial weights (torch tensors) into a fresh deepcore model
    torch.manual_seed(0)
    fresh = torch.nn.Sequential(
        torch.nn.Linear(IN, HID), torch.nn.ReLU(), torch.nn.Linear(HID, HID), torch.nn.ReLU(),
        torch.nn.Linear(HID, OUT),
    ).to(torch_dtype(torch, dtype))  # fmt: skip
    dc.seed(99)
    mine, _ = pair(torch, backend_name, dtype)
    mine.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        expected = fresh(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(dc.to_numpy(mine(x)), expected, **TOL[dtype])


OPTIMIZERS = {
    "sgd_nesterov": (
        lambda ps: dc.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda torch, ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                          weight_decay=1e-3),
    ),
    "sgd_dampening": (
        lambda ps: dc.optim.SGD(ps, lr=0.05, momentum=0.8, dampening=0.2),
        lambda torch, ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, dampening=0.2),
    ),
    "adam": (
        lambda ps: dc.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
        lambda torch, ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    ),
    "adam_amsgrad": (
        lambda ps: dc.optim.Adam(ps, lr=1e-2, amsgrad=True),
        lambda torch, ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
    ),
    "adamw": (
        lambda ps: dc.optim.AdamW(ps, lr=1e-2, weight_decay=0.05),
        lambda torch, ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05),
    ),
    "rmsprop": (
        lambda ps: dc.optim.RMSprop(ps, lr=1e-3, centered=True, momentum=0.9),
        lambda torch, ps: torch.optim.RMSprop(ps, lr=1e-3, centered=True, momentum=0.9),
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    "opt_name,act",
    [(name, "relu") for name in OPTIMIZERS] + [("adam", "gelu"), ("sgd_nesterov", "tanh")],
)
def test_training_matches_torch(torch, backend_name, dtype, opt_name, act):
    ours, theirs = pair(torch, backend_name, dtype, act)
    make_ours, make_theirs = OPTIMIZERS[opt_name]
    opt = make_ours(ours.parameters())
    topt = make_theirs(torch, theirs.parameters())
    loss_fn = dc.nn.CrossEntropyLoss()
    tloss_fn = torch.nn.CrossEntropyLoss()
    for x, y in batches(dtype):
        loss = loss_fn(ours(x), y)
        ours.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
        topt.zero_grad()
        tloss = tloss_fn(theirs(torch.from_numpy(x)), torch.from_numpy(y))
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(float(loss), tloss.item(), **TOL[dtype])
    tsd = theirs.state_dict()
    for k, v in ours.state_dict().items():
        assert v.dtype == np.dtype(dtype)
        np.testing.assert_allclose(v, tsd[k].numpy(), err_msg=k, **TOL[dtype])


LOSSES = {
    "ce": (dc.nn.CrossEntropyLoss, "CrossEntropyLoss"),
    "bce": (dc.nn.BCEWithLogitsLoss, "BCEWithLogitsLoss"),
    "mse": (dc.nn.MSELoss, "MSELoss"),
}


@pytest.mark.parametrize("kind", list(LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_losses_and_gradients_match_torch(torch, backend_name, dtype, kind, reduction, scale):
    r = np.random.default_rng(3)
    z = (scale * r.standard_normal((9, 5))).astype(dtype)
    if kind == "ce":
        t = r.integers(0, 5, 9)
        tt = torch.from_numpy(t)
    elif kind == "bce":
        t = r.random((9, 5)).astype(dtype)
        tt = torch.from_numpy(t)
    else:
        t = r.standard_normal((9, 5)).astype(dtype)
        tt = torch.from_numpy(t)
    ours_cls, torch_name = LOSSES[kind]
    loss_fn = ours_cls(reduction, backend=backend_name, dtype=dtype)
    loss = loss_fn(z, t)
    grad = dc.to_numpy(loss_fn.backward())
    zt = torch.from_numpy(z).requires_grad_(True)
    tl = getattr(torch.nn, torch_name)(reduction=reduction)(zt, tt)
    tl.backward()
    assert np.dtype(loss.dtype) == np.dtype(dtype) and grad.dtype == np.dtype(dtype)
    tol = dict(TOL[dtype])
    tol["atol"] *= scale
    np.testing.assert_allclose(float(loss), tl.item(), **tol)
    np.testing.assert_allclose(grad, zt.grad.numpy(), **tol)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda kw: dc.nn.GELU(**kw), lambda torch: torch.nn.GELU()),
        (lambda kw: dc.nn.GELU("tanh", **kw), lambda torch: torch.nn.GELU(approximate="tanh")),
        (lambda kw: dc.nn.LeakyReLU(**kw), lambda torch: torch.nn.LeakyReLU()),
        (lambda kw: dc.nn.LeakyReLU(0.2, **kw), lambda torch: torch.nn.LeakyReLU(0.2)),
        (lambda kw: dc.nn.Sigmoid(**kw), lambda torch: torch.nn.Sigmoid()),
        (lambda kw: dc.nn.Tanh(**kw), lambda torch: torch.nn.Tanh()),
        (lambda kw: dc.nn.Softmax(**kw), lambda torch: torch.nn.Softmax(dim=-1)),
    ],
    ids=["gelu", "gelu_tanh", "leaky_relu", "leaky_relu_0.2", "sigmoid", "tanh", "softmax"],
)
def test_activations_match_torch(torch, backend_name, dtype, ours, theirs):
    x = (4 * np.random.default_rng(5).standard_normal((6, 33))).astype(dtype)
    dy = np.random.default_rng(6).standard_normal((6, 33)).astype(dtype)
    mod = ours(dict(backend=backend_name, dtype=dtype))
    y = dc.to_numpy(mod(x))
    dx = dc.to_numpy(mod.backward(dy))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = theirs(torch)(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(dx, xt.grad.numpy(), **TOL[dtype])
