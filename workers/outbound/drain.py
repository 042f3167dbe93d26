"""Draining one destination: its due deliveries, oldest first, by the one worker holding the
destination's lease (so a slow destination ties up one outbound worker, never all of them,
and never the workers that handle Stripe's events or send notices).

Each round reads a chunk in one short transaction, POSTs with no transaction open, and
writes every answer in one more. 2xx is delivered; 410 disables the destination; anything
else is retried on the schedule (OUTBOUND_RETRY_SECONDS), and the destination is left alone
until that retry is due — a dead receiver gets one request per back-off step, not one per
message. At-least-once: a worker killed after a POST and before its write sends it again,
with the same webhook-id."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from config import Config
from db import Database, Delivery, DeliveryStatus, Destination, Message, rowcount, utcnow
from notifications.outbox import queue_destination_alert
from workers.outbound.post import Answer, Sender, headers

log = logging.getLogger(__name__)

CHUNK = 50
TURN_SECONDS = 10.0  # then the job queues itself again, behind other destinations' drains


def lease(config: Config) -> timedelta:
    """How long a drain holds its destination: a round ends by the turn's end, after at most
    one more request's timeout, and the lease is renewed every round, so a live drain never
    loses it and a killed one's lapses soon."""
    return timedelta(seconds=TURN_SECONDS + config.outbound_timeout + 5)


@dataclass
class Drained:
    delivered: int = 0
    failed: int = 0
    retrying: int = 0
    next_due: datetime | None = None  # when this destination next has something due
    alerts: list[int] = field(default_factory=list)  # support notices to send
    busy: bool = False  # another worker holds the destination
    more: bool = False  # the turn ended with deliveries still due


@dataclass(frozen=True)
class Due:
    delivery_id: int
    message_id: str
    body: bytes
    attempts: int


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    secrets: list[str]
    checked: bool  # connect to public addresses only


def live_secrets(config: Config, d: Destination, now: datetime) -> list[str]:
    """The secrets that sign for a destination now: the configuration's for the operator's,
    else the stored ones not past their expiry (a rotated-out one signs for 24 h)."""
    if d.from_config:
        return list(config.booking_webhook_secrets)
    return [s["secret"] for s in d.secrets or []
            if not s.get("expires_at") or _when(s["expires_at"]) > now]


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def claim(config: Config, db: Database, destination_id: int) -> bool:
    """Take the destination's lease, unless a live drain (or a back-off pause) holds it."""
    now = utcnow()
    with db.session() as s:
        return bool(rowcount(s.execute(
            update(Destination)
            .where(Destination.id == destination_id, Destination.enabled,
                   or_(Destination.draining_until.is_(None),
                       Destination.draining_until <= now))
            .values(draining_until=now + lease(config)))))


def release(db: Database, destination_id: int, until: datetime | None) -> None:
    """Give the lease back; `until`: keep others off until then (the destination failed)."""
    with db.session() as s:
        s.execute(update(Destination).where(Destination.id == destination_id)
                  .values(draining_until=until))


def _read(config: Config, db: Database, destination_id: int
          ) -> tuple[Target | None, list[Due]]:
    now = utcnow()
    with db.session() as s:
        d = s.get(Destination, destination_id)
        if d is None or not d.enabled:
            return None, []
        target = Target(d.name, d.url, live_secrets(config, d, now),
                        checked=not d.from_config and not config.allow_private_destinations)
        rows = s.execute(
            select(Delivery.id, Message.message_id, Message.body, Delivery.attempts)
            .join(Message, Message.id == Delivery.message_id)
            .where(Delivery.destination_id == destination_id,
                   Delivery.status == DeliveryStatus.PENDING, Delivery.next_attempt_at <= now)
            .order_by(Delivery.next_attempt_at, Delivery.id).limit(CHUNK)).all()
    return target, [Due(r.id, r.message_id, r.body.encode(), r.attempts) for r in rows]


def drain(config: Config, db: Database, destination_id: int, sender: Sender) -> Drained:
    """Deliver what is due to one destination, for one turn."""
    done = Drained()
    if not claim(config, db, destination_id):
        done.busy = True
        return done
    pause: datetime | None = None
    try:
        ends = time.monotonic() + TURN_SECONDS
        while True:
            target, due = _read(config, db, destination_id)
            if target is None or not due:
                break
            answers = []
            for item in due:
                answer = sender.post(target.url, item.body,
                                     headers(target.secrets, item.message_id, utcnow(),
                                             item.body),
                                     checked=target.checked)
                answers.append((item, answer))
                if not answer.delivered:
                    break  # the receiver is in trouble: leave the rest for later
                if time.monotonic() > ends:
                    break  # a slow receiver: the turn is over (and the lease still held)
            pause = _record(config, db, destination_id, target, answers, done)
            if pause is not None or time.monotonic() > ends:
                done.more = pause is None
                break
            with db.session() as s:  # renew the lease for the next round
                s.execute(update(Destination).where(Destination.id == destination_id)
                          .values(draining_until=utcnow() + lease(config)))
    finally:
        release(db, destination_id, pause)
    done.next_due = pause or _next_due(db, destination_id)
    return done


def _next_due(db: Database, destination_id: int) -> datetime | None:
    with db.session() as s:
        found = s.scalar(select(func.min(Delivery.next_attempt_at)).where(
            Delivery.destination_id == destination_id,
            Delivery.status == DeliveryStatus.PENDING))
    return _aware(found) if found is not None else None


def _record(config: Config, db: Database, destination_id: int, target: Target,
            answers: list[tuple[Due, Answer]], done: Drained) -> datetime | None:
    """Write a round's answers in one transaction; returns until when to leave the
    destination alone (it failed), or None."""
    schedule = config.outbound_retry_seconds
    now = utcnow()
    pause: datetime | None = None
    with db.session() as s:
        for item, answer in answers:
            values: dict = dict(attempts=item.attempts + 1, last_status_code=answer.status,
                                last_latency_ms=answer.latency_ms, last_error=answer.error)
            if answer.delivered:
                values.update(status=DeliveryStatus.DELIVERED, finished_at=now)
                done.delivered += 1
            elif answer.status == 410:
                values.update(status=DeliveryStatus.FAILED, finished_at=now,
                              last_error="410 Gone: the destination was disabled")
                done.failed += 1
                _disable(s, destination_id, f"answered 410 Gone on {now:%Y-%m-%d %H:%M} UTC")
                done.alerts += _alert(s, config, destination_id, "disabled",
                                      "it answered 410 Gone, so it was disabled")
            elif item.attempts < len(schedule):
                values.update(next_attempt_at=now + timedelta(seconds=schedule[item.attempts]))
                pause = values["next_attempt_at"]
                done.retrying += 1
            else:
                values.update(status=DeliveryStatus.FAILED, finished_at=now)
                done.failed += 1
                done.alerts += _alert(s, config, destination_id, "failing",
                                      f"a message failed {item.attempts + 1} attempts "
                                      f"({_said(answer)})")
            s.execute(update(Delivery).where(Delivery.id == item.delivery_id).values(**values))
    for item, answer in answers:
        log.info("outbound %s %s to %s: %s in %d ms", item.message_id,
                 "delivered" if answer.delivered else "not delivered", target.name,
                 _said(answer), answer.latency_ms)
    return pause


def _said(answer: Answer) -> str:
    return f"HTTP {answer.status}" if answer.status is not None else (answer.error or "error")


def _disable(s: Session, destination_id: int, reason: str) -> None:
    s.execute(update(Destination).where(Destination.id == destination_id)
              .values(enabled=False, disabled_reason=reason))


def _alert(s: Session, config: Config, destination_id: int, kind: str, why: str
           ) -> list[int]:
    """Tell support, once per destination per day."""
    d = s.get(Destination, destination_id)
    if d is None:
        return []
    return queue_destination_alert(s, config, d.name, d.url, kind, why)
