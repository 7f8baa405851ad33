"""deepcore.sklearn: scikit-learn's API and maths on every backend."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn import neural_network as sk_nn  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import deepcore as dc  # noqa: E402
from deepcore.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, ...]:
    X, y = load_digits(return_X_y=True)
    return tuple(train_test_split(X / 16.0, y, random_state=0, stratify=y))


@pytest.fixture(scope="module")
def regression() -> tuple[np.ndarray, ...]:
    X, y = make_regression(n_samples=400, n_features=8, noise=5.0, random_state=0)
    X = StandardScaler().fit_transform(X)
    return tuple(train_test_split(X, y / y.std(), random_state=0))


def test_digits_accuracy_close_to_sklearn(digits, backend_name: str) -> None:
    Xtr, Xte, ytr, yte = digits
    ours = MLPClassifier(max_iter=60, random_state=0, backend=backend_name).fit(Xtr, ytr)
    ref = sk_nn.MLPClassifier(max_iter=60, random_state=0).fit(Xtr, ytr)
    acc = ours.score(Xte, yte)
    assert acc > 0.95
    assert abs(acc - ref.score(Xte, yte)) <= 0.03
    assert ours.n_iter_ == len(ours.loss_curve_) and ours.loss_ == ours.loss_curve_[-1]
    assert [c.shape for c in ours.coefs_] == [c.shape for c in ref.coefs_]
    assert all(isinstance(c, np.ndarray) for c in [*ours.coefs_, *ours.intercepts_])
    assert ours.out_activation_ == "softmax" and ours.n_outputs_ == 10


def test_regression(regression, backend_name: str) -> None:
    Xtr, Xte, ytr, yte = regression
    est = MLPRegressor(hidden_layer_sizes=(32,), max_iter=300, learning_rate_init=0.01)
    est.set_params(random_state=0, backend=backend_name).fit(Xtr, ytr)
    assert est.score(Xte, yte) > 0.9
    assert est.predict(Xte).shape == yte.shape and est.out_activation_ == "identity"


@pytest.mark.parametrize(
    "make, kwargs",
    [
        ("multiclass", {"solver": "adam"}),
        ("binary", {"solver": "sgd", "activation": "tanh", "batch_size": 32}),
        ("multilabel", {"activation": "logistic", "alpha": 0.1}),
        ("regression", {"solver": "sgd", "learning_rate": "invscaling", "momentum": 0.5}),
        ("regression2", {"early_stopping": True, "hidden_layer_sizes": (7, 5)}),
        ("multiclass", {"early_stopping": True, "solver": "sgd", "learning_rate": "adaptive"}),
    ],
)
def test_float64_numpy_reproduces_sklearn(make: str, kwargs: dict) -> None:
    """Same init, batch order, loss, L2 and update rules: sklearn's weights to rounding."""
    rng = np.random.RandomState(0)
    X = rng.standard_normal((120, 6))
    if make == "multiclass":
        y = rng.randint(0, 4, 120)
    elif make == "binary":
        y = (X[:, 0] + X[:, 1] > 0).astype(int)
    elif make == "multilabel":
        y = (X[:, :3] > 0).astype(int)
    else:
        y = X @ rng.standard_normal((6, 2 if make == "regression2" else 1))
        y = y.ravel() if y.shape[1] == 1 else y
    params = {"hidden_layer_sizes": (10,), "max_iter": 25, "random_state": 3, **kwargs}
    is_clf = not make.startswith("regression")
    ref = (sk_nn.MLPClassifier if is_clf else sk_nn.MLPRegressor)(**params).fit(X, y)
    ours = (MLPClassifier if is_clf else MLPRegressor)(**params, backend="numpy", dtype="float64")
    ours.fit(X, y)
    ref_weights = [*ref.coefs_, *ref.intercepts_]
    for a, b in zip([*ours.coefs_, *ours.intercepts_], ref_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-9)
    assert ours.n_iter_ == ref.n_iter_ and ours.t_ == ref.t_
    assert ours.out_activation_ == ref.out_activation_
    if kwargs.get("early_stopping"):
        np.testing.assert_allclose(ours.validation_scores_, ref.validation_scores_)
        assert ours.best_validation_score_ == ref.best_validation_score_
        assert ours.best_loss_ is None
    else:
        assert ours.best_loss_ == pytest.approx(ref.best_loss_, rel=1e-9)


def test_string_labels_and_probabilities() -> None:
    X, y = make_classification(n_samples=200, n_classes=3, n_informative=4, random_state=0)
    names = np.array(["cat", "dog", "emu"])[y]
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=50, random_state=0).fit(X, names)
    assert list(est.classes_) == ["cat", "dog", "emu"]
    assert set(est.predict(X)) <= set(names)
    proba = est.predict_proba(X)
    assert proba.shape == (200, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(est.classes_[proba.argmax(1)], est.predict(X))
    binary = MLPClassifier(max_iter=30, random_state=0).fit(X, np.where(y == 0, "no", "yes"))
    p2 = binary.predict_proba(X)
    assert p2.shape == (200, 2) and binary.out_activation_ == "logistic"
    assert binary.coefs_[-1].shape == (100, 1)  # one logistic output, as scikit-learn
    np.testing.assert_allclose(p2.sum(axis=1), 1.0, rtol=1e-6)


def test_multilabel_and_multioutput() -> None:
    X, _ = make_classification(n_samples=100, n_features=6, random_state=0)
    Y = (X[:, :3] > 0).astype(int)
    clf = MLPClassifier(max_iter=50, random_state=0).fit(X, Y)
    assert clf.predict(X).shape == (100, 3) and clf.predict_proba(X).shape == (100, 3)
    reg = MLPRegressor(max_iter=20, random_state=0).fit(X, X[:, :2])
    assert reg.predict(X).shape == (100, 2) and reg.n_outputs_ == 2


def test_partial_fit_learns_incrementally(digits) -> None:
    Xtr, Xte, ytr, yte = digits
    est = MLPClassifier(random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        est.partial_fit(Xtr[:10], ytr[:10])
    classes = np.unique(ytr)
    first = est.partial_fit(Xtr[:500], ytr[:500], classes=classes).score(Xte, yte)
    for _ in range(15):
        for s in range(0, len(Xtr), 500):
            est.partial_fit(Xtr[s : s + 500], ytr[s : s + 500])
    assert est.score(Xte, yte) > max(first, 0.9)
    assert est.t_ == 500 + 15 * len(Xtr) and len(est.loss_curve_) == 1 + 15 * 3
    with pytest.raises(ValueError, match="not in `self.classes_`"):
        est.partial_fit(Xtr[:5], np.array([11] * 5))


def test_early_stopping_sets_validation_attributes(digits) -> None:
    Xtr, _, ytr, _ = digits
    est = MLPClassifier(early_stopping=True, max_iter=200, random_state=0).fit(Xtr, ytr)
    assert len(est.validation_scores_) == est.n_iter_ < 200
    assert est.best_validation_score_ == max(est.validation_scores_)
    assert est.best_loss_ is None
    with pytest.raises(ValueError, match="early_stopping"):
        est.partial_fit(Xtr, ytr)


def test_convergence_warning_and_warm_start(digits) -> None:
    Xtr, _, ytr, _ = digits
    est = MLPClassifier(max_iter=3, random_state=0)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        est.fit(Xtr, ytr)
    est.set_params(warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(Xtr, ytr)
    assert len(est.loss_curve_) == 6 and est.loss_curve_[-1] < est.loss_curve_[0]


def test_pipeline_and_grid_search(digits) -> None:
    Xtr, Xte, ytr, yte = digits
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=30, random_state=0))
    assert pipe.fit(Xtr, ytr).score(Xte, yte) > 0.9
    grid = GridSearchCV(
        MLPClassifier(max_iter=30, learning_rate_init=0.01, random_state=0),
        {"hidden_layer_sizes": [(16,), (32,)], "alpha": [1e-4, 1e-2]},
        cv=2,
        n_jobs=1,
    )
    grid.fit(Xtr[:600], ytr[:600])
    assert grid.best_score_ > 0.8 and set(grid.best_params_) == {"hidden_layer_sizes", "alpha"}


def test_pickle_round_trip(digits, backend_name: str) -> None:
    Xtr, Xte, ytr, _ = digits
    est = MLPClassifier(max_iter=5, random_state=0, backend=backend_name).fit(Xtr, ytr)
    blob = pickle.dumps(est)
    assert b"deepcore.backends" not in blob and b"deepcore.nn" not in blob  # host arrays only
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.predict_proba(Xte), est.predict_proba(Xte))
    # partial_fit after unpickling continues the same optimizer as the original
    est.partial_fit(Xtr, ytr)
    again.partial_fit(Xtr, ytr)
    np.testing.assert_array_equal(again.coefs_[0], est.coefs_[0])


def test_unpickle_without_the_backend_falls_back_to_numpy(digits) -> None:
    if dc.available_backends()["cupy"]:
        pytest.skip("cupy is available here")
    Xtr, Xte, ytr, _ = digits
    est = MLPClassifier(max_iter=2, random_state=0, backend="numpy").fit(Xtr, ytr)
    state = pickle.loads(pickle.dumps(est)).__getstate__()
    state["_backend_name"] = "cupy:0"  # as if it had been trained on a GPU
    moved = MLPClassifier.__new__(MLPClassifier)
    moved.__setstate__(state)
    with pytest.warns(UserWarning, match="continuing on numpy"):
        proba = moved.predict_proba(Xte)
    np.testing.assert_array_equal(proba, est.predict_proba(Xte))


def test_clone_and_params() -> None:
    est = MLPRegressor(hidden_layer_sizes=(5, 3), backend="numpy", dtype="float64")
    est.fit(np.random.RandomState(0).rand(20, 2), np.arange(20.0))
    copy = clone(est)
    assert copy.get_params() == est.get_params() and not hasattr(copy, "coefs_")
    assert "backend" in est.get_params() and "dtype" in est.get_params()


def test_fit_leaves_deepcore_generator_alone() -> None:
    dc.seed(5)
    before = dc.get_rng().bit_generator.state
    MLPRegressor(max_iter=2).fit(np.random.RandomState(0).rand(20, 2), np.arange(20.0))
    assert dc.get_rng().bit_generator.state == before


def test_bad_parameters_raise_at_fit() -> None:
    X, y = np.random.RandomState(0).rand(10, 2), np.arange(10) % 2
    for params in ({"solver": "lbfgs"}, {"activation": "gelu"}, {"hidden_layer_sizes": (0,)}):
        with pytest.raises(ValueError):
            MLPClassifier(**params).fit(X, y)


def test_import_isolation() -> None:
    """import deepcore pulls in no scikit-learn; without it, deepcore.sklearn says what to do."""
    code = "import sys, deepcore; assert 'sklearn' not in sys.modules, 'sklearn imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    blocked = (
        "import sys; sys.modules['sklearn'] = None\n"
        "try:\n    import deepcore.sklearn\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True)
    assert "pip install 'deepcore[sklearn]'" in out.stdout
