"""Operator commands: ``up [--detach]``, ``down``, ``status`` and ``worker <kind>`` (DESIGN §9).

They run on the bank's host with operator rights (the ``admin`` Redis user); banking commands never do.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import redis

from bankctl.output import BankctlError, Exit, emit, json_option, table


def _settings(ctx: click.Context) -> Any:
    return ctx.obj


def _describe(state: Any) -> str:
    lines = [f"redis: {state.redis_url}" + (f" (embedded, pid {state.redis_pid}, AOF always)" if state.redis_pid
                                            else " (external)")]
    if state.bus_url and state.bus_url != state.redis_url:
        lines.append(f"request bus: {state.bus_url}" + (f" (embedded, pid {state.bus_pid}, persists nothing)"
                                                         if state.bus_pid else " (external)"))
    for name, pid in state.workers.items():
        lines.append(f"{name}: pid {pid}, log {state.logs.get(name, '-')}")
    for name, why in state.skipped.items():
        lines.append(f"{name}: not started ({why})")
    return "\n".join(lines)


@click.command("up")
@click.option("--detach", is_flag=True, help="Run in the background; return once every worker is healthy.")
@json_option
@click.pass_context
def up_cmd(ctx: click.Context, detach: bool, as_json: bool) -> None:
    """Start the embedded Redis (unless BANKCTL_REDIS_URL is set) and every worker; Ctrl-C stops them all."""
    from bankctl.embedded_redis import RedisUnavailable
    from bankctl.supervisor import Supervisor, SupervisorError, pid_alive, read_state, start_detached

    settings = _settings(ctx)
    running = read_state(settings)
    if running is not None and pid_alive(running.supervisor_pid):
        raise BankctlError(f"the bank is already up (supervisor pid {running.supervisor_pid}); "
                           "'bankctl down' stops it", Exit.INVALID, "invalid_request")
    try:
        if detach:
            state = start_detached(settings)
            data = {"ok": True, "detached": True, "supervisor_pid": state.supervisor_pid,
                    "redis": state.redis_url, "bus": state.bus_url, "workers": state.workers,
                    "skipped": state.skipped}
            emit(as_json, data, lambda: _describe(state) + f"\nsupervisor: pid {state.supervisor_pid}; "
                 "stop with 'bankctl down'")
            return
        supervisor = Supervisor(settings, say=lambda line: click.echo(line, err=True))
        supervisor.install_signal_handlers()
        state = supervisor.start()
    except (SupervisorError, RedisUnavailable) as error:
        raise BankctlError(str(error), Exit.UNAVAILABLE, "unavailable") from error
    data = {"ok": True, "detached": False, "supervisor_pid": os.getpid(), "redis": state.redis_url,
            "bus": state.bus_url, "workers": state.workers, "skipped": state.skipped}
    emit(as_json, data, lambda: _describe(state) + "\nthe bank is up; Ctrl-C stops it")
    sys.stdout.flush()
    sys.exit(supervisor.watch())


@click.command("down")
@json_option
@click.pass_context
def down_cmd(ctx: click.Context, as_json: bool) -> None:
    """Stop every worker (they finish their batch) and the embedded Redis."""
    from bankctl.supervisor import shut_down

    result = shut_down(_settings(ctx))
    emit(as_json, result, lambda: f"{result['message']}: {', '.join(result['stopped'])}" if result["stopped"]
         else result["message"])


@click.command("status")
@json_option
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Workers alive (heartbeat), pending commands per handler, log length, last seq."""
    from bankctl.supervisor import bank_status

    settings = _settings(ctx)
    try:
        client = settings.connect("admin", socket_timeout=5)
        bus = settings.connect_bus("admin", socket_timeout=5)
        report = bank_status(settings, client, bus)
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError) as error:
        raise BankctlError(f"the bank is not reachable ({error}): try 'bankctl up'", Exit.UNAVAILABLE,
                           "unavailable") from error

    def human() -> str:
        rows = [{"worker": name, "kind": w["kind"], "pid": w["pid"], "alive": "yes" if w["alive"] else "NO",
                 "pending": report["pending"].get(name, ""), "beat": f"{w['beat_age_s']}s ago"}
                for name, w in report["workers"].items()]
        bus = f"; request bus {report['bus']}" if report["bus"] != report["redis"] else ""
        head = (f"redis {report['redis']}{bus}; log length {report['log_length']}, last seq {report['last_seq']}, "
                f"{report['commands_waiting']} commands waiting")
        sms = report["notifier"]
        tail = (f"SMS: {sms['lag']} events not yet settled by a notifier (active: {sms['active'] or 'none'}), "
                f"{sms['dead_letters']} dead letters")
        return head + "\n" + table(rows, ["worker", "kind", "pid", "alive", "pending", "beat"]) + "\n" + tail

    emit(as_json, report, human)
    if not report["workers"]:
        sys.exit(int(Exit.UNAVAILABLE))


@click.group("worker")
def worker_group() -> None:
    """Run one worker in the foreground (for process managers; 'bankctl up' runs them all)."""


def _run_worker(ctx: click.Context, kind: str, name: str | None, **options: Any) -> None:
    import importlib

    from bankctl.supervisor import WORKER_MODULES

    settings = _settings(ctx)
    if not settings.master_key_path.exists():
        raise BankctlError(f"{settings.data_dir} is not initialised: run 'bankctl init' first", Exit.INVALID)
    module = importlib.import_module(WORKER_MODULES[kind])
    code = module.main(redis_url=settings.redis_url(kind), bus_url=settings.bus_url(kind), data_dir=settings.data_dir,
                       name=name or f"{kind}-{os.getpid()}", **options)
    sys.exit(int(code))


_NAME = click.option("--name", default=None, help="Consumer and heartbeat name (default <kind>-<pid>).")


@worker_group.command("handler")
@_NAME
@click.pass_context
def worker_handler(ctx: click.Context, name: str | None) -> None:
    """Validate commands and append events (consumer group 'handlers')."""
    _run_worker(ctx, "handler", name)


@worker_group.command("projector")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), required=True, help="SQLite read model file.")
@_NAME
@click.pass_context
def worker_projector(ctx: click.Context, db_path: str, name: str | None) -> None:
    """Apply the log to one SQLite read model and serve queries from it."""
    from pathlib import Path

    _run_worker(ctx, "projector", name, db_path=Path(db_path))


@worker_group.command("notifier")
@_NAME
@click.pass_context
def worker_notifier(ctx: click.Context, name: str | None) -> None:
    """Send SMS for movements of money (Twilio, or the local outbox)."""
    _run_worker(ctx, "notifier", name)


@worker_group.command("sealer")
@_NAME
@click.pass_context
def worker_sealer(ctx: click.Context, name: str | None) -> None:
    """Append signed checkpoints of the log."""
    _run_worker(ctx, "sealer", name)


def register(cli: click.Group) -> None:
    for command in (up_cmd, down_cmd, status_cmd, worker_group):
        cli.add_command(command)
