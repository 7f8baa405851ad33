"""The gradient all-reduce hook: bucketed, weighted by each rank's share of the batch, and
overlapped with backward (non-blocking all-reduce per bucket, as PyTorch DDP does)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .comm import Communicator
from .setup import assert_identical

if TYPE_CHECKING:
    from ..nn.module import Parameter

DEFAULT_BUCKET_BYTES = 25 * 2**20  # PyTorch DDP's bucket_cap_mb default


@dataclass
class AllReduceStats:
    """Where the all-reduce time went, summed over steps (seconds)."""

    steps: int = 0
    buckets: int = 0
    bytes_per_step: int = 0
    pack: float = 0.0  # weighting gradients in their buckets (a copy in at the first step)
    launch: float = 0.0  # starting non-blocking all-reduces during backward
    exposed: float = 0.0  # all-reduce time after backward finished: waiting, or blocking calls
    in_flight: float = 0.0  # from the first bucket's start to the end of backward (overlap)
    unpack: float = 0.0


class GradientAllReduce:
    """Gradient hook: sum every parameter's gradient over the ranks, each rank's gradient
    weighted by its share of the global batch (`set_share`), so uneven shares stay exact.

    Gradients live in buckets (one preallocated flat buffer per bucket of about `bucket_bytes`,
    whole layers in backward order, last layer first; after the first step each gradient is a
    view of its bucket) and each bucket is summed by one all-reduce (MPI, or NCCL through a
    transport). With `overlap`, `grad_ready` starts a bucket's non-blocking Iallreduce as soon
    as its gradients exist, while backward goes on with earlier layers (PyTorch DDP's scheme);
    `__call__` starts the rest and waits. `stats` says where the time went. With
    `check_identical` every step ends by proving that all ranks hold the same parameters (a
    debug check; it costs a host copy and a gather). Optional hook methods beyond the engine's
    interface: `set_share(local_rows, global_rows)` before a step, `after_update(params)`.
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
        self._layout: list[tuple[int, str, int]] | None = None
        self._next = 0  # buckets start in index order on every rank (MPI's collective order)
        self._groups: list[list[int]] = []  # ids of each grad_ready call before the layout

    def set_share(self, local_rows: int, global_rows: int) -> None:
        """This rank computed its loss as a mean over `local_rows` of a `global_rows` batch."""
        self.weight = local_rows / global_rows

    # ---- the hook interface
    def grad_ready(self, params: list[Parameter]) -> None:
        """Backward finished these parameters' gradients: start every bucket now complete."""
        if not self.overlap or self.comm.size == 1:
            return
        if not self._buckets:  # the first backward: remember which gradients come together
            self._groups.append([id(p) for p in params])
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
        """Lay the buckets out at the first full step, in backward order, never splitting the
        gradients of one grad_ready call (one layer) over two buckets (a layer over the cap
        gets a bucket of its own), so a bucket can start as soon as its last layer is done.
        Without grad_ready calls each parameter is a group of its own. Rank 0's
        grouping is used everywhere, so every rank builds the same buckets. The layout is
        redone if the parameters changed (another dtype, CPU backend or set)."""
        if partial:
            return  # a step's layout is checked once, in __call__
        live = [p for p in params if p.requires_grad]
        layout = [(id(p), p.dtype, id(p.backend)) for p in live]
        if self._buckets and layout == self._layout:
            return
        if self._next:  # buckets of the old layout already started: finish them first
            self._transport().wait([b.request for b in self._buckets])
            self._next = 0
        self._layout = layout
        self._buckets = []
        current: list[Parameter] = []
        size = 0
        for group in self.comm.bcast(self._backward_groups(live)):
            members = [live[i] for i in group]
            nbytes = [int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize for p in members]
            if current and size + sum(nbytes) > self.bucket_bytes:
                self._buckets.append(_Bucket(current, self))
                current, size = [], 0
            for p, n in zip(members, nbytes, strict=True):
                if current and p.dtype != current[0].dtype:
                    self._buckets.append(_Bucket(current, self))
                    current, size = [], 0
                current.append(p)
                size += n
        if current:
            self._buckets.append(_Bucket(current, self))
        self._where = {id(p): b for b in self._buckets for p in b.params}
        self.stats.buckets = len(self._buckets)
        self.stats.bytes_per_step = sum(b.nbytes for b in self._buckets)

    def _backward_groups(self, live: list[Parameter]) -> list[list[int]]:
        """Indices into `live` as backward delivered them (one list per grad_ready call), then
        any parameter no call named, last first."""
        index = {id(p): i for i, p in enumerate(live)}
        groups = [[index[k] for k in g if k in index] for g in self._groups]
        seen = {i for g in groups for i in g}
        groups += [[i] for i in reversed(range(len(live))) if i not in seen]
        self._groups = []
        return [g for g in groups if g]

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
        # After the first step each parameter's gradient buffer *is* its slice of the bucket
        # (PyTorch DDP's gradient_as_bucket_view): backward writes into the bucket, and packing
        # is one in-place scaling instead of a copy in and a copy out.
        self.views = [
            self.buffer[a:b].reshape(p.shape) for p, (a, b) in zip(params, self.slices, strict=True)
        ]
        self.ready: set[int] = set()
        self.request: Any = None
        self.started = 0.0

    def pack(self, weight: float) -> None:
        """Each gradient, times this rank's share of the batch, into the bucket."""
        be, w = self.backend, np.dtype(self.buffer.dtype).type(weight)
        for p, view in zip(self.params, self.views, strict=True):
            grad = p.grad
            if grad is None:  # no gradient this step (e.g. a rank with no rows): zeros
                be.fill_(view, 0.0)
            elif grad is view:  # backward wrote into the bucket
                if w != 1:
                    be.scale_(view, w)
            else:  # first step, or the gradient buffer was replaced
                be.mul(grad, w, out=view)

    def unpack(self) -> None:
        """The sums are the gradients: each parameter's gradient becomes its bucket view."""
        for p, view in zip(self.params, self.views, strict=True):
            if p.grad is not view:
                p.grad = view

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
