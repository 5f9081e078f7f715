"""What fulfillment knows for audits, without changing anything: an order's trace (its shipment
log: who did what, when, why), its shipments a page of orders at a time with their value, and
the report's SLA figures."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.fulfillment.models import inbox, orders, outbox, shipment_log, shipments
from shared import audit
from shared.runtime import ServiceRuntime

SERVICE = "fulfillment"
SHIPPED = ("shipped", "delivered")
ENDED = ("shipped", "delivered", "cancelled")


async def trace(conn: AsyncConnection, order_id: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    row = (await conn.execute(select(orders).where(orders.c.order_id == order_id))).first()
    if row is not None:
        entries.append(
            audit.entry(row.created_at, SERVICE, "state", "order known", by="fulfillment")
        )
        if row.cancelled_at is not None:
            entries.append(
                audit.entry(
                    row.cancelled_at,
                    SERVICE,
                    "state",
                    "order cancelled",
                    by=row.cancelled_by,
                    why=row.cancel_reason,
                )
            )
    for r in await conn.execute(
        select(shipment_log).where(shipment_log.c.order_id == order_id).order_by(shipment_log.c.id)
    ):
        entries.append(
            audit.entry(
                r.at,
                SERVICE,
                "state",
                f"shipment {r.action}",
                by=r.actor,
                why=r.detail,
                shipment_id=r.shipment_id,
            )
        )
    entries += await audit.consumed(conn, inbox, SERVICE, order_id)
    entries += await audit.produced(conn, outbox, SERVICE, order_id)
    return {"entries": entries}


def _value(lines_json: bytes, prices: dict[str, str] | None) -> Decimal | None:
    if prices is None:
        return None
    total = Decimal(0)
    for line in orjson.loads(lines_json):
        price = prices.get(line["sku"])
        if price is None:
            return None
        total += Decimal(price) * int(line["quantity"])
    return total


async def orders_page(conn: AsyncConnection, after: str, limit: int) -> dict[str, Any]:
    """Per order fulfillment has heard of: its status, its shipments' statuses, and the value
    shipped and still open (None when the reservation carried no prices)."""
    rows = list(
        await conn.execute(
            select(orders).where(orders.c.order_id > after).order_by(orders.c.order_id).limit(limit)
        )
    )
    found: dict[str, dict[str, Any]] = {}
    prices: dict[str, dict[str, str] | None] = {}
    for r in rows:
        prices[r.order_id] = orjson.loads(r.unit_prices) if r.unit_prices else None
        found[r.order_id] = {
            "order_id": r.order_id,
            "status": r.status,
            "currency": r.currency,
            "shipments": {},
            "shipped_value": "0",
            "open_value": "0",
            "priced": prices[r.order_id] is not None,
        }
    ids = list(found)
    if ids:
        shipped: dict[str, Decimal] = defaultdict(Decimal)
        still_open: dict[str, Decimal] = defaultdict(Decimal)
        for s in await conn.execute(
            select(shipments.c.order_id, shipments.c.status, shipments.c.lines).where(
                shipments.c.order_id.in_(ids)
            )
        ):
            counts = found[s.order_id]["shipments"]
            counts[s.status] = counts.get(s.status, 0) + 1
            value = _value(s.lines, prices[s.order_id])
            if value is None:
                found[s.order_id]["priced"] = False
            elif s.status in SHIPPED:
                shipped[s.order_id] += value
            elif s.status != "cancelled":
                still_open[s.order_id] += value
        for oid in ids:
            found[oid]["shipped_value"] = str(shipped.get(oid, Decimal(0)))
            found[oid]["open_value"] = str(still_open.get(oid, Decimal(0)))
    return {"orders": list(found.values()), "next": ids[-1] if len(ids) == limit else None}


async def facts(conn: AsyncConnection) -> dict[str, Any]:
    return {"outbox": await audit.outbox_backlog(conn, outbox)}


async def report(conn: AsyncConnection, since: float | None, until: float | None) -> dict[str, Any]:
    """SLA per priority for shipments of orders submitted in the window: a shipment breached
    if it shipped after its deadline, or has not shipped and its deadline has passed."""
    query = select(
        shipments.c.priority, shipments.c.status, shipments.c.sla_deadline, shipments.c.shipped_at
    )
    if since is not None:
        query = query.where(shipments.c.submitted_at >= since)
    if until is not None:
        query = query.where(shipments.c.submitted_at < until)
    now = time.time()
    total: Counter[str] = Counter()
    breached: Counter[str] = Counter()
    for r in await conn.execute(query):
        if r.status == "cancelled":
            continue
        total[r.priority] += 1
        late = r.shipped_at > r.sla_deadline if r.shipped_at is not None else now > r.sla_deadline
        breached[r.priority] += int(late)
    return {
        "sla": {
            p: {
                "shipments": total[p],
                "breached": breached[p],
                "breach_rate": breached[p] / total[p] if total[p] else None,
            }
            for p in sorted(total)
        }
    }


def register(rt: ServiceRuntime) -> None:
    """The audit commands over NATS: trace, audit_orders (paged), audit_facts, report."""
    audit.register_queries(
        rt.rpc,
        rt.db,
        trace=trace,
        orders_page=orders_page,
        facts=facts,
        extra={
            audit.REPORT: lambda conn, p: report(conn, *audit.report_window(p)),
        },
    )
