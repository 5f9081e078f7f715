"""Inventory's handlers against a SQLite database: reserve, backorder, restock, ship, expire."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from services.inventory import handlers
from services.inventory.models import backorders, ledger, metadata, reservations, stock, warehouses
from shared.consumer import UnitOfWork
from shared.contracts.common import Address, Customer, OrderLine, StockLine
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.fulfillment import ShipmentShipped
from shared.contracts.intake import OrderAccepted
from shared.contracts.inventory import (
    BackorderExpired,
    RestockStock,
    StockBackordered,
    StockReserved,
    StockRestocked,
)
from shared.db import Database
from shared.ids import uuid7
from shared.metrics import ServiceMetrics

HOLD = timedelta(hours=24)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'inventory.db'}", metadata)
    await database.create_schema()
    yield database
    await database.close()


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics("inventory")


async def in_transaction(db: Database, work: Callable[[UnitOfWork], Awaitable[Any]]) -> UnitOfWork:
    async with db.transaction() as conn:
        uow = UnitOfWork(conn)
        await work(uow)
    return uow


async def restock(
    db: Database, metrics: ServiceMetrics, sku: str, quantity: int, warehouse: str = "WH-1"
) -> tuple[dict[str, Any], list[Envelope]]:
    result: dict[str, Any] = {}

    async def work(uow: UnitOfWork) -> None:
        command = RestockStock(sku=sku, quantity=quantity, warehouse=warehouse, actor="test")
        result.update(await handlers.restock(uow, command, metrics))

    uow = await in_transaction(db, work)
    return result, uow.emitted


async def reserve(
    db: Database, metrics: ServiceMetrics, events: list[Envelope], hold: timedelta = HOLD
) -> list[Envelope]:
    uow = await in_transaction(db, lambda u: handlers.reserve_orders(u, events, metrics, hold))
    return uow.emitted


def accepted(*lines: tuple[str, int], priority: str = "normal", channel: str = "web") -> Envelope:
    order_id = uuid7()
    order_lines = [OrderLine(sku=s, quantity=q, unit_price=Decimal("2.50")) for s, q in lines]
    return new_envelope(
        OrderAccepted(
            order_id=order_id,
            channel=channel,
            external_id=f"ext-{order_id}",
            customer=Customer(name="Ada", email="ada@example.com"),
            lines=order_lines,
            currency="CNY",
            total=sum((line.unit_price * line.quantity for line in order_lines), Decimal("0.00")),
            shipping_address=Address(
                name="Ada", line1="1 Tea Road", city="Hangzhou", postal_code="310000", country="CN"
            ),
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


def of_type(events: list[Envelope], cls: type[Any]) -> list[Any]:
    return [e.data for e in events if isinstance(e.data, cls)]


async def level(db: Database, sku: str, warehouse: str = "WH-1") -> dict[str, Any]:
    async with db.reading() as conn:
        rows = await handlers.stock_levels(conn, sku)
    return next(r for r in rows if r["warehouse"] == warehouse)


async def backorder_status(db: Database, order_id: str) -> str | None:
    async with db.reading() as conn:
        return (
            await conn.execute(select(backorders.c.status).where(backorders.c.order_id == order_id))
        ).scalar()


async def assert_stock_consistent(db: Database) -> None:
    """on_hand = available + reserved, none negative; reservations and the ledger agree."""
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
        received = {
            (r.sku, r.warehouse): r.total
            for r in await conn.execute(
                select(
                    ledger.c.sku,
                    ledger.c.warehouse,
                    func.sum(ledger.c.delta_on_hand).label("total"),
                )
                .where(ledger.c.delta_on_hand > 0)
                .group_by(ledger.c.sku, ledger.c.warehouse)
            )
        }
    assert rows, "no stock rows to check"
    for r in rows:
        key = (r.sku, r.warehouse)
        assert 0 <= r.reserved <= r.on_hand and r.shipped >= 0, r
        assert r.reserved == held.get(key, 0), r
        assert (r.on_hand, r.reserved) == (moves[key].on_hand, moves[key].reserved), r
        assert r.on_hand + r.shipped == received[key], r


async def test_restock_creates_warehouses_ranked_in_arrival_order(
    db: Database, metrics: ServiceMetrics
) -> None:
    row, events = await restock(db, metrics, "TEA-001", 10, "WH-SH")
    await restock(db, metrics, "TEA-001", 4, "WH-BJ")
    row2, _ = await restock(db, metrics, "TEA-001", 5, "WH-SH")

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
    db: Database, metrics: ServiceMetrics
) -> None:
    await restock(db, metrics, "TEA-001", 10, "WH-1")
    await restock(db, metrics, "TEA-001", 10, "WH-2")
    await restock(db, metrics, "CUP-001", 10, "WH-2")
    tea_only = accepted(("TEA-001", 3), priority="high", channel="wechat")
    tea_and_cup = accepted(("TEA-001", 2), ("CUP-001", 1), ("TEA-001", 1))

    emitted = await reserve(db, metrics, [tea_only, tea_and_cup])

    first, second = of_type(emitted, StockReserved)
    assert first.order_id == tea_only.key
    assert first.allocations == [StockLine(sku="TEA-001", warehouse="WH-1", quantity=3)]
    assert (first.priority, first.channel) == ("high", "wechat")
    assert first.ship_to == tea_only.data.shipping_address  # type: ignore[attr-defined]
    assert first.submitted_at == tea_only.data.submitted_at  # type: ignore[attr-defined]
    # WH-1 has no cups, so the whole order comes from WH-2, both tea lines as one allocation.
    assert sorted(second.allocations, key=lambda a: a.sku) == [
        StockLine(sku="CUP-001", warehouse="WH-2", quantity=1),
        StockLine(sku="TEA-001", warehouse="WH-2", quantity=3),
    ]
    envelope = emitted[0]
    assert (envelope.causation_id, envelope.correlation_id) == (tea_only.event_id, tea_only.key)
    assert (await level(db, "TEA-001", "WH-1"))["available"] == 7
    assert (await level(db, "TEA-001", "WH-2"))["reserved"] == 3
    assert metrics.orders.labels("inventory", "reserved", "wechat")._value.get() == 1
    await assert_stock_consistent(db)


async def test_a_batch_never_oversells_and_backorders_what_is_short(
    db: Database, metrics: ServiceMetrics
) -> None:
    await restock(db, metrics, "TEA-002", 3)
    orders = [accepted(("TEA-002", 2)) for _ in range(3)]
    before = datetime.now(UTC)

    emitted = await reserve(db, metrics, orders, hold=timedelta(hours=2))

    assert [r.order_id for r in of_type(emitted, StockReserved)] == [orders[0].key]
    waiting = of_type(emitted, StockBackordered)
    assert [b.order_id for b in waiting] == [orders[1].key, orders[2].key]
    assert [(s.sku, s.requested, s.available) for s in waiting[0].shortages] == [("TEA-002", 2, 1)]
    assert (
        before + timedelta(hours=2) <= waiting[0].deadline <= datetime.now(UTC) + timedelta(hours=2)
    )
    assert await backorder_status(db, orders[1].key) == "waiting"
    assert await level(db, "TEA-002") == {
        "sku": "TEA-002",
        "warehouse": "WH-1",
        "on_hand": 3,
        "reserved": 2,
        "available": 1,
        "shipped": 0,
    }
    assert metrics.orders.labels("inventory", "backordered", "web")._value.get() == 2
    await assert_stock_consistent(db)


async def test_an_order_never_seen_in_stock_is_backordered(
    db: Database, metrics: ServiceMetrics
) -> None:
    await restock(db, metrics, "TEA-003", 5)
    order = accepted(("TEA-003", 1), ("NEW-404", 1))

    [event] = await reserve(db, metrics, [order])

    assert isinstance(event.data, StockBackordered)
    assert [(s.sku, s.requested, s.available) for s in event.data.shortages] == [("NEW-404", 1, 0)]
    assert (await level(db, "TEA-003"))["reserved"] == 0


async def test_an_order_already_decided_is_not_reserved_again(
    db: Database, metrics: ServiceMetrics
) -> None:
    await restock(db, metrics, "TEA-004", 10)
    await restock(db, metrics, "TEA-005", 1)
    order = accepted(("TEA-004", 4))
    short = accepted(("TEA-005", 2))
    await reserve(db, metrics, [order, short])

    # The same orders again under new event ids (the inbox cannot recognise them), and twice
    # in one batch.
    again = [new_envelope(order.data), new_envelope(order.data), new_envelope(short.data)]
    assert await reserve(db, metrics, again) == []
    fresh = accepted(("TEA-004", 1))
    emitted = await reserve(db, metrics, [fresh, new_envelope(fresh.data)])

    assert [e.key for e in emitted] == [fresh.key]
    assert (await level(db, "TEA-004"))["reserved"] == 5
    await assert_stock_consistent(db)


async def test_restock_reserves_waiting_backorders_by_priority_then_age(
    db: Database, metrics: ServiceMetrics
) -> None:
    await restock(db, metrics, "TEA-006", 1)
    older_normal = accepted(("TEA-006", 2))
    low = accepted(("TEA-006", 2), priority="low")
    urgent = accepted(("TEA-006", 2), priority="urgent")
    needs_other_sku = accepted(("TEA-006", 1), ("CUP-006", 1), priority="urgent")
    newer_normal = accepted(("TEA-006", 2))
    await reserve(db, metrics, [older_normal])
    await reserve(db, metrics, [newer_normal, low, urgent, needs_other_sku])

    # 1 + 4 units: enough for two of the four waiting orders that only need tea.
    row, emitted = await restock(db, metrics, "TEA-006", 4)

    served = of_type(emitted, StockReserved)
    assert [r.order_id for r in served] == [urgent.key, older_normal.key]
    assert served[0].allocations == [StockLine(sku="TEA-006", warehouse="WH-1", quantity=2)]
    assert [e.correlation_id for e in emitted if e.type == "stock_reserved"] == [
        urgent.key,
        older_normal.key,
    ]
    assert await backorder_status(db, urgent.key) == "reserved"
    assert await backorder_status(db, older_normal.key) == "reserved"
    assert await backorder_status(db, newer_normal.key) == "waiting"
    assert await backorder_status(db, low.key) == "waiting"
    assert await backorder_status(db, needs_other_sku.key) == "waiting"
    assert row == {
        "sku": "TEA-006",
        "warehouse": "WH-1",
        "on_hand": 5,
        "reserved": 4,
        "available": 1,
    }
    await assert_stock_consistent(db)

    # A restock of the other SKU serves the order that was waiting for it.
    _, emitted = await restock(db, metrics, "CUP-006", 1)
    assert [r.order_id for r in of_type(emitted, StockReserved)] == [needs_other_sku.key]
    await assert_stock_consistent(db)


async def test_restock_at_another_warehouse_serves_a_backorder_from_there(
    db: Database, metrics: ServiceMetrics
) -> None:
    await restock(db, metrics, "TEA-007", 1, "WH-1")
    order = accepted(("TEA-007", 3))
    await reserve(db, metrics, [order])

    _, emitted = await restock(db, metrics, "TEA-007", 3, "WH-9")

    [reserved] = of_type(emitted, StockReserved)
    assert reserved.allocations == [StockLine(sku="TEA-007", warehouse="WH-9", quantity=3)]
    await assert_stock_consistent(db)


async def test_shipped_units_leave_stock_once(db: Database, metrics: ServiceMetrics) -> None:
    await restock(db, metrics, "TEA-008", 10)
    await restock(db, metrics, "CUP-008", 5)
    order = accepted(("TEA-008", 3), ("CUP-008", 2))
    [reserved_env] = await reserve(db, metrics, [order])
    assert isinstance(reserved_env.data, StockReserved)
    event = shipped(order.key, reserved_env.data.allocations, actor="picker-7")

    await in_transaction(db, lambda u: handlers.deduct_shipped(u, [event]))
    # A second shipment event for the same goods must not take them twice.
    await in_transaction(
        db,
        lambda u: handlers.deduct_shipped(u, [shipped(order.key, reserved_env.data.allocations)]),
    )  # type: ignore[union-attr]

    tea = await level(db, "TEA-008")
    assert (tea["on_hand"], tea["reserved"], tea["available"], tea["shipped"]) == (7, 0, 7, 3)
    assert (await level(db, "CUP-008"))["shipped"] == 2
    async with db.reading() as conn:
        statuses = set(
            (
                await conn.execute(
                    select(reservations.c.status).where(reservations.c.order_id == order.key)
                )
            ).scalars()
        )
        entries = await handlers.ledger_entries(conn, "TEA-008")
    assert statuses == {"shipped"}
    assert [(e["reason"], e["delta_on_hand"], e["delta_reserved"]) for e in entries] == [
        ("restock", 10, 0),
        ("reserved", 0, 3),
        ("shipped", -3, -3),
    ]
    assert (entries[-1]["ref"], entries[-1]["actor"]) == (order.key, "picker-7")
    await assert_stock_consistent(db)


async def test_backorders_past_their_deadline_expire_and_are_not_served_later(
    db: Database, metrics: ServiceMetrics
) -> None:
    await restock(db, metrics, "TEA-009", 1)
    late = accepted(("TEA-009", 2), channel="phone")
    patient = accepted(("TEA-009", 2))
    await reserve(db, metrics, [late], hold=timedelta(seconds=0))
    await reserve(db, metrics, [patient], hold=timedelta(hours=1))

    uow = await in_transaction(db, lambda u: handlers.expire_backorders(u, metrics))

    [expired] = of_type(uow.emitted, BackorderExpired)
    assert expired.order_id == late.key
    assert expired.submitted_at == late.data.submitted_at  # type: ignore[attr-defined]
    assert "deadline" in expired.reason
    assert await backorder_status(db, late.key) == "expired"
    assert await backorder_status(db, patient.key) == "waiting"
    assert metrics.orders.labels("inventory", "backorder_expired", "phone")._value.get() == 1
    # Nothing left to expire, and a restock serves only the order still waiting.
    assert (
        await in_transaction(db, lambda u: handlers.expire_backorders(u, metrics))
    ).emitted == []
    _, emitted = await restock(db, metrics, "TEA-009", 10)
    assert [r.order_id for r in of_type(emitted, StockReserved)] == [patient.key]


async def test_stats_and_ledger_report_what_happened(db: Database, metrics: ServiceMetrics) -> None:
    await restock(db, metrics, "TEA-010", 5)
    await restock(db, metrics, "CUP-010", 2, "WH-2")
    order = accepted(("TEA-010", 2))
    [reserved_env] = await reserve(db, metrics, [order])
    await reserve(db, metrics, [accepted(("CUP-010", 9))])
    await in_transaction(
        db,
        lambda u: handlers.deduct_shipped(u, [shipped(order.key, reserved_env.data.allocations)]),  # type: ignore[attr-defined]
    )

    async with db.reading() as conn:
        stats = await handlers.inventory_stats(conn)
        newest_two = await handlers.ledger_entries(conn, "TEA-010", limit=2)

    assert stats == {
        "reservations": {"shipped": 1},
        "backorders_waiting": 1,
        "on_hand": 5,
        "shipped": 2,
    }
    assert [e["reason"] for e in newest_two] == ["reserved", "shipped"]
