"""Who is signed in: user ids, the per-user index of sessions, and what a listing says of each session.

A session is bound to a user by :meth:`Session.login() <asession.Session.login>`, which stores the user id
under ``"_auth_user_id"`` (Django's key) and records the session in its backend's per-user index. The
index is one record per user, kept in the backend itself beside the sessions and written through the
backend's own atomic merge (:meth:`SessionBackend._update <asession.backends.base.SessionBackend._update>`),
so it works alike on every server-side store, is consistent under parallel logins of one user, and costs
a listing as many reads as that user has sessions, whatever the size of the store:

- the record's storage key is ``sha256("asession user index" + NUL + user id)``: the user id is never used
  unescaped in a key, a path or a query, and the record cannot be loaded as a session (that would take
  the preimage of a SHA-256);
- its data maps each session's handle (:attr:`SessionInfo.id`) to the session's storage key;
- entries whose session has ended (expired, flushed, revoked, rotated) are pruned whenever a listing or a
  revocation meets them, and never listed; a session that ends by expiry never says so, so a login also
  checks the entries once they reach each multiple of :data:`PRUNE_EVERY`, and the index of a user who
  signs in again and again without listing or logging out stays the size of their live sessions;
- the record itself lives :data:`INDEX_AGE` seconds after its last write (every login, logout, listing
  that pruned, and revocation writes it), on stores that expire entries by themselves too.

What a listing shows of each session (start, last activity, expiry, user agent) is kept in the session's
own data under :data:`META_KEY`, which :class:`~asession.Session` keeps out of the mapping the app sees.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from asession.changes import Changes
from asession.exceptions import CreateError, UpdateError

__all__ = [
    "INDEX_AGE",
    "MAX_USER_ID_LENGTH",
    "META_KEY",
    "USER_ID_KEY",
    "SessionInfo",
    "check_user_id",
    "session_handle",
]

#: Where the data holds the id of the signed-in user (Django's ``SESSION_KEY``).
USER_ID_KEY = "_auth_user_id"
#: Where the data holds what a listing shows and the timeouts need (see :func:`new_meta`). Not part of the
#: mapping the app sees.
META_KEY = "_session_meta"
#: The longest user id :meth:`Session.login` accepts, in characters.
MAX_USER_ID_LENGTH = 256
#: The longest user agent recorded at login, in characters.
MAX_USER_AGENT_LENGTH = 256
#: Seconds a user's index record lives after its last write: 400 days, the longest cookie lifetime
#: browsers keep (RFC 6265bis), so no session outlives its index entry unless it is never saved again.
INDEX_AGE = 400 * 24 * 60 * 60
#: A login that finds a multiple of this many entries in the user's index first drops the entries of
#: sessions that ended: one check of the entries every ``PRUNE_EVERY`` logins, and an index that never
#: holds more than ``PRUNE_EVERY`` entries of ended sessions.
PRUNE_EVERY = 64
_CREATE_ATTEMPTS = 5


@dataclass(frozen=True)
class SessionInfo:
    """One live session of a user, as :meth:`SessionBackend.user_sessions
    <asession.backends.base.SessionBackend.user_sessions>` lists it.

    ``id`` is a stable handle for :meth:`SessionBackend.revoke_session
    <asession.backends.base.SessionBackend.revoke_session>`; it is derived from the session key by a one-way
    function, so it cannot be turned into the key or used as a cookie. Times are aware UTC datetimes;
    ``last_seen`` is the last save or touch; ``user_agent`` is the one of the login (cut to 256 characters),
    ``None`` when the request had none.
    """

    id: str
    user_id: str
    created_at: datetime
    last_seen: datetime
    expires_at: datetime
    user_agent: str | None


def check_user_id(user_id: object) -> str:
    """The user id as stored: a non-empty ``str`` of at most 256 characters, or an ``int`` as its string.

    Raises ``ValueError`` for anything else (``bool`` included): an empty id, another type, or a longer one.
    """
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise ValueError(f"A user id is a str or an int, not {type(user_id).__name__} {user_id!r}.")
    text = str(user_id)
    if not text:
        raise ValueError("A user id cannot be empty.")
    if len(text) > MAX_USER_ID_LENGTH:
        raise ValueError(f"A user id has at most {MAX_USER_ID_LENGTH} characters; this one has {len(text)}.")
    return text


def index_key(user_id: str) -> str:
    """The storage key of ``user_id``'s index record (64 hex digits, like a session's)."""
    return hashlib.sha256(b"asession user index\x00" + user_id.encode("utf-8", "surrogatepass")).hexdigest()


def session_handle(user_id: str | None, skey: str) -> str:
    """The public handle of the session stored under ``skey``: ``<user id, base64url>.<32 hex digits>``.

    The digits are a SHA-256 of the storage key (itself a SHA-256 of the key), so the handle says which
    session it is without giving anything that loads it; the user part lets :meth:`revoke_session` find
    the index without a global table. Anonymous sessions have an empty user part.
    """
    digest = hashlib.sha256(b"asession session id\x00" + skey.encode()).hexdigest()[:32]
    if not user_id:
        return f".{digest}"
    user = base64.urlsafe_b64encode(user_id.encode("utf-8", "surrogatepass")).rstrip(b"=").decode()
    return f"{user}.{digest}"


def user_of_handle(handle: object) -> str | None:
    """The user id a handle names, or ``None`` when ``handle`` is not one."""
    # The longest handle: 256 characters of up to 4 UTF-8 bytes each in base64, a dot and 32 digits.
    if (
        not isinstance(handle, str)
        or handle.count(".") != 1
        or len(handle) > (MAX_USER_ID_LENGTH * 4 * 4 + 2) // 3 + 33
    ):
        return None
    user, digest = handle.split(".")
    if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest) or not user:
        return None
    try:
        text = base64.urlsafe_b64decode(user + "=" * (-len(user) % 4)).decode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError):
        return None
    try:
        return check_user_id(text)
    except ValueError:
        return None


#: Positions in a session's metadata: start (creation or last login) and last activity in milliseconds since
#: the epoch, expiry in seconds, then the user agent of the login when there was one.
STARTED, SEEN, EXPIRES, AGENT = range(4)


def new_meta(now: float, user_agent: str | None = None) -> list[Any]:
    """The metadata of a session started (created or logged in) at ``now`` (seconds since the epoch)."""
    moment = int(now * 1000)
    meta: list[Any] = [moment, moment, int(now)]
    if user_agent:
        meta.append(user_agent[:MAX_USER_AGENT_LENGTH])
    return meta


def encode_meta(meta: list[Any]) -> str:
    """The stored form: ``"<seen> <started> <expires>[ <user agent>]"``, last activity first.

    One string rather than a JSON list or object: it is decoded with the data on every load, where a string
    costs the JSON scanner a third of what a list of three integers does, and the one field a request
    needs (the last activity, for the touch) is read from its start without splitting the rest.
    """
    text = f"{meta[SEEN]} {meta[STARTED]} {meta[EXPIRES]}"
    return f"{text} {meta[AGENT]}" if len(meta) > AGENT else text


def decode_meta(text: object) -> list[Any] | None:
    """The metadata list of a stored string; ``None`` when it is not one :func:`encode_meta` wrote."""
    if type(text) is not str:
        return None
    parts = text.split(" ", 3)
    if len(parts) < 3 or not all(part.isdigit() and part.isascii() for part in parts[:3]):
        return None
    meta: list[Any] = [int(parts[1]), int(parts[0]), int(parts[2])]
    if len(parts) > 3:
        meta.append(parts[3])
    return meta


def meta_seconds(meta: list[Any] | None, position: int) -> float | None:
    """The time at ``position`` (:data:`STARTED`, :data:`SEEN` or :data:`EXPIRES`) in seconds, if well-formed."""
    if meta is None or len(meta) <= position:
        return None
    value = meta[position]
    if type(value) is not int:
        return None
    return value if position == EXPIRES else value / 1000


def _meta_of(data: dict[str, Any]) -> list[Any] | None:
    return decode_meta(data.get(META_KEY))


def _moment(seconds: float | None, default: float) -> datetime:
    return datetime.fromtimestamp(default if seconds is None else seconds, timezone.utc)


# -- the index, on any backend that merges -----------------------------------------------------------------


class IndexedBackend(Protocol):
    """What the index needs of a backend: :class:`asession.backends.base.SessionBackend`'s raw calls on
    storage keys and its payload codec. The backend hands itself to these functions, so this module imports
    nothing of it."""

    def _load(self, skey: str) -> Awaitable[str | bytes | None]: ...

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None: ...

    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str | None: ...

    async def _delete(self, skey: str) -> None: ...

    def _decode(self, raw: str | bytes) -> dict[str, Any] | None: ...

    def _encode(self, data: Mapping[str, Any]) -> str: ...


async def _entries(backend: IndexedBackend, ikey: str) -> dict[str, str]:
    raw = await backend._load(ikey)
    data = None if raw is None else backend._decode(raw)
    if not data:
        return {}
    return {handle: skey for handle, skey in data.items() if isinstance(skey, str)}


async def _ended(backend: IndexedBackend, ikey: str, user_id: str) -> frozenset[str]:
    """The handles of ended sessions in the index, when it holds a multiple of :data:`PRUNE_EVERY` entries
    (else none: the check is amortised over that many logins)."""
    entries = await _entries(backend, ikey)
    if not entries or len(entries) % PRUNE_EVERY:
        return frozenset()
    return frozenset(
        [handle for handle, skey in entries.items() if await _session_data(backend, skey, user_id) is None]
    )


async def add(backend: IndexedBackend, user_id: str, skey: str) -> str:
    """Record the session stored under ``skey`` in ``user_id``'s index; return its handle.

    Entries of ended sessions go in the same merge, when :func:`_ended` checks them.
    """
    handle = session_handle(user_id, skey)
    ikey = index_key(user_id)
    changes = Changes({handle: skey}, await _ended(backend, ikey, user_id) - {handle})
    for _ in range(_CREATE_ATTEMPTS):
        try:
            await backend._update(ikey, changes, INDEX_AGE)
            return handle
        except UpdateError:
            pass  # no index yet (or it ended): create it, unless a parallel login just did
        try:
            await backend._save(ikey, backend._encode({handle: skey}), INDEX_AGE, True)
            return handle
        except CreateError:
            continue
    raise UpdateError(f"{backend!r} could not record a session in the index of user {user_id!r}.")


async def remove(backend: IndexedBackend, user_id: str, handles: list[str]) -> None:
    """Drop ``handles`` from ``user_id``'s index (no error when the index or an entry is missing)."""
    if not handles:
        return
    try:
        await backend._update(index_key(user_id), Changes({}, frozenset(handles)), INDEX_AGE)
    except UpdateError:
        pass


async def _session_data(backend: IndexedBackend, skey: str, user_id: str) -> dict[str, Any] | None:
    """The live session under ``skey`` if it is still ``user_id``'s, else ``None``."""
    raw = await backend._load(skey)
    data = None if raw is None else backend._decode(raw)
    if data is None or data.get(USER_ID_KEY) != user_id:
        return None
    return data


async def sessions(backend: IndexedBackend, user_id: str) -> list[SessionInfo]:
    """``user_id``'s live sessions, newest first; entries of ended sessions are pruned."""
    entries = await _entries(backend, index_key(user_id))
    found: list[tuple[datetime, int, SessionInfo]] = []
    dead: list[str] = []
    for position, (handle, skey) in enumerate(entries.items()):
        data = await _session_data(backend, skey, user_id)
        if data is None:
            dead.append(handle)
            continue
        meta = _meta_of(data)
        started = _moment(meta_seconds(meta, STARTED), 0)
        seen = _moment(meta_seconds(meta, SEEN), started.timestamp())
        expires = _moment(meta_seconds(meta, EXPIRES), seen.timestamp())
        agent = meta[AGENT] if meta is not None and len(meta) > AGENT else None
        info = SessionInfo(handle, user_id, started, seen, expires, agent if isinstance(agent, str) else None)
        found.append((info.created_at, position, info))
    await remove(backend, user_id, dead)
    # Newest first; two logins within one millisecond in the order the index recorded them.
    found.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [info for _, _, info in found]


async def revoke_user(backend: IndexedBackend, user_id: str, except_skey: str | None) -> list[str]:
    """End every live session of ``user_id`` but the one under ``except_skey``; return the handles of those ended."""
    entries = await _entries(backend, index_key(user_id))
    ended: list[str] = []
    dropped: list[str] = []
    for handle, skey in entries.items():
        if skey == except_skey:
            continue
        if await _session_data(backend, skey, user_id) is not None:
            await backend._delete(skey)
            ended.append(handle)
        dropped.append(handle)
    await remove(backend, user_id, dropped)
    return ended


async def revoke_handle(backend: IndexedBackend, handle: object) -> bool:
    """End the session whose :attr:`SessionInfo.id` is ``handle``; whether a live one was there."""
    user_id = user_of_handle(handle)
    if user_id is None:
        return False
    assert isinstance(handle, str)
    entries = await _entries(backend, index_key(user_id))
    skey = entries.get(handle)
    if skey is None:
        return False
    live = await _session_data(backend, skey, user_id) is not None
    if live:
        await backend._delete(skey)
    await remove(backend, user_id, [handle])
    return live
