"""Fulfillment's HTTP routes and NATS commands, as an operator's terminal sees them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from services.fulfillment import handlers
from services.fulfillment.app import as_fulfillment_settings, create_service
from services.fulfillment.domain import SlaPolicy
from services.fulfillment.metrics import FulfillmentMetrics
from services.fulfillment.settings import FulfillmentSettings
from shared.consumer import UnitOfWork
from shared.contracts.common import Address, Priority, StockLine
from shared.contracts.envelope import new_envelope
from shared.contracts.intake import OrderCancelRequested
from shared.contracts.inventory import StockReserved
from shared.ids import uuid7
from shared.rpc import CommandRefused
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings
from tests.conftest import AS_OPERATOR

Client = TestClient[web.Request, web.Application]
ADDRESS = Address(
    name="Li Wei", line1="1 Nanjing Road", city="Shanghai", postal_code="200001", country="CN"
)


@pytest.fixture
async def rt() -> AsyncIterator[ServiceRuntime]:
    runtime = create_service(FulfillmentSettings(database_url="sqlite+aiosqlite:///:memory:"))
    await runtime.db.create_schema()
    yield runtime
    await runtime.outbox.drain()
    await runtime.db.close()


@pytest.fixture
async def client(rt: ServiceRuntime) -> AsyncIterator[Client]:
    async with TestClient(TestServer(rt.http), headers=AS_OPERATOR) as c:
        yield c


async def reserved_order(
    rt: ServiceRuntime, *warehouses: str, priority: Priority = "normal"
) -> str:
    env = new_envelope(
        StockReserved(
            order_id=uuid7(),
            allocations=[
                StockLine(sku="TEA-001", warehouse=w, quantity=1) for w in warehouses or ("WH-1",)
            ],
            priority=priority,
            channel="phone",
            ship_to=ADDRESS,
            submitted_at=datetime.now(UTC),
        )
    )

    async def work(uow: UnitOfWork) -> None:
        await handlers.queue_shipments(
            uow,
            [env],
            FulfillmentMetrics.of(rt.metrics),
            SlaPolicy({"urgent": 2, "high": 8, "normal": 24, "low": 72}),
        )

    await rt.execute(work)
    return env.key


async def test_post_pick_answers_200_with_the_moved_shipments(
    rt: ServiceRuntime, client: Client
) -> None:
    order_id = await reserved_order(rt, "WH-1", "WH-2")

    response = await client.post(f"/orders/{order_id}/pick", json={"actor": "ana"})

    assert response.status == 200
    body = await response.json()
    assert sorted((s["warehouse"], s["status"], s["updated_by"]) for s in body["shipments"]) == [
        ("WH-1", "picked", "operator:tests/ana"),
        ("WH-2", "picked", "operator:tests/ana"),
    ]


async def test_an_illegal_transition_answers_409_with_the_reason(
    rt: ServiceRuntime, client: Client
) -> None:
    order_id = await reserved_order(rt)

    response = await client.post(f"/orders/{order_id}/deliver", json={"actor": "ana"})

    assert response.status == 409
    error = (await response.json())["error"]
    assert error.startswith(f"cannot deliver order {order_id}: shipment ")
    assert error.endswith(" is queued, not shipped or delivery_failed")


async def test_an_unknown_order_answers_404(client: Client) -> None:
    order_id = uuid7()
    response = await client.post(f"/orders/{order_id}/pick")
    assert response.status == 404
    assert await response.json() == {"error": f"no shipment for order {order_id}"}
    response = await client.get(f"/orders/{order_id}/shipments")
    assert response.status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"actor": "ana"}', "carrier"),
        (b'{"actor": "ana", "carrier": "SF", "tracking": "1"}', "tracking"),
        (b"not json", "(body)"),
        (b"[1, 2]", "(body)"),
    ],
)
async def test_an_invalid_body_answers_422_with_field_errors(
    rt: ServiceRuntime,
    client: Client,
    body: bytes,
    field: str,
) -> None:
    order_id = await reserved_order(rt)
    await client.post(f"/orders/{order_id}/pick")
    await client.post(f"/orders/{order_id}/pack")

    response = await client.post(f"/orders/{order_id}/ship", data=body)

    assert response.status == 422
    assert field in [e["field"] for e in (await response.json())["errors"]]
    shipments = await (await client.get(f"/orders/{order_id}/shipments")).json()
    assert [s["status"] for s in shipments["shipments"]] == ["packed"]


async def test_the_whole_way_over_http_is_in_the_shipment_log(
    rt: ServiceRuntime, client: Client
) -> None:
    order_id = await reserved_order(rt)
    for action, body in [
        ("pick", {"actor": "ana"}),
        ("pack", {"actor": "ana"}),
        ("ship", {"actor": "bo", "carrier": "SF", "tracking_number": "SF1"}),
        ("deliver", {}),
    ]:
        assert (await client.post(f"/orders/{order_id}/{action}", json=body)).status == 200

    response = await client.get(f"/orders/{order_id}/shipments")

    (shipment,) = (await response.json())["shipments"]
    assert shipment["status"] == "delivered"
    assert [(e["action"], e["actor"]) for e in shipment["log"]] == [
        ("queue", "system"),
        # The token's operator acted; "actor" in the body says for whom.
        ("pick", "operator:tests/ana"),
        ("pack", "operator:tests/ana"),
        ("ship", "operator:tests/bo"),
        ("deliver", "operator:tests"),
    ]
    stats = await (await client.get("/stats")).json()
    assert stats["shipments"] == {"delivered": 1}


async def test_get_queue_lists_waiting_shipments_most_pressing_first(
    rt: ServiceRuntime, client: Client
) -> None:
    low = await reserved_order(rt, priority="low")
    urgent = await reserved_order(rt, priority="urgent")
    gone = await reserved_order(rt, priority="urgent")
    for action in ("pick", "pack"):
        await client.post(f"/orders/{gone}/{action}")
    await client.post(f"/orders/{gone}/ship", json={"carrier": "SF", "tracking_number": "1"})

    body = await (await client.get("/queue")).json()

    assert [s["order_id"] for s in body["shipments"]] == [urgent, low]
    assert (await client.get("/queue?limit=1")).status == 200
    assert len((await (await client.get("/queue?limit=1")).json())["shipments"]) == 1
    assert (await client.get("/queue?limit=zero")).status == 422


async def test_rpc_commands_answer_like_http(rt: ServiceRuntime) -> None:
    order_id = await reserved_order(rt)

    picked = await rt.rpc.commands["pick"]({"order_id": order_id, "actor": "cli"})
    assert [s["status"] for s in picked] == ["picked"]
    with pytest.raises(CommandRefused, match="is picked, not packed"):
        await rt.rpc.commands["ship"](
            {"order_id": order_id, "carrier": "SF", "tracking_number": "1"}
        )
    with pytest.raises(ValidationError):
        await rt.rpc.commands["ship"]({"order_id": order_id})
    with pytest.raises(CommandRefused, match="no shipment for order"):
        await rt.rpc.commands["shipments"]({"order_id": uuid7()})
    (shipment,) = await rt.rpc.commands["shipments"]({"order_id": order_id})
    assert [e["action"] for e in shipment["log"]] == ["queue", "pick"]
    assert [s["order_id"] for s in await rt.rpc.commands["queue"]({"limit": 5})] == [order_id]


def test_common_settings_keep_their_values_and_gain_the_sla_defaults() -> None:
    settings = as_fulfillment_settings(
        ServiceSettings(database_url="sqlite+aiosqlite:///x.db", simulator=True)
    )
    assert settings.database_url == "sqlite+aiosqlite:///x.db"
    assert settings.simulator is True
    assert settings.sla_hours() == {"urgent": 2.0, "high": 8.0, "normal": 24.0, "low": 72.0}


def test_the_simulator_runs_only_when_asked_and_the_sla_job_always() -> None:
    off = create_service(FulfillmentSettings(database_url="sqlite+aiosqlite:///:memory:"))
    assert [job.__name__ for job in off.background] == ["sla_job"]
    on = create_service(
        FulfillmentSettings(database_url="sqlite+aiosqlite:///:memory:", simulator=True)
    )
    assert [job.__name__ for job in on.background] == ["sla_job", "run"]


async def delivered(client: Client, order_id: str) -> None:
    for action, body in [
        ("pick", {}),
        ("pack", {}),
        ("ship", {"carrier": "SF", "tracking_number": "SF1"}),
        ("deliver", {}),
    ]:
        assert (await client.post(f"/orders/{order_id}/{action}", json=body)).status == 200


async def test_delivery_failed_over_http_and_then_delivered(
    rt: ServiceRuntime, client: Client
) -> None:
    order_id = await reserved_order(rt)
    for action, body in [
        ("pick", {}),
        ("pack", {}),
        ("ship", {"carrier": "SF", "tracking_number": "SF1"}),
    ]:
        await client.post(f"/orders/{order_id}/{action}", json=body)

    response = await client.post(
        f"/orders/{order_id}/delivery-failed", json={"reason": "address not found"}
    )

    assert response.status == 200
    (shipment,) = (await response.json())["shipments"]
    assert (shipment["status"], shipment["failed_deliveries"], shipment["next_action"]) == (
        "delivery_failed",
        1,
        "deliver",
    )
    assert (await client.post(f"/orders/{order_id}/deliver")).status == 200
    again = await client.post(f"/orders/{order_id}/delivery-failed")
    assert again.status == 409
    assert "is delivered, not shipped or delivery_failed" in (await again.json())["error"]


async def test_returns_over_http(rt: ServiceRuntime, client: Client) -> None:
    order_id = await reserved_order(rt)
    await delivered(client, order_id)

    bad = await client.post(f"/orders/{order_id}/returns", json={"lines": [{"sku": "x"}]})
    assert bad.status == 422
    response = await client.post(
        f"/orders/{order_id}/returns",
        json={"lines": [{"sku": "TEA-001", "quantity": 1}], "reason": "broken"},
    )
    assert response.status == 200
    (created,) = (await response.json())["returns"]
    assert (created["status"], created["requested_by"], created["reason"]) == (
        "requested",
        "operator:tests",
        "broken",
    )
    too_many = await client.post(f"/orders/{order_id}/returns", json={})
    assert too_many.status == 409

    received = await client.post(f"/orders/{order_id}/returns/receive", json={"actor": "ana"})

    assert received.status == 200
    (done,) = (await received.json())["returns"]
    assert (done["status"], done["received_by"]) == ("received", "operator:tests/ana")
    # The reservation of this order carried no prices.
    assert done["refund_amount"] is None
    assert "no refund event sent" in done["refund_note"]
    assert (await client.post(f"/orders/{uuid7()}/returns/receive")).status == 404


async def test_rpc_return_commands(rt: ServiceRuntime, client: Client) -> None:
    order_id = await reserved_order(rt)
    await delivered(client, order_id)

    created = await rt.rpc.commands["return"]({"order_id": order_id, "actor": "cli"})
    received = await rt.rpc.commands["receive-return"]({"order_id": order_id})

    assert [r["return_id"] for r in received] == [r["return_id"] for r in created]
    (shipment,) = await rt.rpc.commands["shipments"]({"order_id": order_id})
    assert [r["status"] for r in shipment["returns"]] == ["received"]


async def test_shipments_of_an_order_cancelled_before_queueing_say_so(
    rt: ServiceRuntime, client: Client
) -> None:
    order_id = uuid7()

    async def work(uow: UnitOfWork) -> None:
        await handlers.cancel_orders(
            uow,
            [new_envelope(OrderCancelRequested(order_id=order_id, reason="oops", actor="mei"))],
            FulfillmentMetrics.of(rt.metrics),
        )

    await rt.execute(work)

    response = await client.get(f"/orders/{order_id}/shipments")
    assert response.status == 404
    error = (await response.json())["error"]
    assert error.startswith(f"order {order_id} was cancelled before any shipment was queued")
    assert error.endswith(": oops)")


async def test_the_queue_can_be_limited_to_one_warehouse(
    rt: ServiceRuntime, client: Client
) -> None:
    split = await reserved_order(rt, "WH-1", "WH-2")

    body = await (await client.get("/queue?warehouse=WH-2")).json()

    assert [(s["order_id"], s["warehouse"], s["next_action"]) for s in body["shipments"]] == [
        (split, "WH-2", "pick")
    ]
    stats = await (await client.get("/stats")).json()
    assert stats["shipments"] == {"queued": 2}
    assert stats["overdue"] == 0
