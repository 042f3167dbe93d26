"""Sign-ins kept off intake's back. A web process answers Stripe's deliveries and the
console's sign-ins on one gevent loop, and a sign-in costs far more: a password hash
(werkzeug's scrypt, ~0.1 s of CPU) and a page. 320 wrong sign-ins at once once held
deliveries for up to 28 s (benchmarks/flood.py). Two parts:

- `HashPool`: the hash runs on a few real threads, at the lowest CPU priority (Linux sets it
  per thread), while the loop goes on; hashlib's scrypt and pbkdf2 release the GIL, so the
  hashes take only the CPU the loop leaves.
- `SignInGate`: a WSGI middleware letting only a few sign-in POSTs per process be handled at
  once; the rest wait parked (no CPU) in arrival order, and past a bound they are told to
  come back (503) before Flask sees them. With the hashes moved, what stalled deliveries was
  the burst itself: every sign-in's form, session, limits and page on the loop at once
  (~250 ms of loop per process for 320)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")

HASH_THREADS = 2  # per web process; the hashes are CPU-bound, and machines have few cores
BACKGROUND_NICE = 19
SIGN_INS_RUNNING = 4  # sign-in POSTs handled at once per process
SIGN_INS_WAITING = 256  # parked behind them per process; past that, 503
SIGN_IN_PATH = "/support/login"


def _in_background(fn: Callable[..., T], *args: Any) -> T:
    if sys.platform.startswith("linux"):  # per thread there; elsewhere it would be the process
        try:
            os.setpriority(os.PRIO_PROCESS, 0, BACKGROUND_NICE)
        except OSError:
            pass
    return fn(*args)


class HashPool:
    """A few real threads for password hashes, waited on without holding up the loop."""

    def __init__(self, threads: int = HASH_THREADS) -> None:
        if _gevent():
            from gevent.threadpool import ThreadPool

            self._gevent_pool: Any = ThreadPool(threads)
        else:  # plain threads (the dev server, the test client)
            self._gevent_pool = None
            self._executor = ThreadPoolExecutor(threads, thread_name_prefix="password-hash")

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a hash thread; the calling greenlet (or thread) waits for it."""
        if self._gevent_pool is not None:
            return self._gevent_pool.apply(_in_background, (fn, *args))
        return self._executor.submit(_in_background, fn, *args).result()


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


BUSY = b"Too many sign-ins at once. Try again in a few seconds.\n"


class SignInGate:
    """Around the Flask app: POST /support/login, SIGN_INS_RUNNING at a time. threading's
    semaphores are gevent's once gunicorn's worker has patched the process (the app is made
    after that), so a waiting sign-in parks its greenlet."""

    def __init__(self, app: Callable[..., Iterable[bytes]], running: int = SIGN_INS_RUNNING,
                 waiting: int = SIGN_INS_WAITING) -> None:
        self.app = app
        self._running = threading.BoundedSemaphore(running)
        self._admitted = threading.BoundedSemaphore(running + waiting)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != SIGN_IN_PATH:
            return self.app(environ, start_response)
        if not self._admitted.acquire(blocking=False):
            start_response("503 Service Unavailable", [
                ("Content-Type", "text/plain; charset=utf-8"), ("Retry-After", "5"),
                ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                ("Content-Length", str(len(BUSY)))])
            return [BUSY]
        try:
            with self._running:  # the whole response made inside: the page is small
                result = self.app(environ, start_response)
                try:
                    return [b"".join(result)]
                finally:
                    close = getattr(result, "close", None)
                    if close is not None:
                        close()
        finally:
            self._admitted.release()
