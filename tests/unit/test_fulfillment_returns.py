"""Returns: requested, then received (inventory restocks), then a refund-due event for finance
with the amount paid - or, without prices, no made-up amount."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from services.fulfillment import handlers, returns, views
from services.fulfillment.metrics import FulfillmentMetrics
from services.fulfillment.models import metadata
from shared.consumer import UnitOfWork
from shared.contracts.fulfillment import (
    RefundDue,
    ReturnLine,
    ReturnReceipt,
    ReturnReceived,
    ReturnRequest,
    ReturnRequested,
    ShipmentCommand,
)
from shared.db import Database
from shared.ids import uuid7
from shared.rpc import CommandRefused
from tests.unit.test_fulfillment_handlers import (
    command,
    in_transaction,
    new_metrics,
    queue,
    reservation,
    ship_it,
)

PRICES = {"TEA-001": "12.50", "CUP-002": "3.35"}


@pytest.fixture
async def db() -> AsyncIterator[Database]:
    database = Database("sqlite+aiosqlite:///:memory:", metadata)
    await database.create_schema()
    yield database
    await database.close()


async def delivered_order(db: Database, *allocations: tuple[str, str, int], **kw: Any) -> str:
    env = reservation(*allocations, **kw)
    await queue(db, env)
    await ship_it(db, env.key)
    await command(db, "deliver", ShipmentCommand(order_id=env.key))
    return env.key


async def request(
    db: Database, cmd: ReturnRequest, metrics: FulfillmentMetrics | None = None
) -> tuple[list[dict[str, Any]], UnitOfWork]:
    m = metrics or new_metrics()

    async def work(uow: UnitOfWork) -> list[dict[str, Any]]:
        return await returns.request_return(uow, cmd, m)

    return await in_transaction(db, work)


async def receive(
    db: Database, cmd: ReturnReceipt, metrics: FulfillmentMetrics | None = None
) -> tuple[list[dict[str, Any]], UnitOfWork]:
    m = metrics or new_metrics()

    async def work(uow: UnitOfWork) -> list[dict[str, Any]]:
        return await returns.receive_return(uow, cmd, m)

    return await in_transaction(db, work)


async def test_a_return_goes_requested_received_and_refunds_the_price_paid(db: Database) -> None:
    order_id = await delivered_order(
        db, ("TEA-001", "WH-1", 3), ("CUP-002", "WH-1", 1), prices=PRICES
    )
    metrics = new_metrics()

    created, uow = await request(
        db,
        ReturnRequest(
            order_id=order_id,
            lines=[ReturnLine(sku="TEA-001", quantity=2)],
            reason="too strong",
            actor="desk",
        ),
        metrics,
    )

    ((ret,),) = [created]
    assert (ret["status"], ret["lines"], ret["requested_by"]) == (
        "requested",
        {"TEA-001": 2},
        "desk",
    )
    (requested,) = [e.data for e in uow.emitted]
    assert isinstance(requested, ReturnRequested)
    assert [(x.sku, x.warehouse, x.quantity) for x in requested.lines] == [("TEA-001", "WH-1", 2)]
    assert requested.return_id == ret["return_id"]

    received, uow = await receive(db, ReturnReceipt(order_id=order_id, actor="wh-ana"), metrics)

    assert [(r["status"], r["received_by"], r["refund_amount"]) for r in received] == [
        ("received", "wh-ana", "25.00")
    ]
    got, refund = (e.data for e in uow.emitted)
    assert isinstance(got, ReturnReceived)
    assert (got.return_id, got.actor) == (ret["return_id"], "wh-ana")
    assert [(x.sku, x.warehouse, x.quantity) for x in got.lines] == [("TEA-001", "WH-1", 2)]
    assert isinstance(refund, RefundDue)
    assert (refund.amount, refund.currency, refund.return_id) == (
        Decimal("25.00"),
        "CNY",
        ret["return_id"],
    )
    assert "2 x TEA-001 at 12.50" in refund.reason
    sample = metrics.common.registry.get_sample_value
    for outcome in ("requested", "received", "refund_due"):
        assert sample("orderflow_fulfillment_returns_total", {"outcome": outcome}) == 1

    async with db.reading() as conn:
        (shipment,) = await views.shipments_of(conn, order_id)
    assert [r["status"] for r in shipment["returns"]] == ["received"]
    assert [e["action"] for e in shipment["log"][-2:]] == ["return", "return-received"]


async def test_the_rest_can_be_returned_later_but_never_more_than_delivered(db: Database) -> None:
    order_id = await delivered_order(db, ("TEA-001", "WH-1", 3), prices=PRICES)
    await request(
        db, ReturnRequest(order_id=order_id, lines=[ReturnLine(sku="TEA-001", quantity=2)])
    )

    with pytest.raises(CommandRefused, match="TEA-001: 2 requested, 1 delivered and not returned"):
        await request(
            db, ReturnRequest(order_id=order_id, lines=[ReturnLine(sku="TEA-001", quantity=2)])
        )
    rest, _ = await request(db, ReturnRequest(order_id=order_id))
    assert [r["lines"] for r in rest] == [{"TEA-001": 1}]
    with pytest.raises(CommandRefused, match="already returned"):
        await request(db, ReturnRequest(order_id=order_id))


async def test_a_split_order_returns_per_shipment(db: Database) -> None:
    order_id = await delivered_order(
        db, ("TEA-001", "WH-1", 1), ("CUP-002", "WH-2", 2), prices=PRICES
    )

    created, _ = await request(db, ReturnRequest(order_id=order_id))
    _, uow = await receive(db, ReturnReceipt(order_id=order_id))

    assert sorted((r["warehouse"], r["lines"]) for r in created) == [
        ("WH-1", {"TEA-001": 1}),
        ("WH-2", {"CUP-002": 2}),
    ]
    refunds = sorted(e.data.amount for e in uow.emitted if isinstance(e.data, RefundDue))
    assert refunds == [Decimal("6.70"), Decimal("12.50")]
    restocked = sorted(
        (line.warehouse, line.sku, line.quantity)
        for e in uow.emitted
        if isinstance(e.data, ReturnReceived)
        for line in e.data.lines
    )
    assert restocked == [("WH-1", "TEA-001", 1), ("WH-2", "CUP-002", 2)]


async def test_without_prices_the_return_is_received_but_no_refund_amount_is_invented(
    db: Database,
) -> None:
    order_id = await delivered_order(db, ("TEA-001", "WH-1", 1))
    await request(db, ReturnRequest(order_id=order_id))
    metrics = new_metrics()

    received, uow = await receive(db, ReturnReceipt(order_id=order_id), metrics)

    assert [e.type for e in uow.emitted] == ["return_received"]
    assert received[0]["refund_amount"] is None
    assert received[0]["refund_note"] == (
        "no refund event sent: the reservation carried no prices, so the refund cannot be computed"
    )
    assert (
        metrics.common.registry.get_sample_value(
            "orderflow_fulfillment_returns_total", {"outcome": "refund_unpriced"}
        )
        == 1
    )


async def test_only_delivered_goods_can_be_returned(db: Database) -> None:
    env = reservation(("TEA-001", "WH-1", 1))
    await queue(db, env)
    await ship_it(db, env.key)

    with pytest.raises(CommandRefused, match="has no delivered shipment"):
        await request(db, ReturnRequest(order_id=env.key))
    with pytest.raises(handlers.ShipmentNotFound):
        await request(db, ReturnRequest(order_id=uuid7()))


async def test_receiving_needs_a_requested_return_and_happens_once(db: Database) -> None:
    order_id = await delivered_order(db, ("TEA-001", "WH-1", 1), prices=PRICES)
    with pytest.raises(handlers.ShipmentNotFound, match="no return requested"):
        await receive(db, ReturnReceipt(order_id=order_id))
    created, _ = await request(db, ReturnRequest(order_id=order_id))
    with pytest.raises(handlers.ShipmentNotFound, match="no return R-x requested"):
        await receive(db, ReturnReceipt(order_id=order_id, return_id="R-x"))

    await receive(db, ReturnReceipt(order_id=order_id, return_id=created[0]["return_id"]))

    with pytest.raises(CommandRefused, match="already received"):
        await receive(db, ReturnReceipt(order_id=order_id))
