"""Events fulfillment produces: a shipment's way from the queue to the customer."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from shared import subjects
from shared.contracts.common import Priority, StockLine
from shared.contracts.envelope import Event, register


class _ShipmentEvent(Event):
    producer = subjects.FULFILLMENT
    order_id: str
    shipment_id: str
    warehouse: str
    actor: str = Field(description="Who acted: an operator, the simulator, or the system")
    submitted_at: datetime

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
