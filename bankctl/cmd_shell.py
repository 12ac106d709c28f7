"""``bankctl shell``: interactive menus over the same requests as the commands (see :mod:`bankctl.shell`)."""

from __future__ import annotations

import sys

import click


@click.command("shell")
@click.pass_context
def shell_cmd(ctx: click.Context) -> None:
    """Interactive menus: log in, then bank by number. The session lives only as long as the shell.

    An empty answer, Ctrl-C or Ctrl-D goes back one level; at the login menu it leaves the shell.
    """
    from bankctl.shell import run

    sys.exit(run(ctx.obj))


def register(cli: click.Group) -> None:
    cli.add_command(shell_cmd)
