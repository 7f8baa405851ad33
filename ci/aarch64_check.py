"""The aarch64 smoke check, run by ci/aarch64.sh under qemu-user (also runs natively anywhere).

Trains the same seeded 64-32-10 MLP on the digits on the numba and numpy backends, hand-written
loop (forward, backward, optimizer step) and Trainer.fit (the step engine's fused route), with
SGD-momentum and Adam, and requires the losses and weights to agree within the tolerances the
x86 suite uses (tests/test_devices.py). Floating-point warnings are errors: NumPy's matmul
reports flags its BLAS raised (see ci/aarch64.sh on qemu's default CPU).
"""

from __future__ import annotations

import platform
import sys
import time
import warnings

import numpy as np

import deepcore as dc
from deepcore.data import BatchIterator
from deepcore.train import Trainer

STEPS = 40
LOSS_RTOL = WEIGHT_ATOL = 1e-4  # float32, as tests/test_devices.py


def _optimizer(name: str, model: dc.nn.Module) -> dc.optim.Optimizer:
    if name == "sgd":
        return dc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return dc.optim.Adam(model.parameters(), lr=1e-3)


def loop_run(backend: str, opt: str, X: np.ndarray, y: np.ndarray) -> tuple[list[float], dict]:
    """STEPS hand-written steps: model(x), loss, backward, optimizer step."""
    dc.seed(0)
    model = dc.nn.mlp([64, 32, 10], backend=backend)
    optimizer = _optimizer(opt, model)
    loss_fn = dc.nn.CrossEntropyLoss(backend=backend)
    losses: list[float] = []
    for xb, yb in BatchIterator(X, y, 32, rng=np.random.default_rng(0)):
        loss = loss_fn(model(xb), yb)
        model.backward(loss_fn.backward(), need_input_grad=False)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
        if len(losses) == STEPS:
            break
    return losses, {k: dc.to_numpy(v) for k, v in model.state_dict().items()}


def trainer_run(backend: str, opt: str, train: object) -> tuple[list[float], dict]:
    """One epoch of Trainer.fit (the engine picks its route: the whole-step kernel on numba)."""
    dc.seed(0)
    model = dc.nn.mlp([64, 32, 10], backend=backend)
    trainer = Trainer(model, "cross_entropy", opt, lr=1e-3 if opt == "adam" else 0.05, seed=0)
    history = trainer.fit(train, epochs=1, batch_size=32, progress=False)
    losses = [float(v) for v in history["loss"]]
    return losses, {k: dc.to_numpy(v) for k, v in model.state_dict().items()}


def compare(what: str, run: tuple, ref: tuple) -> None:
    np.testing.assert_allclose(run[0], ref[0], rtol=LOSS_RTOL, err_msg=f"{what}: losses")
    assert list(run[1]) == list(ref[1]), f"{what}: parameter names differ"
    worst = 0.0
    for name, want in ref[1].items():
        np.testing.assert_allclose(run[1][name], want, rtol=0, atol=WEIGHT_ATOL,
                                   err_msg=f"{what}: {name}")  # fmt: skip
        worst = max(worst, float(np.abs(run[1][name] - want).max()))
    print(f"  {what}: numba == numpy (largest weight difference {worst:.2e})", flush=True)


def main() -> int:
    warnings.simplefilter("error", RuntimeWarning)
    from deepcore.backends import get_backend

    t0 = time.perf_counter()
    nb = get_backend("numba")
    print(f"platform {platform.machine()}, python {platform.python_version()}")
    print(f"numba backend: {nb.info()['simd']}; fma={nb.fma}; blas: {nb._blas_info()}", flush=True)
    train, _ = dc.data.load_dataset("digits")
    X, y = train.X, train.y
    for opt in ("sgd", "adam"):
        compare(f"{opt} loop", loop_run("numba", opt, X, y), loop_run("numpy", opt, X, y))
        compare(
            f"{opt} Trainer", trainer_run("numba", opt, train), trainer_run("numpy", opt, train)
        )
    print(f"aarch64 check passed in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
