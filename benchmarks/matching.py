#!/usr/bin/env python
"""Matching throughput benchmark: worker events/s at 1,000 / 100,000 / 1,000,000 members, in
the same run as a baseline (the same worker, one event per transaction) and the floor (the
same database work as raw set-based SQL).

    .venv/bin/python benchmarks/matching.py              # PostgreSQL + Redis on 127.0.0.1
    .venv/bin/python benchmarks/matching.py --quick      # smaller sizes, fewer events
    .venv/bin/python benchmarks/matching.py --sqlite     # SQLite files instead of PostgreSQL
    .venv/bin/python benchmarks/matching.py --help

Data. Each size N gets its own schema bench_<N> (SQLite: its own file), migrated and
bulk-loaded with N members over --venues venues (70% with a Stripe customer ID, each of those
mirrored in stripe_customers), then ANALYZEd. K `customer.subscription.created` Connect events
per size are stored as the intake stores them (a quarter each: linked customer, case 1, 2, 3;
every customer mirrored; emails differing in case and spaces; case-3 emails of another
venue's member or of nobody). Venues have no admin emails: the figures measure matching, not
mail.

Rounds (--rounds). Each round runs every method over all K events of every size, in chunks of
--chunk events that alternate between the sizes (so a change in the host's load hits every
size alike); before a chunk its events are inserted into the inbox.

- worker: the chunk's events enqueued (workers.queue.enqueue) and ONE worker process of the
  class `mismatch worker` (workers.service.MismatchWorker, burst mode) drains the queue with
  the service's EVENTS_PER_BATCH: each job handles its event and up to EVENTS_PER_BATCH - 1
  other fresh ones in one transaction and takes their jobs off the queue. A fresh worker
  first handles 4 warm-up events of its own (untimed, then undone), as a running worker has
  compiled its statements. Events/s is the chunk's events handled over the wall time from
  the start of its first job to the end of its last; with it, its jobs, its time in
  workers.matching.inbox.run and in discard_jobs, its statements and round trips, its CPU
  and its PostgreSQL backend's CPU.
- baseline: the same worker with EVENTS_PER_BATCH=1: what the service did before batching.
- floor (PostgreSQL only): floor_batch, the same reads and writes as set-based statements on
  one raw psycopg connection, one transaction per --batch events (no ORM, no RQ).
- RQ alone: the same worker class draining --noop-jobs jobs that do nothing: RQ's own cost.

After every pass every event's outcome, subscription and mismatch is checked against what the
generated data implies (verify) and RQ's failed registry must be empty. After the rounds, per
size: TWO workers drain the same chunks at once (same end state, no failed job, no deadlock
or error in their logs); then workers.matching.inbox.handle_events in this process, one event
and --batch events at a time, counting SQL statements and EXPLAINing them to show whether the
member and mirror lookups use their indexes.

Stripe API calls are counted (workers.stripe_side.api.StripeApi.calls) against localstripe
(standins.localstripe), so an API read would be made and counted if matching wanted one: 0
per event with the customer mirrored. Platform events whose customers are NOT mirrored, each
handled alone, must cost at most 1 call: the first sighting reads and mirrors the customer,
the repeat reads nothing, except for a customer Stripe does not know (read again; it waits as
`customer_unknown`).

Figures are min / median / max over the rounds; worker/baseline and worker/floor are ratios
taken round by round. Targets: >= 300 events/s for the worker at every size in its lowest
round; <= 20% slower at the largest size than at the smallest (medians); two workers reach
the expected end state; the lookups use indexes; the Stripe calls above. Exit 1 with
--strict when a target is missed, and whenever the results are wrong (the figures would mean
nothing). The schemas / files are dropped at the end unless --keep-data; the RQ queue
--queue is emptied, with its registries.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from standins.localstripe import LocalStripe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as benchmarks/matching.py

from benchmarks.harness import (  # noqa: E402
    ROOT,
    Spread,
    Targets,
    add_common_flags,
    environment,
    prepare_database,
    processes,
    ratio,
)
from standins import events as payloads  # noqa: E402

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/bench_matching"
DEFAULT_REDIS = "redis://127.0.0.1:6379/10"
DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000, 50_000)
PLATFORM_ACCOUNT = "acct_1BenchPlatform0000"
TARGET_EVENTS_PER_S = 300.0
TARGET_MAX_SLOWDOWN = 0.20
DEFAULT_BATCH = 100  # config's EVENTS_PER_BATCH default (not imported: no app code at load)
KINDS = ("linked", "case_1", "case_2", "case_3")
CUSTOMER_UNKNOWN = "customer_unknown"  # db.CUSTOMER_UNKNOWN
NO_EMAIL_NOTE = "customer has no email"  # workers.matching.classify.NO_EMAIL_NOTE
TS = "2024-01-01 00:00:00+00"
TS_SQLITE = "2024-01-01 00:00:00.000000"
EMAIL_DOMAIN = "bench.example"
# Tables whose size grows with the member count: their lookups must be index lookups.
SCALING_TABLES = ("members", "stripe_customers")
METHODS = ("worker", "baseline", "floor")
# waiting_for of inbox rows the workers must not take as fresh events yet: a chunk's events
# until every worker is warm, and the warm-up events (inbox's fresh-event query skips
# rows that wait for something).
HELD = "bench:held"
WARM_UP = "bench:warm-up"
# What a worker's log must never say in a run that should go smoothly.
LOG_TROUBLE = re.compile(r"deadlock|error|exception|traceback|fail", re.IGNORECASE)


# --- the generated data -----------------------------------------------------------------


def account_of(venue: int) -> str:
    return f"acct_1Bench{venue:010d}"


def member_email(i: int) -> str:
    # Every 7th member has a mixed-case address: rule 4 compares normalized emails.
    return f"Member{i}@Bench.Example" if i % 7 == 0 else f"member{i}@{EMAIL_DOMAIN}"


def member_customer(i: int) -> str | None:
    return f"cus_m{i:08d}" if i % 10 < 7 else None  # 70% of members are linked


@dataclass
class Expected:
    """What processing one generated event must conclude."""

    event_id: str
    subscription_id: str
    customer_id: str
    account_id: str | None
    outcome: str
    member_ref: str | None = None  # the linked member, or the one candidate of case 1/2
    linked_customer_id: str | None = None
    note: str | None = None
    api_calls: int = 0
    status: str = "processed"  # the inbox row's status afterwards


@dataclass
class Batch:
    events: list[dict[str, Any]] = field(default_factory=list)  # stripe_events rows
    expected: dict[str, Expected] = field(default_factory=dict)
    customers: list[tuple] = field(default_factory=list)  # new stripe_customers rows
    # Per worker process (two at most at once): one event of each kind, handled before the
    # timed jobs and then forgotten, so the timed jobs run on warm statement caches.
    warm_ups: list[list[dict[str, Any]]] = field(default_factory=list)

    def add(self, row: dict[str, Any], expected: Expected) -> None:
        self.events.append(row)
        self.expected[row["event_id"]] = expected


def event_row(*, event_id: str, type_: str, account: str | None, created: int,
              subscription_id: str, customer_id: str, status: str = "active") -> dict[str, Any]:
    """An inbox row as the intake stores it (listener/webhooks.py)."""
    payload = payloads.event(type_, payloads.subscription(subscription_id, customer_id, status),
                             account=account, created=created, event_id=event_id)
    return dict(event_id=event_id, endpoint="connect" if account else "platform",
                account_id=account, livemode=False, type=type_, created=created,
                payload=json.dumps(payload), status="received", attempts=0)


def make_batch(size: int, events: int, venues: int, seed: int) -> Batch:
    """K events spread over the kinds; customers of cases 1-3 are new and mirrored here."""
    rng = random.Random(seed * 1_000_003 + size)
    batch = Batch()
    created0 = 1_700_000_000

    def pick(linked: bool | None) -> int:
        while True:
            i = rng.randrange(size)
            if linked is None or (member_customer(i) is not None) == linked:
                return i

    for j in range(events):
        kind = KINDS[j % len(KINDS)]
        event_id, sub_id = f"evt_bench{j:07d}", f"sub_bench{j:07d}"
        customer = f"cus_e{j:07d}"
        if kind == "linked":
            i = pick(True)
            account, customer = account_of(i % venues), member_customer(i)
            exp = Expected(event_id, sub_id, customer, account, "linked", member_ref=f"m{i:08d}")
        elif kind in ("case_1", "case_2"):
            i = pick(kind == "case_1")
            account = account_of(i % venues)
            email = member_email(i)
            if j % 3 == 0:  # as a customer may type it: other case, stray spaces
                email = f"  {email.upper()} "
            batch.customers.append((account, customer, email))
            exp = Expected(event_id, sub_id, customer, account, kind, member_ref=f"m{i:08d}",
                           linked_customer_id=member_customer(i))
        else:
            i = pick(None)
            if (j // len(KINDS)) % 2:  # a member's email, but in ANOTHER venue (rule 4)
                account = account_of((i + 1) % venues) if venues > 1 else account_of(0)
                email = member_email(i) if venues > 1 else f"stranger{j}@{EMAIL_DOMAIN}"
            else:
                account, email = account_of(i % venues), f"stranger{j}@{EMAIL_DOMAIN}"
            batch.customers.append((account, customer, email))
            exp = Expected(event_id, sub_id, customer, account, "case_3")
        batch.add(event_row(event_id=event_id, type_="customer.subscription.created",
                            account=account, created=created0 + j, subscription_id=sub_id,
                            customer_id=customer), exp)
    samples = [next(e for e in batch.expected.values() if e.outcome == kind) for kind in KINDS]
    for k in range(2):
        batch.warm_ups.append([
            {**event_row(event_id=f"evt_warm{k}x{n}", type_="customer.subscription"
                         ".created", account=e.account_id, created=created0 - 10 + n,
                         subscription_id=f"sub_warm{k}x{n}", customer_id=e.customer_id),
             "waiting_for": WARM_UP} for n, e in enumerate(samples)])
    return batch


# --- database ---------------------------------------------------------------------------


class BenchDb:
    """One size's data: its own PostgreSQL schema (search_path set in the URL) or SQLite file,
    so every size stays loaded and the timed runs can alternate between sizes."""

    def __init__(self, base_url: str, size: int, env: dict[str, str]) -> None:
        from sqlalchemy.engine import make_url

        from config import load_config

        self.size = size
        base = load_config({**env, "DATABASE_URL": base_url}).database_url
        self.is_sqlite = base.startswith("sqlite")
        if self.is_sqlite:
            path = Path(base.split("///", 1)[1])
            self.path: Path | None = path.with_name(f"{path.stem}-{size}{path.suffix}")
            self.schema = None
            self.url = f"sqlite:///{self.path}"
        else:
            self.path = None
            self.schema = f"bench_{size}"
            parsed = make_url(base)
            self.base_url = parsed.render_as_string(hide_password=False)
            self.url = parsed.update_query_dict(
                {"options": f"-csearch_path={self.schema}"}).render_as_string(hide_password=False)

    def prepare(self) -> None:
        """An empty, migrated database for this size (dropping what a previous run left)."""
        self.drop()
        if self.schema:
            from sqlalchemy import create_engine, text

            engine = create_engine(self.base_url)
            with engine.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA {self.schema}"))
            engine.dispose()
        from db import upgrade

        upgrade(self.url)

    def drop(self) -> None:
        if self.path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return
        from sqlalchemy import create_engine, text

        engine = create_engine(self.base_url)
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE"))
        engine.dispose()

    def database(self) -> Any:
        from db import Database

        return Database(self.url)

    def load(self, size: int, venues: int, batch: Batch) -> None:
        """Venues, N members, a mirror row per member customer and the batch's customers."""
        database = self.database()
        try:
            venue_rows = [(account_of(v), f"Bench venue {v}") for v in range(venues)]
            if self.is_sqlite:
                self._load_sqlite(database, size, venues, venue_rows, batch)
            else:
                self._load_postgres(database, size, venues, venue_rows, batch)
        finally:
            database.dispose()

    @staticmethod
    def _member_rows(size: int, venues: int, venue_ids: list[int], batch: Batch):
        for i in range(size):
            email = member_email(i)
            cus = member_customer(i)
            yield ("m", venue_ids[i % venues], f"m{i:08d}", email, email.strip().casefold(),
                   f"Member {i}", cus)
            if cus is not None:
                yield ("c", account_of(i % venues), cus, email, f"Member {i}")
        for account, customer, email in batch.customers:
            yield ("c", account, customer, email, "Bench Customer")

    def _load_postgres(self, database: Any, size: int, venues: int,
                       venue_rows: list[tuple[str, str]], batch: Batch) -> None:
        raw = database.engine.raw_connection()
        try:
            conn = raw.driver_connection
            with conn.cursor() as cur:
                venue_ids = []
                for account, name in venue_rows:
                    cur.execute(
                        "INSERT INTO venues (account_id, name, admin_emails, livemode, digest,"
                        " created_at, updated_at) VALUES (%s, %s, '[]', false, false, %s, %s)"
                        " RETURNING id", (account, name, TS, TS))
                    venue_ids.append(cur.fetchone()[0])
                members, customers = [], []
                with cur.copy(
                    "COPY members (venue_id, member_ref, email, email_normalized, name,"
                    " stripe_customer_id, created_at, updated_at) FROM STDIN"
                ) as mcopy:
                    for row in self._member_rows(size, venues, venue_ids, batch):
                        if row[0] == "m":
                            _, vid, ref, email, norm, name, cus = row
                            members.append(f"{vid}\t{ref}\t{email}\t{norm}\t{name}\t"
                                           f"{cus or chr(92) + 'N'}\t{TS}\t{TS}\n")
                            if len(members) >= 50_000:
                                mcopy.write("".join(members))
                                members.clear()
                        else:
                            _, acct, cus, email, name = row
                            customers.append(f"{acct}\tf\t{cus}\t{email}\t{name}\tf\t1\t{TS}\n")
                    mcopy.write("".join(members))
                with cur.copy(
                    "COPY stripe_customers (account_id, livemode, customer_id, email, name,"
                    " deleted, last_event_created, updated_at) FROM STDIN"
                ) as ccopy:
                    for start in range(0, len(customers), 50_000):
                        ccopy.write("".join(customers[start:start + 50_000]))
            conn.commit()
            conn.autocommit = True
            conn.execute("ANALYZE")
            conn.autocommit = False
        finally:
            raw.close()

    def _load_sqlite(self, database: Any, size: int, venues: int,
                     venue_rows: list[tuple[str, str]], batch: Batch) -> None:
        raw = database.engine.raw_connection()
        try:
            conn = raw.driver_connection
            cur = conn.cursor()
            cur.execute("BEGIN")
            venue_ids = []
            for account, name in venue_rows:
                cur.execute(
                    "INSERT INTO venues (account_id, name, admin_emails, livemode, digest,"
                    " created_at, updated_at) VALUES (?, ?, '[]', 0, 0, ?, ?)",
                    (account, name, TS_SQLITE, TS_SQLITE))
                venue_ids.append(cur.lastrowid)
            members, customers = [], []

            def flush_members() -> None:
                cur.executemany(
                    "INSERT INTO members (venue_id, member_ref, email, email_normalized, name,"
                    " stripe_customer_id, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?)",
                    members)
                members.clear()

            for row in self._member_rows(size, venues, venue_ids, batch):
                if row[0] == "m":
                    members.append((*row[1:], TS_SQLITE, TS_SQLITE))
                    if len(members) >= 50_000:
                        flush_members()
                else:
                    customers.append((row[1], 0, *row[2:], 0, 1, TS_SQLITE))
            flush_members()
            cur.executemany(
                "INSERT INTO stripe_customers (account_id, livemode, customer_id, email, name,"
                " deleted, last_event_created, updated_at) VALUES (?,?,?,?,?,?,?,?)", customers)
            cur.execute("COMMIT")
            cur.execute("ANALYZE")
            cur.close()
        finally:
            raw.close()

    def insert_events(self, rows: list[dict[str, Any]], waiting_for: str | None = None
                      ) -> None:
        from sqlalchemy import insert

        from db import StripeEvent, utcnow

        database = self.database()
        try:
            now = utcnow()
            with database.engine.begin() as conn:
                conn.execute(insert(StripeEvent), [
                    {"waiting_for": waiting_for, **r, "received_at": now} for r in rows])
        finally:
            database.dispose()

    def release_held(self) -> None:
        """Let the workers take the held chunk as fresh events."""
        from sqlalchemy import update

        from db import StripeEvent

        database = self.database()
        try:
            with database.engine.begin() as conn:
                conn.execute(update(StripeEvent).where(StripeEvent.waiting_for == HELD)
                             .values(waiting_for=None))
        finally:
            database.dispose()

    def events_done(self, event_ids: list[str]) -> int:
        database = self.database()
        try:
            return events_done(database, event_ids)
        finally:
            database.dispose()

    def reset_results(self) -> None:
        """Forget what processing did and empty the inbox, so the same events can be stored
        and processed again."""
        from sqlalchemy import text

        database = self.database()
        try:
            with database.engine.begin() as conn:
                for table in ("notifications", "mismatches", "subscriptions", "stripe_events"):
                    conn.execute(text(f"DELETE FROM {table}"))
            if not self.is_sqlite:
                with database.engine.connect().execution_options(
                        isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text("VACUUM ANALYZE notifications, mismatches, subscriptions,"
                                      " stripe_events"))
        finally:
            database.dispose()

    @property
    def psycopg_url(self) -> str:
        """This size's PostgreSQL URL as libpq takes it (search_path included)."""
        from sqlalchemy.engine import make_url

        return make_url(self.url).set(drivername="postgresql").render_as_string(
            hide_password=False)


def events_done(database: Any, event_ids: list[str]) -> int:
    """How many of these inbox events are handled (processed or ignored)."""
    from sqlalchemy import func, select

    from db import EventStatus, StripeEvent

    with database.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(StripeEvent).where(
            StripeEvent.event_id.in_(event_ids),
            StripeEvent.status.in_((EventStatus.PROCESSED, EventStatus.IGNORED)))).scalar_one()


def forget_warm_up(database: Any, event_ids: list[str]) -> None:
    """Undo what handling the warm-up events wrote, and hold them again for the next worker
    process (they are named evt_warm… / sub_warm…)."""
    from sqlalchemy import delete, update

    from db import EventStatus, Mismatch, StripeEvent, Subscription

    subscriptions = ["sub" + event_id[3:] for event_id in event_ids]
    with database.session() as session:
        session.execute(delete(Mismatch).where(Mismatch.subscription_id.in_(subscriptions)))
        session.execute(delete(Subscription)
                        .where(Subscription.subscription_id.in_(subscriptions)))
        session.execute(update(StripeEvent).where(StripeEvent.event_id.in_(event_ids)).values(
            status=EventStatus.RECEIVED, outcome=None, attempts=0, last_error=None,
            processed_at=None, waiting_for=WARM_UP))


# --- checking results -------------------------------------------------------------------


@dataclass
class Stored:
    """What processing left in the database for the generated events."""

    events: dict[str, tuple[Any, Any, Any]]  # event_id -> (status, outcome, attempts)
    mismatches: dict[tuple[str, str], tuple]  # (account, subscription) -> case, status, ...
    subscriptions: dict[tuple[str, str], tuple[Any, Any]]  # -> (state, member_ref)
    notices: int


def read_stored(db_url: str, expected: dict[str, Expected]) -> Stored:
    from sqlalchemy import func, select
    from sqlalchemy.orm import aliased

    from db import Database, Member, Mismatch, Notification, StripeEvent, Subscription

    database = Database(db_url)
    try:
        with database.session() as s:
            events = {e: (st, out, att) for e, st, out, att in s.execute(
                select(StripeEvent.event_id, StripeEvent.status, StripeEvent.outcome,
                       StripeEvent.attempts)
                .where(StripeEvent.event_id.in_(list(expected))))}
            m = aliased(Member)
            subs_wanted = [e.subscription_id for e in expected.values()]
            mismatches = {(a, sub): rest for a, sub, *rest in s.execute(
                select(Mismatch.account_id, Mismatch.subscription_id, Mismatch.case,
                       Mismatch.status, m.member_ref, Mismatch.linked_customer_id,
                       Mismatch.note)
                .outerjoin(m, Mismatch.member_id == m.id)
                .where(Mismatch.subscription_id.in_(subs_wanted)))}
            subs = {(a, sub): (state, ref) for a, sub, state, ref in s.execute(
                select(Subscription.account_id, Subscription.subscription_id, Subscription.state,
                       m.member_ref).outerjoin(m, Subscription.member_id == m.id)
                .where(Subscription.subscription_id.in_(subs_wanted)))}
            notices = s.scalar(select(func.count()).select_from(Notification))
    finally:
        database.dispose()
    return Stored(events, {k: tuple(v) for k, v in mismatches.items()}, subs, notices or 0)


def check_event(exp: Expected, stored: Stored) -> str | None:
    """What is wrong with one event's results, or None."""
    status, outcome, attempts = stored.events.get(exp.event_id, (None, None, None))
    if status != exp.status or outcome != exp.outcome or attempts != 1:
        return (f"{exp.event_id}: status={status} outcome={outcome} "
                f"attempts={attempts}, expected {exp.status}/{exp.outcome}/1")
    key = (exp.account_id, exp.subscription_id)
    state, sub_member = stored.subscriptions.get(key, (None, None))
    mismatch = stored.mismatches.get(key)
    if exp.outcome == CUSTOMER_UNKNOWN:  # waits: nothing of the event is applied
        if mismatch is not None or state not in (None, "pending"):
            return (f"{exp.subscription_id}: state={state} mismatch={mismatch}, "
                    f"expected nothing applied ({CUSTOMER_UNKNOWN})")
        return None
    if exp.outcome == "linked":
        if state != "linked" or sub_member != exp.member_ref or mismatch is not None:
            return (f"{exp.subscription_id}: state={state} member={sub_member} "
                    f"mismatch={mismatch}, expected linked to {exp.member_ref}")
        return None
    want = (int(exp.outcome[-1]), "open", exp.member_ref, exp.linked_customer_id)
    if state != "mismatch" or mismatch is None or mismatch[:4] != want or (
            exp.note is not None and mismatch[4] != exp.note):
        return (f"{exp.subscription_id}: state={state} mismatch={mismatch}, "
                f"expected {want} note={exp.note}")
    return None


def verify(db_url: str, expected: dict[str, Expected]) -> tuple[bool, str]:
    """Compare every event's outcome, subscription and mismatch with what the data implies."""
    stored = read_stored(db_url, expected)
    problems: list[str] = []
    outcomes: Counter[str] = Counter()
    cases: Counter[int] = Counter()
    for exp in expected.values():
        status, outcome, _attempts = stored.events.get(exp.event_id, (None, None, None))
        outcomes[outcome or str(status)] += 1
        problem = check_event(exp, stored)
        if problem is not None:
            problems.append(problem)
        elif exp.outcome.startswith("case_"):
            cases[stored.mismatches[(exp.account_id, exp.subscription_id)][0]] += 1
    extra = len(stored.mismatches) - sum(1 for e in expected.values()
                                         if e.outcome.startswith("case_"))
    if extra > 0:
        problems.append(f"{extra} mismatches that no event implies")
    if stored.notices:
        problems.append(f"{stored.notices} notices owed, expected none (venues have no admins)")
    summary = (f"{len(stored.events)} events: "
               + ", ".join(f"{k} {outcomes[k]}" for k in sorted(outcomes))
               + "; open mismatches by case " + ", ".join(f"{c}: {cases[c]}" for c in (1, 2, 3)))
    if problems:
        return False, summary + f"\n    WRONG ({len(problems)}): " + "\n    ".join(problems[:5])
    return True, summary


# --- the floor ----------------------------------------------------------------------------


def _columns(rows: list[tuple], width: int) -> list[list[Any]]:
    """Rows as `width` column lists (psycopg sends each list as one array)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


class _FloorStatements:
    """The statements of one floor_batch transaction, counted, and kept in `capture` (with
    their parameters, to EXPLAIN them) when it is a list."""

    def __init__(self, cur: Any, capture: list[tuple[str, Any]] | None) -> None:
        self.cur, self.capture, self.sent = cur, capture, 0

    def run(self, sql: str, params: Any = ()) -> Any:
        self.sent += 1
        if self.capture is not None:
            self.capture.append((sql, params))
        return self.cur.execute(sql, params)


_PAIRS = "(SELECT * FROM unnest(%s::text[], %s::text[]))"


def _floor_read(sql: _FloorStatements, event_ids: list[str]
                ) -> tuple[list[tuple], dict[str, tuple[int, bool]]]:
    """Lock the inbox rows in id order and read their payloads; load their venues."""
    events = []
    for row_id, account, livemode, created, payload in sql.run(
            "SELECT id, account_id, livemode, created, payload FROM stripe_events"
            " WHERE event_id = ANY(%s) ORDER BY id FOR UPDATE", (event_ids,)):
        obj = json.loads(payload)["data"]["object"]
        events.append((row_id, account, livemode, created, obj["id"], obj["customer"],
                       obj.get("status")))
    venues = {account: (venue_id, livemode) for account, venue_id, livemode in sql.run(
        "SELECT account_id, id, livemode FROM venues WHERE account_id = ANY(%s)",
        (sorted({e[1] for e in events}),))}
    if any(venues.get(e[1], (None, None))[1] != e[2] for e in events):
        raise ValueError("floor_batch handles events of known venues in their mode only")
    return events, venues


def _floor_subscriptions(sql: _FloorStatements, events: list[tuple],
                         venues: dict[str, tuple[int, bool]]) -> dict[tuple[str, str], int]:
    """Insert the missing subscription rows, lock them all in key order, and lock (and
    refuse) existing mismatches; subscription row ids by (account, subscription)."""
    first = {(e[1], e[4]): e for e in reversed(events)}
    new = [(a, e[2], s, e[5], venues[a][0]) for (a, s), e in sorted(first.items())]
    sql.run("INSERT INTO subscriptions (account_id, livemode, subscription_id, customer_id,"
            " venue_id, canceled, state, last_event_created, updated_at)"
            " SELECT a, l, s, c, v, false, 'pending', 0, now() FROM unnest(%s::text[],"
            " %s::bool[], %s::text[], %s::text[], %s::int[]) AS t(a, l, s, c, v)"
            " ON CONFLICT (account_id, subscription_id) DO NOTHING", _columns(new, 5))
    keys = [[a for a, _s in sorted(first)], [s for _a, s in sorted(first)]]
    subs = {(a, s): sub_id for sub_id, a, s in sql.run(
        "SELECT id, account_id, subscription_id FROM subscriptions WHERE"
        f" (account_id, subscription_id) IN {_PAIRS}"
        " ORDER BY account_id, subscription_id FOR UPDATE", keys)}
    if sql.run(f"SELECT id FROM mismatches WHERE (account_id, subscription_id) IN {_PAIRS}"
               " FOR UPDATE", keys).fetchall():
        raise ValueError("floor_batch only opens new mismatches")
    return subs


@dataclass
class _FloorLookups:
    linked: dict[tuple[int, str], int]  # (venue, customer) -> member id
    mirrored: dict[tuple[str, bool, str], str | None]  # (account, livemode, customer) -> email
    by_email: dict[tuple[int, str], list[tuple]]  # (venue, normalized) -> members


def _floor_lookups(sql: _FloorStatements, events: list[tuple],
                   venues: dict[str, tuple[int, bool]]) -> _FloorLookups:
    """Members linked by (venue, customer); the mirrored customers of the others; members
    by (venue, normalized email)."""
    from db import normalize_email

    pairs = sorted({(venues[e[1]][0], e[5]) for e in events})
    linked = {(v, c): m for v, c, m in sql.run(
        "SELECT venue_id, stripe_customer_id, id FROM members WHERE"
        " (venue_id, stripe_customer_id) IN"
        " (SELECT * FROM unnest(%s::int[], %s::text[]))", _columns(pairs, 2))}
    unlinked = sorted({(e[1], e[2], e[5]) for e in events
                       if (venues[e[1]][0], e[5]) not in linked})
    mirrored: dict[tuple[str, bool, str], str | None] = {}
    if unlinked:
        mirrored = {(a, lm, c): email for a, lm, c, email in sql.run(
            "SELECT account_id, livemode, customer_id, email FROM stripe_customers"
            " WHERE (account_id, livemode, customer_id) IN"
            " (SELECT * FROM unnest(%s::text[], %s::bool[], %s::text[]))",
            _columns(unlinked, 3))}
    wanted = sorted({(venues[a][0], normalized) for (a, _lm, _c), email in mirrored.items()
                     if (normalized := normalize_email(email))})
    by_email: dict[tuple[int, str], list[tuple]] = defaultdict(list)
    if wanted:
        for venue_id, normalized, *member in sql.run(
                "SELECT venue_id, email_normalized, id, member_ref, email,"
                " stripe_customer_id FROM members WHERE (venue_id, email_normalized)"
                " IN (SELECT * FROM unnest(%s::int[], %s::text[]))"
                " ORDER BY member_ref", _columns(wanted, 2)):
            by_email[(venue_id, normalized)].append(tuple(member))
    return _FloorLookups(linked, mirrored, by_email)


def _floor_mismatch(event: tuple, venue_id: int, found: list[tuple], email: str | None,
                    normalized: str | None) -> tuple[int, int | None, tuple]:
    """A first sighting's case, its single candidate and its mismatch row."""
    _row_id, account, livemode, _created, sub_id, customer, _status = event
    with_customer = [m for m in found if m[3]]
    case = 1 if with_customer else 2 if found else 3
    single = found[0][0] if len(found) == 1 else None
    candidates = [{"member_ref": ref, "email": member_email_, "stripe_customer_id": cus}
                  for _id, ref, member_email_, cus in found]
    return case, single, (account, livemode, sub_id, venue_id, case, customer, email,
                          with_customer[0][3] if with_customer else None, single,
                          json.dumps(candidates), None if normalized else NO_EMAIL_NOTE)


def _floor_classify(events: list[tuple], venues: dict[str, tuple[int, bool]],
                    subs: dict[tuple[str, str], int], found: _FloorLookups
                    ) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Linked, case 1, 2 or 3 for each event, in Python: the subscription rows, the new
    mismatches and the inbox outcomes to write."""
    from db import normalize_email

    sub_rows, mismatch_rows, outcomes = [], [], []
    for event in events:
        row_id, account, livemode, created, sub_id, customer, status = event
        venue_id = venues[account][0]
        member = found.linked.get((venue_id, customer))
        if member is not None:
            sub_rows.append((subs[(account, sub_id)], "linked", member, status, created,
                             venue_id))
            outcomes.append((row_id, "linked"))
            continue
        if (account, livemode, customer) not in found.mirrored:
            raise ValueError(f"floor_batch reads no customer from Stripe ({customer})")
        email = found.mirrored[(account, livemode, customer)]
        normalized = normalize_email(email)
        members = found.by_email.get((venue_id, normalized), []) if normalized else []
        case, single, mismatch = _floor_mismatch(event, venue_id, members, email, normalized)
        sub_rows.append((subs[(account, sub_id)], "mismatch", single, status, created,
                         venue_id))
        mismatch_rows.append(mismatch)
        outcomes.append((row_id, f"case_{case}"))
    return sub_rows, mismatch_rows, outcomes


def _floor_write(sql: _FloorStatements, sub_rows: list[tuple], mismatch_rows: list[tuple],
                 outcomes: list[tuple]) -> None:
    sql.run("UPDATE subscriptions AS s SET state = u.state, member_id = u.member_id,"
            " status = u.status, last_event_created = GREATEST(s.last_event_created,"
            " u.created), venue_id = u.venue_id, updated_at = now()"
            " FROM unnest(%s::int[], %s::text[], %s::int[], %s::text[], %s::bigint[],"
            " %s::int[]) AS u(id, state, member_id, status, created, venue_id)"
            " WHERE s.id = u.id", _columns(sub_rows, 6))
    if mismatch_rows:
        sql.run('INSERT INTO mismatches (account_id, livemode, subscription_id, venue_id,'
                ' "case", customer_id, customer_email, linked_customer_id, member_id,'
                ' candidates, note, status, notified_case, opened_at, updated_at)'
                " SELECT a, l, s, v, c, cus, email, linked, m, cand::json, note, 'open',"
                " c, now(), now() FROM unnest(%s::text[], %s::bool[], %s::text[],"
                " %s::int[], %s::int[], %s::text[], %s::text[], %s::text[], %s::int[],"
                " %s::text[], %s::text[])"
                " AS t(a, l, s, v, c, cus, email, linked, m, cand, note)",
                _columns(mismatch_rows, 11))
    sql.run("UPDATE stripe_events AS e SET status = 'processed', outcome = u.outcome,"
            " attempts = e.attempts + 1, last_error = NULL, waiting_for = NULL,"
            " processed_at = now() FROM unnest(%s::int[], %s::text[]) AS u(id, outcome)"
            " WHERE e.id = u.id", _columns(outcomes, 2))


def floor_batch(conn: Any, event_ids: list[str],
                capture: list[tuple[str, Any]] | None = None) -> tuple[int, int]:
    """The floor: the database work of handling these events, as set-based statements on one
    raw psycopg connection in ONE transaction. Returns (events handled, statements sent).

    One statement each for the whole batch: lock the inbox rows (SELECT … FOR UPDATE, in id
    order) and read their payloads; load the venues; insert the missing subscription rows
    (INSERT … SELECT FROM unnest … ON CONFLICT DO NOTHING) and lock them all in key order;
    lock their mismatches; read members linked by (venue, customer); read the mirrored
    customers of the others; read members by (venue, normalized email). Then it classifies
    in Python (linked, case 1, 2, 3, with candidates, as workers.matching.classify does for
    a first sighting) and writes every subscription's state, member, status,
    last_event_created, venue and updated_at (one UPDATE … FROM unnest), every new mismatch
    (one INSERT, notified_case set as after a notice) and every inbox row's status, outcome,
    attempts, processed_at (one UPDATE); COMMIT. 11 statements per batch (10 when there is
    no mismatch to open).

    What it does not do: other event types, venues in the other mode or unknown (unrouted),
    canceled or out-of-order sightings, updating an existing mismatch (it raises when one
    exists), customers that are not mirrored (no Stripe read: it raises), notices (none are
    owed: the venues have no admins), logging, retries, RQ or Redis. It is the least the
    same database reads and writes can cost, not a second implementation of the rules.
    `capture` receives the statements and their parameters (to EXPLAIN them)."""
    with conn.cursor() as cur:
        sql = _FloorStatements(cur, capture)
        events, venues = _floor_read(sql, event_ids)
        subs = _floor_subscriptions(sql, events, venues)
        found = _floor_lookups(sql, events, venues)
        _floor_write(sql, *_floor_classify(events, venues, subs, found))
    conn.commit()
    return len(events), sql.sent


# --- EXPLAIN: do the lookups use the indexes? --------------------------------------------


def statements_sent(parameters: Any, executemany: bool, context: Any) -> int:
    """Statements the database runs for one cursor call (one round trip): an executemany
    (the ORM's flush of changed rows, an INSERT of many rows: psycopg pipelines one statement
    per parameter set) runs one per row; SQLAlchemy's "insertmanyvalues" (one INSERT with
    many VALUES rows) is one."""
    from sqlalchemy.engine.interfaces import ExecuteStyle

    if not executemany or getattr(context, "execute_style", None) is \
            ExecuteStyle.INSERTMANYVALUES:
        return 1
    return len(parameters)


class StatementLog:
    """Counts the statements (statements_sent) and commits of handle_events; keeps the
    statements of the calls holding a sample."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.engine = engine
        self.count = 0
        self.calls = 0  # cursor calls: round trips
        self.commits = 0
        self.by_verb: Counter[str] = Counter()
        self.capture: list[tuple[str, Any]] | None = None
        event.listen(engine, "before_cursor_execute", self._execute)
        event.listen(engine, "commit", self._commit)

    def _execute(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
                 executemany: bool) -> None:
        rows = statements_sent(parameters, executemany, context)
        self.calls += 1
        self.count += rows
        self.by_verb[statement.lstrip().split(None, 1)[0].upper()] += rows
        if self.capture is not None:
            self.capture.append((statement, parameters))

    def _commit(self, conn: Any) -> None:
        self.commits += 1

    def close(self) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._execute)
        event.remove(self.engine, "commit", self._commit)


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def explain(engine: Any, statements: list[tuple[str, Any]]
            ) -> tuple[dict[str, set[str]], list[int]]:
    """How the statements on the scaling tables read them: ({table: {plan node}}, [pages]).

    Pages (PostgreSQL: shared buffers hit or read by EXPLAIN ANALYZE of each SELECT, rolled
    back) grow with an index's depth, not with the host's load: a steady measure of scaling.
    """
    access: dict[str, set[str]] = {}
    pages: list[int] = []
    raw = engine.raw_connection()
    try:
        for statement, params in statements:
            verb = statement.lstrip().split(None, 1)[0].upper()
            if verb not in ("SELECT", "UPDATE", "DELETE"):
                continue
            if not any(t in statement for t in SCALING_TABLES):
                continue
            if engine.dialect.name == "postgresql":
                import psycopg

                analyze = "ANALYZE, BUFFERS, " if verb == "SELECT" else ""
                with psycopg.ClientCursor(raw.driver_connection) as cur:
                    cur.execute(f"EXPLAIN ({analyze}FORMAT JSON) " + statement, params)
                    plan = cur.fetchone()[0][0]["Plan"]
                raw.driver_connection.rollback()
                if analyze:
                    pages.append(plan["Shared Hit Blocks"] + plan["Shared Read Blocks"])
                for node in _plan_nodes(plan):
                    table = node.get("Relation Name")
                    if table in SCALING_TABLES:
                        how = node["Node Type"]
                        # A bitmap scan names its index on the Bitmap Index Scan nodes below.
                        indexes = {n["Index Name"] for n in _plan_nodes(node)
                                   if n.get("Index Name")}
                        if indexes:
                            how += f" {'+'.join(sorted(indexes))}"
                        access.setdefault(table, set()).add(how)
            else:
                cur = raw.driver_connection.cursor()
                for row in cur.execute("EXPLAIN QUERY PLAN " + statement, params):
                    detail = row[-1]
                    words = detail.split()
                    if len(words) >= 2 and words[1] in SCALING_TABLES:
                        access.setdefault(words[1], set()).add(
                            detail.split(" (")[0].replace(f" {words[1]}", ""))
                cur.close()
    finally:
        raw.close()
    return access, pages


def uses_indexes(access: dict[str, set[str]]) -> bool:
    hows = [h for table in SCALING_TABLES for h in access.get(table, ())]
    return bool(hows) and not any(h.startswith(("Seq Scan", "SCAN")) for h in hows)


# --- the worker (child processes) and in-process runs ----------------------------------------


def _count_database_work(database: Any, counts: Counter[str]) -> set[int]:
    """Count the statements, round trips, commits and pool checkouts of `database` into
    `counts`; the PostgreSQL backends it connects to are added to the set returned."""
    from sqlalchemy import event

    backends: set[int] = set()
    if not database.is_sqlite:
        event.listen(database.engine, "connect",
                     lambda dbapi, _record: backends.add(dbapi.info.backend_pid))
    event.listen(database.engine, "before_cursor_execute",
                 lambda _c, _cur, _st, params, ctx, many: counts.update(
                     statements=statements_sent(params, many, ctx), calls=1))
    event.listen(database.engine, "commit", lambda *_args: counts.update(["commits"]))
    event.listen(database.engine.pool, "checkout", lambda *_args: counts.update(["checkouts"]))
    return backends


def _time_job_parts(counts: Counter[str]) -> None:
    """Where a job's time goes: handling its events (workers.matching.inbox.run: the
    transaction and the ORM) and taking the handled events' jobs off the queue; the rest is
    RQ's."""
    import workers.jobs
    import workers.matching.inbox

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                counts[name] += time.perf_counter() - started  # type: ignore[assignment]
        return call

    workers.matching.inbox.run = timed("handle_s", workers.matching.inbox.run)  # type: ignore[assignment]
    workers.jobs.discard_jobs = timed(  # type: ignore[assignment]
        "discard_s", workers.jobs.discard_jobs)


class _JobClock:
    """From the start of a worker's first job to the end of its last: wall and CPU time,
    the database work counted meanwhile, its backends' CPU and its Stripe calls."""

    def __init__(self, counts: Counter[str], backends: set[int]) -> None:
        self.counts, self.backends = counts, backends
        self.timing: dict[str, Any] = {}
        self.jobs: list[float] = []

    def backend_cpu(self) -> dict[int, float]:
        table = processes() if self.backends else {}
        return {pid: table[pid].cpu for pid in self.backends if pid in table}

    def job_starts(self) -> float:
        from workers.stripe_side.api import StripeApi

        timing = self.timing
        if not timing:
            timing["db_cpu_start"] = self.backend_cpu()
            timing["api_calls_start"] = StripeApi.calls
            self.counts.clear()
            timing["start"], timing["wall_start"] = time.perf_counter(), time.time()
            timing["cpu_start"] = time.process_time()
        return time.perf_counter()

    def job_ends(self, started: float) -> None:
        timing = self.timing
        timing["end"], timing["wall_end"] = time.perf_counter(), time.time()
        timing["cpu_end"] = time.process_time()
        timing["counts"] = dict(self.counts)
        self.jobs.append(timing["end"] - started)

    def report(self, events: int, db_cpu_end: dict[int, float], events_per_batch: int
               ) -> dict[str, Any]:
        from workers.stripe_side.api import StripeApi

        timing, jobs = self.timing, self.jobs
        db_start = timing.get("db_cpu_start", {})
        counted = timing.get("counts", {})
        return {
            "jobs": len(jobs), "events": events,
            "seconds": timing["end"] - timing["start"] if jobs else 0.0,
            "wall_start": timing.get("wall_start"), "wall_end": timing.get("wall_end"),
            "cpu": timing["cpu_end"] - timing["cpu_start"] if jobs else 0.0,
            "db_cpu": sum(cpu - db_start.get(pid, 0.0) for pid, cpu in db_cpu_end.items()),
            "statements": counted.get("statements", 0), "commits": counted.get("commits", 0),
            "round_trips": (counted.get("calls", 0) + 2 * counted.get("commits", 0)
                            + counted.get("checkouts", 0)),
            "handle_s": counted.get("handle_s", 0.0),
            "discard_s": counted.get("discard_s", 0.0),
            "api_calls": StripeApi.calls - timing.get("api_calls_start", StripeApi.calls),
            "events_per_batch": events_per_batch, "first_job": jobs[0] if jobs else 0.0,
        }


def _wait_for_go(redis: Any) -> None:
    """Tell the parent this worker is warm (BENCH_READY); wait for its go (BENCH_GO)."""
    redis.rpush(os.environ["BENCH_READY"], os.getpid())
    deadline = time.monotonic() + 120
    while not redis.blpop([os.environ["BENCH_GO"]], timeout=1):
        if time.monotonic() > deadline:
            raise SystemExit("no go from the benchmark")


def drain_child() -> None:
    """Run in the child: one worker of the class `mismatch worker` runs
    (workers.service.MismatchWorker) drains the queue in burst mode, without scheduler, with
    the environment's EVENTS_PER_BATCH; prints (JSON, _JobClock.report) its timing, the jobs
    it ran, how many events of the chunk (BENCH_EVENTS, a JSON file of event ids) are
    handled, its statements and commits, its PostgreSQL backends' CPU and its Stripe calls.

    First, untimed: it handles its warm-up events (BENCH_WARMUP) with the job function, as a
    worker that has been running has handled events before (statements compiled, mappers
    configured, connection open), and forgets them again; then it tells the parent it is
    ready and waits for the go, which comes once the parent has released the chunk's events
    and every worker of the run is ready."""
    # As workers.service.run_worker sets logging up (an INFO line per job and per event).
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("stripe").setLevel(logging.WARNING)
    from workers.jobs import process_event
    from workers.queue import get_queue, get_redis
    from workers.runtime import runtime
    from workers.service import MAINTENANCE_SECONDS, MismatchWorker

    config, database = runtime()
    counts: Counter[str] = Counter()
    clock = _JobClock(counts, _count_database_work(database, counts))
    _time_job_parts(counts)
    database.ping()
    warm_up = [e for e in os.environ.get("BENCH_WARMUP", "").split(",") if e]
    for event_id in warm_up:
        process_event(event_id)
    if warm_up:
        forget_warm_up(database, warm_up)

    class TimedWorker(MismatchWorker):
        def execute_job(self, job, queue):  # type: ignore[no-untyped-def]
            started = clock.job_starts()
            super().execute_job(job, queue)
            clock.job_ends(started)

    redis = get_redis(config)
    _wait_for_go(redis)
    worker = TimedWorker([get_queue(config)], connection=redis,
                         maintenance_interval=MAINTENANCE_SECONDS)
    worker.work(burst=True, with_scheduler=False)
    db_cpu_end = clock.backend_cpu()
    ids_file = os.environ.get("BENCH_EVENTS")
    ids = json.loads(Path(ids_file).read_text()) if ids_file else []
    events = events_done(database, ids) if ids else 0
    print(json.dumps(clock.report(events, db_cpu_end, config.events_per_batch)), flush=True)


def drain(env: dict[str, str], log_path: Path, event_ids: list[str] | None = None,
          warm_ups: list[list[str]] | None = None,
          release: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """One worker process per warm-up set (one when there is none) drains the queue, all at
    once: `release` runs when every one is warm and ready, then they all get the go. Their
    reports."""
    import redis

    child_env = dict(env)
    if event_ids is not None:
        ids_path = log_path.with_name("chunk-events.json")
        ids_path.write_text(json.dumps(event_ids))
        child_env["BENCH_EVENTS"] = str(ids_path)
    key = f"bench-matching:{os.getpid()}:{time.time_ns()}"
    child_env.update(BENCH_READY=f"{key}:ready", BENCH_GO=f"{key}:go")
    procs = []
    with open(log_path, "ab") as log_file, redis.Redis.from_url(env["REDIS_URL"]) as connection:
        try:
            for warm_up in warm_ups or [[]]:
                procs.append(subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--drain-child"],
                    env={**child_env, "BENCH_WARMUP": ",".join(warm_up)},
                    stdout=subprocess.PIPE, stderr=log_file, cwd=str(ROOT)))
            ready = 0
            while ready < len(procs):
                if connection.blpop([f"{key}:ready"], timeout=1):
                    ready += 1
                elif any(proc.poll() is not None for proc in procs):
                    raise RuntimeError(f"a worker exited before it was ready; see {log_path}")
            if release is not None:
                release()
            connection.rpush(f"{key}:go", *["go"] * len(procs))
            outputs = [proc.communicate()[0] for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            connection.delete(f"{key}:ready", f"{key}:go")
    for proc in procs:
        if proc.returncode != 0:
            raise RuntimeError(f"a worker exited with {proc.returncode}; see {log_path}")
    return [json.loads(out.decode().strip().splitlines()[-1]) for out in outputs]


def enqueue_all(config: Any, event_ids: list[str]) -> None:
    from workers.jobs import EVENT
    from workers.queue import enqueue

    for event_id in event_ids:
        enqueue(config, EVENT, event_id)


def rq_noop_rate(env: dict[str, str], config: Any, jobs: int, log_path: Path) -> float:
    """Jobs/s of the same worker on jobs that do nothing: RQ's own per-job cost."""
    from rq import Retry

    from workers.queue import get_queue

    clear_queue(config)
    queue = get_queue(config)
    intervals = list(config.job_retry_intervals)
    for _ in range(jobs):  # the options workers.queue.enqueue gives an EVENT
        queue.enqueue_call("builtins.len", args=("",), retry=Retry(max=len(intervals),
                           interval=intervals), result_ttl=0, failure_ttl=7 * 24 * 3600)
    [drained] = drain(env, log_path)
    return drained["jobs"] / drained["seconds"]


def clear_queue(config: Any) -> None:
    """An empty queue, failed registry and intermediate queue.

    RQ's intermediate queue (where a worker's dequeue puts a job until it is registered as
    started) remembers for 24 hours when its maintenance first saw a job id there, and fails
    (retries) a job of that id that it sees there again more than a minute later, even one
    another worker has just taken: with two workers, one's start-up maintenance re-queued the
    other's running job. The benchmark enqueues the same job ids in every pass, which
    production does not; its memory of them is dropped here."""
    from rq.exceptions import NoSuchJobError
    from rq.registry import FailedJobRegistry

    from workers.queue import get_queue

    queue = get_queue(config)
    queue.empty()
    registry = FailedJobRegistry(queue=queue)
    for job_id in registry.get_job_ids():
        try:
            registry.remove(job_id, delete_job=True)
        except NoSuchJobError:
            queue.connection.zrem(registry.key, job_id)
    intermediate = queue.intermediate_queue.key
    queue.connection.delete(intermediate,
                            *queue.connection.scan_iter(f"{intermediate}:first_seen:*"))


def failed_jobs(config: Any) -> int:
    from rq.registry import FailedJobRegistry

    from workers.queue import get_queue

    return FailedJobRegistry(queue=get_queue(config)).count


def log_trouble(log_path: Path) -> list[str]:
    """Lines of a worker log that mention a deadlock, an error or a failure."""
    if not log_path.exists():
        return []
    return [line.strip() for line in log_path.read_text(errors="replace").splitlines()
            if LOG_TROUBLE.search(line)]


@dataclass
class Pass:
    """One method at one size in one round (or one two-worker run), summed over its chunks."""

    events: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # the Python side (the worker process, or this one for the floor)
    db_cpu: float = 0.0  # its PostgreSQL backend(s)
    jobs: int = 0
    statements: int = 0
    round_trips: int = 0  # cursor calls, BEGIN and COMMIT, the pool's pre-ping
    commits: int = 0
    handle_s: float = 0.0  # in workers.matching.inbox.run (the worker) or floor_batch (the floor)
    discard_s: float = 0.0  # in workers.queue.discard_jobs
    api_calls: int = 0
    failed_jobs: int = 0
    first_jobs: float = 0.0  # the first timed job of every worker process, seconds
    drains: int = 0
    batch_sizes: set[int] = field(default_factory=set)

    @property
    def eps(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def add(self, drained: dict[str, Any]) -> None:
        for name in ("events", "seconds", "cpu", "db_cpu", "jobs", "statements", "round_trips",
                     "commits", "handle_s", "discard_s", "api_calls"):
            setattr(self, name, getattr(self, name) + drained[name])
        self.first_jobs += drained["first_job"]
        self.drains += 1
        self.batch_sizes.add(drained["events_per_batch"])


def run_floor(bench: BenchDb, conn: Any, event_ids: list[str], per_txn: int, into: Pass,
              capture: list[tuple[str, Any]] | None = None) -> None:
    """floor_batch over these events, per_txn at a time, on an open psycopg connection."""
    pid = conn.info.backend_pid
    db_before = processes()[pid].cpu
    started, cpu_started = time.perf_counter(), time.process_time()
    for start in range(0, len(event_ids), per_txn):
        events, sent = floor_batch(conn, event_ids[start:start + per_txn],
                                   capture if start == 0 else None)
        into.events += events
        into.statements += sent
        into.round_trips += sent + 2  # and BEGIN, COMMIT
        into.commits += 1
    into.seconds += time.perf_counter() - started
    into.handle_s += time.perf_counter() - started
    into.cpu += time.process_time() - cpu_started
    into.db_cpu += processes()[pid].cpu - db_before
    into.batch_sizes.add(per_txn)


@dataclass
class Tally:
    """What handle_events added up to when run in this process (no RQ)."""

    events: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    api_calls: int = 0
    statements: int = 0
    calls: int = 0
    commits: int = 0
    checkouts: int = 0
    by_verb: Counter[str] = field(default_factory=Counter)
    access: dict[str, set[str]] = field(default_factory=dict)
    pages: list[float] = field(default_factory=list)  # buffer pages per event, per lookup

    @property
    def eps(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def run_in_process(config: Any, database: Any, event_ids: list[str], samples: set[str], batch: int,
                   tally: Tally) -> None:
    """workers.matching.inbox.handle_events in a loop in this process, into `tally`: `batch` events
    per call (1: one event per transaction). Statements counted; the calls holding a sample
    EXPLAINed."""
    from sqlalchemy import event

    from workers.jobs import queue_after_commit
    from workers.matching.inbox import handle_events
    from workers.stripe_side.api import StripeApi

    api = StripeApi(config)
    stmts = StatementLog(database.engine)
    checkouts: Counter[str] = Counter()

    def checkout(*_args: Any) -> None:
        checkouts.update(["checkout"])

    event.listen(database.engine.pool, "checkout", checkout)
    calls = [event_ids[i:i + batch] for i in range(0, len(event_ids), batch)]
    captured: list[tuple[int, list[tuple[str, Any]]]] = []  # (events in the call, statements)
    calls_before = StripeApi.calls
    started, cpu_started = time.perf_counter(), time.process_time()
    for ids in calls:
        if samples.intersection(ids):
            stmts.capture = []
            captured.append((len(ids), stmts.capture))
        handle_events(config, database, api, ids,
                      after_commit=partial(queue_after_commit, config))
        stmts.capture = None
    tally.seconds += time.perf_counter() - started
    tally.cpu += time.process_time() - cpu_started
    stmts.close()
    event.remove(database.engine.pool, "checkout", checkout)
    for events, statements in captured:
        how, read = explain(database.engine, statements)
        tally.pages += [pages / events for pages in read]
        for table, hows in how.items():
            tally.access.setdefault(table, set()).update(hows)
    tally.events += len(event_ids)
    tally.api_calls += StripeApi.calls - calls_before
    tally.statements += stmts.count
    tally.calls += stmts.calls
    tally.commits += stmts.commits
    tally.checkouts += checkouts["checkout"]
    tally.by_verb.update(stmts.by_verb)


# --- the local fake Stripe ---------------------------------------------------------------

def start_stripe(workdir: Path) -> LocalStripe:
    """localstripe (standins.localstripe, state under `workdir`); it has no Connect, so
    Stripe-Account is ignored: the unmirrored events are platform events."""
    from standins.localstripe import LocalStripe

    return LocalStripe(workdir)


def customer_reads(stripe: LocalStripe) -> int:
    """Customer reads localstripe served, from its access log."""
    return sum(1 for line in stripe.log_path.read_text().splitlines()
               if '"GET /v1/customers/' in line)


def unmirrored_batch(stripe: LocalStripe, members: int = 40) -> tuple[Batch, list[tuple]]:
    """Platform events whose customers are only in (fake) Stripe: first sighting and repeat."""
    client = stripe.client()
    batch = Batch()
    member_rows = []  # (member_ref, email, stripe_customer_id) of the platform venue
    for i in range(members):
        member_rows.append((f"p{i:04d}", f"Platform.Member{i}@{EMAIL_DOMAIN}",
                            f"cus_pm{i:04d}" if i % 2 == 0 else None))
    plans = []  # (customer id, expected outcome, member_ref, linked customer, note)
    for u in range(members):
        kind = u % 4
        if kind in (0, 1):  # case 1 (member with a customer) / case 2 (member without)
            ref, email, cus = member_rows[u]
            created = client.v1.customers.create(params={"email": email.lower(), "name": "X"})
            plans.append((created.id, f"case_{2 if cus is None else 1}", ref, cus, None))
        elif kind == 2:
            created = client.v1.customers.create(
                params={"email": f"nobody{u}@{EMAIL_DOMAIN}", "name": "X"})
            plans.append((created.id, "case_3", None, None, None))
        else:
            created = client.v1.customers.create(params={"name": "No Email"})
            plans.append((created.id, "case_3", None, None, "customer has no email"))
    # Stripe does not know it: the event waits (rule 3), it does not become case 3.
    plans.append(("cus_benchDoesNotExist", CUSTOMER_UNKNOWN, None, None, None))
    for rnd, type_ in enumerate(("customer.subscription.created",
                                 "customer.subscription.updated")):
        for u, (cus, outcome, ref, linked, note) in enumerate(plans):
            event_id, sub_id = f"evt_benchplat{rnd}x{u:04d}", f"sub_benchplat{rnd}x{u:04d}"
            # First sighting: one read by ID. Repeat: the read was mirrored, so none, except
            # the customer Stripe does not know (nothing to mirror): one read again. Handled
            # alone, as its last attempt: that one is left `failed`, waiting for the customer.
            calls = 1 if rnd == 0 or cus == "cus_benchDoesNotExist" else 0
            batch.add(event_row(event_id=event_id, type_=type_, account=None,
                                created=1_700_100_000 + rnd * 1000 + u, subscription_id=sub_id,
                                customer_id=cus),
                      Expected(event_id, sub_id, cus, PLATFORM_ACCOUNT, outcome, ref, linked,
                               note, calls,
                               status="failed" if outcome == CUSTOMER_UNKNOWN else "processed"))
    return batch, member_rows


def run_unmirrored(bench: BenchDb, stripe: LocalStripe) -> dict[str, Any]:
    """The platform events whose customers are not mirrored, each handled alone
    (handle_events), counting the Stripe calls each one makes."""
    from sqlalchemy import insert, select

    from db import Database, Member, Venue, normalize_email
    from workers.jobs import queue_after_commit
    from workers.matching.inbox import handle_events
    from workers.runtime import reset_runtime, runtime
    from workers.stripe_side.api import StripeApi

    batch, member_rows = unmirrored_batch(stripe)
    database = Database(bench.url)
    try:
        with database.session() as s:
            venue_id = s.scalar(select(Venue.id).where(Venue.account_id == PLATFORM_ACCOUNT))
            if venue_id is None:
                venue = Venue(account_id=PLATFORM_ACCOUNT, name="Bench platform venue",
                              admin_emails=[], livemode=False)
                s.add(venue)
                s.flush()
                venue_id = venue.id
            s.execute(insert(Member), [dict(venue_id=venue_id, member_ref=ref, email=email,
                                            email_normalized=normalize_email(email),
                                            name="Platform member", stripe_customer_id=cus)
                                       for ref, email, cus in member_rows])
    finally:
        database.dispose()
    bench.insert_events(batch.events)
    os.environ["DATABASE_URL"] = bench.url
    reset_runtime()
    config, db = runtime()
    api = StripeApi(config)
    reads_before = customer_reads(stripe)
    per_round: dict[int, list[int]] = {0: [], 1: []}
    wrong_calls = []
    for row in batch.events:
        before = StripeApi.calls
        handle_events(config, db, api, [row["event_id"]],
                      after_commit=partial(queue_after_commit, config))
        spent = StripeApi.calls - before
        per_round[0 if "plat0x" in row["event_id"] else 1].append(spent)
        if spent != batch.expected[row["event_id"]].api_calls:
            wrong_calls.append(f"{row['event_id']}: {spent} calls, expected "
                               f"{batch.expected[row['event_id']].api_calls}")
    ok, summary = verify(bench.url, batch.expected)
    http_reads = customer_reads(stripe) - reads_before
    return {"ok": ok and not wrong_calls, "summary": summary, "wrong_calls": wrong_calls,
            "first": per_round[0], "repeat": per_round[1], "http_reads": http_reads,
            "counted": sum(per_round[0]) + sum(per_round[1])}


# --- the benchmark ----------------------------------------------------------------------


@dataclass
class SizeRun:
    """One size: its data, and the figures of every round."""

    bench: BenchDb
    batch: Batch
    load_s: float = 0.0
    passes: dict[str, list[Pass]] = field(default_factory=lambda: {m: [] for m in METHODS})
    two: Pass = field(default_factory=Pass)  # two workers at once
    two_jobs: list[int] = field(default_factory=lambda: [0, 0])  # jobs each of the two ran
    two_problems: list[str] = field(default_factory=list)
    inproc: Tally = field(default_factory=Tally)  # handle_events, one event per transaction
    batched: Tally = field(default_factory=Tally)  # handle_events, a batch per transaction
    floor_access: dict[str, set[str]] = field(default_factory=dict)
    floor_pages: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def size(self) -> int:
        return self.bench.size

    @property
    def samples(self) -> set[str]:
        """The first event of each kind: their statements are EXPLAINed."""
        return {next(e.event_id for e in self.batch.expected.values() if e.outcome == kind)
                for kind in KINDS}

    def reset(self) -> None:
        """An empty inbox (nothing handled) but for the held warm-up events."""
        self.bench.reset_results()
        self.bench.insert_events([row for rows in self.batch.warm_ups for row in rows])

    def chunk(self, start: int, size: int, *, held: bool = False) -> list[str]:
        """Store the events of one chunk in the inbox (held: until the workers are warm);
        their ids."""
        rows = self.batch.events[start:start + size]
        self.bench.insert_events(rows, HELD if held else None)
        return [row["event_id"] for row in rows]

    def warm_ups(self, workers: int) -> list[list[str]]:
        return [[row["event_id"] for row in rows] for rows in self.batch.warm_ups[:workers]]

    def eps(self, method: str) -> list[float]:
        return [p.eps for p in self.passes[method]]

    def check(self, label: str) -> bool:
        ok, self.summary = verify(self.bench.url, self.batch.expected)
        if not ok:
            self.problems.append(f"{label} at {self.size:,}: {self.summary}")
        return ok


def load_size(args: argparse.Namespace, env: dict[str, str], size: int,
              created: list[BenchDb]) -> SizeRun:
    bench = BenchDb(env["DATABASE_URL"], size, env)
    created.append(bench)  # dropped at the end, even when loading fails
    batch = make_batch(size, args.events, args.venues, args.seed)
    bench.prepare()
    started = time.perf_counter()
    bench.load(size, args.venues, batch)
    run = SizeRun(bench, batch, load_s=time.perf_counter() - started)
    mirrored = (size // 10) * 7 + min(size % 10, 7) + len(batch.customers)
    print(f"{size:>10,} members, {mirrored:,} mirrored customers over {args.venues} venues: "
          f"loaded in {run.load_s:.1f}s (then ANALYZE)", flush=True)
    return run


def methods_for(runs: list[SizeRun]) -> list[str]:
    return [m for m in METHODS if m != "floor" or not runs[0].bench.is_sqlite]


def _floor_chunk(run: SizeRun, conn: Any, ids: list[str], per_txn: int, first: bool) -> None:
    """The floor over one chunk; the plans of the first batch of the first round kept."""
    capture: list[tuple[str, Any]] | None = [] if first else None
    run_floor(run.bench, conn, ids, per_txn, run.passes["floor"][-1], capture)
    if capture:
        database = run.bench.database()
        try:
            run.floor_access, pages = explain(database.engine, capture)
        finally:
            database.dispose()
        run.floor_pages = [p / min(per_txn, len(ids)) for p in pages]


def _worker_chunk(env: dict[str, str], config: Any, run: SizeRun, method: str, ids: list[str],
                  label: str, worker_log: Path) -> None:
    """One worker process (EVENTS_PER_BATCH=1 for the baseline) drains one chunk's jobs."""
    child_env = {**env, "DATABASE_URL": run.bench.url}
    if method == "baseline":
        child_env["EVENTS_PER_BATCH"] = "1"
    clear_queue(config)
    enqueue_all(config, ids)
    [drained] = drain(child_env, worker_log, ids, run.warm_ups(1), run.bench.release_held)
    into = run.passes[method][-1]
    into.add(drained)
    into.failed_jobs += failed_jobs(config)
    if drained["events"] != len(ids) or not drained["jobs"]:
        run.problems.append(f"{label} at {run.size:,}: the worker handled "
                            f"{drained['events']} of {len(ids)} events in {drained['jobs']} "
                            f"jobs")


def measure_pass(args: argparse.Namespace, env: dict[str, str], config: Any, runs: list[SizeRun],
                 method: str, rnd: int, workdir: Path, per_txn: int) -> None:
    """One method over all events of every size, chunk by chunk, alternating between the
    sizes; then every size's results are checked."""
    label = f"{method} round {rnd + 1}"
    for run in runs:
        run.reset()
        run.passes[method].append(Pass())
    conns: dict[int, Any] = {}
    if method == "floor":
        import psycopg

        conns = {run.size: psycopg.connect(run.bench.psycopg_url) for run in runs}
    try:
        for start in range(0, args.events, args.chunk):
            for run in runs:
                ids = run.chunk(start, args.chunk, held=method != "floor")
                if method == "floor":
                    _floor_chunk(run, conns[run.size], ids, per_txn, not (rnd or start))
                else:
                    _worker_chunk(env, config, run, method, ids, label, workdir / "worker.log")
    finally:
        for conn in conns.values():
            conn.close()
    for run in runs:
        failed = run.passes[method][-1].failed_jobs
        if run.check(label) and failed:
            run.problems.append(f"{label} at {run.size:,}: {failed} failed RQ jobs")


def measure_round(args: argparse.Namespace, env: dict[str, str], config: Any, runs: list[SizeRun],
                  rnd: int, workdir: Path, per_txn: int) -> float | None:
    """Every method over all events of every size; then RQ's no-op rate. Returns that
    rate."""
    for method in methods_for(runs):
        measure_pass(args, env, config, runs, method, rnd, workdir, per_txn)
    noop = None
    if args.noop_jobs:
        noop = rq_noop_rate({**env, "DATABASE_URL": runs[0].bench.url}, config,
                            args.noop_jobs, workdir / "worker.log")
    for run in runs:
        w, b = run.passes["worker"][-1], run.passes["baseline"][-1]
        line = (f"  round {rnd + 1}: {run.size:>10,} members: worker {w.eps:,.0f} ev/s "
                f"({w.jobs} jobs for {w.events:,} events), baseline {b.eps:,.0f} ev/s")
        if run.passes["floor"]:
            line += f", floor {run.passes['floor'][-1].eps:,.0f} ev/s"
        print(line + f"; results {'WRONG' if run.problems else 'OK'}", flush=True)
    print(f"  RQ no-op jobs {noop:,.0f}/s; " if noop else "  ", end="")
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    return noop


def measure_two_workers(args: argparse.Namespace, env: dict[str, str], config: Any,
                        runs: list[SizeRun], workdir: Path) -> None:
    """Two worker processes on the same queue at once, chunk by chunk; then the end state,
    RQ's failed registry and the workers' logs."""
    logs = {run.size: workdir / f"two-workers-{run.size}.log" for run in runs}
    for run in runs:
        run.reset()
    for start in range(0, args.events, args.chunk):
        for run in runs:
            ids = run.chunk(start, args.chunk, held=True)
            clear_queue(config)
            enqueue_all(config, ids)
            reports = drain({**env, "DATABASE_URL": run.bench.url}, logs[run.size], ids,
                            run.warm_ups(2), run.bench.release_held)
            busy = [r for r in reports if r["jobs"]]
            run.two.events += run.bench.events_done(ids)
            run.two.seconds += (max(r["wall_end"] for r in busy)
                                - min(r["wall_start"] for r in busy)) if busy else 0.0
            for n, report in enumerate(reports):
                run.two_jobs[n] += report["jobs"]
                run.two.jobs += report["jobs"]
                run.two.api_calls += report["api_calls"]
            run.two.failed_jobs += failed_jobs(config)
    for run in runs:
        if not run.check("two workers"):
            run.two_problems.append("end state WRONG")
        if run.two.failed_jobs:
            run.two_problems.append(f"{run.two.failed_jobs} failed RQ jobs")
        trouble = log_trouble(logs[run.size])
        if trouble:
            run.two_problems.append(f"{len(trouble)} log lines like: {trouble[0][:160]}")
        if not all(run.two_jobs):
            run.two_problems.append("one of the two workers ran no job (not concurrent)")
        print(f"  two workers: {run.size:>10,} members: {run.two.eps:,.0f} ev/s, jobs "
              f"{' + '.join(str(j) for j in run.two_jobs)}; "
              f"{'; '.join(run.two_problems) or 'OK'}", flush=True)


def measure_in_process(args: argparse.Namespace, runs: list[SizeRun], per_txn: int) -> None:
    """handle_events in this process, one event at a time, then per_txn at a time; one
    engine per size for the whole pass, warmed up on the warm-up events first (untimed)."""
    from config import load_config
    from db import Database
    from workers.jobs import queue_after_commit
    from workers.matching.inbox import handle_events
    from workers.stripe_side.api import StripeApi

    handles = {}
    for run in runs:
        config = load_config({**os.environ, "DATABASE_URL": run.bench.url})
        handles[run.size] = (config, Database(config.database_url))
    try:
        for label, batch in (("in-process one at a time", 1), ("in-process batched", per_txn)):
            for run in runs:
                run.reset()
                config, database = handles[run.size]
                [warm_up] = run.warm_ups(1)
                for start in range(0, len(warm_up), batch):
                    handle_events(config, database, StripeApi(config),
                                  warm_up[start:start + batch],
                                  after_commit=partial(queue_after_commit, config))
                forget_warm_up(database, warm_up)
            for start in range(0, args.events, args.chunk):
                for run in runs:
                    ids = run.chunk(start, args.chunk)
                    run_in_process(*handles[run.size], ids, run.samples & set(ids), batch,
                                   run.inproc if batch == 1 else run.batched)
            for run in runs:
                run.check(label)
                tally = run.inproc if batch == 1 else run.batched
                print(f"  {label}: {run.size:>10,} members: {tally.eps:,.0f} ev/s", flush=True)
    finally:
        for _config, database in handles.values():
            database.dispose()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _total(passes: list[Pass]) -> Pass:
    total = Pass()
    for p in passes:
        for name in ("events", "seconds", "cpu", "db_cpu", "jobs", "statements", "round_trips",
                     "commits", "handle_s", "discard_s", "api_calls", "failed_jobs", "first_jobs",
                     "drains"):
            setattr(total, name, getattr(total, name) + getattr(p, name))
        total.batch_sizes |= p.batch_sizes
    return total


def _print_header(args: argparse.Namespace, runs: list[SizeRun], backend: str,
                  per_txn: int) -> None:
    has_floor = bool(runs[0].passes["floor"])
    sizes = sorted({s for r in runs for s in _total(r.passes["worker"]).batch_sizes})
    print(f"\nMatching benchmark - {backend}\n{args.events:,} customer.subscription.created "
          f"Connect events per size ({', '.join(KINDS)} in equal parts, every customer "
          f"mirrored), {args.venues} venues without admin emails (no notices); {args.rounds} "
          f"round(s) in chunks of {args.chunk} events alternating between the sizes")
    print(f"worker: one workers.service.MismatchWorker process, EVENTS_PER_BATCH="
          f"{'/'.join(str(s) for s in sizes)} (as the worker reported it); baseline: the same "
          f"with EVENTS_PER_BATCH=1; floor: floor_batch, {per_txn} events per transaction "
          f"as raw set-based SQL on one psycopg connection"
          + ("" if has_floor else " (PostgreSQL only: not measured)") + "\n")


def _print_rates(args: argparse.Namespace, runs: list[SizeRun]) -> None:
    print(f"events/s, min / median / max of {args.rounds} round(s); ratios round by round")
    header = (f"{'members':>10} {'load s':>7} {'worker':>19} {'vs smallest':>11} "
              f"{'baseline':>16} {'floor':>23} {'worker/baseline':>18} {'worker/floor':>18}")
    print(header)
    print("-" * len(header))
    smallest = Spread.of(runs[0].eps("worker")).median
    for r in runs:
        w, b, f = r.eps("worker"), r.eps("baseline"), r.eps("floor")
        print(f"{r.size:>10,} {r.load_s:>7.1f} {Spread.of(w).show():>19} "
              f"{Spread.of(w).median / smallest:>11.2f} {Spread.of(b).show():>16} "
              f"{Spread.of(f).show():>23} {ratio(w, b).show('.1f'):>18} "
              f"{ratio(w, f).show('.2f') if f else 'n/a':>18}")


def _time_split_row(r: SizeRun, method: str) -> str | None:
    """One size and method of the where-the-time-goes table, per event (None: no events)."""
    t = _total(r.passes[method])
    if not t.events:
        return None
    n = t.events
    ms = {k: 1000 * v / n for k, v in (("wall", t.seconds), ("handle", t.handle_s),
                                       ("discard", t.discard_s), ("cpu", t.cpu),
                                       ("db", t.db_cpu))}
    db_cpu = f"{ms['db']:.2f}" if not r.bench.is_sqlite else "-"
    jobs = f"{t.jobs / n:.3f}" if method != "floor" else "-"
    first_job = f"{1000 * t.first_jobs / t.drains:.0f}" if t.drains else "-"
    rest = f"{ms['wall'] - ms['handle'] - ms['discard']:.2f}" if method != "floor" else "-"
    off_queue = f"{ms['discard']:.2f}" if method != "floor" else "-"
    return (f"{r.size:>10,} {method:>9} {ms['wall']:>8.2f} {ms['handle']:>9.2f} "
            f"{off_queue:>10} {rest:>9} "
            f"{ms['cpu']:>11.2f} {db_cpu:>7} {t.statements / n:>11.2f} "
            f"{t.round_trips / n:>12.2f} {t.commits / n:>6.3f} {jobs:>8} {first_job:>11}")


def _print_time_split(runs: list[SizeRun]) -> None:
    print("\nWhere the time goes, per event, all rounds. Wall time, split into handling the "
          "events (inbox.run: the transaction and the ORM; the floor: floor_batch), "
          "taking the handled events' jobs off the queue (workers.queue.discard_jobs) "
          "and the rest (RQ's own work per job, logging); CPU of the Python process (the "
          "worker, or this one for the floor) and of its PostgreSQL backend")
    header = (f"{'members':>10} {'method':>9} {'wall ms':>8} {'handling':>9} {'off queue':>10} "
              f"{'RQ, rest':>9} {'Python CPU':>11} {'PG CPU':>7} {'statements':>11} "
              f"{'round trips':>12} {'txns':>6} {'RQ jobs':>8} {'1st job ms':>11}")
    print(header)
    print("-" * len(header))
    for r in runs:
        for method in methods_for(runs):
            row = _time_split_row(r, method)
            if row is not None:
                print(row)
    print("(statements: what the database runs, an executemany counted per row, BEGIN and "
          "COMMIT not included; round trips: cursor calls (an executemany is pipelined: one), "
          "BEGIN, COMMIT and the pool's pre-ping; txns: transactions. 1st job ms: the first "
          "timed job of each worker process, after its untimed warm-up on 4 events of its "
          "own)")


def _print_rq_and_two(args: argparse.Namespace, runs: list[SizeRun], noop: list[float],
                      per_txn: int) -> None:
    if noop:
        med = Spread.of(noop).median
        print(f"\nRQ alone (the RQ-side floor): the same worker drains no-op jobs at "
              f"{Spread.of(noop).show()} jobs/s = {1000 / med:.1f} ms per job (median). The "
              f"baseline pays that per event (at most {med:,.0f} events/s); the worker per "
              f"job, once per up to {per_txn} events")
    print(f"\nTwo workers at once on the same queue (the same chunks of {args.chunk}), once "
          f"per size after the rounds")
    for r in runs:
        one = Spread.of(r.eps("worker")).median
        print(f"{r.size:>10,} members: {r.two.eps:,.0f} ev/s ({r.two.eps / one:.2f}x one "
              f"worker's median), jobs {' + '.join(str(j) for j in r.two_jobs)}; "
              f"{'; '.join(r.two_problems) or 'end state as expected, no failed job, clean logs'}")


def _print_in_process(runs: list[SizeRun], per_txn: int) -> None:
    print("\nIn this process, no RQ (workers.matching.inbox.handle_events), once after the rounds")
    for r in runs:
        one, many = r.inproc, r.batched
        pages = f"{_mean(one.pages):.1f} | {_mean(many.pages):.2f}" if one.pages else "-"
        print(f"{r.size:>10,} members: one at a time {one.eps:,.0f} ev/s, CPU "
              f"{1000 * one.cpu / one.events:.2f} ms/ev, {one.statements / one.events:.1f} "
              f"statements/ev; {per_txn} at a time {many.eps:,.0f} ev/s, CPU "
              f"{1000 * many.cpu / many.events:.2f} ms/ev, "
              f"{many.statements / many.events:.2f} statements and "
              f"{many.calls / many.events:.2f} cursor calls/ev; pages per event and "
              f"lookup {pages}")
    first = runs[0]
    n = first.inproc.events
    verbs = {k: v for k, v in first.inproc.by_verb.items() if k != "BEGIN"}
    statements = sum(verbs.values())
    listed = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(verbs.items()))
    if first.bench.is_sqlite:
        print(f"SQL per event, one at a time: {statements / n:.1f} statements ({listed}) in "
              f"{first.inproc.commits / n:.1f} transaction(s)")
    else:
        print(f"SQL per event, one at a time: {statements / n:.1f} statements ({listed}) plus "
              f"BEGIN, COMMIT ({first.inproc.commits / n:.1f}) and the pool's pre-ping "
              f"({first.inproc.checkouts / n:.1f}) = "
              f"{(statements + 2 * first.inproc.commits + first.inproc.checkouts) / n:.1f} "
              f"round trips to PostgreSQL")
    if first.inproc.pages:
        print("pages per event and lookup: buffers EXPLAIN ANALYZE reads for the member and "
              "mirror lookups (one at a time | per event of a batch): how the lookups scale, "
              "whatever the host's load")


def _print_stripe_and_plans(runs: list[SizeRun], unmirrored: dict[str, Any] | None) -> None:
    if unmirrored:
        first_calls, repeat_calls = unmirrored["first"], unmirrored["repeat"]
        print(f"\ncustomer NOT mirrored (platform events, localstripe, each handled alone): "
              f"first sighting {sum(first_calls) / len(first_calls):.2f} calls/event (max "
              f"{max(first_calls)}), repeat {sum(repeat_calls) / len(repeat_calls):.2f} "
              f"calls/event (max {max(repeat_calls)}; the one repeat that calls is a customer "
              f"Stripe does not know: it waits as {CUSTOMER_UNKNOWN}); HTTP reads seen by "
              f"localstripe {unmirrored['http_reads']} = counted {unmirrored['counted']}")
    if runs[0].passes["floor"]:
        print("floor plans (EXPLAIN of its first batch; PostgreSQL's own choice, so a hash join "
              "over a sequential scan where that is cheaper): " + "; ".join(
                  f"{r.size:,}: " + ", ".join(f"{t} {'/'.join(sorted(r.floor_access.get(t, ())))}"
                                             for t in SCALING_TABLES)
                  + f" ({_mean(r.floor_pages):.1f} pages per event)" for r in runs))
    print(f"host: {os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.1f} (1 min), "
          f"{os.getloadavg()[2]:.1f} (15 min)\n")


def _check_scaling(args: argparse.Namespace, runs: list[SizeRun], targets: Targets) -> None:
    first, last = runs[0], runs[-1]
    lows = {r.size: min(r.eps("worker")) for r in runs}
    targets.check(f"worker >= {TARGET_EVENTS_PER_S:.0f} events/s at every size (lowest of "
                  f"{args.rounds} rounds)",
                  ", ".join(f"{size:,}: {low:,.0f}" for size, low in lows.items()),
                  min(lows.values()) >= TARGET_EVENTS_PER_S)
    if len(runs) == 1:
        return
    medians = {r.size: Spread.of(r.eps("worker")).median for r in runs}
    slowdown = 1 - medians[last.size] / medians[first.size]
    a, z = _total(first.passes["worker"]), _total(last.passes["worker"])
    detail = (f"{slowdown:+.0%} (medians {medians[first.size]:,.0f} -> "
              f"{medians[last.size]:,.0f} ev/s; worker CPU per event "
              f"{(z.cpu / z.events) / (a.cpu / a.events) - 1:+.0%}")
    if a.db_cpu:
        detail += (f", PostgreSQL CPU per event "
                   f"{(z.db_cpu / z.events) / (a.db_cpu / a.events) - 1:+.0%}")
    if first.inproc.pages:
        detail += (f", pages per batched lookup {_mean(last.batched.pages):.2f} vs "
                   f"{_mean(first.batched.pages):.2f}")
    targets.check(f"<= {TARGET_MAX_SLOWDOWN:.0%} slower at {last.size:,} than at "
                  f"{first.size:,} members (worker, medians)", detail + ")",
                  slowdown <= TARGET_MAX_SLOWDOWN)


def _check_lookups(runs: list[SizeRun], targets: Targets) -> None:
    targets.check("two workers reach the same end state as one, no deadlocks (every size)",
                  "; ".join(f"{r.size:,}: {r.two.eps:,.0f} ev/s, jobs "
                            f"{'+'.join(str(j) for j in r.two_jobs)}, "
                            f"{', '.join(r.two_problems) or 'OK'}" for r in runs),
                  not any(r.two_problems for r in runs))
    lookups = [("member and mirror lookups use indexes (EXPLAIN, one event at a time)",
                [r.inproc.access for r in runs]),
               ("batched lookups use indexes (EXPLAIN of one batch, every size)",
                [r.batched.access for r in runs])]
    for name, accesses in lookups:
        # The largest size's plans; then every smaller size whose plans differ from them.
        shown = [(runs[-1].size, accesses[-1])] + [
            (r.size, a) for r, a in zip(runs[:-1], accesses[:-1], strict=True)
            if a != accesses[-1]]
        targets.check(name, " | ".join(
            f"{size:,}: " + "; ".join(f"{t}: {', '.join(sorted(a.get(t, ())))}"
                                      for t in SCALING_TABLES)
            for size, a in shown), all(uses_indexes(a) for a in accesses))


def _check_stripe_calls(runs: list[SizeRun], unmirrored: dict[str, Any] | None,
                        targets: Targets) -> None:
    mirrored_events = sum(_total(r.passes[m]).events for r in runs
                          for m in ("worker", "baseline"))
    mirrored_events += sum(r.two.events + r.inproc.events + r.batched.events for r in runs)
    mirrored_calls = sum(_total(r.passes[m]).api_calls for r in runs
                         for m in ("worker", "baseline"))
    mirrored_calls += sum(r.two.api_calls + r.inproc.api_calls + r.batched.api_calls
                          for r in runs)
    targets.check("0 Stripe API calls per event with the customer mirrored",
                  f"{mirrored_calls} calls in {mirrored_events:,} events"
                  if unmirrored is not None else "not measured (--no-stripe: no API to call)",
                  mirrored_calls == 0 and unmirrored is not None)
    if unmirrored:
        worst_calls = max(unmirrored["first"] + unmirrored["repeat"])
        targets.check("<= 1 Stripe API call per event without the mirror", f"max {worst_calls}",
                      worst_calls <= 1 and not unmirrored["wrong_calls"])
    else:
        targets.check("<= 1 Stripe API call per event without the mirror",
                      "not measured (--no-stripe)", False)


def print_report(args: argparse.Namespace, runs: list[SizeRun], unmirrored: dict[str, Any] | None,
                 backend: str, noop: list[float], per_txn: int) -> bool:
    """The tables and the targets; returns True when every target is met."""
    _print_header(args, runs, backend, per_txn)
    _print_rates(args, runs)
    _print_time_split(runs)
    _print_rq_and_two(args, runs, noop, per_txn)
    _print_in_process(runs, per_txn)
    _print_stripe_and_plans(runs, unmirrored)
    targets = Targets("{verdict}  {name}: {value}")
    _check_scaling(args, runs, targets)
    _check_lookups(runs, targets)
    _check_stripe_calls(runs, unmirrored, targets)
    problems = [p for r in runs for p in r.problems]
    if unmirrored and not unmirrored["ok"]:
        problems.append(f"not mirrored: {unmirrored['summary']}")
    targets.check("results match the generated data (every event, subscription, mismatch; "
                  "every method and round)",
                  runs[0].summary if not problems else "\n    ".join(problems), not problems)
    return targets.all_met


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, database_url=DEFAULT_PG,
                     database_note="created if missing; each size gets a schema "
                                   "bench_<size>, dropped at the end",
                     redis_url=DEFAULT_REDIS, redis_note="for RQ",
                     quick=f"sizes {','.join(str(s) for s in QUICK_SIZES)} and 600 events",
                     strict=True)
    parser.add_argument("--sqlite", nargs="?", const="", metavar="PATH",
                        help="use SQLite files PATH-<size> instead (default: temporary ones)")
    parser.add_argument("--queue", default="mismatch-bench", help="RQ queue name (emptied)")
    parser.add_argument("--sizes", help="comma-separated member counts (default "
                        f"{','.join(str(s) for s in DEFAULT_SIZES)})")
    parser.add_argument("--events", type=int, help="subscription events per size (default 2000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times every event is processed per method (default 3)")
    parser.add_argument("--chunk", type=int,
                        help="events per timed chunk; sizes alternate chunk by chunk "
                             "(default 250, --quick 150)")
    parser.add_argument("--venues", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int,
                        help="EVENTS_PER_BATCH for the worker, and the floor's events per "
                             f"transaction (default: the service's, {DEFAULT_BATCH})")
    parser.add_argument("--noop-jobs", type=int, default=1000,
                        help="no-op jobs timed each round to show RQ's own cost (0: skip; "
                             "default 1000)")
    parser.add_argument("--no-stripe", action="store_true",
                        help="skip localstripe (API calls are then not possible nor counted)")
    parser.add_argument("--keep-data", action="store_true",
                        help="leave the loaded schemas / SQLite files in place")
    parser.add_argument("--drain-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sizes:
        args.sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    else:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.events is None:
        args.events = 600 if args.quick else 2000
    if args.chunk is None:
        args.chunk = 150 if args.quick else 250
    if (args.events < len(KINDS) or args.venues < 1 or args.rounds < 1 or args.chunk < 1
            or (args.batch is not None and args.batch < 1)
            or any(s < 10 for s in args.sizes) or len(set(args.sizes)) != len(args.sizes)):
        parser.error("need --events >= 4, --venues, --rounds, --chunk, --batch >= 1 and "
                     "distinct sizes >= 10")
    return args


def child_environment(args: argparse.Namespace, db_url: str, workdir: Path,
                      stripe: Any) -> dict[str, str]:
    """What the workers (and, through os.environ, the in-process runs) are configured by."""
    env = environment(
        without=("SMTP_URL", "SUPPORT_EMAIL", "PROMETHEUS_MULTIPROC_DIR", "STRIPE_SECRET_KEY",
                 "STRIPE_API_BASE", "EVENTS_PER_BATCH"),
        DATABASE_URL=db_url, REDIS_URL=args.redis_url, RQ_QUEUE=args.queue,
        INSTANCE_PATH=str(workdir / "instance"), SECRET_KEY="benchmark-secret-key",
        JOB_RETRY_INTERVALS="0", STRIPE_PLATFORM_ACCOUNT=PLATFORM_ACCOUNT,
        PUBLIC_BASE_URL="http://localhost:5000")
    if args.batch is not None:  # otherwise the worker runs with the service's default
        env["EVENTS_PER_BATCH"] = str(args.batch)
    if stripe is not None:
        # Every run can reach (fake) Stripe, so a mirrored event that still called the
        # API would be counted, not silently skipped for want of a key.
        env.update({"STRIPE_SECRET_KEY": "sk_test_benchmark", "STRIPE_API_BASE": stripe.url})
    return env


def prepare_backend(config: Any, db_url: str) -> str:
    """The database ready (PostgreSQL: created and migrated); how the report names it."""
    if config.database_url.startswith("sqlite"):
        return f"SQLite {config.database_url.split('///', 1)[1]} (one file per size)"
    prepare_database(db_url, fresh=False)
    return f"PostgreSQL {config.database_url.split('@')[-1]} (schema bench_<size> per size)"


def measure_all(args: argparse.Namespace, env: dict[str, str], config: Any, runs: list[SizeRun],
                workdir: Path, stripe: Any) -> tuple[list[float], dict[str, Any] | None]:
    """The rounds, two workers, the in-process runs and the unmirrored events: RQ's no-op
    rates and the unmirrored results."""
    per_txn = config.events_per_batch
    noop: list[float] = []
    for rnd in range(args.rounds):
        rate = measure_round(args, env, config, runs, rnd, workdir, per_txn)
        if rate:
            noop.append(rate)
    measure_two_workers(args, env, config, runs, workdir)
    measure_in_process(args, runs, per_txn)
    unmirrored = None
    if stripe is not None:
        unmirrored = run_unmirrored(runs[0].bench, stripe)
        print(f"  not mirrored: results {'OK' if unmirrored['ok'] else 'WRONG'} - "
              f"{unmirrored['summary']}")
        for problem in unmirrored["wrong_calls"][:5]:
            print(f"    {problem}")
    return noop, unmirrored


def clean_up(args: argparse.Namespace, config: Any, stripe: Any, created: list[BenchDb],
             workdir: Path) -> None:
    """Empty and delete the queue, stop localstripe, drop the data (unless --keep-data)."""
    from workers.runtime import reset_runtime

    reset_runtime()
    if config is not None:
        try:
            from workers.queue import get_queue

            clear_queue(config)
            get_queue(config).delete(delete_jobs=True)  # and leave no queue registered
        except Exception as exc:  # noqa: BLE001 - Redis may be what failed
            print(f"could not empty queue {args.queue}: {type(exc).__name__}")
    if stripe is not None:
        stripe.stop()
    for bench in created:
        if args.keep_data:
            print(f"kept {f'schema {bench.schema}' if bench.schema else bench.path}")
            continue
        try:
            bench.drop()
        except Exception as exc:  # noqa: BLE001
            print(f"could not drop {bench.schema or bench.path}: {type(exc).__name__}")
    if not (args.keep_data and args.sqlite == ""):
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.drain_child:
        drain_child()
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="bench-matching-"))
    stripe: LocalStripe | None = None
    runs: list[SizeRun] = []
    created: list[BenchDb] = []
    config = None
    try:
        db_url = args.database_url
        if args.sqlite is not None:
            db_url = f"sqlite:///{Path(args.sqlite or workdir / 'bench.sqlite3').resolve()}"
        if not args.no_stripe:
            stripe = start_stripe(workdir)
        env = child_environment(args, db_url, workdir, stripe)
        os.environ.clear()
        os.environ.update(env)  # the in-process runs read the environment like a worker
        from config import load_config

        config = load_config(env)
        backend = prepare_backend(config, db_url)
        print(f"database: {backend}\nredis: {args.redis_url} (queue {args.queue}); stripe: "
              f"{stripe.url if stripe else 'none'}; work dir: {workdir}")
        print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
              f"(other work on the host lowers every figure)\n", flush=True)
        for size in args.sizes:
            runs.append(load_size(args, env, size, created))
        noop, unmirrored = measure_all(args, env, config, runs, workdir, stripe)
        met = print_report(args, runs, unmirrored, backend, noop, config.events_per_batch)
        if any(r.problems for r in runs) or (unmirrored is not None and not unmirrored["ok"]):
            return 1  # wrong results: the figures mean nothing
        return 1 if args.strict and not met else 0
    finally:
        clean_up(args, config, stripe, created, workdir)


if __name__ == "__main__":
    sys.exit(main())
