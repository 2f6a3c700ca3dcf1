"""Key generation and validation."""

from __future__ import annotations

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
    import hashlib

    assert keys.storage_key("abcdefgh") == hashlib.sha256(b"abcdefgh").hexdigest()
    assert len(keys.storage_key(keys.new_key())) == 64
