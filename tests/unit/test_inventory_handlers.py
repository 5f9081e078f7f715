"""Inventory's handlers and commands against a SQLite database: reserve (one warehouse, split,
nearest), backorder, restock, cancel, ship, return, adjust, transfer, expire, low stock."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select

from services.inventory import commands, domain, handlers, queries
from services.inventory.metrics import InventoryMetrics
from services.inventory.models import (
    backorders,
    cancellations,
    ledger,
    metadata,
    reservations,
    stock,
    warehouses,
)
from services.inventory.movements import demand_by_day
from shared.consumer import UnitOfWork, run_after_commit
from shared.contracts.common import Address, Customer, OrderLine, StockLine
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.fulfillment import OrderCancelled, ReturnReceived, ShipmentShipped
from shared.contracts.intake import OrderAccepted
from shared.contracts.inventory import (
    AdjustStock,
    BackorderExpired,
    LowStock,
    ReorderSuggested,
    RestockStock,
    SetReorderPoint,
    SetWarehouse,
    StockAdjusted,
    StockBackordered,
    StockReleased,
    StockReserved,
    StockRestocked,
    StockReturned,
    StockTransferred,
    TransferStock,
)
from shared.db import Database
from shared.ids import uuid7
from shared.metrics import ServiceMetrics
from shared.rpc import CommandRefused
from tests.plans import full_scans

T = TypeVar("T")


class Inventory:
    """The handlers as the service runs them: one transaction each, metrics after commit."""

    def __init__(self, db: Database, policy: domain.Policy | None = None) -> None:
        self.db = db
        self.metrics = InventoryMetrics(ServiceMetrics("inventory"))
        self.policy = policy or domain.Policy()
        self.emitted: list[Envelope] = []

    async def run(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> tuple[T, list[Envelope]]:
        async with self.db.transaction() as conn:
            uow = UnitOfWork(conn)
            result = await work(uow)
        await run_after_commit(uow.after_commit)
        self.emitted.extend(uow.emitted)
        return result, uow.emitted

    async def restock(
        self, sku: str, quantity: int, warehouse: str = "WH-1"
    ) -> tuple[dict[str, Any], list[Envelope]]:
        command = RestockStock(sku=sku, quantity=quantity, warehouse=warehouse, actor="test")
        return await self.run(lambda u: commands.restock(u, command, self.metrics, self.policy))

    async def reserve(self, *events: Envelope, hold_s: float | None = None) -> list[Envelope]:
        policy = self.policy
        if hold_s is not None:
            policy = domain.Policy(allow_split=policy.allow_split, backorder_hold_s=hold_s)
        _, emitted = await self.run(
            lambda u: handlers.reserve_orders(u, list(events), self.metrics, policy)
        )
        return emitted

    async def cancel(self, *order_ids: str, reason: str = "customer asked") -> list[Envelope]:
        events = [
            new_envelope(OrderCancelled(order_id=o, reason=reason, actor="ops-1"))
            for o in order_ids
        ]
        _, emitted = await self.run(
            lambda u: handlers.release_cancelled(u, events, self.metrics, self.policy)
        )
        return emitted

    async def ship(self, *events: Envelope) -> list[Envelope]:
        _, emitted = await self.run(
            lambda u: handlers.deduct_shipped(u, list(events), self.metrics, self.policy)
        )
        return emitted

    async def take_return(
        self, order_id: str, lines: list[StockLine], actor: str = "returns-desk"
    ) -> list[Envelope]:
        event = new_envelope(
            ReturnReceived(order_id=order_id, shipment_id=uuid7(), lines=lines, actor=actor)
        )
        _, emitted = await self.run(
            lambda u: handlers.restock_returns(u, [event], self.metrics, self.policy)
        )
        return emitted

    async def adjust(
        self, sku: str, delta: int, warehouse: str = "WH-1", reason: str = "stock take"
    ) -> tuple[dict[str, Any], list[Envelope]]:
        command = AdjustStock(
            sku=sku, warehouse=warehouse, delta=delta, reason=reason, actor="auditor"
        )
        return await self.run(lambda u: commands.adjust(u, command, self.metrics, self.policy))

    async def transfer(
        self, sku: str, quantity: int, source: str, target: str
    ) -> tuple[list[dict[str, Any]], list[Envelope]]:
        command = TransferStock(
            sku=sku, quantity=quantity, from_warehouse=source, to_warehouse=target, actor="mover"
        )
        return await self.run(lambda u: commands.transfer(u, command, self.metrics, self.policy))

    async def level(self, sku: str, warehouse: str = "WH-1") -> dict[str, Any]:
        async with self.db.reading() as conn:
            rows = await queries.stock_levels(conn, sku)
        return next(r for r in rows if r["warehouse"] == warehouse)

    async def backorder_status(self, order_id: str) -> str | None:
        async with self.db.reading() as conn:
            return (
                await conn.execute(
                    select(backorders.c.status).where(backorders.c.order_id == order_id)
                )
            ).scalar()

    async def reservation_statuses(self, order_id: str) -> set[str]:
        async with self.db.reading() as conn:
            return set(
                (
                    await conn.execute(
                        select(reservations.c.status).where(reservations.c.order_id == order_id)
                    )
                ).scalars()
            )

    def outcome_count(self, outcome: str) -> float:
        value: float = self.metrics.reservations.labels(outcome)._value.get()
        return value


def address(country: str = "CN") -> Address:
    return Address(
        name="Ada", line1="1 Tea Road", city="Hangzhou", postal_code="310000", country=country
    )


def accepted(
    *lines: tuple[str, int] | tuple[str, int, str],
    priority: str = "normal",
    channel: str = "web",
    country: str = "CN",
) -> Envelope:
    order_id = uuid7()
    order_lines = [
        OrderLine(
            sku=line[0], quantity=line[1], unit_price=Decimal(line[2] if len(line) > 2 else "2.50")
        )  # type: ignore[misc]
        for line in lines
    ]
    return new_envelope(
        OrderAccepted(
            order_id=order_id,
            channel=channel,
            external_id=f"ext-{order_id}",
            customer=Customer(name="Ada", email="ada@example.com"),
            lines=order_lines,
            currency="CNY",
            total=sum((line.unit_price * line.quantity for line in order_lines), Decimal("0.00")),
            shipping_address=address(country),
            priority=priority,  # type: ignore[arg-type]
            submitted_at=datetime.now(UTC),
        )
    )


def shipped(order_id: str, lines: list[StockLine], actor: str = "picker-7") -> Envelope:
    return new_envelope(
        ShipmentShipped(
            order_id=order_id,
            shipment_id=uuid7(),
            warehouse=lines[0].warehouse,
            actor=actor,
            submitted_at=datetime.now(UTC),
            carrier="SF",
            tracking_number="SF123",
            lines=lines,
        )
    )


def of_type(events: list[Envelope], cls: type[T]) -> list[T]:
    return [e.data for e in events if isinstance(e.data, cls)]


def line(sku: str, warehouse: str, quantity: int) -> StockLine:
    return StockLine(sku=sku, warehouse=warehouse, quantity=quantity)


async def assert_stock_consistent(db: Database) -> None:
    """The invariants at every commit: on hand = available + reserved, none negative; reserved
    equals the open reservations; on hand is the sum of the ledger; and restocked + adjusted +
    returned = on hand + shipped (every unit accounted for)."""
    async with db.reading() as conn:
        rows = (await conn.execute(select(stock))).all()
        held = {
            (r.sku, r.warehouse): r.total
            for r in await conn.execute(
                select(
                    reservations.c.sku,
                    reservations.c.warehouse,
                    func.sum(reservations.c.quantity).label("total"),
                )
                .where(reservations.c.status == "reserved")
                .group_by(reservations.c.sku, reservations.c.warehouse)
            )
        }
        moves = {
            (r.sku, r.warehouse): r
            for r in await conn.execute(
                select(
                    ledger.c.sku,
                    ledger.c.warehouse,
                    func.sum(ledger.c.delta_on_hand).label("on_hand"),
                    func.sum(ledger.c.delta_reserved).label("reserved"),
                ).group_by(ledger.c.sku, ledger.c.warehouse)
            )
        }
        brought_in = {
            r.sku: r.total
            for r in await conn.execute(
                select(ledger.c.sku, func.sum(ledger.c.delta_on_hand).label("total"))
                .where(ledger.c.reason.not_in(("shipped", "return")))
                .group_by(ledger.c.sku)
            )
        }
    assert rows, "no stock rows to check"
    per_sku: dict[str, list[int]] = {}
    for r in rows:
        key = (r.sku, r.warehouse)
        assert 0 <= r.reserved <= r.on_hand, r
        assert r.shipped >= 0 and r.returned >= 0, r
        assert r.reserved == held.get(key, 0), r
        move = moves.get(key)
        assert (r.on_hand, r.reserved) == ((move.on_hand, move.reserved) if move else (0, 0)), r
        totals = per_sku.setdefault(r.sku, [0, 0, 0])
        totals[0] += r.on_hand
        totals[1] += r.shipped
        totals[2] += r.returned
    for sku, (on_hand, shipped_units, returned) in per_sku.items():
        assert brought_in.get(sku, 0) + returned == on_hand + shipped_units, sku


@pytest.fixture
async def db() -> AsyncIterator[Database]:
    database = Database("sqlite+aiosqlite:///:memory:", metadata)
    await database.create_schema()
    yield database
    await database.close()


@pytest.fixture
def inv(db: Database) -> Inventory:
    return Inventory(db)


# --- restock and reservations ---------------------------------------------------------------


async def test_restock_creates_warehouses_ranked_in_arrival_order(
    inv: Inventory, db: Database
) -> None:
    row, events = await inv.restock("TEA-001", 10, "WH-SH")
    await inv.restock("TEA-001", 4, "WH-BJ")
    row2, _ = await inv.restock("TEA-001", 5, "WH-SH")

    assert row == {
        "sku": "TEA-001",
        "warehouse": "WH-SH",
        "on_hand": 10,
        "reserved": 0,
        "available": 10,
    }
    assert row2["on_hand"] == 15
    [event] = of_type(events, StockRestocked)
    assert (event.sku, event.warehouse, event.quantity, event.on_hand, event.actor) == (
        "TEA-001",
        "WH-SH",
        10,
        10,
        "test",
    )
    async with db.reading() as conn:
        ranks = dict((await conn.execute(select(warehouses.c.code, warehouses.c.rank))).all())  # type: ignore[arg-type]
    assert ranks == {"WH-SH": 1, "WH-BJ": 2}
    await assert_stock_consistent(db)


async def test_order_is_reserved_whole_from_the_preferred_warehouse_that_has_it_all(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-001", 10, "WH-1")
    await inv.restock("TEA-001", 10, "WH-2")
    await inv.restock("CUP-001", 10, "WH-2")
    tea_only = accepted(("TEA-001", 3, "12.50"), priority="high", channel="wechat")
    tea_and_cup = accepted(("TEA-001", 2, "12.50"), ("CUP-001", 1, "6.90"), ("TEA-001", 1, "9.99"))

    emitted = await inv.reserve(tea_only, tea_and_cup)

    first, second = of_type(emitted, StockReserved)
    assert first.order_id == tea_only.key
    assert first.allocations == [line("TEA-001", "WH-1", 3)]
    assert (first.priority, first.channel) == ("high", "wechat")
    assert first.ship_to == tea_only.data.shipping_address  # type: ignore[attr-defined]
    assert first.submitted_at == tea_only.data.submitted_at  # type: ignore[attr-defined]
    assert (first.currency, first.unit_prices) == ("CNY", {"TEA-001": Decimal("12.50")})
    # WH-1 has no cups, so the whole order comes from WH-2, both tea lines as one allocation.
    assert sorted(second.allocations, key=lambda a: a.sku) == [
        line("CUP-001", "WH-2", 1),
        line("TEA-001", "WH-2", 3),
    ]
    # Two prices for one SKU: a refund uses the lower one.
    assert second.unit_prices == {"TEA-001": Decimal("9.99"), "CUP-001": Decimal("6.90")}
    envelope = emitted[0]
    assert (envelope.causation_id, envelope.correlation_id) == (tea_only.event_id, tea_only.key)
    assert (await inv.level("TEA-001", "WH-1"))["available"] == 7
    assert (await inv.level("TEA-001", "WH-2"))["reserved"] == 3
    assert inv.metrics.shared.orders.labels("inventory", "reserved", "wechat")._value.get() == 1
    assert inv.outcome_count("reserved") == 2
    await assert_stock_consistent(db)


async def test_an_order_no_warehouse_can_serve_alone_is_split_across_warehouses(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-011", 3, "WH-1")
    await inv.restock("TEA-011", 4, "WH-2")
    await inv.restock("CUP-011", 5, "WH-2")
    order = accepted(("TEA-011", 6), ("CUP-011", 2))

    [event] = of_type(await inv.reserve(order), StockReserved)

    # WH-2 completes the most lines (all the cups and 4 teas); WH-1 adds the last 2 teas.
    assert sorted(event.allocations, key=lambda a: (a.sku, a.warehouse)) == [
        line("CUP-011", "WH-2", 2),
        line("TEA-011", "WH-1", 2),
        line("TEA-011", "WH-2", 4),
    ]
    assert inv.outcome_count("split") == 1
    assert (await inv.level("TEA-011", "WH-1"))["available"] == 1
    assert (await inv.level("TEA-011", "WH-2"))["available"] == 0
    await assert_stock_consistent(db)


async def test_without_splitting_the_same_order_waits(db: Database) -> None:
    inv = Inventory(db, domain.Policy(allow_split=False))
    await inv.restock("TEA-012", 3, "WH-1")
    await inv.restock("TEA-012", 4, "WH-2")

    [event] = await inv.reserve(accepted(("TEA-012", 6)))

    assert isinstance(event.data, StockBackordered)
    # The units exist across warehouses: the shortage says so.
    assert [(s.sku, s.requested, s.available) for s in event.data.shortages] == [("TEA-012", 6, 7)]


async def test_an_order_prefers_a_warehouse_in_its_own_country(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-013", 10, "WH-SH")
    await inv.restock("TEA-013", 10, "WH-SG")
    await inv.run(lambda u: commands.set_warehouse(u, SetWarehouse(code="WH-SG", country="SG")))
    await inv.run(lambda u: commands.set_warehouse(u, SetWarehouse(code="WH-SH", country="CN")))

    to_singapore = accepted(("TEA-013", 1), country="SG")
    to_hangzhou = accepted(("TEA-013", 1), country="CN")
    to_london = accepted(("TEA-013", 1), country="GB")
    emitted = await inv.reserve(to_singapore, to_hangzhou, to_london)

    assert [r.allocations[0].warehouse for r in of_type(emitted, StockReserved)] == [
        "WH-SG",
        "WH-SH",
        # Nowhere near: the best-ranked warehouse.
        "WH-SH",
    ]
    # A rank makes a warehouse preferred for everyone else.
    await inv.run(lambda u: commands.set_warehouse(u, SetWarehouse(code="WH-SG", rank=1)))
    await inv.run(lambda u: commands.set_warehouse(u, SetWarehouse(code="WH-SH", rank=5)))
    [later] = of_type(await inv.reserve(accepted(("TEA-013", 1), country="GB")), StockReserved)
    assert later.allocations[0].warehouse == "WH-SG"


async def test_a_batch_never_oversells_and_backorders_what_is_short(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-002", 3)
    orders = [accepted(("TEA-002", 2)) for _ in range(3)]
    before = datetime.now(UTC)

    emitted = await inv.reserve(*orders, hold_s=7200)

    assert [r.order_id for r in of_type(emitted, StockReserved)] == [orders[0].key]
    waiting = of_type(emitted, StockBackordered)
    assert [b.order_id for b in waiting] == [orders[1].key, orders[2].key]
    assert [(s.sku, s.requested, s.available) for s in waiting[0].shortages] == [("TEA-002", 2, 1)]
    assert (
        before + timedelta(hours=2) <= waiting[0].deadline <= datetime.now(UTC) + timedelta(hours=2)
    )
    assert await inv.backorder_status(orders[1].key) == "waiting"
    assert await inv.level("TEA-002") == {
        "sku": "TEA-002",
        "warehouse": "WH-1",
        "on_hand": 3,
        "reserved": 2,
        "available": 1,
        "shipped": 0,
        "returned": 0,
    }
    assert inv.metrics.shared.orders.labels("inventory", "backordered", "web")._value.get() == 2
    assert inv.outcome_count("backordered") == 2
    await assert_stock_consistent(db)


async def test_an_order_never_seen_in_stock_is_backordered(inv: Inventory) -> None:
    await inv.restock("TEA-003", 5)
    order = accepted(("TEA-003", 1), ("NEW-404", 1))

    [event] = await inv.reserve(order)

    assert isinstance(event.data, StockBackordered)
    assert [(s.sku, s.requested, s.available) for s in event.data.shortages] == [("NEW-404", 1, 0)]
    assert (await inv.level("TEA-003"))["reserved"] == 0


async def test_an_order_already_decided_is_not_reserved_again(inv: Inventory, db: Database) -> None:
    await inv.restock("TEA-004", 10)
    await inv.restock("TEA-005", 1)
    order = accepted(("TEA-004", 4))
    short = accepted(("TEA-005", 2))
    await inv.reserve(order, short)

    # The same orders again under new event ids (the inbox cannot recognise them), and twice
    # in one batch.
    again = [new_envelope(order.data), new_envelope(order.data), new_envelope(short.data)]
    assert await inv.reserve(*again) == []
    fresh = accepted(("TEA-004", 1))
    emitted = await inv.reserve(fresh, new_envelope(fresh.data))

    assert [e.key for e in emitted] == [fresh.key]
    assert (await inv.level("TEA-004"))["reserved"] == 5
    await assert_stock_consistent(db)


async def test_restock_reserves_waiting_backorders_by_priority_then_age(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-006", 1)
    older_normal = accepted(("TEA-006", 2))
    low = accepted(("TEA-006", 2), priority="low")
    urgent = accepted(("TEA-006", 2), priority="urgent")
    needs_other_sku = accepted(("TEA-006", 1), ("CUP-006", 1), priority="urgent")
    newer_normal = accepted(("TEA-006", 2))
    await inv.reserve(older_normal)
    await inv.reserve(newer_normal, low, urgent, needs_other_sku)

    # 1 + 4 units: enough for two of the four waiting orders that only need tea.
    row, emitted = await inv.restock("TEA-006", 4)

    served = of_type(emitted, StockReserved)
    assert [r.order_id for r in served] == [urgent.key, older_normal.key]
    assert served[0].allocations == [line("TEA-006", "WH-1", 2)]
    assert served[0].unit_prices == {"TEA-006": Decimal("2.50")}
    assert [e.correlation_id for e in emitted if e.type == "stock_reserved"] == [
        urgent.key,
        older_normal.key,
    ]
    assert await inv.backorder_status(urgent.key) == "reserved"
    assert await inv.backorder_status(older_normal.key) == "reserved"
    assert await inv.backorder_status(newer_normal.key) == "waiting"
    assert await inv.backorder_status(low.key) == "waiting"
    assert await inv.backorder_status(needs_other_sku.key) == "waiting"
    assert row == {
        "sku": "TEA-006",
        "warehouse": "WH-1",
        "on_hand": 5,
        "reserved": 4,
        "available": 1,
    }
    assert inv.outcome_count("backorder_reserved") == 2
    await assert_stock_consistent(db)

    # A restock of the other SKU serves the order that was waiting for it.
    _, emitted = await inv.restock("CUP-006", 1)
    assert [r.order_id for r in of_type(emitted, StockReserved)] == [needs_other_sku.key]
    await assert_stock_consistent(db)


async def test_restock_at_another_warehouse_serves_a_backorder_split_or_whole(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-007", 1, "WH-1")
    order = accepted(("TEA-007", 3))
    await inv.reserve(order)

    _, emitted = await inv.restock("TEA-007", 3, "WH-9")

    [reserved] = of_type(emitted, StockReserved)
    assert reserved.allocations == [line("TEA-007", "WH-9", 3)]
    await assert_stock_consistent(db)


# --- cancellation ------------------------------------------------------------------------------


async def test_cancelling_a_reserved_order_releases_its_units_and_serves_a_waiting_one(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-020", 3, "WH-1")
    await inv.restock("TEA-020", 2, "WH-2")
    split = accepted(("TEA-020", 5))
    waiting = accepted(("TEA-020", 4))
    [reserved_env] = await inv.reserve(split)
    await inv.reserve(waiting)

    emitted = await inv.cancel(split.key, reason="changed my mind")

    [released] = of_type(emitted, StockReleased)
    assert released.order_id == split.key
    assert sorted((s.warehouse, s.quantity) for s in released.released) == [
        ("WH-1", 3),
        ("WH-2", 2),
    ]
    assert (released.backorder_cancelled, released.reason) == (False, "changed my mind")
    # The freed units go at once to the order that waited for them.
    assert [r.order_id for r in of_type(emitted, StockReserved)] == [waiting.key]
    assert await inv.reservation_statuses(split.key) == {"released"}
    assert inv.outcome_count("released") == 1
    assert inv.metrics.reservation_held.labels("released")._sum.get() >= 0
    async with db.reading() as conn:
        entries = await queries.ledger_entries(conn, "TEA-020")
    assert [
        (e["reason"], e["delta_reserved"], e["actor"]) for e in entries if e["ref"] == split.key
    ][-2:] == [
        ("released", -3, "ops-1"),
        ("released", -2, "ops-1"),
    ]
    await assert_stock_consistent(db)

    # Cancelling again changes nothing and says nothing.
    assert await inv.cancel(split.key) == []
    assert reserved_env.type == "stock_reserved"
    await assert_stock_consistent(db)


async def test_cancelling_a_backordered_order_stops_it_waiting(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-021", 1)
    order = accepted(("TEA-021", 2))
    await inv.reserve(order)

    [event] = await inv.cancel(order.key)

    assert isinstance(event.data, StockReleased)
    assert (event.data.released, event.data.backorder_cancelled) == ([], True)
    assert await inv.backorder_status(order.key) == "cancelled"
    # A restock no longer serves it.
    _, emitted = await inv.restock("TEA-021", 5)
    assert of_type(emitted, StockReserved) == []
    assert inv.outcome_count("backorder_cancelled") == 1
    await assert_stock_consistent(db)


async def test_an_order_cancelled_before_inventory_saw_it_is_never_reserved(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-022", 5)
    order = accepted(("TEA-022", 1))

    # The cancellation overtook the acceptance (they come on different streams).
    assert await inv.cancel(order.key) == []
    assert await inv.reserve(order) == []

    assert (await inv.level("TEA-022"))["reserved"] == 0
    async with db.reading() as conn:
        assert (
            await conn.execute(select(func.count()).select_from(cancellations))
        ).scalar_one() == 1


async def test_the_sweep_releases_an_order_reserved_while_its_cancellation_was_recorded(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-023", 5)
    raced = accepted(("TEA-023", 2))
    waiting = accepted(("TEA-023", 9))
    await inv.reserve(raced, waiting)
    # What two replicas can leave behind: the tombstone, written without seeing the rows.
    async with db.transaction() as conn:
        await conn.execute(
            cancellations.insert(),
            [
                {
                    "order_id": o.key,
                    "reason": "raced",
                    "actor": "ops",
                    "at": datetime.now(UTC).timestamp(),
                }
                for o in (raced, waiting)
            ],
        )

    count, emitted = await inv.run(
        lambda u: handlers.release_raced_cancellations(u, inv.metrics, inv.policy)
    )

    assert count == 2
    released = {r.order_id: r for r in of_type(emitted, StockReleased)}
    assert released[raced.key].released == [line("TEA-023", "WH-1", 2)]
    assert released[waiting.key].backorder_cancelled is True
    assert (await inv.level("TEA-023"))["reserved"] == 0
    again, _ = await inv.run(
        lambda u: handlers.release_raced_cancellations(u, inv.metrics, inv.policy)
    )
    assert again == 0
    await assert_stock_consistent(db)


# --- shipping and returns ------------------------------------------------------------------------


async def test_shipped_units_leave_stock_once(inv: Inventory, db: Database) -> None:
    await inv.restock("TEA-008", 10)
    await inv.restock("CUP-008", 5)
    order = accepted(("TEA-008", 3), ("CUP-008", 2))
    [reserved_env] = await inv.reserve(order)
    assert isinstance(reserved_env.data, StockReserved)
    allocations = reserved_env.data.allocations

    await inv.ship(shipped(order.key, allocations, actor="picker-7"))
    # A second shipment event for the same goods must not take them twice.
    await inv.ship(shipped(order.key, allocations))

    tea = await inv.level("TEA-008")
    assert (tea["on_hand"], tea["reserved"], tea["available"], tea["shipped"]) == (7, 0, 7, 3)
    assert (await inv.level("CUP-008"))["shipped"] == 2
    async with db.reading() as conn:
        entries = await queries.ledger_entries(conn, "TEA-008")
    assert await inv.reservation_statuses(order.key) == {"shipped"}
    assert [(e["reason"], e["delta_on_hand"], e["delta_reserved"]) for e in entries] == [
        ("restock", 10, 0),
        ("reserved", 0, 3),
        ("shipped", -3, -3),
    ]
    assert (entries[-1]["ref"], entries[-1]["actor"]) == (order.key, "picker-7")
    assert inv.metrics.reservation_held.labels("shipped")._sum.get() >= 0
    await assert_stock_consistent(db)


async def test_returned_units_come_back_but_never_more_than_shipped(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-030", 10, "WH-1")
    order = accepted(("TEA-030", 3))
    waiting = accepted(("TEA-030", 9))
    [reserved_env] = await inv.reserve(order)
    await inv.ship(shipped(order.key, reserved_env.data.allocations))  # type: ignore[attr-defined]
    await inv.reserve(waiting)

    # Two come back to another warehouse; then a duplicate report claims three more.
    first = await inv.take_return(order.key, [line("TEA-030", "WH-2", 2)])
    second = await inv.take_return(order.key, [line("TEA-030", "WH-1", 3)])

    [back] = of_type(first, StockReturned)
    assert (back.restocked, back.refused, back.actor) == (
        [line("TEA-030", "WH-2", 2)],
        [],
        "returns-desk",
    )
    [partly] = of_type(second, StockReturned)
    assert (partly.restocked, partly.refused) == (
        [line("TEA-030", "WH-1", 1)],
        [line("TEA-030", "WH-1", 2)],
    )
    wh2 = await inv.level("TEA-030", "WH-2")
    assert (wh2["on_hand"], wh2["returned"]) == (2, 2)
    # 7 at WH-1 and the 2 back at WH-2: the waiting order of 9 is served, split.
    assert [r.order_id for r in of_type(first, StockReserved)] == [waiting.key]
    async with db.reading() as conn:
        entries = await queries.ledger_entries(conn, "TEA-030")
    assert [
        (e["reason"], e["warehouse"], e["delta_on_hand"])
        for e in entries
        if e["reason"] == "return"
    ] == [
        ("return", "WH-2", 2),
        ("return", "WH-1", 1),
    ]
    await assert_stock_consistent(db)


async def test_a_return_before_its_shipment_is_applied_is_retried(inv: Inventory) -> None:
    await inv.restock("TEA-031", 5)
    order = accepted(("TEA-031", 2))
    await inv.reserve(order)

    with pytest.raises(handlers.ShipmentNotAppliedYet):
        await inv.take_return(order.key, [line("TEA-031", "WH-1", 2)])
    assert (await inv.level("TEA-031"))["on_hand"] == 5


async def test_a_return_of_an_order_never_shipped_here_takes_nothing(inv: Inventory) -> None:
    await inv.restock("TEA-032", 5)

    [event] = await inv.take_return(uuid7(), [line("TEA-032", "WH-1", 2)])

    assert isinstance(event.data, StockReturned)
    assert (event.data.restocked, event.data.refused) == ([], [line("TEA-032", "WH-1", 2)])
    assert (await inv.level("TEA-032"))["on_hand"] == 5


# --- adjust and transfer ---------------------------------------------------------------------------


async def test_adjustments_record_reason_and_actor_and_never_touch_reserved_units(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-040", 5)
    await inv.reserve(accepted(("TEA-040", 3)))

    row, emitted = await inv.adjust("TEA-040", -2, reason="damaged")
    [adjusted] = of_type(emitted, StockAdjusted)
    with pytest.raises(CommandRefused, match="only 0 of TEA-040 at WH-1 are not reserved"):
        await inv.adjust("TEA-040", -1)
    with pytest.raises(CommandRefused, match="no stock of TEA-040 at WH-7"):
        await inv.adjust("TEA-040", -1, warehouse="WH-7")
    found, _ = await inv.adjust("TEA-040", 4, warehouse="WH-7", reason="found a box")

    assert row == {
        "sku": "TEA-040",
        "warehouse": "WH-1",
        "on_hand": 3,
        "reserved": 3,
        "available": 0,
    }
    assert (adjusted.delta, adjusted.reason, adjusted.actor, adjusted.on_hand) == (
        -2,
        "damaged",
        "auditor",
        3,
    )
    assert found["on_hand"] == 4
    async with db.reading() as conn:
        entries = await queries.ledger_entries(conn, "TEA-040")
    assert [
        (e["reason"], e["delta_on_hand"], e["actor"]) for e in entries if e["reason"] != "reserved"
    ] == [
        ("restock", 5, "test"),
        ("damaged", -2, "auditor"),
        ("found a box", 4, "auditor"),
    ]
    # Available fell to zero at WH-1: a stock-out there.
    assert inv.metrics.stockouts.labels("WH-1")._value.get() == 1
    await assert_stock_consistent(db)


async def test_transfer_moves_available_units_and_may_serve_a_waiting_order(
    db: Database,
) -> None:
    inv = Inventory(db, domain.Policy(allow_split=False))
    await inv.restock("TEA-041", 4, "WH-1")
    await inv.restock("TEA-041", 3, "WH-2")
    waiting = accepted(("TEA-041", 6))
    await inv.reserve(waiting)

    rows, emitted = await inv.transfer("TEA-041", 3, "WH-2", "WH-1")

    assert [(r["warehouse"], r["on_hand"]) for r in rows] == [("WH-2", 0), ("WH-1", 7)]
    [moved] = of_type(emitted, StockTransferred)
    assert (moved.from_warehouse, moved.to_warehouse, moved.quantity, moved.actor) == (
        "WH-2",
        "WH-1",
        3,
        "mover",
    )
    [served] = of_type(emitted, StockReserved)
    assert served.allocations == [line("TEA-041", "WH-1", 6)]
    with pytest.raises(CommandRefused, match="only 1 of TEA-041 at WH-1"):
        await inv.transfer("TEA-041", 2, "WH-1", "WH-3")
    async with db.reading() as conn:
        pair = [
            e for e in await queries.ledger_entries(conn, "TEA-041") if e["reason"] == "transfer"
        ]
    assert [(e["warehouse"], e["delta_on_hand"]) for e in pair] == [("WH-2", -3), ("WH-1", 3)]
    assert pair[0]["ref"] == pair[1]["ref"] is not None
    await assert_stock_consistent(db)


# --- backorder deadline ------------------------------------------------------------------------------


async def test_backorders_past_their_deadline_expire_and_are_not_served_later(
    inv: Inventory,
) -> None:
    await inv.restock("TEA-009", 1)
    late = accepted(("TEA-009", 2), channel="phone")
    patient = accepted(("TEA-009", 2))
    await inv.reserve(late, hold_s=1e-6)
    await inv.reserve(patient, hold_s=3600)

    _, emitted = await inv.run(lambda u: handlers.expire_backorders(u, inv.metrics))

    [expired] = of_type(emitted, BackorderExpired)
    assert expired.order_id == late.key
    assert expired.submitted_at == late.data.submitted_at  # type: ignore[attr-defined]
    assert "deadline" in expired.reason
    assert await inv.backorder_status(late.key) == "expired"
    assert await inv.backorder_status(patient.key) == "waiting"
    assert (
        inv.metrics.shared.orders.labels("inventory", "backorder_expired", "phone")._value.get()
        == 1
    )
    assert inv.outcome_count("backorder_expired") == 1
    # Nothing left to expire, and a restock serves only the order still waiting.
    _, again = await inv.run(lambda u: handlers.expire_backorders(u, inv.metrics))
    assert again == []
    _, emitted = await inv.restock("TEA-009", 10)
    assert [r.order_id for r in of_type(emitted, StockReserved)] == [patient.key]


# --- low stock and forecasts ------------------------------------------------------------------------


async def test_low_stock_is_announced_once_per_crossing_with_a_reorder_suggestion(
    inv: Inventory, db: Database
) -> None:
    await inv.restock("TEA-050", 20, "WH-1")
    await inv.restock("TEA-050", 5, "WH-2")
    point = SetReorderPoint(
        sku="TEA-050", reorder_point=10, lead_time_days=2, target_cover_days=3, actor="buyer"
    )
    outlook, emitted = await inv.run(lambda u: commands.set_reorder_point(u, point, inv.policy))
    assert emitted == [] and outlook["below_reorder_point"] is False

    first = await inv.reserve(*[accepted(("TEA-050", 3)) for _ in range(5)])  # 25 -> 10
    crossing = await inv.reserve(accepted(("TEA-050", 2)))  # 10 -> 8
    still_low = await inv.reserve(accepted(("TEA-050", 1)))  # 8 -> 7

    assert of_type(first, LowStock) == []
    [low] = of_type(crossing, LowStock)
    assert (low.sku, low.available, low.reorder_point) == ("TEA-050", 8, 10)
    [suggestion] = of_type(crossing, ReorderSuggested)
    assert suggestion.available == 8
    assert suggestion.daily_demand > 0
    assert suggestion.days_of_cover == pytest.approx(8 / suggestion.daily_demand, abs=0.006)
    # Enough for lead time plus cover (2 + 3 days) at that demand, less what is available
    # (the event's demand is rounded, hence the tolerance of one unit).
    expected = max(0, math.ceil(suggestion.daily_demand * 5 - 8))
    assert suggestion.suggested_quantity == pytest.approx(expected, abs=1)
    assert suggestion.suggested_quantity > 0
    assert (suggestion.lead_time_days, suggestion.target_cover_days) == (2, 3)
    assert of_type(still_low, LowStock) == []
    async with db.reading() as conn:
        assert await queries.gauge_values(conn) == (0, 1)

    # Back above the point, then below again: a second announcement.
    await inv.restock("TEA-050", 10, "WH-2")  # 17
    again = await inv.reserve(accepted(("TEA-050", 8)))  # 9
    assert [e.available for e in of_type(again, LowStock)] == [9]
    await assert_stock_consistent(db)


async def test_a_reorder_point_above_what_is_available_is_low_at_once(inv: Inventory) -> None:
    await inv.restock("TEA-051", 4)
    point = SetReorderPoint(sku="TEA-051", reorder_point=5, actor="buyer")

    outlook, emitted = await inv.run(lambda u: commands.set_reorder_point(u, point, inv.policy))

    assert [type(e.data) for e in emitted] == [LowStock, ReorderSuggested]
    assert outlook["below_reorder_point"] is True
    assert (outlook["lead_time_days"], outlook["target_cover_days"]) == (7.0, 14.0)
    # No demand yet: no cover figure, nothing to reorder beyond what is there.
    assert (outlook["daily_demand"], outlook["days_of_cover"], outlook["suggested_quantity"]) == (
        0.0,
        None,
        0,
    )


async def test_the_forecast_smooths_the_skus_own_daily_demand(inv: Inventory, db: Database) -> None:
    await inv.restock("TEA-052", 100)
    await inv.reserve(*[accepted(("TEA-052", 2)) for _ in range(3)])
    await inv.reserve(accepted(("TEA-052", 50)), accepted(("TEA-052", 900)))  # one waits
    # Demand history on earlier days, written as the reserve handler writes it.
    today = int(datetime.now(UTC).timestamp() // 86400)
    async with db.transaction() as conn:
        await conn.execute(
            ledger.insert(),
            [
                {
                    "sku": "TEA-052",
                    "warehouse": "WH-1",
                    "delta_on_hand": 0,
                    "delta_reserved": units,
                    "reason": "reserved",
                    "ref": uuid7(),
                    "actor": "inventory",
                    "at": (today - back) * 86400.0 + 60,
                    "day": today - back,
                }
                for back, units in ((3, 10), (1, 30))
            ],
        )

    async with db.reading() as conn:
        [row] = await queries.forecasts(conn, inv.policy, "TEA-052")
        demand = (await demand_by_day(conn, ["TEA-052"], datetime.now(UTC).timestamp(), 56))[
            "TEA-052"
        ]

    # Days: 10, 0, 30, then today's 956 units scaled up to a whole day.
    seconds_today = max(datetime.now(UTC).timestamp() - today * 86400, 3600)
    series = [10.0, 0.0, 30.0, 956 * 86400 / seconds_today]
    assert demand == {today - 3: 10.0, today - 1: 30.0, today: 956.0}
    assert row["daily_demand"] == pytest.approx(domain.smoothed(series, 0.3), rel=1e-3)
    assert row["history_days"] == 4
    assert row["available"] == 100 - 6 - 50
    assert row["days_of_cover"] == pytest.approx(44 / row["daily_demand"], abs=0.006)


async def test_stats_report_what_happened(inv: Inventory, db: Database) -> None:
    await inv.restock("TEA-010", 5)
    await inv.restock("CUP-010", 2, "WH-2")
    order = accepted(("TEA-010", 2))
    [reserved_env] = await inv.reserve(order)
    await inv.reserve(accepted(("CUP-010", 9)))
    await inv.ship(shipped(order.key, reserved_env.data.allocations))  # type: ignore[attr-defined]
    await inv.take_return(order.key, [line("TEA-010", "WH-1", 1)])

    async with db.reading() as conn:
        stats = await queries.inventory_stats(conn)
        newest_two = await queries.ledger_entries(conn, "TEA-010", limit=2)

    assert stats == {
        "reservations": {"shipped": 1},
        "backorders_waiting": 1,
        "skus_below_reorder_point": 0,
        "on_hand": 6,
        "shipped": 2,
        "returned": 1,
    }
    assert [e["reason"] for e in newest_two] == ["shipped", "return"]


async def test_the_periodic_sweep_and_gauges_search_never_scan_the_per_order_tables(
    inv: Inventory, db: Database
) -> None:
    # They run every second or so for as long as the service runs: a scan of reservations
    # (the sweep's join once started from it) grows with every order ever taken.
    await inv.restock("TEA-024", 5)
    await inv.reserve(accepted(("TEA-024", 1)), accepted(("TEA-024", 9)))
    await inv.cancel(accepted(("TEA-024", 2)).key)

    async def periodic() -> None:
        await inv.run(lambda u: handlers.release_raced_cancellations(u, inv.metrics, inv.policy))
        await inv.run(lambda u: handlers.expire_backorders(u, inv.metrics))
        async with db.reading() as conn:
            await queries.gauge_values(conn)

    growing = ("reservations", "ledger", "backorders", "cancellations")
    assert await full_scans(db, growing, periodic) == []
