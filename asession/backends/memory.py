"""MemoryBackend: sessions in a dict of this process, for tests and single-worker apps."""

from __future__ import annotations

from asession import expiry
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.changes import Changes
from asession.exceptions import CreateError

__all__ = ["MemoryBackend"]


class MemoryBackend(SessionBackend):
    """Keep sessions in process memory, each with its expiry timestamp.

    Sessions vanish when the process ends and are not shared between workers: use it for tests, the
    demo and single-process apps. Expired entries are dropped when read and by :meth:`clear_expired`.
    Sessions survive ``close()`` and a later ``open()``, so an app whose lifespan restarts keeps them.
    """

    #: Nothing here ever waits, so ``store_timeout`` has nothing to bound.
    waits = False

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE, encrypt_at_rest: bool = False) -> None:
        super().__init__(max_size=max_size, encrypt_at_rest=encrypt_at_rest)
        self._data: dict[str, tuple[str, float]] = {}

    @classmethod
    def from_url(cls, url: str) -> MemoryBackend:
        """``memory://``: a new, empty in-process store."""
        return cls()

    def _describe(self) -> str:
        return f"{len(self._data)} sessions"

    async def _load(self, skey: str) -> str | None:
        entry = self._data.get(skey)
        if entry is None:
            return None
        if entry[1] <= expiry.timestamp():
            del self._data[skey]
            return None
        return entry[0]

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        now = expiry.timestamp()
        if must_create:
            entry = self._data.get(skey)
            if entry is not None and entry[1] > now:
                raise CreateError(f"A session with this key already exists in {self!r}.")
        self._data[skey] = (payload, now + expiry_age)

    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str:
        # No await between the read and the write: atomic within the event loop, which is all there is.
        now = expiry.timestamp()
        entry = self._data.get(skey)
        payload = self._merge(None if entry is None or entry[1] <= now else entry[0], changes)
        self._data[skey] = (payload, now + expiry_age)
        return payload

    async def _exists(self, skey: str) -> bool:
        return await self._load(skey) is not None

    async def _delete(self, skey: str) -> None:
        self._data.pop(skey, None)

    async def _clear_expired(self) -> int:
        now = expiry.timestamp()
        expired = [skey for skey, (_, expires) in self._data.items() if expires <= now]
        for skey in expired:
            del self._data[skey]
        return len(expired)
