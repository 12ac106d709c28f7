"""Pure deciders: ``decide(command, states, context) -> Decision | Rejection`` (DESIGN §2, §5).

No Redis, no clock, no randomness: the handler passes in the accounts' state, the actor and any new account
id, and turns the decision into events. The handler seals personal fields (DESIGN §8) before they are
enveloped: deciders see and emit plaintext, no event is ever stored with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

import orjson

from auth_zkp.principal import Principal
from commands.models import (
    ChangePassword,
    CloseAccount,
    Command,
    Credential,
    Deposit,
    EraseCustomer,
    OpenAccount,
    Transfer,
    UpdateProfile,
    Withdraw,
)
from commands.state import AccountState

MAX_BALANCE_CENTS = 10**15


class Reason(StrEnum):
    """Why a command was refused; each maps to one CLI exit code."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    ACCOUNT_CLOSED = "account_closed"
    UNKNOWN_ACCOUNT = "unknown_account"
    SAME_ACCOUNT = "same_account"
    BALANCE_NOT_ZERO = "balance_not_zero"
    NOT_A_CUSTOMER_ACCOUNT = "not_a_customer_account"
    ACCOUNT_NOT_CLOSED = "account_not_closed"
    ALREADY_ERASED = "already_erased"
    BALANCE_LIMIT = "balance_limit"
    NOT_PERMITTED = "not_permitted"
    UNAUTHENTICATED = "unauthenticated"
    INVALID_PROOF = "invalid_proof"
    INVALID_REQUEST = "invalid_request"
    CONFLICT = "conflict"


PERMISSION_REASONS = frozenset({Reason.NOT_PERMITTED, Reason.UNAUTHENTICATED, Reason.INVALID_PROOF})


# Named tuples, not frozen dataclasses: as immutable, and cheaper to build (see eventstore.append).


class Rejection(NamedTuple):
    reason: Reason
    message: str


class EventDraft(NamedTuple):
    """An event before the handler gives it an id, a time and a seq."""

    type: str
    accounts: tuple[int, ...]
    data: dict[str, Any]


class Decision(NamedTuple):
    events: tuple[EventDraft, ...]
    new_states: dict[int, AccountState]
    reply: Mapping[str, Any] = MappingProxyType({})


class Context(NamedTuple):
    """What the handler knows that a pure function may not fetch: who asks, and a fresh account id."""

    actor: Principal
    new_account_id: int | None = None


Outcome = Decision | Rejection


def touched_accounts(command: Command, context: Context) -> tuple[int, ...]:
    """The accounts whose state the decider needs (and whose versions the append checks)."""
    if isinstance(command, OpenAccount):
        assert context.new_account_id is not None
        return (context.new_account_id,)
    if isinstance(command, Transfer):
        return (command.account, command.to)
    return (command.account,)


def _credential_fields(credential: Credential) -> dict[str, str]:
    return {
        "cred_salt": credential.salt,
        "cred_kdf": orjson.dumps(credential.kdf.model_dump()).decode(),
        "cred_key": credential.public_key,
    }


def _usable(state: AccountState) -> Rejection | None:
    if not state.exists:
        return Rejection(Reason.UNKNOWN_ACCOUNT, f"account {state.account_id} does not exist")
    if state.status == "closed":
        return Rejection(Reason.ACCOUNT_CLOSED, f"account {state.account_id} is closed")
    if state.role != "customer":
        return Rejection(Reason.NOT_A_CUSTOMER_ACCOUNT, f"account {state.account_id} holds no money")
    return None


def _money_reply(state: AccountState, **extra: Any) -> dict[str, Any]:
    return {"account": state.account_id, "balance_cents": state.balance, **extra}


def decide_open(command: OpenAccount, state: AccountState) -> Outcome:
    if state.exists:
        return Rejection(Reason.INVALID_REQUEST, f"account {state.account_id} already exists")
    cred = _credential_fields(command.credential)
    new = state.bump(status="open", role="customer", sms_opt_in=command.sms_opt_in, **cred)
    opened = EventDraft(
        "AccountOpened",
        (state.account_id,),
        {
            "account": state.account_id,
            "role": "customer",
            "ssn": command.ssn,
            "phone": command.phone,
            "first_name": command.first_name,
            "last_name": command.last_name,
            "sms_opt_in": command.sms_opt_in,
        },
    )
    registered = EventDraft(
        "CredentialsRegistered",
        (state.account_id,),
        {"account": state.account_id, "salt": cred["cred_salt"], "kdf": command.credential.kdf.model_dump(),
         "public_key": cred["cred_key"]},
    )
    return Decision((opened, registered), {state.account_id: new}, {"account": state.account_id})


def decide_deposit(command: Deposit, state: AccountState) -> Outcome:
    if problem := _usable(state):
        return problem
    balance = state.balance + command.amount
    if balance > MAX_BALANCE_CENTS:
        return Rejection(Reason.BALANCE_LIMIT, "deposit would exceed the maximum balance")
    new = state.with_balance(balance)
    event = EventDraft(
        "MoneyDeposited", (state.account_id,),
        {"account": state.account_id, "amount": command.amount, "balance_after": balance},
    )
    return Decision((event,), {state.account_id: new}, _money_reply(new))


def decide_withdraw(command: Withdraw, state: AccountState) -> Outcome:
    if problem := _usable(state):
        return problem
    if command.amount > state.balance:
        return Rejection(Reason.INSUFFICIENT_FUNDS, f"insufficient funds in account {state.account_id}")
    new = state.with_balance(state.balance - command.amount)
    event = EventDraft(
        "MoneyWithdrawn", (state.account_id,),
        {"account": state.account_id, "amount": command.amount, "balance_after": new.balance},
    )
    return Decision((event,), {state.account_id: new}, _money_reply(new))


def decide_transfer(command: Transfer, source: AccountState, target: AccountState) -> Outcome:
    if command.account == command.to:
        return Rejection(Reason.SAME_ACCOUNT, "cannot transfer to the same account")
    if problem := _usable(source):
        return problem
    if problem := _usable(target):
        return problem
    if command.amount > source.balance:
        return Rejection(Reason.INSUFFICIENT_FUNDS, f"insufficient funds in account {source.account_id}")
    if target.balance + command.amount > MAX_BALANCE_CENTS:
        return Rejection(Reason.BALANCE_LIMIT, "transfer would exceed the target's maximum balance")
    new_source = source.with_balance(source.balance - command.amount)
    new_target = target.with_balance(target.balance + command.amount)
    event = EventDraft(
        "MoneyTransferred",
        (source.account_id, target.account_id),
        {
            "from": source.account_id,
            "to": target.account_id,
            "amount": command.amount,
            "from_balance_after": new_source.balance,
            "to_balance_after": new_target.balance,
        },
    )
    # The reply shows only the sender's balance: the recipient's is none of the sender's business.
    return Decision(
        (event,),
        {source.account_id: new_source, target.account_id: new_target},
        _money_reply(new_source, to=target.account_id),
    )


def decide_close(command: CloseAccount, state: AccountState) -> Outcome:
    if problem := _usable(state):
        return problem
    if state.balance != 0:
        return Rejection(Reason.BALANCE_NOT_ZERO, f"account {state.account_id} still holds money; empty it first")
    new = state.bump(status="closed")
    event = EventDraft("AccountClosed", (state.account_id,), {"account": state.account_id})
    return Decision((event,), {state.account_id: new}, _money_reply(new, status="closed"))


def decide_update_profile(command: UpdateProfile, state: AccountState) -> Outcome:
    if problem := _usable(state):
        return problem
    changes = {
        name: value
        for name in ("phone", "sms_opt_in", "first_name", "last_name")
        if (value := getattr(command, name)) is not None
    }
    if not changes:
        return Rejection(Reason.INVALID_REQUEST, "nothing to update")
    new = state.bump(sms_opt_in=changes.get("sms_opt_in", state.sms_opt_in))
    event = EventDraft("ProfileUpdated", (state.account_id,), {"account": state.account_id, **changes})
    return Decision((event,), {state.account_id: new}, {"account": state.account_id,
                                                       "updated": sorted(changes)})


def decide_change_password(command: ChangePassword, state: AccountState) -> Outcome:
    """Called only after the handler verified the proof made with the old password."""
    if not state.exists:
        return Rejection(Reason.UNKNOWN_ACCOUNT, f"account {state.account_id} does not exist")
    if state.status == "closed":
        return Rejection(Reason.ACCOUNT_CLOSED, f"account {state.account_id} is closed")
    cred = _credential_fields(command.credential)
    new = state.bump(**cred)
    event = EventDraft(
        "PasswordChanged", (state.account_id,),
        {"account": state.account_id, "salt": cred["cred_salt"], "kdf": command.credential.kdf.model_dump(),
         "public_key": cred["cred_key"]},
    )
    return Decision((event,), {state.account_id: new}, {"account": state.account_id})


def decide_erase(command: EraseCustomer, state: AccountState) -> Outcome:
    if not state.exists:
        return Rejection(Reason.UNKNOWN_ACCOUNT, f"account {state.account_id} does not exist")
    if state.role != "customer":
        return Rejection(Reason.NOT_A_CUSTOMER_ACCOUNT, "only customer data can be erased")
    if state.status != "closed":
        return Rejection(Reason.ACCOUNT_NOT_CLOSED, "close the account before erasing the customer's data")
    if state.erased:
        return Rejection(Reason.ALREADY_ERASED, f"account {state.account_id} is already erased")
    new = state.bump(erased=True, cred_salt="", cred_kdf="", cred_key="")
    event = EventDraft("CustomerDataErased", (state.account_id,), {"account": state.account_id})
    return Decision((event,), {state.account_id: new}, {"account": state.account_id, "erased": True})


def decide(command: Command, states: Mapping[int, AccountState], context: Context) -> Outcome:
    """Route a validated, authorized command to its decider."""
    match command:
        case OpenAccount():
            assert context.new_account_id is not None
            return decide_open(command, states[context.new_account_id])
        case Deposit():
            return decide_deposit(command, states[command.account])
        case Withdraw():
            return decide_withdraw(command, states[command.account])
        case Transfer():
            return decide_transfer(command, states[command.account], states[command.to])
        case CloseAccount():
            return decide_close(command, states[command.account])
        case UpdateProfile():
            return decide_update_profile(command, states[command.account])
        case ChangePassword():
            return decide_change_password(command, states[command.account])
        case EraseCustomer():
            return decide_erase(command, states[command.account])
    raise AssertionError(f"no decider for {type(command).__name__}")
