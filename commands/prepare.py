"""Turning decider outcomes into the append script's input (DESIGN §4, §5, §8).

This is where a decision gets its envelope (event id, time, actor, causation) and where personal data is sealed:
the deciders emit plaintext, nothing here lets it reach an event or a Redis key unencrypted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from commands.decide import Decision, Rejection
from commands.money import format_cents
from commands.state import AccountState
from eventstore.append import AccountWrite, PreparedCommand, PreparedEvent
from eventstore.envelope import encode_envelope, new_event_id
from eventstore.keys import Keys
from eventstore.pii import PersonalDataVault

PERSONAL_EVENT_FIELDS = frozenset({"ssn", "phone", "first_name", "last_name", "public_key"})
# State field -> the field name its seal is bound to: the login verifier is the same value as the events'
# ``public_key`` and is opened under that name by ``auth_zkp.login``.
SEALED_STATE_FIELDS = {"cred_key": "public_key"}


class Origin(NamedTuple):
    """Who caused a command and when: the parts of every envelope that do not come from the decider."""

    command_id: str
    actor: str
    occurred_at: str


def reply_with_seq(reply: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """Split a reply object so the script can add ``"seq": <last seq>`` as its last member."""
    encoded = orjson.dumps(reply)
    assert encoded.endswith(b"}") and len(encoded) > 2, "a success reply is a non-empty JSON object"
    return encoded[:-1] + b',"seq":', b"}"


def success_reply(command_id: str, reply: Mapping[str, Any]) -> dict[str, Any]:
    """The reply of DESIGN §7: ``ok``, the command id, and both forms of the balance when there is one."""
    out: dict[str, Any] = {"ok": True, "command_id": command_id, **reply}
    cents = out.get("balance_cents")
    if isinstance(cents, int):
        out["balance"] = format_cents(cents)
    return out


def rejection_reply(command_id: str, rejection: Rejection) -> dict[str, Any]:
    return {"ok": False, "code": str(rejection.reason), "message": rejection.message, "command_id": command_id}


def _sealed_event_data(vault: PersonalDataVault, data: dict[str, Any]) -> dict[str, Any]:
    if PERSONAL_EVENT_FIELDS.isdisjoint(data):
        return data
    account = data["account"]
    return {
        name: (vault.seal(account, name, value) if name in PERSONAL_EVENT_FIELDS and isinstance(value, str) else value)
        for name, value in data.items()
    }


# Hash field -> AccountState attribute, for everything but ``version`` (always written).
_STATE_FIELDS = (("balance", "balance"), ("status", "status"), ("role", "role"), ("erased", "erased"),
                 ("sms", "sms_opt_in"), ("cred_salt", "cred_salt"), ("cred_kdf", "cred_kdf"), ("cred_key", "cred_key"))


# The attributes after ``balance`` in AccountState are every other stored field: compared at once on the hot path.
_AFTER_BALANCE = slice(AccountState._fields.index("balance") + 1, None)
assert set(AccountState._fields[_AFTER_BALANCE]) == {attribute for _, attribute in _STATE_FIELDS} - {"balance"}


def changed_fields(vault: PersonalDataVault, before: AccountState, after: AccountState) -> dict[str, str | int]:
    """The hash fields to write: everything for a new account, else only what changed; secrets sealed."""
    if before.exists:
        new: dict[str, str | int] = {"version": after.version}
        if before[_AFTER_BALANCE] == after[_AFTER_BALANCE]:  # the money path: one tuple comparison
            if after.balance != before.balance:
                new["balance"] = after.balance
            return new
        for name, attribute in _STATE_FIELDS:
            value = getattr(after, attribute)
            if value != getattr(before, attribute):
                new[name] = int(value) if isinstance(value, bool) else value
    else:
        new = after.to_fields()
    for name, sealed_as in SEALED_STATE_FIELDS.items():
        value = new.get(name)
        if isinstance(value, str) and value:
            new[name] = vault.seal(after.account_id, sealed_as, value)
    return new


def prepare_decision(
    decision: Decision,
    before: Mapping[int, AccountState],
    origin: Origin,
    *,
    keys: Keys,
    vault: PersonalDataVault,
    reply: Mapping[str, Any] | None = None,
) -> PreparedCommand:
    """Envelope, seal and encode an accepted command. ``reply`` replaces the usual success reply (plain mode)."""
    states = decision.new_states
    writes = []
    for account, state in states.items():
        previous = before[account]
        writes.append(AccountWrite(keys.account(account), previous.version, changed_fields(vault, previous, state)))
    events = []
    command_id = origin.command_id
    for draft in decision.events:
        prefix, suffix = encode_envelope(
            event_id=new_event_id(),
            event_type=draft.type,
            accounts=draft.accounts,
            versions=[states[a].version for a in draft.accounts],
            command_id=command_id,
            actor=origin.actor,
            occurred_at=origin.occurred_at,
            data=_sealed_event_data(vault, draft.data),
        )
        events.append(PreparedEvent(draft.type, prefix, suffix))
    outcome_key = keys.command_outcome(origin.command_id)
    if reply is not None:
        return PreparedCommand(outcome_key, writes, events, orjson.dumps(reply), None)
    prefix, suffix = reply_with_seq(success_reply(origin.command_id, decision.reply))
    return PreparedCommand(outcome_key, writes, events, prefix, suffix)


def prepare_rejection(
    rejection: Rejection, touched: Sequence[AccountState], origin: Origin, *, keys: Keys
) -> PreparedCommand:
    """A refusal: no event, but the versions it was judged on are checked (a stale refusal is re-decided)."""
    seen = {state.account_id: state.version for state in touched}
    writes = [AccountWrite(keys.account(account), version) for account, version in seen.items()]
    return PreparedCommand(
        keys.command_outcome(origin.command_id),
        writes,
        [],
        orjson.dumps(rejection_reply(origin.command_id, rejection)),
        None,
    )
