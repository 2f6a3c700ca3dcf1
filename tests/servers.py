"""Clean-up of the shared test servers, so every test leaves Redis, memcached and PostgreSQL as it found them."""

from __future__ import annotations

from urllib.parse import urlsplit

#: The table DatabaseBackend uses unless told otherwise.
POSTGRES_TABLE = "asession_sessions"


async def clean_postgres(url: str, table: str = POSTGRES_TABLE) -> None:
    """Empty the sessions table the tests wrote to."""
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f'DELETE FROM "{table}"')
    except asyncpg.UndefinedTableError:
        pass
    finally:
        await connection.close()


async def clean_redis(url: str) -> None:
    """Flush the Redis database the tests used (db 15 by default, never db 0 unless configured)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


async def clean_memcached(url: str) -> None:
    """Flush the test memcached server."""
    import aiomcache

    parts = urlsplit(url)
    client = aiomcache.Client(parts.hostname or "127.0.0.1", parts.port or 11211)
    try:
        await client.flush_all()
    finally:
        await client.close()
