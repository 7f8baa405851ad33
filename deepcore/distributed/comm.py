"""Processes and their communicator: launcher detection, the lazy mpi4py import, the size-1
world, and the abort-on-error hook that keeps one failed rank from hanging the others."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import numpy as np

from ..errors import DeepcoreError

#: Environment variables a launcher sets in every process it starts, with the world size.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
#: Set without a size by some launchers (PMIx, Slurm's PMI2); then the size comes from MPI.
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


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
