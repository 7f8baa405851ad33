"""deepcore.nn: the low-level training loop, the Module API, input errors, Perceptron, builders,
Dropout. Runs on every backend through the `backend_name` fixture."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import deepcore as dc
from deepcore.errors import BackendMismatchError, DtypeError, ShapeError


def issue_model(backend_name: str, dtype: str = "float32") -> dc.nn.Sequential:
    return dc.nn.Sequential(
        dc.nn.Linear(784, 256, dtype=dtype),
        dc.nn.ReLU(dtype=dtype),
        dc.nn.Linear(256, 10, dtype=dtype),
    ).to(backend_name)


def blobs(n: int = 64, d: int = 784, c: int = 10, seed: int = 0):
    r = np.random.default_rng(seed)
    centers = r.standard_normal((c, d))
    y = r.integers(0, c, n)
    x = (centers[y] + 0.5 * r.standard_normal((n, d))).astype(np.float32)
    return x, y


# --------------------------------------------------------------------------- the issue's loop
def test_issue_low_level_loop(backend_name):
    dc.seed(0)
    model = issue_model(backend_name)
    assert model.backend.name.split(":")[0] == backend_name
    loss_fn = dc.nn.CrossEntropyLoss()
    opt = dc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = blobs()
    losses = []
    for _ in range(8):
        logits = model(x)
        loss = loss_fn(logits, y)
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
        host_logits = dc.to_numpy(logits)
        assert isinstance(host_logits, np.ndarray) and host_logits.shape == (64, 10)
        assert host_logits.dtype == np.float32
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
    for p in model.parameters():
        assert not dc.to_numpy(p.grad).any()  # zero_grad zeroed every buffer


def test_same_seed_same_weights_and_same_run(backend_name):
    def run():
        dc.seed(42)
        model = issue_model(backend_name)
        opt = dc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss_fn = dc.nn.CrossEntropyLoss()
        x, y = blobs(16)
        for _ in range(3):
            loss_fn(model(x), y)
            model.backward(loss_fn.backward())
            opt.step()
            opt.zero_grad()
        return model.state_dict()

    a, b = run(), run()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_initial_weights_follow_pytorch_bounds():
    dc.seed(0)
    layer = dc.nn.Linear(400, 30)
    w, b = layer.weight.numpy(), layer.bias.numpy()
    bound = 1 / np.sqrt(400)
    assert w.shape == (30, 400) and b.shape == (30,)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.9 * bound  # really uniform over the whole range
    dc.seed(0)
    np.testing.assert_array_equal(dc.nn.Linear(400, 30).weight.numpy(), w)


# --------------------------------------------------------------------------- module API
def test_parameters_and_names(backend_name):
    model = issue_model(backend_name)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    shapes = [p.shape for p in model.parameters()]
    assert shapes == [(256, 784), (256,), (10, 256), (10,)]
    assert all(p.dtype == "float32" for p in model.parameters())
    assert len(model) == 3 and isinstance(model[1], dc.nn.ReLU)
    nobias = dc.nn.Linear(3, 2, bias=False)
    assert [n for n, _ in nobias.named_parameters()] == ["weight"]
    assert nobias.bias is None


def test_train_eval_propagate():
    model = dc.nn.mlp([4, 8, 8, 2], dropout=0.5)
    assert all(m.training for m in model.modules())
    assert model.eval() is model
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_zero_grad_on_module(backend_name):
    model = dc.nn.mlp([4, 3, 2], backend=backend_name)
    loss_fn = dc.nn.CrossEntropyLoss()
    loss_fn(model(np.ones((2, 4), np.float32)), [0, 1])
    model.backward(loss_fn.backward())
    grads = [p.grad for p in model.parameters()]
    assert any(dc.to_numpy(g).any() for g in grads)
    first = [dc.to_numpy(g) for g in grads]
    model.zero_grad(set_to_none=False)  # zeros in place, same buffers
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    assert not any(dc.to_numpy(g).any() for g in grads)
    model.zero_grad()  # PyTorch's default: grad becomes None ...
    assert all(p.grad is None for p in model.parameters())
    loss_fn(model(np.ones((2, 4), np.float32)), [0, 1])
    model.backward(loss_fn.backward())
    for p, g, f in zip(model.parameters(), grads, first, strict=True):
        assert p.grad is g  # ... and the next backward overwrites the kept buffer
        np.testing.assert_array_equal(dc.to_numpy(p.grad), f)


def test_repr():
    model = dc.nn.Sequential(
        dc.nn.Linear(4, 3), dc.nn.LeakyReLU(0.2), dc.nn.GELU("tanh"), dc.nn.Dropout(0.1)
    )
    text = repr(model)
    assert "(0): Linear(in_features=4, out_features=3, bias=True)" in text
    assert "(1): LeakyReLU(negative_slope=0.2)" in text
    assert "(2): GELU(approximate='tanh')" in text
    assert "(3): Dropout(p=0.1)" in text
    assert "backend=numpy" in repr(model[0].weight)


def test_to_dtype_float_double(backend_name):
    model = dc.nn.mlp([4, 5, 3], backend=backend_name)
    x = np.random.default_rng(0).standard_normal((2, 4))
    y32 = dc.to_numpy(model(x))
    assert y32.dtype == np.float32
    w32 = model[0].weight.numpy()
    assert model.double() is model
    assert model.dtype == "float64" and all(m.dtype == "float64" for m in model.modules())
    assert all(p.dtype == "float64" for p in model.parameters())
    np.testing.assert_array_equal(model[0].weight.numpy(), w32.astype(np.float64))
    y64 = dc.to_numpy(model(x))
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, y32, rtol=1e-5, atol=1e-6)
    model.float()
    assert all(p.dtype == "float32" for p in model.parameters())
    model.to(dtype="float64")
    assert all(p.dtype == "float64" for p in model.parameters())
    with pytest.raises(DtypeError, match="int32"):
        model.to(dtype="int32")
    with pytest.raises(DtypeError, match="float16"):
        dc.nn.Linear(2, 2, dtype="float16")


def test_state_dict_is_a_copy(backend_name):
    model = dc.nn.mlp([4, 3, 2], backend=backend_name)
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    before = {k: v.copy() for k, v in sd.items()}
    sd["0.weight"][...] = 123.0  # editing the copy does not touch the model
    assert not (model[0].weight.numpy() == 123.0).any()
    opt = dc.optim.SGD(model.parameters(), lr=1.0)
    sd2 = model.state_dict()
    loss_fn = dc.nn.MSELoss()
    loss_fn(model(np.ones((2, 4))), np.zeros((2, 2)))
    model.backward(loss_fn.backward())
    opt.step()  # training does not change a state dict taken before
    for k in sd2:
        np.testing.assert_array_equal(sd2[k], before[k])
    assert not np.array_equal(model.state_dict()["2.bias"], before["2.bias"])


def test_load_state_dict_round_trip(backend_name):
    dc.seed(1)
    a = dc.nn.mlp([4, 6, 3], backend=backend_name)
    dc.seed(2)
    b = dc.nn.mlp([4, 6, 3], backend=backend_name)
    x = np.random.default_rng(0).standard_normal((5, 4))
    assert not np.allclose(dc.to_numpy(a(x)), dc.to_numpy(b(x)))
    sd = a.state_dict()
    b.load_state_dict(sd)
    np.testing.assert_array_equal(dc.to_numpy(a(x)), dc.to_numpy(b(x)))
    sd["0.weight"][...] = 0.0  # the model holds its own copy
    assert b[0].weight.numpy().any()
    # float64 values load into a float32 model (cast at the boundary)
    b.load_state_dict({k: v.astype(np.float64) for k, v in a.state_dict().items()})
    assert all(p.dtype == "float32" for p in b.parameters())


def test_load_state_dict_strict_and_non_strict():
    model = dc.nn.mlp([4, 3, 2])
    sd = model.state_dict()
    del sd["2.bias"]
    sd["extra"] = np.zeros(3)
    before = model.state_dict()
    with pytest.raises(KeyError, match=r"2\.bias") as info:
        model.load_state_dict(sd)
    assert "extra" in str(info.value)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    new = {"0.weight": np.full((3, 4), 0.5)}
    model.load_state_dict(new, strict=False)
    np.testing.assert_array_equal(model[0].weight.numpy(), np.full((3, 4), 0.5))
    np.testing.assert_array_equal(model[2].bias.numpy(), before["2.bias"])


def test_load_state_dict_shape_mismatch_names_parameter_and_shapes():
    model = dc.nn.mlp([4, 3, 2])
    before = model.state_dict()
    sd = {k: np.full(v.shape, 9.0) for k, v in before.items()}
    sd["2.weight"] = np.zeros((3, 2))
    with pytest.raises(ShapeError) as info:
        model.load_state_dict(sd)
    msg = str(info.value)
    assert "2.weight" in msg and "(3, 2)" in msg and "(2, 3)" in msg
    # nothing was written: 0.weight (checked before the bad one) still has its old values
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


# --------------------------------------------------------------------------- bad inputs
def test_wrong_feature_count_names_layer_and_shapes(backend_name):
    model = dc.nn.mlp([4, 3, 2], backend=backend_name)
    with pytest.raises(ShapeError) as info:
        model(np.ones((5, 7)))
    msg = str(info.value)
    assert "Linear(in_features=4" in msg and "(batch, 4)" in msg and "(5, 7)" in msg


def test_one_dimensional_input(backend_name):
    layer = dc.nn.Linear(4, 2, backend=backend_name)
    with pytest.raises(ShapeError, match=r"\(4,\)"):
        layer(np.ones(4))


def test_float_labels_must_be_whole_numbers(backend_name):
    """Whole-number floats are class indices (as scikit-learn takes them); any other float is
    refused naming its value, row and the allowed range (issue 18: one check, every route)."""
    model = dc.nn.mlp([4, 3], backend=backend_name)
    loss_fn = dc.nn.CrossEntropyLoss()
    x = np.ones((2, 4))
    assert float(loss_fn(model(x), np.array([0.0, 1.0]))) == float(loss_fn(model(x), [0, 1]))
    with pytest.raises(ValueError, match=r"label 0\.5 at row 1 is not a whole number.*\[0, 2\]"):
        loss_fn(model(x), np.array([0.0, 0.5]))


@pytest.mark.parametrize("bad", [3, 7, -1])
def test_labels_out_of_range_name_label_and_class_count(backend_name, bad):
    model = dc.nn.mlp([4, 3], backend=backend_name)
    loss_fn = dc.nn.CrossEntropyLoss()
    with pytest.raises(ValueError) as info:
        loss_fn(model(np.ones((2, 4))), np.array([0, bad]))
    msg = str(info.value)
    assert f"label {bad}" in msg and "3 classes" in msg


def test_label_shape_must_match_batch(backend_name):
    model = dc.nn.mlp([4, 3], backend=backend_name)
    loss_fn = dc.nn.CrossEntropyLoss()
    with pytest.raises(ShapeError, match=r"\(2,\)"):
        loss_fn(model(np.ones((2, 4))), np.array([0, 1, 2]))
    with pytest.raises(ShapeError):
        loss_fn(model(np.ones((2, 4))), np.array([[0], [1]]))


@pytest.mark.parametrize("loss_cls", [dc.nn.MSELoss, dc.nn.BCEWithLogitsLoss])
def test_mismatched_target_shapes(backend_name, loss_cls):
    model = dc.nn.mlp([4, 3], backend=backend_name)
    with pytest.raises(ShapeError) as info:
        loss_cls()(model(np.ones((2, 4))), np.zeros((2, 2)))
    assert "(2, 2)" in str(info.value) and "(2, 3)" in str(info.value)


@pytest.mark.parametrize("loss_cls", [dc.nn.MSELoss, dc.nn.BCEWithLogitsLoss])
def test_host_targets_are_converted_to_the_model_dtype(backend_name, loss_cls, dtype):
    """Host data crosses into the model's dtype at the boundary, for targets as for inputs."""
    model = dc.nn.mlp([4, 3], backend=backend_name, dtype=dtype)
    loss_fn = loss_cls()
    target = np.array([[0, 1, 1], [1, 0, 0]])  # ints: host data of another dtype
    loss = loss_fn(model(np.ones((2, 4))), target)
    assert np.dtype(loss.dtype).name == dtype
    assert np.dtype(loss_fn.backward().dtype).name == dtype
    loss64 = loss_fn(model(np.ones((2, 4))), target.astype(np.float64))
    np.testing.assert_allclose(float(loss64), float(loss), rtol=1e-6)


def test_sequential_rejects_mixed_dtypes_and_non_modules():
    with pytest.raises(BackendMismatchError, match="float64"):
        dc.nn.Sequential(dc.nn.Linear(2, 2), dc.nn.Linear(2, 2, dtype="float64"))
    with pytest.raises(TypeError, match="not a Module"):
        dc.nn.Sequential(dc.nn.Linear(2, 2), "relu")


def test_sequential_rejects_mixed_backends():
    avail = [n for n, a in dc.available_backends().items() if a.available]
    if len(avail) < 2:
        pytest.skip(f"needs two available backends, have {avail}")
    with pytest.raises(BackendMismatchError, match=avail[1]):
        dc.nn.Sequential(dc.nn.Linear(2, 2, backend=avail[0]), dc.nn.Linear(2, 2, backend=avail[1]))


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="before"):
        dc.nn.Linear(2, 2).backward(np.ones((1, 2)))
    with pytest.raises(RuntimeError, match="before"):
        dc.nn.Sequential(dc.nn.Linear(2, 2)).backward(np.ones((1, 2)))
    with pytest.raises(RuntimeError, match="before"):
        dc.nn.CrossEntropyLoss().backward()


@pytest.mark.parametrize(
    "make",
    [
        lambda: dc.nn.Linear(0, 2),
        lambda: dc.nn.Linear(2, -1),
        lambda: dc.nn.Linear(2.5, 2),
        lambda: dc.nn.LeakyReLU(0.0),
        lambda: dc.nn.GELU("fast"),
        lambda: dc.nn.Dropout(1.5),
        lambda: dc.nn.MSELoss("max"),
        lambda: dc.nn.mlp([4]),
        lambda: dc.nn.mlp([4, 2], "swish"),
    ],
)
def test_bad_constructor_arguments(make):
    with pytest.raises(ValueError):
        make()


# --------------------------------------------------------------------------- perceptron
GATE_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)


@pytest.mark.parametrize("gate,y", [("and", [0, 0, 0, 1]), ("or", [0, 1, 1, 1])])
def test_perceptron_learns_linearly_separable_gates(backend_name, gate, y):
    p = dc.nn.Perceptron(2, backend=backend_name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning
        p.fit(GATE_X, np.array(y))
    assert p.converged_ and 1 <= p.n_epochs_ < p.max_epochs
    np.testing.assert_array_equal(p.predict(GATE_X), y)


def test_perceptron_warns_on_xor(backend_name):
    p = dc.nn.Perceptron(2, max_epochs=20, backend=backend_name)
    with pytest.warns(dc.nn.ConvergenceWarning, match="linearly separable"):
        p.fit(GATE_X, np.array([0, 1, 1, 0]))
    assert p.converged_ is False and p.n_epochs_ == 20
    assert (p.predict(GATE_X) != np.array([0, 1, 1, 0])).any()


def test_perceptron_rejects_bad_labels():
    p = dc.nn.Perceptron(2)
    with pytest.raises(ValueError, match="0 or 1"):
        p.fit(GATE_X, np.array([0, 1, 2, 0]))
    with pytest.raises(ShapeError):
        p.fit(GATE_X, np.array([0, 1]))


# --------------------------------------------------------------------------- builders
def test_mlp_structure():
    model = dc.nn.mlp([5, 8, 7, 3], "tanh", dropout=0.2)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "Tanh", "Dropout", "Linear", "Tanh", "Dropout", "Linear"]
    assert (model[0].in_features, model[0].out_features) == (5, 8)
    assert (model[6].in_features, model[6].out_features) == (7, 3)


def test_build_config_round_trip(backend_name):
    import json

    model = dc.nn.Sequential(
        dc.nn.Linear(4, 6),
        dc.nn.LeakyReLU(0.3),
        dc.nn.Dropout(0.25),
        dc.nn.Linear(6, 5, bias=False),
        dc.nn.GELU("tanh"),
        dc.nn.Linear(5, 3),
        dc.nn.Softmax(),
    ).to(backend_name)
    config = json.loads(json.dumps(model.config()))  # JSON-able
    rebuilt = dc.nn.build(config, backend=backend_name, dtype="float64")
    assert rebuilt.config() == config
    assert rebuilt.dtype == "float64" and rebuilt[1].alpha == 0.3 and rebuilt[2].p == 0.25
    assert rebuilt[3].bias is None and rebuilt[4].approximate == "tanh"
    rebuilt.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).standard_normal((3, 4))
    model.eval()
    rebuilt.eval()
    np.testing.assert_allclose(dc.to_numpy(rebuilt(x)), dc.to_numpy(model(x)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Conv2d"):
        dc.nn.build({"type": "Conv2d"})


# --------------------------------------------------------------------------- dropout
def test_dropout_eval_is_identity(backend_name):
    drop = dc.nn.Dropout(0.5, backend=backend_name).eval()
    x = np.random.default_rng(0).standard_normal((4, 9)).astype(np.float32)
    np.testing.assert_array_equal(dc.to_numpy(drop(x)), x)
    np.testing.assert_array_equal(dc.to_numpy(drop.backward(x)), x)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_train_scaling(backend_name, p):
    drop = dc.nn.Dropout(p, backend=backend_name, dtype="float64")
    x = np.random.default_rng(0).uniform(1, 2, (200, 100))
    y = dc.to_numpy(drop(x))
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-14)
    frac = 1 - kept.mean()
    assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / x.size)  # ~Binomial(n, p)
    g = dc.to_numpy(drop.backward(np.ones_like(x)))
    np.testing.assert_array_equal(g != 0, kept)  # the same mask backwards
    np.testing.assert_allclose(g[kept], 1 / (1 - p))


def test_dropout_edge_probabilities(backend_name):
    x = np.ones((3, 4))
    np.testing.assert_array_equal(dc.to_numpy(dc.nn.Dropout(0.0, backend=backend_name)(x)), x)
    np.testing.assert_array_equal(dc.to_numpy(dc.nn.Dropout(1.0, backend=backend_name)(x)), 0 * x)


def test_dropout_masks_follow_the_seed(backend_name):
    x = np.ones((5, 6))
    drop = dc.nn.Dropout(0.5, backend=backend_name)
    dc.seed(3)
    a = dc.to_numpy(drop(x))
    b = dc.to_numpy(drop(x))
    dc.seed(3)
    np.testing.assert_array_equal(dc.to_numpy(drop(x)), a)
    assert not np.array_equal(a, b)
