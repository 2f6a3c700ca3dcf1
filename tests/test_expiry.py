"""Pure expiry arithmetic."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from asession import expiry

MOMENT = datetime(2030, 6, 1, 12, 0, tzinfo=timezone.utc)


def test_normalize_keeps_ints_and_none() -> None:
    """Seconds and None are stored as they are."""
    assert expiry.normalize(10) == 10
    assert expiry.normalize(0) == 0
    assert expiry.normalize(None) is None


def test_normalize_turns_timedelta_into_a_fixed_utc_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A timedelta becomes now() plus the delta, as ISO text."""
    monkeypatch.setattr(expiry, "now", lambda: MOMENT)
    assert expiry.normalize(timedelta(seconds=30)) == (MOMENT + timedelta(seconds=30)).isoformat()


def test_normalize_converts_aware_and_naive_datetimes_to_utc() -> None:
    """Aware datetimes convert to UTC; naive ones are read as local time."""
    other_zone = MOMENT.astimezone(timezone(timedelta(hours=5)))
    assert expiry.normalize(other_zone) == MOMENT.isoformat()
    naive_local = MOMENT.astimezone().replace(tzinfo=None)
    assert expiry.normalize(naive_local) == MOMENT.isoformat()


def test_age_and_date_follow_djangos_rules() -> None:
    """Age and date for default, 0, seconds and fixed moments."""
    assert expiry.age(None, 100, MOMENT) == 100
    assert expiry.age(0, 100, MOMENT) == 100
    assert expiry.age(7, 100, MOMENT) == 7
    fixed = (MOMENT + timedelta(seconds=42)).isoformat()
    assert expiry.age(fixed, 100, MOMENT) == 42
    assert expiry.age((MOMENT - timedelta(seconds=5)).isoformat(), 100, MOMENT) == -5
    assert expiry.date(None, 100, MOMENT) == MOMENT + timedelta(seconds=100)
    assert expiry.date(7, 100, MOMENT) == MOMENT + timedelta(seconds=7)
    assert expiry.date(fixed, 100, MOMENT) == MOMENT + timedelta(seconds=42)


def test_expires_at_browser_close() -> None:
    """Only 0 (or the default setting, without a custom expiry) means browser close."""
    assert expiry.expires_at_browser_close(None, True)
    assert not expiry.expires_at_browser_close(None, False)
    assert expiry.expires_at_browser_close(0, False)
    assert not expiry.expires_at_browser_close(10, True)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [(10, 10), (None, None), (MOMENT.isoformat(), MOMENT.isoformat()), ("garbage", None), (True, None)]
    + [("2030-01-01T00:00:00", None), ([1], None)],
)
def test_parse_stored_drops_malformed_values(stored: object, expected: object) -> None:
    """A tampered or malformed stored expiry counts as no custom expiry."""
    assert expiry.parse_stored(stored) == expected


def test_timestamp_follows_the_now_seam(monkeypatch: pytest.MonkeyPatch) -> None:
    """timestamp() reads the replaceable now()."""
    monkeypatch.setattr(expiry, "now", lambda: MOMENT)
    assert expiry.timestamp() == MOMENT.timestamp()


def test_cookie_lifetime_matches_age_and_date(monkeypatch: pytest.MonkeyPatch) -> None:
    """Max-Age and Expires for seconds, the default and a fixed moment, from the moved clock."""
    monkeypatch.setattr(expiry, "now", lambda: MOMENT)
    start = int(MOMENT.timestamp())
    assert expiry.cookie_lifetime(None, 100) == (100, start + 100)
    assert expiry.cookie_lifetime(7, 100) == (7, start + 7)
    fixed = (MOMENT + timedelta(seconds=42)).isoformat()
    assert expiry.cookie_lifetime(fixed, 100) == (42, start + 42)


def test_cookie_lifetime_never_gives_a_negative_max_age(monkeypatch: pytest.MonkeyPatch) -> None:
    """A moment already past gives Max-Age=0 (the cookie is dropped) and its own Expires."""
    monkeypatch.setattr(expiry, "now", lambda: MOMENT)
    past = (MOMENT - timedelta(seconds=5)).isoformat()
    assert expiry.cookie_lifetime(past, 100) == (0, int(MOMENT.timestamp()) - 5)
    assert expiry.cookie_lifetime(-5, 100) == (0, int(MOMENT.timestamp()) - 5)


def test_cookie_lifetime_uses_the_system_clock_unmoved() -> None:
    """Without a moved clock the expiry is counted from time.time()."""
    before = int(time.time())
    max_age, expires = expiry.cookie_lifetime(None, 60)
    assert max_age == 60 and before + 60 <= expires <= int(time.time()) + 60
