"""Fulfillment's handlers against SQLite: queueing reservations, operator commands, simulator."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from sqlalchemy import select, update

from services.fulfillment import domain, handlers, views
from services.fulfillment.app import create_service
from services.fulfillment.metrics import FulfillmentMetrics
from services.fulfillment.models import metadata, orders, shipments
from services.fulfillment.settings import FulfillmentSettings
from services.fulfillment.simulator import WarehouseSimulator
from shared.consumer import UnitOfWork, run_after_commit
from shared.contracts.common import Address, Priority, StockLine
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.fulfillment import (
    DeliveryFailedCommand,
    ShipCommand,
    ShipmentCommand,
    ShipmentDelivered,
    ShipmentDeliveryFailed,
    ShipmentPicked,
    ShipmentQueued,
    ShipmentShipped,
)
from shared.contracts.inventory import StockReserved
from shared.db import Database
from shared.ids import uuid7
from shared.metrics import ServiceMetrics
from shared.rpc import CommandRefused

T = TypeVar("T")
SLA = FulfillmentSettings().sla_hours()
ADDRESS = Address(
    name="Li Wei", line1="1 Nanjing Road", city="Shanghai", postal_code="200001", country="CN"
)


def reservation(
    *allocations: tuple[str, str, int],
    priority: Priority = "normal",
    order_id: str | None = None,
    prices: dict[str, str] | None = None,
    currency: str | None = None,
) -> Envelope:
    return new_envelope(
        StockReserved(
            order_id=order_id or uuid7(),
            allocations=[StockLine(sku=s, warehouse=w, quantity=q) for s, w, q in allocations],
            priority=priority,
            channel="web",
            ship_to=ADDRESS,
            submitted_at=datetime.now(UTC) - timedelta(seconds=3),
            unit_prices=None if prices is None else {k: Decimal(v) for k, v in prices.items()},
            currency=currency or ("CNY" if prices is not None else None),
        )
    )


@pytest.fixture
async def db() -> AsyncIterator[Database]:
    database = Database("sqlite+aiosqlite:///:memory:", metadata)
    await database.create_schema()
    yield database
    await database.close()


async def in_transaction(
    db: Database, work: Callable[[UnitOfWork], Awaitable[T]]
) -> tuple[T, UnitOfWork]:
    """Like ``rt.execute``: one transaction, then the after-commit callbacks (metrics)."""
    async with db.transaction() as conn:
        uow = UnitOfWork(conn)
        result = await work(uow)
    await run_after_commit(uow.after_commit)
    return result, uow


def new_metrics() -> FulfillmentMetrics:
    return FulfillmentMetrics(ServiceMetrics("fulfillment"))


async def queue(
    db: Database,
    *events: Envelope,
    sla: dict[str, float] = SLA,
    metrics: FulfillmentMetrics | None = None,
) -> UnitOfWork:
    m = metrics or new_metrics()

    async def work(uow: UnitOfWork) -> None:
        await handlers.queue_shipments(uow, list(events), m, domain.SlaPolicy(sla))

    return (await in_transaction(db, work))[1]


async def command(
    db: Database, action: str, cmd: ShipmentCommand, metrics: FulfillmentMetrics | None = None
) -> tuple[list[dict[str, Any]], UnitOfWork]:
    m = metrics or new_metrics()

    async def work(uow: UnitOfWork) -> list[dict[str, Any]]:
        return await handlers.run_command(uow, action, cmd, m)

    return await in_transaction(db, work)


async def rows_of(db: Database, order_id: str) -> list[dict[str, Any]]:
    async with db.reading() as conn:
        result = await conn.execute(
            select(shipments)
            .where(shipments.c.order_id == order_id)
            .order_by(shipments.c.warehouse)
        )
        return [dict(r) for r in result.mappings()]


async def test_a_reservation_split_over_two_warehouses_queues_two_shipments(db: Database) -> None:
    env = reservation(
        ("TEA-001", "WH-1", 2), ("CUP-002", "WH-2", 1), ("POT-003", "WH-1", 1), priority="urgent"
    )
    order_id = env.key
    uow = await queue(db, env)

    rows = await rows_of(db, order_id)
    assert [(r["warehouse"], r["status"], r["priority_rank"]) for r in rows] == [
        ("WH-1", "queued", 0),
        ("WH-2", "queued", 0),
    ]
    for row in rows:
        assert row["sla_deadline"] == pytest.approx(row["queued_at"] + 2 * 3600)

    events = [e.data for e in uow.emitted if isinstance(e.data, ShipmentQueued)]
    assert len(events) == len(uow.emitted) == 2
    assert all(e.causation_id == env.event_id and e.correlation_id == order_id for e in uow.emitted)
    lines = {e.warehouse: [(line.sku, line.quantity) for line in e.lines] for e in events}
    assert lines == {"WH-1": [("TEA-001", 2), ("POT-003", 1)], "WH-2": [("CUP-002", 1)]}
    assert {e.shipment_id for e in events} == {r["shipment_id"] for r in rows}


async def test_a_repeated_reservation_queues_nothing_more(db: Database) -> None:
    first = reservation(("TEA-001", "WH-1", 2), ("CUP-002", "WH-2", 1))
    await queue(db, first)
    again = reservation(("TEA-001", "WH-1", 2), ("CUP-002", "WH-2", 1), order_id=first.key)

    uow = await queue(db, again)

    assert uow.emitted == []
    assert len(await rows_of(db, first.key)) == 2


async def test_a_reservation_repeated_within_one_batch_queues_once(db: Database) -> None:
    first = reservation(("TEA-001", "WH-1", 2))
    again = reservation(("TEA-001", "WH-1", 2), order_id=first.key)

    uow = await queue(db, first, again)

    assert len(uow.emitted) == 1
    assert len(await rows_of(db, first.key)) == 1


async def test_sla_hours_are_configurable(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1), priority="low")
    uow = await queue(db, env, sla={**SLA, "low": 5.0})

    (row,) = await rows_of(db, env.key)
    assert row["sla_deadline"] - row["queued_at"] == pytest.approx(5 * 3600)
    queued = uow.emitted[0].data
    assert isinstance(queued, ShipmentQueued)
    assert queued.sla_deadline.timestamp() == pytest.approx(row["sla_deadline"])


async def test_the_work_queue_is_ordered_by_priority_then_deadline_then_arrival(
    db: Database,
) -> None:
    low = reservation(("TEA-001", "WH-1", 1), priority="low")
    normal_late = reservation(("TEA-001", "WH-1", 1), priority="normal")
    urgent = reservation(("TEA-001", "WH-1", 1), priority="urgent")
    await queue(db, low, normal_late, urgent, sla={**SLA, "normal": 48.0})
    # Arrives later but is due sooner than normal_late.
    normal_soon = reservation(("TEA-001", "WH-1", 1), priority="normal")
    await queue(db, normal_soon)
    # Two shipments due at the same time: the one queued first comes first.
    tie_first = reservation(("TEA-001", "WH-1", 1), priority="high")
    await queue(db, tie_first)
    tie_second = reservation(("TEA-001", "WH-1", 1), priority="high")
    await queue(db, tie_second)
    async with db.transaction() as conn:
        await conn.execute(
            update(shipments)
            .where(shipments.c.order_id.in_([tie_first.key, tie_second.key]))
            .values(sla_deadline=2e9)
        )
    shipped = reservation(("TEA-001", "WH-1", 1), priority="urgent")
    await queue(db, shipped)
    async with db.transaction() as conn:
        await conn.execute(
            update(shipments).where(shipments.c.order_id == shipped.key).values(status="shipped")
        )

    async with db.reading() as conn:
        listed = await views.work_queue(conn, limit=10)

    assert [s["order_id"] for s in listed] == [
        urgent.key,
        tie_first.key,
        tie_second.key,
        normal_soon.key,
        normal_late.key,
        low.key,
    ]
    async with db.reading() as conn:
        assert len(await views.work_queue(conn, limit=2)) == 2


async def test_commands_move_a_shipment_along_and_log_who_did_it(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 2), priority="high")
    await queue(db, env)
    order_id = env.key
    metrics = new_metrics()

    picked, uow = await command(
        db, "pick", ShipmentCommand(order_id=order_id, actor="ana"), metrics
    )
    assert [s["status"] for s in picked] == ["picked"]
    assert isinstance(uow.emitted[0].data, ShipmentPicked)
    assert uow.emitted[0].data.actor == "ana"

    await command(db, "pack", ShipmentCommand(order_id=order_id, actor="ana"), metrics)
    shipped, uow = await command(
        db,
        "ship",
        ShipCommand(order_id=order_id, actor="bo", carrier="SF-EXPRESS", tracking_number="SF123"),
        metrics,
    )
    assert [(s["status"], s["carrier"], s["tracking_number"]) for s in shipped] == [
        ("shipped", "SF-EXPRESS", "SF123")
    ]
    event = uow.emitted[0].data
    assert isinstance(event, ShipmentShipped)
    assert [(line.sku, line.warehouse, line.quantity) for line in event.lines] == [
        ("TEA-001", "WH-1", 2)
    ]
    assert (event.carrier, event.tracking_number, event.channel, event.priority) == (
        "SF-EXPRESS",
        "SF123",
        "web",
        "high",
    )

    delivered, uow = await command(
        db, "deliver", ShipmentCommand(order_id=order_id, actor="driver"), metrics
    )
    assert delivered[0]["status"] == "delivered"
    assert delivered[0]["delivered_at"] is not None
    assert isinstance(uow.emitted[0].data, ShipmentDelivered)

    async with db.reading() as conn:
        (shipment,) = await views.shipments_of(conn, order_id)
    assert shipment["status"] == "delivered"
    assert [(e["action"], e["actor"]) for e in shipment["log"]] == [
        ("queue", "system"),
        ("pick", "ana"),
        ("pack", "ana"),
        ("ship", "bo"),
        ("deliver", "driver"),
    ]
    assert "SF123" in shipment["log"][3]["detail"]
    for stage in ("shipped", "delivered"):
        count = metrics.common.registry.get_sample_value(
            "orderflow_stage_latency_seconds_count",
            {"stage": stage, "channel": "web", "priority": "high"},
        )
        assert count == 1


async def test_an_illegal_move_is_refused_with_its_reason_and_changes_nothing(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1))
    await queue(db, env)
    await command(db, "pick", ShipmentCommand(order_id=env.key))
    await command(db, "pack", ShipmentCommand(order_id=env.key))
    (row,) = await rows_of(db, env.key)

    with pytest.raises(CommandRefused) as refused:
        await command(db, "deliver", ShipmentCommand(order_id=env.key))

    assert (
        refused.value.reason
        == f"cannot deliver order {env.key}: shipment {row['shipment_id']} is packed, "
        "not shipped or delivery_failed"
    )
    assert not isinstance(refused.value, handlers.ShipmentNotFound)
    (after,) = await rows_of(db, env.key)
    assert after["status"] == "packed"


async def test_a_command_for_an_unknown_order_is_refused_as_not_found(db: Database) -> None:
    order_id = uuid7()
    with pytest.raises(handlers.ShipmentNotFound) as refused:
        await command(db, "pick", ShipmentCommand(order_id=order_id))
    assert refused.value.reason == f"no shipment for order {order_id}"


async def test_a_command_can_name_one_shipment_of_an_order(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1), ("CUP-002", "WH-2", 1))
    await queue(db, env)
    wh1, wh2 = await rows_of(db, env.key)

    picked, _ = await command(
        db, "pick", ShipmentCommand(order_id=env.key, shipment_id=wh2["shipment_id"])
    )
    assert [s["warehouse"] for s in picked] == ["WH-2"]
    assert [r["status"] for r in await rows_of(db, env.key)] == ["queued", "picked"]

    picked, _ = await command(db, "pick", ShipmentCommand(order_id=env.key))
    assert [s["shipment_id"] for s in picked] == [wh1["shipment_id"]]

    with pytest.raises(CommandRefused, match="is picked, not queued"):
        await command(db, "pick", ShipmentCommand(order_id=env.key))


async def test_an_order_counts_as_shipped_only_when_its_last_shipment_ships(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1), ("CUP-002", "WH-2", 1))
    await queue(db, env)
    wh1, wh2 = await rows_of(db, env.key)
    metrics = new_metrics()
    labels = {"stage": "shipped", "channel": "web", "priority": "normal"}
    for action in ("pick", "pack"):
        await command(db, action, ShipmentCommand(order_id=env.key))

    await command(
        db,
        "ship",
        ShipCommand(
            order_id=env.key, shipment_id=wh1["shipment_id"], carrier="C", tracking_number="1"
        ),
        metrics,
    )
    assert (
        metrics.common.registry.get_sample_value("orderflow_stage_latency_seconds_count", labels)
        is None
    )
    await command(
        db,
        "ship",
        ShipCommand(
            order_id=env.key, shipment_id=wh2["shipment_id"], carrier="C", tracking_number="2"
        ),
        metrics,
    )
    assert (
        metrics.common.registry.get_sample_value("orderflow_stage_latency_seconds_count", labels)
        == 1
    )


async def test_refused_commands_in_a_batch_do_not_hold_back_the_others(db: Database) -> None:
    ready = reservation(("TEA-001", "WH-1", 1))
    await queue(db, ready)
    unknown = uuid7()

    async def work(uow: UnitOfWork) -> list[list[dict[str, Any]] | domain.Refusal]:
        return await handlers.apply_commands(
            uow,
            "pick",
            [
                ShipmentCommand(order_id=unknown),
                ShipmentCommand(order_id=ready.key),
                ShipmentCommand(order_id=ready.key),
            ],
            new_metrics(),
        )

    outcomes, uow = await in_transaction(db, work)

    assert outcomes[0] == domain.Refusal(f"no shipment for order {unknown}", unknown=True)
    assert isinstance(outcomes[1], list) and outcomes[1][0]["status"] == "picked"
    # The second pick of the same order sees the first one's result.
    assert isinstance(outcomes[2], domain.Refusal) and "is picked, not queued" in outcomes[2].reason
    assert len(uow.emitted) == 1
    assert [r["status"] for r in await rows_of(db, ready.key)] == ["picked"]


# The simulator works through the service's runtime (rt.execute), as it does when deployed.


@pytest.fixture
async def service() -> AsyncIterator[Any]:
    settings = FulfillmentSettings(
        database_url="sqlite+aiosqlite:///:memory:",
        simulator_min_delay_s=0.0,
        simulator_max_delay_s=0.0,
    )
    rt = create_service(settings)
    await rt.db.create_schema()
    yield rt, settings
    await rt.outbox.drain()
    await rt.db.close()


async def test_a_simulator_tick_advances_a_queued_shipment(service: Any) -> None:
    rt, settings = service
    env = reservation(("TEA-001", "WH-1", 1))
    await queue(rt.db, env)
    simulator = WarehouseSimulator(rt, settings)

    assert await simulator.tick() == 1

    (row,) = await rows_of(rt.db, env.key)
    assert (row["status"], row["updated_by"]) == ("picked", "simulator")
    for _ in range(3):
        await simulator.tick()
    (row,) = await rows_of(rt.db, env.key)
    assert (row["status"], row["carrier"]) == ("delivered", "SIM-POST")
    assert row["tracking_number"]
    assert await simulator.tick() == 0


async def test_the_simulator_leaves_alone_a_shipment_an_operator_moved_meanwhile(
    service: Any,
) -> None:
    rt, settings = service
    env = reservation(("TEA-001", "WH-1", 1))
    await queue(rt.db, env)
    simulator = WarehouseSimulator(rt, settings)
    due = await simulator.due(datetime.now(UTC).timestamp())
    assert [s["order_id"] for s in due] == [env.key]

    await rt.rpc.commands["pick"]({"order_id": env.key, "actor": "ana"})
    moved = await simulator.advance(due)

    assert moved == 0
    (row,) = await rows_of(rt.db, env.key)
    assert (row["status"], row["updated_by"]) == ("picked", "ana")


async def test_the_simulator_waits_for_a_shipments_delay(service: Any) -> None:
    rt, _ = service
    slow = FulfillmentSettings(simulator_min_delay_s=60.0, simulator_max_delay_s=120.0)
    env = reservation(("TEA-001", "WH-1", 1))
    await queue(rt.db, env)
    simulator = WarehouseSimulator(rt, slow)

    assert await simulator.due(datetime.now(UTC).timestamp()) == []
    assert len(await simulator.due(datetime.now(UTC).timestamp() + 121)) == 1


async def ship_it(db: Database, order_id: str, metrics: FulfillmentMetrics | None = None) -> None:
    for action in ("pick", "pack"):
        await command(db, action, ShipmentCommand(order_id=order_id), metrics)
    await command(
        db,
        "ship",
        ShipCommand(order_id=order_id, carrier="SF-EXPRESS", tracking_number="SF9"),
        metrics,
    )


async def test_a_failed_delivery_is_the_ship_delay_exception_and_is_retried(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1))
    await queue(db, env)
    await ship_it(db, env.key)
    metrics = new_metrics()

    failed, uow = await command(
        db,
        "delivery-failed",
        DeliveryFailedCommand(order_id=env.key, actor="sf-courier", reason="nobody at home"),
        metrics,
    )

    assert [(s["status"], s["failed_deliveries"]) for s in failed] == [("delivery_failed", 1)]
    (event,) = [e.data for e in uow.emitted]
    assert isinstance(event, ShipmentDeliveryFailed)
    assert (event.reason, event.attempt, event.carrier, event.tracking_number) == (
        "nobody at home",
        1,
        "SF-EXPRESS",
        "SF9",
    )
    failed, uow = await command(
        db, "delivery-failed", DeliveryFailedCommand(order_id=env.key), metrics
    )
    assert failed[0]["failed_deliveries"] == 2
    assert isinstance(uow.emitted[0].data, ShipmentDeliveryFailed)
    assert uow.emitted[0].data.attempt == 2

    delivered, uow = await command(db, "deliver", ShipmentCommand(order_id=env.key), metrics)

    assert delivered[0]["status"] == "delivered"
    assert isinstance(uow.emitted[0].data, ShipmentDelivered)
    async with db.reading() as conn:
        (shipment,) = await views.shipments_of(conn, env.key)
    assert [(e["action"], e["detail"]) for e in shipment["log"][-3:]] == [
        ("delivery-failed", "failed delivery 1: nobody at home"),
        ("delivery-failed", "failed delivery 2: the carrier reported the delivery failed"),
        ("deliver", None),
    ]
    outcomes = {
        outcome: metrics.common.registry.get_sample_value(
            "orderflow_fulfillment_shipments_total", {"outcome": outcome}
        )
        for outcome in ("delivery_failed", "delivered")
    }
    assert outcomes == {"delivery_failed": 2.0, "delivered": 1.0}


async def test_time_in_each_stage_is_observed_by_priority(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1), priority="urgent")
    await queue(db, env)
    # The shipment has waited 90 s in the queue.
    async with db.transaction() as conn:
        await conn.execute(
            update(shipments)
            .where(shipments.c.order_id == env.key)
            .values(updated_at=shipments.c.updated_at - 90)
        )
    metrics = new_metrics()

    await command(db, "pick", ShipmentCommand(order_id=env.key), metrics)

    def sample(name: str, stage: str) -> float | None:
        return metrics.common.registry.get_sample_value(
            f"orderflow_fulfillment_stage_duration_seconds_{name}",
            {"stage": stage, "priority": "urgent"},
        )

    assert sample("count", "queued") == 1
    assert 90 <= (sample("sum", "queued") or 0) < 100
    assert sample("count", "picked") is None
    await command(db, "pack", ShipmentCommand(order_id=env.key), metrics)
    assert sample("count", "picked") == 1


async def test_a_refused_command_is_not_counted(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1))
    await queue(db, env)
    metrics = new_metrics()
    with pytest.raises(CommandRefused):
        await command(db, "pack", ShipmentCommand(order_id=env.key), metrics)
    assert (
        metrics.common.registry.get_sample_value(
            "orderflow_fulfillment_shipments_total", {"outcome": "packed"}
        )
        is None
    )


async def test_the_prices_of_a_reservation_are_kept_for_refunds(db: Database) -> None:
    priced = reservation(("TEA-001", "WH-1", 2), prices={"TEA-001": "12.50"}, currency="EUR")
    bare = reservation(("TEA-001", "WH-1", 2))
    await queue(db, priced, bare)

    async with db.reading() as conn:
        found = {
            r.order_id: (r.currency, r.unit_prices, r.status)
            for r in await conn.execute(
                select(orders).where(orders.c.order_id.in_([priced.key, bare.key]))
            )
        }
    assert found == {
        priced.key: ("EUR", b'{"TEA-001":"12.50"}', "open"),
        bare.key: (None, None, "open"),
    }


async def test_the_simulator_fails_deliveries_at_its_rate_and_retries_them(service: Any) -> None:
    rt, _ = service
    settings = FulfillmentSettings(
        simulator_min_delay_s=0.0, simulator_max_delay_s=0.0, simulator_failure_rate=0.5
    )
    envs = [reservation(("TEA-001", "WH-1", 1)) for _ in range(20)]
    await queue(rt.db, *envs)
    simulator = WarehouseSimulator(rt, settings, rng=random.Random(7))

    for _ in range(3):
        await simulator.tick()
    await simulator.tick()
    statuses = [r["status"] for e in envs for r in await rows_of(rt.db, e.key)]
    assert {"delivered", "delivery_failed"} == set(statuses)
    for _ in range(30):
        if not await simulator.tick():
            break
    rows = [r for e in envs for r in await rows_of(rt.db, e.key)]
    assert {r["status"] for r in rows} == {"delivered"}
    assert sum(r["failed_deliveries"] for r in rows) >= 5
