"""The sweeper re-queues lost work, and only lost work: an event whose job still waits in
Redis (queued, or scheduled for a retry) is left alone, so a backlog older than
SWEEP_AFTER_SECONDS is not queued again on every sweep (benchmarks/soak.py saw the queue
grow by the whole backlog every five seconds)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rq.job import Job, JobStatus

from tests.support import customer, event, post_event
from workers.jobs import EVENT
from workers.queue import get_queue, job_id
from workers.upkeep.sweep import sweep

ACCOUNT = "acct_1SweepVenue00000"


def stored(client) -> str:  # type: ignore[no-untyped-def]
    payload = event("customer.created", customer("cus_Sweep0001", "s@example.com"),
                    account=ACCOUNT)
    assert post_event(client, payload).status_code == 200
    return payload["id"]


def test_a_queued_event_is_not_queued_again(client, db, config):
    event_id = stored(client)
    assert get_queue(config).job_ids == [job_id(EVENT, event_id)]

    for _ in range(3):
        assert sweep(config, db, older_than=timedelta(0))["events"] == 0
    assert get_queue(config).count == 1


def test_an_event_waiting_for_its_retry_is_left_to_the_scheduler(client, db, config):
    event_id = stored(client)
    queue = get_queue(config)
    job = Job.fetch(job_id(EVENT, event_id), connection=queue.connection)
    queue.remove(job)
    queue.schedule_job(job, datetime.now(UTC) + timedelta(minutes=5))

    assert sweep(config, db, older_than=timedelta(0))["events"] == 0


def test_a_retry_long_overdue_is_queued_again(client, db, config):
    # No scheduler is running (it died with Redis, or with its SIGKILLed worker and its lock
    # outlives it): the sweeper stands in once the retry is SWEEP_AFTER_SECONDS overdue.
    event_id = stored(client)
    queue = get_queue(config)
    job = Job.fetch(job_id(EVENT, event_id), connection=queue.connection)
    queue.remove(job)
    queue.schedule_job(job, datetime.now(UTC) - timedelta(seconds=config.sweep_after_seconds + 5))

    assert sweep(config, db, older_than=timedelta(0))["events"] == 1
    assert queue.job_ids == [job_id(EVENT, event_id)]


def test_lost_or_abandoned_jobs_are_queued_again(client, db, config):
    event_id = stored(client)
    queue = get_queue(config)
    queue.empty()  # Redis restarted without persistence: the job is gone

    assert sweep(config, db, older_than=timedelta(0))["events"] == 1
    assert queue.job_ids == [job_id(EVENT, event_id)]

    # A worker SIGKILLed right after taking the job off the queue: still "queued" in its
    # hash, in no list.
    job = Job.fetch(job_id(EVENT, event_id), connection=queue.connection)
    queue.remove(job)
    assert job.get_status() == JobStatus.QUEUED
    assert sweep(config, db, older_than=timedelta(0))["events"] == 1

    # A worker SIGKILLed mid-job leaves it "started" until RQ notices: queue it again.
    queue.remove(job)
    job.set_status(JobStatus.STARTED)
    assert sweep(config, db, older_than=timedelta(0))["events"] == 1


def test_job_ids_are_valid_for_any_event_id():
    assert job_id(EVENT, "evt_1AbC") == "event-evt_1AbC"
    odd = job_id(EVENT, "evt.with spaces/and-ünïcode")
    assert odd.startswith("event-h") and odd.replace("-", "").replace("_", "").isalnum()
    assert odd == job_id(EVENT, "evt.with spaces/and-ünïcode")
    assert odd != job_id(EVENT, "evt.with spaces/and-unicode")
