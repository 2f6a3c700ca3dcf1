"""The README's two commands are the ones CI runs, its Python examples run as written, its shell commands exist.

The Python and shell blocks go through :mod:`tests.snippets`, as the documentation site's do
(``tests/test_docs.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.snippets import Snippet, check_shell_block, defined_extras, run_blocks, snippets

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _readme_commands() -> list[str]:
    text = README.read_text()
    head = text[: text.index("## ")]  # the commands stand before the first section
    return re.findall(r"```(?:bash|sh|console)\n(.*?)\n```", head, flags=re.S)


def test_readme_opens_with_the_demo_and_test_commands() -> None:
    """The README starts with two commands: run the demo on SQLite, and run the whole test suite."""
    demo, test = _readme_commands()[:2]
    assert "asession demo" in demo and "pip install" in demo
    assert "pytest" in test and "pip install" in test


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """.ci/run ends with the README's test command, character for character."""
    test = _readme_commands()[1].strip()
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci_lines[-1] == test


# Starlette 1.x's TestClient (the testing section) prefers httpx2 and warns when it falls back to httpx.
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
async def test_readme_python_blocks_run(tmp_cwd: Path) -> None:
    """Every ``python`` block runs as written (the top-level ``async with`` too); both apps answer without a 5xx."""
    blocks = snippets(README, "python")
    run = await run_blocks(blocks)
    assert run.blocks == [block.name for block in blocks]
    assert len(run.apps) == 2  # the Starlette quickstart and the FastAPI app
    assert [test.split("::")[1] for test in run.tests] == ["test_a_signed_in_user_sees_their_cart"]  # Testing's


@pytest.mark.parametrize("block", [pytest.param(block, id=block.name) for block in snippets(README, "bash")])
def test_readme_bash_blocks_name_commands_that_exist(block: Snippet, capsys: pytest.CaptureFixture[str]) -> None:
    """``asession`` subcommands and options, and ``pip install`` extras, that a ``bash`` block shows exist."""
    check_shell_block(block, defined_extras(ROOT / "pyproject.toml"), capsys)
