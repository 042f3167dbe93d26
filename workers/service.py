"""The worker process: an RQ worker (with its scheduler, for retry back-off) and a periodic
sweep that re-queues whatever was stored but never queued.

Jobs run in the worker process itself (RQ's SimpleWorker), not in a work-horse forked per
job: our jobs are a few short SQL statements, and a fresh process per job paid for a new
engine, connection, mapper set-up and statement compilation every time, about 150 ms against
the job's few milliseconds. benchmarks/soak.py --quick --no-faults drains in 36 s instead of
193 s. A job timeout still interrupts a job (SIGALRM); a crash takes the worker down with
the job, and RQ re-queues the abandoned job once the worker is restarted (maintenance)."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
from typing import Any

import click
from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.job import Job

from config import Config
from db.errors import scrub_logs
from workers.cli import state
from workers.jobs import OUTBOUND, EventNotDone
from workers.outbound.destinations import sync_destinations
from workers.queue import get_queue, get_redis
from workers.runtime import runtime
from workers.stripe_side.doctor import check_if_due
from workers.upkeep.retention import prune_if_due
from workers.upkeep.sweep import sweep

log = logging.getLogger(__name__)
SWEEP_LOCK = "mismatch:sweep-lock"
# How often a busy worker runs RQ's maintenance (RQ's default is 10 minutes): it restarts a
# scheduler that died when Redis went away, so retries with back-off run again, and re-queues
# jobs whose worker was killed mid-job. (An idle worker only gets there when its blocking
# dequeue times out; meanwhile the sweeper re-queues retries that are long overdue.)
MAINTENANCE_SECONDS = 30


class MismatchWorker(SimpleWorker):
    """RQ's in-process worker, remembering whether it was asked to stop (SIGTERM/SIGINT): RQ's
    loop also returns when Redis fails under it, and then we start it again. Batching is not
    the worker's business: each event's job takes a batch of events itself (matching.inbox)."""

    stop_requested = False

    def handle_warm_shutdown_request(self) -> None:
        self.stop_requested = True
        super().handle_warm_shutdown_request()

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """An event that waits (for its customer, for Stripe) is expected, not an error: one
        line, with the reason, instead of RQ's traceback. RQ still retries or fails the job."""

        if len(exc_info) > 1 and isinstance(exc_info[1], EventNotDone):
            log.warning("job %s: %s", job.id, exc_info[1])
            return
        super().handle_exception(job, *exc_info)


def sweep_once(config: Config) -> None:
    """Sweep unless another worker swept within the interval (a Redis lock)."""
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
        try:
            _check_setup(config)
        except Exception as exc:  # noqa: BLE001 - the next hour tries again
            log.warning("stripe check failed: %s", type(exc).__name__)
        try:
            _prune(config)
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.warning("prune failed: %s", type(exc).__name__)


def _prune(config: Config) -> None:
    """Retention, daily across all workers (workers/upkeep/retention.py)."""
    done = prune_if_due(config, runtime()[1])
    if done is not None:
        log.info("prune: %d payloads emptied, %d refused deliveries and %d thin events "
                 "deleted", done.payloads, done.rejected, done.thin)


def _check_setup(config: Config) -> None:
    """The configuration doctor, hourly across all workers (workers/stripe_side/doctor.py)."""
    if check_if_due(config, runtime()[1]):
        log.info("stripe check ran")


def _pause(seconds: float) -> bool:
    """Wait before starting RQ again; False when SIGTERM/SIGINT arrived meanwhile."""
    stop: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, _frame: stop.append(signum))
    due = time.monotonic() + seconds
    while not stop and time.monotonic() < due:
        time.sleep(0.1)
    return not stop


# prctl(2): the signal a child is sent when the thread that forked it dies (Linux only).
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In each child the worker forks — RQ's scheduler, our sweeper — ask Linux for a SIGTERM
    when the worker dies, however it dies: a `kill -9`ed worker once left its scheduler
    running for a minute or more with parent 1, holding the scheduler lock. Elsewhere (macOS)
    the sweeper still notices by itself; RQ's scheduler stops when its lock expires."""
    forked_by: list[int] = []  # the process forking right now (children fork too)

    def before_fork() -> None:
        forked_by[:] = [os.getpid()]

    def in_child() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            return
        if forked_by and os.getppid() != forked_by[0]:  # parent died before it took effect
            os.kill(os.getpid(), signal.SIGTERM)

    if sys.platform.startswith("linux"):
        os.register_at_fork(before=before_fork, after_in_child=in_child)


def run_worker(config: Config, *, burst: bool = False, sweep_every: float = 30.0,
               outbound: bool = False) -> None:
    """`outbound`: a worker of the outbound queue alone (deliveries to destinations), so a
    slow receiver never holds up Stripe's events or the notices; it does not sweep."""
    die_with_parent()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("stripe").setLevel(logging.WARNING)  # it logs every request at INFO
    scrub_logs()  # no bound values or recipients in a logged traceback
    # The sweeper is a process, not a thread: RQ forks (its scheduler; a work-horse per job
    # with the forking Worker), and a fork taken while a sweeper thread holds a lock (an
    # import, the engine's pool) or its pooled PostgreSQL connection hands the child that
    # lock or socket: jobs hung for the whole job timeout (benchmarks/soak.py). Forked here,
    # before RQ starts any thread.
    sync_destinations(runtime()[1], config)
    queue = get_queue(config, OUTBOUND) if outbound else get_queue(config)
    sweeper = None
    if sweep_every > 0 and not burst and not outbound:
        sweeper = multiprocessing.get_context("fork").Process(
            target=_sweeper, args=(config, sweep_every, os.getpid()), name="mismatch-sweeper",
            daemon=True)
        sweeper.start()
    try:
        while True:
            worker = None
            try:
                worker = MismatchWorker([queue], connection=get_redis(config),
                                        maintenance_interval=MAINTENANCE_SECONDS)
                worker.work(with_scheduler=True, burst=burst)
            except RedisError as exc:  # at start-up or in its teardown
                if burst:
                    raise
                log.warning("RQ worker could not reach Redis: %s", type(exc).__name__)
            # RQ's loop also returns when Redis fails under a running job ("found an
            # unhandled exception, quitting"): a Redis restart would end the worker, and
            # `mismatch serve` with it. Only a SIGTERM/SIGINT (or --burst) ends ours.
            if burst or (worker is not None and worker.stop_requested):
                return
            log.warning("RQ worker stopped on an error (Redis gone?); starting it again")
            if not _pause(2.0):
                return
    finally:
        if sweeper is not None:
            sweeper.terminate()
            sweeper.join(5)


# --- the command ---------------------------------------------------------------------------

@click.command("worker")
@click.option("--burst", is_flag=True, help="Drain the queue, then exit.")
@click.option("--sweep-every", default=30.0, show_default=True,
              help="Seconds between sweeps for stuck events (0 disables).")
@click.option("--outbound", is_flag=True,
              help="Deliver outbound messages to destinations (their queue alone).")
def worker(burst: bool, sweep_every: float, outbound: bool) -> None:
    """Run an RQ worker for the mismatch queue (with retries and the periodic sweep)."""
    run_worker(state()[0], burst=burst, sweep_every=sweep_every, outbound=outbound)
