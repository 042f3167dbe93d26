"""The worker process: an RQ worker (with its scheduler, for retry back-off) and a periodic
sweep that re-queues whatever was stored but never queued.

Jobs run in the worker process itself (RQ's SimpleWorker), not in a work-horse forked per
job: our jobs are a few short SQL statements, and a fresh process per job paid for a new
engine, connection, mapper set-up and statement compilation every time, about 150 ms against
the job's few milliseconds. benchmarks/soak.py --quick --no-faults drains in 36 s instead of
193 s. A job timeout still interrupts a job (SIGALRM); a crash takes the worker down with
the job, and RQ re-queues the abandoned job once the worker is restarted (maintenance)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time

from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.results import Result
from rq.timeouts import JobTimeoutException
from rq.worker import WorkerStatus

from config import Config
from workers.queue import get_queue, get_redis
from workers.runtime import runtime

log = logging.getLogger(__name__)
SWEEP_LOCK = "mismatch:sweep-lock"
# How often a busy worker runs RQ's maintenance (RQ's default is 10 minutes): it restarts a
# scheduler that died when Redis went away, so retries with back-off run again, and re-queues
# jobs whose worker was killed mid-job. (An idle worker only gets there when its blocking
# dequeue times out; meanwhile the sweeper re-queues retries that are long overdue.)
MAINTENANCE_SECONDS = 30


# Event jobs taken together: one transaction and one round of RQ bookkeeping per batch.
EVENTS_PER_BATCH = 100
PROCESS_EVENT = "workers.jobs.process_event"
# Move up to ARGV[1] job ids from the head of the queue to RQ's intermediate list (where
# RQ's own dequeue puts the one job it takes), atomically, in one round trip.
_TAKE_JOBS = """
local taken = {}
for i = 1, tonumber(ARGV[1]) do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not id then break end
  taken[i] = id
end
return taken
"""


class MismatchWorker(SimpleWorker):
    """RQ's in-process worker that, when more event jobs wait behind the one it dequeued,
    takes up to EVENTS_PER_BATCH of them and processes their events together
    (jobs.process_events). RQ costs about 4 ms of bookkeeping per job here (status,
    registries, heartbeats), and matching one event at a time a dozen statements and a
    commit: together they capped a worker near 80 events/s (benchmarks/matching.py).

    The batch is all or nothing. When it succeeds the taken jobs are finished as RQ would
    finish them (result_ttl=0: deleted); the dequeued job still runs through RQ and finds its
    event done. When it fails, every job runs on its own through RQ, with its own retries."""

    batch_size = EVENTS_PER_BATCH

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.jobs_done = 0  # jobs finished by this worker, batched or not (benchmarks)
        self._take = self.connection.register_script(_TAKE_JOBS)

    def execute_job(self, job: Job, queue: Queue) -> None:
        if job.func_name != PROCESS_EVENT or self.batch_size <= 1:
            self._execute_one(job, queue)
            return
        taken = self._take_jobs(queue, self.batch_size - 1)
        batch = [j for j in taken if j.func_name == PROCESS_EVENT]
        alone = [job, *batch]
        if batch:
            # Busy, so that a SIGTERM now waits for the batch (RQ's warm shutdown).
            self.set_state(WorkerStatus.BUSY)
            try:
                from workers.jobs import process_events

                with self.death_penalty_class(job.timeout or queue.DEFAULT_TIMEOUT,
                                              JobTimeoutException, job_id=job.id):
                    process_events([job.args[0], *(j.args[0] for j in batch)])
            except Exception as exc:  # noqa: BLE001 - each job runs alone below, with retries
                log.warning("batch of %d events failed (%s); running them one by one",
                            len(batch) + 1, type(exc).__name__)
            else:
                self._finish(queue, batch)
                alone = [job]
        for one in alone + [j for j in taken if j.func_name != PROCESS_EVENT]:
            self._execute_one(one, queue)

    def _execute_one(self, job: Job, queue: Queue) -> None:
        super().execute_job(job, queue)
        self.jobs_done += 1

    def _take_jobs(self, queue: Queue, limit: int) -> list[Job]:
        intermediate = IntermediateQueue(queue.key, self.connection)
        ids = [i.decode() for i in self._take(keys=[queue.key, intermediate.key], args=[limit])]
        if not ids:
            return []
        jobs = Job.fetch_many(ids, connection=self.connection, serializer=self.serializer)
        gone = [job_id for job_id, job in zip(ids, jobs, strict=True) if job is None]
        if gone:  # deleted while queued: forget them, as RQ's dequeue does
            with self.connection.pipeline() as pipe:
                for job_id in gone:
                    pipe.lrem(intermediate.key, 1, job_id)
                pipe.execute()
        return [job for job in jobs if job is not None]

    def _finish(self, queue: Queue, jobs: list[Job]) -> None:
        """What RQ does for a successful job with result_ttl=0 (delete it), for many jobs in
        one round trip. These jobs never started, so no execution, registry or result refers
        to them: Job.delete would also look each one's executions up, a round trip per job."""
        intermediate = IntermediateQueue(queue.key, self.connection)
        with self.connection.pipeline() as pipe:
            for job in jobs:
                pipe.lrem(intermediate.key, 1, job.id)
                pipe.delete(job.key, job.dependents_key, job.dependencies_key,
                            Result.get_key(job.id))
            pipe.hincrby(self.key, "successful_job_count", len(jobs))
            pipe.execute()
        self.jobs_done += len(jobs)


def sweep_once(config: Config) -> None:
    """Sweep unless another worker swept within the interval (a Redis lock)."""
    from workers.jobs import sweep

    redis = get_redis(config)
    if not redis.set(SWEEP_LOCK, "1", nx=True, ex=max(5, config.sweep_after_seconds // 2)):
        return
    counts = sweep(config, runtime()[1])
    if any(counts.values()):
        log.info("sweep queued %s", counts)


def _sweeper(config: Config, every: float, parent: int) -> None:
    """The sweeper's own process, until the worker that started it is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker stops us
    while True:
        due = time.monotonic() + every
        while time.monotonic() < due:
            if os.getppid() != parent:
                return
            time.sleep(min(1.0, every))
        try:
            sweep_once(config)
        except Exception as exc:  # noqa: BLE001 - keep sweeping when Redis/DB come back
            log.warning("sweep failed: %s", type(exc).__name__)


def _pause(seconds: float) -> bool:
    """Wait before starting RQ again; False when SIGTERM/SIGINT arrived meanwhile."""
    stop: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: stop.append(signum))
    due = time.monotonic() + seconds
    while not stop and time.monotonic() < due:
        time.sleep(0.1)
    return not stop


def run_worker(config: Config, *, burst: bool = False, sweep_every: float = 30.0) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("stripe").setLevel(logging.WARNING)  # it logs every request at INFO
    # The sweeper is a process, not a thread: RQ forks (its scheduler; a work-horse per job
    # with the forking Worker), and a fork taken while a sweeper thread holds a lock (an
    # import, the engine's pool) or its pooled PostgreSQL connection hands the child that
    # lock or socket: jobs hung for the whole job timeout (benchmarks/soak.py). Forked here,
    # before RQ starts any thread.
    sweeper = None
    if sweep_every > 0 and not burst:
        sweeper = multiprocessing.get_context("fork").Process(
            target=_sweeper, args=(config, sweep_every, os.getpid()), name="mismatch-sweeper",
            daemon=True)
        sweeper.start()
    try:
        while True:
            worker = None
            try:
                worker = MismatchWorker([get_queue(config)], connection=get_redis(config),
                                        maintenance_interval=MAINTENANCE_SECONDS)
                worker.work(with_scheduler=True, burst=burst)
            except RedisError as exc:  # at start-up or in its teardown
                if burst:
                    raise
                log.warning("RQ worker could not reach Redis: %s", type(exc).__name__)
            # RQ's loop also returns when Redis fails under a running job ("found an
            # unhandled exception, quitting"): a Redis restart would end the worker, and
            # `mismatch serve` with it. Only a SIGTERM/SIGINT (or --burst) ends ours.
            if burst or (worker is not None and worker._shutdown_requested_date is not None):
                return
            log.warning("RQ worker stopped on an error (Redis gone?); starting it again")
            if not _pause(2.0):
                return
    finally:
        if sweeper is not None:
            sweeper.terminate()
            sweeper.join(5)
