"""Run an anchor in its own Python process, driven over a pipe, so it is timed as its users run it.

Why: libraries in one process share process-wide state. Numba's OpenMP pool and PyTorch's load
the same `libgomp.so.1`, which reads `OMP_WAIT_POLICY` once; deepcore's Numba backend sets it to
`passive` where its GEMMs run on OpenBLAS (deepcore/backends/_numba_env.py), and in-process that
made PyTorch's mnist step 1.9x slower (4.6 ms instead of 2.4 ms, measured). Here the anchor
gets a fresh interpreter and the environment the user started with, minus what deepcore
injected; the parent still times it in turns with the other runners (the child clocks each
window itself, so the pipe adds nothing).

Protocol: pickled `(command, args)` tuples on the child's stdin, pickled `("ok", value)` or
`("error", message)` replies on its stdout (the child's own prints go to stderr). Replies hold
plain Python values only, so the parent never imports the anchor's library (tested).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from typing import Any, BinaryIO

from .runners import Runner, Skip
from .timing import HostMemory, TorchCudaMemory, clock_steps
from .workloads import Workload


def _child_env() -> dict[str, str]:
    """The environment minus the variables deepcore's Numba backend set for its own pool."""
    env = dict(os.environ)
    cfg = sys.modules.get("deepcore.backends.numba.env")
    for key, value in getattr(cfg, "INJECTED_ENV", {}).items():
        if env.get(key) == value:
            del env[key]
    return env


class RemoteRunner(Runner):
    """A Runner whose anchor (`kind`: "torch") lives in a child process; batches stay there."""

    def __init__(
        self,
        kind: str,
        workload: Workload,
        optimizer: str,
        dtype: str,
        state: dict[str, Any],
        lr: float,
        threads: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(workload, optimizer, dtype, state, lr)
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "deepcore.bench.remote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_child_env(),
        )
        try:
            attrs = self._call("init", kind, (workload, optimizer, dtype, state, lr), kwargs,
                               threads)  # fmt: skip
        except BaseException:
            self.close()
            raise
        self.name, self.device, self.gated, self.gate_note, self.gate_rtol = attrs

    def _call(self, command: str, *args: Any) -> Any:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError(f"{self.name}: its process has been closed")
        pickle.dump((command, args), proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.flush()
        try:
            status, value = pickle.load(proc.stdout)
        except EOFError:
            raise RuntimeError(
                f"benchmark worker for {getattr(self, 'name', '?')} exited "
                f"(code {proc.wait()}); its stderr is above"
            ) from None
        if status == "skip":
            self.close()
            raise Skip(value)
        if status != "ok":
            raise RuntimeError(f"benchmark worker: {value}")
        return value

    def warmup(self) -> float:
        return float(self._call("warmup"))

    def put(self, x: Any, y: Any) -> Any:
        return self._call("put", x, y)  # an index into the child's batches

    def step(self, batch: Any) -> None:
        self._call("step", batch)

    def loss_step(self, batch: Any) -> float:
        return float(self._call("loss_step", batch))

    def timed_window(self, first: int, steps: int) -> float:
        """Seconds the child took for `steps` steps from batch index `first`, synchronized."""
        return float(self._call("window", first, steps))

    def peak_memory(self) -> int:
        """The child's resident-set peak since it built the runner (bytes)."""
        return int(self._call("peak"))

    def info(self) -> dict[str, Any]:
        return dict(self._call("info"), process="own (deepcore.bench.remote)")

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()

    def __del__(self) -> None:
        self.close()


def _serve(inp: BinaryIO, out: BinaryIO) -> None:
    """The child's loop: build the runner, then answer commands until stdin closes."""
    runner: Any = None
    batches: list[Any] = []
    probe: Any = None
    while True:
        try:
            command, args = pickle.load(inp)
        except EOFError:
            return
        try:
            if command == "init":
                kind, rargs, kwargs, threads = args
                try:
                    runner, probe = _make(kind, rargs, kwargs, threads)
                except Skip as exc:
                    reply: tuple[str, Any] = ("skip", str(exc))
                else:
                    attrs = (str(runner.name), str(runner.device), bool(runner.gated),
                             str(runner.gate_note), runner.gate_rtol)  # fmt: skip
                    reply = ("ok", attrs)
            elif command == "put":
                batches.append(runner.put(*args))
                reply = ("ok", len(batches) - 1)
            elif command == "window":
                reply = ("ok", clock_steps(runner, batches, *args))
            elif command == "step":
                runner.step(batches[args[0]])
                runner.synchronize()
                reply = ("ok", None)
            elif command == "loss_step":
                reply = ("ok", float(runner.loss_step(batches[args[0]])))
            elif command == "warmup":
                reply = ("ok", float(runner.warmup()))
            elif command == "peak":
                reply = ("ok", probe.peak() if probe is not None else 0)
            elif command == "info":  # plain types only: unpickling torch's would import torch
                reply = ("ok", json.loads(json.dumps(runner.info(), default=str)))
            else:
                reply = ("error", f"unknown command {command!r}")
        except Exception as exc:  # reported to the parent, which marks the row as an error
            reply = ("error", f"{type(exc).__name__}: {exc}")
        pickle.dump(reply, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


def _make(
    kind: str, rargs: tuple[Any, ...], kwargs: dict[str, Any], threads: int
) -> tuple[Runner, Any]:
    """Import the library, start the memory probe (the import is not the row's memory, as for
    the in-process rows), then build the runner; returns (runner, probe)."""
    if kind == "jax":
        if threads == 1 and "XLA_FLAGS" not in os.environ:  # else XLA uses every core
            os.environ["XLA_FLAGS"] = (
                "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            )
        try:
            import jax  # noqa: F401
        except ImportError as exc:
            raise Skip(f"jax is not importable: {exc}") from None
        from .anchors_jax import JaxRunner

        probe = HostMemory()
        return JaxRunner(*rargs), probe
    if kind != "torch":
        raise ValueError(f"no remote runner for {kind!r}")
    try:
        import torch
    except ImportError as exc:
        raise Skip(f"torch is not importable: {exc}") from None
    torch.set_num_threads(threads)
    from .anchors import TorchRunner

    probe = TorchCudaMemory() if kwargs.get("device") == "cuda" else HostMemory()
    return TorchRunner(*rargs, **kwargs), probe


def main() -> None:
    channel_in, channel_out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the channel
    _serve(channel_in, channel_out)


if __name__ == "__main__":
    main()
