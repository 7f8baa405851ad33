"""Backend selection: explicit > innermost use_backend > set_default_backend > DEEPCORE_BACKEND >
"numpy"; "auto"; bad names; unavailable backends; availability reasons."""

from __future__ import annotations

import threading

import pytest

import deepcore as dc
from deepcore import backends
from deepcore.backends import BACKEND_NAMES, ENV_VAR
from deepcore.errors import BackendUnavailableError

AVAILABLE = [n for n, a in dc.available_backends().items() if a.available]
UNAVAILABLE = [n for n, a in dc.available_backends().items() if not a.available]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def two():
    """Two distinct available backend names (the second is the non-default one)."""
    others = [n for n in AVAILABLE if n != "numpy"]
    if not others:
        pytest.skip(f"precedence needs two available backends, have {AVAILABLE}")
    return "numpy", others[0]


def base(backend) -> str:
    return backend.name.split(":")[0]


def test_numpy_is_the_fallback():
    assert base(dc.get_default_backend()) == "numpy"
    assert base(dc.nn.Linear(2, 2).backend) == "numpy"


def test_explicit_beats_everything(two, monkeypatch):
    a, b = two
    monkeypatch.setenv(ENV_VAR, b)
    dc.set_default_backend(b)
    with dc.use_backend(b):
        assert base(dc.nn.Linear(2, 2, backend=a).backend) == a
        assert base(dc.get_backend(a)) == a
        assert base(dc.nn.Linear(2, 2).to(a).backend) == a


def test_use_backend_beats_default_and_env(two, monkeypatch):
    a, b = two
    monkeypatch.setenv(ENV_VAR, a)
    dc.set_default_backend(a)
    with dc.use_backend(b) as be:
        assert base(be) == b
        assert base(dc.get_default_backend()) == b
        assert base(dc.nn.Linear(2, 2).backend) == b
    assert base(dc.get_default_backend()) == a


def test_nested_use_backend_innermost_wins(two):
    a, b = two
    with dc.use_backend(b):
        with dc.use_backend(a):
            assert base(dc.get_default_backend()) == a
            with dc.use_backend(b):
                assert base(dc.get_default_backend()) == b
            assert base(dc.get_default_backend()) == a
        assert base(dc.get_default_backend()) == b
    assert base(dc.get_default_backend()) == "numpy"


def test_use_backend_is_restored_after_an_exception(two):
    a, b = two
    with pytest.raises(ZeroDivisionError):
        with dc.use_backend(b):
            with dc.use_backend(a):
                raise ZeroDivisionError
    assert base(dc.get_default_backend()) == "numpy"
    with dc.use_backend(b):
        with pytest.raises(KeyError):
            with dc.use_backend(a):
                raise KeyError("x")
        assert base(dc.get_default_backend()) == b


def test_use_backend_is_isolated_per_thread(two):
    a, b = two
    seen: dict[str, str] = {}
    inside = threading.Event()
    release = threading.Event()

    def worker():
        seen["thread_start"] = base(dc.get_default_backend())
        with dc.use_backend(b):
            inside.set()
            release.wait(5)
            seen["thread_inside"] = base(dc.get_default_backend())

    with dc.use_backend(a):
        t = threading.Thread(target=worker)
        t.start()
        assert inside.wait(5)
        seen["main_while_thread_inside"] = base(dc.get_default_backend())
        release.set()
        t.join(5)
    assert seen == {
        "thread_start": "numpy",  # a new thread does not inherit the block of another
        "thread_inside": b,
        "main_while_thread_inside": a,
    }


def test_set_default_beats_env_and_none_clears(two, monkeypatch):
    a, b = two
    monkeypatch.setenv(ENV_VAR, b)
    dc.set_default_backend(a)
    assert base(dc.get_default_backend()) == a
    dc.set_default_backend(None)
    assert base(dc.get_default_backend()) == b
    dc.set_default_backend(dc.get_backend(b))  # a Backend instance works too
    assert base(dc.get_default_backend()) == b


def test_env_var_is_read_on_use_not_at_import(monkeypatch):
    name = AVAILABLE[-1]
    monkeypatch.setenv(ENV_VAR, f"  {name.upper()} ")  # deepcore is already imported
    assert base(dc.get_default_backend()) == name
    assert base(dc.nn.Linear(2, 2).backend) == name
    monkeypatch.setenv(ENV_VAR, "")
    assert base(dc.get_default_backend()) == "numpy"
    monkeypatch.setenv(ENV_VAR, "tensorflow")
    with pytest.raises(ValueError, match="tensorflow"):
        dc.get_default_backend()


def _expected_auto() -> str:
    for name in ("cupy", "numba"):
        if name in AVAILABLE:
            return name
    return "numpy"


def test_auto_resolves_to_an_available_backend(monkeypatch):
    be = dc.get_backend("auto")
    assert base(be) in AVAILABLE
    assert base(be) == _expected_auto()
    monkeypatch.setenv(ENV_VAR, "auto")
    assert dc.get_default_backend() is be
    with dc.use_backend("AUTO") as inner:
        assert inner is be


@pytest.mark.parametrize(
    "bad", ["tensorflow", "numpy:1", "cupy:x", "numba:0", "", "cupy:-1", "cupy:", "numpy:"]
)
def test_bad_names_list_the_valid_ones(bad):
    with pytest.raises(ValueError) as info:
        dc.get_backend(bad)
    msg = str(info.value)
    assert all(name in msg for name in BACKEND_NAMES), msg
    with pytest.raises(ValueError):
        dc.set_default_backend(bad)
    with pytest.raises(ValueError):
        with dc.use_backend(bad):
            pass
    assert base(dc.get_default_backend()) == "numpy"  # a failed selection changes nothing


def test_non_string_backend_is_a_type_error():
    with pytest.raises(TypeError):
        dc.get_backend(3)


def test_unavailable_backend_raises_with_the_reason():
    if not UNAVAILABLE:
        pytest.skip("every backend is available here")
    name = UNAVAILABLE[0]
    reason = dc.available_backends()[name].reason
    with pytest.raises(BackendUnavailableError) as info:
        dc.get_backend(name)
    assert reason in str(info.value) and name in str(info.value)
    with pytest.raises(BackendUnavailableError):
        dc.nn.Linear(2, 2, backend=name)
    with pytest.raises(BackendUnavailableError):
        dc.nn.Linear(2, 2).to(name)
    with pytest.raises(BackendUnavailableError):
        dc.set_default_backend(name)
    assert base(dc.get_default_backend()) == "numpy"


def test_a_backend_whose_probe_fails_is_unavailable(monkeypatch):
    """A probe that says no (or raises) makes the backend unavailable with that reason."""
    import importlib

    monkeypatch.setitem(backends._MODULES, "fake", "deepcore.backends.fake_for_tests")
    monkeypatch.setattr(backends, "BACKEND_NAMES", (*BACKEND_NAMES, "fake"))

    def boom(name):
        if name == "deepcore.backends.fake_for_tests":
            raise ImportError("no such module here")
        return real_import(name)

    real_import = importlib.import_module
    monkeypatch.setattr(backends.importlib, "import_module", boom)
    avail = backends.available_backends()
    assert avail["fake"].available is False and not avail["fake"]
    assert "ImportError" in avail["fake"].reason and "no such module" in avail["fake"].reason
    with pytest.raises(BackendUnavailableError, match="no such module"):
        dc.get_backend("fake")
    assert base(dc.get_backend("auto")) == _expected_auto()  # a broken probe is skipped


def test_available_backends_gives_a_reason_for_each():
    avail = dc.available_backends()
    assert tuple(avail) == BACKEND_NAMES
    for name, a in avail.items():
        assert a.name == name
        assert isinstance(a.available, bool) and bool(a) is a.available
        assert isinstance(a.reason, str) and a.reason.strip(), name
    assert avail["numpy"].available


def test_get_backend_returns_singletons_and_passes_instances_through():
    be = dc.get_backend("numpy")
    assert dc.get_backend("numpy") is be
    assert dc.get_backend(" NumPy ") is be
    assert dc.get_backend(be) is be


def test_register_backend_adds_a_selectable_backend(monkeypatch):
    """A registered module joins selection and availability; bad names are refused."""
    monkeypatch.setattr(backends, "_MODULES", dict(backends._MODULES))
    monkeypatch.setattr(backends, "BACKEND_NAMES", backends.BACKEND_NAMES)
    monkeypatch.setattr(backends, "_instances", dict(backends._instances))
    backends.register_backend("plainnumpy", "deepcore.backends.numpy")
    assert "plainnumpy" in backends.BACKEND_NAMES
    assert backends.available_backends()["plainnumpy"].available
    assert isinstance(dc.get_backend("plainnumpy"), dc.Backend)
    with pytest.raises(ValueError, match="already registered"):
        backends.register_backend("plainnumpy", "somewhere.else")
    for bad in ("Auto", "auto", "my-backend"):
        with pytest.raises(ValueError, match="lower-case identifier"):
            backends.register_backend(bad, "x")
