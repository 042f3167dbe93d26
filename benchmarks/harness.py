"""What every benchmark here shares: a database made for it, the machine's processes and CPU
from /proc, one keep-alive HTTP client for signed deliveries, and min / median / max over
repeated runs. Benchmarks import it as `from benchmarks.harness import …` (ROOT on sys.path).
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # standins/ (payload builders) is not an installed package


# --- databases ----------------------------------------------------------------------------------

def prepare_database(url: str, *, fresh: bool, guard: str = "bench") -> str:
    """A migrated database at `url` (postgresql://… or sqlite:///…); returns its SQLAlchemy
    URL. `fresh` drops and recreates it first, which only a database whose name starts with
    `guard` may be (a mistyped URL must never empty real data); otherwise it is created when
    missing."""
    from config import load_config
    from db import upgrade

    sa_url = load_config({"DATABASE_URL": url, "SECRET_KEY": "bench",
                          "INSTANCE_PATH": str(ROOT / "instance")}).database_url
    if sa_url.startswith("sqlite"):
        path = Path(sa_url.split("///", 1)[1])
        if fresh:
            if not path.name.startswith(guard):
                raise SystemExit(f"refusing to delete {path}: its name must start with {guard!r}")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        upgrade(sa_url)
        return sa_url
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if fresh and not name.startswith(guard):
        raise SystemExit(f"refusing to drop database {name!r}: its name must start with "
                         f"{guard!r}")
    admin = parts._replace(scheme="postgresql", path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(sa_url)
    return sa_url


# --- servers the benchmarks start ---------------------------------------------------------------

def die_with_parent() -> None:
    """Popen's preexec_fn: the server gets SIGTERM if the benchmark dies (Linux), so a killed
    run leaves no gunicorn behind."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def tail(path: Path, lines: int = 30) -> str:
    """The end of a server's log, for the message when it would not start."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- processes and CPU, from /proc ---------------------------------------------------------------

@dataclass(frozen=True)
class ProcInfo:
    comm: str
    ppid: int
    pgid: int
    cpu: float  # user + system seconds so far


def processes() -> dict[int, ProcInfo]:
    """Every process on the machine, from /proc/<pid>/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, ProcInfo] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        close = stat.rfind(")")
        fields = stat[close + 2:].split()
        found[int(entry)] = ProcInfo(stat[stat.find("(") + 1:close], int(fields[1]),
                                     int(fields[2]), (int(fields[11]) + int(fields[12])) / tick)
    return found


def machine_cpu() -> tuple[float, float]:
    """The machine's (busy, total) CPU seconds since boot, all cores."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    total = sum(values[:8]) / tick
    return total - (values[3] + values[4]) / tick, total


def descendants(pid: int, table: dict[int, ProcInfo] | None = None) -> list[int]:
    """Every process below `pid` (children, their children, …)."""
    children: dict[int, list[int]] = defaultdict(list)
    for child, info in (table if table is not None else processes()).items():
        children[info.ppid].append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# --- HTTP -----------------------------------------------------------------------------------------

def signed_request(host: str, path: str, body: bytes, secret: str) -> bytes:
    """An HTTP/1.1 POST of a Stripe event, signed as Stripe signs it (stripe-python's own
    generate_signature_header)."""
    import stripe

    signature = stripe.WebhookSignature.generate_signature_header(body.decode(), secret)
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Stripe-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


class Conn:
    """One HTTP/1.1 connection (asyncio), kept alive while the server allows it; a server that
    closed an idle connection gets the request again on a new one."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connects = 0

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connects += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, data: bytes) -> tuple[int, bytes]:
        """Send one raw request; (status, body) of the answer."""
        for attempt in (0, 1):
            reused = self.writer is not None
            if not reused:
                await self._open()
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(data)
                await self.writer.drain()
                head = await self.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                self.close()
                if reused and attempt == 0 and not getattr(exc, "partial", b""):
                    continue  # the server had closed an idle keep-alive connection: resend
                raise
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await self.reader.readexactly(length) if length else b""
            if close:
                self.close()
            return int(head[9:12]), body
        raise AssertionError("unreachable")


# --- figures --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    """One figure over repeated runs."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        return cls(tuple(values))

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def max(self) -> float:
        return max(self.values)

    def show(self, fmt: str = ",.0f") -> str:
        """`min / median / max`, or the one value of a single run."""
        if len(self.values) == 1:
            return format(self.values[0], fmt)
        return " / ".join(format(v, fmt) for v in (self.min, self.median, self.max))


def verdict(ok: bool) -> str:
    """The word benchmarks/all.py collects into its table."""
    return "PASS" if ok else "MISS"


def ratio(values: Sequence[float], against: Sequence[float]) -> Spread:
    """Run-by-run ratios of two figures measured in the same runs."""
    return Spread.of(a / b for a, b in zip(values, against, strict=True))
