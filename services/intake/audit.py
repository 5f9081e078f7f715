"""What intake knows for audits, without changing anything: an order's trace, its status view a
page at a time (reconcile, replay), the outbox backlog, and the figures of the report."""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.intake import domain
from services.intake.models import inbox, orders, outbox, rejections
from shared import audit
from shared.runtime import ServiceRuntime

SERVICE = "intake"
# Stamps of the status view that come from an event's own time: a replay must find them equal.
EVENT_STAMPS = (
    "backordered_at",
    "reserved_at",
    "queued_at",
    "picked_at",
    "packed_at",
    "shipped_at",
    "delivered_at",
    "cancel_refused_at",
    "cancelled_at",
)
# Lead time per stage: (stage, from, to).
STAGES = (
    ("accept", "submitted_at", "accepted_at"),
    ("reserve", "accepted_at", "reserved_at"),
    ("queue", "reserved_at", "queued_at"),
    ("pick", "queued_at", "picked_at"),
    ("pack", "picked_at", "packed_at"),
    ("ship", "packed_at", "shipped_at"),
    ("deliver", "shipped_at", "delivered_at"),
    ("submit to ship", "submitted_at", "shipped_at"),
)
FINAL = {"shipped": "shipped", "delivered": "shipped", "cancelled": "cancelled"}


async def trace(conn: AsyncConnection, order_id: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    row = (await conn.execute(select(orders).where(orders.c.order_id == order_id))).first()
    if row is not None:
        m = dict(row._mapping)
        for step in domain.timeline(m):
            what = step["what"]
            by = m["cancel_actor"] if what == "cancel requested" else step["by"]
            if what not in ("submitted", "accepted", "cancel requested"):
                what = f"status view: {what}"
            entries.append(
                audit.entry(step["at"], SERVICE, "state", what, by=by, why=step.get("detail"))
            )
    else:
        rejected = (
            await conn.execute(select(rejections).where(rejections.c.order_id == order_id))
        ).first()
        if rejected is not None:
            entries.append(
                audit.entry(
                    rejected.submitted_at,
                    SERVICE,
                    "state",
                    "rejected",
                    by="intake",
                    why=rejected.errors.decode(errors="replace")[:500],
                )
            )
    entries += await audit.consumed(conn, inbox, SERVICE, order_id)
    entries += await audit.produced(conn, outbox, SERVICE, order_id)
    return {"entries": entries}


async def orders_page(conn: AsyncConnection, after: str, limit: int) -> dict[str, Any]:
    """Accepted orders in order-id order, after the cursor: status, money and event stamps."""
    cols = [
        orders.c.order_id,
        orders.c.status,
        orders.c.channel,
        orders.c.priority,
        orders.c.currency,
        orders.c.total,
        orders.c.submitted_at,
        *(orders.c[c] for c in EVENT_STAMPS),
    ]
    rows = await conn.execute(
        select(*cols).where(orders.c.order_id > after).order_by(orders.c.order_id).limit(limit)
    )
    # Plain str keys: the column names are str subclasses, which orjson refuses as keys.
    found = [{str(k): v for k, v in r._mapping.items()} for r in rows]
    return {"orders": found, "next": found[-1]["order_id"] if len(found) == limit else None}


async def facts(conn: AsyncConnection) -> dict[str, Any]:
    return {"outbox": await audit.outbox_backlog(conn, outbox)}


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a reported lead time really happened)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def report(conn: AsyncConnection, since: float | None, until: float | None) -> dict[str, Any]:
    """Orders by channel and outcome, acceptance, lead time per stage, value per currency."""
    window = []
    if since is not None:
        window.append(orders.c.submitted_at >= since)
    if until is not None:
        window.append(orders.c.submitted_at < until)
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    by_priority: Counter[str] = Counter()
    value: dict[str, Decimal] = defaultdict(Decimal)
    durations: dict[str, list[float]] = defaultdict(list)
    cols = [orders.c.channel, orders.c.status, orders.c.priority, orders.c.currency, orders.c.total]
    stamps = sorted({c for _, a, b in STAGES for c in (a, b)})
    result = await conn.execute(select(*cols, *(orders.c[c] for c in stamps)).where(*window))
    for r in result:
        m = r._mapping
        outcomes[m["channel"]][FINAL.get(m["status"], "in progress")] += 1
        outcomes[m["channel"]]["accepted"] += 1
        by_priority[m["priority"]] += 1
        value[m["currency"]] += Decimal(m["total"])
        for stage, start, end in STAGES:
            if m[start] is not None and m[end] is not None and m[end] >= m[start]:
                durations[stage].append(m[end] - m[start])
    rej_window = []
    if since is not None:
        rej_window.append(rejections.c.submitted_at >= since)
    if until is not None:
        rej_window.append(rejections.c.submitted_at < until)
    for channel, n in await conn.execute(
        select(rejections.c.channel, func.count()).where(*rej_window).group_by(rejections.c.channel)
    ):
        outcomes[channel]["rejected"] += int(n)
    lead = {
        stage: {
            "n": len(durations[stage]),
            "p50_s": percentile(durations[stage], 50),
            "p95_s": percentile(durations[stage], 95),
        }
        for stage, _, _ in STAGES
    }
    return {
        "generated_at": time.time(),
        "by_channel": {c: dict(n) for c, n in sorted(outcomes.items())},
        "by_priority": dict(by_priority),
        "lead_time": lead,
        "accepted_value": {c: str(v) for c, v in value.items()},
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
