"""Inventory's HTTP routes and commands, on the wired service without a broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from services.inventory.app import create_service
from services.inventory.settings import InventorySettings
from shared.rpc import CommandRefused
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings
from tests.conftest import AS_OPERATOR


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ServiceRuntime]:
    rt = create_service(
        ServiceSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'inventory.db'}")
    )
    await rt.db.create_schema()
    yield rt
    await rt.outbox.drain()
    await rt.db.close()


@pytest.fixture
async def client(service: ServiceRuntime) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(service.http), headers=AS_OPERATOR) as c:
        yield c


def test_a_plain_service_settings_gets_the_inventory_defaults(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    rt = create_service(ServiceSettings(database_url=url, batch_max=7))

    assert isinstance(rt.settings, InventorySettings)
    assert (rt.settings.batch_max, rt.settings.backorder_hold_s) == (7, 24 * 3600)
    assert str(rt.db.url) == url


async def test_restock_over_http_answers_the_stock_row(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.post("/stock/restock", json={"sku": "TEA-101", "quantity": 12})
    assert resp.status == 200
    assert await resp.json() == {
        "sku": "TEA-101",
        "warehouse": "WH-1",
        "on_hand": 12,
        "reserved": 0,
        "available": 12,
    }
    await client.post("/stock/restock", json={"sku": "CUP-101", "quantity": 3, "warehouse": "WH-2"})

    everything = await (await client.get("/stock")).json()
    cups = await (await client.get("/stock", params={"sku": "CUP-101"})).json()
    entries = await (await client.get("/stock/TEA-101/ledger")).json()

    assert [(r["sku"], r["warehouse"]) for r in everything] == [
        ("CUP-101", "WH-2"),
        ("TEA-101", "WH-1"),
    ]
    assert cups == [
        {
            "sku": "CUP-101",
            "warehouse": "WH-2",
            "on_hand": 3,
            "reserved": 0,
            "available": 3,
            "shipped": 0,
            "returned": 0,
        }
    ]
    assert [(e["reason"], e["delta_on_hand"], e["actor"]) for e in entries] == [
        ("restock", 12, "operator:tests")
    ]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"sku": "tea", "quantity": 0}, {"sku", "quantity"}),
        ({"sku": "TEA-102", "quantity": 5, "warehouse": "wh 1"}, {"warehouse"}),
        ({"quantity": 2_000_000}, {"sku", "quantity"}),
        ([1, 2], {"(body)"}),
        ("not json", {"(body)"}),
    ],
)
async def test_invalid_restock_is_422_with_field_errors(
    client: TestClient,  # type: ignore[type-arg]
    body: object,
    fields: set[str],
) -> None:
    if body == "not json":
        resp = await client.post("/stock/restock", data=b"{nope")
    else:
        resp = await client.post("/stock/restock", json=body)

    assert resp.status == 422
    errors = (await resp.json())["errors"]
    assert {e["field"] for e in errors} == fields
    assert all(e["reason"] for e in errors)
    assert await (await client.get("/stock")).json() == []


async def test_commands_restock_list_and_refuse(service: ServiceRuntime) -> None:
    commands = service.rpc.commands

    row = await commands["restock"]({"sku": "TEA-103", "quantity": 4, "actor": "ops"})
    listed = await commands["stock"]({"sku": "TEA-103"})
    entries = await commands["ledger"]({"sku": "TEA-103"})

    assert row["available"] == 4
    assert [r["on_hand"] for r in listed] == [4]
    assert [(e["reason"], e["actor"]) for e in entries] == [("restock", "ops")]
    with pytest.raises(ValidationError):
        await commands["restock"]({"sku": "TEA-103", "quantity": -1})
    with pytest.raises(CommandRefused):
        await commands["ledger"]({})
    with pytest.raises(CommandRefused):
        await commands["stock"]({"sku": 5})
    stats = await service.stats() if service.stats else {}
    assert stats == {
        "reservations": {},
        "backorders_waiting": 0,
        "skus_below_reorder_point": 0,
        "on_hand": 4,
        "shipped": 0,
        "returned": 0,
    }


async def test_adjust_transfer_and_reorder_over_http(client: TestClient) -> None:  # type: ignore[type-arg]
    await client.post("/stock/restock", json={"sku": "TEA-104", "quantity": 10})

    adjusted = await client.post(
        "/stock/adjust",
        json={
            "sku": "TEA-104",
            "warehouse": "WH-1",
            "delta": -3,
            "reason": "stock take",
            "actor": "auditor",
        },
    )
    moved = await client.post(
        "/stock/transfer",
        json={"sku": "TEA-104", "quantity": 4, "from_warehouse": "WH-1", "to_warehouse": "WH-2"},
    )
    too_many = await client.post(
        "/stock/transfer",
        json={"sku": "TEA-104", "quantity": 9, "from_warehouse": "WH-1", "to_warehouse": "WH-2"},
    )
    reorder = await client.put(
        "/stock/TEA-104/reorder", json={"reorder_point": 5, "actor": "buyer"}
    )
    placed = await client.put("/warehouses/WH-2", json={"rank": 1, "country": "CN"})

    assert adjusted.status == 200
    assert (await adjusted.json())["on_hand"] == 7
    assert [(r["warehouse"], r["on_hand"]) for r in await moved.json()] == [
        ("WH-1", 3),
        ("WH-2", 4),
    ]
    assert too_many.status == 409
    assert "only 3 of TEA-104 at WH-1" in (await too_many.json())["error"]
    assert reorder.status == 200
    assert (await reorder.json())["reorder_point"] == 5
    assert await placed.json() == {"code": "WH-2", "rank": 1, "country": "CN"}
    assert [w["code"] for w in await (await client.get("/warehouses")).json()] == ["WH-1", "WH-2"]
    [outlook] = await (await client.get("/stock/forecast", params={"sku": "TEA-104"})).json()
    assert (outlook["available"], outlook["reorder_point"], outlook["below_reorder_point"]) == (
        7,
        5,
        False,
    )
    entries = await (await client.get("/stock/TEA-104/ledger", params={"limit": "2"})).json()
    assert [(e["reason"], e["warehouse"], e["delta_on_hand"]) for e in entries] == [
        ("transfer", "WH-1", -4),
        ("transfer", "WH-2", 4),
    ]


@pytest.mark.parametrize(
    ("path", "body", "fields"),
    [
        (
            "/stock/adjust",
            {"sku": "TEA-105", "warehouse": "WH-1", "delta": 0},
            {"delta", "reason"},  # the actor is the token's operator
        ),
        (
            "/stock/transfer",
            {"sku": "TEA-105", "quantity": 1, "from_warehouse": "WH-1", "to_warehouse": "WH-1"},
            {"to_warehouse"},
        ),
        ("/stock/TEA-105/reorder", {"reorder_point": -1, "lead": 3}, {"reorder_point", "lead"}),
    ],
)
async def test_invalid_commands_are_422_with_field_errors(
    client: TestClient,  # type: ignore[type-arg]
    path: str,
    body: dict[str, object],
    fields: set[str],
) -> None:
    send = client.put if path.endswith("/reorder") else client.post
    resp = await send(path, json=body)

    assert resp.status == 422
    assert {e["field"] for e in (await resp.json())["errors"]} == fields


async def test_the_gauges_and_counters_are_on_metrics(service: ServiceRuntime) -> None:
    commands = service.rpc.commands
    await commands["restock"]({"sku": "TEA-106", "quantity": 1})
    await commands["adjust"](
        {"sku": "TEA-106", "warehouse": "WH-1", "delta": -1, "reason": "lost", "actor": "me"}
    )

    text = service.metrics.exposition().decode()

    assert 'orderflow_inventory_stockouts_total{warehouse="WH-1"} 1.0' in text
    for name in (
        "orderflow_inventory_backorders_waiting",
        "orderflow_inventory_skus_below_reorder_point",
        "orderflow_inventory_reservation_duration_seconds",
        "orderflow_inventory_reservations_total",
    ):
        assert f"# TYPE {name}" in text
