"""Events inventory produces."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from shared import subjects
from shared.contracts.common import Address, Contract, Priority, Sku, StockLine
from shared.contracts.envelope import Event, register


class _InventoryOrderEvent(Event):
    producer = subjects.INVENTORY
    order_id: str

    def key(self) -> str:
        return self.order_id


@register
class StockReserved(_InventoryOrderEvent):
    """Every line of the order is held for it. Carries what fulfillment needs to ship it."""

    event_type = "stock_reserved"
    allocations: list[StockLine] = Field(description="What is held, where")
    priority: Priority
    channel: str
    ship_to: Address
    submitted_at: datetime


class Shortage(Contract):
    sku: Sku
    requested: int
    available: int


@register
class StockBackordered(_InventoryOrderEvent):
    """Not enough stock: the order waits for a restock until its deadline."""

    event_type = "stock_backordered"
    shortages: list[Shortage]
    deadline: datetime
    submitted_at: datetime


@register
class StockRestocked(Event):
    event_type = "stock_restocked"
    producer = subjects.INVENTORY
    sku: Sku
    warehouse: str
    quantity: int = Field(description="Units added (negative for an adjustment down)")
    on_hand: int
    available: int
    reason: str
    actor: str = Field(description="Who did it")

    def key(self) -> str:
        return self.sku
