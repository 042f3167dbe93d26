"""Password hashes off the request loop: a sign-in's hash (werkzeug's scrypt, ~0.1 s of CPU)
runs on a few real threads of its own, at the lowest CPU priority, while the process's event
loop goes on answering Stripe's deliveries.

Under gunicorn's gevent workers the web process has one loop for every request; a hash
computed on it stopped everything else: 320 wrong sign-ins at once held deliveries for up
to 28 s (benchmarks/flood.py). hashlib's scrypt and pbkdf2 release the GIL, so a real thread
computes while the loop runs; at nice 19 (Linux sets it per thread) the hashes take only the
CPU the loop leaves. Sign-ins queue for a thread; beyond MAX_WAITING a sign-in is told to
come back (503) instead of waiting behind a flood."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

THREADS = 2  # per web process; the hashes are CPU-bound, and the machine has few cores
MAX_WAITING = 64  # sign-ins queued per process beyond the ones being hashed
BACKGROUND_NICE = 19


class Busy(Exception):
    """Too many sign-ins are already waiting for a password check."""


def _in_background(fn: Callable[..., T], *args: Any) -> T:
    if sys.platform.startswith("linux"):  # per thread there; elsewhere it would be the process
        try:
            os.setpriority(os.PRIO_PROCESS, 0, BACKGROUND_NICE)
        except OSError:
            pass
    return fn(*args)


class HashPool:
    """A few real threads for password hashes, waited on without holding up the loop."""

    def __init__(self, threads: int = THREADS, max_waiting: int = MAX_WAITING) -> None:
        self.limit = threads + max_waiting  # checks in the pool at once, waiting or running
        if _gevent():
            from gevent.threadpool import ThreadPool

            self._gevent_pool: Any = ThreadPool(threads)
            self._in_flight = 0  # changed on the loop's thread only
        else:  # plain threads (the dev server, the test client)
            self._gevent_pool = None
            self._executor = ThreadPoolExecutor(threads, thread_name_prefix="password-hash")
            self._slots = threading.BoundedSemaphore(self.limit)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a hash thread; Busy when `limit` checks are already in the pool."""
        if self._gevent_pool is not None:
            if self._in_flight >= self.limit:
                raise Busy
            self._in_flight += 1
            try:
                return self._gevent_pool.apply(_in_background, (fn, *args))
            finally:
                self._in_flight -= 1
        if not self._slots.acquire(blocking=False):
            raise Busy
        try:
            return self._executor.submit(_in_background, fn, *args).result()
        finally:
            self._slots.release()


def _gevent() -> bool:
    """Whether this process runs on gevent's loop (gunicorn's gevent worker patched it)."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("threading"))


@cache
def hash_pool() -> HashPool:
    """This process's pool, made on first use: after gunicorn forked the worker and gevent
    patched it, never inherited across a fork."""
    return HashPool()
