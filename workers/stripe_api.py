"""The few Stripe API reads the workers make: by ID, as the connected account, with backoff.

API calls are the scarce resource (25/s in test mode), so callers try the local mirror
first; `calls` counts what was spent so benchmarks and commands can report it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import stripe

from config import Config

log = logging.getLogger(__name__)


class StripeUnavailable(Exception):
    """Stripe could not answer now (no key, rate limit, outage): try again later."""


@dataclass
class CustomerRecord:
    customer_id: str
    email: str | None
    name: str | None
    deleted: bool
    found: bool = True
    livemode: bool | None = None
    # Stripe's words when not found, e.g. "a similar object exists in live mode".
    not_found_message: str | None = None


class StripeApi:
    calls = 0  # process-wide count of HTTP requests made, for benchmarks and summaries

    def __init__(self, config: Config, *, attempts: int = 4) -> None:
        self.config = config
        self.attempts = attempts
        self.base_delay = config.stripe_backoff_seconds
        self._client: stripe.StripeClient | None = None
        self.list_calls = 0  # list requests made by this instance (one per page)
        key = config.stripe_secret_key or ""
        # Stripe's documented limits: 100 requests/s in live mode, 25/s in test mode.
        self.min_interval = 1 / (100 if "_live_" in key else 25)
        self._last_call = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.config.stripe_secret_key)

    @property
    def client(self) -> stripe.StripeClient:
        if self._client is None:
            if not self.config.stripe_secret_key:
                raise StripeUnavailable("STRIPE_SECRET_KEY is not set")
            self._client = stripe.StripeClient(
                self.config.stripe_secret_key,
                base_addresses={"api": self.config.stripe_api_base},
                max_network_retries=0,  # we back off ourselves, and count each try
            )
        return self._client

    def options(self, account_id: str | None) -> dict[str, Any]:
        """Act as the connected account unless it is the platform's own."""
        if account_id and account_id != self.config.stripe_platform_account:
            return {"stripe_account": account_id}
        return {}

    def call(self, what: str, fn, *args: Any, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
        """Run one API request, backing off exponentially on 429, 5xx and network errors."""
        delay = self.base_delay
        for attempt in range(1, self.attempts + 1):
            wait = self._last_call + self.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_call = time.monotonic()
            StripeApi.calls += 1
            try:
                return fn(*args, **kwargs)
            except (stripe.RateLimitError, stripe.APIConnectionError) as exc:
                error: Exception = exc
            except stripe.APIError as exc:
                if (exc.http_status or 500) < 500:
                    raise
                error = exc
            except stripe.StripeError as exc:
                if exc.http_status in (429,) or (exc.http_status or 0) >= 500:
                    error = exc
                else:
                    raise
            log.warning("stripe %s failed (%s), attempt %d/%d", what, type(error).__name__,
                        attempt, self.attempts)
            if attempt < self.attempts:
                time.sleep(delay)
                delay *= 2
        raise StripeUnavailable(f"Stripe {what} failed after {self.attempts} attempts: "
                                f"{type(error).__name__}")

    def list_pages(self, what: str, method, account_id: str | None,  # type: ignore[no-untyped-def]
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

    def list_all(self, what: str, method, account_id: str | None,  # type: ignore[no-untyped-def]
                 params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        for page in self.list_pages(what, method, account_id, params):
            yield from page

    def retrieve_customer(self, account_id: str | None, customer_id: str) -> CustomerRecord:
        try:
            customer = self.call(
                f"customers.retrieve {customer_id}",
                self.client.v1.customers.retrieve,
                customer_id,
                options=self.options(account_id),
            )
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return CustomerRecord(customer_id, None, None, deleted=False, found=False,
                                      not_found_message=exc.user_message or str(exc))
            raise
        data = customer.to_dict() if hasattr(customer, "to_dict") else dict(customer)
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
