"""Inventory's event handlers: load, decide, save, emit. Each applies a list (a batch) in one
transaction: accepted orders are reserved or backordered, cancelled orders release what they
hold, shipped units leave, returned units come back, and backorders past their deadline expire.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, exists, insert, or_, select, union, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.inventory import domain
from services.inventory.metrics import InventoryMetrics
from services.inventory.models import (
    backorder_skus,
    backorders,
    cancellations,
    reservations,
)
from services.inventory.movements import (
    PendingOrder,
    StockChange,
    insert_or_ignore,
)
from shared.consumer import UnitOfWork
from shared.contracts.common import StockLine
from shared.contracts.envelope import Envelope
from shared.contracts.fulfillment import OrderCancelled, ReturnReceived, ShipmentShipped
from shared.contracts.intake import OrderAccepted
from shared.contracts.inventory import (
    BackorderExpired,
    Shortage,
    StockBackordered,
    StockReleased,
    StockReturned,
)
from shared.db import Query

log = logging.getLogger(__name__)


# --- order accepted -> reserved | backordered ------------------------------------------------


async def reserve_orders(
    uow: UnitOfWork,
    events: list[Envelope],
    metrics: InventoryMetrics,
    policy: domain.Policy,
) -> None:
    """Reserve each accepted order, all or nothing (one warehouse, else split when allowed);
    else backorder it until its deadline."""
    pending: dict[str, PendingOrder] = {}
    for env in events:
        if isinstance(env.data, OrderAccepted) and env.data.order_id not in pending:
            pending[env.data.order_id] = PendingOrder(env.data, env)
    if not pending:
        return
    # An order seen before (a re-emitted event has a new id, so the inbox lets it through)
    # keeps its first outcome; a cancelled one (its cancellation came first, on another
    # stream) is not reserved at all.
    for order_id in await _orders_already_seen(uow.conn, pending):
        del pending[order_id]
    if not pending:
        return
    tally = metrics.tally(uow)
    change = StockChange(uow, tally, policy)
    orders = list(pending.values())
    await change.lock({line.sku for p in orders for line in p.order.lines})
    reserved: list[tuple[PendingOrder, domain.Reserve]] = []
    waiting: list[tuple[PendingOrder, tuple[domain.Shortage, ...]]] = []
    for p in orders:
        decision = domain.allocate(
            p.wanted(),
            change.book,
            country=p.order.shipping_address.country,
            allow_split=policy.allow_split,
        )
        if isinstance(decision, domain.Reserve):
            reserved.append((p, decision))
            tally.outcomes["split" if decision.split else "reserved"] += 1
        else:
            waiting.append((p, decision.shortages))
    await change.record_reservations(reserved, reason="reserved")
    await _save_backorders(uow, waiting, change, policy)
    await change.write()


async def _orders_already_seen(conn: AsyncConnection, order_ids: Iterable[str]) -> set[str]:
    return {row[0] for row in await _SEEN.all(conn, {"ids": list(order_ids)})}


# Built once: building a statement per batch cost more than running it.
_SEEN = Query(
    union(
        *(
            select(t.c.order_id).where(t.c.order_id.in_(bindparam("ids", expanding=True)))
            for t in (reservations, backorders, cancellations)
        )
    )
)


async def _save_backorders(
    uow: UnitOfWork,
    waiting: list[tuple[PendingOrder, tuple[domain.Shortage, ...]]],
    change: StockChange,
    policy: domain.Policy,
) -> None:
    if not waiting:
        return
    deadline = change.now + timedelta(seconds=policy.backorder_hold_s)
    rows: list[dict[str, Any]] = []
    sku_rows: list[dict[str, Any]] = []
    for pending, shortages in waiting:
        order = pending.order
        rows.append(
            {
                "order_id": order.order_id,
                "order_doc": orjson.dumps(order.model_dump(mode="json")),
                "priority": order.priority,
                "channel": order.channel,
                "submitted_at": order.submitted_at.timestamp(),
                "created_at": change.at,
                "deadline": deadline.timestamp(),
                "status": "waiting",
            }
        )
        sku_rows.extend(
            {"order_id": order.order_id, "sku": sku, "quantity": qty}
            for sku, qty in pending.wanted().items()
        )
        uow.emit(
            StockBackordered(
                order_id=order.order_id,
                shortages=[
                    Shortage(sku=s.sku, requested=s.requested, available=s.available)
                    for s in shortages
                ],
                deadline=deadline,
                submitted_at=order.submitted_at,
            ),
            cause=pending.cause,
            correlation_id=order.order_id,
        )
        change.tally.outcomes["backordered"] += 1
        change.tally.order("backordered", order.channel)
    await uow.conn.execute(insert(backorders), rows)
    await uow.conn.execute(insert(backorder_skus), sku_rows)


# --- order cancelled -> released -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cancellation:
    order_id: str
    reason: str
    actor: str
    cause: Envelope | None = None


async def release_cancelled(
    uow: UnitOfWork, events: list[Envelope], metrics: InventoryMetrics, policy: domain.Policy
) -> None:
    """Fulfillment cancelled these orders: release what they hold, or stop their backorder."""
    cancelled: dict[str, Cancellation] = {}
    for env in events:
        if isinstance(env.data, OrderCancelled):
            data = env.data
            cancelled.setdefault(
                data.order_id, Cancellation(data.order_id, data.reason, data.actor, env)
            )
    if not cancelled:
        return
    at = time.time()
    await uow.conn.execute(
        insert_or_ignore(uow.conn, cancellations),
        [
            {"order_id": c.order_id, "reason": c.reason[:500], "actor": c.actor[:64], "at": at}
            for c in cancelled.values()
        ],
    )
    await release_orders(uow, cancelled, metrics, policy)


async def release_orders(
    uow: UnitOfWork,
    cancelled: Mapping[str, Cancellation],
    metrics: InventoryMetrics,
    policy: domain.Policy,
) -> None:
    conn = uow.conn
    ids = sorted(cancelled)
    stopped = set(
        (
            await conn.execute(
                select(backorders.c.order_id)
                .where(backorders.c.order_id.in_(ids))
                .where(backorders.c.status == "waiting")
                .order_by(backorders.c.order_id)
                .with_for_update()
            )
        ).scalars()
    )
    if stopped:
        await conn.execute(
            update(backorders)
            .where(backorders.c.order_id == bindparam("oid"))
            .values(status="cancelled"),
            [{"oid": oid} for oid in sorted(stopped)],
        )
    # FOR UPDATE ... status = 'reserved' claims the rows: a replica handling a duplicate of
    # the cancellation at the same time finds them released once it gets the lock.
    held = (
        await conn.execute(
            select(
                reservations.c.order_id,
                reservations.c.sku,
                reservations.c.warehouse,
                reservations.c.quantity,
                reservations.c.created_at,
            )
            .where(reservations.c.order_id.in_(ids))
            .where(reservations.c.status == "reserved")
            .order_by(reservations.c.order_id, reservations.c.sku, reservations.c.warehouse)
            .with_for_update()
        )
    ).all()
    if not held and not stopped:
        return
    tally = metrics.tally(uow)
    change = StockChange(uow, tally, policy)
    if held:
        await conn.execute(
            update(reservations)
            .where(reservations.c.order_id == bindparam("k_oid"))
            .where(reservations.c.sku == bindparam("k_sku"))
            .where(reservations.c.warehouse == bindparam("k_wh"))
            .values(status="released"),
            [{"k_oid": r.order_id, "k_sku": r.sku, "k_wh": r.warehouse} for r in held],
        )
        # The released units may serve orders that wait for them.
        await change.lock({r.sku for r in held}, serve_backorders=True)
    released: dict[str, list[StockLine]] = {}
    for r in held:
        c = cancelled[r.order_id]
        change.level(r.sku, r.warehouse).reserved -= r.quantity
        change.log(r.sku, r.warehouse, 0, -r.quantity, "released", r.order_id, c.actor)
        released.setdefault(r.order_id, []).append(
            StockLine(sku=r.sku, warehouse=r.warehouse, quantity=r.quantity)
        )
        tally.held.append(("released", change.at - r.created_at))
    for oid in ids:
        if oid not in released and oid not in stopped:
            continue
        c = cancelled[oid]
        uow.emit(
            StockReleased(
                order_id=oid,
                released=released.get(oid, []),
                backorder_cancelled=oid in stopped,
                reason=c.reason,
            ),
            cause=c.cause,
            correlation_id=oid,
        )
        tally.outcomes["released" if oid in released else "backorder_cancelled"] += 1
    await change.serve_waiting()
    await change.write()


async def release_raced_cancellations(
    uow: UnitOfWork, metrics: InventoryMetrics, policy: domain.Policy, window_s: float = 600.0
) -> int:
    """Cancelled orders that still hold stock or still wait: on PostgreSQL, another replica may
    have reserved (or backordered) an order while this one recorded its cancellation. Returns
    how many orders were released."""
    since = time.time() - window_s
    # Driven by the recent cancellations (a range of ix_cancellations_at), each looked up in
    # reservations and backorders by key: joined the other way round, SQLite scanned every
    # reservation ever made at every sweep (77 ms a second with a million orders stored).
    c = cancellations.c
    holding = exists().where(
        reservations.c.order_id == c.order_id, reservations.c.status == "reserved"
    )
    waiting = exists().where(backorders.c.order_id == c.order_id, backorders.c.status == "waiting")
    raced = select(c.order_id).where(c.at >= since, or_(holding, waiting))
    ids = list((await uow.conn.execute(raced)).scalars())
    if not ids:
        return 0
    rows = await uow.conn.execute(
        select(cancellations.c.order_id, cancellations.c.reason, cancellations.c.actor).where(
            cancellations.c.order_id.in_(ids)
        )
    )
    cancelled = {r.order_id: Cancellation(r.order_id, r.reason, r.actor) for r in rows}
    log.warning("releasing %d cancelled orders that were reserved meanwhile", len(cancelled))
    await release_orders(uow, cancelled, metrics, policy)
    return len(cancelled)


# --- shipped -> stock leaves --------------------------------------------------------------------


async def deduct_shipped(
    uow: UnitOfWork, events: list[Envelope], metrics: InventoryMetrics, policy: domain.Policy
) -> None:
    """Units left the warehouse: their reservation is fulfilled and they leave on_hand."""
    shipments = [e.data for e in events if isinstance(e.data, ShipmentShipped)]
    if not shipments:
        return
    conn = uow.conn
    result = await conn.execute(
        select(
            reservations.c.order_id,
            reservations.c.sku,
            reservations.c.warehouse,
            reservations.c.quantity,
            reservations.c.created_at,
        )
        .where(reservations.c.order_id.in_({s.order_id for s in shipments}))
        .where(reservations.c.status == "reserved")
        .order_by(reservations.c.order_id, reservations.c.sku, reservations.c.warehouse)
        .with_for_update()
    )
    held: dict[tuple[str, str, str], tuple[int, float]] = {
        (r.order_id, r.sku, r.warehouse): (r.quantity, r.created_at) for r in result
    }
    moves: list[tuple[ShipmentShipped, StockLine, int, int]] = []
    reserved_since: list[float] = []
    for shipment in shipments:
        for line in shipment.lines:
            found = held.pop((shipment.order_id, line.sku, line.warehouse), None)
            if found is None:
                # Nothing held for it (already shipped, or never reserved here): deducting it
                # would take units that other orders hold.
                log.warning(
                    "shipment %s of order %s: no reservation of %s at %s; stock left unchanged",
                    shipment.shipment_id,
                    shipment.order_id,
                    line.sku,
                    line.warehouse,
                )
                continue
            quantity_held, reserved_at = found
            units = min(line.quantity, quantity_held)
            if line.quantity != quantity_held:
                log.warning(
                    "shipment %s of order %s shipped %d of %s, %d were held; the rest is released",
                    shipment.shipment_id,
                    shipment.order_id,
                    line.quantity,
                    line.sku,
                    quantity_held,
                )
            moves.append((shipment, line, units, quantity_held))
            reserved_since.append(reserved_at)
    if not moves:
        return
    tally = metrics.tally(uow)
    change = StockChange(uow, tally, policy)
    # Units held but not shipped become available, and may serve a waiting order.
    await change.lock(
        {line.sku for _, line, _, _ in moves},
        serve_backorders=any(units < q for _, _, units, q in moves),
    )
    for shipment, line, units, quantity_held in moves:
        level = change.level(line.sku, line.warehouse)
        level.on_hand -= units
        level.reserved -= quantity_held
        change.shipped[(line.sku, line.warehouse)] += units
        change.log(
            line.sku,
            line.warehouse,
            -units,
            -quantity_held,
            "shipped",
            shipment.order_id,
            shipment.actor,
        )
    tally.held.extend(("shipped", change.at - since) for since in reserved_since)
    await conn.execute(
        update(reservations)
        .where(reservations.c.order_id == bindparam("k_oid"))
        .where(reservations.c.sku == bindparam("k_sku"))
        .where(reservations.c.warehouse == bindparam("k_wh"))
        # What shipped is what may come back.
        .values(status="shipped", quantity=bindparam("units")),
        [
            {
                "k_oid": shipment.order_id,
                "k_sku": line.sku,
                "k_wh": line.warehouse,
                "units": units,
            }
            for shipment, line, units, _ in moves
        ],
    )
    await change.serve_waiting()
    await change.write()


# --- return received -> stock comes back ------------------------------------------------------------


class ShipmentNotAppliedYet(RuntimeError):
    """A return arrived before this inventory applied the shipment it returns."""


async def restock_returns(
    uow: UnitOfWork, events: list[Envelope], metrics: InventoryMetrics, policy: domain.Policy
) -> None:
    """Returned goods are back at a warehouse: on hand again (ledger reason "return"), never
    more than the order shipped and has not returned yet."""
    returns = [(e, e.data) for e in events if isinstance(e.data, ReturnReceived)]
    if not returns:
        return
    conn = uow.conn
    result = await conn.execute(
        select(
            reservations.c.order_id,
            reservations.c.sku,
            reservations.c.warehouse,
            reservations.c.quantity,
            reservations.c.returned,
            reservations.c.status,
        )
        .where(reservations.c.order_id.in_({r.order_id for _, r in returns}))
        .where(reservations.c.status.in_(("reserved", "shipped")))
        .order_by(reservations.c.order_id, reservations.c.sku, reservations.c.warehouse)
        .with_for_update()
    )
    shipped: dict[tuple[str, str], list[domain.Shipped]] = {}
    rows_by_key: dict[tuple[str, str, str], domain.Shipped] = {}
    not_yet_shipped: set[tuple[str, str]] = set()
    for r in result:
        if r.status == "reserved":
            not_yet_shipped.add((r.order_id, r.sku))
            continue
        row = domain.Shipped(r.warehouse, r.quantity, r.returned)
        shipped.setdefault((r.order_id, r.sku), []).append(row)
        rows_by_key[(r.order_id, r.sku, r.warehouse)] = row
    for _, ret in returns:
        for line in ret.lines:
            key = (ret.order_id, line.sku)
            if key in not_yet_shipped and key not in shipped:
                # The shipment event is on its way (another replica has it): try again later.
                raise ShipmentNotAppliedYet(
                    f"return of order {ret.order_id}: {line.sku} is reserved, not yet shipped"
                )
    before = {k: v.returned for k, v in rows_by_key.items()}
    outcomes: list[tuple[Envelope, ReturnReceived, list[StockLine], list[StockLine]]] = []
    for env, ret in returns:
        restocked: list[StockLine] = []
        refused: list[StockLine] = []
        for line in ret.lines:
            taken = domain.take_back(
                shipped.get((ret.order_id, line.sku), []), line.quantity, line.warehouse
            )
            if taken:
                restocked.append(line.model_copy(update={"quantity": taken}))
            if taken < line.quantity:
                refused.append(line.model_copy(update={"quantity": line.quantity - taken}))
                log.warning(
                    "return of order %s: %d of %s more than shipped and not yet returned; "
                    "not taken into stock",
                    ret.order_id,
                    line.quantity - taken,
                    line.sku,
                )
        outcomes.append((env, ret, restocked, refused))
    counted = [
        {"k_oid": k[0], "k_sku": k[1], "k_wh": k[2], "returned": row.returned}
        for k, row in rows_by_key.items()
        if row.returned != before[k]
    ]
    if counted:
        await conn.execute(
            update(reservations)
            .where(reservations.c.order_id == bindparam("k_oid"))
            .where(reservations.c.sku == bindparam("k_sku"))
            .where(reservations.c.warehouse == bindparam("k_wh"))
            .values(returned=bindparam("returned")),
            counted,
        )
    tally = metrics.tally(uow)
    change = StockChange(uow, tally, policy)
    back = [(ret, line) for _, ret, restocked, _ in outcomes for line in restocked]
    await change.ensure((line.sku, line.warehouse) for _, line in back)
    await change.lock({line.sku for _, line in back}, serve_backorders=True)
    for ret, line in back:
        change.level(line.sku, line.warehouse).on_hand += line.quantity
        change.returned[(line.sku, line.warehouse)] += line.quantity
        change.log(line.sku, line.warehouse, line.quantity, 0, "return", ret.order_id, ret.actor)
    for env, ret, restocked, refused in outcomes:
        uow.emit(
            StockReturned(
                order_id=ret.order_id,
                shipment_id=ret.shipment_id,
                restocked=restocked,
                refused=refused,
                actor=ret.actor,
            ),
            cause=env,
            correlation_id=ret.order_id,
        )
    await change.serve_waiting()
    await change.write()


# --- backorder deadline ----------------------------------------------------------------------------


async def expire_backorders(uow: UnitOfWork, metrics: InventoryMetrics, limit: int = 500) -> int:
    """Waiting backorders past their deadline expire; returns how many did."""
    now = time.time()
    result = await uow.conn.execute(
        select(
            backorders.c.order_id,
            backorders.c.channel,
            backorders.c.submitted_at,
            backorders.c.deadline,
        )
        .where(backorders.c.status == "waiting")
        .where(backorders.c.deadline <= now)
        .order_by(backorders.c.deadline)
        .limit(limit)
        # Another replica's sweep takes the rows this one has not locked.
        .with_for_update(skip_locked=True)
    )
    rows = result.all()
    if not rows:
        return 0
    tally = metrics.tally(uow)
    await uow.conn.execute(
        update(backorders)
        .where(backorders.c.order_id == bindparam("oid"))
        .values(status="expired"),
        [{"oid": r.order_id} for r in rows],
    )
    for r in rows:
        deadline = datetime.fromtimestamp(r.deadline, UTC).isoformat()
        uow.emit(
            BackorderExpired(
                order_id=r.order_id,
                reason=f"no stock for every line before the deadline {deadline}",
                submitted_at=datetime.fromtimestamp(r.submitted_at, UTC),
            ),
            correlation_id=r.order_id,
        )
        tally.order("backorder_expired", r.channel)
        tally.outcomes["backorder_expired"] += 1
    return len(rows)
