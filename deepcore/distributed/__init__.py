"""Data-parallel training over MPI processes (mpi4py), as ChainerMN, Horovod and PyTorch DDP do.

Every rank holds the whole model; each takes its share of every global batch (the seeded global
batch order, so any rank count sees the same batches), and a gradient hook sums the gradients,
each weighted by its rank's share of the batch, so the update is the one-process update:

    comm = deepcore.distributed.init()          # size 1 when not started by mpiexec
    trainer = deepcore.distributed.data_parallel(Trainer(model, "cross_entropy", opt), comm)
    trainer.fit(train, batch_size=256)          # the global batch; run with mpiexec -n 4 ...

mpi4py is imported only by `init()` under a launcher (mpiexec / srun): `import deepcore` never
imports it. On GPUs the gradients are summed by NCCL (nccl.py).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .allreduce import DEFAULT_BUCKET_BYTES, AllReduceStats, GradientAllReduce, MPITransport
from .comm import (
    Communicator,
    DistributedError,
    active,
    find_mpiexec,
    init,
    install_excepthook,
    launched,
)
from .setup import (
    assert_identical,
    broadcast_state,
    check_same_setup,
    check_shardable,
    describe_setup,
    shard_batches,
    shard_bounds,
)

if TYPE_CHECKING:
    from ..train import Trainer

__all__ = [
    "DEFAULT_BUCKET_BYTES",
    "AllReduceStats",
    "Communicator",
    "DistributedError",
    "GradientAllReduce",
    "MPITransport",
    "active",
    "assert_identical",
    "broadcast_state",
    "check_same_setup",
    "check_shardable",
    "data_parallel",
    "describe_setup",
    "find_mpiexec",
    "init",
    "install_excepthook",
    "launched",
    "shard_batches",
    "shard_bounds",
]


def data_parallel(
    trainer: Trainer,
    comm: Communicator | None = None,
    *,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    overlap: bool = True,
    check_identical: bool | None = None,
) -> Trainer:
    """Make `trainer` train data-parallel over `comm` (default: `init()`): check that every rank
    built the same run, broadcast rank 0's state, and add the gradient all-reduce hook (NCCL on
    a GPU backend, MPI otherwise). `fit` then shards each global batch and reduces the metrics.
    `check_identical` (default: DEEPCORE_DIST_CHECK=1) proves after every step that all ranks
    hold the same parameters. With one rank the trainer is returned as it was."""
    comm = comm if comm is not None else init()
    trainer.comm = comm
    if comm.size == 1:
        return trainer
    check_same_setup(trainer, comm)
    broadcast_state(trainer, comm)
    if check_identical is None:
        check_identical = os.environ.get("DEEPCORE_DIST_CHECK", "0").strip() == "1"
    transport = None
    if trainer.model.backend.device != "cpu":
        from .nccl import NCCLTransport

        transport = NCCLTransport(comm, trainer.model.backend)
    hook = GradientAllReduce(
        comm,
        bucket_bytes=bucket_bytes,
        overlap=overlap,
        check_identical=check_identical,
        transport=transport,
    )
    trainer.grad_hooks = [h for h in trainer.grad_hooks if not isinstance(h, GradientAllReduce)]
    trainer.grad_hooks.append(hook)
    return trainer
