"""The estimators' shared base: parameters, the deepcore network, prediction, pickling."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, is_classifier
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils.validation import validate_data

from .. import random as dc_random
from ..backends import Backend, get_backend
from ..errors import BackendUnavailableError
from ..nn import Linear, Sequential, mlp
from ..optim import SGD, Adam, Optimizer
from ._training import TrainingMixin

#: scikit-learn activation name -> deepcore activation name
_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": "identity"}
#: Prediction runs in zero-padded chunks of exactly this many rows: BLAS picks different
#: kernels for different row counts, so without a fixed shape a float32 prediction could
#: change by an ulp with what else is in the batch (scikit-learn checks it does not).
_PREDICT_ROWS = 256


class BaseMLP(TrainingMixin, BaseEstimator):
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
        precision: str = "float32",
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
        self.precision = precision

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
        from ..precision import normalize_precision

        if normalize_precision(getattr(self, "precision", "float32")) != "float32":
            if self.dtype != "float32":
                raise ValueError(f"precision={self.precision!r} needs dtype='float32'")
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
