"""Banking commands that write: ``account open|close``, ``deposit``, ``withdraw``, ``transfer``,
``profile update``, ``customer erase`` (DESIGN §9).

Each one checks its input here first (bad input is exit 2 and nothing is sent), then sends one request with the
saved session and prints the bank's answer. The bank decides everything else: authorization and the rules of
money live in the handlers, never here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
import pydantic

from bankctl.output import BankctlError, Exit, emit, json_option
from bankctl.session_client import BankSession

# Amount arguments may look like options ("-5"); they must reach the amount parser, not click's option parser.
_AMOUNT_COMMAND = {"ignore_unknown_options": True}


def _settings(ctx: click.Context) -> Any:
    return ctx.obj


def _amount(text: str) -> int:
    from commands.money import InvalidAmount, parse_amount

    try:
        return parse_amount(text)
    except InvalidAmount as error:
        raise BankctlError(str(error), Exit.INVALID, "invalid_amount") from error


def check_field(kind: str, value: Any, label: str) -> Any:
    """Validate one field (``kind`` names a type in commands.models, like "Ssn") with the same rules the bank
    applies: exit 2 before anything is sent."""
    from commands import models

    adapter = pydantic.TypeAdapter(getattr(models, kind))
    try:
        return adapter.validate_python(value)
    except pydantic.ValidationError as error:
        message = error.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise BankctlError(f"invalid {label}: {message}", Exit.INVALID, "invalid_request") from error


def _target_account(session: Any, account: int | None) -> int:
    if account is not None:
        return account
    if session.role == "admin":
        raise BankctlError("administrators must name the customer's account with --account N", Exit.INVALID,
                           "invalid_request")
    return int(session.account_id)


def _public(reply: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The reply as printed with --json: amounts as strings with two decimals, no integer cents."""
    out = {k: v for k, v in reply.items() if k != "balance_cents"}
    out.update(extra)
    return out


def _money(ctx: click.Context, as_json: bool, request_type: str, amount_text: str, account: int | None,
           human: Callable[[dict[str, Any], str], str], **payload: Any) -> None:
    from commands.money import format_cents

    cents = _amount(amount_text)
    settings = _settings(ctx)
    bank = BankSession.from_profile(settings)
    reply = move_money(bank, request_type, _target_account(bank.session, account), cents, **payload)
    amount = format_cents(cents)
    emit(as_json, _public(reply, amount=amount), human(reply, amount))


def move_money(bank: BankSession, request_type: str, account: int, cents: int, **payload: Any) -> dict[str, Any]:
    """Send ``Deposit``, ``Withdraw`` or ``Transfer`` (with ``to=``) of ``cents`` on ``account``."""
    return bank.command(request_type, {"account": account, "amount": cents, **payload})


def deposited_text(reply: dict[str, Any], amount: str) -> str:
    return f"deposited {amount} to account {reply['account']}: balance {reply['balance']} (seq {reply['seq']})"


def withdrew_text(reply: dict[str, Any], amount: str) -> str:
    return f"withdrew {amount} from account {reply['account']}: balance {reply['balance']} (seq {reply['seq']})"


def transferred_text(reply: dict[str, Any], amount: str) -> str:
    return (f"transferred {amount} from account {reply['account']} to account {reply['to']}: "
            f"balance {reply['balance']} (seq {reply['seq']})")


# Sealed to the bank's transport key in the request (eventstore.transport), never sent in clear.
PERSONAL_FIELDS = ("ssn", "phone", "first_name", "last_name")

_ACCOUNT = click.option("--account", "account", type=click.IntRange(0, 10**12), default=None,
                        help="Account to act on (default: your own; required for administrators).")


@click.command("deposit", context_settings=_AMOUNT_COMMAND)
@click.argument("amount")
@_ACCOUNT
@json_option
@click.pass_context
def deposit_cmd(ctx: click.Context, amount: str, account: int | None, as_json: bool) -> None:
    """Deposit AMOUNT (like 12.50) into an account."""
    _money(ctx, as_json, "Deposit", amount, account, deposited_text)


@click.command("withdraw", context_settings=_AMOUNT_COMMAND)
@click.argument("amount")
@_ACCOUNT
@json_option
@click.pass_context
def withdraw_cmd(ctx: click.Context, amount: str, account: int | None, as_json: bool) -> None:
    """Withdraw AMOUNT (like 12.50) from an account."""
    _money(ctx, as_json, "Withdraw", amount, account, withdrew_text)


@click.command("transfer", context_settings=_AMOUNT_COMMAND)
@click.argument("to", type=click.IntRange(0, 10**12))
@click.argument("amount")
@_ACCOUNT
@json_option
@click.pass_context
def transfer_cmd(ctx: click.Context, to: int, amount: str, account: int | None, as_json: bool) -> None:
    """Transfer AMOUNT (like 12.50) to account TO."""
    _money(ctx, as_json, "Transfer", amount, account, transferred_text, to=to)


@click.group("account")
def account_group() -> None:
    """Open, close, list and show accounts."""


def read_new_password(from_stdin: bool) -> str:
    """The customer's initial password: one stdin line, or hidden and typed twice; too weak is exit 2."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\n").rstrip("\r")
    else:
        password = click.prompt("Initial password for the customer", hide_input=True, confirmation_prompt=True,
                                err=True)
    if not password:
        raise BankctlError("empty password", Exit.INVALID, "invalid_request")
    try:
        from auth_zkp.kdf import password_problem
    except ImportError:
        return password
    if problem := password_problem(password):
        raise BankctlError(problem, Exit.INVALID, "invalid_request")
    return password


def make_initial_credential(password: str) -> dict[str, Any]:
    """The new customer's verifier, made here so the password never leaves bankctl (auth_zkp.client_proof)."""
    from auth_zkp.client_proof import make_credential

    return make_credential(password)


@account_group.command("open")
@click.option("--ssn", prompt="SSN", help="Social security number, like 123-45-6789.")
@click.option("--phone", prompt="Phone", help="Mobile number in international format, like +15551234567.")
@click.option("--first-name", prompt="First name")
@click.option("--last-name", prompt="Last name")
@click.option("--sms/--no-sms", default=False, show_default=True, help="Send SMS alerts for movements of money.")
@click.option("--password-stdin", is_flag=True, help="Read the customer's initial password from stdin.")
@json_option
@click.pass_context
def account_open_cmd(ctx: click.Context, ssn: str, phone: str, first_name: str, last_name: str, sms: bool,
                     password_stdin: bool, as_json: bool) -> None:
    """Open a customer account (administrators)."""
    payload = {"ssn": check_field("Ssn", ssn, "SSN"), "phone": check_field("Phone", phone, "phone"),
               "first_name": check_field("PersonName", first_name, "first name"),
               "last_name": check_field("PersonName", last_name, "last name"), "sms_opt_in": sms}
    settings = _settings(ctx)
    bank = BankSession.from_profile(settings)
    reply = open_account(bank, payload, read_new_password(password_stdin))
    emit(as_json, _public(reply), lambda: opened_text(reply))


def open_account(bank: BankSession, payload: dict[str, Any], password: str) -> dict[str, Any]:
    """Send ``OpenAccount``: the credential is made from ``password`` here, personal fields sealed in transit."""
    credential = make_initial_credential(password)
    return bank.command("OpenAccount", {**payload, "credential": credential}, personal=PERSONAL_FIELDS)


def opened_text(reply: dict[str, Any]) -> str:
    return f"opened account {reply['account']} (seq {reply['seq']})"


def closed_text(reply: dict[str, Any]) -> str:
    return f"closed account {reply['account']} (seq {reply['seq']})"


@account_group.command("close")
@click.argument("account_id", type=click.IntRange(0, 10**12))
@json_option
@click.pass_context
def account_close_cmd(ctx: click.Context, account_id: int, as_json: bool) -> None:
    """Close an account with a zero balance (administrators)."""
    settings = _settings(ctx)
    reply = BankSession.from_profile(settings).command("CloseAccount", {"account": account_id})
    emit(as_json, _public(reply), lambda: closed_text(reply))


@click.group("profile")
def profile_group() -> None:
    """Your contact details and SMS preference."""


@profile_group.command("update")
@click.option("--phone", default=None, help="New mobile number, like +15551234567.")
@click.option("--sms/--no-sms", default=None, help="Turn SMS alerts on or off.")
@click.option("--first-name", default=None)
@click.option("--last-name", default=None)
@_ACCOUNT
@json_option
@click.pass_context
def profile_update_cmd(ctx: click.Context, phone: str | None, sms: bool | None, first_name: str | None,
                       last_name: str | None, account: int | None, as_json: bool) -> None:
    """Change any of phone, SMS alerts, first and last name."""
    payload: dict[str, Any] = {}
    if phone is not None:
        payload["phone"] = check_field("Phone", phone, "phone")
    if sms is not None:
        payload["sms_opt_in"] = sms
    if first_name is not None:
        payload["first_name"] = check_field("PersonName", first_name, "first name")
    if last_name is not None:
        payload["last_name"] = check_field("PersonName", last_name, "last name")
    if not payload:
        raise BankctlError("nothing to update: give --phone, --sms/--no-sms, --first-name or --last-name",
                           Exit.INVALID, "invalid_request")
    settings = _settings(ctx)
    bank = BankSession.from_profile(settings)
    payload["account"] = _target_account(bank.session, account)
    reply = bank.command("UpdateProfile", payload, personal=PERSONAL_FIELDS)
    emit(as_json, _public(reply),
         lambda: f"updated {', '.join(reply.get('updated', []))} of account {reply['account']} (seq {reply['seq']})")


@click.group("customer")
def customer_group() -> None:
    """Customer data (administrators)."""


@customer_group.command("erase")
@click.argument("account_id", type=click.IntRange(0, 10**12))
@json_option
@click.pass_context
def customer_erase_cmd(ctx: click.Context, account_id: int, as_json: bool) -> None:
    """Crypto-shred a closed account's personal data (the log stays intact and verifiable)."""
    settings = _settings(ctx)
    reply = BankSession.from_profile(settings).command("EraseCustomer", {"account": account_id})
    emit(as_json, _public(reply), lambda: f"erased the personal data of account {reply['account']} "
                                          f"(seq {reply['seq']})")


def _attach(cli: click.Group, group: click.Group) -> None:
    """Add ``group``'s commands to a group of the same name if another module registered it first."""
    existing = cli.commands.get(group.name or "")
    if isinstance(existing, click.Group):
        for name, command in group.commands.items():
            existing.add_command(command, name)
    else:
        cli.add_command(group)


def register(cli: click.Group) -> None:
    for command in (deposit_cmd, withdraw_cmd, transfer_cmd):
        cli.add_command(command)
    for group in (account_group, profile_group, customer_group):
        _attach(cli, group)
