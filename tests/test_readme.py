"""The README's two commands are the ones CI runs, and its Python examples type-check as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
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
