"""The demo app behind ``asession demo``: a small server-rendered Starlette app, no JavaScript, no build step.

It shows what sessions are for: signing in with a name (which cycles the session key, as a login must),
a visit counter, a cart, the session's expiry date, and signing out (which flushes the session and expires
the cookie). A visitor who has done nothing yet has no session and gets no cookie. Forms use
POST-redirect-GET; the ``SameSite=Lax`` session cookie is not sent with cross-site POSTs, which is the
demo's only CSRF defence, so do not copy it into an app without a CSRF token.
"""

from __future__ import annotations

import html
import os
import socket
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from asession.backends import backend_from_url
from asession.middleware import DEFAULT_SQLITE_PATH, SessionMiddleware
from asession.session import Session

__all__ = ["DEFAULT_BACKEND_URL", "MAX_CART_ITEMS", "MAX_TEXT_LENGTH", "create_app"]

#: The embedded default: SQLite in ``./sessions.sqlite3``, as ``SessionMiddleware()`` uses.
DEFAULT_BACKEND_URL = f"sqlite:///{DEFAULT_SQLITE_PATH}"
#: Longest name or cart item accepted, in characters.
MAX_TEXT_LENGTH = 60
#: Most items a cart holds.
MAX_CART_ITEMS = 20

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
section { border: 1px solid #ddd; border-radius: .5rem; padding: .5rem 1rem; margin: 1rem 0; }
form.inline { display: inline; } .muted { color: #666; font-size: .9rem; } .error { color: #b00020; }
"""


def _session(request: Request) -> Session:
    session: Session = request.scope["session"]
    return session


async def _form(request: Request) -> dict[str, str]:
    """Parse an urlencoded form body (Starlette's ``request.form()`` would need python-multipart)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {name: values[0] for name, values in parse_qs(body, max_num_fields=10).items()}


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())[:MAX_TEXT_LENGTH]


def _see_other() -> RedirectResponse:
    return RedirectResponse("/", status_code=303)


def _render(request: Request, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    session = _session(request)
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>", "<title>asession demo</title>"]
    parts.append(f"<style>{_STYLE}</style></head><body><h1>asession demo</h1>")
    if error:
        parts.append(f"<p class='error' id='error'>{e(error)}</p>")

    user = session.get("user")
    parts.append("<section><h2>Account</h2>")
    if user is None:
        parts.append(
            "<form method='post' action='/login'><label>Name <input name='name' id='name' required "
            f"maxlength='{MAX_TEXT_LENGTH}'></label> <button id='login'>Sign in</button></form>"
        )
    else:
        parts.append(f"<p>Signed in as <strong id='user'>{e(str(user))}</strong>.</p>")
    parts.append("</section>")

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
        expires = session.get_expiry_date().strftime("%Y-%m-%d %H:%M:%S UTC")
        parts.append(f"<p>Page views in this session: <strong id='visits'>{int(session.get('visits', 0))}</strong></p>")
        parts.append(f"<p>Expires: <time id='expires'>{expires}</time></p>")
        parts.append("<form method='post' action='/logout'><button id='logout'>Sign out</button></form>")
    served_by = f"{socket.gethostname()} (pid {os.getpid()}) on {session.backend!r}"
    parts.append(f"<p class='muted'>Served by {e(served_by)}.</p></section></body></html>")
    return HTMLResponse("".join(parts), status_code=status_code, headers={"Cache-Control": "no-store"})


async def home(request: Request) -> Response:
    """Show the page; count the visit when the visitor already has a session (no cookie for bystanders)."""
    session = _session(request)
    if session:
        session["visits"] = int(session.get("visits", 0)) + 1
    return _render(request)


async def login(request: Request) -> Response:
    """Sign in under a new session key, so a key planted before login is worthless afterwards."""
    name = _clean((await _form(request)).get("name"))
    if not name:
        return _render(request, "Please enter a name to sign in.", status_code=400)
    session = _session(request)
    await session.cycle_key()
    session["user"] = name
    return _see_other()


async def logout(request: Request) -> Response:
    """End the session: its stored data is deleted and the cookie expired."""
    await _session(request).flush()
    return _see_other()


async def cart_add(request: Request) -> Response:
    item = _clean((await _form(request)).get("item"))
    session = _session(request)
    cart: list[str] = list(session.get("cart", []))
    if not item:
        return _render(request, "Please name the item to add.", status_code=400)
    if len(cart) >= MAX_CART_ITEMS:
        return _render(request, f"The cart holds at most {MAX_CART_ITEMS} items.", status_code=400)
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

    The backend is handed to the middleware unopened, so the app's lifespan opens and closes it. Raises
    :class:`~asession.ImproperlyConfigured` for an unknown URL scheme or a missing extra.
    """
    backend = backend_from_url(backend_url or DEFAULT_BACKEND_URL)
    routes = [
        Route("/", home),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/cart/add", cart_add, methods=["POST"]),
        Route("/cart/remove", cart_remove, methods=["POST"]),
        Route("/healthz", healthz),
    ]
    return Starlette(routes=routes, middleware=[Middleware(SessionMiddleware, backend=backend)])
