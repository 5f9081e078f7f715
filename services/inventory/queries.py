"""What inventory answers without changing anything: stock levels, the ledger, forecasts,
warehouses and the figures for /stats and the gauges."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.inventory import domain
from services.inventory.models import (
    backorders,
    ledger,
    reservations,
    sku_settings,
    stock,
    warehouses,
)
from services.inventory.movements import demand_by_day


async def stock_levels(conn: AsyncConnection, sku: str | None = None) -> list[dict[str, Any]]:
    query = select(stock).order_by(stock.c.sku, stock.c.warehouse)
    if sku is not None:
        query = query.where(stock.c.sku == sku)
    return [
        {
            "sku": r.sku,
            "warehouse": r.warehouse,
            "on_hand": r.on_hand,
            "reserved": r.reserved,
            "available": r.on_hand - r.reserved,
            "shipped": r.shipped,
            "returned": r.returned,
        }
        for r in await conn.execute(query)
    ]


async def ledger_entries(
    conn: AsyncConnection, sku: str, limit: int = 1000
) -> list[dict[str, Any]]:
    """The latest ``limit`` movements of a SKU, newest last."""
    result = await conn.execute(
        select(ledger).where(ledger.c.sku == sku).order_by(ledger.c.id.desc()).limit(limit)
    )
    entries = [
        {
            "id": r.id,
            "sku": r.sku,
            "warehouse": r.warehouse,
            "delta_on_hand": r.delta_on_hand,
            "delta_reserved": r.delta_reserved,
            "reason": r.reason,
            "ref": r.ref,
            "actor": r.actor,
            "at": datetime.fromtimestamp(r.at, UTC).isoformat(),
        }
        for r in result
    ]
    entries.reverse()
    return entries


async def forecasts(
    conn: AsyncConnection, policy: domain.Policy, sku: str | None = None
) -> list[dict[str, Any]]:
    """Per SKU: available units, reorder point, forecast daily demand (exponential smoothing of
    its own daily demand), days of cover and the suggested reorder quantity."""
    now = time.time()
    available_q = select(
        stock.c.sku, func.sum(stock.c.on_hand - stock.c.reserved).label("available")
    ).group_by(stock.c.sku)
    settings_q = select(sku_settings)
    if sku is not None:
        available_q = available_q.where(stock.c.sku == sku)
        settings_q = settings_q.where(sku_settings.c.sku == sku)
    available = {r.sku: int(r.available) for r in await conn.execute(available_q)}
    settings = {r.sku: r for r in await conn.execute(settings_q)}
    demand = await demand_by_day(
        conn, None if sku is None else [sku], now, policy.forecast_window_days
    )
    skus = sorted(set(available) | set(settings) | ({sku} if sku else set()))
    out: list[dict[str, Any]] = []
    for s in skus:
        row = settings.get(s)
        lead = (row.lead_time_days if row else None) or policy.lead_time_days
        cover = (row.target_cover_days if row else None) or policy.target_cover_days
        reorder_point = row.reorder_point if row else None
        series = domain.daily_demand_series(demand.get(s, {}), now, policy.forecast_window_days)
        outlook = domain.forecast(
            available.get(s, 0),
            series,
            alpha=policy.forecast_alpha,
            lead_time_days=lead,
            target_cover_days=cover,
        )
        out.append(
            {
                "sku": s,
                "available": available.get(s, 0),
                "reorder_point": reorder_point,
                "below_reorder_point": domain.below_reorder_point(
                    available.get(s, 0), reorder_point
                ),
                "daily_demand": round(outlook.daily_demand, 3),
                "days_of_cover": None
                if outlook.days_of_cover is None
                else round(outlook.days_of_cover, 2),
                "suggested_quantity": outlook.suggested_quantity,
                "lead_time_days": lead,
                "target_cover_days": cover,
                "history_days": len(series),
            }
        )
    return out


async def warehouse_list(conn: AsyncConnection) -> list[dict[str, Any]]:
    rows = await conn.execute(select(warehouses).order_by(warehouses.c.rank, warehouses.c.code))
    return [{"code": r.code, "rank": r.rank, "country": r.country} for r in rows]


async def gauge_values(conn: AsyncConnection) -> tuple[int, int]:
    """(backorders waiting, SKUs below their reorder point)."""
    waiting = (
        await conn.execute(
            select(func.count()).select_from(backorders).where(backorders.c.status == "waiting")
        )
    ).scalar_one()
    below = (
        await conn.execute(
            select(func.count())
            .select_from(sku_settings)
            .where(sku_settings.c.below_reorder.is_(True))
        )
    ).scalar_one()
    return int(waiting), int(below)


async def inventory_stats(conn: AsyncConnection) -> dict[str, Any]:
    by_status = {
        status: n
        for status, n in await conn.execute(
            select(reservations.c.status, func.count()).group_by(reservations.c.status)
        )
    }
    waiting, below = await gauge_values(conn)
    on_hand, shipped, returned = (
        await conn.execute(
            select(
                func.coalesce(func.sum(stock.c.on_hand), 0),
                func.coalesce(func.sum(stock.c.shipped), 0),
                func.coalesce(func.sum(stock.c.returned), 0),
            )
        )
    ).one()
    return {
        "reservations": by_status,
        "backorders_waiting": waiting,
        "skus_below_reorder_point": below,
        "on_hand": int(on_hand),
        "shipped": int(shipped),
        "returned": int(returned),
    }
