"""Notify's wiring, without NATS: what it consumes, and its commands, routes and stats."""

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
from tests.conftest import AS_OPERATOR


def test_it_consumes_the_lifecycle_events_and_dead_letters_it_tells_people_about(
    tmp_path: Path,
) -> None:
    rt = create_service(ServiceSettings(home=tmp_path))

    consumed = {
        spec.name: (spec.stream, sorted(spec.filter_subjects), sorted(spec.handlers))
        for spec in rt.consumer_specs
    }

    fulfillment_types = sorted(
        [
            "shipment_shipped",
            "shipment_delivered",
            "order_cancelled",
            "return_received",
            "refund_due",
            "shipment_delivery_failed",
            "shipment_overdue",
            "shipment_escalated",
        ]
    )
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
            sorted(
                subjects.events_of(subjects.INVENTORY, t)
                for t in ("stock_backordered", "low_stock")
            ),
            ["low_stock", "stock_backordered"],
        ),
        "notify-fulfillment": (
            streams.FULFILLMENT.name,
            sorted(subjects.events_of(subjects.FULFILLMENT, t) for t in fulfillment_types),
            fulfillment_types,
        ),
        "notify-dead-letters": (
            streams.DEAD_LETTERS.name,
            [subjects.DEAD_LETTERS_ALL],
            ["dead_letter"],
        ),
    }
    assert streams.NOTIFY in rt.streams and streams.DEAD_LETTERS in rt.streams
    assert isinstance(rt.settings, NotifySettings)
    assert rt.settings.home == tmp_path


async def test_notifications_are_served_by_commands_routes_and_stats(tmp_path: Path) -> None:
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
        failed: Any = await rt.rpc.commands["failed_deliveries"]({})
        with pytest.raises(CommandRefused):
            await rt.rpc.commands["notifications"]({})
        with pytest.raises(CommandRefused, match="no delivery"):
            await rt.rpc.commands["resend"]({"delivery_id": uuid7()})
        with pytest.raises(CommandRefused, match="will be sent"):
            await rt.rpc.commands["resend"](
                {"delivery_id": listed[0]["deliveries"][0]["delivery_id"]}
            )
        async with TestClient(TestServer(rt.http), headers=AS_OPERATOR) as client:
            response = await client.get(f"/orders/{rejected.order_id}/notifications")
            served = await response.json()
            unknown = await client.get(f"/orders/{uuid7()}/notifications")
            unknown_body = await unknown.json()
            failed_served = await (await client.get("/deliveries/failed")).json()
            resend_unknown = await client.post(f"/deliveries/{uuid7()}/resend")
            stats = await (await client.get("/stats")).json()
    finally:
        await rt.db.close()

    [note] = listed
    assert note["template"] == "order_rejected"
    assert note["recipient"] == "channel:web"
    [only] = note["deliveries"]
    # Claimed at once by this process's log worker, which is not running (the service is not
    # started): not sent, and nothing pretends otherwise.
    assert (only["sink"], only["status"], only["attempts"]) == ("log", "sending", 1)
    assert failed == [] and failed_served == []
    # Command replies are encoded with orjson, which takes nothing but plain str keys.
    assert orjson.loads(orjson.dumps(listed)) == listed
    assert response.status == 200 and served == listed
    assert unknown.status == 200 and unknown_body == []
    assert resend_unknown.status == 404
    assert stats == {
        "service": "notify",
        "notifications": {"order_rejected": 1},
        "deliveries": {"log": {"sending": 1}},
    }
