"""Every import of API.md works, and the package's ``__all__`` is sorted and complete."""

from __future__ import annotations

import importlib
import inspect

import pytest

import asession

API_IMPORTS = [
    ("asession", ["Session", "SessionConfig", "SessionMiddleware"]),
    ("asession", ["ImproperlyConfigured", "SessionError", "CreateError"]),
    ("asession.backends", ["backend_from_url"]),
    ("asession.backends.base", ["SessionBackend"]),
    ("asession.backends.memory", ["MemoryBackend"]),
    ("asession.backends.db", ["DatabaseBackend"]),
    ("asession.backends.cache", ["CacheBackend"]),
    ("asession.backends.file", ["FileBackend"]),
    ("asession.backends.cached_db", ["CachedDatabaseBackend"]),
    ("asession.backends.signed_cookies", ["SignedCookieBackend"]),
    ("asession.fastapi", ["get_session", "SessionDep"]),
]


@pytest.mark.parametrize(("module", "names"), API_IMPORTS, ids=[m for m, _ in API_IMPORTS])
def test_api_import_works(module: str, names: list[str]) -> None:
    """Each name API.md imports exists in its module."""
    imported = importlib.import_module(module)
    for name in names:
        assert hasattr(imported, name), f"{module}.{name}"


def test_all_is_sorted_and_complete() -> None:
    """asession.__all__ is sorted and lists every public name the package defines."""
    assert asession.__all__ == sorted(asession.__all__)
    public = {
        name
        for name, value in vars(asession).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert public | {"__version__"} == set(asession.__all__)


def test_exception_tree_matches_the_docstring() -> None:
    """Every asession exception derives from SessionError."""
    for name in ("ImproperlyConfigured", "CreateError", "BackendUnavailableError"):
        assert issubclass(getattr(asession, name), asession.SessionError)
    assert issubclass(asession.SessionError, Exception)


def test_backend_classes_subclass_session_backend() -> None:
    """Every backend class of API.md is a SessionBackend with the async storage methods."""
    from asession.backends.base import SessionBackend

    for module, names in API_IMPORTS[4:10]:
        backend_class = getattr(importlib.import_module(module), names[0])
        assert issubclass(backend_class, SessionBackend)
        for method in ("load", "save", "exists", "delete", "clear_expired", "open", "close"):
            assert inspect.iscoroutinefunction(getattr(backend_class, method)), (backend_class, method)


def test_version_is_a_string() -> None:
    """__version__ is the package version string pyproject reads."""
    assert isinstance(asession.__version__, str) and asession.__version__.count(".") == 2
