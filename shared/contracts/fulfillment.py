"""Events fulfillment produces (a shipment's way from the queue to the customer), and the
operator commands it accepts."""

from __future__ import annotations

from datetime import datetime

from pydantic import ConfigDict, Field

from shared import subjects
from shared.contracts.common import Contract, CurrencyCode, Money, Priority, StockLine
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
class ReturnReceived(Event):
    """Returned goods arrived back at a warehouse: inventory puts them back in stock."""

    event_type = "return_received"
    producer = subjects.FULFILLMENT
    order_id: str
    shipment_id: str
    lines: list[StockLine]
    actor: str

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

    def key(self) -> str:
        return self.order_id


# The payload model of each operator command, by command name.
SHIPMENT_COMMANDS: dict[str, type[ShipmentCommand]] = {
    "pick": ShipmentCommand,
    "pack": ShipmentCommand,
    "ship": ShipCommand,
    "deliver": ShipmentCommand,
}


class QueueQuery(Contract):
    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int = Field(100, ge=1, le=1000, description="Most shipments to list")


class ShipmentsQuery(Contract):
    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str = Field(pattern=ORDER_ID_PATTERN)
