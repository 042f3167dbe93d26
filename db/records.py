"""Venue and member records from the booking product, as the API and the CSV imports
write them: one validation and one upsert for both doors."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import Member, Venue, normalize_email, utcnow

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class InvalidInput(ValueError):
    """Input that cannot be stored as given; the message says which field and why."""


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
    venue.recheck_requested_at = utcnow()
    session.flush()
    return member, created


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
