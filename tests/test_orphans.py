"""Nothing left running: a `kill -9`ed worker's children (RQ's scheduler, the sweeper) exit
with it, and a one-off command in a fresh folder stops the embedded Redis it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers.embedded_redis import (
    embedded_redis_running,
    ensure_embedded_redis,
    stop_embedded_redis,
)

BIN = Path(sys.executable).parent
MISMATCH = str(BIN / "mismatch")


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def redis_servers_under(folder: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "redis-server" in cmdline and str(folder) in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_a_killed_workers_scheduler_and_sweeper_exit_with_it(env, db, redis):
    worker = subprocess.Popen([MISMATCH, "worker", "--sweep-every", "2"],
                              env=dict(os.environ), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while len(children(worker.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # the sweeper at once, RQ's scheduler when work() starts
        kids = children(worker.pid)
        assert len(kids) >= 2, "the worker never started its scheduler and sweeper"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in kids if alive(pid)], "children outlived the worker"
    finally:
        if worker.poll() is None:
            worker.kill()
        for pid in children(worker.pid):
            os.kill(pid, signal.SIGKILL)


def fresh_env(folder: Path) -> dict[str, str]:
    """A new user's shell in a fresh folder: no DATABASE_URL, no REDIS_URL."""
    return {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(folder)}


def run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MISMATCH, *args], cwd=folder, env=fresh_env(folder),
                          capture_output=True, text=True, timeout=120)


def test_one_off_commands_leave_no_embedded_redis_running(tmp_path):
    (tmp_path / "venues.csv").write_text("account_id,name,admin_emails,livemode\n"
                                         "acct_1Fresh,Fresh Gym,o@fresh.test,false\n")
    (tmp_path / "members.csv").write_text("account_id,member_ref,email,name,"
                                          "stripe_customer_id\n"
                                          "acct_1Fresh,m1,ann@example.com,Ann,\n")
    for args in (["db", "upgrade"], ["venues", "import", "venues.csv"],
                 ["members", "import", "members.csv"], ["sweep", "--all"]):
        result = run(tmp_path, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert redis_servers_under(tmp_path) == [], f"{args} left the embedded Redis running"
    assert (tmp_path / "instance" / "redis.log").exists()  # members import did start one


def test_an_embedded_redis_running_before_a_command_is_left_running(tmp_path):
    assert run(tmp_path, "db", "upgrade").returncode == 0
    instance = tmp_path / "instance"
    ensure_embedded_redis(instance)  # as `mismatch serve` would have
    try:
        assert run(tmp_path, "sweep", "--all").returncode == 0
        assert embedded_redis_running(instance)
    finally:
        stop_embedded_redis(instance)
    assert redis_servers_under(tmp_path) == []
