"""Intake's handlers: load, decide, save, emit. Each applies a list (a batch) in one transaction."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.intake import domain
from services.intake.metrics import IntakeMetrics
from services.intake.models import customers, orders, rejections
from services.intake.routing import Router
from shared.consumer import UnitOfWork
from shared.contracts.envelope import Envelope, EventHeader
from shared.contracts.intake import (
    OrderAccepted,
    OrderCancelRequested,
    OrderDuplicate,
    OrderRejected,
    OrderSubmission,
    SubmissionAnswer,
)
from shared.db import Bulk, Query, bulk_insert
from shared.ids import uuid7

MAX_SUSPECTS = 10
ACCEPTED_RANK = domain.STATUS_RANK["accepted"]


@dataclass(frozen=True, slots=True)
class Submission:
    channel: str
    raw: bytes
    received_at: datetime
    transport: str = "nats"  # nats | rpc | http | batch: a bounded metric label
    source: str | None = None  # where a dead letter came from, e.g. "ORDERFLOW_SUBMISSIONS:42"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A submission that is not even a JSON object: kept raw, with why, beside its rejection."""

    rejection_id: str
    submission: Submission
    reason: str


@dataclass
class SubmissionPolicy:
    """What the submission handler needs besides its transaction."""

    metrics: IntakeMetrics
    router: Router
    suspect_window_s: float = 24 * 3600
    dead_letters: Callable[[list[DeadLetter]], Awaitable[None]] | None = None


@dataclass(slots=True)
class _Candidate:
    """A valid submission and what the batch's lookups need to know about it."""

    item: Submission
    sub: OrderSubmission
    customer: str
    fingerprint: str


async def submit_orders(
    uow: UnitOfWork, items: list[Submission], policy: SubmissionPolicy
) -> list[SubmissionAnswer]:
    """Answer every submission exactly once: accepted, rejected (all errors) or duplicate.

    Set-based: one query finds both the exact duplicates and the look-alikes of the whole
    batch, one reads the customers' tiers, and the writes are executemany.
    """
    readings = [domain.read(item.raw, item.channel) for item in items]
    candidates: dict[int, _Candidate] = {}
    for i, (item, reading) in enumerate(zip(items, readings, strict=True)):
        if reading.submission is not None:
            key = domain.customer_key(reading.submission.customer)
            fp = domain.fingerprint(key, reading.submission)
            candidates[i] = _Candidate(item, reading.submission, key, fp)
    window = policy.suspect_window_s
    known, lookalikes = await _load_matches(uow.conn, list(candidates.values()), window)
    directory = await _load_customers(uow.conn, {c.customer for c in candidates.values()})

    answers: list[SubmissionAnswer] = []
    order_rows: list[dict[str, Any]] = []
    rejection_rows: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    tally = _Tally()
    now = time.time()
    for i, (item, reading) in enumerate(zip(items, readings, strict=True)):
        candidate = candidates.get(i)
        if candidate is None:
            order_id = uuid7()
            rejection_rows.append(
                {
                    "order_id": order_id,
                    "channel": item.channel,
                    "external_id": reading.external_id,
                    "errors": orjson.dumps([e.model_dump() for e in reading.errors]),
                    "raw": item.raw[:65536],
                    "submitted_at": item.received_at.timestamp(),
                }
            )
            uow.emit(
                OrderRejected(
                    order_id=order_id,
                    channel=item.channel,
                    external_id=reading.external_id,
                    errors=reading.errors,
                    submitted_at=item.received_at,
                    submission=item.source,
                )
            )
            if not reading.parseable:
                dead.append(DeadLetter(order_id, item, reading.errors[0].reason))
            tally.rejected(item, reading.errors)
            answers.append(
                SubmissionAnswer(outcome="rejected", order_id=order_id, errors=reading.errors)
            )
            continue
        sub = candidate.sub
        original = known.get((sub.channel, sub.external_id))
        if original is not None:
            uow.emit(
                OrderDuplicate(
                    order_id=original,
                    channel=sub.channel,
                    external_id=sub.external_id,
                    submitted_at=item.received_at,
                )
            )
            tally.outcome(item, "duplicate")
            answers.append(SubmissionAnswer(outcome="duplicate", order_id=original))
            continue
        order_id = uuid7()
        known[(sub.channel, sub.external_id)] = order_id
        received = item.received_at.timestamp()
        suspected: list[str] | None = None
        if window > 0:
            earlier = lookalikes.setdefault(candidate.fingerprint, [])
            # The most recent few are enough to review; a customer who reorders the same
            # basket daily must not grow every event without bound.
            recent = [oid for oid, at in earlier if at >= received - window]
            suspected = recent[-MAX_SUSPECTS:] or None
            earlier.append((order_id, received))
        total = sub.lines_total()
        tier, manager = directory.get(candidate.customer, (None, None))
        routing = policy.router.decide(
            channel=sub.channel,
            urgency=sub.priority,
            total=total,
            currency=sub.currency,
            tier=tier,
            account_manager=manager,
        )
        uow.emit(
            OrderAccepted(
                order_id=order_id,
                channel=sub.channel,
                external_id=sub.external_id,
                customer=sub.customer,
                lines=sub.lines,
                currency=sub.currency,
                total=total,
                shipping_address=sub.shipping_address,
                priority=routing.priority,
                submitted_at=item.received_at,
                requested_priority=sub.priority,
                priority_rule=routing.rule,
                owner=routing.owner,
                customer_tier=tier,
                suspected_duplicate_of=suspected,
            ),
            correlation_id=order_id,
        )
        order_rows.append(
            {
                "order_id": order_id,
                "channel": sub.channel,
                "external_id": sub.external_id,
                "status": "accepted",
                "status_rank": ACCEPTED_RANK,
                "priority": routing.priority,
                "requested_priority": sub.priority,
                "priority_rule": routing.rule,
                "owner": routing.owner,
                "customer_tier": tier,
                "currency": sub.currency,
                "total": str(total),
                "order_doc": sub.model_dump_json().encode(),
                "fingerprint": candidate.fingerprint,
                "suspected_duplicate_of": orjson.dumps(suspected).decode() if suspected else None,
                "submitted_at": received,
                "accepted_at": now,
                "updated_at": now,
            }
        )
        tally.outcome(item, "accepted", routing.priority, suspected is not None)
        answers.append(
            SubmissionAnswer(
                outcome="accepted",
                order_id=order_id,
                priority=routing.priority,
                priority_rule=routing.rule,
                owner=routing.owner,
                suspected_duplicate_of=suspected,
            )
        )
    if order_rows:
        await bulk_insert(orders)(uow.conn, order_rows)
    if rejection_rows:
        await uow.conn.execute(insert(rejections), rejection_rows)

    async def after_commit() -> None:
        # A batch that rolls back and is retried must count (and park its dead letters) once.
        tally.record(policy.metrics)
        if dead and policy.dead_letters is not None:
            await policy.dead_letters(dead)

    uow.on_commit(after_commit)
    return answers


async def _load_matches(
    conn: AsyncConnection, candidates: list[_Candidate], window: float
) -> tuple[dict[tuple[str, str], str], dict[str, list[tuple[str, float]]]]:
    """One query for the batch: orders with the same (channel, external_id) -- duplicates --
    and orders with the same fingerprint within the window -- look-alikes."""
    known: dict[tuple[str, str], str] = {}
    lookalikes: dict[str, list[tuple[str, float]]] = {}
    if not candidates:
        return known, lookalikes
    wanted = {(c.sub.channel, c.sub.external_id) for c in candidates}
    fingerprints = {c.fingerprint for c in candidates}
    cutoff = min(c.item.received_at.timestamp() for c in candidates) - window
    result = await _MATCHES[window > 0].all(
        conn,
        {
            "channels": sorted({channel for channel, _ in wanted}),
            "external_ids": sorted({ext for _, ext in wanted}),
            "fingerprints": sorted(fingerprints),
            "cutoff": cutoff,
        },
    )
    for order_id, channel, external_id, fp, submitted_at, status in result:
        if (channel, external_id) in wanted:
            known[(channel, external_id)] = order_id
        # A cancelled order is no longer one the customer could receive twice.
        elif fp in fingerprints and submitted_at >= cutoff and status != "cancelled":
            lookalikes.setdefault(fp, []).append((order_id, submitted_at))
    for found in lookalikes.values():
        found.sort(key=lambda pair: pair[1])
    return known, lookalikes


async def _load_customers(
    conn: AsyncConnection, keys: set[str]
) -> dict[str, tuple[str | None, str | None]]:
    if not keys:
        return {}
    result = await _CUSTOMERS.all(conn, {"keys": sorted(keys)})
    return {key: (tier, manager) for key, tier, manager in result}


def _matches_query(lookalikes: bool) -> Query:
    """Orders with the same (channel, external_id) -- duplicates -- and, when ``lookalikes``,
    orders with the same fingerprint since the cutoff. Built once (module level): building a
    statement per batch cost more than running it."""
    # channel IN and external_id IN together can use the unique index; external_id alone
    # cannot, and would scan every order ever taken.
    same_reference = and_(
        orders.c.channel.in_(bindparam("channels", expanding=True)),
        orders.c.external_id.in_(bindparam("external_ids", expanding=True)),
    )
    condition = (
        or_(
            same_reference,
            and_(
                orders.c.fingerprint.in_(bindparam("fingerprints", expanding=True)),
                orders.c.submitted_at >= bindparam("cutoff"),
            ),
        )
        if lookalikes
        else same_reference
    )
    return Query(
        select(
            orders.c.order_id,
            orders.c.channel,
            orders.c.external_id,
            orders.c.fingerprint,
            orders.c.submitted_at,
            orders.c.status,
        ).where(condition)
    )


_MATCHES = {flag: _matches_query(flag) for flag in (False, True)}
_CUSTOMERS = Query(
    select(customers.c.customer_key, customers.c.tier, customers.c.account_manager).where(
        customers.c.customer_key.in_(bindparam("keys", expanding=True))
    )
)


class _Tally:
    """What a batch decided, counted into the metrics once it has committed."""

    def __init__(self) -> None:
        self.items: list[tuple[Submission, str, str | None, bool]] = []
        self.field_errors: list[tuple[str, str]] = []

    def outcome(
        self, item: Submission, outcome: str, priority: str | None = None, flagged: bool = False
    ) -> None:
        self.items.append((item, outcome, priority, flagged))

    def rejected(self, item: Submission, errors: list[Any]) -> None:
        self.items.append((item, "rejected", None, False))
        labels = {domain.error_label(e.field) for e in errors}
        self.field_errors.extend((item.channel, label) for label in labels)

    def record(self, metrics: IntakeMetrics) -> None:
        now = datetime.now(UTC)
        for item, outcome, priority, flagged in self.items:
            metrics.base.count(outcome, item.channel)
            metrics.processing.labels(item.transport).observe(
                max((now - item.received_at).total_seconds(), 0.0)
            )
            if priority is not None:
                metrics.base.observe_stage("accepted", item.channel, priority, item.received_at)
            if outcome == "duplicate":
                metrics.duplicates.labels(item.channel, "exact").inc()
            if flagged:
                metrics.duplicates.labels(item.channel, "suspected").inc()
        for channel, label in self.field_errors:
            metrics.rejections.labels(channel, label).inc()


# Downstream events that move an order's status: event type -> (status, timestamp column).
PROGRESS: dict[str, tuple[str, str]] = {
    "stock_backordered": ("backordered", "backordered_at"),
    "stock_reserved": ("reserved", "reserved_at"),
    "shipment_queued": ("queued", "queued_at"),
    "shipment_picked": ("picked", "picked_at"),
    "shipment_packed": ("packed", "packed_at"),
    "shipment_shipped": ("shipped", "shipped_at"),
    "shipment_delivered": ("delivered", "delivered_at"),
}


def _forward_to(status: str) -> dict[str, Any]:
    """SET clauses that move the status to ``status`` only if that is a step forward."""
    rank = domain.STATUS_RANK[status]
    return {
        "status": case((orders.c.status_rank < rank, status), else_=orders.c.status),
        "status_rank": case((orders.c.status_rank < rank, rank), else_=orders.c.status_rank),
    }


def _progress_update(event_type: str) -> Bulk:
    status, column = PROGRESS[event_type]
    return Bulk(
        update(orders)
        .where(orders.c.order_id == bindparam("oid"))
        .values({column: bindparam("at"), **_forward_to(status), "updated_at": bindparam("at")})
    )


_PROGRESS_UPDATES = {t: _progress_update(t) for t in PROGRESS}


async def record_progress(uow: UnitOfWork, events: Sequence[EventHeader]) -> None:
    """Keep the status view: stamp the stage's time, and move the status forward only."""
    rows = [{"oid": e.key, "at": _epoch(e.occurred_at)} for e in events]
    await _PROGRESS_UPDATES[events[0].type](uow.conn, rows)


async def record_cancelled(uow: UnitOfWork, events: list[Envelope]) -> None:
    """Fulfillment cancelled the order: cancelled is final in the view."""
    stmt = (
        update(orders)
        .where(orders.c.order_id == bindparam("oid"))
        .values(
            {
                "cancelled_at": bindparam("at"),
                "cancelled_reason": bindparam("why"),
                **_forward_to("cancelled"),
                "updated_at": bindparam("at"),
            }
        )
    )
    await uow.conn.execute(stmt, [_decision_row(e) for e in events])


async def record_cancel_refused(uow: UnitOfWork, events: list[Envelope]) -> None:
    """Fulfillment refused (something had shipped): the view records it; status is unchanged."""
    stmt = (
        update(orders)
        .where(orders.c.order_id == bindparam("oid"))
        .values(
            cancel_refused_at=bindparam("at"),
            cancel_refused_reason=bindparam("why"),
            updated_at=bindparam("at"),
        )
    )
    await uow.conn.execute(stmt, [_decision_row(e) for e in events])


def _decision_row(env: Envelope) -> dict[str, Any]:
    reason = getattr(env.data, "reason", None)
    return {"oid": env.key, "at": _epoch(env.occurred_at), "why": (reason or "")[:500]}


def _epoch(occurred_at: str) -> float:
    return datetime.fromisoformat(occurred_at).timestamp()


@dataclass(frozen=True, slots=True)
class CancelAnswer:
    order_id: str
    outcome: str  # requested | pending | refused
    status: str
    reason: str
    channel: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "outcome": self.outcome,
            "status": self.status,
            "reason": self.reason,
        }


async def request_cancel(
    uow: UnitOfWork, order_id: str, reason: str, actor: str, only_channel: str | None = None
) -> CancelAnswer | None:
    """Ask fulfillment to cancel, unless the view already shows it is too late.

    One conditional update decides, so two requests racing (two replicas, two clicks) emit one
    OrderCancelRequested. None if there is no such order (for ``only_channel``: of that channel).
    """
    now = time.time()
    claim = (
        update(orders)
        .where(orders.c.order_id == order_id)
        .where(orders.c.cancel_requested_at.is_(None))
        .where(orders.c.status.not_in(domain.TOO_LATE_TO_CANCEL))
        .values(
            cancel_requested_at=now,
            cancel_actor=actor[:100],
            cancel_reason=reason[:500],
            updated_at=now,
        )
        .returning(orders.c.status, orders.c.channel)
    )
    if only_channel is not None:
        claim = claim.where(orders.c.channel == only_channel)
    claimed = await uow.conn.execute(claim)
    row = claimed.first()
    if row is not None:
        uow.emit(
            OrderCancelRequested(order_id=order_id, reason=reason, actor=actor),
            correlation_id=order_id,
        )
        return CancelAnswer(
            order_id, "requested", row.status, "asked fulfillment to cancel", row.channel
        )
    found = (
        await uow.conn.execute(
            select(
                orders.c.status,
                orders.c.channel,
                orders.c.cancel_requested_at,
                orders.c.cancel_refused_reason,
                orders.c.cancelled_reason,
            ).where(orders.c.order_id == order_id)
        )
    ).first()
    if found is None:
        rejected = (
            await uow.conn.execute(
                select(rejections.c.channel).where(rejections.c.order_id == order_id)
            )
        ).scalar_one_or_none()
        if rejected is None or (only_channel and rejected != only_channel):
            return None
        why = "the submission was rejected: there is no order to cancel"
        return CancelAnswer(order_id, "refused", "rejected", why, rejected)
    if only_channel and found.channel != only_channel:
        return None
    if found.status == "cancelled":
        why = (
            f"already cancelled: {found.cancelled_reason}"
            if found.cancelled_reason
            else "already cancelled"
        )
        return CancelAnswer(order_id, "refused", found.status, why, found.channel)
    if found.status in domain.TOO_LATE_TO_CANCEL:
        return CancelAnswer(
            order_id,
            "refused",
            found.status,
            f"too late: the order is {found.status}",
            found.channel,
        )
    if found.cancel_refused_reason:
        return CancelAnswer(
            order_id, "refused", found.status, found.cancel_refused_reason, found.channel
        )
    return CancelAnswer(
        order_id,
        "pending",
        found.status,
        "a cancellation was already requested; fulfillment has not answered yet",
        found.channel,
    )


async def order_status(conn: AsyncConnection, order_id: str) -> dict[str, Any] | None:
    """The status view of one order (or its rejection), as the API and CLI show it."""
    row = (await conn.execute(select(orders).where(orders.c.order_id == order_id))).first()
    if row is not None:
        m = dict(row._mapping)
        m["suspected_duplicate_of"] = (
            orjson.loads(m["suspected_duplicate_of"]) if m["suspected_duplicate_of"] else None
        )
        view: dict[str, Any] = {
            "order_id": order_id,
            "status": m["status"],
            "channel": m["channel"],
            "external_id": m["external_id"],
            "priority": m["priority"],
            "requested_priority": m["requested_priority"],
            "priority_rule": m["priority_rule"],
            "owner": m["owner"],
            "customer_tier": m["customer_tier"],
            "currency": m["currency"],
            "total": m["total"],
            "suspected_duplicate_of": m["suspected_duplicate_of"],
            "submitted_at": _iso(m["submitted_at"]),
            "timeline": [{**entry, "at": _iso(entry["at"])} for entry in domain.timeline(m)],
        }
        return view
    row = (await conn.execute(select(rejections).where(rejections.c.order_id == order_id))).first()
    if row is not None:
        m = dict(row._mapping)
        submitted = _iso(m["submitted_at"])
        return {
            "order_id": order_id,
            "status": "rejected",
            "channel": m["channel"],
            "external_id": m["external_id"],
            "errors": orjson.loads(m["errors"]),
            "submitted_at": submitted,
            "timeline": [
                {"at": submitted, "what": "submitted", "by": "channel"},
                {"at": submitted, "what": "rejected", "by": "intake"},
            ],
        }
    return None


LIST_LIMIT = 100
LIST_MAX = 1000


async def list_orders(
    conn: AsyncConnection,
    *,
    status: str | None = None,
    channel: str | None = None,
    since: float | None = None,
    flagged: bool | None = None,
    after: str | None = None,
    limit: int = LIST_LIMIT,
) -> dict[str, Any]:
    """A page of orders, newest first; ``next`` is the cursor of the following page."""
    limit = max(1, min(limit, LIST_MAX))
    table = rejections if status == "rejected" else orders
    columns = [table.c.order_id, table.c.channel, table.c.external_id, table.c.submitted_at]
    if table is orders:
        columns += [
            orders.c.status,
            orders.c.priority,
            orders.c.owner,
            orders.c.currency,
            orders.c.total,
            orders.c.suspected_duplicate_of,
        ]
    query = select(*columns)
    if table is orders and status is not None:
        query = query.where(orders.c.status == status)
    if table is orders and flagged is not None:
        flag = orders.c.suspected_duplicate_of
        query = query.where(flag.is_not(None) if flagged else flag.is_(None))
    if channel is not None:
        query = query.where(table.c.channel == channel)
    if since is not None:
        # Order ids are UUIDv7, minted when intake answered, which is after the submission
        # arrived: the id bound lets the primary key find the range, the time filter is exact.
        query = query.where(table.c.order_id >= uuid7_floor(since)).where(
            table.c.submitted_at >= since
        )
    if after is not None:
        query = query.where(table.c.order_id < after)
    rows = (await conn.execute(query.order_by(table.c.order_id.desc()).limit(limit + 1))).all()
    page = []
    for row in rows[:limit]:
        m = row._mapping
        item: dict[str, Any] = {
            "order_id": m["order_id"],
            "status": m.get("status", "rejected"),
            "channel": m["channel"],
            "external_id": m["external_id"],
            "submitted_at": _iso(m["submitted_at"]),
        }
        if table is orders:
            item.update(
                priority=m["priority"],
                owner=m["owner"],
                total=m["total"],
                currency=m["currency"],
                flagged=m["suspected_duplicate_of"] is not None,
            )
        page.append(item)
    more = len(rows) > limit
    return {"orders": page, "next": page[-1]["order_id"] if more and page else None}


async def count_by_status(conn: AsyncConnection) -> dict[str, int]:
    counts = await conn.execute(select(orders.c.status, func.count()).group_by(orders.c.status))
    by_status: dict[str, int] = {status: n for status, n in counts}
    rejected = (await conn.execute(select(func.count()).select_from(rejections))).scalar_one()
    return {**by_status, "rejected": rejected}


async def set_customer(
    uow: UnitOfWork, key: str, tier: str | None, account_manager: str | None
) -> dict[str, Any]:
    now = time.time()
    values = {"tier": tier, "account_manager": account_manager, "updated_at": now}
    changed = await uow.conn.execute(
        update(customers).where(customers.c.customer_key == key).values(values)
    )
    if changed.rowcount == 0:
        await uow.conn.execute(insert(customers).values(customer_key=key, **values))
    return {"customer": key, "tier": tier, "account_manager": account_manager}


async def get_customer(conn: AsyncConnection, key: str) -> dict[str, Any] | None:
    row = (await conn.execute(select(customers).where(customers.c.customer_key == key))).first()
    if row is None:
        return None
    return {
        "customer": key,
        "tier": row.tier,
        "account_manager": row.account_manager,
        "updated_at": _iso(row.updated_at),
    }


def uuid7_floor(epoch: float) -> str:
    """The smallest UUIDv7 (as text) minted at or after ``epoch``."""
    ms = max(0, int(epoch * 1000))
    hexed = f"{ms:012x}"
    return f"{hexed[:8]}-{hexed[8:]}-7000-8000-000000000000"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
