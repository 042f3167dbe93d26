"""Inbox history benchmark: the pages that read the inbox, at 100k, 1M and 5M stored events.

    .venv/bin/python benchmarks/history.py                       # 100k, 1M, 5M (fills are kept)
    .venv/bin/python benchmarks/history.py --sizes 10000,50000   # a quick run, about 2 min
    .venv/bin/python benchmarks/history.py --help                # URLs, runs, --fresh, --no-keep

For each size in --sizes (ascending):

1. Fills the inbox (`stripe_events`) of --database-url up to that many rows (a fill from an
   earlier run is reused; a table that has outgrown a size skips it: --fresh starts over),
   COPYed with psycopg. Events are generated Stripe-shaped and pretty-printed as Stripe sends
   them (about 3 KB) from 1,000 connected accounts (each a venue) and 20 no venue has; each
   subscription is named by about 30 events over its life, spread over about two years at
   the largest size; statuses as a running service leaves them (mostly processed, some
   ignored, about 0.01% failed, the newest 200 still received); the subscription_id /
   customer_id columns hold what db.history.ids_named reads (checked on every template and a
   sample of rows). Alongside: venues, members, mirrored customers, subscriptions, payments,
   one mismatch per outside subscription (the 2,000 newest open) and their notices; then
   db.history.rebuild_tallies and VACUUM ANALYZE. It stops first if the disk would fill.
2. Starts the service as the Procfile runs it (a fresh gunicorn after each fill), signs in to
   the support console, warms up, then times on one keep-alive connection --runs runs of
   --requests sequential requests (a run's figure is its median) of GET /healthz (the floor),
   GET /metrics, GET /support, GET /mismatches/<id> (the open mismatch with the longest
   timeline) and POST /webhooks/stripe/connect (a new, signed delivery).
3. Times the OLD queries those pages ran before migration 0006 (the baseline: counting and
   LIKE-searching the inbox) and the new ones, directly with psycopg, the same way (a query
   slower than --sql-budget per run runs fewer times; the count is printed).
4. Requests each page once more in this process (the Flask app) and records every SQL
   statement it sends with its time: which query a page's time goes to.

Then a summary (each figure at each size, largest/smallest size run by run, PASS/MISS: every
request under 200 ms at every size, at most 1.5x slower at the largest size than at the
smallest), and EXPLAIN (ANALYZE, BUFFERS) of the new queries and of any page statement slower
than --slow-ms at the largest size. The output is also written to instance/bench/history.log,
the servers' logs next to it.

Never point --database-url or --redis-url at data you care about: the Redis database is
flushed, and the database is filled with generated rows (its name must contain "bench";
--fresh and --no-keep drop it, which only a name starting with "history_bench" may be).
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TextIO
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as benchmarks/history.py

from benchmarks.harness import (
    ROOT,
    Spread,
    add_common_flags,
    descendants,
    drop_database,
    flush_redis,
    interrupt_on,
    libpq_url,
    log_lines,
    machine_cpu,
    prepare_database,
    processes,
    ratio,
    sqlalchemy_url,
    start_gunicorn,
    stop_servers,
    tail,
    verdict,
    wait_ready,
)
from standins.localstripe import free_port

LOG_DIR = ROOT / "instance" / "bench"

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/history_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
DEFAULT_SIZES = "100000,1000000,5000000"
DROP_GUARD = "history_bench"  # only such a database may be dropped (--fresh, --no-keep)

PLATFORM_SECRET = "whsec_history_bench_platform"
CONNECT_SECRET = "whsec_history_bench_connect"
PLATFORM_ACCOUNT = "acct_1HistPlatform000"
STAFF_USER, STAFF_PASSWORD = "bench", "history bench password"
API_TOKEN = "history-bench-api-token"

TARGET_MS = 200.0
GROWTH_TARGET = 1.5  # largest size / smallest size

# The generated world.
VENUES = 1000
UNROUTED_ACCOUNTS = 20  # accounts sending events that no venue has
EVENTS_PER_SUBSCRIPTION = 30  # each subscription is named by ~30 events over its life
ACTIVE_SUBSCRIPTIONS = 1000  # subscriptions alive at any one time (a sliding window)
HISTORY_SECONDS = 2 * 365 * 86400  # the largest size spans this
OPEN_MISMATCHES = 2000
RECEIVED_PER_FILL = 200  # the newest events of each fill, not processed yet
FAILED_SHARE = 1e-4
CHUNK_ROWS = 20_000  # rows per COPY transaction
SAMPLE_EVERY = 997  # every Nth generated payload is parsed and checked with ids_named
FILL_PREFIX = "evt_1HFill"  # generated events: FILL_PREFIX + 14 digits
LIVE_PREFIX = "evt_1HLive"  # deliveries made while timing
SEED = "history-bench-1"
MONTH = 30 * 86400
M64 = (1 << 64) - 1

EVENT_COLUMNS = ("event_id", "endpoint", "account_id", "livemode", "type", "created", "payload",
                 "subscription_id", "customer_id", "status", "outcome", "attempts",
                 "last_error", "waiting_for", "received_at", "processed_at")


# --------------------------------------------------------------------------- output


class Tee:
    """Everything printed goes to the terminal and to the log file."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()


def say(text: str = "") -> None:
    print(text, flush=True)


def label(size: int) -> str:
    """100000 -> 100k, 5000000 -> 5M."""
    for unit, div in (("M", 1_000_000), ("k", 1000)):
        if size >= div and size % (div // 10) == 0:
            value = size / div
            return f"{value:g}{unit}"
    return f"{size:,}"


def megabytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MB" if n < 2**30 else f"{n / 2**30:,.1f} GB"


# --------------------------------------------------------------------------- ids


_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _mix(x: int) -> int:
    """splitmix64: a bijection on 64-bit ints that looks random."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _b62(x: int, width: int = 11) -> str:
    out = []
    for _ in range(width):
        x, r = divmod(x, 62)
        out.append(_B62[r])
    return "".join(out)


def _token(n: int, salt: int, width: int) -> str:
    """`width` base-62 characters, unique per `n` for a given salt."""
    text = _b62(_mix(n ^ (salt << 48)), 11) + _b62(_mix(n + salt), 11)
    return text[:width]


FIRST = ("Anna", "Ben", "Clara", "David", "Elif", "Femi", "Greta", "Hugo", "Ines", "Jonas",
         "Kira", "Luca", "Mara", "Nils", "Olga", "Paul", "Quinn", "Rosa", "Sami", "Tara",
         "Ugo", "Vera", "Wim", "Xena", "Yusuf", "Zoe", "Amir", "Bea", "Cem", "Dana")
LAST = ("Adler", "Berg", "Costa", "Dahl", "Eriksen", "Fischer", "Garcia", "Hansen", "Ivanova",
        "Jansen", "Keller", "Lopez", "Meyer", "Novak", "Olsen", "Petrov", "Quist", "Rossi",
        "Schmidt", "Torres", "Ulrich", "Vogel", "Weber", "Xu", "Yilmaz", "Zimmer")
CITIES = (("Berlin", "10115"), ("Hamburg", "20095"), ("Munich", "80331"), ("Cologne", "50667"),
          ("Leipzig", "04109"), ("Vienna", "1010"), ("Zurich", "8001"), ("Amsterdam", "1012"))
DOMAINS = ("example.com", "mail.example", "post.example", "inbox.example")
PRICES = (2900, 3900, 4900, 5900, 7900)


class VenueInfo(NamedTuple):
    index: int
    account_id: str
    name: str
    admin: str
    price: str
    product: str
    amount: int
    nickname: str


@functools.cache
def venue_info(index: int) -> VenueInfo:
    """Venue `index` (< VENUES), or an account no venue has (VENUES ... +UNROUTED)."""
    h = _mix(index + 0x5EED)
    account = f"acct_1H{_token(index, 1, 14)}"
    kind = ("Gym", "Studio", "Club", "Dojo", "Pool", "Climbing Hall")[h % 6]
    city = CITIES[(h >> 8) % len(CITIES)][0]
    amount = PRICES[(h >> 16) % len(PRICES)]
    return VenueInfo(index, account, f"{city} {kind} {index}", f"owner{index}@venue{index}.example",
                     f"price_1H{_token(index, 2, 22)}", f"prod_H{_token(index, 3, 13)}", amount,
                     f"Monthly membership {amount // 100}")


class Sub(NamedTuple):
    k: int
    subscription_id: str
    customer_id: str
    venue: VenueInfo
    state: str  # linked | mismatch | unrouted
    case: int  # 1..3 for a mismatch
    drift: bool  # linked, but the customer's mirrored email changed away from the member's
    email: str
    name: str
    item: str
    payment_method: str
    old_customer: str  # case 1: the customer the member is linked to instead


@functools.lru_cache(maxsize=65536)
def sub_info(k: int) -> Sub:
    """Subscription `k` (k >= -ACTIVE_SUBSCRIPTIONS: some began before the inbox did), a pure
    function of k, so every fill and top-up agrees on it."""
    n = k + ACTIVE_SUBSCRIPTIONS + 1
    h = _mix(n)
    roll = h % 1000
    u = ((h >> 20) & 0xFFFFFF) / 0x1000000
    if 10 <= roll < 20:
        state, venue = "unrouted", venue_info(VENUES + (h >> 44) % UNROUTED_ACCOUNTS)
    else:
        state = "mismatch" if roll < 10 else "linked"
        venue = venue_info(min(VENUES - 1, int(VENUES * u ** 1.5)))  # some venues are busier
    first, last = FIRST[(h >> 10) % len(FIRST)], LAST[(h >> 50) % len(LAST)]
    email = f"{first.lower()}.{last.lower()}{n}@{DOMAINS[(h >> 5) % len(DOMAINS)]}"
    return Sub(k, f"sub_1H{_token(n, 4, 22)}", f"cus_H{_token(n, 5, 13)}", venue, state,
               1 + (h >> 12) % 3, state == "linked" and 20 <= roll < 23, email,
               f"{first} {last}", f"si_H{_token(n, 6, 12)}", f"pm_1H{_token(n, 7, 22)}",
               f"cus_H{_token(n, 8, 13)}")


# --------------------------------------------------------------------------- payloads


def _price(created: str) -> dict[str, Any]:
    return {
        "id": "@price", "object": "price", "active": True, "billing_scheme": "per_unit",
        "created": created, "currency": "eur", "custom_unit_amount": None, "livemode": False,
        "lookup_key": None, "metadata": {}, "nickname": "@nick", "product": "@prod",
        "recurring": {"aggregate_usage": None, "interval": "month", "interval_count": 1,
                      "meter": None, "trial_period_days": None, "usage_type": "licensed"},
        "tax_behavior": "unspecified", "tiers_mode": None, "transform_quantity": None,
        "type": "recurring", "unit_amount": "#amount", "unit_amount_decimal": "@amount",
    }


def _subscription() -> dict[str, Any]:
    return {
        "id": "@sub", "object": "subscription", "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": "#since", "billing_cycle_anchor_config": None,
        "billing_thresholds": None, "cancel_at": None, "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically", "created": "#since", "currency": "eur",
        "current_period_end": "#end", "current_period_start": "#start", "customer": "@cus",
        "days_until_due": None, "default_payment_method": "@pm", "default_source": None,
        "default_tax_rates": [], "description": None, "discount": None, "discounts": [],
        "ended_at": None,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "items": {
            "object": "list",
            "data": [{
                "id": "@si", "object": "subscription_item", "billing_thresholds": None,
                "created": "#since", "discounts": [], "metadata": {},
                "price": _price("#since"), "quantity": 1,
                "subscription": "@sub", "tax_rates": [],
            }],
            "has_more": False, "total_count": 1, "url": "/v1/subscription_items?subscription=@sub",
        },
        "latest_invoice": "@inv", "livemode": False,
        "metadata": {"member_email": "@email", "source": "booking-widget"},
        "next_pending_invoice_item_invoice": None, "on_behalf_of": None,
        "pause_collection": None,
        "payment_settings": {"payment_method_options": None, "payment_method_types": None,
                             "save_default_payment_method": "off"},
        "pending_invoice_item_interval": None, "pending_setup_intent": None,
        "pending_update": None, "quantity": 1, "schedule": None,
        "start_date": "#since", "status": "active", "test_clock": None, "transfer_data": None,
        "trial_end": None,
        "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": None,
    }


def _address() -> dict[str, Any]:
    return {"city": "@city", "country": "DE", "line1": "@line1", "line2": None,
            "postal_code": "@postal", "state": None}


def _customer() -> dict[str, Any]:
    return {
        "id": "@cus", "object": "customer", "address": _address(), "balance": 0,
        "created": "#since", "currency": "eur", "default_source": None, "delinquent": False,
        "description": None, "discount": None, "email": "@email", "invoice_prefix": "@prefix",
        "invoice_settings": {"custom_fields": None, "default_payment_method": "@pm",
                             "footer": None, "rendering_options": None},
        "livemode": False, "metadata": {"member_ref": "@ref"}, "name": "@name",
        "next_invoice_sequence": 7, "phone": "@phone", "preferred_locales": ["de"],
        "shipping": None, "tax_exempt": "none", "test_clock": None,
    }


def _invoice(status: str) -> dict[str, Any]:
    paid = status == "paid"
    line = {
        "id": "@il", "object": "line_item", "amount": "#amount",
        "amount_excluding_tax": "#amount", "currency": "eur",
        "description": "1 × @nick (at €@euros / month)", "discount_amounts": [],
        "discountable": True, "discounts": [], "invoice": "@inv", "livemode": False,
        "metadata": {}, "period": {"end": "#end", "start": "#start"}, "proration": False,
        "proration_details": {"credited_items": None}, "quantity": 1, "subscription": "@sub",
        "subscription_item": "@si", "tax_amounts": [], "tax_rates": [], "type": "subscription",
        "unit_amount_excluding_tax": "@amount",
    }
    return {
        "id": "@inv", "object": "invoice", "account_country": "DE", "account_name": "@venue",
        "account_tax_ids": None, "amount_due": "#amount", "amount_paid": "#paid",
        "amount_remaining": "#remaining", "amount_shipping": 0, "application": None,
        "application_fee_amount": None, "attempt_count": 1 if paid else 0, "attempted": paid,
        "auto_advance": not paid,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None,
                          "status": None},
        "billing_reason": "subscription_cycle", "charge": "@ch" if paid else None,
        "collection_method": "charge_automatically", "created": "#created", "currency": "eur",
        "custom_fields": None, "customer": "@cus", "customer_address": None,
        "customer_email": "@email", "customer_name": "@name", "customer_phone": "@phone",
        "customer_shipping": None, "customer_tax_exempt": "none", "customer_tax_ids": [],
        "default_payment_method": None, "default_source": None, "default_tax_rates": [],
        "description": None, "discount": None, "discounts": [], "due_date": None,
        "effective_at": "#created", "ending_balance": 0, "footer": None, "from_invoice": None,
        "hosted_invoice_url": "https://invoice.stripe.com/i/@acct/test_@ilong?s=ap",
        "invoice_pdf": "https://pay.stripe.com/invoice/@acct/test_@ilong/pdf?s=ap",
        "issuer": {"type": "self"}, "last_finalization_error": None, "latest_revision": None,
        "lines": {"object": "list", "data": [line], "has_more": False, "total_count": 1,
                  "url": "/v1/invoices/@inv/lines"},
        "livemode": False, "metadata": {}, "next_payment_attempt": None, "number": "@number",
        "on_behalf_of": None, "paid": paid, "paid_out_of_band": False,
        "payment_intent": "@pi" if paid else None,
        "payment_settings": {"default_mandate": None, "payment_method_options": None,
                             "payment_method_types": None},
        "period_end": "#start", "period_start": "#start",
        "post_payment_credit_notes_amount": 0, "pre_payment_credit_notes_amount": 0,
        "quote": None, "receipt_number": None, "rendering": None, "shipping_cost": None,
        "shipping_details": None, "starting_balance": 0, "statement_descriptor": None,
        "status": status,
        "status_transitions": {"finalized_at": "#created" if paid else None,
                               "marked_uncollectible_at": None,
                               "paid_at": "#created" if paid else None, "voided_at": None},
        "subscription": "@sub", "subscription_details": {"metadata": {}},
        "subtotal": "#amount", "subtotal_excluding_tax": "#amount", "tax": None,
        "test_clock": None, "total": "#amount", "total_discount_amounts": [],
        "total_excluding_tax": "#amount", "total_tax_amounts": [], "transfer_data": None,
        "webhooks_delivered_at": "#created" if paid else None,
    }


def _card() -> dict[str, Any]:
    return {"brand": "visa", "checks": {"address_line1_check": None,
                                        "address_postal_code_check": None,
                                        "cvc_check": "pass"},
            "country": "DE", "exp_month": 8, "exp_year": 2029, "fingerprint": "@fp",
            "funding": "credit", "last4": "4242", "network": "visa",
            "three_d_secure": None, "wallet": None}


def _charge() -> dict[str, Any]:
    return {
        "id": "@ch", "object": "charge", "amount": "#amount", "amount_captured": "#amount",
        "amount_refunded": 0, "application": None, "application_fee": None,
        "application_fee_amount": None, "balance_transaction": "@txn",
        "billing_details": {"address": _address(), "email": "@email", "name": "@name",
                            "phone": None},
        "calculated_statement_descriptor": "@descriptor", "captured": True,
        "created": "#created", "currency": "eur", "customer": "@cus",
        "description": "Subscription update", "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None, "failure_message": None, "fraud_details": {}, "invoice": "@inv",
        "livemode": False, "metadata": {}, "on_behalf_of": None,
        "outcome": {"network_status": "approved_by_network", "reason": None,
                    "risk_level": "normal", "risk_score": 23, "seller_message":
                    "Payment complete.", "type": "authorized"},
        "paid": True, "payment_intent": "@pi", "payment_method": "@pm",
        "payment_method_details": {"card": _card(), "type": "card"},
        "receipt_email": "@email", "receipt_number": None,
        "receipt_url": "https://pay.stripe.com/receipts/invoices/@ilong?s=ap",
        "refunded": False, "review": None, "shipping": None, "source": None,
        "source_transfer": None, "statement_descriptor": None,
        "statement_descriptor_suffix": None, "status": "succeeded", "transfer_data": None,
        "transfer_group": None,
    }


def _payment_intent() -> dict[str, Any]:
    return {
        "id": "@pi", "object": "payment_intent", "amount": "#amount", "amount_capturable": 0,
        "amount_details": {"tip": {}}, "amount_received": "#amount", "application": None,
        "application_fee_amount": None, "automatic_payment_methods": None,
        "canceled_at": None, "cancellation_reason": None, "capture_method": "automatic",
        "client_secret": "@secret", "confirmation_method": "automatic",
        "created": "#created", "currency": "eur", "customer": "@cus",
        "description": "Subscription update", "invoice": "@inv", "last_payment_error": None,
        "latest_charge": "@ch", "livemode": False, "metadata": {}, "next_action": None,
        "on_behalf_of": None, "payment_method": "@pm", "payment_method_configuration_details":
        None, "payment_method_options": {"card": {"installments": None, "mandate_options": None,
                                                  "network": None,
                                                  "request_three_d_secure": "automatic"}},
        "payment_method_types": ["card"], "processing": None, "receipt_email": "@email",
        "review": None, "setup_future_usage": "off_session", "shipping": None, "source": None,
        "statement_descriptor": None, "statement_descriptor_suffix": None,
        "status": "succeeded", "transfer_data": None, "transfer_group": None,
    }


def _event(type_: str, obj: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {"id": "@evt", "object": "event", "account": "@acct", "api_version": "2024-06-20",
            "created": "#created", "data": data, "livemode": False, "pending_webhooks": 1,
            "request": {"id": "@req", "idempotency_key": "@idem"}, "type": type_}


# Event types with their share of the stream; the last ones are not handled (ignored).
TYPE_SHARES = (("customer.subscription.updated", 0.30), ("customer.subscription.created", 0.03),
               ("customer.updated", 0.22), ("invoice.paid", 0.20), ("invoice.created", 0.05),
               ("charge.succeeded", 0.10), ("payment_intent.succeeded", 0.10))
IGNORED_TYPES = frozenset({"invoice.created", "charge.succeeded", "payment_intent.succeeded"})
_PLACEHOLDER = re.compile(r'"([@#])(\w+)"|@(\w+)')


class Template(NamedTuple):
    type: str
    raw: str  # with %(name)s / %(name)d placeholders
    copy: str  # the same, escaped for COPY's text format
    names_subscription: bool  # what ids_named reads from it: the subscription too


def _compile(type_: str, event: dict[str, Any]) -> Template:
    text = json.dumps(event, indent=2, ensure_ascii=False)
    assert "%" not in text

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) == "#":
            return f"%({match.group(2)})d"
        if match.group(1) == "@":
            return f'"%({match.group(2)})s"'
        return f"%({match.group(3)})s"

    raw = _PLACEHOLDER.sub(placeholder, text)
    copy = raw.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    return Template(type_, raw, copy, False)


@functools.cache
def templates() -> dict[str, Template]:
    """One template per event type, each checked with db.history.ids_named."""
    from db.history import ids_named

    previous_sub = {"current_period_end": "#start", "current_period_start": "#since",
                    "latest_invoice": "@ilong"}
    built = {
        "customer.subscription.updated": _event("customer.subscription.updated",
                                                _subscription(), previous_sub),
        "customer.subscription.created": _event("customer.subscription.created",
                                                _subscription(), None),
        "customer.updated": _event("customer.updated", _customer(),
                                   {"address": _address(), "phone": None}),
        "invoice.paid": _event("invoice.paid", _invoice("paid"), None),
        "invoice.created": _event("invoice.created", _invoice("draft"), None),
        "charge.succeeded": _event("charge.succeeded", _charge(), None),
        "payment_intent.succeeded": _event("payment_intent.succeeded", _payment_intent(), None),
    }
    out = {}
    sample = _values(sub_info(0), 0, 1_700_000_000, 1_690_000_000)
    for type_, event in built.items():
        template = _compile(type_, event)
        named = ids_named(json.loads(template.raw % sample))
        assert named[1] == sample["cus"], (type_, named)
        assert named[0] in (None, sample["sub"]), (type_, named)
        out[type_] = template._replace(names_subscription=named[0] is not None)
    return out


@functools.lru_cache(maxsize=65536)
def _sub_values(sub: Sub) -> dict[str, Any]:
    """The placeholders' values that are the same for every event about `sub`."""
    venue = sub.venue
    city, postal = CITIES[sub.k % len(CITIES)]
    return {
        "acct": venue.account_id, "sub": sub.subscription_id, "cus": sub.customer_id,
        "si": sub.item, "price": venue.price, "prod": venue.product, "nick": venue.nickname,
        "amount": venue.amount, "euros": f"{venue.amount / 100:.2f}", "paid": venue.amount,
        "remaining": 0, "pm": sub.payment_method, "fp": sub.subscription_id[6:22],
        "email": sub.email, "name": sub.name, "phone": f"+49151{sub.k % 10_000_000:07d}",
        "city": city, "postal": postal,
        "line1": f"{LAST[sub.k % len(LAST)]}strasse {sub.k % 97 + 1}",
        "prefix": sub.customer_id[4:12].upper(), "ref": f"m-{sub.k}",
        "venue": venue.name, "descriptor": venue.name[:22].upper(),
    }


def _values(sub: Sub, g: int, created: int, since: int) -> dict[str, Any]:
    """The placeholders' values for generated event number `g` about `sub`."""
    start = since + (max(0, created - since) // MONTH) * MONTH
    raw = ((_mix(g) << 64) | _mix(g ^ 0x7F4A7C15)).to_bytes(16, "little")
    text = base64.b64encode(raw, b"Aa").decode()  # alphanumeric, as Stripe's ids are
    s, t = text[:11], text[11:22]
    values = dict(_sub_values(sub))
    values.update(
        evt=f"{FILL_PREFIX}{g:014d}", created=created, req=f"req_{s[:7]}{t[:7]}",
        idem=f"{s}-{t}", inv=f"in_1H{s}{t}", il=f"il_1H{t}{s}", ilong=f"YWNjdF8x{s}{t}{s[:6]}",
        ch=f"ch_3H{t}{s}", pi=f"pi_3H{s[::-1]}{t}", secret=f"pi_3H{s[::-1]}{t}_secret_{s}",
        txn=f"txn_3H{t[::-1]}{s}",
        number=f"{values['prefix']}-{(created - since) // MONTH + 1:04d}",
        since=since, start=start, end=start + MONTH)
    return values


def _outcome(type_: str, sub: Sub) -> tuple[str, str]:
    """(status, outcome) the worker leaves an event of this type about `sub` with."""
    if type_ in IGNORED_TYPES:
        return "ignored", "unhandled_type"
    if sub.state == "unrouted":
        return "processed", "unrouted"
    if type_.startswith("customer.subscription."):
        return "processed", f"case_{sub.case}" if sub.state == "mismatch" else "linked"
    if type_ == "customer.updated":
        return "processed", "customer_mirrored"
    return "processed", "payment_recorded" if sub.state == "mismatch" else "payment_not_tracked"


# --------------------------------------------------------------------------- the fill


@dataclass
class Clock:
    """received_at of generated event number g: a line through (g0, t0) with `step`
    seconds per event (plus jitter under half a step, so it grows with g)."""

    g0: int
    t0: float
    step: float

    def at(self, g: int) -> float:
        return self.t0 + (g - self.g0) * self.step


def _timestamp(t: float) -> str:
    return (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
            + f".{int(t % 1 * 1e6):06d}+00")


@dataclass
class Payment:
    account_id: str
    subscription_id: str
    invoice_id: str
    charge_id: str
    payment_intent_id: str
    amount: int
    paid_at: int


def generate(g_from: int, g_to: int, g_end: int, clock: Clock, rng: random.Random,
             payments: list[Payment]) -> Iterator[str]:
    """COPY text lines for generated events g_from .. g_to - 1 of a fill ending at g_end
    (its newest RECEIVED_PER_FILL are still `received`); the invoices paid by outside
    (mismatched) subscriptions go to `payments`."""
    from db.history import ids_named

    types = templates()
    cumulative, total = [], 0.0
    for type_, share in TYPE_SHARES:
        total += share
        cumulative.append((total, types[type_]))
    received_from = g_end - RECEIVED_PER_FILL
    for g in range(g_from, g_to):
        sub = sub_info(g // EVENTS_PER_SUBSCRIPTION - rng.randrange(ACTIVE_SUBSCRIPTIONS))
        roll = rng.random() * total
        template = next(t for limit, t in cumulative if roll < limit)
        t = clock.at(g) + rng.random() * clock.step * 0.5
        created = int(t) - rng.randrange(3)
        since = min(created, int(clock.at(sub.k * EVENTS_PER_SUBSCRIPTION)))
        values = _values(sub, g, created, since)
        status, outcome = _outcome(template.type, sub)
        attempts, error, waiting, processed = "1", "\\N", "\\N", _timestamp(t + 0.2 + rng.random())
        if g >= received_from:
            status, outcome, attempts, processed = "received", "\\N", "0", "\\N"
            if rng.random() < 0.25:
                status, outcome, attempts = "received", "customer_unknown", "2"
                waiting = sub.customer_id
                error = f"waiting for customer {sub.customer_id}'s email"
        elif rng.random() < FAILED_SHARE:
            status, attempts, processed = "failed", "6", "\\N"
            if rng.random() < 0.5:
                outcome = "customer_unknown"
                error = f"Stripe has no customer {sub.customer_id} (rule 3); retries ran out"
            else:
                outcome, error = "\\N", "StripeUnavailable: timed out after 30.0 s"
        subscription = sub.subscription_id if template.names_subscription else None
        if g % SAMPLE_EVERY == 0:
            named = ids_named(json.loads(template.raw % values))
            if named != (subscription, sub.customer_id):
                raise SystemExit(f"generated event {g}: ids_named says {named}, the row would "
                                 f"hold {(subscription, sub.customer_id)}")
        if template.type == "invoice.paid" and sub.state == "mismatch" and status != "failed":
            payments.append(Payment(sub.venue.account_id, sub.subscription_id, values["inv"],
                                    values["ch"], values["pi"], sub.venue.amount, created))
        yield "\t".join((
            values["evt"], "connect", sub.venue.account_id, "f", template.type, str(created),
            template.copy % values, subscription or "\\N", sub.customer_id, status, outcome,
            attempts, error, waiting, _timestamp(t), processed)) + "\n"


@dataclass
class FillReport:
    size: int
    rows_before: int
    rows: int
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None  # why this size is not measured

    @property
    def filled(self) -> int:
        return self.rows - self.rows_before


def _generated_bounds(conn: Any) -> tuple[tuple[int, datetime] | None, tuple[int, datetime] | None]:
    """(g, received_at) of the first and last generated events, or None."""
    found = []
    for order in ("ASC", "DESC"):
        row = conn.execute(
            f"SELECT event_id, received_at FROM stripe_events WHERE event_id LIKE %s "
            f"ORDER BY id {order} LIMIT 1", (FILL_PREFIX + "%",)).fetchone()
        found.append((int(row[0][len(FILL_PREFIX):]), row[1]) if row else None)
    return found[0], found[1]


def _disk_free(conn: Any) -> list[tuple[str, int]]:
    """Free bytes where the inbox grows: PostgreSQL's data directory (when it is readable
    here) and /work."""
    places = []
    try:
        data_dir = conn.execute("SHOW data_directory").fetchone()[0]
        places.append((data_dir, shutil.disk_usage(data_dir).free))
    except Exception:  # noqa: BLE001 - not a superuser, or on another machine
        pass
    if Path("/work").exists():
        places.append(("/work", shutil.disk_usage("/work").free))
    return places


def _clock(conn: Any, largest: int) -> tuple[Clock, int]:
    """The fill's clock, and the next generated event's number: continuing the earlier
    fills' pace when there are any."""
    first, last = _generated_bounds(conn)
    if first is None or last is None:
        return Clock(0, time.time() - HISTORY_SECONDS, HISTORY_SECONDS / largest), 0
    t_first, t_last = first[1].timestamp(), last[1].timestamp()
    step = (t_last - t_first) / last[0] if last[0] else HISTORY_SECONDS / largest
    return Clock(last[0], t_last, step), last[0] + 1


def _complete(conn: Any) -> bool:
    """Did the last fill finish (its mismatches and tallies written)? A fill interrupted
    after its rows were copied did not."""
    mismatches = conn.execute("SELECT count(*) FROM mismatches").fetchone()[0]
    tallied = conn.execute("SELECT coalesce(sum(n), 0) FROM event_tallies").fetchone()[0]
    finished = conn.execute("SELECT count(*) FROM stripe_events "
                            "WHERE status IN ('processed', 'ignored')").fetchone()[0]
    return mismatches > 0 and tallied == finished


def _bytes_per_row(conn: Any, rows: int, need: int) -> float:
    """Bytes a row takes with its indexes (the table's own figure once it has some); exits
    before filling when a disk would get too full."""
    per_row = 4500.0  # bytes per row with its indexes, until the table says
    if rows >= 10_000:
        total = conn.execute("SELECT pg_total_relation_size('stripe_events')").fetchone()[0]
        per_row = max(total / rows, 2000.0)
    wanted = need * per_row * 1.25 + 3 * 2**30  # + WAL, VACUUM, the satellites
    for place, free in _disk_free(conn):
        if free < wanted:
            raise SystemExit(
                f"not enough disk for {need:,} more events: about {megabytes(wanted)} "
                f"needed, {megabytes(free)} free at {place}. Free some space, or use "
                f"smaller --sizes")
    return per_row


def _fill_clock(conn: Any, largest: int, need: int) -> tuple[Clock, int]:
    """_clock, slowed down when the new events would otherwise reach the future."""
    clock, g_from = _clock(conn, largest)
    now = time.time()
    if clock.at(g_from + need) > now - 60:  # more than the first fill planned for
        clock = Clock(clock.g0, clock.t0, (now - 60 - clock.t0) / (g_from + need - clock.g0))
        say(f"  note: at the first fill's pace these events would reach the future; "
            f"they are {clock.step:.2f} s apart")
    return clock, g_from


def _copy_events(conn: Any, g_from: int, g_to: int, clock: Clock,
                 payments: list[Payment]) -> None:
    """COPY generated events g_from .. g_to - 1, CHUNK_ROWS per transaction, a writer thread
    sending while this one generates the next lines."""
    from psycopg.copy import QueuedLibpqWriter

    rng = random.Random(f"{SEED}:{g_from}")
    started = last_note = time.monotonic()
    copied, need = 0, g_to - g_from
    columns = ", ".join(EVENT_COLUMNS)
    for chunk_from in range(g_from, g_to, CHUNK_ROWS):
        chunk_to = min(g_to, chunk_from + CHUNK_ROWS)
        lines = generate(chunk_from, chunk_to, g_to, clock, rng, payments)
        with conn.transaction(), conn.cursor() as cur, cur.copy(
                f"COPY stripe_events ({columns}) FROM STDIN",
                writer=QueuedLibpqWriter(cur)) as copy:
            batch: list[str] = []
            for line in lines:
                batch.append(line)
                if len(batch) == 500:
                    copy.write("".join(batch))
                    batch.clear()
            if batch:
                copy.write("".join(batch))
        copied += chunk_to - chunk_from
        if time.monotonic() - last_note > 30 or chunk_to == g_to:
            last_note = time.monotonic()
            elapsed = last_note - started
            say(f"    {copied:,} / {need:,} rows, {elapsed:.0f} s, "
                f"{copied / elapsed:,.0f} rows/s")


def _reuse(conn: Any, sa_url: str, report: FillReport, size: int, largest: int) -> None:
    """The table holds `size` rows already: skip a size it has outgrown, finish a fill that
    was interrupted after its rows were copied."""
    rows = report.rows
    if rows > size * 1.1:
        report.skipped = (f"the table already holds {rows:,} rows, more than this size "
                          f"(a bigger fill kept from an earlier run); rerun with --fresh "
                          f"(or another --database-url) to measure {label(size)}")
    elif not _complete(conn):
        say("  the rows are there but the last fill did not finish: finishing it")
        clock, g_end = _clock(conn, largest)
        _finish(conn, sa_url, report, clock, g_end, [])


def fill(pg_url: str, sa_url: str, size: int, largest: int) -> FillReport:
    """Make stripe_events hold at least `size` rows (a top-up from what is there), with
    everything around them; then tallies and VACUUM ANALYZE."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute("SELECT count(*) FROM stripe_events").fetchone()[0]
        report = FillReport(size, rows, rows)
        if rows >= size:
            _reuse(conn, sa_url, report, size, largest)
            return report
        need = size - rows
        per_row = _bytes_per_row(conn, rows, need)
        clock, g_from = _fill_clock(conn, largest, need)
        g_to = g_from + need
        say(f"  filling {need:,} events (generated #{g_from:,} .. #{g_to - 1:,}), "
            f"~{per_row / 1024:.1f} KB per row with indexes (disk: "
            + ", ".join(f"{megabytes(free)} free at {place}" for place, free in _disk_free(conn))
            + f"); chunks of {CHUNK_ROWS:,}")
        conn.execute("SET synchronous_commit = off")
        payments: list[Payment] = []
        started = time.monotonic()
        _copy_events(conn, g_from, g_to, clock, payments)
        report.seconds["copy"] = time.monotonic() - started
        _finish(conn, sa_url, report, clock, g_to, payments)
    return report


def _finish(conn: Any, sa_url: str, report: FillReport, clock: Clock, g_end: int,
            payments: list[Payment]) -> None:
    """After the rows: what surrounds them, the tallies, VACUUM ANALYZE."""
    from db import Database
    from db.history import rebuild_tallies

    mark = time.monotonic()
    satellites(conn, clock, (g_end - 1) // EVENTS_PER_SUBSCRIPTION, g_end, payments)
    report.seconds["venues, members, mismatches…"] = time.monotonic() - mark
    mark = time.monotonic()
    database = Database(sa_url)
    with database.session() as session:
        tallies = rebuild_tallies(session)
    database.dispose()
    report.seconds["rebuild_tallies"] = time.monotonic() - mark
    mark = time.monotonic()
    conn.execute("SET maintenance_work_mem = '512MB'")
    conn.execute("VACUUM ANALYZE")
    report.rows = conn.execute("SELECT count(*) FROM stripe_events").fetchone()[0]
    report.seconds["VACUUM ANALYZE"] = time.monotonic() - mark
    say(f"  filled: {report.rows:,} rows; {tallies} tallies; " + ", ".join(
        f"{name} {seconds:.0f} s" for name, seconds in report.seconds.items()))


# What surrounds the inbox, made in SQL from the temporary tables satellites() fills.
MEMBERS_SQL = """
    INSERT INTO members (venue_id, member_ref, email, email_normalized, name,
                         stripe_customer_id, created_at, updated_at)
    SELECT v.id, t.member_ref, t.email, lower(t.email), t.name, t.member_customer,
           to_timestamp(t.first_created), to_timestamp(t.first_created)
    FROM bench_subs t JOIN venues v ON v.account_id = t.account_id
    WHERE t.member_ref IS NOT NULL
    ON CONFLICT DO NOTHING"""
CUSTOMERS_SQL = """
    INSERT INTO stripe_customers (account_id, livemode, customer_id, email, name,
                                  deleted, last_event_created, updated_at)
    SELECT account_id, false, customer_id, mirrored_email, name, false, last_created,
           to_timestamp(last_created)
    FROM bench_subs ON CONFLICT DO NOTHING"""
SUBSCRIPTIONS_SQL = """
    INSERT INTO subscriptions (account_id, livemode, subscription_id, customer_id,
                               venue_id, status, canceled, state, member_id,
                               last_event_created, updated_at)
    SELECT t.account_id, false, t.subscription_id, t.customer_id, v.id, 'active',
           false, t.state, CASE WHEN t.state = 'linked' THEN m.id END, t.last_created,
           to_timestamp(t.last_created)
    FROM bench_subs t LEFT JOIN venues v ON v.account_id = t.account_id
    LEFT JOIN members m ON m.venue_id = v.id AND m.member_ref = t.member_ref
    ON CONFLICT DO NOTHING"""
MISMATCHES_SQL = """
    INSERT INTO mismatches (account_id, livemode, subscription_id, venue_id, "case",
                            customer_id, customer_email, linked_customer_id,
                            member_id, candidates, status, notified_case, opened_at,
                            updated_at)
    SELECT t.account_id, false, t.subscription_id, v.id, t."case", t.customer_id,
           t.email, CASE WHEN t."case" = 1 THEN t.member_customer END,
           CASE WHEN t."case" = 1 THEN m.id END,
           CASE WHEN t."case" = 2 THEN json_build_array(json_build_object(
               'member_ref', m.member_ref, 'email', m.email,
               'stripe_customer_id', NULL))
           ELSE '[]'::json END,
           'open', t."case", to_timestamp(t.first_created + 60),
           to_timestamp(t.first_created + 60)
    FROM bench_subs t JOIN venues v ON v.account_id = t.account_id
    LEFT JOIN members m ON m.venue_id = v.id AND m.member_ref = t.member_ref
    WHERE t.state = 'mismatch'
    ON CONFLICT DO NOTHING"""
RESOLVE_SQL = """
    UPDATE mismatches SET status = 'resolved', resolution = 'linked',
           resolved_at = opened_at + interval '3 days',
           updated_at = opened_at + interval '3 days'
    WHERE status = 'open' AND id NOT IN (
        SELECT id FROM mismatches ORDER BY opened_at DESC, id DESC LIMIT %s)"""
NOTIFICATIONS_SQL = """
    INSERT INTO notifications (key, mismatch_id, recipient, kind, status, attempts,
                               context, created_at, sent_at)
    SELECT 'mismatch:' || m.id || ':case_' || m."case" || ':' || e.addr, m.id, e.addr,
           'case_' || m."case", 'sent', 1, json_build_object('case', m."case"),
           m.opened_at, m.opened_at + interval '1 minute'
    FROM mismatches m JOIN venues v ON v.id = m.venue_id
    CROSS JOIN LATERAL json_array_elements_text(v.admin_emails) AS e(addr)
    ON CONFLICT DO NOTHING"""
PAYMENTS_SQL = """
    INSERT INTO payments (account_id, livemode, subscription_id, invoice_id,
                          charge_id, payment_intent_id, amount, currency, paid_at,
                          amount_refunded, disputed, updated_at)
    SELECT account_id, false, subscription_id, invoice_id, charge_id,
           payment_intent_id, amount, 'eur', paid_at, 0, false, to_timestamp(paid_at)
    FROM bench_payments ON CONFLICT DO NOTHING"""


def _insert_venues(cur: Any, clock: Clock) -> None:
    created = datetime.fromtimestamp(clock.at(0) - 86400, UTC)
    cur.executemany(
        "INSERT INTO venues (account_id, name, admin_emails, livemode, digest, created_at,"
        " updated_at) VALUES (%s, %s, %s, false, false, %s, %s)"
        " ON CONFLICT (account_id) DO NOTHING",
        [(v.account_id, v.name, json.dumps([v.admin, f"desk@venue{v.index}.example"]),
          created, created) for v in (venue_info(i) for i in range(VENUES))])


def _copy_subscriptions(cur: Any, clock: Clock, k_max: int, g_end: int) -> None:
    """Every subscription named so far, with its member and mirror, into bench_subs."""
    cur.execute("CREATE TEMP TABLE bench_subs (k bigint, account_id text, subscription_id "
                "text, customer_id text, email text, name text, state text, \"case\" int, "
                "member_ref text, member_customer text, mirrored_email text, "
                "first_created bigint, last_created bigint) ON COMMIT DROP")
    with cur.copy("COPY bench_subs FROM STDIN") as copy:
        for k in range(-ACTIVE_SUBSCRIPTIONS, k_max + 1):
            sub = sub_info(k)
            first_g = max(0, k * EVENTS_PER_SUBSCRIPTION)
            last_g = min(g_end - 1, (k + ACTIVE_SUBSCRIPTIONS) * EVENTS_PER_SUBSCRIPTION)
            member_ref, member_customer = f"m-{k}", sub.customer_id
            if sub.state == "unrouted" or (sub.state == "mismatch" and sub.case == 3):
                member_ref = member_customer = None
            elif sub.state == "mismatch":
                member_customer = sub.old_customer if sub.case == 1 else None
            mirrored = f"new.{sub.email}" if sub.drift else sub.email
            copy.write_row((k, sub.venue.account_id, sub.subscription_id, sub.customer_id,
                            sub.email, sub.name, sub.state, sub.case, member_ref,
                            member_customer, mirrored, int(clock.at(first_g)),
                            int(clock.at(last_g))))


def _insert_payments(cur: Any, payments: list[Payment]) -> None:
    cur.execute("CREATE TEMP TABLE bench_payments (account_id text, subscription_id "
                "text, invoice_id text, charge_id text, payment_intent_id text, "
                "amount bigint, paid_at bigint) ON COMMIT DROP")
    with cur.copy("COPY bench_payments FROM STDIN") as copy:
        for p in payments:
            copy.write_row((p.account_id, p.subscription_id, p.invoice_id, p.charge_id,
                            p.payment_intent_id, p.amount, p.paid_at))
    cur.execute(PAYMENTS_SQL)


def satellites(conn: Any, clock: Clock, k_max: int, g_end: int,
               payments: list[Payment]) -> None:
    """Venues, members, mirrored customers, subscriptions, mismatches, their notices and
    payments for every subscription the inbox names so far (existing rows stay)."""
    with conn.transaction(), conn.cursor() as cur:
        _insert_venues(cur, clock)
        _copy_subscriptions(cur, clock, k_max, g_end)
        for sql in (MEMBERS_SQL, CUSTOMERS_SQL, SUBSCRIPTIONS_SQL, MISMATCHES_SQL):
            cur.execute(sql)
        cur.execute(RESOLVE_SQL, (OPEN_MISMATCHES,))
        cur.execute(NOTIFICATIONS_SQL)
        if payments:
            _insert_payments(cur, payments)


@dataclass
class World:
    """What a size is measured on."""

    rows: int
    table_bytes: int
    index_bytes: int
    open_mismatches: int
    mismatch_id: int
    account_id: str
    subscription_id: str
    customer_id: str
    timeline: int  # events naming the measured mismatch's subscription or customer
    timelines: Spread  # the same, over every open mismatch
    delivery: Sub  # the linked subscription the timed deliveries are about


def survey(pg_url: str) -> World:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute("SELECT count(*) FROM stripe_events").fetchone()[0]
        table, indexes = conn.execute(
            "SELECT pg_table_size('stripe_events'), pg_indexes_size('stripe_events')").fetchone()
        counted = conn.execute("""
            SELECT m.id, m.account_id, m.subscription_id, m.customer_id,
                   (SELECT count(*) FROM stripe_events e
                    WHERE (e.subscription_id = m.subscription_id
                           OR e.customer_id = m.customer_id)
                      AND e.account_id = m.account_id AND e.livemode = m.livemode)
            FROM mismatches m WHERE m.status = 'open'""").fetchall()
        last = conn.execute(
            "SELECT event_id FROM stripe_events WHERE event_id LIKE %s ORDER BY id DESC "
            "LIMIT 1", (FILL_PREFIX + "%",)).fetchone()
    if not counted:
        raise SystemExit("no open mismatch after the fill: use a bigger size")
    best = max(counted, key=lambda r: (r[4], -r[0]))
    k = int(last[0][len(FILL_PREFIX):]) // EVENTS_PER_SUBSCRIPTION - 3
    while sub_info(k).state != "linked":
        k -= 1
    return World(rows, table, indexes, len(counted), best[0], best[1], best[2], best[3],
                 best[4], Spread.of(r[4] for r in counted), sub_info(k))


# --------------------------------------------------------------------------- the service


def _reaped_cpu(pid: int) -> float:
    """CPU seconds of `pid`'s children that exited and were waited for (cutime + cstime)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Cores busy during a phase: this process and its server, PostgreSQL, and anything
    else on the machine (another job's CPU disturbs the figures)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.before = processes()
        self.reaped = {pid: _reaped_cpu(pid) for pid, info in self.before.items()
                       if info.comm.startswith(("postgres", "postmaster"))}
        self.machine = machine_cpu()
        self.started = time.monotonic()

    def stop(self) -> Noise:
        after, machine = processes(), machine_cpu()
        wall = max(time.monotonic() - self.started, 1e-6)
        ours_pids = {os.getpid(), self.server_pid, *descendants(self.server_pid, after)}
        groups = {"bench": 0.0, "postgres": 0.0, "other": 0.0}
        other: dict[str, float] = {}
        for pid, info in after.items():
            was = self.before.get(pid)
            used = info.cpu - (was.cpu if was is not None and was.comm == info.comm else 0.0)
            if pid in ours_pids:
                groups["bench"] += used
            elif info.comm.startswith(("postgres", "postmaster")):
                groups["postgres"] += used
            else:
                groups["other"] += used
                other[info.comm] = other.get(info.comm, 0.0) + used
        # Parallel query workers exit before the second look: their CPU is in what the
        # postmaster reaped meanwhile.
        for pid, reaped in self.reaped.items():
            if pid in after:
                groups["postgres"] += max(0.0, _reaped_cpu(pid) - reaped)
        busy = machine[0] - self.machine[0]
        groups["other"] = max(groups["other"], busy - groups["bench"] - groups["postgres"])
        top = sorted(other.items(), key=lambda kv: -kv[1])[:3]
        return Noise({k: v / wall for k, v in groups.items()},
                     [(comm, used / wall) for comm, used in top if used / wall >= 0.02])


@dataclass
class Noise:
    cores: dict[str, float]  # bench (this process and the server), postgres, other
    top_other: list[tuple[str, float]]

    def show(self) -> str:
        text = ", ".join(f"{k} {v:.2f}" for k, v in self.cores.items())
        if self.top_other:
            text += " (other: " + ", ".join(f"{c} {v:.2f}" for c, v in self.top_other) + ")"
        return text

    @property
    def disturbed(self) -> bool:
        return self.cores["other"] > 0.15


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
TIMELINE_SHOWN = re.compile(r"(\d+)(?: newest)? events? naming")


def service_env(args: argparse.Namespace, instance: Path) -> dict[str, str]:
    from werkzeug.security import generate_password_hash

    env = dict(os.environ)
    for var in ("RQ_QUEUE", "PROMETHEUS_MULTIPROC_DIR", "FLASK_ENV", "MISMATCH_ENV",
                "WEB_CONCURRENCY", "METRICS_TOKEN", "STRIPE_SECRET_KEY", "SMTP_URL",
                "STRIPE_THIN_WEBHOOK_SECRETS", "PROXY_HOPS"):
        env.pop(var, None)
    env.update(
        DATABASE_URL=args.database_url, REDIS_URL=args.redis_url,
        SECRET_KEY="history-bench-secret-key", STRIPE_WEBHOOK_SECRETS=PLATFORM_SECRET,
        STRIPE_CONNECT_WEBHOOK_SECRETS=CONNECT_SECRET, STRIPE_PLATFORM_ACCOUNT=PLATFORM_ACCOUNT,
        PUBLIC_BASE_URL="http://127.0.0.1:5000", API_TOKEN=API_TOKEN,
        SUPPORT_USERS=f"{STAFF_USER}:"
                      f"{generate_password_hash(STAFF_PASSWORD, 'pbkdf2:sha256:1000')}",
        INSTANCE_PATH=str(instance), PYTHONUNBUFFERED="1",
    )
    return env


class Deliveries:
    """New, signed customer.subscription.updated events about one linked subscription."""

    def __init__(self, sub: Sub) -> None:
        self.sub = sub
        self.run = _b62(_mix(time.time_ns()), 4)
        self.n = 0
        self.template = templates()["customer.subscription.updated"]

    def next(self) -> tuple[str, str]:
        """(body, Stripe-Signature header)."""
        from standins.events import sign

        self.n += 1
        now = int(time.time())
        since = now - 200 * 86400
        values = _values(self.sub, 10**12 + self.n, now, since)
        values["evt"] = f"{LIVE_PREFIX}{self.run}{self.n:08d}"
        body = self.template.raw % values
        return body, sign(body, CONNECT_SECRET)


@dataclass
class Timed:
    """One figure at one size: each run's median latency (ms)."""

    runs: list[float] = field(default_factory=list)
    reps: int = 0  # requests or executions per run

    @property
    def spread(self) -> Spread:
        return Spread.of(self.runs)


REQUESTS = ("healthz", "metrics", "support", "mismatch", "webhook")
REQUEST_NAMES = {
    "healthz": "GET /healthz (floor)", "metrics": "GET /metrics",
    "support": "GET /support", "mismatch": "GET /mismatches/<id>",
    "webhook": "POST /webhooks/stripe/connect",
}


def sign_in_requests(session: Any, base: str) -> None:
    page = session.get(base + "/support/login", timeout=30)
    match = CSRF.search(page.text)
    if page.status_code != 200 or not match:
        raise SystemExit(f"GET /support/login: {page.status_code}, no CSRF token")
    answer = session.post(base + "/support/login", allow_redirects=False, timeout=30, data={
        "csrf_token": match.group(1), "username": STAFF_USER, "password": STAFF_PASSWORD})
    if answer.status_code != 303:
        raise SystemExit(f"POST /support/login answered {answer.status_code}, not 303")


def time_service(args: argparse.Namespace, env: dict[str, str], world: World,
                 size_label: str) -> tuple[dict[str, Timed], list[str], int, Noise]:
    """The five requests through a fresh server: {name: Timed}, the server log's warning
    lines, the timeline length the mismatch page showed, and the machine's CPU meanwhile."""
    import requests

    flush_redis(args.redis_url)
    port = free_port()
    service = start_gunicorn("gunicorn", "listener.wsgi:app",
                             {**env, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}"},
                             LOG_DIR / f"history-gunicorn-{size_label}.log", port=port)
    try:
        wait_ready(service)
        http = requests.Session()
        sign_in_requests(http, service.base)
        deliveries = Deliveries(world.delivery)
        base = service.base
        shown: list[int] = []

        def call(name: str) -> float:
            if name == "webhook":
                body, signature = deliveries.next()
                started = time.perf_counter()
                answer = http.post(base + "/webhooks/stripe/connect", data=body.encode(),
                                   headers={"Stripe-Signature": signature,
                                            "Content-Type": "application/json"}, timeout=120)
            else:
                path = {"healthz": "/healthz", "metrics": "/metrics", "support": "/support",
                        "mismatch": f"/mismatches/{world.mismatch_id}"}[name]
                started = time.perf_counter()
                answer = http.get(base + path, allow_redirects=False, timeout=120)
            elapsed = (time.perf_counter() - started) * 1000
            if answer.status_code != 200:
                raise SystemExit(f"{REQUEST_NAMES[name]} answered {answer.status_code}:\n"
                                 f"{answer.text[:500]}\n{tail(service.log)}")
            if name == "webhook" and b'"duplicate":true' in answer.content.replace(b" ", b""):
                raise SystemExit("a timed delivery was taken for a duplicate")
            if name == "mismatch" and not shown:
                found = TIMELINE_SHOWN.search(answer.text)
                shown.append(int(found.group(1)) if found else -1)
            return elapsed

        for _ in range(args.warmup):
            for name in REQUESTS:
                call(name)
        timed = {name: Timed(reps=args.requests) for name in REQUESTS}
        meter = CpuMeter(service.proc.pid)
        for run in range(args.runs):
            order = REQUESTS[run % len(REQUESTS):] + REQUESTS[:run % len(REQUESTS)]
            for name in order:
                timed[name].runs.append(statistics.median(call(name)
                                                          for _ in range(args.requests)))
        noise = meter.stop()
        http.close()
        problems = log_lines(service.log, (" ERROR ", " WARNING ", "[ERROR]", "Traceback"))
        return timed, problems, shown[0] if shown else -1, noise
    finally:
        stop_servers()


# --------------------------------------------------------------------------- SQL


UNFINISHED = "('received', 'failed')"


def old_queries(world: World) -> dict[str, list[tuple[str, tuple]]]:
    """What the pages ran before migration 0006 (counting and searching the inbox)."""
    return {
        "metrics": [
            ("SELECT status, count(*) FROM stripe_events GROUP BY status", ()),
            ("SELECT outcome, count(*) FROM stripe_events WHERE outcome IS NOT NULL "
             "GROUP BY outcome", ()),
        ],
        "support": [
            ("SELECT account_id, livemode, count(*), max(received_at) FROM stripe_events "
             "WHERE outcome = 'unrouted' GROUP BY account_id, livemode", ()),
            ("SELECT * FROM stripe_events ORDER BY received_at DESC, id DESC LIMIT 15", ()),
        ],
        "mismatch": [
            ("SELECT id FROM stripe_events WHERE account_id = %s AND livemode = false AND "
             "(payload LIKE %s OR payload LIKE %s) ORDER BY created DESC, id DESC LIMIT 50",
             (world.account_id, f'%"{world.subscription_id}"%', f'%"{world.customer_id}"%')),
        ],
    }


def new_queries(world: World) -> dict[str, list[tuple[str, tuple]]]:
    """The inbox reads of listener/metrics.py `collect` and listener/console.py `dashboard`,
    `_tallied` and `_timeline` as they are now, in SQL."""
    return {
        "metrics": [
            ("SELECT status, outcome, count(*) FROM stripe_events "
             f"WHERE status IN {UNFINISHED} GROUP BY status, outcome", ()),
            ("SELECT status, outcome, sum(n) FROM event_tallies GROUP BY status, outcome", ()),
            ("SELECT min(received_at) FROM stripe_events WHERE status = 'received'", ()),
        ],
        "support": [
            ("SELECT * FROM stripe_events ORDER BY id DESC LIMIT 15", ()),
            ("SELECT * FROM stripe_events WHERE status = 'failed' "
             "ORDER BY received_at DESC LIMIT 50", ()),
            ("SELECT count(*) FROM stripe_events WHERE status = 'failed'", ()),
            ("SELECT min(received_at) FROM stripe_events WHERE status = 'received'", ()),
            ("SELECT count(*) FROM stripe_events WHERE status = 'received'", ()),
            ("SELECT account_id, livemode, sum(n), max(last_received_at), max(last_detail) "
             "FROM event_tallies WHERE outcome = 'unrouted' GROUP BY account_id, livemode "
             "ORDER BY max(last_received_at) DESC LIMIT 20", ()),
            ("SELECT account_id, livemode, count(*), max(received_at), max(last_error) "
             f"FROM stripe_events WHERE status IN {UNFINISHED} AND outcome = "
             "'customer_unknown' GROUP BY account_id, livemode "
             "ORDER BY max(received_at) DESC LIMIT 20", ()),
        ],
        "mismatch": [
            ("SELECT * FROM stripe_events WHERE (subscription_id = %s OR customer_id = %s) "
             "AND account_id = %s AND livemode = false "
             "ORDER BY created DESC, id DESC LIMIT 50",
             (world.subscription_id, world.customer_id, world.account_id)),
        ],
    }


def time_sql(conn: Any, statements: list[tuple[str, tuple]], runs: int, reps: int,
             budget: float) -> Timed:
    """The statements in a row as one figure, timed as the requests are: a first execution
    to warm up (and to see how long it takes), then `runs` runs of up to `reps` executions,
    fewer when a run would take longer than `budget` seconds; each run's median (ms)."""

    def once() -> float:
        started = time.perf_counter()
        for sql, params in statements:
            conn.execute(sql, params).fetchall()
        return (time.perf_counter() - started) * 1000

    first = once()
    n = max(1, min(reps, int(budget * 1000 / max(first, 0.001))))
    return Timed([statistics.median(once() for _ in range(n)) for _ in range(runs)], n)


def explain(conn: Any, sql: str, params: Any, analyze: bool = True) -> str:
    options = "ANALYZE, BUFFERS" if analyze else "COSTS"
    rows = conn.execute(f"EXPLAIN ({options}) {sql}", params).fetchall()
    return "\n".join(row[0] for row in rows)


# --------------------------------------------------------------------------- in process


@dataclass
class Statement:
    sql: str
    params: Any
    ms: float


@dataclass
class PageProfile:
    """One page requested in process: its statements (median times) and the request's
    median wall time, SQL included."""

    statements: list[Statement]
    request_ms: float

    @property
    def sql_ms(self) -> float:
        return sum(s.ms for s in self.statements)


def _record_statements(engine: Any, seen: list[Statement]) -> None:
    """Every statement `engine` sends goes to `seen`, with its time."""
    from sqlalchemy import event

    def before(conn: Any, _cursor: Any, _sql: str, _params: Any, _context: Any,
               _many: bool) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def after(conn: Any, _cursor: Any, sql: str, params: Any, _context: Any,
              _many: bool) -> None:
        started = conn.info["bench_started"].pop()
        seen.append(Statement(sql, params, (time.perf_counter() - started) * 1000))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)


def _signed_in(client: Any) -> None:
    page = client.get("/support/login").get_data(as_text=True)
    match = CSRF.search(page)
    assert match, "no CSRF token on /support/login"
    answer = client.post("/support/login", data={"csrf_token": match.group(1),
                                                 "username": STAFF_USER,
                                                 "password": STAFF_PASSWORD})
    assert answer.status_code == 303, answer.status_code


def _profile(client: Any, path: str, seen: list[Statement], reps: int) -> PageProfile:
    """`path` requested 3 times to warm up, then `reps` times: each statement's median time
    (the last request's statements when they were not the same each time)."""
    runs: list[list[Statement]] = []
    walls: list[float] = []
    for i in range(3 + reps):
        seen.clear()
        started = time.perf_counter()
        response = client.get(path)
        wall = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, (path, response.status_code)
        if i >= 3:
            runs.append(list(seen))
            walls.append(wall)
    if len({len(r) for r in runs}) != 1:  # not the same statements each time
        return PageProfile(runs[-1], walls[-1])
    return PageProfile(
        [Statement(runs[0][j].sql, runs[0][j].params,
                   statistics.median(r[j].ms for r in runs))
         for j in range(len(runs[0]))], statistics.median(walls))


def page_statements(env: dict[str, str], world: World, reps: int = 5
                    ) -> dict[str, PageProfile]:
    """Each page, requested in this process (the Flask app, no server) after a warm-up:
    every SQL statement it sent, in order, with its median time over `reps` requests."""
    import logging

    from config import load_config
    from listener.app import create_app

    app = create_app(load_config({**env, "PUBLIC_BASE_URL": "http://127.0.0.1:5000"}))
    logging.getLogger().setLevel(logging.WARNING)
    database = app.extensions["db"]
    seen: list[Statement] = []
    _record_statements(database.engine, seen)
    client = app.test_client()
    _signed_in(client)
    paths = {"metrics": "/metrics", "support": "/support",
             "mismatch": f"/mismatches/{world.mismatch_id}"}
    try:
        return {name: _profile(client, path, seen, reps) for name, path in paths.items()}
    finally:
        database.dispose()


def one_line(sql: str, width: int = 110) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= width else text[:width - 1] + "…"


# --------------------------------------------------------------------------- a size


@dataclass
class SizeResult:
    size: int
    fill: FillReport
    world: World | None = None
    http: dict[str, Timed] = field(default_factory=dict)
    old: dict[str, Timed] = field(default_factory=dict)
    new: dict[str, Timed] = field(default_factory=dict)
    pages: dict[str, PageProfile] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    timeline_shown: int = -1
    seconds: float = 0.0
    noise: Noise | None = None


SQL_NAMES = {"metrics": "metrics", "support": "dashboard", "mismatch": "timeline"}


def measure(args: argparse.Namespace, env: dict[str, str], pg_url: str,
            result: SizeResult) -> None:
    import psycopg

    started = time.monotonic()
    world = result.world = survey(pg_url)
    say(f"  measuring: mismatch #{world.mismatch_id} ({world.timeline} events name its "
        f"subscription or customer; open mismatches' timelines "
        f"{world.timelines.show(',.0f')} events, min / median / max)")
    result.http, result.problems, result.timeline_shown, result.noise = time_service(
        args, env, world, label(result.size))
    say(f"    requests done ({time.monotonic() - started:.0f} s); direct SQL:")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for kind, queries, into in (("old", old_queries(world), result.old),
                                    ("new", new_queries(world), result.new)):
            for name, statements in queries.items():
                into[name] = time_sql(conn, statements, args.runs, args.requests,
                                      args.sql_budget)
                say(f"      {kind} {SQL_NAMES[name]}: {into[name].spread.show('.1f')} ms "
                    f"({into[name].reps} per run)")
    result.pages = page_statements(env, world)
    result.seconds = time.monotonic() - started


def print_size(args: argparse.Namespace, result: SizeResult) -> None:
    world = result.world
    assert world is not None
    fill = result.fill
    say("\n" + "=" * 100)
    say(f"size {label(result.size)}: {world.rows:,} rows in stripe_events (table "
        f"{megabytes(world.table_bytes)}, indexes {megabytes(world.index_bytes)}); "
        f"{world.open_mismatches:,} open mismatches")
    if fill.filled:
        say(f"  fill: {fill.filled:,} rows added, " + ", ".join(
            f"{k} {v:.0f} s" for k, v in fill.seconds.items())
            + f"; {sum(fill.seconds.values()):.0f} s in all")
    else:
        say(f"  fill: reused ({fill.rows_before:,} rows were there)")
    say(f"  mismatch page: #{world.mismatch_id}, {world.timeline} events name its subscription "
        f"or customer; the page showed {result.timeline_shown}")
    say(f"  timing: {result.seconds:.0f} s. Requests: {args.runs} runs x {args.requests} "
        f"sequential on one keep-alive connection after {args.warmup} warm-up rounds; figure "
        f"= each run's median, shown min / median / max over the runs (ms)")
    floor = result.http["healthz"].spread.median
    say(f"\n  {'request':<34}{'ms':>26}{'x floor':>9}   target <{TARGET_MS:.0f} ms")
    for name in REQUESTS:
        spread = result.http[name].spread
        mark = "" if name == "healthz" else verdict(spread.median < TARGET_MS)
        times = f"{spread.median / floor:>8.1f}x" if name != "healthz" else f"{'':>9}"
        say(f"  {REQUEST_NAMES[name]:<34}{spread.show('.1f'):>26}{times}   {mark}")
    say(f"\n  {'direct SQL (psycopg), ms':<34}{'old (baseline, before 0006)':>32}"
        f"{'new (as the pages now)':>32}{'old/new':>9}")
    for name in ("metrics", "support", "mismatch"):
        old, new = result.old[name], result.new[name]
        say(f"  {SQL_NAMES[name] + ' queries':<34}"
            f"{old.spread.show('.1f') + f' ({old.reps}/run)':>32}"
            f"{new.spread.show('.2f') + f' ({new.reps}/run)':>32}"
            f"{old.spread.median / new.spread.median:>8.0f}x")
    say("\n  in process (Flask app, no server), median of 5 requests: the request, the SQL it "
        "sent, the rest (Python, template)")
    for name, page in result.pages.items():
        slowest = max(page.statements, key=lambda s: s.ms) if page.statements else None
        say(f"  {REQUEST_NAMES[name]:<34}{page.request_ms:7.1f} ms = {page.sql_ms:6.1f} ms SQL "
            f"({len(page.statements)} statements) + {page.request_ms - page.sql_ms:6.1f} ms rest"
            + (f"; slowest {slowest.ms:.1f} ms: {one_line(slowest.sql, 50)}" if slowest else ""))
    if result.noise is not None:
        say(f"\n  cores busy while timing the requests: {result.noise.show()}")
        if result.noise.disturbed:
            say("  WARNING: other processes used the CPUs while timing: figures are disturbed; "
                "rerun on an idle machine")
    if result.problems:
        say(f"  server log: {len(result.problems)} warning/error lines, first ones:")
        for line in result.problems[:5]:
            say(f"    {line[:160]}")


def print_summary(args: argparse.Namespace, results: list[SizeResult]) -> bool:
    measured = [r for r in results if r.world is not None]
    small, large = measured[0], measured[-1]
    growth = f"{label(large.size)}/{label(small.size)}"
    say("\n" + "=" * 100)
    say(f"summary: median ms (min / median / max of {args.runs} runs, each the median of "
        f"{args.requests} requests) at each size; {growth} run by run. The in-process rows: "
        f"one median of 5 requests, its SQL and the rest (Python, template)")
    rows: list[tuple[str, list[str], str, str]] = []
    all_ok = True
    for name in REQUESTS:
        cells = [r.http[name].spread.show(".1f") for r in measured]
        grew = ratio(large.http[name].runs, small.http[name].runs)
        verdicts = ""
        if name != "healthz":
            fast = all(r.http[name].spread.median < TARGET_MS for r in measured)
            flat = grew.median <= GROWTH_TARGET
            all_ok = all_ok and fast and flat
            verdicts = f"  {verdict(fast):<7} {verdict(flat)}"
        rows.append((REQUEST_NAMES[name], cells, grew.show(".2f"), verdicts))
    for kind in ("old", "new"):
        for name in ("metrics", "support", "mismatch"):
            cells = [getattr(r, kind)[name].spread.show(".1f") for r in measured]
            grew = ratio(getattr(large, kind)[name].runs, getattr(small, kind)[name].runs)
            title = f"{kind} {SQL_NAMES[name]} SQL" + (" (baseline)" if kind == "old" else "")
            rows.append((title, cells, grew.show(".2f"), ""))
    for name in ("metrics", "support", "mismatch"):
        for part in ("SQL", "rest"):
            values = [r.pages[name].sql_ms if part == "SQL"
                      else r.pages[name].request_ms - r.pages[name].sql_ms for r in measured]
            grew_one = values[-1] / values[0] if values[0] > 0 else float("nan")
            rows.append((f"{name} in process: {part}", [f"{v:.1f}" for v in values],
                         f"{grew_one:.2f}", ""))
    width = 2 + max(len(c) for _, cells, _, _ in rows for c in cells)
    growth_width = 2 + max(len(g) for _, _, g, _ in rows)
    head = "".join(f"{label(r.size):>{width}}" for r in measured)
    say(f"\n{'':<34}{head}{growth:>{growth_width}}  <{TARGET_MS:.0f} ms  ≤{GROWTH_TARGET:g}x")
    for title, cells, grew_text, verdicts in rows:
        say(f"{title:<34}" + "".join(f"{c:>{width}}" for c in cells)
            + f"{grew_text:>{growth_width}}{verdicts}")
    say("\nverdicts (every request under 200 ms at every size; at most 1.5x slower at the "
        "largest size than at the smallest):")
    for name in REQUESTS[1:]:
        worst = max(r.http[name].spread.median for r in measured)
        grew = ratio(large.http[name].runs, small.http[name].runs).median
        say(f"  {REQUEST_NAMES[name]:<34} slowest size {worst:7.1f} ms  "
            f"{verdict(worst < TARGET_MS)}   {growth} {grew:5.2f}x  "
            f"{verdict(grew <= GROWTH_TARGET)}")
    floor_grew = ratio(large.http["healthz"].runs, small.http["healthz"].runs).median
    say(f"  (the floor, GET /healthz, moved {floor_grew:.2f}x between those sizes)")
    for r in measured:
        if r.noise is not None and r.noise.disturbed:
            say(f"  WARNING: at {label(r.size)} other processes kept "
                f"{r.noise.cores['other']:.2f} cores busy while timing: {r.noise.show()}")
    skipped = [r for r in results if r.world is None]
    for r in skipped:
        say(f"  {label(r.size)} not measured: {r.fill.skipped}")
    return all_ok


def print_explain(args: argparse.Namespace, pg_url: str, result: SizeResult) -> None:
    import psycopg

    world = result.world
    assert world is not None
    say("\n" + "=" * 100)
    say(f"EXPLAIN (ANALYZE, BUFFERS) of the new queries at {label(result.size)} "
        f"({world.rows:,} rows)")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        done = set()
        for name, statements in new_queries(world).items():
            for sql, params in statements:
                if sql in done:
                    continue
                done.add(sql)
                say(f"\n-- {SQL_NAMES[name]}: {sql}" + (f"  -- {params}" if params else ""))
                say(explain(conn, sql, params))
        say(f"\nEXPLAIN (plans only) of the old queries at {label(result.size)}")
        for name, statements in old_queries(world).items():
            for sql, params in statements:
                say(f"\n-- old {SQL_NAMES[name]}: {sql}" + (f"  -- {params}" if params else ""))
                say(explain(conn, sql, params, analyze=False))
    say("\n" + "=" * 100)
    say(f"every statement each page sent at {label(result.size)} (in process, median of 5 "
        f"requests; over {args.slow_ms:g} ms: EXPLAIN ANALYZE with its parameters)")
    from sqlalchemy import create_engine

    engine = create_engine(sqlalchemy_url(args.database_url))
    try:
        with engine.connect() as conn:
            for name, page in result.pages.items():
                say(f"\n{REQUEST_NAMES[name]}: {page.request_ms:.1f} ms in all, "
                    f"{page.sql_ms:.1f} ms of it SQL")
                for s in page.statements:
                    say(f"  {s.ms:8.2f} ms  {one_line(s.sql)}")
                for s in page.statements:
                    if s.ms > args.slow_ms and isinstance(s.params, dict | tuple):
                        say(f"\n  slow ({s.ms:.1f} ms): {' '.join(s.sql.split())}")
                        say(f"  parameters: {s.params}")
                        plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {s.sql}",
                                                    s.params).fetchall()
                        say("\n".join("    " + row[0] for row in plan))
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"inbox sizes, ascending (default {DEFAULT_SIZES})")
    add_common_flags(parser, database_url=DEFAULT_DATABASE_URL,
                     database_note="created if missing, filled, kept",
                     redis_url=DEFAULT_REDIS_URL, runs=3)
    parser.add_argument("--keep", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the database at the end, so a rerun reuses the fills "
                             "(default); --no-keep drops it")
    parser.add_argument("--fresh", action="store_true",
                        help="drop the database first and fill from nothing")
    parser.add_argument("--requests", type=int, default=20, help="sequential requests per run")
    parser.add_argument("--warmup", type=int, default=5,
                        help="rounds of every request before timing")
    parser.add_argument("--sql-budget", type=float, default=20.0,
                        help="seconds a run of one direct-SQL figure may take (a slower "
                             "query runs fewer times per run)")
    parser.add_argument("--slow-ms", type=float, default=10.0,
                        help="EXPLAIN every page statement slower than this at the largest size")
    args = parser.parse_args(argv)
    try:
        args.size_list = sorted({int(s.replace("_", "")) for s in args.sizes.split(",")
                                 if s.strip()})
    except ValueError:
        parser.error("--sizes: comma-separated whole numbers")
    if not args.size_list or args.size_list[0] < 2000:
        parser.error("--sizes: at least 2000 events each")
    if "bench" not in urlsplit(args.database_url).path:
        parser.error("--database-url: the database's name must contain 'bench' (it is filled "
                     "with generated rows)")
    return args


def run(args: argparse.Namespace) -> int:
    pg_url = libpq_url(args.database_url)
    say(f"history benchmark: sizes {', '.join(label(s) for s in args.size_list)}; database "
        f"{args.database_url}; redis {args.redis_url} (flushed); {os.cpu_count()} CPUs")
    if args.fresh:
        say("  --fresh: dropping the database")
        drop_database(args.database_url, DROP_GUARD)
    try:
        sa_url = prepare_database(args.database_url, fresh=False)
    except Exception as exc:  # noqa: BLE001 - psycopg or alembic: say which server
        raise SystemExit(f"cannot prepare {args.database_url}: {exc}") from None
    flush_redis(args.redis_url)
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                    for name in ("server_version", "shared_buffers", "work_mem",
                                 "effective_cache_size", "jit")}
    say("  PostgreSQL " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    templates()  # checked with ids_named before anything is written
    instance = Path(tempfile.mkdtemp(prefix="bench-history-"))
    env = service_env(args, instance)
    results: list[SizeResult] = []
    try:
        for size in args.size_list:
            say(f"\n--- {label(size)} " + "-" * 80)
            fill_report = fill(pg_url, sa_url, size, args.size_list[-1])
            result = SizeResult(size, fill_report)
            results.append(result)
            if fill_report.skipped:
                say(f"  skipped: {fill_report.skipped}")
                continue
            measure(args, env, pg_url, result)
            print_size(args, result)
        measured = [r for r in results if r.world is not None]
        if not measured:
            say("nothing measured")
            return 2
        ok = print_summary(args, results) if len(measured) > 1 else True
        if len(measured) == 1:
            say("(one size measured: no growth ratio)")
        print_explain(args, pg_url, measured[-1])
        return 0 if ok else 1
    finally:
        shutil.rmtree(instance, ignore_errors=True)
        if not args.keep:
            say("--no-keep: dropping the database")
            drop_database(args.database_url, DROP_GUARD)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    received = interrupt_on()
    started = time.monotonic()
    with open(LOG_DIR / "history.log", "w") as log:
        sys.stdout = Tee(sys.__stdout__, log)  # type: ignore[assignment]
        try:
            code = run(args)
            say(f"\ndone in {(time.monotonic() - started) / 60:.1f} min; this report: "
                f"{LOG_DIR / 'history.log'}")
            return code
        except KeyboardInterrupt:
            say("\ninterrupted; server stopped (the fill so far is kept)")
            return 128 + (received[0] if received else signal.SIGINT)
        finally:
            stop_servers()
            sys.stdout = sys.__stdout__


if __name__ == "__main__":
    sys.exit(main())
