"""Changes: what one request did to a stored session, merged into the session as it is stored now.

Concurrent requests of one session (tabs, SPA fetches) each load the session, change a few keys and
save. Writing the whole mapping back would let the last response undo the others; writing only what
changed, merged atomically into the stored session, keeps every request's keys. :class:`Changes` is
that difference: the keys set (with their new values), the keys deleted, and whether the request
cleared the session, which replaces the stored mapping instead of merging into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Changes"]


@dataclass(frozen=True, slots=True)
class Changes:
    """Keys to set (``changed``) and to delete (``removed``); ``replace`` drops every other key too."""

    changed: Mapping[str, Any]
    removed: frozenset[str] = frozenset()
    replace: bool = False

    def apply(self, current: dict[str, Any]) -> dict[str, Any]:
        """Return ``current`` with the changes applied (``current`` is modified in place)."""
        if self.replace:
            return dict(self.changed)
        for key in self.removed:
            current.pop(key, None)
        current.update(self.changed)
        return current
