"""Settings of bankctl and the workers: options or ``BANKCTL_*`` environment variables (DESIGN §9)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import redis

from eventstore.connection import connect
from eventstore.keys import Keys

ENV_DATA_DIR = "BANKCTL_DATA_DIR"
ENV_REDIS_URL = "BANKCTL_REDIS_URL"
ENV_BUS_URL = "BANKCTL_BUS_URL"
ENV_PROFILE = "BANKCTL_PROFILE"
DEFAULT_DATA_DIR = "./var"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    redis_url_override: str | None
    profile: str = "default"
    keys: Keys = Keys()
    bus_url_override: str | None = None

    @classmethod
    def from_env(
        cls, *, data_dir: str | None = None, redis_url: str | None = None, profile: str | None = None,
        bus_url: str | None = None,
    ) -> Settings:
        return cls(
            data_dir=Path(data_dir or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR).resolve(),
            redis_url_override=redis_url or os.environ.get(ENV_REDIS_URL) or None,
            profile=profile or os.environ.get(ENV_PROFILE) or "default",
            bus_url_override=bus_url or os.environ.get(ENV_BUS_URL) or None,
        )

    @property
    def embedded(self) -> bool:
        """True when bankctl runs its own redis-server (no BANKCTL_REDIS_URL)."""
        return self.redis_url_override is None

    @property
    def embedded_bus(self) -> bool:
        """True when bankctl runs the request bus too: embedded Redis and no BANKCTL_BUS_URL."""
        return self.embedded and self.bus_url_override is None

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def bus_dir(self) -> Path:
        return self.data_dir / "bus"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def master_key_path(self) -> Path:
        return self.data_dir / "master.key"

    @property
    def signing_key_path(self) -> Path:
        return self.data_dir / "signing.key"

    @property
    def transport_key_path(self) -> Path:
        return self.data_dir / "transport.key"

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "outbox.jsonl"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    def database_path(self, number: int) -> Path:
        return self.data_dir / f"database{number}.db"

    def redis_url(self, role: str = "admin") -> str:
        """The log's Redis for ``role``; with the embedded server and ACL secrets present, the role's credentials."""
        if self.redis_url_override is not None:
            return self.redis_url_override
        return self._embedded_url(self.redis_dir, role)

    def bus_url(self, role: str = "admin") -> str:
        """The request bus for ``role``: BANKCTL_BUS_URL, else the embedded bus, else the log's Redis itself."""
        if self.bus_url_override is not None:
            return self.bus_url_override
        if self.redis_url_override is not None:
            return self.redis_url_override
        return self._embedded_url(self.bus_dir, role)

    def _embedded_url(self, directory: Path, role: str) -> str:
        base = f"unix://{directory / 'redis.sock'}"
        password_file = self.secrets_dir / f"{role}.password"
        if not password_file.exists():
            return base
        password = password_file.read_text().strip()
        parts = urlsplit(base)
        netloc = f"{quote(role)}:{quote(password)}@{parts.netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def connect(self, role: str = "admin", *, socket_timeout: float | None = None) -> redis.Redis:
        """The log's Redis (events, write-side state, sessions, seals)."""
        if socket_timeout is None:
            return connect(self.redis_url(role))
        return connect(self.redis_url(role), socket_timeout=socket_timeout)

    def connect_bus(self, role: str = "admin", *, socket_timeout: float | None = None) -> redis.Redis:
        """The request bus (commands, queries, replies, heartbeats)."""
        if socket_timeout is None:
            return connect(self.bus_url(role))
        return connect(self.bus_url(role), socket_timeout=socket_timeout)
