"""MNIST (and Fashion-MNIST) from the four standard IDX files in a local directory.

Nothing is downloaded: place ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (gzipped or not) in a folder.
The IDX format: two zero bytes, a dtype code, the number of dimensions, one big-endian uint32 per
dimension, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .dataset import Dataset

__all__ = ["load_mnist", "read_idx", "write_idx", "MNIST_FILES"]

# IDX dtype codes (third header byte) -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder(">"): code for code, dt in _IDX_DTYPES.items()}

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IMAGES_MAGIC = 0x00000803  # 2051: unsigned bytes, 3 dims
_LABELS_MAGIC = 0x00000801  # 2049: unsigned bytes, 1 dim


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    if path.suffix == ".gz":
        raise ValueError(f"{path}: named .gz but is not gzip data")
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or raw) into a native-endian array, validating the header."""
    path = Path(path)
    return _parse_idx(path, _read_bytes(path))


def _parse_idx(path: Path, data: bytes) -> np.ndarray:
    if len(data) < 4:
        raise ValueError(f"{path}: file too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        magic = int.from_bytes(data[:4], "big")
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic:08x}; an IDX file starts with two zero bytes "
            "(MNIST images have 0x00000803, labels 0x00000801)"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(
            f"{path}: unknown IDX dtype code 0x{code:02x} "
            f"(known: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})"
        )
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{path}: truncated header: {ndim} dimensions need {header_len} bytes, "
            f"file has {len(data)}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(data) - header_len
    if body < expected:
        raise ValueError(
            f"{path}: truncated: header declares shape {shape} ({expected} data bytes) "
            f"but only {body} bytes follow"
        )
    if body > expected:
        raise ValueError(
            f"{path}: {body - expected} unexpected trailing bytes after shape {shape} "
            f"({expected} data bytes)"
        )
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    return arr.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``); used by tests."""
    array = np.asarray(array)
    be = array.dtype.newbyteorder(">")
    if be not in _CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, _CODES[be], array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    payload = header + np.ascontiguousarray(array, dtype=be).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def _candidates(base: str) -> list[str]:
    dotted = base.replace("-idx", ".idx")  # some mirrors use train-images.idx3-ubyte
    return [base + ".gz", base, dotted + ".gz", dotted]


def _find_files(data_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, base in MNIST_FILES.items():
        for name in _candidates(base):
            if (data_dir / name).is_file():
                found[key] = data_dir / name
                break
        else:
            missing.append(base)
    if missing:
        expected = ", ".join(f"{b}[.gz]" for b in MNIST_FILES.values())
        where = data_dir.resolve() if data_dir.is_dir() else f"{data_dir} (not a directory)"
        raise FileNotFoundError(
            f"MNIST files missing in {where}: {', '.join(missing)} (gzipped or not). "
            f"Expected the four standard IDX files: {expected}. Nothing is downloaded; "
            "copy them there first."
        )
    return found


def _read_mnist(path: Path, magic: int) -> np.ndarray:
    data = _read_bytes(path)
    got = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if got != magic:
        what = "images (3-D unsigned bytes)" if magic == _IMAGES_MAGIC else "labels (1-D bytes)"
        shown = f"too short for a header ({len(data)} bytes)" if got is None else f"0x{got:08x}"
        raise ValueError(
            f"{path}: wrong magic number {shown}; MNIST {what} need 0x{magic:08x} ({magic})"
        )
    return _parse_idx(path, data)


def _load_pair(images_path: Path, labels_path: Path, dtype: np.dtype, name: str) -> Dataset:
    images = _read_mnist(images_path, _IMAGES_MAGIC)
    labels = _read_mnist(labels_path, _LABELS_MAGIC)
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must be 0..9, found {int(labels.max())}")
    if len(images) != len(labels):
        raise ValueError(
            f"image/label count mismatch: {images_path} holds {len(images)} images but "
            f"{labels_path} holds {len(labels)} labels"
        )
    if len(images) == 0:
        raise ValueError(f"{images_path}: contains no images")
    X = images.reshape(len(images), -1).astype(dtype) / dtype.type(255)
    return Dataset(X=X, y=labels.astype(np.int64), name=name, n_classes=10)


def load_mnist(
    data_dir: str | os.PathLike, dtype: np.dtype | type = np.float32
) -> tuple[Dataset, Dataset]:
    """Read MNIST's train and test sets from ``data_dir``: ``X`` (n, 784) in [0, 1], ``y`` 0..9.

    Raises ``FileNotFoundError`` naming the missing files and ``ValueError`` naming the file
    and the defect (bad magic, truncation, count mismatch, labels outside 0..9).
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    files = _find_files(Path(data_dir))
    train = _load_pair(files["train_images"], files["train_labels"], dtype, "mnist-train")
    test = _load_pair(files["test_images"], files["test_labels"], dtype, "mnist-test")
    if train.n_features != test.n_features:
        raise ValueError(
            f"train images have {train.n_features} pixels but test images {test.n_features}"
        )
    return train, test
