"""The Numba backend's layered whole step: its output-layer call (kernels/numba/head.py) and
its choice between the update inside the gradient GEMM and one multi-tensor update."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from deepcore.backends import get_backend  # noqa: E402


@pytest.fixture()
def nb(monkeypatch):
    be = get_backend("numba")
    monkeypatch.setattr(be, "step_path", "layered")
    monkeypatch.setattr(be, "gemm_impl", "jit")
    return be


def _steps(nb, dt, *, masks, opt="adam", steps=3):
    """Weights, biases and losses after `steps` fused_mlp_step calls on a fixed model."""
    rng = np.random.default_rng(5)
    sizes, batch = (24, 40, 32, 6), 20
    ws = [(rng.standard_normal((o, i)) / np.sqrt(i)).astype(dt)
          for i, o in zip(sizes, sizes[1:], strict=False)]  # fmt: skip
    bs = [(rng.standard_normal(o) * 0.1).astype(dt) for o in sizes[1:]]
    gws, gbs = [np.empty_like(w) for w in ws], [np.empty_like(b) for b in bs]
    nst = 1 if opt == "sgd" else 2
    state = [[np.zeros(p.size, dt) for p in (*ws, *bs)] for _ in range(nst)]
    losses = []
    for t in range(1, steps + 1):
        x = rng.standard_normal((batch, sizes[0])).astype(dt)
        y = rng.integers(0, sizes[-1], batch)
        mk = None
        if masks:
            mk = [(rng.random((batch, o)) > 0.25).astype(dt) / dt(0.75) for o in sizes[1:]]
        kw = dict(lr=0.05, momentum=0.9) if opt == "sgd" else dict(lr=0.01, step=t)
        loss = nb.fused_mlp_step(ws, bs, gws, gbs, ("relu", "tanh", "identity"), x, y, opt,
                                 state=state, masks=mk, **kw)  # fmt: skip
        losses.append(float(loss))
    return [*ws, *bs], losses


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("masks", [False, True])
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_head_and_update_choices_give_the_same_bits(nb, monkeypatch, dt, masks, opt):
    """The output layer as one call or as GEMMs, and the update inside the weight-gradient
    GEMM or after the backward: the same bits (dropout masks on every layer included)."""
    from deepcore.backends.numba import layered

    runs = []
    for head, update_min in ((layered.HEAD_MAX_WORK, 1 << 20), (0, 0), (0, 1 << 20)):
        monkeypatch.setattr(layered, "HEAD_MAX_WORK", head)
        monkeypatch.setattr(nb, "gemm_update_min", update_min)
        runs.append(_steps(nb, dt, masks=masks, opt=opt))
    for params, losses in runs[1:]:
        assert losses == runs[0][1]
        for a, b in zip(params, runs[0][0], strict=True):
            np.testing.assert_array_equal(a, b)


def test_head_refuses_labels_out_of_range_before_any_change(nb):
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((16, 8)).astype(np.float32),
          rng.standard_normal((4, 16)).astype(np.float32)]  # fmt: skip
    bs = [np.zeros(16, np.float32), np.zeros(4, np.float32)]
    before = [w.copy() for w in ws]
    gws, gbs = [np.empty_like(w) for w in ws], [np.empty_like(b) for b in bs]
    x = rng.standard_normal((6, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 0])
    assert nb._head(nb._net(ws, bs, ("relu", "identity")), ws, 6)
    with pytest.raises(IndexError):
        nb.fused_mlp_step(ws, bs, gws, gbs, ("relu", "identity"), x, y, "sgd", lr=0.1)
    for a, b in zip(ws, before, strict=True):
        np.testing.assert_array_equal(a, b)
