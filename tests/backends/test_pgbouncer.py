"""PostgreSQL behind PgBouncer (issue #13): URL options, and concurrent work through transaction pooling.

The whole parametrised backend suite also runs through PgBouncer (``pgbouncer_backend`` in
``tests/conftest.py``); these are the cases specific to it.
"""

from __future__ import annotations

import asyncio

import pytest

from asession import ImproperlyConfigured, Session
from asession.backends.db import DatabaseBackend

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db?statement_cache_size=-1",
        "postgresql://u@h/db?statement_cache_size=many",
        "postgresql://u@h/db?statement_cache_size=",
        "postgresql://u@h/db?statement_cache_size=0&statement_cache_size=1",
    ],
)
def test_bad_statement_cache_size_is_refused(url: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="statement_cache_size"):
        DatabaseBackend(url)


def test_statement_cache_size_in_url_and_argument_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="both"):
        DatabaseBackend("postgresql://u@h/db?statement_cache_size=0", statement_cache_size=0)
    with pytest.raises(ImproperlyConfigured, match="non-negative"):
        DatabaseBackend("postgresql://u@h/db", statement_cache_size=True)


def test_statement_cache_size_is_taken_out_of_the_url() -> None:
    backend = DatabaseBackend("postgresql://u@h/db?statement_cache_size=0&application_name=shop")
    driver = backend.driver
    assert driver.statement_cache_size == 0  # type: ignore[attr-defined]
    assert driver.url == "postgresql://u@h/db?application_name=shop"  # type: ignore[attr-defined]
    assert driver.server_settings == {}  # type: ignore[attr-defined]  # the URL names the application


async def test_synchronous_commit_off_reaches_postgresql(postgres_url: str) -> None:
    from tests.servers import clean_postgres, with_query

    async with DatabaseBackend(with_query(postgres_url, synchronous_commit="off")) as backend:
        async with backend.driver.pool.acquire() as connection:  # type: ignore[attr-defined]
            assert await connection.fetchval("SHOW synchronous_commit") == "off"
        key = await backend.create({"a": 1}, 60)
        assert await backend.load(key) == {"a": 1}
    await clean_postgres(postgres_url)


async def test_many_concurrent_requests_through_transaction_pooling(pgbouncer_url: str, postgres_url: str) -> None:
    """Updates, creations, logins and listings interleaved over a pool bigger than PgBouncer's server pool."""
    from tests.servers import clean_postgres

    backend = DatabaseBackend(f"{pgbouncer_url}?statement_cache_size=0", max_pool_size=30)
    async with backend:
        key = await backend.create({}, 600)

        async def writer(index: int) -> None:
            session = Session(backend, key)
            await session.load()
            session[f"k{index}"] = index
            await session.save()

        async def login(index: int) -> None:
            await Session(backend).login(f"user-{index % 3}")

        await asyncio.gather(*(writer(i) for i in range(40)), *(login(i) for i in range(30)))
        assert await backend.load(key) == {f"k{i}": i for i in range(40)}
        assert sum([len(await backend.user_sessions(f"user-{u}")) for u in range(3)]) == 30
    await clean_postgres(postgres_url)


async def test_named_statements_fail_through_transaction_pooling(pgbouncer_url: str, postgres_url: str) -> None:
    """The control: with asyncpg's statement cache on, PgBouncer's transaction pooling loses the statements.

    This is what ``?statement_cache_size=0`` is for, and proof that the PgBouncer the suite runs through
    really hands transactions to whatever server connection is free.
    """
    from asession import BackendUnavailableError
    from tests.servers import clean_postgres

    failures: list[str] = []

    async def login(index: int) -> None:
        try:
            await Session(backend).login(f"user-{index % 3}")
        except BackendUnavailableError as exc:
            failures.append(str(exc))

    backend = DatabaseBackend(pgbouncer_url, max_pool_size=20)
    async with backend:
        await asyncio.gather(*(login(i) for i in range(60)))
    await clean_postgres(postgres_url)
    assert failures and all("prepared statement" in failure for failure in failures)
