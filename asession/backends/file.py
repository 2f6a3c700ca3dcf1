"""FileBackend: one file per session in a directory, written atomically with aiofiles.

Each session lives in ``<directory>/asession_<sha256 of the key>``. The file holds the expiry time as a
Unix timestamp on its first line and the JSON payload after it, so expiry is checked without decoding
the session. Writes go to a temporary file that is renamed into place, so a reader never sees half a
session and a crash never leaves one behind.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

from asession import expiry
from asession.backends._extras import require
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.exceptions import CreateError, ImproperlyConfigured, SessionError

try:
    import aiofiles
    import aiofiles.os
except ImportError:  # the `file` extra is missing: FileBackend() says how to install it
    pass

__all__ = ["FILE_PREFIX", "TEMP_PREFIX", "FileBackend"]

#: Session files are named ``FILE_PREFIX + storage key``; other files in the directory are left alone.
FILE_PREFIX = "asession_"
#: Temporary files being written are named ``TEMP_PREFIX + random hex``.
TEMP_PREFIX = "asession-tmp-"
#: A temporary file older than this (in seconds) belongs to a writer that died; clear_expired removes it.
STALE_TEMP_AGE = 60.0

_HEX = frozenset("0123456789abcdef")
_STORAGE_KEY_LENGTH = 64
#: Bytes read beyond max_size: room for the expiry line, so an oversized payload is still seen as such.
_HEADER_ROOM = 64
_FILE_MODE = 0o600  # session data is as sensitive as a password: readable by the app's user only

security_logger = logging.getLogger("asession.security")


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, _FILE_MODE)


def _parse(raw: bytes) -> tuple[float, bytes] | None:
    """Split a session file into (expire_at, payload); ``None`` when the expiry line is unreadable."""
    head, newline, payload = raw.partition(b"\n")
    if not newline:
        return None
    try:
        expire_at = float(head)
    except ValueError:
        return None
    return (expire_at, payload) if math.isfinite(expire_at) else None


def _unlink_if_unchanged(path: str, seen: os.stat_result) -> bool:
    """Remove ``path`` if it is still the file we read (same inode); return whether it was removed.

    A concurrent save may have renamed a fresh session over the expired file we read; comparing inodes
    keeps us from deleting it. The window between stat and unlink remains, but is microseconds wide.
    """
    try:
        current = os.stat(path)
        if (current.st_ino, current.st_dev) != (seen.st_ino, seen.st_dev):
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


class FileBackend(SessionBackend):
    """Store each session in its own file inside an existing directory.

    ``path`` (a ``str`` or ``os.PathLike``) must name an existing directory, or the constructor raises
    :class:`~asession.exceptions.ImproperlyConfigured`. Files are named by the SHA-256 of the session
    key, created readable by the owner only, and replaced atomically on every save; ``must_create``
    relies on hard links, which every local POSIX filesystem and NTFS support. Expired files are
    removed when read and by :meth:`clear_expired`, which also removes temporary files left by a
    writer that died. Several processes may share the directory.

    Needs the ``file`` extra (aiofiles).
    """

    def __init__(self, path: str | os.PathLike[str], *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        require("aiofiles", "FileBackend", "file")
        super().__init__(max_size=max_size)
        if not os.path.isdir(path):
            raise ImproperlyConfigured(
                f"The session storage path '{os.fspath(path)}' doesn't exist. Please set the file backend's "
                "path to an existing directory in which asession can store session data."
            )
        self.path = os.path.abspath(path)

    @classmethod
    def from_url(cls, url: str) -> FileBackend:
        """``file:///absolute/directory``: a FileBackend on that directory."""
        parts = urlsplit(url)
        if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost") or not parts.path:
            raise ImproperlyConfigured(
                f"{url!r} is not a file backend URL. Use file:/// followed by the absolute path of an existing "
                "directory, e.g. 'file:///var/lib/myapp/sessions'."
            )
        return cls(Path(unquote(parts.path)))

    def _describe(self) -> str:
        return self.path

    def _file(self, skey: str) -> str:
        # The base class hands us a SHA-256 hex digest; refuse anything else so no caller can ever
        # turn a session key into a path outside the directory.
        if len(skey) != _STORAGE_KEY_LENGTH or not _HEX.issuperset(skey):
            raise SessionError(f"FileBackend refuses the storage key {skey!r}: expected 64 hexadecimal characters.")
        return os.path.join(self.path, FILE_PREFIX + skey)

    # -- reading ----------------------------------------------------------------------------------------

    async def _read(self, path: str, limit: int) -> bytes | None:
        """Return the live payload in ``path`` (up to ``limit`` bytes read), or ``None``.

        A missing file gives ``None``. So does a dead one, which is removed: expired, or with an
        unreadable expiry line (logged on ``asession.security``; files are always written whole, so
        such a file was damaged or planted and can never load).
        """
        try:
            async with aiofiles.open(path, "rb") as handle:
                entry = _parse(await handle.read(limit))
                if entry is not None and entry[0] > expiry.timestamp():
                    return entry[1]
                seen = await asyncio.to_thread(os.fstat, handle.fileno())
        except FileNotFoundError:
            return None
        if entry is None:
            security_logger.warning("FileBackend: session file %s has no readable expiry; removed.", path)
        await asyncio.to_thread(_unlink_if_unchanged, path, seen)
        return None

    async def _load(self, skey: str) -> bytes | None:
        # Read just past max_size so an oversized file cannot make us read it whole; the base class
        # sees a payload longer than max_size and logs it.
        return await self._read(self._file(skey), self.max_size + _HEADER_ROOM)

    async def _exists(self, skey: str) -> bool:
        return await self._read(self._file(skey), _HEADER_ROOM) is not None

    # -- writing ----------------------------------------------------------------------------------------

    async def _write_temp(self, payload: str, expiry_age: int) -> str:
        """Write a complete session file under a fresh temporary name and return that name."""
        content = f"{expiry.timestamp() + expiry_age!r}\n".encode() + payload.encode()
        temp = os.path.join(self.path, TEMP_PREFIX + secrets.token_hex(8))
        try:
            async with aiofiles.open(temp, "xb", opener=_private_opener) as handle:
                await handle.write(content)
                await handle.flush()
                # Without fsync a power loss after the rename below can leave an empty file under
                # the session's name on filesystems that reorder metadata and data writes.
                await asyncio.to_thread(os.fsync, handle.fileno())
        except BaseException:
            await self._discard(temp)
            raise
        return temp

    async def _discard(self, path: str) -> None:
        try:
            await aiofiles.os.unlink(path)
        except FileNotFoundError:
            pass

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        final = self._file(skey)
        # Write the whole file under a temporary name, then move it into place with one atomic rename
        # (as Django's file backend does): readers see the old session or the new one, never half of
        # one, and a crash mid-write leaves only a temporary file that clear_expired() removes.
        temp = await self._write_temp(payload, expiry_age)
        try:
            if must_create:
                await self._create(temp, final)
            else:
                await aiofiles.os.replace(temp, final)
        finally:
            # After a replace the temporary name is gone; after a link (or a failure) it remains.
            await self._discard(temp)

    async def _create(self, temp: str, final: str) -> None:
        """Give ``temp``'s content the name ``final`` only if no live session holds it.

        ``os.link`` fails when the target exists, atomically, even between processes; a rename would
        overwrite it. An expired or unreadable file under that name is dead: remove it and try once more.
        """
        try:
            await aiofiles.os.link(temp, final)
            return
        except FileExistsError:
            pass
        if await self._read(final, _HEADER_ROOM) is not None:  # removes the file if it is dead
            raise CreateError(f"A session with this key already exists in {self!r}.")
        try:
            await aiofiles.os.link(temp, final)
        except FileExistsError as exc:
            raise CreateError(f"A session with this key was created concurrently in {self!r}.") from exc

    async def _delete(self, skey: str) -> None:
        await self._discard(self._file(skey))

    # -- clean-up ---------------------------------------------------------------------------------------

    async def _clear_expired(self) -> int:
        # One worker thread scans the whole directory: thousands of per-file thread hops would make
        # the clean-up far slower without keeping the event loop any freer.
        return await asyncio.to_thread(self._clear_expired_sync, expiry.timestamp(), time.time())

    def _clear_expired_sync(self, now: float, wall_clock: float) -> int:
        removed = 0
        with os.scandir(self.path) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(TEMP_PREFIX):
                    # File times are wall-clock times, whatever clock the sessions' expiry follows.
                    try:
                        if entry.stat().st_mtime < wall_clock - STALE_TEMP_AGE:
                            os.unlink(entry.path)
                    except FileNotFoundError:
                        pass
                    continue
                skey = name[len(FILE_PREFIX) :]
                if not name.startswith(FILE_PREFIX) or len(skey) != _STORAGE_KEY_LENGTH or not _HEX.issuperset(skey):
                    continue
                try:
                    with open(entry.path, "rb") as handle:
                        parsed = _parse(handle.read(_HEADER_ROOM))
                        if parsed is not None and parsed[0] > now:
                            continue
                        seen = os.fstat(handle.fileno())
                except FileNotFoundError:
                    continue
                # Files are always written whole and renamed into place, so one without a readable
                # expiry can never load: it is as dead as an expired one.
                if _unlink_if_unchanged(entry.path, seen):
                    removed += 1
        return removed
