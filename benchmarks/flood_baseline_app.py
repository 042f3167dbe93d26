"""Earlier versions of the web tier for benchmarks/flood.py, as baselines: the service
exactly as listener/wsgi.py builds it, less what listener/sign_in_pool.py added. gunicorn
calls one factory per server (`benchmarks.flood_baseline_app:on_loop()`):

- `on_loop()`: the pre-change code: no sign-in gate, and password checks computed inline on
  the gevent loop that also answers Stripe's deliveries;
- `threads_only()`: hashes on the pool's threads, but no gate: every sign-in of a burst is
  handled on the loop at once.

Never a way to run the service: a flood of sign-ins stalls every delivery on the process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask

import listener.console_auth
from listener.app import create_app
from listener.sign_in_pool import SignInGate

T = TypeVar("T")


class InlinePool:
    """listener.sign_in_pool.HashPool's interface, computing on the caller's thread (the
    loop)."""

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)


_INLINE = InlinePool()


def _inline_pool() -> InlinePool:
    return _INLINE


def threads_only() -> Flask:
    app = create_app()
    if not isinstance(app.wsgi_app, SignInGate):
        raise RuntimeError("create_app no longer wraps the app in SignInGate: update this "
                           "baseline")
    app.wsgi_app = app.wsgi_app.app  # type: ignore[method-assign]  # the gate taken off
    return app


def on_loop() -> Flask:
    app = threads_only()
    # check_staff_password calls the hash_pool it imported by name, so that name is the one
    # to replace (patching listener.sign_in_pool.hash_pool would measure the shipped code).
    if not callable(getattr(listener.console_auth, "hash_pool", None)):
        raise RuntimeError("listener.console_auth no longer calls hash_pool: update this "
                           "baseline")
    listener.console_auth.hash_pool = _inline_pool  # type: ignore[assignment]
    return app
