"""Tests for file loaders: MNIST IDX files, CSV and NPZ, on files the tests write themselves."""

from __future__ import annotations

import gzip
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from deepcore.data import MNIST_FILES, load_csv, load_dataset, load_mnist, load_npz, read_idx
from deepcore.data import write_idx as lib_write_idx

# ---------------------------------------------------------------- MNIST / IDX


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """IDX encoding written independently of the library, from the format description."""
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(dt).tobytes()


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def make_mnist(tmp: Path, gz: bool = True, n_train: int = 12, n_test: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train_images"][0, 0, 0] = 255
    for key, base in MNIST_FILES.items():
        write(tmp / (base + (".gz" if gz else "")), idx_bytes(arrays[key]))
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_round_trip(tmp_path, gz):
    arrays = make_mnist(tmp_path, gz=gz)
    train, test = load_mnist(tmp_path)
    assert train.X.shape == (12, 784) and test.X.shape == (5, 784)
    assert train.X.dtype == np.float32 and train.y.dtype == np.int64
    assert 0.0 <= train.X.min() and train.X.max() == 1.0
    np.testing.assert_allclose(train.X * 255, arrays["train_images"].reshape(12, -1), atol=1e-4)
    np.testing.assert_array_equal(train.y, arrays["train_labels"])
    np.testing.assert_array_equal(test.y, arrays["test_labels"])
    assert train.n_classes == 10
    tr64, _ = load_dataset("mnist", data_dir=str(tmp_path), dtype=np.float64)
    assert tr64.X.dtype == np.float64


def test_mnist_accepts_mixed_gzip_and_raw(tmp_path):
    make_mnist(tmp_path, gz=True)
    base = MNIST_FILES["test_labels"]
    gz = tmp_path / (base + ".gz")
    (tmp_path / base).write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    train, test = load_mnist(tmp_path)
    assert len(test) == 5


@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_read_idx_all_dtypes(tmp_path, code):
    rng = np.random.default_rng(code)
    a = (rng.normal(size=(3, 4, 2)) * 50).astype({0x08: np.uint8}.get(code, np.float64))
    dt = {0x08: "u1", 0x09: "i1", 0x0B: "i2", 0x0C: "i4", 0x0D: "f4", 0x0E: "f8"}[code]
    a = np.clip(a, -100, 100).astype(dt)
    out = read_idx(write(tmp_path / "a.idx.gz", idx_bytes(a, code)))
    np.testing.assert_array_equal(out, a)
    assert out.dtype == np.dtype(dt) and out.dtype.isnative
    lib_write_idx(tmp_path / "b.idx", a)  # the library's writer agrees with ours
    assert (tmp_path / "b.idx").read_bytes() == idx_bytes(a, code)


def test_mnist_missing_files_lists_expected(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / (MNIST_FILES["test_images"] + ".gz")).unlink()
    with pytest.raises(FileNotFoundError) as exc:
        load_mnist(tmp_path)
    msg = str(exc.value)
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path) in msg
    assert all(base in msg for base in MNIST_FILES.values())
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_mnist(tmp_path / "nope")


def test_mnist_wrong_magic(tmp_path):
    arrays = make_mnist(tmp_path)
    # Labels written where images belong: a valid IDX file with the wrong magic number.
    write(tmp_path / (MNIST_FILES["train_images"] + ".gz"), idx_bytes(arrays["train_labels"]))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz.*magic.*0x00000801"):
        load_mnist(tmp_path)
    write(tmp_path / (MNIST_FILES["train_images"] + ".gz"), b"\x12\x34\x08\x03" + bytes(40))
    with pytest.raises(ValueError, match="train-images.*wrong magic number 0x12340803"):
        load_mnist(tmp_path)


def test_mnist_truncated_file(tmp_path):
    make_mnist(tmp_path, gz=False)
    path = tmp_path / MNIST_FILES["train_images"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: truncated.*\(12, 28, 28\)"):
        load_mnist(tmp_path)
    path.write_bytes(path.read_bytes()[:10])  # cut inside the header
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: truncated header"):
        load_mnist(tmp_path)


def test_mnist_truncated_gzip_stream(tmp_path):
    make_mnist(tmp_path, gz=True)
    path = tmp_path / (MNIST_FILES["test_labels"] + ".gz")
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: corrupt or truncated gzip"):
        load_mnist(tmp_path)


def test_mnist_count_mismatch(tmp_path):
    make_mnist(tmp_path)
    write(tmp_path / (MNIST_FILES["test_labels"] + ".gz"), idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(ValueError, match="count mismatch.*5 images.*4 labels") as exc:
        load_mnist(tmp_path)
    assert "t10k-images" in str(exc.value) and "t10k-labels" in str(exc.value)


def test_mnist_labels_out_of_range(tmp_path):
    make_mnist(tmp_path)
    write(tmp_path / (MNIST_FILES["train_labels"] + ".gz"), idx_bytes(np.full(12, 11, np.uint8)))
    with pytest.raises(ValueError, match="train-labels.*0..9.*11"):
        load_mnist(tmp_path)


def test_read_idx_rejects_unknown_dtype_and_trailing_bytes(tmp_path):
    with pytest.raises(ValueError, match="unknown IDX dtype code 0x07"):
        read_idx(write(tmp_path / "a.idx", bytes([0, 0, 7, 1, 0, 0, 0, 1, 5])))
    with pytest.raises(ValueError, match="trailing bytes"):
        read_idx(write(tmp_path / "b.idx", idx_bytes(np.zeros(3, np.uint8)) + b"xx"))
    with pytest.raises(ValueError, match="not gzip"):
        read_idx(
            write(tmp_path / "c.idx", idx_bytes(np.zeros(3, np.uint8))).rename(
                tmp_path / "c.idx.gz"
            )
        )


# ---------------------------------------------------------------- CSV


def write_text(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_string_labels_become_classes(tmp_path):
    p = write_text(tmp_path, "a,b,species\n1,2,setosa\n3,4.5,virginica\n\n5,6,setosa\n")
    ds = load_csv(p, label="species")
    assert ds.X.shape == (3, 2) and ds.X.dtype == np.float32
    assert ds.feature_names == ("a", "b")
    assert ds.n_classes == 2 and ds.classes.tolist() == ["setosa", "virginica"]
    assert ds.y.tolist() == [0, 1, 0] and ds.y.dtype == np.int64
    assert ds.decode(ds.y).tolist() == ["setosa", "virginica", "setosa"]
    assert ds.name == "d"


def test_csv_non_contiguous_int_labels_and_no_header(tmp_path):
    p = write_text(tmp_path, "0.5;1;7\n0.25;2;3\n1;3;7\n")
    ds = load_csv(p, label=-1, delimiter=";")
    assert ds.feature_names is None
    assert ds.classes.tolist() == [3, 7] and ds.y.tolist() == [1, 0, 1]
    np.testing.assert_allclose(ds.X, [[0.5, 1], [0.25, 2], [1, 3]])
    ds0 = load_csv(p, label=0, delimiter=";", dtype=np.float64)
    assert ds0.task == "regression" and ds0.y.dtype == np.float64
    np.testing.assert_array_equal(ds0.y, [0.5, 0.25, 1.0])


def test_csv_task_auto_classification_regression(tmp_path):
    p = write_text(tmp_path, "x,label\n1,0.5\n2,1.5\n3,2.0\n")
    assert load_csv(p).task == "regression"
    q = write_text(tmp_path, "x,label\n1,1.0\n2,2\n3,1\n", "q.csv")
    assert load_csv(q).task == "classification"
    r = load_csv(q, task="regression")
    assert r.n_classes is None and r.y.dtype == np.float32
    s = write_text(tmp_path, "x,label\n1,a\n2,b\n", "s.csv")
    with pytest.raises(ValueError, match="regression' needs numeric labels.*'a' at row 2"):
        load_csv(s, task="regression")
    with pytest.raises(ValueError, match="task must be one of"):
        load_csv(s, task="clustering")


def test_csv_missing_label_lists_columns(tmp_path):
    p = write_text(tmp_path, "a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="label column 'target' not found.*'a', 'b', 'c'"):
        load_csv(p, label="target")
    with pytest.raises(ValueError, match="index 5 out of range"):
        load_csv(p, label=5)
    q = write_text(tmp_path, "1,2,3\n4,5,6\n", "q.csv")
    with pytest.raises(ValueError, match="no header row.*0..2"):
        load_csv(q)


def test_csv_non_numeric_feature_names_row_and_column(tmp_path):
    p = write_text(tmp_path, "a,b,label\n1,2,0\n3,oops,1\n")
    with pytest.raises(
        ValueError, match=r"non-numeric value 'oops' in feature column 'b' at row 3"
    ):
        load_csv(p)


def test_csv_nan_inf_in_features(tmp_path):
    p = write_text(tmp_path, "a,b,label\n1,2,0\n3,4,1\n5,nan,1\n")
    with pytest.raises(ValueError, match="column 'b' has a non-finite value nan at row 4"):
        load_csv(p)
    q = write_text(tmp_path, "a,b,label\n1,inf,0\n", "q.csv")
    with pytest.raises(ValueError, match="column 'b'.*inf"):
        load_csv(q)
    r = write_text(tmp_path, "a,label\n1,0\n2,nan\n", "r.csv")
    with pytest.raises(ValueError, match="label at row 3 is nan"):
        load_csv(r)


def test_csv_empty_and_ragged(tmp_path):
    with pytest.raises(ValueError, match="empty file"):
        load_csv(write_text(tmp_path, ""))
    with pytest.raises(ValueError, match="empty file"):
        load_csv(write_text(tmp_path, "\n\n  \n"))
    with pytest.raises(ValueError, match="no data rows"):
        load_csv(write_text(tmp_path, "a,label\n"))
    with pytest.raises(ValueError, match="row 3 has 2 fields, expected 3"):
        load_csv(write_text(tmp_path, "a,b,label\n1,2,0\n1,2\n"))
    with pytest.raises(FileNotFoundError):
        load_csv(tmp_path / "missing.csv")


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)
names = st.text(string.ascii_letters, min_size=1, max_size=6)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    X=hnp.arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 4)), elements=finite),
    data=st.data(),
    label_pos=st.integers(0, 4),
    string_labels=st.booleans(),
)
def test_csv_round_trip(tmp_path, X, data, label_pos, string_labels):
    n, d = X.shape
    pool = st.sampled_from(["cat", "dog", "emu"]) if string_labels else st.integers(-5, 50)
    labels = data.draw(st.lists(pool, min_size=n, max_size=n))
    label_pos = min(label_pos, d)
    cols = [f"f{j}" for j in range(d)]
    cols.insert(label_pos, "label")
    lines = [",".join(cols)]
    for i in range(n):
        cells = [repr(float(v)) for v in X[i]]
        cells.insert(label_pos, str(labels[i]))
        lines.append(",".join(cells))
    p = tmp_path / "rt.csv"
    p.write_text("\n".join(lines) + "\n")
    ds = load_csv(p, label="label", dtype=np.float64, task="classification")
    np.testing.assert_array_equal(ds.X, X)
    assert ds.feature_names == tuple(f"f{j}" for j in range(d))
    assert ds.decode(ds.y).tolist() == labels
    assert ds.n_classes == len(set(labels))


# ---------------------------------------------------------------- NPZ


def test_npz_x_y_keys(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, X=np.arange(12).reshape(6, 2), y=np.array(["a", "b", "a", "c", "c", "b"]))
    ds = load_npz(p)
    assert ds.X.dtype == np.float32 and ds.X.shape == (6, 2)
    assert ds.classes.tolist() == ["a", "b", "c"] and ds.y.tolist() == [0, 1, 0, 2, 2, 1]


def test_npz_single_array_with_label_index_or_name(tmp_path):
    data = np.column_stack([np.arange(5.0), np.arange(5.0) * 2, [0.1, 0.2, 0.3, 0.4, 0.5]])
    p = tmp_path / "d.npz"
    np.savez(p, data=data)
    ds = load_npz(p, label=2)
    assert ds.task == "regression"
    np.testing.assert_allclose(ds.y, data[:, 2])
    np.testing.assert_array_equal(ds.X, data[:, :2])
    q = tmp_path / "e.npz"
    np.savez(q, data=data, columns=np.array(["u", "v", "target"]))
    ds = load_npz(q, label="target")
    assert ds.feature_names == ("u", "v")
    with pytest.raises(ValueError, match="'nope' not found.*'u', 'v', 'target'"):
        load_npz(q, label="nope")
    with pytest.raises(ValueError, match="pass label="):
        load_npz(p)


def test_npz_errors(tmp_path):
    p = tmp_path / "nan.npz"
    X = np.ones((3, 2))
    X[1, 1] = np.nan
    np.savez(p, X=X, y=np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="column '1' has a non-finite value nan at row 1"):
        load_npz(p)
    q = tmp_path / "obj.npz"
    np.savez(q, X=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(ValueError, match="without pickle"):
        load_npz(q)
    r = tmp_path / "keys.npz"
    np.savez(r, a=np.ones((2, 2)), b=np.ones(2), c=np.ones(2))
    with pytest.raises(ValueError, match="expected keys 'X' and 'y'.*'a', 'b', 'c'"):
        load_npz(r)
    s = tmp_path / "mismatch.npz"
    np.savez(s, X=np.ones((3, 2)), y=np.ones(2))
    with pytest.raises(ValueError, match="3 rows but y has 2"):
        load_npz(s)


def test_load_dataset_csv_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["a,b,label"] + [f"{rng.normal()},{rng.normal()},{'xy'[i % 2]}" for i in range(50)]
    p = write_text(tmp_path, "\n".join(lines))
    train, test = load_dataset("csv", path=str(p), label="label", seed=1)
    assert len(train) == 40 and len(test) == 10
    assert np.bincount(test.y).tolist() == [5, 5]  # stratified
    t = write_text(tmp_path, "a,b,label\n0,0,y\n1,1,y\n", "t.csv")
    train, test = load_dataset("csv", path=str(p), test_path=str(t))
    assert len(train) == 50 and test.y.tolist() == [1, 1]  # indices follow train's classes
    assert test.classes.tolist() == ["x", "y"]
    n = tmp_path / "d.npz"
    np.savez(n, X=rng.normal(size=(20, 3)), y=np.arange(20) % 4)
    train, test = load_dataset("npz", path=str(n), test_size=0.25)
    assert len(test) == 5 and train.n_classes == 4
