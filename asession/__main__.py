"""``python -m asession``: the same as the ``asession`` command."""

from __future__ import annotations

import sys

from asession.cli import main

if __name__ == "__main__":
    sys.exit(main())
