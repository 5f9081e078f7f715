"""Events fulfillment produces (a shipment's way from the queue to the customer), and the
operator commands it accepts."""

from __future__ import annotations

from datetime import datetime

from pydantic import ConfigDict, Field

from shared import subjects
from shared.contracts.common import Contract, CurrencyCode, Money, Priority, Sku, StockLine
from shared.contracts.envelope import Event, register

# Order ids end event subjects, so they must stay one subject token.
ORDER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class _ShipmentEvent(Event):
    producer = subjects.FULFILLMENT
    order_id: str
    shipment_id: str
    warehouse: str
    actor: str = Field(description="Who acted: an operator, the simulator, or the system")
    submitted_at: datetime
    channel: str | None = Field(
        None, description="The order's channel (for per-channel stage latency downstream)"
    )
    priority: Priority | None = Field(None, description="The order's priority")

    def key(self) -> str:
        return self.order_id


@register
class ShipmentQueued(_ShipmentEvent):
    event_type = "shipment_queued"
    priority: Priority
    sla_deadline: datetime
    lines: list[StockLine]


@register
class ShipmentPicked(_ShipmentEvent):
    event_type = "shipment_picked"


@register
class ShipmentPacked(_ShipmentEvent):
    event_type = "shipment_packed"


@register
class ShipmentShipped(_ShipmentEvent):
    event_type = "shipment_shipped"
    carrier: str
    tracking_number: str
    lines: list[StockLine] = Field(description="What left the warehouse (inventory deducts it)")


@register
class ShipmentDelivered(_ShipmentEvent):
    event_type = "shipment_delivered"


@register
class ShipmentDeliveryFailed(_ShipmentEvent):
    """The ship-delay exception: the carrier could not deliver. The shipment stays out and may
    be delivered on a later attempt (``deliver`` is allowed again)."""

    event_type = "shipment_delivery_failed"
    carrier: str | None = Field(None, description="Who carries the parcel")
    tracking_number: str | None = Field(None, description="The carrier's number")
    reason: str = Field(description="What the carrier reported, for a person to read")
    attempt: int = Field(ge=1, description="How many deliveries of this shipment failed so far")


class _SlaEvent(_ShipmentEvent):
    status: str = Field(description="Where the shipment is stuck: queued, picked or packed")
    sla_deadline: datetime = Field(description="When it should have shipped")
    escalation_deadline: datetime = Field(description="When it is escalated if still not shipped")


@register
class ShipmentOverdue(_SlaEvent):
    """The shipment missed its SLA deadline (queued to shipped) and is still in the warehouse.
    Sent once per shipment."""

    event_type = "shipment_overdue"


@register
class ShipmentEscalated(_SlaEvent):
    """The shipment missed the second, escalation threshold and still has not shipped: someone
    senior should look. Sent once per shipment, after its ShipmentOverdue."""

    event_type = "shipment_escalated"


class ShipmentCommand(Contract):
    """An operator's pick, pack or deliver: every shipment of the order that is ready for it,
    or only the one named."""

    # A misspelt field (say "tracking") must be an error, not silently ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str = Field(pattern=ORDER_ID_PATTERN, description="The order to act on")
    shipment_id: str | None = Field(
        None, max_length=64, description="Act on this shipment only (default: all ready ones)"
    )
    actor: str = Field("cli", min_length=1, max_length=64, description="Who does it")
    carrier: str | None = Field(None, min_length=1, max_length=64, description="For ship")
    tracking_number: str | None = Field(None, min_length=1, max_length=64, description="For ship")


class ShipCommand(ShipmentCommand):
    """Shipping needs to say who carries the parcel and under which tracking number."""

    carrier: str = Field(min_length=1, max_length=64, description="e.g. SF-EXPRESS")
    tracking_number: str = Field(min_length=1, max_length=64, description="The carrier's number")


class DeliveryFailedCommand(ShipmentCommand):
    """The carrier reports that a delivery failed (nobody home, address not found...)."""

    reason: str = Field(
        "the carrier reported the delivery failed",
        min_length=1,
        max_length=500,
        description="What the carrier reported",
    )


class _OrderDecision(Event):
    producer = subjects.FULFILLMENT
    order_id: str
    reason: str
    actor: str

    def key(self) -> str:
        return self.order_id


@register
class OrderCancelled(_OrderDecision):
    """The order is cancelled for good: nothing of it has shipped or will ship. Inventory
    releases what it holds for it; notify tells the customer; intake's view shows it."""

    event_type = "order_cancelled"


@register
class CancellationRefused(_OrderDecision):
    """Too late to cancel (it has shipped): the reason says so."""

    event_type = "cancellation_refused"


@register
class ReturnRequested(Event):
    """The customer wants to send back (some of) a delivered shipment; nothing moves in stock
    until the goods arrive (ReturnReceived)."""

    event_type = "return_requested"
    producer = subjects.FULFILLMENT
    order_id: str
    return_id: str
    shipment_id: str
    lines: list[StockLine] = Field(description="What is coming back, from which warehouse")
    reason: str
    actor: str

    def key(self) -> str:
        return self.order_id


@register
class ReturnReceived(Event):
    """Returned goods arrived back at a warehouse: inventory puts them back in stock."""

    event_type = "return_received"
    producer = subjects.FULFILLMENT
    order_id: str
    shipment_id: str
    lines: list[StockLine]
    actor: str
    return_id: str | None = Field(None, description="The return this receipt closes")

    def key(self) -> str:
        return self.order_id


@register
class RefundDue(Event):
    """Finance owes the customer this amount for a return."""

    event_type = "refund_due"
    producer = subjects.FULFILLMENT
    order_id: str
    amount: Money
    currency: CurrencyCode
    reason: str
    return_id: str | None = Field(None, description="The return the refund is for")

    def key(self) -> str:
        return self.order_id


# The payload model of each operator command, by command name.
SHIPMENT_COMMANDS: dict[str, type[ShipmentCommand]] = {
    "pick": ShipmentCommand,
    "pack": ShipmentCommand,
    "ship": ShipCommand,
    "deliver": ShipmentCommand,
    "delivery-failed": DeliveryFailedCommand,
}


class ReturnLine(Contract):
    sku: Sku
    quantity: int = Field(ge=1, le=1000, description="Units coming back")


class ReturnRequest(Contract):
    """Command: the customer sends goods back. Without lines, everything delivered and not yet
    returned comes back."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str = Field(pattern=ORDER_ID_PATTERN)
    lines: list[ReturnLine] | None = Field(None, min_length=1, max_length=100)
    reason: str = Field("customer return", min_length=1, max_length=500)
    actor: str = Field("cli", min_length=1, max_length=64, description="Who records it")


class ReturnReceipt(Contract):
    """Command: returned goods arrived at the warehouse (all of the order's open returns, or
    only the one named)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str = Field(pattern=ORDER_ID_PATTERN)
    return_id: str | None = Field(None, max_length=64)
    actor: str = Field("cli", min_length=1, max_length=64, description="Who received them")


class QueueQuery(Contract):
    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int = Field(100, ge=1, le=1000, description="Most shipments to list")
    warehouse: str | None = Field(None, max_length=32, description="Only this warehouse's work")


class ShipmentsQuery(Contract):
    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str = Field(pattern=ORDER_ID_PATTERN)
