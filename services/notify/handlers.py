"""Notify's handlers: load, decide, save, emit. Each applies a list (a batch) in one transaction,
and hands the new notifications to the sink only once that transaction has committed."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client import Counter
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.notify import domain
from services.notify.domain import Draft, Notification, Recipient
from services.notify.models import notifications, recipients
from services.notify.sinks import Sink
from shared.consumer import UnitOfWork
from shared.contracts.envelope import Envelope, Event
from shared.contracts.fulfillment import ShipmentDelivered, ShipmentShipped
from shared.contracts.intake import OrderAccepted, OrderRejected
from shared.contracts.inventory import StockBackordered
from shared.contracts.notify import NotificationSent
from shared.db import Database
from shared.ids import uuid7
from shared.metrics import ServiceMetrics

log = logging.getLogger(__name__)

PENDING = "pending"
SENT = "sent"

TEMPLATES = domain.TemplateBook.load()

E = TypeVar("E", bound=Event)


class RecipientNotYetKnown(LookupError):
    """An event about an order whose acceptance notify has not applied yet. The acceptance comes
    on another stream, so it may simply be late: the event is retried, never dropped."""


class Delivery:
    """Hands committed notifications to the sink and records that it took them.

    A batch the sink refuses (or that a crash kept from it) stays pending in the database and is
    handed over again by ``resend_pending``: delivery is at least once, never silently lost.
    """

    def __init__(self, db: Database, sink: Sink, metrics: ServiceMetrics) -> None:
        self.db = db
        self.sink = sink
        self.delivered = Counter(
            "orderflow_notifications_delivered_total",
            "Notifications a sink has taken",
            ["service", "sink"],
            registry=metrics.registry,
        ).labels(metrics.service, sink.name)
        self.failures = Counter(
            "orderflow_notification_delivery_failures_total",
            "Batches a sink refused (they stay pending and are handed over again later)",
            ["service", "sink"],
            registry=metrics.registry,
        ).labels(metrics.service, sink.name)

    async def deliver(self, batch: Sequence[Notification]) -> None:
        try:
            await self.sink.send(batch)
        except Exception:
            self.failures.inc()
            log.exception(
                "sink %s refused %d notifications; they stay pending", self.sink.name, len(batch)
            )
            return
        self.delivered.inc(len(batch))
        async with self.db.transaction() as conn:
            await conn.execute(
                update(notifications)
                .where(notifications.c.notification_id.in_([n.notification_id for n in batch]))
                .where(notifications.c.status == PENDING)
                .values(status=SENT, sent_at=time.time())
            )

    async def resend_pending(self, older_than_s: float, limit: int = 500) -> int:
        """Hand over again what stayed pending longer than a normal delivery takes."""
        columns = [notifications.c[name] for name in Notification.__dataclass_fields__]
        async with self.db.reading() as conn:
            result = await conn.execute(
                select(*columns)
                .where(notifications.c.status == PENDING)
                .where(notifications.c.sink == self.sink.name)
                .where(notifications.c.created_at < time.time() - older_than_s)
                .order_by(notifications.c.created_at)
                .limit(limit)
            )
            batch = [Notification(**row._mapping) for row in result]
        if batch:
            log.info("handing %d pending notifications to %s again", len(batch), self.sink.name)
            await self.deliver(batch)
        return len(batch)


async def order_accepted(
    uow: UnitOfWork, events: list[Envelope], delivery: Delivery, metrics: ServiceMetrics
) -> None:
    """Remember who to tell about the order, and confirm it to them."""
    accepted = _payloads(events, OrderAccepted)
    known = set(
        await uow.conn.scalars(
            select(recipients.c.order_id).where(
                recipients.c.order_id.in_({e.order_id for _, e in accepted})
            )
        )
    )
    rows: list[dict[str, Any]] = []
    for _, event in accepted:
        if event.order_id not in known:
            known.add(event.order_id)
            rows.append(_recipient_row(domain.recipient_of(event)))
    if rows:
        await uow.conn.execute(insert(recipients), rows)
    made = await _notify(uow, [(env, domain.confirmation(e)) for env, e in accepted], delivery)
    confirmed_by = {n.source_event_id for n in made}
    confirmed = [e for env, e in accepted if env.event_id in confirmed_by]
    if confirmed:

        async def observe_notified() -> None:
            for e in confirmed:
                metrics.observe_stage("notified", e.channel, e.priority, e.submitted_at)

        uow.on_commit(observe_notified)


async def order_rejected(uow: UnitOfWork, events: list[Envelope], delivery: Delivery) -> None:
    """Tell the submitting channel why its order was refused."""
    rejected = _payloads(events, OrderRejected)
    await _notify(uow, [(env, domain.rejection(e)) for env, e in rejected], delivery)


async def stock_backordered(uow: UnitOfWork, events: list[Envelope], delivery: Delivery) -> None:
    await _notify_customers(uow, _payloads(events, StockBackordered), domain.delay, delivery)


async def shipment_shipped(uow: UnitOfWork, events: list[Envelope], delivery: Delivery) -> None:
    await _notify_customers(uow, _payloads(events, ShipmentShipped), domain.shipped, delivery)


async def shipment_delivered(uow: UnitOfWork, events: list[Envelope], delivery: Delivery) -> None:
    await _notify_customers(uow, _payloads(events, ShipmentDelivered), domain.delivered, delivery)


async def _notify_customers(
    uow: UnitOfWork,
    items: list[tuple[Envelope, E]],
    decide: Callable[[E, Recipient], Draft],
    delivery: Delivery,
) -> None:
    """Notify the customers of orders accepted earlier; their events key on the order id."""
    order_ids = {env.key for env, _ in items}
    who = await _recipients(uow.conn, order_ids)
    missing = sorted(order_ids - who.keys())
    if missing:
        raise RecipientNotYetKnown(
            f"no recipient yet for order(s) {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}: their order_accepted is not applied yet"
        )
    await _notify(uow, [(env, decide(event, who[env.key])) for env, event in items], delivery)


async def _notify(
    uow: UnitOfWork, drafts: list[tuple[Envelope, Draft]], delivery: Delivery
) -> list[Notification]:
    """Render, store and announce each draft once per (event, recipient, sink); the sink gets
    them after the commit."""
    sink = delivery.sink.name
    result = await uow.conn.execute(
        select(
            notifications.c.source_event_id, notifications.c.recipient, notifications.c.sink
        ).where(notifications.c.source_event_id.in_({env.event_id for env, _ in drafts}))
    )
    done: set[tuple[str, str, str]] = {(r[0], r[1], r[2]) for r in result}
    now = time.time()
    made: list[tuple[Envelope, Notification]] = []
    for env, draft in drafts:
        once = (env.event_id, draft.recipient, sink)
        if once in done:
            continue
        done.add(once)
        text = TEMPLATES.render(draft)
        made.append(
            (
                env,
                Notification(
                    notification_id=uuid7(),
                    source_event_id=env.event_id,
                    order_id=env.key,
                    template=draft.template,
                    locale=text.locale,
                    recipient=draft.recipient,
                    sink=sink,
                    subject=text.subject,
                    body=text.body,
                    created_at=now,
                ),
            )
        )
    if not made:
        return []
    await uow.conn.execute(
        insert(notifications),
        [{**asdict(n), "status": PENDING, "sent_at": None} for _, n in made],
    )
    for env, n in made:
        uow.emit(
            NotificationSent(
                notification_id=n.notification_id,
                order_id=n.order_id,
                template=n.template,
                recipient=n.recipient,
                sink=n.sink,
                source_event_id=n.source_event_id,
            ),
            cause=env,
        )
    batch = [n for _, n in made]
    uow.on_commit(functools.partial(delivery.deliver, batch))
    return batch


async def _recipients(conn: AsyncConnection, order_ids: set[str]) -> dict[str, Recipient]:
    result = await conn.execute(select(recipients).where(recipients.c.order_id.in_(order_ids)))
    found = {}
    for row in result:
        m = row._mapping
        found[m["order_id"]] = Recipient(
            order_id=m["order_id"],
            external_id=m["external_id"],
            name=m["name"],
            email=m["email"],
            phone=m["phone"],
            locale=m["locale"],
            channel=m["channel"],
            priority=m["priority"],
            submitted_at=datetime.fromtimestamp(m["submitted_at"], UTC),
        )
    return found


def _recipient_row(who: Recipient) -> dict[str, Any]:
    return {**asdict(who), "submitted_at": who.submitted_at.timestamp()}


def _payloads(events: list[Envelope], kind: type[E]) -> list[tuple[Envelope, E]]:
    out = []
    for env in events:
        if not isinstance(env.data, kind):
            raise TypeError(f"{env.type} event given to the {kind.event_type} handler")
        out.append((env, env.data))
    return out


async def notifications_of(conn: AsyncConnection, order_id: str) -> list[dict[str, Any]]:
    """Every notification made about one order, oldest first, as the API shows them."""
    result = await conn.execute(
        select(
            notifications.c.notification_id,
            notifications.c.template,
            notifications.c.recipient,
            notifications.c.sink,
            notifications.c.status,
            notifications.c.created_at,
            notifications.c.sent_at,
            notifications.c.subject,
        )
        .where(notifications.c.order_id == order_id)
        .order_by(notifications.c.created_at, notifications.c.notification_id)
    )
    return [
        {
            "notification_id": row.notification_id,
            "template": row.template,
            "recipient": row.recipient,
            "sink": row.sink,
            "status": row.status,
            "created_at": _iso(row.created_at),
            "sent_at": _iso(row.sent_at) if row.sent_at is not None else None,
            "subject": row.subject,
        }
        for row in result
    ]


async def count_by_template(conn: AsyncConnection) -> dict[str, int]:
    result = await conn.execute(
        select(notifications.c.template, func.count()).group_by(notifications.c.template)
    )
    return {template: count for template, count in result}


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
