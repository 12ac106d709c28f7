"""``bankctl batch FILE``: many deposits, withdrawals and transfers from a CSV file in few signed requests.

The whole file is checked here first (any bad line is exit 2 and nothing is sent), because a half-sent file is
hard to repair. Then the lines go out in batches of at most ``MAX_BATCH_COMMANDS``, in file order; the bank decides
every line on its own, so one refusal does not stop the others. Each line has its own command id, so the client's
resend after a timeout applies nothing twice; running the same file again would, so the report says what happened
to every line.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from typing import IO, Any

import click

from bankctl.output import BankctlError, Exit, emit, exit_for_reply_code, json_option, table
from bankctl.session_client import BankSession
from commands.money import parse_amount

HEADER = ("type", "account", "to", "amount")
TYPES = {"deposit": "Deposit", "withdraw": "Withdraw", "transfer": "Transfer"}
COLUMNS = ("line", "type", "account", "to", "amount", "result", "balance", "seq")
MAX_ACCOUNT = 10**12
MAX_REPORTED_PROBLEMS = 20  # a wholly wrong file should not print a million lines
_ACCOUNT = re.compile(r"[0-9]{1,13}")


@dataclass(frozen=True, slots=True)
class Line:
    """One checked line of the file; ``account`` is None when it defaults to the customer's own."""

    number: int
    kind: str
    account: int | None
    to: int | None
    cents: int


def _account(text: str, label: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not _ACCOUNT.fullmatch(text) or int(text) > MAX_ACCOUNT:
        raise ValueError(f"{label} must be an account number, not {text!r}")
    return int(text)


def _line(number: int, row: dict[str, str]) -> Line:
    """One row checked with the rules of the single commands; ValueError says what is wrong."""
    kind = row["type"].strip().lower()
    if kind not in TYPES:
        raise ValueError(f"unknown type {row['type']!r} (use {', '.join(TYPES)})")
    to = _account(row["to"], "to")
    if kind == "transfer" and to is None:
        raise ValueError("a transfer needs 'to'")
    if kind != "transfer" and to is not None:
        raise ValueError(f"'to' is only for transfers, not for a {kind}")
    return Line(number, kind, _account(row["account"], "account"), to, parse_amount(row["amount"]))


def parse_file(stream: IO[str]) -> list[Line]:
    """Every line of the CSV, or exit 2 naming each bad line: nothing is sent unless the whole file is good."""
    try:
        reader = csv.reader(stream)
        header = next((row for row in reader if row), None)
        if header is None:
            raise BankctlError("the file is empty: expected a header 'type,account,to,amount' and lines",
                               Exit.INVALID, "invalid_request")
        names = [name.strip().lstrip("\ufeff").lower() for name in header]
        if sorted(names) != sorted(HEADER):
            raise BankctlError(f"line {reader.line_num}: the header must be 'type,account,to,amount', not "
                               f"{','.join(header)!r}", Exit.INVALID, "invalid_request")
        lines: list[Line] = []
        problems: list[str] = []
        for row in reader:
            if not any(cell.strip() for cell in row):  # blank lines, and the ',,,' rows spreadsheets leave
                continue
            try:
                if len(row) != len(names):
                    raise ValueError(f"{len(row)} columns instead of {len(names)}")
                lines.append(_line(reader.line_num, dict(zip(names, row, strict=True))))
            except ValueError as error:  # InvalidAmount is a ValueError
                problems.append(f"line {reader.line_num}: {error}")
    except (csv.Error, UnicodeDecodeError) as error:
        raise BankctlError(f"cannot read the file as CSV: {error}", Exit.INVALID, "invalid_request") from error
    if problems:
        more = len(problems) - MAX_REPORTED_PROBLEMS
        shown = problems[:MAX_REPORTED_PROBLEMS] + ([f"... and {more} more bad lines"] if more > 0 else [])
        raise BankctlError(f"{len(problems)} bad line(s), nothing was sent:\n" + "\n".join(shown), Exit.INVALID,
                           "invalid_request")
    if not lines:
        raise BankctlError("the file has a header but no lines: nothing to send", Exit.INVALID, "invalid_request")
    return lines


def _resolve_accounts(bank: BankSession, lines: list[Line]) -> list[int]:
    """The acting account of every line: the customer's own unless named; administrators must name it."""
    if bank.is_admin:
        missing = [str(line.number) for line in lines if line.account is None]
        if missing:
            raise BankctlError(f"administrators must name the account on every line (missing on line(s) "
                               f"{', '.join(missing[:MAX_REPORTED_PROBLEMS])})", Exit.INVALID, "invalid_request")
    return [bank.account_id if line.account is None else line.account for line in lines]


def send(bank: BankSession, lines: list[Line], accounts: list[int]) -> tuple[list[dict[str, Any]], BankctlError | None]:
    """Every line's outcome, in batches of at most MAX_BATCH_COMMANDS in file order.

    A transport failure after some batches were settled is returned, not raised, so what did happen is still
    reported; the outcomes stop at the first batch without a reply.
    """
    from commands.client import Request
    from commands.requests import MAX_BATCH_COMMANDS

    outcomes: list[dict[str, Any]] = []
    for start in range(0, len(lines), MAX_BATCH_COMMANDS):
        requests = [Request(TYPES[line.kind], {"account": account, "amount": line.cents}
                            | ({"to": line.to} if line.to is not None else {}))
                    for line, account in zip(lines[start:start + MAX_BATCH_COMMANDS],
                                             accounts[start:start + MAX_BATCH_COMMANDS], strict=True)]
        try:
            results = bank.command_batch(requests)
        except BankctlError as error:
            if not outcomes:
                raise
            return outcomes, error
        outcomes += [{**result, "command_id": request.command_id} for request, result in zip(requests, results,
                                                                                           strict=True)]
    return outcomes, None


def report_rows(lines: list[Line], accounts: list[int], outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per line; lines past the outcomes are ``unknown`` (batch sent, no reply) then ``not_sent``."""
    from commands.money import format_cents
    from commands.requests import MAX_BATCH_COMMANDS

    rows = []
    for index, (line, account) in enumerate(zip(lines, accounts, strict=True)):
        row: dict[str, Any] = {"line": line.number, "type": line.kind, "account": account, "to": line.to,
                               "amount": format_cents(line.cents)}
        if index < len(outcomes):
            out = outcomes[index]
            row |= {"ok": bool(out.get("ok")), "result": "ok" if out.get("ok") else str(out.get("code", "rejected")),
                    "balance": out.get("balance"), "seq": out.get("seq"), "command_id": out.get("command_id")}
            if not out.get("ok"):
                row["message"] = out.get("message")
        else:
            row |= {"ok": False, "result": "unknown" if index < len(outcomes) + MAX_BATCH_COMMANDS else "not_sent"}
        rows.append(row)
    return rows


def exit_code(rows: list[dict[str, Any]]) -> Exit:
    """0 if every line was accepted, else 3; but when nothing was accepted and every line got the same refusal
    (an expired session, a conflict) the exit is that refusal's, as for a single command."""
    refused = {row["result"] for row in rows if not row["ok"]}
    if not refused:
        return Exit.OK
    if len(refused) == 1 and not any(row["ok"] for row in rows):
        return exit_for_reply_code(refused.pop())
    return Exit.REJECTED


def _human(rows: list[dict[str, Any]], summary: dict[str, int]) -> str:
    shown = [{k: ("" if v is None else v) for k, v in row.items()} for row in rows]
    tail = f"{summary['accepted']} accepted, {summary['rejected']} rejected"
    unsettled = len(rows) - summary["accepted"] - summary["rejected"]
    return table(shown, COLUMNS) + "\n" + tail + (f", {unsettled} without an outcome" if unsettled else "")


@click.command("batch")
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
@json_option
@click.pass_context
def batch_cmd(ctx: click.Context, file: IO[str], as_json: bool) -> None:
    """Send the deposits, withdrawals and transfers of a CSV FILE ('-' for stdin).

    The header is 'type,account,to,amount'; 'account' defaults to your own, 'to' is for transfers only, amounts
    look like 12.50. The whole file is checked before anything is sent. Exit 0 if every line was accepted, 3 if
    any was rejected.
    """
    lines = parse_file(file)
    bank = BankSession.from_profile(ctx.obj)
    accounts = _resolve_accounts(bank, lines)
    outcomes, failure = send(bank, lines, accounts)
    rows = report_rows(lines, accounts, outcomes)
    summary = {"accepted": sum(row["ok"] for row in rows),
               "rejected": sum(1 for row in rows[:len(outcomes)] if not row["ok"])}
    data: dict[str, Any] = {"ok": not failure and summary["rejected"] == 0, **summary, "results": rows}
    if failure is None:
        emit(as_json, data, lambda: _human(rows, summary))
        if code := exit_code(rows):
            sys.exit(int(code))
        return
    data |= {"code": failure.code, "message": failure.message}
    emit(as_json, data, lambda: _human(rows, summary))
    click.echo(f"error: {failure.message}\nthe lines marked 'unknown' may or may not have been applied and those "
               "marked 'not_sent' were not: do not send the whole file again", err=True)
    sys.exit(failure.exit_code)


def register(cli: click.Group) -> None:
    cli.add_command(batch_cmd)

