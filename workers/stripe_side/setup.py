"""`mismatch stripe setup`: the platform's two webhook endpoints, made to be exactly what the
service needs — our URL, the event types in HANDLERS, the API version pinned, the platform's
scope for one and `connect: true` for the other.

`plan` is pure: Stripe's endpoints in, the changes out. Stripe cannot change an endpoint's
`connect` or `api_version` after creation, so a wrong one is replaced (a new endpoint, then
the old one deleted); everything else is updated in place. An endpoint with nothing to change
is left alone, so a second run changes nothing.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import click
import stripe
from sqlalchemy import select

from config import CONNECT, PLATFORM, SECRET_VARS, WEBHOOK_PATHS
from db import Database, StripeAction, utcnow
from workers.cli import state, stripe_for
from workers.matching.handlers import HANDLERS
from workers.stripe_side.api import StripeApi, StripeUnavailable

# The version our client speaks and the event shapes are read in (stripe-python's own pin).
API_VERSION: str = stripe.api_version
TAG = "mismatch_endpoint"  # metadata naming which of our endpoints a Stripe endpoint is
EVENT_TYPES: tuple[str, ...] = tuple(sorted(HANDLERS))


@dataclass(frozen=True)
class Wanted:
    name: str  # PLATFORM or CONNECT
    url: str

    @property
    def connect(self) -> bool:
        return self.name == CONNECT

    def create_params(self) -> dict[str, Any]:
        return {"url": self.url, "enabled_events": list(EVENT_TYPES), "connect": self.connect,
                "api_version": API_VERSION, "metadata": {TAG: self.name},
                "description": f"mismatch detector ({self.name})"}


def wanted(base_url: str) -> list[Wanted]:
    base = base_url.rstrip("/")
    return [Wanted(PLATFORM, base + WEBHOOK_PATHS[PLATFORM]),
            Wanted(CONNECT, base + WEBHOOK_PATHS[CONNECT])]


def is_connect(endpoint: dict[str, Any]) -> bool:
    """Stripe shows a Connect endpoint by its `application` (the platform's Connect app)."""
    return bool(endpoint.get("application"))


def missing_types(endpoint: dict[str, Any]) -> list[str]:
    enabled = set(endpoint.get("enabled_events") or ())
    return [] if "*" in enabled else [t for t in EVENT_TYPES if t not in enabled]


@dataclass
class Change:
    kind: str  # create | update | replace | delete | unchanged
    name: str
    endpoint_id: str | None = None  # the endpoint acted on (none for create)
    reasons: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def writes(self) -> bool:
        return self.kind != "unchanged"

    def describe(self) -> str:
        what = {"create": "create", "update": "update", "replace": "replace (create new, "
                "delete old)", "delete": "delete", "unchanged": "unchanged"}[self.kind]
        on = f" {self.endpoint_id}" if self.endpoint_id else ""
        why = f": {'; '.join(self.reasons)}" if self.reasons else ""
        return f"{self.name} endpoint{on}: {what}{why}"


def plan(endpoints: Iterable[dict[str, Any]], base_url: str) -> list[Change]:
    """What to do so Stripe holds exactly our two endpoints at `base_url`."""
    existing = list(endpoints)
    changes: list[Change] = []
    taken: set[str] = set()
    for want in wanted(base_url):
        # Ours: at our URL, or tagged as ours (then the URL moved, e.g. a new host).
        candidates = [e for e in existing if e["id"] not in taken
                      and (e.get("url") == want.url or (e.get("metadata") or {}).get(TAG)
                           == want.name)]
        candidates.sort(key=lambda e: (e.get("url") != want.url,
                                       is_connect(e) != want.connect))
        if not candidates:
            changes.append(Change("create", want.name, reasons=["none in Stripe"],
                                  params=want.create_params()))
            continue
        found, *extra = candidates
        taken.add(found["id"])
        changes.append(_change_for(want, found))
        for other in extra:
            if other.get("url") == want.url:  # a second endpoint at our URL: double deliveries
                taken.add(other["id"])
                changes.append(Change("delete", want.name, other["id"],
                                      [f"a second endpoint at {want.url}"]))
    return changes


def _change_for(want: Wanted, found: dict[str, Any]) -> Change:
    fixed = []  # what only a new endpoint can change
    if is_connect(found) != want.connect:
        fixed.append("scoped to connected accounts" if is_connect(found)
                     else "scoped to the platform's own account, not connected accounts")
    if found.get("api_version") != API_VERSION:
        fixed.append(f"API version {found.get('api_version') or 'the account default'}, "
                     f"not {API_VERSION}")
    if fixed:
        return Change("replace", want.name, found["id"], fixed, want.create_params())
    reasons: list[str] = []
    params: dict[str, Any] = {}
    if found.get("url") != want.url:
        reasons.append(f"URL is {found.get('url')}")
        params["url"] = want.url
    if set(found.get("enabled_events") or ()) != set(EVENT_TYPES):
        lacking = missing_types(found)
        reasons.append(f"lacks {', '.join(lacking)}" if lacking
                       else "sends event types we do not handle")
        params["enabled_events"] = list(EVENT_TYPES)
    if found.get("status") != "enabled":
        reasons.append("disabled")
        params["disabled"] = False
    if (found.get("metadata") or {}).get(TAG) != want.name:
        params["metadata"] = {TAG: want.name}
        if not reasons:
            reasons.append("not yet tagged as ours")
    if not params:
        return Change("unchanged", want.name, found["id"])
    return Change("update", want.name, found["id"], reasons, params)


# --- applying a plan (a person confirmed it: the command asks first) -----------------------

@dataclass
class Applied:
    change: Change
    endpoint_id: str | None
    secret: str | None = None  # Stripe shows it once, at creation; never stored or logged


def _key_for(db: Database, kind: str, target: str, params: dict[str, Any]) -> tuple[int, str]:
    """The audit row for this write, and its idempotency key. A write asked for and never
    finished (the command was killed mid-call) keeps its key, so running setup again gets
    Stripe's first answer, secret included, instead of a second endpoint."""
    digest = hashlib.sha256(json.dumps([kind, target, params], sort_keys=True).encode()
                            ).hexdigest()[:16]
    with db.session() as s:
        unfinished = s.scalar(select(StripeAction).where(
            StripeAction.kind == kind, StripeAction.target == target,
            StripeAction.status == "queued", StripeAction.result == digest))
        if unfinished is not None:
            return unfinished.id, unfinished.idempotency_key
        row = StripeAction(mismatch_id=None, account_id="platform", kind=kind, target=target,
                           idempotency_key=f"mismatch-setup-{uuid.uuid4()}", status="queued",
                           actor=f"cli:{getpass.getuser()}", result=digest)
        s.add(row)
        s.flush()
        return row.id, row.idempotency_key


def _finish(db: Database, action_id: int, *, result: str | None, error: str | None) -> None:
    with db.session() as s:
        row = s.get(StripeAction, action_id)
        assert row is not None
        row.status = "failed" if error else "done"
        row.finished_at = utcnow()
        row.result, row.error = result, error


def _audited(db: Database, kind: str, target: str, params: dict[str, Any],
             call: Callable[[str], str | None]) -> str | None:
    """One write to Stripe, with its audit row written before (queued) and after (done or
    failed); no transaction is open during the call."""
    action_id, key = _key_for(db, kind, target, params)
    try:
        made = call(key)
    except Exception as exc:
        _finish(db, action_id, result=None, error=type(exc).__name__)
        raise
    _finish(db, action_id, result=made, error=None)
    return made


def apply(db: Database, api: StripeApi, changes: list[Change]) -> list[Applied]:
    return [_apply_one(db, api, change) for change in changes]


def _apply_one(db: Database, api: StripeApi, change: Change) -> Applied:
    old = change.endpoint_id
    if change.kind == "unchanged":
        return Applied(change, old)
    if change.kind == "update":
        assert old
        _audited(db, "update_webhook_endpoint", old, change.params,
                 lambda key: api.update_webhook_endpoint(old, change.params, key)["id"])
        return Applied(change, old)
    if change.kind == "delete":
        assert old
        _audited(db, "delete_webhook_endpoint", old, {},
                 lambda key: api.delete_webhook_endpoint(old, key))
        return Applied(change, None)
    # create, or replace: the new endpoint first, so no event finds neither
    secret: dict[str, str | None] = {}

    def create(key: str) -> str:
        made = api.create_webhook_endpoint(change.params, key)
        secret["value"] = made.get("secret")
        return made["id"]

    new_id = _audited(db, "create_webhook_endpoint", change.name, change.params, create)
    if change.kind == "replace" and old:
        _audited(db, "delete_webhook_endpoint", old, {},
                 lambda key: api.delete_webhook_endpoint(old, key))
    return Applied(change, new_id, secret.get("value"))


def secret_lines(applied: list[Applied]) -> list[str]:
    """Where each new signing secret goes, for the operator (printed once, never logged)."""
    lines = []
    for item in applied:
        if item.secret:
            var = SECRET_VARS[item.change.name]
            lines.append(f"{var}={item.secret}")
            if item.change.kind == "replace":
                lines.append(f"  (the old endpoint is gone: replace its secret in {var}, or "
                             f"keep both, comma-separated, until every worker has the new one)")
    return lines


# --- the command ---------------------------------------------------------------------------

@click.command("setup")
@click.option("--url", "base_url", default=None,
              help="The service's public address (default PUBLIC_BASE_URL), https://host.")
@click.option("--yes", is_flag=True, help="Do not ask before changing anything in Stripe.")
def stripe_setup_cmd(base_url: str | None, yes: bool) -> None:
    """Create or update the platform and Connect endpoints: our URL, exactly the event types
    handled, the API version pinned. Prints new signing secrets and where each goes."""
    config, db = state()
    base = (base_url or config.public_base_url).rstrip("/")
    if not base.startswith(("https://", "http://")) or " " in base:
        raise click.ClickException(f"--url: expected https://host, got {base!r}")
    if config.production and not base.startswith("https://"):
        raise click.ClickException("--url: Stripe sends live events to https:// URLs only")
    api = stripe_for(config)
    try:
        changes = plan(api.webhook_endpoints(), base)
    except StripeUnavailable as exc:
        raise click.ClickException(f"{exc}; nothing was changed") from None
    click.echo(f"{len(EVENT_TYPES)} event types, API version {API_VERSION}, at {base}")
    for change in changes:
        click.echo(f"  {change.describe()}")
    writes = [c for c in changes if c.writes]
    if not writes:
        click.echo("Nothing to change.")
        return
    if not yes:
        click.confirm(f"Make {len(writes)} change{'s' if len(writes) != 1 else ''} in "
                      f"Stripe?", abort=True)
    try:
        applied = apply(db, api, changes)
    except (StripeUnavailable, stripe.StripeError) as exc:
        raise click.ClickException(
            f"Stripe refused a change ({type(exc).__name__}); what was done is in "
            f"stripe_actions, and running setup again finishes the rest") from None
    for item in applied:
        if item.change.writes:
            click.echo(f"done: {item.change.kind} {item.change.name} endpoint "
                       f"{item.endpoint_id or item.change.endpoint_id}")
    lines = secret_lines(applied)
    if lines:
        click.echo("\nNew signing secrets (Stripe shows each only once; put them in the "
                   "service's environment and restart it):")
        for line in lines:
            click.echo(f"  {line}")
