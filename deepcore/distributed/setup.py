"""What every rank must agree on: the same setup (checked), the same starting state (broadcast
from rank 0), the same parameters after each step (a debug check); and each rank's share of
every global batch."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from .comm import Communicator, DistributedError

if TYPE_CHECKING:
    from ..data import BatchIterator
    from ..nn.module import Parameter
    from ..train import Trainer


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of an n-row global batch that `rank` takes: contiguous, sizes differing by
    at most one (the first n % size ranks take one more)."""
    q, r = divmod(n, size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


def shard_batches(batches: BatchIterator, comm: Communicator) -> Iterator[tuple[Any, Any, int]]:
    """One epoch of `batches` (the seeded global order, same RNG draws as iterating it), as this
    rank's (X rows, y rows, global batch rows). Only this rank's rows are gathered."""
    X, y, b, n = batches.X, batches.y, batches.batch_size, batches.n_samples
    stop = (n // b) * b if batches.drop_last else n
    order = batches.rng.permutation(n) if batches.rng is not None else None
    for start in range(0, stop, b):
        end = min(start + b, n)
        lo, hi = shard_bounds(end - start, comm.rank, comm.size)
        a, z = start + lo, start + hi
        idx: Any = slice(a, z) if order is None else order[a:z]
        yield X[idx], None if y is None else y[idx], end - start


def check_shardable(n_rows: int, batch_size: int, comm: Communicator, what: str) -> None:
    """Refuse, before any work, a run where some rank would get no rows of any batch."""
    if n_rows < comm.size:
        raise DistributedError(
            f"{what} has {n_rows} samples for {comm.size} ranks: rank {n_rows} would have no data",
            collective=True,
        )
    if batch_size < comm.size:
        raise DistributedError(
            f"batch size {batch_size} (the global batch) is smaller than the {comm.size} ranks: "
            f"rank {batch_size} would get no rows; use --batch-size >= {comm.size}",
            collective=True,
        )


# ------------------------------------------------------------------------------ setup checks
def describe_setup(trainer: Trainer) -> dict[str, Any]:
    """What must be the same on every rank: model, backend kind, dtype, loss, optimizer."""
    model, opt = trainer.model, trainer.optimizer
    be = model.backend
    groups = [
        {k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
        | {"lr": g.get("initial_lr", g["lr"]), "params": len(g["params"])}
        for g in opt.param_groups
    ]
    return _jsonable({
        "backend": be.name.partition(":")[0],
        "device kind": be.device.partition(":")[0],
        "dtype": model.dtype,
        "parameters": {n: [list(p.shape), p.dtype] for n, p in model.named_parameters()},
        "model": _config(model),
        "loss": [type(trainer.loss_fn).__name__, getattr(trainer.loss_fn, "reduction", None)],
        "optimizer": {"class": type(opt).__name__, "param_groups": groups},
        "clip_grad_norm": trainer.clip_grad_norm,
        "scheduler": type(trainer.scheduler).__name__ if trainer.scheduler else None,
    })  # fmt: skip


def _config(model: Any) -> Any:
    try:
        return model.config()  # layer types, sizes, activations, dropout rates
    except NotImplementedError:
        return [type(m).__name__ for m in model.modules()]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def _first_difference(mine: Any, theirs: Any, path: str) -> str | None:
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for k in list(mine) + [k for k in theirs if k not in mine]:
            d = _first_difference(mine.get(k), theirs.get(k), f"{path} {k}".strip())
            if d:
                return d
        return None
    if isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs):
        if all(not isinstance(v, (dict, list)) for v in mine + theirs):
            return None if mine == theirs else f"{path}: {theirs!r} vs {mine!r}"
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            d = _first_difference(a, b, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if mine == theirs else f"{path}: {theirs!r} vs {mine!r}"


def check_same_setup(trainer: Trainer, comm: Communicator) -> None:
    """Refuse (on every rank, with the same message) a job whose ranks built different models,
    optimizers, losses or backends; the message names the rank and the first difference."""
    if comm.size == 1:
        return
    every = comm.allgather(describe_setup(trainer))
    root = every[0]
    for r, theirs in enumerate(every[1:], start=1):
        diff = _first_difference(root, theirs, "")
        if diff is not None:
            where, _, values = diff.partition(": ")
            theirs_v, _, root_v = values.partition(" vs ")
            raise DistributedError(
                f"rank {r} set up a different run than rank 0: {where} is {theirs_v} on rank {r} "
                f"but {root_v} on rank 0; start every rank with the same arguments",
                collective=True,
            )


def broadcast_state(trainer: Trainer, comm: Communicator) -> None:
    """Rank 0's weights, optimizer and scheduler state, counters, history and shuffling RNG on
    every rank (Horovod's broadcast_parameters), so all ranks start from one state."""
    if comm.size == 1:
        return
    from .. import random as dc_random

    payload = None
    if comm.is_root:
        payload = {
            "model": dict(trainer.model.state_dict()),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict() if trainer.scheduler else None,
            "data_rng": trainer.rng.bit_generator.state,
            "rng": dc_random.get_state(),
            "counters": (trainer.epoch, trainer.step, list(trainer.history.epochs)),
        }
    payload = comm.bcast(payload)
    if not comm.is_root:
        trainer.model.load_state_dict(payload["model"])
        trainer.optimizer.load_state_dict(payload["optimizer"])
        if trainer.scheduler is not None and payload["scheduler"] is not None:
            trainer.scheduler.load_state_dict(payload["scheduler"])
        trainer.rng.bit_generator.state = payload["data_rng"]
        dc_random.set_state(payload["rng"])
        trainer.epoch, trainer.step, history = payload["counters"]
        trainer.history.epochs = history
    # Dropout masks: one independent stream per rank, derived from the shared state.
    base = int(dc_random.get_rng().integers(2**63))
    dc_random.set_state(np.random.default_rng([base, comm.rank]).bit_generator.state)


# ------------------------------------------------------------------------------ identical check
def assert_identical(params: list[Parameter], comm: Communicator, *, when: str = "") -> None:
    """Raise (on every rank) if any rank's parameters differ by one bit from rank 0's."""
    if comm.size == 1:
        return
    digests = []
    for p in params:
        host = np.ascontiguousarray(p.backend.to_host(p.data))
        digests.append(hashlib.blake2b(host.tobytes(), digest_size=16).hexdigest())
    every = comm.allgather(digests)
    for r, theirs in enumerate(every[1:], start=1):
        for i, (a, b) in enumerate(zip(every[0], theirs, strict=True)):
            if a != b:
                raise DistributedError(
                    f"parameters diverged{when}: parameter {i} {params[i].shape} on rank {r} "
                    f"differs from rank 0's",
                    collective=True,
                )
