"""Moving models between backends, and training identically on every backend.

Every backend trains the same 64-32-10 MLP on the digits from the same seed and the same batches;
loss curves and final weights must match the NumPy backend within the tolerances below. The same
backend with the same seed must be bitwise reproducible.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

import deepcore as dc
from deepcore.backends.numpy import NumpyBackend
from deepcore.data import BatchIterator
from deepcore.errors import BackendMismatchError

#: Steps of the cross-backend run (a few epochs of the 1437 digits at batch 64).
STEPS = 300
#: float32: two backends may sum in different orders (BLAS blocking, parallel loops, GPU tiles)
#: and use exp/log/tanh a few ulp apart; training then amplifies those differences. Each float32
#: run differs from exact arithmetic by at most its float32-vs-float64 gap, measured on this
#: problem at <= 3e-6 (loss, relative) and <= 1.5e-6 (weights, absolute) after 300 steps of
#: SGD-momentum or Adam; numba vs numpy measured 1.6e-6 (loss) and 4.8e-7 (weights). 1e-4 leaves
#: a margin of ~30x or more for kernels that differ in the last bits (GPU, other BLAS).
FLOAT32_LOSS_RTOL = 1e-4
FLOAT32_WEIGHT_ATOL = 1e-4
#: float64: the same sources of difference at eps = 2.2e-16 (numba vs numpy: 2.2e-15 after 300
#: steps);
#: 1e-10 is six orders tighter than float32 and still five orders above what we see.
FLOAT64_LOSS_RTOL = 1e-10
FLOAT64_WEIGHT_ATOL = 1e-10
TOLERANCES = {
    "float32": (FLOAT32_LOSS_RTOL, FLOAT32_WEIGHT_ATOL),
    "float64": (FLOAT64_LOSS_RTOL, FLOAT64_WEIGHT_ATOL),
}


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    train, _ = dc.data.load_dataset("digits")
    return train.X, train.y


def _optimizer(name: str, model: dc.nn.Module) -> dc.optim.Optimizer:
    if name == "sgd":
        return dc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return dc.optim.Adam(model.parameters(), lr=1e-3)


def train_run(
    backend: Any, dtype: str, opt: str, steps: int = STEPS, move: dict[int, Any] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-step losses and final weights of a seeded run; `move` maps step -> backend to move to."""
    X, y = _digits()
    dc.seed(0)
    model = dc.nn.mlp([64, 32, 10], backend=backend, dtype=dtype)
    optimizer = _optimizer(opt, model)
    loss_fn = dc.nn.CrossEntropyLoss(backend=backend, dtype=dtype)
    batches = BatchIterator(X, y, 64, rng=np.random.default_rng(0))
    losses: list[float] = []
    while len(losses) < steps:
        for xb, yb in batches:
            if move and len(losses) in move:
                target = move[len(losses)]
                model.to(target)
                optimizer.to(target)
                loss_fn.to(target)
            loss = loss_fn(model(xb), yb)
            model.backward(loss_fn.backward(), need_input_grad=False)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss))
            if len(losses) == steps:
                break
    return np.array(losses), model.state_dict()


@functools.cache
def numpy_reference(dtype: str, opt: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return train_run("numpy", dtype, opt)


def assert_same_training(run: tuple, ref: tuple, dtype: str) -> None:
    loss_rtol, weight_atol = TOLERANCES[dtype]
    np.testing.assert_allclose(run[0], ref[0], rtol=loss_rtol, atol=0, err_msg="loss curve")
    assert list(run[1]) == list(ref[1])
    for name in ref[1]:
        np.testing.assert_allclose(
            run[1][name], ref[1][name], rtol=0, atol=weight_atol, err_msg=name
        )


# ------------------------------------------------------------------ identical training
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_training_matches_numpy(backend_name: str, dtype: str, opt: str) -> None:
    assert_same_training(train_run(backend_name, dtype, opt), numpy_reference(dtype, opt), dtype)


def test_same_backend_same_seed_is_bitwise_reproducible(backend_name: str) -> None:
    a = train_run(backend_name, "float32", "adam", steps=100)
    b = train_run(backend_name, "float32", "adam", steps=100)
    assert np.array_equal(a[0], b[0])
    for name in a[1]:
        assert np.array_equal(a[1][name], b[1][name]), name


class ReorderedBackend(NumpyBackend):
    """NumPy with GEMMs and column sums in another summation order (float64 accumulation, rows
    reversed): stands in for a second BLAS, to show the tolerances hold for such differences."""

    name = "reordered"

    def gemm(self, a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):  # noqa: ANN001
        a2, b2 = (a.T if trans_a else a), (b.T if trans_b else b)
        r = (a2.astype(np.float64) @ b2.astype(np.float64)) * alpha
        if out is None:
            return r.astype(a.dtype)
        out[...] = r + beta * out if beta != 0.0 else r
        return out

    def bias_grad(self, dy, out=None, accumulate=False):  # noqa: ANN001
        s = dy[::-1].sum(axis=0, dtype=np.float64).astype(dy.dtype)
        if accumulate:
            out += s
            return out
        if out is None:
            return s
        out[...] = s
        return out


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_tolerances_cover_a_different_summation_order(dtype: str, opt: str) -> None:
    run = train_run(ReorderedBackend(), dtype, opt)
    assert not np.array_equal(run[0], numpy_reference(dtype, opt)[0])  # it really differs
    assert_same_training(run, numpy_reference(dtype, opt), dtype)


# ------------------------------------------------------------------ moving
class FakeArray(np.ndarray):
    """Arrays of the fake second backend: a distinct type, so ownership can be checked."""


class FakeBackend(NumpyBackend):
    """A second CPU backend whose arrays are FakeArray: lets a test see state really move."""

    name = "fake"

    def owns(self, x: Any) -> bool:
        return isinstance(x, FakeArray)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        if self.owns(x) and (dtype is None or x.dtype == np.dtype(dtype)):
            return x
        return np.ascontiguousarray(x, dtype=dtype).view(FakeArray)

    def empty(self, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        return np.empty(shape, dtype=dtype).view(FakeArray)

    def zeros(self, shape: tuple[int, ...], dtype: str = "float32") -> Any:
        return np.zeros(shape, dtype=dtype).view(FakeArray)


def test_model_to_moves_parameters_and_gradients(backend: dc.Backend) -> None:
    model = dc.nn.mlp([5, 4, 3])
    model.train()
    loss_fn = dc.nn.CrossEntropyLoss()
    loss_fn(model(np.ones((2, 5), np.float32)), np.array([0, 2]))
    model.backward(loss_fn.backward())
    before = {n: (p.numpy(), p.backend.to_host(p.grad)) for n, p in model.named_parameters()}
    assert model.to(backend) is model
    for name, p in model.named_parameters():
        assert p.backend is backend and backend.owns(p.data) and backend.owns(p.grad)
        np.testing.assert_array_equal(p.numpy(), before[name][0])
        np.testing.assert_array_equal(backend.to_host(p.grad), before[name][1])
    assert all(m.backend is backend for m in model.modules())
    model.to(dtype="float64")
    assert all(p.dtype == "float64" and p.grad.dtype == np.float64 for p in model.parameters())
    np.testing.assert_allclose(model[0].weight.numpy(), before["0.weight"][0])


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_training_continues_on_another_backend_mid_run(backend_name: str, opt: str) -> None:
    """numpy -> other -> numpy at steps 100 and 200 matches staying on numpy."""
    moved = train_run("numpy", "float32", opt, move={100: backend_name, 200: "numpy"})
    assert_same_training(moved, numpy_reference("float32", opt), "float32")


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_optimizer_state_follows_its_parameters(opt: str) -> None:
    """A fake second backend: the state arrays become its type at the next step, exactly."""
    fake = FakeBackend()
    moved = train_run("numpy", "float32", opt, steps=60, move={20: fake, 40: "numpy"})
    ref = train_run("numpy", "float32", opt, steps=60)
    np.testing.assert_array_equal(moved[0], ref[0])  # the same NumPy maths: bitwise

    dc.seed(0)
    model = dc.nn.mlp([4, 3])
    optimizer = _optimizer(opt, model)
    loss_fn = dc.nn.CrossEntropyLoss()
    xb, yb = np.ones((2, 4), np.float32), np.array([0, 1])
    for _ in range(2):
        loss_fn(model(xb), yb)
        model.backward(loss_fn.backward())
        optimizer.step()
        if _ == 0:
            model.to(fake)  # parameters move; state still on numpy until the next step
            loss_fn.to(fake)
    states = [a for st in optimizer.state.values() for a in st.values() if hasattr(a, "ndim")]
    assert states and all(isinstance(a, FakeArray) for a in states)
    optimizer.to("numpy")
    states = [a for st in optimizer.state.values() for a in st.values() if hasattr(a, "ndim")]
    assert all(type(a) is np.ndarray for a in states)


def test_dtype_move_mid_run_keeps_training() -> None:
    """float32 -> float64 mid-run: the optimizer state is cast at the next step."""
    X, y = _digits()
    dc.seed(0)
    model = dc.nn.mlp([64, 32, 10])
    optimizer = dc.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = dc.nn.CrossEntropyLoss()
    for i, (xb, yb) in enumerate(BatchIterator(X, y, 64, rng=np.random.default_rng(0))):
        if i == 10:
            model.double()
        loss = loss_fn(model(xb), yb)
        model.backward(loss_fn.backward(), need_input_grad=False)
        optimizer.step()
        optimizer.zero_grad()
    assert loss.dtype == np.float64 and np.isfinite(float(loss))
    for st in optimizer.state.values():
        assert st["exp_avg"].dtype == np.float64 and st["exp_avg_sq"].dtype == np.float64


# ------------------------------------------------------------------ mismatch messages
class _CupyLike:
    """Looks like a cupy array to deepcore (its type's module is 'cupy')."""

    shape = (2, 4)
    dtype = np.dtype("float32")
    ndim = 2


_CupyLike.__module__ = "cupy"


def test_foreign_array_into_cpu_layer_names_both_and_the_fix() -> None:
    layer = dc.nn.Linear(4, 3)
    with pytest.raises(BackendMismatchError) as info:
        layer(_CupyLike())
    msg = str(info.value)
    assert "cupy" in msg and "numpy" in msg and "Linear" in msg
    assert "to_numpy" in msg and ".to('cupy')" in msg


def test_optimizer_over_two_backends_names_both() -> None:
    a = dc.nn.Linear(3, 2)
    b = dc.nn.Linear(3, 2, backend=FakeBackend())
    with pytest.raises(BackendMismatchError, match=r"numpy and fake.*model\.to"):
        dc.optim.SGD([*a.parameters(), *b.parameters()], lr=0.1)
    opt = dc.optim.Adam(a.parameters())
    with pytest.raises(BackendMismatchError, match="numpy and fake"):
        opt.add_param_group({"params": list(b.parameters())})


def test_sequential_of_layers_on_two_backends_names_both() -> None:
    with pytest.raises(BackendMismatchError) as info:
        dc.nn.Sequential(dc.nn.Linear(3, 2), dc.nn.ReLU(backend=FakeBackend()))
    msg = str(info.value)
    assert "fake" in msg and "numpy" in msg and "item 1" in msg and ".to()" in msg
