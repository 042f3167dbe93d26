"""The real service with its inbox insert and its enqueue switched off, for
benchmarks/intake.py: the throughput the webhook endpoint would reach on this machine if
storing and queueing cost nothing (signature, checks, metrics and logs still run).

Never a way to run the service: it answers 200 and keeps nothing.
"""

from __future__ import annotations

from typing import Any

import listener.webhooks
from db import Database
from listener.wsgi import app

__all__ = ["app"]


def _not_stored(self: Database, row: dict[str, Any]) -> int:
    return 1  # "a new row": what the real insert returns for a first delivery


def _not_queued(config: Any, kind: Any, key: Any) -> bool:
    return True  # "queued"


# The webhook calls the try_enqueue it imported (`from workers import try_enqueue`), so that
# name is the one to switch off; patching workers.queue.try_enqueue would leave the webhook
# enqueueing for real (and intake.py's verification counting these jobs).
if not callable(getattr(listener.webhooks, "try_enqueue", None)):
    raise RuntimeError("listener.webhooks no longer calls try_enqueue: update this switch")
Database.store_event = _not_stored  # type: ignore[method-assign]
listener.webhooks.try_enqueue = _not_queued  # type: ignore[assignment]
