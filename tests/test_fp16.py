"""fp16: the policy, the reference fp16 GEMM, and dynamic loss scaling (deepcore.amp.GradScaler).

References: NumPy's float16 cast (round to nearest even, overflow to inf) and float64 products of
the rounded operands; the scaler against PyTorch's documented rules (halve and skip on inf/NaN,
double after growth_interval clean steps); an injected overflow must leave every parameter and
optimizer state unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import deepcore as dc
from deepcore.amp import GradScaler
from deepcore.data import load_digits
from deepcore.errors import DtypeError
from deepcore.precision import autocast, get_precision, normalize_precision, round_fp16
from deepcore.train import Trainer, load_trainer

BACKENDS = ["numpy"] + (["numba"] if "numba" in dc.available_backends() else [])
U16 = 2.0**-11  # float16 unit roundoff
U32 = 2.0**-24


def _digits(n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return d.X[:n].astype(np.float32), d.y[:n]


# ------------------------------------------------------------------ the policy
def test_fp16_names_and_autocast():
    for name in ("fp16", "float16", "half", "FP16", "16-mixed", "mixed_float16"):
        assert normalize_precision(name) == "fp16"
    with autocast("float16"):
        assert get_precision() == "fp16"
        with autocast("bfloat16"):
            assert get_precision() == "bf16"
        assert get_precision() == "fp16"
    with dc.autocast(np.float16):
        assert get_precision() == "fp16"
    assert get_precision() == "float32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'.*fp16"):
        normalize_precision("fp8")


def test_round_fp16_ties_overflow_underflow():
    one = np.float32(1)
    x = np.array([1 + U16, 1 + 3 * U16, 65504, 65519.996, 65520, -1e6, 2.0**-25, 2.0**-24 * 1.5,
                  np.nan], np.float32)  # fmt: skip
    r = round_fp16(x)
    assert r.dtype == np.float32
    assert r[0] == one and r[1] == 1 + 4 * U16  # ties to even
    assert r[2] == 65504 and r[3] == 65504 and r[4] == np.inf and r[5] == -np.inf
    assert r[6] == 0 and r[7] == 2.0**-23 and np.isnan(r[8])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (7, 33, 5), (64, 100, 31)])
@pytest.mark.parametrize(("ta", "tb"), [(False, False), (True, False), (False, True)])
def test_gemm_fp16_against_float64(backend, m, k, n, ta, tb):
    be = dc.get_backend(backend)
    rng = np.random.default_rng(m * k + n)
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    out = be.asarray(c0.copy())
    be.gemm_fp16(be.asarray(a), be.asarray(b), ta, tb, alpha=0.5, beta=2.0, out=out)
    ra, rb = round_fp16(a).astype(np.float64), round_fp16(b).astype(np.float64)
    ra, rb = (ra.T if ta else ra), (rb.T if tb else rb)
    want = 0.5 * ra @ rb + 2.0 * c0
    bound = (k + 4) * U32 * (0.5 * np.abs(ra) @ np.abs(rb) + 2 * np.abs(c0)) + 1e-30
    got = be.to_host(out).astype(np.float64)
    assert (np.abs(got - want) <= bound).all()
    # and the operands really were rounded to fp16 (not bf16, not left float32)
    unrounded = 0.5 * (a.T if ta else a).astype(np.float64) @ (b.T if tb else b) + 2.0 * c0
    if k > 1:
        assert not np.allclose(got, unrounded, rtol=1e-6, atol=0)


def test_gemm_fp16_refuses_float64_in_one_line():
    be = dc.get_backend("numpy")
    a = np.ones((2, 2))
    with pytest.raises(DtypeError, match=r"^gemm_fp16: operands must be float32, got float64"):
        be.gemm_fp16(a, a)


def test_linear_runs_its_gemms_in_fp16_under_autocast():
    dc.seed(0)
    lin = dc.nn.Linear(20, 7, backend="numpy")
    x = np.random.default_rng(1).standard_normal((5, 20)).astype(np.float32) * 3
    with autocast("float16"):
        y = lin(x)
        gx = lin.backward(np.ones((5, 7), np.float32))
    w, b = lin.weight.numpy(), lin.bias.numpy()
    want = round_fp16(x).astype(np.float64) @ round_fp16(w).astype(np.float64).T + b
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, np.ones((5, 7)) @ round_fp16(w), rtol=1e-6)
    np.testing.assert_allclose(lin.weight.grad, np.ones((7, 5)) @ round_fp16(x), rtol=1e-6)
    assert not np.allclose(y, x @ w.T + b, rtol=1e-6, atol=0)


# ------------------------------------------------------------------ the scaler
class _P:
    """A parameter stand-in with a gradient on the numpy backend."""

    def __init__(self, g):
        self.grad = np.asarray(g, np.float32)
        self.backend = dc.get_backend("numpy")


def test_scaler_unscales_checks_backs_off_and_grows():
    s = GradScaler(init_scale=8.0, growth_interval=2)
    g = s.scale(np.array([0.5, -1.0], np.float32))
    np.testing.assert_array_equal(g, [4.0, -8.0])
    p = _P(g)
    assert s(params=[p]) is True  # finite: unscaled in place, the update may run
    np.testing.assert_array_equal(p.grad, [0.5, -1.0])
    assert s.get_scale() == 8.0 and s.growth_tracker == 1
    assert s([_P([1.0])]) is True and s.get_scale() == 16.0 and s.growth_tracker == 0  # grown
    for bad in (np.inf, -np.inf, np.nan):
        assert s([_P([1.0]), _P([2.0, bad])]) is False and s.found_inf is False  # reset by update
    assert s.get_scale() == 2.0 and s.skipped_steps == 3 and s.growth_tracker == 0
    state = s.state_dict()
    t = GradScaler()
    t.load_state_dict(json.loads(json.dumps(state)))
    assert t.state_dict() == state
    with pytest.raises(ValueError, match="growth_tracker must be an integer"):
        t.load_state_dict({**state, "growth_tracker": -1})
    with pytest.raises(ValueError, match="bad backoff_factor"):
        GradScaler(backoff_factor=1.5)


def _fp16_trainer(backend: str, opt: str = "sgd", **scaler: float) -> Trainer:
    dc.seed(0)
    model = dc.nn.mlp([64, 32, 10], "relu", backend=backend)
    t = Trainer(model, "cross_entropy", opt, lr=0.05 if opt == "sgd" else 1e-3, seed=0,
                precision="fp16")  # fmt: skip
    t.scaler = GradScaler(**scaler)
    return t


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_overflow_skips_the_step_halves_the_scale_and_leaves_parameters(backend, opt):
    """A scale so large that the scaled gradients overflow float16 (inf in the GEMM operands):
    the step is skipped (weights and optimizer state bitwise unchanged), the scale halves, until
    it is small enough and training proceeds."""
    X, y = _digits()
    t = _fp16_trainer(backend, opt, init_scale=2.0**40)
    before = [p.numpy().copy() for p in t.model.parameters()]
    state_before = json.dumps(t.optimizer.state_dict(), default=lambda a: np.asarray(a).tolist())
    loss = t.train_step(X[:64], y[:64])
    assert np.isfinite(float(loss))  # the loss itself is not scaled
    assert t.scaler.get_scale() == 2.0**39 and t.scaler.skipped_steps == 1
    for p, b in zip(t.model.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.numpy(), b)
        assert p.grad is None  # zeroed for the next step
    after = json.dumps(t.optimizer.state_dict(), default=lambda a: np.asarray(a).tolist())
    assert after == state_before
    for i in range(40):
        t.train_step(X[i % 4 * 64 : (i % 4 + 1) * 64], y[i % 4 * 64 : (i % 4 + 1) * 64])
    skipped = t.scaler.skipped_steps  # each skip halved the scale (no growth in 41 steps)
    assert 2 <= skipped < 41 and t.scaler.get_scale() == 2.0 ** (40 - skipped)
    changed = [
        not np.array_equal(p.numpy(), b) for p, b in zip(t.model.parameters(), before, strict=True)
    ]
    assert all(changed)  # and once it fitted, training went on


def test_growth_after_clean_steps_in_the_trainer():
    X, y = _digits()
    t = _fp16_trainer("numpy", init_scale=2.0**4, growth_interval=3)
    for _ in range(7):
        t.train_step(X[:64], y[:64])
    assert t.scaler.skipped_steps == 0 and t.scaler.get_scale() == 2.0**6
    assert t.scaler.growth_tracker == 1


def test_hand_written_loop_equals_the_trainer():
    """scaler.scale / step / update around a loop gives the Trainer's hook route bitwise."""
    X, y = _digits()
    t = _fp16_trainer("numpy", init_scale=2.0**12)
    for i in range(3):
        t.train_step(X[i * 64 : (i + 1) * 64], y[i * 64 : (i + 1) * 64])
    dc.seed(0)
    model = dc.nn.mlp([64, 32, 10], "relu", backend="numpy")
    opt = dc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # the Trainer's "sgd"
    loss_fn = dc.nn.CrossEntropyLoss(backend="numpy")
    scaler = GradScaler(init_scale=2.0**12)
    for i in range(3):
        with dc.autocast("float16"):
            loss_fn(model(X[i * 64 : (i + 1) * 64]), y[i * 64 : (i + 1) * 64])
            model.backward(scaler.scale(loss_fn.backward()))
        assert scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    for p, q in zip(model.parameters(), t.model.parameters(), strict=True):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_fp16_needs_a_float32_model():
    model = dc.nn.mlp([4, 3], backend="numpy", dtype="float64")
    t = Trainer(model, "cross_entropy", "sgd", precision="fp16")
    with pytest.raises(ValueError, match=r"^precision 'fp16' needs a float32 model; this one is "
                                         r"float64$"):  # fmt: skip
        t.train_step(np.ones((2, 4)), np.array([0, 1]))


def test_scaler_state_goes_through_a_checkpoint(tmp_path: Path):
    X, y = _digits()
    t = _fp16_trainer("numpy", init_scale=2.0**30, growth_interval=5)
    for _ in range(3):
        t.train_step(X[:64], y[:64])
    state = t.scaler.state_dict()
    assert state["skipped_steps"] >= 1 and t.state_dict()["scaler"] == state
    path = dc.io.save(tmp_path / "fp16.safetensors", trainer=t)
    back = load_trainer(path)
    assert back.precision == "fp16" and back.scaler.state_dict() == state
    # a damaged scaler field is refused by name, before anything is built
    import ckpt_tools

    from deepcore.errors import CheckpointError

    bad = ckpt_tools.rewrite(
        path, lambda t, info: info["trainer"]["scaler"].update(scale=-1.0), tmp_path / "bad.st"
    )
    with pytest.raises(CheckpointError, match=r"trainer\.scaler\.scale.*got -1"):
        load_trainer(bad)
    # the float32 master weights load anywhere, as float32
    for p, q in zip(back.model.parameters(), t.model.parameters(), strict=True):
        assert p.numpy().dtype == np.float32
        np.testing.assert_array_equal(p.numpy(), q.numpy())


# ------------------------------------------------------------------ end to end
def test_cli_train_fp16_close_to_float32(tmp_path: Path):
    """`deepcore train --precision fp16` on the bundled digits: the float32 test
    accuracy within 1 point (same seed and schedule; 10 of the default 40 epochs)."""
    from deepcore.cli import main

    backend = BACKENDS[-1]
    results = {}
    for precision in ("float32", "fp16"):
        out = tmp_path / f"{precision}.json"
        args = ["train", "--backend", backend, "--quiet", "--epochs", "10", "--json", str(out)]
        assert main([*args, "--precision", precision]) == 0
        results[precision] = json.loads(out.read_text())
    fp16 = results["fp16"]
    assert fp16["precision"] == "fp16" and fp16["loss_scale"] > 0
    f32, acc = results["float32"]["test_accuracy"], fp16["test_accuracy"]
    print(f"digits test accuracy, {backend}: float32 {f32:.4f}, fp16 {acc:.4f}")
    assert f32 > 0.95 and abs(acc - f32) <= 0.01, (f32, acc)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_train_fp16_runs_on_each_cpu_backend(backend, tmp_path: Path, capsys):
    from deepcore.cli import main

    out = tmp_path / "r.json"
    assert main(["train", "--backend", backend, "--epochs", "1", "--precision", "fp16",
                 "--json", str(out)]) == 0  # fmt: skip
    assert "fp16 GEMMs" in capsys.readouterr().err
    assert json.loads(out.read_text())["test_accuracy"] > 0.5
    code = main(["train", "--backend", backend, "--quiet", "--epochs", "1", "--dtype", "float64",
                 "--precision", "fp16"])  # fmt: skip
    assert code == 2 and "--precision fp16 needs --dtype float32" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_sklearn_precision_fp16():
    pytest.importorskip("sklearn")
    from deepcore.sklearn import MLPClassifier

    X, y = _digits(600)
    kw = dict(hidden_layer_sizes=(32,), max_iter=10, random_state=0)
    f32 = MLPClassifier(**kw).fit(X / 16, y)
    fp16 = MLPClassifier(**kw, precision="fp16").fit(X / 16, y)
    assert abs(fp16.score(X / 16, y) - f32.score(X / 16, y)) < 0.03
    assert not np.array_equal(fp16.coefs_[0], f32.coefs_[0])
