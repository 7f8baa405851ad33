"""The JAX anchor: the same MLP as one `jax.jit`-compiled step (forward, `jax.value_and_grad`,
update), run in its own process by deepcore.bench.remote like PyTorch.

The update is optax's `sgd(momentum=0.9)` / `adam` when optax is installed, else the same rules
written in jax.numpy (both equal torch's: momentum buffer b = 0.9 b + g; Adam with eps outside
the bias-corrected square root). Buffers are donated, so a step updates in place as torch does.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .runners import Runner, Skip
from .workloads import Workload


def _optax_or_none() -> Any:
    try:
        import optax
    except ImportError:
        return None
    return optax


class JaxRunner(Runner):
    """jit(step) on JAX's default CPU device; losses come back as host floats only when asked."""

    name = "jax"

    def __init__(
        self,
        workload: Workload,
        optimizer: str,
        dtype: str,
        state: dict[str, np.ndarray],
        lr: float,
    ) -> None:
        super().__init__(workload, optimizer, dtype, state, lr)
        try:
            import jax
            import jax.numpy as jnp
        except ImportError as exc:
            raise Skip(f"jax is not importable: {exc}") from None
        if dtype == "float64":
            jax.config.update("jax_enable_x64", True)
        self.jax, self.jnp = jax, jnp
        n = len(workload.sizes) - 1
        self.params = [
            (jnp.asarray(state[f"{2 * i}.weight"]), jnp.asarray(state[f"{2 * i}.bias"]))
            for i in range(n)
        ]
        optax = self.optax = _optax_or_none()
        if optax is not None:
            tx = (
                optax.sgd(lr, momentum=0.9)
                if optimizer == "sgd"
                else optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)
            )
            self.opt_state = tx.init(self.params)
        else:
            tx = None
            zeros = jax.tree_util.tree_map(jnp.zeros_like, self.params)
            self.opt_state = (zeros, zeros, jnp.zeros((), jnp.int32))

        def loss_fn(params: Any, x: Any, y: Any) -> Any:
            h = x
            for i, (w, b) in enumerate(params):
                h = h @ w.T + b
                if i < n - 1:
                    h = jax.nn.relu(h)
            logp = jax.nn.log_softmax(h, axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        x_dtype = jnp.dtype(dtype)

        def update(params: Any, grads: Any, st: Any) -> tuple[Any, Any]:
            if tx is not None:
                updates, st = tx.update(grads, st, params)
                return optax.apply_updates(params, updates), st
            m, v, t = st
            t = t + 1
            tm = jax.tree_util.tree_map
            if optimizer == "sgd":
                m = tm(lambda b, g: 0.9 * b + g, m, grads)
                return tm(lambda p, b: p - lr * b, params, m), (m, v, t)
            m = tm(lambda a, g: 0.9 * a + 0.1 * g, m, grads)
            v = tm(lambda a, g: 0.999 * a + 0.001 * g * g, v, grads)
            tf = t.astype(x_dtype)
            bc1, bc2 = 1 - 0.9**tf, jnp.sqrt(1 - 0.999**tf)
            new = tm(lambda p, a, b: p - (lr / bc1) * a / (jnp.sqrt(b) / bc2 + 1e-8), params, m, v)
            return new, (m, v, t)

        def step(params: Any, st: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            params, st = update(params, grads, st)
            return params, st, loss

        self._jit = jax.jit(step, donate_argnums=(0, 1))
        self._step: Any = self._jit

    def warmup(self) -> float:
        """Compile the step for this workload's batch shape (XLA's compile time)."""
        jax, w = self.jax, self.workload
        spec = (
            jax.ShapeDtypeStruct((w.batch, w.sizes[0]), np.dtype(self.dtype)),
            jax.ShapeDtypeStruct((w.batch,), np.int32),
        )
        t = time.perf_counter()
        self._step = self._jit.lower(self.params, self.opt_state, *spec).compile()
        return time.perf_counter() - t

    def put(self, x: np.ndarray, y: np.ndarray) -> Any:
        return self.jax.device_put(x), self.jax.device_put(y.astype(np.int32))

    def step(self, batch: Any) -> None:
        self.params, self.opt_state, self._loss = self._step(self.params, self.opt_state, *batch)

    def loss_step(self, batch: Any) -> float:
        self.step(batch)
        return float(self._loss)

    def synchronize(self) -> None:
        self.jax.block_until_ready(self.params)

    def info(self) -> dict[str, Any]:
        optax = self.optax
        return {
            "jax": self.jax.__version__,
            "update": f"optax {optax.__version__}" if optax else "jax.numpy (optax not installed)",
            "device": str(self.jax.devices()[0]),
        }
