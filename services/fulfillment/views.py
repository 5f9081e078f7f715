"""What operators read: the work queue, an order's shipments with their log and returns, counts.
Read-only queries; the handlers write."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.fulfillment import domain
from services.fulfillment.models import orders, returns, shipment_log, shipments

_TIMES = (
    "submitted_at",
    "queued_at",
    "sla_deadline",
    "escalation_deadline",
    "overdue_at",
    "escalated_at",
    "picked_at",
    "packed_at",
    "shipped_at",
    "delivery_failed_at",
    "delivered_at",
    "cancelled_at",
    "updated_at",
)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def shipment_view(row: Mapping[Any, Any], now: float) -> dict[str, Any]:
    """A shipment as the API, the CLI and the RPC results show it."""
    next_action = domain.NEXT_ACTION.get(row["status"])
    return {
        "shipment_id": row["shipment_id"],
        "order_id": row["order_id"],
        "warehouse": row["warehouse"],
        "status": row["status"],
        "next_action": next_action.name if next_action else None,
        "priority": row["priority"],
        "channel": row["channel"],
        "lines": orjson.loads(row["lines"]),
        "ship_to": orjson.loads(row["ship_to"]),
        "carrier": row["carrier"],
        "tracking_number": row["tracking_number"],
        "failed_deliveries": row["failed_deliveries"],
        # Past its deadline now, or flagged by the SLA job (whose clock is the one that counts).
        "overdue": domain.is_overdue(row["status"], row["sla_deadline"], now)
        or (row["overdue_at"] is not None and row["status"] in domain.IN_WAREHOUSE),
        "escalated": row["escalated_at"] is not None and row["status"] in domain.IN_WAREHOUSE,
        **{column: _iso(row.get(column)) for column in _TIMES},
        "updated_by": row["updated_by"],
    }


def return_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    lines = row["lines"]
    return {
        "return_id": row["return_id"],
        "order_id": row["order_id"],
        "shipment_id": row["shipment_id"],
        "warehouse": row["warehouse"],
        "lines": orjson.loads(lines) if isinstance(lines, bytes) else lines,
        "status": row["status"],
        "reason": row["reason"],
        "requested_at": _iso(row["requested_at"]),
        "requested_by": row["requested_by"],
        "received_at": _iso(row.get("received_at")),
        "received_by": row.get("received_by"),
        "refund_amount": row.get("refund_amount"),
        "currency": row.get("currency"),
        "refund_note": row.get("refund_note"),
    }


async def work_queue(
    conn: AsyncConnection, limit: int, warehouse: str | None = None
) -> list[dict[str, Any]]:
    """Shipments still in the warehouse, most pressing first: priority, deadline, arrival."""
    query = select(shipments).where(shipments.c.status.in_(domain.IN_WAREHOUSE))
    if warehouse is not None:
        query = query.where(shipments.c.warehouse == warehouse)
    result = await conn.execute(
        query.order_by(
            shipments.c.priority_rank, shipments.c.sla_deadline, shipments.c.queued_at
        ).limit(limit)
    )
    now = time.time()
    return [shipment_view(row, now) for row in result.mappings()]


async def shipments_of(conn: AsyncConnection, order_id: str) -> list[dict[str, Any]]:
    """An order's shipments, each with its log (who did what, when) and its returns; empty if
    none."""
    rows = (
        await conn.execute(
            select(shipments)
            .where(shipments.c.order_id == order_id)
            .order_by(shipments.c.shipment_id)
        )
    ).mappings()
    now = time.time()
    views = {
        row["shipment_id"]: {**shipment_view(row, now), "log": [], "returns": []} for row in rows
    }
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
        found = await conn.execute(
            select(returns).where(returns.c.order_id == order_id).order_by(returns.c.return_id)
        )
        for return_row in found.mappings():
            views[return_row["shipment_id"]]["returns"].append(return_view(return_row))
    return list(views.values())


async def cancellation_of(conn: AsyncConnection, order_id: str) -> dict[str, Any] | None:
    """The order's cancellation (who, when, why), if it is cancelled."""
    row = (
        (
            await conn.execute(
                select(orders).where(orders.c.order_id == order_id, orders.c.status == "cancelled")
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    return {
        "cancelled_at": _iso(row["cancelled_at"]),
        "cancelled_by": row["cancelled_by"],
        "reason": row["cancel_reason"],
    }


async def count_by_status(conn: AsyncConnection) -> dict[str, int]:
    result = await conn.execute(
        select(shipments.c.status, func.count()).group_by(shipments.c.status)
    )
    return {status: count for status, count in result}


async def queue_depth(conn: AsyncConnection) -> dict[tuple[str, str], int]:
    """Shipments in the warehouse by (priority, status)."""
    result = await conn.execute(
        select(shipments.c.priority, shipments.c.status, func.count())
        .where(shipments.c.status.in_(domain.IN_WAREHOUSE))
        .group_by(shipments.c.priority, shipments.c.status)
    )
    return {(priority, status): count for priority, status, count in result}


async def overdue_count(conn: AsyncConnection) -> int:
    result = await conn.execute(
        select(func.count())
        .select_from(shipments)
        .where(shipments.c.status.in_(domain.IN_WAREHOUSE), shipments.c.overdue_at.is_not(None))
    )
    return int(result.scalar_one())
