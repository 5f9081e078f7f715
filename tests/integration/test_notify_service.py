"""Notify started for real against a nats-server, a signed-webhook receiver and an SMTP server:
each message reaches each sink exactly once through redeliveries, relay duplicates, restarts and
a second replica; a failing webhook is retried with backoff, then given up with an alert; a slow
one never holds up the consumers; and the CLI lists, and resends, what happened."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.js import JetStreamContext
from sqlalchemy import func, select

from orderflow import cli
from services.notify.app import create_service
from services.notify.models import deliveries, notifications
from services.notify.settings import NotifySettings
from shared import streams, subjects
from shared.contracts.common import Address, Customer, OrderLine, StockLine
from shared.contracts.envelope import Envelope, Event, new_envelope
from shared.contracts.fulfillment import ShipmentShipped
from shared.contracts.intake import OrderAccepted
from shared.contracts.notify import NotificationFailed, NotificationSent
from shared.ids import uuid7
from shared.rpc import call
from shared.runtime import ServiceRuntime
from tests.conftest import eventually, settings_for
from tests.integration.harness import nats_client, running, stream_envelopes
from tests.integration.test_notify_sinks import SECRET, SmtpReceiver, WebhookReceiver

OPS_SECRET = "ops-secret-abcdefghijkl"


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpReceiver]:
    server = SmtpReceiver()
    await server.start()
    yield server
    await server.stop()


def notify_settings(
    nats_url: str, database_url: str, tmp_path: Path, **changes: Any
) -> NotifySettings:
    values: dict[str, Any] = {
        **settings_for(nats_url, database_url, tmp_path).model_dump(),
        "notify_delivery_poll_s": 0.05,
        "notify_retry_base_s": 0.05,
        "notify_retry_max_s": 1.0,
        "notify_max_attempts": 3,
    }
    values.update(changes)
    return NotifySettings(**values)


def accepted(locale: str = "zh-CN") -> OrderAccepted:
    oid = uuid7()
    return OrderAccepted(
        order_id=oid,
        channel="web",
        external_id=f"W-{oid[-10:]}",
        customer=Customer(name="Mei Lin", email=f"mei-{oid[-8:]}@example.com", locale=locale),
        lines=[OrderLine(sku="TEA-001", quantity=2, unit_price=Decimal("12.50"))],
        currency="CNY",
        total=Decimal("25.00"),
        shipping_address=Address(
            name="Mei Lin",
            line1="18 Longjing Rd",
            city="Hangzhou",
            postal_code="310000",
            country="CN",
        ),
        priority="normal",
        submitted_at=datetime.now(UTC),
    )


def shipped(order_id: str) -> ShipmentShipped:
    return ShipmentShipped(
        order_id=order_id,
        shipment_id=uuid7(),
        warehouse="WH-1",
        actor="simulator",
        submitted_at=datetime.now(UTC),
        carrier="SF-EXPRESS",
        tracking_number=f"SF{order_id[-10:]}",
        lines=[StockLine(sku="TEA-001", warehouse="WH-1", quantity=2)],
    )


async def publish(js: JetStreamContext, env: Envelope, msg_id: str | None = None) -> None:
    """As the producer's outbox relay does; another ``msg_id`` is a duplicate the stream's dedup
    window cannot catch (a relay after a crash, later than the window)."""
    await js.publish(env.subject, env.encode(), headers={"Nats-Msg-Id": msg_id or env.event_id})


def log_lines(settings: NotifySettings) -> list[dict[str, Any]]:
    path = settings.notification_log
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def count(rt: ServiceRuntime, table: Any, **where: str) -> int:
    async with rt.db.reading() as conn:
        stmt = select(func.count()).select_from(table)
        for column, value in where.items():
            stmt = stmt.where(table.c[column] == value)
        return int(await conn.scalar(stmt) or 0)


def metric(rt: ServiceRuntime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, {"service": "notify", **labels}) or 0.0


async def events_of(js: JetStreamContext, kind: type[Event]) -> list[Any]:
    return [
        e.data for e in await stream_envelopes(js, streams.NOTIFY.name) if isinstance(e.data, kind)
    ]


async def test_each_message_reaches_each_sink_once_through_redelivery_duplicates_and_restart(
    nats_url: str,
    database_url: str,
    tmp_path: Path,
    webhook: WebhookReceiver,
    smtp: SmtpReceiver,
) -> None:
    settings = notify_settings(
        nats_url,
        database_url,
        tmp_path,
        notify_webhook_url=webhook.url,
        notify_webhook_secret=SECRET,
        notify_smtp_host="127.0.0.1",
        notify_smtp_port=smtp.port,
        notify_smtp_sender="shop@example.com",
    )
    order = accepted()
    confirmed, sent_out = new_envelope(order), new_envelope(shipped(order.order_id))

    def delivered() -> tuple[int, int, int]:
        return len(webhook.accepted), len(smtp.messages), len(log_lines(settings))

    async with nats_client(nats_url) as (_, js):
        async with running(create_service(settings)) as rt:
            # The shipment first: notify does not know the customer yet, so it is redelivered
            # until the acceptance (on another stream) has been applied.
            await publish(js, sent_out)
            await asyncio.sleep(0.3)
            await publish(js, confirmed)
            await publish(js, confirmed)  # the same message id: the stream drops it
            await publish(js, confirmed, msg_id=uuid7())  # a relay duplicate: the inbox does

            async def all_delivered() -> bool:
                return delivered() == (2, 2, 2)

            await eventually(all_delivered, what="2 messages through each of 3 sinks")
            assert metric(rt, "orderflow_redeliveries_total", consumer="notify-fulfillment") >= 1
        async with running(create_service(settings)) as again:
            await publish(js, confirmed, msg_id=uuid7())
            await publish(js, sent_out, msg_id=uuid7())

            async def skipped() -> bool:
                return (
                    metric(again, "orderflow_inbox_duplicates_total", consumer="notify-intake")
                    + metric(
                        again, "orderflow_inbox_duplicates_total", consumer="notify-fulfillment"
                    )
                    >= 2
                )

            await eventually(skipped, what="the restarted notify to skip both repeats")
            await asyncio.sleep(0.3)
            assert await count(again, notifications, order_id=order.order_id) == 2
            assert await count(again, deliveries, status="sent") == 6
        sent_events = await events_of(js, NotificationSent)

    assert delivered() == (2, 2, 2)
    assert webhook.bad_signatures == 0
    assert sorted(d["template"] for d in webhook.accepted) == ["order_confirmed", "order_shipped"]
    assert {d["address"] for d in webhook.accepted} == {order.customer.email}
    assert {m["To"] for m in smtp.messages} == {order.customer.email}
    subjects_sent = sorted(m["Subject"] for m in smtp.messages)
    assert subjects_sent == sorted(
        [f"您的订单 {order.external_id} 已确认", f"您的订单 {order.external_id} 已发货"]
    )
    # One notification_sent per (notification, sink), each naming its delivery.
    assert Counter((e.template, e.sink) for e in sent_events) == {
        (t, s): 1 for t in ("order_confirmed", "order_shipped") for s in ("log", "webhook", "email")
    }
    assert len({e.delivery_id for e in sent_events}) == 6


async def test_a_webhook_that_fails_is_retried_with_backoff_and_one_that_keeps_failing_is_given_up(
    nats_url: str, tmp_path: Path, webhook: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    flaky = webhook
    flaky.statuses = [503, 503, 200]
    broken = WebhookReceiver(OPS_SECRET, statuses=[500])
    await broken.start()
    settings = notify_settings(
        nats_url,
        f"sqlite+aiosqlite:///{tmp_path / 'notify.db'}",
        tmp_path,
        notify_webhook_url=flaky.url,
        notify_webhook_secret=SECRET,
        notify_webhooks=[
            {"name": "crm", "url": broken.url, "secret": OPS_SECRET, "events": "customer"}
        ],
        notify_retry_base_s=0.3,
        notify_retry_jitter=0.1,
    )
    order = accepted(locale="en")
    monkeypatch.setenv("ORDERFLOW_NATS_URL", nats_url)
    try:
        async with nats_client(nats_url) as (nc, js), running(create_service(settings)) as rt:
            await publish(js, new_envelope(order))

            async def settled() -> bool:
                done = await count(rt, deliveries, status="sent") + await count(
                    rt, deliveries, status="failed"
                )
                return done >= 3  # flaky sent, crm failed, the alert logged

            await eventually(settled, timeout=15, what="retries and the give-up")
            failed_listed = await call(nc, "notify", "failed_deliveries", {})
            failed_events = await events_of(js, NotificationFailed)
            cli_failed = await run_cli("notifications", "failed")

            # The CRM is fixed; an operator sends the message again.
            broken.statuses = [200]
            [failed] = failed_listed
            resent = await run_cli("notifications", "resend", failed["delivery_id"])

            async def resent_ok() -> bool:
                return (
                    await count(rt, deliveries, delivery_id=failed["delivery_id"], status="sent")
                    == 1
                )

            await eventually(resent_ok, what="the resent delivery to be sent")
            listing = await run_cli("notifications", order.order_id)
            listing_json = orjson.loads(await run_cli("notifications", order.order_id, "--json"))
            attempts = await call(
                nc, "notify", "delivery_attempts", {"delivery_id": failed["delivery_id"]}
            )
            sent_metric = metric(rt, "orderflow_notify_deliveries_total", sink="crm", result="sent")
            failed_metric = metric(
                rt, "orderflow_notify_deliveries_total", sink="crm", result="failed"
            )
            retries = metric(rt, "orderflow_notify_delivery_retries_total", sink="webhook")
            alerts = metric(rt, "orderflow_notify_alerts_total", alert="delivery_failed")
            durations = metric(
                rt, "orderflow_notify_delivery_duration_seconds_count", sink="webhook"
            )
    finally:
        await broken.stop()

    # The flaky endpoint: two 503s, then taken, each wait about twice the one before.
    assert [c.status for c in flaky.calls] == [503, 503, 200]
    first_wait = flaky.calls[1].at - flaky.calls[0].at
    second_wait = flaky.calls[2].at - flaky.calls[1].at
    assert 0.25 < first_wait < second_wait
    assert len({c.headers["Orderflow-Delivery-Id"] for c in flaky.calls}) == 1
    assert [c.headers["Orderflow-Attempt"] for c in flaky.calls] == ["1", "2", "3"]
    assert retries == 2 and durations == 3
    # The broken one: three tries, then given up, recorded, announced and alerted.
    assert len([c for c in broken.calls if c.status == 500]) == 3
    assert failed["sink"] == "crm" and failed["attempts"] == 3
    assert failed["last_error"] == "HTTP 500: try later"
    assert failed["order_id"] == order.order_id and failed["template"] == "order_confirmed"
    [event] = failed_events
    assert (event.delivery_id, event.sink, event.attempts) == (failed["delivery_id"], "crm", 3)
    assert failed_metric == 1 and alerts == 1 and sent_metric == 1
    alert_lines = [d for d in log_lines(settings) if d["template"] == "alert_delivery_failed"]
    assert len(alert_lines) == 1 and failed["delivery_id"] in alert_lines[0]["body"]
    assert failed["delivery_id"] in cli_failed and "HTTP 500" in cli_failed
    assert "queued" in resent
    assert [a["result"] for a in attempts] == ["error", "error", "error", "sent"]
    # The order's history: the confirmation, a delivery per sink, all sent in the end; and the
    # alert about it, which went to the log only (the webhooks take customer messages).
    note, alert = listing_json
    assert (note["template"], alert["template"]) == ("order_confirmed", "alert_delivery_failed")
    assert {d["sink"]: d["status"] for d in note["deliveries"]} == {
        "log": "sent",
        "webhook": "sent",
        "crm": "sent",
    }
    assert [(d["sink"], d["status"]) for d in alert["deliveries"]] == [("log", "sent")]
    assert "order_confirmed" in listing and "crm" in listing and "webhook" in listing


async def run_cli(*argv: str) -> str:
    """Run ``orderflow ...`` as a user would (in a thread: it runs its own event loop)."""

    def run() -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(list(argv))
        assert code == 0, (argv, code, out.getvalue())
        return out.getvalue()

    return await asyncio.to_thread(run)


async def test_a_slow_webhook_never_holds_up_the_consumers(nats_url: str, tmp_path: Path) -> None:
    slow = WebhookReceiver(delay_s=2.0)
    await slow.start()
    settings = notify_settings(
        nats_url,
        f"sqlite+aiosqlite:///{tmp_path / 'notify.db'}",
        tmp_path,
        notify_webhook_url=slow.url,
        notify_webhook_secret=SECRET,
        notify_webhook_timeout_s=5,
    )
    orders = [accepted() for _ in range(30)]
    try:
        async with nats_client(nats_url) as (_, js), running(create_service(settings)) as rt:
            started = time.monotonic()
            for o in orders:
                await publish(js, new_envelope(o))

            async def all_applied() -> bool:
                return await count(rt, notifications) == len(orders)

            await eventually(all_applied, timeout=5, what="all 30 orders applied")

            async def all_acked() -> Any:
                info = await js.consumer_info(streams.INTAKE.name, "notify-intake")
                return info if info.num_ack_pending == 0 and info.num_pending == 0 else None

            info = await eventually(all_acked, timeout=1.5, what="every message acked")
            acked_after = time.monotonic() - started
            webhook_done_then = slow.finished

            async def all_sent() -> bool:
                return await count(rt, deliveries, status="sent") == 2 * len(orders)

            await eventually(all_sent, timeout=15, what="every delivery sent")
    finally:
        await slow.stop()

    # Applied and acked while the webhook was still answering its first calls (2 s each).
    assert acked_after < 1.9
    assert webhook_done_then == 0
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert len({c.doc["delivery_id"] for c in slow.calls}) == len(orders) == len(slow.calls)


async def test_a_dead_lettered_message_is_alerted_to_operations(
    nats_url: str, tmp_path: Path
) -> None:
    pager = WebhookReceiver(OPS_SECRET)
    await pager.start()
    settings = notify_settings(
        nats_url,
        f"sqlite+aiosqlite:///{tmp_path / 'notify.db'}",
        tmp_path,
        notify_webhooks=[
            {"name": "pager", "url": pager.url, "secret": OPS_SECRET, "events": "operations"}
        ],
    )
    headers = {
        "Nats-Msg-Id": f"dlq:ORDERFLOW_INTAKE:7:{uuid7()}",
        "Orderflow-Error": "failed 5 times, last error: OperationalError('database is locked')",
        "Orderflow-Original-Subject": "orderflow.intake.order_accepted.O-77",
        "Orderflow-Stream": "ORDERFLOW_INTAKE",
        "Orderflow-Stream-Seq": "7",
        "Orderflow-Consumer": "inventory-orders",
        "Orderflow-Deliveries": "5",
    }
    try:
        async with nats_client(nats_url) as (_, js), running(create_service(settings)) as rt:
            subject = subjects.dead_letter("inventory", "inventory-orders")
            await js.publish(subject, b"\x00 not an envelope", headers=headers)
            await js.publish(subject, b"\x00 not an envelope", headers=headers)  # deduplicated

            async def paged() -> bool:
                return len(pager.accepted) >= 1

            await eventually(paged, what="the dead-letter alert at the pager")
            await asyncio.sleep(0.3)
            alerts = metric(rt, "orderflow_notify_alerts_total", alert="dead_letter")
    finally:
        await pager.stop()

    [page] = pager.accepted
    assert page["template"] == "alert_dead_letter" and page["recipient"] == "operations"
    assert "inventory-orders" in page["subject"]
    assert (
        "database is locked" in page["body"]
        and "orderflow.intake.order_accepted.O-77" in page["body"]
    )
    assert [d["template"] for d in log_lines(settings)] == ["alert_dead_letter"]
    assert alerts == 1


@pytest.mark.parametrize("handed_over", [True, False], ids=["handed-over", "claimed"])
async def test_two_replicas_send_each_delivery_once(
    nats_url: str, database_url: str, tmp_path: Path, webhook: WebhookReceiver, handed_over: bool
) -> None:
    settings = notify_settings(
        nats_url,
        database_url,
        tmp_path,
        notify_webhook_url=webhook.url,
        notify_webhook_secret=SECRET,
        notify_log_events="none",
        notify_delivery_batch=5,
        # Without the hand-over every delivery goes through the table, and both replicas look
        # for work often: they contend for the same rows.
        notify_delivery_queue=2000 if handed_over else 0,
        notify_delivery_poll_s=0.01,
    )
    orders = [accepted() for _ in range(40)]
    first, second = create_service(settings), create_service(settings)
    async with nats_client(nats_url) as (_, js), running(first), running(second):
        for o in orders:
            await publish(js, new_envelope(o))

        async def all_taken() -> bool:
            return len(webhook.accepted) >= len(orders)

        await eventually(all_taken, timeout=15, what="40 webhook calls")
        await asyncio.sleep(0.5)
        by_replica = [
            metric(rt, "orderflow_notify_deliveries_total", sink="webhook", result="sent")
            for rt in (first, second)
        ]

    ids = [d["delivery_id"] for d in webhook.accepted]
    assert len(ids) == len(set(ids)) == len(orders)
    assert sum(by_replica) == len(orders)
