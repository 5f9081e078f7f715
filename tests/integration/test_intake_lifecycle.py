"""Intake against a real nats-server: one order resent 100 times at once over HTTP, JetStream and
request/reply; an unparseable payload kept as a dead letter and still answered; the status view
and timeline through a whole lifecycle as the other services' events arrive; cancellation."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from nats.js import JetStreamContext
from sqlalchemy import func, select

from services.intake.app import create_service
from services.intake.models import orders
from shared import streams, subjects
from shared.contracts.common import Address, StockLine
from shared.contracts.envelope import Event, new_envelope
from shared.contracts.fulfillment import (
    OrderCancelled,
    ShipmentDelivered,
    ShipmentPacked,
    ShipmentPicked,
    ShipmentQueued,
    ShipmentShipped,
)
from shared.contracts.intake import OrderAccepted, OrderCancelRequested, OrderRejected
from shared.contracts.inventory import StockReserved
from shared.rpc import CommandRefused, call
from tests.conftest import eventually, order_doc
from tests.integration.harness import nats_client, running, stream_envelopes, stream_messages
from tests.integration.test_intake import auth, intake_settings, unique_ext


async def test_one_order_resent_100_times_at_once_over_http_nats_and_rpc_is_one_order(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    rt = create_service(intake_settings(nats_url, database_url, tmp_path))
    doc = order_doc(unique_ext("storm"))
    async with nats_client(nats_url) as (nc, js), running(rt):
        base = f"http://127.0.0.1:{rt.http_port}"
        async with aiohttp.ClientSession(headers=auth("web")) as http:

            async def over_http() -> str:
                async with http.post(f"{base}/orders", json=doc) as resp:
                    assert resp.status in (200, 202)
                    return str((await resp.json())["order_id"])

            async def over_jetstream(i: int) -> None:
                # Distinct message ids: a channel's retries, not the stream's dedup window.
                headers = {"Nats-Msg-Id": f"storm-{i}"}
                await js.publish(subjects.submission("web"), orjson.dumps(doc), headers=headers)

            async def over_rpc() -> str:
                answer = await call(nc, "intake", "submit", {"channel": "web", "order": doc})
                return str(answer["order_id"])

            results = await asyncio.gather(
                *(over_http() for _ in range(34)),
                *(over_jetstream(i) for i in range(33)),
                *(over_rpc() for _ in range(33)),
            )

        async def all_answered() -> list[Any]:
            found = await stream_envelopes(js, streams.INTAKE.name)
            return found if len(found) >= 100 else []

        answers = await all_answered() or await eventually(all_answered, what="100 answers")
        async with rt.db.reading() as conn:
            rows = (
                await conn.execute(
                    select(func.count()).where(orders.c.external_id == doc["external_id"])
                )
            ).scalar_one()

    assert rows == 1
    assert Counter(e.type for e in answers) == {"order_accepted": 1, "order_duplicate": 99}
    [order_id] = {e.data.order_id for e in answers}  # type: ignore[attr-defined]
    assert {r for r in results if r is not None} == {order_id}


async def test_an_unparseable_nats_payload_is_kept_raw_as_a_dead_letter_and_still_answered(
    nats_url: str, tmp_path: Path
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}"
    rt = create_service(intake_settings(nats_url, database, tmp_path))
    garbage = b"\x00\x01 <order>not json</order>"
    async with nats_client(nats_url) as (_, js), running(rt):
        await js.publish(subjects.submission("wechat"), garbage)

        async def parked() -> list[Any]:
            return await stream_messages(js, streams.DEAD_LETTERS.name)

        [letter] = await eventually(parked, what="the dead letter")
        [answer] = await eventually(
            lambda: stream_envelopes(js, streams.INTAKE.name), what="the rejection"
        )
    assert letter.data == garbage
    headers = letter.headers or {}
    assert headers["Orderflow-Error"].startswith("not valid JSON")
    assert headers["Orderflow-Channel"] == "wechat"
    assert headers["Orderflow-Original-Subject"] == subjects.submission("wechat")
    assert headers["Orderflow-Stream"] == streams.SUBMISSIONS.name
    assert letter.subject == subjects.dead_letter("intake", "intake-submissions")
    assert isinstance(answer.data, OrderRejected)
    assert headers["Orderflow-Rejection"] == answer.data.order_id
    assert [e.field for e in answer.data.errors] == ["(body)"]
    # The channel matches the answer to the sequence its PubAck gave it.
    assert answer.data.submission == f"{streams.SUBMISSIONS.name}:{headers['Orderflow-Stream-Seq']}"
    assert (
        rt.metrics.registry.get_sample_value(
            "orderflow_dead_letters_total", {"service": "intake", "consumer": "intake-submissions"}
        )
        == 1
    )


async def publish_event(js: JetStreamContext, event: Event) -> None:
    """Publish an event as its producing service would (the other services do not run here)."""
    env = new_envelope(event)
    await js.publish(env.subject, env.encode(), headers={"Nats-Msg-Id": env.event_id})


def shipment(kind: type[Event], order_id: str, **extra: Any) -> Event:
    return kind(
        order_id=order_id,
        shipment_id=f"shp-{order_id[-12:]}",
        warehouse="WH-SH",
        actor="simulator",
        submitted_at=datetime.now(UTC),
        channel="marketplace",
        **extra,
    )


async def test_the_status_timeline_follows_an_order_through_its_whole_lifecycle(
    nats_url: str, tmp_path: Path
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}"
    rt = create_service(intake_settings(nats_url, database, tmp_path))
    doc = order_doc(unique_ext("life"), channel="marketplace", priority="urgent")
    lines = [StockLine(sku="TEA-001", warehouse="WH-SH", quantity=2)]
    now = datetime.now(UTC)
    async with nats_client(nats_url) as (nc, js), running(rt):
        answer = await call(nc, "intake", "submit", {"channel": "marketplace", "order": doc})
        oid = answer["order_id"]
        await publish_event(
            js,
            StockReserved(
                order_id=oid,
                allocations=lines,
                priority="urgent",
                channel="marketplace",
                ship_to=Address(
                    name="Mei", line1="1 Rd", city="Hangzhou", postal_code="310000", country="CN"
                ),
                submitted_at=now,
            ),
        )
        sla = now + timedelta(hours=4)
        steps: list[Event] = [
            shipment(ShipmentQueued, oid, priority="urgent", sla_deadline=sla, lines=lines),
            shipment(ShipmentPicked, oid),
            shipment(ShipmentPacked, oid),
            shipment(ShipmentShipped, oid, carrier="SF", tracking_number="SF100", lines=lines),
            shipment(ShipmentDelivered, oid),
        ]
        for step in steps:
            await publish_event(js, step)

        async def delivered() -> dict[str, Any] | None:
            status: dict[str, Any] = await call(nc, "intake", "status", {"order_id": oid})
            return status if status["status"] == "delivered" else None

        status = await eventually(delivered, what="the order delivered in the view")
        with pytest.raises(CommandRefused, match="too late: the order is delivered"):
            await call(nc, "intake", "cancel", {"order_id": oid, "reason": "late"})

    assert status["priority"] == "urgent"
    assert status["priority_rule"] == "urgent-request"
    assert status["priority_reason"] == "rule 'urgent-request': urgency in ['urgent']"
    assert status["owner"] == "desk-marketplace"
    timeline = [(e["what"], e["by"]) for e in status["timeline"]]
    assert timeline == [
        ("submitted", "channel"),
        ("accepted", "intake"),
        ("reserved", "inventory"),
        ("queued", "fulfillment"),
        ("picked", "fulfillment"),
        ("packed", "fulfillment"),
        ("shipped", "fulfillment"),
        ("delivered", "fulfillment"),
    ]
    assert [e["at"] for e in status["timeline"]] == sorted(e["at"] for e in status["timeline"])


async def test_a_cancellation_goes_to_fulfillment_and_the_view_shows_its_outcome(
    nats_url: str, tmp_path: Path
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}"
    rt = create_service(intake_settings(nats_url, database, tmp_path))
    async with nats_client(nats_url) as (nc, js), running(rt):
        base = f"http://127.0.0.1:{rt.http_port}"
        async with (
            aiohttp.ClientSession(headers=auth("web")) as http,
            http.post(f"{base}/orders", json=order_doc(unique_ext("cx"))) as resp,
        ):
            oid = (await resp.json())["order_id"]
        first = await call(
            nc, "intake", "cancel", {"order_id": oid, "reason": "customer called", "actor": "ops"}
        )
        second = await call(nc, "intake", "cancel", {"order_id": oid})
        with pytest.raises(CommandRefused, match="no order"):
            await call(nc, "intake", "cancel", {"order_id": str(uuid.uuid4())})

        async def requested() -> list[Any]:
            found = await stream_envelopes(js, streams.INTAKE.name)
            return [e for e in found if isinstance(e.data, OrderCancelRequested)]

        [request] = await eventually(requested, what="OrderCancelRequested on the stream")
        await publish_event(
            js, OrderCancelled(order_id=oid, reason="cancelled before picking", actor="ops")
        )

        async def cancelled() -> dict[str, Any] | None:
            status: dict[str, Any] = await call(nc, "intake", "status", {"order_id": oid})
            return status if status["status"] == "cancelled" else None

        status = await eventually(cancelled, what="the order cancelled in the view")
        with pytest.raises(CommandRefused, match="already cancelled"):
            await call(nc, "intake", "cancel", {"order_id": oid})
        answers = await stream_envelopes(js, streams.INTAKE.name)

    assert (first["outcome"], second["outcome"]) == ("requested", "pending")
    assert request.key == oid
    assert (request.data.reason, request.data.actor) == ("customer called", "operator:tests/ops")  # type: ignore[attr-defined]
    assert request.subject == subjects.event("intake", "order_cancel_requested", oid)
    assert sum(isinstance(e.data, OrderCancelRequested) for e in answers) == 1
    assert sum(isinstance(e.data, OrderAccepted) for e in answers) == 1
    cancelled_entry = status["timeline"][-1]
    assert (cancelled_entry["what"], cancelled_entry["by"]) == ("cancelled", "fulfillment")
    assert cancelled_entry["detail"] == "cancelled before picking"
