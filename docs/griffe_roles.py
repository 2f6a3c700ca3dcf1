"""A griffe extension for the API reference: the code's docstrings use reST roles, the site Markdown.

``:class:`~asession.Session``` becomes ```Session```, ``:meth:`load``` becomes ```load```, and a
double-backquoted literal (````x````) becomes ```x```, before mkdocstrings renders the docstrings. Only the
text changes; the docstrings in the code stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

#: A reST role with its target: ``:class:`~a.b.C```, ``:meth:`Session.login <asession.Session.login>```.
_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`(?P<target>[^`]+)`")
_LITERAL = re.compile(r"``(?P<text>[^`]+?)``")


def _role(match: re.Match[str]) -> str:
    target = match["target"]
    if "<" in target and target.endswith(">"):  # an explicit title: `title <target>`
        return f"`{target[: target.index('<')].strip()}`"
    if target.startswith("~"):  # the last component only, as Sphinx shows it
        return f"`{target[1:].rsplit('.', 1)[-1]}`"
    return f"`{target}`"


def to_markdown(text: str) -> str:
    """``text`` with its reST roles and double-backquoted literals written as Markdown code."""
    return _ROLE.sub(_role, _LITERAL.sub(lambda match: f"`{match['text']}`", text))


class RolesToMarkdown(griffe.Extension):
    """Rewrites every docstring griffe loads with :func:`to_markdown`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
