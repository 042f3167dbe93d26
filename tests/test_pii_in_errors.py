"""Errors never carry personal data: a database error's DETAIL or bound values, an SMTP
refusal naming its recipient — not in a log line, a stored `last_error`, RQ's record of a
failed job, or the API."""

from __future__ import annotations

import io
import logging
import smtplib
import traceback

import pytest
from sqlalchemy import insert

from db import Member, Venue
from db.errors import ScrubTracebacks, describe_error, scrubbed
from workers.jobs import told_safely
from workers.queue import get_queue

EMAIL = "Carl.Private@example.com"


@pytest.fixture
def integrity_error(db):  # type: ignore[no-untyped-def]
    """A real error from the database whose text names the member's email (PostgreSQL's
    DETAIL: `Key (venue_id, member_ref)=(1, <the email>)`, a venue using emails as member
    refs; SQLite names only the columns)."""
    with db.session() as s:
        venue = Venue(account_id="acct_1Pii", name="Pii Gym", admin_emails=[])
        s.add(venue)
        s.flush()
        venue_id = venue.id
    row = dict(venue_id=venue_id, member_ref=EMAIL, email=EMAIL, email_normalized=EMAIL.lower(),
               name="Carl Private", stripe_customer_id="cus_1Pii")
    with db.session() as s:
        s.execute(insert(Member).values(row))
    with pytest.raises(Exception) as info, db.session() as s:
        s.execute(insert(Member).values(row))
    return info.value


def _told(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def test_a_database_error_is_told_by_its_type_only(integrity_error, db):
    if not db.is_sqlite:
        assert EMAIL in str(integrity_error)  # what PostgreSQL put in it
    told = describe_error(integrity_error)
    assert told.startswith("IntegrityError (")
    assert EMAIL.lower() not in told.lower() and "Carl" not in told


def test_a_logged_traceback_keeps_its_frames_but_not_the_values(integrity_error):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubTracebacks())
    logger = logging.getLogger("test.pii")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("while storing") from integrity_error
        except RuntimeError:
            logger.exception("could not store")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "could not store" in text and "Traceback" in text and "IntegrityError" in text
    assert EMAIL.lower() not in text.lower() and "Carl" not in text


def test_a_failed_job_raises_to_rq_without_the_values(integrity_error, config, redis):
    @told_safely
    def job() -> None:
        raise integrity_error

    with pytest.raises(Exception) as info:
        job()
    assert info.value is not integrity_error
    told = _told(info.value)
    assert "IntegrityError" in told and "test_pii_in_errors.py" in told  # where it happened
    assert EMAIL.lower() not in told.lower()


def test_our_own_errors_keep_their_messages():
    from workers.matching.handlers import Ignored

    exc = Ignored("no subscription or customer id in the event")
    assert scrubbed(exc) is exc
    assert describe_error(exc) == "no subscription or customer id in the event"


def test_smtp_refusals_are_told_by_code_not_recipient():
    refused = smtplib.SMTPRecipientsRefused({EMAIL: (550, f"<{EMAIL}>: no such user".encode())})
    assert describe_error(refused) == "SMTPRecipientsRefused 550"
    rejected = smtplib.SMTPDataError(554, f"rejected for {EMAIL}")
    assert describe_error(rejected) == "SMTPDataError 554"


def test_a_worker_failure_stores_and_queues_no_values(client, api, db, config, redis, work,
                                                     caplog, monkeypatch):
    """End to end: the worker's database write fails with the customer's email in the
    error; the event's last_error, the log, RQ's failed-job record and the API hold none."""
    import workers.matching.handlers as handlers
    from tests.support import GYM, customer, event, post_event

    assert api.put(f"/api/venues/{GYM}", json={"name": "Gym", "admin_emails": [],
                                               "livemode": False}).status_code == 201
    real = handlers.customer_changed

    def failing(batch, ev, seen):  # type: ignore[no-untyped-def]
        raise integrity_error_like(EMAIL)

    monkeypatch.setitem(handlers.HANDLERS, "customer.created",
                        handlers.Handler(handlers.customer_seen, failing))
    payload = event("customer.created", customer("cus_1Fail", EMAIL), account=GYM)
    assert post_event(client, payload).status_code == 200
    caplog.set_level(logging.DEBUG)
    work()
    monkeypatch.setitem(handlers.HANDLERS, "customer.created",
                        handlers.Handler(handlers.customer_seen, real))

    response = api.get(f"/api/events/{payload['id']}")
    assert response.status_code == 200
    assert "IntegrityError" in (response.json.get("last_error") or "")
    assert EMAIL.lower() not in response.get_data(as_text=True).lower()
    assert EMAIL.lower() not in caplog.text.lower()
    from rq.registry import FailedJobRegistry

    queue = get_queue(config)
    for job_id in FailedJobRegistry(queue=queue).get_job_ids():
        job = queue.fetch_job(job_id)
        assert EMAIL.lower() not in (job.exc_info or "").lower()


def integrity_error_like(email: str) -> Exception:
    """An IntegrityError as SQLAlchemy raises it from psycopg, DETAIL and all."""
    from sqlalchemy.exc import IntegrityError

    class UniqueViolation(Exception):
        sqlstate = "23505"

    orig = UniqueViolation(f'duplicate key value violates unique constraint "members_x"\n'
                           f"DETAIL:  Key (email_normalized)=({email.lower()}) already exists.")
    return IntegrityError("INSERT INTO members ...", None, orig)
