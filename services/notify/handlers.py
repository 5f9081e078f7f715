"""Notify's handlers: load, decide, save. Each applies a list (a batch) in one transaction and
stores what it decided to say with a pending delivery per sink; the sinks' workers
(``delivery.py``) send them after the commit, so no handler ever waits for a sink."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.notify import domain
from services.notify.delivery import Dispatcher, store_notifications
from services.notify.domain import DeadLetter, Draft, Recipient
from services.notify.models import alerts, recipients, rejections
from shared.consumer import UnitOfWork
from shared.contracts.envelope import Envelope, Event
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
from shared.contracts.inventory import LowStock, StockBackordered
from shared.db import Query, bulk_insert
from shared.metrics import ServiceMetrics

E = TypeVar("E", bound=Event)

# Dead letters have no event id of their own that fits a notification's source id: one is
# derived from where the dead letter sits, the same on every redelivery.
DEAD_LETTER_NAMESPACE = uuid.UUID("6f1d3c2e-8a4b-4e0f-9c57-2b1e7d9a0f31")


class RecipientNotYetKnown(LookupError):
    """An event about an order whose acceptance notify has not applied yet. The acceptance comes
    on another stream, so it may simply be late: the event is retried, never dropped."""


@dataclass(frozen=True, slots=True)
class IncomingDeadLetter:
    """A dead-letter stream message as the dead-letter consumer hands it over."""

    letter_id: str
    letter: DeadLetter


def dead_letter_id(position: str) -> str:
    return str(uuid.uuid5(DEAD_LETTER_NAMESPACE, position))


@dataclass(frozen=True, slots=True)
class BurstRule:
    window_s: float
    threshold: int


# Built once: building it for every batch cost more than running it.
_KNOWN_RECIPIENTS = Query(
    select(recipients.c.order_id).where(recipients.c.order_id.in_(bindparam("ids", expanding=True)))
)


async def order_accepted(
    uow: UnitOfWork, events: list[Envelope], dispatcher: Dispatcher, metrics: ServiceMetrics
) -> None:
    """Remember who to tell about the order, and confirm it to them."""
    accepted = _payloads(events, OrderAccepted)
    ids = sorted({e.order_id for _, e in accepted})
    known = {row[0] for row in await _KNOWN_RECIPIENTS.all(uow.conn, {"ids": ids})}
    rows: list[dict[str, Any]] = []
    for _, event in accepted:
        if event.order_id not in known:
            known.add(event.order_id)
            rows.append(_recipient_row(domain.recipient_of(event)))
    if rows:
        await bulk_insert(recipients)(uow.conn, rows)
    made = await store_notifications(
        uow, [(env.event_id, domain.confirmation(e)) for env, e in accepted], dispatcher
    )
    confirmed_by = {n.source_event_id for n in made}
    confirmed = [e for env, e in accepted if env.event_id in confirmed_by]
    if confirmed:

        async def observe_notified() -> None:
            for e in confirmed:
                metrics.observe_stage("notified", e.channel, e.priority, e.submitted_at)

        uow.on_commit(observe_notified)


async def order_rejected(
    uow: UnitOfWork, events: list[Envelope], dispatcher: Dispatcher, burst: BurstRule
) -> None:
    """Tell the submitting channel why its order was refused, and operations when one channel's
    rejections pile up."""
    rejected = _payloads(events, OrderRejected)
    await store_notifications(
        uow, [(env.event_id, domain.rejection(e)) for env, e in rejected], dispatcher
    )
    await _watch_for_bursts(uow, rejected, dispatcher, burst)


async def _watch_for_bursts(
    uow: UnitOfWork,
    rejected: list[tuple[Envelope, OrderRejected]],
    dispatcher: Dispatcher,
    burst: BurstRule,
) -> None:
    conn = uow.conn
    fresh = {env.event_id: e for env, e in rejected}
    known = set(
        await conn.scalars(
            select(rejections.c.source_event_id).where(rejections.c.source_event_id.in_(fresh))
        )
    )
    rows: list[dict[str, Any]] = [
        {"source_event_id": eid, "channel": e.channel, "submitted_at": e.submitted_at.timestamp()}
        for eid, e in fresh.items()
        if eid not in known
    ]
    if not rows:
        return
    await conn.execute(insert(rejections), rows)
    latest: dict[str, tuple[str, OrderRejected]] = {}
    for eid, e in fresh.items():
        if e.channel not in latest or e.submitted_at >= latest[e.channel][1].submitted_at:
            latest[e.channel] = (eid, e)
    raised: list[tuple[str, Draft]] = []
    # One count per channel in the batch: channels are few, rejections many.
    for channel, (eid, event) in latest.items():
        at = event.submitted_at.timestamp()
        count = await conn.scalar(
            select(func.count()).where(
                rejections.c.channel == channel,
                rejections.c.submitted_at > at - burst.window_s,
                rejections.c.submitted_at <= at,
            )
        )
        key = f"rejection_burst:{channel}"
        last = await conn.scalar(select(alerts.c.raised_at).where(alerts.c.alert_key == key))
        if not domain.burst_due(count or 0, burst.threshold, last, at, burst.window_s):
            continue
        values = {"raised_at": at, "source_event_id": eid}
        if last is None:
            await conn.execute(insert(alerts).values(alert_key=key, **values))
        else:
            await conn.execute(update(alerts).where(alerts.c.alert_key == key).values(**values))
        raised.append(
            (
                eid,
                domain.rejection_burst_alert(
                    channel, count or 0, burst.window_s, event, dispatcher.operations_locale
                ),
            )
        )
    # Older rejections can no longer be part of any window.
    oldest = min(r["submitted_at"] for r in rows)
    await conn.execute(
        delete(rejections).where(rejections.c.submitted_at < oldest - 2 * burst.window_s)
    )
    if raised:
        await store_notifications(uow, raised, dispatcher)

        async def count_alerts() -> None:
            dispatcher.metrics.alert("rejection_burst", len(raised))

        uow.on_commit(count_alerts)


async def stock_backordered(
    uow: UnitOfWork, events: list[Envelope], dispatcher: Dispatcher
) -> None:
    await _notify_customers(uow, _payloads(events, StockBackordered), domain.delay, dispatcher)


async def shipment_shipped(uow: UnitOfWork, events: list[Envelope], dispatcher: Dispatcher) -> None:
    await _notify_customers(uow, _payloads(events, ShipmentShipped), domain.shipped, dispatcher)


async def shipment_delivered(
    uow: UnitOfWork, events: list[Envelope], dispatcher: Dispatcher
) -> None:
    await _notify_customers(uow, _payloads(events, ShipmentDelivered), domain.delivered, dispatcher)


async def order_cancelled(uow: UnitOfWork, events: list[Envelope], dispatcher: Dispatcher) -> None:
    await _notify_customers(uow, _payloads(events, OrderCancelled), domain.cancelled, dispatcher)


async def return_received(uow: UnitOfWork, events: list[Envelope], dispatcher: Dispatcher) -> None:
    await _notify_customers(
        uow, _payloads(events, ReturnReceived), domain.return_received, dispatcher
    )


async def refund_due(uow: UnitOfWork, events: list[Envelope], dispatcher: Dispatcher) -> None:
    await _notify_customers(uow, _payloads(events, RefundDue), domain.refund_due, dispatcher)


async def delivery_failed(uow: UnitOfWork, events: list[Envelope], dispatcher: Dispatcher) -> None:
    await _notify_customers(
        uow, _payloads(events, ShipmentDeliveryFailed), domain.delivery_delayed, dispatcher
    )


async def low_stock(uow: UnitOfWork, events: list[Envelope], dispatcher: Dispatcher) -> None:
    """Tell operations a SKU fell below its reorder point (once per crossing, as sent)."""
    locale = dispatcher.operations_locale
    await _alert(
        uow,
        [
            (env.event_id, domain.low_stock_alert(data, locale))
            for env, data in _payloads(events, LowStock)
        ],
        "low_stock",
        dispatcher,
    )


async def sla_breaches(uow: UnitOfWork, events: list[Envelope], dispatcher: Dispatcher) -> None:
    """Overdue and escalated shipments: operations must act before the customer notices."""
    locale = dispatcher.operations_locale
    drafts = [
        (env.event_id, domain.sla_alert(env.data, locale))
        for env in events
        if isinstance(env.data, ShipmentOverdue | ShipmentEscalated)
    ]
    await _alert(uow, drafts, events[0].type.removeprefix("shipment_"), dispatcher)


async def _alert(
    uow: UnitOfWork, drafts: list[tuple[str, Draft]], kind: str, dispatcher: Dispatcher
) -> None:
    made = await store_notifications(uow, drafts, dispatcher)
    if made:

        async def count_alerts() -> None:
            dispatcher.metrics.alert(kind, len(made))

        uow.on_commit(count_alerts)


async def dead_letters(
    uow: UnitOfWork, letters: list[IncomingDeadLetter], dispatcher: Dispatcher
) -> None:
    """Tell operations about every message a consumer gave up on."""
    locale = dispatcher.operations_locale
    made = await store_notifications(
        uow,
        [(i.letter_id, domain.dead_letter_alert(i.letter, locale)) for i in letters],
        dispatcher,
    )
    if made:

        async def count_alerts() -> None:
            dispatcher.metrics.alert("dead_letter", len(made))

        uow.on_commit(count_alerts)


async def _notify_customers(
    uow: UnitOfWork,
    items: list[tuple[Envelope, E]],
    decide: Callable[[E, Recipient], Draft],
    dispatcher: Dispatcher,
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
    await store_notifications(
        uow, [(env.event_id, decide(event, who[env.key])) for env, event in items], dispatcher
    )


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
    # Field by field: dataclasses.asdict deep-copies, a cost on the hot path for nothing.
    return {
        "order_id": who.order_id,
        "external_id": who.external_id,
        "name": who.name,
        "email": who.email,
        "phone": who.phone,
        "locale": who.locale,
        "channel": who.channel,
        "priority": who.priority,
        "submitted_at": who.submitted_at.timestamp(),
    }


def _payloads(events: list[Envelope], kind: type[E]) -> list[tuple[Envelope, E]]:
    out = []
    for env in events:
        if not isinstance(env.data, kind):
            raise TypeError(f"{env.type} event given to the {kind.event_type} handler")
        out.append((env, env.data))
    return out
