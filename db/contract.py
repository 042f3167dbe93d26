"""The JSON the booking product reads, as pydantic models: what GET /api/mismatches/<id>
answers, what every outbound message carries in `data`, and the pull feed. The API and the
outbound log both shape their JSON here, so the two cannot drift apart."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MessageType = Literal["mismatch.opened", "mismatch.updated", "mismatch.resolved",
                      "action.succeeded", "action.failed"]
MESSAGE_TYPES: tuple[str, ...] = MessageType.__args__  # type: ignore[attr-defined]


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChargeOut(Closed):
    """One paid invoice of the subscription, what was refunded of it, whether disputed."""

    invoice_id: str
    charge_id: str | None
    payment_intent_id: str | None
    amount: int = Field(description="minor units (cents)")
    currency: str
    paid_at: int = Field(description="Unix time, as Stripe gives it")
    amount_refunded: int
    disputed: bool


class ActionOut(Closed):
    """An action asked of Stripe about the mismatch (the audit record)."""

    id: int
    kind: str = Field(description="cancel_subscription | refund | create_customer")
    target: str
    amount: int | None
    currency: str | None
    status: str = Field(description="queued | succeeded | failed")
    actor: str
    requested_at: str | None
    finished_at: str | None
    stripe_request_id: str | None
    result: str | None
    error: str | None


class MismatchOut(Closed):
    """A subscription billed to a customer no member is linked to, and what became of it."""

    id: int
    revision: int = Field(description="grows with every message about this mismatch: a "
                                      "receiver drops a message older than one it has")
    case: int = Field(ge=1, le=3)
    status: Literal["open", "resolved"]
    resolution: str | None = Field(description="linked | canceled | manual")
    resolution_note: str | None
    account_id: str
    livemode: bool
    subscription_id: str
    customer_id: str
    customer_email: str | None
    linked_customer_id: str | None
    member_ref: str | None
    candidates: list[dict[str, object]]
    note: str | None
    opened_at: str | None
    resolved_at: str | None
    charges: list[ChargeOut]
    actions: list[ActionOut]


class MessageBody(Closed):
    """The body of every outbound message (Standard Webhooks): the mismatch as it is now."""

    type: MessageType
    timestamp: str = Field(description="ISO 8601, UTC")
    data: MismatchOut


class FeedItem(MessageBody):
    id: str = Field(description="the message's webhook-id")


class Feed(Closed):
    data: list[FeedItem]
    has_more: bool
    next_cursor: str | None = Field(description="pass as `after` for the next page")
