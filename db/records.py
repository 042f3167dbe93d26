"""Venue and member records from the booking product, as the API and the CSV imports
write them: one validation and one upsert for both doors."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import Database, Member, StripeCustomer, Venue, normalize_email, utcnow

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class InvalidInput(ValueError):
    """Input that cannot be stored as given; the message says which field and why."""


NOTE_MAX = 2000  # a resolution note, from the console or the API
MAX_OFFSET = 10**9  # of a listing; beyond PostgreSQL's BIGINT it would be an error


def unstorable(value: str) -> bool:
    """True when a column cannot hold `value` (NUL, a lone surrogate from a JSON escape) or
    it holds control characters no name, ref or note has (tabs and newlines are allowed)."""
    return any((ord(c) < 0x20 and c not in "\t\n\r") or ord(c) == 0x7F
               or 0xD800 <= ord(c) <= 0xDFFF for c in value)


def _text(data: dict[str, Any], key: str, *, required: bool, limit: int) -> str | None:
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidInput(f"'{key}' is required")
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"'{key}' must be a string")
    value = value.strip()
    if len(value) > limit:
        raise InvalidInput(f"'{key}' is longer than {limit} characters")
    if unstorable(value) or any(c in "\t\n\r" for c in value):
        raise InvalidInput(f"'{key}' holds a control character, a NUL or a lone surrogate")
    return value


def check_account_id(account_id: str) -> str:
    if not re.fullmatch(r"acct_[A-Za-z0-9]{1,60}", account_id or ""):
        raise InvalidInput(f"account id {account_id!r} must look like acct_…")
    return account_id


def check_email(value: str, field: str = "email") -> str:
    if not EMAIL.match(value):
        raise InvalidInput(f"'{field}' is not an email address: {value!r}")
    return value


def parse_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "live"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "test", ""):
        return False
    raise InvalidInput(f"'{field}' must be true or false")


def upsert_venue(session: Session, account_id: str, data: dict[str, Any]) -> tuple[Venue, bool]:
    """Create or update a venue; returns (venue, created)."""
    check_account_id(account_id)
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object")
    name = _text(data, "name", required=True, limit=200)
    emails = data.get("admin_emails", [])
    if isinstance(emails, str):
        emails = [e for e in re.split(r"[;,]", emails) if e.strip()]
    if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        raise InvalidInput("'admin_emails' must be a list of email addresses")
    emails = [check_email(e.strip(), "admin_emails") for e in emails if e.strip()]
    livemode = parse_bool(data.get("livemode", False), "livemode")
    digest = parse_bool(data.get("digest", False), "digest")
    venue = session.scalar(select(Venue).where(Venue.account_id == account_id))
    created = venue is None
    if venue is None:
        venue = Venue(account_id=account_id)
        session.add(venue)
    venue.name = name or account_id
    venue.admin_emails = emails
    venue.livemode = livemode
    venue.digest = digest
    session.flush()
    return venue, created


def upsert_member(session: Session, venue: Venue, member_ref: str, data: dict[str, Any]
                  ) -> tuple[Member, bool]:
    """Create or update a member; asks for a re-check of the venue's open mismatches."""
    if not member_ref or len(member_ref) > 128:
        raise InvalidInput("member_ref must be 1 to 128 characters")
    if unstorable(member_ref) or any(c in "\t\n\r" for c in member_ref):
        raise InvalidInput("member_ref holds a control character, a NUL or a lone surrogate")
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object")
    email = check_email(_text(data, "email", required=True, limit=320) or "")
    name = _text(data, "name", required=False, limit=200)
    customer = _text(data, "stripe_customer_id", required=False, limit=64)
    if customer is not None and not re.fullmatch(r"cus_[A-Za-z0-9]+", customer):
        raise InvalidInput(f"'stripe_customer_id' must look like cus_…, got {customer!r}")
    if customer is not None:
        holder = session.scalar(select(Member).where(
            Member.venue_id == venue.id, Member.stripe_customer_id == customer,
            Member.member_ref != member_ref))
        if holder is not None:
            raise InvalidInput(f"customer {customer} is already linked to member "
                               f"{holder.member_ref} of this venue")
    member = session.scalar(select(Member).where(
        Member.venue_id == venue.id, Member.member_ref == member_ref))
    created = member is None
    if member is None:
        member = Member(venue_id=venue.id, member_ref=member_ref)
        session.add(member)
    member.email = email
    member.email_normalized = normalize_email(email) or ""
    member.name = name
    member.stripe_customer_id = customer
    note_email_drift(member, _mirrored_email(session, venue, customer))
    venue.recheck_requested_at = utcnow()
    session.flush()
    return member, created


def _mirrored_email(session: Session, venue: Venue, customer_id: str | None) -> str | None:
    if customer_id is None:
        return None
    found = session.execute(select(StripeCustomer.email, StripeCustomer.deleted).where(
        StripeCustomer.account_id == venue.account_id,
        StripeCustomer.livemode == venue.livemode,
        StripeCustomer.customer_id == customer_id)).first()
    return None if found is None or found.deleted else found.email


def note_email_drift(member: Member, customer_email: str | None) -> None:
    """Email drift: the member's linked customer has another email in Stripe (changed in
    the customer portal or a checkout). Kept on the member when the member or the customer
    changes, so the console reads an index, not a join of every linked member."""
    drifted = customer_email is not None and normalize_email(customer_email) not in (
        member.email_normalized, None)
    if not drifted:
        member.email_drift_since = None
    elif member.email_drift_since is None:
        member.email_drift_since = utcnow()


def note_customer_email(session: Session, venue: Venue, customer_id: str) -> None:
    """After a customer.* event changed the mirror: the drift of the member linked to it."""
    member = session.scalar(select(Member).where(Member.venue_id == venue.id,
                                                 Member.stripe_customer_id == customer_id))
    if member is not None:
        note_email_drift(member, _mirrored_email(session, venue, customer_id))


def delete_member(session: Session, venue: Venue, member_ref: str) -> bool:
    member = session.scalar(select(Member).where(
        Member.venue_id == venue.id, Member.member_ref == member_ref))
    if member is None:
        return False
    session.delete(member)
    venue.recheck_requested_at = utcnow()
    session.flush()
    return True


def venue_json(venue: Venue) -> dict[str, Any]:
    return {"account_id": venue.account_id, "name": venue.name,
            "admin_emails": venue.admin_emails, "livemode": venue.livemode,
            "digest": venue.digest}


def member_json(member: Member) -> dict[str, Any]:
    return {"member_ref": member.member_ref, "email": member.email, "name": member.name,
            "stripe_customer_id": member.stripe_customer_id}


# --- CSV imports ------------------------------------------------------------------------------

VENUE_HEADER = ["account_id", "name", "admin_emails", "livemode"]
MEMBER_HEADER = ["account_id", "member_ref", "email", "name", "stripe_customer_id"]


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
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise InvalidInput(f"line {reader.line_num}: expected {len(header)} fields, "
                                   f"got {len(row)}")
            yield reader.line_num, dict(zip(header, (c.strip() for c in row), strict=True))


def _import(db: Database, path: str, header: list[str],
            apply: Callable[[Session, dict[str, str]], int]) -> tuple[int, set[int]]:
    """Every row in one transaction: a bad row fails the file and nothing is written. Errors
    read `FILE: line N: why`. Returns (rows, ids of the venues touched)."""
    count, venues = 0, set()
    try:
        with db.session() as session:
            for number, row in _csv_rows(path, header):
                try:
                    venues.add(apply(session, row))
                except InvalidInput as exc:
                    raise InvalidInput(f"line {number}: {exc}") from None
                count += 1
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: the file is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror}") from None
    return count, venues


def import_venues(db: Database, path: str) -> int:
    """`account_id,name,admin_emails,livemode` (admin emails `;`-separated)."""

    def apply(session: Session, row: dict[str, str]) -> int:
        venue, _ = upsert_venue(session, row["account_id"], {
            "name": row["name"], "admin_emails": row["admin_emails"].split(";"),
            "livemode": row["livemode"]})
        return venue.id

    return _import(db, path, VENUE_HEADER, apply)[0]


def import_members(db: Database, path: str) -> tuple[int, set[int]]:
    """`account_id,member_ref,email,name,stripe_customer_id`; returns (rows, venue ids whose
    open mismatches need a re-check)."""

    def apply(session: Session, row: dict[str, str]) -> int:
        venue = session.scalar(select(Venue).where(Venue.account_id == row["account_id"]))
        if venue is None:
            raise InvalidInput(f"no venue {row['account_id']!r}; import venues first")
        upsert_member(session, venue, row["member_ref"], {
            "email": row["email"], "name": row["name"] or None,
            "stripe_customer_id": row["stripe_customer_id"] or None})
        return venue.id

    return _import(db, path, MEMBER_HEADER, apply)
