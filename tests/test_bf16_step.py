"""The numba bf16 training step on the fused routes: the whole step (layer by layer on the bf16
kernel, every parameter updated by one multi-tensor call) and the fused stages (hooks, clipping)
give the module-by-module bf16 route's bits, and the planner says which route ran."""

from __future__ import annotations

import numpy as np
import pytest

import deepcore as dc
from deepcore.train import Trainer

pytest.importorskip("numba")
pytest.importorskip("ml_dtypes")


@pytest.fixture()
def nb(monkeypatch):
    be = dc.get_backend("numba")
    monkeypatch.setattr(be, "gemm_impl", "jit")
    return be


def _opt(name, model):
    w = [m.weight for m in model if isinstance(m, dc.nn.Linear)]
    b = [m.bias for m in model if isinstance(m, dc.nn.Linear)]
    return {
        "plain_sgd": lambda: dc.optim.SGD(model.parameters(), lr=0.05),
        "sgd": lambda: dc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        "adam": lambda: dc.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3),
        "groups": lambda: dc.optim.SGD(
            [{"params": w, "weight_decay": 0.05}, {"params": b, "weight_decay": 0.0}],
            lr=0.05,
            momentum=0.5,
        ),
    }[name]()


def _train(opt_name, *, fuse, dropout=0.0, clip=None, hooks=(), sizes=(20, 48, 32, 5)):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(96, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], 96)
    dc.seed(3)
    model = dc.nn.mlp(list(sizes), "relu", dropout=dropout, backend="numba")
    model.fuse = fuse
    t = Trainer(model, "cross_entropy", _opt(opt_name, model), seed=1, precision="bf16",
                fused="auto" if fuse else False, clip_grad_norm=clip,
                grad_hooks=hooks)  # fmt: skip
    t.fit((X, y), epochs=2, batch_size=32, progress=False)
    return t, [p.numpy() for p in model.parameters()]


def _assert_same_bits(a, b):
    (ta, pa), (tb, pb) = a, b
    assert ta.history["loss"] == tb.history["loss"]
    for u, v in zip(pa, pb, strict=True):
        np.testing.assert_array_equal(u, v)


CONFIGS = [  # (optimizer, dropout, clip, route)
    ("plain_sgd", 0.0, None, "fused-step"),
    ("sgd", 0.0, None, "fused-step"),
    ("adam", 0.0, None, "fused-step"),
    ("groups", 0.0, None, "fused-step"),
    ("adam", 0.25, None, "fused-step"),
    ("sgd", 0.25, 0.5, "fused-stages"),  # clip_grad_norm_ sits between backward and update
]


@pytest.mark.parametrize("opt_name,dropout,clip,route", CONFIGS, ids=str)
def test_fused_bf16_step_equals_module_by_module(nb, opt_name, dropout, clip, route):
    fused = _train(opt_name, fuse=True, dropout=dropout, clip=clip)
    ref = _train(opt_name, fuse=False, dropout=dropout, clip=clip)
    assert fused[0].step_route == route and ref[0].step_route == "stages"
    _assert_same_bits(fused, ref)


def test_bf16_updates_every_parameter_in_the_multi_tensor_call(nb, monkeypatch):
    """Even weights of gemm_update_min elements: the update inside the bf16 kernel did not pay
    (BENCHMARKS.md), unlike float32's."""
    monkeypatch.setattr(nb, "gemm_update_min", 0)
    _train("sgd", fuse=True)
    assert list(nb._last_plan.rest) == [(False, False, False)]


class _Halve:
    """A hook standing in for an all-reduce: averages the gradient with a zero one."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, params):
        self.calls += 1
        for p in params:
            if p.grad is not None:
                p.grad *= np.float32(0.5)


def test_hook_runs_before_the_multi_tensor_update(nb):
    h1, h2 = _Halve(), _Halve()
    fused = _train("adam", fuse=True, hooks=[h1])
    ref = _train("adam", fuse=False, hooks=[h2])
    assert fused[0].step_route == "fused-stages" and h1.calls == h2.calls == 6
    _assert_same_bits(fused, ref)


@pytest.mark.filterwarnings("ignore:deepcore. this CPU has no AVX512_BF16")
def test_emulated_bf16_takes_the_same_route_and_bits(nb, monkeypatch):
    """Without AVX512_BF16 the same route runs on rounded operands and the float32 GEMM, the
    bias and activation after it."""
    monkeypatch.setitem(nb.__dict__, "_bf16_k", None)
    fused = _train("sgd", fuse=True)
    ref = _train("sgd", fuse=False)
    assert fused[0].step_route == "fused-step"
    _assert_same_bits(fused, ref)


def test_wider_layers_equal_module_by_module(nb):
    """Shapes past the bf16 kernel's parallel threshold (on 2+ threads) and the register
    block's edges (65 columns)."""
    sizes = (300, 260, 65, 7)
    _assert_same_bits(_train("sgd", fuse=True, sizes=sizes), _train("sgd", fuse=False, sizes=sizes))


@pytest.mark.parametrize("sizes", [(40, 128, 64, 16), (64, 512, 512, 16)], ids=str)
def test_forward_packed_weights_serve_the_input_gradient(nb, monkeypatch, sizes):
    """The whole bf16 step's forward GEMMs also pack each later layer's weight for its input
    gradient (serial and 2-thread GEMMs), which reads it packed: the module-by-module bits."""
    if nb._bf16_kernels() is None:
        pytest.skip("this CPU has no AVX512_BF16")
    from deepcore.backends.numba import bf16 as nb16

    monkeypatch.setattr(nb16, "STREAM_BYTES", 0)  # (wide's weights and up, else)
    used = []
    orig = nb._bf16_matmul

    def spy(*a, **k):
        used.append(k.get("bp") is not None)
        return orig(*a, **k)

    monkeypatch.setitem(nb.__dict__, "_bf16_matmul", spy)
    fused = _train("sgd", fuse=True, sizes=sizes)
    assert fused[0].step_route == "fused-step" and sum(used) == 2 * 6  # 2 layers, 6 steps
    monkeypatch.undo()
    _assert_same_bits(fused, _train("sgd", fuse=False, sizes=sizes))


def test_bf16_wt_only_where_the_forward_packs_every_block_once(nb, monkeypatch):
    """No buffer for rows not a multiple of 16, columns not of 64, or a grid that splits the
    batch (two threads would pack one block)."""
    kern = nb._bf16_kernels()
    if kern is None:
        pytest.skip("this CPU has no AVX512_BF16")
    ok = np.zeros((64, 128), np.float32)
    assert nb._bf16_wt("t", 32, ok, 2) is None  # small: still in cache for the backward
    from deepcore.backends.numba import bf16 as nb16

    monkeypatch.setattr(nb16, "STREAM_BYTES", 0)
    assert nb._bf16_wt("t", 32, ok, 2).shape == kern.packed_b_shape(64, 128)
    assert nb._bf16_wt("t", 32, np.zeros((10, 128), np.float32), 2) is None
    assert nb._bf16_wt("t", 32, np.zeros((64, 100), np.float32), 2) is None
    big = np.zeros((512, 512), np.float32)
    assert nb._bf16_wt("t", 64, big, 2) is not None
    monkeypatch.setattr(kern, "grid", lambda m, n, k, nt: (2, 1))
    assert nb._bf16_wt("t", 64, big, 2) is None
    assert nb._bf16_wt("t", 64, big, 1) is not None  # one thread: the serial kernel


def test_fused_mlp_step_refuses_fp16(nb):
    w, b = [np.zeros((2, 3), np.float32)], [np.zeros(2, np.float32)]
    with pytest.raises(ValueError, match="precision must be one of float32, bf16"):
        nb.fused_mlp_step(w, b, [np.empty_like(w[0])], [np.empty_like(b[0])], ["identity"],
                          np.zeros((4, 3), np.float32), np.zeros(4, np.int64), "sgd", lr=0.1,
                          precision="fp16")  # fmt: skip


def _hand_loop(fuse, *, accumulate, dropout=0.25, steps=3):
    """A PyTorch-style loop under autocast("bfloat16"): losses, gradients, dx and weights."""
    rng = np.random.default_rng(1)
    dc.seed(2)
    model = dc.nn.mlp([20, 48, 32, 5], "tanh", dropout=dropout, backend="numba")
    model.fuse = fuse
    loss_fn = dc.nn.CrossEntropyLoss()
    opt = dc.optim.Adam(model.parameters(), lr=1e-2)
    out = []
    for _ in range(steps):
        x = rng.normal(size=(16, 20)).astype(np.float32)
        y = rng.integers(0, 5, 16)
        with dc.autocast("bfloat16"):
            loss = loss_fn(model(x), y)
            dx = model.backward(loss_fn.backward())
            if accumulate:  # a second backward adds to the live gradients
                loss_fn(model(x), y)
                model.backward(loss_fn.backward())
        out += [float(loss), np.asarray(dx), *(p.grad.copy() for p in model.parameters())]
        opt.step()
        opt.zero_grad()
    return out + [p.numpy() for p in model.parameters()]


@pytest.mark.parametrize("accumulate", [False, True])
def test_hand_loop_under_autocast_equals_module_by_module(nb, monkeypatch, accumulate):
    """model(x) and model.backward(g) under autocast run the fused bf16 stages (accumulating
    through the default stages) with the module-by-module bits, input gradient included."""
    calls = []
    orig = nb.mlp_forward
    monkeypatch.setitem(nb.__dict__, "mlp_forward",  # (an instance attribute, removed after)
                        lambda *a, **k: calls.append(k["precision"]) or orig(*a, **k))  # fmt: skip
    fused = _hand_loop(True, accumulate=accumulate)
    assert calls and set(calls) == {"bf16"}
    ref = _hand_loop(False, accumulate=accumulate)
    for a, b in zip(fused, ref, strict=True):
        np.testing.assert_array_equal(a, b)
