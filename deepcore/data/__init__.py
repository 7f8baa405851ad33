"""Datasets as host NumPy arrays: bundled digits, MNIST IDX files, CSV/NPZ, synthetic sets.

Everything here stays on the host (NumPy only); a model moves batches to its backend. Seeds
fix splits and batch order, so training is reproducible and identical across backends.
"""

from .batching import BatchIterator, iterate_minibatches
from .dataset import Dataset, Standardizer, standardize, train_test_split
from .digits import DIGITS_CREDIT, load_digits
from .mnist import MNIST_FILES, load_mnist, read_idx, write_idx
from .registry import DATASET_NAMES, load_dataset
from .synthetic import make_blobs, make_moons, make_spirals
from .tabular import encode_labels, load_csv, load_npz

__all__ = [
    "DATASET_NAMES",
    "DIGITS_CREDIT",
    "MNIST_FILES",
    "BatchIterator",
    "Dataset",
    "Standardizer",
    "encode_labels",
    "iterate_minibatches",
    "load_csv",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_npz",
    "make_blobs",
    "make_moons",
    "make_spirals",
    "read_idx",
    "standardize",
    "train_test_split",
    "write_idx",
]
