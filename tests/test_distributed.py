"""Data-parallel training (deepcore.distributed): N ranks under mpiexec train exactly as one
process on the same global batches; faults end the whole job; checkpoints move across rank
counts. The multi-rank tests start `mpiexec -n N` (PyPI's mpich wheel) with a timeout and skip
when mpi4py or mpiexec is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import deepcore as dc
from deepcore import distributed as dist
from deepcore.train import Trainer

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import distributed_worker as worker  # noqa: E402

MPIEXEC = dist.find_mpiexec()
try:
    import mpi4py  # noqa: F401

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or not HAVE_MPI4PY, reason="needs mpi4py and mpiexec (pip install .[mpi])"
)


def mpirun(n: int | list, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """mpiexec -n n argv (or an MPMD list of (n, argv) pairs); the test fails on a hang."""
    if isinstance(n, int):
        cmd = [MPIEXEC, "-n", str(n), *argv]
    else:
        cmd = [MPIEXEC]
        for i, (k, args) in enumerate(n):
            cmd += ([":"] if i else []) + ["-n", str(k), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEEPCORE_BACKEND": "numpy"}
    env.pop("DEEPCORE_DIST_CHECK", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def run_worker(n: int, mode: str, tmp_path: Path, timeout: float = 60) -> dict:
    out = tmp_path / f"{mode}-{n}.json"
    proc = mpirun(n, [sys.executable, str(HERE / "distributed_worker.py"), mode, str(out)], timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def reference(dtype: str, opt_name: str, n: int, batch: int, epochs: int) -> Trainer:
    """The one-process run on the same global batches: a plain Trainer, no hooks."""
    trainer = worker.build(dtype, opt_name, 0)
    X, y = worker.data(n, dtype)
    trainer.fit((X, y), epochs=epochs, batch_size=batch, progress=False)
    return trainer


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ------------------------------------------------------------------------------ size-1 world
def test_import_deepcore_does_not_import_mpi4py():
    code = (
        "import sys, deepcore, deepcore.distributed as d, deepcore.train, deepcore.cli\n"
        "c = d.init(); assert (c.rank, c.size, c.local_rank) == (0, 1, 0), c\n"
        "print('mpi4py' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI", "PMIX"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_under_mpiexec_without_mpi4py_is_refused_not_run_as_many_size_one_jobs():
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"  # as if mpi4py were not installed
        "import deepcore.distributed as d\n"
        "try:\n    d.init()\nexcept d.DistributedError as e:\n    print(e)"
    )
    env = {**os.environ, "PMI_SIZE": "2", "PMI_RANK": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "started by mpiexec with 2 processes, but mpi4py is not installed" in out.stdout


def test_shard_bounds_cover_every_row_once():
    for n in range(0, 30):
        for size in range(1, 6):
            parts = [dist.shard_bounds(n, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1


def test_shards_follow_the_seeded_global_batch_order():
    X = np.arange(23, dtype=np.float64).reshape(23, 1)
    y = np.arange(23)
    global_batches = list(dc.data.BatchIterator(X, y, 7, rng=5))
    for size in (1, 2, 3):
        per_rank = []
        for rank in range(size):
            comm = dist.Communicator()
            comm.rank, comm.size = rank, size
            it = dc.data.BatchIterator(X, y, 7, rng=5)
            per_rank.append(list(dist.shard_batches(it, comm)))
        for i, (gx, gy) in enumerate(global_batches):
            assert all(part[i][2] == len(gx) for part in per_rank)
            joined = np.concatenate([part[i][1] for part in per_rank])
            np.testing.assert_array_equal(joined, gy)


def test_hook_on_one_rank_is_a_no_op_and_data_parallel_leaves_the_trainer():
    trainer = worker.build("float64", "sgd", 0)
    assert dist.data_parallel(trainer, dist.Communicator()) is trainer
    assert trainer.grad_hooks == [] and trainer.comm.size == 1


def test_hooked_stage_route_matches_the_default_route():
    """A hook that does nothing must not change the maths (the stage-by-stage route)."""
    seen: list = []

    class Recorder:
        def grad_ready(self, params):
            seen.append(len(params))

        def __call__(self, params):
            seen.append("call")

    ref = reference("float64", "adam", 203, 50, 2)
    trainer = worker.build("float64", "adam", 0)
    trainer.grad_hooks.append(Recorder())
    X, y = worker.data(203, "float64")
    trainer.fit((X, y), epochs=2, batch_size=50, progress=False)
    for k, v in ref.model.state_dict().items():
        assert rel_err(trainer.model.state_dict()[k], v) <= 1e-12
    assert seen[:4] == [2, 2, 2, "call"]  # three Linear layers, last first, then the hook


class TwoRanks(dist.Communicator):
    """Rank 0 of a pretend 2-rank world whose rank 1 built `other` (for the setup check)."""

    def __init__(self, other: dict) -> None:
        super().__init__()
        self.size, self.other = 2, other

    def allgather(self, obj):
        return [obj, self.other]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.optimizer.param_groups[0].update(lr=0.1, initial_lr=0.1),
         "optimizer param_groups[0] lr is 0.1 on rank 1 but 0.05 on rank 0"),
        (lambda t: t.optimizer.param_groups[0].update(momentum=0.5),
         "optimizer param_groups[0] momentum is 0.5 on rank 1 but 0.9 on rank 0"),
        (lambda t: t.model.to(dtype="float32"), "dtype is 'float32' on rank 1 but 'float64'"),
        (lambda t: setattr(t, "clip_grad_norm", 1.0), "clip_grad_norm is 1.0 on rank 1 but None"),
    ],
)  # fmt: skip
def test_setup_check_names_the_rank_and_the_difference(change, message):
    mine, theirs = worker.build("float64", "sgd", 0), worker.build("float64", "sgd", 1)
    change(theirs)
    with pytest.raises(dist.DistributedError, match="rank 1 set up a different run") as err:
        dist.check_same_setup(mine, TwoRanks(dist.describe_setup(theirs)))
    assert message in str(err.value) and err.value.collective
    dist.check_same_setup(mine, TwoRanks(dist.describe_setup(worker.build("float64", "sgd", 1))))


def test_buckets_start_during_backward_in_order_and_weight_the_shares():
    """In-process, with a stand-in transport for a 2-rank world whose other rank computed the
    same gradient: buckets start during backward (last layer first, in index order), the rest
    in __call__, and the weighted sum (share 1/2 each) is the one-rank gradient."""
    events: list = []

    class Doubling:  # the other rank's identical weighted gradient arrives: buf += buf
        def start(self, buf, *, blocking):
            events.append(("start", buf.size, hook.in_call))
            buf *= 2
            return "request"

        def poke(self, requests):
            pass

        def wait(self, requests):
            events.append(("wait", len(requests)))

    class Probe(dist.GradientAllReduce):
        in_call = False

        def __call__(self, params):
            Probe.in_call = True
            super().__call__(params)
            Probe.in_call = False

    comm = TwoRanks({})
    hook = Probe(comm, bucket_bytes=16 * 16 * 8, transport=Doubling())
    ref = reference("float64", "sgd", 120, 40, 1)
    trainer = worker.build("float64", "sgd", 0)
    trainer.grad_hooks.append(hook)
    X, y = worker.data(120, "float64")
    for xb, yb in dc.data.BatchIterator(X, y, 40, rng=trainer.rng):
        hook.set_share(20, 40)  # this rank's half of the batch; its twin holds the other half
        trainer.train_step(xb, yb)
    for k, v in ref.model.state_dict().items():
        assert rel_err(trainer.model.state_dict()[k], v) <= 1e-13
    # 2048-byte buckets in backward order, a layer never split: [W2 b2], [W1 b1] (2176 bytes,
    # over the cap: alone), [W0 b0]
    sizes = [16 * 4 + 4, 16 * 16 + 16, 12 * 16 + 16]
    first, later = events[:4], events[4:8]
    assert first == [("start", n, True) for n in sizes] + [("wait", 3)]  # no layout yet
    assert later == [("start", n, False) for n in sizes] + [("wait", 3)]  # during backward
    assert hook.stats.steps == 3 and hook.stats.buckets == 3
    for p in trainer.model.parameters():  # backward now writes straight into the buckets
        assert any(np.shares_memory(p._grad, b.buffer) for b in hook._buckets)


# ------------------------------------------------------------------------------ N ranks
@needs_mpi
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ranks_train_like_one_process(n, tmp_path):
    out = run_worker(n, "weights", tmp_path)
    assert out["size"] == n
    for cfg, run in zip(worker.CONFIGS, out["runs"], strict=True):
        dtype = cfg[0]
        tol = 1e-12 if dtype == "float64" else 1e-5
        ref = reference(*cfg)
        for k, v in ref.model.state_dict().items():
            err = rel_err(np.asarray(run["weights"][k]), v)
            assert err <= tol, (n, cfg, k, err)
        X, y = worker.data(cfg[2], dtype)
        ref_eval = ref.evaluate((X, y), batch_size=64)
        assert run["evaluate"]["loss"] == pytest.approx(ref_eval["loss"], rel=tol * 10)
        assert run["evaluate"]["accuracy"] == ref_eval["accuracy"]
        for mine, theirs in zip(run["history"], ref.history.epochs, strict=True):
            assert mine["loss"] == pytest.approx(theirs["loss"], rel=tol * 10)
            assert mine["accuracy"] == theirs["accuracy"]
        assert run["steps"] == ref.step
        assert run["buckets"] == (0 if n == 1 else 3)  # one per layer at 700-byte buckets


@needs_mpi
def test_identical_parameters_check_names_the_diverged_rank(tmp_path):
    out = run_worker(2, "diverge", tmp_path)
    assert "rank 1" in out["error"] and "parameter 0" in out["error"], out
    assert out["collective"] is True


@needs_mpi
@pytest.mark.parametrize("mode", ["raise", "kill"])
def test_a_failing_rank_ends_the_whole_job(mode, tmp_path):
    argv = [sys.executable, str(HERE / "distributed_worker.py"), mode, str(tmp_path / "x.json")]
    t0 = time.perf_counter()
    proc = mpirun(3, argv, timeout=60)
    seconds = time.perf_counter() - t0
    assert proc.returncode != 0
    assert seconds < 30  # the healthy ranks would otherwise wait in Allreduce until the timeout
    text = proc.stdout + proc.stderr
    if mode == "raise":
        assert "rank 1 of 3 failed with RuntimeError: injected failure in rank 1" in text
    else:
        # mpiexec names the signal and a PID: the first process it reaped, which may be one it
        # killed in the clean-up, so the PID does not reliably name the rank that died
        assert (tmp_path / "x.json.pid").exists()
        assert "BAD TERMINATION" in text and "Killed (signal 9)" in text, text


# ------------------------------------------------------------------------------ CLI
def cli(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "deepcore.cli", "train", "--backend", "numpy", "--dropout", "0",
        "--optimizer", "sgd", "--quiet", "--json", str(tmp_path / f"{name}.json"), *extra,
    ]  # fmt: skip


@needs_mpi
def test_cli_ranks_report_the_one_process_test_loss(tmp_path):
    """The issue's acceptance run, shortened to 6 epochs: --batch-size 96 on 1, 2 and 3 ranks."""
    args = ["--batch-size", "96", "--epochs", "6"]
    one = subprocess.run(cli(tmp_path, "one", *args), capture_output=True, text=True, timeout=60)
    assert one.returncode == 0, one.stderr
    ref = json.loads((tmp_path / "one.json").read_text())
    for n in (2, 3):
        proc = mpirun(n, cli(tmp_path, f"n{n}", *args))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("test accuracy") == 1  # rank 0 alone reports
        got = json.loads((tmp_path / f"n{n}.json").read_text())
        assert got["ranks"] == n
        assert got["test_loss"] == pytest.approx(ref["test_loss"], rel=1e-4)
        assert got["test_accuracy"] == ref["test_accuracy"]
        assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-4)
    assert not list(tmp_path.glob("*.tmp*"))


@needs_mpi
def test_cli_checkpoint_of_four_ranks_resumes_on_one_and_two(tmp_path):
    common = ["--dtype", "float64", "--batch-size", "64", "--schedule", "none", "--epochs"]
    full = mpirun(4, cli(tmp_path, "full", *common, "4", "--save", str(tmp_path / "full.st")))
    assert full.returncode == 0, full.stderr[-3000:]
    half = mpirun(4, cli(tmp_path, "half", *common, "2", "--save", str(tmp_path / "half.st")))
    assert half.returncode == 0, half.stderr[-3000:]
    expected = dc.io.load(tmp_path / "full.st", backend="numpy").model.state_dict()
    for n in (1, 2):
        ck = tmp_path / f"resumed{n}.st"
        ck.write_bytes((tmp_path / "half.st").read_bytes())
        argv = cli(tmp_path, f"r{n}", *common, "4", "--resume", str(ck), "--save", str(ck))
        proc = mpirun(n, argv)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = dc.io.load(ck, backend="numpy")
        assert got.epoch == 4
        for k, v in expected.items():
            assert rel_err(got.model.state_dict()[k], v) <= 1e-12, (n, k)
        full_json = json.loads((tmp_path / "full.json").read_text())
        mine = json.loads((tmp_path / f"r{n}.json").read_text())
        assert mine["test_loss"] == pytest.approx(full_json["test_loss"], rel=1e-10)


@needs_mpi
def test_cli_refuses_ranks_built_differently(tmp_path):
    a = cli(tmp_path, "a", "--epochs", "1", "--hidden", "32")
    b = cli(tmp_path, "b", "--epochs", "1", "--hidden", "48")
    proc = mpirun([(1, a), (1, b)], [], timeout=60)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1, proc.stderr  # one message, from rank 0
    assert "rank 1 set up a different run than rank 0" in lines[0]
    assert "0.weight" in lines[0] and "[32, 64]" in lines[0] and "[48, 64]" in lines[0]


@needs_mpi
def test_cli_error_on_one_rank_ends_the_job_naming_it(tmp_path):
    good = tmp_path / "good.csv"
    rng = np.random.default_rng(0)
    rows = [",".join(f"{v:.3f}" for v in rng.standard_normal(4)) + f",{i % 2}" for i in range(40)]
    good.write_text("a,b,c,d,label\n" + "\n".join(rows) + "\n")
    a = cli(tmp_path, "a", "--epochs", "1", "--dataset", "csv", "--path", str(good))
    b = cli(tmp_path, "b", "--epochs", "1", "--dataset", "csv", "--path", str(tmp_path / "no.csv"))
    t0 = time.perf_counter()
    proc = mpirun([(1, a), (1, b)], [], timeout=60)
    assert time.perf_counter() - t0 < 30
    assert proc.returncode != 0
    assert "error (rank 1 of 2)" in proc.stderr and "no.csv" in proc.stderr, proc.stderr


@needs_mpi
def test_cli_refuses_a_rank_without_data(tmp_path):
    proc = mpirun(3, cli(tmp_path, "x", "--epochs", "1", "--batch-size", "2"))
    assert proc.returncode == 2
    assert "batch size 2 (the global batch) is smaller than the 3 ranks" in proc.stderr


# ------------------------------------------------------------------------------ GPUs (double)
@needs_mpi
def test_nccl_path_on_the_cupy_double(tmp_path):
    out = run_worker(2, "nccl", tmp_path, timeout=120)
    assert out["backends"] == ["cupy:0", "cupy:1"]  # each rank on GPU local_rank
    assert out["uids_agree"]
    assert out["host_transfers_during_fit"] == 0  # gradients never went through the host
    assert out["calls"] and all(c[1] == 7 and c[2] == 4242 for c in out["calls"])
    ref = reference("float64", "sgd", 120, 40, 2)
    for k, v in ref.model.state_dict().items():
        assert rel_err(np.asarray(out["weights"][k]), v) <= 1e-12
