"""Training loop: `Trainer` and `fit`, with a progress bar and per-epoch history.

`Trainer` owns the model, loss, optimizer, optional scheduler, the shuffling generator and the
step/epoch counters, so a checkpoint of it resumes a run exactly (deepcore.io).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .amp import GradScaler
from .backends import Backend
from .data import BatchIterator, Dataset
from .engine import GradientHook, TrainStep, plan_step
from .errors import CheckpointError, NonFiniteError
from .evaluation import LOSSES, _as_xy, _column_targets, _evaluate_arrays, evaluate
from .history import History, _epoch_line, _progress
from .nn import CrossEntropyLoss, Loss, Module
from .nn.loss import check_labels
from .optim import SGD, Adam, AdamW, Optimizer, RMSprop
from .optim.schedulers import LRScheduler
from .precision import autocast, normalize_precision

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
}


def make_optimizer(name: str, params: Iterable[Any], lr: float, **kw: Any) -> Optimizer:
    """An optimizer by name: sgd (momentum 0.9 unless given), adam, adamw, rmsprop."""
    key = name.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    if key == "sgd":
        kw.setdefault("momentum", 0.9)
    return OPTIMIZERS[key](params, lr=lr, **kw)


class Trainer:
    """Trains `model` with `loss_fn` and `optimizer`; keeps everything a resume needs."""

    def __init__(
        self,
        model: Module,
        loss_fn: Loss | str = "cross_entropy",
        optimizer: Optimizer | str = "adam",
        *,
        lr: float = 1e-3,
        scheduler: LRScheduler | None = None,
        seed: int | None = 0,
        clip_grad_norm: float | None = None,
        fused: bool | str = "auto",
        grad_hooks: Iterable[GradientHook] = (),
        precision: str = "float32",
    ) -> None:
        self.model = model
        #: "float32", "bf16" or "fp16": each step runs under autocast("bfloat16"/"float16")
        #: (deepcore.precision); fp16 with dynamic loss scaling (`scaler`).
        self.precision = normalize_precision(precision)
        #: fp16's loss scaler (deepcore.amp.GradScaler), made at the first fp16 step or restored
        #: from a state dict; its own state is in `state_dict()["scaler"]`.
        self.scaler: GradScaler | None = None
        if isinstance(loss_fn, str):
            if loss_fn not in LOSSES:
                raise ValueError(f"unknown loss {loss_fn!r}; expected one of {', '.join(LOSSES)}")
            loss_fn = LOSSES[loss_fn](backend=model.backend, dtype=model.dtype)
        loss_fn.backend = model.backend  # the loss computes where the model does
        self.loss_fn = loss_fn
        if isinstance(optimizer, str):
            optimizer = make_optimizer(optimizer, model.parameters(), lr)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.clip_grad_norm = clip_grad_norm
        self.rng = np.random.default_rng(seed)
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimizer steps
        self.history = History()
        # "auto": the step engine fuses what model, loss, optimizer and hooks allow.
        self.fused = fused
        #: Gradient hooks (deepcore.engine.GradientHook): `hook(params)` after backward, optional
        #: `grad_ready(params)` per layer during it, `after_update(params)` after the update.
        self.grad_hooks: list[Any] = list(grad_hooks)
        self._step: TrainStep | None = None
        self._step_for: Any = None
        self._last_logits: Any = None
        #: The deepcore.distributed Communicator when training data-parallel (set by
        #: distributed.data_parallel): fit then shards every global batch and reduces metrics.
        self.comm: Any = None

    @property
    def backend(self) -> Backend:
        return self.model.backend

    def to(self, backend: str | Backend | None = None, *, dtype: Any = None) -> Trainer:
        """Move the model, its loss and the optimizer state to `backend` and/or `dtype`."""
        self.model.to(backend, dtype=dtype)
        self.loss_fn.backend = self.model.backend
        self.optimizer.to(self.model.backend)
        self._step = None
        return self

    def state_dict(self, *, arrays: bool = True) -> dict[str, Any]:
        """Everything a resume needs: the "model", "optimizer" and "scheduler" state dicts, the
        shuffling generator ("rng"), "epoch", "step", "history", "loss" (type, reduction),
        "clip_grad_norm" and, for fp16, "scaler" (the loss scaler's state). arrays=False leaves
        out "model" and "optimizer" (host copies of every array) for a writer that streams them
        from `model` and `optimizer` (deepcore.io.save)."""
        state: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "rng": self.rng.bit_generator.state,
            "history": [dict(r) for r in self.history.epochs],
            "loss": {"type": _loss_name(self.loss_fn), "reduction": self.loss_fn.reduction},
            "clip_grad_norm": self.clip_grad_norm,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if arrays:
            state["model"] = self.model.state_dict()
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict()` returned; "model", "optimizer" and "scheduler" are loaded
        when present (load_trainer has them loaded already, all checked by deepcore.io). The loss
        type, counters and generator state are checked before anything is written."""
        loss = state["loss"]
        if loss["type"] != _loss_name(self.loss_fn):
            raise ValueError(
                f"state is of a {loss['type']} trainer, this one has {_loss_name(self.loss_fn)}"
            )
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        for key in ("epoch", "step"):
            if not isinstance(state[key], int) or isinstance(state[key], bool) or state[key] < 0:
                raise ValueError(f"Trainer state: {key} must be an integer >= 0")
        if "model" in state:
            self.model.load_state_dict(state["model"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler") is not None and self.scheduler is not None:
            self.scheduler.load_state_dict(dict(state["scheduler"]))
        if state.get("scaler") is not None:
            scaler = self.scaler or GradScaler()
            scaler.load_state_dict(state["scaler"])
            self.scaler = scaler
        self.rng = rng
        self.epoch, self.step = state["epoch"], state["step"]
        self.history = History([dict(r) for r in state["history"]])
        self.clip_grad_norm = state["clip_grad_norm"]
        self.loss_fn.reduction = loss["reduction"]

    def train_step(self, xb: Any, yb: Any) -> Any:
        """One forward, backward and update; returns the loss as a 0-d backend array."""
        if self.precision == "fp16":  # an overflow is expected now and then: the scaler skips
            with autocast(self.precision), np.errstate(over="ignore", invalid="ignore"):
                loss, self._last_logits = self.step_engine()(xb, yb)
        elif self.precision != "float32":  # the 16-bit policy around forward, loss and backward
            with autocast(self.precision):
                loss, self._last_logits = self.step_engine()(xb, yb)
        else:
            loss, self._last_logits = self.step_engine()(xb, yb)
        self.step += 1
        return loss

    def step_engine(self) -> TrainStep:
        """The planned training step (re-planned when the backend, dtype, hooks or clipping
        change)."""
        model = self.model
        hooks = self.grad_hooks
        if self.precision != "float32" and model.dtype != "float32":
            raise ValueError(
                f"precision {self.precision!r} needs a float32 model; this one is {model.dtype}"
            )
        if self.precision == "fp16":  # the loss scaler runs last: after any all-reduce
            if self.scaler is None:
                self.scaler = GradScaler()
            hooks = [*hooks, self.scaler]
        key = (model.backend, model.dtype, len(hooks), *map(id, hooks),
               self.clip_grad_norm, self.fused, self.optimizer, self.precision)  # fmt: skip
        if self._step is None or self._step_for != key:
            self._step = plan_step(
                self.model, self.loss_fn, self.optimizer, grad_hooks=hooks,
                clip_grad_norm=self.clip_grad_norm, fused=self.fused, precision=self.precision,
            )  # fmt: skip
            self._step_for = key
        return self._step

    @property
    def step_route(self) -> str:
        """The route of the training step: "fused-step", "fused-stages" or "stages"."""
        return self.step_engine().route

    def fit(
        self,
        train: Dataset | tuple[Any, Any],
        *,
        epochs: int = 10,
        batch_size: int = 64,
        validation: Dataset | tuple[Any, Any] | None = None,
        progress: bool = True,
        callbacks: Iterable[Callable[[Trainer], None]] = (),
        shuffle: bool = True,
    ) -> History:
        """Train for `epochs` more epochs; after each, run validation and the callbacks."""
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        X, y = _as_xy(train, "training data")
        val = _as_xy(validation, "validation data") if validation is not None else None
        classify = isinstance(self.loss_fn, CrossEntropyLoss)
        y = _column_targets(y, classify)
        n_classes = _n_outputs(self.model)
        if classify and n_classes is not None:  # once, naming the row in the data set
            y = check_labels(y, len(y), n_classes)
        batches = BatchIterator(X, y, batch_size, shuffle=shuffle, rng=self.rng)
        check_every = 1 if self.backend.device == "cpu" else 50
        comm = self.comm if self.comm is not None and self.comm.size > 1 else None
        if comm is not None:  # data-parallel: this rank's share of every global batch
            from .distributed import check_shardable, shard_batches

            check_shardable(len(X), batch_size, comm, "training data")
            progress = progress and comm.is_root  # one rank reports
        train_step = self.train_step
        shares = [h.set_share for h in self.grad_hooks if hasattr(h, "set_share")]
        bar = _progress(progress, len(batches) * epochs)
        target_epoch = self.epoch + epochs
        try:
            for _ in range(epochs):
                self.model.train()
                t0 = time.perf_counter()
                total, seen, counted = 0.0, 0, 0
                correct: Any = 0  # a device scalar on GPU backends, read once per epoch
                epoch_batches = (
                    shard_batches(batches, comm)
                    if comm is not None
                    else ((xb, yb, len(xb)) for xb, yb in batches)
                )
                for i, (xb, yb, global_rows) in enumerate(epoch_batches):
                    for share in shares:
                        share(len(xb), global_rows)
                    loss = train_step(xb, yb)
                    n = len(xb)
                    seen += n
                    if classify and self._last_logits is not None:
                        correct = correct + self.backend.count_correct(self._last_logits, yb)
                        counted += n
                    value = None  # the loss on the host, read once where it is needed
                    if i % check_every == 0 or i == len(batches) - 1:
                        value = float(loss)
                        if not math.isfinite(value):
                            raise NonFiniteError(
                                f"loss became {value} at step {self.step} (epoch "
                                f"{self.epoch + 1}); lower the learning rate or check the data"
                            )
                        if check_every == 1:
                            total += value * n
                    if bar is not None:
                        bar.update(1)
                        if i % 20 == 0:
                            shown = value if value is not None else float(loss)
                            bar.set_description(f"epoch {self.epoch + 1}/{target_epoch}")
                            bar.set_postfix(loss=f"{shown:.4f}", refresh=False)
                self.backend.synchronize()
                if comm is not None:  # sums over ranks: losses weighted by rows, counts
                    last = (value if value is not None else 0.0) * n
                    sums = comm.allreduce_sum(
                        [total, seen, int(correct), counted, last, n]
                    ).tolist()
                    total, seen, correct, counted = sums[0], int(sums[1]), sums[2], int(sums[3])
                    value = sums[4] / sums[5] if sums[5] else value
                seconds = time.perf_counter() - t0
                self.epoch += 1
                if self.scheduler is not None:
                    self.scheduler.step()
                record: dict[str, float] = {
                    "epoch": self.epoch,
                    "loss": total / seen if check_every == 1 else value,  # read at the last step
                    "seconds": seconds,
                    "samples_per_second": seen / seconds if seconds > 0 else float("inf"),
                    "lr": self.optimizer.param_groups[0]["lr"],
                }
                if classify and counted:
                    record["accuracy"] = int(correct) / counted
                if val is not None:
                    vm = _evaluate_arrays(
                        self.model, *val, self.loss_fn, batch_size=max(batch_size, 256), comm=comm
                    )
                    record.update({f"val_{k}": v for k, v in vm.items()})
                self.history.epochs.append(record)
                if bar is not None:
                    bar.set_postfix(
                        {k: f"{v:.4f}" for k, v in record.items() if "loss" in k or "acc" in k}
                    )
                elif progress:
                    import sys

                    print(_epoch_line(record, target_epoch), file=sys.stderr, flush=True)
                for cb in callbacks:
                    cb(self)
        finally:
            if bar is not None:
                bar.close()
        return self.history

    def evaluate(
        self, data: Dataset | tuple[Any, Any], *, batch_size: int = 512
    ) -> dict[str, float]:
        """Mean loss (and accuracy for classification) over `data`, in eval mode (data-parallel:
        each rank evaluates a slice and the sums are reduced)."""
        if self.comm is not None and self.comm.size > 1:
            X, y = _as_xy(data, "evaluation data")
            return _evaluate_arrays(
                self.model, X, y, self.loss_fn, batch_size=batch_size, comm=self.comm
            )
        return evaluate(self.model, data, loss_fn=self.loss_fn, batch_size=batch_size)


def fit(
    model: Module,
    train: Dataset | tuple[Any, Any],
    *,
    loss: Loss | str = "cross_entropy",
    optimizer: Optimizer | str = "adam",
    lr: float = 1e-3,
    epochs: int = 10,
    batch_size: int = 64,
    validation: Dataset | tuple[Any, Any] | None = None,
    scheduler: LRScheduler | None = None,
    seed: int | None = 0,
    progress: bool = True,
    clip_grad_norm: float | None = None,
    callbacks: Iterable[Callable[[Trainer], None]] = (),
    precision: str = "float32",
) -> History:
    """Train `model` on `train` (a Dataset or (X, y)); returns the per-epoch History.
    `precision="bf16"` / `"fp16"`: GEMMs on bfloat16 / float16 operands, everything else float32
    (deepcore.precision); fp16 with dynamic loss scaling (deepcore.amp)."""
    trainer = Trainer(
        model,
        loss,
        optimizer,
        lr=lr,
        scheduler=scheduler,
        seed=seed,
        clip_grad_norm=clip_grad_norm,
        precision=precision,
    )
    return trainer.fit(
        train,
        epochs=epochs,
        batch_size=batch_size,
        validation=validation,
        progress=progress,
        callbacks=callbacks,
    )


def _loss_name(loss: Any) -> str:
    """The deepcore loss class behind `loss` (a user subclass resumes as its deepcore base)."""
    for cls in type(loss).__mro__:
        if cls.__module__ == "deepcore.nn.loss" and cls.__name__ != "Loss":
            return cls.__name__
    return type(loss).__name__


def _n_outputs(model: Module) -> int | None:
    """The number of outputs of the model's last layer that declares one (None if none does)."""
    sizes = [
        m.out_features for m in model.modules() if isinstance(getattr(m, "out_features", None), int)
    ]
    return sizes[-1] if sizes else None


def load_trainer(path: Any, *, backend: str | Backend | None = None, dtype: Any = None) -> Trainer:
    """A Trainer rebuilt from a checkpoint saved with a trainer (deepcore.io.save(trainer=...)
    or `deepcore train --save`), ready for `fit(...)` to go on from the saved epoch: model, loss,
    optimizer, scheduler, counters, history and both generators."""
    from .io import load

    ckpt = load(path, backend=backend, dtype=dtype)
    facts = ckpt.trainer
    if facts is None or ckpt.optimizer is None:
        raise CheckpointError(
            f"{ckpt.path}: saved without a trainer; use deepcore.load and build a Trainer"
        )
    by_class = {cls.__name__: cls for cls in LOSSES.values()}
    loss_name = facts["loss"]["type"]
    if loss_name not in by_class:
        raise CheckpointError(f"{ckpt.path}: trainer.loss.type: unknown loss {loss_name!r}")
    loss = by_class[loss_name](
        facts["loss"]["reduction"], backend=ckpt.model.backend, dtype=ckpt.model.dtype
    )
    trainer = Trainer(
        ckpt.model,
        loss,
        ckpt.optimizer,
        scheduler=ckpt.scheduler,
        seed=None,
        clip_grad_norm=facts["clip_grad_norm"],
        precision="fp16" if facts.get("scaler") is not None else "float32",
    )
    rng = ckpt.data_rng_state or np.random.default_rng().bit_generator.state
    trainer.load_state_dict({**facts, "epoch": ckpt.epoch, "step": ckpt.step, "rng": rng})
    return trainer
