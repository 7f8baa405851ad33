"""Data-parallel training over MPI processes (mpi4py), as ChainerMN, Horovod and PyTorch DDP do.

Every rank holds the whole model; each takes its share of every global batch (the seeded global
batch order, so any rank count sees the same batches), and a gradient hook sums the gradients,
each weighted by its rank's share of the batch, so the update is the one-process update:

    comm = deepcore.distributed.init()          # size 1 when not started by mpiexec
    trainer = deepcore.distributed.data_parallel(Trainer(model, "cross_entropy", opt), comm)
    trainer.fit(train, batch_size=256)          # the global batch; run with mpiexec -n 4 ...

mpi4py is imported only by `init()` under a launcher (mpiexec / srun): `import deepcore` never
imports it. On GPUs the gradients are summed by NCCL (deepcore.distributed_nccl).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import DeepcoreError

if TYPE_CHECKING:
    from .data import BatchIterator
    from .nn.module import Parameter
    from .train import Trainer

__all__ = [
    "Communicator",
    "DistributedError",
    "GradientAllReduce",
    "active",
    "assert_identical",
    "broadcast_state",
    "check_same_setup",
    "data_parallel",
    "init",
    "launched",
    "shard_bounds",
    "shard_batches",
]

#: Environment variables a launcher sets in every process it starts, with the world size.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
#: Set without a size by some launchers (PMIx, Slurm's PMI2); then the size comes from MPI.
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
DEFAULT_BUCKET_BYTES = 25 * 2**20  # PyTorch DDP's bucket_cap_mb default


class DistributedError(DeepcoreError, RuntimeError):
    """Ranks disagree (model, optimizer, parameters), a rank has no data, or MPI is missing.

    `collective` is True when every rank raises the same error at the same point (so the job can
    end normally with one message from rank 0); False means only this rank failed."""

    def __init__(self, message: str, *, collective: bool = False) -> None:
        super().__init__(message)
        self.collective = collective


# ------------------------------------------------------------------------------ communicator
class Communicator:
    """rank, size and local_rank (rank among the processes of this machine) of one process, and
    the few collectives deepcore needs. Without MPI it is the size-1 world and does nothing."""

    def __init__(self, mpi_comm: Any = None, local_rank: int = 0, local_size: int = 1) -> None:
        self.mpi = mpi_comm  # an mpi4py Comm, or None for the size-1 world
        self.rank = int(mpi_comm.Get_rank()) if mpi_comm is not None else 0
        self.size = int(mpi_comm.Get_size()) if mpi_comm is not None else 1
        self.local_rank = local_rank
        self.local_size = local_size

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"<Communicator rank {self.rank} of {self.size} (local {self.local_rank})>"

    def allreduce_sum(self, values: Any) -> np.ndarray:
        """Element-wise sum over ranks of a small host array (metrics, counts)."""
        out = np.array(values, dtype=np.float64)
        if self.mpi is not None and self.size > 1:
            self.mpi.Allreduce(self._mpi().IN_PLACE, out, op=self._mpi().SUM)
        return out

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Rank `root`'s Python object on every rank (pickled; for setup, not per step)."""
        return self.mpi.bcast(obj, root=root) if self.mpi is not None and self.size > 1 else obj

    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        return self.mpi.allgather(obj) if self.mpi is not None and self.size > 1 else [obj]

    def barrier(self) -> None:
        if self.mpi is not None and self.size > 1:
            self.mpi.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (MPI_Abort); a plain exit in the size-1 world."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.mpi is not None and self.size > 1:
            self.mpi.Abort(code)
        os._exit(code)

    @staticmethod
    def _mpi() -> Any:
        from mpi4py import MPI

        return MPI


_COMM: Communicator | None = None


def launched() -> bool:
    """True when a launcher (mpiexec, mpirun, srun with PMI) started this process."""
    return any(v in os.environ for v in _SIZE_VARS + _RANK_VARS)


def active() -> Communicator | None:
    """The communicator `init()` made, if it has run (never imports mpi4py)."""
    return _COMM


def init(*, abort_on_error: bool = True) -> Communicator:
    """The world communicator: MPI's when started by mpiexec, else the size-1 world.

    With `abort_on_error` (and more than one rank) an uncaught exception on any rank prints the
    rank and the error, then calls MPI_Abort, so the whole job ends instead of the other ranks
    waiting forever in a collective."""
    global _COMM
    if _COMM is not None:
        return _COMM
    if not launched():
        _COMM = Communicator()
        return _COMM
    size_hint = next((int(os.environ[v]) for v in _SIZE_VARS if v in os.environ), 0)
    MPI = _import_mpi(size_hint)
    if MPI is None:
        _COMM = Communicator()
        return _COMM
    world = MPI.COMM_WORLD.Dup()  # deepcore's messages never mix with the user's
    local = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    _COMM = Communicator(world, int(local.Get_rank()), int(local.Get_size()))
    local.Free()
    if abort_on_error and _COMM.size > 1:
        install_excepthook(_COMM)
    return _COMM


def _import_mpi(size_hint: int) -> Any:
    """mpi4py's MPI module, finding PyPI's mpich library when mpi4py alone does not; None when
    mpi4py is missing and the job has one process."""
    if "MPI4PY_LIBMPI" not in os.environ:
        lib = _mpich_wheel_file("libmpi.so.12")
        if lib is not None and not os.path.exists(os.path.join(sys.prefix, "lib", lib.name)):
            os.environ["MPI4PY_LIBMPI"] = str(lib)  # a venv that reaches mpich through a .pth
    try:
        from mpi4py import MPI
    except ImportError:
        if size_hint > 1:
            raise DistributedError(
                f"started by mpiexec with {size_hint} processes, but mpi4py is not installed, so "
                f"each would train alone; pip install 'deepcore[mpi]'"
            ) from None
        return None
    except RuntimeError as exc:  # mpi4py found no MPI library
        raise DistributedError(
            f"mpi4py cannot load an MPI library ({' '.join(str(exc).split())[:200]}); install "
            f"'deepcore[mpi]' or point MPI4PY_LIBMPI at libmpi.so"
        ) from None
    return MPI


def _mpich_wheel_file(name: str) -> Any:
    """Path of `name` (e.g. "mpiexec") in PyPI's mpich wheel, if that wheel is installed."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        files = distribution("mpich").files or []
    except (ImportError, PackageNotFoundError):
        return None
    for f in files:
        if f.name == name:
            path = f.locate()
            if os.path.exists(path):
                return path.resolve()
    return None


def find_mpiexec() -> str | None:
    """The mpiexec to launch with: PyPI's mpich wheel's (matching mpi4py's library), else PATH's."""
    import shutil

    found = _mpich_wheel_file("mpiexec")
    return str(found) if found is not None else shutil.which("mpiexec")


def install_excepthook(comm: Communicator) -> None:
    """An uncaught exception on this rank: print it with the rank, then abort the whole job."""

    def hook(exc_type: Any, exc: BaseException, tb: Any) -> None:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        sys.stderr.write(f"{text}deepcore: rank {comm.rank} of {comm.size} failed with "
                         f"{exc_type.__name__}: {exc}; aborting the job\n")  # fmt: skip
        comm.abort(1)

    sys.excepthook = hook


# ------------------------------------------------------------------------------ sharding
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
        "layers": [type(m).__name__ for m in model.modules()],
        "loss": [type(trainer.loss_fn).__name__, getattr(trainer.loss_fn, "reduction", None)],
        "optimizer": {"class": type(opt).__name__, "param_groups": groups},
        "clip_grad_norm": trainer.clip_grad_norm,
        "scheduler": type(trainer.scheduler).__name__ if trainer.scheduler else None,
    })  # fmt: skip


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
    from . import random as dc_random

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


# ------------------------------------------------------------------------------ gradient hook
@dataclass
class AllReduceStats:
    """Where the all-reduce time went, summed over steps (seconds)."""

    steps: int = 0
    buckets: int = 0
    bytes_per_step: int = 0
    pack: float = 0.0  # copying (and weighting) gradients into the bucket buffers
    launch: float = 0.0  # starting non-blocking all-reduces during backward
    exposed: float = 0.0  # all-reduce time after backward finished: waiting, or blocking calls
    in_flight: float = 0.0  # from the first bucket's start to the end of backward (overlap)
    unpack: float = 0.0


class GradientAllReduce:
    """Gradient hook: sum every parameter's gradient over the ranks, each rank's gradient
    weighted by its share of the global batch (`set_share`), so uneven shares stay exact.

    Gradients are packed into buckets (one preallocated flat buffer per bucket of about
    `bucket_bytes`, in backward order: last layer first) and each bucket is summed by one
    MPI Allreduce. With `overlap`, `grad_ready` starts a bucket's non-blocking Iallreduce as soon
    as its gradients exist, while backward goes on with earlier layers (PyTorch DDP's scheme);
    `__call__` waits for the rest and unpacks. With `check_identical` every step ends by proving
    that all ranks hold the same parameters (a debug check; it costs a host copy and a gather).
    """

    def __init__(
        self,
        comm: Communicator,
        *,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        overlap: bool = True,
        check_identical: bool = False,
        transport: Any = None,
    ) -> None:
        if not isinstance(bucket_bytes, int) or bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be a positive integer, got {bucket_bytes!r}")
        self.comm = comm
        self.bucket_bytes = bucket_bytes
        self.overlap = overlap
        self.check_identical = check_identical
        self.transport = transport
        self.weight = 1.0 / comm.size  # a hand-written loop's default: the plain average
        self.stats = AllReduceStats()
        self._buckets: list[_Bucket] = []
        self._where: dict[int, _Bucket] = {}
        self._layout: list[tuple[int, tuple[int, ...], str]] | None = None
        self._next = 0  # buckets start in index order on every rank (MPI's collective order)

    def set_share(self, local_rows: int, global_rows: int) -> None:
        """This rank computed its loss as a mean over `local_rows` of a `global_rows` batch."""
        self.weight = local_rows / global_rows

    # ---- the hook interface
    def grad_ready(self, params: list[Parameter]) -> None:
        """Backward finished these parameters' gradients: start every bucket now complete."""
        if not self.overlap or self.comm.size == 1:
            return
        self._plan(params, partial=True)
        for p in params:
            b = self._where.get(id(p))
            if b is not None:
                b.ready.add(id(p))
        self._start_ready(final=False)

    def __call__(self, params: list[Parameter]) -> None:
        """After backward: finish every bucket's all-reduce and write the sums to the grads."""
        if self.comm.size == 1:
            return
        self._plan(params, partial=False)
        t0 = time.perf_counter()
        first = self._buckets[0].started if self._next else t0
        packed = self.stats.pack
        self._start_ready(final=True)
        self._transport().wait([b.request for b in self._buckets])
        t1 = time.perf_counter()
        for b in self._buckets:
            b.unpack()
            b.reset()
        self._next = 0
        st = self.stats
        st.exposed += t1 - t0 - (st.pack - packed)  # packing is counted on its own
        st.in_flight += t0 - first
        st.unpack += time.perf_counter() - t1
        st.steps += 1

    def after_update(self, params: list[Parameter]) -> None:
        """After the optimizer step: the debug check that every rank holds the same weights."""
        if self.check_identical:
            assert_identical(params, self.comm, when=f" after step {self.stats.steps}")

    # ---- buckets
    def _transport(self) -> Any:
        if self.transport is None:
            self.transport = MPITransport(self.comm)
        return self.transport

    def _plan(self, params: list[Parameter], *, partial: bool) -> None:
        """Lay the buckets out at the first full step (backward order: the hook gets params in
        model order, so reversed); a partial call during the first backward waits for it."""
        if self._buckets:
            return
        if partial:
            return  # first step: no overlap until the layout is known
        live = [p for p in params if p.requires_grad]
        self._layout = [(id(p), p.shape, p.dtype) for p in live]
        current: list[Parameter] = []
        size = 0
        for p in reversed(live):
            nbytes = int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize
            if current and (size + nbytes > self.bucket_bytes or p.dtype != current[0].dtype):
                self._buckets.append(_Bucket(current, self))
                current, size = [], 0
            current.append(p)
            size += nbytes
        if current:
            self._buckets.append(_Bucket(current, self))
        self._where = {id(p): b for b in self._buckets for p in b.params}
        self.stats.buckets = len(self._buckets)
        self.stats.bytes_per_step = sum(b.nbytes for b in self._buckets)

    def _start_ready(self, *, final: bool) -> None:
        while self._next < len(self._buckets):
            b = self._buckets[self._next]
            if not final and len(b.ready) < len(b.params):
                break
            t0 = time.perf_counter()
            b.pack(self.weight)
            b.started = time.perf_counter()
            self.stats.pack += b.started - t0
            b.request = self._transport().start(b.buffer, blocking=not self.overlap)
            if not final:
                self.stats.launch += time.perf_counter() - b.started
            self._next += 1
        if not final:
            self._transport().poke([b.request for b in self._buckets[: self._next]])


class _Bucket:
    """A flat gradient buffer for some parameters (on their backend), and its request."""

    def __init__(self, params: list[Parameter], hook: GradientAllReduce) -> None:
        be = params[0].backend
        self.params = params
        self.backend = be
        self.slices = []
        offset = 0
        for p in params:
            n = int(np.prod(p.shape))
            self.slices.append((offset, offset + n))
            offset += n
        self.buffer = be.empty((offset,), params[0].dtype)
        self.nbytes = offset * np.dtype(params[0].dtype).itemsize
        self.ready: set[int] = set()
        self.request: Any = None
        self.started = 0.0

    def pack(self, weight: float) -> None:
        be, w = self.backend, np.dtype(self.buffer.dtype).type(weight)
        for p, (a, b) in zip(self.params, self.slices, strict=True):
            if p.grad is None:  # no gradient this step (e.g. a rank with no rows): zeros
                be.fill_(self.buffer[a:b], 0.0)
            else:
                be.mul(p.grad.reshape(-1), w, out=self.buffer[a:b])

    def unpack(self) -> None:
        for p, (a, b) in zip(self.params, self.slices, strict=True):
            grad, _ = p.grad_target()
            self.backend.copy_(grad, self.buffer[a:b].reshape(p.shape))
            p.grad_written()

    def reset(self) -> None:
        self.ready.clear()
        self.request = None


class MPITransport:
    """Host buffers through MPI: Iallreduce (or Allreduce) in place, SUM."""

    def __init__(self, comm: Communicator) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm.mpi

    def start(self, buf: Any, *, blocking: bool) -> Any:
        if blocking:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
            return None
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def poke(self, requests: list[Any]) -> None:
        """Let MPI progress started all-reduces (MPICH moves them only inside MPI calls)."""
        live = [r for r in requests if r is not None]
        if live:
            self.MPI.Request.Testall(live)

    def wait(self, requests: list[Any]) -> None:
        live = [r for r in requests if r is not None]
        if live:
            self.MPI.Request.Waitall(live)


# ------------------------------------------------------------------------------ entry point
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
        from .distributed_nccl import NCCLTransport

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
