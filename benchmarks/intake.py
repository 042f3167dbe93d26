"""Webhook intake benchmark: the real service against its floor and a bare endpoint, in one run.

    .venv/bin/python benchmarks/intake.py            # full run, about 100 s
    .venv/bin/python benchmarks/intake.py --quick    # short phases, about 50 s
    .venv/bin/python benchmarks/intake.py --help     # server settings, durations, URLs

What it does:

1. Prepares PostgreSQL (benchmarks/harness.py prepare_database: creates the database if
   missing, runs the migrations; then empties its inbox tables) and Redis (FLUSHES the given
   Redis database), then starts, under gunicorn with the same settings, each on its own
   loopback port:
   - service: the real service (`listener.wsgi:app`);
   - floor: the least verify → store → enqueue can cost (`benchmarks/floor_app.py`: the bare
     endpoint plus stripe-python's verify_header, json.loads, a raw psycopg insert of the same
     row and one RQ enqueue of the same job);
   - bare: a Flask app with one POST route answering 200 JSON (`benchmarks/bare_app.py`);
   - unstored (unless --no-ceiling): the service with its insert and enqueue switched off
     (`benchmarks/intake_unstored.py`): what the rest of intake costs.
2. Drives signed, unique Stripe-shaped events (`customer.subscription.created` from a
   connected account, signed with stripe-python's own signing) at each from an asyncio load
   generator in this process, on persistent (keep-alive) connections (harness.Conn):
   - phase A, peak: closed loop, N connections, fixed duration;
   - phase B, latency: open loop at half of each endpoint's own peak (bare, floor, service).
     Latency is measured from each request's scheduled send time, so a stalled server cannot
     hide its queueing delay.
   Within each phase the endpoints take turns in --rounds slices, so a neighbour's load
   spike lands on all of them rather than on one.
3. Prints events/s, p50, p99 and the server's own CPU per event (web µs/ev) per endpoint, the
   service/floor ratios of CPU per event and of throughput, service/bare and floor/bare, and
   PASS/MISS against the targets (web CPU per event within 1.5x of the floor's; throughput at
   least 2/3 of the floor's; p99 < 50 ms at half the service's own peak); with more than one
   round, min / median / max over the rounds. `--strict` exits 1 on a MISS.
4. Verifies that every event the service accepted is exactly one row in stripe_events and one
   job in the RQ queue 'mismatch' (exit 2 if not).

The load generator shares the machine's cores with the servers, PostgreSQL and Redis; that
is why the service is compared with endpoints measured the same way in the same run. For each
peak phase it prints the CPU used per process group (servers, load generator, PostgreSQL,
Redis, anything else on the machine) and per event. CPU per event is the noise-robust figure:
throughput on two shared cores moves with whatever else runs; the CPU an event costs does not.

Server settings default to the Procfile's (listener/gunicorn.conf.py: gevent, 2 workers);
`--worker-class gthread` (2 threads each unless --threads) measures the earlier setting.

Never point --database-url or --redis-url at data you care about: the Redis database is
flushed, and a database whose name starts with "bench" has its inbox tables truncated.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as benchmarks/intake.py

from benchmarks.harness import (
    ROOT,
    Conn,
    Spread,
    die_with_parent,
    machine_cpu,
    prepare_database,
    processes,
    ratio,
    signed_request,
    tail,
    verdict,
)
from standins.localstripe import free_port

BIN = Path(sys.executable).parent

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/bench_intake"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
PLATFORM_SECRET = "whsec_bench_platform_secret"
CONNECT_SECRET = "whsec_bench_connect_secret"
QUEUE = "mismatch"
PATH = "/webhooks/stripe/connect"
P99_TARGET_MS = 50.0
CPU_RATIO_TARGET = 1.5  # service web CPU per event / the floor's
FLOOR_SHARE_TARGET = 2 / 3  # service throughput / the floor's
REQUEST_TIMEOUT = 30.0


# --------------------------------------------------------------------------- events


def _subscription_event_template() -> str:
    """A Stripe-shaped customer.subscription.created event (pretty-printed, like Stripe
    sends it), with %-placeholders for what changes per delivery."""
    now = int(time.time())
    price = {
        "id": "price_1BenchMonthly00000000", "object": "price", "active": True,
        "billing_scheme": "per_unit", "created": now - 86400, "currency": "eur",
        "custom_unit_amount": None, "livemode": False, "lookup_key": None, "metadata": {},
        "nickname": "Monthly membership", "product": "prod_BenchMembership0",
        "recurring": {"aggregate_usage": None, "interval": "month", "interval_count": 1,
                      "meter": None, "trial_period_days": None, "usage_type": "licensed"},
        "tax_behavior": "unspecified", "tiers_mode": None, "transform_quantity": None,
        "type": "recurring", "unit_amount": 4900, "unit_amount_decimal": "4900",
    }
    plan = {
        "id": price["id"], "object": "plan", "active": True, "aggregate_usage": None,
        "amount": 4900, "amount_decimal": "4900", "billing_scheme": "per_unit",
        "created": now - 86400, "currency": "eur", "interval": "month", "interval_count": 1,
        "livemode": False, "metadata": {}, "meter": None, "nickname": "Monthly membership",
        "product": "prod_BenchMembership0", "tiers_mode": None, "transform_usage": None,
        "trial_period_days": None, "usage_type": "licensed",
    }
    subscription = {
        "id": "%(sub)s", "object": "subscription", "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": now, "billing_thresholds": None, "cancel_at": None,
        "cancel_at_period_end": False, "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically", "created": now, "currency": "eur",
        "current_period_end": now + 30 * 86400, "current_period_start": now,
        "customer": "%(cus)s", "days_until_due": None,
        "default_payment_method": "pm_1BenchCard000000000000", "default_source": None,
        "default_tax_rates": [], "description": None, "discount": None, "discounts": [],
        "ended_at": None, "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "items": {
            "object": "list",
            "data": [{
                "id": "si_%(n)s", "object": "subscription_item", "billing_thresholds": None,
                "created": now, "discounts": [], "metadata": {}, "plan": plan, "price": price,
                "quantity": 1, "subscription": "%(sub)s", "tax_rates": [],
            }],
            "has_more": False, "total_count": 1,
            "url": "/v1/subscription_items?subscription=%(sub)s",
        },
        "latest_invoice": "in_%(n)s", "livemode": False, "metadata": {},
        "next_pending_invoice_item_invoice": None, "on_behalf_of": None, "pause_collection": None,
        "payment_settings": {"payment_method_options": None, "payment_method_types": None,
                             "save_default_payment_method": "off"},
        "pending_invoice_item_interval": None, "pending_setup_intent": None,
        "pending_update": None, "plan": plan, "quantity": 1, "schedule": None,
        "start_date": now, "status": "active", "test_clock": None, "transfer_data": None,
        "trial_end": None,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": None,
    }
    event = {
        "id": "%(evt)s", "object": "event", "account": "%(acct)s", "api_version": "2024-06-20",
        "created": "%(created)s", "data": {"object": subscription}, "livemode": False,
        "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
        "type": "customer.subscription.created",
    }
    text = json.dumps(event, indent=2)
    assert "%" not in text.replace("%(", "")
    return text.replace('"%(created)s"', "%(created)d")


class EventFactory:
    """Unique, signed deliveries: `evt_bench_<run>_<n>`, spread over 50 connected accounts."""

    def __init__(self, run_id: str, secret: str) -> None:
        self.prefix = f"evt_bench_{run_id}_"
        self.secret = secret
        self.template = _subscription_event_template()
        self.seq = itertools.count(1)
        self.body_size = len(self.body(0).encode())

    def body(self, n: int) -> str:
        return self.template % {
            "evt": f"{self.prefix}{n:08d}", "sub": f"sub_bench{n:014d}",
            "cus": f"cus_bench{n:014d}", "n": f"bench{n:014d}",
            "acct": f"acct_1Bench{n % 50:010d}", "created": int(time.time()),
        }

    def request(self, host: str) -> bytes:
        """The next event as a signed POST to the Connect endpoint (harness.signed_request)."""
        return signed_request(host, PATH, self.body(next(self.seq)).encode(), self.secret)


# --------------------------------------------------------------------------- load generator


@dataclass
class Stats:
    name: str
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    ok: int = 0
    accepted: int = 0  # 200 and not a duplicate
    duplicates: int = 0
    errors: Counter = field(default_factory=Counter)
    unknown: int = 0  # no answer: the server may or may not have stored it
    unsent: int = 0  # open loop: scheduled but never sent (generator or pool saturated)
    elapsed: float = 0.0
    offered_rate: float = 0.0
    max_lag: float = 0.0  # open loop: worst delay between scheduled and actual send
    connects: int = 0
    cpu_seconds: Counter = field(default_factory=Counter)  # by process group, see CpuMeter
    cpu_wall: float = 0.0
    cpu_other: Counter = field(default_factory=Counter)  # "other" CPU seconds by command
    # One entry per round (slice) run: (answered, seconds, latencies[start:end]).
    rounds: list[tuple[int, float, int, int]] = field(default_factory=list)

    def mark(self) -> tuple[int, float, int]:
        """Where the counts stand before a round; give it to end_round afterwards."""
        return self.ok, self.elapsed, len(self.latencies)

    def end_round(self, mark: tuple[int, float, int]) -> tuple[int, float]:
        """Record the round since `mark`; its (answered, seconds)."""
        ok, elapsed, start = mark
        self.rounds.append((self.ok - ok, self.elapsed - elapsed, start, len(self.latencies)))
        return self.ok - ok, self.elapsed - elapsed

    def round_rates(self) -> list[float]:
        return [n / dt if dt else 0.0 for n, dt, _, _ in self.rounds]

    def round_pct(self, q: float) -> list[float]:
        return [percentile(self.latencies[a:b], q) for _, _, a, b in self.rounds]

    def record(self, latency: float, status: int, body: bytes) -> None:
        if status == 200:
            self.ok += 1
            self.latencies.append(latency)
            if b'"duplicate":true' in body.replace(b" ", b""):
                self.duplicates += 1
            else:
                self.accepted += 1
        else:
            self.errors[f"HTTP {status}"] += 1

    def failed(self, exc: BaseException) -> None:
        self.errors[type(exc).__name__] += 1
        self.unknown += 1

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q)


def percentile(latencies: list[float], q: float) -> float:
    """Nearest-rank percentile in milliseconds (nan when nothing succeeded)."""
    if not latencies:
        return float("nan")
    data = sorted(latencies)
    index = min(len(data) - 1, max(0, int(round(q / 100 * len(data) + 0.5)) - 1))
    return data[index] * 1000


async def exchange(conn: Conn, data: bytes, since: float, stats: Stats) -> bool:
    """One request on `conn`, recorded in `stats` with its latency from `since`; a failed
    one closes the connection (it reopens on the next request). True when answered."""
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            status, body = await conn.request(data)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
        conn.close()
        stats.failed(exc)
        return False
    stats.record(time.perf_counter() - since, status, body)
    return True


async def closed_loop(port: int, factory: EventFactory, connections: int, duration: float,
                      stats: Stats) -> None:
    loop = asyncio.get_running_loop()
    host = f"127.0.0.1:{port}"
    deadline = loop.time() + duration

    async def client() -> None:
        conn = Conn("127.0.0.1", port)
        try:
            while loop.time() < deadline:
                data = factory.request(host)
                if not await exchange(conn, data, time.perf_counter(), stats):
                    await asyncio.sleep(0.01)
        finally:
            stats.connects += conn.connects
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    stats.elapsed += time.perf_counter() - started


async def open_loop(port: int, factory: EventFactory, rate: float, duration: float,
                    max_connections: int, stats: Stats) -> None:
    """Send at a constant `rate` regardless of how fast answers come back; latency runs from
    each request's scheduled time. At most `max_connections` requests are in flight."""
    host = f"127.0.0.1:{port}"
    pool: asyncio.LifoQueue[Conn] = asyncio.LifoQueue()  # LIFO: reuse warm connections first
    conns = [Conn("127.0.0.1", port) for _ in range(max_connections)]
    for conn in conns:
        pool.put_nowait(conn)
    pending: set[asyncio.Task] = set()
    total = max(1, int(rate * duration))
    stats.offered_rate = rate

    async def one(conn: Conn, data: bytes, scheduled: float) -> None:
        try:
            await exchange(conn, data, scheduled, stats)
        finally:
            pool.put_nowait(conn)

    started = time.perf_counter()
    give_up = started + duration + 1.0
    for i in range(total):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await pool.get()
        now = time.perf_counter()
        if now > give_up:  # cannot keep the schedule: every connection is stuck waiting
            pool.put_nowait(conn)
            stats.unsent += total - i
            break
        stats.max_lag = max(stats.max_lag, now - scheduled)
        task = asyncio.create_task(one(conn, factory.request(host), scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    stats.elapsed += time.perf_counter() - started
    for conn in conns:
        stats.connects += conn.connects
        conn.close()


# --------------------------------------------------------------------------- CPU accounting


class CpuMeter:
    """CPU seconds used between start() and stop(), by group: the service's gunicorn, the bare
    gunicorn, this load generator, PostgreSQL, Redis, everything else."""

    def __init__(self, groups: dict[int, str]) -> None:
        self.groups = groups  # process group id -> label

    def _label(self, pid: int, comm: str, pgid: int) -> str:
        if pid == os.getpid():
            return "loadgen"
        if pgid in self.groups:
            return self.groups[pgid]
        if comm.startswith("postgres"):
            return "postgres"
        if comm.startswith("redis-server"):
            return "redis"
        return "other"

    def start(self) -> None:
        self._before, self._machine = processes(), machine_cpu()
        self._t0 = time.perf_counter()

    def stop(self, stats: Stats) -> None:
        """Add the CPU seconds used since start() to `stats`, by group. "other" is the machine's
        busy time minus our groups, so it includes processes that exited meanwhile."""
        after, machine = processes(), machine_cpu()
        stats.cpu_wall += time.perf_counter() - self._t0
        ours: Counter = Counter()
        listed = 0.0
        for pid, info in after.items():
            before = self._before.get(pid)  # (kernel threads rename themselves: match on pid)
            delta = info.cpu - before.cpu if before else info.cpu
            label = self._label(pid, info.comm, info.pgid)
            if label == "other":
                stats.cpu_other[info.comm.split("/")[0]] += delta
                listed += delta
            else:
                ours[label] += delta
        busy = machine[0] - self._machine[0]
        total = machine[1] - self._machine[1]
        other = max(0.0, busy - sum(ours.values()))
        stats.cpu_seconds.update(ours)
        stats.cpu_seconds["other"] += other
        stats.cpu_seconds["idle"] += max(0.0, total - busy)
        if other - listed > 0:
            stats.cpu_other["(exited, irq)"] += other - listed


# --------------------------------------------------------------------------- servers


_children: list[subprocess.Popen] = []


def stop_children() -> None:
    """Stop every gunicorn this script started (each is its own process group)."""
    for proc in _children:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for proc in _children:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    _children.clear()


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    log: Path


def gunicorn_args(args: argparse.Namespace, port: int) -> list[str]:
    """The service's own gunicorn settings (listener/gunicorn.conf.py), for every endpoint,
    with this run's overrides."""
    cmd = [str(BIN / "gunicorn"), "--config", str(ROOT / "listener" / "gunicorn.conf.py"),
           "--bind", f"127.0.0.1:{port}",
           "--workers", str(args.workers), "--worker-class", args.worker_class,
           "--backlog", "2048", "--timeout", "60", "--graceful-timeout", "5",
           "--keep-alive", str(args.keep_alive)]
    if args.worker_class == "gthread":
        cmd += ["--threads", str(args.threads)]
    return cmd


def start_server(name: str, app: str, args: argparse.Namespace, env: dict[str, str],
                 logdir: Path) -> Server:
    port = free_port()
    log = logdir / f"{name}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [*gunicorn_args(args, port), app], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,
        )
    _children.append(proc)
    return Server(name, port, proc, log)


def wait_ready(server: Server, timeout: float = 60.0) -> None:
    """Ready when the endpoint answers (a GET: 405, nothing stored)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise SystemExit(f"{server.name}: gunicorn exited ({server.proc.returncode}):\n"
                             + tail(server.log))
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
                s.sendall(f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          "Connection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1."):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{server.name}: not answering on port {server.port} after {timeout}s:\n"
                     + tail(server.log))


# --------------------------------------------------------------------------- PostgreSQL, Redis


def clean_inbox(sa_url: str, url: str) -> None:
    """Empty the inbox tables of a PostgreSQL database whose name starts with "bench", so
    each run starts from an empty inbox (verify_intake counts this run's events anyway)."""
    from sqlalchemy import create_engine, text

    if not (sa_url.startswith("postgresql") and urlsplit(url).path.lstrip("/").startswith("bench")):
        return
    engine = create_engine(sa_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE stripe_events, rejected_deliveries"))
    engine.dispose()


def verify_intake(sa_url: str, redis_url: str, prefix: str, stats: list[Stats]) -> tuple[bool, str]:
    """Every accepted delivery is one stored row and one queued job (no worker runs here)."""
    import redis
    from rq import Queue
    from rq.job import Job
    from sqlalchemy import create_engine, select

    from db import StripeEvent

    accepted = sum(s.accepted for s in stats)
    unknown = sum(s.unknown for s in stats)
    engine = create_engine(sa_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(StripeEvent.event_id, StripeEvent.status)
            .where(StripeEvent.event_id.startswith(prefix, autoescape=True))
        ).all()
    engine.dispose()
    stored = {r.event_id for r in rows}
    received = sum(1 for r in rows if r.status == "received")

    r = redis.Redis.from_url(redis_url)
    queue = Queue(QUEUE, connection=r)
    job_count = queue.count
    ids = queue.get_job_ids()
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(Job.key_for(job_id), "description")
    queued: Counter = Counter()
    for desc in pipe.execute():
        text = (desc or b"").decode()
        queued[text.removeprefix("event ")] += 1
    r.close()
    jobs_per_event_ok = set(queued) == stored and all(n == 1 for n in queued.values())

    ok = (accepted <= len(stored) <= accepted + unknown and job_count == len(stored)
          and jobs_per_event_ok and received == len(stored))
    report = (
        f"accepted (200, not duplicate) {accepted}, duplicates {sum(s.duplicates for s in stats)}, "
        f"no answer {unknown}\n"
        f"  rows in stripe_events {len(stored)} (status received: {received}); "
        f"jobs in RQ queue '{QUEUE}' {job_count}, one per stored event: "
        f"{'yes' if jobs_per_event_ok else 'NO'}\n"
        f"  => {'OK' if ok else 'FAILED'}: every accepted event stored and queued exactly once"
    )
    return ok, report


# --------------------------------------------------------------------------- the run


def _fmt_cpu(stats: Stats) -> str:
    """Cores busy per group during the phase, and CPU µs per answered event."""
    wall = stats.cpu_wall or 1.0
    used = stats.cpu_seconds
    order = ["service", "floor", "bare", "unstored", "loadgen", "postgres", "redis", "other"]
    cores = ", ".join(f"{k} {used.get(k, 0.0) / wall:.2f}" for k in order)
    line = f"cores busy: {cores}; idle {used.get('idle', 0.0) / wall:.2f}"
    if stats.ok:
        per = ", ".join(f"{k} {used[k] / stats.ok * 1e6:.0f}"
                        for k in order if used.get(k, 0.0) / wall > 0.005)
        line += f"\n             CPU µs per event: {per}"
    top = [f"{comm} {sec / wall:.2f}" for comm, sec in stats.cpu_other.most_common(3)
           if sec / wall >= 0.02]
    if top:
        line += f"\n             other, by command (cores): {', '.join(top)}"
    return line


def run(args: argparse.Namespace) -> int:
    import redis

    if args.quick:
        warmup, peak_s, open_s, rounds = 1.0, 4.0, 4.0, 2
    else:
        warmup, peak_s, open_s, rounds = 2.0, args.duration, args.open_duration, args.rounds

    tmp = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    try:
        print(f"database {args.database_url}; redis {args.redis_url} (flushed)")
        try:
            sa_url = prepare_database(args.database_url, fresh=False)
        except Exception as exc:  # noqa: BLE001 - psycopg or SQLAlchemy: say which server
            raise SystemExit(f"cannot prepare {args.database_url}: {exc}") from None
        if not sa_url.startswith("postgresql"):
            raise SystemExit("the intake benchmark measures PostgreSQL (its floor endpoint "
                             "writes with psycopg): give a postgresql:// --database-url")
        clean_inbox(sa_url, args.database_url)
        r = redis.Redis.from_url(args.redis_url)
        r.flushdb()
        r.close()

        env = dict(os.environ)
        for var in ("RQ_QUEUE", "PROMETHEUS_MULTIPROC_DIR", "FLASK_ENV", "MISMATCH_ENV"):
            env.pop(var, None)
        env.update(
            DATABASE_URL=args.database_url, REDIS_URL=args.redis_url,
            STRIPE_WEBHOOK_SECRETS=PLATFORM_SECRET, STRIPE_CONNECT_WEBHOOK_SECRETS=CONNECT_SECRET,
            INSTANCE_PATH=str(tmp / "instance"), SECRET_KEY="bench-secret-key",
            PYTHONUNBUFFERED="1",
        )
        # Every endpoint of the run, in the order they take turns; each its own events.
        apps = {"bare": "benchmarks.bare_app:app", "floor": "benchmarks.floor_app:app",
                "service": "listener.wsgi:app"}
        if args.ceiling:
            apps["unstored"] = "benchmarks.intake_unstored:app"
        servers = {name: start_server(name, app, args, env, tmp) for name, app in apps.items()}
        for server in servers.values():
            wait_ready(server)
        meter = CpuMeter({server.proc.pid: name for name, server in servers.items()})

        run_id = secrets.token_hex(4)
        events = {name: EventFactory(run_id + name[0], CONNECT_SECRET) for name in servers}
        threads = f", threads {args.threads}" if args.worker_class == "gthread" else ""
        settings = (f"gunicorn {_gunicorn_version()}, worker class {args.worker_class}, "
                    f"workers {args.workers}{threads}, keep-alive {args.keep_alive}s, "
                    f"bind 127.0.0.1")
        ports = ", ".join(f"{name} :{server.port}" for name, server in servers.items())
        print(f"server: {settings} ({ports}); {os.cpu_count()} CPUs")
        print(f"events: customer.subscription.created from a connected account, "
              f"{events['service'].body_size} bytes, unique ids, signed for the Connect endpoint")
        print(f"load: asyncio in this process. Peak: closed loop, {args.connections} keep-alive "
              f"connections, {peak_s:g}s per endpoint. Latency: open loop, {open_s:g}s per "
              f"series, ≤{args.max_connections} in flight. Endpoints alternate in {rounds} "
              f"rounds so a noisy neighbour hits all alike.\n")

        def go(label: str, coro, stats: Stats) -> None:
            mark = stats.mark()
            meter.start()
            asyncio.run(coro)
            meter.stop(stats)
            n, dt = stats.end_round(mark)
            print(f" {label} {n / dt if dt else 0:.0f}/s", end="", flush=True)

        # Warm-up: every worker connects to PostgreSQL and Redis and imports lazily.
        warm = {name: Stats(name) for name in servers}
        print("  warm-up:", end="")
        for name, server in servers.items():
            go(name, closed_loop(server.port, events[name], args.connections, warmup,
                                 warm[name]), warm[name])
        print()

        peak = {name: Stats(name) for name in servers}
        order = list(servers)
        for i in range(rounds):
            print(f"  peak round {i + 1}/{rounds}:", end="")
            for name in order[:: 1 if i % 2 == 0 else -1]:
                go(name, closed_loop(servers[name].port, events[name], args.connections,
                                     peak_s / rounds, peak[name]), peak[name])
            print()

        # Latency at half of each one's own peak (the unstored variant only shows a ceiling).
        half = {name: Stats(name) for name in ("bare", "floor", "service")}
        rates = {name: peak[name].rate / 2 for name in half}
        for i in range(rounds):
            print(f"  open-loop round {i + 1}/{rounds}:", end="")
            for name in list(half)[:: 1 if i % 2 == 0 else -1]:
                go(f"{name}@{rates[name]:.0f}",
                   open_loop(servers[name].port, events[name], rates[name], open_s / rounds,
                             args.max_connections, half[name]), half[name])
            print()

        print("  in-process (no server, one thread): bare, floor, service", flush=True)
        # Its own queue, so verify_intake below counts the served run's jobs only.
        direct = in_process({name: apps[name] for name in ("bare", "floor", "service")},
                            {**env, "RQ_QUEUE": "mismatch-in-process"}, tmp)

        ok, verification = verify_intake(
            sa_url, args.redis_url, events["service"].prefix,
            [warm["service"], peak["service"], half["service"]])
        log_lines = servers["service"].log.read_text(errors="replace").splitlines()
        problems = [line for line in log_lines
                    if " ERROR " in line or " WARNING " in line or "[ERROR]" in line]
        return report(args, settings, rounds, peak, half, direct, ok, verification, problems)
    finally:
        stop_children()
        shutil.rmtree(tmp, ignore_errors=True)


def _server_cpu(stats: Stats) -> float:
    """The server's own CPU µs per answered event (web CPU: what intake's code costs)."""
    return stats.cpu_seconds.get(stats.name, 0.0) / stats.ok * 1e6 if stats.ok else 0.0


def report(args: argparse.Namespace, settings: str, rounds: int, peak: dict[str, Stats],
           half: dict[str, Stats], direct: dict[str, Spread], ok: bool, verification: str,
           problems: list[str]) -> int:
    results: list[bool] = []

    def target(name: str, value: str, met: bool) -> None:
        results.append(met)
        print(f"  {name:<52} {value:>10}   {verdict(met)}")

    def share(name: str, against: str) -> float:
        return peak[name].rate / peak[against].rate if peak[against].rate else 0.0

    print("\n" + "=" * 80)
    print(f"server: {settings}; {os.cpu_count()} CPUs shared with the load generator")
    print(f"\n{'':40}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'web µs/ev':>11}")
    rows = [(f"peak (closed loop), {name}", s) for name, s in peak.items()]
    rows += [(f"open loop @ {s.offered_rate:.0f}/s (½ own peak), {name}", s)
             for name, s in half.items()]
    for label, s in rows:
        errs = sum(s.errors.values()) + s.unsent
        cpu = f"{_server_cpu(s):>11.0f}" if label.startswith("peak") else ""
        print(f"{label:<40}{s.rate:>10.0f}{s.pct(50):>9.1f}{s.pct(99):>9.1f}{errs:>8}{cpu}")
    print("  (web µs/ev: the server's own CPU per answered event, all its processes)")
    cpu_ratio = (_server_cpu(peak["service"]) / _server_cpu(peak["floor"])
                 if _server_cpu(peak["floor"]) else float("inf"))
    print(f"\n{'throughput service / floor':<40}{share('service', 'floor'):>10.1%}")
    print(f"{'web CPU per event service / floor':<40}{cpu_ratio:>10.2f}×")
    print(f"{'throughput service / bare':<40}{share('service', 'bare'):>10.1%}")
    print(f"{'throughput floor / bare':<40}{share('floor', 'bare'):>10.1%}   (what verify, "
          f"store and enqueue cost at the least)")
    if "unstored" in peak:
        print(f"{'throughput unstored / bare':<40}{share('unstored', 'bare'):>10.1%}   (the "
              f"service with its insert and enqueue\n{'':40}switched off: what the rest of "
              f"intake costs)")
    if rounds > 1:
        print(f"\nper round, min / median / max over {rounds} rounds")
        print(f"{'':40}{'events/s':>24}{'p99 ms':>24}")
        for label, s in rows:
            print(f"{label:<40}{Spread.of(s.round_rates()).show():>24}"
                  f"{Spread.of(s.round_pct(99)).show('.1f'):>24}")
        for name, against in (("service", "floor"), ("service", "bare"), ("floor", "bare")):
            if all(peak[against].round_rates()):
                spread = ratio(peak[name].round_rates(), peak[against].round_rates())
                print(f"{f'throughput {name} / {against}':<40}{spread.show('.1%'):>24}")
    print(f"\nin-process, no server, one thread: CPU µs per event, min / median / max of 3 x "
          f"{IN_PROCESS_EVENTS}")
    for name, spread in direct.items():
        print(f"  {name:<38}{spread.show():>24}")
    in_ratio = ratio(direct["service"].values, direct["floor"].values).show(".2f")
    print(f"  {'service / floor':<38}{in_ratio:>24}   (our Python above the floor's, "
          f"without the server's share)")
    print("\ntargets")
    target("web CPU per event within 1.5× of the floor's", f"{cpu_ratio:.2f}×",
           cpu_ratio <= CPU_RATIO_TARGET)
    target("throughput ≥ 2/3 of the floor endpoint's", f"{share('service', 'floor'):.1%}",
           share("service", "floor") >= FLOOR_SHARE_TARGET)
    service_half = half["service"]
    target(f"service p99 < 50 ms at ½ own peak ({service_half.offered_rate:.0f}/s)",
           f"{service_half.pct(99):.1f} ms",
           service_half.pct(99) < P99_TARGET_MS and not service_half.errors
           and not service_half.unsent)

    print(f"\nCPU during the peak phases ({os.cpu_count()} cores in all)")
    for name, s in peak.items():
        print(f"  {name + ':':<9} {_fmt_cpu(s)}")
    noisy = max(s.cpu_seconds.get("other", 0.0) / (s.cpu_wall or 1.0) for s in peak.values())
    if noisy > 0.15:
        print(f"  WARNING: unrelated processes used up to {noisy:.2f} cores during the "
              "peak phases: figures are disturbed; rerun on an idle machine")
    for s in half.values():
        if s.unsent:
            print(f"  note: open loop {s.name} @ {s.offered_rate:.0f}/s: {s.unsent} "
                  f"deliveries never sent (all {args.max_connections} connections stayed "
                  f"busy: the server cannot sustain this rate); counted as errors")
        elif s.max_lag > 0.01:
            print(f"  note: open loop {s.name} @ {s.offered_rate:.0f}/s: the load generator "
                  f"sent up to {s.max_lag * 1000:.0f} ms late (CPU starved); latency "
                  f"still counts from the scheduled time")
    print(f"\nverification (service): {verification}")
    if problems:
        print(f"  service log: {len(problems)} warning/error lines, first ones:")
        print("\n".join(f"    {line[:160]}" for line in problems[:5]))
    print("=" * 80)
    if not ok:
        return 2
    return 1 if args.strict and not all(results) else 0


IN_PROCESS_EVENTS = 900  # per repetition; 3 repetitions each, after 300 to warm up


def in_process_child(app_spec: str) -> int:
    """Run in a child process (--in-process): call one endpoint's WSGI app directly, one
    thread, no server. After a warm-up, each line read from stdin runs one repetition and
    prints its CPU µs per event: what the code costs without gunicorn, its threads or the
    context switches of a shared machine (every database and Redis round trip is real)."""
    import importlib

    import stripe
    from werkzeug.test import EnvironBuilder

    module, _, name = app_spec.partition(":")
    app = getattr(importlib.import_module(module), name)
    factory = EventFactory(f"{secrets.token_hex(4)}i", CONNECT_SECRET)

    def environ() -> dict:
        body = factory.body(next(factory.seq))
        header = stripe.WebhookSignature.generate_signature_header(body, CONNECT_SECRET)
        return EnvironBuilder(path=PATH, method="POST", data=body.encode(),
                              headers={"Stripe-Signature": header,
                                       "Content-Type": "application/json"}).get_environ()

    def call(env: dict) -> None:
        status: list[str] = []
        b"".join(app(env, lambda s, _h, _e=None: status.append(s)))
        if not status[0].startswith("200"):
            raise SystemExit(f"{app_spec} answered {status[0]}")

    for env in [environ() for _ in range(300)]:
        call(env)
    print("ready", flush=True)
    for _line in sys.stdin:
        chunk = [environ() for _ in range(IN_PROCESS_EVENTS)]
        started = time.process_time()
        for env in chunk:
            call(env)
        print((time.process_time() - started) / len(chunk) * 1e6, flush=True)
    return 0


def in_process(names: dict[str, str], env: dict[str, str], logdir: Path) -> dict[str, Spread]:
    """CPU µs per event of each app called in-process (in_process_child, one child each),
    the apps taking turns for each of 3 repetitions, as the served endpoints do."""
    children = {}
    for name, app_spec in names.items():
        log = open(logdir / f"{name}-in-process.log", "wb")  # noqa: SIM115 - closed below
        children[name] = subprocess.Popen(
            [sys.executable, __file__, "--in-process", app_spec], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
    figures: dict[str, list[float]] = {name: [] for name in names}
    try:
        for name, child in children.items():
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise SystemExit(f"{name} in-process: failed to start:\n"
                                 + tail(logdir / f"{name}-in-process.log"))
        for _rep in range(3):
            for name, child in children.items():
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write("go\n")
                child.stdin.flush()
                line = child.stdout.readline()
                if not line:
                    raise SystemExit(f"{name} in-process: exited:\n"
                                     + tail(logdir / f"{name}-in-process.log"))
                figures[name].append(float(line))
    finally:
        for child in children.values():
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout=30)
    return {name: Spread.of(values) for name, values in figures.items()}


def _gunicorn_version() -> str:
    import gunicorn

    return gunicorn.__version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark webhook intake (real service vs bare Flask, same gunicorn).")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL,
                        help=f"PostgreSQL URL (default {DEFAULT_DATABASE_URL}; created if missing)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL,
                        help=f"Redis URL, FLUSHED first (default {DEFAULT_REDIS_URL})")
    parser.add_argument("--worker-class", default="gevent", choices=("gevent", "gthread", "sync"),
                        help="default: the Procfile's (listener/gunicorn.conf.py)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="per worker, gthread only")
    parser.add_argument("--keep-alive", type=int, default=5, help="gunicorn --keep-alive seconds")
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                        help="skip the third endpoint: the service with its insert and "
                             "enqueue switched off (benchmarks/intake_unstored.py)")
    parser.add_argument("--connections", type=int, default=16,
                        help="concurrent connections in the peak phase")
    parser.add_argument("--max-connections", type=int, default=64,
                        help="most requests in flight in the open-loop phase")
    parser.add_argument("--duration", type=float, default=10.0, help="peak phase seconds")
    parser.add_argument("--open-duration", type=float, default=10.0,
                        help="open-loop phase seconds")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternate the endpoints this many times within each phase")
    parser.add_argument("--quick", action="store_true",
                        help="short phases, 2 rounds (about 40 s in all)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--in-process", metavar="APP", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_process:
        return in_process_child(args.in_process)

    received: list[int] = []

    def _terminate(signum, _frame):  # type: ignore[no-untyped-def]
        # Turn SIGTERM/SIGHUP into Ctrl-C, which asyncio.run turns into a clean cancellation.
        received.append(signum)
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with it ignored
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)
    finally:
        stop_children()


if __name__ == "__main__":
    sys.exit(main())
