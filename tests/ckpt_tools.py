"""Helpers for checkpoint tests: read a file's raw parts and write edited ones back, with fresh
checksums (re-signed: only the value checks stand between them and a load) or without."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepcore import _checkpoint_format as fmt


def raw(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and string metadata of a checkpoint, with no checks (safetensors reads it)."""
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
        meta = dict(f.metadata())
    return tensors, meta


def rewrite(
    path: Path,
    edit: Callable[[dict[str, np.ndarray], dict[str, Any]], None],
    out: Path | None = None,
) -> Path:
    """Apply `edit(tensors, info)` (info: metadata with JSON fields decoded) and write the
    result, re-signed, to `out` (default: over `path`)."""
    tensors, meta = raw(path)
    plain = ("format", "format_version", "deepcore_version", getattr(fmt, "CHECKSUM", "checksum"))
    info = {k: (v if k in plain else json.loads(v)) for k, v in meta.items()}
    edit(tensors, info)
    strings = {k: (v if k in plain else json.dumps(v)) for k, v in info.items()}
    target = out or path
    target.unlink(missing_ok=True)  # a new file: rewriting one in place can cost an ext4 flush
    target.write_bytes(fmt.encode(tensors, strings))
    return target


def save_forever(path: str, seed: int) -> None:
    """What `deepcore train --save PATH` (or `--resume PATH`) does, with a model big enough
    that most of the time goes into saving: resume from PATH if it is there, then train one
    tiny batch per epoch and checkpoint after every epoch, until killed."""
    import deepcore as dc
    from deepcore.io import CheckpointEveryEpoch
    from deepcore.train import Trainer, load_trainer

    try:  # tiny GEMMs: BLAS threads would only slow a loaded machine down
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    _slow_disk()
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((16, 64)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    target = Path(path)
    if target.exists():
        trainer = load_trainer(target, backend="numpy")
    else:
        dc.seed(seed)
        model = dc.nn.mlp([64, 256, 256, 10], backend="numpy")  # 85k weights, 1 MB saved
        trainer = Trainer(model, "cross_entropy", "adam", seed=seed)
    trainer.fit((X, y), epochs=10**6, batch_size=16, progress=False,
                callbacks=[CheckpointEveryEpoch(target)])  # fmt: skip


def _slow_disk() -> None:
    """Write in 64 KB pieces 0.5 ms apart, as a slow disk would: a write then lasts ~10 ms
    whatever the machine, so a kill aimed at it lands inside it."""
    import time

    from deepcore import _atomic

    def slow(f: Any, data: Any) -> None:
        view = memoryview(data)
        for start in range(0, len(view), 1 << 16):
            f.write(view[start : start + (1 << 16)])
            time.sleep(0.0005)

    _atomic._write_all = slow
