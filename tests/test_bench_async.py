"""The open-loop generator's connections (bankctl.bench_async): replies in order, errors named, a pool that waits."""

from __future__ import annotations

import asyncio

import pytest

from bankctl.bench_async import AsyncPool, ReplyError
from bankctl.embedded_redis import RedisProcess

pytestmark = pytest.mark.redis_server


def test_round_trips_errors_and_waiting_for_a_free_connection(redis_server: RedisProcess) -> None:
    redis_server.client().flushall()

    async def scenario() -> None:
        pool = AsyncPool(str(redis_server.socket), 2)
        await pool.open()
        try:
            assert await pool.execute([("SET", "k", "v"), ("GET", "k"), ("RPUSH", "l", "x")]) == [b"OK", b"v", 1]
            with pytest.raises(ReplyError):
                await pool.execute([("INCR", "k"), ("GET", "k")])
            assert await pool.execute([("GET", "k")]) == [b"v"]  # the failed connection's replies were not left
            # two connections, three blocked pops: the third waits for a free connection, then is served too
            pops = [asyncio.create_task(pool.execute([("BLPOP", f"q{i}", 5)])) for i in range(3)]
            await asyncio.sleep(0.2)
            assert not any(p.done() for p in pops)
            for i in range(3):
                await asyncio.sleep(0.05)
                redis_server.client().rpush(f"q{i}", f"item{i}")
            done = await asyncio.wait_for(asyncio.gather(*pops), timeout=5)
            assert done == [[[f"q{i}".encode(), f"item{i}".encode()]] for i in range(3)]
        finally:
            await pool.close()

    asyncio.run(scenario())
