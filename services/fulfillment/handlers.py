"""Fulfillment's handlers: load, decide, save, emit. Each applies a list in one transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.fulfillment import domain
from services.fulfillment.models import shipment_log, shipments
from shared.consumer import UnitOfWork
from shared.contracts.common import StockLine
from shared.contracts.envelope import Envelope, Event
from shared.contracts.fulfillment import (
    ShipmentCommand,
    ShipmentDelivered,
    ShipmentPacked,
    ShipmentPicked,
    ShipmentQueued,
    ShipmentShipped,
)
from shared.contracts.inventory import StockReserved
from shared.ids import uuid7
from shared.metrics import ServiceMetrics
from shared.rpc import CommandRefused

SYSTEM_ACTOR = "system"
# Stages of the end-to-end latency histogram this service reports, by the status that marks them.
OBSERVED_STAGES = ("shipped", "delivered")


class ShipmentNotFound(CommandRefused):
    """The order has no shipment (or not the one named): nothing to refuse, nothing there."""


async def queue_shipments(
    uow: UnitOfWork,
    events: list[Envelope],
    metrics: ServiceMetrics,
    sla_hours: Mapping[str, float],
) -> None:
    """Queue one shipment per warehouse of each reservation, with its priority and deadline."""
    order_ids = {e.key for e in events}
    result = await uow.conn.execute(
        select(shipments.c.order_id, shipments.c.warehouse).where(
            shipments.c.order_id.in_(order_ids)
        )
    )
    known: set[tuple[str, str]] = {(order_id, warehouse) for order_id, warehouse in result}
    now = datetime.now(UTC)
    ts = now.timestamp()
    shipment_rows: list[dict[str, Any]] = []
    log_rows: list[dict[str, Any]] = []
    for env in events:
        reserved = env.data
        assert isinstance(reserved, StockReserved)
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
            deadline = domain.sla_deadline(now, reserved.priority, sla_hours)
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
            metrics.count("queued", reserved.channel)
            metrics.observe_stage(
                "queued", reserved.channel, reserved.priority, reserved.submitted_at
            )
    if shipment_rows:
        await uow.conn.execute(insert(shipments), shipment_rows)
        await uow.conn.execute(insert(shipment_log), log_rows)


_EVENTS: dict[str, type[Event]] = {
    "pick": ShipmentPicked,
    "pack": ShipmentPacked,
    "ship": ShipmentShipped,
    "deliver": ShipmentDelivered,
}


async def apply_commands(
    uow: UnitOfWork,
    action_name: str,
    commands: Sequence[ShipmentCommand],
    metrics: ServiceMetrics,
) -> list[list[dict[str, Any]] | domain.Refusal]:
    """Apply operator commands of one kind; each gets the shipments it moved or its refusal.

    A refusal is an answer, not an error: the other commands of the list still apply (the
    simulator sends many at once, and an operator may have moved some of them meanwhile)."""
    action = domain.ACTIONS[action_name]
    stamp = f"{action.becomes}_at"
    # FOR UPDATE: two replicas must not both move the same shipment (SQLite ignores it; there
    # the single writer serialises commands).
    result = await uow.conn.execute(
        select(shipments)
        .where(shipments.c.order_id.in_({c.order_id for c in commands}))
        .order_by(shipments.c.shipment_id)
        .with_for_update()
    )
    by_order: dict[str, list[dict[str, Any]]] = {}
    for found in result.mappings():
        by_order.setdefault(found["order_id"], []).append(dict(found))

    ts = datetime.now(UTC).timestamp()
    outcomes: list[list[dict[str, Any]] | domain.Refusal] = []
    updates: list[dict[str, Any]] = []
    log_rows: list[dict[str, Any]] = []
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
            # The rows stay in memory for the rest of the list: a second command for the
            # same shipment sees the state the first one left.
            row.update(status=action.becomes, updated_at=ts, updated_by=command.actor)
            row[stamp] = ts
            if action.name == "ship":
                row.update(carrier=command.carrier, tracking_number=command.tracking_number)
            updates.append(
                {
                    "b_shipment_id": row["shipment_id"],
                    "b_at": ts,
                    "b_actor": command.actor,
                    "b_carrier": row["carrier"],
                    "b_tracking_number": row["tracking_number"],
                }
            )
            log_rows.append(
                {
                    "shipment_id": row["shipment_id"],
                    "order_id": row["order_id"],
                    "action": action.name,
                    "actor": command.actor,
                    "at": ts,
                    "detail": _detail(action, row),
                }
            )
            uow.emit(_event(action, row, command.actor))
        statuses = [r["status"] for r in rows]
        first = rows[0]
        if action.becomes in OBSERVED_STAGES and domain.order_reached(action.becomes, statuses):
            submitted_at = datetime.fromtimestamp(first["submitted_at"], UTC)
            metrics.count(action.becomes, first["channel"])
            metrics.observe_stage(action.becomes, first["channel"], first["priority"], submitted_at)
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
        await uow.conn.execute(
            update(shipments)
            .where(shipments.c.shipment_id == bindparam("b_shipment_id"))
            .where(shipments.c.status == action.requires)
            .values(values),
            updates,
        )
        await uow.conn.execute(insert(shipment_log), log_rows)
    return outcomes


async def run_command(
    uow: UnitOfWork, action_name: str, command: ShipmentCommand, metrics: ServiceMetrics
) -> list[dict[str, Any]]:
    """One operator command: the shipments it moved, or CommandRefused with the reason."""
    outcome = (await apply_commands(uow, action_name, [command], metrics))[0]
    if isinstance(outcome, domain.Refusal):
        if outcome.unknown:
            raise ShipmentNotFound(outcome.reason)
        raise CommandRefused(outcome.reason)
    return outcome


def _event(action: domain.Action, row: Mapping[Any, Any], actor: str) -> Event:
    common: dict[str, Any] = {
        "order_id": row["order_id"],
        "shipment_id": row["shipment_id"],
        "warehouse": row["warehouse"],
        "actor": actor,
        "submitted_at": datetime.fromtimestamp(row["submitted_at"], UTC),
        "channel": row["channel"],
        "priority": row["priority"],
    }
    if action.name == "ship":
        return ShipmentShipped(
            **common,
            carrier=row["carrier"],
            tracking_number=row["tracking_number"],
            lines=[StockLine.model_validate(line) for line in orjson.loads(row["lines"])],
        )
    return _EVENTS[action.name](**common)


def _detail(action: domain.Action, row: Mapping[Any, Any]) -> str | None:
    if action.name != "ship":
        return None
    detail = f"carrier {row['carrier']}, tracking number {row['tracking_number']}"
    late_s = row["shipped_at"] - row["sla_deadline"]
    if late_s > 0:
        detail += f"; {late_s / 60:.0f} min after its SLA deadline"
    return detail


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def shipment_view(row: Mapping[Any, Any], now: float) -> dict[str, Any]:
    """A shipment as the API, the CLI and the RPC results show it."""
    return {
        "shipment_id": row["shipment_id"],
        "order_id": row["order_id"],
        "warehouse": row["warehouse"],
        "status": row["status"],
        "priority": row["priority"],
        "channel": row["channel"],
        "lines": orjson.loads(row["lines"]),
        "ship_to": orjson.loads(row["ship_to"]),
        "carrier": row["carrier"],
        "tracking_number": row["tracking_number"],
        "overdue": domain.is_overdue(row["status"], row["sla_deadline"], now),
        **{
            column: _iso(row[column])
            for column in (
                "submitted_at",
                "queued_at",
                "sla_deadline",
                "picked_at",
                "packed_at",
                "shipped_at",
                "delivered_at",
                "updated_at",
            )
        },
        "updated_by": row["updated_by"],
    }


async def work_queue(conn: AsyncConnection, limit: int) -> list[dict[str, Any]]:
    """Shipments still in the warehouse, most pressing first: priority, deadline, arrival."""
    result = await conn.execute(
        select(shipments)
        .where(shipments.c.status.in_(domain.IN_WAREHOUSE))
        .order_by(shipments.c.priority_rank, shipments.c.sla_deadline, shipments.c.queued_at)
        .limit(limit)
    )
    now = datetime.now(UTC).timestamp()
    return [shipment_view(row, now) for row in result.mappings()]


async def shipments_of(conn: AsyncConnection, order_id: str) -> list[dict[str, Any]]:
    """An order's shipments, each with its log (who did what, when); empty if none."""
    rows = (
        await conn.execute(
            select(shipments)
            .where(shipments.c.order_id == order_id)
            .order_by(shipments.c.shipment_id)
        )
    ).mappings()
    now = datetime.now(UTC).timestamp()
    views = {row["shipment_id"]: {**shipment_view(row, now), "log": []} for row in rows}
    if views:
        entries = await conn.execute(
            select(shipment_log)
            .where(shipment_log.c.order_id == order_id)
            .order_by(shipment_log.c.id)
        )
        for entry in entries.mappings():
            views[entry["shipment_id"]]["log"].append(
                {
                    "action": entry["action"],
                    "actor": entry["actor"],
                    "at": _iso(entry["at"]),
                    "detail": entry["detail"],
                }
            )
    return list(views.values())


async def count_by_status(conn: AsyncConnection) -> dict[str, int]:
    result = await conn.execute(
        select(shipments.c.status, func.count()).group_by(shipments.c.status)
    )
    return {status: count for status, count in result}
