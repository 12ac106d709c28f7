"""Shared fixtures: a fresh fakeredis per test, and a real redis-server the suite starts itself.

The real server runs on a unix socket in a temp dir (never the machine's shared Redis). In CI (``CI`` set)
a missing redis-server is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis

from bankctl.embedded_redis import RedisProcess, start_redis
from eventstore.keys import Keys


def _require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") or os.environ.get("BANKCTL_REQUIRE_REDIS_SERVER"):
            pytest.fail("redis-server is required here (make test installs it)")
        pytest.skip("redis-server not installed")


@pytest.fixture(scope="session")
def needs_redis_server() -> None:
    """Every test that starts its own redis-server asks for this: a failure under ``make test`` and in CI (which
    installs it), a skip only for a bare ``pytest`` on a machine without it."""
    _require_redis_server()


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def fake_redis() -> Iterator[redis.Redis]:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server, decode_responses=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory, needs_redis_server: None) -> Iterator[RedisProcess]:
    """One real redis-server for the whole session (tests flush it through ``real_redis``)."""
    handle = start_redis(tmp_path_factory.mktemp("redis"), fsync="everysec")
    yield handle
    handle.stop()


@pytest.fixture
def real_redis(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis(unix_socket_path=str(redis_server.socket), decode_responses=False, socket_timeout=10)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def private_redis(tmp_path: Path, needs_redis_server: None) -> Iterator[RedisProcess]:
    """A redis-server of this test alone, AOF always: for SIGKILL/restart and persistence tests."""
    handle = start_redis(tmp_path / "redis", fsync="always")
    yield handle
    handle.kill()


@pytest.fixture(params=["fakeredis", "redis-server"])
def any_redis(request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """The contract fixture: the same test runs on fakeredis and on a real redis-server."""
    if request.param == "fakeredis":
        yield request.getfixturevalue("fake_redis")
    else:
        yield request.getfixturevalue("real_redis")
