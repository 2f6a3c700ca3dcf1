"""Run the fenced code blocks of Markdown pages (README.md, docs/), so that no example rots.

:func:`snippets` finds the blocks of a page; :func:`run_blocks` runs ``python`` blocks the way a reader
would paste them: each in a fresh namespace (or, after a ``<!-- continue -->`` line, in the namespace of
the block before it), with top-level ``await`` allowed; the caller picks the working directory. A block
that defines ``app`` has it served through httpx's ``ASGITransport`` (with its lifespan, as a server runs
it): every route without path parameters is requested twice with one cookie jar (requests other than GET
send ``{}`` as JSON), and none may answer 5xx. A block that defines ``test_*`` functions has them called,
with fixtures such as ``asession_backend`` passed by name, as pytest would. ``replacements`` rewrite the
text of a block before it runs (a server URL for the test server's). ``bash`` blocks are not run:
:func:`shell_commands` and :func:`extras_named` let a test check what they name.

Tracebacks point into the page: a block is compiled under the page's path with its own line numbers.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.routing import BaseRoute

#: The line that makes the next block run in the namespace of the block before it.
CONTINUE_MARKER = "<!-- continue -->"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+)(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Snippet:
    """One fenced block of a Markdown page."""

    path: Path
    #: The line of the opening fence, counted from 1.
    line: int
    language: str
    code: str
    #: The block runs in the namespace of the block before it (a ``<!-- continue -->`` line precedes it).
    continues: bool

    @property
    def name(self) -> str:
        """``page.md:line``, for test ids and messages."""
        return f"{self.path.name}:{self.line}"


def snippets(path: Path, language: str | None = None) -> list[Snippet]:
    """The fenced blocks of the page at ``path`` (only those of ``language`` when given), in page order.

    Blocks indented under a list item are dedented by their fence's indentation.
    """
    found: list[Snippet] = []
    lines = path.read_text().splitlines()
    index = 0
    previous = ""
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            if lines[index].strip():
                previous = lines[index].strip()
            index += 1
            continue
        indent, fence = match["indent"], match["fence"]
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != fence:
            body.append(lines[index][len(indent) :] if lines[index].startswith(indent) else lines[index].lstrip())
            index += 1
        block_language = match["info"].strip().split(" ")[0].lower()
        if language is None or block_language == language:
            found.append(Snippet(path, start + 1, block_language, "\n".join(body) + "\n", previous == CONTINUE_MARKER))
        previous = ""
        index += 1
    return found


def _compile(snippet: Snippet, code: str) -> Any:
    # Blank lines in front keep the page's line numbers in tracebacks.
    return compile("\n" * snippet.line + code, str(snippet.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


async def run_snippet(snippet: Snippet, namespace: dict[str, Any], replacements: Mapping[str, str] = {}) -> None:
    """Run one block in ``namespace`` (top-level ``await`` allowed), its text rewritten by ``replacements``."""
    code = snippet.code
    for old, new in replacements.items():
        code = code.replace(old, new)
    result = eval(_compile(snippet, code), namespace)  # the project's own documentation
    if inspect.iscoroutine(result):
        await result


def _plain_routes(app: Any) -> Iterator[tuple[str, str]]:
    """``(method, path)`` of every route of a Starlette or FastAPI app that takes no path parameters."""
    for route in getattr(app, "routes", ()):
        if not isinstance(route, BaseRoute):
            continue
        path = getattr(route, "path", "")
        methods = getattr(route, "methods", None) or ()
        if not path or "{" in path:
            continue
        for method in sorted(set(methods) - {"HEAD"}):
            yield method, path


async def exercise_app(app: Any) -> list[httpx.Response]:
    """Serve ``app`` with its lifespan and request each plain route twice, one cookie jar for all.

    Requests other than GET carry an empty JSON object.
    Returns the responses; fails when one is a 5xx (a 4xx, such as FastAPI's 422 for a missing query
    parameter, is the app answering).
    """
    responses: list[httpx.Response] = []
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            for method, path in _plain_routes(app):
                for _ in range(2):
                    response = await client.request(method, path, json={} if method != "GET" else None)
                    assert response.status_code < 500, f"{method} {path} answered {response.status_code}"
                    responses.append(response)
    return responses


async def call_tests(namespace: Mapping[str, Any], fixtures: Mapping[str, Callable[[], Any]]) -> list[str]:
    """Call every ``test_*`` function the block defined, with the fixtures its parameters name; their names.

    A fixture factory is called once per test (and awaited when it returns an awaitable). Synchronous
    tests run on a thread of their own, as pytest would run them outside any event loop (Starlette's
    ``TestClient`` starts its own).
    """
    called = []
    for name, function in list(namespace.items()):
        if not name.startswith("test_") or not inspect.isfunction(function):
            continue
        arguments = {}
        for parameter in inspect.signature(function).parameters:
            value = fixtures[parameter]()
            arguments[parameter] = await value if inspect.isawaitable(value) else value
        if inspect.iscoroutinefunction(function):
            await function(**arguments)
        else:
            await asyncio.to_thread(function, **arguments)
        called.append(name)
    return called


@dataclass
class PageRun:
    """What running a page did: the blocks run, the apps served, the test functions called."""

    blocks: list[str]
    apps: list[str]
    tests: list[str]


async def run_blocks(
    blocks: list[Snippet],
    *,
    replacements: Mapping[str, str] = {},
    prelude: Mapping[str, Any] = {},
    fixtures: Mapping[str, Callable[[], Any]] = {},
) -> PageRun:
    """Run ``blocks`` in page order, each in a fresh namespace (``prelude``'s names in it) unless it continues.

    Serves each ``app`` a block defines (:func:`exercise_app`) and calls its ``test_*`` functions
    (:func:`call_tests`). The caller sets the working directory.
    """
    run = PageRun([], [], [])
    namespace: dict[str, Any] = {}
    for snippet in blocks:
        if not snippet.continues:
            namespace = {"__name__": "__snippet__", **prelude}
        known = {name: id(value) for name, value in namespace.items()}
        await run_snippet(snippet, namespace, replacements)
        run.blocks.append(snippet.name)
        defined = {name for name, value in namespace.items() if known.get(name) != id(value)}
        if "app" in defined:
            await exercise_app(namespace["app"])
            run.apps.append(snippet.name)
        tests = await call_tests({name: namespace[name] for name in defined}, fixtures)
        run.tests.extend(f"{snippet.name}::{name}" for name in tests)
    return run


# -- shell blocks: checked, not run -------------------------------------------------------------------------


def shell_commands(snippet: Snippet) -> Iterator[list[str]]:
    """The commands of a ``bash`` block, split into words: comments dropped, ``&&`` chains split."""
    import shlex

    for line in snippet.code.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";"):
                if command:
                    yield command
                command = []
            else:
                command.append(word)


def extras_named(words: list[str]) -> set[str]:
    """The extras a ``pip install`` command asks for: ``'asession[a,b]'``, ``-e '.[a,b]'``."""
    found: set[str] = set()
    for word in words:
        match = re.fullmatch(r"(?:asession|\.)\[(?P<extras>[a-z0-9,_-]+)\]", word)
        if match:
            found.update(match["extras"].split(","))
    return found


def defined_extras(pyproject: Path) -> set[str]:
    """The extras ``pyproject.toml`` defines (its ``[project.optional-dependencies]`` table)."""
    table = pyproject.read_text().split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([a-z0-9_-]+) = \[", table, flags=re.M))


def check_shell_block(block: Snippet, extras: set[str], capsys: pytest.CaptureFixture[str]) -> None:
    """What a ``bash`` block shows exists: ``asession`` subcommands and their options, ``pip`` extras.

    Other commands (uvicorn, docker-compose, ...) are left alone.
    """
    from asession.cli import main

    for words in shell_commands(block):
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
            words = words[1:]
        if not words:
            continue
        if words[0] == "asession":
            command = words[1]
            assert main([command, "--help"]) == 0, f"{block.name}: no `asession {command}`"
            usage = capsys.readouterr().out
            for word in words[2:]:
                if word.startswith("--"):
                    option = word.split("=")[0]
                    assert option in usage, f"{block.name}: `asession {command}` has no {option}"
        elif words[0] == "pip":
            unknown = extras_named(words) - extras
            assert not unknown, f"{block.name}: no such extras {unknown}"
