"""SLA deadlines with a controllable clock: overdue once, escalated once, never after shipping."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.fulfillment import handlers, views
from services.fulfillment.app import SlaWatch, create_service
from services.fulfillment.metrics import FulfillmentMetrics
from services.fulfillment.models import metadata
from services.fulfillment.settings import FulfillmentSettings
from shared.consumer import UnitOfWork
from shared.contracts.fulfillment import ShipmentEscalated, ShipmentOverdue
from shared.db import Database
from shared.runtime import ServiceRuntime
from tests.plans import full_scans
from tests.unit.test_fulfillment_handlers import (
    SLA,
    in_transaction,
    new_metrics,
    queue,
    reservation,
    rows_of,
    ship_it,
)

HOUR = 3600.0


@pytest.fixture
async def db() -> AsyncIterator[Database]:
    database = Database("sqlite+aiosqlite:///:memory:", metadata)
    await database.create_schema()
    yield database
    await database.close()


async def check(
    db: Database, now: float, metrics: FulfillmentMetrics | None = None, limit: int = 500
) -> tuple[tuple[int, int], UnitOfWork]:
    m = metrics or new_metrics()

    async def work(uow: UnitOfWork) -> tuple[int, int]:
        return await handlers.check_sla(uow, now, m, limit)

    return await in_transaction(db, work)


async def queued_at(db: Database, order_id: str) -> float:
    (row,) = await rows_of(db, order_id)
    return float(row["queued_at"])


async def test_a_shipment_is_overdue_once_then_escalated_once(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1), priority="urgent")  # 2 h SLA, escalated at 4 h
    await queue(db, env)
    t0 = await queued_at(db, env.key)
    metrics = new_metrics()

    assert (await check(db, t0 + 2 * HOUR - 1, metrics))[0] == (0, 0)

    flagged, uow = await check(db, t0 + 2 * HOUR + 1, metrics)
    assert flagged == (1, 0)
    (event,) = [e.data for e in uow.emitted]
    assert isinstance(event, ShipmentOverdue)
    assert (event.order_id, event.status, event.priority, event.channel) == (
        env.key,
        "queued",
        "urgent",
        "web",
    )
    assert event.sla_deadline.timestamp() == pytest.approx(t0 + 2 * HOUR)
    assert event.escalation_deadline.timestamp() == pytest.approx(t0 + 4 * HOUR)

    assert (await check(db, t0 + 3 * HOUR, metrics))[0] == (0, 0)

    flagged, uow = await check(db, t0 + 4 * HOUR + 1, metrics)
    assert flagged == (0, 1)
    assert isinstance(uow.emitted[0].data, ShipmentEscalated)

    assert (await check(db, t0 + 100 * HOUR, metrics))[0] == (0, 0)
    breaches = {
        level: metrics.common.registry.get_sample_value(
            "orderflow_fulfillment_sla_breaches_total", {"priority": "urgent", "level": level}
        )
        for level in ("overdue", "escalated")
    }
    assert breaches == {"overdue": 1.0, "escalated": 1.0}
    async with db.reading() as conn:
        (shipment,) = await views.shipments_of(conn, env.key)
    assert [e["action"] for e in shipment["log"]] == ["queue", "overdue", "escalate"]
    assert shipment["overdue"] and shipment["escalated"]


async def test_a_long_pause_flags_overdue_and_escalated_in_one_pass(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1), priority="high")
    await queue(db, env)
    t0 = await queued_at(db, env.key)

    flagged, uow = await check(db, t0 + 50 * HOUR)

    assert flagged == (1, 1)
    assert [e.type for e in uow.emitted] == ["shipment_overdue", "shipment_escalated"]


async def test_a_shipped_shipment_is_never_overdue(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1), priority="urgent")
    await queue(db, env)
    t0 = await queued_at(db, env.key)
    await ship_it(db, env.key)

    assert (await check(db, t0 + 100 * HOUR))[0] == (0, 0)


async def test_a_shipment_shipped_after_its_overdue_is_not_escalated(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1), priority="urgent")
    await queue(db, env)
    t0 = await queued_at(db, env.key)
    assert (await check(db, t0 + 3 * HOUR))[0] == (1, 0)
    await ship_it(db, env.key)

    assert (await check(db, t0 + 100 * HOUR))[0] == (0, 0)


async def test_deadlines_follow_each_priority(db: Database) -> None:
    envs = {p: reservation(("TEA-001", "WH-1", 1), priority=p) for p in SLA}
    await queue(db, *envs.values())
    t0 = max([await queued_at(db, e.key) for e in envs.values()])

    _, uow = await check(db, t0 + 9 * HOUR)

    overdue = {e.data.priority for e in uow.emitted if isinstance(e.data, ShipmentOverdue)}
    assert overdue == {"urgent", "high"}


async def test_a_pass_flags_at_most_its_batch(db: Database) -> None:
    envs = [reservation(("TEA-001", "WH-1", 1), priority="urgent") for _ in range(5)]
    await queue(db, *envs)
    later = max([await queued_at(db, e.key) for e in envs]) + 3 * HOUR

    assert (await check(db, later, limit=3))[0] == (3, 0)
    assert (await check(db, later, limit=3))[0] == (2, 0)
    assert (await check(db, later, limit=3))[0] == (0, 0)


@pytest.fixture
async def rt() -> AsyncIterator[ServiceRuntime]:
    runtime = create_service(FulfillmentSettings(database_url="sqlite+aiosqlite:///:memory:"))
    await runtime.db.create_schema()
    yield runtime
    await runtime.outbox.drain()
    await runtime.db.close()


async def test_the_sla_job_flags_through_the_outbox_and_sets_the_queue_depth(
    rt: ServiceRuntime,
) -> None:
    urgent = reservation(("TEA-001", "WH-1", 1), priority="urgent")
    low = reservation(("TEA-001", "WH-1", 1), priority="low")
    metrics = FulfillmentMetrics.of(rt.metrics)
    await queue(rt.db, urgent, low, metrics=metrics)
    t0 = await queued_at(rt.db, urgent.key)
    clock: dict[str, float] = {"now": t0}
    watch = SlaWatch(rt, metrics, FulfillmentSettings(), clock=lambda: clock["now"])

    assert await watch.tick() == (0, 0)

    def depth(priority: str) -> Any:
        return rt.metrics.registry.get_sample_value(
            "orderflow_fulfillment_queue_depth", {"priority": priority, "status": "queued"}
        )

    assert (depth("urgent"), depth("low"), depth("high")) == (1, 1, 0)
    clock["now"] = t0 + 2 * HOUR + 60
    assert await watch.tick() == (1, 0)
    async with rt.db.reading() as conn:
        assert await views.overdue_count(conn) == 1
    await rt.rpc.commands["pick"]({"order_id": urgent.key})
    await watch.tick()
    assert rt.metrics.registry.get_sample_value(
        "orderflow_fulfillment_queue_depth", {"priority": "urgent", "status": "picked"}
    ) == (1)
    assert depth("urgent") == 0


async def test_the_sla_job_searches_never_scans_the_shipments_ever_made(
    rt: ServiceRuntime,
) -> None:
    # It runs every sla_check_s for as long as the service runs; shipments and their log grow
    # with every order ever taken (those still in the warehouse are what it may read).
    metrics = FulfillmentMetrics.of(rt.metrics)
    await queue(rt.db, reservation(("TEA-001", "WH-1", 1), priority="urgent"), metrics=metrics)
    watch = SlaWatch(rt, metrics, FulfillmentSettings(), clock=lambda: time.time() + 9 * HOUR)

    found = await full_scans(rt.db, ("shipments", "shipment_log"), watch.tick)

    assert found == []
