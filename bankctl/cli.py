"""bankctl: the one command-line tool of Fintech Fortress (DESIGN §9).

Each group of commands lives in its own module and registers itself here.
"""

from __future__ import annotations

import importlib

import click

COMMAND_MODULES = (
    "bankctl.cmd_auth",
    "bankctl.cmd_ops",
    "bankctl.cmd_bank",
    "bankctl.cmd_batch",
    "bankctl.cmd_query",
    "bankctl.cmd_projections",
    "bankctl.cmd_audit",
    "bankctl.cmd_notifier",
    "bankctl.cmd_bench",
    "bankctl.cmd_shell",
    "bankctl.cmd_chaos",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="fintech-fortress")
@click.option("--data-dir", envvar="BANKCTL_DATA_DIR", default="./var", show_default=True,
              help="Where keys, databases, the outbox and the embedded Redis live [env BANKCTL_DATA_DIR].")
@click.option("--redis-url", envvar="BANKCTL_REDIS_URL", default=None,
              help="Use this Redis instead of the embedded one [env BANKCTL_REDIS_URL].")
@click.option("--bus-url", envvar="BANKCTL_BUS_URL", default=None,
              help="Redis for requests, replies and heartbeats (persists nothing) [env BANKCTL_BUS_URL; default: "
                   "the embedded bus, or --redis-url when that is set].")
@click.option("--profile", envvar="BANKCTL_PROFILE", default="default", show_default=True,
              help="Which saved session to use [env BANKCTL_PROFILE].")
@click.pass_context
def cli(ctx: click.Context, data_dir: str, redis_url: str | None, bus_url: str | None, profile: str) -> None:
    """Fintech Fortress core banking.

    Exit codes: 0 success, 1 unexpected error, 2 invalid input, 3 rejected by the bank's rules,
    4 authentication or permission failure, 5 system unavailable or timed out.
    """
    from bankctl.config import Settings

    ctx.obj = Settings.from_env(data_dir=data_dir, redis_url=redis_url, profile=profile, bus_url=bus_url)


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(cli)


def main() -> None:
    cli(prog_name="bankctl")


if __name__ == "__main__":
    main()
