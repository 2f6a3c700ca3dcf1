"""Optional extras: import a backend's dependency at construction, or say which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from asession.exceptions import ImproperlyConfigured

__all__ = ["require"]


def require(module: str, backend: str, extra: str, purpose: str = "") -> ModuleType:
    """Import ``module`` for ``backend``, or raise :class:`ImproperlyConfigured` with the install line.

    Backends call this in ``__init__``, so a missing extra fails at construction, never at ``import asession``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImproperlyConfigured(
            f"{backend} needs {module}{purpose}. Install it with `pip install 'asession[{extra}]'`."
        ) from exc
