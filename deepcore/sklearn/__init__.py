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

try:
    import sklearn  # noqa: F401  (absolute import: the top-level scikit-learn package)
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError(
        "deepcore.sklearn needs scikit-learn: pip install 'deepcore[sklearn]'"
    ) from exc

from ._estimators import MLPClassifier, MLPRegressor

# Pickles and reprs name the public path, not the private module.
MLPClassifier.__module__ = MLPRegressor.__module__ = __name__

__all__ = ["MLPClassifier", "MLPRegressor"]
