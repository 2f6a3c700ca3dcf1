"""DjangoDatabaseBackend: sessions in a Django project's own ``django_session`` table, in Django's format.

A Django app and an ASGI app behind one domain share logins when both read and write one table: this
backend speaks the storage of ``django.contrib.sessions.backends.db`` (and ``cached_db``, whose database
side is the same) without importing Django, which is no dependency of asession.

**The row.** ``session_key`` is the raw session key (Django looks sessions up by it, so it cannot be
hashed), ``session_data`` is exactly what Django's ``SessionBase.encode`` writes with its default JSON
serializer, and ``expire_date`` follows Django's ``USE_TZ`` rules:

- ``session_data`` is ``signing.dumps(data, salt="django.contrib.sessions.SessionStore",
  serializer=JSONSerializer, compress=True)``: the JSON (ASCII, compact separators) zlib-compressed when
  that saves more than a byte (then prefixed with ``.``), URL-safe base64 without padding, ``:``, the
  signing time in base 62, ``:``, and the URL-safe base64 HMAC-SHA256 of everything before, keyed with
  ``sha256(salt + "signer" + SECRET_KEY)`` (Django's ``salted_hmac``). It is rebuilt here with
  ``hmac``, ``hashlib``, ``zlib`` and ``base64``; the salt is the ``key_salt`` of the database
  ``SessionStore`` (``"django.contrib.sessions." + qualname``).
- With ``use_tz=True`` (Django's default since 5.0) ``expire_date`` is UTC: a ``timestamp with time
  zone`` on PostgreSQL, the text ``YYYY-MM-DD HH:MM:SS.fff`` of the UTC time on SQLite, which Django
  compares as text too. With ``use_tz=False`` it is the wall-clock time of ``time_zone`` (Django's
  ``TIME_ZONE``) in a ``timestamp without time zone``. Times are converted in SQL from the epoch seconds
  asession's clock gives, so the database and this backend agree on what is live with Django's own
  ``expire_date > now``.

**Bad rows.** Nothing is ever unpickled. A ``session_data`` that fails its signature, holds pickle
(Django's old ``PickleSerializer``), is not Django's signed format, does not decompress within
``max_size`` or is not a JSON object loads as an empty session (``None``) and is logged on
``asession.security``. A wrong ``secret_key`` makes every Django session fail its signature: the first
signature failure is a warning that says so, later ones are logged at INFO, so a misconfigured
deployment gets one clear warning rather than one per request (and no exception).

**The per-user index** (:mod:`asession.users`) is stored as rows of the same table, through the same
``_load``/``_save``/``_update``. Its storage keys are 64 hex digits, longer than Django's ``varchar(40)``,
so each is stored under ``"asession:"`` followed by 31 characters of the URL-safe base64 HMAC-SHA256 of
the storage key, keyed with a key derived from ``secret_key``. The ``:`` (and the upper case and ``-_``
of base64) never occur in a session key of Django or asession (``[a-z0-9]``), so an index row cannot
collide with a session. The HMAC makes the row's key unguessable: knowing a user id, nobody without the
secret can send Django a cookie naming that user's index (Django would then be able to delete or
overwrite it, e.g. by logging in with it). Its ``session_data`` is signed with a salt of its own, so
Django can never load an index row as a session either. Index rows expire like the others (their
``expire_date`` is 400 days after their last write) and Django's ``clearsessions`` removes them then.

**Atomic updates** are :class:`~asession.backends.db.DatabaseBackend`'s: the drivers of ``_sqlite.py``
and ``_postgres.py`` (built by a ``DatabaseBackend`` that this backend keeps only for that) run the read,
the Python merge (verify, merge, sign) and the write in one transaction, under SQLite's write lock or a
PostgreSQL row lock (``SELECT ... FOR UPDATE``), with this module's SQL for Django's columns.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import zlib
from collections.abc import Iterable
from datetime import datetime
from typing import ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from asession import expiry
from asession.backends._driver import Driver, Statements
from asession.backends.base import DEFAULT_MAX_SIZE, SessionBackend, security_logger
from asession.backends.db import DEFAULT_BUSY_TIMEOUT, DEFAULT_COMMAND_TIMEOUT, DatabaseBackend
from asession.changes import Changes
from asession.exceptions import BackendUnavailableError, CreateError, ImproperlyConfigured

__all__ = ["DEFAULT_DJANGO_TABLE", "INDEX_SALT", "MIN_SECRET_KEY_LENGTH", "SESSION_SALT", "DjangoDatabaseBackend"]

#: Django's ``Session`` model table.
DEFAULT_DJANGO_TABLE = "django_session"
#: The ``key_salt`` of ``django.contrib.sessions.backends.db.SessionStore`` (and of ``cached_db``'s).
SESSION_SALT = "django.contrib.sessions.SessionStore"
#: The salt of asession's per-user index rows: no Django session store verifies them.
INDEX_SALT = "asession.backends.django.UserIndex"
#: Shorter secrets are refused, as by :class:`~asession.backends.signed_cookies.SignedCookieBackend`; Django's
#: ``get_random_secret_key()`` makes 50 characters.
MIN_SECRET_KEY_LENGTH = 32

_INDEX_PREFIX = "asession:"
#: Django's column is ``varchar(40)``; asession keys are 32 characters, Django's 32, and Django needs 8.
_SESSION_KEY = re.compile(r"[a-z0-9]{8,40}")
#: The storage keys asession.users gives its index records: a SHA-256 in hex.
_INDEX_KEY_LENGTH = 64
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: What follows the payload: ``:``, a base-62 timestamp, ``:``, 43 characters of signature.
_SIGNED = re.compile(
    r"(?P<value>(?P<payload>\.?[A-Za-z0-9_-]*):(?P<time>-?[0-9A-Za-z]+)):(?P<signature>[A-Za-z0-9_-]+)"
)
#: The first byte of a pickle of protocol 2 or later (Django's PickleSerializer): refused, never loaded.
_PROTO_OPCODE = b"\x80"


class _Signer:
    """Django's ``TimestampSigner`` for one salt: signs with the first key, verifies with any of them."""

    def __init__(self, salt: str, secrets: list[bytes]) -> None:
        # salted_hmac(salt + "signer", value, secret, algorithm="sha256"): the HMAC key is sha256(key_salt + secret).
        key_salt = (salt + "signer").encode()
        self._keys = [hashlib.sha256(key_salt + secret).digest() for secret in secrets]

    @staticmethod
    def _signature(key: bytes, value: str) -> bytes:
        return base64.urlsafe_b64encode(hmac.new(key, value.encode(), hashlib.sha256).digest()).rstrip(b"=")

    def sign(self, payload: str, timestamp: int) -> str:
        value = f"{payload}:{_b62_encode(timestamp)}"
        return f"{value}:{self._signature(self._keys[0], value).decode()}"

    def verify(self, value: str, signature: str) -> bool:
        expected = signature.encode()
        return any(hmac.compare_digest(self._signature(key, value), expected) for key in self._keys)


class DjangoDatabaseBackend(SessionBackend):
    """Keep sessions in a Django project's ``django_session`` table, in Django's format, on SQLite or PostgreSQL.

    ``url_or_path`` names the Django project's database as :class:`~asession.backends.db.DatabaseBackend`
    takes it: a SQLite file path or ``sqlite:///relative.db`` / ``sqlite:////absolute.db``, or
    ``postgresql://user:password@host:5432/dbname``. ``secret_key`` is the project's ``SECRET_KEY`` and
    ``fallback_keys`` its ``SECRET_KEY_FALLBACKS`` (they verify, never sign). ``use_tz`` and
    ``time_zone`` are its ``USE_TZ`` and ``TIME_ZONE`` (``time_zone`` only matters with
    ``use_tz=False``). ``table`` is the session model's table. Use it with
    ``SessionConfig(cookie_name="sessionid")``, Django's cookie name, on the same domain and path.

    Unlike the other server-side backends, this one stores session keys **raw**, not hashed: Django looks
    its sessions up by the key itself. A dump of the table therefore holds usable cookies, as Django's own
    table always does; the "hashed at rest" guarantee of asession does not hold here (``hashes_keys`` is
    ``False``). Keys must be 8 to 40 characters of ``[a-z0-9]`` (Django's column is ``varchar(40)``).

    The table must exist (``python manage.py migrate``): :meth:`open` never creates it and raises
    :class:`ImproperlyConfigured` naming the migration when it is missing; a missing SQLite file too. On
    SQLite, :meth:`open` switches the file to WAL mode, as ``DatabaseBackend`` does (persistent, and fine
    for Django: its readers then stop blocking writers). ``busy_timeout``, ``command_timeout`` and the pool
    sizes mean what they mean for ``DatabaseBackend``.

    A session Django's ``login()`` created is read here with ``session.user_id`` (``"_auth_user_id"``),
    and what the ASGI app stores is read by Django. Django's ``clearsessions`` and :meth:`clear_expired`
    both clean the shared table. See the module's documentation for the format, the bad rows and the
    per-user index rows.

    Raises :class:`ImproperlyConfigured` at construction for a secret that is not text, empty or shorter
    than :data:`MIN_SECRET_KEY_LENGTH` characters, an unknown ``time_zone``, and whatever
    ``DatabaseBackend`` refuses (an unsupported URL, a bad table name, PostgreSQL without asyncpg).
    """

    #: Django needs the raw key in ``session_key``.
    hashes_keys: ClassVar[bool] = False

    def __init__(
        self,
        url_or_path: str | os.PathLike[str],
        secret_key: str | bytes,
        *,
        table: str = DEFAULT_DJANGO_TABLE,
        fallback_keys: Iterable[str | bytes] = (),
        use_tz: bool = True,
        time_zone: str = "UTC",
        min_pool_size: int = 1,
        max_pool_size: int = 10,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        super().__init__(max_size=max_size)
        _check_secret(secret_key, "secret_key")
        if len(secret_key) < MIN_SECRET_KEY_LENGTH:
            raise ImproperlyConfigured(
                f"DjangoDatabaseBackend's secret_key is {len(secret_key)} characters long; it needs at least "
                f"{MIN_SECRET_KEY_LENGTH}. Pass the Django project's SECRET_KEY (django.core.management.utils."
                "get_random_secret_key() makes one of 50), and put a shorter old one in fallback_keys to rotate it out."
            )
        if isinstance(fallback_keys, (str, bytes)):
            raise ImproperlyConfigured(
                "DjangoDatabaseBackend's fallback_keys must be a list of old secret keys (Django's "
                "SECRET_KEY_FALLBACKS), not a single key: write fallback_keys=[old_key]."
            )
        fallbacks = list(fallback_keys)
        for index, key in enumerate(fallbacks):
            _check_secret(key, f"fallback_keys[{index}]")
        secrets = [_as_bytes(key) for key in (secret_key, *fallbacks)]
        self._sessions = _Signer(SESSION_SALT, secrets)
        self._indexes = _Signer(INDEX_SALT, secrets)
        # Index rows are found by the current secret only: see the module's documentation.
        self._index_key = hashlib.sha256(INDEX_SALT.encode() + b"key" + secrets[0]).digest()
        if not isinstance(use_tz, bool):
            raise ImproperlyConfigured(f"use_tz must be True or False (Django's USE_TZ), not {use_tz!r}.")
        self.use_tz = use_tz
        zone: ZoneInfo | None = None
        try:
            zone = ZoneInfo(time_zone) if isinstance(time_zone, str) else None
        except (ZoneInfoNotFoundError, ValueError):
            pass
        if zone is None:
            raise ImproperlyConfigured(
                f"time_zone must be the name of a time zone such as 'UTC' or 'Europe/Paris' (Django's "
                f"TIME_ZONE), not {time_zone!r}."
            )
        self.time_zone = time_zone
        self._zone = zone
        # A DatabaseBackend checks the URL and the options and builds the driver; only the driver is used.
        database = DatabaseBackend(
            url_or_path,
            table=table,
            min_pool_size=min_pool_size,
            max_pool_size=max_pool_size,
            busy_timeout=busy_timeout,
            command_timeout=command_timeout,
        )
        self.table = table
        self.url = database.url
        self.dialect = database.dialect
        if self.dialect == "sqlite":
            self.path = database.path
        self._where = database._describe()
        self.prompt_cancellation = database.prompt_cancellation
        self.driver: Driver = database.driver
        _set_statements(self.driver, _statements(table, self.dialect, use_tz))
        self._signature_failures = 0

    def _describe(self) -> str:
        return f"{self._where}, table {self.table!r}"

    def accepts_key(self, key: object) -> bool:
        """Tell whether ``key`` fits Django's ``session_key``: 8 to 40 characters of ``[a-z0-9]``."""
        return isinstance(key, str) and _SESSION_KEY.fullmatch(key) is not None

    # -- life cycle ---------------------------------------------------------------------------------------

    async def _open(self) -> None:
        in_file = self.dialect == "sqlite" and self.path not in ("", ":memory:")
        if in_file and not await asyncio.to_thread(os.path.exists, self.path):
            # The driver would create an empty database, and then miss the table.
            raise ImproperlyConfigured(
                f"There is no SQLite database at {self.path!r}. Point DjangoDatabaseBackend at the Django "
                "project's database (DATABASES['default']['NAME']) and run `python manage.py migrate` first."
            )
        try:
            await self.driver.open()
        except BackendUnavailableError as exc:
            if _missing_table(exc.__cause__):
                raise ImproperlyConfigured(
                    f"The Django session table {self.table!r} is missing in {self._where} ({exc.__cause__}). Run "
                    "`python manage.py migrate` in the Django project (with django.contrib.sessions in "
                    "INSTALLED_APPS), or pass table= for a custom session model."
                ) from exc
            raise

    async def _close(self) -> None:
        await self.driver.close()

    # -- keys and times -----------------------------------------------------------------------------------

    def _row_key(self, skey: str) -> str:
        """The ``session_key`` of a storage key: a session key as it is, an index key mapped (see the module)."""
        if len(skey) != _INDEX_KEY_LENGTH:
            return skey
        digest = hmac.new(self._index_key, skey.encode(), hashlib.sha256).digest()
        return _INDEX_PREFIX + base64.urlsafe_b64encode(digest).decode()[: 40 - len(_INDEX_PREFIX)]

    def _signer(self, skey: str) -> _Signer:
        return self._indexes if len(skey) == _INDEX_KEY_LENGTH else self._sessions

    def _clock(self, timestamp: float) -> float:
        """``timestamp`` as the epoch seconds whose UTC rendering is what Django stores for it."""
        if self.use_tz:
            return timestamp
        offset = datetime.fromtimestamp(timestamp, self._zone).utcoffset()
        return timestamp if offset is None else timestamp + offset.total_seconds()

    # -- Django's format ----------------------------------------------------------------------------------

    def _seal(self, skey: str, payload: str, timestamp: int) -> str:
        """``session_data`` for the session JSON ``payload``: what Django's ``SessionBase.encode`` writes."""
        if not payload.isascii():
            # Django's JSONSerializer escapes everything outside ASCII (json.dumps' default ensure_ascii).
            payload = json.dumps(json.loads(payload), separators=(",", ":"))
        data = payload.encode("ascii")
        compressed = zlib.compress(data)
        if len(compressed) < len(data) - 1:
            text = "." + base64.urlsafe_b64encode(compressed).rstrip(b"=").decode()
        else:
            text = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        return self._signer(skey).sign(text, timestamp)

    def _open_data(self, skey: str, raw: str | bytes) -> str | None:
        """The session JSON in ``session_data``, or ``None`` (logged on ``asession.security``) when untrusted."""
        name = type(self).__name__
        if isinstance(raw, bytes):
            raw = raw.decode("latin-1")
        if len(raw) > 2 * self.max_size + 256:
            security_logger.warning(
                "%s: session_data of %d characters exceeds max_size=%d; treated as empty.",
                name,
                len(raw),
                self.max_size,
            )
            return None
        match = _SIGNED.fullmatch(raw)
        if match is None:
            security_logger.warning(
                "%s: session_data is not Django's signed format (a Django older than 3.1, or another "
                "serializer or backend wrote it); treated as empty.",
                name,
            )
            return None
        if not self._signer(skey).verify(match["value"], match["signature"]):
            self._bad_signature()
            return None
        payload = match["payload"]
        compressed = payload.startswith(".")
        try:
            data = base64.urlsafe_b64decode(payload[compressed:] + "=" * (-len(payload[compressed:]) % 4))
            if compressed:
                inflater = zlib.decompressobj()
                data = inflater.decompress(data, self.max_size + 1)
                if len(data) > self.max_size or inflater.unconsumed_tail:
                    security_logger.warning(
                        "%s: session_data decompresses to more than max_size=%d bytes; treated as empty.",
                        name,
                        self.max_size,
                    )
                    return None
                if not inflater.eof:
                    raise ValueError("truncated zlib stream")
        except (binascii.Error, zlib.error, ValueError) as exc:
            security_logger.warning("%s: session_data is corrupted (%s); treated as empty.", name, exc)
            return None
        if data.startswith(_PROTO_OPCODE):
            security_logger.warning(
                "%s: session_data holds pickle (Django's PickleSerializer), which asession never loads; treated "
                "as empty. Switch the Django project to the default JSONSerializer.",
                name,
            )
            return None
        # Django's JSONSerializer reads latin-1; what it writes is ASCII. Parsing is SessionBackend._decode's.
        return data.decode("latin-1")

    def _bad_signature(self) -> None:
        self._signature_failures += 1
        if self._signature_failures == 1:
            security_logger.warning(
                "%s: a session_data in %s fails its signature, so that session loads empty. If the Django app's "
                "sessions all load empty in the ASGI app, secret_key is not the Django project's SECRET_KEY (nor "
                "in fallback_keys); otherwise the row was tampered with. Later signature failures are logged at "
                "INFO.",
                type(self).__name__,
                self._describe(),
            )
        else:
            security_logger.info(
                "%s: a session_data fails its signature (%d so far); treated as empty.",
                type(self).__name__,
                self._signature_failures,
            )

    # -- storage ------------------------------------------------------------------------------------------

    async def _load(self, skey: str) -> str | None:
        raw = await self.driver.load(self._row_key(skey), self._clock(expiry.timestamp()))
        return None if raw is None else self._open_data(skey, raw)

    async def _save(self, skey: str, payload: str, expiry_age: int, must_create: bool) -> None:
        now = expiry.timestamp()
        data = self._seal(skey, payload, int(now))
        row, expire_at, clock_now = self._row_key(skey), self._clock(now + expiry_age), self._clock(now)
        if not must_create:
            await self.driver.save(row, data, expire_at)
        elif not await self.driver.create(row, data, expire_at, clock_now):
            raise CreateError(f"A session with this key already exists in {self!r}.")

    async def _update(self, skey: str, changes: Changes, expiry_age: int) -> str:
        # The clock is read here, in the event loop; the merge may run on the SQLite writer thread.
        now = expiry.timestamp()
        merged: list[str] = []

        def merge(raw: str | None) -> str:
            payload = self._merge(None if raw is None else self._open_data(skey, raw), changes)
            merged.append(payload)
            return self._seal(skey, payload, int(now))

        await self.driver.update(self._row_key(skey), merge, self._clock(now + expiry_age), self._clock(now))
        return merged[-1]

    async def _exists(self, skey: str) -> bool:
        return await self.driver.exists(self._row_key(skey), self._clock(expiry.timestamp()))

    async def _delete(self, skey: str) -> None:
        await self.driver.delete(self._row_key(skey))

    async def _clear_expired(self) -> int:
        return await self.driver.clear_expired(self._clock(expiry.timestamp()))


def _statements(table: str, dialect: str, use_tz: bool) -> Statements:
    """The driver's statements for Django's columns; times are epoch-second parameters converted in SQL.

    ``create_table`` and ``create_index`` only probe the table and its columns: Django's ``migrate`` owns
    the schema, and a table created here would make it fail.
    """
    t = f'"{table}"'
    if dialect == "sqlite":

        def at(n: int) -> str:
            return f"strftime('%Y-%m-%d %H:%M:%f', ${n}, 'unixepoch')"

        epoch = "(julianday(expire_date) - 2440587.5) * 86400.0"
        row_lock = ""
    else:

        def at(n: int) -> str:
            # With USE_TZ=False the column has no time zone: the UTC rendering of the shifted clock is the wall time.
            return f"to_timestamp(${n}::float8)" if use_tz else f"(to_timestamp(${n}::float8) AT TIME ZONE 'UTC')"

        epoch = "EXTRACT(EPOCH FROM expire_date)::float8"
        row_lock = " FOR UPDATE"
    probe = f"SELECT session_key, session_data, expire_date FROM {t} LIMIT 0"
    upsert = (
        f"INSERT INTO {t} (session_key, session_data, expire_date) VALUES ($1, $2, {at(3)}) "
        "ON CONFLICT (session_key) DO UPDATE "
        "SET session_data = excluded.session_data, expire_date = excluded.expire_date"
    )
    load = f"SELECT session_data FROM {t} WHERE session_key = $1 AND expire_date > {at(2)}"
    sql = Statements(
        create_table=probe,
        create_index=probe,
        load=load,
        load_for_update=f"{load}{row_lock}",
        load_entry=f"SELECT session_data, {epoch} FROM {t} WHERE session_key = $1 AND expire_date > {at(2)}",
        exists=f"SELECT 1 FROM {t} WHERE session_key = $1 AND expire_date > {at(2)}",
        save=upsert,
        update=f"UPDATE {t} SET session_data = $2, expire_date = {at(3)} WHERE session_key = $1",
        create=f"{upsert} WHERE {t}.expire_date <= {at(4)}",
        delete=f"DELETE FROM {t} WHERE session_key = $1",
        clear_expired=f"DELETE FROM {t} WHERE expire_date <= {at(1)}",
    )
    if dialect != "sqlite":
        return sql
    return Statements(**{name: text.replace("$", "?") for name, text in vars(sql).items()})


def _set_statements(driver: Driver, sql: Statements) -> None:
    from asession.backends._sqlite import SQLiteDriver

    if isinstance(driver, SQLiteDriver):
        driver.sql = sql
        return
    from asession.backends._postgres import PostgresDriver

    if not isinstance(driver, PostgresDriver):  # pragma: no cover - DatabaseBackend builds one of the two
        raise ImproperlyConfigured(f"DjangoDatabaseBackend cannot use the driver {driver!r}.")
    driver.sql = sql


def _missing_table(exc: BaseException | None) -> bool:
    """Whether the driver's ``open`` failed on the probe of a missing table or column."""
    if exc is None:
        return False
    text = str(exc)
    return (
        type(exc).__name__ in ("UndefinedTableError", "UndefinedColumnError")
        or "no such table" in text
        or "no such column" in text
    )


def _b62_encode(number: int) -> str:
    """Django's ``signing.b62_encode``."""
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    number = abs(number)
    digits = ""
    while number > 0:
        number, remainder = divmod(number, 62)
        digits = _BASE62[remainder] + digits
    return sign + digits


def _as_bytes(key: str | bytes) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else key


def _check_secret(key: object, name: str) -> None:
    if not isinstance(key, (str, bytes)):
        raise ImproperlyConfigured(
            f"DjangoDatabaseBackend's {name} must be a str or bytes (Django's SECRET_KEY), not {type(key).__name__}."
        )
    if not key:
        raise ImproperlyConfigured(f"DjangoDatabaseBackend's {name} is empty; pass the Django project's SECRET_KEY.")
