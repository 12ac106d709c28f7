"""Rates of the log consumers for ``bankctl bench``: rebuild, audit verify, notifier catch-up; and a fast filler.

The filler appends valid, decided events straight through the append script in big batches (no request
stream, no handler), so a million-event log for the rebuild and audit figures takes seconds, not minutes. The
events are exactly what a handler would append: decided by the pure deciders on the current write-side state,
enveloped and encoded by ``commands.prepare``, checked for versions by the script. Bench-only: never run
against a live bank.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from auth_zkp.principal import Principal
from bankctl.bench_probe import head
from commands.decide import Context, Decision, decide
from commands.models import Deposit, Transfer
from commands.prepare import Origin, prepare_decision
from commands.state_loader import StateLoader
from eventstore.append import Appender, AppendStatus
from eventstore.envelope import utc_timestamp
from eventstore.keys import Keys
from eventstore.pii import PersonalDataVault, load_master_key
from notifier.lease import read_checkpoint

FILL_BATCH = 500
FILL_ACTOR = "system:bench"


@dataclass(frozen=True, slots=True)
class Filled:
    events: int
    deposited: int
    seconds: float


def vault_for(client: redis.Redis, keys: Keys, data_dir: Path) -> PersonalDataVault:
    return PersonalDataVault(client, keys=keys, master_key=load_master_key(data_dir / "master.key"))


def fill_log(client: redis.Redis, keys: Keys, data_dir: Path, accounts: list[int], events: int, *,
             seed: int = 7) -> Filled:
    """Append ``events`` deposits and transfers among ``accounts`` directly (handlers must be idle)."""
    from datetime import UTC, datetime

    rng = random.Random(seed)  # noqa: S311 - workload shape
    loader = StateLoader(client, keys=keys)
    appender = Appender(client, keys=keys)
    vault = vault_for(client, keys, data_dir)
    states = loader.load(accounts)
    principal = Principal(0, "admin")
    began = time.perf_counter()
    done = deposited = 0
    while done < events:
        occurred_at = utc_timestamp(datetime.now(UTC))
        prepared, sums = [], []
        for _ in range(min(FILL_BATCH, events - done)):
            source = accounts[rng.randrange(len(accounts))]
            target = accounts[rng.randrange(len(accounts))]
            amount = rng.randint(100, 5_000)
            command: Deposit | Transfer
            if source != target and states[source].balance >= amount and rng.random() < 0.5:
                command = Transfer(type="Transfer", account=source, to=target, amount=amount)
            else:
                command = Deposit(type="Deposit", account=source, amount=amount)
            outcome = decide(command, states, Context(principal))
            assert isinstance(outcome, Decision), f"filler produced a refused command: {outcome}"
            touched = {a: states[a] for a in outcome.new_states}
            origin = Origin(secrets.token_hex(16), FILL_ACTOR, occurred_at)
            prepared.append(prepare_decision(outcome, touched, origin, keys=keys, vault=vault))
            sums.append(amount if isinstance(command, Deposit) else 0)
            states.update(outcome.new_states)
        results = appender.append(prepared)
        if any(r.status is not AppendStatus.OK for r in results):
            raise RuntimeError("the log filler met a conflict: the handlers must be idle while it runs")
        deposited += sum(sums)
        done += len(prepared)
    return Filled(events=done, deposited=deposited, seconds=time.perf_counter() - began)


def rebuild_rate(client: redis.Redis, keys: Keys, data_dir: Path) -> dict[str, float]:
    """Rebuild a scratch database from seq 1 (the projectors' own files are untouched)."""
    from projections.rebuild import rebuild

    target = data_dir / "bench-rebuild.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    result = rebuild(client, keys, vault_for(client, keys, data_dir), target)
    return {"events": result.events, "seconds": result.seconds, "events_per_s": result.events_per_s}


def audit_rate(client: redis.Redis, keys: Keys, data_dir: Path, databases: dict[str, Path]) -> dict[str, object]:
    """``audit verify`` of the live log (with seals and both databases); the bank must be quiet."""
    from bankctl.audit import verify_redis
    from eventstore.seals import load_public_key

    public = data_dir / "signing.pub"
    report = verify_redis(client, keys, public_key=load_public_key(public) if public.exists() else None,
                          databases=databases)
    return {"events": report.events, "seconds": report.seconds, "events_per_s": report.events_per_s,
            "ok": report.ok, "findings": [f.to_json() for f in report.findings[:5]]}


def outbox_lines(data_dir: Path) -> int:
    path = data_dir / "outbox.jsonl"
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def wait_notifier_caught_up(client: redis.Redis, keys: Keys, timeout_s: float = 120.0) -> float:
    """Seconds until the notifier's checkpoint reaches the head as it was at the call (raises on timeout)."""
    began = time.monotonic()
    target, _ = head(client, keys)
    while time.monotonic() - began < timeout_s:
        if read_checkpoint(client, keys) >= target:
            return time.monotonic() - began
        time.sleep(0.02)
    raise RuntimeError(f"the notifier did not reach seq {target} within {timeout_s:.0f}s")
