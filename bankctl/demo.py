"""``make demo``: the whole bank up on this machine and a real scenario through the real CLI.

Every step runs ``bankctl`` as a user would (a fresh data directory, its own config directory for saved
sessions), prints what it does, and the demo exits non-zero at the first step that fails. The burst of
transfers during which a handler is SIGKILLed goes through the same request/reply client bankctl uses,
in-process, because starting 2,000 Python processes would measure process start-up instead of the bank.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BURST = 2000


class DemoFailed(RuntimeError):
    pass


class Demo:
    def __init__(self, data_dir: Path, config_home: Path) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, "BANKCTL_DATA_DIR": str(data_dir), "XDG_CONFIG_HOME": str(config_home),
                    "BANKCTL_LOG_LEVEL": "WARNING"}
        self.env.pop("BANKCTL_REDIS_URL", None)
        self.step_no = 0
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"\n\033[1m== {text}\033[0m", flush=True)

    def step(self, title: str) -> None:
        self.step_no += 1
        self.say(f"[{self.step_no}] {title}  (t={time.monotonic() - self.started:.1f}s)")

    def bankctl(self, *args: str, stdin: str | None = None, profile: str = "default", show: bool = True,
                expect: int = 0) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "BANKCTL_PROFILE": profile}
        printable = " ".join(args)
        if show:
            print(f"$ bankctl {printable}" + (f"   (profile {profile})" if profile != "default" else ""), flush=True)
        result = subprocess.run([sys.executable, "-m", "bankctl.cli", *args], input=stdin, text=True,
                                capture_output=True, env=env, timeout=180)
        if show and result.stdout.strip():
            print(result.stdout.rstrip(), flush=True)
        if result.returncode != expect:
            raise DemoFailed(f"'bankctl {printable}' exited {result.returncode} (expected {expect}):\n"
                             f"{result.stderr.strip()}")
        if show and result.stderr.strip() and expect != 0:
            print(result.stderr.rstrip(), flush=True)
        return result

    def bankctl_json(self, *args: str, **kwargs: Any) -> dict[str, Any]:
        result = self.bankctl(*args, "--json", show=False, **kwargs)
        data = json.loads(result.stdout)
        print(f"$ bankctl {' '.join(args)} --json\n{json.dumps(data)}", flush=True)
        return data


def burst_with_handler_kill(demo: Demo, source: int, target: int, profile: str) -> dict[str, Any]:
    """2,000 transfers in flight while handler-1 is SIGKILLed; every one must complete exactly once."""
    from bankctl.config import Settings
    from bankctl.profile import load_session
    from commands.client import BankClient, Request

    os.environ["XDG_CONFIG_HOME"] = demo.env["XDG_CONFIG_HOME"]
    settings = Settings.from_env(data_dir=str(demo.data_dir), profile=profile)
    session = load_session(profile)
    assert session is not None, "the customer's session was not saved"
    client = settings.connect_bus("client", socket_timeout=30)
    bank = BankClient(client, keys=settings.keys, timeout_s=20)
    admin = settings.connect_bus("admin")  # heartbeats, replies and the handlers' pending entries
    pid = int(admin.hget(settings.keys.worker("handler-1"), "pid") or 0)
    if not pid:
        raise DemoFailed("handler-1 is not running")
    requests = [Request("Transfer", {"type": "Transfer", "account": source, "to": target, "amount": 1},
                        session=session.token) for _ in range(BURST)]
    began = time.monotonic()
    request_ids = bank.submit_many(settings.keys.commands, requests)
    # Kill handler-1 as soon as the first replies arrive, while it holds a batch it has not acknowledged.
    while not admin.exists(settings.keys.reply(request_ids[0])):
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    held = admin.xpending_range(settings.keys.commands, "handlers", min="-", max="+", count=BURST,
                                consumername="handler-1")
    print(f"   handler-1 (pid {pid}) killed with SIGKILL holding {len(held)} unacknowledged commands", flush=True)
    outcomes: dict[str, dict[str, Any]] = {}
    for start in range(0, BURST, 100):
        chunk_ids = request_ids[start:start + 100]
        chunk = requests[start:start + 100]
        for request, reply in zip(chunk, bank.wait_many(chunk_ids, timeout_s=10), strict=True):
            while reply is None:  # a resend with the same command_id is safe: the first outcome comes back
                reply = bank.command(request)
            outcomes[request.command_id] = reply
        print(f"\r   {len(outcomes)}/{BURST} transfers settled", end="", flush=True)
    print()
    accepted = sum(1 for r in outcomes.values() if r.get("ok"))
    from eventstore.log import iterate

    in_log: dict[str, int] = {}
    for stored in iterate(settings.connect("admin"), settings.keys):
        command_id = stored.payload()["command_id"]
        if command_id in outcomes:
            in_log[command_id] = in_log.get(command_id, 0) + 1
    if len(in_log) != accepted or any(n != 1 for n in in_log.values()):
        raise DemoFailed(f"{accepted} transfers accepted but the log holds {sum(in_log.values())} of them")
    return {"settled": len(outcomes), "accepted": accepted, "seconds": time.monotonic() - began, "killed_pid": pid,
            "held": len(held)}


def run(demo: Demo) -> None:
    admin_password = secrets.token_urlsafe(12)
    alice_password, bob_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)

    demo.step("Initialise a new bank: keys (mode 0600), admin account 0 with a generated password")
    demo.bankctl("init", "--admin-password-stdin", stdin=admin_password + "\n")
    print(f"   admin password (shown once): {admin_password}")

    demo.step("Start everything: embedded Redis (AOF always), 2 handlers, 2 projectors, notifier, sealer")
    demo.bankctl("up", "--detach")
    demo.bankctl("status")

    demo.step("The admin logs in with a zero-knowledge proof (the password never leaves bankctl)")
    demo.bankctl("login", "--account", "0", "--password-stdin", stdin=admin_password + "\n", profile="admin")
    demo.bankctl("whoami", profile="admin")

    demo.step("The admin opens two customer accounts with SMS alerts on")
    alice = demo.bankctl_json("account", "open", "--ssn", "123-45-6789", "--phone", "+15551230001",
                              "--first-name", "Alice", "--last-name", "Archer", "--sms", "--password-stdin",
                              stdin=alice_password + "\n", profile="admin")["account"]
    bob = demo.bankctl_json("account", "open", "--ssn", "234-56-7890", "--phone", "+15551230002",
                            "--first-name", "Bob", "--last-name", "Baker", "--sms", "--password-stdin",
                            stdin=bob_password + "\n", profile="admin")["account"]
    demo.bankctl("account", "list", profile="admin")

    demo.step("The customers log in and move money")
    demo.bankctl("login", "--account", str(alice), "--password-stdin", stdin=alice_password + "\n", profile="alice")
    demo.bankctl("login", "--account", str(bob), "--password-stdin", stdin=bob_password + "\n", profile="bob")
    demo.bankctl("deposit", "1000.00", profile="alice")
    demo.bankctl("withdraw", "120.50", profile="alice")
    demo.bankctl("transfer", str(bob), "250.00", profile="alice")
    demo.bankctl("deposit", "75.25", profile="bob")

    demo.step("Bob pays bills from a file: one batch request, every line decided on its own (one is refused)")
    bills = f"type,account,to,amount\ntransfer,,{alice},20.00\nwithdraw,,,15.00\nwithdraw,,,99999.00\n"
    print("   " + bills.strip().replace("\n", "\n   "))
    demo.bankctl("batch", "-", stdin=bills, profile="bob", expect=3)

    demo.step("Bad input and the bank's rules: refused with clear messages, nothing recorded")
    demo.bankctl("deposit", "-5", profile="alice", expect=2)
    demo.bankctl("withdraw", "1e3", profile="alice", expect=2)
    demo.bankctl("withdraw", "99999.00", profile="alice", expect=3)
    demo.bankctl("transfer", str(alice), "1.00", profile="alice", expect=3)
    demo.bankctl("balance", "--account", str(bob), profile="alice", expect=4)

    demo.step("Balances and history")
    demo.bankctl("balance", profile="alice")
    demo.bankctl("history", profile="alice")
    demo.bankctl("history", profile="bob")

    demo.step("SMS alerts (no Twilio account configured, so they go to the local outbox)")
    outbox = demo.data_dir / "outbox.jsonl"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not outbox.exists() or len(outbox.read_text().splitlines()) < 5):
        time.sleep(0.2)
    for line in outbox.read_text().splitlines()[-6:]:
        message = json.loads(line)
        print(f"   to {message.get('to')}: {message.get('body')}")

    demo.step(f"A burst of {BURST} transfers; handler-1 is killed with SIGKILL in the middle of it")
    result = burst_with_handler_kill(demo, alice, bob, "alice")
    print(f"   {result['settled']} settled ({result['accepted']} accepted) in {result['seconds']:.1f}s; "
          f"the {result['held']} commands handler-1 held were finished by the others; "
          f"the log holds each accepted transfer exactly once")
    if result["settled"] != BURST:
        raise DemoFailed("not every transfer got an outcome")
    demo.bankctl("balance", profile="alice")
    demo.bankctl("status")

    demo.step("Rebuild database2.db from the log while the bank runs, then compare both read models")
    demo.bankctl("projections", "rebuild", "--db", str(demo.data_dir / "database2.db"))
    demo.bankctl("projections", "diff")

    demo.step("The auditor replays the whole log: integrity, signatures, invariants, both databases")
    demo.bankctl("audit", "verify")

    demo.step("Shut everything down cleanly")
    demo.bankctl("down")


def main() -> int:
    base = ROOT / "var" / "demo"
    if base.exists():
        subprocess.run([sys.executable, "-m", "bankctl.cli", "--data-dir", str(base / "data"), "down"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base)
    base.mkdir(parents=True)
    config_home = Path(tempfile.mkdtemp(prefix="bankctl-demo-config-"))
    demo = Demo(base / "data", config_home)
    try:
        run(demo)
    except (DemoFailed, AssertionError, subprocess.TimeoutExpired) as error:
        print(f"\nDEMO FAILED: {error}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "bankctl.cli", "down"], env=demo.env, capture_output=True, timeout=60)
        return 1
    finally:
        shutil.rmtree(config_home, ignore_errors=True)
    print(f"\nDemo finished in {time.monotonic() - demo.started:.1f}s: every step passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
