"""The quick soak (benchmarks/soak.py --quick) as a test: 1,000 events with duplicates and
shuffled order through gunicorn, two workers, PostgreSQL, Redis and SMTP, with a worker
SIGKILLed, Redis restarted and SMTP refusing for a while; exit 0 means every event was
processed, every mismatch is right and each admin got exactly one email per mismatch.

It needs a real PostgreSQL (it creates and drops its own database, `soak_pytest`, on the
server TEST_DATABASE_URL points at) and `redis-server` (it starts its own, on a free port).
About a minute.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 170  # seconds; the soak itself gives up on the drain after 150


def _postgres_server() -> str | None:
    """`postgresql://user[:pass]@host:port` of TEST_DATABASE_URL, or None if it is not
    PostgreSQL."""
    url = os.environ.get("TEST_DATABASE_URL", "")
    parts = urlsplit(url)
    if not parts.scheme.startswith(("postgresql", "postgres")) or not parts.hostname:
        return None
    return f"postgresql://{parts.netloc}"


pytestmark = [
    pytest.mark.skipif(_postgres_server() is None,
                       reason="the soak needs PostgreSQL: set TEST_DATABASE_URL=postgresql://…"),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="the soak starts its own redis-server, which is not installed"),
]


def test_quick_soak_passes() -> None:
    server = _postgres_server()
    assert server is not None
    cmd = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--quick",
           "--postgres", server, "--db-name", "soak_pytest",
           "--run-dir", str(ROOT / "instance" / "soak-pytest")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the soak stops everything it started
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        pytest.fail(f"soak did not finish within {TIMEOUT} s:\n{output[-6000:]}")
    assert proc.returncode == 0, f"soak exited {proc.returncode}:\n{output[-6000:]}"
    assert "RESULT         PASS" in output
