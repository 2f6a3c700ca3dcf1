"""FailureLog: store failures logged once per burst, not once per request.

When the session store goes down, every request fails the same way; logging each with its traceback
would flood the log at the moment an operator reads it. The first failure of a burst is logged in full;
the failures that follow within :data:`BURST_SECONDS` of the last logged one are only counted, and the
count is reported with the next logged failure and when the store answers again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["BURST_SECONDS", "FailureLog"]

#: Seconds after a logged failure during which further failures are counted instead of logged.
BURST_SECONDS = 10.0


class FailureLog:
    """Log store failures on ``logger``: the first of a burst with its traceback, the rest counted."""

    __slots__ = ("logger", "failing", "_clock", "_quiet_until", "_suppressed", "_since")

    def __init__(self, logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self._clock = clock
        #: Whether the last outcome reported was a failure; the hot path reads only this.
        self.failing = False
        self._quiet_until = 0.0
        self._suppressed = 0
        self._since = 0.0

    def failure(self, message: str, *args: object, exc: BaseException) -> None:
        """Report one failed request; ``message % args`` says what failed and what the visitor got."""
        now = self._clock()
        if not self.failing:
            self.failing = True
            self._since = now
        if now < self._quiet_until:
            self._suppressed += 1
            return
        if self._suppressed:
            message += " (%d more failures of the store in the last %.0f s were not logged)"
            args = (*args, self._suppressed, now - self._since)
        self._quiet_until = now + BURST_SECONDS
        self._suppressed = 0
        self.logger.error(message, *args, exc_info=exc)

    def recovered(self, store: object) -> None:
        """Report that ``store`` answered again after failures (call it only while :attr:`failing`)."""
        now = self._clock()
        self.logger.warning(
            "%r answers again after %.1f s of failures (%d of them not logged).",
            store,
            now - self._since,
            self._suppressed,
        )
        self.failing = False
        self._suppressed = 0
        self._quiet_until = 0.0
