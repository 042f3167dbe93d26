"""The table of durable work (workers.jobs.WORK): each kind one row, its job a callable RQ
can find again by name, and every kind the sweeper looks after asks the database a query
that runs."""

from __future__ import annotations

from datetime import timedelta

from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.utils import import_attribute

from db import utcnow
from workers.jobs import EVENT, WORK
from workers.queue import enqueue, get_queue, job_id


def test_each_kind_is_one_row_with_a_job_rq_can_import():
    assert len({kind.name for kind in WORK}) == len(WORK)
    for kind in WORK:
        # RQ stores module.qualname and imports it in the worker: it must be the same job.
        assert import_attribute(f"{kind.job.__module__}.{kind.job.__qualname__}") is kind.job
        assert (kind.swept_as is None) == (kind.stale is None), kind.name


def test_every_swept_kinds_stale_query_runs(db):
    cutoff = utcnow() - timedelta(seconds=60)
    with db.session() as session:
        for kind in WORK:
            if kind.stale is not None:
                assert list(session.scalars(kind.stale(cutoff))) == []


def test_work_queued_again_leaves_the_failed_registry_and_starts_afresh(config):
    """A replayed event (or one its customer released) gets all its retries again."""
    queue = get_queue(config)
    enqueue(config, EVENT, "evt_1Again")
    failed = FailedJobRegistry(queue=queue)
    failed.add(Job.fetch(job_id(EVENT, "evt_1Again"), connection=queue.connection), ttl=600)
    assert job_id(EVENT, "evt_1Again") in failed.get_job_ids()
    enqueue(config, EVENT, "evt_1Again")  # a duplicate's enqueue leaves the failure alone
    assert job_id(EVENT, "evt_1Again") in failed.get_job_ids()
    enqueue(config, EVENT, "evt_1Again", again=True)
    assert job_id(EVENT, "evt_1Again") not in failed.get_job_ids()
    assert Job.fetch(job_id(EVENT, "evt_1Again"), connection=queue.connection).retries_left \
        == len(config.job_retry_intervals)
