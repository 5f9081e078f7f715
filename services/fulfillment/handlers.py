"""Fulfillment's handlers: load, decide, save, emit. Each applies a list in one transaction.

Locking, for PostgreSQL (SQLite has one writer at a time): commands and cancellations lock an
order's shipment rows FOR UPDATE in shipment_id order, so a ship and a cancel of the same order
run one after the other and the second sees what the first did. A cancel and a reservation of an
order that has no shipment yet meet on the ``orders`` row, which both insert (see models.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Table, bindparam, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Insert

from services.fulfillment import domain
from services.fulfillment.metrics import FulfillmentMetrics
from services.fulfillment.models import orders, shipment_log, shipments
from services.fulfillment.views import shipment_view
from shared.consumer import UnitOfWork
from shared.contracts.common import StockLine
from shared.contracts.envelope import Envelope, Event
from shared.contracts.fulfillment import (
    CancellationRefused,
    DeliveryFailedCommand,
    OrderCancelled,
    ShipmentCommand,
    ShipmentDelivered,
    ShipmentDeliveryFailed,
    ShipmentEscalated,
    ShipmentOverdue,
    ShipmentPacked,
    ShipmentPicked,
    ShipmentQueued,
    ShipmentShipped,
)
from shared.contracts.intake import OrderCancelRequested
from shared.contracts.inventory import StockReserved
from shared.db import bulk_insert
from shared.ids import uuid7
from shared.rpc import CommandRefused

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "system"
# Stages of the end-to-end latency histogram this service reports, by the status that marks them.
OBSERVED_STAGES = ("shipped", "delivered")


class ShipmentNotFound(CommandRefused):
    """The order has no shipment (or not the one named): nothing to refuse, nothing there."""


def after_commit(uow: UnitOfWork, record: Callable[[], None]) -> None:
    """Metrics move only for what was committed (a rolled-back batch is retried and counted
    then)."""

    async def run() -> None:
        record()

    uow.on_commit(run)


def _insert_new_only(conn: AsyncConnection, table: Table) -> Insert:
    """INSERT that skips rows whose key exists, waiting for an uncommitted one to decide."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def _status_is_one_of(statuses: Sequence[str]) -> ColumnElement[bool]:
    """The guard of an executemany UPDATE (where an expanding IN is not allowed): the row is
    still in the status the decision saw."""
    return or_(*(shipments.c.status == status for status in statuses))


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


# --- reservations -> shipments ------------------------------------------------------------------


async def queue_shipments(
    uow: UnitOfWork,
    events: list[Envelope],
    metrics: FulfillmentMetrics,
    sla: domain.SlaPolicy,
) -> None:
    """Queue one shipment per warehouse of each reservation, with its priority and deadlines.

    A reservation of a cancelled order queues nothing: inventory releases its stock on the
    OrderCancelled that fulfillment already sent."""
    now = datetime.now(UTC)
    ts = now.timestamp()
    first_of: dict[str, StockReserved] = {}
    for env in events:
        assert isinstance(env.data, StockReserved)
        first_of.setdefault(env.data.order_id, env.data)
    order_rows = [
        {
            "order_id": order_id,
            "status": "open",
            "currency": reserved.currency,
            "unit_prices": None
            if reserved.unit_prices is None
            else orjson.dumps({sku: str(p) for sku, p in reserved.unit_prices.items()}),
            "created_at": ts,
        }
        # Sorted: two transactions inserting the same keys lock them in the same order.
        for order_id, reserved in sorted(first_of.items())
    ]
    inserted = set(
        (
            await uow.conn.execute(
                _insert_new_only(uow.conn, orders).returning(orders.c.order_id), order_rows
            )
        ).scalars()
    )
    # Orders seen before: redelivered or repeated reservations, or cancelled ones.
    cancelled: set[str] = set()
    known: set[tuple[str, str]] = set()
    seen_before = set(first_of) - inserted
    if seen_before:
        result = await uow.conn.execute(
            select(orders.c.order_id, orders.c.status, shipments.c.warehouse)
            .select_from(orders.outerjoin(shipments, shipments.c.order_id == orders.c.order_id))
            .where(orders.c.order_id.in_(seen_before))
        )
        for order_id, status, warehouse in result:
            if status == "cancelled":
                cancelled.add(order_id)
            if warehouse is not None:
                known.add((order_id, warehouse))

    shipment_rows: list[dict[str, Any]] = []
    log_rows: list[dict[str, Any]] = []
    queued_orders: list[StockReserved] = []
    dropped = 0
    for env in events:
        reserved = env.data
        assert isinstance(reserved, StockReserved)
        if reserved.order_id in cancelled:
            dropped += 1
            log.info(
                "order %s: reservation arrived after its cancellation; nothing queued",
                reserved.order_id,
            )
            continue
        by_warehouse: dict[str, list[StockLine]] = {}
        for line in reserved.allocations:
            by_warehouse.setdefault(line.warehouse, []).append(line)
        queued_any = False
        for warehouse, lines in by_warehouse.items():
            if (reserved.order_id, warehouse) in known:
                continue
            known.add((reserved.order_id, warehouse))
            queued_any = True
            shipment_id = uuid7()
            deadline = sla.deadline(now, reserved.priority)
            escalation = sla.escalation(now, reserved.priority)
            shipment_rows.append(
                {
                    "shipment_id": shipment_id,
                    "order_id": reserved.order_id,
                    "warehouse": warehouse,
                    "priority": reserved.priority,
                    "priority_rank": domain.PRIORITY_RANK[reserved.priority],
                    "status": "queued",
                    "lines": orjson.dumps([line.model_dump(mode="json") for line in lines]),
                    "ship_to": orjson.dumps(reserved.ship_to.model_dump(mode="json")),
                    "channel": reserved.channel,
                    "submitted_at": reserved.submitted_at.timestamp(),
                    "queued_at": ts,
                    "sla_deadline": deadline.timestamp(),
                    "escalation_deadline": escalation.timestamp(),
                    "failed_deliveries": 0,
                    "updated_at": ts,
                    "updated_by": SYSTEM_ACTOR,
                }
            )
            log_rows.append(
                {
                    "shipment_id": shipment_id,
                    "order_id": reserved.order_id,
                    "action": "queue",
                    "actor": SYSTEM_ACTOR,
                    "at": ts,
                    "detail": f"{reserved.priority} priority, ship by {deadline.isoformat()}",
                }
            )
            uow.emit(
                ShipmentQueued(
                    order_id=reserved.order_id,
                    shipment_id=shipment_id,
                    warehouse=warehouse,
                    actor=SYSTEM_ACTOR,
                    submitted_at=reserved.submitted_at,
                    channel=reserved.channel,
                    priority=reserved.priority,
                    sla_deadline=deadline,
                    lines=lines,
                ),
                cause=env,
            )
        if queued_any:
            queued_orders.append(reserved)
    if shipment_rows:
        await bulk_insert(shipments)(uow.conn, shipment_rows)
        await bulk_insert(shipment_log)(uow.conn, log_rows)

    def record() -> None:
        for reserved in queued_orders:
            metrics.common.count("queued", reserved.channel)
            metrics.common.observe_stage(
                "queued", reserved.channel, reserved.priority, reserved.submitted_at
            )
        if shipment_rows:
            metrics.shipments.labels("queued").inc(len(shipment_rows))
        if dropped:
            metrics.shipments.labels("dropped_cancelled").inc(dropped)

    after_commit(uow, record)


# --- operator commands --------------------------------------------------------------------------

_EVENTS: dict[str, type[Event]] = {
    "pick": ShipmentPicked,
    "pack": ShipmentPacked,
    "ship": ShipmentShipped,
    "deliver": ShipmentDelivered,
    "delivery-failed": ShipmentDeliveryFailed,
}


async def apply_commands(
    uow: UnitOfWork,
    action_name: str,
    commands: Sequence[ShipmentCommand],
    metrics: FulfillmentMetrics,
) -> list[list[dict[str, Any]] | domain.Refusal]:
    """Apply operator commands of one kind; each gets the shipments it moved or its refusal.

    A refusal is an answer, not an error: the other commands of the list still apply (the
    simulator sends many at once, and an operator may have moved some of them meanwhile)."""
    action = domain.ACTIONS[action_name]
    stamp = f"{action.becomes}_at"
    # FOR UPDATE: two replicas (or a command and a cancellation) must not both move the same
    # shipment (SQLite ignores it; there the single writer serialises commands).
    result = await uow.conn.execute(
        select(shipments)
        .where(shipments.c.order_id.in_({c.order_id for c in commands}))
        .order_by(shipments.c.shipment_id)
        .with_for_update()
    )
    by_order: dict[str, list[dict[str, Any]]] = {}
    for found in result.mappings():
        by_order.setdefault(found["order_id"], []).append(dict(found))

    ts = time.time()
    outcomes: list[list[dict[str, Any]] | domain.Refusal] = []
    updates: list[dict[str, Any]] = []
    log_rows: list[dict[str, Any]] = []
    spent: list[tuple[str, str, float]] = []
    reached: list[dict[str, Any]] = []
    for command in commands:
        rows = by_order.get(command.order_id, [])
        if action.name == "ship" and (command.carrier is None or command.tracking_number is None):
            outcomes.append(domain.Refusal("ship needs a carrier and a tracking_number"))
            continue
        decision = domain.choose(
            action,
            command.order_id,
            [domain.ShipmentState(r["shipment_id"], r["status"]) for r in rows],
            command.shipment_id,
        )
        if isinstance(decision, domain.Refusal):
            outcomes.append(decision)
            continue
        moved = [r for r in rows if r["shipment_id"] in decision]
        for row in moved:
            spent.append((row["status"], row["priority"], ts - row["updated_at"]))
            # The rows stay in memory for the rest of the list: a second command for the
            # same shipment sees the state the first one left.
            row.update(status=action.becomes, updated_at=ts, updated_by=command.actor)
            row[stamp] = ts
            if action.name == "ship":
                row.update(carrier=command.carrier, tracking_number=command.tracking_number)
            reason = None
            if isinstance(command, DeliveryFailedCommand):
                row["failed_deliveries"] += 1
                reason = command.reason
            updates.append(
                {
                    "b_shipment_id": row["shipment_id"],
                    "b_at": ts,
                    "b_actor": command.actor,
                    "b_carrier": row["carrier"],
                    "b_tracking_number": row["tracking_number"],
                    "b_failed": row["failed_deliveries"],
                }
            )
            log_rows.append(
                {
                    "shipment_id": row["shipment_id"],
                    "order_id": row["order_id"],
                    "action": action.name,
                    "actor": command.actor,
                    "at": ts,
                    "detail": _detail(action, row, reason),
                }
            )
            uow.emit(_event(action, row, command.actor, reason))
        statuses = [r["status"] for r in rows]
        if action.becomes in OBSERVED_STAGES and domain.order_reached(action.becomes, statuses):
            reached.append(rows[0])
        outcomes.append([shipment_view(r, ts) for r in moved])

    if updates:
        values: dict[str, Any] = {
            "status": action.becomes,
            stamp: bindparam("b_at"),
            "updated_at": bindparam("b_at"),
            "updated_by": bindparam("b_actor"),
        }
        if action.name == "ship":
            values["carrier"] = bindparam("b_carrier")
            values["tracking_number"] = bindparam("b_tracking_number")
        if action.name == "delivery-failed":
            values["failed_deliveries"] = bindparam("b_failed")
        await uow.conn.execute(
            update(shipments)
            .where(shipments.c.shipment_id == bindparam("b_shipment_id"))
            .where(_status_is_one_of(action.requires))
            .values(values),
            updates,
        )
        await uow.conn.execute(insert(shipment_log), log_rows)

    def record() -> None:
        metrics.observe_stages(spent)
        if updates:
            metrics.shipments.labels(action.becomes).inc(len(updates))
        for first in reached:
            metrics.common.count(action.becomes, first["channel"])
            metrics.common.observe_stage(
                action.becomes, first["channel"], first["priority"], _dt(first["submitted_at"])
            )

    after_commit(uow, record)
    return outcomes


async def run_command(
    uow: UnitOfWork, action_name: str, command: ShipmentCommand, metrics: FulfillmentMetrics
) -> list[dict[str, Any]]:
    """One operator command: the shipments it moved, or CommandRefused with the reason."""
    outcome = (await apply_commands(uow, action_name, [command], metrics))[0]
    if isinstance(outcome, domain.Refusal):
        if outcome.unknown:
            raise ShipmentNotFound(outcome.reason)
        raise CommandRefused(outcome.reason)
    return outcome


def _common(row: Mapping[str, Any], actor: str) -> dict[str, Any]:
    return {
        "order_id": row["order_id"],
        "shipment_id": row["shipment_id"],
        "warehouse": row["warehouse"],
        "actor": actor,
        "submitted_at": _dt(row["submitted_at"]),
        "channel": row["channel"],
        "priority": row["priority"],
    }


def _event(action: domain.Action, row: Mapping[str, Any], actor: str, reason: str | None) -> Event:
    common = _common(row, actor)
    if action.name == "ship":
        return ShipmentShipped(
            **common,
            carrier=row["carrier"],
            tracking_number=row["tracking_number"],
            lines=[StockLine.model_validate(line) for line in orjson.loads(row["lines"])],
        )
    if action.name == "delivery-failed":
        return ShipmentDeliveryFailed(
            **common,
            carrier=row["carrier"],
            tracking_number=row["tracking_number"],
            reason=reason or "delivery failed",
            attempt=row["failed_deliveries"],
        )
    return _EVENTS[action.name](**common)


def _detail(action: domain.Action, row: Mapping[str, Any], reason: str | None) -> str | None:
    if action.name == "delivery-failed":
        return f"failed delivery {row['failed_deliveries']}: {reason}"
    if action.name != "ship":
        return None
    detail = f"carrier {row['carrier']}, tracking number {row['tracking_number']}"
    late_s = row["shipped_at"] - row["sla_deadline"]
    if late_s > 0:
        late = f"{late_s:.0f} s" if late_s < 60 else f"{late_s / 60:.0f} min"
        detail += f"; {late} after its SLA deadline"
    return detail


# --- cancellation: fulfillment arbitrates cancel against ship -----------------------------------


async def cancel_orders(
    uow: UnitOfWork, events: list[Envelope], metrics: FulfillmentMetrics
) -> None:
    """Answer each cancel request: OrderCancelled (nothing has left the warehouse: the shipments
    stop, and an order without shipments is remembered so its reservation is never queued) or
    CancellationRefused with the reason. A second request for a cancelled order is refused as
    already cancelled, so the order has one outcome however often it is cancelled."""
    ts = time.time()
    first_of: dict[str, OrderCancelRequested] = {}
    for env in events:
        assert isinstance(env.data, OrderCancelRequested)
        first_of.setdefault(env.data.order_id, env.data)
    # An order fulfillment has never seen gets its tombstone from this insert; one it has seen
    # (or is queueing right now: the insert waits for that transaction) is left alone here.
    tombstoned = set(
        (
            await uow.conn.execute(
                _insert_new_only(uow.conn, orders).returning(orders.c.order_id),
                [
                    {
                        "order_id": order_id,
                        "status": "cancelled",
                        "created_at": ts,
                        "cancelled_at": ts,
                        "cancelled_by": request.actor,
                        "cancel_reason": request.reason,
                    }
                    for order_id, request in sorted(first_of.items())
                ],
            )
        ).scalars()
    )
    cancelled: dict[str, bool] = {}
    by_order: dict[str, list[dict[str, Any]]] = {}
    known = set(first_of) - tombstoned
    if known:
        result = await uow.conn.execute(
            select(orders.c.order_id, orders.c.status)
            .where(orders.c.order_id.in_(known))
            .order_by(orders.c.order_id)
            .with_for_update()
        )
        cancelled = {order_id: status == "cancelled" for order_id, status in result}
        result = await uow.conn.execute(
            select(shipments)
            .where(shipments.c.order_id.in_(known))
            .order_by(shipments.c.shipment_id)
            .with_for_update()
        )
        for locked in result.mappings():
            by_order.setdefault(locked["order_id"], []).append(dict(locked))

    order_updates: list[dict[str, Any]] = []
    shipment_updates: list[dict[str, Any]] = []
    log_rows: list[dict[str, Any]] = []
    outcomes: list[str] = []
    for env in events:
        request = env.data
        assert isinstance(request, OrderCancelRequested)
        order_id = request.order_id
        rows = by_order.get(order_id, [])
        decision: domain.Cancel | domain.Refusal
        if order_id in tombstoned and order_id not in cancelled:
            decision = domain.Cancel(())
        else:
            decision = domain.decide_cancel(
                order_id,
                cancelled.get(order_id, False),
                [
                    domain.ShipmentState(
                        r["shipment_id"], r["status"], r["carrier"], r["tracking_number"]
                    )
                    for r in rows
                ],
            )
        if isinstance(decision, domain.Refusal):
            uow.emit(
                CancellationRefused(order_id=order_id, reason=decision.reason, actor=request.actor),
                cause=env,
            )
            outcomes.append("refused")
            continue
        if order_id not in tombstoned:
            order_updates.append(
                {
                    "b_order_id": order_id,
                    "b_at": ts,
                    "b_actor": request.actor,
                    "b_reason": request.reason,
                }
            )
        cancelled[order_id] = True
        for row in rows:
            if row["shipment_id"] not in decision.shipment_ids:
                continue
            row["status"] = "cancelled"
            shipment_updates.append(
                {"b_shipment_id": row["shipment_id"], "b_at": ts, "b_actor": request.actor}
            )
            log_rows.append(
                {
                    "shipment_id": row["shipment_id"],
                    "order_id": order_id,
                    "action": "cancel",
                    "actor": request.actor,
                    "at": ts,
                    "detail": request.reason,
                }
            )
        uow.emit(
            OrderCancelled(order_id=order_id, reason=request.reason, actor=request.actor),
            cause=env,
        )
        outcomes.append("cancelled")

    if order_updates:
        await uow.conn.execute(
            update(orders)
            .where(orders.c.order_id == bindparam("b_order_id"))
            .values(
                status="cancelled",
                cancelled_at=bindparam("b_at"),
                cancelled_by=bindparam("b_actor"),
                cancel_reason=bindparam("b_reason"),
            ),
            order_updates,
        )
    if shipment_updates:
        await uow.conn.execute(
            update(shipments)
            .where(shipments.c.shipment_id == bindparam("b_shipment_id"))
            .where(_status_is_one_of(domain.IN_WAREHOUSE))
            .values(
                status="cancelled",
                cancelled_at=bindparam("b_at"),
                updated_at=bindparam("b_at"),
                updated_by=bindparam("b_actor"),
            ),
            shipment_updates,
        )
        await uow.conn.execute(insert(shipment_log), log_rows)

    def record() -> None:
        for outcome in outcomes:
            metrics.cancellations.labels(outcome).inc()
        if shipment_updates:
            metrics.shipments.labels("cancelled").inc(len(shipment_updates))

    after_commit(uow, record)


# --- SLA deadlines ------------------------------------------------------------------------------


async def check_sla(
    uow: UnitOfWork, now: float, metrics: FulfillmentMetrics, limit: int = 500
) -> tuple[int, int]:
    """Flag the shipments whose SLA deadline (overdue) or escalation threshold has passed while
    they are still in the warehouse; each is flagged once. Returns (overdue, escalated)."""
    overdue = await _flag(uow, now, limit, "overdue_at", shipments.c.overdue_at.is_(None))
    # The escalation threshold lies past the deadline, so these are among the overdue.
    escalated = await _flag(
        uow,
        now,
        limit,
        "escalated_at",
        shipments.c.overdue_at.is_not(None),
        shipments.c.escalated_at.is_(None),
        shipments.c.escalation_deadline <= now,
    )
    log_rows: list[dict[str, Any]] = []
    for level, rows in (("overdue", overdue), ("escalate", escalated)):
        event_type = ShipmentOverdue if level == "overdue" else ShipmentEscalated
        for row in rows:
            uow.emit(
                event_type(
                    **_common(row, SYSTEM_ACTOR),
                    status=row["status"],
                    sla_deadline=_dt(row["sla_deadline"]),
                    escalation_deadline=_dt(row["escalation_deadline"]),
                )
            )
            threshold = row["sla_deadline" if level == "overdue" else "escalation_deadline"]
            log_rows.append(
                {
                    "shipment_id": row["shipment_id"],
                    "order_id": row["order_id"],
                    "action": level,
                    "actor": SYSTEM_ACTOR,
                    "at": now,
                    "detail": f"still {row['status']} after {_dt(threshold).isoformat()}",
                }
            )
    if log_rows:
        await uow.conn.execute(insert(shipment_log), log_rows)
        for level, rows in (("overdue", overdue), ("escalated", escalated)):
            if rows:
                log.warning(
                    "ALERT %d shipment(s) %s, e.g. order %s (%s priority, still %s)",
                    len(rows),
                    level,
                    rows[0]["order_id"],
                    rows[0]["priority"],
                    rows[0]["status"],
                )

    def record() -> None:
        for row in overdue:
            metrics.sla_breaches.labels(row["priority"], "overdue").inc()
        for row in escalated:
            metrics.sla_breaches.labels(row["priority"], "escalated").inc()

    after_commit(uow, record)
    return len(overdue), len(escalated)


async def _flag(
    uow: UnitOfWork, now: float, limit: int, stamp: str, *unflagged: ColumnElement[bool]
) -> list[dict[str, Any]]:
    """Stamp ``stamp`` on the shipments in the warehouse past their deadline that match
    ``unflagged``, at most ``limit``; returns them as they are now."""
    due = (
        # Every rank named, so the scan is a few ranges of the work-queue index.
        shipments.c.status.in_(domain.IN_WAREHOUSE),
        shipments.c.priority_rank.in_(sorted(set(domain.PRIORITY_RANK.values()))),
        shipments.c.sla_deadline <= now,
        *unflagged,
    )
    # SKIP LOCKED: a shipment an operator is moving right now is looked at on the next pass
    # instead of making the job wait (or deadlock) on it. SQLite has no row locks to skip.
    ids = (
        (
            await uow.conn.execute(
                select(shipments.c.shipment_id)
                .where(*due)
                .order_by(shipments.c.sla_deadline)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        .scalars()
        .all()
    )
    if not ids:
        return []
    result = await uow.conn.execute(
        update(shipments)
        .where(shipments.c.shipment_id.in_(ids), *due)
        .values({stamp: now})
        .returning(*shipments.c)
    )
    return [dict(row) for row in result.mappings()]
