"""``bankctl up [--detach]``, ``status``, ``down``: the local supervisor with the embedded redis-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from bankctl.supervisor import pid_alive
from tests.helpers_bank import ROOT

pytestmark = [pytest.mark.redis_server, pytest.mark.slow]


@pytest.fixture
def bankctl(tmp_path):
    env = {**os.environ, "BANKCTL_DATA_DIR": str(tmp_path / "var"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "BANKCTL_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    env.pop("BANKCTL_REDIS_URL", None)

    def run(*args, stdin=None, timeout=120):
        return subprocess.run([sys.executable, "-m", "bankctl.cli", *args], input=stdin, capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=timeout)

    init = run("init", "--admin-password-stdin", stdin="correct horse battery staple\n")
    assert init.returncode == 0, init.stderr
    run.env = env
    yield run
    run("down")


def test_up_detached_status_and_down(bankctl):
    up = bankctl("up", "--detach", "--json")
    assert up.returncode == 0, up.stderr
    started = orjson.loads(up.stdout)
    assert {"handler-1", "handler-2"} <= set(started["workers"])
    pids = [started["supervisor_pid"], *started["workers"].values()]
    status = bankctl("status", "--json")
    assert status.returncode == 0, status.stderr
    report = orjson.loads(status.stdout)
    assert report["workers"]["handler-1"]["alive"] and report["workers"]["handler-2"]["alive"]
    assert report["last_seq"] >= 1 and report["log_length"] == report["last_seq"]
    assert set(report["pending"]) >= {"handler-1", "handler-2"}
    assert "password" not in status.stdout
    _assert_followers_yield_to_the_command_path(started["supervisor_pid"], started["workers"])
    again = bankctl("up", "--detach")
    assert again.returncode != 0 and "already up" in again.stderr
    down = bankctl("down", "--json")
    assert down.returncode == 0 and "supervisor" in orjson.loads(down.stdout)["stopped"]
    assert not any(pid_alive(pid) for pid in pids)
    assert bankctl("status").returncode == 5


def _thread_niceness(pid: int) -> dict[int, int]:
    """Niceness of every thread of ``pid`` by thread id (field 19 of /proc/<pid>/task/<tid>/stat)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat") as stat:
            out[int(tid)] = int(stat.read().rsplit(")", 1)[1].split()[16])
    return out


def _assert_followers_yield_to_the_command_path(supervisor: int, workers: dict[str, int]) -> None:
    """The projectors apply the log 10 nicer than the handlers and a projector's query thread, the notifier and
    the sealer 19 nicer, and all share the supervisor's session: the kernel ranks threads by niceness only inside
    one session (autogroup)."""
    assert {os.getsid(pid) for pid in workers.values()} == {os.getsid(supervisor)}
    normal = _thread_niceness(supervisor)[supervisor]  # what the workers start with (a niced CI runner: not 0)
    for name, pid in workers.items():
        niceness = _thread_niceness(pid)
        main_thread = niceness.pop(pid)
        nicer = 0 if name.startswith("handler") else 10 if name.startswith("projector") else 19
        assert main_thread == min(19, normal + nicer), name
        if name.startswith("projector"):
            assert normal in niceness.values(), f"{name}: the query thread must keep the normal priority"


def test_up_in_the_foreground_stops_everything_on_ctrl_c(bankctl, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "bankctl.cli", "up", "--json"], env=bankctl.env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = process.stdout.readline()  # printed once every worker reported a heartbeat
        started = orjson.loads(line)
        assert started["ok"] and not started["detached"]
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid_alive(p) for p in started["workers"].values()):
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in started["workers"].values())
    assert not (tmp_path / "var" / "run" / "state.json").exists()
    assert not (tmp_path / "var" / "redis" / "redis.sock").exists()
