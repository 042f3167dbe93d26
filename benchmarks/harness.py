"""What every benchmark here shares: its common flags; databases and Redis made ready for it;
the service started as the Procfile's web line starts it (gunicorn), waited for and stopped;
the machine's processes and CPU from /proc; one keep-alive HTTP client for signed deliveries;
percentiles, min / median / max over repeated runs, ratios to the floor and the baseline, and
the PASS/MISS words. Benchmarks import it as `from benchmarks.harness import …`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # standins/ (payload builders) is not an installed package

from standins.localstripe import free_port  # noqa: E402

BIN = Path(sys.executable).parent  # the virtualenv's scripts: gunicorn, mismatch


# --- command line --------------------------------------------------------------------------------

def add_common_flags(parser: argparse.ArgumentParser, *, database_url: str | None = None,
                     database_note: str = "created if missing", redis_url: str | None = None,
                     redis_note: str = "FLUSHED", runs: int | None = None,
                     runs_help: str | None = None, quick: str | None = None,
                     strict: bool = False) -> None:
    """The flags several benchmarks take, spelled and explained alike: --database-url,
    --redis-url, --runs, --quick (`quick`: what it shortens) and --strict."""
    if database_url is not None:
        parser.add_argument("--database-url", default=database_url,
                            help=f"PostgreSQL URL (default {database_url}; {database_note})")
    if redis_url is not None:
        parser.add_argument("--redis-url", default=redis_url,
                            help=f"Redis URL, {redis_note} (default {redis_url})")
    if runs is not None:
        parser.add_argument("--runs", type=int, default=runs, help=runs_help)
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    if strict:
        parser.add_argument("--strict", action="store_true",
                            help="exit 1 when a target is missed")


def interrupt_on(*signums: int, via_sigint: bool = False) -> list[int]:
    """Make these signals (default SIGTERM and SIGHUP) a KeyboardInterrupt, so a stopped
    benchmark still stops what it started; `via_sigint` raises SIGINT instead (asyncio.run
    turns that into a clean cancellation). Returns the list the signals received go to."""
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        if via_sigint:
            signal.raise_signal(signal.SIGINT)
        else:
            raise KeyboardInterrupt(f"signal {signum}")

    if via_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started ignored
    for signum in signums or (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handler)
    return received


def environment(without: Iterable[str] = (), **values: str) -> dict[str, str]:
    """This process's environment less `without`, plus `values`: what a child gets."""
    env = {name: value for name, value in os.environ.items() if name not in set(without)}
    env.update(values)
    return env


# --- databases ----------------------------------------------------------------------------------

def sqlalchemy_url(url: str) -> str:
    """`url` as the service's config reads it (the SQLAlchemy URL it connects with)."""
    from config import load_config

    return load_config({"DATABASE_URL": url, "SECRET_KEY": "bench",
                        "INSTANCE_PATH": str(ROOT / "instance")}).database_url


def libpq_url(url: str) -> str:
    """A PostgreSQL URL as psycopg takes it (no SQLAlchemy driver in the scheme)."""
    return urlsplit(url)._replace(scheme="postgresql").geturl()


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _admin_connection(url: str):  # type: ignore[no-untyped-def]
    import psycopg

    admin = urlsplit(url)._replace(scheme="postgresql", path="/postgres").geturl()
    return psycopg.connect(admin, autocommit=True, connect_timeout=5)


def drop_database(url: str, guard: str) -> None:
    """DROP the PostgreSQL database at `url`, which only a database whose name starts with
    `guard` may be (a mistyped URL must never empty real data)."""
    name = database_name(url)
    if not name.startswith(guard):
        raise SystemExit(f"refusing to drop database {name!r}: its name must start with "
                         f"{guard!r}")
    with _admin_connection(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare_database(url: str, *, fresh: bool, guard: str = "bench") -> str:
    """A migrated database at `url` (postgresql://… or sqlite:///…); returns its SQLAlchemy
    URL. `fresh` drops and recreates it first (drop_database: only a name starting with
    `guard`); otherwise it is created when missing."""
    from db import upgrade

    sa_url = sqlalchemy_url(url)
    if sa_url.startswith("sqlite"):
        path = Path(sa_url.split("///", 1)[1])
        if fresh:
            if not path.name.startswith(guard):
                raise SystemExit(f"refusing to delete {path}: its name must start with {guard!r}")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        upgrade(sa_url)
        return sa_url
    if fresh:
        drop_database(url, guard)
    name = database_name(url)
    with _admin_connection(url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    upgrade(sa_url)
    return sa_url


def empty_inbox(url: str) -> None:
    """TRUNCATE the inbox tables (stripe_events, rejected_deliveries) of a PostgreSQL
    database: each configuration or run starts from an empty inbox."""
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=5) as conn:
        conn.execute("TRUNCATE stripe_events, rejected_deliveries")


def flush_redis(url: str) -> None:
    """FLUSHDB the Redis database at `url`."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


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


def log_lines(path: Path, marks: Iterable[str]) -> list[str]:
    """The lines of a log that contain any of `marks` (errors, warnings, tracebacks)."""
    marks = tuple(marks)
    text = path.read_text(errors="replace") if path.exists() else ""
    return [line for line in text.splitlines() if any(mark in line for mark in marks)]


def gunicorn_command(port: int, app: str, *options: str) -> list[str]:
    """The Procfile's web line (`gunicorn --config listener/gunicorn.conf.py`) on a loopback
    port, with `options` added before the app."""
    return [str(BIN / "gunicorn"), "--config", "listener/gunicorn.conf.py",
            "--bind", f"127.0.0.1:{port}", *options, app]


@dataclass
class Server:
    """A gunicorn this benchmark started, in its own process group."""

    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


_servers: list[Server] = []


def start_gunicorn(name: str, app: str, env: dict[str, str], log: Path, *options: str,
                   port: int | None = None) -> Server:
    """Start `app` under gunicorn_command (cwd the repository, its own session, SIGTERMed if
    this process dies), logging to `log`; stop_servers stops it."""
    port = port or free_port()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            gunicorn_command(port, app, *options), cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent)
    server = Server(name, port, proc, log)
    _servers.append(server)
    return server


def http_answers(port: int, path: str = "/healthz", prefix: bytes = b"HTTP/1.1 200") -> bool:
    """Does a GET of `path` on the loopback port get an answer starting with `prefix`?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      "Connection: close\r\n\r\n".encode())
            return s.recv(64).startswith(prefix)
    except OSError:
        return False


def wait_ready(server: Server, path: str = "/healthz", prefix: bytes = b"HTTP/1.1 200",
               timeout: float = 60.0) -> None:
    """Wait until the server answers (http_answers); exit with its log's end if it dies or
    does not answer within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.name}: gunicorn exited ({server.proc.returncode}):\n"
                             + tail(server.log))
        if http_answers(server.port, path, prefix):
            return
        time.sleep(0.2)
    raise SystemExit(f"{server.name}: not answering on port {server.port} after "
                     f"{timeout:g}s:\n" + tail(server.log))


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except ProcessLookupError:
        pass


def stop_servers(timeout: float = 15.0) -> None:
    """Stop every gunicorn start_gunicorn started: SIGTERM to each process group, then
    SIGKILL to what is left after `timeout` seconds."""
    for server in _servers:
        if server.proc.poll() is None:
            _signal_group(server.proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for server in _servers:
        try:
            server.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(server.proc, signal.SIGKILL)
            server.proc.wait()
    _servers.clear()


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


@dataclass
class CpuUse:
    """CPU seconds used during a phase: by group, plus "other" (the machine's busy time
    outside the groups, processes that exited meanwhile included) and "idle"; "other" by
    command; and the phase's wall seconds."""

    wall: float
    seconds: Counter
    other_by_command: Counter

    def cores(self, name: str) -> float:
        return self.seconds.get(name, 0.0) / self.wall if self.wall else 0.0


class CpuMeter:
    """CPU used between start() and stop() by the processes of given groups (process group
    id → label), this load generator ("loadgen"), PostgreSQL, Redis and everything else on
    the machine (which disturbs the figures)."""

    def __init__(self, groups: dict[int, str]) -> None:
        self.groups = groups

    def _label(self, pid: int, info: ProcInfo) -> str:
        if pid == os.getpid():
            return "loadgen"
        if info.pgid in self.groups:
            return self.groups[info.pgid]
        if info.comm.startswith("postgres"):
            return "postgres"
        if info.comm.startswith("redis-server"):
            return "redis"
        return "other"

    def start(self) -> None:
        self._before, self._machine = processes(), machine_cpu()
        self._t0 = time.perf_counter()

    def stop(self) -> CpuUse:
        after, machine = processes(), machine_cpu()
        use = CpuUse(time.perf_counter() - self._t0, Counter(), Counter())
        ours: Counter = Counter()
        listed = 0.0
        for pid, info in after.items():
            before = self._before.get(pid)  # (kernel threads rename themselves: match on pid)
            delta = info.cpu - before.cpu if before else info.cpu
            label = self._label(pid, info)
            if label == "other":
                use.other_by_command[info.comm.split("/")[0]] += delta
                listed += delta
            else:
                ours[label] += delta
        busy = machine[0] - self._machine[0]
        other = max(0.0, busy - sum(ours.values()))
        use.seconds.update(ours)
        use.seconds["other"] += other
        use.seconds["idle"] += max(0.0, machine[1] - self._machine[1] - busy)
        if other - listed > 0:
            use.other_by_command["(exited, irq)"] += other - listed
        return use


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
        """`min / median / max`, the one value of a single run, or n/a without any."""
        if not self.values:
            return "n/a"
        if len(self.values) == 1:
            return format(self.values[0], fmt)
        return " / ".join(format(v, fmt) for v in (self.min, self.median, self.max))


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of durations in seconds, in milliseconds (nan when empty)."""
    if not seconds:
        return float("nan")
    data = sorted(seconds)
    index = min(len(data) - 1, max(0, int(round(q / 100 * len(data) + 0.5)) - 1))
    return data[index] * 1000


def verdict(ok: bool) -> str:
    """The word benchmarks/all.py collects into its table."""
    return "PASS" if ok else "MISS"


def ratio(values: Sequence[float], against: Sequence[float]) -> Spread:
    """Run-by-run ratios of two figures measured in the same runs."""
    return Spread.of(a / b for a, b in zip(values, against, strict=True))


class Targets:
    """A benchmark's targets: each check prints its PASS/MISS line (in the benchmark's own
    layout, `line`, a format with {name}, {value} and {verdict}) and is remembered."""

    def __init__(self, line: str) -> None:
        self.line = line
        self.results: list[bool] = []

    def check(self, name: str, value: str, met: bool) -> bool:
        self.results.append(met)
        print(self.line.format(name=name, value=value, verdict=verdict(met)))
        return met

    @property
    def all_met(self) -> bool:
        return all(self.results)
