"""The worker process: an RQ worker (with its scheduler, for retry back-off) and a periodic
sweep that re-queues whatever was stored but never queued."""

from __future__ import annotations

import logging
import threading

from rq import Worker

from config import Config
from workers.queue import get_queue, get_redis
from workers.runtime import runtime

log = logging.getLogger(__name__)
SWEEP_LOCK = "mismatch:sweep-lock"


def sweep_once(config: Config) -> None:
    """Sweep unless another worker swept within the interval (a Redis lock)."""
    from workers.jobs import sweep

    redis = get_redis(config)
    if not redis.set(SWEEP_LOCK, "1", nx=True, ex=max(5, config.sweep_after_seconds // 2)):
        return
    counts = sweep(config, runtime()[1])
    if any(counts.values()):
        log.info("sweep queued %s", counts)


def _sweeper(config: Config, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        try:
            sweep_once(config)
        except Exception as exc:  # noqa: BLE001 - keep sweeping when Redis/DB come back
            log.warning("sweep failed: %s", type(exc).__name__)


def run_worker(config: Config, *, burst: bool = False, sweep_every: float = 30.0) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("stripe").setLevel(logging.WARNING)  # it logs every request at INFO
    stop = threading.Event()
    if sweep_every > 0 and not burst:
        threading.Thread(target=_sweeper, args=(config, sweep_every, stop), daemon=True).start()
    worker = Worker([get_queue(config)], connection=get_redis(config))
    try:
        worker.work(with_scheduler=True, burst=burst)
    finally:
        stop.set()
