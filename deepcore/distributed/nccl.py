"""GPU gradient all-reduce for deepcore.distributed: NCCL through `cupy.cuda.nccl`.

Rank 0 makes NCCL's unique id and MPI broadcasts it; every rank joins one NCCL communicator on
its backend's GPU (the CLI gives rank r the GPU `local_rank`). Each bucket is summed in place
in GPU memory, enqueued on the current CUDA stream (the one deepcore's kernels run on), so the
update that follows is ordered after it and no gradient is copied to the host.

Tested only with the CuPy test double and a fake NCCL (tests/test_distributed.py); it has not
run on real GPUs.
"""

from __future__ import annotations

import importlib
from typing import Any

from .comm import Communicator, DistributedError


class NCCLTransport:
    """The transport of GradientAllReduce for CuPy buffers: ncclAllReduce, SUM, in place."""

    def __init__(self, comm: Communicator, backend: Any) -> None:
        try:
            self.cupy = importlib.import_module("cupy")
            self.nccl = importlib.import_module("cupy.cuda.nccl")
        except ImportError as exc:
            raise DistributedError(
                f"data-parallel training on {backend.name} needs NCCL through cupy.cuda.nccl, "
                f"which cannot be imported ({exc}); install NCCL for your CuPy (see CuPy's docs)"
            ) from None
        self.index = int(getattr(backend, "index", 0))
        # This rank's GPU becomes the process's current device (torch.cuda.set_device's role),
        # so any work outside the backend's own device scope lands there too.
        self.cupy.cuda.Device(self.index).use()
        uid = self.nccl.get_unique_id() if comm.is_root else None
        uid = comm.bcast(uid)  # the one out-of-band exchange NCCL needs, over MPI
        with self.cupy.cuda.Device(self.index):
            self.comm = self.nccl.NcclCommunicator(comm.size, uid, comm.rank)
        self.dtypes = {
            "float16": self.nccl.NCCL_FLOAT16,
            "float32": self.nccl.NCCL_FLOAT32,
            "float64": self.nccl.NCCL_FLOAT64,
        }

    def start(self, buf: Any, *, blocking: bool) -> None:
        """Enqueue the sum of `buf` over the ranks on the current stream (asynchronous on the
        device either way; stream order makes the update wait for it)."""
        dtype = self.dtypes.get(buf.dtype.name)
        if dtype is None:
            raise DistributedError(f"NCCL all-reduce: unsupported gradient dtype {buf.dtype.name}")
        with self.cupy.cuda.Device(self.index):
            stream = self.cupy.cuda.get_current_stream()
            ptr = buf.data.ptr
            self.comm.allReduce(ptr, ptr, buf.size, dtype, self.nccl.NCCL_SUM, stream.ptr)

    def poke(self, requests: list[Any]) -> None:
        """Nothing to drive: NCCL progresses on the device."""

    def wait(self, requests: list[Any]) -> None:
        """Nothing to wait for on the host: later work on the stream runs after the sums."""
