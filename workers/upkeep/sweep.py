"""The sweeper: queue again whatever was stored but never queued or never finished (Redis
was down, a worker was killed, a retry's scheduler died), for every kind of durable work in
`workers.jobs.WORK`. Every row is the record of its work, so sweeping is always safe: a
second run of a job finds its row done."""

from __future__ import annotations

from datetime import timedelta

import click
from sqlalchemy import select, update

import workers.queue as queue
from config import Config
from db import Database, EventStatus, StripeEvent, utcnow
from workers.cli import state
from workers.jobs import EVENT, WORK


def sweep(config: Config, db: Database, *, include_failed: bool = False,
          older_than: timedelta | None = None) -> dict[str, int]:
    """Each kind's stale rows older than `older_than` (default SWEEP_AFTER_SECONDS), queued
    again unless RQ still holds their job. With `include_failed`, failed events are reset and
    replayed too (with all their retries). Returns how many of each were queued."""
    cutoff = utcnow() - (older_than if older_than is not None
                         else timedelta(seconds=config.sweep_after_seconds))
    swept = [kind for kind in WORK if kind.swept_as and kind.stale]
    with db.session() as session:
        failed: list[str] = []
        if include_failed:
            failed = list(session.scalars(
                select(StripeEvent.event_id).where(StripeEvent.status == EventStatus.FAILED)))
            session.execute(update(StripeEvent).where(StripeEvent.status == EventStatus.FAILED)
                            .values(status=EventStatus.RECEIVED))
        stale = {kind.name: list(session.scalars(kind.stale(cutoff)))
                 for kind in swept if kind.stale}
    counts = {"failed_events": len(failed)}
    for kind in swept:
        keys = stale[kind.name]
        # Skip what RQ still holds queued or scheduled: behind a backlog older than the
        # cutoff, re-queueing it on every sweep piled up duplicates faster than workers
        # could drop them.
        held = queue.waiting(config, kind, keys)
        keys = [key for key in keys if key not in held]
        again = set(failed) if kind is EVENT else set()  # whatever their age, afresh
        keys += sorted(again - set(keys))
        for key in keys:
            queue.enqueue(config, kind, key, again=key in again)
        counts[str(kind.swept_as)] = len(keys)
    return counts


# --- the command ---------------------------------------------------------------------------

@click.command("sweep")
@click.option("--failed", "include_failed", is_flag=True,
              help="Also reset and replay events that failed for good.")
@click.option("--all", "everything", is_flag=True,
              help="Do not wait for the one-minute grace period.")
def sweep_cmd(include_failed: bool, everything: bool) -> None:
    """Queue again stored events, re-checks and notices that were never queued."""
    config, db = state()
    counts = sweep(config, db, include_failed=include_failed,
                   older_than=timedelta(0) if everything else None)
    click.echo(", ".join(f"{k}: {v}" for k, v in counts.items()))
