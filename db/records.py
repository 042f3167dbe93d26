"""Venue and member records from the booking product: one validation for both doors (the
API's PUT and PATCH, and the CSV imports in db/imports.py), and the API's upserts."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import Member, StripeCustomer, Venue, normalize_email, utcnow

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


# The fields a PUT must carry: it replaces the record, so a field left out would be wiped
# (a venue's admins, a member's link). PATCH changes only the fields it names.
VENUE_FIELDS = ("name", "admin_emails", "livemode")
VENUE_OPTIONAL = ("digest",)  # left out of a PUT: unchanged (false for a new venue)
MEMBER_FIELDS = ("email", "name", "stripe_customer_id")


def _fields(data: Any, required: tuple[str, ...], optional: tuple[str, ...], *,
            partial: bool, what: str) -> None:
    """Refuse a body that is not an object, names a field we do not know (a typo would be
    silently dropped) or, for a PUT, leaves one out."""
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object")
    unknown = sorted(str(k) for k in data if k not in required + optional)
    if unknown:
        raise InvalidInput(f"unknown field{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(repr(k) for k in unknown)}; a {what} has "
                           f"{', '.join(required + optional)}")
    missing = [k for k in required if k not in data]
    if missing and not partial:
        raise InvalidInput(
            f"missing field{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(k) for k in missing)}: PUT replaces the whole {what}, so it "
            f"carries every field ({', '.join(required)}); PATCH changes only the fields it "
            f"names")
    if partial and not data:
        raise InvalidInput(f"nothing to change: name at least one of "
                           f"{', '.join(required + optional)}")


def venue_values(data: Any, *, partial: bool = False) -> dict[str, Any]:
    """The venue fields `data` sets, checked and normalized."""
    _fields(data, VENUE_FIELDS, VENUE_OPTIONAL, partial=partial, what="venue")
    values: dict[str, Any] = {}
    if "name" in data:
        values["name"] = _text(data, "name", required=True, limit=200)
    if "admin_emails" in data:
        emails = data["admin_emails"]
        if isinstance(emails, str):
            emails = [e for e in re.split(r"[;,]", emails) if e.strip()]
        if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
            raise InvalidInput("'admin_emails' must be a list of email addresses")
        values["admin_emails"] = [check_email(e.strip(), "admin_emails")
                                  for e in emails if e.strip()]
    for key in ("livemode", "digest"):
        if key in data:
            values[key] = parse_bool(data[key], key)
    return values


def member_values(data: Any, *, partial: bool = False) -> dict[str, Any]:
    """The member fields `data` sets, checked and normalized (`null` name or customer id:
    none; a `null` customer id unlinks)."""
    _fields(data, MEMBER_FIELDS, (), partial=partial, what="member")
    values: dict[str, Any] = {}
    if "email" in data:
        values["email"] = check_email(_text(data, "email", required=True, limit=320) or "")
    if "name" in data:
        values["name"] = _text(data, "name", required=False, limit=200)
    if "stripe_customer_id" in data:
        customer = _text(data, "stripe_customer_id", required=False, limit=64)
        if customer is not None and not re.fullmatch(r"cus_[A-Za-z0-9]{1,60}", customer):
            raise InvalidInput(f"'stripe_customer_id' must look like cus_…, got {customer!r}")
        values["stripe_customer_id"] = customer
    return values


def check_member_ref(member_ref: str) -> str:
    if not member_ref or len(member_ref) > 128:
        raise InvalidInput("member_ref must be 1 to 128 characters")
    if unstorable(member_ref) or any(c in "\t\n\r" for c in member_ref):
        raise InvalidInput("member_ref holds a control character, a NUL or a lone surrogate")
    return member_ref


def _assign(record: Any, values: dict[str, Any]) -> list[str]:
    """Set `values` on `record`; the names of the fields whose value changed."""
    changed = [key for key, value in values.items() if getattr(record, key) != value]
    for key in changed:
        setattr(record, key, values[key])
    return changed


def upsert_venue(session: Session, account_id: str, data: Any, *, partial: bool = False
                 ) -> tuple[Venue | None, bool, list[str]]:
    """Create or replace a venue (PUT), or change some of its fields (`partial`: PATCH, which
    never creates one: None when there is none). Returns (venue, created, changed fields)."""
    check_account_id(account_id)
    values = venue_values(data, partial=partial)
    venue = session.scalar(select(Venue).where(Venue.account_id == account_id))
    created = venue is None
    if venue is None:
        if partial:
            return None, False, []
        venue = Venue(account_id=account_id, digest=False)
        session.add(venue)
    changed = _assign(venue, values)
    session.flush()
    return venue, created, changed


def upsert_member(session: Session, venue: Venue, member_ref: str, data: Any, *,
                  partial: bool = False) -> tuple[Member | None, bool, list[str]]:
    """Create or replace a member (PUT), or change some of its fields (`partial`: PATCH, None
    when there is no such member); asks for a re-check of the venue's open mismatches when
    anything changed. Returns (member, created, changed fields)."""
    check_member_ref(member_ref)
    values = member_values(data, partial=partial)
    customer = values.get("stripe_customer_id")
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
        if partial:
            return None, False, []
        member = Member(venue_id=venue.id, member_ref=member_ref)
        session.add(member)
    changed = _assign(member, values)
    if "email" in values:
        member.email_normalized = normalize_email(member.email) or ""
    if created or changed:
        note_email_drift(member, _mirrored_email(session, venue, member.stripe_customer_id))
        venue.recheck_requested_at = utcnow()
    session.flush()
    return member, created, changed


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
    member.email_drift_since = drift_since(member.email_drift_since, member.email_normalized,
                                           customer_email)


def drift_since(since: datetime | None, email_normalized: str, customer_email: str | None
                ) -> datetime | None:
    """A member's email drift after a change: None when the linked customer's email agrees
    (or is unknown), else since when it has differed (kept if it already did)."""
    drifted = customer_email is not None and normalize_email(customer_email) not in (
        email_normalized, None)
    if not drifted:
        return None
    return since or utcnow()


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
