"""The demo app end to end: ``python -m asession demo`` on SQLite, driven by headless Chromium.

Needs the ``playwright`` Python package and Debian's ``chromium`` at /usr/bin/chromium (no browser
download: Playwright launches it through ``executable_path``). Missing either skips locally with the
reason and fails under ``CI=true``.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from tests.conftest import IN_CI
from tests.multiprocess_app import ServerProcess, free_port

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
#: Without the background-networking flags Chromium keeps calling home, which this sandbox refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture
def chromium() -> Path:
    """The browser's path, once both Chromium and the playwright package are known to be installed."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing; install Debian's chromium package (apt-get install -y chromium).")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is missing; install it with `pip install -e '.[dev]'`.")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    """Headless Debian Chromium through Playwright, closed after the test."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context()
    context.set_default_timeout(10_000)
    try:
        yield context
    finally:
        await context.close()


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[ServerProcess]:
    """``python -m asession demo`` on a free port with its sessions in a SQLite file; always stopped."""
    port = free_port()
    database = tmp_path / "sessions.sqlite3"
    command = [sys.executable, "-m", "asession", "demo", "--port", str(port), "--backend", f"sqlite:///{database}"]
    server = ServerProcess(command, port, cwd=tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.close()


#: Device B's browser: another user agent, so that device A's card tells the two apart.
FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Firefox/128.0"


@pytest.fixture
async def other_context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A second browser profile (its own cookies): another device of the same user."""
    context = await browser.new_context(user_agent=FIREFOX)
    context.set_default_timeout(10_000)
    try:
        yield context
    finally:
        await context.close()


async def _session_cookies(context: BrowserContext) -> list[dict[str, object]]:
    return [dict(cookie) for cookie in await context.cookies() if cookie.get("name") == "session"]


async def _sign_in(page: Page, url: str, name: str) -> None:
    from playwright.async_api import expect

    await page.goto(url)
    await page.fill("#name", name)
    await page.click("#login")
    await expect(page.locator("#user")).to_have_text(name)


async def _add_to_cart(page: Page, item: str) -> None:
    from playwright.async_api import expect

    await page.fill("#item", item)
    await page.click("#add")
    await expect(page.locator("#cart li", has_text=item)).to_have_count(1)


async def test_demo_session_survives_reload_and_restart(context: BrowserContext, demo: ServerProcess) -> None:
    """Sign-in and cart survive a reload and a restart of the server process on the same SQLite file."""
    from playwright.async_api import expect

    page = await context.new_page()
    await _sign_in(page, demo.url, "Ada")
    await _add_to_cart(page, "apple")
    await page.reload()
    await expect(page.locator("#cart li")).to_have_count(1)
    await expect(page.locator("#visits")).to_have_text("3")

    demo.stop()
    demo.start()
    await page.reload()
    await expect(page.locator("#user")).to_have_text("Ada")
    await expect(page.locator("#cart li")).to_contain_text(["apple"])
    await expect(page.locator("#visits")).to_have_text("4")


async def test_demo_cookie_is_httponly_and_lax(context: BrowserContext, demo: ServerProcess) -> None:
    """The session cookie is HttpOnly and SameSite=Lax, invisible to scripts, and its key changes at sign-in."""
    page = await context.new_page()
    await page.goto(demo.url)
    await _add_to_cart(page, "pear")
    [before] = await _session_cookies(context)
    await _sign_in(page, demo.url, "Ada")
    [cookie] = await _session_cookies(context)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["value"] != before["value"]
    assert await page.evaluate("document.cookie") == ""


async def test_demo_sign_out_clears_cookie(context: BrowserContext, demo: ServerProcess) -> None:
    """Signing out removes the session cookie from the browser and shows the sign-in form again."""
    from playwright.async_api import expect

    page = await context.new_page()
    await _sign_in(page, demo.url, "Ada")
    assert len(await _session_cookies(context)) == 1
    await page.click("#logout")
    await expect(page.locator("#no-session")).to_be_visible()
    await expect(page.locator("#name")).to_be_visible()
    assert await _session_cookies(context) == []


async def test_demo_sign_out_other_device(
    context: BrowserContext, other_context: BrowserContext, demo: ServerProcess
) -> None:
    """Two browsers signed in as one user see each other in "Your devices"; device A signs device B out from
    its card, and B's next reload shows it signed out."""
    from playwright.async_api import expect

    device_a = await context.new_page()
    device_b = await other_context.new_page()
    await _sign_in(device_a, demo.url, "Ada")
    await _sign_in(device_b, demo.url, "Ada")

    await device_a.reload()
    rows = device_a.locator("#devices tr.device")
    await expect(rows).to_have_count(2)
    this_device = device_a.locator("#devices tr.device.current")
    await expect(this_device).to_have_count(1)
    await expect(this_device).to_contain_text("this device")
    await expect(this_device).to_contain_text("Headless Chrome")
    other = device_a.locator("#devices tr.device:not(.current)")
    await expect(other).to_contain_text("Firefox 128 on Windows")
    await expect(device_a.locator("#timeouts")).to_have_text(
        "Signs out after 30 min without activity, and 12 h after sign-in at the latest."
    )

    await other.locator("button.sign-out-device").click()
    await expect(device_a.locator("#notice")).to_have_text("Signed out 1 device.")
    await expect(rows).to_have_count(1)
    await expect(device_a.locator("#user")).to_have_text("Ada")

    await device_b.reload()
    await expect(device_b.locator("#no-session")).to_be_visible()
    await expect(device_b.locator("#name")).to_be_visible()
    await expect(device_b.locator("#user")).to_have_count(0)
    await device_a.reload()
    await expect(device_a.locator("#user")).to_have_text("Ada")


async def test_demo_sign_out_all_other_devices(
    context: BrowserContext, other_context: BrowserContext, demo: ServerProcess
) -> None:
    """The "Sign out other devices" button on device A ends device B's session and keeps A's."""
    from playwright.async_api import expect

    device_a = await context.new_page()
    device_b = await other_context.new_page()
    await _sign_in(device_b, demo.url, "Ada")
    await _sign_in(device_a, demo.url, "Ada")
    await device_a.click("#sign-out-others")
    await expect(device_a.locator("#notice")).to_have_text("Signed out 1 other device.")
    await expect(device_a.locator("#no-other-devices")).to_be_visible()
    await device_b.reload()
    await expect(device_b.locator("#no-session")).to_be_visible()
