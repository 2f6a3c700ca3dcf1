"""Key generation and validation."""

from __future__ import annotations

import hashlib

import pytest

from asession import keys


def test_new_key_is_32_chars_of_the_valid_alphabet() -> None:
    """Generated keys are 32 characters of [a-z0-9] and differ each time."""
    generated = {keys.new_key() for _ in range(2000)}
    assert len(generated) == 2000
    for key in generated:
        assert len(key) == 32 and set(key) <= set(keys.VALID_KEY_CHARS)
        assert keys.is_valid_key(key)


def test_new_key_uses_the_whole_alphabet() -> None:
    """Every character of the alphabet appears, in every position class, over many keys."""
    seen = set("".join(keys.new_key() for _ in range(500)))
    assert seen == set(keys.VALID_KEY_CHARS)
    assert {key[-1] for key in (keys.new_key() for _ in range(2000))} == set(keys.VALID_KEY_CHARS)


@pytest.mark.parametrize(
    "key",
    [None, 12345678, b"abcdefgh", "", "abc", "abcdefg", "ABCDEFGH", "abcdefg!", "../abcdefgh", "abcd\x00efgh", "é" * 10]
    + ["a" * 65, "abcdefgh\n", " abcdefgh"],
)
def test_is_valid_key_rejects_malformed_keys(key: object) -> None:
    """Anything but 8 to 64 characters of [a-z0-9] is refused."""
    assert not keys.is_valid_key(key)


@pytest.mark.parametrize("key", ["abcdefgh", "a" * 64, "0123456789abcdef"])
def test_is_valid_key_accepts_well_formed_keys(key: str) -> None:
    """Keys from 8 to 64 characters of the alphabet are accepted."""
    assert keys.is_valid_key(key)


def test_storage_key_is_sha256_hex() -> None:
    """The storage key is the 64-character SHA-256 hex digest of the session key."""
    assert keys.storage_key("abcdefgh") == hashlib.sha256(b"abcdefgh").hexdigest()
    assert len(keys.storage_key(keys.new_key())) == 64


def test_hashing_a_malformed_key_does_not_make_it_valid() -> None:
    """storage_key() hashes whatever it is given; validity is decided by is_valid_key() alone."""
    for key in ("abc", "ABCDEFGHIJ", "a" * 65):
        assert keys.storage_key(key) == hashlib.sha256(key.encode()).hexdigest()
        assert not keys.is_valid_key(key)


def test_a_str_subclass_is_checked_by_its_characters_not_by_the_memo() -> None:
    """A str subclass that claims equality with a remembered key is still validated character by character."""
    remembered = keys.new_key()
    assert keys.is_valid_key(remembered)

    class Sneaky(str):
        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            return True

    impostor = Sneaky("../../etc/passwd")
    assert not keys.is_valid_key(impostor)
    assert keys.is_valid_key(Sneaky(remembered))
