"""``bankctl chaos``: seeded fault runs against a throw-away bank; exits non-zero on any finding.

Each run prints its seed; ``bankctl chaos --seed N --runs 1`` replays the same fault schedule.
"""

from __future__ import annotations

import secrets
import sys
from typing import TYPE_CHECKING

import click

from bankctl.output import emit, json_option

if TYPE_CHECKING:
    from bankctl.chaos import RunReport


def seeds_for(seed: int | None, runs: int) -> list[int]:
    """Consecutive seeds from ``seed`` (random when not given), so every run of a batch can be replayed alone."""
    first = seed if seed is not None else secrets.randbelow(1_000_000)
    return [first + i for i in range(runs)]


def render(reports: list[RunReport], profile: str) -> str:
    lines = []
    for report in reports:
        stats = report.stats
        lines.append(f"seed {report.seed}: {'OK' if report.ok else 'FAILED'} in {report.seconds:.1f}s; "
                     f"{stats.get('commands', 0)} commands ({stats.get('accepted', 0)} accepted), "
                     f"queries {stats.get('queries', {})}, {stats.get('events', 0)} events, "
                     f"{stats.get('sms', 0)} SMS, {stats.get('resends', 0)} resends, "
                     f"{len(report.actions)} fault steps, {stats.get('aof_repairs', 0)} AOF repairs")
        lines += [f"  [{finding.check}] {finding.message}" for finding in report.findings]
        if report.kept_dir:
            lines.append(f"  kept: {report.kept_dir}")
    failed = [r.seed for r in reports if not r.ok]
    if failed:
        lines.append("failing seeds: " + " ".join(map(str, failed))
                     + f"  (replay one: bankctl chaos --profile {profile} --runs 1 --seed N)")
    return "\n".join(lines)


def register(cli: click.Group) -> None:
    @cli.command("chaos")
    @click.option("--profile", "profile_name", type=click.Choice(["short", "long"]), default="short",
                  show_default=True, help="short: one run of about a minute; long: several runs of minutes.")
    @click.option("--seed", type=int, default=None, help="Seed of the first run (default: random).")
    @click.option("--runs", type=click.IntRange(1, 1000), default=None, help="Number of runs (default: profile's).")
    @click.option("--keep", is_flag=True, help="Keep the directory of a failing run (logs, AOF, databases).")
    @json_option
    def chaos_command(profile_name: str, seed: int | None, runs: int | None, keep: bool, as_json: bool) -> None:
        """Kill and restart handlers, projectors, the notifier, the sealer, Redis and the request bus under load;
        check invariants."""
        from bankctl.chaos import PROFILES, run_profile

        profile = PROFILES[profile_name]
        seeds = seeds_for(seed, runs or profile.runs)

        def say(text: str) -> None:
            click.echo(text, err=True)

        reports = run_profile(profile, seeds=seeds, say=say, keep_on_failure=keep)
        failed = [r for r in reports if not r.ok]
        data = {"ok": not failed, "profile": profile.name, "runs": [r.to_json() for r in reports],
                "failing_seeds": [r.seed for r in failed]}
        emit(as_json, data, lambda: render(reports, profile.name))
        if failed:
            sys.exit(1)


def main() -> None:
    """``python -m bankctl.cmd_chaos`` works even where the command is not registered in the CLI."""
    group = click.Group("bankctl")
    register(group)
    group(["chaos", *sys.argv[1:]], prog_name="bankctl")


if __name__ == "__main__":
    main()
