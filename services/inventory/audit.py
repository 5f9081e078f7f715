"""What inventory knows for audits, without changing anything: an order's trace, its
reservations a page of orders at a time, stock against the ledger per SKU and warehouse, and the
report's top SKUs and stock cover."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, select, union
from sqlalchemy.ext.asyncio import AsyncConnection

from services.inventory import domain, queries
from services.inventory.models import (
    backorder_skus,
    backorders,
    cancellations,
    inbox,
    ledger,
    outbox,
    reservations,
    stock,
)
from shared import audit
from shared.runtime import ServiceRuntime

SERVICE = "inventory"
# Ledger reasons that are customers' demand (a backorder's later reservation is counted once).
DEMAND = ("reserved", "backorder reserved")


async def trace(conn: AsyncConnection, order_id: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for r in await conn.execute(select(reservations).where(reservations.c.order_id == order_id)):
        entries.append(
            audit.entry(
                r.created_at,
                SERVICE,
                "state",
                f"reserved {r.quantity} x {r.sku} at {r.warehouse}",
                by="inventory",
                why=f"reservation now {r.status}"
                + (f", {r.returned} returned" if r.returned else ""),
            )
        )
    backorder = (
        await conn.execute(select(backorders).where(backorders.c.order_id == order_id))
    ).first()
    if backorder is not None:
        skus = [
            f"{q} x {s}"
            for s, q in await conn.execute(
                select(backorder_skus.c.sku, backorder_skus.c.quantity).where(
                    backorder_skus.c.order_id == order_id
                )
            )
        ]
        entries.append(
            audit.entry(
                backorder.created_at,
                SERVICE,
                "state",
                "backordered",
                by="inventory",
                why=f"waiting for {', '.join(skus) or 'stock'}; now {backorder.status}, "
                f"deadline {audit.iso(backorder.deadline)}",
            )
        )
    cancelled = (
        await conn.execute(select(cancellations).where(cancellations.c.order_id == order_id))
    ).first()
    if cancelled is not None:
        entries.append(
            audit.entry(
                cancelled.at,
                SERVICE,
                "state",
                "released (order cancelled)",
                by=cancelled.actor,
                why=cancelled.reason,
            )
        )
    entries += await audit.consumed(conn, inbox, SERVICE, order_id)
    entries += await audit.produced(conn, outbox, SERVICE, order_id)
    return {"entries": entries}


async def orders_page(conn: AsyncConnection, after: str, limit: int) -> dict[str, Any]:
    """Per order inventory has heard of: units by reservation status, backorder status, and
    whether it recorded the order's cancellation."""
    ids_q = union(
        select(reservations.c.order_id.label("order_id")).where(reservations.c.order_id > after),
        select(backorders.c.order_id).where(backorders.c.order_id > after),
        select(cancellations.c.order_id).where(cancellations.c.order_id > after),
    ).subquery()
    ids = [
        r[0]
        for r in await conn.execute(
            select(ids_q.c.order_id).order_by(ids_q.c.order_id).limit(limit)
        )
    ]
    found: dict[str, dict[str, Any]] = {
        i: {"order_id": i, "units": {}, "backorder": None, "cancelled": False} for i in ids
    }
    if ids:
        for oid, status, units in await conn.execute(
            select(
                reservations.c.order_id, reservations.c.status, func.sum(reservations.c.quantity)
            )
            .where(reservations.c.order_id.in_(ids))
            .group_by(reservations.c.order_id, reservations.c.status)
        ):
            found[oid]["units"][status] = int(units)
        for oid, status in await conn.execute(
            select(backorders.c.order_id, backorders.c.status).where(backorders.c.order_id.in_(ids))
        ):
            found[oid]["backorder"] = status
        for (oid,) in await conn.execute(
            select(cancellations.c.order_id).where(cancellations.c.order_id.in_(ids))
        ):
            found[oid]["cancelled"] = True
    return {"orders": list(found.values()), "next": ids[-1] if len(ids) == limit else None}


async def stock_page(conn: AsyncConnection, after: str, limit: int) -> dict[str, Any]:
    """Per SKU and warehouse, for up to ``limit`` SKUs after the cursor: the levels, the
    ledger's sums and the open reservations. A page of SKUs at a time, each query by index."""
    skus = [
        r[0]
        for r in await conn.execute(
            select(stock.c.sku)
            .where(stock.c.sku > after)
            .distinct()
            .order_by(stock.c.sku)
            .limit(limit)
        )
    ]
    if not skus:
        return {"stock": [], "next": None}
    ledger_sums = {
        (sku, wh): (int(on_hand), int(reserved))
        for sku, wh, on_hand, reserved in await conn.execute(
            select(
                ledger.c.sku,
                ledger.c.warehouse,
                func.sum(ledger.c.delta_on_hand),
                func.sum(ledger.c.delta_reserved),
            )
            .where(ledger.c.sku.in_(skus))
            .group_by(ledger.c.sku, ledger.c.warehouse)
        )
    }
    open_reserved = {
        (sku, wh): int(units)
        for sku, wh, units in await conn.execute(
            select(reservations.c.sku, reservations.c.warehouse, func.sum(reservations.c.quantity))
            .where(reservations.c.status == "reserved")
            .where(reservations.c.sku.in_(skus))
            .group_by(reservations.c.sku, reservations.c.warehouse)
        )
    }
    out = []
    rows = await conn.execute(
        select(stock).where(stock.c.sku.in_(skus)).order_by(stock.c.sku, stock.c.warehouse)
    )
    for r in rows:
        key = (r.sku, r.warehouse)
        ledger_on_hand, ledger_reserved = ledger_sums.pop(key, (0, 0))
        out.append(
            {
                "sku": r.sku,
                "warehouse": r.warehouse,
                "on_hand": r.on_hand,
                "reserved": r.reserved,
                "available": r.on_hand - r.reserved,
                "ledger_on_hand": ledger_on_hand,
                "ledger_reserved": ledger_reserved,
                "open_reservations": open_reserved.pop(key, 0),
            }
        )
    # Movements of a SKU in a warehouse that has no stock row at all.
    for (sku, wh), (ledger_on_hand, ledger_reserved) in sorted(ledger_sums.items()):
        out.append(
            {
                "sku": sku,
                "warehouse": wh,
                "on_hand": None,
                "reserved": None,
                "available": None,
                "ledger_on_hand": ledger_on_hand,
                "ledger_reserved": ledger_reserved,
                "open_reservations": open_reserved.pop((sku, wh), 0),
            }
        )
    return {"stock": out, "next": skus[-1] if len(skus) == limit else None}


async def facts(conn: AsyncConnection) -> dict[str, Any]:
    return {"outbox": await audit.outbox_backlog(conn, outbox)}


async def report(
    conn: AsyncConnection, policy: domain.Policy, since: float | None, until: float | None
) -> dict[str, Any]:
    """Top SKUs by units demanded in the window, and stock cover with reorder suggestions."""
    query = (
        select(ledger.c.sku, func.sum(ledger.c.delta_reserved))
        .where(ledger.c.reason.in_(DEMAND))
        .group_by(ledger.c.sku)
    )
    if since is not None:
        query = query.where(ledger.c.at >= since)
    if until is not None:
        query = query.where(ledger.c.at < until)
    units: dict[str, int] = defaultdict(int)
    for sku, n in await conn.execute(query):
        units[sku] += int(n or 0)
    top = sorted(units.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return {
        "top_skus": [{"sku": s, "units": n} for s, n in top],
        "stock_cover": await queries.forecasts(conn, policy),
    }


def register(rt: ServiceRuntime, policy: domain.Policy) -> None:
    """The audit commands over NATS: trace, audit_orders (paged), audit_facts, audit_stock
    (paged), report."""
    audit.register_queries(
        rt.rpc,
        rt.db,
        trace=trace,
        orders_page=orders_page,
        facts=facts,
        extra={
            audit.STOCK: lambda conn, p: stock_page(conn, *audit.page_request(p)),
            audit.REPORT: lambda conn, p: report(conn, policy, *audit.report_window(p)),
        },
    )
