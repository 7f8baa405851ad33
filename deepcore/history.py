"""A training run's record and how it is shown: the per-epoch History, a tqdm bar on a
terminal and one line per epoch elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class History:
    """Per-epoch records: epoch, loss, accuracy, val_loss, val_accuracy, seconds, ..."""

    epochs: list[dict[str, float]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        return [e[key] for e in self.epochs if key in e]

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def _progress(enabled: bool, total: int) -> Any:
    """A tqdm bar on a terminal; None elsewhere (per-epoch lines are printed instead)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety; training goes on without it
        return None
    import sys

    if not sys.stderr.isatty():
        return None
    return tqdm(total=total, unit="batch", dynamic_ncols=True, leave=True, mininterval=0.2)


def _epoch_line(record: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {int(record['epoch'])}/{epochs}"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in record:
            parts.append(f"{key} {record[key]:.4f}")
    parts.append(f"{record['samples_per_second']:,.0f} samples/s")
    return " | ".join(parts)
