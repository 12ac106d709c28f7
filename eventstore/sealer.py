"""The sealer worker: follows the log and appends signed checkpoints to ``{bank}:seals`` (DESIGN §1).

Every second (or every :data:`SEAL_EVERY_EVENTS` events) it signs the running chain at the last event it read.
Seals are XADDed with the stream id ``<seq>-0``: two sealers racing cannot write two seals for one seq, and a
restarted sealer continues from the last seal's chain (whose signature it checks first) instead of the start.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from eventstore.connection import MAX_BLOCK_MS, connect, connect_bus
from eventstore.envelope import utc_timestamp
from eventstore.keys import KEYS, Keys
from eventstore.log import LogFollower
from eventstore.seals import GENESIS, LEAF_BYTES, extend_chain, last_seal, load_signing_key, sign_seal, verify_seal
from eventstore.worker import (
    LAST_IN_LINE_NICE,
    FatalWorkerError,
    WorkerRunner,
    configure_logging,
    yield_cpu_to_commands,
)

log = logging.getLogger("bank.sealer")

SEAL_EVERY_EVENTS = 1000
SEAL_EVERY_S = 1.0
READ_COUNT = 1000
LINGER_S = 0.1
"""After a read that found the sealer at the head, wait this long before the next."""


class Sealer:
    """Follows the log from the last seal and signs checkpoints."""

    kind = "sealer"

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: Keys,
        private_key: Ed25519PrivateKey,
        block_ms: int = 200,
        every_events: int = SEAL_EVERY_EVENTS,
        every_s: float = SEAL_EVERY_S,
        linger_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.keys = keys
        self.follower = LogFollower(client, keys)  # the head, on a direct connection (see eventstore.direct)
        self.private_key = private_key
        self.block_ms = block_ms
        self.every_events = every_events
        self.every_s = every_s
        self.linger_s = linger_s
        self._sleep = sleep
        self.counters: dict[str, int] = {"events": 0, "seals": 0}
        self.sealed_seq = 0
        self._chain = GENESIS
        self._seq = 0
        self._leaves: list[bytes] = []
        self._last_seal_at = time.monotonic()
        self._started = False

    def _resume(self) -> None:
        """Continue after the last seal, whose signature must be ours and valid."""
        seal = last_seal(self.client, self.keys)
        if seal is not None:
            if not verify_seal(self.private_key.public_key(), seal):
                raise FatalWorkerError(f"the last seal (seq {seal.seq}) does not verify with this signing key")
            self.sealed_seq = self._seq = seal.seq
            self._chain = bytes.fromhex(seal.chain)
        self._leaves = []
        self._started = True

    def poll_once(self) -> int:
        try:
            return self._follow()
        except (redis.ConnectionError, redis.TimeoutError):
            # Redis may come back with less than was read (or, once the handlers append again, with other events
            # at those seqs): start again from the last seal it holds, never seal what was read before.
            self._started = False
            raise

    def _follow(self) -> int:
        if not self._started:
            self._resume()
        events = self.follower.read_after(self._seq, count=READ_COUNT, block_ms=self.block_ms)
        for event in events:
            if event.seq != self._seq + 1 or event.entry_id != f"{event.seq}-0":
                raise FatalWorkerError(
                    f"log gap or disorder: expected seq {self._seq + 1}, found {event.seq} ({event.entry_id})"
                )
            event_digest = hashlib.sha256(event.body).digest()
            self._chain = extend_chain(self._chain, event_digest)
            self._leaves.append(event_digest[:LEAF_BYTES])
            self._seq = event.seq
            self.counters["events"] += 1
            if len(self._leaves) >= self.every_events:
                self.seal()
        if self._leaves and time.monotonic() - self._last_seal_at >= self.every_s:
            self.seal()
        if self.linger_s > 0 and 0 < len(events) < READ_COUNT:
            # Seals come once a second: reading after every append only costs CPU the commands could use
            # (measured at 2,000 commands/s: the sealer's CPU fell by three quarters with this pause).
            self._sleep(self.linger_s)
        return len(events)

    def seal(self) -> None:
        """Sign the chain at the last event read and append the seal (id ``<seq>-0``)."""
        if not self._leaves:
            return
        seal = sign_seal(
            self.private_key, seq=self._seq, first_seq=self.sealed_seq + 1, chain=self._chain,
            leaves=b"".join(self._leaves), signed_at=utc_timestamp(datetime.now(UTC)),
        )
        try:
            self.client.xadd(self.keys.seals, seal.to_fields(), id=f"{seal.seq}-0")
        except redis.ResponseError as error:
            if "equal or smaller" not in str(error):
                raise
            # Another sealer got there first: start over from its last seal.
            log.warning("seal at %d already exists; resuming from the newest seal", seal.seq)
            self._started = False
            return
        self.sealed_seq = self._seq
        self._leaves = []
        self._last_seal_at = time.monotonic()
        self.counters["seals"] += 1

    def flush(self) -> None:
        """Seal whatever was read but not yet sealed (on shutdown)."""
        if self._started:
            self.seal()


def main(*, redis_url: str, bus_url: str | None = None, data_dir: Path, name: str = "sealer", keys: Keys = KEYS,
         **_options: object) -> int:
    configure_logging()
    yield_cpu_to_commands(default=LAST_IN_LINE_NICE)  # seals may lag a second behind the log; commands may not
    key_path = Path(data_dir) / "signing.key"
    try:
        private_key = load_signing_key(key_path)
    except (OSError, ValueError) as error:
        log.error("cannot load the signing key %s: %s", key_path, error)
        return 1
    client = connect(redis_url)
    sealer = Sealer(client, keys=keys, private_key=private_key, block_ms=min(500, MAX_BLOCK_MS), linger_s=LINGER_S)
    bus = connect_bus(bus_url, log_url=redis_url, log_client=client)  # heartbeats
    runner = WorkerRunner(sealer, client=bus, keys=keys, name=name,
                          extra_status=lambda: {"sealed_seq": sealer.sealed_seq})
    runner.install_signal_handlers()
    code = runner.run()
    try:
        sealer.flush()
    except redis.RedisError as error:
        log.warning("could not write the final seal: %s", error)
    return code
