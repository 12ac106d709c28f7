"""A tiny stand-in for the handler, for notifier tests: decide, seal, envelope and append events directly.

Events are built exactly as the handler does (pure deciders, personal fields sealed with the vault, the
canonical envelope split around seq, one Lua append per batch), so the notifier sees a realistic log.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import orjson
import redis

from auth_zkp.principal import Principal
from commands.decide import Context, Decision, EventDraft, decide
from commands.models import (
    ChangePassword,
    CloseAccount,
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
from commands.state import AccountState
from eventstore.append import (
    MAX_COMMANDS_PER_APPEND,
    Appender,
    AppendStatus,
    PreparedCommand,
)
from eventstore.envelope import utc_timestamp
from eventstore.keys import Keys
from eventstore.pii import PersonalDataVault

SEALED_FIELDS = frozenset({"ssn", "phone", "first_name", "last_name", "public_key"})
ADMIN = Principal(0, "admin")


def credential(seed: int = 1) -> Credential:
    return Credential(salt=f"{seed:032x}", kdf=KdfParams(memory_kib=8192, iterations=1, lanes=1),
                      public_key=f"{seed:064x}")


def phone_of(account_hint: int) -> str:
    """A distinct, valid-looking E.164 number per index."""
    return f"+1555{account_hint:07d}"


class FakeBank:
    """Decides and appends commands; ``with bank.batch():`` groups many into one append call."""

    def __init__(self, client: redis.Redis, keys: Keys, *, master_key: bytes | None = None) -> None:
        self.client = client
        self.keys = keys
        self.master_key = master_key or os.urandom(32)
        self.vault = PersonalDataVault(client, keys=keys, master_key=self.master_key)
        self.appender = Appender(client, keys=keys)
        self.states: dict[int, AccountState] = {}
        self.next_account = 1
        self._queue: list[PreparedCommand] = []
        self._batching = False
        self.event_ids: list[tuple[str, str, tuple[int, ...]]] = []
        """(event_id, type, accounts) of every event appended, in order."""

    def state(self, account: int) -> AccountState:
        return self.states.get(account, AccountState(account_id=account))

    @contextmanager
    def batch(self) -> Iterator[None]:
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            self.flush()

    def flush(self) -> None:
        while self._queue:
            chunk, self._queue = self._queue[:MAX_COMMANDS_PER_APPEND], self._queue[MAX_COMMANDS_PER_APPEND:]
            results = self.appender.append(chunk)
            assert all(r.status is AppendStatus.OK for r in results), results

    def _submit(self, drafts: tuple[EventDraft, ...], new_states: dict[int, AccountState], actor: Principal) -> None:
        command_id = uuid.uuid4().hex
        origin = Origin(command_id, actor.name, utc_timestamp(datetime.now(UTC)))
        before = {a: self.state(a) for a in new_states}
        prepared = prepare_decision(Decision(drafts, new_states), before, origin, keys=self.keys, vault=self.vault)
        for draft, event in zip(drafts, prepared.events, strict=True):
            event_id = orjson.loads(event.prefix + b"0" + event.suffix)["event_id"]
            self.event_ids.append((event_id, draft.type, draft.accounts))
        self._queue.append(prepared)
        self.states.update(new_states)
        if not self._batching:
            self.flush()

    def _run(self, command: object, actor: Principal, new_account: int | None = None) -> None:
        touched = [new_account] if new_account is not None else [
            a for a in (getattr(command, "account", None), getattr(command, "to", None)) if a is not None]
        outcome = decide(command, {a: self.state(a) for a in touched},  # type: ignore[arg-type]
                         Context(actor=actor, new_account_id=new_account))
        assert isinstance(outcome, Decision), outcome
        self._submit(outcome.events, outcome.new_states, actor)

    # -- commands -------------------------------------------------------------------------------------------------

    def open(self, *, phone: str | None = None, sms: bool = True) -> int:
        account = self.next_account
        self.next_account += 1
        self.vault.create_data_key(account)
        command = OpenAccount(type="OpenAccount", ssn="123-45-6789", phone=phone or phone_of(account),
                              first_name="Ada", last_name="Lovelace", sms_opt_in=sms, credential=credential(account))
        self._run(command, ADMIN, new_account=account)
        return account

    def deposit(self, account: int, cents: int) -> None:
        self._run(Deposit(type="Deposit", account=account, amount=cents), Principal(account, "customer"))

    def withdraw(self, account: int, cents: int) -> None:
        self._run(Withdraw(type="Withdraw", account=account, amount=cents), Principal(account, "customer"))

    def transfer(self, source: int, target: int, cents: int) -> None:
        self._run(Transfer(type="Transfer", account=source, to=target, amount=cents), Principal(source, "customer"))

    def close(self, account: int) -> None:
        self._run(CloseAccount(type="CloseAccount", account=account), ADMIN)

    def erase(self, account: int) -> None:
        self._run(EraseCustomer(type="EraseCustomer", account=account), ADMIN)
        self.flush()
        self.vault.destroy_data_key(account)

    def update(self, account: int, *, phone: str | None = None, sms: bool | None = None) -> None:
        self._run(UpdateProfile(type="UpdateProfile", account=account, phone=phone, sms_opt_in=sms),
                  Principal(account, "customer"))

    def change_password(self, account: int) -> None:
        command = ChangePassword(type="ChangePassword", account=account, credential=credential(account + 7),
                                 proof={"r": "x"})
        self._run(command, Principal(account, "customer"))

    def lock(self, account: int, until: float = 1_790_000_000.0) -> None:
        """AccountLocked has no decider here (the login path emits it); append it as the handler would."""
        new = self.state(account).bump()
        self._submit((EventDraft("AccountLocked", (account,), {"account": account, "until": until, "failures": 5}),),
                     {account: new}, ADMIN)
