"""scikit-learn's stochastic training loop, each batch one step on a deepcore backend."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state, gen_batches
from sklearn.utils import shuffle as sk_shuffle

from ..amp import GradScaler
from ..engine import TrainStep, plan_step
from ..precision import autocast, normalize_precision

#: Sparse X at most this big (as float64) is densified once, else batch by batch.
_DENSIFY_BYTES = 256 << 20


class TrainingMixin:
    """fit / partial_fit machinery of BaseMLP: epochs, batches, stopping, learning rates."""

    def _fit(self, X: Any, y: Any, incremental: bool = False) -> Any:
        self._check_params()
        hidden = self._hidden_sizes()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        layer_units = [X.shape[1], *hidden, Y.shape[1]]
        rs = check_random_state(self.random_state)
        if first_pass:
            self._initialize(Y, layer_units, rs)
        else:
            self._ensure_model()
        if not incremental or getattr(self, "_optimizer", None) is None:
            self._make_optimizer(resume=incremental)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        self._fit_stochastic(X, Y, rs, self.early_stopping, incremental)
        if not all(np.isfinite(w).all() for w in [*self.coefs_, *self.intercepts_]):
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may"
                " contain large values and need to be preprocessed."
            )
        return self

    def _fit_stochastic(
        self, X: Any, Y: np.ndarray, rs: Any, early_stopping: bool, incremental: bool
    ) -> None:
        """scikit-learn's epoch loop; each batch is one fused step on the backend."""
        X_val = y_val = None
        if early_stopping:
            stratify = Y if is_classifier(self) and self.n_outputs_ == 1 else None
            X, X_val, Y, Y_val = train_test_split(
                X, Y, random_state=rs, test_size=self.validation_fraction, stratify=stratify
            )
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset."
                )
            y_val = self._label_binarizer.inverse_transform(Y_val) if is_classifier(self) else Y_val
        n = X.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than "
                    "sample size. It is going to be clipped",
                    stacklevel=3,
                )
            batch = int(np.clip(self.batch_size, 1, n))
        be = self._model.backend
        # Sparse X is densified once when that is small, else batch by batch.
        sparse = sp.issparse(X) and X.shape[0] * X.shape[1] * 8 > _DENSIFY_BYTES
        if sp.issparse(X) and not sparse:
            X = X.toarray()
        Xd = X if sparse else be.asarray(np.asarray(X, dtype=self.dtype))
        Td = be.asarray(self._train_targets(Y))
        sample_idx = np.arange(n, dtype=int)
        precision = normalize_precision(getattr(self, "precision", "float32"))
        step = plan_step(
            self._model, _Loss(self.out_activation_, be), self._optimizer, precision=precision,
            grad_hooks=[GradScaler()] if precision == "fp16" else (),  # fp16: loss scaling
        )  # fmt: skip
        self.step_route_ = step.route
        self.n_iter_ = 0
        try:
            for _ in range(self.max_iter):
                if self.shuffle:
                    sample_idx = sk_shuffle(sample_idx, random_state=rs)
                    order = be.asarray(sample_idx)
                total: Any = 0.0
                for sl in gen_batches(n, batch):
                    idx = order[sl] if self.shuffle else sl
                    if sparse:
                        rows = X[sample_idx[sl] if self.shuffle else sl]
                        xb = be.asarray(rows.toarray(), self.dtype)
                    else:
                        xb = Xd[idx]
                    with autocast(getattr(self, "precision", "float32")):
                        total = total + self._step(step, xb, Td[idx])
                self.n_iter_ += 1
                self.loss_ = float(total) / n
                self.t_ += n
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._update_no_improvement_count(early_stopping, X_val, y_val)
                if self.solver == "sgd" and self.learning_rate == "invscaling":
                    self._set_lr(self.learning_rate_init / (self.t_ + 1) ** self.power_t)
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if early_stopping else "Training loss"
                    msg = (
                        f"{what} did not improve more than tol={self.tol:f} for "
                        f"{self.n_iter_no_change} consecutive epochs."
                    )
                    if self._trigger_stopping(msg):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                        "and the optimization hasn't converged yet.",
                        ConvergenceWarning,
                        stacklevel=3,
                    )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        if early_stopping:
            self._load_weights(*self._best)
        self._export_weights()

    def _step(self, step: TrainStep, xb: Any, tb: Any) -> Any:
        """One training step through the engine; returns (batch loss + L2 term) * batch as a
        0-d backend array, so the host reads the loss once per epoch, not once per batch."""
        opt, be = self._optimizer, self._model.backend
        nb = int(xb.shape[0])
        weights, biases = opt.param_groups
        weights["weight_decay"] = self.alpha / nb  # sklearn: grad += alpha * W / batch
        self._opt_steps += 1
        if self.solver == "adam":  # sklearn's eps sits outside the bias correction
            eps = self.epsilon / math.sqrt(1.0 - self.beta_2**self._opt_steps)
            weights["eps"] = biases["eps"] = eps
        sq = None
        if self.alpha > 0:  # the L2 term of the weights before this step's update
            sq = sum(be.sum_squares(p.data) for p in weights["params"])
        loss, _ = step(xb, tb)
        total = loss * nb
        if sq is not None:
            total = total + sq * (0.5 * self.alpha)
        return total

    def _set_lr(self, lr: float) -> None:
        """New learning rate. sklearn's SGD keeps its velocity in lr units (v = m v - lr g)
        where PyTorch's rule applies lr after the buffer, so rescale the buffers to match."""
        opt = self._optimizer
        old = opt.param_groups[0]["lr"]
        for g in opt.param_groups:
            g["lr"] = lr
            for p in g["params"]:
                buf = opt.state.get(id(p), {}).get("momentum_buffer")
                if buf is not None and lr > 0:
                    p.backend.scale_(buf, old / lr)

    def _trigger_stopping(self, msg: str) -> bool:
        """Stop, or (sgd with learning_rate='adaptive') divide the learning rate by 5."""
        lr = self._optimizer.param_groups[0]["lr"]
        if self.solver != "sgd" or self.learning_rate != "adaptive" or lr <= 1e-6:
            if self.verbose:
                print(msg + " Stopping.")
            return True
        self._set_lr(lr / 5.0)
        if self.verbose:
            print(msg + f" Setting learning rate to {lr / 5.0:f}")
        return False

    def _update_no_improvement_count(self, early_stopping: bool, X: Any, y: Any) -> None:
        if early_stopping:
            score = self._score(X, y)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._export_weights()
                self._best = (self.coefs_, self.intercepts_)
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])


class _Loss:
    """scikit-learn's loss for each output activation, as the step engine calls a loss."""

    def __init__(self, out_activation: str, backend: Any) -> None:
        self.out_activation, self.backend = out_activation, backend
        self._grad: Any = None

    def __call__(self, out: Any, target: Any) -> Any:
        be = self.backend
        k = out.shape[1]
        if self.out_activation == "softmax":
            loss, grad = be.softmax_cross_entropy(out, target)
        elif self.out_activation == "logistic":  # summed over outputs, mean over samples
            loss, grad = be.bce_with_logits(out, target)
            if k > 1:
                loss = loss * k
                be.scale_(grad, float(k))
        else:  # half squared error: reported as the mean over all outputs, gradient per output
            loss, grad = be.mse(out, target)
            loss = loss * 0.5
            be.scale_(grad, 0.5 * k)
        self._grad = grad
        return loss

    def backward(self) -> Any:
        return self._grad
