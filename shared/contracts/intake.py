"""What channels send to intake, and the events intake produces."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import Field, ValidationInfo, field_validator

from shared import subjects
from shared.contracts.common import (
    CURRENCIES,
    Address,
    Contract,
    CurrencyCode,
    Customer,
    FieldError,
    Money,
    OrderLine,
    Priority,
)
from shared.contracts.envelope import Event, register

MAX_LINES = 100
MAX_SUBMISSION_BYTES = 64 * 1024


class OrderSubmission(Contract):
    """An order as a channel submits it (canonical web JSON)."""

    channel: str = Field(pattern=r"^[a-z][a-z0-9_-]{1,31}$", description="Submitting channel")
    external_id: str = Field(
        pattern=r"^[A-Za-z0-9_:-]{1,64}$",
        description="The channel's own order reference; (channel, external_id) is unique",
    )
    customer: Customer
    lines: list[OrderLine] = Field(min_length=1, max_length=MAX_LINES)
    currency: CurrencyCode
    shipping_address: Address
    priority: Priority = "normal"
    total: Money | None = Field(None, description="If given, must equal the sum of the lines")
    note: str | None = Field(None, max_length=1000)

    # Field validators (not one model validator) so that every problem is reported at once,
    # each under its own field.
    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in CURRENCIES:
            raise ValueError(f"currency {value} is not one orderflow prices in")
        return value

    @field_validator("customer")
    @classmethod
    def _reachable(cls, value: Customer) -> Customer:
        if value.email is None and value.phone is None:
            raise ValueError("customer needs an e-mail address or a phone number")
        return value

    @field_validator("total")
    @classmethod
    def _total_matches(cls, value: Decimal | None, info: ValidationInfo) -> Decimal | None:
        lines = info.data.get("lines")
        if value is not None and lines is not None:
            expected = _sum_lines(lines)
            if value != expected:
                raise ValueError(f"total {value} does not equal the lines' sum {expected}")
        return value

    def lines_total(self) -> Decimal:
        return _sum_lines(self.lines)


def _sum_lines(lines: list[OrderLine]) -> Decimal:
    return sum((line.unit_price * line.quantity for line in lines), Decimal("0.00"))


class _OrderEvent(Event):
    producer = subjects.INTAKE
    order_id: str = Field(description="orderflow's order id (UUIDv7)")

    def key(self) -> str:
        return self.order_id


@register
class OrderAccepted(_OrderEvent):
    event_type = "order_accepted"
    channel: str
    external_id: str
    customer: Customer
    lines: list[OrderLine]
    currency: CurrencyCode
    total: Money
    shipping_address: Address
    priority: Priority
    submitted_at: datetime = Field(description="When intake received the submission")
    # Added in v1 as optional fields (a non-breaking change): why the order got its priority,
    # who owns it, and whether it looks like an order already taken on another channel.
    requested_priority: Priority | None = Field(
        None, description="The urgency the channel asked for (priority is what the rules decided)"
    )
    priority_rule: str | None = Field(
        None, description="Name of the routing rule that decided priority and owner"
    )
    owner: str | None = Field(
        None, description="Who handles the order: an account manager or a service-desk queue"
    )
    customer_tier: str | None = Field(None, description="The customer's tier, if known")
    suspected_duplicate_of: list[str] | None = Field(
        None,
        description="Orders with the same customer and lines taken within the suspect window: "
        "accepted all the same, flagged for a person to review",
    )


@register
class OrderRejected(_OrderEvent):
    event_type = "order_rejected"
    channel: str
    external_id: str | None = Field(None, description="As submitted, when it could be read")
    errors: list[FieldError] = Field(description="Every problem found, each with its field")
    submitted_at: datetime
    # Added in v1 (optional): how a channel matches this answer to a submission it could not
    # put an external id in, e.g. bytes that are not JSON.
    submission: str | None = Field(
        None,
        description="'<stream>:<sequence>' of a JetStream submission: the sequence its PubAck "
        "gave the channel",
    )


@register
class OrderDuplicate(_OrderEvent):
    """A repeated (channel, external_id); order_id is the original order's."""

    event_type = "order_duplicate"
    channel: str
    external_id: str
    submitted_at: datetime


@register
class OrderCancelRequested(_OrderEvent):
    """Someone asked to cancel an order. Fulfillment decides (it alone knows whether the parcel
    has left): it answers with OrderCancelled or CancellationRefused."""

    event_type = "order_cancel_requested"
    reason: str = Field(max_length=500, description="Why, as the requester gave it")
    actor: str = Field(description="Who asked")


class SubmissionAnswer(Contract):
    """The one answer every submission gets."""

    outcome: str = Field(description="accepted | rejected | duplicate")
    order_id: str
    errors: list[FieldError] = Field(default_factory=list)
    # Set on an acceptance only (optional, added in v1).
    priority: Priority | None = Field(None, description="The priority the rules decided")
    priority_rule: str | None = Field(None, description="The routing rule that fired")
    owner: str | None = Field(None, description="Who handles the order")
    suspected_duplicate_of: list[str] | None = Field(
        None, description="Flagged for review: orders that look like this one"
    )
