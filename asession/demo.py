"""The demo app behind ``asession demo``: a small server-rendered Starlette app, no JavaScript, no build step.

It shows what sessions are for: signing in with a name (``Session.login()``, which cycles the session key,
as a login must, and records the session in the user's index), a visit counter, a cart, the session's
expiry, a "Your devices" card listing every session of the signed-in user (this one marked) with "sign out
other devices" and per-device sign-out, and signing out (``Session.logout()``, which deletes the session
and expires the cookie). Sessions end after :data:`IDLE_TIMEOUT` without a request and
:data:`ABSOLUTE_TIMEOUT` after sign-in at the latest. A visitor who has done nothing yet has no session
and gets no cookie.

There are no passwords: whoever types a name is that user, and sees and can sign out that user's devices.
Forms use POST-redirect-GET; the ``SameSite=Lax`` session cookie is not sent with cross-site POSTs, which
is the demo's only CSRF defence, so do not copy it into an app without a CSRF token.
"""

from __future__ import annotations

import html
import os
import re
import socket
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import TypeVar
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from asession import expiry
from asession.backends import backend_from_url
from asession.config import SessionConfig
from asession.deadline import bounded
from asession.exceptions import BackendUnavailableError
from asession.middleware import DEFAULT_SQLITE_PATH, SessionMiddleware
from asession.session import Session
from asession.users import SessionInfo, user_of_handle

__all__ = [
    "ABSOLUTE_TIMEOUT",
    "DEFAULT_BACKEND_URL",
    "DEMO_CONFIG",
    "IDLE_TIMEOUT",
    "MAX_CART_ITEMS",
    "MAX_TEXT_LENGTH",
    "create_app",
    "short_user_agent",
]

#: The embedded default: SQLite in ``./sessions.sqlite3``, as ``SessionMiddleware()`` uses.
DEFAULT_BACKEND_URL = f"sqlite:///{DEFAULT_SQLITE_PATH}"
#: Longest name or cart item accepted, in characters.
MAX_TEXT_LENGTH = 60
#: Most items a cart holds.
MAX_CART_ITEMS = 20
#: A session ends after this many seconds without a request: 30 minutes.
IDLE_TIMEOUT = 30 * 60
#: ... and this many seconds after sign-in (or after it started, without one) at the latest: 12 hours.
ABSOLUTE_TIMEOUT = 12 * 60 * 60
#: The demo's session settings: the defaults with both timeouts on.
DEMO_CONFIG = SessionConfig(idle_timeout=IDLE_TIMEOUT, absolute_timeout=ABSOLUTE_TIMEOUT)

_TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
#: Where a one-off message for the next page view waits (set by the device actions, shown once).
_NOTICE_KEY = "notice"
#: The longest user agent shown as it is when it cannot be summarised as "browser on system".
_AGENT_SHOWN = 40

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
section { border: 1px solid #ddd; border-radius: .5rem; padding: .5rem 1rem; margin: 1rem 0; }
form.inline { display: inline; } .muted { color: #666; font-size: .9rem; } .error { color: #b00020; }
.notice { color: #1b5e20; } table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { text-align: left; padding: .25rem .5rem .25rem 0; vertical-align: top; }
.badge { background: #e3f2fd; border-radius: .25rem; padding: 0 .25rem; font-size: .8rem; }
"""

T = TypeVar("T")


def _session(request: Request) -> Session:
    session: Session = request.scope["session"]
    return session


async def _form(request: Request) -> dict[str, str]:
    """Parse an urlencoded form body (Starlette's ``request.form()`` would need python-multipart).

    A body with more fields than any form of the demo has parses as empty, which each handler refuses.
    """
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        fields = parse_qs(body, max_num_fields=10)
    except ValueError:
        return {}
    return {name: values[0] for name, values in fields.items()}


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())[:MAX_TEXT_LENGTH]


def _see_other() -> RedirectResponse:
    return RedirectResponse("/", status_code=303)


def _time(moment: datetime) -> str:
    return f"<time datetime='{moment.isoformat(timespec='seconds')}'>{moment.strftime(_TIME_FORMAT)}</time>"


def _duration(seconds: int) -> str:
    """``1800`` -> ``"30 min"``, ``43200`` -> ``"12 h"``."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _timeouts(config: SessionConfig) -> str | None:
    """The sentence that tells the visitor when a session ends, or ``None`` without timeouts."""
    rules = []
    if config.idle_timeout is not None:
        rules.append(f"after {_duration(config.idle_timeout)} without activity")
    if config.absolute_timeout is not None:
        rules.append(f"{_duration(config.absolute_timeout)} after sign-in at the latest")
    return f"Signs out {', and '.join(rules)}." if rules else None


_BROWSERS = (
    ("Edge", re.compile(r"\bEdg(?:e|A|iOS)?/(\d+)")),
    ("Opera", re.compile(r"\bOPR/(\d+)")),
    ("Firefox", re.compile(r"\b(?:Firefox|FxiOS)/(\d+)")),
    ("Headless Chrome", re.compile(r"\bHeadlessChrome/(\d+)")),
    ("Chrome", re.compile(r"\b(?:Chrome|CriOS)/(\d+)")),
    ("Safari", re.compile(r"\bVersion/(\d+)(?:\.\d+)*(?: Mobile/\S+)? Safari/")),
)
_SYSTEMS = (
    ("Windows", "Windows"),
    ("Android", "Android"),
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("CrOS", "ChromeOS"),
    ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
)


def short_user_agent(agent: str | None) -> str:
    """A user agent as a person recognises it: ``"Firefox 128 on Windows"``; otherwise its first 40 characters.

    The result is plain text, as untrusted as the header it comes from: escape it before printing it.
    """
    if not agent:
        return "Unknown device"
    browser = next((f"{name} {match.group(1)}" for name, rx in _BROWSERS if (match := rx.search(agent))), None)
    if browser is None:
        text = " ".join(agent.split())
        return text if len(text) <= _AGENT_SHOWN else text[: _AGENT_SHOWN - 1] + "…"
    system = next((name for token, name in _SYSTEMS if token in agent), None)
    return browser if system is None else f"{browser} on {system}"


def _expires_at(session: Session, started: datetime | None) -> datetime:
    """When the session ends if nothing else happens, counting the save that ends this request.

    ``Session.get_expiry_date()`` is Django's rule alone; the store's expiry is also capped by the idle
    timeout and by what is left of the absolute one (from ``started``, when known).
    """
    now = expiry.now()
    ends = session.get_expiry_date()
    config = session.config
    if config.idle_timeout is not None:
        ends = min(ends, now + timedelta(seconds=config.idle_timeout))
    if config.absolute_timeout is not None and started is not None:
        ends = min(ends, started + timedelta(seconds=config.absolute_timeout))
    return ends


async def _bounded(session: Session, call: Awaitable[T]) -> T:
    """A store call the app makes itself, bounded like the middleware's (a 503 past ``store_timeout``)."""
    return await bounded(call, session.config.store_timeout, session.backend)


async def _devices(session: Session, user: str) -> list[SessionInfo]:
    return await _bounded(session, session.backend.user_sessions(user))


def _current_handle(session: Session, user: str) -> str | None:
    """The :attr:`SessionInfo.id` of this request's own session."""
    key = session.session_key
    return None if key is None else session.backend.handle(key, user)


def _devices_card(session: Session, user: str, devices: list[SessionInfo] | None) -> list[str]:
    e = html.escape
    parts = ["<section id='devices'><h2>Your devices</h2>"]
    if devices is None:
        parts.append("<p class='error'>Your devices could not be listed: the session store did not answer.</p>")
        parts.append("</section>")
        return parts
    current = _current_handle(session, user)
    parts.append(
        "<table><thead><tr><th>Device</th><th>Signed in</th><th>Last seen</th><th>Expires</th><th></th></tr>"
        "</thead><tbody>"
    )
    others = 0
    for info in devices:
        this = info.id == current
        others += not this
        # This request saves the session: it was seen now, and its expiry moves.
        seen = "now" if this else _time(info.last_seen)
        expires = _time(_expires_at(session, info.created_at) if this else info.expires_at)
        badge = " <span class='badge this-device'>this device</span>" if this else ""
        agent = info.user_agent or ""
        parts.append(
            f"<tr class='device{' current' if this else ''}'>"
            f"<td title='{e(agent)}'><span class='agent'>{e(short_user_agent(info.user_agent))}</span>{badge}</td>"
            f"<td>{_time(info.created_at)}</td><td>{seen}</td><td>{expires}</td>"
            "<td><form class='inline' method='post' action='/devices/sign-out'>"
            f"<input type='hidden' name='id' value='{e(info.id)}'><button class='sign-out-device'>Sign out</button>"
            "</form></td></tr>"
        )
    parts.append("</tbody></table>")
    if others:
        parts.append(
            "<form method='post' action='/devices/sign-out-others'>"
            "<button id='sign-out-others'>Sign out other devices</button></form>"
        )
    else:
        parts.append("<p class='muted' id='no-other-devices'>No other device is signed in as you.</p>")
    parts.append(
        "<p class='muted'>Sign in with the same name in another browser to see it here. There are no passwords "
        "in this demo: whoever types your name is you.</p></section>"
    )
    return parts


async def _page(
    request: Request, error: str | None = None, status_code: int = 200, notice: str | None = None
) -> HTMLResponse:
    session = _session(request)
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>", "<title>asession demo</title>"]
    parts.append(f"<style>{_STYLE}</style></head><body><h1>asession demo</h1>")
    if error:
        parts.append(f"<p class='error' id='error'>{e(error)}</p>")
    if notice:
        parts.append(f"<p class='notice' id='notice'>{e(notice)}</p>")

    user = session.user_id
    parts.append("<section><h2>Account</h2>")
    if user is None:
        parts.append(
            "<form method='post' action='/login'><label>Name <input name='name' id='name' required "
            f"maxlength='{MAX_TEXT_LENGTH}'></label> <button id='login'>Sign in</button></form>"
        )
    else:
        parts.append(f"<p>Signed in as <strong id='user'>{e(user)}</strong>.</p>")
    parts.append("</section>")

    started: datetime | None = None
    if user is not None:
        devices: list[SessionInfo] | None
        if not session.backend.indexes:
            devices = []
        else:
            try:
                devices = await _devices(session, user)
            except BackendUnavailableError:
                devices = None
        current = _current_handle(session, user)
        started = next((info.created_at for info in devices or () if info.id == current), None)
        if session.backend.indexes:
            parts.extend(_devices_card(session, user, devices))
        else:
            parts.append(
                "<section id='devices'><h2>Your devices</h2><p class='muted'>This store keeps the sessions in "
                "the visitors' cookies, so the server can neither list them nor sign them out.</p></section>"
            )

    cart: list[str] = session.get("cart", [])
    parts.append("<section><h2>Cart</h2><ul id='cart'>")
    for index, item in enumerate(cart):
        parts.append(
            f"<li>{e(str(item))} <form class='inline' method='post' action='/cart/remove'>"
            f"<input type='hidden' name='index' value='{index}'><button>Remove</button></form></li>"
        )
    parts.append("</ul>" if cart else "</ul><p class='muted'>Your cart is empty.</p>")
    parts.append(
        "<form method='post' action='/cart/add'><label>Item <input name='item' id='item' required "
        f"maxlength='{MAX_TEXT_LENGTH}'></label> <button id='add'>Add to cart</button></form></section>"
    )

    parts.append("<section><h2>Session</h2>")
    if session.session_key is None and not session:
        parts.append("<p id='no-session'>No session yet: sign in or add an item to start one.</p>")
    else:
        expires = _expires_at(session, started).strftime(_TIME_FORMAT)
        parts.append(f"<p>Page views in this session: <strong id='visits'>{int(session.get('visits', 0))}</strong></p>")
        parts.append(f"<p>Expires: <time id='expires'>{expires}</time></p>")
        parts.append("<form method='post' action='/logout'><button id='logout'>Sign out</button></form>")
    timeouts = _timeouts(session.config)
    if timeouts is not None:
        parts.append(f"<p class='muted' id='timeouts'>{e(timeouts)}</p>")
    served_by = f"{socket.gethostname()} (pid {os.getpid()}) on {session.backend!r}"
    parts.append(f"<p class='muted'>Served by {e(served_by)}.</p></section></body></html>")
    return HTMLResponse("".join(parts), status_code=status_code, headers={"Cache-Control": "no-store"})


async def home(request: Request) -> Response:
    """Show the page; count the visit when the visitor already has a session (no cookie for bystanders)."""
    session = _session(request)
    notice = None
    if session:
        session["visits"] = int(session.get("visits", 0)) + 1
        shown = session.pop(_NOTICE_KEY, None)
        notice = shown if isinstance(shown, str) else None
    return await _page(request, notice=notice)


async def login(request: Request) -> Response:
    """Sign in under a new session key (a key planted before login is worthless afterwards), recorded
    among the user's devices with this browser's user agent."""
    name = _clean((await _form(request)).get("name"))
    if not name:
        return await _page(request, "Please enter a name to sign in.", status_code=400)
    await _session(request).login(name)
    return _see_other()


async def logout(request: Request) -> Response:
    """End the session: its stored data is deleted, it leaves the user's devices and the cookie expires."""
    await _session(request).logout()
    return _see_other()


async def _refuse_device_action(request: Request, session: Session) -> Response | None:
    """The answer to a device action that cannot be done here (nobody signed in, no index); ``None`` if it can."""
    if session.user_id is None:
        return await _page(request, "Sign in to manage your devices.", status_code=403)
    if not session.backend.indexes:
        return await _page(request, "This session store cannot list or sign out devices.", status_code=400)
    return None


async def sign_out_others(request: Request) -> Response:
    """End every other session of the signed-in user ("sign out other devices") and say how many ended."""
    session = _session(request)
    refused = await _refuse_device_action(request, session)
    if refused is not None:
        return refused
    try:
        ended = await session.revoke_other_sessions()
    except BackendUnavailableError:
        return await _page(request, "The session store did not answer; please try again.", status_code=503)
    session[_NOTICE_KEY] = f"Signed out {ended} other device{'' if ended == 1 else 's'}."
    return _see_other()


async def sign_out_device(request: Request) -> Response:
    """End one session of the signed-in user, named by its :attr:`SessionInfo.id`; this one means sign out.

    The id comes from the form, so it is checked before anything ends: it must name the signed-in user
    (400 when it is no id at all, 403 for another user's) and be among that user's live sessions (403).
    """
    session = _session(request)
    refused = await _refuse_device_action(request, session)
    if refused is not None:
        return refused
    user = session.user_id
    assert user is not None  # _refuse_device_action() answered otherwise
    handle = (await _form(request)).get("id", "")
    owner = user_of_handle(handle)
    if owner is None:
        return await _page(request, "That is not a device id.", status_code=400)
    if owner != user:
        return await _page(request, "That device is not one of yours.", status_code=403)
    if handle == _current_handle(session, user):
        await session.logout()
        return _see_other()
    try:
        if handle not in {info.id for info in await _devices(session, user)}:
            return await _page(
                request, "That device is not signed in as you (it may have signed out already).", status_code=403
            )
        ended = await _bounded(session, session.backend.revoke_session(handle))
    except BackendUnavailableError:
        return await _page(request, "The session store did not answer; please try again.", status_code=503)
    session[_NOTICE_KEY] = "Signed out 1 device." if ended else "That device had signed out already."
    return _see_other()


async def cart_add(request: Request) -> Response:
    item = _clean((await _form(request)).get("item"))
    session = _session(request)
    cart: list[str] = list(session.get("cart", []))
    if not item:
        return await _page(request, "Please name the item to add.", status_code=400)
    if len(cart) >= MAX_CART_ITEMS:
        return await _page(request, f"The cart holds at most {MAX_CART_ITEMS} items.", status_code=400)
    session["cart"] = [*cart, item]
    return _see_other()


async def cart_remove(request: Request) -> Response:
    index = (await _form(request)).get("index", "")
    session = _session(request)
    cart: list[str] = list(session.get("cart", []))
    if index.isdigit() and int(index) < len(cart):
        del cart[int(index)]
        session["cart"] = cart
    return _see_other()


async def healthz(request: Request) -> Response:
    """Liveness for load balancers: answers without touching the session store."""
    return PlainTextResponse("ok")


def create_app(backend_url: str | None = None) -> Starlette:
    """Build the demo app on the backend ``backend_url`` names (default: SQLite in ``./sessions.sqlite3``).

    The backend is handed to the middleware unopened, so the app's lifespan opens and closes it. Sessions
    use :data:`DEMO_CONFIG` (idle and absolute timeouts). Raises :class:`~asession.ImproperlyConfigured` for
    an unknown URL scheme or a missing extra.
    """
    backend = backend_from_url(backend_url or DEFAULT_BACKEND_URL)
    routes = [
        Route("/", home),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/devices/sign-out", sign_out_device, methods=["POST"]),
        Route("/devices/sign-out-others", sign_out_others, methods=["POST"]),
        Route("/cart/add", cart_add, methods=["POST"]),
        Route("/cart/remove", cart_remove, methods=["POST"]),
        Route("/healthz", healthz),
    ]
    middleware = [Middleware(SessionMiddleware, backend=backend, config=DEMO_CONFIG)]
    return Starlette(routes=routes, middleware=middleware)
