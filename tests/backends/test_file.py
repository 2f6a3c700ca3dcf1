"""FileBackend quirks: the directory check, file names, atomic writes, corrupt files and clean-up."""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
import time
from pathlib import Path

import pytest

from asession import keys
from asession.backends import backend_from_url
from asession.backends.base import SessionBackend
from asession.backends.file import FILE_PREFIX, LOCK_PREFIX, TEMP_PREFIX, FileBackend, _unlink_if_unchanged
from asession.exceptions import CreateError, ImproperlyConfigured, SessionError
from tests.conftest import Clock

DAY = 86400


def session_file(directory: Path, key: str) -> Path:
    return directory / (FILE_PREFIX + keys.storage_key(key))


def temp_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(TEMP_PREFIX)]


def stored_files(directory: Path) -> list[str]:
    """The directory's entries other than the (empty, constant-named) lock files that writes take."""
    names = sorted(os.listdir(directory))
    for name in names:
        if name.startswith(LOCK_PREFIX):
            assert (directory / name).stat().st_size == 0 and re.fullmatch(r"[0-9a-f]{2}", name[len(LOCK_PREFIX) :])
    return [name for name in names if not name.startswith(LOCK_PREFIX)]


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "pathlib"])
def test_missing_directory_raises_improperly_configured(tmp_path: Path, as_path: bool) -> None:
    """A path that is not an existing directory fails at construction with Django's message."""
    missing = tmp_path / "nowhere"
    with pytest.raises(ImproperlyConfigured) as info:
        FileBackend(missing if as_path else str(missing))
    assert str(info.value) == (
        f"The session storage path '{missing}' doesn't exist. Please set the file backend's path to an existing "
        "directory in which asession can store session data."
    )


def test_regular_file_as_path_raises_improperly_configured(tmp_path: Path) -> None:
    """A path naming a file rather than a directory is refused too."""
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    with pytest.raises(ImproperlyConfigured, match="doesn't exist"):
        FileBackend(not_a_dir)


def test_file_url_names_the_directory(session_dir: Path) -> None:
    """file:///abs/dir builds a FileBackend on that directory, shown in its repr."""
    backend = backend_from_url(f"file://{session_dir}")
    assert isinstance(backend, FileBackend)
    assert backend.path == str(session_dir)
    assert str(session_dir) in repr(backend)


@pytest.mark.parametrize("url", ["file://somehost/tmp", "file://"])
def test_file_url_without_absolute_path_raises(url: str) -> None:
    """A file URL with a host or no path is refused with an example of the right form."""
    with pytest.raises(ImproperlyConfigured, match="file:///"):
        FileBackend.from_url(url)


def test_missing_aiofiles_raises_install_hint(session_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the file extra, construction says which extra to install."""
    monkeypatch.setitem(sys.modules, "aiofiles", None)
    with pytest.raises(ImproperlyConfigured, match=r"pip install 'asession\[file\]'") as info:
        FileBackend(session_dir)
    assert isinstance(info.value.__cause__, ImportError)


async def test_files_are_named_by_hash_not_key(file_backend: SessionBackend, session_dir: Path) -> None:
    """The only file written is named after the key's SHA-256, and neither its name nor content holds the key."""
    key = keys.new_key()
    await file_backend.save(key, {"v": 1}, DAY)
    assert stored_files(session_dir) == [FILE_PREFIX + keys.storage_key(key)]
    assert key not in session_file(session_dir, key).read_text()


async def test_session_files_are_private(file_backend: SessionBackend, session_dir: Path) -> None:
    """Session files are readable and writable by their owner only."""
    key = keys.new_key()
    await file_backend.save(key, {"v": 1}, DAY)
    assert stat.S_IMODE(session_file(session_dir, key).stat().st_mode) == 0o600


async def test_saves_leave_no_temp_files(file_backend: SessionBackend, session_dir: Path) -> None:
    """Plain saves, creations, refused creations and deletes leave only session files behind."""
    first, second = keys.new_key(), keys.new_key()
    await file_backend.save(first, {"v": 1}, DAY, must_create=True)
    await file_backend.save(first, {"v": 2}, DAY)
    with pytest.raises(CreateError):
        await file_backend.save(first, {"v": 3}, DAY, must_create=True)
    await file_backend.save(second, {"v": 1}, DAY)
    await file_backend.delete(second)
    assert temp_files(session_dir) == []
    assert stored_files(session_dir) == [FILE_PREFIX + keys.storage_key(first)]


async def test_file_holds_expiry_and_json(file_backend: SessionBackend, session_dir: Path, clock: Clock) -> None:
    """The file's first line is the expiry timestamp and the rest is the JSON payload."""
    key = keys.new_key()
    await file_backend.save(key, {"cat": "dog"}, 600)
    expire_at, payload = session_file(session_dir, key).read_text().split("\n", 1)
    assert float(expire_at) == clock.current.timestamp() + 600
    assert payload == '{"cat":"dog"}'


@pytest.mark.parametrize(
    "content", [b"not a session", b"1e400\n{}", b"nan\n{}", b"9999999999\n{not json", b"9999999999\n\xff\xfe"]
)
async def test_corrupt_file_loads_as_none_and_is_logged(
    file_backend: SessionBackend, session_dir: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    """A damaged session file loads as None with a warning on asession.security; other sessions are untouched."""
    damaged, intact = keys.new_key(), keys.new_key()
    await file_backend.save(damaged, {"v": 1}, DAY)
    await file_backend.save(intact, {"v": 2}, DAY)
    session_file(session_dir, damaged).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="asession.security"):
        assert await file_backend.load(damaged) is None
    assert [record.name for record in caplog.records] == ["asession.security"]
    assert await file_backend.load(intact) == {"v": 2}


async def test_expired_file_is_removed_when_read(file_backend: SessionBackend, session_dir: Path, clock: Clock) -> None:
    """Loading an expired session deletes its file."""
    key = keys.new_key()
    await file_backend.save(key, {"v": 1}, 10)
    clock.advance(11)
    assert await file_backend.load(key) is None
    assert not session_file(session_dir, key).exists()


async def test_must_create_replaces_an_expired_file(
    file_backend: SessionBackend, session_dir: Path, clock: Clock
) -> None:
    """must_create succeeds over a file whose expiry has passed and writes the new data."""
    key = keys.new_key()
    session_file(session_dir, key).write_text(f"{clock.current.timestamp() - 1}\n" + '{"v":"old"}')
    await file_backend.save(key, {"v": "new"}, DAY, must_create=True)
    assert await file_backend.load(key) == {"v": "new"}
    assert temp_files(session_dir) == []


async def test_must_create_replaces_an_unreadable_file(file_backend: SessionBackend, session_dir: Path) -> None:
    """A file with no readable expiry can never load, so it does not block must_create."""
    key = keys.new_key()
    session_file(session_dir, key).write_bytes(b"garbage")
    await file_backend.save(key, {"v": "new"}, DAY, must_create=True)
    assert await file_backend.load(key) == {"v": "new"}


async def test_must_create_keeps_a_live_file(file_backend: SessionBackend, session_dir: Path) -> None:
    """must_create over a live session raises CreateError and leaves the file's bytes as they were."""
    key = keys.new_key()
    await file_backend.save(key, {"v": 1}, DAY)
    before = session_file(session_dir, key).read_bytes()
    with pytest.raises(CreateError):
        await file_backend.save(key, {"v": 2}, DAY, must_create=True)
    assert session_file(session_dir, key).read_bytes() == before


async def test_clear_expired_removes_stale_temp_files_only(file_backend: SessionBackend, session_dir: Path) -> None:
    """Temp files older than a minute go; young ones (a save in progress) and foreign files stay."""
    stale, young = session_dir / (TEMP_PREFIX + "stale"), session_dir / (TEMP_PREFIX + "young")
    foreign = [session_dir / "notes.txt", session_dir / (FILE_PREFIX + "not-a-hash")]
    for path in [stale, young, *foreign]:
        path.write_text("x")
    two_minutes_ago = time.time() - 120
    os.utime(stale, (two_minutes_ago, two_minutes_ago))
    assert await file_backend.clear_expired() == 0
    assert not stale.exists()
    assert young.exists() and all(path.exists() for path in foreign)


async def test_clear_expired_counts_unreadable_session_files(
    file_backend: SessionBackend, session_dir: Path, clock: Clock
) -> None:
    """Session files that are expired or unreadable are removed and counted; live ones stay."""
    live, expired, unreadable = keys.new_key(), keys.new_key(), keys.new_key()
    await file_backend.save(live, {"v": 1}, DAY)
    await file_backend.save(expired, {"v": 1}, 10)
    session_file(session_dir, unreadable).write_bytes(b"garbage")
    clock.advance(11)
    assert await file_backend.clear_expired() == 2
    assert stored_files(session_dir) == [FILE_PREFIX + keys.storage_key(live)]


async def test_sessions_are_shared_between_backends_on_one_directory(
    file_backend: SessionBackend, session_dir: Path
) -> None:
    """A second FileBackend (another worker) on the same directory sees and deletes the same sessions."""
    key = keys.new_key()
    await file_backend.save(key, {"v": 1}, DAY)
    async with FileBackend(session_dir) as other:
        assert await other.load(key) == {"v": 1}
        await other.delete(key)
    assert await file_backend.load(key) is None


async def test_storage_key_that_is_not_a_hash_is_refused(file_backend: SessionBackend) -> None:
    """The path builder refuses anything but 64 hex characters, whatever reaches it."""
    with pytest.raises(SessionError, match="64 hexadecimal"):
        await file_backend._load("../" + "a" * 61)


def test_expired_file_replaced_meanwhile_is_not_removed(session_dir: Path) -> None:
    """Removing an expired file spares a fresh file that was renamed over it after it was read."""
    path = session_dir / "entry"
    path.write_text("old")
    seen = os.stat(path)
    fresh = session_dir / "fresh"
    fresh.write_text("new")
    os.replace(fresh, path)
    assert not _unlink_if_unchanged(str(path), seen)
    assert path.read_text() == "new"
    assert _unlink_if_unchanged(str(path), os.stat(path))
    assert not path.exists()
