"""The work: everything after the webhook has answered (matching, Stripe reads and writes,
notices, the operator's tools). The web hands work over through the names exported here; the
`mismatch` command takes the workers' commands from `init_cli`."""

from __future__ import annotations

import click

from workers.cli import digest_cmd, members_group, retry_notices_cmd, venues_group
from workers.jobs import (
    ACTION,
    EVENT,
    MISMATCH_RECHECK,
    NOTICE,
    OUTBOUND,
    THIN_EVENT,
    VENUE_RECHECK,
    queue_deliveries,
)
from workers.outbound.cli import outbound_group
from workers.outbound.destinations import (
    LATENCY_BUCKETS_MS,
    delivery_figures,
    sync_destinations,
)
from workers.queue import (
    get_redis,
    last_reconcile,
    limits_storage,
    queue_depth,
    redis_url,
    try_enqueue,
)
from workers.service import worker
from workers.stripe_side.actions import (
    CANCEL,
    CREATE_CUSTOMER,
    REFUND,
    ActionRefused,
    ActionStatus,
    actions_of,
    refusal,
    request_action,
    request_customer_fix,
)
from workers.stripe_side.api import StripeApi, StripeUnavailable
from workers.stripe_side.doctor import SetupFinding, last_setup_check, stripe_check_cmd
from workers.stripe_side.setup import stripe_setup_cmd
from workers.stripe_side.thin import THIN_TYPES
from workers.upkeep.recovery import (
    diagnose,
    diagnose_cmd,
    read_pasted,
    reconcile_cmd,
    replay_cmd,
    same_email_customers,
)
from workers.upkeep.retention import prune_cmd
from workers.upkeep.sweep import sweep_cmd

__all__ = [
    "queue_deliveries",
    "sync_destinations",
    "ACTION",
    "CANCEL",
    "LATENCY_BUCKETS_MS",
    "CREATE_CUSTOMER",
    "EVENT",
    "MISMATCH_RECHECK",
    "NOTICE",
    "OUTBOUND",
    "REFUND",
    "THIN_EVENT",
    "THIN_TYPES",
    "VENUE_RECHECK",
    "ActionRefused",
    "ActionStatus",
    "SetupFinding",
    "StripeApi",
    "StripeUnavailable",
    "actions_of",
    "delivery_figures",
    "diagnose",
    "get_redis",
    "init_cli",
    "last_reconcile",
    "last_setup_check",
    "limits_storage",
    "queue_depth",
    "read_pasted",
    "redis_url",
    "refusal",
    "request_action",
    "request_customer_fix",
    "same_email_customers",
    "try_enqueue",
]


def init_cli(cli: click.Group) -> None:
    """The workers' commands, each defined beside the code it drives."""
    stripe = click.Group("stripe", help="Set up and check the platform's Stripe webhook "
                                        "endpoints.")
    stripe.add_command(stripe_setup_cmd, "setup")
    stripe.add_command(stripe_check_cmd, "check")
    for command in (worker, sweep_cmd, venues_group, members_group, replay_cmd, reconcile_cmd,
                    diagnose_cmd, digest_cmd, retry_notices_cmd, stripe, prune_cmd, outbound_group):
        cli.add_command(command)
