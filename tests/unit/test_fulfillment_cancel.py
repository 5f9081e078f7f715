"""Fulfillment as the arbiter of a cancel request: cancel what has not shipped, refuse what has,
remember a cancelled order so its late reservation is never queued."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from services.fulfillment import handlers, views
from services.fulfillment.metrics import FulfillmentMetrics
from services.fulfillment.models import metadata, orders, shipment_log
from shared.consumer import UnitOfWork
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.fulfillment import (
    CancellationRefused,
    OrderCancelled,
    ShipCommand,
    ShipmentCommand,
)
from shared.contracts.intake import OrderCancelRequested
from shared.db import Database
from shared.ids import uuid7
from shared.rpc import CommandRefused
from tests.unit.test_fulfillment_handlers import (
    command,
    in_transaction,
    new_metrics,
    queue,
    reservation,
    rows_of,
    ship_it,
)


@pytest.fixture
async def db() -> AsyncIterator[Database]:
    database = Database("sqlite+aiosqlite:///:memory:", metadata)
    await database.create_schema()
    yield database
    await database.close()


def cancel_request(order_id: str, reason: str = "changed my mind", actor: str = "mei") -> Envelope:
    return new_envelope(OrderCancelRequested(order_id=order_id, reason=reason, actor=actor))


async def cancel(
    db: Database, *requests: Envelope, metrics: FulfillmentMetrics | None = None
) -> UnitOfWork:
    m = metrics or new_metrics()

    async def work(uow: UnitOfWork) -> None:
        await handlers.cancel_orders(uow, list(requests), m)

    return (await in_transaction(db, work))[1]


def answers(uow: UnitOfWork) -> list[tuple[str, str]]:
    out = []
    for env in uow.emitted:
        assert isinstance(env.data, OrderCancelled | CancellationRefused)
        out.append((env.type, env.data.reason))
    return out


async def test_a_cancel_before_shipping_stops_every_shipment_of_the_order(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1), ("CUP-002", "WH-2", 1))
    await queue(db, env)
    await command(db, "pick", ShipmentCommand(order_id=env.key))
    request = cancel_request(env.key)
    metrics = new_metrics()

    uow = await cancel(db, request, metrics=metrics)

    assert answers(uow) == [("order_cancelled", "changed my mind")]
    assert uow.emitted[0].causation_id == request.event_id
    assert uow.emitted[0].data.actor == "mei"  # type: ignore[attr-defined]
    rows = await rows_of(db, env.key)
    assert [(r["status"], r["updated_by"]) for r in rows] == [("cancelled", "mei")] * 2
    async with db.reading() as conn:
        assert await views.work_queue(conn, limit=10) == []
        (shipment, _) = await views.shipments_of(conn, env.key)
    assert shipment["log"][-1]["action"] == "cancel"
    assert shipment["log"][-1]["detail"] == "changed my mind"
    sample = metrics.common.registry.get_sample_value
    assert sample("orderflow_fulfillment_cancellations_total", {"outcome": "cancelled"}) == 1
    assert sample("orderflow_fulfillment_shipments_total", {"outcome": "cancelled"}) == 2


async def test_a_cancelled_order_can_no_longer_be_moved(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1))
    await queue(db, env)
    await command(db, "pick", ShipmentCommand(order_id=env.key))
    await command(db, "pack", ShipmentCommand(order_id=env.key))
    await cancel(db, cancel_request(env.key))

    with pytest.raises(CommandRefused, match="is cancelled, not packed"):
        await command(db, "ship", ShipCommand(order_id=env.key, carrier="SF", tracking_number="1"))


async def test_a_cancel_after_shipping_is_refused_with_the_reason(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1))
    await queue(db, env)
    await ship_it(db, env.key)
    (row,) = await rows_of(db, env.key)

    uow = await cancel(db, cancel_request(env.key))

    assert answers(uow) == [
        (
            "cancellation_refused",
            f"too late to cancel order {env.key}: shipment {row['shipment_id']} is shipped "
            "with SF-EXPRESS SF9",
        )
    ]
    assert [r["status"] for r in await rows_of(db, env.key)] == ["shipped"]


async def test_one_parcel_gone_refuses_the_whole_order(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1), ("CUP-002", "WH-2", 1))
    await queue(db, env)
    wh1, _ = await rows_of(db, env.key)
    for action in ("pick", "pack"):
        await command(db, action, ShipmentCommand(order_id=env.key))
    await command(
        db,
        "ship",
        ShipCommand(
            order_id=env.key, shipment_id=wh1["shipment_id"], carrier="SF", tracking_number="1"
        ),
    )

    uow = await cancel(db, cancel_request(env.key))

    assert [t for t, _ in answers(uow)] == ["cancellation_refused"]
    assert [r["status"] for r in await rows_of(db, env.key)] == ["shipped", "packed"]


async def test_cancelling_twice_gives_one_cancellation(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1))
    await queue(db, env)

    first = await cancel(db, cancel_request(env.key))
    again = await cancel(db, cancel_request(env.key, reason="really"))

    assert [t for t, _ in answers(first)] == ["order_cancelled"]
    assert answers(again) == [("cancellation_refused", f"order {env.key} is already cancelled")]
    async with db.reading() as conn:
        cancels = await conn.scalar(
            select(func.count())
            .select_from(shipment_log)
            .where(shipment_log.c.order_id == env.key, shipment_log.c.action == "cancel")
        )
        reason = await conn.scalar(
            select(orders.c.cancel_reason).where(orders.c.order_id == env.key)
        )
    assert (cancels, reason) == (1, "changed my mind")


async def test_two_requests_in_one_batch_give_one_cancellation(db: Database) -> None:
    queued = reservation(("TEA-001", "WH-1", 1))
    await queue(db, queued)
    unseen = uuid7()

    uow = await cancel(
        db,
        cancel_request(queued.key),
        cancel_request(unseen),
        cancel_request(queued.key),
        cancel_request(unseen),
    )

    assert [(e.key, e.type) for e in uow.emitted] == [
        (queued.key, "order_cancelled"),
        (unseen, "order_cancelled"),
        (queued.key, "cancellation_refused"),
        (unseen, "cancellation_refused"),
    ]


async def test_an_order_cancelled_before_its_reservation_is_never_queued(db: Database) -> None:
    order_id = uuid7()
    metrics = new_metrics()

    cancelled = await cancel(db, cancel_request(order_id, reason="ordered by mistake"))
    late = await queue(db, reservation(("TEA-001", "WH-1", 1), order_id=order_id), metrics=metrics)

    assert answers(cancelled) == [("order_cancelled", "ordered by mistake")]
    # Nothing queued and nothing emitted: inventory releases the stock on OrderCancelled.
    assert late.emitted == []
    assert await rows_of(db, order_id) == []
    sample = metrics.common.registry.get_sample_value
    assert sample("orderflow_fulfillment_shipments_total", {"outcome": "dropped_cancelled"}) == 1
    async with db.reading() as conn:
        assert await views.cancellation_of(conn, order_id) is not None
        assert await views.work_queue(conn, limit=10) == []


async def test_a_reservation_and_its_cancellation_in_one_batch_each(db: Database) -> None:
    order_id = uuid7()
    await queue(db, reservation(("TEA-001", "WH-1", 1), order_id=order_id))
    uow = await cancel(db, cancel_request(order_id))
    late_repeat = await queue(db, reservation(("TEA-001", "WH-1", 1), order_id=order_id))

    assert [t for t, _ in answers(uow)] == ["order_cancelled"]
    assert late_repeat.emitted == []
    assert [r["status"] for r in await rows_of(db, order_id)] == ["cancelled"]
