"""EncryptedCookieBackend: the session in the cookie, AES-256-GCM; what the visitor sees, tampering, rotation, size."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import zlib
from collections.abc import AsyncIterator

import pytest

from asession import Session
from asession.backends._cookies import MAX_PAYLOAD_SIZE, MIN_SECRET_KEY_LENGTH
from asession.backends.encrypted_cookies import EncryptedCookieBackend
from asession.backends.signed_cookies import SignedCookieBackend
from asession.encryption import COOKIE_VERSION, NONCE_SIZE, TAG_SIZE
from asession.exceptions import CreateError, ImproperlyConfigured, SessionError
from tests.conftest import SECRET, Clock

OLD_SECRET = "an-older-secret-key-that-is-long-enough-000000"
DAY = 86400
MARKER = "marker-4c1d-visible-to-nobody"


@pytest.fixture
async def encrypted() -> AsyncIterator[EncryptedCookieBackend]:
    async with EncryptedCookieBackend(SECRET) as backend:
        yield backend


def security_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "asession.security" and r.levelno == logging.WARNING]


def decode(cookie: str) -> bytes:
    return base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))


def encode(blob: bytes) -> str:
    return base64.urlsafe_b64encode(blob).rstrip(b"=").decode()


def incompressible(characters: int) -> str:
    """Random text zlib cannot shrink much: base64 of os.urandom."""
    return base64.b64encode(os.urandom(characters)).decode()[:characters]


async def test_cookie_hides_the_data_and_loads_in_another_process(encrypted: EncryptedCookieBackend) -> None:
    """The cookie is URL-safe base64 of version, nonce, ciphertext and tag: no trace of the data, even decoded."""
    key = await encrypted.create({"secret": MARKER, "n": 1}, DAY)
    assert encrypted.accepts_key(key)
    assert set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    blob = decode(key)
    assert blob[:1] == COOKIE_VERSION
    for shown in (key.encode(), blob):
        assert MARKER.encode() not in shown
        assert b"secret" not in shown
    # The same for a signed cookie, whose data any visitor reads: what this backend exists for.
    async with SignedCookieBackend(SECRET) as signed:
        assert MARKER.encode() in decode((await signed.create({"secret": MARKER}, DAY)).split(".")[0])
    async with EncryptedCookieBackend(SECRET) as other_process:
        assert await other_process.load(key) == {"secret": MARKER, "n": 1}


async def test_every_create_makes_a_new_cookie(encrypted: EncryptedCookieBackend, clock: Clock) -> None:
    """A random nonce per save: the same data at the same instant gives distinct cookies, all valid."""
    cookies = {await encrypted.create({"a": 1}, DAY) for _ in range(20)}
    assert len(cookies) == 20
    assert len({decode(cookie)[1 : 1 + NONCE_SIZE] for cookie in cookies}) == 20
    for cookie in cookies:
        assert await encrypted.load(cookie) == {"a": 1}


@pytest.mark.parametrize("where", ["version", "nonce", "ciphertext", "tag"])
async def test_a_flipped_bit_anywhere_loads_empty_and_is_logged(
    encrypted: EncryptedCookieBackend, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """Each bit of the version byte, the nonce, the ciphertext and the tag is authenticated."""
    key = await encrypted.create({"user": 1, "secret": MARKER}, DAY)
    blob = decode(key)
    start, end = {
        "version": (0, 1),
        "nonce": (1, 1 + NONCE_SIZE),
        "ciphertext": (1 + NONCE_SIZE, len(blob) - TAG_SIZE),
        "tag": (len(blob) - TAG_SIZE, len(blob)),
    }[where]
    positions = sorted({start, (start + end) // 2, end - 1})
    with caplog.at_level(logging.WARNING, logger="asession.security"):
        for position in positions:
            for bit in (0, 7):
                tampered = bytearray(blob)
                tampered[position] ^= 1 << bit
                cookie = encode(bytes(tampered))
                assert encrypted.accepts_key(cookie)
                assert await encrypted.load(cookie) is None
                assert not await encrypted.exists(cookie)
    assert len(security_warnings(caplog)) == 2 * 2 * len(positions)
    assert "does not open" in security_warnings(caplog)[0]
    assert await encrypted.load(key) == {"user": 1, "secret": MARKER}


async def test_truncated_and_non_base64_cookies_load_empty_without_raising(
    encrypted: EncryptedCookieBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Cut bytes fail authentication (logged); cut or foreign characters are not even taken for a cookie."""
    key = await encrypted.create({"user": 1}, DAY)
    blob = decode(key)
    with caplog.at_level(logging.WARNING, logger="asession.security"):
        for cut in (blob[:-1], blob[:-2], blob[:-TAG_SIZE], blob[1:]):
            assert encrypted.accepts_key(encode(cut))
            assert await encrypted.load(encode(cut)) is None
    assert len(security_warnings(caplog)) == 4
    for mangled in (key[:-1], key[:-2], key[:-3], key[: len(key) // 2], key + "=", key.replace(key[5], "."), "é" + key):
        assert await encrypted.load(mangled) is None


async def test_cookies_of_another_secret_or_salt_load_empty_and_are_logged(
    encrypted: EncryptedCookieBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Another app with the same secret but another salt, or another secret: its cookies never open here."""
    async with (
        EncryptedCookieBackend(OLD_SECRET) as other_secret,
        EncryptedCookieBackend(SECRET, salt="another.app") as other_salt,
    ):
        foreign = [await other_secret.create({"a": 1}, DAY), await other_salt.create({"a": 1}, DAY)]
        assert await other_salt.load(foreign[1]) == {"a": 1}
    with caplog.at_level(logging.WARNING, logger="asession.security"):
        for cookie in foreign:
            assert await encrypted.load(cookie) is None
    assert len(security_warnings(caplog)) == 2


async def test_validly_sealed_malformed_plaintexts_load_empty_and_are_logged(
    encrypted: EncryptedCookieBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Authentic ciphertext that is not asession's layout (no expiry, not an object, not UTF-8) loads empty."""
    odd = [b"12345", b"no-expiry:{}", b"99999999999:[1, 2]", b"99999999999:\xff{}", b"99999999999:z not zlib"]
    with caplog.at_level(logging.WARNING, logger="asession.security"):
        for plaintext in odd:
            assert await encrypted.load(encode(encrypted._cipher.seal(plaintext))) is None
    assert len(security_warnings(caplog)) == len(odd)


async def test_a_sealed_decompression_bomb_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """A compressed plaintext inflates to max_size + 1 bytes at most, then is refused as oversized."""
    async with EncryptedCookieBackend(SECRET, max_size=10_000, compress=True) as backend:
        bomb = b"99999999999:z" + zlib.compress(b'{"a":"' + b"x" * 1_000_000 + b'"}', 9)
        cookie = encode(backend._cipher.seal(bomb))
        assert len(cookie) < MAX_PAYLOAD_SIZE
        with caplog.at_level(logging.WARNING, logger="asession.security"):
            assert await backend.load(cookie) is None
    assert "exceeds max_size" in security_warnings(caplog)[0]


async def test_rotation_with_fallback_keys(caplog: pytest.LogCaptureFixture) -> None:
    """After rotation an old cookie still opens; new cookies use the new key only; a retired key opens nothing."""
    async with EncryptedCookieBackend(OLD_SECRET) as before:
        old_cookie = await before.create({"user": 7}, DAY)
        async with EncryptedCookieBackend(SECRET, fallback_keys=[OLD_SECRET, "an-even-older-one"]) as rotated:
            assert await rotated.load(old_cookie) == {"user": 7}
            new_cookie = await rotated.create({"user": 7}, DAY)
            with caplog.at_level(logging.WARNING, logger="asession.security"):
                assert await before.load(new_cookie) is None
        async with EncryptedCookieBackend(SECRET) as retired:
            assert await retired.load(old_cookie) is None
            assert await retired.load(new_cookie) == {"user": 7}


async def test_expiry_travels_authenticated_inside_the_cookie(
    encrypted: EncryptedCookieBackend, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """set_expiry(60) ends the cookie after 60 s; an expired cookie is logged at DEBUG only."""
    session = Session(encrypted)
    session["a"] = 1
    session.set_expiry(60)
    await session.save()
    key = session.session_key
    assert key is not None
    clock.advance(59)
    assert await encrypted.load(key) == {"a": 1, "_session_expiry": 60}
    clock.advance(2)
    with caplog.at_level(logging.DEBUG, logger="asession.security"):
        assert await encrypted.load(key) is None
    assert not security_warnings(caplog)
    assert any("expired" in r.getMessage() for r in caplog.records if r.name == "asession.security")


async def test_size_guard_with_incompressible_data(encrypted: EncryptedCookieBackend) -> None:
    """Random data that would make the cookie longer than 3896 bytes raises SessionError naming the size."""
    fits = {"noise": incompressible(2700)}
    assert len(await encrypted.create(fits, DAY)) <= MAX_PAYLOAD_SIZE
    big = {"noise": incompressible(2950)}
    with pytest.raises(SessionError, match=r"would be (\d+) bytes, over the 3896 bytes") as info:
        await encrypted.create(big, DAY)
    assert int(str(info.value).split("would be ", 1)[1].split(" ", 1)[0]) > MAX_PAYLOAD_SIZE
    async with EncryptedCookieBackend(SECRET, compress=True) as compressing:
        # zlib takes base64 text down to about 3/4 (6 bits of 8): still too long.
        with pytest.raises(SessionError, match="bytes"):
            await compressing.create({"noise": incompressible(4000)}, DAY)
    session = Session(encrypted)
    session.update(big)
    with pytest.raises(SessionError, match="bytes"):
        await session.save()
    assert session.session_key is None


async def test_no_compression_by_default_so_length_says_only_the_size(encrypted: EncryptedCookieBackend) -> None:
    """Without compression, data of one JSON length makes cookies of one length, whatever it holds (CRIME)."""
    secret_token = incompressible(40)
    guesses = [
        {"token": secret_token, "search": secret_token[:20] + "x" * 20},
        {"token": secret_token, "search": "y" * 40},
    ]
    assert len({len(json.dumps(guess)) for guess in guesses}) == 1
    assert len({len(await encrypted.create(guess, DAY)) for guess in guesses}) == 1
    repetitive = {"cart": ["the same item"] * 100}
    assert len(await encrypted.create(repetitive, DAY)) > len(json.dumps(repetitive))


async def test_compression_is_an_opt_in_that_shrinks_repetitive_data() -> None:
    """compress=True stores repetitive data compressed (shorter than its JSON) and reads it back."""
    repetitive = {"cart": ["the same item"] * 100}
    async with EncryptedCookieBackend(SECRET, compress=True) as backend:
        key = await backend.create(repetitive, DAY)
        assert len(key) < len(json.dumps(repetitive)) // 4
        assert await backend.load(key) == repetitive
        small = await backend.create({"n": 1}, DAY)
        assert await backend.load(small) == {"n": 1}
    async with EncryptedCookieBackend(SECRET) as reader:  # the option is the writer's: any reader opens both
        assert await reader.load(key) == repetitive


async def test_unserializable_data_raises_type_error_naming_the_key(encrypted: EncryptedCookieBackend) -> None:
    with pytest.raises(TypeError, match="'when'"):
        await encrypted.create({"when": {1, 2}}, DAY)


async def test_save_delete_and_clear_expired_store_nothing(encrypted: EncryptedCookieBackend) -> None:
    """save() and delete() leave a cookie valid (no server copy); must_create refuses a live one."""
    key = await encrypted.create({"a": 1}, DAY)
    await encrypted.save(key, {"a": 2}, DAY)
    await encrypted.delete(key)
    assert await encrypted.load(key) == {"a": 1}
    assert await encrypted.clear_expired() == 0
    with pytest.raises(CreateError):
        await encrypted.save(key, {"a": 1}, DAY, must_create=True)
    with pytest.raises(NotImplementedError):
        await encrypted.user_sessions("u")


async def test_only_the_canonical_spelling_of_a_cookie_is_accepted(encrypted: EncryptedCookieBackend) -> None:
    """The bits base64 decoders ignore in the last character must be zero: one session, one cookie."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    seen = set()
    for extra in range(3):
        key = await encrypted.create({"pad": "x" * extra}, DAY)
        seen.add(len(key) % 4)
        position = alphabet.index(key[-1])
        for other in alphabet:
            variant = key[:-1] + other
            if other != key[-1] and decode(variant) == decode(key):
                assert not encrypted.accepts_key(variant)
                assert await encrypted.load(variant) is None
        assert alphabet[position] == key[-1]
    assert seen == {0, 2, 3}


@pytest.mark.parametrize(
    "key",
    [None, 42, b"bytes", "", "A" * 43, "has space" * 9, "semi;colon" * 9, "dot.ted" * 9, "é" * 50, "A" * 4097],
    ids=["none", "int", "bytes", "empty", "too-short", "space", "semicolon", "dot", "unicode", "too-long"],
)
async def test_foreign_keys_are_not_accepted(encrypted: EncryptedCookieBackend, key: object) -> None:
    assert not encrypted.accepts_key(key)
    assert await encrypted.load(key) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("secret", ["", "short", "x" * (MIN_SECRET_KEY_LENGTH - 1), b""])
def test_short_or_empty_secret_is_rejected(secret: str | bytes) -> None:
    with pytest.raises(ImproperlyConfigured, match="EncryptedCookieBackend's secret_key"):
        EncryptedCookieBackend(secret)


def test_bad_fallback_keys_are_rejected() -> None:
    for fallbacks in ("a-single-string-instead-of-a-list", [""], [42]):
        with pytest.raises(ImproperlyConfigured, match="fallback_keys"):
            EncryptedCookieBackend(SECRET, fallbacks)  # type: ignore[arg-type]
    assert EncryptedCookieBackend(b"y" * MIN_SECRET_KEY_LENGTH, fallback_keys=[b"old"]).salt == (
        "asession.encrypted_cookies"
    )


def test_missing_cryptography_raises_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without cryptography the class imports but construction names the crypto extra."""
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ImproperlyConfigured, match=r"pip install 'asession\[crypto\]'"):
        EncryptedCookieBackend(SECRET)
