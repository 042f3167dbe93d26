"""A long import never stops intake: while `mismatch members import` writes 20,000 rows (and
then changes every one of them), Stripe's deliveries to the web tier keep getting 200. On
SQLite the whole database has one write lock; a 20k-row import once held it for 31.6 s, and
deliveries waiting on it got 503 after 10 s. The file still lands whole or not at all."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from db import Member
from tests.support import API_TOKEN, GYM
from tests.web_server import deliver, procfile_web

ROWS = 20_000
MISMATCH = Path(sys.executable).parent / "mismatch"


def _write_csv(path: Path, *, suffix: str) -> None:
    with path.open("w") as fh:
        fh.write("account_id,member_ref,email,name,stripe_customer_id\n")
        for n in range(ROWS):
            fh.write(f"{GYM},m{n:06d},member{n}{suffix}@example.com,Member {n},cus_{n:010d}\n")


def _import_while_delivering(port: int, env: dict[str, str], path: Path, start: int
                             ) -> tuple[subprocess.CompletedProcess, list[tuple[int, float]]]:
    out, err = path.with_suffix(".out"), path.with_suffix(".err")
    with out.open("w") as stdout, err.open("w") as stderr:  # 20k report lines: not a pipe
        proc = subprocess.Popen([str(MISMATCH), "members", "import", str(path)],
                                env={**os.environ, **env}, stdout=stdout, stderr=stderr)
        results = []
        n = start
        while proc.poll() is None:
            results.append(deliver(port, n, timeout=30))
            n += 1
            time.sleep(0.05)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(),
                                       err.read_text()), results


def test_deliveries_get_200_during_a_20k_row_import(env, db, redis, tmp_path):
    import requests

    with procfile_web(env) as port:
        response = requests.put(f"http://127.0.0.1:{port}/api/venues/{GYM}", timeout=10,
                                headers={"Authorization": f"Bearer {API_TOKEN}"},
                                json={"name": "Gym", "admin_emails": [], "livemode": False})
        assert response.status_code == 201
        path = tmp_path / "members.csv"
        _write_csv(path, suffix="")
        created, first = _import_while_delivering(port, env, path, 0)
        _write_csv(path, suffix=".new")  # every row changes its email
        changed, second = _import_while_delivering(port, env, path, len(first))

    assert created.returncode == 0, created.stderr
    assert f"imported {ROWS} members: {ROWS} new" in created.stdout
    assert changed.returncode == 0, changed.stderr
    assert f"imported {ROWS} members: 0 new, {ROWS} changed" in changed.stdout
    statuses = [status for status, _ in first + second]
    slowest = max(seconds for _, seconds in first + second)
    print(f"{len(statuses)} deliveries during the imports, slowest {slowest:.3f}s")
    assert len(first) >= 2 and len(second) >= 2  # the imports took long enough to overlap
    assert statuses == [200] * len(statuses), {s: statuses.count(s) for s in set(statuses)}
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Member)) == ROWS
        assert s.scalar(select(func.count()).select_from(Member).where(
            Member.email.like("%.new@example.com"))) == ROWS
