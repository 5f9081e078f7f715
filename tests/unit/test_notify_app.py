"""Notify's wiring, without NATS: what it consumes, and its command, route and stats."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.notify.app import create_service
from services.notify.settings import NotifySettings
from shared import streams, subjects
from shared.consumer import UnitOfWork
from shared.contracts.common import FieldError
from shared.contracts.envelope import new_envelope
from shared.contracts.intake import OrderRejected
from shared.ids import uuid7
from shared.rpc import CommandRefused
from shared.settings import ServiceSettings


def test_it_consumes_the_lifecycle_events_it_tells_people_about(tmp_path: Path) -> None:
    rt = create_service(ServiceSettings(home=tmp_path))

    consumed = {
        spec.name: (spec.stream, sorted(spec.filter_subjects), sorted(spec.handlers))
        for spec in rt.consumer_specs
    }

    assert consumed == {
        "notify-intake": (
            streams.INTAKE.name,
            sorted(
                subjects.events_of(subjects.INTAKE, t) for t in ("order_accepted", "order_rejected")
            ),
            ["order_accepted", "order_rejected"],
        ),
        "notify-inventory": (
            streams.INVENTORY.name,
            [subjects.events_of(subjects.INVENTORY, "stock_backordered")],
            ["stock_backordered"],
        ),
        "notify-fulfillment": (
            streams.FULFILLMENT.name,
            sorted(
                subjects.events_of(subjects.FULFILLMENT, t)
                for t in ("shipment_shipped", "shipment_delivered")
            ),
            ["shipment_delivered", "shipment_shipped"],
        ),
    }
    assert streams.NOTIFY in rt.streams and streams.DEAD_LETTERS in rt.streams
    assert isinstance(rt.settings, NotifySettings)
    assert rt.settings.home == tmp_path


async def test_notifications_are_served_by_command_route_and_stats(tmp_path: Path) -> None:
    rt = create_service(ServiceSettings(home=tmp_path))
    await rt.db.create_schema()
    rejected = OrderRejected(
        order_id=uuid7(),
        channel="web",
        errors=[FieldError(field="(body)", reason="not valid JSON")],
        submitted_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    on_rejected = rt.consumer_specs[0].handlers["order_rejected"]

    async def work(uow: UnitOfWork) -> None:
        await on_rejected(uow, [new_envelope(rejected)])

    await rt.execute(work)
    try:
        listed: Any = await rt.rpc.commands["notifications"]({"order_id": rejected.order_id})
        with pytest.raises(CommandRefused):
            await rt.rpc.commands["notifications"]({})
        async with TestClient(TestServer(rt.http)) as client:
            response = await client.get(f"/orders/{rejected.order_id}/notifications")
            served = await response.json()
            unknown = await client.get(f"/orders/{uuid7()}/notifications")
            stats = await (await client.get("/stats")).json()
            unknown_body = await unknown.json()
    finally:
        await rt.db.close()

    assert [n["template"] for n in listed] == ["order_rejected"]
    assert listed[0]["recipient"] == "channel:web"
    assert listed[0]["status"] == "sent"
    # Command replies are encoded with orjson, which takes nothing but plain str keys.
    assert orjson.loads(orjson.dumps(listed)) == listed
    assert response.status == 200 and served == listed
    assert unknown.status == 200 and unknown_body == []
    assert stats == {"service": "notify", "notifications": {"order_rejected": 1}}
    # The log sink got it after the commit.
    log_lines = (tmp_path / "notifications.log").read_text(encoding="utf-8").splitlines()
    assert len(log_lines) == 1 and rejected.order_id in log_lines[0]
