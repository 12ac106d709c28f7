"""Read commands: ``balance``, ``history``, ``account show|list``, ``tx list`` (DESIGN §7, §9).

Each is a request on ``{bank}:queries`` answered by whichever projector is up; authorization happens there.
The request carries ``min_seq``, the last seq this profile wrote, so a read always sees the user's own writes.
"""

from __future__ import annotations

from typing import Any

import click

from bankctl.output import emit, json_option, table
from bankctl.session_client import BankSession

_ACCOUNT = click.option("--account", "account", type=click.IntRange(0, 10**12), default=None,
                        help="Account number (default: your own; administrators may name any).")
_LIMIT = click.option("--limit", type=click.IntRange(1, 10_000), default=None, help="How many rows at most.")


def _query(ctx: click.Context, query_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    return BankSession.from_profile(ctx.obj).query(query_type, payload)


def public(value: Any) -> Any:
    """What ``--json`` prints: amounts only as strings with two decimals (integer ``*_cents`` dropped)."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items() if not k.endswith("_cents")}
    if isinstance(value, list):
        return [public(v) for v in value]
    return value


TX_COLUMNS = ("seq", "occurred_at", "kind", "amount", "counterparty", "balance_after")
ACCOUNT_COLUMNS = ("account", "role", "status", "balance", "first_name", "last_name", "phone", "ssn",
                   "sms_opt_in")


# How people see each reply (shared with the interactive shell).
def balance_text(reply: dict[str, Any]) -> str:
    return f"account {reply['account']}: balance {reply['balance']} ({reply['status']})"


def history_text(reply: dict[str, Any]) -> str:
    return f"account {reply['account']}\n" + table(reply["transactions"], TX_COLUMNS)


def accounts_text(reply: dict[str, Any]) -> str:
    return table(reply["accounts"], ACCOUNT_COLUMNS)


def transactions_text(reply: dict[str, Any]) -> str:
    return table(reply["transactions"], ("account", *TX_COLUMNS))


def _payload(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@click.command("balance")
@_ACCOUNT
@json_option
@click.pass_context
def balance_cmd(ctx: click.Context, account: int | None, as_json: bool) -> None:
    """Show an account's balance."""
    reply = _query(ctx, "balance", _payload(account=account))
    emit(as_json, public(reply), lambda: balance_text(reply))


@click.command("history")
@_ACCOUNT
@_LIMIT
@json_option
@click.pass_context
def history_cmd(ctx: click.Context, account: int | None, limit: int | None, as_json: bool) -> None:
    """Show an account's transactions, newest first."""
    reply = _query(ctx, "history", _payload(account=account, limit=limit))
    emit(as_json, public(reply), lambda: history_text(reply))


@click.group("account")
def account_group() -> None:
    """Accounts: open, close, show, list."""


@account_group.command("show")
@click.argument("account_id", type=click.IntRange(0, 10**12), required=False)
@json_option
@click.pass_context
def account_show_cmd(ctx: click.Context, account_id: int | None, as_json: bool) -> None:
    """Show an account (personal data masked). Customers may show their own."""
    reply = _query(ctx, "account_show", _payload(account=account_id))
    fields = {k: v for k, v in public(reply).items() if k not in ("ok", "seq")}
    emit(as_json, public(reply), lambda: "\n".join(f"{k}: {'' if v is None else v}" for k, v in fields.items()))


@account_group.command("list")
@_LIMIT
@json_option
@click.pass_context
def account_list_cmd(ctx: click.Context, limit: int | None, as_json: bool) -> None:
    """List accounts (administrators)."""
    reply = _query(ctx, "account_list", _payload(limit=limit))
    emit(as_json, public(reply), lambda: accounts_text(reply))


@click.group("tx")
def tx_group() -> None:
    """Transactions of the whole bank."""


@tx_group.command("list")
@_LIMIT
@json_option
@click.pass_context
def tx_list_cmd(ctx: click.Context, limit: int | None, as_json: bool) -> None:
    """List the latest transactions of every account (administrators)."""
    reply = _query(ctx, "tx_list", _payload(limit=limit))
    emit(as_json, public(reply), lambda: transactions_text(reply))


def register(cli: click.Group) -> None:
    cli.add_command(balance_cmd)
    cli.add_command(history_cmd)
    cli.add_command(tx_group)
    existing = cli.commands.get("account")
    if isinstance(existing, click.Group):
        for name, command in account_group.commands.items():
            existing.add_command(command, name)
    else:
        cli.add_command(account_group)
