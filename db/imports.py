"""CSV imports of venues and members (`mismatch venues import`, `mismatch members import`).

A file is checked whole before anything is written: each row through the API's validation
(db.records), then duplicates within the file. The writes happen in one transaction of bulk
statements: the file lands whole or not at all, and the write lock it holds (SQLite has one
for the whole database) lasts as long as a few statements, not a statement per row — a
20k-row import once held it for 31 s while Stripe's deliveries waited and got 503s.

Each CSV row is a whole record (like a PUT): an empty `stripe_customer_id` unlinks the
member. The report names every row that changes an existing record and what it changes, so
an unlink never happens unannounced; `dry_run` reports without writing. It names IDs and
field names, never emails or names."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.engine import Connection

from db import Database, Member, StripeCustomer, Venue, normalize_email, utcnow
from db.records import (
    InvalidInput,
    check_account_id,
    check_member_ref,
    drift_since,
    member_values,
    venue_values,
)

VENUE_HEADER = ["account_id", "name", "admin_emails", "livemode"]
MEMBER_HEADER = ["account_id", "member_ref", "email", "name", "stripe_customer_id"]
# Rows per statement parameter list and per IN (...) (SQLite allows 32766 parameters).
CHUNK = 500


@dataclass(frozen=True)
class RowChange:
    """What one row does to a record that already exists."""

    line: int
    record: str  # `acct_… member m-1`, `acct_…`
    changes: tuple[str, ...]  # `unlinks cus_…`, `email changed`, …


@dataclass
class ImportReport:
    what: str  # "venues" | "members"
    dry_run: bool
    rows: int = 0
    created: int = 0
    unchanged: int = 0
    changed: list[RowChange] = field(default_factory=list)
    venue_ids: set[int] = field(default_factory=set)  # whose open mismatches need a re-check

    def lines(self) -> list[str]:
        """The report as the command prints it."""
        verb = "would change" if self.dry_run else "changed"
        out = [f"line {c.line}: {c.record} {verb}: {', '.join(c.changes)}"
               for c in self.changed]
        head = "would import" if self.dry_run else "imported"
        out.append(f"{head} {self.rows} {self.what}: {self.created} new, "
                   f"{len(self.changed)} changed, {self.unchanged} unchanged"
                   + (" (dry run: nothing was written)" if self.dry_run else ""))
        return out


def _csv_rows(path: str, header: list[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) from a CSV whose header must be exactly `header`."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            first = next(reader)
        except StopIteration:
            raise InvalidInput("line 1: the file is empty") from None
        if [h.strip() for h in first] != header:
            raise InvalidInput(f"line 1: header must be {','.join(header)} "
                               f"(got {','.join(first)})")
        for row in _read(reader):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise InvalidInput(f"line {reader.line_num}: expected {len(header)} fields, "
                                   f"got {len(row)}")
            yield reader.line_num, dict(zip(header, (c.strip() for c in row), strict=True))


def _read(reader: Any) -> Iterator[list[str]]:
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise InvalidInput(f"line {reader.line_num}: not CSV ({exc})") from None


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


def _run(path: str, read: Any) -> Any:
    """Errors read `FILE: line N: why`, whatever stage found them."""
    try:
        return read()
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: the file is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror}") from None
    except csv.Error as exc:
        raise InvalidInput(f"{path}: line 1: not CSV ({exc})") from None


def _checked(rows: Iterable[tuple[int, dict[str, str]]], check: Any
             ) -> list[tuple[int, Any]]:
    out = []
    for line, row in rows:
        try:
            out.append((line, check(row)))
        except InvalidInput as exc:
            raise InvalidInput(f"line {line}: {exc}") from None
    return out


def _customer_change(old: str | None, new: str | None) -> str:
    if old is None:
        return f"links {new}"
    if new is None:
        return f"unlinks {old}"
    return f"relinks {old} -> {new}"


# --- venues ---------------------------------------------------------------------------------

def import_venues(db: Database, path: str, *, dry_run: bool = False) -> ImportReport:
    """`account_id,name,admin_emails,livemode` (admin emails `;`-separated)."""
    return _run(path, lambda: _import_venues(db, path, dry_run))


def _import_venues(db: Database, path: str, dry_run: bool) -> ImportReport:
    def check(row: dict[str, str]) -> tuple[str, dict[str, Any]]:
        return check_account_id(row["account_id"]), venue_values({
            "name": row["name"], "admin_emails": row["admin_emails"],
            "livemode": row["livemode"]})

    rows = _checked(_csv_rows(path, VENUE_HEADER), check)
    seen: dict[str, int] = {}
    for line, (account, _values) in rows:
        if account in seen:
            raise InvalidInput(f"line {line}: venue {account} is also on line {seen[account]}")
        seen[account] = line
    report = ImportReport("venues", dry_run, rows=len(rows))
    table = Venue.__table__
    with db.session() as session:
        conn = session.connection()
        existing: dict[str, Any] = {}
        for chunk in _chunks(list(seen)):
            for found in conn.execute(select(table).where(table.c.account_id.in_(chunk))):
                existing[found.account_id] = found
        inserts, updates = [], []
        for line, (account, values) in rows:
            old = existing.get(account)
            if old is None:
                report.created += 1
                inserts.append({"account_id": account, "digest": False, **values})
                continue
            changes = []
            for key, value in values.items():
                if getattr(old, key) == value:
                    continue
                if key == "admin_emails":
                    changes.append(f"admin_emails {len(old.admin_emails or [])} -> {len(value)}"
                                   + (" (no one will get its notices)" if not value else ""))
                elif key == "livemode":
                    changes.append(f"livemode {str(old.livemode).lower()} -> "
                                   f"{str(value).lower()}")
                else:
                    changes.append(f"{key} changed")
            if not changes:
                report.unchanged += 1
                continue
            report.changed.append(RowChange(line, account, tuple(changes)))
            updates.append({"row_id": old.id, **values})
        if dry_run:
            session.rollback()
            return report
        _write(conn, table, inserts, updates, ["name", "admin_emails", "livemode"])
    return report


# --- members --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _MemberRow:
    account_id: str
    member_ref: str
    values: dict[str, Any]  # email, name, stripe_customer_id


def import_members(db: Database, path: str, *, dry_run: bool = False) -> ImportReport:
    """`account_id,member_ref,email,name,stripe_customer_id`; the report's `venue_ids` are
    the venues whose open mismatches need a re-check."""
    return _run(path, lambda: _import_members(db, path, dry_run))


def _import_members(db: Database, path: str, dry_run: bool) -> ImportReport:
    def check(row: dict[str, str]) -> _MemberRow:
        return _MemberRow(check_account_id(row["account_id"]),
                          check_member_ref(row["member_ref"]), member_values({
                              "email": row["email"], "name": row["name"],
                              "stripe_customer_id": row["stripe_customer_id"]}))

    rows = _checked(_csv_rows(path, MEMBER_HEADER), check)
    lines: dict[tuple[str, str], int] = {}
    holders: dict[tuple[str, str], int] = {}
    for line, row in rows:
        key = (row.account_id, row.member_ref)
        if key in lines:
            raise InvalidInput(f"line {line}: member {row.member_ref} of {row.account_id} is "
                               f"also on line {lines[key]}")
        lines[key] = line
        customer = row.values["stripe_customer_id"]
        if customer is not None:
            if (row.account_id, customer) in holders:
                raise InvalidInput(f"line {line}: customer {customer} is already linked on line "
                                   f"{holders[row.account_id, customer]}")
            holders[row.account_id, customer] = line

    report = ImportReport("members", dry_run, rows=len(rows))
    members, venues_t = cast(Table, Member.__table__), cast(Table, Venue.__table__)
    with db.session() as session:
        conn = session.connection()
        venues: dict[str, Any] = {}
        accounts = sorted({row.account_id for _line, row in rows})
        for chunk in _chunks(accounts):
            for found in conn.execute(select(venues_t.c.id, venues_t.c.account_id,
                                             venues_t.c.livemode)
                                      .where(venues_t.c.account_id.in_(chunk))):
                venues[found.account_id] = found
        for line, row in rows:
            if row.account_id not in venues:
                raise InvalidInput(f"line {line}: no venue {row.account_id!r}; import venues "
                                   f"first")
        existing: dict[tuple[int, str], Any] = {}
        for chunk in _chunks([v.id for v in venues.values()]):
            for found in conn.execute(select(members).where(members.c.venue_id.in_(chunk))):
                existing[found.venue_id, found.member_ref] = found
        _check_links(rows, venues, existing)
        mirror = _mirrored_emails(conn, rows, venues)

        now = utcnow()
        inserts, updates = [], []
        for line, row in rows:
            venue = venues[row.account_id]
            values = row.values
            normalized = normalize_email(values["email"]) or ""
            email_of = mirror.get((row.account_id, values["stripe_customer_id"]))
            old = existing.get((venue.id, row.member_ref))
            if old is None:
                report.created += 1
                report.venue_ids.add(venue.id)
                inserts.append({"venue_id": venue.id, "member_ref": row.member_ref, **values,
                                "email_normalized": normalized,
                                "email_drift_since": drift_since(None, normalized, email_of),
                                "created_at": now, "updated_at": now})
                continue
            changes = []
            if old.stripe_customer_id != values["stripe_customer_id"]:
                changes.append(_customer_change(old.stripe_customer_id,
                                                values["stripe_customer_id"]))
            changes += [f"{key} changed" for key in ("email", "name")
                        if getattr(old, key) != values[key]]
            if not changes:
                report.unchanged += 1
                continue
            report.changed.append(RowChange(line, f"{row.account_id} member {row.member_ref}",
                                            tuple(changes)))
            report.venue_ids.add(venue.id)
            updates.append({"row_id": old.id, **values, "email_normalized": normalized,
                            "email_drift_since": drift_since(old.email_drift_since, normalized,
                                                             email_of),
                            "unlink_first": old.stripe_customer_id is not None
                            and old.stripe_customer_id != values["stripe_customer_id"]})
        if dry_run:
            session.rollback()
            return report
        # A customer moving from one member to another within the file: unlink the old
        # holders first, so no statement sees a customer linked twice (a unique constraint).
        unlink = [{"row_id": u["row_id"]} for u in updates if u.pop("unlink_first")]
        for chunk in _chunks(unlink):
            conn.execute(update(members).where(members.c.id == bindparam("row_id"))
                         .values(stripe_customer_id=None), chunk)
        _write(conn, members, inserts, updates,
               ["email", "email_normalized", "name", "stripe_customer_id", "email_drift_since"])
        for chunk in _chunks(sorted(report.venue_ids)):
            conn.execute(update(venues_t).where(venues_t.c.id.in_(chunk))
                         .values(recheck_requested_at=now))
    return report


def _check_links(rows: list[tuple[int, _MemberRow]], venues: dict[str, Any],
                 existing: dict[tuple[int, str], Any]) -> None:
    """After the file, no customer may be linked to two members of one venue: the file's
    rows against the members it leaves as they are."""
    in_file = {(venues[row.account_id].id, row.member_ref) for _line, row in rows}
    kept = {(key[0], found.stripe_customer_id): found.member_ref
            for key, found in existing.items()
            if key not in in_file and found.stripe_customer_id is not None}
    for line, row in rows:
        customer = row.values["stripe_customer_id"]
        holder = kept.get((venues[row.account_id].id, customer))
        if customer is not None and holder is not None:
            raise InvalidInput(f"line {line}: customer {customer} is already linked to member "
                               f"{holder} of this venue")


def _mirrored_emails(conn: Connection, rows: list[tuple[int, _MemberRow]],
                     venues: dict[str, Any]) -> dict[tuple[str, str], str]:
    """The mirror's email of every customer the file links, by (account, customer)."""
    table = StripeCustomer.__table__
    wanted: dict[tuple[str, bool], list[str]] = {}
    for _line, row in rows:
        if row.values["stripe_customer_id"] is not None:
            venue = venues[row.account_id]
            wanted.setdefault((row.account_id, venue.livemode), []).append(
                row.values["stripe_customer_id"])
    found: dict[tuple[str, str], str] = {}
    for (account, livemode), customers in wanted.items():
        for chunk in _chunks(customers):
            for c in conn.execute(select(table.c.customer_id, table.c.email, table.c.deleted)
                                  .where(table.c.account_id == account,
                                         table.c.livemode == livemode,
                                         table.c.customer_id.in_(chunk))):
                if c.email is not None and not c.deleted:
                    found[account, c.customer_id] = c.email
    return found


def _write(conn: Connection, table: Any, inserts: list[dict[str, Any]],
           updates: list[dict[str, Any]], columns: list[str]) -> None:
    """Bulk INSERTs and UPDATEs by row id, a chunk of rows per statement."""
    for chunk in _chunks(inserts):
        conn.execute(insert(table), chunk)
    if updates:
        # (A SET clause's parameters may not bear the columns' own names.)
        stmt = (update(table).where(table.c.id == bindparam("row_id"))
                .values({c: bindparam(f"new_{c}") for c in columns}))
        for chunk in _chunks(updates):
            conn.execute(stmt, [{"row_id": u["row_id"], **{f"new_{c}": u[c] for c in columns}}
                                for u in chunk])
