"""scikit-learn estimators on deepcore: MLPClassifier and MLPRegressor on any backend.

Drop-in for ``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor`` with the stochastic
solvers ('adam', 'sgd'; 'lbfgs' is not offered). Same parameters, same Glorot-uniform start drawn
from ``random_state``, same batch order, loss, L2 scaling and stopping rules, so with
``dtype='float64'`` on the numpy backend the weights match scikit-learn's to rounding. Training
runs on a deepcore backend: ``backend=None`` (deepcore's current default), 'numpy', 'numba',
'cupy' or 'auto'.

Loss conventions, as scikit-learn's: ``loss_`` is the mean per-sample log-loss (summed over the
outputs for multilabel), or half the mean squared error over all outputs for regression (whose
gradient is (pred - y) / batch per output), plus ``0.5 * alpha * ||W||^2 / batch`` per batch on
the weights only (not the intercepts).

Pickles hold host NumPy weights and optimizer state, never backend arrays: unpickling rebuilds
the network on the stored backend name, or on numpy with a warning where it is unavailable.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

try:
    import sklearn  # noqa: F401  (absolute import: the top-level scikit-learn package)
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        "deepcore.sklearn needs scikit-learn: pip install 'deepcore[sklearn]'"
    ) from exc

import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, gen_batches
from sklearn.utils import shuffle as sk_shuffle
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from . import random as dc_random
from .backends import Backend, get_backend
from .errors import BackendUnavailableError
from .nn import Linear, Sequential, mlp
from .optim import SGD, Adam, Optimizer

__all__ = ["MLPClassifier", "MLPRegressor"]

#: scikit-learn activation name -> deepcore activation name
_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": "identity"}
#: Prediction runs in zero-padded chunks of exactly this many rows: BLAS picks different
#: kernels for different row counts, so without a fixed shape a float32 prediction could
#: change by an ulp with what else is in the batch (scikit-learn checks it does not).
_PREDICT_ROWS = 256
_DENSIFY_BYTES = 256 << 20


class _BaseMLP(BaseEstimator):
    """Shared fit loop, prediction and pickling of the two estimators."""

    def __init__(
        self,
        hidden_layer_sizes: Any = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 1e-4,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 1e-3,
        power_t: float = 0.5,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: Any = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        backend: str | None = None,
        dtype: str = "float32",
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.backend = backend
        self.dtype = dtype

    # ------------------------------------------------------------------ parameters
    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if any(int(s) != s or s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _check_params(self) -> None:
        """Reject bad hyperparameters with scikit-learn-like messages (at fit, not __init__)."""
        choices = {
            "activation": tuple(_ACTIVATIONS),
            "solver": ("adam", "sgd"),
            "learning_rate": ("constant", "invscaling", "adaptive"),
            "dtype": ("float32", "float64"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                extra = " (deepcore has no 'lbfgs')" if name == "solver" else ""
                raise ValueError(
                    f"The '{name}' parameter of {type(self).__name__} must be one of "
                    f"{allowed}{extra}. Got {getattr(self, name)!r} instead."
                )
        bounds = [
            ("max_iter", self.max_iter, 1, None),
            ("n_iter_no_change", self.n_iter_no_change, 1, None),
            ("alpha", self.alpha, 0.0, None),
            ("tol", self.tol, 0.0, None),
            ("momentum", self.momentum, 0.0, 1.0),
            ("beta_1", self.beta_1, 0.0, 1.0),
            ("beta_2", self.beta_2, 0.0, 1.0),
            ("power_t", self.power_t, 0.0, None),
        ]
        for name, value, lo, hi in bounds:
            if not (value >= lo and (hi is None or value <= hi)):
                raise ValueError(f"The '{name}' parameter must be >= {lo}, got {value!r}.")
        for name in ("learning_rate_init", "epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"The '{name}' parameter must be > 0, got {getattr(self, name)}.")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction}"
            )
        bs = self.batch_size
        if bs != "auto" and (isinstance(bs, (str, bool)) or not int(bs) >= 1):
            raise ValueError(f"batch_size must be 'auto' or an int >= 1, got {bs!r}.")

    # ------------------------------------------------------------------ network
    def _resolve_backend(self) -> Backend:
        """The backend to train on: the one this estimator holds, else the stored name, else
        the `backend` parameter; an unpickled model whose backend is missing falls to numpy."""
        name = getattr(self, "_backend_name", None)
        if name is None:
            return get_backend(self.backend)
        try:
            return get_backend(name)
        except BackendUnavailableError as exc:
            warnings.warn(
                f"{type(self).__name__} was trained on backend {name!r}, which is not "
                f"available here ({exc}); continuing on numpy",
                UserWarning,
                stacklevel=3,
            )
            self._backend_name = "numpy"
            return get_backend("numpy")

    def _build(self, layer_units: list[int], backend: Backend) -> None:
        """A deepcore MLP of `layer_units` on `backend` (weights loaded afterwards)."""
        state = dc_random.get_state()
        try:  # the weights are ours: leave deepcore's global generator where it was
            self._model: Sequential | None = mlp(
                layer_units, _ACTIVATIONS[self.activation], backend=backend, dtype=self.dtype
            )
        finally:
            dc_random.set_state(state)
        self._backend_name = backend.name
        self._optimizer: Optimizer | None = None

    def _linears(self) -> list[Linear]:
        return [m for m in self._model if isinstance(m, Linear)]

    def _load_weights(self, coefs: list[np.ndarray], intercepts: list[np.ndarray]) -> None:
        """Copy host (in, out) coefs / intercepts into the (out, in) deepcore layers."""
        be = self._model.backend
        for layer, c, b in zip(self._linears(), coefs, intercepts, strict=True):
            layer.weight.data = be.asarray(np.ascontiguousarray(c.T, dtype=self.dtype))
            layer.bias.data = be.asarray(np.ascontiguousarray(b, dtype=self.dtype))

    def _export_weights(self) -> None:
        """Fitted attributes coefs_ / intercepts_ as host arrays in scikit-learn's layout."""
        layers = self._linears()
        self.coefs_ = [np.ascontiguousarray(m.weight.numpy().T) for m in layers]
        self.intercepts_ = [m.bias.numpy() for m in layers]

    def _ensure_model(self) -> Sequential:
        """The network, rebuilt from coefs_ after unpickling or copying."""
        if getattr(self, "_model", None) is None:
            units = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
            self._build(units, self._resolve_backend())
            self._load_weights(self.coefs_, self.intercepts_)
        return self._model

    def _initialize(self, Y: np.ndarray, layer_units: list[int], rs: Any) -> None:
        """First fit: attributes as scikit-learn sets them and Glorot-uniform weights from rs."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = Y.shape[1]
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation()
        self._backend_name = None
        self._build(layer_units, self._resolve_backend())
        factor = 2.0 if self.activation == "logistic" else 6.0
        coefs, intercepts = [], []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:], strict=True):
            bound = np.sqrt(factor / (fan_in + fan_out))
            coefs.append(rs.uniform(-bound, bound, (fan_in, fan_out)))
            intercepts.append(rs.uniform(-bound, bound, fan_out))
        self._load_weights(coefs, intercepts)
        self._export_weights()
        self._best = (self.coefs_, self.intercepts_)
        self.loss_curve_: list[float] = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_: list[float] | None = []
            self.best_validation_score_: float | None = -np.inf
            self.best_loss_: float | None = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _make_optimizer(self, resume: bool) -> None:
        """Weights and intercepts in two groups: only the weights carry the L2 term."""
        layers = self._linears()
        groups = [
            {"params": [m.weight for m in layers], "weight_decay": 0.0},
            {"params": [m.bias for m in layers], "weight_decay": 0.0},
        ]
        lr = float(self.learning_rate_init)
        if self.solver == "adam":
            self._optimizer = Adam(groups, lr=lr, betas=(self.beta_1, self.beta_2))
        else:
            nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
            self._optimizer = SGD(groups, lr=lr, momentum=self.momentum, nesterov=nesterov)
        self._opt_steps = 0
        saved = self.__dict__.pop("_optimizer_state", None)
        if saved is not None and resume:  # partial_fit after unpickling: same optimizer
            self._optimizer.load_state_dict(saved["state"])
            self._opt_steps = saved["steps"]

    # ------------------------------------------------------------------ training
    def _fit(self, X: Any, y: Any, incremental: bool = False) -> _BaseMLP:
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
                    total = total + self._step(xb, Td[idx])
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

    def _step(self, xb: Any, tb: Any) -> Any:
        """One forward/backward/update; returns (batch loss + L2 term) * batch as a 0-d
        backend array, so the host reads the loss once per epoch, not once per batch."""
        model, opt, be = self._model, self._optimizer, self._model.backend
        nb = int(xb.shape[0])
        weights, biases = opt.param_groups
        weights["weight_decay"] = self.alpha / nb  # sklearn: grad += alpha * W / batch
        self._opt_steps += 1
        if self.solver == "adam":  # sklearn's eps sits outside the bias correction
            eps = self.epsilon / math.sqrt(1.0 - self.beta_2**self._opt_steps)
            weights["eps"] = biases["eps"] = eps
        out = model(xb)
        k = out.shape[1]
        if self.out_activation_ == "softmax":
            loss, grad = be.softmax_cross_entropy(out, tb)
        elif self.out_activation_ == "logistic":  # summed over outputs, mean over samples
            loss, grad = be.bce_with_logits(out, tb)
            if k > 1:
                loss = loss * k
                be.scale_(grad, float(k))
        else:  # half squared error: reported as the mean over all outputs, gradient per output
            loss, grad = be.mse(out, tb)
            loss = loss * 0.5
            be.scale_(grad, 0.5 * k)
        model.backward(grad, need_input_grad=False)
        total = loss * nb
        if self.alpha > 0:
            sq = sum(be.sum_squares(p.data) for p in weights["params"])
            total = total + sq * (0.5 * self.alpha)
        opt.step()
        opt.zero_grad()
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

    # ------------------------------------------------------------------ prediction
    def _forward(self, X: Any, check_input: bool = True) -> np.ndarray:
        """Host array of the output activations (probabilities or values), in X's dtype."""
        if check_input:
            X = validate_data(
                self, X, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32), reset=False
            )
        model = self._ensure_model()
        be = model.backend
        model.eval()
        parts = []
        try:
            for s in range(0, X.shape[0], _PREDICT_ROWS):
                rows = X[s : s + _PREDICT_ROWS]
                xb = np.zeros((_PREDICT_ROWS, X.shape[1]), dtype=self.dtype)
                xb[: rows.shape[0]] = rows.toarray() if sp.issparse(rows) else rows
                z = model(be.asarray(xb))[: rows.shape[0]]
                if self.out_activation_ == "softmax":
                    z = be.softmax(z)
                elif self.out_activation_ == "logistic":
                    z = be.activation("sigmoid", z)
                parts.append(be.to_host(z))
        finally:
            model.train()
        # Outputs take the input's float dtype (as scikit-learn's), whatever `dtype` trained.
        out_dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        return np.concatenate(parts).astype(out_dtype, copy=False)

    def _score(self, X: Any, y: Any) -> float:
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        fn = accuracy_score if is_classifier(self) else r2_score
        return float(fn(y, y_pred))

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        """Host arrays only: the network and optimizer become coefs_ and a host state dict."""
        state = dict(super().__getstate__())
        state.pop("_model", None)
        opt = state.pop("_optimizer", None)
        if opt is not None:
            state["_optimizer_state"] = {"state": opt.state_dict(), "steps": self._opt_steps}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._model = None  # rebuilt on first use, on the stored backend if it exists here
        self._optimizer = None

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier (softmax for multiclass, logistic for binary and
    multilabel), scikit-learn's API and maths, trained on a deepcore backend."""

    def fit(self, X: Any, y: Any) -> MLPClassifier:
        """Fit the network to X and labels y (1-D labels, or a multilabel indicator)."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> MLPClassifier:
        """One epoch over (X, y); `classes` (all labels) is required on the first call."""
        if getattr(self, "classes_", None) is None:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self.classes_ = unique_labels(classes)
            self._label_binarizer = LabelBinarizer()
            multilabel = type_of_target(y).startswith("multilabel")
            self._label_binarizer.fit(y if multilabel else classes)
        elif classes is not None and not np.array_equal(self.classes_, unique_labels(classes)):
            raise ValueError(
                f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                f"was: {self.classes_!r}"
            )
        return self._fit(X, y, incremental=True)

    def _validate_input(self, X: Any, y: Any, incremental: bool, reset: bool) -> tuple[Any, Any]:
        X, y = validate_data(
            self,
            X,
            y,
            accept_sparse=["csr", "csc"],
            multi_output=True,
            dtype=(np.float64, np.float32),
            reset=reset,
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in the "
                        f"previous call to fit. Previously got {self.classes_}, `y` has {classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    "`y` has classes not in `self.classes_`. "
                    f"`self.classes_` has {self.classes_}. 'y' has {classes}."
                )
        return X, self._label_binarizer.transform(y).astype(bool)

    def _out_activation(self) -> str:
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _train_targets(self, Y: np.ndarray) -> np.ndarray:
        """Class indices for softmax; 0/1 floats per output for logistic outputs."""
        if self.out_activation_ == "softmax":
            return Y.argmax(axis=1).astype(np.int64)
        return Y.astype(self.dtype)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (an indicator matrix for multilabel)."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X: Any, check_input: bool = True) -> np.ndarray:
        p = self._forward(X, check_input)
        if self.out_activation_ == "softmax":
            return self.classes_[p.argmax(axis=1)]
        return self._label_binarizer.inverse_transform(p.ravel() if self.n_outputs_ == 1 else p)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of classes_ ((n, 2) for binary)."""
        check_is_fitted(self)
        p = self._forward(X)
        if self.n_outputs_ == 1:
            p = p.ravel()
            return np.vstack([1 - p, p]).T
        return p

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """log(predict_proba(X))."""
        p = self.predict_proba(X)
        return np.log(p, out=p)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor (identity output, half squared error), scikit-learn's
    API and maths, trained on a deepcore backend. Multi-output targets are supported."""

    def fit(self, X: Any, y: Any) -> MLPRegressor:
        """Fit the network to X and targets y of shape (n,) or (n, n_outputs)."""
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X: Any, y: Any) -> MLPRegressor:
        """One epoch over (X, y), continuing from the current weights."""
        return self._fit(X, y, incremental=True)

    def _validate_input(self, X: Any, y: Any, incremental: bool, reset: bool) -> tuple[Any, Any]:
        X, y = validate_data(
            self,
            X,
            y,
            accept_sparse=["csr", "csc"],
            multi_output=True,
            y_numeric=True,
            dtype=(np.float64, np.float32),
            reset=reset,
        )
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y.reshape(-1, 1) if y.ndim == 1 else y

    def _out_activation(self) -> str:
        return "identity"

    def _train_targets(self, Y: np.ndarray) -> np.ndarray:
        return Y.astype(self.dtype)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted values, shape (n,) for one output, else (n, n_outputs)."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X: Any, check_input: bool = True) -> np.ndarray:
        out = self._forward(X, check_input)
        return out.ravel() if out.shape[1] == 1 else out

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
