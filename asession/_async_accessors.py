"""The async accessors of :class:`~asession.Session` (Django 5.1's names): load on demand, then act.

Each ``a*`` method awaits ``_load_if_needed()`` (a session with a key that was never loaded reads its
store first) and then does what its synchronous twin does, so flags and errors are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["AsyncAccessors"]

#: Tells "no default given" from ``None`` in ``pop`` / ``apop`` and ``aupdate``.
_MISSING: Any = object()


class AsyncAccessors(dict[str, Any]):
    """``aget``, ``aset``, ``apop``, ... for a ``dict`` subclass that loads itself in ``_load_if_needed``."""

    __slots__ = ()

    async def _load_if_needed(self) -> None:
        raise NotImplementedError  # pragma: no cover - Session defines it

    async def aget(self, key: str, default: Any = None) -> Any:
        """Load if needed, then ``get(key, default)``."""
        await self._load_if_needed()
        return self.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        """Load if needed, then ``session[key] = value``."""
        await self._load_if_needed()
        self[key] = value

    async def apop(self, key: str, default: Any = _MISSING) -> Any:
        """Load if needed, then ``pop(key[, default])``."""
        await self._load_if_needed()
        return self.pop(key, default)

    async def asetdefault(self, key: str, default: Any = None) -> Any:
        """Load if needed, then ``setdefault(key, default)``."""
        await self._load_if_needed()
        return self.setdefault(key, default)

    async def aupdate(self, other: Mapping[str, Any] = _MISSING, /, **kwargs: Any) -> None:
        """Load if needed, then ``update(other, **kwargs)``."""
        await self._load_if_needed()
        if other is _MISSING:
            self.update(**kwargs)
        else:
            self.update(other, **kwargs)

    async def ahas_key(self, key: str) -> bool:
        """Load if needed, then ``key in session``."""
        await self._load_if_needed()
        return key in self

    async def akeys(self) -> Any:
        """Load if needed, then ``keys()``."""
        await self._load_if_needed()
        return self.keys()

    async def avalues(self) -> Any:
        """Load if needed, then ``values()``."""
        await self._load_if_needed()
        return self.values()

    async def aitems(self) -> Any:
        """Load if needed, then ``items()``."""
        await self._load_if_needed()
        return self.items()

    async def aclear(self) -> None:
        """Load if needed, then ``clear()``."""
        await self._load_if_needed()
        self.clear()
