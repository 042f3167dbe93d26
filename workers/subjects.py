"""What an event is about, read once from its payload: the customer or the subscription its
handler acts on. A batch loads rows for exactly these, and the handler gets the same object,
so what is loaded and what is read cannot drift apart."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# (account, livemode, customer id): how the mirror and Stripe's answers are keyed.
CustomerKey = tuple[str, bool, str]


# Every Stripe ID is printable ASCII without spaces, and the mirror's columns hold 64.
_STRIPE_ID = re.compile(r"[!-~]{1,64}")


def object_id(value: Any) -> str | None:
    """Stripe fields hold an ID or, when expanded, the object with its ID; anything that is
    not a Stripe ID (CR/LF, spaces, too long) is no ID at all."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and _STRIPE_ID.fullmatch(value) else None


def text(value: Any, limit: int) -> str | None:
    """A free-text field (email, name, status) as the mirror can hold it, or None: not a
    string, empty, longer than its column, or holding a NUL, another control character or a
    lone surrogate (what no database column takes or no mail header should carry)."""
    if not isinstance(value, str) or not value or len(value) > limit:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in value):
        return None
    return value


@dataclass(frozen=True)
class CustomerSeen:
    """A customer snapshot: from a `customer.*` event, or embedded (expanded) in another."""

    account_id: str | None
    livemode: bool
    customer_id: str
    email: str | None
    name: str | None
    deleted: bool
    created: int  # when Stripe made the snapshot: the event's `created`

    @classmethod
    def from_object(cls, obj: dict[str, Any], account_id: str | None, livemode: bool,
                    created: int, *, deleted: bool = False) -> CustomerSeen | None:
        customer_id = object_id(obj)
        if customer_id is None:
            return None
        return cls(account_id, livemode, customer_id, text(obj.get("email"), 320),
                   text(obj.get("name"), 200), deleted or obj.get("deleted") is True, created)


@dataclass(frozen=True)
class SubscriptionSeen:
    """A subscription as one event shows it."""

    account_id: str | None
    livemode: bool
    subscription_id: str
    customer_id: str
    status: str | None  # Stripe's status; None when the event does not say (checkout)
    canceled: bool
    created: int
    checkout_email: str | None = None  # a checkout session's customer_details.email
    checkout_name: str | None = None
    customer: CustomerSeen | None = None  # the customer, when the event embeds it

    @property
    def customer_key(self) -> CustomerKey:
        return (self.account_id or "", self.livemode, self.customer_id)


Subject = CustomerSeen | SubscriptionSeen
