"""Intake's handlers: load, decide, save, emit. Each applies a list (a batch) in one transaction."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, case, insert, select, update

from services.intake import domain
from services.intake.models import orders, rejections
from shared.consumer import UnitOfWork
from shared.contracts.common import FieldError
from shared.contracts.envelope import Envelope
from shared.contracts.intake import (
    OrderAccepted,
    OrderDuplicate,
    OrderRejected,
    OrderSubmission,
    SubmissionAnswer,
)
from shared.ids import uuid7
from shared.metrics import ServiceMetrics


@dataclass(frozen=True, slots=True)
class Submission:
    channel: str
    raw: bytes
    received_at: datetime


async def submit_orders(
    uow: UnitOfWork, items: list[Submission], metrics: ServiceMetrics
) -> list[SubmissionAnswer]:
    """Answer every submission exactly once: accepted, rejected (all errors) or duplicate."""
    decided: list[tuple[Submission, OrderSubmission | list[FieldError]]] = [
        (item, domain.read_submission(item.raw, item.channel)) for item in items
    ]
    wanted = {(s.channel, s.external_id) for _, s in decided if isinstance(s, OrderSubmission)}
    known: dict[tuple[str, str], str] = {}
    if wanted:
        result = await uow.conn.execute(
            select(orders.c.order_id, orders.c.channel, orders.c.external_id).where(
                orders.c.external_id.in_({ext for _, ext in wanted})
            )
        )
        for order_id, channel, external_id in result:
            if (channel, external_id) in wanted:
                known[(channel, external_id)] = order_id

    answers: list[SubmissionAnswer] = []
    outcomes: list[tuple[str, str, tuple[str, datetime] | None]] = []
    order_rows: list[dict[str, Any]] = []
    rejection_rows: list[dict[str, Any]] = []
    now = time.time()
    for item, outcome in decided:
        if isinstance(outcome, list):
            order_id = uuid7()
            external_id = _external_id(item.raw)
            rejection_rows.append(
                {
                    "order_id": order_id,
                    "channel": item.channel,
                    "external_id": external_id,
                    "errors": orjson.dumps([e.model_dump() for e in outcome]),
                    "raw": item.raw[:65536],
                    "submitted_at": item.received_at.timestamp(),
                }
            )
            uow.emit(
                OrderRejected(
                    order_id=order_id,
                    channel=item.channel,
                    external_id=external_id,
                    errors=outcome,
                    submitted_at=item.received_at,
                )
            )
            outcomes.append(("rejected", item.channel, None))
            answers.append(SubmissionAnswer(outcome="rejected", order_id=order_id, errors=outcome))
            continue
        sub = outcome
        original = known.get((sub.channel, sub.external_id))
        if original is not None:
            uow.emit(
                OrderDuplicate(
                    order_id=original,
                    channel=sub.channel,
                    external_id=sub.external_id,
                    submitted_at=item.received_at,
                )
            )
            outcomes.append(("duplicate", sub.channel, None))
            answers.append(SubmissionAnswer(outcome="duplicate", order_id=original))
            continue
        order_id = uuid7()
        known[(sub.channel, sub.external_id)] = order_id
        total = sub.lines_total()
        event = OrderAccepted(
            order_id=order_id,
            channel=sub.channel,
            external_id=sub.external_id,
            customer=sub.customer,
            lines=sub.lines,
            currency=sub.currency,
            total=total,
            shipping_address=sub.shipping_address,
            priority=sub.priority,
            submitted_at=item.received_at,
        )
        order_rows.append(
            {
                "order_id": order_id,
                "channel": sub.channel,
                "external_id": sub.external_id,
                "status": "accepted",
                "status_rank": domain.STATUS_RANK["accepted"],
                "priority": sub.priority,
                "currency": sub.currency,
                "total": str(total),
                "order_doc": orjson.dumps(sub.model_dump(mode="json")),
                "submitted_at": item.received_at.timestamp(),
                "accepted_at": now,
                "updated_at": now,
            }
        )
        uow.emit(event, correlation_id=order_id)
        outcomes.append(("accepted", sub.channel, (sub.priority, item.received_at)))
        answers.append(SubmissionAnswer(outcome="accepted", order_id=order_id))
    if order_rows:
        await uow.conn.execute(insert(orders), order_rows)
    if rejection_rows:
        await uow.conn.execute(insert(rejections), rejection_rows)

    async def record_metrics() -> None:
        # After the commit: a batch that rolls back and is retried must not count twice.
        for outcome, channel, accepted in outcomes:
            metrics.count(outcome, channel)
            if accepted is not None:
                metrics.observe_stage("accepted", channel, accepted[0], accepted[1])

    uow.on_commit(record_metrics)
    return answers


def _external_id(raw: bytes) -> str | None:
    try:
        return domain.external_id_of(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return None


# Downstream events that move an order's status: event type -> (status, timestamp column).
PROGRESS: dict[str, tuple[str, str]] = {
    "stock_backordered": ("backordered", "backordered_at"),
    "stock_reserved": ("reserved", "reserved_at"),
    "shipment_queued": ("queued", "queued_at"),
    "shipment_picked": ("picked", "picked_at"),
    "shipment_packed": ("packed", "packed_at"),
    "shipment_shipped": ("shipped", "shipped_at"),
    "shipment_delivered": ("delivered", "delivered_at"),
}


async def record_progress(uow: UnitOfWork, events: list[Envelope]) -> None:
    """Keep the status view: stamp the stage's time, and move the status forward only."""
    status, column = PROGRESS[events[0].type]
    rank = domain.STATUS_RANK[status]
    stmt = (
        update(orders)
        .where(orders.c.order_id == bindparam("oid"))
        .values(
            {
                column: bindparam("at"),
                "status": case((orders.c.status_rank < rank, status), else_=orders.c.status),
                "status_rank": case(
                    (orders.c.status_rank < rank, rank), else_=orders.c.status_rank
                ),
                "updated_at": bindparam("at"),
            }
        )
    )
    rows = [{"oid": e.key, "at": datetime.fromisoformat(e.occurred_at).timestamp()} for e in events]
    await uow.conn.execute(stmt, rows)


async def order_status(uow_conn: Any, order_id: str) -> dict[str, Any] | None:
    """The status view of one order (or its rejection), as the API and CLI show it."""
    row = (await uow_conn.execute(select(orders).where(orders.c.order_id == order_id))).first()
    if row is not None:
        m = row._mapping
        stages = {
            c.removesuffix("_at"): m[c]
            for c in (
                "submitted_at",
                "accepted_at",
                "backordered_at",
                "reserved_at",
                "queued_at",
                "picked_at",
                "packed_at",
                "shipped_at",
                "delivered_at",
            )
            if m[c] is not None
        }
        return {
            "order_id": order_id,
            "status": m["status"],
            "channel": m["channel"],
            "external_id": m["external_id"],
            "priority": m["priority"],
            "currency": m["currency"],
            "total": m["total"],
            "stages": {k: datetime.fromtimestamp(v, UTC).isoformat() for k, v in stages.items()},
        }
    row = (
        await uow_conn.execute(select(rejections).where(rejections.c.order_id == order_id))
    ).first()
    if row is not None:
        m = row._mapping
        return {
            "order_id": order_id,
            "status": "rejected",
            "channel": m["channel"],
            "external_id": m["external_id"],
            "errors": orjson.loads(m["errors"]),
        }
    return None
