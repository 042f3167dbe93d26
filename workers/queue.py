"""Redis and the RQ queue: the one way work reaches the workers (the web, the CLI and the
workers themselves all enqueue through here; `workers/__init__.py` is its public face)."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
from limits.storage import RedisStorage
from rq import Queue, Retry
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

from config import Config

log = logging.getLogger(__name__)


@functools.cache
def _redis_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def redis_url(config: Config) -> str:
    if config.redis_url:
        return config.redis_url
    from workers.embedded_redis import ensure_embedded_redis

    return ensure_embedded_redis(config.instance_path)


def get_redis(config: Config) -> redis.Redis:
    return _redis_for(redis_url(config))


def limits_storage(connection: redis.Redis, prefix: str) -> RedisStorage:
    """A `limits` storage on one of our Redis connections (its pool, not a second client), so
    every process counting against the same key shares the count."""
    kwargs = connection.connection_pool.connection_kwargs
    uri = (f"redis+unix://{kwargs['path']}" if "path" in kwargs
           else f"redis://{kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}")
    return RedisStorage(uri, connection_pool=connection.connection_pool,
                        key_prefix=f"mismatch:{prefix}")


def get_queue(config: Config) -> Queue:
    return _queue_for(redis_url(config), config.queue_name)


@functools.cache
def _queue_for(url: str, name: str) -> Queue:
    return Queue(name, connection=_redis_for(url))


def _retry(config: Config) -> Retry:
    return _retry_for(tuple(config.job_retry_intervals))


@functools.cache
def _retry_for(intervals: tuple[int, ...]) -> Retry:
    return Retry(max=len(intervals), interval=list(intervals))


_JOB_ID_SAFE = re.compile(r"[A-Za-z0-9_-]{1,200}")


def job_id(kind: str, key: object) -> str:
    """The one RQ job id for a piece of work ("event", "notice"), so the sweeper
    can ask Redis whether that work is still queued. RQ allows [A-Za-z0-9_-] only."""
    text = str(key)
    if not _JOB_ID_SAFE.fullmatch(text):
        text = "h" + hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"{kind}-{text}"


def waiting(config: Config, kind: str, keys: Iterable[object]) -> set[Any]:
    """The keys whose job is still waiting in RQ: in the queue, or scheduled for a retry
    that is not overdue by more than SWEEP_AFTER_SECONDS.

    Everything else is queued again (the row's status makes a second run a no-op): a job
    lost with a Redis restart; a job a SIGKILLed worker had taken off the queue (`queued`
    or `started` in its hash, in no list); a retry overdue because no scheduler runs (RQ's
    scheduler died with Redis or with its worker, and its lock outlives it by a minute)."""
    keys = list(keys)
    if not keys:
        return set()
    queue = get_queue(config)
    scheduled = ScheduledJobRegistry(queue=queue).key
    in_queue = set(queue.connection.lrange(queue.key, 0, -1))
    with queue.connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(Job.key_for(job_id(kind, key)), "status")
            pipe.zscore(scheduled, job_id(kind, key))
        replies = pipe.execute()
    overdue = time.time() - config.sweep_after_seconds
    return {key for key, status, due in zip(keys, replies[::2], replies[1::2], strict=True)
            if (status == b"queued" and job_id(kind, key).encode() in in_queue)
            or (status == b"scheduled" and due is not None and due > overdue)}


def _enqueue(config: Config, func: str, **options: Any) -> None:
    """Enqueue in ONE round trip: on its own, RQ sends two MULTI/EXEC transactions (register the
    queue, then save and push the job); on a pipeline it queues both and we send them at once.
    Same commands, same job; all-or-nothing instead of two steps. Halves Redis round trips on
    the webhook path (benchmarks/intake.py)."""
    queue = get_queue(config)
    with queue.connection.pipeline() as pipe:
        queue.enqueue_call(func, retry=_retry(config), result_ttl=0, pipeline=pipe, **options)
        pipe.execute()


def enqueue_event(config: Config, event_id: str) -> None:
    """Queue processing of one stored inbox event (by Stripe event id)."""
    _enqueue(
        config,
        "workers.jobs.process_event",
        args=(event_id,),
        job_id=job_id("event", event_id),
        failure_ttl=7 * 24 * 3600,
        description=f"process {event_id}",
    )


def enqueue_thin_event(config: Config, event_id: str) -> None:
    """Queue fetching the snapshot event a stored thin event stands for (workers/thin.py)."""
    _enqueue(
        config,
        "workers.jobs.fetch_thin_event",
        args=(event_id,),
        job_id=job_id("thin", event_id),
        failure_ttl=7 * 24 * 3600,
        description=f"fetch thin {event_id}",
    )


def enqueue_recheck(config: Config, venue_id: int) -> None:
    """Queue a re-check of a venue's open mismatches after its members changed."""
    _enqueue(
        config,
        "workers.jobs.recheck_venue",
        args=(venue_id,),
        description=f"recheck venue {venue_id}",
    )


def enqueue_recheck_mismatch(config: Config, mismatch_id: int) -> None:
    """Queue a re-check of one mismatch (the support page's "Re-check now")."""
    _enqueue(
        config,
        "workers.jobs.recheck_mismatch",
        args=(mismatch_id,),
        description=f"recheck mismatch {mismatch_id}",
    )


def enqueue_notification(config: Config, notification_id: int) -> None:
    """Queue sending of one outbox row."""
    _enqueue(
        config,
        "workers.jobs.send_notification",
        args=(notification_id,),
        job_id=job_id("notice", notification_id),
        description=f"send notification {notification_id}",
    )


def enqueue_action(config: Config, action_id: int) -> None:
    """Queue one confirmed action on Stripe (workers/actions.py)."""
    _enqueue(
        config,
        "workers.jobs.act_on_stripe",
        args=(action_id,),
        job_id=job_id("action", action_id),
        description=f"act on stripe {action_id}",
    )


RECONCILE_KEY = "mismatch:reconcile:last"


def record_reconcile(config: Config, missed: int) -> None:
    """Keep when reconcile last ran and how many subscriptions it had to repair, for
    /metrics (the missed-webhook alarm)."""
    get_redis(config).hset(RECONCILE_KEY, mapping={"at": int(time.time()), "missed": missed})


def last_reconcile(config: Config) -> tuple[int, int] | None:
    """(when, how many repaired) of the last reconcile, or None if it never ran."""
    found = get_redis(config).hgetall(RECONCILE_KEY)
    if not found:
        return None
    return int(found.get(b"at", 0)), int(found.get(b"missed", 0))


def queue_depth(config: Config) -> int:
    """Jobs waiting in the queue (dashboard, metrics)."""
    return len(get_queue(config))


def requeue_event(config: Config, event_id: str) -> None:
    """Queue an event again that may have failed for good: its job leaves RQ's failed registry
    and is enqueued afresh, with all its retries."""
    FailedJobRegistry(queue=get_queue(config)).remove(job_id("event", event_id))
    enqueue_event(config, event_id)


Key = TypeVar("Key")


def try_enqueue(enqueue: Callable[[Config, Key], None], config: Config, key: Key) -> bool:
    """Queue one piece of work, or say it could not be queued (False, logged with the error's
    type only). Callers use it after their row is committed: an event, a re-check request, a
    notice is already stored, and the sweeper queues what was stored but never queued."""
    try:
        enqueue(config, key)
        return True
    except Exception as exc:  # noqa: BLE001 - Redis down or refusing; the row is durable
        log.warning("%s %s not queued (%s); left for the sweeper", enqueue.__name__, key,
                    type(exc).__name__)
        return False


def discard_event_jobs(config: Config, event_ids: Iterable[str]) -> int:
    """Take the queued jobs of events a run already handled off the queue (RQ's Queue.remove
    and Job.delete), so the worker does not spend a job's bookkeeping (about 3.5 ms) on each
    only to find its event done. A job a worker already took is left alone: it runs and
    finds its event done. Returns how many were taken off."""
    queue = get_queue(config)
    ids = [job_id("event", event_id) for event_id in event_ids]
    with queue.connection.pipeline(transaction=False) as pipe:
        for one in ids:
            queue.remove(one, pipeline=pipe)
        removed = pipe.execute()
    taken = [one for one, count in zip(ids, removed, strict=True) if count]
    if not taken:
        return 0
    jobs = Job.fetch_many(taken, connection=queue.connection, serializer=queue.serializer)
    with queue.connection.pipeline() as pipe:
        for job in jobs:
            if job is not None:
                job.delete(pipeline=pipe, remove_from_queue=False)
        pipe.execute()
    return len(taken)
