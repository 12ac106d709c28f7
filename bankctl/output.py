"""Output and exit codes shared by every bankctl command (DESIGN §9).

Data goes to stdout (one JSON object with ``--json``, a table or a line otherwise); diagnostics to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from enum import IntEnum
from functools import wraps
from typing import Any, TypeVar

import click
import orjson
from tabulate import tabulate


class Exit(IntEnum):
    OK = 0
    UNEXPECTED = 1
    INVALID = 2
    REJECTED = 3
    DENIED = 4
    UNAVAILABLE = 5


INVALID_CODES = frozenset({"invalid_request", "malformed_request"})
DENIED_CODES = frozenset({"not_permitted", "unauthenticated", "invalid_proof", "locked"})
# A command that kept colliding with concurrent writers is safe to resend: "try again", like a timeout.
UNAVAILABLE_CODES = frozenset({"unavailable", "timeout", "conflict"})
UNEXPECTED_CODES = frozenset({"internal_error"})


class BankctlError(click.ClickException):
    """A failure with a person-readable message and one of the documented exit codes."""

    def __init__(self, message: str, exit_code: Exit = Exit.UNEXPECTED, code: str = "error") -> None:
        super().__init__(message)
        self.exit_code = int(exit_code)
        self.code = code


def exit_for_reply_code(code: str) -> Exit:
    if code in INVALID_CODES:
        return Exit.INVALID
    if code in DENIED_CODES:
        return Exit.DENIED
    if code in UNAVAILABLE_CODES:
        return Exit.UNAVAILABLE
    if code in UNEXPECTED_CODES:
        return Exit.UNEXPECTED
    return Exit.REJECTED


def raise_for_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """Return an ``ok`` reply; turn a refusal into :class:`BankctlError` with the right exit code."""
    if reply.get("ok"):
        return reply
    code = str(reply.get("code", "rejected"))
    raise BankctlError(str(reply.get("message", code)), exit_for_reply_code(code), code)


def emit(as_json: bool, data: dict[str, Any], human: str | Callable[[], str]) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
    else:
        click.echo(human() if callable(human) else human)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A readable table; numbers keep their formatting ("10.00" stays "10.00")."""
    if not rows:
        return "(none)"
    return tabulate([[row.get(c, "") for c in columns] for row in rows], headers=list(columns),
                    disable_numparse=True)


F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    """Adds ``--json`` and prints errors as one JSON object on stdout when it is set."""

    @click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object on stdout.")
    @wraps(func)
    def wrapper(*args: Any, as_json: bool = False, **kwargs: Any) -> Any:
        try:
            return func(*args, as_json=as_json, **kwargs)
        except BankctlError as error:
            if as_json:
                sys.stdout.write(orjson.dumps({"ok": False, "code": error.code, "message": error.message}).decode()
                                 + "\n")
            click.echo(f"error: {error.message}", err=True)
            sys.exit(error.exit_code)

    return wrapper  # type: ignore[return-value]
