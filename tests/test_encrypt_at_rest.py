"""encrypt_at_rest=True: what a dump of each store shows, tampering, old plaintext sessions, the primitives.

The contract, update and concurrency suites run on every encrypted backend too (``ENCRYPTED`` in
tests/conftest.py); this file checks what only encryption promises.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import sys
from typing import Any

import pytest

from asession import Session, keys, serializers, users
from asession.backends.base import SessionBackend
from asession.backends.memory import MemoryBackend
from asession.encryption import NONCE_SIZE, TAG_SIZE, HmacKey, cipher_for, hkdf, is_field
from asession.exceptions import ImproperlyConfigured, SessionError
from tests.conftest import ENCRYPTED
from tests.test_security import dump_store, memcached_get

DAY = 86400
encrypted_backends = pytest.mark.parametrize("server_backend", ENCRYPTED, indirect=True)


def security_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "asession.security" and r.levelno == logging.WARNING]


async def stored_items(backend: SessionBackend, key: str) -> dict[str, Any]:
    """The mapping the store holds for ``key``, as it holds it (fields and ciphertexts)."""
    raw = await backend._load(keys.storage_key(key))
    assert raw is not None
    return serializers.loads(raw)


async def store_items(backend: SessionBackend, key: str, items: dict[str, Any]) -> None:
    """Write ``items`` as they are under ``key``, past any encryption: what someone with write access does."""
    await backend._save(keys.storage_key(key), serializers.dumps(items), DAY, False)


# -- the primitives -------------------------------------------------------------------------------------------


def test_hmac_and_hkdf_match_the_reference_implementations() -> None:
    """The prepared-state HMAC equals the hmac module; HKDF equals cryptography's and RFC 5869's test case 1."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    for key in (b"", b"k", os.urandom(32), os.urandom(64), os.urandom(65), os.urandom(200)):
        for message in (b"", b"cart", os.urandom(1000)):
            assert HmacKey(key).digest(message) == hmac.digest(key, message, "sha256")
    for salt in (b"", b"asession", os.urandom(80)):
        for length in (1, 32, 64, 100):
            material, info = os.urandom(40), os.urandom(10)
            expected = HKDF(hashes.SHA256(), length, salt or None, info).derive(material)
            assert hkdf(material, salt=salt, info=info, length=length) == expected
    okm = hkdf(
        bytes.fromhex("0b" * 22),
        salt=bytes.fromhex("000102030405060708090a0b0c"),
        info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        length=42,
    )
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    with pytest.raises(ValueError):
        hkdf(b"x", salt=b"", info=b"", length=255 * 32 + 1)


def test_fields_are_deterministic_per_session_and_one_way() -> None:
    """One name has one field within a session (so merges address it), another in every other session."""
    first, second = keys.new_key(), keys.new_key()
    assert cipher_for(first).field("cart") == cipher_for(first).field("cart")
    assert cipher_for(first).field("cart") != cipher_for(second).field("cart")
    assert cipher_for(first).field("cart") != cipher_for(first).field("cars")
    assert is_field(cipher_for(first).field("cart"))
    assert "cart" not in cipher_for(first).field("cart")


def test_off_by_default_and_refused_without_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MemoryBackend().encrypt_at_rest is False
    assert MemoryBackend(encrypt_at_rest=True).encrypt_at_rest is True
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ImproperlyConfigured, match=r"pip install 'asession\[crypto\]'"):
        MemoryBackend(encrypt_at_rest=True)


# -- what a dump shows ------------------------------------------------------------------------------------------


@encrypted_backends
async def test_a_dump_shows_no_data_no_names_and_no_key(
    server_backend: SessionBackend, request: pytest.FixtureRequest
) -> None:
    """Values and key names set by a create and by a merge never reach the store in plaintext, nor the key."""
    markers = [f"marker-{os.urandom(8).hex()}" for _ in range(3)]
    session = Session(server_backend)
    session["secret_name_one"] = markers[0]
    await session.save()
    key = session.session_key
    assert key is not None
    again = Session(server_backend, key)
    await again.load()
    again["secret_name_two"] = {"nested": markers[1]}
    again["secret_name_one"] = [markers[2]]
    await again.save()
    expected = {"secret_name_one": [markers[2]], "secret_name_two": {"nested": markers[1]}}
    assert await server_backend.load(key) == expected

    async def dump() -> bytes:
        if request.node.callspec.params["server_backend"] != "memcached_encrypted_backend":
            return await dump_store(request, server_backend)
        # memcached cannot list its keys: the entry under the storage key, and nothing under the key itself.
        from asession.backends.cache import KEY_PREFIX

        url = request.getfixturevalue("memcached_url")
        assert await memcached_get(url, key) is None
        assert await memcached_get(url, KEY_PREFIX + key) is None
        return (
            keys.storage_key(key).encode()
            + b"\n"
            + (await memcached_get(url, KEY_PREFIX + keys.storage_key(key)) or b"")
        )

    stored = await dump()
    assert keys.storage_key(key).encode() in stored
    for hidden in (*markers, "secret_name", key, key.upper()):
        assert hidden.encode() not in stored
    # The same session stored without encryption shows its data in the same dump: the dump is not blind.
    await store_items(server_backend, key, {"secret_name_one": markers[0]})
    assert markers[0].encode() in await dump()


@encrypted_backends
async def test_index_metadata_and_user_id_stay_readable(server_backend: SessionBackend) -> None:
    """user_sessions() reads the metadata and the user id without any cookie: those two items stay plaintext."""
    session = Session(server_backend)
    session["cart"] = ["secret"]
    await session.save()
    await session.login("alice")
    key = session.session_key
    assert key is not None
    stored = await stored_items(server_backend, key)
    assert stored[users.USER_ID_KEY] == "alice"
    assert users.decode_meta(stored[users.META_KEY]) is not None
    assert [name for name in stored if name not in (users.USER_ID_KEY, users.META_KEY)] == [
        cipher_for(key).field("cart")
    ]
    [info] = await server_backend.user_sessions("alice")
    assert info.id == server_backend.handle(key, "alice")
    assert await server_backend.revoke_user_sessions("alice") == 1
    assert await server_backend.load(key) is None


# -- tampering --------------------------------------------------------------------------------------------------


@encrypted_backends
@pytest.mark.parametrize("where", ["field", "nonce", "ciphertext", "tag"])
async def test_a_flipped_bit_loads_empty_and_is_logged(
    server_backend: SessionBackend, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    key = keys.new_key()
    await server_backend.save(key, {"a": "secret", "b": 2}, DAY)
    stored = await stored_items(server_backend, key)
    field = cipher_for(key).field("a")
    blob = bytearray(base64.b64decode(stored[field]))
    if where == "field":
        stored[field[:-1] + ("A" if field[-1] != "A" else "B")] = stored.pop(field)
    else:
        position = {"nonce": 0, "ciphertext": NONCE_SIZE + 1, "tag": len(blob) - TAG_SIZE // 2}[where]
        blob[position] ^= 0x10
        stored[field] = base64.b64encode(bytes(blob)).decode()
    await store_items(server_backend, key, stored)
    with caplog.at_level(logging.WARNING, logger="asession.security"):
        assert await server_backend.load(key) is None
    assert "does not authenticate" in security_warnings(caplog)[0]


@encrypted_backends
async def test_ciphertexts_moved_between_items_or_sessions_do_not_open(
    server_backend: SessionBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Each ciphertext is bound to its field and its session: swapped or copied, it loads empty (logged)."""
    first, second = keys.new_key(), keys.new_key()
    await server_backend.save(first, {"role": "admin", "name": "eve"}, DAY)
    await server_backend.save(second, {"role": "guest"}, DAY)
    stored = await stored_items(server_backend, first)
    cipher = cipher_for(first)
    role, name = cipher.field("role"), cipher.field("name")
    stored[role], stored[name] = stored[name], stored[role]
    await store_items(server_backend, first, stored)
    copied = await stored_items(server_backend, second)
    await store_items(server_backend, first, copied)
    with caplog.at_level(logging.WARNING, logger="asession.security"):
        assert await server_backend.load(first) is None
        await store_items(server_backend, first, stored)
        assert await server_backend.load(first) is None
        await store_items(server_backend, first, {cipher.field("x"): "not base64!"})
        assert await server_backend.load(first) is None
        await store_items(server_backend, first, {cipher.field("x"): 42})
        assert await server_backend.load(first) is None
    assert len(security_warnings(caplog)) == 4
    assert await server_backend.load(second) == {"role": "guest"}


# -- sessions stored before encryption was turned on --------------------------------------------------------------


@encrypted_backends
async def test_a_plaintext_session_loads_and_its_next_save_encrypts_it(server_backend: SessionBackend) -> None:
    """An older plaintext session loads; the next save (a merge) encrypts every item it kept, atomically."""
    key = keys.new_key()
    meta = users.encode_meta(users.new_meta(1_700_000_000))
    plaintext = {"kept": "plain-marker-1", "dropped": "plain-marker-2", "changed": 1, users.META_KEY: meta}
    await store_items(server_backend, key, plaintext)
    session = Session(server_backend, key)
    await session.load()
    assert dict(session) == {"kept": "plain-marker-1", "dropped": "plain-marker-2", "changed": 1}
    del session["dropped"]
    session["changed"] = 2
    await session.save()
    assert session.session_key == key
    stored = await stored_items(server_backend, key)
    assert not {"kept", "dropped", "changed"} & set(stored)
    assert all(is_field(name) or name == users.META_KEY for name in stored)
    assert "plain-marker" not in json.dumps(stored)
    loaded = await server_backend.load(key)
    assert loaded is not None
    assert users.decode_meta(loaded.pop(users.META_KEY)) is not None  # plaintext, refreshed by the save
    assert loaded == {"kept": "plain-marker-1", "changed": 2}


@encrypted_backends
async def test_a_touch_or_a_whole_save_encrypts_a_plaintext_session_too(server_backend: SessionBackend) -> None:
    """Any save after the load upgrades: a merge of nothing but the metadata, or a replacing save."""
    touched, replaced = keys.new_key(), keys.new_key()
    await store_items(server_backend, touched, {"a": "plain"})
    await store_items(server_backend, replaced, {"a": "plain"})
    assert await server_backend.load(touched) == {"a": "plain"}
    await server_backend.update(touched, {users.META_KEY: "1 1 1"}, (), DAY)
    assert set(await stored_items(server_backend, touched)) == {cipher_for(touched).field("a"), users.META_KEY}
    assert await server_backend.load(replaced) == {"a": "plain"}
    await server_backend.save(replaced, {"b": 1}, DAY)
    assert await server_backend.load(replaced) == {"b": 1}
    assert list(await stored_items(server_backend, replaced)) == [cipher_for(replaced).field("b")]


@encrypted_backends
async def test_a_half_encrypted_session_never_brings_back_a_plaintext_item(server_backend: SessionBackend) -> None:
    """Without the upgrade (its mark forgotten), merges still read right: the encrypted item wins, a removal
    removes both spellings."""
    key = keys.new_key()
    await store_items(server_backend, key, {"cart": "old", "other": "plain"})
    await server_backend.update(key, {"cart": "new"}, (), DAY)  # never loaded here: no upgrade
    assert "cart" in await stored_items(server_backend, key)
    assert await server_backend.load(key) == {"cart": "new", "other": "plain"}
    server_backend._plaintext_loaded.clear()
    await server_backend.update(key, {}, ("cart",), DAY)
    assert await server_backend.load(key) == {"other": "plain"}
    await server_backend.update(key, {"x": 1}, (), DAY)  # loaded just above: this one upgrades
    assert await server_backend.load(key) == {"other": "plain", "x": 1}
    assert all(is_field(name) for name in await stored_items(server_backend, key))


# -- encoding -----------------------------------------------------------------------------------------------------


@encrypted_backends
async def test_bad_values_raise_type_error_naming_the_key_and_write_nothing(server_backend: SessionBackend) -> None:
    key = keys.new_key()
    with pytest.raises(TypeError, match="'when'"):
        await server_backend.save(key, {"ok": 1, "when": {1, 2}}, DAY)
    assert await server_backend.load(key) is None
    int_key: dict[Any, Any] = {"ok": 1, 2: "two"}  # JSON spells the key "2"
    await server_backend.save(key, int_key, DAY)
    assert await server_backend.load(key) == {"ok": 1, "2": "two"}
    with pytest.raises(TypeError, match="'when'"):
        await server_backend.update(key, {"ok": 2, "when": object()}, (), DAY)
    assert await server_backend.load(key) == {"ok": 1, "2": "two"}


async def test_fresh_nonces_and_max_size_on_the_encrypted_form() -> None:
    """Saving the same data twice gives new ciphertexts under the same field; max_size bounds what is stored."""
    async with MemoryBackend(encrypt_at_rest=True) as backend:
        key = keys.new_key()
        await backend.save(key, {"a": 1}, DAY)
        first = await stored_items(backend, key)
        await backend.save(key, {"a": 1}, DAY)
        second = await stored_items(backend, key)
        assert first.keys() == second.keys()
        assert first != second
    value = "x" * 100
    assert len(serializers.dumps({"a": value})) < 120
    async with MemoryBackend(max_size=120, encrypt_at_rest=True) as small:
        with pytest.raises(SessionError, match="over the limit of 120 bytes"):
            await small.save(keys.new_key(), {"a": value}, DAY)


def test_the_data_key_is_not_derived_like_the_storage_key() -> None:
    """The store knows sha256(key); the AES and name keys come from HKDF with their own label."""
    key = keys.new_key()
    assert hashlib.sha256(key.encode()).hexdigest() == keys.storage_key(key)
    material = hkdf(key.encode(), salt=b"asession.encryption", info=b"", length=64)
    assert keys.storage_key(key) not in material.hex()
    assert cipher_for(key).field("a") != cipher_for(key + "0").field("a")
