"""Notify's handlers against a real SQLite database, run the way the batch consumer runs them:
one transaction per batch, after-commit callbacks once it has committed. They store what to say
and a pending delivery per sink; sending is the delivery worker's (test_notify_delivery.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from services.notify import delivery, domain, handlers
from services.notify.delivery import Dispatcher, NotifyMetrics
from services.notify.domain import Route
from services.notify.models import deliveries, metadata, notifications, recipients
from shared.consumer import UnitOfWork, run_after_commit
from shared.contracts.common import Address, Customer, FieldError, OrderLine, StockLine
from shared.contracts.envelope import Envelope, Event, new_envelope
from shared.contracts.fulfillment import (
    OrderCancelled,
    RefundDue,
    ReturnReceived,
    ShipmentDelivered,
    ShipmentDeliveryFailed,
    ShipmentEscalated,
    ShipmentOverdue,
    ShipmentShipped,
)
from shared.contracts.intake import OrderAccepted, OrderRejected
from shared.contracts.inventory import LowStock, Shortage, StockBackordered
from shared.db import Database
from shared.ids import uuid7
from shared.metrics import ServiceMetrics

Handler = Callable[[UnitOfWork, list[Any]], Awaitable[None]]

ROUTES = [
    Route("log", "log", frozenset({"all"})),
    Route("webhook", "webhook", frozenset({"customer"})),
    Route("email", "email", frozenset({"all"}), operations_address="ops@example.com"),
]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    # A file, not :memory:, so a second connection sees only what was committed.
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'notify.db'}", metadata)
    await database.create_schema()
    yield database
    await database.close()


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics("notify")


@pytest.fixture
def dispatcher(metrics: ServiceMetrics) -> Dispatcher:
    # No delivery workers attached: every delivery is left pending for one to claim.
    return Dispatcher(routes=ROUTES, metrics=NotifyMetrics(metrics), attempt_limit=5)


@pytest.fixture
def on_accepted(dispatcher: Dispatcher, metrics: ServiceMetrics) -> Handler:
    async def handle(uow: UnitOfWork, events: list[Envelope]) -> None:
        await handlers.order_accepted(uow, events, dispatcher, metrics)

    return handle


def bind(handler: Callable[..., Awaitable[None]], *args: Any) -> Handler:
    async def handle(uow: UnitOfWork, events: list[Any]) -> None:
        await handler(uow, events, *args)

    return handle


async def apply(db: Database, handler: Handler, events: list[Any]) -> UnitOfWork:
    """What BatchConsumer does with one run of same-type events."""
    async with db.transaction() as conn:
        uow = UnitOfWork(conn)
        await handler(uow, events)
    await run_after_commit(uow.after_commit)
    return uow


def envelope(event: Event) -> Envelope:
    return new_envelope(event)


NOW = datetime.now(UTC) - timedelta(seconds=2)


def accepted(
    locale: str = "en", email: str | None = None, phone: str | None = None, channel: str = "web"
) -> OrderAccepted:
    order_id = uuid7()
    if email is None and phone is None:
        email = f"buyer-{order_id[-12:]}@example.com"
    return OrderAccepted(
        order_id=order_id,
        channel=channel,
        external_id=f"EXT-{order_id[-12:]}",
        customer=Customer(name="Ana Silva", email=email, phone=phone, locale=locale),
        lines=[OrderLine(sku="TEA-001", quantity=3, unit_price=Decimal("4.00"))],
        currency="EUR",
        total=Decimal("12.00"),
        shipping_address=Address(
            name="Ana Silva", line1="Rua 1", city="Lisboa", postal_code="1000-001", country="PT"
        ),
        priority="urgent",
        submitted_at=NOW,
    )


def shipped(order_id: str) -> ShipmentShipped:
    return ShipmentShipped(
        order_id=order_id,
        shipment_id=uuid7(),
        warehouse="WH-1",
        actor="simulator",
        submitted_at=NOW,
        carrier="DHL",
        tracking_number=f"JD{order_id[-10:]}",
        lines=[StockLine(sku="TEA-001", warehouse="WH-1", quantity=3)],
    )


def rejected(channel: str, at: datetime = NOW) -> OrderRejected:
    return OrderRejected(
        order_id=uuid7(),
        channel=channel,
        external_id=f"R-{uuid7()[-8:]}",
        errors=[FieldError(field="currency", reason="currency XYZ is not one orderflow prices in")],
        submitted_at=at,
    )


async def rows_of(db: Database, order_id: str) -> list[dict[str, Any]]:
    async with db.reading() as conn:
        result = await conn.execute(
            select(notifications)
            .where(notifications.c.order_id == order_id)
            .order_by(notifications.c.created_at, notifications.c.notification_id)
        )
        return [dict(r._mapping) for r in result]


async def sinks_of(db: Database, notification_id: str) -> dict[str, dict[str, Any]]:
    async with db.reading() as conn:
        result = await conn.execute(
            select(deliveries).where(deliveries.c.notification_id == notification_id)
        )
        return {r.sink: dict(r._mapping) for r in result}


async def by_template(db: Database, template: str) -> list[dict[str, Any]]:
    async with db.reading() as conn:
        result = await conn.execute(
            select(notifications).where(notifications.c.template == template)
        )
        return [dict(r._mapping) for r in result]


async def test_an_accepted_order_gets_one_confirmation_with_a_delivery_per_sink(
    db: Database, on_accepted: Handler
) -> None:
    order = accepted()
    env = envelope(order)

    uow = await apply(db, on_accepted, [env])

    [row] = await rows_of(db, order.order_id)
    assert row["template"] == "order_confirmed"
    assert row["audience"] == "customer"
    assert row["recipient"] == order.customer.email
    assert row["source_event_id"] == env.event_id
    assert row["subject"] == f"Your order {order.external_id} is confirmed"
    assert "Total: 12.00 EUR" in str(row["body"])
    sinks = await sinks_of(db, row["notification_id"])
    assert set(sinks) == {"log", "webhook", "email"}
    assert all(d["status"] == "pending" and d["attempts"] == 0 for d in sinks.values())
    assert all(d["address"] == order.customer.email for d in sinks.values())
    assert sinks["webhook"]["attempt_limit"] == 5
    # Nothing is sent (nor announced as sent) by the handler.
    assert uow.emitted == []


async def test_a_customer_without_email_gets_no_email_delivery(
    db: Database, on_accepted: Handler
) -> None:
    order = accepted(phone="+351 912 345 678")

    await apply(db, on_accepted, [envelope(order)])

    [row] = await rows_of(db, order.order_id)
    assert row["recipient"] == "+351 912 345 678"
    assert set(await sinks_of(db, row["notification_id"])) == {"log", "webhook"}


async def test_a_batch_of_orders_gives_one_notification_each(
    db: Database, on_accepted: Handler
) -> None:
    orders = [accepted(), accepted(phone="+351 912 345 678"), accepted(locale="zh-CN")]

    await apply(db, on_accepted, [envelope(o) for o in orders])

    for order in orders:
        [row] = await rows_of(db, order.order_id)
        assert row["locale"] == order.customer.locale
    async with db.reading() as conn:
        stored = set(
            await conn.scalars(
                select(recipients.c.order_id).where(
                    recipients.c.order_id.in_([o.order_id for o in orders])
                )
            )
        )
    assert stored == {o.order_id for o in orders}


async def test_a_repeated_event_gives_no_second_notification_nor_delivery(
    db: Database, on_accepted: Handler
) -> None:
    env = envelope(accepted())

    await apply(db, on_accepted, [env])
    await apply(db, on_accepted, [env])
    await apply(db, on_accepted, [env, env])

    [row] = await rows_of(db, env.key)
    assert len(await sinks_of(db, row["notification_id"])) == 3
    async with db.reading() as conn:
        total = await conn.scalar(select(func.count()).select_from(deliveries))
    assert total == 3


async def test_the_notified_stage_is_measured_once_per_confirmation(
    db: Database, on_accepted: Handler, metrics: ServiceMetrics
) -> None:
    env = envelope(accepted(channel="phone-desk"))
    labels = {"stage": "notified", "channel": "phone-desk", "priority": "urgent"}

    await apply(db, on_accepted, [env])
    await apply(db, on_accepted, [env])

    count = metrics.registry.get_sample_value("orderflow_stage_latency_seconds_count", labels)
    total = metrics.registry.get_sample_value("orderflow_stage_latency_seconds_sum", labels)
    assert count == 1
    assert total is not None and total >= 2


async def test_a_shipment_of_an_order_not_yet_accepted_here_is_retried_not_dropped(
    db: Database, dispatcher: Dispatcher
) -> None:
    order_id = uuid7()

    with pytest.raises(handlers.RecipientNotYetKnown, match=order_id):
        await apply(db, bind(handlers.shipment_shipped, dispatcher), [envelope(shipped(order_id))])

    assert await rows_of(db, order_id) == []


async def test_one_unknown_order_fails_the_whole_batch_so_it_is_retried_one_by_one(
    db: Database, dispatcher: Dispatcher, on_accepted: Handler
) -> None:
    known = accepted()
    await apply(db, on_accepted, [envelope(known)])

    with pytest.raises(handlers.RecipientNotYetKnown):
        await apply(
            db,
            bind(handlers.shipment_shipped, dispatcher),
            [envelope(shipped(known.order_id)), envelope(shipped(uuid7()))],
        )

    assert [r["template"] for r in await rows_of(db, known.order_id)] == ["order_confirmed"]


async def test_a_shipment_tells_the_customer_carrier_and_tracking_number(
    db: Database, dispatcher: Dispatcher, on_accepted: Handler
) -> None:
    order = accepted(locale="zh-CN")
    await apply(db, on_accepted, [envelope(order)])
    event = shipped(order.order_id)

    await apply(db, bind(handlers.shipment_shipped, dispatcher), [envelope(event)])

    note = (await rows_of(db, order.order_id))[-1]
    assert note["template"] == "order_shipped"
    assert note["recipient"] == order.customer.email
    assert note["locale"] == "zh-CN"
    assert note["subject"] == f"您的订单 {order.external_id} 已发货"
    assert "DHL" in note["body"] and event.tracking_number in note["body"]


async def test_backorder_delivery_cancellation_return_and_refund_reach_the_customer(
    db: Database, dispatcher: Dispatcher, on_accepted: Handler
) -> None:
    order = accepted(phone="+44 20 7946 0000")
    oid = order.order_id
    await apply(db, on_accepted, [envelope(order)])
    steps: list[tuple[Callable[..., Awaitable[None]], Event]] = [
        (
            handlers.stock_backordered,
            StockBackordered(
                order_id=oid,
                shortages=[Shortage(sku="TEA-001", requested=3, available=1)],
                deadline=datetime(2030, 1, 2, 3, 4, tzinfo=UTC),
                submitted_at=NOW,
            ),
        ),
        (
            handlers.shipment_delivered,
            ShipmentDelivered(
                order_id=oid, shipment_id=uuid7(), warehouse="WH-1", actor="sim", submitted_at=NOW
            ),
        ),
        (handlers.order_cancelled, OrderCancelled(order_id=oid, reason="late", actor="cli")),
        (
            handlers.return_received,
            ReturnReceived(
                order_id=oid,
                shipment_id=uuid7(),
                lines=[StockLine(sku="TEA-001", warehouse="WH-1", quantity=3)],
                actor="wh",
            ),
        ),
        (
            handlers.refund_due,
            RefundDue(order_id=oid, amount=Decimal("12.00"), currency="EUR", reason="return"),
        ),
    ]

    for handler, event in steps:
        await apply(db, bind(handler, dispatcher), [envelope(event)])

    rows = await rows_of(db, oid)
    assert [r["template"] for r in rows] == [
        "order_confirmed",
        "order_delayed",
        "order_delivered",
        "order_cancelled",
        "return_received",
        "refund_due",
    ]
    assert {r["recipient"] for r in rows} == {"+44 20 7946 0000"}
    delay, cancel, refund = rows[1], rows[3], rows[5]
    assert "TEA-001 x 3" in delay["body"] and "2030-01-02 03:04 UTC" in delay["body"]
    assert "Reason: late" in cancel["body"]
    assert refund["subject"] == f"A refund of 12.00 EUR for order {order.external_id}"


async def test_a_rejected_order_is_explained_to_its_channel_not_by_email(
    db: Database, dispatcher: Dispatcher
) -> None:
    event = rejected("marketplace")

    await apply(
        db,
        bind(handlers.order_rejected, dispatcher, handlers.BurstRule(300, 20)),
        [envelope(event)],
    )

    [row] = await rows_of(db, event.order_id)
    assert row["recipient"] == "channel:marketplace"
    assert row["template"] == "order_rejected"
    assert "  - currency: currency XYZ is not one orderflow prices in" in str(row["body"])
    assert set(await sinks_of(db, row["notification_id"])) == {"log", "webhook"}
    async with db.reading() as conn:
        learned = await conn.scalar(
            select(func.count()).where(recipients.c.order_id == event.order_id)
        )
    assert learned == 0


async def test_a_burst_of_rejections_from_one_channel_raises_one_alert(
    db: Database, dispatcher: Dispatcher, metrics: ServiceMetrics
) -> None:
    on_rejected = bind(handlers.order_rejected, dispatcher, handlers.BurstRule(60, 3))
    base = datetime.now(UTC) - timedelta(minutes=10)
    spread_out = [rejected("shop-a", base + timedelta(seconds=100 * i)) for i in range(3)]
    burst = [rejected("shop-b", base + timedelta(seconds=i)) for i in range(5)]
    other = [rejected("shop-c", base + timedelta(seconds=i)) for i in range(2)]

    for event in spread_out:
        await apply(db, on_rejected, [envelope(event)])
    # Two batches: the alert comes when the third rejection lands, and only once.
    await apply(db, on_rejected, [envelope(e) for e in burst[:2] + other])
    await apply(db, on_rejected, [envelope(e) for e in burst[2:]])
    # A redelivered batch adds nothing.
    await apply(db, on_rejected, [envelope(e) for e in burst[2:]])

    [alert] = await by_template(db, "alert_rejection_burst")
    assert alert["recipient"] == "operations" and alert["audience"] == "operations"
    assert "shop-b" in alert["subject"] and "5 rejected orders" in alert["subject"]
    assert "1 min" in alert["subject"]
    sinks = await sinks_of(db, alert["notification_id"])
    # Alerts go where operations messages go: the log and the ops mailbox, not the webhook.
    assert {s: d["address"] for s, d in sinks.items()} == {
        "log": "operations",
        "email": "ops@example.com",
    }
    assert (
        metrics.registry.get_sample_value(
            "orderflow_notify_alerts_total", {"service": "notify", "alert": "rejection_burst"}
        )
        == 1
    )


async def test_a_burst_long_after_the_last_alert_is_alerted_again(
    db: Database, dispatcher: Dispatcher
) -> None:
    on_rejected = bind(handlers.order_rejected, dispatcher, handlers.BurstRule(60, 2))
    base = datetime.now(UTC) - timedelta(hours=1)

    await apply(db, on_rejected, [envelope(rejected("app", base)) for _ in range(2)])
    later = base + timedelta(minutes=5)
    await apply(db, on_rejected, [envelope(rejected("app", later)) for _ in range(2)])

    assert len(await by_template(db, "alert_rejection_burst")) == 2


async def test_a_dead_letter_raises_one_operations_alert(
    db: Database, dispatcher: Dispatcher, metrics: ServiceMetrics
) -> None:
    letter = domain.dead_letter_of(
        "orderflow.dlq.inventory.inventory-orders",
        {
            "Orderflow-Error": "failed 5 times, last error: OperationalError('locked')",
            "Orderflow-Original-Subject": "orderflow.intake.order_accepted.O-9",
            "Orderflow-Consumer": "inventory-orders",
            "Orderflow-Deliveries": "5",
        },
        b'{"type": "order_accepted", "correlation_id": "O-9"}',
    )
    item = handlers.IncomingDeadLetter(handlers.dead_letter_id(f"dlq:{uuid7()}"), letter)
    on_dead = bind(handlers.dead_letters, dispatcher)

    await apply(db, on_dead, [item])
    await apply(db, on_dead, [item])

    [alert] = await rows_of(db, "O-9")
    assert alert["template"] == "alert_dead_letter"
    assert alert["source_event_id"] == item.letter_id
    assert "inventory-orders" in alert["subject"]
    assert "OperationalError('locked')" in alert["body"]
    assert (
        metrics.registry.get_sample_value(
            "orderflow_notify_alerts_total", {"service": "notify", "alert": "dead_letter"}
        )
        == 1
    )


async def test_an_order_lists_its_notifications_with_each_sinks_delivery(
    db: Database, dispatcher: Dispatcher, on_accepted: Handler
) -> None:
    order = accepted()
    await apply(db, on_accepted, [envelope(order)])
    await apply(
        db, bind(handlers.shipment_shipped, dispatcher), [envelope(shipped(order.order_id))]
    )

    async with db.reading() as conn:
        listed = await delivery.notifications_of(conn, order.order_id)
        nothing = await delivery.notifications_of(conn, uuid7())
        counts = await delivery.count_by_template(conn)

    assert [n["template"] for n in listed] == ["order_confirmed", "order_shipped"]
    assert listed[0]["recipient"] == order.customer.email
    assert [d["sink"] for d in listed[0]["deliveries"]] == ["email", "log", "webhook"]
    assert {d["status"] for d in listed[0]["deliveries"]} == {"pending"}
    assert listed[1]["subject"] == f"Your order {order.external_id} has shipped"
    assert datetime.fromisoformat(listed[0]["created_at"]).tzinfo is not None
    assert nothing == []
    assert counts["order_confirmed"] >= 1 and counts["order_shipped"] >= 1


async def test_a_message_no_sink_can_reach_is_stored_and_counted_not_lost(
    db: Database, metrics: ServiceMetrics
) -> None:
    email_only = Dispatcher(
        routes=[Route("email", "email", frozenset({"all"}))], metrics=NotifyMetrics(metrics)
    )
    order = accepted(phone="+351 912 345 678")

    await apply(db, bind(handlers.order_accepted, email_only, metrics), [envelope(order)])

    [row] = await rows_of(db, order.order_id)
    assert await sinks_of(db, row["notification_id"]) == {}
    assert (
        metrics.registry.get_sample_value(
            "orderflow_notify_unrouted_total", {"service": "notify", "template": "order_confirmed"}
        )
        == 1
    )


async def test_a_failed_delivery_tells_the_customer_it_is_delayed_once(
    db: Database, dispatcher: Dispatcher, on_accepted: Handler
) -> None:
    order = accepted(locale="zh-CN")
    await apply(db, on_accepted, [envelope(order)])
    failed = envelope(
        ShipmentDeliveryFailed(
            order_id=order.order_id,
            shipment_id=uuid7(),
            warehouse="WH-1",
            actor="carrier",
            submitted_at=NOW,
            carrier="SF",
            tracking_number="SF123",
            reason="nobody home",
            attempt=1,
        )
    )
    on_failed = bind(handlers.delivery_failed, dispatcher)
    await apply(db, on_failed, [failed])
    await apply(db, on_failed, [failed])

    delayed = [r for r in await rows_of(db, order.order_id) if r["template"] == "delivery_delayed"]
    assert len(delayed) == 1
    assert "SF123" in delayed[0]["body"] and "nobody home" in delayed[0]["body"]
    assert "派送" in delayed[0]["subject"]


async def test_low_stock_and_sla_breaches_alert_operations_once_each(
    db: Database, dispatcher: Dispatcher, metrics: ServiceMetrics
) -> None:
    low = envelope(LowStock(sku="TEA-001", available=3, reorder_point=10))
    order_id = uuid7()
    deadline = NOW + timedelta(hours=2)
    sla = {
        "order_id": order_id,
        "shipment_id": uuid7(),
        "warehouse": "WH-1",
        "actor": "system",
        "submitted_at": NOW,
        "status": "picked",
        "sla_deadline": NOW,
        "escalation_deadline": deadline,
    }
    overdue, escalated = envelope(ShipmentOverdue(**sla)), envelope(ShipmentEscalated(**sla))

    for _ in range(2):
        await apply(db, bind(handlers.low_stock, dispatcher), [low])
        await apply(db, bind(handlers.sla_breaches, dispatcher), [overdue])
        await apply(db, bind(handlers.sla_breaches, dispatcher), [escalated])

    async with db.reading() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(select(notifications))]
    by_template = {r["template"]: r for r in rows}
    assert sorted(by_template) == [
        "alert_low_stock",
        "alert_shipment_escalated",
        "alert_shipment_overdue",
    ]
    assert len(rows) == 3
    assert all(r["recipient"] == domain.OPERATIONS_RECIPIENT for r in rows)
    assert "TEA-001" in by_template["alert_low_stock"]["subject"]
    assert "reorder point of 10" in by_template["alert_low_stock"]["body"]
    assert order_id in by_template["alert_shipment_escalated"]["subject"]
    for kind in ("low_stock", "overdue", "escalated"):
        assert (
            metrics.registry.get_sample_value(
                "orderflow_notify_alerts_total", {"service": "notify", "alert": kind}
            )
            == 1
        )
