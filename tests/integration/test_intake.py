"""Intake started for real: channels publish on JetStream, call over HTTP or NATS request/reply,
and every submission gets exactly one answer on the intake stream."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from nats.js import JetStreamContext

from services.intake.app import create_service
from services.intake.settings import IntakeSettings
from shared import streams, subjects
from shared.contracts.envelope import Envelope
from shared.contracts.intake import (
    MAX_SUBMISSION_BYTES,
    OrderAccepted,
    OrderDuplicate,
    OrderRejected,
)
from shared.rpc import CommandRefused, call
from shared.runtime import ServiceRuntime
from tests.conftest import eventually, order_doc, settings_for
from tests.integration.harness import nats_client, running, stream_envelopes, stream_messages

SUBMISSIONS_CONSUMER = "intake-submissions"
# Test keys, one per channel, handed to intake through its settings (never from code).
KEYS = {
    "web": "web-key-0123456789abcdef",
    "wechat": "wechat-key-0123456789abcd",
    "phone": "phone-key-0123456789abcdef",
    "marketplace": "market-key-0123456789abcd",
    "spreadsheet": "sheet-key-0123456789abcdef",
}
OPERATOR_KEY = "ops-key-0123456789abcdefgh"


def intake_settings(
    nats_url: str, database_url: str, tmp_path: Path, **changes: Any
) -> IntakeSettings:
    """Intake's settings for a test, with a credentials file as the launcher writes it."""
    base = settings_for(nats_url, database_url, tmp_path)
    keys_file = tmp_path / "credentials.json"
    keys_file.write_text(json.dumps({"channels": KEYS, "operators": {"ops": OPERATOR_KEY}}))
    return IntakeSettings(**{**base.model_dump(), "channel_keys_file": keys_file, **changes})


def auth(channel: str = "web") -> dict[str, str]:
    key = OPERATOR_KEY if channel == "ops" else KEYS[channel]
    return {"Authorization": f"Bearer {key}"}


def unique_ext(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


async def submit(js: JetStreamContext, doc: dict[str, Any] | bytes, channel: str = "web") -> None:
    raw = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    await js.publish(subjects.submission(channel), raw)


async def answers(js: JetStreamContext, n: int) -> list[Envelope]:
    """Wait until the intake stream holds at least ``n`` answers, and return them all."""

    async def enough() -> list[Envelope]:
        found = await stream_envelopes(js, streams.INTAKE.name)
        return found if len(found) >= n else []

    return await eventually(enough, what=f"{n} answers on the intake stream")


def intake_metric(rt: ServiceRuntime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, {"service": "intake", **labels}) or 0.0


async def test_every_submission_gets_exactly_one_answer(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    rt = create_service(intake_settings(nats_url, database_url, tmp_path))
    first, second, third = (unique_ext("web") for _ in range(3))
    invalid = order_doc(
        unique_ext("bad"),
        currency="cny",
        customer={"name": "Mei Lin", "email": "not-an-address"},
        lines=[{"sku": "TEA-001", "quantity": 0, "unit_price": "12.50"}],
    )
    async with nats_client(nats_url) as (_, js), running(rt):
        for ext in (first, second, third):
            await submit(js, order_doc(ext))
        await submit(js, invalid)
        # The same reference from another channel is another order, not a duplicate.
        await submit(js, order_doc(first, channel="wechat"), channel="wechat")
        accepted_before = {
            (e.data.channel, e.data.external_id): e.data.order_id
            for e in await answers(js, 5)
            if isinstance(e.data, OrderAccepted)
        }
        await submit(js, order_doc(first))
        found = await answers(js, 6)
        submissions_total = intake_metric(
            rt, "orderflow_events_processed_total", handler="submission"
        )

    by_type = Counter(type(e.data).__name__ for e in found)
    assert by_type == {"OrderAccepted": 4, "OrderRejected": 1, "OrderDuplicate": 1}
    accepted = [e.data for e in found if isinstance(e.data, OrderAccepted)]
    assert sorted((a.channel, a.external_id) for a in accepted) == sorted(
        [("web", first), ("web", second), ("web", third), ("wechat", first)]
    )
    assert len({a.order_id for a in accepted}) == 4
    assert all(str(a.total) == "25.00" and a.currency == "CNY" for a in accepted)

    [rejected] = [e.data for e in found if isinstance(e.data, OrderRejected)]
    assert rejected.external_id == invalid["external_id"]
    assert sorted(err.field for err in rejected.errors) == [
        "currency",
        "customer.email",
        "lines.0.quantity",
    ]

    [duplicate] = [e.data for e in found if isinstance(e.data, OrderDuplicate)]
    assert duplicate.external_id == first
    assert duplicate.channel == "web"
    assert duplicate.order_id == accepted_before[("web", first)]

    for env in found:
        assert env.subject == subjects.event(subjects.INTAKE, env.type, env.key)
    assert submissions_total == 6
    assert intake_metric(rt, "orderflow_orders_total", outcome="accepted", channel="web") == 3
    assert intake_metric(rt, "orderflow_orders_total", outcome="duplicate", channel="web") == 1


async def test_a_redelivered_submission_gets_no_second_answer(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    settings = intake_settings(nats_url, database_url, tmp_path)
    async with nats_client(nats_url) as (_, js):
        async with running(create_service(settings)):
            await submit(js, order_doc(unique_ext("web")))
            await submit(js, b"{not json")
            before = await answers(js, 2)
        # Recreating the durable consumer makes JetStream deliver every submission again, as
        # it would after a crash between commit and ack.
        await js.delete_consumer(streams.SUBMISSIONS.name, SUBMISSIONS_CONSUMER)
        restarted = create_service(settings)
        async with running(restarted):

            async def skipped() -> float:
                return intake_metric(
                    restarted, "orderflow_inbox_duplicates_total", consumer=SUBMISSIONS_CONSUMER
                )

            async def both_skipped() -> bool:
                # The two redeliveries may come in two batches: wait for both, not the first.
                return await skipped() >= 2

            await eventually(both_skipped, what="both redeliveries skipped")
            assert await skipped() == 2
            await restarted.outbox.drain()
            after = await stream_envelopes(js, streams.INTAKE.name)

    assert [e.type for e in before] == ["order_accepted", "order_rejected"]
    assert [e.event_id for e in after] == [e.event_id for e in before]


@pytest.fixture
async def intake(nats_url: str, database_url: str, tmp_path: Path) -> AsyncIterator[ServiceRuntime]:
    async with running(create_service(intake_settings(nats_url, database_url, tmp_path))) as rt:
        yield rt


async def test_http_submission_answers(intake: ServiceRuntime, nats_url: str) -> None:
    base = f"http://127.0.0.1:{intake.http_port}"
    doc = order_doc(unique_ext("http"))
    async with aiohttp.ClientSession(headers=auth("web")) as http:
        async with http.post(f"{base}/orders", json=doc) as resp:
            assert resp.status == 202
            created = await resp.json()
        assert created["outcome"] == "accepted"
        order_id = created["order_id"]

        async with http.post(f"{base}/orders", json=doc) as resp:
            assert resp.status == 200
            assert (await resp.json())["order_id"] == order_id

        async with http.get(f"{base}/orders/{order_id}") as resp:
            assert resp.status == 200
            status = await resp.json()
        assert status["status"] == "accepted"
        assert status["external_id"] == doc["external_id"]
        assert status["total"] == "25.00"

        bad = order_doc(
            unique_ext("http"),
            lines=[{"sku": "tea", "quantity": 2, "unit_price": "-1"}],
            shipping_address={**doc["shipping_address"], "country": "China"},
        )
        async with http.post(f"{base}/orders", json=bad) as resp:
            assert resp.status == 422
            refused = await resp.json()
        assert refused["outcome"] == "rejected"
        assert sorted(e["field"] for e in refused["errors"]) == [
            "lines.0.sku",
            "lines.0.unit_price",
            "shipping_address.country",
        ]
        async with http.get(f"{base}/orders/{refused['order_id']}") as resp:
            assert (await resp.json())["status"] == "rejected"
        # A corrected resubmission under the same reference is a new order, not a duplicate.
        async with http.post(
            f"{base}/orders", json={**doc, "external_id": bad["external_id"]}
        ) as resp:
            assert resp.status == 202
            assert (await resp.json())["order_id"] != refused["order_id"]

        async with http.post(f"{base}/orders", data=b"<order>xml?</order>") as resp:
            assert resp.status == 422
            unreadable = await resp.json()
            assert [e["field"] for e in unreadable["errors"]] == ["(body)"]

        async with http.get(f"{base}/orders/{uuid.uuid4()}") as resp:
            assert resp.status == 404

    # The unreadable body is kept, raw, as a dead letter beside its rejection.
    async with nats_client(nats_url) as (_, js):
        [letter] = await eventually(
            lambda: stream_messages(js, streams.DEAD_LETTERS.name), what="the dead letter"
        )
    assert letter.data == b"<order>xml?</order>"
    assert letter.subject == subjects.dead_letter("intake", "intake-http")
    assert (letter.headers or {})["Orderflow-Rejection"] == unreadable["order_id"]


async def test_concurrent_http_retries_of_one_order_get_one_acceptance(
    intake: ServiceRuntime,
) -> None:
    base = f"http://127.0.0.1:{intake.http_port}"
    doc = order_doc(unique_ext("retry"))
    async with aiohttp.ClientSession(headers=auth("web")) as http:

        async def post() -> tuple[int, Any]:
            async with http.post(f"{base}/orders", json=doc) as resp:
                body = await resp.json() if resp.content_type == "application/json" else None
                return resp.status, body

        # A channel that timed out and retried while its first request was still running.
        results = await asyncio.gather(*(post() for _ in range(8)))
    assert sorted(status for status, _ in results) == [200] * 7 + [202]
    assert len({body["order_id"] for _, body in results}) == 1


async def test_http_refuses_an_oversized_body(intake: ServiceRuntime) -> None:
    base = f"http://127.0.0.1:{intake.http_port}"
    huge = json.dumps(order_doc(note="x" * (MAX_SUBMISSION_BYTES + 1))).encode()

    async def chunked() -> AsyncIterator[bytes]:
        # No Content-Length: the server must stop reading at the limit by itself.
        for start in range(0, len(huge), 8192):
            yield huge[start : start + 8192]

    async with aiohttp.ClientSession(headers=auth("web")) as http:
        async with http.post(f"{base}/orders", data=huge) as resp:
            assert resp.status == 413
            assert (await resp.json())["errors"][0]["field"] == "(body)"
        async with http.post(f"{base}/orders", data=chunked()) as resp:
            assert resp.status == 413
    assert intake_metric(intake, "orderflow_orders_total", outcome="rejected", channel="web") == 0


async def test_health_readiness_and_metrics(intake: ServiceRuntime, nats_url: str) -> None:
    base = f"http://127.0.0.1:{intake.http_port}"
    async with nats_client(nats_url) as (_, js):
        await submit(js, order_doc(unique_ext("metrics")))
        await answers(js, 1)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200
            assert await resp.json() == {"service": "intake", "nats": True, "database": True}
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    assert (
        'orderflow_handler_duration_seconds_count{handler="submission",service="intake"} 1.0'
        in (text)
    )
    assert 'orderflow_orders_total{channel="web",outcome="accepted",service="intake"} 1.0' in text


async def test_rpc_submit_and_status(intake: ServiceRuntime, nats_url: str) -> None:
    doc = order_doc(unique_ext("phone"), channel="phone")
    async with nats_client(nats_url) as (nc, js):
        answer = await call(nc, "intake", "submit", {"channel": "phone", "order": doc})
        assert answer["outcome"] == "accepted"
        assert answer["errors"] == []
        again = await call(nc, "intake", "submit", {"channel": "phone", "order": doc})
        assert again == {"outcome": "duplicate", "order_id": answer["order_id"], "errors": []}
        assert answer["priority"] == "normal" and answer["priority_rule"] == "as-requested"

        status = await call(nc, "intake", "status", {"order_id": answer["order_id"]})
        assert status["status"] == "accepted"
        assert status["channel"] == "phone"

        mismatch = await call(nc, "intake", "submit", {"channel": "web", "order": doc})
        assert mismatch["outcome"] == "rejected"
        assert [e["field"] for e in mismatch["errors"]] == ["channel"]

        with pytest.raises(CommandRefused, match="no order"):
            await call(nc, "intake", "status", {"order_id": str(uuid.uuid4())})
        with pytest.raises(CommandRefused, match="submit needs"):
            await call(nc, "intake", "submit", {"channel": "phone"})

        published = await answers(js, 3)
    assert [e.type for e in published] == ["order_accepted", "order_duplicate", "order_rejected"]
    assert published[0].key == answer["order_id"]
