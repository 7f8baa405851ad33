"""Benchmark workloads: MLP shapes, batch sizes, seeded synthetic batches and initial weights.

Every runner (each backend and each anchor) trains from the same initial weights on the same
batches, so their losses can be compared before their speeds are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Learning rates used for every runner (the correctness gate needs identical hyperparameters).
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3}
OPTIMIZERS = ("sgd", "adam")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Workload:
    """One MLP training problem: layer sizes (input, hidden..., classes) and batch size."""

    name: str
    sizes: tuple[int, ...]
    batch: int
    #: Steps trained from the initial weights and compared across runners before timing.
    gate_steps: int = 5
    #: Distinct batches cycled through while timing (more would only cost memory).
    n_batches: int = 8
    note: str = field(default="", compare=False)

    @property
    def params(self) -> int:
        """Trainable parameters: weights plus biases of every Linear."""
        return sum(a * b + b for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=False))

    @property
    def flops_per_step(self) -> float:
        """Approximate FLOPs of one training step: 2 (forward) + 4 (backward) per weight per
        sample, i.e. 6 x params x batch (bias, activation and update work is not counted)."""
        return 6.0 * self.params * self.batch

    @property
    def shape(self) -> str:
        return "-".join(str(s) for s in self.sizes)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sizes": list(self.sizes),
            "batch": self.batch,
            "params": self.params,
            "flops_per_step": self.flops_per_step,
            "gate_steps": self.gate_steps,
        }


WORKLOADS: dict[str, Workload] = {
    "small": Workload("small", (64, 128, 10), 32, note="tiny: per-call overhead dominates"),
    "mnist": Workload("mnist", (784, 512, 512, 10), 128, note="MNIST-sized MLP"),
    "wide": Workload(
        "wide", (1024, 4096, 4096, 1024), 512, gate_steps=3, n_batches=2, note="GEMM-bound"
    ),
}


def parse_sizes(text: str) -> tuple[int, ...]:
    """'784,1024,10' -> (784, 1024, 10); at least an input and an output size, all positive."""
    try:
        sizes = tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise ValueError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(
            f"--sizes needs at least two positive integers (input,...,classes), got {text!r}"
        )
    if sizes[-1] < 2:
        raise ValueError("--sizes: the last size is the number of classes and must be >= 2")
    return sizes


def custom_workload(sizes: tuple[int, ...], batch: int) -> Workload:
    return Workload("custom", sizes, batch, note="from --sizes")


def make_batches(w: Workload, dtype: str, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`w.n_batches` seeded (x, labels) host batches: x ~ N(0, 1) in `dtype`, int64 labels."""
    rng = np.random.default_rng([seed, w.batch, *w.sizes])
    out = []
    for _ in range(w.n_batches):
        x = rng.standard_normal((w.batch, w.sizes[0])).astype(dtype)
        y = rng.integers(0, w.sizes[-1], size=w.batch, dtype=np.int64)
        out.append((x, y))
    return out


def initial_state(w: Workload, dtype: str, seed: int) -> dict[str, np.ndarray]:
    """Initial weights in PyTorch's names and layout ("0.weight" (out, in), "0.bias", ...),
    drawn by deepcore's own initialiser on the NumPy backend; deepcore's global generator is
    restored afterwards so a benchmark does not change a caller's random stream."""
    from .. import random as dc_random
    from ..nn import mlp

    saved = dc_random.get_state()
    try:
        dc_random.seed(seed)
        model = mlp(list(w.sizes), "relu", backend="numpy", dtype=dtype)
        return dict(model.state_dict())
    finally:
        dc_random.set_state(saved)
