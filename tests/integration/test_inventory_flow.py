"""Inventory started for real (a nats-server, SQLite and PostgreSQL): commands over NATS, and
the events of an order's life as other services publish them: accepted (also twice), cancelled
(also before it was accepted), shipped, returned."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from services.inventory.app import create_service
from shared import streams
from shared.contracts.common import Address, Customer, OrderLine, StockLine
from shared.contracts.envelope import Envelope, Event, new_envelope
from shared.contracts.fulfillment import OrderCancelled, ReturnReceived, ShipmentShipped
from shared.contracts.intake import OrderAccepted
from shared.contracts.inventory import StockReleased, StockReserved, StockReturned
from shared.ids import uuid7
from shared.rpc import CommandRefused, call
from tests.conftest import eventually, settings_for
from tests.integration.harness import nats_client, running, stream_envelopes


def order(*lines: tuple[str, int]) -> OrderAccepted:
    order_id = uuid7()
    order_lines = [OrderLine(sku=s, quantity=q, unit_price=Decimal("4.00")) for s, q in lines]
    return OrderAccepted(
        order_id=order_id,
        channel="wechat",
        external_id=f"ext-{order_id}",
        customer=Customer(name="Ada", email="ada@example.com"),
        lines=order_lines,
        currency="CNY",
        total=sum((line.unit_price * line.quantity for line in order_lines), Decimal("0.00")),
        shipping_address=Address(
            name="Ada", line1="1 Tea Road", city="Hangzhou", postal_code="310000", country="CN"
        ),
        priority="high",
        submitted_at=datetime.now(UTC),
    )


async def publish(js: JetStreamContext, data: Event, msg_id: str | None = None) -> Envelope:
    env = new_envelope(data)
    await js.publish(env.subject, env.encode(), headers={"Nats-Msg-Id": msg_id or env.event_id})
    return env


async def published(js: JetStreamContext, cls: type[Any], order_id: str) -> list[Any]:
    return [
        e.data
        for e in await stream_envelopes(js, streams.INVENTORY.name)
        if isinstance(e.data, cls) and e.key == order_id
    ]


async def consumed(js: JetStreamContext, stream: str, consumer: str) -> bool:
    info = await js.consumer_info(stream, consumer)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_an_orders_life_and_the_commands_over_nats(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    rt = create_service(settings_for(nats_url, database_url, tmp_path))
    async with running(rt), nats_client(nats_url) as (nc, js):
        await call(nc, "inventory", "restock", {"sku": "TEA-900", "quantity": 10, "actor": "t"})
        await call(
            nc, "inventory", "restock", {"sku": "TEA-900", "quantity": 2, "warehouse": "WH-2"}
        )
        adjusted = await call(
            nc,
            "inventory",
            "adjust",
            {"sku": "TEA-900", "warehouse": "WH-1", "delta": -1, "reason": "broken", "actor": "q"},
        )
        moved = await call(
            nc,
            "inventory",
            "transfer",
            {"sku": "TEA-900", "quantity": 2, "from_warehouse": "WH-2", "to_warehouse": "WH-1"},
        )
        with pytest.raises(CommandRefused, match="only 0 of TEA-900 at WH-2"):
            await call(
                nc,
                "inventory",
                "adjust",
                {"sku": "TEA-900", "warehouse": "WH-2", "delta": -1, "reason": "x", "actor": "q"},
            )
        assert adjusted["on_hand"] == 9
        assert [r["on_hand"] for r in moved] == [0, 11]

        # Accepted, and the same event published twice more (a redelivery the stream keeps).
        kept = order(("TEA-900", 3))
        first = await publish(js, kept)
        await js.publish(first.subject, first.encode(), headers={"Nats-Msg-Id": "again-1"})
        await js.publish(first.subject, first.encode(), headers={"Nats-Msg-Id": "again-2"})
        cancelled = order(("TEA-900", 4))
        await publish(js, cancelled)

        async def both_reserved() -> bool:
            return all([await published(js, StockReserved, o.order_id) for o in (kept, cancelled)])

        await eventually(both_reserved, what="both orders reserved")
        [reserved] = await published(js, StockReserved, kept.order_id)
        assert reserved.allocations == [StockLine(sku="TEA-900", warehouse="WH-1", quantity=3)]
        assert (reserved.currency, reserved.unit_prices) == ("CNY", {"TEA-900": Decimal("4.00")})

        # Cancelled by fulfillment: released. Another cancellation overtakes its acceptance
        # (they travel on different streams): that order is never reserved.
        await publish(js, OrderCancelled(order_id=cancelled.order_id, reason="r", actor="ops"))
        early = order(("TEA-900", 1))
        await publish(js, OrderCancelled(order_id=early.order_id, reason="r", actor="ops"))
        await eventually(
            lambda: consumed(js, streams.FULFILLMENT.name, "inventory-shipments"),
            what="the cancellations applied",
        )
        await publish(js, early)
        # Shipped, then two units come back.
        await publish(
            js,
            ShipmentShipped(
                order_id=kept.order_id,
                shipment_id="s-1",
                warehouse="WH-1",
                actor="picker",
                submitted_at=kept.submitted_at,
                carrier="SF",
                tracking_number="SF1",
                lines=reserved.allocations,
            ),
        )
        await publish(
            js,
            ReturnReceived(
                order_id=kept.order_id,
                shipment_id="s-1",
                lines=[StockLine(sku="TEA-900", warehouse="WH-1", quantity=2)],
                actor="desk",
            ),
        )

        async def returned() -> list[Any]:
            return await published(js, StockReturned, kept.order_id)

        [back] = await eventually(returned, what="the return")
        await eventually(
            lambda: consumed(js, streams.INTAKE.name, "inventory-orders"),
            what="every order applied",
        )
        [released] = await published(js, StockReleased, cancelled.order_id)
        levels = await call(nc, "inventory", "stock", {"sku": "TEA-900"})
        entries = await call(nc, "inventory", "ledger", {"sku": "TEA-900"})
        [outlook] = await call(nc, "inventory", "forecast", {"sku": "TEA-900"})

        assert back.restocked == [StockLine(sku="TEA-900", warehouse="WH-1", quantity=2)]
        assert released.released == [StockLine(sku="TEA-900", warehouse="WH-1", quantity=4)]
        assert await published(js, StockReserved, early.order_id) == []
        wh1 = next(r for r in levels if r["warehouse"] == "WH-1")
        # 11 on hand, 3 shipped, 2 back; nothing held (one shipped, one released).
        assert (wh1["on_hand"], wh1["reserved"], wh1["shipped"], wh1["returned"]) == (10, 0, 3, 2)
        assert [e["reason"] for e in entries] == [
            "restock",
            "restock",
            "broken",
            "transfer",
            "transfer",
            "reserved",
            "reserved",
            "released",
            "shipped",
            "return",
        ]
        # Demand: the 3 + 4 units reserved today.
        assert outlook["available"] == 10 and outlook["daily_demand"] > 0
        duplicates = rt.metrics.duplicates_skipped.labels("inventory", "inventory-orders")
        assert duplicates._value.get() == 2
