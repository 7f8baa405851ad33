"""SIGKILL at random moments while a run checkpoints every epoch (issue 18's kill test).

Half the kills land at any moment, half 0-4 ms after the child's temp file appears (inside a
write, which the children stretch to ~10 ms as a slow disk would). Each kill must leave a
checkpoint that loads (the previous one or the new one, never a torn file), temp files must not
pile up (the next save removes those of killed writers), and after the last kill one more save
leaves no stray file at all. Children come from a forkserver that has deepcore imported, so
each starts in milliseconds.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import deepcore as dc
from deepcore.train import load_trainer

KILLS = 24


@pytest.mark.skipif(sys.platform != "linux", reason="forkserver and SIGKILL: Linux")
def test_sigkill_during_saves_always_leaves_a_loadable_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # tiny GEMMs: threads would only slow a loaded machine
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ckpt_tools", "deepcore.io", "deepcore.train"])
    path = tmp_path / "run.safetensors"
    rng = np.random.default_rng(18)
    killed: list[int] = []
    mid_write = 0
    last_epoch = 0
    for i in range(KILLS):
        proc = ctx.Process(target=_run, args=(str(path), i))
        proc.start()
        if i == 0:  # the forkserver starts now (imports): wait for the first checkpoint
            deadline = time.monotonic() + 60
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        if i % 2:  # any moment: resuming takes ~0.1 s here, then saves dominate
            time.sleep(rng.uniform(0.1, 0.35))
        else:  # a moment inside a write: once this child's temp file appears, 0-4 ms later
            _wait_for_temp(tmp_path, proc.pid)
            time.sleep(rng.uniform(0.0, 0.004))
        proc.kill()
        proc.join(10)
        assert proc.exitcode == -9, proc.exitcode
        killed.append(proc.pid)
        temps = [p.name for p in tmp_path.iterdir() if p.name != path.name]
        owners = [int(name.split(".")[3]) for name in temps]
        assert all(name.startswith(".run.safetensors.") and name.endswith(".tmp") for name in temps)
        assert set(owners) <= set(killed) and len(temps) <= 2, temps  # they do not pile up
        mid_write += proc.pid in owners
        ck = dc.load(path)  # never torn: the old checkpoint or the new one
        assert ck.epoch >= last_epoch and np.isfinite(ck.model[0].weight.numpy()).all()
        last_epoch = ck.epoch
    print(f"{mid_write} of {KILLS} kills landed inside a save")
    assert mid_write >= KILLS // 4, f"only {mid_write} of {KILLS} kills landed inside a save"
    trainer = load_trainer(path, backend="numpy")
    dc.save(path, trainer=trainer)  # the next save cleans up after the last kill
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert last_epoch > 0


def _wait_for_temp(directory: Path, pid: int, timeout: float = 5.0) -> None:
    prefix = f".run.safetensors.{pid}."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(name.startswith(prefix) for name in os.listdir(directory)):
            return
        time.sleep(0.0005)


def _run(path: str, seed: int) -> None:
    from ckpt_tools import save_forever

    os.environ["DEEPCORE_BACKEND"] = "numpy"
    save_forever(path, seed)
