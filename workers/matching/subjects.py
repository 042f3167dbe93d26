"""What an event is about, read once from its payload: the customer or the subscription its
handler acts on. A batch loads rows for exactly these, and the handler gets the same object,
so what is loaded and what is read cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from db import object_id

# (account, livemode, customer id): how the mirror and Stripe's answers are keyed.
CustomerKey = tuple[str, bool, str]


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




@dataclass(frozen=True)
class PaymentSeen:
    """A payment an event shows (rule 7): an invoice paid, a charge refunded or disputed. Which
    fields are known depends on the event: an invoice names its subscription and, in older
    API versions, its charge and payment intent; a charge or dispute names those only."""

    account_id: str | None
    livemode: bool
    kind: str  # paid | refunded | disputed
    subscription_id: str | None = None
    invoice_id: str | None = None
    charge_id: str | None = None
    payment_intent_id: str | None = None
    amount: int = 0
    currency: str = ""
    at: int = 0
    amount_refunded: int = 0

    @classmethod
    def from_invoice(cls, invoice: dict[str, Any], account_id: str | None, livemode: bool,
                     created: int) -> PaymentSeen | None:
        """An `invoice.paid`, in the shape of any API version: since 2025-03-31 the invoice
        names its subscription under `parent.subscription_details` and its payments under
        `payments` (when included); before, `subscription`, `charge` and `payment_intent`."""
        parent = invoice.get("parent")
        details = parent.get("subscription_details") if isinstance(parent, dict) else None
        subscription = object_id(details.get("subscription")) if isinstance(details, dict) \
            else None
        subscription = subscription or object_id(invoice.get("subscription"))
        invoice_id = object_id(invoice.get("id"))
        if not subscription or not invoice_id:
            return None
        charge, intent = object_id(invoice.get("charge")), object_id(invoice.get("payment_intent"))
        payments = invoice.get("payments")
        for item in (payments.get("data") or []) if isinstance(payments, dict) else []:
            payment = item.get("payment") if isinstance(item, dict) else None
            if isinstance(payment, dict):
                charge = charge or object_id(payment.get("charge"))
                intent = intent or object_id(payment.get("payment_intent"))
        amount = invoice.get("amount_paid")
        transitions = invoice.get("status_transitions")
        paid_at = transitions.get("paid_at") if isinstance(transitions, dict) else None
        return cls(account_id, livemode, "paid", subscription, invoice_id, charge, intent,
                   amount if type(amount) is int and 0 <= amount < 2**62 else 0,
                   text(invoice.get("currency"), 8) or "",
                   paid_at if type(paid_at) is int and 0 < paid_at < 2**62 else created)

    @classmethod
    def from_charge(cls, obj: dict[str, Any], account_id: str | None, livemode: bool,
                    kind: str) -> PaymentSeen | None:
        """A `charge.refunded` (the charge) or `charge.dispute.created` (the dispute)."""
        charge = object_id(obj.get("id")) if kind == "refunded" else object_id(obj.get("charge"))
        intent = object_id(obj.get("payment_intent"))
        if not charge and not intent:
            return None
        refunded = obj.get("amount_refunded") if kind == "refunded" else 0
        return cls(account_id, livemode, kind, charge_id=charge, payment_intent_id=intent,
                   invoice_id=object_id(obj.get("invoice")),
                   amount_refunded=refunded if type(refunded) is int and refunded >= 0 else 0)


Subject = CustomerSeen | SubscriptionSeen | PaymentSeen
