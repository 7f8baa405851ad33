"""A new user's first hour (issue 18): saving works out of the box, their own CSV/NPZ data is
read as they expect or refused naming file, line and column, and backward after an eval-mode
forward gives the right gradients."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import deepcore as dc
from deepcore.cli import main

_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ item 11: safetensors
def test_safetensors_is_a_core_dependency() -> None:
    """`pip install -e ".[numba]"` (the README's install) must bring what --save needs."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is Python 3.11+")
    import tomllib

    project = tomllib.loads((_ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.split(">")[0].strip() == "safetensors" for d in project["dependencies"])


# ------------------------------------------------------------------ item 13: labels in files
def test_npz_with_x_and_y_trains_with_the_default_label(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((80, 3))
    path = tmp_path / "data.npz"
    np.savez(path, X=X, y=(X[:, 0] > 0).astype(np.int64))
    code = main(["train", "--backend", "numpy", "--quiet", "--dataset", "npz", "--path",
                 str(path), "--epochs", "2", "--hidden", "8"])  # fmt: skip
    assert code == 0, capsys.readouterr().err


def test_csv_with_an_empty_label_cell_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1\n5,6,\n7,8,1\n")
    with pytest.raises(ValueError, match=r"d\.csv: line 4: empty label in column 'label'"):
        dc.data.load_csv(path)


# ------------------------------------------------------------------ item 14: CSV overflow
def test_csv_float32_overflow_names_file_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "big.csv"
    path.write_text("label,a,b,c\n0,1,2,3\n1,4,5,6\n0,7,1e39,9\n1,1,2,3\n")
    pattern = r"big\.csv: line 4, column 3 \('b'\): value 1e\+39 overflows float32"
    with pytest.raises(ValueError, match=pattern):
        dc.data.load_csv(path)
    assert dc.data.load_csv(path, dtype="float64").X[2, 1] == 1e39  # fits float64
    code = main(["train", "--backend", "numpy", "--dataset", "csv", "--path", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "line 4, column 3" in err and str(path) in err


def test_npz_overflow_names_row_and_column(tmp_path: Path) -> None:
    X = np.ones((4, 3))
    X[2, 1] = -1e300
    np.savez(tmp_path / "d.npz", X=X, y=np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"d\.npz: row 2, column 2 \('1'\): value -1e\+300"):
        dc.data.load_npz(tmp_path / "d.npz")


# ------------------------------------------------------------------ item 15: eval-mode backward
def test_backward_after_eval_forward_matches_pytorch(torch) -> None:  # noqa: ANN001
    """PyTorch records the graph in eval mode too (dropout off): backward after an eval forward
    differentiates that forward, not an earlier training one."""
    dc.seed(0)
    model = dc.nn.mlp([4, 6, 5, 3], activation="tanh", dropout=0.5)
    rng = np.random.default_rng(0)
    x_train = rng.standard_normal((7, 4)).astype(np.float32)
    x_eval = rng.standard_normal((5, 4)).astype(np.float32)
    g = rng.standard_normal((5, 3)).astype(np.float32)
    model.train()
    model(x_train)  # a training forward whose activations must not be used below
    model.eval()
    model(x_eval)
    model.zero_grad()
    dx = model.backward(g)

    layers = []
    for m in model:
        if isinstance(m, dc.nn.Linear):
            lin = torch.nn.Linear(m.in_features, m.out_features)
            lin.weight.data = torch.from_numpy(m.weight.numpy())
            lin.bias.data = torch.from_numpy(m.bias.numpy())
            layers.append(lin)
        elif isinstance(m, dc.nn.Dropout):
            layers.append(torch.nn.Dropout(m.p))
        else:
            layers.append(torch.nn.Tanh())
    net = torch.nn.Sequential(*layers).eval()
    xt = torch.from_numpy(x_eval).requires_grad_(True)
    net(xt).backward(torch.from_numpy(g))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(
        [m for m in model if isinstance(m, dc.nn.Linear)],
        [m for m in net if isinstance(m, torch.nn.Linear)],
        strict=True,
    ):
        np.testing.assert_allclose(
            ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_backward_after_only_an_eval_forward_works() -> None:
    model = dc.nn.mlp([3, 4, 2]).eval()
    out = model(np.ones((2, 3), np.float32))
    model.backward(np.ones_like(out))
    assert model[0].weight.grad is not None
