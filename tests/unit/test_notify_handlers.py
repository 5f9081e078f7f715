"""Notify's handlers against a real SQLite database, run the way the batch consumer runs them:
one transaction per batch, after-commit callbacks once it has committed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.notify import handlers
from services.notify.domain import Notification
from services.notify.models import metadata, notifications, recipients
from shared.consumer import UnitOfWork, run_after_commit
from shared.contracts.common import Address, Customer, FieldError, OrderLine, StockLine
from shared.contracts.envelope import Envelope, Event, new_envelope
from shared.contracts.fulfillment import ShipmentDelivered, ShipmentShipped
from shared.contracts.intake import OrderAccepted, OrderRejected
from shared.contracts.inventory import Shortage, StockBackordered
from shared.contracts.notify import NotificationSent
from shared.db import Database
from shared.ids import uuid7
from shared.metrics import ServiceMetrics

Handler = Callable[[UnitOfWork, list[Envelope]], Awaitable[None]]


class RecordingSink:
    """Keeps what it is given, and what the database held at that moment."""

    name = "log"

    def __init__(self, db: Database | None = None, fail: bool = False) -> None:
        self.db = db
        self.fail = fail
        self.batches: list[list[Notification]] = []
        self.committed_when_sent: list[int] = []

    async def send(self, batch: Sequence[Notification]) -> None:
        if self.fail:
            raise OSError("disk full")
        if self.db is not None:
            async with self.db.reading() as conn:
                ids = [n.notification_id for n in batch]
                self.committed_when_sent.append(
                    (
                        await conn.execute(
                            select(func.count()).where(notifications.c.notification_id.in_(ids))
                        )
                    ).scalar_one()
                )
        self.batches.append(list(batch))

    @property
    def sent(self) -> list[Notification]:
        return [n for batch in self.batches for n in batch]


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
def sink(db: Database) -> RecordingSink:
    return RecordingSink(db)


@pytest.fixture
def delivery(db: Database, sink: RecordingSink, metrics: ServiceMetrics) -> handlers.Delivery:
    return handlers.Delivery(db, sink, metrics)


@pytest.fixture
def on_accepted(delivery: handlers.Delivery, metrics: ServiceMetrics) -> Handler:
    async def handle(uow: UnitOfWork, events: list[Envelope]) -> None:
        await handlers.order_accepted(uow, events, delivery, metrics)

    return handle


async def apply(db: Database, handler: Handler, events: list[Envelope]) -> UnitOfWork:
    """What BatchConsumer does with one run of same-type events."""
    async with db.transaction() as conn:
        uow = UnitOfWork(conn)
        await handler(uow, events)
    await run_after_commit(uow.after_commit)
    return uow


def bind(handler: Callable[..., Awaitable[None]], delivery: handlers.Delivery) -> Handler:
    async def handle(uow: UnitOfWork, events: list[Envelope]) -> None:
        await handler(uow, events, delivery)

    return handle


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


async def rows_of(db: Database, order_id: str) -> list[dict[str, object]]:
    async with db.reading() as conn:
        result = await conn.execute(
            select(notifications).where(notifications.c.order_id == order_id)
        )
        return [dict(r._mapping) for r in result]


async def test_an_accepted_order_gets_one_confirmation_after_the_commit(
    db: Database, sink: RecordingSink, on_accepted: Handler
) -> None:
    order = accepted()
    env = envelope(order)

    uow = await apply(db, on_accepted, [env])

    [row] = await rows_of(db, order.order_id)
    assert row["template"] == "order_confirmed"
    assert row["recipient"] == order.customer.email
    assert row["source_event_id"] == env.event_id
    assert row["sink"] == "log"
    assert row["subject"] == f"Your order {order.external_id} is confirmed"
    assert "Total: 12.00 EUR" in str(row["body"])
    # The sink got it once, and only after it was committed.
    assert [n.notification_id for n in sink.sent] == [row["notification_id"]]
    assert sink.committed_when_sent == [1]
    assert row["status"] == "sent" and row["sent_at"] is not None
    [sent] = uow.emitted
    assert isinstance(sent.data, NotificationSent)
    assert sent.data.notification_id == row["notification_id"]
    assert sent.data.template == "order_confirmed"
    assert sent.data.recipient == order.customer.email
    assert sent.data.source_event_id == env.event_id
    assert sent.causation_id == env.event_id
    assert sent.correlation_id == order.order_id


async def test_a_batch_of_orders_gives_one_notification_each_in_one_hand_over(
    db: Database, sink: RecordingSink, on_accepted: Handler
) -> None:
    orders = [accepted(), accepted(phone="+351 912 345 678"), accepted(locale="zh-CN")]

    uow = await apply(db, on_accepted, [envelope(o) for o in orders])

    assert len(sink.batches) == 1
    by_order = {n.order_id: n for n in sink.sent}
    assert set(by_order) == {o.order_id for o in orders}
    assert by_order[orders[1].order_id].recipient == "+351 912 345 678"
    assert by_order[orders[2].order_id].locale == "zh-CN"
    assert len(uow.emitted) == 3
    async with db.reading() as conn:
        stored = set(
            await conn.scalars(
                select(recipients.c.order_id).where(
                    recipients.c.order_id.in_([o.order_id for o in orders])
                )
            )
        )
    assert stored == {o.order_id for o in orders}


async def test_a_repeated_event_gives_no_second_notification(
    db: Database, sink: RecordingSink, on_accepted: Handler
) -> None:
    env = envelope(accepted())

    await apply(db, on_accepted, [env])
    again = await apply(db, on_accepted, [env])
    in_one_batch = await apply(db, on_accepted, [env, env])

    assert len(await rows_of(db, env.key)) == 1
    assert again.emitted == [] and in_one_batch.emitted == []
    assert len(sink.sent) == 1


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
    db: Database, sink: RecordingSink, delivery: handlers.Delivery
) -> None:
    order_id = uuid7()

    with pytest.raises(handlers.RecipientNotYetKnown, match=order_id):
        await apply(db, bind(handlers.shipment_shipped, delivery), [envelope(shipped(order_id))])

    assert await rows_of(db, order_id) == []
    assert sink.sent == []


async def test_one_unknown_order_fails_the_whole_batch_so_it_is_retried_one_by_one(
    db: Database, sink: RecordingSink, delivery: handlers.Delivery, on_accepted: Handler
) -> None:
    known = accepted()
    await apply(db, on_accepted, [envelope(known)])

    with pytest.raises(handlers.RecipientNotYetKnown):
        await apply(
            db,
            bind(handlers.shipment_shipped, delivery),
            [envelope(shipped(known.order_id)), envelope(shipped(uuid7()))],
        )

    assert [r["template"] for r in await rows_of(db, known.order_id)] == ["order_confirmed"]


async def test_a_shipment_tells_the_customer_carrier_and_tracking_number(
    db: Database, sink: RecordingSink, delivery: handlers.Delivery, on_accepted: Handler
) -> None:
    order = accepted(locale="zh-CN")
    await apply(db, on_accepted, [envelope(order)])
    event = shipped(order.order_id)
    env = envelope(event)

    uow = await apply(db, bind(handlers.shipment_shipped, delivery), [env])

    note = sink.sent[-1]
    assert note.template == "order_shipped"
    assert note.recipient == order.customer.email
    assert note.locale == "zh-CN"
    assert note.subject == f"您的订单 {order.external_id} 已发货"
    assert "DHL" in note.body and event.tracking_number in note.body
    [sent] = uow.emitted
    assert isinstance(sent.data, NotificationSent)
    assert (sent.data.template, sent.causation_id) == ("order_shipped", env.event_id)


async def test_backorder_and_delivery_are_told_to_the_customer(
    db: Database, sink: RecordingSink, delivery: handlers.Delivery, on_accepted: Handler
) -> None:
    order = accepted(phone="+44 20 7946 0000")
    await apply(db, on_accepted, [envelope(order)])
    backordered = StockBackordered(
        order_id=order.order_id,
        shortages=[Shortage(sku="TEA-001", requested=3, available=1)],
        deadline=datetime(2030, 1, 2, 3, 4, tzinfo=UTC),
        submitted_at=NOW,
    )
    delivered = ShipmentDelivered(
        order_id=order.order_id,
        shipment_id=uuid7(),
        warehouse="WH-1",
        actor="simulator",
        submitted_at=NOW,
    )

    await apply(db, bind(handlers.stock_backordered, delivery), [envelope(backordered)])
    await apply(db, bind(handlers.shipment_delivered, delivery), [envelope(delivered)])

    delay, done = sink.sent[-2:]
    assert (delay.template, delay.recipient) == ("order_delayed", "+44 20 7946 0000")
    assert "TEA-001 x 3" in delay.body and "2030-01-02 03:04 UTC" in delay.body
    assert done.template == "order_delivered"
    assert done.subject == f"Your order {order.external_id} has been delivered"


async def test_a_rejected_order_is_explained_to_its_channel(
    db: Database, sink: RecordingSink, delivery: handlers.Delivery
) -> None:
    event = OrderRejected(
        order_id=uuid7(),
        channel="marketplace",
        external_id="MP-77",
        errors=[FieldError(field="currency", reason="currency XYZ is not one orderflow prices in")],
        submitted_at=NOW,
    )

    uow = await apply(db, bind(handlers.order_rejected, delivery), [envelope(event)])

    [row] = await rows_of(db, event.order_id)
    assert row["recipient"] == "channel:marketplace"
    assert row["template"] == "order_rejected"
    assert "  - currency: currency XYZ is not one orderflow prices in" in str(row["body"])
    assert len(uow.emitted) == 1
    async with db.reading() as conn:
        learned = await conn.scalar(
            select(func.count()).where(recipients.c.order_id == event.order_id)
        )
    assert learned == 0


async def test_a_refused_hand_over_stays_pending_and_is_resent_later(
    db: Database, metrics: ServiceMetrics
) -> None:
    broken = RecordingSink(fail=True)
    failing = handlers.Delivery(db, broken, metrics)
    order = accepted()

    async def handle(uow: UnitOfWork, events: list[Envelope]) -> None:
        await handlers.order_accepted(uow, events, failing, metrics)

    await apply(db, handle, [envelope(order)])

    [row] = await rows_of(db, order.order_id)
    assert row["status"] == "pending"
    assert (
        metrics.registry.get_sample_value(
            "orderflow_notification_delivery_failures_total", {"service": "notify", "sink": "log"}
        )
        == 1
    )
    assert await failing.resend_pending(older_than_s=3600) == 0

    broken.fail = False
    assert await failing.resend_pending(older_than_s=0) == 1

    assert order.order_id in {n.order_id for n in broken.sent}
    [row] = await rows_of(db, order.order_id)
    assert row["status"] == "sent"
    assert await failing.resend_pending(older_than_s=0) == 0


async def test_an_orders_notifications_are_listed_oldest_first(
    db: Database, delivery: handlers.Delivery, on_accepted: Handler
) -> None:
    order = accepted()
    await apply(db, on_accepted, [envelope(order)])
    await apply(db, bind(handlers.shipment_shipped, delivery), [envelope(shipped(order.order_id))])

    async with db.reading() as conn:
        listed = await handlers.notifications_of(conn, order.order_id)
        nothing = await handlers.notifications_of(conn, uuid7())
        counts = await handlers.count_by_template(conn)

    assert [n["template"] for n in listed] == ["order_confirmed", "order_shipped"]
    assert listed[0]["recipient"] == order.customer.email
    assert listed[0]["status"] == "sent"
    assert listed[1]["subject"] == f"Your order {order.external_id} has shipped"
    assert datetime.fromisoformat(listed[0]["created_at"]).tzinfo is not None
    assert nothing == []
    assert counts["order_confirmed"] >= 1 and counts["order_shipped"] >= 1
