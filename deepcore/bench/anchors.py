"""Anchors: what deepcore's speed is compared against in the same run.

- `torch-cpu` / `torch-cuda`: the same MLP in PyTorch, initial weights loaded from our state dict,
  torch.optim.SGD(momentum=0.9) / Adam, F.cross_entropy; `torch-cpu-bf16`: the same with forward
  and loss under `torch.autocast(dtype=torch.bfloat16)` (float32 weights and updates).
- `jax`: one jit-compiled step with optax (anchors_jax.py).
- `sklearn`: scikit-learn's MLPClassifier, one `partial_fit` per batch (its whole per-call cost,
  input validation included, is what a user pays), same weights installed after initialisation.
- `numpy-loop`: a hand-written NumPy training loop with no framework at all; deepcore's numpy
  backend divided by it is the cost of our abstraction.

Each anchor raises `Skip` when its library is missing, and the suite prints the reason.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
import warnings
from typing import Any

import numpy as np

from .runners import Runner, Skip, optimizer_config
from .workloads import Workload

ANCHORS = ("torch", "torch-bf16", "jax", "sklearn", "numpy-loop", "loop")
#: Loss tolerance of the bf16 autocast rows against the float32 reference (bf16 keeps 8 bits).
BF16_GATE_RTOL = 3e-2
_MODULE = {"torch": "torch", "torch-bf16": "torch", "jax": "jax", "sklearn": "sklearn"}
_PIP = {"torch": "torch", "jax": "jax", "sklearn": "scikit-learn"}


def anchor_available(name: str) -> tuple[bool, str]:
    """Whether an anchor's library is installed (without importing it)."""
    module = _MODULE.get(name, "numpy")
    if importlib.util.find_spec(module) is None:
        return False, f"{module} is not installed (pip install {_PIP[module]})"
    return True, ""


@functools.lru_cache(maxsize=1)
def torch_cuda_available() -> bool:
    """Asked in a child process: importing torch here would initialise the libgomp it shares
    with Numba before deepcore's Numba backend chooses its wait policy (deepcore.bench.remote)."""
    code = "import torch; print(int(torch.cuda.is_available()))"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == "1"


def _layer_count(w: Workload) -> int:
    return len(w.sizes) - 1


class TorchRunner(Runner):
    """PyTorch eager training step on the CPU or the first CUDA device."""

    def __init__(
        self,
        workload: Workload,
        optimizer: str,
        dtype: str,
        state: dict[str, np.ndarray],
        lr: float,
        device: str = "cpu",
        bf16: bool = False,
    ) -> None:
        super().__init__(workload, optimizer, dtype, state, lr)
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise Skip("no CUDA device visible to torch")
        if bf16 and dtype != "float32":
            raise Skip("bf16 autocast rows train float32 weights (run with --dtype float32)")
        self.torch = torch
        self.device = "cuda:0" if device == "cuda" else "cpu"
        self.name = f"torch-{device}" + ("-bf16" if bf16 else "")
        self.autocast = (
            functools.partial(torch.autocast, device_type=device, dtype=torch.bfloat16)
            if bf16
            else None
        )
        if bf16:
            self.gate_rtol = BF16_GATE_RTOL
        layers: list[Any] = []
        n = _layer_count(workload)
        for i, (a, b) in enumerate(zip(workload.sizes[:-1], workload.sizes[1:], strict=False)):
            layers.append(torch.nn.Linear(a, b))
            if i < n - 1:
                layers.append(torch.nn.ReLU())
        tdtype = getattr(torch, dtype)
        self.model = torch.nn.Sequential(*layers).to(device=self.device, dtype=tdtype)
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        cfg = optimizer_config(optimizer, lr)
        cls = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
        self.opt = cls(self.model.parameters(), **cfg)
        self.loss_fn = torch.nn.functional.cross_entropy

    def put(self, x: np.ndarray, y: np.ndarray) -> Any:
        t = self.torch
        return t.from_numpy(x).to(self.device), t.from_numpy(y).to(self.device)

    def _step(self, batch: Any) -> Any:
        x, y = batch
        self.opt.zero_grad(set_to_none=True)
        if self.autocast is not None:
            with self.autocast():
                loss = self.loss_fn(self.model(x), y)
        else:
            loss = self.loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def step(self, batch: Any) -> None:
        self._step(batch)

    def loss_step(self, batch: Any) -> float:
        return float(self._step(batch).item())

    def synchronize(self) -> None:
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def info(self) -> dict[str, Any]:
        t = self.torch
        return {"torch": t.__version__, "torch_threads": t.get_num_threads()}


class SklearnRunner(Runner):
    """scikit-learn MLPClassifier stepped with `partial_fit`, one call per batch.

    Settings chosen to match our maths: alpha=0 (no L2), constant learning rate, no shuffling,
    solver='sgd' with momentum=0.9 and nesterovs_momentum=False (sklearn's velocity update
    v = 0.9 v - lr g equals torch's, since the learning rate is constant) or solver='adam'.
    """

    name = "sklearn"

    def __init__(
        self,
        workload: Workload,
        optimizer: str,
        dtype: str,
        state: dict[str, np.ndarray],
        lr: float,
    ) -> None:
        super().__init__(workload, optimizer, dtype, state, lr)
        from sklearn.neural_network import MLPClassifier

        hidden = tuple(workload.sizes[1:-1])
        classes = workload.sizes[-1]
        if not hidden:
            raise Skip("MLPClassifier needs at least one hidden layer")
        if classes == 2:
            raise Skip("MLPClassifier uses one logistic output for two classes, not softmax")
        common: dict[str, Any] = dict(
            hidden_layer_sizes=hidden,
            activation="relu",
            alpha=0.0,
            batch_size=workload.batch,
            learning_rate="constant",
            learning_rate_init=lr,
            shuffle=False,
            random_state=0,
            tol=0.0,
            n_iter_no_change=2**30,
        )
        if optimizer == "sgd":
            self.clf = MLPClassifier(solver="sgd", momentum=0.9, nesterovs_momentum=False, **common)
        else:
            self.clf = MLPClassifier(
                solver="adam", beta_1=0.9, beta_2=0.999, epsilon=1e-8, **common
            )
            # sklearn folds the bias corrections into the step size and adds eps to the
            # uncorrected sqrt(v): its effective eps is eps / sqrt(1 - beta2^t), ~30x ours at
            # step 1, which moves the loss by ~params x lr x 30 eps: visible in float64.
            self.gated = dtype == "float32"
            self.gate_note = "" if self.gated else "sklearn's Adam places eps differently"
        self.classes = np.arange(classes)
        # partial_fit initialises coefs_ on its first call: make that call on a zero-sized
        # step's worth of data, then install our initial weights and drop the optimizer state.
        x0 = np.zeros((workload.batch, workload.sizes[0]), dtype=dtype)
        y0 = np.arange(workload.batch) % classes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.clf.partial_fit(x0, y0, classes=self.classes)
        for i in range(_layer_count(workload)):
            self.clf.coefs_[i][...] = state[f"{2 * i}.weight"].T
            self.clf.intercepts_[i][...] = state[f"{2 * i}.bias"]
        del self.clf._optimizer  # the next partial_fit builds a fresh one (zero momentum)
        self.clf.loss_curve_ = []

    def step(self, batch: Any) -> None:
        x, y = batch
        self.clf.partial_fit(x, y)
        self.clf.loss_curve_.clear()  # it grows by one float per call

    def loss_step(self, batch: Any) -> float:
        self.step(batch)
        return float(self.clf.loss_)

    def info(self) -> dict[str, Any]:
        import sklearn

        return {"sklearn": sklearn.__version__, "dtype": str(self.clf.coefs_[0].dtype)}


class NumpyLoopRunner(Runner):
    """A plain NumPy training loop: no layers, no backend, no optimizer objects."""

    name = "numpy-loop"

    def __init__(
        self,
        workload: Workload,
        optimizer: str,
        dtype: str,
        state: dict[str, np.ndarray],
        lr: float,
    ) -> None:
        super().__init__(workload, optimizer, dtype, state, lr)
        n = _layer_count(workload)
        self.W = [np.array(state[f"{2 * i}.weight"], dtype=dtype) for i in range(n)]
        self.b = [np.array(state[f"{2 * i}.bias"], dtype=dtype) for i in range(n)]
        self.params = self.W + self.b
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def _grads(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, list[np.ndarray]]:
        acts = [x]
        for i, (W, b) in enumerate(zip(self.W, self.b, strict=True)):
            z = x @ W.T
            z += b
            if i < len(self.W) - 1:
                np.maximum(z, 0, out=z)
            acts.append(z)
            x = z
        rows = np.arange(len(y))
        zmax = x.max(axis=1, keepdims=True)
        e = np.exp(x - zmax)
        s = e.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(s[:, 0]) + zmax[:, 0] - x[rows, y])
        d = e / s
        d[rows, y] -= 1
        d /= len(y)
        gW: list[Any] = [None] * len(self.W)
        gb: list[Any] = [None] * len(self.W)
        for i in reversed(range(len(self.W))):
            gW[i] = d.T @ acts[i]
            gb[i] = d.sum(axis=0)
            if i:
                d = d @ self.W[i]
                d *= acts[i] > 0
        return loss, gW + gb

    def _update(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        lr = self.lr
        if self.optimizer == "sgd":  # torch's rule: buf = 0.9 buf + g (buf = g at first)
            for p, g, buf in zip(self.params, grads, self.m, strict=True):
                if self.t == 1:
                    buf[...] = g
                else:
                    buf *= 0.9
                    buf += g
                p -= lr * buf
            return
        b1, b2, eps = 0.9, 0.999, 1e-8  # torch's Adam
        bc1, bc2s = 1 - b1**self.t, (1 - b2**self.t) ** 0.5
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (lr / bc1) * m / (np.sqrt(v) / bc2s + eps)

    def step(self, batch: Any) -> None:
        self._update(self._grads(*batch)[1])

    def loss_step(self, batch: Any) -> float:
        loss, grads = self._grads(*batch)
        self._update(grads)
        return float(loss)
