"""Webhook intake benchmark: the real service against its floor and a bare endpoint, in one run.

    .venv/bin/python benchmarks/intake.py            # full run, about 100 s
    .venv/bin/python benchmarks/intake.py --quick    # short phases, about 50 s
    .venv/bin/python benchmarks/intake.py --help     # server settings, durations, URLs

Each endpoint runs under gunicorn with the service's own settings (listener/gunicorn.conf.py:
gevent, 2 workers; `--worker-class gthread` measures the earlier setting), on a loopback port:
- service: the real service (`listener.wsgi:app`);
- floor: the least verify → store → enqueue can cost (`benchmarks/floor_app.py`);
- bare: a Flask app with one POST route answering 200 JSON (`benchmarks/bare_app.py`);
- unstored (unless --no-ceiling): the service with its insert and enqueue switched off
  (`benchmarks/intake_unstored.py`): what the rest of intake costs.

An asyncio load generator in this process sends signed, unique `customer.subscription.created`
Connect events on keep-alive connections: phase A (peak) a closed loop of N connections;
phase B (latency) an open loop at half each endpoint's own peak, latency counted from each
request's scheduled time so a stalled server cannot hide its queueing. The endpoints take
turns in --rounds slices, so a neighbour's load spike lands on all of them. Then each app is
called in-process (no server, one thread) for the CPU its code costs alone.

It prints events/s, p50, p99 and the server's own CPU per event per endpoint, the ratios to
the floor and the bare endpoint (min / median / max over the rounds), the CPU used by every
process group, and PASS/MISS against the targets: web CPU per event within 1.5x of the
floor's; throughput at least 2/3 of the floor's; p99 < 50 ms at half the service's own peak
(`--strict` exits 1 on a MISS). CPU per event is the noise-robust figure: throughput on two
shared cores moves with whatever else runs; the CPU an event costs does not. Last it checks
that every accepted event is one row in stripe_events and one job in the RQ queue 'mismatch'
(exit 2 if not).

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
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as benchmarks/intake.py

from benchmarks.harness import (
    ROOT,
    Conn,
    CpuMeter,
    CpuUse,
    Server,
    Spread,
    Targets,
    add_common_flags,
    database_name,
    empty_inbox,
    environment,
    flush_redis,
    interrupt_on,
    log_lines,
    percentile_ms,
    prepare_database,
    ratio,
    signed_request,
    start_gunicorn,
    stop_servers,
    tail,
    wait_ready,
)

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
# Every endpoint of the run, in the order they take turns (unstored: unless --no-ceiling).
APPS = {"bare": "benchmarks.bare_app:app", "floor": "benchmarks.floor_app:app",
        "service": "listener.wsgi:app", "unstored": "benchmarks.intake_unstored:app"}


# --------------------------------------------------------------------------- events


def _price(now: int) -> dict[str, Any]:
    return {
        "id": "price_1BenchMonthly00000000", "object": "price", "active": True,
        "billing_scheme": "per_unit", "created": now - 86400, "currency": "eur",
        "custom_unit_amount": None, "livemode": False, "lookup_key": None, "metadata": {},
        "nickname": "Monthly membership", "product": "prod_BenchMembership0",
        "recurring": {"aggregate_usage": None, "interval": "month", "interval_count": 1,
                      "meter": None, "trial_period_days": None, "usage_type": "licensed"},
        "tax_behavior": "unspecified", "tiers_mode": None, "transform_quantity": None,
        "type": "recurring", "unit_amount": 4900, "unit_amount_decimal": "4900",
    }


def _plan(price_id: str, now: int) -> dict[str, Any]:
    return {
        "id": price_id, "object": "plan", "active": True, "aggregate_usage": None,
        "amount": 4900, "amount_decimal": "4900", "billing_scheme": "per_unit",
        "created": now - 86400, "currency": "eur", "interval": "month", "interval_count": 1,
        "livemode": False, "metadata": {}, "meter": None, "nickname": "Monthly membership",
        "product": "prod_BenchMembership0", "tiers_mode": None, "transform_usage": None,
        "trial_period_days": None, "usage_type": "licensed",
    }


def _subscription(now: int) -> dict[str, Any]:
    price = _price(now)
    plan = _plan(price["id"], now)
    return {
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


def _subscription_event_template() -> str:
    """A Stripe-shaped customer.subscription.created event (pretty-printed, like Stripe
    sends it), with %-placeholders for what changes per delivery."""
    event = {
        "id": "%(evt)s", "object": "event", "account": "%(acct)s", "api_version": "2024-06-20",
        "created": "%(created)s", "data": {"object": _subscription(int(time.time()))},
        "livemode": False, "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
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
    cpu_seconds: Counter = field(default_factory=Counter)  # by process group (CpuMeter)
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
        return [percentile_ms(self.latencies[a:b], q) for _, _, a, b in self.rounds]

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
        return percentile_ms(self.latencies, q)

    def add_cpu(self, use: CpuUse) -> None:
        """Add a phase's CPU (harness.CpuMeter) to this endpoint's."""
        self.cpu_wall += use.wall
        self.cpu_seconds.update(use.seconds)
        self.cpu_other.update(use.other_by_command)


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


# --------------------------------------------------------------------------- servers


def gunicorn_options(args: argparse.Namespace) -> list[str]:
    """The service's own gunicorn settings (listener/gunicorn.conf.py), for every endpoint,
    with this run's overrides."""
    options = ["--workers", str(args.workers), "--worker-class", args.worker_class,
               "--backlog", "2048", "--timeout", "60", "--graceful-timeout", "5",
               "--keep-alive", str(args.keep_alive)]
    if args.worker_class == "gthread":
        options += ["--threads", str(args.threads)]
    return options


def start_servers(args: argparse.Namespace, env: dict[str, str], logdir: Path
                  ) -> dict[str, Server]:
    """Every endpoint of the run, in the order they take turns, ready (a GET of the webhook
    path is answered: 405, nothing stored)."""
    apps = {name: app for name, app in APPS.items() if args.ceiling or name != "unstored"}
    servers = {name: start_gunicorn(name, app, env, logdir / f"{name}.log",
                                    *gunicorn_options(args))
               for name, app in apps.items()}
    for server in servers.values():
        wait_ready(server, PATH, b"HTTP/1.")
    return servers


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


def prepare_stores(args: argparse.Namespace) -> str:
    """The database migrated, its inbox empty (a bench… database only), Redis flushed; the
    database's SQLAlchemy URL."""
    print(f"database {args.database_url}; redis {args.redis_url} (flushed)")
    try:
        sa_url = prepare_database(args.database_url, fresh=False)
    except Exception as exc:  # noqa: BLE001 - psycopg or SQLAlchemy: say which server
        raise SystemExit(f"cannot prepare {args.database_url}: {exc}") from None
    if not sa_url.startswith("postgresql"):
        raise SystemExit("the intake benchmark measures PostgreSQL (its floor endpoint "
                         "writes with psycopg): give a postgresql:// --database-url")
    if database_name(args.database_url).startswith("bench"):
        empty_inbox(args.database_url)  # verify_intake counts this run's events anyway
    flush_redis(args.redis_url)
    return sa_url


def server_settings(args: argparse.Namespace) -> str:
    import gunicorn

    threads = f", threads {args.threads}" if args.worker_class == "gthread" else ""
    return (f"gunicorn {gunicorn.__version__}, worker class {args.worker_class}, "
            f"workers {args.workers}{threads}, keep-alive {args.keep_alive}s, bind 127.0.0.1")


@dataclass
class Phases:
    """The endpoints driven in turns, each phase's CPU measured (harness.CpuMeter)."""

    servers: dict[str, Server]
    events: dict[str, EventFactory]
    meter: CpuMeter
    rounds: int

    def go(self, label: str, coro: Coroutine[Any, Any, None], stats: Stats) -> None:
        mark = stats.mark()
        self.meter.start()
        asyncio.run(coro)
        stats.add_cpu(self.meter.stop())
        n, dt = stats.end_round(mark)
        print(f" {label} {n / dt if dt else 0:.0f}/s", end="", flush=True)

    def closed(self, name: str, connections: int, seconds: float, stats: Stats) -> None:
        self.go(name, closed_loop(self.servers[name].port, self.events[name], connections,
                                  seconds, stats), stats)

    def warm_up(self, connections: int, seconds: float) -> dict[str, Stats]:
        """Every worker connects to PostgreSQL and Redis and imports lazily."""
        warm = {name: Stats(name) for name in self.servers}
        print("  warm-up:", end="")
        for name in self.servers:
            self.closed(name, connections, seconds, warm[name])
        print()
        return warm

    def peak(self, connections: int, seconds: float) -> dict[str, Stats]:
        peak = {name: Stats(name) for name in self.servers}
        order = list(self.servers)
        for i in range(self.rounds):
            print(f"  peak round {i + 1}/{self.rounds}:", end="")
            for name in order[:: 1 if i % 2 == 0 else -1]:
                self.closed(name, connections, seconds / self.rounds, peak[name])
            print()
        return peak

    def half_peak(self, peak: dict[str, Stats], max_connections: int, seconds: float
                  ) -> dict[str, Stats]:
        """Latency at half of each one's own peak (the unstored variant only shows a
        ceiling)."""
        half = {name: Stats(name) for name in ("bare", "floor", "service")}
        rates = {name: peak[name].rate / 2 for name in half}
        for i in range(self.rounds):
            print(f"  open-loop round {i + 1}/{self.rounds}:", end="")
            for name in list(half)[:: 1 if i % 2 == 0 else -1]:
                self.go(f"{name}@{rates[name]:.0f}",
                        open_loop(self.servers[name].port, self.events[name], rates[name],
                                  seconds / self.rounds, max_connections, half[name]),
                        half[name])
            print()
        return half


def run(args: argparse.Namespace) -> int:
    if args.quick:
        warmup, peak_s, open_s, rounds = 1.0, 4.0, 4.0, 2
    else:
        warmup, peak_s, open_s, rounds = 2.0, args.duration, args.open_duration, args.rounds
    tmp = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    try:
        sa_url = prepare_stores(args)
        env = environment(
            without=("RQ_QUEUE", "PROMETHEUS_MULTIPROC_DIR", "FLASK_ENV", "MISMATCH_ENV"),
            DATABASE_URL=args.database_url, REDIS_URL=args.redis_url,
            STRIPE_WEBHOOK_SECRETS=PLATFORM_SECRET, STRIPE_CONNECT_WEBHOOK_SECRETS=CONNECT_SECRET,
            INSTANCE_PATH=str(tmp / "instance"), SECRET_KEY="bench-secret-key",
            PYTHONUNBUFFERED="1")
        servers = start_servers(args, env, tmp)
        run_id = secrets.token_hex(4)
        events = {name: EventFactory(run_id + name[0], CONNECT_SECRET) for name in servers}
        settings = server_settings(args)
        ports = ", ".join(f"{name} :{server.port}" for name, server in servers.items())
        print(f"server: {settings} ({ports}); {os.cpu_count()} CPUs")
        print(f"events: customer.subscription.created from a connected account, "
              f"{events['service'].body_size} bytes, unique ids, signed for the Connect endpoint")
        print(f"load: asyncio in this process. Peak: closed loop, {args.connections} keep-alive "
              f"connections, {peak_s:g}s per endpoint. Latency: open loop, {open_s:g}s per "
              f"series, ≤{args.max_connections} in flight. Endpoints alternate in {rounds} "
              f"rounds so a noisy neighbour hits all alike.\n")
        phases = Phases(servers, events,
                        CpuMeter({server.proc.pid: name for name, server in servers.items()}),
                        rounds)
        warm = phases.warm_up(args.connections, warmup)
        peak = phases.peak(args.connections, peak_s)
        half = phases.half_peak(peak, args.max_connections, open_s)
        print("  in-process (no server, one thread): bare, floor, service", flush=True)
        # Its own queue, so verify_intake below counts the served run's jobs only.
        direct = in_process({name: APPS[name] for name in ("bare", "floor", "service")},
                            {**env, "RQ_QUEUE": "mismatch-in-process"}, tmp)
        ok, verification = verify_intake(
            sa_url, args.redis_url, events["service"].prefix,
            [warm["service"], peak["service"], half["service"]])
        problems = log_lines(servers["service"].log, (" ERROR ", " WARNING ", "[ERROR]"))
        return report(args, settings, rounds, Results(peak, half, direct), ok, verification,
                      problems)
    finally:
        stop_servers(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _server_cpu(stats: Stats) -> float:
    """The server's own CPU µs per answered event (web CPU: what intake's code costs)."""
    return stats.cpu_seconds.get(stats.name, 0.0) / stats.ok * 1e6 if stats.ok else 0.0


@dataclass
class Results:
    peak: dict[str, Stats]  # closed loop, by endpoint
    half: dict[str, Stats]  # open loop at half each one's peak
    direct: dict[str, Spread]  # in-process CPU µs per event

    def share(self, name: str, against: str) -> float:
        """Throughput of `name` as a share of `against`'s."""
        rate = self.peak[against].rate
        return self.peak[name].rate / rate if rate else 0.0

    @property
    def cpu_ratio(self) -> float:
        floor = _server_cpu(self.peak["floor"])
        return _server_cpu(self.peak["service"]) / floor if floor else float("inf")

    def rows(self) -> list[tuple[str, Stats]]:
        rows = [(f"peak (closed loop), {name}", s) for name, s in self.peak.items()]
        return rows + [(f"open loop @ {s.offered_rate:.0f}/s (½ own peak), {name}", s)
                       for name, s in self.half.items()]


def _print_table(results: Results) -> None:
    print(f"\n{'':40}{'events/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'web µs/ev':>11}")
    for label, s in results.rows():
        errs = sum(s.errors.values()) + s.unsent
        cpu = f"{_server_cpu(s):>11.0f}" if label.startswith("peak") else ""
        print(f"{label:<40}{s.rate:>10.0f}{s.pct(50):>9.1f}{s.pct(99):>9.1f}{errs:>8}{cpu}")
    print("  (web µs/ev: the server's own CPU per answered event, all its processes)")
    share = results.share
    print(f"\n{'throughput service / floor':<40}{share('service', 'floor'):>10.1%}")
    print(f"{'web CPU per event service / floor':<40}{results.cpu_ratio:>10.2f}×")
    print(f"{'throughput service / bare':<40}{share('service', 'bare'):>10.1%}")
    print(f"{'throughput floor / bare':<40}{share('floor', 'bare'):>10.1%}   (what verify, "
          f"store and enqueue cost at the least)")
    if "unstored" in results.peak:
        print(f"{'throughput unstored / bare':<40}{share('unstored', 'bare'):>10.1%}   (the "
              f"service with its insert and enqueue\n{'':40}switched off: what the rest of "
              f"intake costs)")


def _print_rounds(results: Results, rounds: int) -> None:
    print(f"\nper round, min / median / max over {rounds} rounds")
    print(f"{'':40}{'events/s':>24}{'p99 ms':>24}")
    for label, s in results.rows():
        print(f"{label:<40}{Spread.of(s.round_rates()).show():>24}"
              f"{Spread.of(s.round_pct(99)).show('.1f'):>24}")
    peak = results.peak
    for name, against in (("service", "floor"), ("service", "bare"), ("floor", "bare")):
        if all(peak[against].round_rates()):
            spread = ratio(peak[name].round_rates(), peak[against].round_rates())
            print(f"{f'throughput {name} / {against}':<40}{spread.show('.1%'):>24}")


def _print_in_process(direct: dict[str, Spread]) -> None:
    print(f"\nin-process, no server, one thread: CPU µs per event, min / median / max of 3 x "
          f"{IN_PROCESS_EVENTS}")
    for name, spread in direct.items():
        print(f"  {name:<38}{spread.show():>24}")
    in_ratio = ratio(direct["service"].values, direct["floor"].values).show(".2f")
    print(f"  {'service / floor':<38}{in_ratio:>24}   (our Python above the floor's, "
          f"without the server's share)")


def _check_targets(results: Results) -> bool:
    print("\ntargets")
    targets = Targets("  {name:<52} {value:>10}   {verdict}")
    targets.check("web CPU per event within 1.5× of the floor's", f"{results.cpu_ratio:.2f}×",
                  results.cpu_ratio <= CPU_RATIO_TARGET)
    share = results.share("service", "floor")
    targets.check("throughput ≥ 2/3 of the floor endpoint's", f"{share:.1%}",
                  share >= FLOOR_SHARE_TARGET)
    half = results.half["service"]
    targets.check(f"service p99 < 50 ms at ½ own peak ({half.offered_rate:.0f}/s)",
                  f"{half.pct(99):.1f} ms",
                  half.pct(99) < P99_TARGET_MS and not half.errors and not half.unsent)
    return targets.all_met


def _print_cpu(results: Results, max_connections: int) -> None:
    print(f"\nCPU during the peak phases ({os.cpu_count()} cores in all)")
    for name, s in results.peak.items():
        print(f"  {name + ':':<9} {_fmt_cpu(s)}")
    noisy = max(s.cpu_seconds.get("other", 0.0) / (s.cpu_wall or 1.0)
                for s in results.peak.values())
    if noisy > 0.15:
        print(f"  WARNING: unrelated processes used up to {noisy:.2f} cores during the "
              "peak phases: figures are disturbed; rerun on an idle machine")
    for s in results.half.values():
        if s.unsent:
            print(f"  note: open loop {s.name} @ {s.offered_rate:.0f}/s: {s.unsent} "
                  f"deliveries never sent (all {max_connections} connections stayed "
                  f"busy: the server cannot sustain this rate); counted as errors")
        elif s.max_lag > 0.01:
            print(f"  note: open loop {s.name} @ {s.offered_rate:.0f}/s: the load generator "
                  f"sent up to {s.max_lag * 1000:.0f} ms late (CPU starved); latency "
                  f"still counts from the scheduled time")


def report(args: argparse.Namespace, settings: str, rounds: int, results: Results, ok: bool,
           verification: str, problems: list[str]) -> int:
    print("\n" + "=" * 80)
    print(f"server: {settings}; {os.cpu_count()} CPUs shared with the load generator")
    _print_table(results)
    if rounds > 1:
        _print_rounds(results, rounds)
    _print_in_process(results.direct)
    met = _check_targets(results)
    _print_cpu(results, args.max_connections)
    print(f"\nverification (service): {verification}")
    if problems:
        print(f"  service log: {len(problems)} warning/error lines, first ones:")
        print("\n".join(f"    {line[:160]}" for line in problems[:5]))
    print("=" * 80)
    if not ok:
        return 2
    return 1 if args.strict and not met else 0


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark webhook intake (real service vs bare Flask, same gunicorn).")
    add_common_flags(parser, database_url=DEFAULT_DATABASE_URL, redis_url=DEFAULT_REDIS_URL,
                     redis_note="FLUSHED first",
                     quick="short phases, 2 rounds (about 40 s in all)", strict=True)
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
    parser.add_argument("--in-process", metavar="APP", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_process:
        return in_process_child(args.in_process)

    received = interrupt_on(via_sigint=True)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        return 128 + (received[0] if received else signal.SIGINT)
    finally:
        stop_servers(10)


if __name__ == "__main__":
    sys.exit(main())
