"""Events inventory produces, and the commands it takes."""

from __future__ import annotations

from datetime import datetime

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

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


# --- added with issue 5: cancellation, returns, adjustments, transfers, low stock, forecasts ---


@register
class StockReleased(_InventoryOrderEvent):
    """A cancelled order holds nothing any more: its reserved units are available again, or
    its backorder stopped waiting."""

    event_type = "stock_released"
    released: list[StockLine] = Field(description="Units no longer held for the order, where")
    backorder_cancelled: bool = Field(
        description="The order was waiting for stock; it no longer is"
    )
    reason: str = Field(description="Why, as the cancellation gave it")


@register
class StockReturned(_InventoryOrderEvent):
    """Returned goods are back on hand (ledger reason "return")."""

    event_type = "stock_returned"
    shipment_id: str
    restocked: list[StockLine] = Field(description="Units put back on hand, where")
    refused: list[StockLine] = Field(
        description="Units more than the order had shipped (and not yet returned): not taken in"
    )
    actor: str


class _SkuEvent(Event):
    producer = subjects.INVENTORY
    sku: Sku

    def key(self) -> str:
        return self.sku


@register
class StockAdjusted(_SkuEvent):
    """A person corrected the count at a warehouse (a stock take, damage, a found box)."""

    event_type = "stock_adjusted"
    warehouse: str
    delta: int = Field(description="Units added (negative: taken away)")
    on_hand: int
    available: int
    reason: str
    actor: str = Field(description="Who did it")


@register
class StockTransferred(_SkuEvent):
    """Units moved from one warehouse to another."""

    event_type = "stock_transferred"
    from_warehouse: str
    to_warehouse: str
    quantity: int = Field(ge=1)
    reason: str
    actor: str = Field(description="Who did it")


@register
class LowStock(_SkuEvent):
    """A SKU's available units (all warehouses together) fell below its reorder point."""

    event_type = "low_stock"
    available: int
    reorder_point: int


@register
class ReorderSuggested(_SkuEvent):
    """How much to buy, from the SKU's own demand history (exponential smoothing of daily
    demand). Sent with LowStock."""

    event_type = "reorder_suggested"
    available: int
    daily_demand: float = Field(description="Forecast units per day")
    days_of_cover: float | None = Field(
        description="Days the available units last at that demand (null: no demand seen)"
    )
    suggested_quantity: int = Field(
        ge=0, description="Units to order so that stock covers lead time plus target cover"
    )
    lead_time_days: float
    target_cover_days: float


class _Command(Contract):
    # A misspelt field must be an error, not silently ignored.
    model_config = ConfigDict(frozen=True, extra="forbid")


class AdjustStock(_Command):
    """Command: correct the count of a SKU at a warehouse, with a reason and who did it."""

    sku: Sku
    warehouse: str = Field(pattern=WAREHOUSE_CODE)
    delta: int = Field(
        ge=-1_000_000, le=1_000_000, description="Units to add (negative: to take away)"
    )
    reason: str = Field(min_length=1, max_length=64, description="Ledger reason, e.g. stock take")
    actor: str = Field(min_length=1, max_length=64, description="Who did it")

    @field_validator("delta")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("an adjustment of 0 changes nothing")
        return value


class TransferStock(_Command):
    """Command: move available units of a SKU from one warehouse to another."""

    sku: Sku
    from_warehouse: str = Field(pattern=WAREHOUSE_CODE)
    to_warehouse: str = Field(
        pattern=WAREHOUSE_CODE, description="An unknown one is created, ranked after the others"
    )
    quantity: int = Field(ge=1, le=1_000_000)
    reason: str = Field("transfer", min_length=1, max_length=64, description="Ledger reason")
    actor: str = Field("cli", min_length=1, max_length=64, description="Who did it")

    @field_validator("to_warehouse")
    @classmethod
    def _elsewhere(cls, value: str, info: ValidationInfo) -> str:
        if value == info.data.get("from_warehouse"):
            raise ValueError("a transfer goes to another warehouse")
        return value


class SetReorderPoint(_Command):
    """Command: when a SKU counts as low on stock, and what its reorder suggestion assumes."""

    sku: Sku
    reorder_point: int | None = Field(
        ge=0, le=10_000_000, description="Low stock below this many available units; null: never"
    )
    lead_time_days: float | None = Field(
        None, gt=0, le=365, description="Days a reorder takes to arrive (default: the setting)"
    )
    target_cover_days: float | None = Field(
        None, gt=0, le=365, description="Days of demand a reorder should cover after it arrives"
    )
    actor: str = Field("cli", min_length=1, max_length=64, description="Who did it")


class SetWarehouse(_Command):
    """Command: create a warehouse or change its preference rank or country."""

    code: str = Field(pattern=WAREHOUSE_CODE)
    rank: int | None = Field(
        None, ge=1, le=1_000_000, description="Lower is preferred (default: after the others)"
    )
    country: str | None = Field(
        None,
        pattern=r"^[A-Z]{2}$",
        description="ISO country it stands in: orders shipping there prefer it (nearest first)",
    )
    actor: str = Field("cli", min_length=1, max_length=64, description="Who did it")
