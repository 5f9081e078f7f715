"""The four services in-process on one nats-server (each with its own SQLite file), and a small
mixed load driven through their real commands: what the audit tests (trace, reconcile, replay)
run against."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.fulfillment.app import create_service as create_fulfillment
from services.intake.app import create_service as create_intake
from services.inventory.app import create_service as create_inventory
from services.notify.app import create_service as create_notify
from shared import rpc, subjects
from shared.runtime import ServiceRuntime
from tests.conftest import (
    eventually,
    order_doc,
    settings_for,
)
from tests.integration.test_intake import intake_settings

FACTORIES = {
    subjects.INTAKE: create_intake,
    subjects.INVENTORY: create_inventory,
    subjects.FULFILLMENT: create_fulfillment,
    subjects.NOTIFY: create_notify,
}


def database_of(tmp_path: Path, service: str) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / f'{service}.db'}"


async def corrupt(database: str, sql: str, **params: Any) -> None:
    """Change one row of a service's database directly, as a bug or a hand edit would."""
    engine = create_async_engine(database)
    try:
        async with engine.begin() as conn:
            assert (await conn.execute(text(sql), params)).rowcount == 1
    finally:
        await engine.dispose()


def service(
    nats_url: str, tmp_path: Path, name: str, databases: dict[str, str] | None = None
) -> ServiceRuntime:
    database = (databases or {}).get(name) or database_of(tmp_path, name)
    if name == subjects.INTAKE:
        # With the channel and operator keys the HTTP tests use.
        return create_intake(intake_settings(nats_url, database, tmp_path))
    return FACTORIES[name](settings_for(nats_url, database, tmp_path))


@asynccontextmanager
async def four_services(
    nats_url: str, tmp_path: Path, databases: dict[str, str] | None = None
) -> AsyncIterator[dict[str, ServiceRuntime]]:
    started: dict[str, ServiceRuntime] = {}
    try:
        for name in subjects.SERVICES:
            rt = service(nats_url, tmp_path, name, databases)
            await rt.start()
            started[name] = rt
        yield started
    finally:
        for rt in reversed(list(started.values())):
            with contextlib.suppress(Exception):
                await rt.stop()


async def status(nc: NATS, order_id: str) -> str:
    return str((await rpc.call(nc, "intake", "status", {"order_id": order_id}))["status"])


async def reach(nc: NATS, order_id: str, wanted: str) -> None:
    async def there() -> bool:
        return await status(nc, order_id) == wanted

    await eventually(there, timeout=20, what=f"order {order_id} {wanted}")


async def submit(nc: NATS, **changes: Any) -> dict[str, Any]:
    doc = order_doc(f"audit-{uuid.uuid4().hex[:10]}", **changes)
    answer: dict[str, Any] = await rpc.call(
        nc, "intake", "submit", {"channel": doc["channel"], "order": doc}
    )
    return answer


async def drive(nc: NATS, order_id: str, until: str) -> None:
    """Move a queued order through the warehouse as an operator would, up to ``until``."""
    await reach(nc, order_id, "queued")
    for action, becomes in (
        ("pick", "picked"),
        ("pack", "packed"),
        ("ship", "shipped"),
        ("deliver", "delivered"),
    ):
        payload: dict[str, Any] = {"order_id": order_id}
        if action == "ship":
            payload |= {"carrier": "SF-EXPRESS", "tracking_number": f"SF{order_id[-8:]}"}
        await rpc.call(nc, "fulfillment", action, payload)
        await reach(nc, order_id, becomes)
        if becomes == until:
            return


@dataclass
class MixedLoad:
    expected: dict[str, str] = field(default_factory=dict)  # order id -> final intake status
    rejected: list[str] = field(default_factory=list)


async def mixed_load(nc: NATS) -> MixedLoad:
    """Delivered, shipped, cancelled, left queued, backordered and rejected orders, waited for
    until intake's view shows each where it should be."""
    for sku, units in (("TEA-001", 200), ("CUP-010", 200), ("LAMP-042", 1)):
        await rpc.call(
            nc, "inventory", "restock", {"sku": sku, "quantity": units, "warehouse": "WH-1"}
        )
    load = MixedLoad()
    plan = ["delivered"] * 3 + ["shipped"] * 2 + ["cancelled"] * 2 + ["queued"] * 2
    for i, final in enumerate(plan):
        lines = [{"sku": "TEA-001", "quantity": 1 + i % 3, "unit_price": "12.50"}]
        if i % 2:
            lines.append({"sku": "CUP-010", "quantity": 2, "unit_price": "6.90"})
        currency = "USD" if i % 4 == 3 else "CNY"
        answer = await submit(nc, lines=lines, currency=currency)
        load.expected[answer["order_id"]] = final
    scarce = await submit(nc, lines=[{"sku": "LAMP-042", "quantity": 2, "unit_price": "129.00"}])
    load.expected[scarce["order_id"]] = "backordered"
    bad = await submit(nc, lines=[])
    assert bad["outcome"] == "rejected"
    load.rejected.append(bad["order_id"])
    for order_id, final in load.expected.items():
        if final in ("delivered", "shipped"):
            await drive(nc, order_id, final)
        elif final == "cancelled":
            await reach(nc, order_id, "queued")
            await rpc.call(nc, "intake", "cancel", {"order_id": order_id, "reason": "test"})
            await reach(nc, order_id, "cancelled")
        else:
            await reach(nc, order_id, final)
    return load
