"""Soak test: the whole service end to end, under faults, checked against an independent
expectation.

    .venv/bin/python benchmarks/soak.py             # 10,000 events, 20 venues (several minutes)
    .venv/bin/python benchmarks/soak.py --quick     # 1,000 events, one of each fault (CI)
    .venv/bin/python benchmarks/soak.py --keep      # leave everything up afterwards

What runs (all on loopback, all started and stopped by this script):

- PostgreSQL database `soak` on the machine's server: DROPPED and recreated on every run,
  migrated (benchmarks/harness.py `prepare_database`);
- a dedicated `redis-server` on a free port without persistence (never the shared 6379);
- gunicorn serving `listener.wsgi:app`, and two `mismatch worker` processes (RQ + sweeper);
- an SMTP server (aiosmtpd) inside this process that records every message and can answer
  451 for a while.

What it does:

1. Generates (seeded) 20 venues with 1-2 admins and their members, and subscriptions of
   every kind (linked, case 1, 2, 3; shared emails, case/space variants, emails of other
   venues' members), each as `customer.created` + `customer.subscription.created`, sometimes
   `.updated`, `.deleted` and `customer.updated`: N distinct Connect events, signed with the
   Connect secret. Venues and members go in through `mismatch venues|members import`.
2. Works out the expected end state with its own small classifier (docs/design.md, rules),
   written against the generated data and not the project's code.
3. Delivers the events from a few keep-alive connections (benchmarks/harness.py `Conn`,
   signed with stripe-python's own signing) in a locally shuffled order, 30% of them twice
   (the second copy anywhere later), retrying like Stripe until a 200.
4. While the service works it SIGKILLs a worker (and its work-horse and scheduler) twice,
   restarting it each time, restarts Redis once (every queued job is lost: the sweeper must
   find the work again), and makes SMTP refuse with 451 for 30 seconds.
5. Waits until the inbox is drained (no event received/processing, no notice pending) and
   compares: every event processed, none failed; every subscription's state and every
   mismatch's case, status and resolution; exactly one email per open mismatch per admin
   (distinct Message-IDs and total messages; X-Mismatch-* headers), at most one for a
   mismatch whose subscription was canceled (whether it was noticed before the cancellation
   depends on the order), none for anything else.

Exit status 0 when everything matches, 1 on any discrepancy, 2 when the setup failed.
Logs and CSVs go to instance/soak/ (kept after the run).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import email
import email.policy
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as benchmarks/soak.py

from benchmarks.harness import (
    BIN,
    ROOT,
    Conn,
    add_common_flags,
    descendants,
    environment,
    gunicorn_command,
    http_answers,
    interrupt_on,
    prepare_database,
    signed_request,
)
from standins.localstripe import free_port

CONNECT_SECRET = "whsec_soak_connect_secret"
PLATFORM_SECRET = "whsec_soak_platform_secret"
API_TOKEN = "soak-api-token"
MAIL_FROM = "Mismatch Soak <mismatch@soak.test>"
# Variables the service reads; the children get ours, never the caller's.
SERVICE_VARS = (
    "DATABASE_URL", "REDIS_URL", "STRIPE_SECRET_KEY", "STRIPE_PLATFORM_ACCOUNT",
    "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRETS", "STRIPE_CONNECT_WEBHOOK_SECRETS",
    "STRIPE_WEBHOOK_TOLERANCE", "MAX_WEBHOOK_BYTES", "SMTP_URL", "MAIL_FROM",
    "PUBLIC_BASE_URL", "SECRET_KEY", "API_TOKEN", "SUPPORT_EMAIL", "JOB_RETRY_INTERVALS",
    "SWEEP_AFTER_SECONDS", "INSTANCE_PATH", "RQ_QUEUE",
    "PROMETHEUS_MULTIPROC_DIR", "FLASK_ENV", "MISMATCH_ENV", "FLASK_APP",
)


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


# =========================================================================== the data


@dataclass
class Member:
    ref: str
    email: str
    customer_id: str | None


@dataclass
class Venue:
    account_id: str
    name: str
    admins: list[str]
    members: list[Member] = field(default_factory=list)


@dataclass
class Sub:
    subscription_id: str
    account_id: str
    customer_id: str
    email: str | None  # the customer's email exactly as the events carry it
    intent: str  # what the generator meant: linked | case1 | case2 | case3
    canceled: bool = False


@dataclass
class Expected:
    """One subscription's expected end state (matching rules 2, 4, 5)."""

    state: str  # linked | mismatch
    case: int | None = None
    candidates: frozenset[str] = frozenset()  # member refs with the customer's email
    linked_ids: frozenset[str] = frozenset()  # their customer ids (case 1)


@dataclass
class World:
    venues: list[Venue]
    subs: list[Sub]
    events: list[dict[str, Any]]  # in "Stripe order" (created ascending)


def _variant(rng: random.Random, address: str) -> str:
    """The same address as a customer might type it: case and spaces change, nothing else."""
    roll = rng.random()
    if roll < 0.15:
        return address.upper()
    if roll < 0.25:
        return f"  {address.title()} "
    return address


class _Generator:
    """The seeded world: venues and their members first, then subscriptions and their events
    until there are enough events (the order of the random draws is the world's identity)."""

    def __init__(self, n_venues: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.ids = itertools.count(1)
        self.base_time = int(time.time()) - 3 * 86400
        self.venues = [self._venue(v) for v in range(n_venues)]
        self.subs: list[Sub] = []
        self.events: list[dict[str, Any]] = []
        self.clock = itertools.count(0, 7)

    def nid(self) -> int:
        return next(self.ids)

    def _venue(self, v: int) -> Venue:
        """A standing membership: linked members, members not linked yet, and a few
        households sharing one email (one linked, one not, or neither)."""
        rng = self.rng
        admins = [f"admin{a}@venue{v:02d}.soak.test" for a in range(rng.choice((1, 1, 2)))]
        venue = Venue(f"acct_1Soak{v:02d}{rng.getrandbits(40):010x}", f"Soak Venue {v:02d}",
                      admins)
        for _ in range(rng.randint(15, 30)):
            n = self.nid()
            local = f"member{n}" if rng.random() > 0.03 else f"straße{n}"
            venue.members.append(Member(
                f"m{n}", f"{local}@venue{v:02d}.soak.test",
                f"cus_SoakOld{n:06d}" if rng.random() < 0.6 else None))
        for _ in range(rng.randint(1, 3)):
            n = self.nid()
            shared = f"household{n}@venue{v:02d}.soak.test"
            venue.members.append(Member(f"m{n}", shared,
                                        f"cus_SoakOld{n:06d}" if rng.random() < 0.5 else None))
            venue.members.append(Member(f"m{self.nid()}", shared.upper(), None))
        return venue

    def outsider_email(self, venue: Venue) -> str:
        if self.rng.random() < 0.3:  # a member of ANOTHER venue: never counts here (rule 4)
            other = self.rng.choice([v for v in self.venues if v is not venue] or [venue])
            if other is not venue:
                taken = {m.email.strip().casefold() for m in venue.members}
                address = self.rng.choice(other.members).email
                if address.strip().casefold() not in taken:
                    return address
        return f"walkin{self.nid()}@elsewhere.soak.test"

    def add_event(self, type_: str, obj: dict[str, Any], account: str, created: int) -> None:
        self.events.append({
            "id": f"evt_1Soak{len(self.events) + 1:08d}", "object": "event",
            "api_version": "2024-06-20", "created": created,
            "data": {"object": obj}, "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "type": type_,
            "account": account,
        })

    def customer_obj(self, cid: str, address: str | None, name: str) -> dict[str, Any]:
        return {"id": cid, "object": "customer", "email": address, "name": name,
                "livemode": False, "metadata": {}, "created": self.base_time}

    def sub_obj(self, sid: str, cid: str, status: str) -> dict[str, Any]:
        return {"id": sid, "object": "subscription", "customer": cid, "status": status,
                "livemode": False, "items": {"object": "list", "data": []},
                "created": self.base_time}

    def _member_for(self, venue: Venue, intent: str, n: int) -> Member:
        """Case 1: a member with a customer ID; case 2: one without; often an existing one."""
        linked = intent == "case1"
        pool = [m for m in venue.members if bool(m.customer_id) == linked]
        if pool and self.rng.random() < (0.7 if linked else 0.5):
            return self.rng.choice(pool)
        member = Member(f"m{n}", f"member{n}@venue{self.venues.index(venue):02d}.soak.test",
                        f"cus_SoakOld{n:06d}" if linked else None)
        venue.members.append(member)
        return member

    def customer_email(self, venue: Venue, intent: str, n: int, cid: str) -> str | None:
        """The email the new customer has, as the intent wants it."""
        if intent == "linked":
            address = f"member{n}@venue{self.venues.index(venue):02d}.soak.test"
            venue.members.append(Member(f"m{n}", address, cid))
            return _variant(self.rng, address)
        if intent in ("case1", "case2"):
            return _variant(self.rng, self._member_for(venue, intent, n).email)
        return None if self.rng.random() < 0.03 else self.outsider_email(venue)

    def subscription(self, remaining: int) -> None:
        """A new customer and subscription, sometimes updated, renamed or canceled."""
        rng = self.rng
        venue = rng.choice(self.venues)
        intent = rng.choices(("linked", "case1", "case2", "case3"), (35, 20, 20, 25))[0]
        n = self.nid()
        cid, sid = f"cus_Soak{n:06d}", f"sub_Soak{n:06d}"
        customer_email = self.customer_email(venue, intent, n, cid)
        sub = Sub(sid, venue.account_id, cid, customer_email, intent)
        self.subs.append(sub)
        t = self.base_time + next(self.clock)
        self.add_event("customer.created", self.customer_obj(cid, customer_email, f"Customer {n}"),
                       venue.account_id, t)
        self.add_event("customer.subscription.created",
                       self.sub_obj(sid, cid, rng.choice(("active", "active", "trialing"))),
                       venue.account_id, t + 1)
        extras = []
        if rng.random() < 0.25:
            extras.append("customer.subscription.updated")
        if rng.random() < 0.08:
            extras.append("customer.updated")
        if rng.random() < 0.12:
            extras.append("customer.subscription.deleted")
        for type_ in extras[: max(0, remaining - 2)]:
            if type_ == "customer.subscription.updated":
                self.add_event(type_, self.sub_obj(sid, cid, rng.choice(("active", "past_due"))),
                               venue.account_id, t + 3)
            elif type_ == "customer.updated":
                self.add_event(type_, self.customer_obj(cid, customer_email,
                                                        f"Customer {n} (renamed)"),
                               venue.account_id, t + 2)
            else:
                sub.canceled = True
                self.add_event(type_, self.sub_obj(sid, cid, "canceled"), venue.account_id,
                               t + 5)

    def rename(self) -> None:
        """A name change for a customer we already have; same email."""
        sub = self.rng.choice(self.subs)
        self.add_event("customer.updated",
                       self.customer_obj(sub.customer_id, sub.email, f"Renamed {self.nid()}"),
                       sub.account_id, self.base_time + next(self.clock))


def generate(n_events: int, n_venues: int, seed: int) -> World:
    world = _Generator(n_venues, seed)
    while len(world.events) < n_events:
        remaining = n_events - len(world.events)
        if remaining < 2:
            world.rename()
        else:
            world.subscription(remaining)
    return World(world.venues, world.subs, world.events)


def normalize(address: str | None) -> str | None:
    """Matching rule 4: trim + casefold, no other rewriting."""
    if address is None:
        return None
    value = address.strip().casefold()
    return value or None


def expectations(world: World) -> dict[str, Expected]:
    """The end state the matching rules give for each subscription, from the generated data."""
    venues = {v.account_id: v for v in world.venues}
    result: dict[str, Expected] = {}
    for sub in world.subs:
        venue = venues[sub.account_id]
        if any(m.customer_id == sub.customer_id for m in venue.members):
            result[sub.subscription_id] = Expected("linked")
            continue
        wanted = normalize(sub.email)
        same = [m for m in venue.members if wanted is not None and normalize(m.email) == wanted]
        linked_ids = frozenset(m.customer_id for m in same if m.customer_id)
        case = 3 if not same else (1 if linked_ids else 2)
        result[sub.subscription_id] = Expected(
            "mismatch", case, frozenset(m.ref for m in same), linked_ids)
    return result


def deliveries(world: World, seed: int, duplicate_share: float, window: int) -> list[int]:
    """Event indexes in delivery order: shuffled within `window` positions of the Stripe
    order, and a share delivered a second time anywhere later."""
    rng = random.Random(seed + 1)
    n = len(world.events)
    keyed = [(i + rng.uniform(0, window), i) for i in range(n)]
    keyed += [(key + rng.uniform(0, n + window - key), i)
              for key, i in keyed if rng.random() < duplicate_share]
    return [i for _, i in sorted(keyed)]


# =========================================================================== processes


def _pdeathsig() -> list[str]:
    """Children die with this process even if it is SIGKILLed (setpriv, Linux)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class Proc:
    """One child process (and everything it forks), started in its own session."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = logdir / f"{name}.log"
        self.popen: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "ab") as fh:
            fh.write(f"\n===== start #{self.starts} at {time.strftime('%H:%M:%S')}\n".encode())
            fh.flush()
            self.popen = subprocess.Popen(
                _pdeathsig() + self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill_tree(self) -> list[int]:
        """SIGKILL the process and every descendant (RQ's work-horse runs in its own
        process group, so a group kill would miss it): a crashed container."""
        if self.popen is None:
            return []
        pids = [self.popen.pid, *descendants(self.popen.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait()
        return pids

    def terminate(self) -> None:
        """SIGTERM to its process group (warm shutdown for RQ, graceful for gunicorn)."""
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def finish(self, deadline: float) -> None:
        """Wait for it until `deadline` (monotonic), then SIGKILL whatever is left."""
        if self.popen is None:
            return
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        self.kill_tree()

    def stop(self, timeout: float = 10.0) -> None:
        self.terminate()
        self.finish(time.monotonic() + timeout)


class Smtp:
    """aiosmtpd on loopback recording every accepted message; answers 451 at RCPT while
    `refuse_until` is in the future."""

    @dataclass
    class Received:
        at: float
        rcpts: tuple[str, ...]
        message_id: str | None
        mismatch_id: str | None
        case: str | None
        account: str | None
        subscription: str | None
        text: str
        multipart: bool

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.lock = threading.Lock()
        self.messages: list[Smtp.Received] = []
        self.refused = 0
        self.refuse_until = 0.0
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def refuse_for(self, seconds: float) -> None:
        self.refuse_until = time.monotonic() + seconds

    @property
    def refusing(self) -> bool:
        return time.monotonic() < self.refuse_until

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if self.refusing:
            with self.lock:
                self.refused += 1
            return "451 4.3.2 soak: not accepting mail right now, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        record = Smtp.Received(
            at=time.monotonic(), rcpts=tuple(a.lower() for a in envelope.rcpt_tos),
            message_id=msg["Message-ID"], mismatch_id=msg["X-Mismatch-Id"],
            case=msg["X-Mismatch-Case"], account=msg["X-Stripe-Account"],
            subscription=msg["X-Stripe-Subscription"],
            text=body.get_content() if body is not None else "",
            multipart=msg.is_multipart())
        with self.lock:
            self.messages.append(record)
        return "250 2.0.0 accepted"

    def snapshot(self) -> list[Smtp.Received]:
        with self.lock:
            return list(self.messages)

    def stop(self) -> None:
        self.controller.stop()


class Redis:
    """A dedicated redis-server without persistence, restartable on the same port."""

    def __init__(self, rundir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = Proc("redis", [
            shutil.which("redis-server") or "redis-server", "--port", str(self.port),
            "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(rundir), "--protected-mode", "yes"], dict(os.environ), rundir)

    def start(self) -> None:
        self.proc.start()
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or not self.proc.alive():
                    raise SetupFailed("redis-server did not start; see "
                                      f"{self.proc.log_path}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.stop(5)


class SetupFailed(Exception):
    pass


# =========================================================================== the database


def recreate_database(args: argparse.Namespace) -> tuple[str, str]:
    """DROP and recreate the soak database, migrated (harness.prepare_database); its URL and
    its SQLAlchemy URL."""
    if not args.db_name.startswith("soak"):
        raise SetupFailed("--db-name must start with 'soak': the database is dropped")
    import psycopg

    url = f"{args.postgres.rstrip('/')}/{args.db_name}"
    try:
        return url, prepare_database(url, fresh=True, guard="soak")
    except psycopg.Error as exc:
        raise SetupFailed(f"PostgreSQL at {args.postgres}: {exc}") from exc


# =========================================================================== delivery


class Sender:
    """Deliver bodies in order from a few keep-alive connections (harness.Conn, one asyncio
    loop in a background thread), at `rate` per second if set; retry like Stripe does (any
    non-2xx or connection error, backing off up to 5 s, up to 40 tries) until a 200."""

    TRIES = 40
    TIMEOUT = 30.0

    def __init__(self, url: str, bodies: list[bytes], connections: int, rate: float) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path
        self.bodies, self.connections, self.rate = bodies, connections, rate
        self.next = itertools.count()
        # Counted by the loop's thread only; the main thread just reads them.
        self.sent = 0
        self.statuses: Counter = Counter()
        self.retries = 0
        self.duplicates_seen = 0
        self.undelivered = 0
        self.last_sent = 0.0
        self.started = 0.0
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()

    def start(self) -> None:
        self.started = time.monotonic()
        self.thread = threading.Thread(target=asyncio.run, args=(self._run(),), name="sender",
                                       daemon=True)
        self.thread.start()

    def done(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()

    async def _run(self) -> None:
        await asyncio.gather(*(self._connection() for _ in range(self.connections)))

    async def _connection(self) -> None:
        conn = Conn(self.host, self.port)
        try:
            while not self.stop.is_set():
                i = next(self.next)
                if i >= len(self.bodies):
                    return
                if self.rate:
                    delay = self.started + i / self.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await self._deliver(conn, self.bodies[i])
        finally:
            conn.close()

    async def _deliver(self, conn: Conn, body: bytes) -> None:
        host = f"{self.host}:{self.port}"
        for attempt in range(self.TRIES):
            if self.stop.is_set():
                return
            status: int | str
            try:
                async with asyncio.timeout(self.TIMEOUT):
                    status, answer = await conn.request(
                        signed_request(host, self.path, body, CONNECT_SECRET))
                duplicate = status == 200 and bool(json.loads(answer).get("duplicate"))
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                conn.close()  # the next try opens a new connection
                status, duplicate = type(exc).__name__, False
            self.statuses[status] += 1
            if status == 200:
                self.sent += 1
                self.duplicates_seen += duplicate
                self.last_sent = time.monotonic()
                return
            self.retries += 1
            await asyncio.sleep(min(0.25 * 2 ** attempt, 5.0))
        self.undelivered += 1


# =========================================================================== the run


@dataclass
class Fault:
    at: float  # fires when this share of `of` is reached
    kind: str  # kill | redis | smtp
    arg: int = 0
    of: str = "events"  # events (processed) | deliveries (sent) | emails (received)
    during: str = ""  # kill: only while the worker runs a job whose id starts with this
    fired_at: float | None = None
    note: str = ""


@dataclass
class Observed:
    """The end state: the database's rows and the messages SMTP received."""

    events: dict[str, Any]
    subs: dict[str, Any]
    mismatches: dict[str, Any]  # by subscription id
    notices: list[Any]
    messages: list[Smtp.Received]


@dataclass
class Emails:
    resends: int = 0  # messages that repeated a Message-ID
    canceled_noticed: int = 0
    expected: int = 0  # for open mismatches


@dataclass
class Report:
    """The soak's report, from what was sent, found and checked."""

    world: World
    expected: dict[str, Expected]
    sender: Sender
    faults: list[Fault]
    found: Observed
    got_kinds: Counter
    emails: Emails

    def counts(self, seed: int, refused: int, exits: list[str]) -> None:
        world, sender, found, emails = self.world, self.sender, self.found, self.emails
        mismatches, messages = found.mismatches, found.messages
        print(f"soak: {len(world.events)} events, {len(world.subs)} subscriptions, "
              f"{len(world.venues)} venues, seed {seed}")
        print(f"  deliveries     {sender.statuses[200]} x 200 of "
              f"{len(sender.bodies)} ({len(sender.bodies) - len(world.events)} duplicates); "
              f"webhook said duplicate {sender.duplicates_seen}; retried {sender.retries} "
              f"({', '.join(f'{k}: {v}' for k, v in sender.statuses.items() if k != 200) or '-'})")
        statuses = Counter(r.status for r in found.events.values())
        print(f"  inbox          {dict(statuses)} of {len(world.events)} sent")
        print("  subscriptions  expected "
              + ", ".join(f"{k} {v}" for k, v in sorted(Counter(
                  e.state if e.state == 'linked' else f'case {e.case}'
                  for e in self.expected.values()).items()))
              + "; got " + ", ".join(f"{k} {v}" for k, v in sorted(self.got_kinds.items())))
        print(f"  mismatches     {len(mismatches)}: "
              f"{sum(1 for m in mismatches.values() if m.status == 'open')} open, "
              f"{sum(1 for m in mismatches.values() if m.status == 'resolved')} resolved "
              f"(canceled)")
        first_copy = self.first_copies()
        resent_after = [m.at - first_copy[m.message_id] for m in messages
                        if m.at > first_copy[m.message_id]]
        print(f"  emails         {len(messages)} messages, {len(first_copy)} distinct "
              f"Message-IDs; {emails.expected} expected for open mismatches, "
              f"{emails.canceled_noticed} for canceled ones (0 or 1 each); same Message-ID "
              f"again: {emails.resends}"
              + (f" (after {', '.join(f'{g:.0f} s' for g in resent_after)})"
                 if resent_after else ""))
        notices = found.notices
        slowest = max((n for n in notices if n.took is not None), key=lambda n: n.took,
                      default=None)
        print(f"  outbox         {dict(Counter(n.status for n in notices))}"
              + (f"; slowest: notification {slowest.id}, {float(slowest.took):.0f} s from "
                 f"queued to sent, {slowest.attempts} attempts" if slowest else ""))
        print("  faults         " + "; ".join(
            f"{f.note} at {f.at:.0%} of the {f.of}" if f.fired_at else f"{f.kind} NOT fired"
            for f in self.faults) + f"; SMTP 451 replies: {refused}")
        if exits:
            print(f"  worker exits   {len(exits)} on their own (restarted): " + "; ".join(exits))

    def first_copies(self) -> dict[str | None, float]:
        """When each Message-ID was first received."""
        first_copy: dict[str | None, float] = {}
        for m in sorted(self.found.messages, key=lambda m: m.at):
            first_copy.setdefault(m.message_id, m.at)
        return first_copy

    def timing(self, send_started: float, drained_at: float | None, t0: float) -> None:
        sender = self.sender
        last_email = max((m.at for m in self.found.messages), default=None)
        last_new = max(self.first_copies().values(), default=None)
        sent_for = (sender.last_sent - send_started) if sender.last_sent else 0.0
        tail = (last_email - sender.last_sent) if last_email and sender.last_sent else None
        print(f"  timing         sending {sent_for:.1f} s "
              f"({len(sender.bodies) / max(sent_for, 1e-9):.0f}/s); last event sent -> last "
              f"email received {'-' if tail is None else f'{tail:.1f} s'}"
              + (f" (last new Message-ID {last_new - sender.last_sent:.1f} s)"
                 if last_new and sender.last_sent and last_new != last_email else "")
              + "; drained "
              f"{'NOT' if drained_at is None else f'{drained_at - send_started:.1f} s'} after "
              f"the first delivery; whole run {time.monotonic() - t0:.1f} s")


def announce(world: World, expected: dict[str, Expected], order: list[int]) -> int:
    """Log what is about to be delivered and expected; the emails expected for open
    mismatches (one per admin)."""
    kinds = Counter(e.state if e.state == "linked" else f"case {e.case}"
                    for e in expected.values())
    admins = {v.account_id: len(v.admins) for v in world.venues}
    expected_emails = sum(admins[s.account_id] for s in world.subs
                          if expected[s.subscription_id].state == "mismatch"
                          and not s.canceled)
    log(f"{len(world.events)} events for {len(world.subs)} subscriptions in "
        f"{len(world.venues)} venues ({sum(len(v.members) for v in world.venues)} members); "
        f"{len(order)} deliveries ({len(order) - len(world.events)} duplicates); expected "
        + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
        + f"; {expected_emails} emails for open mismatches")
    return expected_emails


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rundir = Path(args.run_dir).resolve()
        self.procs: list[Proc] = []
        self.smtp: Smtp | None = None
        self.redis: Redis | None = None
        self.web: Proc | None = None
        self.workers: list[Proc] = []
        self.unexpected_exits: list[str] = []
        self.engine: Any = None
        self.problems: list[str] = []

    # --- setup ---------------------------------------------------------------------------

    def service_env(self, db_url: str) -> dict[str, str]:
        args = self.args
        return environment(
            without=SERVICE_VARS, DATABASE_URL=db_url,
            REDIS_URL=self.redis.url if self.redis else "",
            STRIPE_WEBHOOK_SECRETS=PLATFORM_SECRET,
            STRIPE_CONNECT_WEBHOOK_SECRETS=CONNECT_SECRET,
            SMTP_URL=f"smtp://127.0.0.1:{self.smtp.port if self.smtp else 0}",
            MAIL_FROM=MAIL_FROM, PUBLIC_BASE_URL="http://soak.test",
            SECRET_KEY="soak-secret-key", API_TOKEN=API_TOKEN,
            JOB_RETRY_INTERVALS=args.retry_intervals,
            SWEEP_AFTER_SECONDS=str(args.sweep_after),
            INSTANCE_PATH=str(self.rundir / "instance"),
            PROMETHEUS_MULTIPROC_DIR=str(self.rundir / "prometheus"),
            PYTHONUNBUFFERED="1",
        )

    def setup(self, world: World) -> None:
        args = self.args
        if self.rundir.exists():
            if any(self.rundir.iterdir()) and not (self.rundir / ".soak-run").exists():
                raise SetupFailed(f"{self.rundir} is not empty and not a soak run folder; "
                                  "refusing to empty it")
            shutil.rmtree(self.rundir)
        (self.rundir / "prometheus").mkdir(parents=True)
        (self.rundir / "instance").mkdir()
        (self.rundir / ".soak-run").touch()
        db_url, sa_url = recreate_database(args)
        from sqlalchemy import create_engine

        self.engine = create_engine(sa_url, pool_size=2)
        self.redis = Redis(self.rundir)
        self.redis.start()
        self.procs.append(self.redis.proc)
        self.smtp = Smtp()
        env = self.service_env(db_url)
        self.import_venues(world, env)
        port = free_port()
        self.port, self.base_url = port, f"http://127.0.0.1:{port}"
        self.web = Proc("gunicorn", gunicorn_command(
            port, "listener.wsgi:app", "--workers", str(args.web_workers), "--keep-alive", "30",
            "--timeout", "60", "--graceful-timeout", "5", "--backlog", "2048"), env, self.rundir)
        self.procs.append(self.web)
        self.web.start()
        for n in range(args.workers):
            worker = Proc(f"worker-{n}", [str(BIN / "mismatch"), "worker", "--sweep-every",
                                          str(args.sweep_every)], env, self.rundir)
            self.procs.append(worker)
            self.workers.append(worker)
            worker.start()
        self.wait_web()

    def import_venues(self, world: World, env: dict[str, str]) -> None:
        venues_csv, members_csv = self.rundir / "venues.csv", self.rundir / "members.csv"
        with open(venues_csv, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["account_id", "name", "admin_emails", "livemode"])
            for v in world.venues:
                out.writerow([v.account_id, v.name, ";".join(v.admins), "false"])
        with open(members_csv, "w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(["account_id", "member_ref", "email", "name", "stripe_customer_id"])
            for v in world.venues:
                for m in v.members:
                    out.writerow([v.account_id, m.ref, m.email, f"Member {m.ref}",
                                  m.customer_id or ""])
        for what, path in (("venues", venues_csv), ("members", members_csv)):
            done = subprocess.run([str(BIN / "mismatch"), what, "import", str(path)], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=120)
            if done.returncode:
                raise SetupFailed(f"mismatch {what} import: {done.stderr or done.stdout}")
            log(done.stdout.strip())

    def wait_web(self) -> None:
        deadline = time.monotonic() + 60
        while not http_answers(self.port):
            if time.monotonic() > deadline or not (self.web and self.web.alive()):
                raise SetupFailed("gunicorn did not come up; see "
                                  f"{self.web and self.web.log_path}")
            time.sleep(0.2)

    # --- observing -----------------------------------------------------------------------

    def counts(self) -> tuple[Counter, Counter]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            events = Counter(dict(conn.execute(text(
                "SELECT status, count(*) FROM stripe_events GROUP BY status")).all()))
            notices = Counter(dict(conn.execute(text(
                "SELECT status, count(*) FROM notifications GROUP BY status")).all()))
        return events, notices

    def queue_length(self) -> int | None:
        import redis

        try:
            client = redis.Redis.from_url(self.redis.url, socket_timeout=2)  # type: ignore[union-attr]
            return int(client.llen("rq:queue:mismatch"))
        except redis.RedisError:
            return None

    def supervise(self) -> None:
        """Restart a worker that exited on its own (as a process supervisor would), and
        remember it: that is a finding."""
        for worker in self.workers:
            if worker.popen is not None and not worker.alive():
                code = worker.popen.returncode
                self.unexpected_exits.append(f"{worker.name} exited with {code} at "
                                             f"{time.strftime('%H:%M:%S')}")
                log(f"!! {worker.name} exited on its own (code {code}); restarting it")
                worker.start()
        if self.web and not self.web.alive():
            raise SetupFailed(f"gunicorn died; see {self.web.log_path}")

    def current_job(self, worker: Proc, prefix: str, patience: float = 10.0) -> str | None:
        """The RQ job `worker` runs now; with `prefix`, wait (up to `patience` s) until it
        runs such a job, so the kill lands where the fault means it to."""
        from redis import Redis as Client
        from rq import Queue, Worker

        client = Client.from_url(self.redis.url, socket_timeout=2)  # type: ignore[union-attr]
        queue = Queue("mismatch", connection=client)
        deadline = time.monotonic() + patience
        job = None
        while True:
            try:
                job = next((w.get_current_job_id() for w in Worker.all(queue=queue)
                            if w.pid == worker.pid), None)
            except Exception:  # noqa: BLE001 - RQ internals; kill without knowing
                return None
            if not prefix or (job or "").startswith(prefix) or time.monotonic() > deadline:
                return job
            time.sleep(0.005)

    def fire(self, fault: Fault) -> None:
        assert self.redis is not None and self.smtp is not None
        if fault.kind == "kill":
            worker = self.workers[fault.arg % len(self.workers)]
            job = self.current_job(worker, fault.during)
            pids = worker.kill_tree()
            fault.note = f"SIGKILL {worker.name} pids {pids} (seen running {job or 'no job'})"
            log(f"fault: {fault.note}; restarting it in 1 s")
            time.sleep(1)
            worker.start()
        elif fault.kind == "redis":
            started = time.monotonic()
            self.redis.proc.stop(5)
            time.sleep(self.args.redis_down)
            self.redis.start()
            fault.note = f"Redis restarted (down {time.monotonic() - started:.1f} s)"
            log(f"fault: {fault.note}")
        elif fault.kind == "smtp":
            self.smtp.refuse_for(fault.arg)
            fault.note = f"SMTP refuses with 451 for {fault.arg} s"
            log(f"fault: {fault.note}")
        fault.fired_at = time.monotonic()

    # --- the run -------------------------------------------------------------------------

    def run(self) -> int:
        args = self.args
        t0 = time.monotonic()
        world = generate(args.events, args.venues, args.seed)
        expected = expectations(world)
        order = deliveries(world, args.seed, args.duplicates, args.shuffle_window)
        bodies = [json.dumps(world.events[i], indent=2).encode() for i in order]
        expected_emails = announce(world, expected, order)
        self.setup(world)
        log(f"service up at {self.base_url}; redis {self.redis.url}; "  # type: ignore[union-attr]
            f"smtp 127.0.0.1:{self.smtp.port}; logs in {self.rundir}")  # type: ignore[union-attr]
        faults = self.fault_plan()
        sender = Sender(self.base_url + "/webhooks/stripe/connect", bodies, args.connections,
                        args.rate)
        sender.start()
        send_started = time.monotonic()
        drained_at = self.watch(sender, faults, len(world.events), expected_emails,
                                send_started)
        self.settle()
        ok = self.verify(world, expected, sender, faults, send_started, drained_at, t0)
        if args.keep:
            self.keep_up()
        return 0 if ok else 1

    def watch(self, sender: Sender, faults: list[Fault], total: int, expected_emails: int,
              send_started: float) -> float | None:
        """Fire the faults as their moments come, report every 5 s, until the inbox is
        drained (every delivery sent, every fault fired, nothing pending, SMTP accepting) or
        --timeout; when it drained (None: it did not)."""
        assert self.smtp is not None
        deliveries = len(sender.bodies)
        last_report = 0.0
        deadline = time.monotonic() + self.args.timeout
        send_done_at: float | None = None
        while True:
            time.sleep(0.5)
            self.supervise()
            events, notices = self.counts()
            finished = events["processed"] + events["ignored"] + events["failed"]
            progress = {"events": finished / total, "deliveries": sender.sent / deliveries,
                        "emails": len(self.smtp.snapshot()) / max(1, expected_emails)}
            for fault in faults:
                if fault.fired_at is None and progress[fault.of] >= fault.at:
                    self.fire(fault)
            if send_done_at is None and sender.done():
                send_done_at = time.monotonic()
                log(f"all {deliveries} deliveries sent in {send_done_at - send_started:.1f} s")
            now = time.monotonic()
            if now - last_report >= 5:
                last_report = now
                log(f"sent {sender.sent}/{deliveries}  events {dict(events)}  "
                    f"notices {dict(notices)}  emails {len(self.smtp.snapshot())}  "
                    f"queue {self.queue_length()}")
            busy = events["received"] + events["processing"] + notices["pending"]
            all_fired = all(f.fired_at is not None for f in faults)
            if (send_done_at is not None and all_fired and not busy
                    and sum(events.values()) >= total and not self.smtp.refusing):
                return now
            if now > deadline:
                log(f"!! not drained after {self.args.timeout:.0f} s")
                return None

    def fault_plan(self) -> list[Fault]:
        if self.args.no_faults:
            return []
        refuse = self.args.smtp_refuse
        if self.args.quick:
            # The kill lands on an event job: one landing mid-send holds that notice's Redis
            # lock for 5 minutes (notifications/send.py LOCK_SECONDS), too long for CI.
            return [Fault(0.30, "kill", 0, during="event-"),
                    Fault(0.70, "redis", of="deliveries"),
                    Fault(0.05, "smtp", refuse, of="emails")]
        # Redis goes while Stripe is still delivering (stored events that could not be queued),
        # and the mail faults are timed on the emails: workers take events first and send
        # most notices afterwards (one FIFO queue).
        return [Fault(0.20, "kill", 0, during="event-"), Fault(0.70, "redis", of="deliveries"),
                Fault(0.05, "smtp", refuse, of="emails"), Fault(0.50, "kill", 1, of="emails")]

    def settle(self) -> None:
        """Let duplicate jobs the sweeper queued run out (a late duplicate send would show)."""
        deadline = time.monotonic() + 30
        quiet = 0
        while time.monotonic() < deadline and quiet < 4:
            length = self.queue_length()
            quiet = quiet + 1 if length == 0 else 0
            time.sleep(0.5)

    # --- checking ------------------------------------------------------------------------

    def problem(self, kind: str, detail: str) -> None:
        self.problems.append(f"{kind}: {detail}")

    def verify(self, world: World, expected: dict[str, Expected], sender: Sender,
               faults: list[Fault], send_started: float, drained_at: float | None,
               t0: float) -> bool:
        """Compare the end state with the independent expectation (self.problems) and print
        the report; True when nothing is wrong."""
        assert self.smtp is not None
        found = self.observe()
        self.check_events(world, found, sender)
        got_kinds = self.check_subscriptions(world, expected, found)
        emails = self.check_emails(world, expected, found, faults)
        for n in found.notices:
            if n.status != "sent":
                self.problem(f"notice {n.status}", f"notification {n.id} to {n.recipient}: "
                             f"{(n.last_error or '')[:160]}")
        report = Report(world, expected, sender, faults, found, got_kinds, emails)
        print()
        print("=" * 78)
        report.counts(self.args.seed, self.smtp.refused, self.unexpected_exits)
        report.timing(send_started, drained_at, t0)
        self.print_result()
        print("=" * 78, flush=True)
        return not self.problems

    def observe(self) -> Observed:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            events = {r.event_id: r for r in conn.execute(text(
                "SELECT event_id, status, outcome, attempts, last_error FROM stripe_events"))}
            subs = {r.subscription_id: r for r in conn.execute(text(
                "SELECT account_id, subscription_id, customer_id, state, canceled "
                "FROM subscriptions"))}
            mismatches = {r.subscription_id: r for r in conn.execute(text(
                'SELECT id, account_id, subscription_id, "case", status, resolution, '
                "customer_id, customer_email, linked_customer_id, candidates FROM mismatches"))}
            notices = list(conn.execute(text(
                "SELECT id, mismatch_id, recipient, kind, status, attempts, message_id, "
                "last_error, EXTRACT(EPOCH FROM sent_at - created_at) AS took "
                "FROM notifications")))
        assert self.smtp is not None
        return Observed(events, subs, mismatches, notices, self.smtp.snapshot())

    def check_events(self, world: World, found: Observed, sender: Sender) -> None:
        """All stored, all processed, none failed; every delivery answered 200."""
        for event in world.events:
            row = found.events.get(event["id"])
            if row is None:
                self.problem("event lost", event["id"])
            elif row.status != "processed":
                self.problem(f"event {row.status}",
                             f"{event['id']} {event['type']} attempts={row.attempts} "
                             f"{(row.last_error or '')[:160]}")
        if sender.undelivered:
            self.problem("delivery", f"{sender.undelivered} deliveries never got a 200")

    def check_subscriptions(self, world: World, expected: dict[str, Expected],
                            found: Observed) -> Counter:
        """Subscriptions and mismatches against the expectation; the kinds found."""
        by_sub = {s.subscription_id: s for s in world.subs}
        got_kinds: Counter = Counter()
        for sid, want in expected.items():
            sub = by_sub[sid]
            row, mm = found.subs.get(sid), found.mismatches.get(sid)
            if row is None:
                self.problem("subscription missing", sid)
                continue
            if row.canceled != sub.canceled:
                self.problem("canceled flag", f"{sid}: {row.canceled}, expected {sub.canceled}")
            if want.state == "linked":
                got_kinds["linked"] += row.state == "linked"
                if row.state != "linked" or mm is not None:
                    self.problem("should be linked", f"{sid}: state {row.state}, mismatch "
                                 f"{mm and (mm.case, mm.status)}")
                continue
            if row.state != "mismatch" or mm is None:
                self.problem("mismatch missing", f"{sid}: state {row.state} (expected case "
                             f"{want.case})")
                continue
            got_kinds[f"case {mm.case}"] += 1
            self.check_mismatch(sub, want, mm)
        for sid in sorted(set(found.mismatches) - set(expected))[:5]:
            self.problem("unexpected mismatch", sid)
        return got_kinds

    def check_mismatch(self, sub: Sub, want: Expected, mm: Any) -> None:
        sid = sub.subscription_id
        if mm.case != want.case:
            self.problem("wrong case", f"{sid} ({sub.intent}): case {mm.case}, expected "
                         f"{want.case}")
        want_status = ("resolved", "canceled") if sub.canceled else ("open", None)
        if (mm.status, mm.resolution) != want_status:
            self.problem("wrong status", f"{sid}: {mm.status}/{mm.resolution}, expected "
                         f"{want_status[0]}/{want_status[1]}")
        if mm.customer_id != sub.customer_id or mm.account_id != sub.account_id:
            self.problem("wrong ids", f"{sid}: {mm.account_id} {mm.customer_id}")
        if mm.customer_email != sub.email:
            self.problem("customer email", f"{sid}: {mm.customer_email!r} != {sub.email!r}")
        refs = frozenset(c.get("member_ref") for c in (mm.candidates or []))
        if refs != want.candidates:
            self.problem("candidates", f"{sid}: {sorted(refs)} != {sorted(want.candidates)}")
        if want.case == 1 and mm.linked_customer_id not in want.linked_ids:
            self.problem("linked customer", f"{sid}: {mm.linked_customer_id} not in "
                         f"{sorted(want.linked_ids)}")
        if want.case != 1 and mm.linked_customer_id is not None:
            self.problem("linked customer", f"{sid}: {mm.linked_customer_id} on case "
                         f"{want.case}")

    def emails_by_pair(self, world: World, expected: dict[str, Expected], found: Observed
                       ) -> dict[tuple[str, str], list[Smtp.Received]]:
        """Every message checked (headers, body, recipients), by (mismatch id, recipient)."""
        venues = {v.account_id: v for v in world.venues}
        by_sub = {s.subscription_id: s for s in world.subs}
        mismatch_by_id = {str(m.id): m for m in found.mismatches.values()}
        per_pair: dict[tuple[str, str], list[Smtp.Received]] = defaultdict(list)
        for msg in found.messages:
            mm = mismatch_by_id.get(msg.mismatch_id or "")
            if mm is None:
                self.problem("unexpected email", f"X-Mismatch-Id {msg.mismatch_id} to "
                             f"{msg.rcpts}")
                continue
            want, sub = expected.get(mm.subscription_id), by_sub.get(mm.subscription_id)
            if want is None or sub is None:
                continue
            if msg.case != str(want.case):
                self.problem("email case", f"{mm.subscription_id}: X-Mismatch-Case "
                             f"{msg.case}, expected {want.case}")
            if msg.subscription != sub.subscription_id or msg.account != sub.account_id:
                self.problem("email headers", f"mismatch {mm.id}: {msg.account} "
                             f"{msg.subscription}")
            if not msg.multipart or sub.subscription_id not in msg.text \
                    or sub.customer_id not in msg.text:
                self.problem("email body", f"mismatch {mm.id}: text part lacks the IDs")
            admins = set(venues[sub.account_id].admins)
            for rcpt in msg.rcpts:
                if rcpt not in admins:
                    self.problem("email recipient", f"mismatch {mm.id} to {rcpt}")
                per_pair[(str(mm.id), rcpt)].append(msg)
        return per_pair

    def check_emails(self, world: World, expected: dict[str, Expected], found: Observed,
                     faults: list[Fault]) -> Emails:
        """Exactly one per open mismatch per admin, at most one for a canceled one."""
        per_pair = self.emails_by_pair(world, expected, found)
        venues = {v.account_id: v for v in world.venues}
        by_sub = {s.subscription_id: s for s in world.subs}
        tally = Emails()
        for sid, want in expected.items():
            mm = found.mismatches.get(sid)
            if want.state != "mismatch" or mm is None:
                continue
            for admin in venues[by_sub[sid].account_id].admins:
                distinct = {m.message_id for m in per_pair.get((str(mm.id), admin), [])}
                tally.resends += len(per_pair.get((str(mm.id), admin), [])) - len(distinct)
                if by_sub[sid].canceled:
                    tally.canceled_noticed += len(distinct)
                    if len(distinct) > 1:
                        self.problem("duplicate email", f"{sid} to {admin}: {len(distinct)}")
                    continue
                tally.expected += 1
                if len(distinct) != 1:
                    self.problem("email count", f"{sid} (mismatch {mm.id}) to {admin}: "
                                 f"{len(distinct)} distinct messages, expected 1")
        kills = sum(1 for f in faults if f.kind == "kill" and f.fired_at is not None)
        if tally.resends > kills:
            self.problem("resent emails", f"{tally.resends} messages repeated a Message-ID "
                         f"(at most {kills} expected: one per worker SIGKILL)")
        return tally

    def print_result(self) -> None:
        if not self.problems:
            print("  RESULT         PASS: every event processed, every mismatch right, one "
                  "email per mismatch per admin")
            return
        kinds = Counter(p.split(":", 1)[0] for p in self.problems)
        print(f"  RESULT         FAIL: {len(self.problems)} discrepancies "
              f"({', '.join(f'{k}: {v}' for k, v in kinds.items())})")
        shown: Counter = Counter()
        for p in self.problems:
            kind = p.split(":", 1)[0]
            shown[kind] += 1
            if shown[kind] <= 5:
                print(f"    - {p}")


    def keep_up(self) -> None:
        log(f"--keep: service {self.base_url}, redis {self.redis and self.redis.url}, "
            f"smtp 127.0.0.1:{self.smtp and self.smtp.port}, database {self.args.db_name}, "
            f"logs {self.rundir}. Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

    def cleanup(self) -> None:
        """Stop everything this run started: SIGTERM all, wait up to 10 s, SIGKILL the rest."""
        redis = [self.redis.proc] if self.redis is not None else []
        for group in ([p for p in self.procs if p not in redis], redis):  # Redis last
            for proc in group:
                proc.terminate()
            deadline = time.monotonic() + 10
            for proc in group:
                try:
                    proc.finish(deadline)
                except Exception as exc:  # noqa: BLE001 - stop the rest anyway
                    log(f"could not stop {proc.name}: {exc}")
        if self.smtp is not None:
            self.smtp.stop()
        if self.engine is not None:
            self.engine.dispose()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=None, help="distinct events (10000)")
    parser.add_argument("--venues", type=int, default=20)
    add_common_flags(parser, quick="1,000 events, one of each fault, 10 s SMTP refusal (CI)")
    parser.add_argument("--keep", action="store_true",
                        help="leave everything running after the report until Ctrl-C")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--duplicates", type=float, default=0.30,
                        help="share of events delivered twice")
    parser.add_argument("--shuffle-window", type=int, default=400,
                        help="how many positions an event may move from Stripe's order")
    parser.add_argument("--connections", "--threads", dest="connections", type=int, default=4,
                        help="keep-alive delivery connections (--threads: its former name)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="deliveries per second (0: as fast as the service takes them)")
    parser.add_argument("--workers", type=int, default=2, help="`mismatch worker` processes")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432",
                        help="PostgreSQL server URL (no database)")
    parser.add_argument("--db-name", default="soak", help="dropped and recreated every run")
    parser.add_argument("--run-dir", default=str(ROOT / "instance" / "soak"),
                        help="logs and CSVs (emptied at the start)")
    parser.add_argument("--retry-intervals", default="1,2,4,8,16,32",
                        help="JOB_RETRY_INTERVALS for the service")
    parser.add_argument("--sweep-after", type=int, default=5, help="SWEEP_AFTER_SECONDS")
    parser.add_argument("--sweep-every", type=float, default=5.0,
                        help="`mismatch worker --sweep-every`")
    parser.add_argument("--smtp-refuse", type=int, default=None,
                        help="seconds SMTP answers 451 (30; 10 with --quick)")
    parser.add_argument("--redis-down", type=float, default=2.0,
                        help="seconds Redis stays down on its restart")
    parser.add_argument("--no-faults", action="store_true", help="a clean run, for comparison")
    parser.add_argument("--timeout", type=float, default=None,
                        help="give up waiting for the drain after this many seconds")
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 1000 if args.quick else 10000
    if args.smtp_refuse is None:
        args.smtp_refuse = 10 if args.quick else 30
    if args.timeout is None:
        args.timeout = 150.0 if args.quick else 1200.0
    return args


def main(argv: list[str] | None = None) -> int:
    soak = Soak(parse_args(argv))
    interrupt_on(signal.SIGTERM)
    try:
        return soak.run()
    except SetupFailed as exc:
        log(f"setup failed: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        soak.cleanup()


if __name__ == "__main__":
    sys.exit(main())
