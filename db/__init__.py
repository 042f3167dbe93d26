"""Database models, engine and sessions, shared by the web app, the workers and the CLI."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Executable, Table, create_engine, event, select, text
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, CursorResult, Engine, Result
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from db import messages
from db.history import ids_named
from db.models import (
    CUSTOMER_ACCOUNT,
    CUSTOMER_UNKNOWN,
    LINKED,
    ROW_ID_MAX,
    UNHANDLED_TYPE,
    UNROUTED,
    Base,
    Delivery,
    DeliveryStatus,
    Destination,
    EndedSession,
    EventStatus,
    EventTally,
    Member,
    Message,
    Mismatch,
    MismatchStatus,
    Notification,
    NotificationStatus,
    Payment,
    RejectedDelivery,
    Resolution,
    StripeAction,
    StripeCustomer,
    StripeEvent,
    Subscription,
    SubscriptionState,
    ThinEvent,
    Venue,
    case_outcome,
    is_stripe_token,
    isoformat,
    normalize_email,
    object_id,
    utcnow,
)

__all__ = [
    "CUSTOMER_ACCOUNT",
    "CUSTOMER_UNKNOWN",
    "LINKED",
    "UNHANDLED_TYPE",
    "UNROUTED",
    "case_outcome",
    "ROW_ID_MAX",
    "Base",
    "Database",
    "Delivery",
    "DeliveryStatus",
    "Destination",
    "EndedSession",
    "EventStatus",
    "EventTally",
    "Member",
    "Message",
    "Mismatch",
    "MismatchStatus",
    "Notification",
    "NotificationStatus",
    "Payment",
    "RejectedDelivery",
    "Resolution",
    "StripeCustomer",
    "StoreFailed",
    "StripeAction",
    "StripeEvent",
    "ThinEvent",
    "Subscription",
    "SubscriptionState",
    "Venue",
    "normalize_email",
    "is_stripe_token",
    "object_id",
    "utcnow",
    "insert_ignoring_duplicates",
    "payments_of",
    "rowcount",
    "ids_named",
    "isoformat",
    "upgrade",
]

if TYPE_CHECKING:  # alembic loads only when migrating (db upgrade, the release step)
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the web process and the worker write without "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin_immediate(conn: Connection) -> None:
    # Take the write lock up front: SQLite cannot upgrade a read transaction to a write
    # one under contention, which would fail jobs with "database is locked".
    conn.exec_driver_sql("BEGIN IMMEDIATE")


# Connections per pool and process (two pools in a web process, connected lazily; a worker
# uses one or two): 2 web processes hold at most 40 of PostgreSQL's default 100.
POOL_SIZE = 10


class StoreFailed(Exception):
    """An inbox row could not be written; the message is the driver error's type, never the
    row's values."""


# The inbox INSERT for PostgreSQL's driver (psycopg: pyformat parameters), the same statement
# as _insert_ignoring builds for StripeEvent. tests/test_webhooks.py stores through both.
_STORE_EVENT = (
    "INSERT INTO stripe_events (event_id, endpoint, account_id, livemode, type, created, payload,"
    " subscription_id, customer_id, status, attempts, received_at) VALUES (%(event_id)s,"
    " %(endpoint)s, %(account_id)s, %(livemode)s, %(type)s, %(created)s, %(payload)s,"
    " %(subscription_id)s, %(customer_id)s, %(status)s, %(attempts)s, %(received_at)s)"
    " ON CONFLICT DO NOTHING RETURNING id"
)


class Database:
    """One engine and session factory per process."""

    def __init__(self, url: str, *, echo: bool = False,
                 on_deliveries: Callable[[set[int]], None] | None = None) -> None:
        """`on_deliveries` is called after a commit that gave destinations new deliveries
        (their ids), to queue their delivery; without it the sweeper queues them."""
        self.url = url
        self.on_deliveries = on_deliveries
        # Bound values never reach an error's text or the log: they can be emails and names.
        kwargs: dict = {"echo": echo, "future": True, "hide_parameters": True}
        if url.startswith("sqlite"):
            # (Its folder is made by `upgrade`, never by merely opening it.)
            # isolation_level=None hands transaction control to the "begin" hook below.
            kwargs["connect_args"] = {"timeout": 10, "check_same_thread": False,
                                      "isolation_level": None}
        else:
            # A fixed pool: a request beyond it waits for a connection (cooperatively, under
            # gevent) instead of opening one that is closed again on return — with gevent's
            # many requests per process that churn cost more than the inserts.
            kwargs.update(pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=0)
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin_immediate)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self.sessionmaker, "after_flush", messages.note_flushed)
        event.listen(self.sessionmaker, "before_commit", messages.publish)
        event.listen(self.sessionmaker, "after_commit", self._after_commit)
        event.listen(self.sessionmaker, "after_rollback", messages.forget)
        # For store_event: its own small pool, autocommit (so nothing to reset on return), no
        # pre-ping (it stays on for everything else). It connects on first use: only the web
        # process does.
        self._single_statements: Engine | None = None if self.is_sqlite else create_engine(
            url, isolation_level="AUTOCOMMIT", pool_size=POOL_SIZE, max_overflow=0,
            pool_reset_on_return=None, hide_parameters=True)

    def store_event(self, row: dict[str, Any]) -> int | None:
        """Insert one inbox row as its own transaction: its id, or None when the event id is
        already stored (a redelivery). Raises StoreFailed, naming the driver error's type only.

        On PostgreSQL this is the webhook's one round trip and the most frequent statement
        the service runs, so it goes straight to the driver: one prepared INSERT on an
        autocommit connection from a pool of its own, without the Core execution around it
        (compile-cache lookup, parameter processing, result wrapping), which cost about four
        times the driver call (benchmarks/intake.py). No pre-ping: a connection the server
        dropped (a restart) is invalidated and the insert retried once on a fresh one.
        SQLite keeps the Core statement and takes its write lock up front, as everywhere.

        `subscription_id` / `customer_id` (what the event names, for the timeline) are read
        from the payload when the caller has not (the web tier has: it parsed the event)."""
        if "subscription_id" not in row:
            try:
                named = ids_named(json.loads(row["payload"]))
            except (ValueError, RecursionError):
                named = (None, None)
            row = {**row, "subscription_id": named[0], "customer_id": named[1]}
        if self._single_statements is None:
            try:
                with self.engine.begin() as conn:
                    return conn.execute(_insert_ignoring("sqlite", StripeEvent, "id"),
                                        row).scalar_one_or_none()
            except DBAPIError as exc:
                raise StoreFailed(type(exc.orig).__name__) from None
        dbapi = self._single_statements.dialect.dbapi
        assert dbapi is not None  # a dialect with a driver: create_engine imported it
        for attempt in (1, 2):
            try:
                raw = self._single_statements.raw_connection()
            except dbapi.Error as exc:  # cannot connect at all (the pool raises the driver's)
                raise StoreFailed(type(exc).__name__) from None
            try:
                cursor = raw.cursor()
                cursor.execute(_STORE_EVENT, row)
                found = cursor.fetchone()
                cursor.close()
                return found[0] if found else None
            except dbapi.OperationalError as exc:
                raw.invalidate()  # dropped by the server: never back to the pool
                if attempt == 2:
                    raise StoreFailed(type(exc).__name__) from None
            except dbapi.Error as exc:
                raise StoreFailed(type(exc).__name__) from None
            finally:
                raw.close()
        raise AssertionError("unreachable")

    def store_thin_event(self, row: dict[str, Any]) -> bool:
        """Insert one thin event as its own transaction; False when already stored."""
        try:
            with self.engine.begin() as conn:
                dialect = "sqlite" if self.is_sqlite else "postgresql"
                return conn.execute(_insert_ignoring(dialect, ThinEvent, "id"),
                                    row).scalar_one_or_none() is not None
        except DBAPIError as exc:
            raise StoreFailed(type(exc.orig).__name__) from None

    def _after_commit(self, session: Session) -> None:
        destinations = session.info.pop(messages.NEW_DELIVERIES, None)
        if destinations and self.on_deliveries is not None:
            self.on_deliveries(destinations)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commit on success, roll back on any error."""
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def schema_problem(self) -> str | None:
        """Why commands cannot work on this database yet (one line: which database, what is
        missing), without creating anything; None when the schema is there."""
        where = self.engine.url.render_as_string(hide_password=True)
        if self.is_sqlite:
            path = self.engine.url.database or ""
            if path and path != ":memory:" and not Path(path).exists():
                return f"no database at {where}"
        try:
            with self.engine.connect() as conn:
                present = sa_inspect(conn).has_table("alembic_version")
        except DBAPIError as exc:
            return f"cannot open {where} ({type(exc.orig).__name__})"
        return None if present else f"the database {where} has no schema"

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        if self._single_statements is not None:
            self._single_statements.dispose()


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations (what `mismatch db upgrade` runs)."""
    from alembic import command

    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


@functools.cache
def _insert_ignoring(dialect: str, model: type[Base], returning: str | None) -> Executable:
    """INSERT ... ON CONFLICT DO NOTHING [RETURNING column] for one table, built once."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    table = cast(Table, model.__table__)
    stmt = insert(table).on_conflict_do_nothing()
    return stmt.returning(table.c[returning]) if returning is not None else stmt


def insert_ignoring_duplicates(session: Session, model: type[Base],
                               values: dict[str, Any] | list[dict[str, Any]], *,
                               returning: InstrumentedAttribute[Any] | None = None) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING on either database; returns the new row's
    `returning` column, or None when a unique constraint already held the row. A list of
    rows goes out as one executemany (no `returning`).

    A Core statement built once per table, values passed as parameters: through
    session.execute() an ORM-entity INSERT with `.values(...)` is rebuilt, cache-keyed and run
    through the ORM's bulk-insert path on every call, which costs more CPU than the insert
    (benchmarks/matching.py). Pending changes are flushed first, as session.execute()'s
    autoflush would, so the order of writes is unchanged."""
    stmt = _insert_ignoring(session.get_bind().dialect.name, model,
                            returning.key if returning is not None else None)
    if session.autoflush:
        session.flush()
    result = session.connection().execute(stmt, values)
    if returning is None or not isinstance(values, dict):
        return None
    return result.scalar_one_or_none()


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched (session.execute types its result as the general
    Result; for these statements it is a CursorResult, which counts them)."""
    return cast(CursorResult[Any], result).rowcount or 0


def payments_of(session: Session, account_id: str, subscription_id: str) -> list[Payment]:
    """A subscription's payments, oldest first: what a refund and every view of a mismatch
    read."""
    return list(session.scalars(select(Payment).where(
        Payment.account_id == account_id, Payment.subscription_id == subscription_id)
        .order_by(Payment.paid_at, Payment.id)))
