"""SignedCookieBackend's quirks: the key is the signed payload, so signing, rotation, expiry and size are its own."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from asession import Session, SessionConfig
from asession.backends.signed_cookies import MAX_PAYLOAD_SIZE, MIN_SECRET_KEY_LENGTH, SignedCookieBackend
from asession.exceptions import CreateError, ImproperlyConfigured, SessionError
from tests.conftest import SECRET, Clock

OLD_SECRET = "an-older-secret-key-that-is-long-enough-000000"
DAY = 86400


@pytest.fixture
async def signed() -> AsyncIterator[SignedCookieBackend]:
    backend = SignedCookieBackend(SECRET)
    async with backend:
        yield backend


def security_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "asession.security" and r.levelno == level]


async def test_key_is_the_signed_payload_not_a_stored_record(signed: SignedCookieBackend) -> None:
    """store() returns a URL-safe signed payload that loads back by itself, and never hashes it."""
    key = await signed.create({"cat": "dog"}, DAY)
    assert signed.hashes_keys is False
    assert signed.accepts_key(key)
    assert set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    async with SignedCookieBackend(SECRET) as other_process:
        assert await other_process.load(key) == {"cat": "dog"}


async def test_every_store_returns_a_different_key(signed: SignedCookieBackend, clock: Clock) -> None:
    """Two stores of the same data at the same instant give distinct payloads, so cycle_key changes the key."""
    first = await signed.create({"a": 1}, DAY)
    second = await signed.create({"a": 1}, DAY)
    assert first != second
    assert await signed.load(first) == await signed.load(second) == {"a": 1}


async def test_tampered_payload_loads_empty_and_logs_security_warning(
    signed: SignedCookieBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Changing any character of the payload breaks the signature: None, and a warning on asession.security."""
    key = await signed.create({"user": 1}, DAY)
    index = len(key) // 3
    tampered = key[:index] + ("A" if key[index] != "A" else "B") + key[index + 1 :]
    with caplog.at_level(logging.DEBUG, logger="asession.security"):
        assert await signed.load(tampered) is None
        assert not await signed.exists(tampered)
    assert security_records(caplog, logging.WARNING)
    assert "bad signature" in security_records(caplog, logging.WARNING)[0].getMessage()


async def test_every_other_last_signature_character_is_refused(signed: SignedCookieBackend) -> None:
    """The signature's last character has 2 bits base64 decoders ignore: only its canonical spelling loads.

    Otherwise four cookies would verify as one session, and a "tampered" last character would still load.
    """
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    key = await signed.create({"user": 1}, DAY)
    position = alphabet.index(key[-1])
    assert position % 4 == 0
    for spare_bits in (1, 2, 3):
        variant = key[:-1] + alphabet[position + spare_bits]
        assert not signed.accepts_key(variant)
        assert await signed.load(variant) is None
    assert await signed.load(key) == {"user": 1}


async def test_payload_signed_with_unknown_key_loads_empty(
    signed: SignedCookieBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A payload signed with a secret or salt this backend does not know is foreign: None, logged."""
    async with SignedCookieBackend(OLD_SECRET) as other_secret, SignedCookieBackend(SECRET, salt="other") as other_salt:
        foreign = [await other_secret.create({"a": 1}, DAY), await other_salt.create({"a": 1}, DAY)]
    with caplog.at_level(logging.WARNING, logger="asession.security"):
        for payload in foreign:
            assert await signed.load(payload) is None
    assert len(security_records(caplog, logging.WARNING)) == 2


async def test_validly_signed_malformed_payload_loads_empty(
    signed: SignedCookieBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A payload with a good signature but not asession's layout loads as None and is logged."""
    import itsdangerous

    class Raw:
        dumps = staticmethod(str)
        loads = staticmethod(str)

    forger = itsdangerous.URLSafeSerializer(
        SECRET, salt="asession.signed_cookies", serializer=Raw, signer_kwargs={"digest_method": hashlib.sha256}
    )
    odd = [forger.dumps("12345"), forger.dumps("no-expiry:nonce:{}"), forger.dumps("99999999999:nonce:[1, 2]")]
    with caplog.at_level(logging.WARNING, logger="asession.security"):
        for payload in odd:
            assert await signed.load(payload) is None
    assert len(security_records(caplog, logging.WARNING)) == 3


async def test_fallback_key_verifies_old_cookies_and_new_ones_use_the_new_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After rotation a cookie signed with the old secret still loads; new cookies are signed with the new one."""
    async with SignedCookieBackend(OLD_SECRET) as before:
        old_cookie = await before.create({"user": 7}, DAY)
        async with SignedCookieBackend(SECRET, fallback_keys=[OLD_SECRET]) as rotated:
            assert await rotated.load(old_cookie) == {"user": 7}
            new_cookie = await rotated.create({"user": 7}, DAY)
            with caplog.at_level(logging.WARNING, logger="asession.security"):
                assert await before.load(new_cookie) is None
        async with SignedCookieBackend(SECRET) as retired:
            assert await retired.load(old_cookie) is None
            assert await retired.load(new_cookie) == {"user": 7}


async def test_custom_expiry_is_honoured(signed: SignedCookieBackend, clock: Clock) -> None:
    """set_expiry(60) makes the cookie dead after 60 seconds, though the configured age is two weeks."""
    session = Session(signed)
    session["a"] = 1
    session.set_expiry(60)
    await session.save()
    key = session.session_key
    assert key is not None
    clock.advance(59)
    assert await signed.load(key) == {"a": 1, "_session_expiry": 60}
    clock.advance(2)
    assert await signed.load(key) is None


async def test_fixed_expiry_date_is_honoured(signed: SignedCookieBackend, clock: Clock) -> None:
    """set_expiry(timedelta) ends the session at that moment."""
    session = Session(signed, config=SessionConfig(max_age=DAY))
    session["a"] = 1
    session.set_expiry(timedelta(minutes=5))
    await session.save()
    assert session.session_key is not None
    clock.advance(299)
    assert await signed.exists(session.session_key)
    clock.advance(2)
    assert not await signed.exists(session.session_key)


async def test_expired_cookie_loads_empty_logged_at_debug_only(
    signed: SignedCookieBackend, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """An expired payload loads as None and is logged at DEBUG, not as a warning: expiry is normal."""
    key = await signed.create({"a": 1}, 10)
    clock.advance(11)
    with caplog.at_level(logging.DEBUG, logger="asession.security"):
        assert await signed.load(key) is None
    assert security_records(caplog, logging.DEBUG)
    assert not security_records(caplog, logging.WARNING)


async def test_repetitive_data_is_compressed(signed: SignedCookieBackend) -> None:
    """Data that zlib shrinks is stored compressed (a leading '.'), small random data is not."""
    repetitive = {"cart": ["the same item"] * 200}
    key = await signed.create(repetitive, DAY)
    assert key.startswith(".")
    assert len(key) < len(str(repetitive)) // 4
    assert await signed.load(key) == repetitive
    small = await signed.create({"n": 1}, DAY)
    assert not small.startswith(".")


async def test_oversized_cookie_raises_session_error_naming_the_size(signed: SignedCookieBackend) -> None:
    """Incompressible data that would make a cookie over 4096 bytes raises SessionError with the size."""
    big = {"noise": secrets.token_urlsafe(3500)}
    with pytest.raises(SessionError, match=r"would be (\d+) bytes, over the 3896 bytes") as info:
        await signed.create(big, DAY)
    size = int(str(info.value).split("would be ", 1)[1].split(" ", 1)[0])
    assert size > MAX_PAYLOAD_SIZE
    session = Session(signed)
    session.update(big)
    with pytest.raises(SessionError, match="bytes"):
        await session.save()
    assert session.session_key is None


async def test_unserializable_data_raises_type_error_naming_the_key(signed: SignedCookieBackend) -> None:
    """store() refuses data JSON cannot carry, naming the key, like every backend."""
    with pytest.raises(TypeError, match="'when'"):
        await signed.create({"when": {1, 2}}, DAY)


async def test_save_delete_and_clear_expired_store_nothing(signed: SignedCookieBackend) -> None:
    """save() and delete() leave a payload valid (there is no server copy) and clear_expired() returns 0."""
    key = await signed.create({"a": 1}, DAY)
    await signed.save(key, {"a": 2}, DAY)
    await signed.delete(key)
    assert await signed.load(key) == {"a": 1}
    assert await signed.clear_expired() == 0


async def test_save_must_create_refuses_a_valid_payload(signed: SignedCookieBackend) -> None:
    """save(must_create=True) on a live payload raises CreateError, as for a stored key."""
    key = await signed.create({"a": 1}, DAY)
    with pytest.raises(CreateError):
        await signed.save(key, {"a": 1}, DAY, must_create=True)


@pytest.mark.parametrize(
    "key",
    [None, 42, b"bytes", "", "1", "a" * 44, "has space" * 9, "semi;colon" * 9, "new\nline" * 9, "é" * 50, "a" * 4097],
    ids=["none", "int", "bytes", "empty", "one", "too-short", "space", "semicolon", "newline", "unicode", "too-long"],
)
async def test_foreign_keys_are_not_accepted(signed: SignedCookieBackend, key: object) -> None:
    """Anything that is not a cookie-safe URL-safe string of at most 4096 characters is not ours."""
    assert not signed.accepts_key(key)
    assert await signed.load(key) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("secret", ["", "short", "x" * (MIN_SECRET_KEY_LENGTH - 1), b""])
def test_short_or_empty_secret_is_rejected(secret: str | bytes) -> None:
    """An empty or too-short secret key raises ImproperlyConfigured at construction."""
    with pytest.raises(ImproperlyConfigured, match="secret_key"):
        SignedCookieBackend(secret)


def test_bad_fallback_keys_are_rejected() -> None:
    """A single string, an empty key or a non-text key as fallback raises ImproperlyConfigured."""
    for fallbacks in ("a-single-string-instead-of-a-list", [""], [42]):
        with pytest.raises(ImproperlyConfigured, match="fallback_keys"):
            SignedCookieBackend(SECRET, fallbacks)  # type: ignore[arg-type]


def test_long_enough_secret_is_accepted() -> None:
    """A secret of exactly the minimum length, as str or bytes, is accepted."""
    SignedCookieBackend("x" * MIN_SECRET_KEY_LENGTH)
    backend = SignedCookieBackend(b"y" * MIN_SECRET_KEY_LENGTH, fallback_keys=[b"old"])
    assert backend.salt == "asession.signed_cookies"


def test_missing_itsdangerous_raises_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without itsdangerous the class imports but construction says which extra to install."""
    monkeypatch.setitem(sys.modules, "itsdangerous", None)
    with pytest.raises(ImproperlyConfigured, match=r"pip install 'asession\[cookies\]'"):
        SignedCookieBackend(SECRET)


def _itsdangerous_serializer(secret: str) -> object:
    """itsdangerous as earlier versions of this backend signed with it: the format the cookies keep."""
    import itsdangerous

    class Raw:
        dumps = staticmethod(str)
        loads = staticmethod(str)

    return itsdangerous.URLSafeSerializer(
        secret,
        salt="asession.signed_cookies",
        serializer=Raw,
        signer_kwargs={"digest_method": hashlib.sha256},
    )


async def test_cookies_keep_itsdangerous_format_both_ways(signed: SignedCookieBackend) -> None:
    """Cookies signed now verify with itsdangerous, and cookies itsdangerous signed (earlier versions) load."""
    reference: Any = _itsdangerous_serializer(SECRET)
    small, repetitive = {"n": 1}, {"cart": ["the same item"] * 200}
    for data in (small, repetitive):
        text = reference.loads(await signed.create(data, DAY))
        assert text.endswith(json.dumps(data, separators=(",", ":")))
        earlier = reference.dumps(f"{int(time.time()) + DAY}:nonce:{json.dumps(data)}")
        assert earlier.startswith(".") is (data is repetitive)
        assert await signed.load(earlier) == data
    # An itsdangerous cookie of the old secret: loads through fallback_keys, as a rotation needs.
    cookie = reference.dumps(f"{int(time.time()) + DAY}:nonce:{{}}")
    old_cookie = _itsdangerous_serializer(OLD_SECRET).dumps(f"{int(time.time()) + DAY}:nonce:{{}}")  # type: ignore[attr-defined]
    async with SignedCookieBackend(SECRET, fallback_keys=[OLD_SECRET]) as rotated:
        assert await rotated.load(old_cookie) == await rotated.load(cookie) == {}
    assert await signed.load(old_cookie) is None


async def test_an_inflating_signed_payload_is_refused(signed: SignedCookieBackend) -> None:
    """A validly signed zlib payload that would inflate past 256 KiB is not taken in."""
    import zlib

    bomb = zlib.compress(b"9999999999:nonce:" + b"{" + b" " * 1_000_000 + b"}", 9)
    body = b"." + base64.urlsafe_b64encode(bomb).rstrip(b"=")
    signature = signed._signers[0].digest(body)
    cookie = (body + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()
    assert signed.accepts_key(cookie)
    assert await signed.load(cookie) is None
