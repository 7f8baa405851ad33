"""Tests for deepcore.data: Dataset, splits, digits, synthetic sets, batching, load_dataset."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepcore.data import (
    DATASET_NAMES,
    BatchIterator,
    Dataset,
    Standardizer,
    iterate_minibatches,
    load_dataset,
    load_digits,
    make_blobs,
    make_moons,
    make_spirals,
    standardize,
    train_test_split,
)

DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


# ---------------------------------------------------------------- Dataset


def test_dataset_validates_shapes_and_labels():
    X = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="4 rows but y has 3"):
        Dataset(X, np.zeros(3, np.int64), n_classes=2)
    with pytest.raises(ValueError, match="2-D"):
        Dataset(np.zeros(4, np.float32), np.zeros(4, np.int64), n_classes=2)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        Dataset(X, np.array([0, 1, 2, 0]), n_classes=2)
    with pytest.raises(ValueError, match="int64"):
        Dataset(X, np.zeros(4, np.int32), n_classes=2)
    with pytest.raises(ValueError, match="regression targets must be float"):
        Dataset(X, np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="3 feature names for 2"):
        Dataset(X, np.zeros(4), feature_names=("a", "b", "c"))


def test_dataset_decode_maps_back_to_original_labels():
    ds = Dataset(
        np.zeros((3, 1), np.float32),
        np.array([1, 0, 1]),
        n_classes=2,
        classes=np.array(["cat", "dog"]),
    )
    assert ds.task == "classification"
    assert ds.decode(np.array([1, 1, 0])).tolist() == ["dog", "dog", "cat"]
    reg = Dataset(np.zeros((3, 1), np.float32), np.zeros(3))
    assert reg.task == "regression" and reg.n_classes is None
    with pytest.raises(ValueError, match="classification"):
        reg.decode(np.zeros(3, np.int64))


# ---------------------------------------------------------------- digits


def test_digits_shape_dtype_range_and_class_counts():
    ds = load_digits()
    assert ds.X.shape == (1797, 64) and len(ds) == 1797
    assert ds.X.dtype == np.float32
    assert ds.y.dtype == np.int64
    assert ds.n_classes == 10 and ds.n_features == 64
    assert ds.X.min() == 0.0 and ds.X.max() == 1.0
    # Values are pixel counts 0..16 divided by 16.
    np.testing.assert_array_equal(ds.X * 16, np.round(ds.X * 16))
    assert np.bincount(ds.y).tolist() == DIGIT_COUNTS
    assert ds.classes.tolist() == list(range(10))
    assert len(ds.feature_names) == 64


def test_digits_dtype_parameter_and_bundle_format():
    ds64 = load_digits(dtype=np.float64)
    assert ds64.X.dtype == np.float64
    np.testing.assert_array_equal(ds64.X.astype(np.float32), load_digits().X)
    with pytest.raises(ValueError, match="floating"):
        load_digits(dtype=np.int32)
    from importlib import resources

    ref = resources.files("deepcore.data").joinpath("digits.npz")
    with ref.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
        assert npz["images"].dtype == np.uint8 and npz["images"].shape == (1797, 8, 8)
        assert npz["labels"].dtype == np.uint8 and npz["images"].max() == 16


def test_digits_match_scikit_learn_copy():
    sk = pytest.importorskip("sklearn.datasets")
    ref = sk.load_digits()
    ds = load_digits(dtype=np.float64)
    np.testing.assert_array_equal(ds.X * 16, ref.data)
    np.testing.assert_array_equal(ds.y, ref.target)


def test_importing_data_pulls_in_no_other_array_library():
    code = (
        "import sys, deepcore.data as d; d.load_digits(); "
        "bad = [m for m in ('sklearn', 'numba', 'cupy', 'pandas', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- split / standardize


def test_stratified_split_keeps_class_proportions():
    ds = load_digits()
    train, test = train_test_split(ds, test_size=0.2, seed=0)
    assert len(train) + len(test) == 1797
    assert len(test) == 360  # ceil(0.2 * 1797)
    test_counts = np.bincount(test.y, minlength=10)
    train_counts = np.bincount(train.y, minlength=10)
    np.testing.assert_array_equal(test_counts + train_counts, DIGIT_COUNTS)
    # Each class within one sample of its exact share.
    assert np.all(np.abs(test_counts - 0.2 * np.array(DIGIT_COUNTS)) <= 1)
    # No row in both parts: digits has duplicate images, so compare via a split on indices.
    idx = Dataset(np.arange(1797.0)[:, None], ds.y, n_classes=10)
    tr, te = train_test_split(idx, test_size=0.2, seed=0)
    rows = np.concatenate([tr.X[:, 0], te.X[:, 0]])
    assert sorted(rows.tolist()) == list(range(1797))


def test_split_is_deterministic_for_a_seed_and_differs_across_seeds():
    ds = load_digits()
    a_tr, a_te = train_test_split(ds, seed=3)
    b_tr, b_te = train_test_split(ds, seed=3)
    np.testing.assert_array_equal(a_te.X, b_te.X)
    np.testing.assert_array_equal(a_tr.y, b_tr.y)
    c_tr, _ = train_test_split(ds, seed=4)
    assert not np.array_equal(a_tr.y, c_tr.y)


def test_unstratified_and_regression_split_and_bad_sizes():
    X = np.arange(10.0)[:, None]
    reg = Dataset(X, np.arange(10.0), name="r")
    tr, te = train_test_split(reg, test_size=3, seed=1)
    assert len(tr) == 7 and len(te) == 3
    np.testing.assert_array_equal(tr.X[:, 0], tr.y)  # rows stay paired
    with pytest.raises(ValueError, match="at least one sample"):
        train_test_split(reg, test_size=10)
    with pytest.raises(ValueError, match="test_size"):
        train_test_split(reg, test_size=1.5)


def test_standardize_fits_on_train_only_and_guards_constant_columns():
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 3.0, size=(200, 3)).astype(np.float32)
    X[:, 2] = 7.0  # constant column: std 0
    train = Dataset(X[:150], np.zeros(150, np.int64), n_classes=1)
    test = Dataset(X[150:] + 100, np.zeros(50, np.int64), n_classes=1)
    s_train, s_test = standardize(train, test)
    assert s_train.X.dtype == np.float32
    np.testing.assert_allclose(s_train.X[:, :2].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(s_train.X[:, :2].std(0), 1, atol=1e-5)
    assert np.all(np.isfinite(s_train.X)) and np.all(s_train.X[:, 2] == 0)
    scaler = Standardizer.fit(train.X)
    np.testing.assert_allclose(s_test.X, (test.X - scaler.mean) / scaler.scale, rtol=1e-5)
    assert s_test.X[:, 0].mean() > 20  # test statistics were not used
    np.testing.assert_allclose(scaler.inverse_transform(s_train.X), train.X, rtol=1e-5)


# ---------------------------------------------------------------- synthetic


@pytest.mark.parametrize("maker", [make_spirals, make_moons, make_blobs])
def test_synthetic_sets_are_deterministic(maker):
    a, b, c = maker(seed=7), maker(seed=7), maker(seed=8)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.X, c.X)
    assert a.X.dtype == np.float32 and a.y.dtype == np.int64 and len(a) == 300


def test_spirals_shape_and_balance():
    ds = make_spirals(n_samples=301, n_classes=4, noise=0.0, seed=0)
    assert ds.X.shape == (301, 2) and ds.n_classes == 4
    assert np.bincount(ds.y).tolist() == [76, 75, 75, 75]
    assert np.all(np.linalg.norm(ds.X, axis=1) <= 1.0 + 1e-6)


def test_moons_match_scikit_learn_without_noise():
    sk = pytest.importorskip("sklearn.datasets")
    for n in (10, 101):
        ref_X, ref_y = sk.make_moons(n_samples=n, shuffle=False, noise=None)
        ds = make_moons(n_samples=n, noise=0.0, shuffle=False, dtype=np.float64)
        np.testing.assert_allclose(ds.X, ref_X, atol=1e-12)
        np.testing.assert_array_equal(ds.y, ref_y)


def test_synthetic_argument_errors():
    with pytest.raises(ValueError, match="noise"):
        make_moons(noise=-1.0)
    with pytest.raises(ValueError, match="n_samples"):
        make_spirals(n_samples=2, n_classes=3)


# ---------------------------------------------------------------- batching


def test_batch_iterator_len_and_sizes():
    X, y = np.arange(10.0)[:, None], np.arange(10)
    it = BatchIterator(X, y, batch_size=4, shuffle=False)
    assert len(it) == 3
    assert [len(b) for b, _ in it] == [4, 4, 2]
    it = BatchIterator(X, y, batch_size=4, shuffle=False, drop_last=True)
    assert len(it) == 2 and [len(b) for b, _ in it] == [4, 4]
    xb, yb = next(iter(BatchIterator(X, None, 3, shuffle=False)))
    assert yb is None and xb.shape == (3, 1)


def test_batch_iterator_new_permutation_each_epoch_reproducible():
    X, y = np.arange(50.0)[:, None], np.arange(50)
    a = BatchIterator(X, y, 8, rng=np.random.default_rng(1))
    b = BatchIterator(X, y, 8, rng=1)
    epochs_a = [np.concatenate([yb for _, yb in a]) for _ in range(3)]
    epochs_b = [np.concatenate([yb for _, yb in b]) for _ in range(3)]
    for ea, eb in zip(epochs_a, epochs_b, strict=True):
        np.testing.assert_array_equal(ea, eb)
        assert sorted(ea.tolist()) == list(range(50))
    assert not np.array_equal(epochs_a[0], epochs_a[1])
    for xb, yb in BatchIterator(X, y, 8, rng=2):
        np.testing.assert_array_equal(xb[:, 0], yb)  # pairs stay together


def test_batching_errors():
    X, y = np.zeros((5, 2)), np.zeros(5)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BatchIterator(X, y, 0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        BatchIterator(X, y, 2.5)
    with pytest.raises(ValueError, match="empty dataset"):
        iterate_minibatches(np.zeros((0, 2)), np.zeros(0), 4)
    with pytest.raises(ValueError, match="5 samples but y has"):
        iterate_minibatches(X, np.zeros(4), 2)
    with pytest.raises(ValueError, match="no batches"):
        BatchIterator(X, y, 6, drop_last=True)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 200),
    batch_size=st.integers(1, 64),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_index_exactly_once_per_epoch(n, batch_size, shuffle, drop_last, seed):
    if drop_last and batch_size > n:
        with pytest.raises(ValueError):
            BatchIterator(np.arange(n), np.arange(n), batch_size, drop_last=True)
        return
    X = np.arange(n, dtype=np.float64)[:, None]
    y = np.arange(n)
    it = BatchIterator(X, y, batch_size, shuffle=shuffle, rng=seed, drop_last=drop_last)
    for _ in range(2):
        batches = list(it)
        assert len(batches) == len(it)
        sizes = [len(yb) for _, yb in batches]
        full, rest = divmod(n, batch_size)
        expected = [batch_size] * full + ([rest] if rest and not drop_last else [])
        assert sizes == expected
        seen = np.concatenate([yb for _, yb in batches])
        assert len(np.unique(seen)) == len(seen)  # never twice
        if not drop_last:
            assert sorted(seen.tolist()) == list(range(n))  # every sample once
        for xb, yb in batches:
            np.testing.assert_array_equal(xb[:, 0], yb)
        if not shuffle:
            np.testing.assert_array_equal(seen, np.arange(len(seen)))


# ---------------------------------------------------------------- load_dataset


def test_load_dataset_digits_default_split_and_seed():
    train, test = load_dataset("digits")
    assert len(train) == 1437 and len(test) == 360
    t2, _ = load_dataset("digits", seed=0)
    np.testing.assert_array_equal(train.y, t2.y)
    t3, _ = load_dataset("digits", seed=1)
    assert not np.array_equal(train.y, t3.y)
    _, te = load_dataset("digits", test_size=0.5, dtype=np.float64)
    assert len(te) == 899 and te.X.dtype == np.float64


@pytest.mark.parametrize("name", ["spirals", "moons", "blobs"])
def test_load_dataset_synthetic(name):
    train, test = load_dataset(name, n_samples=100, seed=3)
    assert len(train) == 80 and len(test) == 20
    again, _ = load_dataset(name, n_samples=100, seed=3)
    np.testing.assert_array_equal(train.X, again.X)


def test_load_dataset_errors():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*digits.*mnist.*csv"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="path"):
        load_dataset("csv")
    with pytest.raises(TypeError, match="bogus"):
        load_dataset("moons", bogus=1)
    assert set(DATASET_NAMES) >= {"digits", "mnist", "csv", "npz", "spirals", "moons"}
