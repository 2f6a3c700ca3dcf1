"""The demo app, in process: sign in, visit counter, cart, expiry and timeouts, devices, sign out, escaping."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from asession.demo import ABSOLUTE_TIMEOUT, IDLE_TIMEOUT, MAX_CART_ITEMS, create_app, short_user_agent
from tests.conftest import Clock

FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"
HOSTILE = "<script>alert('ua')</script> Evil/1.0"


@pytest.fixture(params=["memory", "sqlite"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'demo.sqlite3'}"


@pytest.fixture
async def transport(backend_url: str) -> AsyncIterator[httpx.ASGITransport]:
    """One running demo app (one store); each client on it is a browser of its own."""
    app = create_app(backend_url)
    async with LifespanManager(app) as manager:
        yield httpx.ASGITransport(app=manager.app)


@pytest.fixture
async def client(transport: httpx.ASGITransport) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def devices(transport: httpx.ASGITransport) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two browsers on the same demo: a Firefox on Windows, and one whose User-Agent is markup."""
    base = "http://testserver"
    async with (
        httpx.AsyncClient(transport=transport, base_url=base, headers={"User-Agent": FIREFOX}) as first,
        httpx.AsyncClient(transport=transport, base_url=base, headers={"User-Agent": HOSTILE}) as second,
    ):
        yield first, second


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


def _expires(page: httpx.Response) -> datetime:
    match = re.search(r"<time id='expires'>([^<]+)</time>", page.text)
    assert match is not None, page.text
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc)


async def test_home_shows_expiry_date_idle_timeout_ahead(client: httpx.AsyncClient) -> None:
    """The page shows when the session ends: the idle timeout (30 min) from now, as the cookie says too."""
    response = await _post(client, "/login", name="Ada")
    max_age = re.search(r"Max-Age=(\d+)", response.headers["set-cookie"])
    assert max_age is not None and IDLE_TIMEOUT - 5 <= int(max_age.group(1)) <= IDLE_TIMEOUT
    expected = datetime.now(timezone.utc) + timedelta(seconds=IDLE_TIMEOUT)
    assert abs(_expires(await client.get("/")) - expected) < timedelta(minutes=1)


async def test_home_shows_timeouts(client: httpx.AsyncClient) -> None:
    """The idle and absolute timeouts are stated on the page, signed in or not."""
    sentence = "Signs out after 30 min without activity, and 12 h after sign-in at the latest."
    assert sentence in (await client.get("/")).text
    await _post(client, "/login", name="Ada")
    assert sentence in (await client.get("/")).text


async def test_absolute_timeout_caps_expiry_and_signs_out(client: httpx.AsyncClient, clock: Clock) -> None:
    """However active, a session ends 12 h after sign-in: the page shows that bound once it is the nearer one."""
    await _post(client, "/login", name="Ada")
    signed_in = clock.current
    for _ in range((ABSOLUTE_TIMEOUT - IDLE_TIMEOUT) // (20 * 60) + 1):  # a request every 20 min, never idle
        clock.advance(20 * 60)
        page = await client.get("/")
        assert "Signed in as" in page.text
    assert abs(_expires(page) - (signed_in + timedelta(seconds=ABSOLUTE_TIMEOUT))) < timedelta(seconds=2)
    clock.advance(ABSOLUTE_TIMEOUT - (clock.current - signed_in).total_seconds() + 1)
    assert "No session yet" in (await client.get("/")).text


async def test_idle_timeout_signs_out(client: httpx.AsyncClient, clock: Clock) -> None:
    """30 min without a request end the session."""
    await _post(client, "/login", name="Ada")
    clock.advance(IDLE_TIMEOUT - 60)
    assert "Signed in as" in (await client.get("/")).text
    clock.advance(IDLE_TIMEOUT + 1)
    assert "No session yet" in (await client.get("/")).text


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


# -- your devices ------------------------------------------------------------------------------------------


def _device_rows(page: httpx.Response) -> list[tuple[bool, str, str]]:
    """The devices card as ``(this device, user agent shown, id)`` per row, in order."""
    rows = re.findall(
        r"<tr class='device( current)?'><td title='[^']*'><span class='agent'>(.*?)</span>.*?"
        r"name='id' value='([^']+)'",
        page.text,
    )
    return [(bool(current), agent, handle) for current, agent, handle in rows]


def _other_device(page: httpx.Response) -> str:
    [handle] = [handle for current, _, handle in _device_rows(page) if not current]
    return handle


async def _signed_in(client: httpx.AsyncClient) -> bool:
    return "Signed in as" in (await client.get("/")).text


async def test_devices_card_lists_both_devices_escaped(devices: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    """Each device lists both sessions of the user, newest first, its own marked; user agents are escaped."""
    firefox, hostile = devices
    await _post(firefox, "/login", name="Ada")
    await _post(hostile, "/login", name="Ada")
    page = await firefox.get("/")
    rows = _device_rows(page)
    assert [(current, agent) for current, agent, _ in rows] == [
        (False, "&lt;script&gt;alert(&#x27;ua&#x27;)&lt;/script&gt; Evil/1.0"),
        (True, "Firefox 128 on Windows"),
    ]
    assert "<span class='badge this-device'>this device</span>" in page.text
    assert "<script>" not in page.text
    assert f"title='{FIREFOX}'" in page.text
    assert "title='&lt;script&gt;alert(&#x27;ua&#x27;)&lt;/script&gt; Evil/1.0'" in page.text
    assert re.search(r"<tr class='device current'>.*?<td>now</td>", page.text)
    other_page = await hostile.get("/")
    assert "<script>" not in other_page.text
    assert [current for current, _, _ in _device_rows(other_page)] == [True, False]
    assert [handle for _, _, handle in _device_rows(other_page)] == [handle for _, _, handle in rows]


async def test_sign_out_other_devices(
    devices: tuple[httpx.AsyncClient, httpx.AsyncClient], transport: httpx.ASGITransport
) -> None:
    """The "Sign out other devices" button ends every other session of the user, says how many, keeps this one."""
    firefox, hostile = devices
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as bob:
        await _post(firefox, "/login", name="Ada")
        await _post(hostile, "/login", name="Ada")
        await _post(bob, "/login", name="Bob")
        await _post(hostile, "/devices/sign-out-others")
        page = await hostile.get("/")
        assert "<p class='notice' id='notice'>Signed out 1 other device.</p>" in page.text
        assert [current for current, _, _ in _device_rows(page)] == [True]
        assert "id='no-other-devices'" in page.text
        assert "id='notice'" not in (await hostile.get("/")).text  # shown once
        assert not await _signed_in(firefox)
        assert await _signed_in(bob)
        await _post(hostile, "/devices/sign-out-others")
        assert "Signed out 0 other devices." in (await hostile.get("/")).text


async def test_sign_out_one_device(devices: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    """A device's own "Sign out" button in another device's card ends that session only."""
    firefox, hostile = devices
    await _post(firefox, "/login", name="Ada")
    await _post(hostile, "/login", name="Ada")
    await _post(firefox, "/devices/sign-out", id=_other_device(await firefox.get("/")))
    assert "Signed out 1 device." in (await firefox.get("/")).text
    page = await hostile.get("/")
    assert "No session yet" in page.text
    assert "Signed in as" not in page.text
    assert [current for current, _, _ in _device_rows(await firefox.get("/"))] == [True]


async def test_sign_out_this_device_from_the_card_signs_out(
    devices: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    """The card's "Sign out" on this device's own row is a sign-out: the cookie expires, the other device stays."""
    firefox, hostile = devices
    await _post(firefox, "/login", name="Ada")
    await _post(hostile, "/login", name="Ada")
    [this] = [handle for current, _, handle in _device_rows(await firefox.get("/")) if current]
    response = await _post(firefox, "/devices/sign-out", id=this)
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert not await _signed_in(firefox)
    assert len(_device_rows(await hostile.get("/"))) == 1


@pytest.mark.parametrize(
    ("forged", "status"),
    [
        pytest.param("bob", 403, id="other-users-device"),
        pytest.param("QWRh." + "0" * 32, 403, id="adas-name-unknown-digest"),
        pytest.param("nonsense", 400, id="garbage"),
        pytest.param("", 400, id="empty"),
        pytest.param("QWRh.<script>", 400, id="markup"),
    ],
)
async def test_sign_out_device_refuses_forged_ids(
    devices: tuple[httpx.AsyncClient, httpx.AsyncClient], transport: httpx.ASGITransport, forged: str, status: int
) -> None:
    """An id that is not one of the signed-in user's live sessions is refused and ends nothing."""
    firefox, hostile = devices
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as bob:
        await _post(firefox, "/login", name="Ada")
        await _post(hostile, "/login", name="Ada")
        await _post(bob, "/login", name="Bob")
        if forged == "bob":
            [(_, _, forged)] = _device_rows(await bob.get("/"))
        response = await firefox.post("/devices/sign-out", data={"id": forged})
        assert response.status_code == status
        assert "id='error'" in response.text
        assert "<script>" not in response.text
        assert await _signed_in(firefox)
        assert await _signed_in(hostile)
        assert await _signed_in(bob)
        assert len(_device_rows(await firefox.get("/"))) == 2


async def test_device_actions_need_a_signed_in_user(
    devices: tuple[httpx.AsyncClient, httpx.AsyncClient], client: httpx.AsyncClient
) -> None:
    """Without a sign-in, both device actions answer 403 and end nothing."""
    firefox, _ = devices
    await _post(firefox, "/login", name="Ada")
    [(_, _, handle)] = _device_rows(await firefox.get("/"))
    await _post(client, "/cart/add", item="apple")
    for path, form in (("/devices/sign-out", {"id": handle}), ("/devices/sign-out-others", {})):
        response = await client.post(path, data=form)
        assert response.status_code == 403
        assert "Sign in to manage your devices." in response.text
    assert await _signed_in(firefox)


async def test_devices_card_only_when_signed_in(client: httpx.AsyncClient) -> None:
    """A visitor with only a cart sees no devices card; signing in shows it with this device alone."""
    await _post(client, "/cart/add", item="apple")
    assert "Your devices" not in (await client.get("/")).text
    await _post(client, "/login", name="Ada")
    page = await client.get("/")
    assert "Your devices" in page.text
    assert [(current, agent) for current, agent, _ in _device_rows(page)] == [
        (True, "python-httpx/" + httpx.__version__)
    ]


@pytest.mark.parametrize(
    ("agent", "shown"),
    [
        (FIREFOX, "Firefox 128 on Windows"),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 "
            "Safari/537.36",
            "Headless Chrome 120 on Linux",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.1 Mobile/15E148 Safari/604.1",
            "Safari 17 on iPhone",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
            "Mobile Safari/537.36",
            "Chrome 124 on Android",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
            "Safari/537.36 Edg/124.0.2478.51",
            "Edge 124 on Windows",
        ),
        (None, "Unknown device"),
        ("", "Unknown device"),
        ("curl/8.5.0", "curl/8.5.0"),
        ("x" * 100, "x" * 39 + "…"),
    ],
)
def test_short_user_agent(agent: str | None, shown: str) -> None:
    """User agents are summarised as "browser on system", or cut to 40 characters."""
    assert short_user_agent(agent) == shown
