"""What notify knows for audits, without changing anything: an order's trace (who was told
what, through which sink, and whether it arrived), and which orders it knows, a page at a time."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.notify.models import deliveries, inbox, notifications, outbox, recipients
from shared import audit
from shared.runtime import ServiceRuntime

SERVICE = "notify"


async def trace(conn: AsyncConnection, order_id: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for n in await conn.execute(
        select(notifications)
        .where(notifications.c.order_id == order_id)
        .order_by(notifications.c.created_at)
    ):
        entries.append(
            audit.entry(
                n.created_at,
                SERVICE,
                "state",
                f"notified {n.template}",
                by="notify",
                why=f"to the {n.audience} ({n.locale}): {n.subject}",
                to=n.recipient,
                caused_by=n.source_event_id,
            )
        )
        for d in await conn.execute(
            select(deliveries).where(deliveries.c.notification_id == n.notification_id)
        ):
            at = d.sent_at or d.failed_at
            if at is None:
                continue
            entries.append(
                audit.entry(
                    at,
                    SERVICE,
                    "state",
                    f"delivery via {d.sink}: {d.status}",
                    by=d.claimed_by or "notify",
                    why=d.last_error,
                    attempts=d.attempts,
                )
            )
    entries += await audit.consumed(conn, inbox, SERVICE, order_id)
    entries += await audit.produced(conn, outbox, SERVICE, order_id)
    return {"entries": entries}


async def orders_page(conn: AsyncConnection, after: str, limit: int) -> dict[str, Any]:
    """Per order notify has a recipient for: the templates it sent about it."""
    ids = [
        r[0]
        for r in await conn.execute(
            select(recipients.c.order_id)
            .where(recipients.c.order_id > after)
            .order_by(recipients.c.order_id)
            .limit(limit)
        )
    ]
    found: dict[str, dict[str, Any]] = {i: {"order_id": i, "templates": []} for i in ids}
    if ids:
        for oid, template in await conn.execute(
            select(notifications.c.order_id, notifications.c.template)
            .where(notifications.c.order_id.in_(ids))
            .distinct()
        ):
            found[oid]["templates"].append(template)
    return {"orders": list(found.values()), "next": ids[-1] if len(ids) == limit else None}


async def facts(conn: AsyncConnection) -> dict[str, Any]:
    failed = (
        await conn.execute(
            select(func.count()).select_from(deliveries).where(deliveries.c.status == "failed")
        )
    ).scalar_one()
    return {"outbox": await audit.outbox_backlog(conn, outbox), "failed_deliveries": int(failed)}


def register(rt: ServiceRuntime) -> None:
    """The audit commands over NATS: trace, audit_orders (paged), audit_facts."""
    audit.register_queries(rt.rpc, rt.db, trace=trace, orders_page=orders_page, facts=facts)
