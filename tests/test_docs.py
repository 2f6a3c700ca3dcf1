"""The documentation site: every ``python`` block of ``docs/`` runs, every ``bash`` block names commands that exist.

Blocks run through :mod:`tests.snippets` (the README's blocks too, in ``tests/test_readme.py``): each in a
fresh namespace in a temporary directory, apps served through httpx's ``ASGITransport``, ``test_*``
functions called. Blocks that reach a server use the test servers' fixtures (``redis_url``,
``postgres_url``, ``memcached_url``): the URL a page shows is replaced by the fixture's, whose namespace
(PostgreSQL schema, recorded keys on Redis and memcached) is the test run's own and removed after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from asession import SessionConfig
from asession.backends.memory import MemoryBackend
from tests.snippets import Snippet, check_shell_block, defined_extras, run_blocks, run_snippet, snippets

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

#: The server URLs pages show, and the fixture giving the test server's URL for each.
SERVER_URLS = {
    "redis://127.0.0.1:6379/0": "redis_url",
    "postgresql://app:secret@127.0.0.1:5432/app": "postgres_url",
    "memcached://127.0.0.1:11211": "memcached_url",
}
#: Names a page's blocks use without importing them. docs/SECURITY.md's block shows a SessionConfig.
PRELUDES: dict[str, dict[str, Any]] = {"SECURITY.md": {"SessionConfig": SessionConfig}}


def _page_id(page: Path) -> str:
    return str(page.relative_to(DOCS))


def _replacements(blocks: list[Snippet], request: pytest.FixtureRequest) -> dict[str, str]:
    """The page's server URLs mapped to the test servers' (a query the page adds is kept)."""
    text = "".join(block.code for block in blocks)
    replacements: dict[str, str] = {}
    for shown, fixture in SERVER_URLS.items():
        if shown in text:
            url: str = request.getfixturevalue(fixture)
            replacements[shown + "?"] = url + ("&" if "?" in url else "?")
            replacements[shown] = url
    return replacements


async def _open_memory_backend() -> MemoryBackend:
    backend = MemoryBackend()
    await backend.open()
    return backend


def _fixtures(tmp_path: Path) -> dict[str, Callable[[], Any]]:
    return {"asession_backend": _open_memory_backend, "tmp_path": lambda: tmp_path}


async def run_page(page: Path, request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """Run the page's ``python`` blocks in ``tmp_path``; the names of the blocks run."""
    blocks = snippets(page, "python")
    run = await run_blocks(
        blocks,
        replacements=_replacements(blocks, request),
        prelude=PRELUDES.get(page.name, {}),
        fixtures=_fixtures(tmp_path),
    )
    return run.blocks


PYTHON_PAGES = [pytest.param(page, id=_page_id(page)) for page in PAGES if snippets(page, "python")]


# Starlette 1.x's TestClient (docs/testing.md) prefers httpx2 and warns when it falls back to httpx.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
@pytest.mark.parametrize("page", PYTHON_PAGES)
async def test_page_python_blocks_run(
    page: Path, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``python`` block of the page runs as written; apps answer every plain route without a 5xx."""
    monkeypatch.chdir(tmp_path)
    ran = await run_page(page, request, tmp_path)
    assert ran == [block.name for block in snippets(page, "python")]


def test_every_block_is_python_bash_or_text() -> None:
    """Blocks are run (python), checked (bash) or output (text): no other language escapes the tests."""
    for page in PAGES:
        for block in snippets(page):
            assert block.language in ("python", "bash", "text"), f"{block.name}: ```{block.language}"


def test_docs_run_dozens_of_blocks() -> None:
    """The pages hold what this suite runs: a guard against a parser that silently finds nothing."""
    assert sum(len(snippets(page, "python")) for page in PAGES) >= 30


# -- bash blocks ------------------------------------------------------------------------------------------------

EXTRAS = defined_extras(ROOT / "pyproject.toml")

BASH_BLOCKS = [
    pytest.param(block, id=f"{_page_id(page)}:{block.line}") for page in PAGES for block in snippets(page, "bash")
]


@pytest.mark.parametrize("block", BASH_BLOCKS)
def test_bash_block_commands_exist(block: Snippet, capsys: pytest.CaptureFixture[str]) -> None:
    """The commands a ``bash`` block shows exist, with the options it gives them."""
    check_shell_block(block, EXTRAS, capsys)


# -- what the examples promise ----------------------------------------------------------------------------------


def _block(page: str, containing: str) -> Snippet:
    (found,) = [block for block in snippets(DOCS / page, "python") if containing in block.code]
    return found


async def _namespace_of(page: str, containing: str) -> dict[str, Any]:
    """What the one block of ``page`` containing ``containing`` defines, run as the page runs it."""
    namespace: dict[str, Any] = {}
    await run_snippet(_block(page, containing), namespace)
    return namespace


@pytest.fixture
async def client_of(tmp_cwd: Path) -> AsyncIterator[Callable[[Any], Any]]:
    """A factory of httpx clients (each with its own cookies) serving an app, whose lifespan runs once."""
    async with AsyncExitStack() as stack:
        started: dict[int, Any] = {}

        async def make(app: Any) -> httpx.AsyncClient:
            if id(app) not in started:
                started[id(app)] = (await stack.enter_async_context(LifespanManager(app))).app
            transport = httpx.ASGITransport(app=started[id(app)])
            return await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://testserver"))

        yield make


async def test_quickstart_counts_visits(client_of: Callable[[Any], Any]) -> None:
    """Getting started's Starlette app counts one more visit per request of the same browser."""
    client = await client_of((await _namespace_of("getting-started.md", "visits"))["app"])
    assert [(await client.get("/")).json()["visits"] for _ in range(3)] == [1, 2, 3]


async def test_fastapi_example_reads_the_session_back(client_of: Callable[[Any], Any]) -> None:
    """Getting started's FastAPI app signs in, reads the user back, and signs out."""
    client = await client_of((await _namespace_of("getting-started.md", "SessionDep"))["app"])
    assert (await client.get("/me")).json() == {"user": None}
    assert (await client.post("/login", params={"name": "alice"})).json() == {"user": "alice"}
    assert (await client.get("/me")).json() == {"user": "alice"}
    await client.post("/logout")
    assert (await client.get("/me")).json() == {"user": None}


async def test_users_example_lists_and_revokes_devices(client_of: Callable[[Any], Any]) -> None:
    """The users page's app: two browsers of one user, one signs the other out."""
    app = (await _namespace_of("users.md", "sign_out_everywhere_else"))["app"]
    laptop, phone = await client_of(app), await client_of(app)
    for client in (laptop, phone):
        assert (await client.post("/login", json={"user": "alice"})).status_code == 303
    assert len((await laptop.get("/devices")).json()) == 2
    assert (await laptop.post("/devices/sign-out-others")).text == "signed out 1 other devices"
    assert (await phone.get("/devices")).status_code == 401
    assert len((await laptop.get("/devices")).json()) == 1


async def test_metrics_example_counts_events(client_of: Callable[[Any], Any]) -> None:
    """The operations page's listener counts sessions by event type, and Prometheus scrapes the counts."""
    namespace = await _namespace_of("operations.md", "SESSION_EVENTS")
    client = await client_of(namespace["app"])
    await client.get("/")  # a new session: "created"
    await client.get("/")  # the same session, loaded and saved again: no event
    metrics = (await client.get("/metrics/")).text
    assert 'asession_events_total{type="created"} 1.0' in metrics
    assert namespace["SESSION_EVENTS"].labels("created")._value.get() == 1
