"""The demo app, in process: sign in, visit counter, cart, expiry, sign out, escaping."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from asession.config import DEFAULT_MAX_AGE
from asession.demo import MAX_CART_ITEMS, create_app


@pytest.fixture(params=["memory", "sqlite"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'demo.sqlite3'}"


@pytest.fixture
async def client(backend_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(backend_url)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def _visits(page: httpx.Response) -> int:
    match = re.search(r"<strong id='visits'>(\d+)</strong>", page.text)
    assert match is not None, page.text
    return int(match.group(1))


def _cart(page: httpx.Response) -> list[str]:
    block = re.search(r"<ul id='cart'>(.*?)</ul>", page.text)
    assert block is not None, page.text
    return re.findall(r"<li>(.*?) <form", block.group(1))


async def _post(client: httpx.AsyncClient, path: str, **form: str) -> httpx.Response:
    response = await client.post(path, data=form)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"
    return response


async def test_home_without_session_sets_no_cookie(client: httpx.AsyncClient) -> None:
    """A first visit renders the page without creating a session or setting a cookie."""
    page = await client.get("/")
    assert page.status_code == 200
    assert "set-cookie" not in page.headers
    assert "No session yet" in page.text


async def test_login_cycles_session_key(client: httpx.AsyncClient) -> None:
    """Signing in moves the session to a new key, keeps the cart and makes the old key worthless."""
    await _post(client, "/cart/add", item="apple")
    before = client.cookies["session"]
    await _post(client, "/login", name="Ada")
    after = client.cookies["session"]
    assert after != before
    page = await client.get("/")
    assert "Signed in as <strong id='user'>Ada</strong>" in page.text
    assert _cart(page) == ["apple"]
    client.cookies.clear()
    client.cookies.set("session", before)
    stale = await client.get("/")
    assert "No session yet" in stale.text


async def test_home_counts_visits_of_a_session(client: httpx.AsyncClient) -> None:
    """Each page view of a signed-in visitor increments the counter by one."""
    await _post(client, "/login", name="Ada")
    assert [_visits(await client.get("/")) for _ in range(3)] == [1, 2, 3]


async def test_cart_add_and_remove_items(client: httpx.AsyncClient) -> None:
    """Items are added in order and removed by their position."""
    for item in ("apple", "pear", "plum"):
        await _post(client, "/cart/add", item=item)
    await _post(client, "/cart/remove", index="1")
    assert _cart(await client.get("/")) == ["apple", "plum"]
    await _post(client, "/cart/remove", index="7")
    assert _cart(await client.get("/")) == ["apple", "plum"]


async def test_cart_add_blank_item_is_rejected(client: httpx.AsyncClient) -> None:
    """An item made only of spaces answers 400 and starts no session."""
    response = await client.post("/cart/add", data={"item": "   "})
    assert response.status_code == 400
    assert "Please name the item" in response.text
    assert "set-cookie" not in response.headers


async def test_cart_add_beyond_limit_is_rejected(client: httpx.AsyncClient) -> None:
    """A full cart answers 400 and keeps its items."""
    for number in range(MAX_CART_ITEMS):
        await _post(client, "/cart/add", item=f"item {number}")
    response = await client.post("/cart/add", data={"item": "one too many"})
    assert response.status_code == 400
    assert len(_cart(await client.get("/"))) == MAX_CART_ITEMS


async def test_home_shows_expiry_date_two_weeks_ahead(client: httpx.AsyncClient) -> None:
    """The page shows the session's expiry date, the configured age from now."""
    await _post(client, "/login", name="Ada")
    page = await client.get("/")
    match = re.search(r"<time id='expires'>([^<]+)</time>", page.text)
    assert match is not None
    shown = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc)
    expected = datetime.now(timezone.utc) + timedelta(seconds=DEFAULT_MAX_AGE)
    assert abs(shown - expected) < timedelta(minutes=1)


async def test_logout_expires_cookie_and_session(client: httpx.AsyncClient) -> None:
    """Signing out expires the cookie, and the old key no longer opens the session."""
    await _post(client, "/login", name="Ada")
    old_key = client.cookies["session"]
    response = await _post(client, "/logout")
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert "session" not in client.cookies
    page = await client.get("/")
    assert "No session yet" in page.text
    assert "set-cookie" not in page.headers
    client.cookies.clear()
    client.cookies.set("session", old_key)
    assert "No session yet" in (await client.get("/")).text


async def test_login_escapes_html_in_name(client: httpx.AsyncClient) -> None:
    """A name or item containing markup is shown as text, never as HTML."""
    await _post(client, "/login", name="<script>alert(1)</script>")
    await _post(client, "/cart/add", item="<img src=x onerror=alert(2)>")
    page = await client.get("/")
    assert "<script>" not in page.text
    assert "<img" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "&lt;img src=x onerror=alert(2)&gt;" in page.text


async def test_login_without_name_is_rejected(client: httpx.AsyncClient) -> None:
    """A blank name answers 400 with an explanation and starts no session."""
    response = await client.post("/login", data={"name": "   "})
    assert response.status_code == 400
    assert "Please enter a name" in response.text
    assert "set-cookie" not in response.headers


async def test_healthz_answers_without_session(client: httpx.AsyncClient) -> None:
    """The health check answers ok and sets no cookie."""
    response = await client.get("/healthz")
    assert (response.status_code, response.text) == (200, "ok")
    assert "set-cookie" not in response.headers


async def test_create_app_defaults_to_sqlite_file(tmp_cwd: Path) -> None:
    """Without a URL the demo keeps its sessions in ./sessions.sqlite3."""
    app = create_app()
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            await _post(client, "/cart/add", item="apple")
    assert (tmp_cwd / "sessions.sqlite3").is_file()
