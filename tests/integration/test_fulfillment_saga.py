"""Fulfillment started for real (nats-server, SQLite and PostgreSQL): it arbitrates cancel
requests from intake's stream, a cancel racing a ship ends in one state, and the CLI drives an
order from the queue to delivered and back through NATS."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from sqlalchemy import select

from orderflow.cli import main as cli_main
from services.fulfillment import handlers
from services.fulfillment.app import create_service
from services.fulfillment.metrics import FulfillmentMetrics
from services.fulfillment.models import shipments
from services.inventory.app import create_service as create_inventory
from shared import streams
from shared.consumer import UnitOfWork
from shared.contracts.common import Address, Customer, OrderLine, StockLine
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.fulfillment import (
    CancellationRefused,
    OrderCancelled,
    RefundDue,
    ShipCommand,
    ShipmentShipped,
)
from shared.contracts.intake import OrderAccepted, OrderCancelRequested
from shared.contracts.inventory import StockReserved
from shared.ids import uuid7
from shared.rpc import CommandRefused
from shared.runtime import ServiceRuntime
from tests.conftest import eventually, settings_for
from tests.integration.harness import nats_client, running, stream_envelopes

ADDRESS = Address(
    name="Mei Lin", line1="18 Longjing Road", city="Hangzhou", postal_code="310000", country="CN"
)


def reserved(order_id: str | None = None, *warehouses: str) -> Envelope:
    return new_envelope(
        StockReserved(
            order_id=order_id or uuid7(),
            allocations=[
                StockLine(sku="TEA-001", warehouse=w, quantity=2) for w in warehouses or ("WH-1",)
            ],
            priority="normal",
            channel="web",
            ship_to=ADDRESS,
            submitted_at=datetime.now(UTC),
            currency="CNY",
            unit_prices={"TEA-001": Decimal("12.50")},
        )
    )


def cancel_requested(order_id: str, reason: str = "changed my mind") -> Envelope:
    return new_envelope(OrderCancelRequested(order_id=order_id, reason=reason, actor="mei"))


async def publish(js: JetStreamContext, env: Envelope) -> None:
    """As the producing service's outbox relay does."""
    await js.publish(env.subject, env.encode(), headers={"Nats-Msg-Id": env.event_id})


async def shipment_statuses(rt: ServiceRuntime, order_id: str) -> list[str]:
    async with rt.db.reading() as conn:
        result = await conn.execute(
            select(shipments.c.status)
            .where(shipments.c.order_id == order_id)
            .order_by(shipments.c.warehouse)
        )
        return [status for (status,) in result]


async def fulfillment_events(js: JetStreamContext, n: int) -> list[Envelope]:
    async def enough() -> list[Envelope]:
        found = await stream_envelopes(js, streams.FULFILLMENT.name)
        return found if len(found) >= n else []

    return await eventually(enough, what=f"{n} events on the fulfillment stream")


async def test_cancel_requests_from_intakes_stream_are_answered_once_each(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    rt = create_service(settings_for(nats_url, database_url, tmp_path))
    queued, gone, unseen = reserved(), reserved(), uuid7()
    async with nats_client(nats_url) as (_, js), running(rt):
        await publish(js, queued)
        await publish(js, gone)

        async def both_queued() -> bool:
            return all([await shipment_statuses(rt, e.key) for e in (queued, gone)])

        await eventually(both_queued, what="both reservations queued")
        for action in ("pick", "pack"):
            await rt.rpc.commands[action]({"order_id": gone.key})
        await rt.rpc.commands["ship"](
            {"order_id": gone.key, "carrier": "SF-EXPRESS", "tracking_number": "SF1"}
        )
        for order_id in (queued.key, gone.key, unseen, queued.key):
            await publish(js, cancel_requested(order_id))
        # 2 queued + pick, pack, ship + 4 answers.
        events = await fulfillment_events(js, 9)
        # The reservation of the order cancelled before it arrived: never queued.
        await publish(js, reserved(unseen))

        async def late_reservation_applied() -> float:
            return (
                rt.metrics.registry.get_sample_value(
                    "orderflow_events_processed_total",
                    {"service": "fulfillment", "handler": "stock_reserved"},
                )
                or 0.0
            )

        await eventually(late_reservation_applied, what="the late reservation applied")
        await rt.outbox.drain()
        after = await stream_envelopes(js, streams.FULFILLMENT.name)
        statuses = {key: await shipment_statuses(rt, key) for key in (queued.key, gone.key, unseen)}

    answers = [
        (e.key, e.type, e.data.reason)
        for e in events
        if isinstance(e.data, OrderCancelled | CancellationRefused)
    ]
    (shipment_id,) = {e.data.shipment_id for e in events if isinstance(e.data, ShipmentShipped)}
    assert answers == [
        (queued.key, "order_cancelled", "changed my mind"),
        (
            gone.key,
            "cancellation_refused",
            f"too late to cancel order {gone.key}: shipment {shipment_id} is shipped "
            "with SF-EXPRESS SF1",
        ),
        (unseen, "order_cancelled", "changed my mind"),
        (queued.key, "cancellation_refused", f"order {queued.key} is already cancelled"),
    ]
    assert [e.event_id for e in after] == [e.event_id for e in events]
    assert statuses == {queued.key: ["cancelled"], gone.key: ["shipped"], unseen: []}


async def test_a_cancel_racing_a_ship_ends_in_one_consistent_state(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    rt = create_service(settings_for(nats_url, database_url, tmp_path))
    metrics = FulfillmentMetrics.of(rt.metrics)
    orders = [reserved(None, "WH-1", "WH-2") for _ in range(16)]

    async def queue_all(uow: UnitOfWork) -> None:
        await handlers.queue_shipments(uow, orders, metrics, rt_sla)

    rt_sla = handlers.domain.SlaPolicy({"urgent": 2, "high": 8, "normal": 24, "low": 72})

    # A little jitter so that either side may get to the rows first.
    jitter = random.Random(11)

    async def ship(order_id: str) -> str:
        await asyncio.sleep(jitter.random() * 0.01)

        async def work(uow: UnitOfWork) -> list[dict[str, Any]]:
            cmd = ShipCommand(order_id=order_id, carrier="SF", tracking_number=order_id[-12:])
            return await handlers.run_command(uow, "ship", cmd, metrics)

        try:
            await rt.execute(work)
        except CommandRefused:
            return "refused"
        return "shipped"

    async def cancel(order_id: str) -> str:
        await asyncio.sleep(jitter.random() * 0.01)

        async def work(uow: UnitOfWork) -> str:
            await handlers.cancel_orders(uow, [cancel_requested(order_id)], metrics)
            return uow.emitted[0].type

        return await rt.execute(work)

    async with running(rt):
        await rt.execute(queue_all)
        for action in ("pick", "pack"):
            for env in orders:
                await rt.rpc.commands[action]({"order_id": env.key})
        # Half the pairs start with the ship, half with the cancel; all run at once.
        races = []
        for i, env in enumerate(orders):
            pair = [ship(env.key), cancel(env.key)]
            races.append(asyncio.gather(*(pair if i % 2 else pair[::-1])))
        results = await asyncio.gather(*races)
        finals = {env.key: await shipment_statuses(rt, env.key) for env in orders}

    outcomes: Counter[tuple[str, str]] = Counter()
    for env, result in zip(orders, results, strict=True):
        ship_result, cancel_result = result if orders.index(env) % 2 else result[::-1]
        outcomes[(ship_result, cancel_result)] += 1
        if ship_result == "shipped":
            assert cancel_result == "cancellation_refused", env.key
            assert finals[env.key] == ["shipped", "shipped"]
        else:
            assert cancel_result == "order_cancelled", env.key
            assert finals[env.key] == ["cancelled", "cancelled"]
    assert set(outcomes) <= {("shipped", "cancellation_refused"), ("refused", "order_cancelled")}
    print(f"cancel racing ship on {database_url.split(':')[0]}: {dict(outcomes)}")


async def test_a_cancel_racing_the_reservation_never_leaves_work_in_the_warehouse(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    rt = create_service(settings_for(nats_url, database_url, tmp_path))
    metrics = FulfillmentMetrics.of(rt.metrics)
    sla = handlers.domain.SlaPolicy({"urgent": 2, "high": 8, "normal": 24, "low": 72})
    orders = [reserved() for _ in range(16)]

    async def queue_one(env: Envelope) -> int:
        async def work(uow: UnitOfWork) -> int:
            await handlers.queue_shipments(uow, [env], metrics, sla)
            return len(uow.emitted)

        return await rt.execute(work)

    async def cancel(order_id: str) -> str:
        async def work(uow: UnitOfWork) -> str:
            await handlers.cancel_orders(uow, [cancel_requested(order_id)], metrics)
            return uow.emitted[0].type

        return await rt.execute(work)

    async with running(rt):
        results = await asyncio.gather(
            *(
                asyncio.gather(queue_one(env), cancel(env.key))
                if i % 2
                else asyncio.gather(cancel(env.key), queue_one(env))
                for i, env in enumerate(orders)
            )
        )
        finals = {env.key: await shipment_statuses(rt, env.key) for env in orders}

    for i, (env, result) in enumerate(zip(orders, results, strict=True)):
        queued, answer = result if i % 2 else result[::-1]
        assert answer == "order_cancelled", env.key
        # Queued first then cancelled, or never queued at all: nothing left to work on.
        assert finals[env.key] == (["cancelled"] if queued else []), env.key
    queued_first = sum(1 for statuses in finals.values() if statuses)
    print(f"cancel racing the reservation: {queued_first} of {len(orders)} queued first")


async def cli(*argv: str) -> int:
    """The real ``orderflow`` command (it runs its own event loop, so in a thread)."""
    return await asyncio.to_thread(cli_main, list(argv))


async def test_the_cli_moves_an_order_to_delivered_and_takes_a_return(
    nats_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ORDERFLOW_NATS_URL", nats_url)
    monkeypatch.setenv("ORDERFLOW_ACTOR", "ana")
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'fulfillment.db'}"
    rt = create_service(settings_for(nats_url, database_url, tmp_path))
    env = reserved(None, "WH-1", "WH-2")
    order_id = env.key
    async with nats_client(nats_url) as (_, js), running(rt):
        await publish(js, env)

        async def queued() -> list[str]:
            return await shipment_statuses(rt, order_id)

        await eventually(queued, what="the order queued")
        assert await cli("queue", "--warehouse", "WH-2") == 0
        queue_text = capsys.readouterr().out
        assert await cli("deliver", order_id) == 1
        refusal = capsys.readouterr().err
        for argv in (
            ("pick", order_id),
            ("pack", order_id),
            ("ship", order_id, "--carrier", "SF-EXPRESS", "--tracking", "SF77"),
            ("delivery-failed", order_id, "--reason", "nobody at home"),
            ("deliver", order_id),
        ):
            assert await cli(*argv) == 0, argv
        moves = capsys.readouterr().out
        assert await cli("return", order_id, "--line", "TEA-001=3", "--reason", "too much") == 0
        returned = capsys.readouterr().out
        assert await cli("return-received", order_id) == 0
        received = capsys.readouterr().out
        assert await cli("shipments", order_id, "--json") == 0
        shown = json.loads(capsys.readouterr().out)
        assert await cli("return", order_id, "--line", "TEA-001") == 1
        bad_line = capsys.readouterr().err

    lines = queue_text.splitlines()
    assert lines[0] == "1 shipment(s) waiting (normal 1); 0 overdue"
    assert lines[2].split()[:2] == ["normal", "in"]
    assert order_id in lines[2] and "WH-2" in lines[2] and lines[2].endswith("2 x TEA-001")
    assert refusal.startswith(f"refused: cannot deliver order {order_id}: shipment ")
    assert moves.count("delivered: shipment") == 2
    assert "delivery_failed: shipment" in moves and "failed deliveries so far: 1" in moves
    assert returned.count("requested: ") == 2
    assert sorted(
        float(line.split("refund due ")[1].split()[0]) for line in received.splitlines()
    ) == [
        12.5,
        25.0,
    ]
    assert {s["status"] for s in shown} == {"delivered"}
    actors = {e["actor"] for s in shown for e in s["log"] if e["action"] != "queue"}
    # The token's operator acted; --actor says for whom.
    assert actors == {"operator:tests/ana"}
    assert "write it as SKU=QUANTITY" in bad_line


# --- with the real inventory: intake's events are published as intake's relay would -----------


def accepted(sku: str, quantity: int) -> Envelope:
    order_id = uuid7()
    return new_envelope(
        OrderAccepted(
            order_id=order_id,
            channel="web",
            external_id=f"ext-{order_id[-12:]}",
            customer=Customer(name="Mei Lin", email="mei.lin@example.com"),
            lines=[OrderLine(sku=sku, quantity=quantity, unit_price=Decimal("12.50"))],
            currency="CNY",
            total=Decimal("12.50") * quantity,
            shipping_address=ADDRESS,
            priority="normal",
            submitted_at=datetime.now(UTC),
        )
    )


async def test_the_saga_with_inventory_cancel_releases_ship_deducts_return_restocks(
    nats_url: str, tmp_path: Path
) -> None:
    def settings(service: str) -> Any:
        return settings_for(nats_url, f"sqlite+aiosqlite:///{tmp_path / service}.db", tmp_path)

    inventory = create_inventory(settings("inventory"))
    fulfillment = create_service(settings("fulfillment"))
    sku = f"TEA-{uuid7()[-6:].upper()}"
    cancelled, raced, returned = accepted(sku, 2), accepted(sku, 3), accepted(sku, 1)

    async def level() -> dict[str, int]:
        (row,) = await inventory.rpc.commands["stock"]({"sku": sku})
        return {k: row[k] for k in ("on_hand", "reserved")}

    async def queued(order_id: str) -> list[str]:
        return await shipment_statuses(fulfillment, order_id)

    async with nats_client(nats_url) as (_, js), running(inventory), running(fulfillment):
        await inventory.rpc.commands["restock"]({"sku": sku, "quantity": 10})
        for env in (cancelled, raced, returned):
            await publish(js, env)
        for env in (cancelled, raced, returned):
            await eventually(lambda e=env: queued(e.key), what="the order queued")
        assert await level() == {"on_hand": 10, "reserved": 6}

        # Cancel before shipping: inventory releases the stock.
        await publish(js, cancel_requested(cancelled.key))

        async def released() -> bool:
            return await level() == {"on_hand": 10, "reserved": 4}

        await eventually(released, what="the cancelled order's stock released")

        # A cancel racing a ship: whichever wins, stock ends consistent.
        for action in ("pick", "pack"):
            await fulfillment.rpc.commands[action]({"order_id": raced.key})

        async def ship() -> str:
            try:
                await fulfillment.rpc.commands["ship"](
                    {"order_id": raced.key, "carrier": "SF", "tracking_number": "SF1"}
                )
            except CommandRefused:
                return "refused"
            return "shipped"

        ship_result, _ = await asyncio.gather(ship(), publish(js, cancel_requested(raced.key)))
        expected = (
            {"on_hand": 7, "reserved": 1}
            if ship_result == "shipped"
            else {"on_hand": 10, "reserved": 1}
        )

        async def settled() -> bool:
            return await level() == expected

        await eventually(settled, what=f"stock after the race ({ship_result})")

        # Deliver and return: inventory restocks, finance is told the price paid.
        for action in ("pick", "pack"):
            await fulfillment.rpc.commands[action]({"order_id": returned.key})
        await fulfillment.rpc.commands["ship"](
            {"order_id": returned.key, "carrier": "SF", "tracking_number": "SF2"}
        )
        await fulfillment.rpc.commands["deliver"]({"order_id": returned.key})
        await fulfillment.rpc.commands["return"]({"order_id": returned.key})
        await fulfillment.rpc.commands["receive-return"]({"order_id": returned.key})
        back = dict(expected, on_hand=expected["on_hand"], reserved=0)

        async def restocked() -> bool:
            return await level() == back

        await eventually(restocked, what="the returned unit back in stock")
        await fulfillment.outbox.drain()
        events = await stream_envelopes(js, streams.FULFILLMENT.name)
        inventory_events = await stream_envelopes(js, streams.INVENTORY.name)

    answers = {
        (e.key, e.type) for e in events if isinstance(e.data, OrderCancelled | CancellationRefused)
    }
    race_answer = "cancellation_refused" if ship_result == "shipped" else "order_cancelled"
    assert answers == {(cancelled.key, "order_cancelled"), (raced.key, race_answer)}
    (refund,) = [e.data for e in events if isinstance(e.data, RefundDue)]
    assert (refund.order_id, refund.amount, refund.currency) == (
        returned.key,
        Decimal("12.50"),
        "CNY",
    )
    releases = [e.key for e in inventory_events if e.type == "stock_released"]
    assert cancelled.key in releases
    assert (raced.key in releases) == (ship_result == "refused")
