"""FileBackend: one file per session in a directory, read with aiofiles, written atomically under a lock.

Each session lives in ``<directory>/asession_<sha256 of the key>``. The file holds the expiry time as a
Unix timestamp on its first line and the JSON payload after it, so expiry is checked without decoding
the session. Writes go to a temporary file that is renamed into place, so a reader never sees half a
session and a crash never leaves one behind.

Every write (save, update, delete) runs as one call on a worker thread while holding an exclusive
``flock`` on one of :data:`LOCK_STRIPES` lock files in the directory, chosen by the storage key. An
update reads the session, merges the request's changes and renames the result into place under that
lock, so two updates of one session, even from two processes, never lose each other's keys, and a
delete (a logout) can never be undone by an update that read the session just before it. The lock
is held by the thread, not the event loop: a request that gives up waiting (its store timeout) leaves
the thread to finish and release it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from asession import expiry
from asession.backends._extras import require
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend
from asession.changes import Changes
from asession.exceptions import CreateError, ImproperlyConfigured, SessionError

try:
    import aiofiles
except ImportError:  # the `file` extra is missing: FileBackend() says how to install it
    pass

__all__ = ["FILE_PREFIX", "LOCK_PREFIX", "LOCK_STRIPES", "TEMP_PREFIX", "FileBackend"]

#: Session files are named ``FILE_PREFIX + storage key``; other files in the directory are left alone.
FILE_PREFIX = "asession_"
#: Temporary files being written are named ``TEMP_PREFIX + random hex``.
TEMP_PREFIX = "asession-tmp-"
#: Lock files are named ``LOCK_PREFIX + two hex digits``; they are created once and stay.
LOCK_PREFIX = "asession-lock-"
#: How many lock files writes spread over: writes of two sessions rarely wait for each other.
LOCK_STRIPES = 64
#: A temporary file older than this (in seconds) belongs to a writer that died; clear_expired removes it.
STALE_TEMP_AGE = 60.0

_HEX = frozenset("0123456789abcdef")
_STORAGE_KEY_LENGTH = 64
#: Bytes read beyond max_size: room for the expiry line, so an oversized payload is still seen as such.
_HEADER_ROOM = 64
_FILE_MODE = 0o600  # session data is as sensitive as a password: readable by the app's user only

security_logger = logging.getLogger("asession.security")


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


def _content(payload: str, expire_at: float) -> bytes:
    """A session file's bytes: the expiry timestamp on the first line, then the JSON payload."""
    return f"{expire_at!r}\n".encode() + payload.encode()


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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

    def __init__(
        self, path: str | os.PathLike[str], *, max_size: int = DEFAULT_MAX_SIZE, encrypt_at_rest: bool = False
    ) -> None:
        require("aiofiles", "FileBackend", "file")
        super().__init__(max_size=max_size, encrypt_at_rest=encrypt_at_rest)
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

    # -- writing: one thread call each, under the session's lock file -------------------------------------

    @contextlib.contextmanager
    def _locked(self, skey: str) -> Iterator[None]:
        """Hold the exclusive lock of ``skey``'s stripe (blocking: call it on a worker thread)."""
        stripe = int(skey[:4], 16) % LOCK_STRIPES
        descriptor = os.open(os.path.join(self.path, f"{LOCK_PREFIX}{stripe:02x}"), os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing the descriptor releases the lock

    def _write_temp(self, content: bytes) -> str:
        """Write a complete session file under a fresh temporary name and return that name."""
        temp = os.path.join(self.path, TEMP_PREFIX + secrets.token_hex(8))
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(content)
                handle.flush()
                # Without fsync a power loss after the rename below can leave an empty file under
                # the session's name on filesystems that reorder metadata and data writes.
                os.fsync(handle.fileno())
        except BaseException:
            _discard(temp)
            raise
        return temp

    def _read_live(self, path: str, now: float, limit: int) -> bytes | None:
        """The live payload in ``path`` (up to ``limit`` bytes read), or ``None``; removes a dead file."""
        try:
            with open(path, "rb") as handle:
                entry = _parse(handle.read(limit))
                if entry is not None and entry[0] > now:
                    return entry[1]
                seen = os.fstat(handle.fileno())
        except FileNotFoundError:
            return None
        if entry is None:
            security_logger.warning("FileBackend: session file %s has no readable expiry; removed.", path)
        _unlink_if_unchanged(path, seen)
        return None

    def _save_locked(self, skey: str, content: bytes, must_create: bool, now: float) -> None:
        final = self._file(skey)
        with self._locked(skey):
            # Write the whole file under a temporary name, then move it into place with one atomic rename
            # (as Django's file backend does): readers see the old session or the new one, never half of
            # one, and a crash mid-write leaves only a temporary file that clear_expired() removes.
            temp = self._write_temp(content)
            try:
                if must_create:
                    self._create(temp, final, now)
                else:
                    os.replace(temp, final)
            finally:
                _discard(temp)  # after a replace the name is gone; after a link (or a failure) it remains

    def _create(self, temp: str, final: str, now: float) -> None:
        """Give ``temp``'s content the name ``final`` only if no live session holds it.

        ``os.link`` fails when the target exists, atomically, even between processes; a rename would
        overwrite it. An expired or unreadable file under that name is dead: remove it and try once more.
        """
        try:
            os.link(temp, final)
            return
        except FileExistsError:
            pass
        if self._read_live(final, now, _HEADER_ROOM) is not None:  # removes the file if it is dead
            raise CreateError(f"A session with this key already exists in {self!r}.")
        try:
            os.link(temp, final)
        except FileExistsError as exc:
            raise CreateError(f"A session with this key was created concurrently in {self!r}.") from exc

    def _update_locked(self, skey: str, changes: Changes, expiry_age: int, now: float) -> str:
        final = self._file(skey)
        with self._locked(skey):
            payload = self._merge(self._read_live(final, now, self.max_size + _HEADER_ROOM), changes)
            temp = self._write_temp(_content(payload, now + expiry_age))
            try:
                os.replace(temp, final)
            finally:
                _discard(temp)
        return payload

    def _delete_locked(self, skey: str) -> None:
        final = self._file(skey)
        with self._locked(skey):
            _discard(final)

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        now = expiry.timestamp()  # read here: the clock may be a test's, and threads must not call it
        await asyncio.to_thread(self._save_locked, skey, _content(payload, now + expiry_age), must_create, now)

    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str:
        return await asyncio.to_thread(self._update_locked, skey, changes, expiry_age, expiry.timestamp())

    async def _delete(self, skey: str) -> None:
        await asyncio.to_thread(self._delete_locked, skey)

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
