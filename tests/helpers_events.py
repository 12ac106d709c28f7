"""Produce real events without the command handler: decide -> envelope -> Appender (tests of the read side).

The bank's deciders make the decision; this helper envelopes it, seals personal data with a vault and appends
it in batches through the real append script, keeping the write-side hashes exactly as a handler would.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis

from auth_zkp.principal import Principal
from commands.decide import Context, Decision, decide, touched_accounts
from commands.models import (
    CloseAccount,
    Command,
    Credential,
    Deposit,
    EraseCustomer,
    KdfParams,
    OpenAccount,
    Transfer,
    UpdateProfile,
    Withdraw,
)
from commands.prepare import Origin, prepare_decision
from commands.state import AccountState, state_from_hash
from eventstore.append import AccountWrite, Appender, AppendStatus, PreparedCommand, PreparedEvent
from eventstore.envelope import encode_envelope, utc_timestamp
from eventstore.keys import Keys
from eventstore.pii import PersonalDataVault

ADMIN = Principal(0, "admin")
PERSONAL = frozenset({"ssn", "phone", "first_name", "last_name", "public_key"})
CREDENTIAL = Credential(salt="0" * 32, kdf=KdfParams(memory_kib=8192, iterations=1, lanes=1), public_key="ab" * 32)


def write_master_key(data_dir: Path, key: bytes) -> Path:
    path = data_dir / "master.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return path


@dataclass
class EventFactory:
    """Appends commands' events; the states are cached in memory (this helper is the only writer)."""

    client: redis.Redis
    keys: Keys
    master_key: bytes = field(default_factory=lambda: os.urandom(32))

    def __post_init__(self) -> None:
        self.appender = Appender(self.client, keys=self.keys)
        self.vault = PersonalDataVault(self.client, keys=self.keys, master_key=self.master_key)
        self.states: dict[int, AccountState] = {}
        self.next_account = 1
        self.last_seq = 0

    def state(self, account: int) -> AccountState:
        if account not in self.states:
            self.states[account] = state_from_hash(account, self.client.hgetall(self.keys.account(account)))
        return self.states[account]

    def _prepare(self, decision: Decision, before: dict[int, AccountState], actor: Principal) -> PreparedCommand:
        command_id = uuid.uuid4().hex
        origin = Origin(command_id, actor.name, utc_timestamp(datetime.now(UTC)))
        return prepare_decision(decision, before, origin, keys=self.keys, vault=self.vault)

    def run(self, commands: Sequence[Command], actor: Principal = ADMIN) -> list[int]:
        """Decide and append in batches; returns each command's last seq (0 when rejected)."""
        out: list[int] = []
        for start in range(0, len(commands), 256):
            prepared, positions = [], []
            for command in commands[start:start + 256]:
                new_id = None
                if isinstance(command, OpenAccount):
                    new_id = self.next_account
                    self.next_account += 1
                    self.vault.create_data_key(new_id)
                context = Context(actor=actor, new_account_id=new_id)
                before = {a: self.state(a) for a in touched_accounts(command, context)}
                outcome = decide(command, before, context)
                if not isinstance(outcome, Decision):
                    positions.append(None)
                    continue
                self.states.update(outcome.new_states)
                positions.append(len(prepared))
                prepared.append(self._prepare(outcome, before, actor))
            results = self.appender.append(prepared) if prepared else []
            for result in results:
                assert result.status is AppendStatus.OK, result
            for command, position in zip(commands[start:start + 256], positions, strict=True):
                seq = 0 if position is None else results[position].last_seq
                out.append(seq)
                if seq and isinstance(command, EraseCustomer):
                    self.vault.destroy_data_key(command.account)
            if results:
                self.last_seq = results[-1].last_seq
        return out

    # ------------------------------------------------------------------ shorthands

    def open_admin(self) -> int:
        """Account 0 as ``bankctl init`` writes it (role admin, no personal data)."""
        state = AccountState(account_id=0, version=1, status="open", role="admin")
        events = []
        for event_type, data in (("AccountOpened", {"account": 0, "role": "admin", "sms_opt_in": False}),
                                 ("CredentialsRegistered", {"account": 0, "salt": "0" * 32, "kdf": {}})):
            events.append(PreparedEvent(event_type, *encode_envelope(
                event_id=uuid.uuid4().hex, event_type=event_type, accounts=(0,), versions=(1,), command_id="init",
                actor="system:init", occurred_at=utc_timestamp(datetime.now(UTC)), data=data)))
        command = PreparedCommand(self.keys.command_outcome("init"),
                                  [AccountWrite(self.keys.account(0), 0, state.to_fields())], events,
                                  b'{"ok":true,"seq":', b"}")
        [result] = self.appender.append([command])
        assert result.status is AppendStatus.OK
        self.states[0] = state
        self.last_seq = result.last_seq
        return result.last_seq

    def open_accounts(self, count: int, *, sms: bool = False) -> list[int]:
        first = self.next_account
        self.run([OpenAccount(type="OpenAccount", ssn=f"123-45-{6789 - i % 1000:04d}", phone=f"+1555{i:07d}",
                              first_name=f"First{i}", last_name=f"Last{i}", sms_opt_in=sms, credential=CREDENTIAL)
                  for i in range(first, first + count)])
        return list(range(first, first + count))

    def deposit(self, account: int, cents: int) -> int:
        return self.run([Deposit(type="Deposit", account=account, amount=cents)])[0]

    def withdraw(self, account: int, cents: int) -> int:
        return self.run([Withdraw(type="Withdraw", account=account, amount=cents)])[0]

    def transfer(self, source: int, target: int, cents: int) -> int:
        return self.run([Transfer(type="Transfer", account=source, to=target, amount=cents)],
                        actor=Principal(source, "customer"))[0]

    def close(self, account: int) -> int:
        return self.run([CloseAccount(type="CloseAccount", account=account)])[0]

    def erase(self, account: int) -> int:
        return self.run([EraseCustomer(type="EraseCustomer", account=account)])[0]

    def update_profile(self, account: int, **changes: object) -> int:
        return self.run([UpdateProfile(type="UpdateProfile", account=account, **changes)])[0]  # type: ignore[arg-type]

    def random_traffic(self, accounts: Sequence[int], count: int, *, seed: int = 7) -> None:
        """A seeded mix of deposits, withdrawals and transfers (rejections append nothing)."""
        rng = random.Random(seed)
        commands: list[Command] = []
        for _ in range(count):
            roll = rng.random()
            account = rng.choice(accounts)
            amount = rng.randint(1, 50_000)
            if roll < 0.5:
                commands.append(Deposit(type="Deposit", account=account, amount=amount))
            elif roll < 0.7:
                commands.append(Withdraw(type="Withdraw", account=account, amount=amount))
            else:
                other = rng.choice(accounts)
                if other == account:
                    other = accounts[(accounts.index(account) + 1) % len(accounts)]
                commands.append(Transfer(type="Transfer", account=account, to=other, amount=amount))
        self.run(commands)
