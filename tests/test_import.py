"""`import deepcore` is light: it pulls in no optional library, and it works without them.

Each check runs in a fresh interpreter, since this process has long since imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("numba", "cupy", "torch", "sklearn", "tqdm", "safetensors")

TRAIN_ONE_STEP = """
import numpy as np
import deepcore as dc

dc.seed(0)
x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
y = np.arange(16) % 3
model = dc.nn.Sequential(dc.nn.Linear(8, 5), dc.nn.ReLU(), dc.nn.Linear(5, 3)).to("numpy")
loss_fn = dc.nn.CrossEntropyLoss()
opt = dc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
logits = model(x)
loss = loss_fn(logits, y)
model.backward(loss_fn.backward())
opt.step()
opt.zero_grad()
assert np.isfinite(float(loss))
history = dc.fit(model, (x, y), optimizer="adam", epochs=1, batch_size=8, progress=False)
assert len(history) == 1
"""


def run(code: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_pulls_in_no_optional_library():
    code = f"""
    import json, sys
    import deepcore
    after_import = sorted(m for m in {HEAVY!r} if m in sys.modules)
    {textwrap.indent(TRAIN_ONE_STEP, "    ").strip()}
    after_training = sorted(m for m in {HEAVY!r} if m in sys.modules)
    print(json.dumps({{"import": after_import, "training": after_training}}))
    """
    result = run(code)
    assert result == {"import": [], "training": []}


def test_import_works_with_optional_libraries_blocked():
    code = f"""
    import importlib.abc, json, sys

    BLOCKED = {HEAVY!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked for this test")
            return None

    for m in list(sys.modules):
        if m.split(".")[0] in BLOCKED:
            del sys.modules[m]
    sys.meta_path.insert(0, Blocker())

    import deepcore as dc
    {textwrap.indent(TRAIN_ONE_STEP, "    ").strip()}
    avail = dc.available_backends()
    print(json.dumps({{
        "numpy": avail["numpy"].available,
        "others": {{k: [v.available, v.reason] for k, v in avail.items() if k != "numpy"}},
        "auto": dc.get_backend("auto").name,
        "loaded": sorted(m for m in BLOCKED if m in sys.modules),
    }}))
    """
    result = run(code)
    assert result["numpy"] is True
    assert result["auto"] == "numpy"
    assert result["loaded"] == []
    for name, (available, reason) in result["others"].items():
        assert available is False, name
        assert reason, name
