"""The work: everything after the webhook has answered (matching, Stripe reads, notices).

The web and the CLI hand work over only through the names exported here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.queue import (
    get_redis,
    last_reconcile,
    limits_storage,
    queue_depth,
    redis_url,
    try_enqueue,
)
from workers.stripe_side.actions import (  # noqa: E402 - after the queue, which it uses
    CANCEL,
    REFUND,
    ActionRefused,
    ActionStatus,
    actions_of,
    refusal,
    request_action,
    request_customer_fix,
)

if TYPE_CHECKING:
    from flask import Flask


__all__ = [
    "CANCEL",
    "REFUND",
    "ActionRefused",
    "ActionStatus",
    "actions_of",
    "refusal",
    "request_action",
    "request_customer_fix",
    "diagnose",
    "read_pasted",
    "same_email_customers",
    "StripeApi",
    "StripeUnavailable",
    "ACTION",
    "EVENT",
    "MISMATCH_RECHECK",
    "NOTICE",
    "THIN_EVENT",
    "VENUE_RECHECK",
    "last_setup_check",
    "SetupFinding",
    "THIN_TYPES",
    "get_redis",
    "init_app",
    "last_reconcile",
    "limits_storage",
    "queue_depth",
    "redis_url",
    "try_enqueue",
]


def init_app(app: Flask) -> None:
    """Register the workers' commands (worker, sweep, replay, …) on the `mismatch` CLI."""
    from workers import cli

    cli.init_app(app)


# Last: the "No such customer" engine imports the handlers, which import the constants above.
from workers.jobs import (  # noqa: E402
    ACTION,
    EVENT,
    MISMATCH_RECHECK,
    NOTICE,
    THIN_EVENT,
    VENUE_RECHECK,
)
from workers.stripe_side.api import StripeApi, StripeUnavailable  # noqa: E402
from workers.stripe_side.doctor import SetupFinding, last_setup_check  # noqa: E402
from workers.stripe_side.thin import THIN_TYPES  # noqa: E402
from workers.upkeep.recovery import diagnose, read_pasted, same_email_customers  # noqa: E402
