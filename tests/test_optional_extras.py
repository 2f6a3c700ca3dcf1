"""A missing optional extra fails at construction with an install hint, never at ``import asession``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _Block())
"""

CASES = [
    ("aiocache", "from asession.backends.cache import CacheBackend; CacheBackend('memory://')", "asession[cache]"),
    ("aiofiles", "from asession.backends.file import FileBackend; FileBackend('.')", "asession[file]"),
    (
        "asyncpg",
        "from asession.backends.db import DatabaseBackend; DatabaseBackend('postgresql://u@127.0.0.1/db')",
        "asession[postgres]",
    ),
    (
        "itsdangerous",
        "from asession.backends.signed_cookies import SignedCookieBackend; SignedCookieBackend('x' * 50)",
        "asession[cookies]",
    ),
    ("fastapi", "import asession.fastapi", "asession[fastapi]"),
]


def _run(blocked: list[str], code: str) -> subprocess.CompletedProcess[str]:
    script = f"BLOCKED = {blocked!r}\n{BLOCKER}\n{textwrap.dedent(code)}"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_import_asession_needs_no_extra() -> None:
    """import asession and backend_from_url work with every optional package missing."""
    blocked = ["aiocache", "redis", "aiomcache", "aiofiles", "asyncpg", "itsdangerous", "fastapi", "uvicorn"]
    result = _run(blocked, "import asession, asession.backends; from asession import SessionMiddleware; print('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize(("blocked", "code", "hint"), CASES, ids=[case[0] for case in CASES])
def test_missing_extra_names_the_install_command(blocked: str, code: str, hint: str) -> None:
    """Constructing a backend whose extra is missing raises with `pip install 'asession[...]'`."""
    result = _run([blocked], code)
    assert result.returncode != 0
    assert f"pip install '{hint}'" in result.stderr, result.stderr
