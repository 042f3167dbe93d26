"""Redis and the RQ queue: the one way work reaches the workers. The web, the CLI and the
workers themselves all `enqueue` a row of the table of durable work (`workers.jobs.WORK`)."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from limits.storage import RedisStorage
from rq import Queue, Retry
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from sqlalchemy import Select

from config import Config
from workers.embedded_redis import ensure_embedded_redis

log = logging.getLogger(__name__)


@functools.cache
def _redis_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def redis_url(config: Config) -> str:
    if config.redis_url:
        return config.redis_url
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


def get_queue(config: Config, kind: Kind | None = None) -> Queue:
    """The main queue, or the queue of its own a kind of work has (outbound deliveries)."""
    name = config.queue_name
    if kind is not None and kind.queue:
        name = f"{name}-{kind.queue}"
    return _queue_for(redis_url(config), name)


@functools.cache
def _queue_for(url: str, name: str) -> Queue:
    return Queue(name, connection=_redis_for(url))


def _retry(config: Config) -> Retry:
    return _retry_for(tuple(config.job_retry_intervals))


@functools.cache
def _retry_for(intervals: tuple[int, ...]) -> Retry:
    return Retry(max=len(intervals), interval=list(intervals))


@dataclass(frozen=True)
class Kind:
    """One kind of durable work: a row (event, notice, action, …) whose job RQ runs. The
    table of kinds is `workers.jobs.WORK`; everything here works for any row of it."""

    name: str  # job ids' prefix ("event-evt_…"), and what the sweep's counts call it
    job: Callable[[Any], Any]  # the RQ job (a callable, not a dotted path), given the key
    swept_as: str | None = None  # the sweep's count; None: the sweeper leaves it alone
    # The sweeper's query: the keys of rows stored before the cutoff whose work is unfinished.
    stale: Callable[[datetime], Select[Any]] | None = None
    unique: bool = True  # one job id per key: RQ can say whether it still waits
    failure_ttl: int | None = None  # seconds RQ keeps a failed job (None: RQ's default)
    queue: str = ""  # a queue of its own ("outbound" → "<RQ_QUEUE>-outbound"), own workers
    retried: bool = True  # False: the row keeps its own schedule; RQ runs the job once


_JOB_ID_SAFE = re.compile(r"[A-Za-z0-9_-]{1,200}")


def job_id(kind: Kind, key: object) -> str:
    """The one RQ job id for a piece of work, so the sweeper can ask Redis whether that
    work is still queued. RQ allows [A-Za-z0-9_-] only."""
    text = str(key)
    if not _JOB_ID_SAFE.fullmatch(text):
        text = "h" + hashlib.sha256(text.encode()).hexdigest()[:32]
    return f"{kind.name}-{text}"


def enqueue(config: Config, kind: Kind, key: Any, *, again: bool = False,
            at: datetime | None = None) -> None:
    """Queue `kind.job(key)` in ONE round trip: on its own, RQ sends two MULTI/EXEC
    transactions (register the queue, then save and push the job); on a pipeline it queues
    both and we send them at once (benchmarks/intake.py). `again` (a replay, an event its
    customer released): the job may have failed for good, so it also leaves RQ's failed
    registry and starts afresh with all its retries — not on intake's path, where it would
    be one more command per delivery for nothing. `at`: not before then (RQ's scheduler)."""
    queue = get_queue(config, kind)
    options: dict[str, Any] = {"failure_ttl": kind.failure_ttl} if kind.failure_ttl else {}
    if kind.unique:
        options["job_id"] = job_id(kind, key)
    retry = _retry(config) if kind.retried else None
    if at is not None:
        queue.enqueue_at(at, kind.job, key, retry=retry, result_ttl=0,
                         description=f"{kind.name} {key}", **options)
        return
    with queue.connection.pipeline() as pipe:
        queue.enqueue_call(kind.job, args=(key,), retry=retry, result_ttl=0,
                           description=f"{kind.name} {key}", pipeline=pipe, **options)
        if again and kind.unique:  # after: RQ starts the pipeline's MULTI itself
            FailedJobRegistry(queue=queue).remove(options["job_id"], pipeline=pipe)
        pipe.execute()


def try_enqueue(config: Config, kind: Kind, key: Any, *, again: bool = False,
                at: datetime | None = None) -> bool:
    """Queue one piece of work, or say it could not be queued (False, logged with the error's
    type only). Callers use it after their row is committed: the row is the record of the
    work, and the sweeper queues what was stored but never queued."""
    try:
        enqueue(config, kind, key, again=again, at=at)
        return True
    except Exception as exc:  # noqa: BLE001 - Redis down or refusing; the row is durable
        log.warning("%s %s not queued (%s); left for the sweeper", kind.name, key,
                    type(exc).__name__)
        return False


# --- RQ's storage, read directly -------------------------------------------------------------
# The two functions below read RQ's storage layout (a job's hash `status` field, the queue's
# list, the scheduled registry's sorted set), which RQ does not offer as one cheap call for
# many jobs. They hold for RQ 2.x and 3.x (pyproject pins rq>=3.0,<4); check them on an upgrade.


def waiting(config: Config, kind: Kind, keys: Iterable[Any]) -> set[Any]:
    """The keys whose job is still waiting in RQ: in the queue, or scheduled for a retry
    that is not overdue by more than SWEEP_AFTER_SECONDS.

    Everything else is queued again (the row's status makes a second run a no-op): a job
    lost with a Redis restart; a job a SIGKILLed worker had taken off the queue (`queued`
    or `started` in its hash, in no list); a retry overdue because no scheduler runs (RQ's
    scheduler died with Redis or with its worker, and its lock outlives it by a minute)."""
    keys = list(keys)
    if not keys or not kind.unique:
        return set()
    queue = get_queue(config, kind)
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


def discard_jobs(config: Config, kind: Kind, keys: Iterable[Any]) -> int:
    """Take the queued jobs of work already done off the queue (RQ's Queue.remove and
    Job.delete), so a worker does not spend a job's bookkeeping (about 3.5 ms) on each only
    to find its row done. A job a worker already took is left alone: it runs and finds its
    row done. Returns how many were taken off."""
    queue = get_queue(config, kind)
    ids = [job_id(kind, key) for key in keys]
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


def queue_depth(config: Config, kind: Kind | None = None) -> int:
    """Jobs waiting in the queue (dashboard, metrics)."""
    return len(get_queue(config, kind))
