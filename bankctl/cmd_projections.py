"""``bankctl projections status|rebuild --db FILE|diff`` (operator commands, run on the bank's host).

``diff`` exits 1 when the databases differ (like ``diff(1)``), 5 when Redis or a database is unavailable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import redis

from bankctl.output import BankctlError, Exit, emit, json_option, table
from eventstore.keys import Keys
from eventstore.log import head, oldest_unapplied_age_s


def _admin_client(settings: Any) -> redis.Redis:
    return settings.connect("admin")


def _vault(settings: Any, client: redis.Redis) -> Any:
    from eventstore.pii import PersonalDataVault, load_master_key

    try:
        master_key = load_master_key(settings.master_key_path)
    except (OSError, ValueError) as error:
        raise BankctlError(f"cannot read the master key: {error}", Exit.INVALID, "invalid_request") from error
    return PersonalDataVault(client, keys=settings.keys, master_key=master_key)


def database_status(client: redis.Redis, keys: Keys, name: str, path: Path, head_seq: int) -> dict[str, Any]:
    """A database's checkpoint and how far it is behind the log: in events, and as the age of the oldest event
    it has not applied yet."""
    from projections.schema import DatabaseUnusable, open_readonly, read_checkpoint

    out: dict[str, Any] = {"name": name, "path": str(path), "exists": path.exists()}
    try:
        conn = open_readonly(path)
        try:
            checkpoint = read_checkpoint(conn)
            row = conn.execute("SELECT value FROM meta WHERE key = 'checkpoint_at'").fetchone()
        finally:
            conn.close()
    except DatabaseUnusable as error:
        out.update(checkpoint=None, lag_events=None, lag_seconds=None, error=str(error))
        return out
    checkpoint_at = row[0] if row else None
    lag_seconds = (oldest_unapplied_age_s(client, keys, checkpoint, now=datetime.now(UTC))
                   if checkpoint < head_seq else 0.0)
    out.update(checkpoint=checkpoint, checkpoint_at=checkpoint_at, lag_events=head_seq - checkpoint,
               lag_seconds=None if lag_seconds is None else round(lag_seconds, 3))
    return out


@click.group("projections")
def projections_group() -> None:
    """The SQLite read models: status, rebuild, diff."""


@projections_group.command("status")
@json_option
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Each database's checkpoint, the log head, and the lag in events and seconds."""
    settings = ctx.obj
    try:
        client = _admin_client(settings)
        head_seq, head_at = head(client, settings.keys)
        databases = [database_status(client, settings.keys, f"database{n}", settings.database_path(n), head_seq)
                     for n in (1, 2)]
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError) as error:
        raise BankctlError(f"the bank is not reachable ({error})", Exit.UNAVAILABLE, "unavailable") from error
    report = {"ok": True, "head_seq": head_seq, "head_at": head_at, "databases": databases}
    emit(as_json, report, lambda: f"log head: seq {head_seq}\n"
         + table(databases, ("name", "checkpoint", "lag_events", "lag_seconds", "path")))


def _resolve(settings: Any, db: str) -> Path:
    from projections.projector import resolve_db_path

    return resolve_db_path(settings.data_dir, db)


@projections_group.command("rebuild")
@click.option("--db", "db", required=True, help="Database file (a bare name is taken in the data directory).")
@json_option
@click.pass_context
def rebuild_cmd(ctx: click.Context, db: str, as_json: bool) -> None:
    """Rebuild a database from seq 1 into a temp file and swap it in atomically (safe while running)."""
    from projections.rebuild import rebuild

    settings = ctx.obj
    target = _resolve(settings, db)
    try:
        client = _admin_client(settings)
        result = rebuild(client, settings.keys, _vault(settings, client), target)
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError) as error:
        raise BankctlError(f"the bank is not reachable ({error})", Exit.UNAVAILABLE, "unavailable") from error
    report = {"ok": True, "db": str(result.path), "checkpoint": result.checkpoint, "events": result.events,
              "seconds": round(result.seconds, 3), "events_per_s": round(result.events_per_s),
              "swapped": result.swapped}
    emit(as_json, report, lambda: f"rebuilt {result.path} to seq {result.checkpoint}: {result.events} events in "
                                  f"{result.seconds:.2f}s ({result.events_per_s:,.0f}/s), swapped by {result.swapped}")


@projections_group.command("diff")
@json_option
@click.pass_context
def diff_cmd(ctx: click.Context, as_json: bool) -> None:
    """Checksums of both databases at the same seq, and the first differing row (exit 1 if they differ)."""
    from projections.compare import diff_databases
    from projections.schema import DatabaseUnusable

    settings = ctx.obj
    try:
        client = _admin_client(settings)
        report = diff_databases(settings.database_path(1), settings.database_path(2), client=client,
                                keys=settings.keys, pii=_vault(settings, client))
    except DatabaseUnusable as error:
        raise BankctlError(str(error), Exit.UNAVAILABLE, "unavailable") from error
    except ValueError as error:
        raise BankctlError(str(error), Exit.UNEXPECTED, "error") from error
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError) as error:
        raise BankctlError(f"the bank is not reachable ({error})", Exit.UNAVAILABLE, "unavailable") from error

    def human() -> str:
        rows = [{"table": t, "database1": report.a["tables"][t]["sha256"][:16],
                 "database2": report.b["tables"][t]["sha256"][:16], "rows1": report.a["tables"][t]["rows"],
                 "rows2": report.b["tables"][t]["rows"]} for t in report.a["tables"]]
        lines = [f"compared at seq {report.seq}", table(rows, ("table", "database1", "database2", "rows1", "rows2"))]
        for difference in report.differences:
            lines.append(f"first difference in {difference['table']} at key {difference['key']}:\n"
                         f"  database1: {difference['a']}\n  database2: {difference['b']}")
        lines.append("identical" if report.equal else "DIFFERENT")
        return "\n".join(lines)

    emit(as_json, report.to_json(), human)
    if not report.equal:
        ctx.exit(int(Exit.UNEXPECTED))


def register(cli: click.Group) -> None:
    cli.add_command(projections_group)
