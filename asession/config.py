"""SessionConfig, the cookie and expiry settings shared by the session and the middleware."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from asession.exceptions import ImproperlyConfigured

__all__ = [
    "DEFAULT_COOKIE_NAME",
    "DEFAULT_MAX_AGE",
    "DEFAULT_STORE_TIMEOUT",
    "SameSite",
    "SessionConfig",
]

SameSite = Literal["lax", "strict", "none"]

DEFAULT_COOKIE_NAME = "session"
#: Two weeks, Django's ``SESSION_COOKIE_AGE``.
DEFAULT_MAX_AGE = 60 * 60 * 24 * 7 * 2
#: Seconds a request waits for the session store (open, load, save, delete) before answering 503.
DEFAULT_STORE_TIMEOUT = 5.0


@dataclass(frozen=True)
class SessionConfig:
    """Cookie and expiry settings, with Django's defaults.

    ``max_age`` is the session's lifetime in seconds when no custom expiry is set (Django's
    ``SESSION_COOKIE_AGE``). ``expire_at_browser_close`` makes cookies without ``set_expiry`` session
    cookies. ``save_every_request`` saves (and re-sends the cookie) on every request, which turns the
    expiry into an idle timeout. The ``cookie_*`` fields are the attributes of the ``Set-Cookie`` header.

    ``idle_timeout`` ends a session after that many seconds without a request, ``absolute_timeout`` that
    many seconds after it was created or last logged in (``Session.login()``), whatever the activity; both
    are enforced by the store's expiry, not by the cookie. A request that changes nothing refreshes the
    idle expiry at most once per ``touch_interval`` (default: a tenth of ``idle_timeout``, at least 1 s),
    with a touch of the stored session rather than a save, and only then sends the cookie again.

    Raises :class:`ImproperlyConfigured` when a combination is one browsers reject: a ``__Host-`` cookie
    name without ``cookie_secure``, with a domain or with a path other than ``/``; a ``__Secure-`` name
    without ``cookie_secure``; ``SameSite=None`` or ``cookie_partitioned`` without ``cookie_secure``.
    """

    cookie_name: str = DEFAULT_COOKIE_NAME
    max_age: int = DEFAULT_MAX_AGE
    expire_at_browser_close: bool = False
    save_every_request: bool = False
    cookie_domain: str | None = None
    cookie_path: str = "/"
    cookie_secure: bool = False
    cookie_httponly: bool = True
    cookie_samesite: SameSite | None = "lax"
    cookie_partitioned: bool = False
    store_timeout: float | None = DEFAULT_STORE_TIMEOUT
    idle_timeout: int | None = None
    absolute_timeout: int | None = None
    touch_interval: int | None = None

    def __post_init__(self) -> None:
        if not self.cookie_name or any(c in self.cookie_name for c in ' \t\r\n;,="()<>@:\\/[]?{}'):
            raise ImproperlyConfigured(f"cookie_name {self.cookie_name!r} is not a valid cookie name.")
        if isinstance(self.max_age, bool) or not isinstance(self.max_age, int) or self.max_age <= 0:
            raise ImproperlyConfigured(f"max_age must be a positive number of seconds, not {self.max_age!r}.")
        if self.cookie_samesite is not None and self.cookie_samesite not in ("lax", "strict", "none"):
            raise ImproperlyConfigured(
                f"cookie_samesite must be 'lax', 'strict', 'none' or None, not {self.cookie_samesite!r}."
            )
        if not self.cookie_path.startswith("/") or any(c in self.cookie_path for c in ";\r\n"):
            raise ImproperlyConfigured(f"cookie_path must be an absolute path, not {self.cookie_path!r}.")
        if self.cookie_domain is not None and (
            not self.cookie_domain or any(c in self.cookie_domain for c in "; \r\n")
        ):
            raise ImproperlyConfigured(f"cookie_domain {self.cookie_domain!r} is not a valid domain.")
        timeout = self.store_timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf")
        ):
            raise ImproperlyConfigured(
                f"store_timeout must be a positive number of seconds or None, not {self.store_timeout!r}."
            )
        for name in ("idle_timeout", "absolute_timeout", "touch_interval"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ImproperlyConfigured(f"{name} must be a positive number of seconds or None, not {value!r}.")
        if self.touch_interval is not None and self.idle_timeout is None:
            raise ImproperlyConfigured("touch_interval only applies with idle_timeout: set idle_timeout too.")
        if (
            self.touch_interval is not None
            and self.idle_timeout is not None
            and self.touch_interval >= self.idle_timeout
        ):
            raise ImproperlyConfigured(
                f"touch_interval ({self.touch_interval} s) must be shorter than idle_timeout ({self.idle_timeout} s), "
                "or an idle session would end before any request could refresh it."
            )
        self._check_browser_rules()
        # Read on every request: computed once (a frozen dataclass, hence object.__setattr__).
        object.__setattr__(self, "_touch_every", self._touch_interval())
        object.__setattr__(self, "tracks_activity", self.idle_timeout is not None or self.absolute_timeout is not None)

    #: Whether sessions carry their start and last activity (an idle or absolute timeout is set).
    tracks_activity: bool = field(init=False, repr=False, compare=False, default=False)
    _touch_every: int | None = field(init=False, repr=False, compare=False, default=None)

    def _touch_interval(self) -> int | None:
        if self.idle_timeout is None:
            return None
        if self.touch_interval is not None:
            return self.touch_interval
        return max(1, self.idle_timeout // 10)

    @property
    def effective_touch_interval(self) -> int | None:
        """How often a request that changed nothing refreshes the idle expiry: ``touch_interval``, or by
        default a tenth of ``idle_timeout`` (at least 1 s); ``None`` without ``idle_timeout``."""
        return self._touch_every

    def _check_browser_rules(self) -> None:
        name = self.cookie_name
        if name.startswith("__Host-"):
            if not self.cookie_secure or self.cookie_domain is not None or self.cookie_path != "/":
                raise ImproperlyConfigured(
                    f"The cookie name {name!r} uses the __Host- prefix, which browsers accept only with "
                    "cookie_secure=True, no cookie_domain and cookie_path='/'. Change those settings or the name."
                )
        elif name.startswith("__Secure-") and not self.cookie_secure:
            raise ImproperlyConfigured(
                f"The cookie name {name!r} uses the __Secure- prefix, which browsers accept only with "
                "cookie_secure=True. Set cookie_secure=True or change the name."
            )
        if self.cookie_samesite == "none" and not self.cookie_secure:
            raise ImproperlyConfigured(
                "cookie_samesite='none' requires cookie_secure=True: browsers drop SameSite=None cookies "
                "that are not Secure."
            )
        if self.cookie_partitioned and not self.cookie_secure:
            raise ImproperlyConfigured(
                "cookie_partitioned=True requires cookie_secure=True: browsers drop Partitioned cookies "
                "that are not Secure."
            )
