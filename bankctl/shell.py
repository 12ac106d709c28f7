"""``bankctl shell``: numbered menus for people used to menu-driven banking terminals (issue #6).

Same requests as the commands: login and logout go through ``cmd_auth.login``/``revoke`` (the zero-knowledge
proof; the password never leaves this process), money through ``cmd_bank.move_money``/``open_account`` (personal
fields sealed in transit), reads through the same queries, and replies are shown with the commands' own
formatting. The bank decides everything; the shell only checks input early so a typo costs no round trip.

Session: kept in memory only. It is never written to the profile, so a shell on a shared terminal leaves no
bearer token on disk and does not replace a session saved by ``bankctl login``; logging out, or leaving the
shell in any way, revokes it on the bank. The last seq this shell wrote is also kept in memory and sent as
``min_seq``, so a balance right after a deposit always includes the deposit.

Keys: an empty answer, Ctrl-C or Ctrl-D at any prompt goes back one level (a form to its menu, a menu to
logging out, the login menu out of the shell). No rejection or failure ever ends the shell with a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from bankctl import cmd_auth, cmd_bank, cmd_query
from bankctl.config import Settings
from bankctl.output import BankctlError, Exit
from bankctl.session_client import BankSession
from commands.money import InvalidAmount, format_cents, parse_amount

MAX_ACCOUNT = 10**12  # as the commands' --account option


class Back(Exception):
    """The user left a form (empty answer, Ctrl-C or Ctrl-D): return to the menu."""


class SessionEnded(Exception):
    """The bank no longer accepts this session (expired or revoked): back to the login menu."""


# ---- prompts ---------------------------------------------------------------------------------------------------

def say(text: str) -> None:
    click.echo(text)


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def ask(text: str, *, hide: bool = False) -> str:
    """One answer; empty, Ctrl-C and Ctrl-D raise :class:`Back`."""
    try:
        answer = click.prompt(text, default="", show_default=False, hide_input=hide)
    except click.Abort:
        say("")
        raise Back from None
    answer = str(answer) if hide else str(answer).strip()
    if not answer:
        raise Back
    return answer


def ask_account(text: str) -> int:
    """An account number, asked again until it is one."""
    while True:
        answer = ask(text)
        if answer.isascii() and answer.isdigit() and int(answer) <= MAX_ACCOUNT:
            return int(answer)
        say(f"Invalid account number {answer!r}: use digits only, like 12.")


def ask_amount(text: str = "Amount (like 12.50)") -> int:
    """An amount in cents, parsed by the same rules as the commands; asked again until it is valid."""
    while True:
        answer = ask(text)
        try:
            return parse_amount(answer)
        except InvalidAmount as error:
            say(sentence(str(error)))


def ask_field(text: str, kind: str, label: str) -> Any:
    """A personal field checked with the bank's own rules (commands.models); asked again until valid."""
    while True:
        try:
            return cmd_bank.check_field(kind, ask(text), label)
        except BankctlError as error:
            say(sentence(error.message))


def ask_yes_no(text: str, *, default: bool) -> bool:
    try:
        return click.confirm(text, default=default)
    except click.Abort:
        say("")
        raise Back from None


def ask_new_password() -> str:
    """The customer's initial password, hidden and typed twice; asked again while too weak."""
    while True:
        try:
            return cmd_bank.read_new_password(from_stdin=False)
        except click.Abort:
            say("")
            raise Back from None
        except BankctlError as error:
            say(sentence(error.message))


# ---- actions: one per menu item; each returns after showing its outcome ----------------------------------------

Action = Callable[[BankSession], None]


def show_balance(bank: BankSession) -> None:
    say(sentence(cmd_query.balance_text(bank.query("balance", {}))))


def show_history(bank: BankSession) -> None:
    say(sentence(cmd_query.history_text(bank.query("history", {}))))


def deposit(bank: BankSession) -> None:
    cents = ask_amount("Amount to deposit (like 12.50)")
    reply = cmd_bank.move_money(bank, "Deposit", bank.account_id, cents)
    say(sentence(cmd_bank.deposited_text(reply, format_cents(cents))))


def withdraw(bank: BankSession) -> None:
    cents = ask_amount("Amount to withdraw (like 12.50)")
    reply = cmd_bank.move_money(bank, "Withdraw", bank.account_id, cents)
    say(sentence(cmd_bank.withdrew_text(reply, format_cents(cents))))


def transfer(bank: BankSession) -> None:
    to = ask_account("To account number")
    cents = ask_amount("Amount to transfer (like 12.50)")
    reply = cmd_bank.move_money(bank, "Transfer", bank.account_id, cents, to=to)
    say(sentence(cmd_bank.transferred_text(reply, format_cents(cents))))


def open_account(bank: BankSession) -> None:
    payload = {"ssn": ask_field("SSN (like 123-45-6789)", "Ssn", "SSN"),
               "phone": ask_field("Phone (like +15551234567)", "Phone", "phone"),
               "first_name": ask_field("First name", "PersonName", "first name"),
               "last_name": ask_field("Last name", "PersonName", "last name"),
               "sms_opt_in": ask_yes_no("SMS alerts for movements of money?", default=False)}
    reply = cmd_bank.open_account(bank, payload, ask_new_password())
    say(sentence(cmd_bank.opened_text(reply)))


def close_account(bank: BankSession) -> None:
    account = ask_account("Account number to close")
    if not ask_yes_no(f"Close account {account}? Its balance must be zero.", default=False):
        raise Back
    say(sentence(cmd_bank.closed_text(bank.command("CloseAccount", {"account": account}))))


def view_accounts(bank: BankSession) -> None:
    say(cmd_query.accounts_text(bank.query("account_list", {})))


def view_transactions(bank: BankSession) -> None:
    say(cmd_query.transactions_text(bank.query("tx_list", {})))


LOG_OUT = "Log out"
CUSTOMER_MENU: Sequence[tuple[str, Action | None]] = (
    ("Balance", show_balance), ("Deposit", deposit), ("Withdraw", withdraw), ("Transfer", transfer),
    ("History", show_history), (LOG_OUT, None))
ADMIN_MENU: Sequence[tuple[str, Action | None]] = (
    ("Open account", open_account), ("Close account", close_account), ("View accounts", view_accounts),
    ("View transactions", view_transactions), (LOG_OUT, None))

_PREFIX = {Exit.INVALID: "Invalid", Exit.REJECTED: "Refused", Exit.DENIED: "Not permitted",
           Exit.UNAVAILABLE: "Bank unavailable", Exit.UNEXPECTED: "Error"}


def describe(error: BankctlError) -> str:
    """A refusal as one line: what kind (by exit code) and the bank's own reason."""
    text = f"{_PREFIX.get(Exit(error.exit_code), 'Error')}: {error.message}"
    if error.exit_code == Exit.UNAVAILABLE:
        text += " (check your balance or history before trying again)"
    return text


def perform(action: Action, bank: BankSession) -> None:
    """Run one menu item; every failure becomes a message and the menu comes back."""
    try:
        action(bank)
    except Back:
        say("Cancelled.")
    except BankctlError as error:
        if error.code == "unauthenticated":
            raise SessionEnded("your session has ended (expired or revoked): please log in again") from error
        say(describe(error))
    except KeyboardInterrupt:
        say("\nInterrupted: the request may still have been carried out; check your balance or history.")
    except Exception as error:  # a banking terminal shows a message, never a traceback
        say(f"Unexpected error ({type(error).__name__}): {error}")


# ---- menus -----------------------------------------------------------------------------------------------------

def choose(title: str, labels: Sequence[str]) -> int:
    """Show a numbered menu and return the index picked; :class:`Back` on Ctrl-C/Ctrl-D."""
    say("")
    say(title)
    for number, label in enumerate(labels, start=1):
        say(f"  {number}) {label}")
    while True:
        try:
            answer = str(click.prompt(f"Choose [1-{len(labels)}]", default="", show_default=False)).strip()
        except click.Abort:
            say("")
            raise Back from None
        if answer.isascii() and answer.isdigit() and 1 <= int(answer) <= len(labels):
            return int(answer) - 1
        if answer:
            say(f"Please choose a number from 1 to {len(labels)}.")


def role_menu(bank: BankSession) -> None:
    """The admin or the customer menu until "Log out" (or Ctrl-D)."""
    items = ADMIN_MENU if bank.is_admin else CUSTOMER_MENU
    title = (f"Administrator menu (account {bank.account_id})" if bank.is_admin
             else f"Customer menu (account {bank.account_id})")
    while True:
        try:
            picked = choose(title, [label for label, _ in items])
        except Back:
            return
        action = items[picked][1]
        if action is None:
            return
        perform(action, bank)


def log_in(settings: Settings) -> BankSession | None:
    """Ask for account and hidden password; a session, or ``None`` after saying why not."""
    try:
        account = ask_account("Account number")
        password = ask("Password", hide=True)
    except Back:
        say("Cancelled.")
        return None
    try:
        session = cmd_auth.login(settings, account, password)
    except BankctlError as error:
        say(f"Login failed: {error.message}")
        return None
    except KeyboardInterrupt:
        say("\nLogin interrupted.")
        return None
    except Exception as error:  # never a traceback
        say(f"Login failed: unexpected error ({type(error).__name__}): {error}")
        return None
    say(f"Logged in as account {session.account_id} ({session.role}).")
    return BankSession(settings, session)


def log_out(bank: BankSession) -> None:
    """Revoke the session on the bank; if the bank cannot be told, the session still expires by itself."""
    try:
        cmd_auth.revoke(bank.settings, bank.session)
    except (BankctlError, KeyboardInterrupt):
        say("Could not reach the bank to end the session; it expires by itself.")
    else:
        say("Logged out.")


def run(settings: Settings) -> int:
    """The login menu until "Quit" (or Ctrl-D); returns the exit code (0)."""
    say("Fintech Fortress banking terminal. Empty answer, Ctrl-C or Ctrl-D: back.")
    try:
        while True:
            try:
                picked = choose("Main menu", ["Log in", "Quit"])
            except Back:
                break
            if picked == 1:
                break
            bank = log_in(settings)
            if bank is None:
                continue
            try:
                role_menu(bank)
            except SessionEnded as ended:
                say(sentence(str(ended)))
            finally:
                log_out(bank)
    except KeyboardInterrupt:
        say("")
    say("Goodbye.")
    return 0
