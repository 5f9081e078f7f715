"""``orderflow replay intake``: rebuild intake's order status view from the JetStream streams into
a fresh database, with intake's own handlers, and compare it with the live view.

The live view is read first (over NATS, a page at a time); the streams are then read to their
end, so the rebuild has seen at least every event the live view could have applied. An order
whose latest event is younger than ``--settle`` seconds at that moment is reported as in flight,
not as a difference. Streams keep 30 days (``max_age``): older orders cannot be rebuilt.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from sqlalchemy import select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from orderflow import endpoints
from orderflow.commands import EXIT_REFUSED, add_json_flag, print_result, with_nats
from services.intake import audit as intake_audit
from services.intake import domain, handlers
from services.intake.models import metadata, orders
from shared import audit, rpc, streams, subjects
from shared.consumer import UnitOfWork
from shared.contracts.envelope import Envelope, decode_envelope
from shared.contracts.intake import OrderAccepted, OrderCancelRequested
from shared.db import Database

# What intake's status view is built from: (stream, event types).
SOURCES = (
    (streams.INTAKE.name, subjects.INTAKE, ("order_accepted", "order_cancel_requested")),
    (streams.INVENTORY.name, subjects.INVENTORY, ("stock_backordered", "stock_reserved")),
    (
        streams.FULFILLMENT.name,
        subjects.FULFILLMENT,
        (
            *(t for t in handlers.PROGRESS if t.startswith("shipment_")),
            "order_cancelled",
            "cancellation_refused",
        ),
    ),
)
BATCH = 1000
COMPARED = ("status", "channel", "priority", "currency", *intake_audit.EVENT_STAMPS)


def register(sub: Any) -> None:
    replay = sub.add_parser(
        "replay", help="rebuild a service's read model from the streams and compare with live"
    )
    replay.add_argument("service", help="intake (its order status view)")
    replay.add_argument(
        "--into", type=Path, default=None, help="SQLite file for the rebuilt view (default: temp)"
    )
    replay.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="orders with an event younger than this many seconds count as in flight",
    )
    replay.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    add_json_flag(replay)
    replay.set_defaults(func=cmd_replay)


@dataclass
class Replayed:
    events: int = 0
    by_type: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_event_at: dict[str, float] = field(default_factory=dict)


def cmd_replay(args: argparse.Namespace) -> int:
    if args.service != subjects.INTAKE:
        print(
            f"refused: replay rebuilds intake's order status view; {args.service!r} has no "
            "read model to rebuild yet",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    result = with_nats(lambda nc: replay_intake(nc, args.into, args.settle, args.timeout))
    print_result(args.json, result, render)
    return EXIT_REFUSED if result["differences"] else 0


async def replay_intake(
    nc: NATS, into: Path | None = None, settle_s: float = 5.0, timeout: float = 10.0
) -> dict[str, Any]:
    live = await live_view(nc, timeout)
    read_at = time.time()
    if into is None:
        into = Path(tempfile.mkdtemp(prefix="orderflow-replay-")) / "intake-replayed.db"
    into.unlink(missing_ok=True)
    db = Database(f"sqlite+aiosqlite:///{into.resolve()}", metadata)
    replayed = Replayed()
    try:
        await db.create_schema()
        await read_streams(nc, lambda batch: rebuild(db, batch, replayed))
        async with db.reading() as conn:
            rebuilt = {
                r.order_id: {str(k): v for k, v in r._mapping.items()}
                for r in await conn.execute(select(orders))
            }
    finally:
        await db.close()
    differences, in_flight = compare(live, rebuilt, replayed, read_at - settle_s)
    return {
        "service": subjects.INTAKE,
        "rebuilt_into": str(into),
        "events": replayed.events,
        "events_by_type": dict(replayed.by_type),
        "live_orders": len(live),
        "rebuilt_orders": len(rebuilt),
        "in_flight": in_flight,
        "differences": differences,
    }


async def live_view(nc: NATS, timeout: float) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    after = ""
    while True:
        page = await rpc.call(
            nc,
            subjects.INTAKE,
            audit.ORDERS,
            {"after": after, "limit": 1000},
            timeout=timeout,
            token=endpoints.operator_token(),
        )
        found.update({o["order_id"]: o for o in page["orders"]})
        if not page.get("next"):
            return found
        after = page["next"]


async def read_streams(nc: NATS, apply: Callable[[list[Envelope]], Awaitable[None]]) -> None:
    """Every event the view is built from, stream after stream (INTAKE first: the orders) in
    stream order, read to the end and handed to ``apply`` a batch at a time (memory stays
    bounded by the batch, not the history)."""
    js = nc.jetstream()
    for stream, producer, types in SOURCES:
        wanted = set(types)
        try:
            await js.stream_info(stream)
        except NotFoundError:
            continue
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            filter_subjects=[subjects.events_of(producer, t) for t in types],
            inactive_threshold=30.0,
        )
        psub = await js.pull_subscribe("", stream=stream, config=config)
        try:
            remaining = (await psub.consumer_info()).num_pending or 0
            while remaining > 0:
                msgs = await psub.fetch(batch=min(BATCH, remaining), timeout=10)
                batch = []
                for msg in msgs:
                    remaining = msg.metadata.num_pending
                    env = decode_envelope(msg.data)
                    if env.type in wanted:
                        batch.append(env)
                await apply(batch)
        finally:
            await psub.unsubscribe()


async def rebuild(db: Database, batch: list[Envelope], replayed: Replayed) -> None:
    """Apply one batch with intake's own status-view handlers, in one transaction. Orders come
    first (their stream is read first, and within a batch acceptances before the rest): a
    progress event only updates an order row that exists."""
    by_type: dict[str, list[Envelope]] = defaultdict(list)
    for env in batch:
        by_type[env.type].append(env)
        replayed.events += 1
        replayed.by_type[env.type] += 1
        at = _epoch(env.occurred_at)
        replayed.last_event_at[env.key] = max(replayed.last_event_at.get(env.key, 0.0), at)
    async with db.transaction() as conn:
        uow = UnitOfWork(conn)
        rows = [_order_row(e) for e in by_type.pop("order_accepted", [])]
        if rows:
            await conn.execute(sqlite_insert(orders).on_conflict_do_nothing(), rows)
        for env in by_type.pop("order_cancel_requested", []):
            data = env.data
            assert isinstance(data, OrderCancelRequested)
            await conn.execute(
                orders.update()
                .where(orders.c.order_id == data.order_id)
                .where(orders.c.cancel_requested_at.is_(None))
                .values(
                    cancel_requested_at=_epoch(env.occurred_at),
                    cancel_actor=data.actor[:100],
                    cancel_reason=data.reason[:500],
                )
            )
        for kind in handlers.PROGRESS:
            if by_type.get(kind):
                await handlers.record_progress(uow, by_type.pop(kind))
        if by_type.get("order_cancelled"):
            await handlers.record_cancelled(uow, by_type.pop("order_cancelled"))
        if by_type.get("cancellation_refused"):
            await handlers.record_cancel_refused(uow, by_type.pop("cancellation_refused"))
        assert not uow.emitted, "a status-view handler emitted an event during a replay"


def _order_row(env: Envelope) -> dict[str, Any]:
    data = env.data
    assert isinstance(data, OrderAccepted)
    at = _epoch(env.occurred_at)
    return {
        "order_id": data.order_id,
        "channel": data.channel,
        "external_id": data.external_id,
        "status": "accepted",
        "status_rank": domain.STATUS_RANK["accepted"],
        "priority": data.priority,
        "requested_priority": data.requested_priority,
        "priority_rule": data.priority_rule,
        "owner": data.owner,
        "customer_tier": data.customer_tier,
        "currency": data.currency,
        "total": str(data.total),
        "order_doc": data.model_dump_json().encode(),
        "suspected_duplicate_of": orjson.dumps(data.suspected_duplicate_of).decode()
        if data.suspected_duplicate_of
        else None,
        "submitted_at": data.submitted_at.timestamp(),
        "accepted_at": at,
        "updated_at": at,
    }


def _epoch(occurred_at: str) -> float:
    return datetime.fromisoformat(occurred_at).timestamp()


def compare(
    live: dict[str, dict[str, Any]],
    rebuilt: dict[str, dict[str, Any]],
    replayed: Replayed,
    settled_before: float,
) -> tuple[list[dict[str, Any]], list[str]]:
    differences: list[dict[str, Any]] = []
    in_flight: list[str] = []
    for order_id in sorted(set(live) | set(rebuilt)):
        mine, theirs = rebuilt.get(order_id), live.get(order_id)
        if mine is not None and theirs is not None:
            fields = {
                name: {"live": theirs.get(name), "replayed": mine.get(name)}
                for name in (*COMPARED, "total", "submitted_at")
                if not _same(theirs.get(name), mine.get(name))
            }
        elif mine is None:
            fields = {"order": {"live": "present", "replayed": "absent (no order_accepted)"}}
        else:
            fields = {"order": {"live": "absent", "replayed": "present"}}
        if not fields:
            continue
        if replayed.last_event_at.get(order_id, 0.0) > settled_before:
            in_flight.append(order_id)
            continue
        differences.append({"order_id": order_id, "fields": fields})
    return differences, in_flight


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) < 1e-3
    if isinstance(a, str) and isinstance(b, str):
        try:
            return Decimal(a) == Decimal(b)
        except ArithmeticError:
            return a == b
    return bool(a == b)


def render(result: dict[str, Any]) -> str:
    lines = [
        f"replay {result['service']}: {result['events']} events rebuilt "
        f"{result['rebuilt_orders']} orders into {result['rebuilt_into']}",
        f"  live view: {result['live_orders']} orders",
        "  events: " + ", ".join(f"{t} {n}" for t, n in sorted(result["events_by_type"].items())),
    ]
    if result["in_flight"]:
        lines.append(f"  {len(result['in_flight'])} orders in flight (changed during the replay)")
    if not result["differences"]:
        lines.append("EQUAL: the rebuilt view matches the live one")
        return "\n".join(lines)
    lines.append(f"{len(result['differences'])} ORDERS DIFFER:")
    for d in result["differences"][:50]:
        what = "; ".join(
            f"{name}: live {v['live']!r}, replayed {v['replayed']!r}"
            for name, v in d["fields"].items()
        )
        lines.append(f"  {d['order_id']}: {what}")
    if len(result["differences"]) > 50:
        lines.append(f"  ... and {len(result['differences']) - 50} more (--json for all)")
    return "\n".join(lines)
