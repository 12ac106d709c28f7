"""``bankctl audit verify [--from-file F]`` and ``bankctl audit export --out F`` (operator commands).

``verify`` exits 0 when there is no finding and 1 on any finding (5 when Redis cannot be reached). A missing
or unreadable database is a warning unless ``--require-databases`` is given.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import redis

from bankctl.output import BankctlError, Exit, emit, json_option


def _public_key(settings: Any, given: str | None) -> Any:
    from eventstore.seals import load_public_key, public_key_path

    candidates = [Path(given)] if given else [public_key_path(settings.signing_key_path), settings.signing_key_path]
    for path in candidates:
        if path.exists():
            try:
                return load_public_key(path)
            except (OSError, ValueError) as error:
                raise BankctlError(f"cannot read the public key {path}: {error}", Exit.INVALID,
                                   "invalid_request") from error
    if given:
        raise BankctlError(f"{given} does not exist", Exit.INVALID, "invalid_request")
    return None


@click.group("audit")
def audit_group() -> None:
    """Prove the log is intact and the balances consistent."""


@audit_group.command("verify")
@click.option("--from-file", "from_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Verify an export offline instead of the live log (no Redis needed).")
@click.option("--public-key", "public_key", type=click.Path(dir_okay=False), default=None,
              help="Seal verification key (default: signing.pub in the data directory).")
@click.option("--require-databases", is_flag=True, help="A missing or unreadable database is a finding.")
@click.option("--scan-keyspace", is_flag=True,
              help="Also SCAN every Redis key for account hashes above the account-id counter (slow on a big "
                   "keyspace; such a hash is otherwise found once it is used).")
@json_option
@click.pass_context
def verify_cmd(ctx: click.Context, from_file: str | None, public_key: str | None, require_databases: bool,
               scan_keyspace: bool, as_json: bool) -> None:
    """Replay the whole log: envelopes, gapless seq, seals and signatures, invariants, write side, databases."""
    from bankctl.audit import ExportError, verify_export, verify_redis

    settings = ctx.obj
    key = _public_key(settings, public_key)
    try:
        if from_file:
            report = verify_export(Path(from_file), public_key=key)
        else:
            report = verify_redis(settings.connect("admin"), settings.keys, public_key=key,
                                  databases={"database1": settings.database_path(1),
                                             "database2": settings.database_path(2)},
                                  require_databases=require_databases, scan_keyspace=scan_keyspace)
    except ExportError as error:
        raise BankctlError(str(error), Exit.INVALID, "invalid_request") from error
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError) as error:
        raise BankctlError(f"the bank is not reachable ({error})", Exit.UNAVAILABLE, "unavailable") from error
    emit(as_json, report.to_json(), report.render)
    if not report.ok:
        ctx.exit(int(Exit.UNEXPECTED))


@audit_group.command("export")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="JSONL file to write.")
@json_option
@click.pass_context
def export_cmd(ctx: click.Context, out: str, as_json: bool) -> None:
    """Write the log, the seals, the write-side states and the public key as JSONL."""
    from bankctl.audit import export_log

    settings = ctx.obj
    key = _public_key(settings, None)
    if key is None:
        raise BankctlError("no signing key in the data directory: run 'bankctl init'", Exit.INVALID,
                           "invalid_request")
    target = Path(out)
    temp = target.with_name(f".{target.name}.partial")
    try:
        with open(temp, "wb") as handle:
            counts = export_log(settings.connect("admin"), settings.keys, handle, public_key=key,
                                exported_at=datetime.now(UTC).isoformat())
        temp.replace(target)
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError) as error:
        temp.unlink(missing_ok=True)
        raise BankctlError(f"the bank is not reachable ({error})", Exit.UNAVAILABLE, "unavailable") from error
    emit(as_json, {"ok": True, "out": str(target), **counts},
         f"exported {counts['events']} events, {counts['seals']} seals and {counts['accounts']} accounts "
         f"to {target}")


def register(cli: click.Group) -> None:
    cli.add_command(audit_group)
