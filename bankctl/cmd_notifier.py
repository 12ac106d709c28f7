"""``bankctl notifier status|dead-letters``: the SMS notifier's lag and what it gave up on (operator commands)."""

from __future__ import annotations

from typing import Any

import click
import redis

from bankctl.config import Settings
from bankctl.output import BankctlError, Exit, emit, json_option, table
from notifier.status import dead_letters, notifier_status


def _connect(settings: Settings) -> redis.Redis:
    return settings.connect("admin")


def _unavailable(error: redis.RedisError) -> BankctlError:
    return BankctlError(f"Redis is unavailable: {error}", Exit.UNAVAILABLE, "unavailable")


@click.group("notifier")
def notifier_group() -> None:
    """The SMS notifier (Twilio, or <data dir>/outbox.jsonl when TWILIO_* are unset)."""


@notifier_group.command("status")
@json_option
@click.pass_obj
def status_command(settings: Settings, as_json: bool) -> None:
    """The active notifier, its checkpoint and lag (events not yet settled), and dead letters."""
    try:
        info = notifier_status(_connect(settings), settings.keys)
    except redis.RedisError as error:
        raise _unavailable(error) from error
    data: dict[str, Any] = {"ok": True, **info}

    def human() -> str:
        return (f"head seq {info['head_seq']}  checkpoint {info['checkpoint']}  lag {info['lag']}  "
                f"dead letters {info['dead_letters']}  active notifier: {info['active'] or 'none'}")

    emit(as_json, data, human)


@notifier_group.command("dead-letters")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@click.pass_obj
def dead_letters_command(settings: Settings, as_json: bool, limit: int) -> None:
    """Messages the notifier gave up on, newest first, with the Twilio error code and reason."""
    try:
        rows = dead_letters(_connect(settings), settings.keys, limit=limit)
    except redis.RedisError as error:
        raise _unavailable(error) from error
    emit(as_json, {"ok": True, "dead_letters": rows},
         lambda: table(rows, ["id", "seq", "type", "account", "code", "attempts", "reason"]))


def register(cli: click.Group) -> None:
    cli.add_command(notifier_group)
