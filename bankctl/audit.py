"""The auditor: replay the whole log and prove it is intact and consistent (issue 3, DESIGN §1, §4).

Checks, each reported as a :class:`Finding` with the seq where it happens:

- every entry: stream id ``<seq>-0``, gapless and increasing seq, a valid envelope (fast structural check,
  pydantic ``Event`` for the details), ``body.seq``/``body.type`` equal to the entry's fields, canonical bytes;
- the running SHA-256 chain against every seal, each seal's Ed25519 signature and key id; on a mismatch the
  seal's leaves name the exact events that differ; seals beyond the end of the log (truncation);
- the money: no negative balance, every ``balance_after`` consistent with the replay, every transfer nets to
  zero, deposits minus withdrawals equal the sum of balances, versions advance by one per command, no
  command id in two places, no event id twice;
- the final state of every account against the write side (``{bank}:acct:<id>``: version, balance, status)
  and every account hash of an id the bank could have issued (up to the account-id counter; ``scan_keyspace``
  looks at every key), the seq counter against the log head, and both databases at their own checkpoints.

On a big log the hash chain (and the canonical-bytes check) runs in a forked child while this process replays
(:mod:`bankctl.audit_chain`), and the write side is read during the replay.

A missing database is a warning (projectors may be down or rebuilding) unless ``require_databases`` is set.
Events after the last seal are a warning (the sealer seals every second). Offline verification reads an export
(:func:`export_log`) instead of Redis.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pydantic
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bankctl.audit_chain import CHILD_MIN_EVENTS, NOT_CANONICAL, ChainCheck, ChainCheckProcess, RawEntry
from eventstore.envelope import EVENT_TYPES, SCHEMA_VERSION, Event
from eventstore.gc_pause import paused_gc
from eventstore.keys import Keys
from eventstore.log_pages import PageReader
from eventstore.seals import (
    Seal,
    key_id,
    public_key_bytes,
    public_key_from_bytes,
    read_seals,
    verify_seal,
)
from projections.schema import DatabaseUnusable, open_readonly, read_checkpoint

EXPORT_FORMAT = "fintech-fortress-audit"
EXPORT_VERSION = 1
PAGE = 500
MAX_FINDINGS_PER_CHECK = 50

ENVELOPE_KEYS = frozenset({"event_id", "type", "schema", "seq", "accounts", "versions", "command_id",
                           "correlation_id", "causation_id", "actor", "occurred_at", "data"})
_TYPE_BYTES = {name: name.encode() for name in EVENT_TYPES}
"""Every known event type and its bytes as in the entry's ``type`` field."""

def _ints(values: list[Any]) -> bool:
    for value in values:
        if type(value) is not int:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    seq: int | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "seq": self.seq, "message": self.message}


@dataclass
class AuditReport:
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    events: int = 0
    head_seq: int = 0
    seals: int = 0
    sealed_seq: int = 0
    accounts: int = 0
    total_balance: int = 0
    seconds: float = 0.0
    databases: dict[str, Any] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "events": self.events, "head_seq": self.head_seq, "seals": self.seals,
            "sealed_seq": self.sealed_seq, "accounts": self.accounts, "total_balance_cents": self.total_balance,
            "seconds": round(self.seconds, 3), "events_per_s": round(self.events_per_s),
            "findings": [f.to_json() for f in self.findings], "warnings": self.warnings,
            "databases": self.databases, "suppressed_findings": self.suppressed,
        }

    def render(self) -> str:
        lines = [
            f"log: {self.events} events, head seq {self.head_seq}; {self.seals} seals up to seq {self.sealed_seq}",
            f"accounts: {self.accounts}, total balance {self.total_balance / 100:.2f}",
            f"replayed in {self.seconds:.2f}s ({self.events_per_s:,.0f} events/s)",
        ]
        for name, info in self.databases.items():
            lines.append(f"{name}: {info}")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        if self.ok:
            lines.append("OK: no findings")
        else:
            lines.append(f"FAILED: {len(self.findings)} finding(s)")
            for finding in self.findings:
                where = f"seq {finding.seq}" if finding.seq is not None else "-"
                lines.append(f"  [{finding.check}] {where}: {finding.message}")
            for check, count in self.suppressed.items():
                lines.append(f"  ... and {count} more [{check}] finding(s)")
        return "\n".join(lines)


@dataclass(slots=True)
class _Account:
    balance: int = 0
    version: int = 0
    status: str = "open"
    last_seq: int = 0
    last_command: str = ""


@dataclass
class DatabaseView:
    """What a projection database says at its checkpoint (read before the replay reaches it)."""

    name: str
    checkpoint: int
    accounts: dict[int, tuple[int, str, int]]
    transactions: int


class Auditor:
    """Streaming replay: :meth:`feed` entries in stream order, then :meth:`finish`."""

    def __init__(self, *, public_key: Ed25519PublicKey | None, seals: Iterable[Seal],
                 databases: Sequence[DatabaseView] = ()) -> None:
        self.report = AuditReport()
        self.public_key = public_key
        self.seals = sorted(seals, key=lambda s: s.seq)
        self.report.seals = len(self.seals)
        self.report.sealed_seq = self.seals[-1].seq if self.seals else 0
        self._chain_check = ChainCheck(self.seals)
        self._chain_child: ChainCheckProcess | None = None
        self._expected = 1
        self._head = 0
        self._accounts: dict[int, _Account] = {}
        self._commands: set[str] = set()
        self._event_ids: set[str] = set()
        self._last_command = ""
        self._deposited = 0
        self._withdrawn = 0
        self._legs = 0
        self._databases = sorted((d for d in databases if d.checkpoint > 0), key=lambda d: d.checkpoint)
        for view in databases:
            if view.checkpoint == 0:
                self.report.warnings.append(f"{view.name} is empty (checkpoint 0): not compared")
        self._db_index = 0
        self._started = time.perf_counter()
        if public_key is None and self.seals:
            self.report.warnings.append("no public key: seal signatures were not checked")
        self._check_seal_signatures()

    # ---------------------------------------------------------------- findings

    def finding(self, check: str, seq: int | None, message: str) -> None:
        shown = sum(1 for f in self.report.findings if f.check == check)
        if shown >= MAX_FINDINGS_PER_CHECK:
            self.report.suppressed[check] = self.report.suppressed.get(check, 0) + 1
            return
        self.report.findings.append(Finding(check, seq, message))

    def _check_seal_signatures(self) -> None:
        previous = 0
        for seal in self.seals:
            if seal.first_seq != previous + 1:
                self.finding("seal", seal.seq, f"seal covers {seal.first_seq}..{seal.seq} but the previous seal "
                                               f"ended at {previous}")
            previous = seal.seq
            if self.public_key is not None and not verify_seal(self.public_key, seal):
                self.finding("seal", seal.seq, f"seal at seq {seal.seq} has an invalid signature or key id")

    # ---------------------------------------------------------------- the replay

    def replayed_accounts(self) -> set[int]:
        """Every account the replay has seen opened."""
        return set(self._accounts)

    def check_chain_in_child(self, source: Callable[[], Iterable[RawEntry]]) -> None:
        """Fork a child that checks the hash chain over ``source()`` (the same log, read again) while the next
        :meth:`feed` only replays: a big log's audit uses both cores. Call before starting any thread."""
        self._chain_child = ChainCheckProcess(self._chain_check, source)

    def feed(self, entries: Iterable[RawEntry]) -> None:
        """Replay ``entries`` (over 100,000 events/s at a million events), the cyclic collector paused; the hash
        chain is checked over the same entries, unless a child checks it (:meth:`check_chain_in_child`)."""
        with paused_gc():
            child, self._chain_child = self._chain_child, None
            if child is None:
                self._feed(self._chain_check.follow(entries), check_canonical=True)
                return
            try:
                self._feed(entries, check_canonical=False)
            except BaseException:
                child.abandon()
                raise
            child.result()

    def _feed(self, entries: Iterable[RawEntry], *, check_canonical: bool) -> None:
        """The hot loop: state lives in locals and goes back to ``self`` at the end.

        ``check_canonical``: compare each body with its canonical re-encoding here (else the chain's child does).

        Money events whose every check passes take an inlined path that first proves, without changing any
        state, that :meth:`_replay` would find nothing, then applies what it would apply. Anything else (other
        event types, malformed data, any would-be finding) goes through :meth:`_valid_envelope` and
        :meth:`_replay`, so the findings are exactly those of the general code.
        """
        loads = orjson.loads
        dumps = orjson.dumps
        decode_error = orjson.JSONDecodeError
        sort_keys = orjson.OPT_SORT_KEYS
        never = float("inf")
        envelope_keys = ENVELOPE_KEYS
        type_bytes = _TYPE_BYTES
        schema_version = SCHEMA_VERSION
        databases = self._databases
        expected, head = self._expected, self._head
        states = self._accounts
        commands, event_ids = self._commands, self._event_ids
        add_command, add_event_id = commands.add, event_ids.add
        last_command = self._last_command
        next_db = databases[self._db_index].checkpoint if self._db_index < len(databases) else never
        count = 0
        for entry_id, seq_field, type_field, body in entries:
            count += 1
            try:
                seq = int(seq_field)
            except ValueError:
                self.finding("entry", None, f"entry {entry_id} has a non-numeric seq {seq_field!r}")
                continue
            if seq != expected or entry_id != f"{seq}-0":
                self._position_findings(entry_id, seq, expected)
            if seq >= expected:
                expected = seq + 1
            if seq > head:
                head = seq
            try:
                envelope = loads(body)
            except decode_error as error:
                self.finding("envelope", seq, f"body is not JSON: {error}")
                continue
            if check_canonical and dumps(envelope, option=sort_keys) != body:
                self.finding("envelope", seq, NOT_CANONICAL)
            # The structural check of _valid_envelope, inlined; a failure goes to _valid_envelope for the finding.
            valid = False
            if type(envelope) is dict and envelope.keys() == envelope_keys:
                accounts = envelope["accounts"]
                versions = envelope["versions"]
                event_type = envelope["type"]
                command_id = envelope["command_id"]
                event_id = envelope["event_id"]
                data = envelope["data"]
                body_seq = envelope["seq"]
                schema = envelope["schema"]
                valid = (
                    type(body_seq) is int and body_seq == seq and type(schema) is int and schema == schema_version
                    and type(event_type) is str and type_bytes.get(event_type) == type_field
                    and type(data) is dict and type(accounts) is list and type(versions) is list
                    and len(accounts) == len(versions)
                    and type(event_id) is str and type(command_id) is str and event_id and command_id
                    and type(envelope["correlation_id"]) is str and type(envelope["causation_id"]) is str
                    and type(envelope["actor"]) is str and type(envelope["occurred_at"]) is str
                    and envelope["actor"] and envelope["occurred_at"]
                    and envelope["correlation_id"] and envelope["causation_id"]
                )
                if valid:
                    for value in accounts:
                        if type(value) is not int:
                            valid = False
                    for value in versions:
                        if type(value) is not int:
                            valid = False
            if not valid and not self._valid_envelope(seq, envelope, type_field):
                continue
            fast = False
            if (valid and (command_id == last_command or command_id not in commands) and event_id not in event_ids
                    and (len(accounts) == 1 or (len(accounts) == 2 and accounts[0] != accounts[1]))):
                # Versions advance by one per command on accounts that exist (checked before any change).
                fast = True
                for account, version in zip(accounts, versions):  # noqa: B905 - lengths checked above
                    state = states.get(account)
                    if state is None or version != (
                        state.version if state.last_command == command_id else state.version + 1
                    ):
                        fast = False
                        break
                if fast:
                    fast = False
                    if event_type == "MoneyTransferred":
                        source, target = data.get("from"), data.get("to")
                        amount = data.get("amount")
                        source_after, target_after = data.get("from_balance_after"), data.get("to_balance_after")
                        if (type(source) is int and type(target) is int and source != target
                                and type(amount) is int and amount > 0
                                and type(source_after) is int and type(target_after) is int
                                and source_after >= 0 and target_after >= 0):
                            source_state, target_state = states.get(source), states.get(target)
                            if (source_state is not None and target_state is not None
                                    and source_state.status == "open" and target_state.status == "open"
                                    and source_after == source_state.balance - amount
                                    and target_after == target_state.balance + amount):
                                source_state.balance = source_after
                                target_state.balance = target_after
                                self._legs += 2
                                fast = True
                    elif event_type == "MoneyDeposited" or event_type == "MoneyWithdrawn":
                        account, amount, after = data.get("account"), data.get("amount"), data.get("balance_after")
                        if type(account) is int and type(amount) is int and amount > 0 and type(after) is int \
                                and after >= 0:
                            state = states.get(account)
                            deposit = event_type == "MoneyDeposited"
                            if (state is not None and state.status == "open"
                                    and after == (state.balance + amount if deposit else state.balance - amount)):
                                state.balance = after
                                self._legs += 1
                                if deposit:
                                    self._deposited += amount
                                else:
                                    self._withdrawn += amount
                                fast = True
                if fast:
                    if command_id != last_command:
                        add_command(command_id)
                        last_command = command_id
                    add_event_id(event_id)
                    for account, version in zip(accounts, versions):  # noqa: B905 - lengths checked above
                        state = states[account]
                        state.version = version
                        state.last_seq = seq
                        state.last_command = command_id
            if not fast:
                self._last_command = last_command
                self._replay(seq, envelope)
                last_command = self._last_command
            if seq >= next_db:
                while self._db_index < len(databases) and databases[self._db_index].checkpoint <= seq:
                    self._compare_database(databases[self._db_index], seq)
                    self._db_index += 1
                next_db = databases[self._db_index].checkpoint if self._db_index < len(databases) else never
        self._expected, self._head = expected, head
        self._last_command = last_command
        self.report.events += count

    def _position_findings(self, entry_id: str, seq: int, expected: int) -> None:
        if entry_id != f"{seq}-0":
            self.finding("entry", seq, f"entry {entry_id} holds seq {seq} (moved or forged)")
        if seq > expected:
            missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
            self.finding("gap", expected, f"seq {missing} missing from the log (next is {seq})")
        elif seq < expected:
            self.finding("order", seq, f"seq {seq} appears again after seq {expected - 1}")

    def _valid_envelope(self, seq: int, envelope: Any, type_field: bytes) -> bool:
        accounts = envelope.get("accounts") if type(envelope) is dict else None
        versions = envelope.get("versions") if type(envelope) is dict else None
        ok = (
            type(envelope) is dict and envelope.keys() == ENVELOPE_KEYS
            and envelope["seq"] == seq and type(envelope["seq"]) is int
            and envelope["schema"] == SCHEMA_VERSION and type(envelope["schema"]) is int
            and envelope["type"] in EVENT_TYPES and envelope["type"].encode() == type_field
            and type(envelope["data"]) is dict and type(accounts) is list and type(versions) is list
            and len(accounts) == len(versions)
            and type(envelope["event_id"]) is str and type(envelope["command_id"]) is str
            and type(envelope["correlation_id"]) is str and type(envelope["causation_id"]) is str
            and type(envelope["actor"]) is str and type(envelope["occurred_at"]) is str
            and envelope["event_id"] and envelope["command_id"] and envelope["actor"] and envelope["occurred_at"]
            and envelope["correlation_id"] and envelope["causation_id"]
            and _ints(accounts) and _ints(versions)
        )
        if ok:
            return True
        try:
            event = Event.model_validate(envelope)
        except (pydantic.ValidationError, TypeError) as error:
            first = str(error).splitlines()[:3]
            self.finding("envelope", seq, "invalid envelope: " + " / ".join(first))
            return False
        if event.seq != seq:
            self.finding("envelope", seq, f"body says seq {event.seq}, the entry says {seq}")
        elif event.type.encode() != type_field:
            self.finding("envelope", seq, f"body says type {event.type}, the entry says {type_field.decode()!r}")
        elif event.type not in EVENT_TYPES:
            self.finding("envelope", seq, f"unknown event type {event.type!r}")
        else:
            self.finding("envelope", seq, "envelope fields have unexpected types or values")
        return False

    def _account(self, seq: int, account: int) -> _Account | None:
        state = self._accounts.get(account)
        if state is None:
            self.finding("invariant", seq, f"account {account} is used before it was opened")
        return state

    def _replay(self, seq: int, envelope: dict[str, Any]) -> None:
        command_id = envelope["command_id"]
        if command_id != self._last_command:
            if command_id in self._commands:
                self.finding("duplicate", seq, f"command id {command_id} already produced earlier events")
            self._commands.add(command_id)
            self._last_command = command_id
        event_id = envelope["event_id"]
        if event_id in self._event_ids:
            self.finding("duplicate", seq, f"event id {event_id} appears twice")
        self._event_ids.add(event_id)
        event_type = envelope["type"]
        data = envelope["data"]
        try:
            if event_type == "AccountOpened":
                account = data["account"]
                if account in self._accounts:
                    self.finding("invariant", seq, f"account {account} opened twice")
                self._accounts[account] = _Account()
            elif event_type == "MoneyDeposited":
                self._money(seq, data["account"], data["amount"], data["balance_after"], +1)
                self._deposited += data["amount"]
            elif event_type == "MoneyWithdrawn":
                self._money(seq, data["account"], data["amount"], data["balance_after"], -1)
                self._withdrawn += data["amount"]
            elif event_type == "MoneyTransferred":
                source, target, amount = data["from"], data["to"], data["amount"]
                if source == target:
                    self.finding("invariant", seq, f"transfer from account {source} to itself")
                before = self._balance(source) + self._balance(target)
                self._money(seq, source, amount, data["from_balance_after"], -1)
                self._money(seq, target, amount, data["to_balance_after"], +1)
                after = data["from_balance_after"] + data["to_balance_after"]
                if before != after:
                    self.finding("invariant", seq, f"transfer does not net to zero ({before} before, {after} after)")
            elif event_type == "AccountClosed":
                state = self._account(seq, data["account"])
                if state is not None:
                    if state.balance != 0:
                        self.finding("invariant", seq, f"account {data['account']} closed holding {state.balance}")
                    state.status = "closed"
            else:
                data["account"]  # every other event names its account
        except (KeyError, TypeError) as error:
            self.finding("envelope", seq, f"{event_type} lacks {error}")
            return
        for account, version in zip(envelope["accounts"], envelope["versions"], strict=True):
            state = self._accounts.get(account)
            if state is None:
                self.finding("invariant", seq, f"event touches account {account}, which was never opened")
                continue
            wanted = state.version if state.last_command == command_id else state.version + 1
            if version != wanted:
                self.finding("version", seq, f"account {account} goes from version {state.version} to {version}")
            state.version = version
            state.last_seq = seq
            state.last_command = command_id

    def _balance(self, account: int) -> int:
        state = self._accounts.get(account)
        return state.balance if state is not None else 0

    def _money(self, seq: int, account: int, amount: int, after: int, sign: int) -> None:
        self._legs += 1
        state = self._account(seq, account)
        if type(amount) is not int or amount <= 0:
            self.finding("invariant", seq, f"amount {amount!r} is not a positive number of cents")
        if state is None:
            return
        if state.status != "open":
            self.finding("invariant", seq, f"money moved on closed account {account}")
        expected = state.balance + sign * amount
        if after != expected:
            self.finding("invariant", seq, f"account {account}: balance_after {after}, replay gives {expected}")
        if after < 0:
            self.finding("invariant", seq, f"account {account} goes negative ({after})")
        state.balance = after

    def _compare_database(self, view: DatabaseView, seq: int) -> None:
        info = self.report.databases.setdefault(view.name, {})
        info["checkpoint"] = view.checkpoint
        if view.checkpoint != seq:
            return  # the log does not reach it: reported by finish()
        mismatches = 0
        for account, state in self._accounts.items():
            row = view.accounts.get(account)
            if row != (state.balance, state.status, state.version):
                mismatches += 1
                if mismatches <= 10:
                    self.finding("database", state.last_seq,
                                 f"{view.name} at seq {seq}: account {account} is {row}, replay gives "
                                 f"{(state.balance, state.status, state.version)}")
        for account in view.accounts.keys() - self._accounts.keys():
            self.finding("database", seq, f"{view.name} has account {account}, which the log never opened")
        if view.transactions != self._legs:
            self.finding("database", seq, f"{view.name} has {view.transactions} transaction rows at seq {seq}, "
                                          f"the log gives {self._legs}")
        info["compared_at"] = seq
        info["mismatched_accounts"] = mismatches

    # ---------------------------------------------------------------- the end

    def finish(
        self, *, seq_counter: tuple[int, int] | None, write_side: Mapping[int, Mapping[str, Any]] | None
    ) -> AuditReport:
        """``seq_counter``: the counter read before and after the replay (equal on a quiet bank)."""
        report = self.report
        self._chain_check.finish()
        for check, seq, message in self._chain_check.findings:
            self.finding(check, seq, message)
        if self._head > report.sealed_seq:
            report.warnings.append(f"events {report.sealed_seq + 1}..{self._head} are not sealed yet")
        if seq_counter is not None and not seq_counter[0] <= self._head <= seq_counter[1]:
            low, high = seq_counter
            said = str(low) if low == high else f"{low}..{high}"
            self.finding("head", high + 1 if self._head > high else self._head + 1,
                         f"the seq counter says {said} but the log ends at {self._head}")
        for view in self._databases[self._db_index:]:
            report.databases.setdefault(view.name, {})["checkpoint"] = view.checkpoint
            if view.checkpoint > self._head:
                self.finding("database", view.checkpoint,
                             f"{view.name} is at seq {view.checkpoint}, beyond the end of the log ({self._head})")
            elif view.checkpoint == 0:
                report.warnings.append(f"{view.name} is empty (checkpoint 0)")
        total = 0
        for account, state in self._accounts.items():
            total += state.balance
            if state.balance < 0:
                self.finding("invariant", state.last_seq, f"account {account} ends negative ({state.balance})")
        if total != self._deposited - self._withdrawn:
            self.finding("invariant", self._head, f"balances sum to {total} but deposits minus withdrawals is "
                                                  f"{self._deposited - self._withdrawn}")
        if write_side is not None:
            self._compare_write_side(write_side)
        report.head_seq = self._head
        report.accounts = len(self._accounts)
        report.total_balance = total
        report.seconds = time.perf_counter() - self._started
        return report

    def _compare_write_side(self, write_side: Mapping[int, Mapping[str, Any]]) -> None:
        for account, state in self._accounts.items():
            stored = write_side.get(account)
            if stored is None:
                self.finding("write-side", state.last_seq, f"account {account} has no write-side state")
                continue
            replay = {"version": state.version, "balance": state.balance, "status": state.status}
            got = {name: stored.get(name) for name in replay}
            if got != replay:
                self.finding("write-side", state.last_seq,
                             f"account {account}: write side {got}, replay gives {replay}")
        for account in write_side.keys() - self._accounts.keys():
            self.finding("write-side", None, f"write side has account {account}, which the log never opened")


# -------------------------------------------------------------------- sources


def redis_entries(client: redis.Redis, keys: Keys, *, page: int = PAGE) -> Iterator[RawEntry]:
    """Every entry exactly as stored, in stream order (pages: see :mod:`eventstore.log_pages`)."""
    return PageReader(client, keys, page=page).entries()


def redis_seals(client: redis.Redis, keys: Keys, auditor_findings: list[Finding]) -> list[Seal]:
    seals = []
    for entry_id, fields in read_seals(client, keys):
        try:
            seals.append(Seal.from_fields(fields))
        except (KeyError, ValueError) as error:
            auditor_findings.append(Finding("seal", None, f"seal entry {entry_id} is malformed: {error!r}"))
    return seals


SCAN_COUNT = 10_000  # keys the server looks at per SCAN call: most keys are command outcomes, not accounts
_HMGET_CHUNK = 1000


def read_write_side(client: redis.Redis, keys: Keys, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Version, balance and status of each ``{bank}:acct:<id>`` hash that exists among ``ids``."""
    ordered = list(ids)
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ordered), _HMGET_CHUNK):
        chunk = ordered[start:start + _HMGET_CHUNK]
        pipe = client.pipeline(transaction=False)
        for account in chunk:
            pipe.hmget(keys.account(account), "version", "balance", "status")
        for account, (version, balance, status) in zip(chunk, pipe.execute(), strict=True):
            if version is None and balance is None and status is None:
                continue
            out[account] = {
                "version": int(version) if version is not None else None,
                "balance": int(balance) if balance is not None else None,
                "status": status.decode() if status is not None else None,
            }
    return out


def issued_account_ids(client: redis.Redis, keys: Keys) -> range:
    """Every id the bank can have handed out: 0 (the admin) up to the account-id counter (ids are never reused)."""
    return range(int(client.get(keys.account_ids) or 0) + 1)


def scanned_account_ids(client: redis.Redis, keys: Keys) -> list[int]:
    """The id of every account hash in the keyspace, whatever its id (a full SCAN: its cost grows with ALL keys)."""
    prefix = keys.account(0)[:-1]
    out = []
    for name in client.scan_iter(match=prefix + "*", count=SCAN_COUNT):
        suffix = (name.decode() if isinstance(name, bytes) else name)[len(prefix):]
        if suffix.isdigit():
            out.append(int(suffix))
    return out


def write_side_state(client: redis.Redis, keys: Keys) -> dict[int, dict[str, Any]]:
    """Every account hash in the keyspace (the export's snapshot: found by SCAN, wherever its id)."""
    return read_write_side(client, keys, sorted(scanned_account_ids(client, keys)))


def read_database(name: str, path: Path) -> DatabaseView:
    """One consistent read of a projection database's accounts, transaction count and checkpoint."""
    conn = open_readonly(path)
    try:
        conn.execute("BEGIN")
        checkpoint = read_checkpoint(conn)
        accounts = {row[0]: (row[1], row[2], row[3])
                    for row in conn.execute("SELECT id, balance, status, version FROM accounts")}
        count = conn.execute("SELECT count(*) FROM transactions").fetchone()[0]
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as error:
        raise DatabaseUnusable(f"{path}: {error}") from error
    finally:
        conn.close()
    return DatabaseView(name=name, checkpoint=checkpoint, accounts=accounts, transactions=count)


def load_databases(paths: Mapping[str, Path], *, require: bool) -> tuple[list[DatabaseView], list[Finding], list[str]]:
    views, findings, warnings = [], [], []
    for name, path in paths.items():
        try:
            views.append(read_database(name, path))
        except DatabaseUnusable as error:
            message = f"{name} could not be compared: {error}"
            if require:
                findings.append(Finding("database", None, message))
            else:
                warnings.append(message)
    return views, findings, warnings


def _child_threshold(given: int | None) -> int:
    """Events from which the hash chain is checked in a child process (see :mod:`bankctl.audit_chain`)."""
    return CHILD_MIN_EVENTS if given is None else given


def verify_redis(
    client: redis.Redis,
    keys: Keys,
    *,
    public_key: Ed25519PublicKey | None,
    databases: Mapping[str, Path] | None = None,
    require_databases: bool = False,
    chain_child_min_events: int | None = None,
    scan_keyspace: bool = False,
) -> AuditReport:
    """Audit the live log in Redis (databases are read first, so their checkpoints are within the log)."""
    views, db_findings, db_warnings = load_databases(databases or {}, require=require_databases)
    seal_findings: list[Finding] = []
    seals = redis_seals(client, keys, seal_findings)
    before = int(client.get(keys.seq) or 0)
    auditor = Auditor(public_key=public_key, seals=seals, databases=views)
    auditor.report.findings[:0] = db_findings + seal_findings
    auditor.report.warnings += db_warnings
    # The write side is read during the replay (Redis scans its keyspace while Python replays). It is compared
    # only when the seq counter did not move from before to after; the compared fields (version, balance,
    # status) change only inside the append script, so what was read is then exactly the state at that seq.
    # By default the write side is read for every id the bank can have issued (O(accounts)); --scan-keyspace
    # also SCANs the whole keyspace (O(all keys): 4 s at 2.6 million keys here) for account hashes planted above
    # the counter, which the replay otherwise finds only once they are used. Accounts the log opened above the
    # counter are read after the replay.
    issued = issued_account_ids(client, keys)

    def read_side() -> tuple[dict[int, dict[str, Any]], set[int]]:
        ids = set(issued)
        if scan_keyspace:
            ids.update(scanned_account_ids(client, keys))
        return read_write_side(client, keys, sorted(ids)), ids

    if before >= _child_threshold(chain_child_min_events):
        auditor.check_chain_in_child(lambda: redis_entries(client, keys))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-write-side") as pool:
        reading = pool.submit(read_side)
        auditor.feed(redis_entries(client, keys))
        write_side, checked = reading.result()
    write_side.update(read_write_side(client, keys, sorted(auditor.replayed_accounts() - checked)))
    after = int(client.get(keys.seq) or 0)
    quiet = before == after
    # Appends that land during the replay are not findings; the write side is compared only on a quiet bank.
    report = auditor.finish(seq_counter=(before, after), write_side=write_side if quiet else None)
    if not quiet:
        report.warnings.append("the log grew during the audit: write-side comparison skipped; run again when "
                               "the bank is quiet")
    return report


# -------------------------------------------------------------------- export / offline


def export_log(client: redis.Redis, keys: Keys, out: IO[bytes], *, public_key: Ed25519PublicKey,
               exported_at: str) -> dict[str, int]:
    """Write header, events, seals and write-side states as JSONL; returns counts."""
    counter = client.get(keys.seq)
    header = {"kind": "header", "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
              "public_key": public_key_bytes(public_key).hex(), "key_id": key_id(public_key),
              "exported_at": exported_at, "seq_counter": int(counter) if counter is not None else 0}
    out.write(orjson.dumps(header) + b"\n")
    events = 0
    for entry_id, seq, event_type, body in redis_entries(client, keys):
        out.write(orjson.dumps({"kind": "event", "id": entry_id, "seq": seq.decode(errors="replace"),
                                "type": event_type.decode(errors="replace"),
                                "body": body.decode(errors="surrogateescape")}) + b"\n")
        events += 1
    seals = 0
    for _entry_id, fields in read_seals(client, keys):
        out.write(orjson.dumps({"kind": "seal", **Seal.from_fields(fields).to_json()}) + b"\n")
        seals += 1
    accounts = write_side_state(client, keys)
    for account in sorted(accounts):
        out.write(orjson.dumps({"kind": "account", "account": account, **accounts[account]}) + b"\n")
    return {"events": events, "seals": seals, "accounts": len(accounts)}


class ExportError(ValueError):
    """The file is not an audit export."""


def verify_export(path: Path, *, public_key: Ed25519PublicKey | None = None,
                  chain_child_min_events: int | None = None) -> AuditReport:
    """Audit an export offline. Without ``public_key`` the key in the file is used (and a warning says so)."""
    with open(path, "rb") as handle:
        first = handle.readline()
        try:
            header = orjson.loads(first)
        except orjson.JSONDecodeError as error:
            raise ExportError(f"{path} is not an audit export: {error}") from error
        if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
            raise ExportError(f"{path} is not an audit export (no header)")
        warnings = []
        embedded = public_key_from_bytes(bytes.fromhex(header["public_key"]))
        if public_key is None:
            public_key = embedded
            warnings.append("seals verified with the public key inside the export; pin it with --public-key")
        elif public_key_bytes(public_key) != public_key_bytes(embedded):
            warnings.append("the export names a different public key than the one given")
        events_at = handle.tell()
        seals: list[Seal] = []
        write_side: dict[int, dict[str, Any]] = {}
        bad: list[Finding] = []
        for number, line in enumerate(handle, start=2):
            if line.startswith(b'{"kind":"event"'):
                continue
            record = orjson.loads(line)
            if record.get("kind") == "seal":
                try:
                    seals.append(Seal.from_json(record))
                except (KeyError, ValueError) as error:
                    bad.append(Finding("seal", None, f"line {number}: malformed seal: {error!r}"))
            elif record.get("kind") == "account":
                write_side[int(record["account"])] = {k: record.get(k) for k in ("version", "balance", "status")}
    counter = int(header.get("seq_counter", 0))
    auditor = Auditor(public_key=public_key, seals=seals)
    auditor.report.findings[:0] = bad
    auditor.report.warnings += warnings
    if counter >= _child_threshold(chain_child_min_events):
        auditor.check_chain_in_child(lambda: export_entries(path, events_at))
    auditor.feed(export_entries(path, events_at))
    return auditor.finish(seq_counter=(counter, counter), write_side=write_side)


def export_entries(path: Path, offset: int) -> Iterator[RawEntry]:
    """The event lines of an export from ``offset`` on, as raw entries."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        for line in handle:
            if not line.startswith(b'{"kind":"event"'):
                continue
            record = orjson.loads(line)
            yield (record["id"], record["seq"].encode(), record["type"].encode(),
                   record["body"].encode(errors="surrogateescape"))
