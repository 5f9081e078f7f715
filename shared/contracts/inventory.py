"""Events inventory produces, and the commands it takes."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from shared import subjects
from shared.contracts.common import (
    Address,
    Contract,
    CurrencyCode,
    Money,
    Priority,
    Sku,
    StockLine,
)
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
    # Added in v1 as optional fields (a non-breaking change): what a refund is worth.
    currency: CurrencyCode | None = Field(None, description="The order's currency")
    unit_prices: dict[str, Money] | None = Field(
        None, description="Unit price per SKU, so a return can be refunded at what was paid"
    )


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


@register
class BackorderExpired(_InventoryOrderEvent):
    """A backordered order's deadline passed before stock came: it will not be reserved."""

    event_type = "backorder_expired"
    reason: str = Field(description="Why it expired, for a person to read")
    submitted_at: datetime | None = Field(None, description="When intake received the order")


WAREHOUSE_CODE = r"^[A-Z0-9-]{2,16}$"


class RestockStock(Contract):
    """Command: units arrived at a warehouse (the catalogue is seeded this way too)."""

    sku: Sku
    quantity: int = Field(ge=1, le=1_000_000, description="Units added")
    warehouse: str = Field(
        "WH-1",
        pattern=WAREHOUSE_CODE,
        description="Warehouse code; an unknown one is created, ranked after the others",
    )
    reason: str = Field("restock", min_length=1, max_length=64, description="Ledger reason")
    actor: str = Field("cli", min_length=1, max_length=64, description="Who did it")
