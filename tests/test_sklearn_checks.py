"""scikit-learn's own estimator checks on deepcore.sklearn's estimators.

The full suite runs on the numpy backend (the CI reference); a smaller smoke set of checks runs
on every other backend deepcore.available_backends() reports as working here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest

pytest.importorskip("sklearn")

from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.utils import estimator_checks as ec  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import deepcore as dc  # noqa: E402
from deepcore.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

#: Checks expected to fail, by check name, with the reason. Empty: with scikit-learn 1.9.1 every
#: check passes (predictions are computed in fixed-shape chunks so float32 results do not depend
#: on the batch, and outputs come back in the input's float dtype, as sklearn's do).
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


def _expected_failed(estimator: object) -> dict[str, str]:
    return EXPECTED_FAILED_CHECKS


@parametrize_with_checks(
    [MLPClassifier(backend="numpy"), MLPRegressor(backend="numpy")],
    expected_failed_checks=_expected_failed,
)
def test_sklearn_estimator_checks(estimator: object, check: Callable) -> None:
    """Every scikit-learn API check, on the numpy backend, with the estimators' defaults."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


_OTHER_BACKENDS = [
    name for name, avail in dc.available_backends().items() if avail and name != "numpy"
]

#: A smoke set: fitting and scoring, label handling, pickling, determinism, batch invariance.
_SMOKE_CHECKS = {
    "classifier": [
        ec.check_classifiers_train,
        ec.check_classifiers_classes,
        ec.check_estimators_pickle,
        ec.check_fit_idempotent,
        ec.check_methods_subset_invariance,
        ec.check_estimators_partial_fit_n_features,
    ],
    "regressor": [
        ec.check_regressors_train,
        ec.check_regressor_multioutput,
        ec.check_estimators_pickle,
        ec.check_fit_idempotent,
        ec.check_methods_subset_invariance,
    ],
}


@pytest.mark.skipif(not _OTHER_BACKENDS, reason="no backend other than numpy is available here")
@pytest.mark.parametrize("backend_name", _OTHER_BACKENDS or ["none"])
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_sklearn_smoke_checks_other_backends(backend_name: str, kind: str) -> None:
    """A subset of scikit-learn's checks on every other available backend."""
    cls = MLPClassifier if kind == "classifier" else MLPRegressor
    est = cls(backend=backend_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for check in _SMOKE_CHECKS[kind]:
            check(cls.__name__, est)
