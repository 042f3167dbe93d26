#!/usr/bin/env python
"""Matching throughput benchmark: worker events/s at 1,000 / 100,000 / 1,000,000 members.

    .venv/bin/python benchmarks/matching.py              # PostgreSQL + Redis on 127.0.0.1
    .venv/bin/python benchmarks/matching.py --quick      # smaller sizes, fewer events
    .venv/bin/python benchmarks/matching.py --sqlite     # SQLite files instead of PostgreSQL
    .venv/bin/python benchmarks/matching.py --help

Each size N gets its own schema bench_<N> in the benchmark database (created if missing;
SQLite: one file per size), migrated with db.upgrade, bulk-loaded (COPY; executemany on SQLite)
with N members over --venues venues (70% with a Stripe customer ID, each of those mirrored in
stripe_customers), then ANALYZEd. K `customer.subscription.created` Connect events are stored in
its inbox as the intake stores them (a quarter each: linked customer, case 1, case 2, case 3;
every customer mirrored; emails differing in case and spaces; case-3 emails that belong to a
member of another venue, or to nobody).

Then, in chunks of --chunk events that alternate between the sizes (so a change in the host's
load hits every size alike), the events are enqueued with workers.queue.enqueue_event and ONE
worker process of the class `mismatch worker` runs (workers.service.MismatchWorker: a warm
rq.SimpleWorker that takes up to --batch queued event jobs at once) drains them. Worker events/s
is K over the wall time from the start of the first job to the end of the last (RQ's burst
start-up and teardown, a second joining its pub/sub thread, are left out). Every event's
outcome, subscription and mismatch is then checked against what the generated data implies,
the events are put back to `received`, and workers.jobs.process_event is called in a loop in
this process (no RQ, one event per transaction) for a second figure, counting SQL statements
and EXPLAINing the statements of one event of each kind to show whether the member and mirror
lookups use their indexes; then the same for workers.jobs.process_events (--batch events per
transaction, what the worker runs), EXPLAINing one batch. No-op jobs drained by the same worker
show RQ's own cost per job; --service-worker also times the service's own
`mismatch worker --burst`.

Venues have no admin emails, so the figures measure matching, not mail (no notices are owed).

Stripe API calls are counted with workers.stripe_api.StripeApi.calls against a local fake Stripe
(localstripe, started by listener.stand_ins.LocalStripe, state in the work dir), so an API read
would be made and counted if matching wanted one: the target is 0 per event with the customer
mirrored. A last batch of platform events (localstripe has no Connect) whose customers are NOT
mirrored must cost at most 1 call per event.

Exit status: 0; 1 with --strict when a target is missed; 1 whenever the matching results are
wrong (the figures would mean nothing). The schemas / files are dropped at the end unless
--keep-data. Redis is used only through the queue named --queue, which is emptied.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from listener.stand_ins import LocalStripe

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support (payload builders) is not an installed package

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/bench_matching"
DEFAULT_REDIS = "redis://127.0.0.1:6379/10"
DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000, 50_000)
PLATFORM_ACCOUNT = "acct_1BenchPlatform0000"
TARGET_EVENTS_PER_S = 300.0
EVENTS_PER_BATCH = 100  # workers.service.EVENTS_PER_BATCH (not imported: no app code at load)
TARGET_MAX_SLOWDOWN = 0.20
KINDS = ("linked", "case_1", "case_2", "case_3")
TS = "2024-01-01 00:00:00+00"
TS_SQLITE = "2024-01-01 00:00:00.000000"
EMAIL_DOMAIN = "bench.example"
# Tables whose size grows with the member count: their lookups must be index lookups.
SCALING_TABLES = ("members", "stripe_customers")


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


@dataclass
class Batch:
    events: list[dict[str, Any]] = field(default_factory=list)  # stripe_events rows
    expected: dict[str, Expected] = field(default_factory=dict)
    customers: list[tuple] = field(default_factory=list)  # new stripe_customers rows

    def add(self, row: dict[str, Any], expected: Expected) -> None:
        self.events.append(row)
        self.expected[row["event_id"]] = expected


def event_row(support: Any, *, event_id: str, type_: str, account: str | None, created: int,
              subscription_id: str, customer_id: str, status: str = "active") -> dict[str, Any]:
    """An inbox row as the intake stores it (listener/webhooks.py)."""
    payload = support.event(type_, support.subscription(subscription_id, customer_id, status),
                            account=account, created=created, event_id=event_id)
    return dict(event_id=event_id, endpoint="connect" if account else "platform",
                account_id=account, livemode=False, type=type_, created=created,
                payload=json.dumps(payload), status="received", attempts=0)


def make_batch(size: int, events: int, venues: int, seed: int) -> Batch:
    """K events spread over the kinds; customers of cases 1-3 are new and mirrored here."""
    from tests import support

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
        batch.add(event_row(support, event_id=event_id, type_="customer.subscription.created",
                            account=account, created=created0 + j, subscription_id=sub_id,
                            customer_id=customer), exp)
    return batch


# --- database ---------------------------------------------------------------------------


def ensure_database(url: str) -> None:
    """CREATE DATABASE when the PostgreSQL database in `url` does not exist yet."""
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    admin = parsed.set(drivername="postgresql", database="postgres", query={})
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (parsed.database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{parsed.database}"')
            print(f"created database {parsed.database}")


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

    def database(self):  # type: ignore[no-untyped-def]
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

    def _load_postgres(self, database, size, venues, venue_rows, batch) -> None:  # type: ignore[no-untyped-def]
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

    def _load_sqlite(self, database, size, venues, venue_rows, batch) -> None:  # type: ignore[no-untyped-def]
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

    def insert_events(self, rows: list[dict[str, Any]]) -> None:
        from sqlalchemy import insert

        from db import StripeEvent, utcnow

        database = self.database()
        try:
            now = utcnow()
            with database.engine.begin() as conn:
                conn.execute(insert(StripeEvent), [{**r, "received_at": now} for r in rows])
        finally:
            database.dispose()

    def processing_span(self, event_ids: list[str]) -> float:
        """Seconds between the first and the last of these events being processed."""
        from sqlalchemy import func, select

        from db import StripeEvent

        database = self.database()
        try:
            with database.engine.connect() as conn:
                first, last = conn.execute(
                    select(func.min(StripeEvent.processed_at), func.max(StripeEvent.processed_at))
                    .where(StripeEvent.event_id.in_(event_ids))).one()
        finally:
            database.dispose()
        if first is None or last is None:
            raise RuntimeError("`mismatch worker --burst` processed none of the events")
        if isinstance(first, str):  # SQLite
            from datetime import datetime

            first, last = datetime.fromisoformat(first), datetime.fromisoformat(last)
        return max((last - first).total_seconds(), 1e-6)

    def reset_results(self) -> None:
        """Forget what processing did, so the same events can be processed again."""
        from sqlalchemy import text

        database = self.database()
        try:
            with database.engine.begin() as conn:
                for sql in ("DELETE FROM notifications", "DELETE FROM mismatches",
                            "DELETE FROM subscriptions",
                            "UPDATE stripe_events SET status = 'received', outcome = NULL,"
                            " attempts = 0, last_error = NULL, processed_at = NULL"):
                    conn.execute(text(sql))
            if not self.is_sqlite:
                with database.engine.connect().execution_options(
                        isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text("VACUUM ANALYZE notifications, mismatches, subscriptions,"
                                      " stripe_events"))
        finally:
            database.dispose()


# --- checking results -------------------------------------------------------------------


def verify(db_url: str, expected: dict[str, Expected]) -> tuple[bool, str]:
    """Compare every event's outcome, subscription and mismatch with what the data implies."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import aliased

    from db import Database, Member, Mismatch, Notification, StripeEvent, Subscription

    database = Database(db_url)
    problems: list[str] = []
    try:
        with database.session() as s:
            events = {e: (st, out, att) for e, st, out, att in s.execute(
                select(StripeEvent.event_id, StripeEvent.status, StripeEvent.outcome,
                       StripeEvent.attempts)
                .where(StripeEvent.event_id.in_(list(expected))))}
            m = aliased(Member)
            subs_wanted = [e.subscription_id for e in expected.values()]
            mismatches = {(a, sub): (case, status, ref, linked, note) for a, sub, case, status,
                          ref, linked, note in s.execute(
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

    outcomes: Counter[str] = Counter()
    cases: Counter[int] = Counter()
    for exp in expected.values():
        status, outcome, attempts = events.get(exp.event_id, (None, None, None))
        outcomes[outcome or str(status)] += 1
        if status != "processed" or outcome != exp.outcome or attempts != 1:
            problems.append(f"{exp.event_id}: status={status} outcome={outcome} "
                            f"attempts={attempts}, expected processed/{exp.outcome}/1")
            continue
        key = (exp.account_id, exp.subscription_id)
        state, sub_member = subs.get(key, (None, None))
        mismatch = mismatches.get(key)
        if exp.outcome == "linked":
            if state != "linked" or sub_member != exp.member_ref or mismatch is not None:
                problems.append(f"{exp.subscription_id}: state={state} member={sub_member} "
                                f"mismatch={mismatch}, expected linked to {exp.member_ref}")
            continue
        want = (int(exp.outcome[-1]), "open", exp.member_ref, exp.linked_customer_id)
        if state != "mismatch" or mismatch is None or mismatch[:4] != want or (
                exp.note is not None and mismatch[4] != exp.note):
            problems.append(f"{exp.subscription_id}: state={state} mismatch={mismatch}, "
                            f"expected {want} note={exp.note}")
            continue
        cases[mismatch[0]] += 1
    extra = len(mismatches) - sum(1 for e in expected.values() if e.outcome != "linked")
    if extra > 0:
        problems.append(f"{extra} mismatches that no event implies")
    if notices:
        problems.append(f"{notices} notices owed, expected none (venues have no admins)")
    summary = (f"{len(events)} events: " + ", ".join(f"{k} {outcomes[k]}" for k in sorted(outcomes))
               + "; open mismatches by case " + ", ".join(f"{c}: {cases[c]}" for c in (1, 2, 3)))
    if problems:
        return False, summary + f"\n    WRONG ({len(problems)}): " + "\n    ".join(problems[:5])
    return True, summary


# --- EXPLAIN: do the lookups use the indexes? --------------------------------------------


class StatementLog:
    """Counts the statements and commits of process_event; keeps one event's statements."""

    def __init__(self, engine) -> None:  # type: ignore[no-untyped-def]
        from sqlalchemy import event

        self.engine = engine
        self.count = 0
        self.commits = 0
        self.by_verb: Counter[str] = Counter()
        self.capture: list[tuple[str, Any]] | None = None
        event.listen(engine, "before_cursor_execute", self._execute)
        event.listen(engine, "commit", self._commit)

    def _execute(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        self.count += 1
        self.by_verb[statement.lstrip().split(None, 1)[0].upper()] += 1
        if self.capture is not None:
            self.capture.append((statement, parameters))

    def _commit(self, conn) -> None:  # type: ignore[no-untyped-def]
        self.commits += 1

    def close(self) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._execute)
        event.remove(self.engine, "commit", self._commit)


def _plan_nodes(plan: dict[str, Any]):  # type: ignore[no-untyped-def]
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def explain(engine, statements: list[tuple[str, Any]]  # type: ignore[no-untyped-def]
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


# --- the RQ worker (a child process) and in-process runs ----------------------------------


def drain_child() -> None:
    """Run in the child: one warm worker of the class `mismatch worker` runs
    (workers.service.MismatchWorker: rq.SimpleWorker taking event jobs in batches) drains the
    queue in burst mode and prints the wall and CPU time from the start of its first job to
    the end of its last. --batch 1 makes it a plain SimpleWorker (one job at a time)."""
    import workers.jobs  # noqa: F401 - imported up front, as in a worker that has run a job
    from workers.queue import get_queue, get_redis
    from workers.runtime import runtime
    from workers.service import MismatchWorker
    from workers.stripe_api import StripeApi

    timing: dict[str, Any] = {}

    class TimedWorker(MismatchWorker):
        def execute_job(self, job, queue):  # type: ignore[no-untyped-def]
            if not timing:
                timing["start"], timing["cpu_start"] = time.perf_counter(), time.process_time()
            super().execute_job(job, queue)
            timing["end"], timing["cpu_end"] = time.perf_counter(), time.process_time()

    TimedWorker.batch_size = int(os.environ.get("BENCH_BATCH", MismatchWorker.batch_size))
    config, database = runtime()
    database.ping()  # a running worker already holds its connection
    worker = TimedWorker([get_queue(config)], connection=get_redis(config))
    worker.work(burst=True, with_scheduler=False, logging_level="INFO")
    if not worker.jobs_done:
        raise SystemExit("the worker found no jobs")
    print(json.dumps({"jobs": worker.jobs_done, "seconds": timing["end"] - timing["start"],
                      "cpu": timing["cpu_end"] - timing["cpu_start"],
                      "api_calls": StripeApi.calls}), flush=True)


def run_rq_drain(env: dict[str, str], log_path: Path) -> dict[str, Any]:
    with open(log_path, "ab") as log_file:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--drain-child"],
            env=env, stdout=subprocess.PIPE, stderr=log_file, cwd=str(ROOT), check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"the RQ worker exited with {proc.returncode}; see {log_path}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def run_mismatch_worker(env: dict[str, str], log_path: Path) -> float:
    """Wall time of the service's own worker command, `mismatch worker --burst`."""
    started = time.perf_counter()
    with open(log_path, "ab") as log_file:
        proc = subprocess.run([str(Path(sys.executable).parent / "mismatch"), "worker", "--burst"],
                              env=env, stdout=log_file, stderr=log_file, cwd=str(ROOT),
                              check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`mismatch worker --burst` exited with {proc.returncode}; "
                           f"see {log_path}")
    return time.perf_counter() - started


def enqueue_all(config, event_ids: list[str]) -> float:  # type: ignore[no-untyped-def]
    from workers.queue import enqueue_event

    started = time.perf_counter()
    for event_id in event_ids:
        enqueue_event(config, event_id)
    return time.perf_counter() - started


def rq_noop_rate(env: dict[str, str], config, jobs: int, log_path: Path) -> float:  # type: ignore[no-untyped-def]
    """Jobs/s of the same worker on jobs that do nothing: RQ's own per-job cost."""
    from rq import Retry

    from workers.queue import get_queue

    clear_queue(config)
    queue = get_queue(config)
    intervals = list(config.job_retry_intervals)
    for _ in range(jobs):  # the options workers.queue.enqueue_event uses
        queue.enqueue_call("builtins.len", args=("",), retry=Retry(max=len(intervals),
                           interval=intervals), result_ttl=0, failure_ttl=7 * 24 * 3600)
    drained = run_rq_drain(env, log_path)
    return drained["jobs"] / drained["seconds"]


def clear_queue(config) -> None:  # type: ignore[no-untyped-def]
    from rq.registry import FailedJobRegistry

    from workers.queue import get_queue

    queue = get_queue(config)
    queue.empty()
    registry = FailedJobRegistry(queue=queue)
    for job_id in registry.get_job_ids():
        registry.remove(job_id, delete_job=True)


def failed_jobs(config) -> int:  # type: ignore[no-untyped-def]
    from rq.registry import FailedJobRegistry

    from workers.queue import get_queue

    return FailedJobRegistry(queue=get_queue(config)).count


@dataclass
class Tally:
    """What the job functions added up to when run in this process (no RQ)."""

    events: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    api_calls: int = 0
    statements: int = 0
    commits: int = 0
    checkouts: int = 0
    by_verb: Counter[str] = field(default_factory=Counter)
    access: dict[str, set[str]] = field(default_factory=dict)
    pages: list[float] = field(default_factory=list)  # buffer pages per event, per lookup

    @property
    def eps(self) -> float:
        return self.events / self.seconds


def run_in_process(url: str, event_ids: list[str], samples: set[str], batch: int,
                   tally: Tally) -> None:
    """The job functions in a loop in this process, into `tally`: process_event one event
    per transaction (batch 1), else process_events `batch` events per transaction, as the
    worker runs them. Statements counted; the calls holding a sample EXPLAINed."""
    from sqlalchemy import event

    from workers.jobs import process_event, process_events
    from workers.runtime import reset_runtime, runtime
    from workers.stripe_api import StripeApi

    os.environ["DATABASE_URL"] = url  # what runtime() reads, as a worker would
    reset_runtime()
    _config, database = runtime()
    database.ping()
    stmts = StatementLog(database.engine)
    checkouts: Counter[str] = Counter()
    event.listen(database.engine.pool, "checkout", lambda *_: checkouts.update(["checkout"]))
    calls = [event_ids[i:i + batch] for i in range(0, len(event_ids), batch)]
    captured: list[tuple[int, list[tuple[str, Any]]]] = []  # (events in the call, statements)
    calls_before = StripeApi.calls
    started, cpu_started = time.perf_counter(), time.process_time()
    for ids in calls:
        if samples.intersection(ids):
            stmts.capture = []
            captured.append((len(ids), stmts.capture))
        if batch == 1:
            process_event(ids[0])
        else:
            process_events(ids)
        stmts.capture = None
    tally.seconds += time.perf_counter() - started
    tally.cpu += time.process_time() - cpu_started
    stmts.close()
    for events, statements in captured:
        how, read = explain(database.engine, statements)
        tally.pages += [pages / events for pages in read]
        for table, hows in how.items():
            tally.access.setdefault(table, set()).update(hows)
    tally.events += len(event_ids)
    tally.api_calls += StripeApi.calls - calls_before
    tally.statements += stmts.count
    tally.commits += stmts.commits
    tally.checkouts += checkouts["checkout"]
    tally.by_verb.update(stmts.by_verb)


# --- the local fake Stripe ---------------------------------------------------------------

def start_stripe(workdir: Path) -> LocalStripe:
    """localstripe (listener.stand_ins, state under `workdir`); it has no Connect, so
    Stripe-Account is ignored: the unmirrored events are platform events."""
    from listener.stand_ins import LocalStripe

    return LocalStripe(workdir)


def customer_reads(stripe: LocalStripe) -> int:
    """Customer reads localstripe served, from its access log."""
    return sum(1 for line in stripe.log_path.read_text().splitlines()
               if '"GET /v1/customers/' in line)


def unmirrored_batch(stripe: LocalStripe, members: int = 40) -> tuple[Batch, list[tuple]]:
    """Platform events whose customers are only in (fake) Stripe: first sighting and repeat."""
    from tests import support

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
    plans.append(("cus_benchDoesNotExist", "case_3", None, None,
                  "customer not found in this Stripe account"))
    for rnd, type_ in enumerate(("customer.subscription.created",
                                 "customer.subscription.updated")):
        for u, (cus, outcome, ref, linked, note) in enumerate(plans):
            event_id, sub_id = f"evt_benchplat{rnd}x{u:04d}", f"sub_benchplat{rnd}x{u:04d}"
            # First sighting: one read by ID. Repeat: the read was mirrored, so none, except
            # the customer Stripe does not know (nothing to mirror): one read again.
            calls = 1 if rnd == 0 or cus == "cus_benchDoesNotExist" else 0
            batch.add(event_row(support, event_id=event_id, type_=type_, account=None,
                                created=1_700_100_000 + rnd * 1000 + u, subscription_id=sub_id,
                                customer_id=cus),
                      Expected(event_id, sub_id, cus, PLATFORM_ACCOUNT, outcome, ref, linked,
                               note, calls))
    return batch, member_rows


def run_unmirrored(bench: BenchDb, stripe: LocalStripe) -> dict[str, Any]:
    from sqlalchemy import insert, select

    from db import Database, Member, Venue, normalize_email
    from workers.jobs import process_event
    from workers.runtime import reset_runtime
    from workers.stripe_api import StripeApi

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
    reads_before = customer_reads(stripe)
    per_round: dict[int, list[int]] = {0: [], 1: []}
    wrong_calls = []
    for row in batch.events:
        before = StripeApi.calls
        process_event(row["event_id"])
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
    rq_events: int = 0
    rq_seconds: float = 0.0
    rq_cpu: float = 0.0
    failed_jobs: int = 0
    rq_calls: int = 0
    inproc: Tally = field(default_factory=Tally)  # process_event, one event per transaction
    batched: Tally = field(default_factory=Tally)  # process_events, as the worker runs them
    service_eps: float | None = None
    problems: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def size(self) -> int:
        return self.bench.size

    @property
    def event_ids(self) -> list[str]:
        return [row["event_id"] for row in self.batch.events]

    @property
    def samples(self) -> set[str]:
        """The first event of each kind: their statements are EXPLAINed."""
        return {next(e.event_id for e in self.batch.expected.values() if e.outcome == kind)
                for kind in KINDS}

    @property
    def rq_eps(self) -> float:
        return self.rq_events / self.rq_seconds


def load_size(args, env: dict[str, str], size: int,  # type: ignore[no-untyped-def]
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
    bench.insert_events(batch.events)
    return run


def measure_round(args, env: dict[str, str], config, runs: list[SizeRun], rnd: int,  # type: ignore[no-untyped-def]
                  workdir: Path) -> None:
    """All events of every size through the RQ worker, then through process_event in a loop.

    Both go chunk by chunk, alternating between the sizes, so that a change in the load of the
    host affects every size alike; each figure is events over the summed timed seconds.
    """
    worker_log = workdir / "worker.log"
    starts = range(0, args.events, args.chunk)
    before = {r.size: (r.rq_events, r.rq_seconds, r.inproc.events, r.inproc.seconds)
              for r in runs}

    for run in runs:
        run.bench.reset_results()
    for start in starts:
        for run in runs:
            ids = run.event_ids[start:start + args.chunk]
            clear_queue(config)
            enqueue_all(config, ids)
            drained = run_rq_drain({**env, "DATABASE_URL": run.bench.url}, worker_log)
            run.rq_events += drained["jobs"]
            run.rq_seconds += drained["seconds"]
            run.rq_cpu += drained["cpu"]
            run.rq_calls += drained["api_calls"]
            run.failed_jobs += failed_jobs(config)
    rq_ok = {}
    for run in runs:
        ok, summary = verify(run.bench.url, run.batch.expected)
        rq_ok[run.size] = ok and not run.failed_jobs
        if not rq_ok[run.size]:
            run.problems.append(f"RQ round {rnd + 1} at {run.size:,}: {summary}; "
                                f"{run.failed_jobs} failed RQ jobs")

    if args.service_worker and rnd == 0:
        for run in runs:
            sample = run.event_ids[: args.service_events]
            child_env = {**env, "DATABASE_URL": run.bench.url}
            run.bench.reset_results()
            clear_queue(config)
            enqueue_all(config, sample)
            run_mismatch_worker(child_env, worker_log)
            # From the first event's processed_at to the last one's: the worker's start-up and
            # shut-down are left out.
            run.service_eps = (len(sample) - 1) / run.bench.processing_span(sample)

    in_ok: dict[int, bool] = {run.size: True for run in runs}
    for label, batch in (("in-process", 1), ("batched", args.batch)):
        for run in runs:
            run.bench.reset_results()
        for start in starts:
            for run in runs:
                ids = run.event_ids[start:start + args.chunk]
                run_in_process(run.bench.url, ids, run.samples & set(ids), batch,
                               run.inproc if batch == 1 else run.batched)
        for run in runs:
            ok, run.summary = verify(run.bench.url, run.batch.expected)
            if not ok:
                in_ok[run.size] = False
                run.problems.append(f"{label} round {rnd + 1} at {run.size:,}: {run.summary}")
    for run in runs:
        ok = in_ok[run.size]
        rq_events, rq_seconds, in_events, in_seconds = before[run.size]
        fork = f", mismatch worker {run.service_eps:,.0f}" if run.service_eps and rnd == 0 else ""
        in_eps = (run.inproc.events - in_events) / (run.inproc.seconds - in_seconds)
        print(f"  round {rnd + 1}: {run.size:>10,} members: RQ worker "
              f"{(run.rq_events - rq_events) / (run.rq_seconds - rq_seconds):,.0f} ev/s, "
              f"in-process {in_eps:,.0f}"
              f" ev/s{fork}; results {'OK' if rq_ok[run.size] and ok else 'WRONG'}", flush=True)
    print(f"  (load average {os.getloadavg()[0]:.1f})", flush=True)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def print_report(args, runs: list[SizeRun], unmirrored: dict[str, Any] | None,  # type: ignore[no-untyped-def]
                 backend: str, noop_rate: float | None) -> bool:
    """The table and the targets; returns True when every target is met."""
    rq_eps = {r.size: r.rq_eps for r in runs}
    in_eps = {r.size: r.inproc.eps for r in runs}
    first, last = runs[0], runs[-1]
    print(f"\nMatching benchmark - {backend}\n{args.events:,} customer.subscription.created "
          f"Connect events per size ({', '.join(KINDS)} in equal parts, every customer "
          f"mirrored), {args.venues} venues without admin emails (no notices); {args.rounds} "
          f"round(s) in chunks of {args.chunk} events alternating between the sizes\n")
    header = (f"{'members':>10} {'load s':>7} {'RQ worker ev/s':>15} {'vs first':>9} "
              f"{'in-process ev/s':>16} {'vs first':>9} {'CPU ms/ev RQ|in-proc':>21} "
              f"{'pages/lookup':>13} {'API calls/ev':>13}")
    if args.service_worker:
        header += f" {'mismatch worker ev/s':>21}"
    print(header)
    print("-" * len(header))
    for r in runs:
        calls = (r.inproc.api_calls + r.rq_calls) / (r.rq_events + r.inproc.events)
        cpu = f"{1000 * r.rq_cpu / r.rq_events:.1f} | {1000 * r.inproc.cpu / r.inproc.events:.1f}"
        pages = f"{_mean(r.inproc.pages):.1f}" if r.inproc.pages else "-"
        line = (f"{r.size:>10,} {r.load_s:>7.1f} {rq_eps[r.size]:>15,.0f} "
                f"{rq_eps[r.size] / rq_eps[first.size]:>9.2f} {in_eps[r.size]:>16,.0f} "
                f"{in_eps[r.size] / in_eps[first.size]:>9.2f} {cpu:>21} {pages:>13} "
                f"{calls:>13.2f}")
        if args.service_worker:
            line += f" {r.service_eps or 0:>21,.0f}"
        print(line)
    n = first.inproc.events
    # (without SQLite's BEGIN IMMEDIATE)
    verbs = {k: v for k, v in first.inproc.by_verb.items() if k != "BEGIN"}
    statements = sum(verbs.values())
    listed = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(verbs.items()))
    if first.bench.is_sqlite:
        print(f"\nSQL per event: {statements / n:.1f} statements ({listed}) in "
              f"{first.inproc.commits / n:.1f} transaction(s)")
    else:
        print(f"\nSQL per event: {statements / n:.1f} statements ({listed}) plus BEGIN, COMMIT "
              f"({first.inproc.commits / n:.1f}) and the pool's pre-ping "
              f"({first.inproc.checkouts / n:.1f}) = "
              f"{(statements + 2 * first.inproc.commits + first.inproc.checkouts) / n:.1f} "
              f"round trips to "
              f"PostgreSQL")
    print(f"\nBatched, in-process: jobs.process_events, {args.batch} events per transaction "
          f"(what the worker runs when event jobs queue up)")
    for r in runs:
        b = r.batched
        pages = f"{_mean(b.pages):.2f}" if b.pages else "-"
        print(f"  {r.size:>10,} members: {b.eps:,.0f} ev/s, CPU {1000 * b.cpu / b.events:.2f} "
              f"ms/ev, {b.statements / b.events:.2f} statements/ev in "
              f"{b.commits / b.events:.2f} transactions/ev; pages per event for each batched "
              f"lookup {pages}")
    print("\nRQ worker: one worker process (RQ's in-process worker, batches of up to "
          f"{args.batch} event jobs: workers.service.MismatchWorker); in-process: "
          "jobs.process_event, one event per transaction, in a loop")
    print("CPU ms/ev: CPU time of the worker process (RQ) or of this process (in-process) per "
          "event; wall time well above it means waiting for PostgreSQL, Redis or a busy host")
    if any(r.inproc.pages for r in runs):
        print("pages/lookup: buffers EXPLAIN ANALYZE reads for one member or mirror lookup "
              "(index depth + heap): how the lookups scale, independent of the host's load")
    if noop_rate:
        print(f"RQ alone: the same worker drains no-op jobs at {noop_rate:,.0f} jobs/s "
              f"({1000 / noop_rate:.1f} ms per job before any matching; what one job per "
              f"event would cost without batches)")
    if args.service_worker:
        print(f"mismatch worker: the service's `mismatch worker --burst` on "
              f"{args.service_events} events per size (first to last processed_at), first round")
    if unmirrored:
        first_calls, repeat_calls = unmirrored["first"], unmirrored["repeat"]
        print(f"customer NOT mirrored (platform events, localstripe): first sighting "
              f"{sum(first_calls) / len(first_calls):.2f} calls/event (max {max(first_calls)}), "
              f"repeat {sum(repeat_calls) / len(repeat_calls):.2f} calls/event "
              f"(max {max(repeat_calls)}; the one repeat that calls is a customer Stripe does "
              f"not know); HTTP reads seen by localstripe {unmirrored['http_reads']} = counted "
              f"{unmirrored['counted']}")
    print(f"host: {os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.1f} (1 min), "
          f"{os.getloadavg()[2]:.1f} (15 min)\n")

    checks: list[tuple[str, bool, str]] = []
    worst = min(runs, key=lambda r: rq_eps[r.size])
    checks.append((f"RQ worker >= {TARGET_EVENTS_PER_S:.0f} events/s at every size",
                   rq_eps[worst.size] >= TARGET_EVENTS_PER_S,
                   f"lowest {rq_eps[worst.size]:,.0f} at {worst.size:,}"))
    if len(runs) > 1:
        cpu_per_event = {"RQ worker": lambda r: r.rq_cpu / r.rq_events,
                         "in-process": lambda r: r.inproc.cpu / r.inproc.events}
        for label, best in (("RQ worker", rq_eps), ("in-process", in_eps)):
            slowdown = 1 - best[last.size] / best[first.size]
            cpu = cpu_per_event[label]
            checks.append((f"<= {TARGET_MAX_SLOWDOWN:.0%} slower at {last.size:,} than at "
                           f"{first.size:,} ({label})", slowdown <= TARGET_MAX_SLOWDOWN,
                           f"{slowdown:+.0%} (CPU per event {cpu(last) / cpu(first) - 1:+.0%}"
                           + (f", pages per lookup {_mean(last.inproc.pages):.1f} vs "
                              f"{_mean(first.inproc.pages):.1f})" if first.inproc.pages
                              else ")")))
    checks.append(("member and mirror lookups use indexes (EXPLAIN, every size)",
                   all(uses_indexes(r.inproc.access) for r in runs),
                   "; ".join(f"{t}: {', '.join(sorted(last.inproc.access.get(t, ())))}"
                             for t in SCALING_TABLES)))
    checks.append(("batched lookups use indexes (EXPLAIN of one batch, every size)",
                   all(uses_indexes(r.batched.access) for r in runs),
                   "; ".join(f"{t}: {', '.join(sorted(last.batched.access.get(t, ())))}"
                             for t in SCALING_TABLES)))
    mirrored_calls = sum(r.inproc.api_calls + r.rq_calls + r.batched.api_calls for r in runs)
    checks.append(("0 Stripe API calls per event with the customer mirrored",
                   mirrored_calls == 0 and unmirrored is not None,
                   f"{mirrored_calls} calls in "
                   f"{sum(r.rq_events + r.inproc.events + r.batched.events for r in runs):,} "
                   f"events"
                   if unmirrored is not None else "not measured (--no-stripe: no API to call)"))
    if unmirrored:
        worst_calls = max(unmirrored["first"] + unmirrored["repeat"])
        checks.append(("<= 1 Stripe API call per event without the mirror",
                       worst_calls <= 1 and not unmirrored["wrong_calls"],
                       f"max {worst_calls}"))
    else:
        checks.append(("<= 1 Stripe API call per event without the mirror", False,
                       "not measured (--no-stripe)"))
    problems = [p for r in runs for p in r.problems]
    if unmirrored and not unmirrored["ok"]:
        problems.append(f"not mirrored: {unmirrored['summary']}")
    checks.append(("results match the generated data (every event, subscription, mismatch)",
                   not problems, first.summary if not problems else "\n    ".join(problems)))
    for name, passed, detail in checks:
        print(f"{'PASS' if passed else 'MISS'}  {name}: {detail}")
    return all(passed for _, passed, _ in checks)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=DEFAULT_PG,
                        help=f"PostgreSQL URL; the database is created if missing; each size "
                             f"gets a schema bench_<size>, dropped at the end (default "
                             f"{DEFAULT_PG})")
    parser.add_argument("--sqlite", nargs="?", const="", metavar="PATH",
                        help="use SQLite files PATH-<size> instead (default: temporary ones)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS,
                        help=f"Redis for RQ (default {DEFAULT_REDIS})")
    parser.add_argument("--queue", default="mismatch-bench", help="RQ queue name (emptied)")
    parser.add_argument("--sizes", help="comma-separated member counts (default "
                        f"{','.join(str(s) for s in DEFAULT_SIZES)})")
    parser.add_argument("--quick", action="store_true",
                        help=f"sizes {','.join(str(s) for s in QUICK_SIZES)} and 600 events")
    parser.add_argument("--events", type=int, help="subscription events per size (default 2000)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times every event is processed per method (default 1)")
    parser.add_argument("--chunk", type=int,
                        help="events per timed chunk; sizes alternate chunk by chunk "
                             "(default 250, --quick 150)")
    parser.add_argument("--venues", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--service-worker", action="store_true",
                        help="also time the service's own `mismatch worker --burst` (first "
                             "round, from the first to the last event processed)")
    parser.add_argument("--service-events", type=int, default=500,
                        help="events per size for --service-worker (default 500)")
    parser.add_argument("--batch", type=int, default=EVENTS_PER_BATCH,
                        help="event jobs the worker takes at once (default "
                             f"{EVENTS_PER_BATCH}, as `mismatch worker`; 1: one at a time)")
    parser.add_argument("--noop-jobs", type=int, default=1000,
                        help="no-op jobs timed to show RQ's own cost (0: skip; default 1000)")
    parser.add_argument("--no-stripe", action="store_true",
                        help="skip localstripe (API calls are then not possible nor counted)")
    parser.add_argument("--keep-data", action="store_true",
                        help="leave the loaded schemas / SQLite files in place")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
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
            or any(s < 10 for s in args.sizes) or len(set(args.sizes)) != len(args.sizes)):
        parser.error("need --events >= 4, --venues, --rounds, --chunk >= 1 and distinct "
                     "sizes >= 10")
    return args


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
        env = {k: v for k, v in os.environ.items()
               if k not in ("SMTP_URL", "SUPPORT_EMAIL", "PROMETHEUS_MULTIPROC_DIR",
                            "STRIPE_SECRET_KEY", "STRIPE_API_BASE")}
        env.update({
            "DATABASE_URL": db_url,
            "REDIS_URL": args.redis_url,
            "RQ_QUEUE": args.queue,
            "INSTANCE_PATH": str(workdir / "instance"),
            "SECRET_KEY": "benchmark-secret-key",
            "JOB_RETRY_INTERVALS": "0",
            "STRIPE_PLATFORM_ACCOUNT": PLATFORM_ACCOUNT,
            "PUBLIC_BASE_URL": "http://localhost:5000",
            "BENCH_BATCH": str(args.batch),
        })
        if stripe is not None:
            # Every run can reach (fake) Stripe, so a mirrored event that still called the
            # API would be counted, not silently skipped for want of a key.
            env.update({"STRIPE_SECRET_KEY": "sk_test_benchmark", "STRIPE_API_BASE": stripe.url})
        os.environ.clear()
        os.environ.update(env)  # the in-process runs read the environment like a worker

        from config import load_config

        config = load_config(env)
        if config.database_is_sqlite:
            backend = f"SQLite {config.database_url.split('///', 1)[1]} (one file per size)"
        else:
            ensure_database(config.database_url)
            backend = (f"PostgreSQL {config.database_url.split('@')[-1]} (schema bench_<size> "
                       f"per size)")
        print(f"database: {backend}\nredis: {args.redis_url} (queue {args.queue}); stripe: "
              f"{stripe.url if stripe else 'none'}; work dir: {workdir}")
        print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
              f"(other work on the host lowers every figure)\n", flush=True)

        for size in args.sizes:
            runs.append(load_size(args, env, size, created))
        noop_rate = None
        if args.noop_jobs:
            noop_rate = rq_noop_rate({**env, "DATABASE_URL": runs[0].bench.url}, config,
                                     args.noop_jobs, workdir / "worker.log")
            print(f"RQ no-op jobs: {noop_rate:,.0f} jobs/s", flush=True)
        for rnd in range(args.rounds):
            measure_round(args, env, config, runs, rnd, workdir)
        unmirrored = None
        if stripe is not None:
            unmirrored = run_unmirrored(runs[0].bench, stripe)
            print(f"  not mirrored: results {'OK' if unmirrored['ok'] else 'WRONG'} - "
                  f"{unmirrored['summary']}")
            for problem in unmirrored["wrong_calls"][:5]:
                print(f"    {problem}")
        met = print_report(args, runs, unmirrored, backend, noop_rate)
        if any(r.problems for r in runs) or (unmirrored is not None and not unmirrored["ok"]):
            return 1  # wrong results: the figures mean nothing
        return 1 if args.strict and not met else 0
    finally:
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


if __name__ == "__main__":
    sys.exit(main())
