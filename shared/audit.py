"""Audit plumbing every service and the CLI use the same way: the shape of a trace entry, what
the inbox and outbox know of an order, the outbox backlog, and the scatter-gather that asks all
four services at once (``orderflow trace``, intake's ``GET /orders/{id}/trace``).

Each service answers for itself over request/reply (``orderflow.rpc.<svc>.trace``); nobody reads
another's tables. A service that does not answer within the timeout is named, not waited for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from shared import rpc, subjects
from shared.db import Database

TRACE = "trace"
ORDERS = "audit_orders"
FACTS = "audit_facts"
STOCK = "audit_stock"
REPORT = "report"
PAGE_MAX = 5000
EVENT_STREAMS = {
    subjects.INTAKE: "ORDERFLOW_INTAKE",
    subjects.INVENTORY: "ORDERFLOW_INVENTORY",
    subjects.FULFILLMENT: "ORDERFLOW_FULFILLMENT",
    subjects.NOTIFY: "ORDERFLOW_NOTIFY",
}


def entry(
    at: float | None,
    service: str,
    kind: str,
    what: str,
    *,
    by: str | None = None,
    why: str | None = None,
    **refs: Any,
) -> dict[str, Any]:
    """One line of a trace. ``kind`` is state (a change this service made), consumed or
    produced (an event); ``refs`` name what it touched (event id, subject, stream sequence...)."""
    found: dict[str, Any] = {"at": at, "service": service, "kind": kind, "what": what}
    if by:
        found["by"] = by
    if why:
        found["why"] = why
    found.update({k: v for k, v in refs.items() if v is not None})
    return found


def event_type_of(subject: str | None) -> str:
    """``orderflow.<producer>.<type>.<key>`` -> type (a submission's subject -> "submission")."""
    parts = (subject or "").split(".")
    if len(parts) == 4 and parts[1] != "submit":
        return parts[2]
    return "submission" if len(parts) > 1 and parts[1] == "submit" else (subject or "?")


async def consumed(
    conn: AsyncConnection, inbox: Table, service: str, order_id: str
) -> list[dict[str, Any]]:
    """The events about an order this service's consumers applied, with their stream position."""
    rows = await conn.execute(
        select(inbox).where(inbox.c.order_id == order_id).order_by(inbox.c.processed_at)
    )
    return [
        entry(
            r.processed_at,
            service,
            "consumed",
            event_type_of(r.subject),
            consumer=r.consumer,
            event_id=r.message_id,
            subject=r.subject,
            stream_seq=r.stream_seq,
        )
        for r in rows
    ]


async def produced(
    conn: AsyncConnection, outbox: Table, service: str, order_id: str
) -> list[dict[str, Any]]:
    """The events about an order this service wrote to its outbox (published or not yet)."""
    rows = await conn.execute(
        select(outbox.c.event_id, outbox.c.subject, outbox.c.created_at, outbox.c.published_at)
        .where(outbox.c.order_id == order_id)
        .order_by(outbox.c.created_at)
    )
    return [
        entry(
            r.created_at,
            service,
            "produced",
            event_type_of(r.subject),
            event_id=r.event_id,
            subject=r.subject,
            published=r.published_at is not None,
        )
        for r in rows
    ]


async def outbox_backlog(conn: AsyncConnection, outbox: Table) -> dict[str, Any]:
    """Rows not yet published: how many, and the age of the oldest (seconds)."""
    pending, oldest = (
        await conn.execute(
            select(func.count(), func.min(outbox.c.created_at)).where(
                outbox.c.published_at.is_(None)
            )
        )
    ).one()
    return {
        "pending": int(pending or 0),
        "oldest_age_s": None if oldest is None else round(time.time() - float(oldest), 3),
    }


def page_request(payload: dict[str, Any]) -> tuple[str, int]:
    """The keyset cursor (``after``: the last order id of the previous page) and page size."""
    after = payload.get("after") or ""
    limit = payload.get("limit", 1000)
    if not isinstance(after, str):
        raise rpc.CommandRefused(
            "after must be an order id", [{"field": "after", "reason": "a string"}]
        )
    if not isinstance(limit, int) or not 0 < limit <= PAGE_MAX:
        raise rpc.CommandRefused(
            f"limit must be 1..{PAGE_MAX}", [{"field": "limit", "reason": f"1..{PAGE_MAX}"}]
        )
    return after, limit


def epoch_of(value: Any, field: str) -> float | None:
    """An optional time bound: epoch seconds or RFC 3339."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    raise rpc.CommandRefused(
        f"{field} is not a time", [{"field": field, "reason": "RFC 3339 or epoch seconds"}]
    )


def iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


# --- answering ---------------------------------------------------------------------------------

# A read-only audit command: the service's query, given one reading connection and the request.
Query = Callable[[AsyncConnection, dict[str, Any]], Awaitable[dict[str, Any]]]


def register_queries(
    server: rpc.RpcServer,
    db: Database,
    *,
    trace: Callable[[AsyncConnection, str], Awaitable[dict[str, Any]]],
    orders_page: Callable[[AsyncConnection, str, int], Awaitable[dict[str, Any]]],
    facts: Callable[[AsyncConnection], Awaitable[dict[str, Any]]],
    extra: Mapping[str, Query] | None = None,
) -> None:
    """Register a service's audit commands: the three every service answers (an order's
    trace, its orders page by page, its facts), with their requests read here, and its own
    (``extra``). Each is answered from a reading connection."""
    queries: dict[str, Query] = {
        TRACE: lambda conn, p: trace(conn, str(p.get("order_id", ""))),
        ORDERS: lambda conn, p: orders_page(conn, *page_request(p)),
        FACTS: lambda conn, _p: facts(conn),
        **(extra or {}),
    }
    for command, query in queries.items():
        server.register(command, _reading(db, query))


def _reading(db: Database, query: Query) -> rpc.Command:
    async def run(payload: dict[str, Any]) -> dict[str, Any]:
        async with db.reading() as conn:
            return await query(conn, payload)

    return run


def report_window(payload: dict[str, Any]) -> tuple[float | None, float | None]:
    """A report request's ``since`` and ``until`` (epoch seconds, or None for open)."""
    return epoch_of(payload.get("since"), "since"), epoch_of(payload.get("until"), "until")


# --- asking every service ---------------------------------------------------------------------


async def ask_all(
    nc: NATS, command: str, payload: dict[str, Any], timeout: float, token: str | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Send one command to the four services at once. Returns (answers, missing) where missing
    says, per service that gave no answer, why (timeout, no responders, refused...)."""

    async def one(service: str) -> Any:
        return await rpc.call(nc, service, command, payload, timeout=timeout, token=token)

    results = await asyncio.gather(*(one(s) for s in subjects.SERVICES), return_exceptions=True)
    answers: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for service, result in zip(subjects.SERVICES, results, strict=True):
        if isinstance(result, rpc.CommandRefused):
            missing[service] = f"refused: {result.reason}"
        elif isinstance(result, BaseException):
            missing[service] = f"no answer within {timeout:g}s ({result.__class__.__name__})"
        else:
            answers[service] = result
    return answers, missing


async def stream_positions(js: JetStreamContext, order_id: str) -> dict[str, dict[str, Any]]:
    """Every event about an order that the event streams hold: event id -> stream, sequence,
    subject, time. Read by subject (``orderflow.<producer>.*.<order id>``), so it costs a few
    requests per order, not a scan, and it answers even when the producer is down."""

    async def of_stream(producer: str, stream: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        subject = f"{subjects.PREFIX}.{producer}.*.{order_id}"
        seq = 1
        while True:
            try:
                msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
            except NotFoundError:
                return found
            if msg.seq is None:
                return found
            try:
                env = orjson.loads(msg.data or b"{}")
                event_id = str(env.get("event_id"))
            except orjson.JSONDecodeError:
                event_id = f"{stream}:{msg.seq}"
            found[event_id] = {
                "stream": stream,
                "stream_seq": msg.seq,
                "subject": msg.subject,
                "occurred_at": env.get("occurred_at") if isinstance(env, dict) else None,
            }
            seq = msg.seq + 1

    parts = await asyncio.gather(
        *(of_stream(p, s) for p, s in EVENT_STREAMS.items()), return_exceptions=True
    )
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        if isinstance(part, dict):
            merged.update(part)
    return merged


async def gather_trace(
    nc: NATS, order_id: str, timeout: float = 2.0, token: str | None = None
) -> dict[str, Any]:
    """Ask every service what it knows of an order, and merge the answers into one timeline
    sorted by time. Produced events get their stream sequence from the streams themselves."""
    if not order_id or any(c in order_id for c in ".*> \t\r\n"):
        # It ends subject filters: a wildcard would read other orders' events.
        raise ValueError(f"not an order id: {order_id!r}")
    (answers, missing), positions = await asyncio.gather(
        ask_all(nc, TRACE, {"order_id": order_id}, timeout, token),
        stream_positions(nc.jetstream(), order_id),
    )
    entries: list[dict[str, Any]] = []
    for service, answer in answers.items():
        for found in answer.get("entries", []) if isinstance(answer, dict) else []:
            found.setdefault("service", service)
            if found.get("kind") == "produced" and found.get("event_id") in positions:
                position = positions[found["event_id"]]
                found["stream"] = position["stream"]
                found["stream_seq"] = position["stream_seq"]
                # The stream is the truth: the outbox row is marked a transaction later.
                found["published"] = True
            entries.append(found)
    entries.sort(key=lambda e: (e.get("at") is None, e.get("at") or 0.0))
    for found in entries:
        found["time"] = iso(found.get("at"))
    known = {s: bool(a.get("entries")) for s, a in answers.items() if isinstance(a, dict)}
    return {
        "order_id": order_id,
        "answered": sorted(answers),
        "missing": missing,
        "knows_order": known,
        "entries": entries,
        "in_streams": len(positions),
    }
