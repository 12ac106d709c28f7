"""Pure appliers: one event in, row changes out (DESIGN §2: no Redis, no clock, no randomness).

A :class:`RowChanges` collects, for one batch of events, the account rows touched (loaded once through an
injected ``load`` function, then changed in memory) and the new transaction rows; the projector writes them
in one SQLite transaction. Personal fields are opened through an injected ``open_pii`` (the vault) and stored
only masked. An event that contradicts the rows (a balance that does not add up, an unknown account or event
type) raises :class:`ApplyError`: the projector stops rather than guess.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ERASED = "[erased]"

Opener = Callable[[int, str, str], str]
"""``open_pii(account, field, sealed) -> plaintext`` (``[erased]`` once the data key is gone)."""


class ApplyError(RuntimeError):
    """The event cannot be applied to the current rows: a bug or a corrupt log, never to be skipped."""


@dataclass(slots=True)
class AccountRow:
    id: int
    role: str
    status: str
    balance: int
    first_name: str | None
    last_name: str | None
    phone: str | None
    ssn_masked: str | None
    sms_opt_in: int
    opened_at: str
    closed_at: str | None
    erased: int
    version: int

    def as_tuple(self) -> tuple[Any, ...]:
        return (self.id, self.role, self.status, self.balance, self.first_name, self.last_name, self.phone,
                self.ssn_masked, self.sms_opt_in, self.opened_at, self.closed_at, self.erased, self.version)


TransactionRow = tuple[int, int, str, str, int, int | None, int, str]
"""``(seq, account, event_id, kind, amount, counterparty, balance_after, occurred_at)``"""


def mask_phone(phone: str) -> str:
    if phone == ERASED:
        return ERASED
    return "***" + phone[-4:]


def mask_ssn(ssn: str) -> str:
    if ssn == ERASED:
        return ERASED
    return "***-**-" + ssn.replace("-", "")[-4:]


class RowChanges:
    """The rows one batch of events changes."""

    __slots__ = ("accounts", "transactions", "erased", "_load")

    def __init__(self, load: Callable[[int], AccountRow | None]) -> None:
        self.accounts: dict[int, AccountRow] = {}
        self.transactions: list[TransactionRow] = []
        self.erased: list[int] = []
        self._load = load

    def get(self, account_id: int) -> AccountRow | None:
        row = self.accounts.get(account_id)
        if row is None:
            row = self._load(account_id)
            if row is not None:
                self.accounts[account_id] = row
        return row

    def existing(self, account_id: int, seq: int) -> AccountRow:
        row = self.get(account_id)
        if row is None:
            raise ApplyError(f"seq {seq}: account {account_id} does not exist")
        return row


def _opened(changes: RowChanges, seq: int, body: dict[str, Any], data: dict[str, Any], open_pii: Opener) -> None:
    account = data["account"]
    if changes.get(account) is not None:
        raise ApplyError(f"seq {seq}: account {account} is opened twice")

    def personal(field: str) -> str | None:
        sealed = data.get(field)
        return None if sealed is None else open_pii(account, field, sealed)

    phone = personal("phone")
    ssn = personal("ssn")
    changes.accounts[account] = AccountRow(
        id=account, role=data.get("role", "customer"), status="open", balance=0,
        first_name=personal("first_name"), last_name=personal("last_name"),
        phone=None if phone is None else mask_phone(phone), ssn_masked=None if ssn is None else mask_ssn(ssn),
        sms_opt_in=int(bool(data.get("sms_opt_in", False))), opened_at=body["occurred_at"], closed_at=None,
        erased=0, version=0,
    )


def _deposited(changes: RowChanges, seq: int, body: dict[str, Any], data: dict[str, Any], _o: Opener) -> None:
    row = changes.existing(data["account"], seq)
    amount, after = data["amount"], data["balance_after"]
    if amount <= 0 or row.balance + amount != after:
        raise ApplyError(f"seq {seq}: deposit of {amount} to {row.balance} cannot give {after}")
    row.balance = after
    changes.transactions.append((seq, row.id, body["event_id"], "deposit", amount, None, after, body["occurred_at"]))


def _withdrawn(changes: RowChanges, seq: int, body: dict[str, Any], data: dict[str, Any], _o: Opener) -> None:
    row = changes.existing(data["account"], seq)
    amount, after = data["amount"], data["balance_after"]
    if amount <= 0 or row.balance - amount != after or after < 0:
        raise ApplyError(f"seq {seq}: withdrawal of {amount} from {row.balance} cannot give {after}")
    row.balance = after
    changes.transactions.append(
        (seq, row.id, body["event_id"], "withdrawal", amount, None, after, body["occurred_at"])
    )


def _transferred(changes: RowChanges, seq: int, body: dict[str, Any], data: dict[str, Any], _o: Opener) -> None:
    source = changes.existing(data["from"], seq)
    target = changes.existing(data["to"], seq)
    amount = data["amount"]
    source_after, target_after = data["from_balance_after"], data["to_balance_after"]
    if (source is target or amount <= 0 or source.balance - amount != source_after or source_after < 0
            or target.balance + amount != target_after):
        raise ApplyError(f"seq {seq}: transfer of {amount} does not add up")
    source.balance = source_after
    target.balance = target_after
    event_id, at = body["event_id"], body["occurred_at"]
    changes.transactions.append((seq, source.id, event_id, "transfer_out", amount, target.id, source_after, at))
    changes.transactions.append((seq, target.id, event_id, "transfer_in", amount, source.id, target_after, at))


def _profile(changes: RowChanges, seq: int, _body: dict[str, Any], data: dict[str, Any], open_pii: Opener) -> None:
    row = changes.existing(data["account"], seq)
    if "phone" in data:
        row.phone = mask_phone(open_pii(row.id, "phone", data["phone"]))
    if "first_name" in data:
        row.first_name = open_pii(row.id, "first_name", data["first_name"])
    if "last_name" in data:
        row.last_name = open_pii(row.id, "last_name", data["last_name"])
    if "sms_opt_in" in data:
        row.sms_opt_in = int(bool(data["sms_opt_in"]))


def _closed(changes: RowChanges, seq: int, body: dict[str, Any], data: dict[str, Any], _o: Opener) -> None:
    row = changes.existing(data["account"], seq)
    if row.balance != 0:
        raise ApplyError(f"seq {seq}: account {row.id} closed with balance {row.balance}")
    row.status = "closed"
    row.closed_at = body["occurred_at"]


def _erased(changes: RowChanges, seq: int, _body: dict[str, Any], data: dict[str, Any], _o: Opener) -> None:
    row = changes.existing(data["account"], seq)
    row.first_name = row.last_name = row.phone = row.ssn_masked = ERASED
    row.erased = 1
    changes.erased.append(row.id)


def _touch(changes: RowChanges, seq: int, _body: dict[str, Any], data: dict[str, Any], _o: Opener) -> None:
    """Events that change no column of the read model but the version (credentials, lockouts)."""
    changes.existing(data["account"], seq)


APPLIERS: dict[str, Callable[[RowChanges, int, dict[str, Any], dict[str, Any], Opener], None]] = {
    "AccountOpened": _opened,
    "MoneyDeposited": _deposited,
    "MoneyWithdrawn": _withdrawn,
    "MoneyTransferred": _transferred,
    "ProfileUpdated": _profile,
    "AccountClosed": _closed,
    "CustomerDataErased": _erased,
    "CredentialsRegistered": _touch,
    "PasswordChanged": _touch,
    "AccountLocked": _touch,
}


def apply_event(changes: RowChanges, seq: int, body: dict[str, Any], open_pii: Opener) -> None:
    """Apply one decoded envelope; then set every touched account's version from the envelope."""
    applier = APPLIERS.get(body.get("type", ""))
    if applier is None:
        raise ApplyError(f"seq {seq}: unknown event type {body.get('type')!r}")
    try:
        applier(changes, seq, body, body["data"], open_pii)
        rows = changes.accounts  # the applier has loaded every row it touched: no second load
        for account, version in zip(body["accounts"], body["versions"], strict=True):
            row = rows.get(account) or changes.existing(account, seq)
            if version < row.version:
                raise ApplyError(f"seq {seq}: account {account} version goes back from {row.version} to {version}")
            row.version = version
    except (KeyError, TypeError, ValueError) as error:
        raise ApplyError(f"seq {seq}: malformed {body.get('type')} event: {error!r}") from error
