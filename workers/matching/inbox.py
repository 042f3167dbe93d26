"""How inbox events get handled: which events a run takes, the transactions it handles them
in, and what is written down when an event cannot be handled yet.

A run is one event's RQ job. It takes its own event and up to EVENTS_PER_BATCH - 1 other fresh
events (received, never attempted, not waiting for a customer) that no other run holds
(`SELECT … FOR UPDATE SKIP LOCKED`; SQLite has one writer anyway), and handles them in ONE
short transaction with the same handlers, their rows loaded up front (Batch.load).

Nothing waits on the outside inside a transaction. When rule 3 needs Stripe for the run's
own event (its customer is not mirrored, not linked, not in the event), the event is set
aside; after that transaction commits, Stripe is asked with no transaction open, and the
event is handled in a second short transaction with the answer. Another event that needs
Stripe is left to its own job (marked `waiting_for` so other runs skip it), which then does
the same for it. Stripe saying "no such customer" never becomes case 3 (rule 3): the event
waits with the reason on its row, support is alerted, and it goes again when a `customer.*`
event makes the customer known.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from config import Config
from db import CUSTOMER_UNKNOWN, UNHANDLED_TYPE, Database, EventStatus, StripeEvent, utcnow
from db.errors import describe_error
from db.history import record_finished
from notifications.outbox import queue_customer_unknown_alert
from workers.matching.batch import Answer, Batch
from workers.matching.classify import EmailNotYetKnown, unknown_customer_reason
from workers.matching.handlers import HANDLERS, Event, Handler, Ignored
from workers.matching.subjects import CustomerKey, Subject, SubscriptionSeen
from workers.stripe_side.api import CustomerRecord, StripeApi, StripeUnavailable

log = logging.getLogger(__name__)

DONE = (EventStatus.PROCESSED, EventStatus.IGNORED)
MISSING = "missing"  # no such event in the inbox
ELSEWHERE = "elsewhere"  # another run holds it (and will handle it)
MAX_EXCLUDED = 5  # events a run sets aside for failing before it gives up on the rest


@dataclass(frozen=True)
class Outcome:
    """What a run concluded for one event."""

    status: str  # the row's EventStatus after the run, MISSING or ELSEWHERE
    outcome: str | None = None
    reason: str | None = None  # why it is not done (also the row's last_error)

    @property
    def done(self) -> bool:
        return self.status in DONE


@dataclass
class Item:
    """One taken event, read once."""

    row: StripeEvent
    event: Event
    handler: Handler | None
    subject: Subject | None = None
    ignored: str | None = None  # why `reads` refused it
    ignored_as: str = "ignored"  # the outcome it is recorded under


class _Failed(Exception):
    """An event's handler raised; the run leaves that event out and goes on without it."""

    def __init__(self, event_id: str, error: Exception) -> None:
        super().__init__(event_id)
        self.event_id, self.error = event_id, error


# --- runs ------------------------------------------------------------------------------------

def run(config: Config, db: Database, api: StripeApi, own: str, *,
        after_commit: Callable[[Batch], None], final_attempt: bool = True
        ) -> dict[str, Outcome]:
    """One event's job: its event and up to EVENTS_PER_BATCH - 1 fresh ones; returns every
    event's outcome. `after_commit` queues what each committed batch left to do.

    The own event is taken without waiting; if another run holds it, it is taken again once
    that run's transaction is over (waiting only for the database), so an event the other
    run left (it needed Stripe) is still handled here."""
    more = config.events_per_batch - 1
    outcomes = _pass(config, db, _taker([own], more, wait=False), {}, {own}, final_attempt,
                     after_commit)
    if outcomes.get(own) == Outcome(ELSEWHERE):
        outcomes.update(_pass(config, db, _taker([own], 0, wait=True), {}, {own},
                              final_attempt, after_commit))
    return _with_stripe(config, db, api, outcomes, [own], final_attempt, after_commit)


def handle_events(config: Config, db: Database, api: StripeApi, event_ids: Sequence[str],
                  *, after_commit: Callable[[Batch], None], final_attempt: bool = True
                  ) -> dict[str, Outcome]:
    """Exactly these events (no others), in one transaction plus the Stripe step for those
    that need it (replay --now, tests, benchmarks)."""
    ids = list(dict.fromkeys(event_ids))
    outcomes = _pass(config, db, _taker(ids, 0, wait=True), {}, set(ids), final_attempt,
                     after_commit)
    return _with_stripe(config, db, api, outcomes, ids, final_attempt, after_commit)


def _with_stripe(config: Config, db: Database, api: StripeApi, outcomes: dict[str, Outcome],
                 own: list[str], final_attempt: bool, after_commit: Callable[[Batch], None]
                 ) -> dict[str, Outcome]:
    """Ask Stripe (no transaction open) for the customers the set-aside events need, then
    handle those events with the answers. Only the run's own events are ever set aside."""
    deferred = {event_id: o.key for event_id, o in outcomes.items() if isinstance(o, _Deferred)}
    if deferred:
        answers = ask_stripe(api, set(deferred.values()))
        outcomes.update(_pass(config, db, _taker(list(deferred), 0, wait=True), answers,
                              set(own), final_attempt, after_commit))
    for event_id, o in list(outcomes.items()):
        if isinstance(o, _Deferred):  # it needed another customer by the time we had the answer
            outcomes[event_id] = record_failure(db, event_id, EmailNotYetKnown(
                o.key, f"email of {o.key[2]} unknown yet: the event changed while Stripe was "
                       f"asked"), final=final_attempt)
    for event_id in own:
        if event_id not in outcomes:
            outcomes[event_id] = Outcome(MISSING)
    return outcomes


@dataclass(frozen=True)
class _Deferred(Outcome):
    """Set aside in this transaction: rule 3 needs Stripe for `key` first."""

    key: CustomerKey = ("", False, "")


def ask_stripe(api: StripeApi, keys: Iterable[CustomerKey]) -> dict[CustomerKey, Answer]:
    """Customer reads by ID, as each customer's account, under the shared rate limit. Call
    with no transaction open: this waits for the limit, for Stripe and for its retries."""
    answers: dict[CustomerKey, Answer] = {}
    for key in sorted(keys):
        account_id, _livemode, customer_id = key
        if not api.enabled:
            answers[key] = StripeUnavailable("STRIPE_SECRET_KEY is not set")
            continue
        try:
            answers[key] = api.retrieve_customer(account_id, customer_id)
        except StripeUnavailable as exc:
            answers[key] = exc
    return answers


# --- taking events ---------------------------------------------------------------------------

Taker = Callable[[Session, set[str]], tuple[list[StripeEvent], list[str]]]


def _taker(ids: list[str], more: int, *, wait: bool) -> Taker:
    """Lock `ids` (skipping those another run holds unless `wait`) and up to `more` fresh
    events nobody holds; returns (rows, ids held elsewhere). Rows are locked in inbox order
    (so runs never deadlock on each other) and handled in the order of `ids`, then the
    fresh ones in inbox order."""

    def take(session: Session, excluded: set[str]) -> tuple[list[StripeEvent], list[str]]:
        wanted = [i for i in ids if i not in excluded]
        rows = list(session.scalars(
            select(StripeEvent).where(StripeEvent.event_id.in_(wanted))
            .order_by(StripeEvent.id).with_for_update(skip_locked=not wait))) if wanted else []
        position = {event_id: n for n, event_id in enumerate(wanted)}
        rows.sort(key=lambda row: position[row.event_id])
        held: list[str] = []
        if not wait and len(rows) < len(wanted):
            got = {row.event_id for row in rows}
            held = list(session.scalars(select(StripeEvent.event_id).where(
                StripeEvent.event_id.in_([i for i in wanted if i not in got]))))
        if more > 0:
            rows += session.scalars(
                select(StripeEvent)
                .where(StripeEvent.status == EventStatus.RECEIVED, StripeEvent.attempts == 0,
                       StripeEvent.waiting_for.is_(None),
                       StripeEvent.event_id.not_in([*ids, *excluded]))
                .order_by(StripeEvent.received_at, StripeEvent.id)
                .limit(more).with_for_update(skip_locked=True))
        return rows, held

    return take


def _item(config: Config, row: StripeEvent) -> Item:
    handler = HANDLERS.get(row.type)
    account = row.account_id or config.stripe_platform_account
    if handler is None:
        return Item(row, Event(row, {}, account), None)
    event = Event(row, json.loads(row.payload), account)
    try:
        return Item(row, event, handler, handler.reads(event))
    except Ignored as why:
        return Item(row, event, handler, ignored=str(why), ignored_as=why.outcome)


# --- one transaction -------------------------------------------------------------------------

def _pass(config: Config, db: Database, take: Taker, answers: dict[CustomerKey, Answer],
          own: set[str], final_attempt: bool, after_commit: Callable[[Batch], None]
          ) -> dict[str, Outcome]:
    """Take events and handle them in one transaction. An event whose handler raises is left
    out (its failure written down) and the rest handled again without it. `own` are the
    run's own events: the ones set aside for Stripe, and failed for good on `final_attempt`."""
    outcomes: dict[str, Outcome] = {}
    excluded: set[str] = set()
    while True:
        try:
            with db.session() as session:
                batch = Batch(session, config, answers)
                handled = _handle_taken(batch, take, excluded, own, final_attempt)
        except _Failed as failed:
            outcomes[failed.event_id] = record_failure(db, failed.event_id, failed.error,
                                                       final=final_attempt
                                                       and failed.event_id in own)
            excluded.add(failed.event_id)
            if len(excluded) >= MAX_EXCLUDED:
                raise failed.error from None
            continue
        after_commit(batch)
        for event_id, outcome in handled.items():
            if outcome.done and outcome.outcome:
                log.info("event %s -> %s", event_id, outcome.outcome)
        outcomes.update(handled)
        return outcomes


def _handle_taken(batch: Batch, take: Taker, excluded: set[str], own: set[str],
                  final_attempt: bool) -> dict[str, Outcome]:
    rows, held = take(batch.session, excluded)
    outcomes: dict[str, Outcome] = {event_id: Outcome(ELSEWHERE) for event_id in held}
    todo: list[Item] = []
    finished: list[StripeEvent] = []
    for row in rows:
        if row.status in DONE:
            outcomes[row.event_id] = Outcome(row.status, row.outcome or row.status)
        else:
            todo.append(_item(batch.config, row))
    batch.load(item.subject for item in todo if item.subject is not None)
    for item in todo:
        key = (batch.needs_stripe(item.subject) if isinstance(item.subject, SubscriptionSeen)
               else None)
        answer = batch.answers.get(key) if key else None
        if key is not None and answer is None:
            if item.row.event_id in own:
                outcomes[item.row.event_id] = _Deferred(EventStatus.RECEIVED, key=key)
            else:  # its own job asks Stripe for it; other runs skip it meanwhile
                item.row.waiting_for = key[2]
                item.row.last_error = f"email of {key[2]} not mirrored: its job asks Stripe"
            continue
        if key is not None and answer is not None and not (
                isinstance(answer, CustomerRecord) and answer.found):
            outcomes[item.row.event_id] = _not_yet(batch, item, key, answer,
                                                   final_attempt and item.row.event_id in own)
            continue
        try:
            outcomes[item.row.event_id] = _handle(batch, item)
        except Exception as exc:
            raise _Failed(item.row.event_id, exc) from exc
        finished.append(item.row)
    record_finished(batch.session, finished)  # in this transaction: counted once, or never
    return outcomes


def _handle(batch: Batch, item: Item) -> Outcome:
    """Run the event's handler inside the batch's transaction; set status and outcome."""
    row = item.row
    if item.handler is None:
        row.status, row.outcome, row.last_error = EventStatus.IGNORED, UNHANDLED_TYPE, None
    elif item.ignored is not None:
        row.status, row.outcome, row.last_error = (EventStatus.IGNORED, item.ignored_as,
                                                   item.ignored)
    else:
        row.outcome = item.handler.handle(batch, item.event, item.subject)
        row.status, row.last_error = EventStatus.PROCESSED, None
    row.waiting_for = None
    # Counted here, not before the handler: a failure rolls this back (record_failure counts
    # it), and the attempt goes out in the one UPDATE with the outcome.
    row.attempts += 1
    row.processed_at = utcnow()
    return Outcome(row.status, row.outcome)


def _not_yet(batch: Batch, item: Item, key: CustomerKey, answer: Answer, final: bool
             ) -> Outcome:
    """Rule 3 cannot answer: Stripe does not know the customer, or could not answer now.
    Written on the row; nothing else of the event is applied."""
    row = item.row
    if isinstance(answer, CustomerRecord):  # not found
        reason = unknown_customer_reason(batch, key, answer)
        row.outcome = CUSTOMER_UNKNOWN
        batch.notices.extend(queue_customer_unknown_alert(
            batch.session, batch.config, key[0], key[1], key[2], row.event_id, reason))
    else:
        reason = f"email of {key[2]} unknown: {answer}"
        row.outcome = None
    row.status = EventStatus.FAILED if final else EventStatus.RECEIVED
    row.attempts += 1
    row.last_error = reason[:2000]
    row.waiting_for = key[2]
    log.warning("event %s waits for customer %s%s", row.event_id, key[2],
                "; no retries left" if final else "")
    return Outcome(row.status, row.outcome, reason)


def record_failure(db: Database, event_id: str, exc: Exception, *, final: bool) -> Outcome:
    """Write a failed attempt on the event's row (in a transaction of its own: the one that
    failed was rolled back)."""
    message = describe_error(exc)[:2000]
    status = EventStatus.FAILED if final else EventStatus.RECEIVED
    log.warning("event %s failed (%s)%s", event_id, type(exc).__name__,
                "; no retries left" if final else "")
    try:
        with db.session() as session:
            session.execute(
                update(StripeEvent)
                .where(StripeEvent.event_id == event_id, StripeEvent.status.not_in(DONE))
                .values(status=status, attempts=StripeEvent.attempts + 1, last_error=message))
    except SQLAlchemyError:  # the database itself may be the failure
        log.error("could not record failure of event %s", event_id)
    return Outcome(status, None, message)
