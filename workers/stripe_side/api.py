"""The Stripe API as the workers use it: reads by ID or by list, as the connected account,
under ONE rate limit that every process shares, with stripe-python's own retries.

API calls are the scarce resource (25/s in test mode, 100/s live), so callers try the local
mirror first. No caller holds a database transaction open across a call here: a call can
wait for the limit, for Stripe, and for stripe-python's retry back-off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
import stripe
from limits import RateLimitItemPerSecond
from limits.strategies import MovingWindowRateLimiter

from config import Config
from workers.queue import get_redis, limits_storage

log = logging.getLogger(__name__)

# Stripe's documented global limits per account, requests per second.
LIVE_RATE_LIMIT, TEST_RATE_LIMIT = 100, 25


class StripeUnavailable(Exception):
    """Stripe could not answer now (no key, rate limited, outage): try again later."""


@dataclass
class CustomerRecord:
    customer_id: str
    email: str | None
    name: str | None
    deleted: bool
    found: bool = True
    livemode: bool | None = None
    # Stripe's words when it does not show us the customer, e.g. "No such customer: 'cus_…';
    # a similar object exists in live mode, but a test mode key was used to make this request."
    not_found_message: str | None = None


def is_live_key(key: str | None) -> bool:
    return bool(key) and "_live_" in (key or "")


class SharedRateLimit:
    """Stripe's per-second budget, counted in Redis (a moving window from `limits`), so every
    worker, the CLI and any other process using our key draw from the same budget."""

    def __init__(self, config: Config, connection: redis.Redis) -> None:
        live = is_live_key(config.stripe_secret_key)
        per_second = config.stripe_rate_limit or (LIVE_RATE_LIMIT if live else TEST_RATE_LIMIT)
        self.item = RateLimitItemPerSecond(per_second)
        self.key = "live" if live else "test"
        self.limiter = MovingWindowRateLimiter(limits_storage(connection, "stripe-rate"))

    def acquire(self) -> float:
        """Take one request's place in the window, waiting until there is one; returns the
        seconds waited."""
        waited = 0.0
        while not self.limiter.hit(self.item, self.key):
            reset = self.limiter.get_window_stats(self.item, self.key).reset_time
            pause = min(1.0, max(0.005, reset - time.time()))
            time.sleep(pause)
            waited += pause
        return waited


class LimitedHttpClient(stripe.RequestsClient):
    """stripe-python's requests client, taking a place in the shared limit before every
    HTTP request it sends, its own retries included (each retry costs Stripe a request)."""

    def __init__(self, limit: SharedRateLimit, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self.limit = limit

    # Ignored [override]: stripe-python's signature adds a private `_usage` keyword it never
    # passes to request() (only to request_with_retries); this takes what it passes.
    def request(  # type: ignore[override]
            self, method: str, url: str, headers: Any, post_data: Any = None) -> Any:
        self.limit.acquire()
        StripeApi.calls += 1
        return super().request(method, url, headers, post_data)


class StripeApi:
    calls = 0  # HTTP requests this process sent to Stripe, for benchmarks and summaries

    def __init__(self, config: Config) -> None:
        self.config = config
        self._client: stripe.StripeClient | None = None
        self.list_calls = 0  # list requests made by this instance (one per page)

    @property
    def enabled(self) -> bool:
        return bool(self.config.stripe_secret_key)

    @property
    def client(self) -> stripe.StripeClient:
        if self._client is None:
            if not self.config.stripe_secret_key:
                raise StripeUnavailable("STRIPE_SECRET_KEY is not set")
            http = LimitedHttpClient(SharedRateLimit(self.config, get_redis(self.config)),
                                     timeout=self.config.stripe_timeout)
            self._client = stripe.StripeClient(
                self.config.stripe_secret_key,
                base_addresses={"api": self.config.stripe_api_base},
                # Connection errors, 409, 5xx and whatever Stripe marks Stripe-Should-Retry.
                # A plain 429 is not retried by stripe-python: it becomes StripeUnavailable
                # and the job retries later, with RQ's back-off.
                max_network_retries=self.config.stripe_max_retries,
                http_client=http,
            )
        return self._client

    def options(self, account_id: str | None) -> dict[str, Any]:
        """Act as the connected account unless it is the platform's own."""
        if account_id and account_id != self.config.stripe_platform_account:
            return {"stripe_account": account_id}
        return {}

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API request; what Stripe cannot answer now becomes StripeUnavailable (with the
        error's type, never its message: messages can carry customer data)."""
        try:
            return fn(*args, **kwargs)
        except (stripe.RateLimitError, stripe.APIConnectionError,
                stripe.AuthenticationError) as exc:
            error: Exception = exc
        except stripe.StripeError as exc:
            if (exc.http_status or 500) < 500:
                raise
            error = exc
        except redis.RedisError as exc:  # the shared limit lives in Redis
            error = exc
        log.warning("stripe %s failed (%s)", what, type(error).__name__)
        raise StripeUnavailable(f"Stripe {what} failed: {type(error).__name__}") from error

    def list_pages(self, what: str, method: Callable[..., Any], account_id: str | None,
                   params: dict[str, Any] | None = None) -> Iterator[list[dict[str, Any]]]:
        """Each page (100 items) of a list endpoint, one request per page (`starting_after`)."""
        starting_after: str | None = None
        while True:
            page_params = {**(params or {}), "limit": 100}
            if starting_after:
                page_params["starting_after"] = starting_after
            page = self.call(what, method, params=page_params, options=self.options(account_id))
            self.list_calls += 1
            items = [item.to_dict() for item in page.data]
            yield items
            if not page.has_more or not items:
                return
            starting_after = items[-1]["id"]

    def list_all(self, what: str, method: Callable[..., Any], account_id: str | None,
                 params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        for page in self.list_pages(what, method, account_id, params):
            yield from page

    def retrieve_customer(self, account_id: str | None, customer_id: str) -> CustomerRecord:
        """The customer as `account_id` sees it. Not found (404) and not visible to our key
        (403) come back as a record with found=False and Stripe's message."""
        try:
            customer = self.call(
                f"customers.retrieve {customer_id}",
                self.client.v1.customers.retrieve,
                customer_id,
                options=self.options(account_id),
            )
        except (stripe.InvalidRequestError, stripe.PermissionError) as exc:
            if exc.http_status in (403, 404):
                return CustomerRecord(customer_id, None, None, deleted=False, found=False,
                                      not_found_message=exc.user_message or str(exc))
            raise
        data = customer.to_dict()
        return CustomerRecord(
            customer_id=customer_id,
            email=data.get("email"),
            name=data.get("name"),
            deleted=bool(data.get("deleted")),
            livemode=data.get("livemode"),
        )

    def create_customer(self, account_id: str | None, email: str, name: str | None,
                        metadata: dict[str, str], idempotency_key: str) -> str:
        """Create a customer; the idempotency key makes a retried request create one only."""
        params: dict[str, Any] = {"email": email, "metadata": metadata}
        if name:
            params["name"] = name
        options = {**self.options(account_id), "idempotency_key": idempotency_key}
        customer = self.call("customers.create", self.client.v1.customers.create,
                             params=params, options=options)
        return customer.id

    # --- the platform's own set-up (workers/stripe_side/setup.py, workers/stripe_side/doctor.py) --

    def own_account(self) -> str:
        """The account the key belongs to."""
        return self.call("account.retrieve", self.client.v1.accounts.retrieve_current).id

    def connected_accounts(self) -> set[str]:
        """Every account connected to the platform (100 per request)."""
        return {item["id"] for item in self.list_all(
            "accounts.list", self.client.v1.accounts.list, None)}

    def webhook_endpoints(self) -> list[dict[str, Any]]:
        return list(self.list_all("webhook_endpoints.list",
                                  self.client.v1.webhook_endpoints.list, None))

    def create_webhook_endpoint(self, params: dict[str, Any], idempotency_key: str
                                ) -> dict[str, Any]:
        """The new endpoint, with its signing secret (Stripe shows it in this answer only)."""
        return self.call("webhook_endpoints.create", self.client.v1.webhook_endpoints.create,
                         params=params, options={"idempotency_key": idempotency_key}).to_dict()

    def update_webhook_endpoint(self, endpoint_id: str, params: dict[str, Any],
                                idempotency_key: str) -> dict[str, Any]:
        return self.call(f"webhook_endpoints.update {endpoint_id}",
                         self.client.v1.webhook_endpoints.update, endpoint_id,
                         params=params, options={"idempotency_key": idempotency_key}).to_dict()

    def delete_webhook_endpoint(self, endpoint_id: str, idempotency_key: str) -> None:
        self.call(f"webhook_endpoints.delete {endpoint_id}",
                  self.client.v1.webhook_endpoints.delete, endpoint_id,
                  options={"idempotency_key": idempotency_key})

    # --- thin events (workers/stripe_side/thin.py) ------------------------------------------------

    def thin_event(self, context: str | None, event_id: str) -> dict[str, Any]:
        """A v2 event as Stripe keeps it (its `snapshot_event` names the v1 event)."""
        return self.call(f"v2.core.events.retrieve {event_id}",
                         self.client.v2.core.events.retrieve, event_id,
                         options={"stripe_context": context} if context else {}).to_dict()

    def event(self, account_id: str | None, event_id: str) -> dict[str, Any]:
        """A v1 (snapshot) event, as the account it happened in sees it."""
        return self.call(f"events.retrieve {event_id}", self.client.v1.events.retrieve,
                         event_id, options=self.options(account_id)).to_dict()

    # --- writes (workers/stripe_side/actions.py: confirmed by a person, audited, idempotent) ------

    def _write_options(self, account_id: str | None, idempotency_key: str) -> dict[str, Any]:
        return {**self.options(account_id), "idempotency_key": idempotency_key}

    def cancel_subscription(self, account_id: str | None, subscription_id: str,
                            idempotency_key: str) -> str | None:
        """Cancel now, without proration or a final invoice; Stripe's request id."""
        done = self.call(f"subscriptions.cancel {subscription_id}",
                         self.client.v1.subscriptions.cancel, subscription_id,
                         params={"prorate": False, "invoice_now": False},
                         options=self._write_options(account_id, idempotency_key))
        return _request_id(done)

    def refund(self, account_id: str | None, charge_id: str | None,
               payment_intent_id: str | None, amount: int | None,
               idempotency_key: str) -> str | None:
        """Refund `amount` (all when None) of one payment; Stripe's request id."""
        params: dict[str, Any] = ({"charge": charge_id} if charge_id
                                  else {"payment_intent": payment_intent_id})
        if amount:
            params["amount"] = amount
        done = self.call("refunds.create", self.client.v1.refunds.create, params=params,
                         options=self._write_options(account_id, idempotency_key))
        return _request_id(done)

    def invoice_payment_intent(self, account_id: str | None, invoice_id: str) -> str | None:
        """The payment intent that paid an invoice (since 2025-03-31 an invoice names its
        payments only on request)."""
        for item in self.list_all(f"invoice_payments.list {invoice_id}",
                                  self.client.v1.invoice_payments.list, account_id,
                                  {"invoice": invoice_id}):
            payment = item.get("payment") or {}
            if item.get("status") == "paid" and payment.get("payment_intent"):
                return payment["payment_intent"]
        return None


def _request_id(obj: Any) -> str | None:
    response = getattr(obj, "last_response", None)
    return getattr(response, "request_id", None) if response is not None else None
