"""SessionConfig defaults and the settings browsers would reject."""

from __future__ import annotations

import dataclasses

import pytest

from asession import ImproperlyConfigured, SessionConfig


def test_defaults_are_djangos() -> None:
    """The defaults match Django's settings."""
    config = SessionConfig()
    assert config.cookie_name == "session"
    assert config.max_age == 1209600
    assert config.expire_at_browser_close is False
    assert config.save_every_request is False
    assert config.cookie_domain is None
    assert config.cookie_path == "/"
    assert config.cookie_secure is False
    assert config.cookie_httponly is True
    assert config.cookie_samesite == "lax"
    assert config.cookie_partitioned is False


def test_config_is_frozen() -> None:
    """SessionConfig cannot be changed after construction."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        SessionConfig().max_age = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cookie_name": "__Host-id"}, "__Host-"),
        ({"cookie_name": "__Host-id", "cookie_secure": True, "cookie_domain": "example.com"}, "__Host-"),
        ({"cookie_name": "__Host-id", "cookie_secure": True, "cookie_path": "/app"}, "__Host-"),
        ({"cookie_name": "__Secure-id"}, "__Secure-"),
        ({"cookie_samesite": "none"}, "SameSite|samesite"),
        ({"cookie_partitioned": True}, "Partitioned|partitioned"),
        ({"cookie_name": "bad name"}, "not a valid cookie name"),
        ({"cookie_name": ""}, "not a valid cookie name"),
        ({"max_age": 0}, "positive"),
        ({"max_age": True}, "positive"),
        ({"cookie_samesite": "sometimes"}, "cookie_samesite"),
        ({"cookie_path": "relative"}, "absolute path"),
        ({"cookie_domain": "a;b"}, "not a valid domain"),
    ],
)
def test_invalid_settings_raise_improperly_configured(kwargs: dict[str, object], message: str) -> None:
    """Combinations browsers drop, and malformed values, fail at construction with a clear message."""
    with pytest.raises(ImproperlyConfigured, match=message):
        SessionConfig(**kwargs)  # type: ignore[arg-type]


def test_valid_prefixed_cookie_names_are_accepted() -> None:
    """__Host- and __Secure- names with the attributes they need are fine."""
    SessionConfig(cookie_name="__Host-session", cookie_secure=True)
    SessionConfig(cookie_name="__Secure-session", cookie_secure=True, cookie_domain="example.com")
    SessionConfig(cookie_samesite="none", cookie_secure=True, cookie_partitioned=True)
    SessionConfig(cookie_samesite=None)
