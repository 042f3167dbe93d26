"""The JSON API for the booking product and support tooling (bearer API_TOKEN)."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from flask import Blueprint, Response, abort, jsonify, make_response, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db import UNROUTED, Destination, Message, Mismatch, Resolution, StripeEvent, Venue, isoformat
from db.contract import Feed, FeedItem
from db.messages import action_json, mismatches_json
from db.records import (
    MAX_OFFSET,
    NOTE_MAX,
    InvalidInput,
    check_account_id,
    delete_member,
    member_json,
    unstorable,
    upsert_member,
    upsert_venue,
    venue_json,
)
from listener.context import current_config, current_db
from listener.edge import CONTROL, bad_json_string
from workers import (
    ACTION,
    CANCEL,
    REFUND,
    VENUE_RECHECK,
    ActionRefused,
    ActionStatus,
    request_action,
    try_enqueue,
)
from workers.outbound import destinations

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/api")


# The largest request body the API reads (a venue with its admins, a member, a note).
MAX_BODY_BYTES = 64 * 1024


@bp.before_request
def require_token() -> ResponseReturnValue | None:
    request.max_content_length = MAX_BODY_BYTES  # over it: 413 before anything is read
    token = current_config().api_token
    if not token:
        return jsonify(error="the API is disabled: API_TOKEN is not set"), 403
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             token.encode()):
        return jsonify(error="missing or wrong bearer token"), 401, {
            "WWW-Authenticate": "Bearer"}
    return None


@bp.errorhandler(InvalidInput)
def invalid(exc: InvalidInput) -> ResponseReturnValue:
    return jsonify(error=str(exc)), 400


def _json() -> Any:
    """The request's JSON, or None; a body nested too deep to parse is bad input too."""
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        raise InvalidInput("body is JSON nested too deeply") from None
    where = bad_json_string(data)
    if where is not None:
        raise InvalidInput(f"{where} holds a control character, a NUL or a lone surrogate")
    return data


def _body() -> dict[str, Any]:
    data = _json()
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object (Content-Type: application/json)")
    return data


def _recheck(venue_id: int) -> None:
    # The venue's recheck_requested_at is committed: if Redis is down the sweeper queues it.
    try_enqueue(current_config(), VENUE_RECHECK, venue_id)


def _venue(session: Session, account_id: str) -> Venue:
    check_account_id(account_id)
    venue = session.scalar(select(Venue).where(Venue.account_id == account_id))
    if venue is None:
        abort(_no_venue(account_id))
    return venue


def _no_venue(account_id: str) -> Response:
    return make_response(jsonify(
        error=f"no venue {account_id}: create it first (PUT /api/venues/{account_id}, "
              f"or mismatch venues import)"), 404)


@bp.put("/venues/<account_id>")
def put_venue(account_id: str) -> ResponseReturnValue:
    """Create or replace a venue: every field (a left-out one is a 400, never a wipe)."""
    return _write_venue(account_id, partial=False)


@bp.patch("/venues/<account_id>")
def patch_venue(account_id: str) -> ResponseReturnValue:
    """Change only the fields named; the venue must exist."""
    return _write_venue(account_id, partial=True)


def _write_venue(account_id: str, *, partial: bool) -> ResponseReturnValue:
    data = _body()
    with current_db().session() as s:
        venue, created, _changed = upsert_venue(s, account_id, data, partial=partial)
        if venue is None:
            return _no_venue(account_id)
        body = venue_json(venue)
    return jsonify(body), 201 if created else 200


@bp.put("/venues/<account_id>/members/<member_ref>")
def put_member(account_id: str, member_ref: str) -> ResponseReturnValue:
    """Create or replace a member: email, name and stripe_customer_id (null unlinks)."""
    return _write_member(account_id, member_ref, partial=False)


@bp.patch("/venues/<account_id>/members/<member_ref>")
def patch_member(account_id: str, member_ref: str) -> ResponseReturnValue:
    """Change only the fields named; the member must exist."""
    return _write_member(account_id, member_ref, partial=True)


def _write_member(account_id: str, member_ref: str, *, partial: bool) -> ResponseReturnValue:
    data = _body()
    try:
        with current_db().session() as s:
            venue = _venue(s, account_id)
            member, created, changed = upsert_member(s, venue, member_ref, data,
                                                     partial=partial)
            if member is None:
                return jsonify(error=f"no member {member_ref!r} in {account_id}: create it "
                                     f"with PUT"), 404
            body, venue_id = member_json(member), venue.id
    except IntegrityError:
        return jsonify(error="that stripe_customer_id or member_ref is already taken in this "
                             "venue"), 409
    if created or changed:
        _recheck(venue_id)
    return jsonify(body), 201 if created else 200


@bp.delete("/venues/<account_id>/members/<member_ref>")
def remove_member(account_id: str, member_ref: str) -> ResponseReturnValue:
    with current_db().session() as s:
        venue = _venue(s, account_id)
        if not delete_member(s, venue, member_ref):
            return jsonify(error=f"no member {member_ref!r} in {account_id}"), 404
        venue_id = venue.id
    _recheck(venue_id)
    return jsonify(deleted=True), 200


def mismatch_json(session: Session, m: Mismatch) -> dict[str, Any]:
    return mismatches_json(session, [m])[0]


@bp.get("/mismatches")
def list_mismatches() -> ResponseReturnValue:
    query = select(Mismatch).order_by(Mismatch.opened_at.desc(), Mismatch.id.desc())
    args = request.args
    if args.get("account"):
        query = query.where(Mismatch.account_id == args["account"])
    if args.get("status"):
        if args["status"] not in ("open", "resolved"):
            raise InvalidInput("status must be 'open' or 'resolved'")
        query = query.where(Mismatch.status == args["status"])
    if args.get("case"):
        if args["case"] not in ("1", "2", "3"):
            raise InvalidInput("case must be 1, 2 or 3")
        query = query.where(Mismatch.case == int(args["case"]))
    try:
        limit = int(args.get("limit", 100))
        offset = int(args.get("offset", 0))
    except ValueError:
        raise InvalidInput("limit and offset must be whole numbers") from None
    if not 1 <= limit <= 1000 or not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"limit must be 1..1000 and offset 0..{MAX_OFFSET}")
    with current_db().session() as s:
        rows = mismatches_json(s, list(s.scalars(query.limit(limit).offset(offset))))
    return jsonify(mismatches=rows, limit=limit, offset=offset)


@bp.get("/mismatches/<int:mismatch_id>")
def get_mismatch(mismatch_id: int) -> ResponseReturnValue:
    with current_db().session() as s:
        m = s.get(Mismatch, mismatch_id)
        if m is None:
            return jsonify(error=f"no mismatch {mismatch_id}"), 404
        return jsonify(mismatch_json(s, m))


@bp.post("/mismatches/<int:mismatch_id>/resolve")
def resolve(mismatch_id: int) -> ResponseReturnValue:
    data = _json() or {}
    note = data.get("note") if isinstance(data, dict) else None
    if note is not None and not isinstance(note, str):
        raise InvalidInput("'note' must be a string")
    if note is not None and (len(note) > NOTE_MAX or unstorable(note)):
        raise InvalidInput(f"'note' must be at most {NOTE_MAX} characters, without NUL, "
                           f"control characters or lone surrogates")
    with current_db().session() as s:
        m = s.get(Mismatch, mismatch_id, with_for_update=True)
        if m is None:
            return jsonify(error=f"no mismatch {mismatch_id}"), 404
        m.resolve(Resolution.MANUAL, note)
        return jsonify(mismatch_json(s, m))


def _act(mismatch_id: int, kind: str) -> ResponseReturnValue:
    """Ask for an action on Stripe (listener/actions.py): 202 with the action, queued for a
    worker; asking again answers the same action."""
    data = _json() or {}
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object")
    actor = data.get("actor") or "api"
    if not isinstance(actor, str) or len(actor) > 100 or CONTROL.search(actor):
        raise InvalidInput("'actor' must be a short string on one line, without control "
                           "characters")
    with current_db().session() as s:
        m = s.get(Mismatch, mismatch_id, with_for_update=True)
        if m is None:
            return jsonify(error=f"no mismatch {mismatch_id}"), 404
        if data.get("confirm") != m.subscription_id:
            raise InvalidInput(f"'confirm' must be the subscription id ({m.subscription_id}): "
                               f"it says which subscription you mean to act on")
        try:
            actions = request_action(current_config(), s, m, kind, f"{actor} (api)")
        except ActionRefused as exc:
            return jsonify(error=str(exc)), 409
        body = [action_json(a) for a in actions]
        ids = [a.id for a in actions if a.status == ActionStatus.QUEUED]
    for action_id in ids:
        try_enqueue(current_config(), ACTION, action_id)
    return jsonify(actions=body), 202


@bp.post("/mismatches/<int:mismatch_id>/cancel-subscription")
def cancel_subscription(mismatch_id: int) -> ResponseReturnValue:
    return _act(mismatch_id, CANCEL)


@bp.post("/mismatches/<int:mismatch_id>/refund")
def refund(mismatch_id: int) -> ResponseReturnValue:
    return _act(mismatch_id, REFUND)


@bp.get("/events/<event_id>")
def get_event(event_id: str) -> ResponseReturnValue:
    with current_db().session() as s:
        e = s.scalar(select(StripeEvent).where(StripeEvent.event_id == event_id))
        if e is None:
            return jsonify(error=f"no event {event_id} in the inbox"), 404
        return jsonify({
            "event_id": e.event_id, "type": e.type, "endpoint": e.endpoint,
            "account_id": e.account_id, "livemode": e.livemode, "created": e.created,
            "status": e.status, "outcome": e.outcome, "unrouted": e.outcome == UNROUTED,
            "attempts": e.attempts, "last_error": e.last_error,
            "received_at": isoformat(e.received_at),
            "processed_at": isoformat(e.processed_at),
        })


# --- outbound: destinations and the pull feed (workers/outbound) -----------------------------

def _destination(session: Session, name: str) -> Destination:
    found = destinations.find(session, destinations.check_name(name))
    if found is None:
        abort(make_response(jsonify(error=f"no destination {name!r}: create it with PUT "
                                          f"/api/destinations/{name}"), 404))
    return found


@bp.get("/destinations")
def list_destinations() -> ResponseReturnValue:
    with current_db().session() as s:
        rows = s.scalars(select(Destination).order_by(Destination.name))
        return jsonify(destinations=[destinations.destination_json(s, d) for d in rows])


@bp.put("/destinations/<name>")
def put_destination(name: str) -> ResponseReturnValue:
    """Create or replace a destination (url, event_types, account_id). A new one's signing
    secret is in this answer only."""
    with current_db().session() as s:
        destination, secret = destinations.put_destination(s, current_config(), name, _body())
        s.flush()
        body = destinations.destination_json(s, destination)
    if secret is not None:
        body["secret"] = secret
    return jsonify(body), 201 if secret is not None else 200


@bp.get("/destinations/<name>")
def get_destination(name: str) -> ResponseReturnValue:
    with current_db().session() as s:
        d = _destination(s, name)
        body = destinations.destination_json(s, d)
        body["recent_deliveries"] = destinations.recent_deliveries(s, d.id)
    return jsonify(body)


@bp.delete("/destinations/<name>")
def delete_destination(name: str) -> ResponseReturnValue:
    with current_db().session() as s:
        d = _destination(s, name)
        if d.from_config:
            raise InvalidInput(f"{name!r} is BOOKING_WEBHOOK_URL's: unset it in the "
                               f"configuration instead")
        s.delete(d)
    return jsonify(deleted=True)


@bp.post("/destinations/<name>/rotate")
def rotate_destination(name: str) -> ResponseReturnValue:
    """A new signing secret (in this answer only); the old ones sign for 24 h more."""
    with current_db().session() as s:
        d = _destination(s, name)
        if d.from_config:
            raise InvalidInput(f"{name!r} is BOOKING_WEBHOOK_URL's: rotate by listing the new "
                               f"secret first in BOOKING_WEBHOOK_SECRET")
        secret = destinations.rotate(d)
        body = destinations.destination_json(s, d)
    return jsonify({**body, "secret": secret})


FEED_LIMIT_MAX = 1000


@bp.get("/messages")
def list_messages() -> ResponseReturnValue:
    """Every message pushed, in log order, from after `after` (a next_cursor)."""
    after, limit = request.args.get("after", "0") or "0", request.args.get("limit", "100")
    if not after.isdigit() or len(after) > 19 or not limit.isdigit() or len(limit) > 4:
        raise InvalidInput("after must be a cursor from next_cursor and limit a whole number")
    if not 1 <= int(limit) <= FEED_LIMIT_MAX:
        raise InvalidInput(f"limit must be 1..{FEED_LIMIT_MAX}")
    with current_db().session() as s:
        rows = s.execute(select(Message.id, Message.message_id, Message.body)
                         .where(Message.id > int(after),
                                Message.type != destinations.TEST_TYPE)
                         .order_by(Message.id).limit(int(limit) + 1)).all()
    page = rows[:int(limit)]
    feed = Feed(data=[FeedItem.model_validate({"id": message_id, **json.loads(body)})
                      for _row, message_id, body in page],
                has_more=len(rows) > len(page),
                next_cursor=str(page[-1][0]) if page else (after if after != "0" else None))
    return jsonify(feed.model_dump(mode="json"))
