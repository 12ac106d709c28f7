"""Property tests of the pure deciders over random command sequences (DESIGN §2, §5).

Money is conserved (deposits minus withdrawals equals the sum of balances), no balance goes negative, every
accepted command bumps exactly the versions of the accounts it touched, and rejections change nothing.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from auth_zkp.principal import Principal
from commands.decide import MAX_BALANCE_CENTS, Context, Decision, Reason, Rejection, decide
from commands.models import CloseAccount, Deposit, Transfer, Withdraw
from commands.state import AccountState

ACCOUNTS = range(1, 6)
ADMIN = Context(Principal(0, "admin"))

amounts = st.integers(min_value=1, max_value=10**9)
account_ids = st.sampled_from([*ACCOUNTS, 99])
commands = st.one_of(
    st.builds(lambda a, n: Deposit(type="Deposit", account=a, amount=n), account_ids, amounts),
    st.builds(lambda a, n: Withdraw(type="Withdraw", account=a, amount=n), account_ids, amounts),
    st.builds(lambda a, b, n: Transfer(type="Transfer", account=a, to=b, amount=n), account_ids, account_ids, amounts),
    st.builds(lambda a: CloseAccount(type="CloseAccount", account=a), account_ids),
)


def _initial() -> dict[int, AccountState]:
    states = {a: AccountState(a, version=1, status="open") for a in ACCOUNTS}
    states[99] = AccountState(99)
    return states


@settings(max_examples=300)
@given(st.lists(commands, max_size=60))
def test_money_is_conserved_and_never_negative(sequence):
    states = _initial()
    net = 0
    for command in sequence:
        before = dict(states)
        outcome = decide(command, states, ADMIN)
        if isinstance(outcome, Rejection):
            assert isinstance(outcome.reason, Reason) and outcome.message
            assert states == before
            continue
        assert isinstance(outcome, Decision)
        for account, new in outcome.new_states.items():
            assert new.version == before[account].version + 1
            assert 0 <= new.balance <= MAX_BALANCE_CENTS
        states.update(outcome.new_states)
        for event in outcome.events:
            if event.type == "MoneyDeposited":
                net += event.data["amount"]
            elif event.type == "MoneyWithdrawn":
                net -= event.data["amount"]
    assert sum(s.balance for s in states.values()) == net
    assert all(s.balance >= 0 for s in states.values())


@given(st.lists(commands, max_size=40))
def test_closed_and_unknown_accounts_never_move_money(sequence):
    states = _initial()
    for command in sequence:
        outcome = decide(command, states, ADMIN)
        touched = [command.account] + ([command.to] if isinstance(command, Transfer) else [])
        if any(states[a].status != "open" for a in touched) and not isinstance(command, CloseAccount):
            assert isinstance(outcome, Rejection)
            assert outcome.reason in {Reason.ACCOUNT_CLOSED, Reason.UNKNOWN_ACCOUNT, Reason.SAME_ACCOUNT}
        if isinstance(outcome, Decision):
            states.update(outcome.new_states)


@given(amounts, amounts)
def test_a_transfer_is_one_event_with_both_balances(balance, amount):
    states = {1: AccountState(1, version=3, balance=balance, status="open"), 2: AccountState(2, 1, 0, "open")}
    outcome = decide(Transfer(type="Transfer", account=1, to=2, amount=amount), states, ADMIN)
    if amount > balance:
        assert isinstance(outcome, Rejection) and outcome.reason == Reason.INSUFFICIENT_FUNDS
        return
    [event] = outcome.events
    assert event.type == "MoneyTransferred" and event.accounts == (1, 2)
    assert event.data["from_balance_after"] + event.data["to_balance_after"] == balance
    assert "to_balance" not in str(outcome.reply)
