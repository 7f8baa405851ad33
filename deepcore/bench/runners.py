"""What the benchmark times: a `Runner` trains one workload with one optimizer and dtype on one
implementation. `DeepcoreRunner` wraps any deepcore backend; the anchors live in anchors.py.

Every runner starts from the same initial weights (a PyTorch-layout state dict) and is fed the
same host batches, moved to its device once, before the clock starts.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .workloads import Workload


class Skip(Exception):
    """This runner cannot run here; the message says why (printed, the row is left out)."""


class Runner:
    """Base class. Subclasses set `name` and implement `put`, `step` and `loss_step`."""

    name = "runner"
    #: "backend" (a deepcore backend) or "anchor" (something we compare against).
    kind = "anchor"
    device = "cpu"
    #: False when the losses are not comparable with deepcore's; `gate_note` says why.
    gated = True
    gate_note = ""
    #: Loss tolerance against the reference when not the dtype's (e.g. bf16 autocast rows).
    gate_rtol: float | None = None

    def __init__(
        self,
        workload: Workload,
        optimizer: str,
        dtype: str,
        state: dict[str, np.ndarray],
        lr: float,
    ) -> None:
        self.workload = workload
        self.optimizer = optimizer
        self.dtype = dtype
        self.lr = lr

    def warmup(self) -> float:
        """Compile or otherwise prepare before the first step; returns the seconds it took."""
        return 0.0

    def put(self, x: np.ndarray, y: np.ndarray) -> Any:
        """A batch moved to this runner's device (done once, outside the clock)."""
        return x, y

    def step(self, batch: Any) -> None:
        """One forward, backward and optimizer update; may return before the device finishes."""
        raise NotImplementedError

    def loss_step(self, batch: Any) -> float:
        """One step, returning the loss (computed before the update) as a host float."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work (around every read of the clock)."""

    def memory_probe(self) -> Any:
        """A device memory probe (see timing.DeviceMemory), or None for host RSS."""
        return None

    def info(self) -> dict[str, Any]:
        return {}


def optimizer_config(optimizer: str, lr: float) -> dict[str, Any]:
    """The hyperparameters every runner uses: SGD(momentum=0.9) or Adam's defaults."""
    if optimizer == "sgd":
        return {"lr": lr, "momentum": 0.9}
    return {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8}


class DeepcoreRunner(Runner):
    """Any deepcore backend through the public API: `mlp()`, `SGD`/`Adam`, `Trainer.train_step`
    (so a backend's fused whole-step path, when it has one, is what gets timed); with
    precision="bf16", `Trainer(precision="bf16")`, named NAME-bf16."""

    kind = "backend"

    def __init__(
        self,
        backend_name: str,
        workload: Workload,
        optimizer: str,
        dtype: str,
        state: dict[str, np.ndarray],
        lr: float,
        precision: str = "float32",
    ) -> None:
        super().__init__(workload, optimizer, dtype, state, lr)
        from ..backends import get_backend
        from ..nn import mlp
        from ..optim import SGD, Adam
        from ..train import Trainer

        self.backend = get_backend(backend_name)
        self.precision = precision
        self.name = self.backend.name + ("-bf16" if precision == "bf16" else "")
        self.device = self.backend.device
        self.model = mlp(list(workload.sizes), "relu", backend=self.backend, dtype=dtype)
        self.model.load_state_dict(state)
        opt_cls = SGD if optimizer == "sgd" else Adam
        self.opt = opt_cls(self.model.parameters(), **optimizer_config(optimizer, lr))
        if self.kind == "backend":
            self.trainer = Trainer(self.model, "cross_entropy", self.opt, precision=precision)

    def warmup(self) -> float:
        """Call the backend's `warmup(dtypes)` (JIT compile) when it has one; the reported
        compile seconds are used when it returns a number, else the wall time."""
        fn = getattr(self.backend, "warmup", None)
        if not callable(fn):
            return 0.0
        t0 = time.perf_counter()
        result = fn([self.dtype])
        wall = time.perf_counter() - t0
        return float(result) if isinstance(result, (int, float)) and result >= 0 else wall

    def put(self, x: np.ndarray, y: np.ndarray) -> Any:
        be = self.backend
        return be.asarray(x), be.asarray(y)

    def step(self, batch: Any) -> None:
        self.trainer.train_step(*batch)

    def loss_step(self, batch: Any) -> float:
        return float(self.backend.to_host(self.trainer.train_step(*batch)))

    def synchronize(self) -> None:
        self.backend.synchronize()

    def memory_probe(self) -> Any:
        if self.device.startswith("cuda"):
            from .timing import CupyPoolMemory

            return CupyPoolMemory()
        return None

    def info(self) -> dict[str, Any]:
        try:
            return dict(self.backend.info())
        except Exception as exc:  # info is decoration: never let it fail a run
            return {"info_error": f"{type(exc).__name__}: {exc}"}


class DeepcoreLoopRunner(DeepcoreRunner):
    """The training loop a user writes by hand on any backend, through the public API only:
    `loss_fn(model(x), y)`, `model.backward(loss_fn.backward())`, `opt.step()`,
    `opt.zero_grad()`. Named `loop-BACKEND`; the backend's row over it is what `Trainer.train_step`
    adds."""

    kind = "loop"

    def __init__(
        self,
        backend_name: str,
        workload: Workload,
        optimizer: str,
        dtype: str,
        state: dict[str, np.ndarray],
        lr: float,
    ) -> None:
        super().__init__(backend_name, workload, optimizer, dtype, state, lr)
        from ..nn import CrossEntropyLoss

        self.name = f"loop-{self.backend.name}"
        self.loss_fn = CrossEntropyLoss()

    def _step(self, batch: Any) -> Any:
        x, y = batch
        loss = self.loss_fn(self.model(x), y)
        self.model.backward(self.loss_fn.backward())
        self.opt.step()
        self.opt.zero_grad()
        return loss

    def step(self, batch: Any) -> None:
        self._step(batch)

    def loss_step(self, batch: Any) -> float:
        return float(self.backend.to_host(self._step(batch)))
