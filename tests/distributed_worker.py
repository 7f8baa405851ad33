"""One rank of the data-parallel tests; tests/test_distributed.py starts it with mpiexec.

    mpiexec -n N python tests/distributed_worker.py MODE OUT.json

Modes: weights (train several configurations, rank 0 writes final weights and metrics), diverge
(a rank's weights are corrupted; the identical-parameters check must name it), raise / kill
(rank 1 fails at its third step), nccl (the CuPy test double with a fake NCCL over MPI).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np

import deepcore as dc
from deepcore import distributed as dist
from deepcore.train import Trainer, make_optimizer

CONFIGS = [  # (dtype, optimizer, n_samples, batch, epochs)
    ("float64", "sgd", 203, 50, 3),
    ("float64", "adam", 203, 50, 3),
    ("float32", "sgd", 203, 50, 3),
    ("float32", "adam", 160, 32, 2),
]


def data(n: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    X = rng.standard_normal((n, 12)).astype(dtype)
    y = np.argmax(X @ rng.standard_normal((12, 4)) + 0.3 * rng.standard_normal((n, 4)), axis=1)
    return X, y


def build(dtype: str, opt_name: str, rank: int, backend: str = "numpy") -> Trainer:
    dc.seed(0 if rank == 0 else 100 + rank)  # other ranks start elsewhere: broadcast fixes it
    model = dc.nn.mlp([12, 16, 16, 4], "tanh", backend=backend, dtype=dtype)
    opt = make_optimizer(opt_name, model.parameters(), 0.05 if opt_name == "sgd" else 0.01)
    return Trainer(model, "cross_entropy", opt, seed=3)


def weights(trainer: Trainer) -> dict[str, list]:
    return {k: v.tolist() for k, v in trainer.model.state_dict().items()}


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    comm = dist.init()
    result: dict = {"size": comm.size, "runs": []}
    if mode == "weights":
        for dtype, opt_name, n, batch, epochs in CONFIGS:
            trainer = dist.data_parallel(
                build(dtype, opt_name, comm.rank), comm, bucket_bytes=700, check_identical=True
            )
            X, y = data(n, dtype)
            hist = trainer.fit((X, y), epochs=epochs, batch_size=batch, progress=False)
            hooks = [h for h in trainer.grad_hooks if isinstance(h, dist.GradientAllReduce)]
            result["runs"].append({
                "weights": weights(trainer),
                "history": hist.epochs,
                "evaluate": trainer.evaluate((X, y), batch_size=64),
                "buckets": hooks[0].stats.buckets if hooks else 0,
                "steps": trainer.step,
            })  # fmt: skip
    elif mode == "diverge":
        trainer = dist.data_parallel(build("float64", "sgd", comm.rank), comm, check_identical=True)
        X, y = data(120, "float64")
        trainer.fit((X, y), epochs=1, batch_size=40, progress=False)
        if comm.rank == 1:  # a silent divergence, as a bad kernel or bit flip would make
            w = trainer.model[0].weight
            w.data[0, 0] += 1e-9
        try:
            trainer.fit((X, y), epochs=1, batch_size=40, progress=False)
        except dist.DistributedError as exc:
            result["error"] = str(exc)
            result["collective"] = exc.collective
    elif mode in ("raise", "kill"):
        trainer = dist.data_parallel(build("float64", "sgd", comm.rank), comm)
        X, y = data(4000, "float64")
        original = trainer.train_step

        def step(xb, yb):  # noqa: ANN001, ANN202
            if comm.rank == 1 and trainer.step == 2:
                if mode == "kill":
                    with open(out + ".pid", "w") as f:
                        f.write(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("injected failure in rank 1")
            return original(xb, yb)

        trainer.train_step = step  # type: ignore[method-assign]
        trainer.fit((X, y), epochs=50, batch_size=40, progress=False)
    elif mode == "nccl":
        result.update(nccl_run(comm))
    if comm.rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)


def nccl_run(comm: dist.Communicator) -> dict:
    """Train on the CuPy test double, each rank on 'GPU' local_rank, gradients summed by a fake
    cupy.cuda.nccl whose allReduce reads the device buffer in place (the double's device memory
    is host memory) and sums it over MPI."""
    import ctypes
    import types

    sys.path.insert(0, os.path.dirname(__file__))
    import cupy_double
    from mpi4py import MPI

    calls: list = []
    uids: list = []

    class NcclCommunicator:
        def __init__(self, ndev: int, uid: tuple, rank: int) -> None:
            assert (ndev, rank) == (comm.size, comm.rank)
            uids.append(uid)

        def allReduce(self, send, recv, count, dtype, op, stream):  # noqa: ANN001, N802
            assert send == recv and op == 0
            ctype = {7: ctypes.c_double, 6: ctypes.c_float}[dtype]
            buf = np.ctypeslib.as_array(ctypes.cast(send, ctypes.POINTER(ctype)), shape=(count,))
            MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            calls.append((count, dtype, stream))

    fake = types.ModuleType("cupy.cuda.nccl")
    fake.__dict__.update(
        get_unique_id=lambda: tuple(np.random.default_rng().integers(0, 255, 128).tolist()),
        NcclCommunicator=NcclCommunicator,
        NCCL_SUM=0, NCCL_FLOAT16=6 + 100, NCCL_FLOAT32=6, NCCL_FLOAT64=7,
    )  # fmt: skip
    stream = types.SimpleNamespace(ptr=4242)
    cupy_double.ndarray.data = property(  # CuPy's device pointer: here the host address
        lambda self: types.SimpleNamespace(ptr=self.__array_interface__["data"][0])
    )
    cupy_double.Device.use = lambda self: setattr(cupy_double.STATE, "current_device", self.id)
    out: dict = {}
    with cupy_double.installed(device_count=2) as state:
        sys.modules["cupy.cuda.nccl"] = fake
        sys.modules["cupy"].cuda.nccl = fake
        sys.modules["cupy"].cuda.get_current_stream = lambda: stream
        dc.backends._reset_for_tests()
        name = f"cupy:{comm.local_rank}"
        trainer = dist.data_parallel(build("float64", "sgd", comm.rank, backend=name), comm)
        X, y = data(120, "float64")
        reads = state.transfers_to_host
        trainer.fit((X, y), epochs=2, batch_size=40, progress=False)
        out["host_transfers_during_fit"] = state.transfers_to_host - reads
        out["weights"] = weights(trainer)
        out["backends"] = comm.allgather(trainer.model.backend.name)
        out["uids_agree"] = len({json.dumps(u) for u in comm.allgather(uids[0])}) == 1
        out["calls"] = calls
    return out


if __name__ == "__main__":
    main()
