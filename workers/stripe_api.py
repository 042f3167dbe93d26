"""The few Stripe API reads the workers make: by ID, as the connected account, with backoff.

API calls are the scarce resource (25/s in test mode), so callers try the local mirror
first; `calls` counts what was spent so benchmarks and commands can report it.
"""

from __future__ import annotations

import logging
import time
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


class StripeApi:
    calls = 0  # process-wide count of HTTP requests made, for benchmarks and summaries

    def __init__(self, config: Config, *, attempts: int = 4) -> None:
        self.config = config
        self.attempts = attempts
        self.base_delay = config.stripe_backoff_seconds
        self._client: stripe.StripeClient | None = None

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
                return CustomerRecord(customer_id, None, None, deleted=False, found=False)
            raise
        data = customer.to_dict() if hasattr(customer, "to_dict") else dict(customer)
        return CustomerRecord(
            customer_id=customer_id,
            email=data.get("email"),
            name=data.get("name"),
            deleted=bool(data.get("deleted")),
        )
