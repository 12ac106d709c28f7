"""Redis connection settings (DESIGN §9): one place that knows timeouts and the URL."""

from __future__ import annotations

import os

import redis

ENV_REDIS_URL = "BANKCTL_REDIS_URL"
# The request bus: commands, queries, replies, heartbeats. Unset: the log's Redis carries them too.
ENV_BUS_URL = "BANKCTL_BUS_URL"
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
# Blocking reads must stay well below the socket timeout, or redis-py times out first (DESIGN §10).
MAX_BLOCK_MS = 2000


def connect(url: str, *, socket_timeout: float = SOCKET_TIMEOUT_S) -> redis.Redis:
    """A client that returns bytes (bodies are hashed byte for byte) with explicit timeouts."""
    return redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=30,
    )


def connect_bus(bus_url: str | None, *, log_url: str, log_client: redis.Redis) -> redis.Redis:
    """The request bus's client: ``log_client`` itself when the bus is the log's Redis (no URL, or the same)."""
    if not bus_url or bus_url == log_url:
        return log_client
    return connect(bus_url)


def url_from_env(default: str | None = None) -> str | None:
    return os.environ.get(ENV_REDIS_URL) or default
