"""Inventory's handlers: load, decide, save, emit. Each applies a list (a batch) in one transaction.

Stock rows are read ``FOR UPDATE`` in (sku, warehouse) order, one statement per batch: on
PostgreSQL, replicas sharing a consumer then take turns on the rows they share (and always lock
in the same order, so they cannot deadlock); SQLite has one writer anyway and ignores the clause.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.inventory import domain
from services.inventory.models import (
    backorder_skus,
    backorders,
    ledger,
    reservations,
    stock,
    warehouses,
)
from shared.consumer import UnitOfWork
from shared.contracts.common import StockLine
from shared.contracts.envelope import Envelope
from shared.contracts.fulfillment import ShipmentShipped
from shared.contracts.intake import OrderAccepted
from shared.contracts.inventory import (
    BackorderExpired,
    RestockStock,
    Shortage,
    StockBackordered,
    StockReserved,
    StockRestocked,
)
from shared.metrics import ServiceMetrics

log = logging.getLogger(__name__)

# Who wrote a ledger row that no person asked for.
SYSTEM_ACTOR = "inventory"


@dataclass(frozen=True, slots=True)
class PendingOrder:
    """An order to reserve, and the event that brought it (None when a restock retries it)."""

    order: OrderAccepted
    cause: Envelope | None = None


# --- order accepted -> reserved | backordered ------------------------------------------------


async def reserve_orders(
    uow: UnitOfWork,
    events: list[Envelope],
    metrics: ServiceMetrics,
    backorder_hold: timedelta,
) -> None:
    """Reserve each accepted order from one warehouse, all or nothing; else backorder it."""
    pending: dict[str, PendingOrder] = {}
    for env in events:
        if isinstance(env.data, OrderAccepted) and env.data.order_id not in pending:
            pending[env.data.order_id] = PendingOrder(env.data, env)
    if not pending:
        return
    # Defensive: an order seen before (a re-emitted event has a new id, so the inbox lets it
    # through) keeps its first outcome.
    for order_id in await _orders_already_decided(uow.conn, pending):
        del pending[order_id]
    if not pending:
        return
    orders = list(pending.values())
    book = await _lock_stock(uow.conn, {line.sku for p in orders for line in p.order.lines})
    decisions = domain.allocate_in_sequence([_wanted(p.order) for p in orders], book)
    now = datetime.now(UTC)
    reserved = [
        (p, d.allocations)
        for p, d in zip(orders, decisions, strict=True)
        if isinstance(d, domain.Reserve)
    ]
    waiting = [
        (p, d.shortages)
        for p, d in zip(orders, decisions, strict=True)
        if isinstance(d, domain.Backorder)
    ]
    await _save_reservations(uow, reserved, metrics, now)
    await _save_backorders(uow, waiting, metrics, now, now + backorder_hold)


async def _orders_already_decided(conn: AsyncConnection, order_ids: Iterable[str]) -> set[str]:
    ids = list(order_ids)
    seen = set(
        (
            await conn.execute(
                select(reservations.c.order_id).where(reservations.c.order_id.in_(ids)).distinct()
            )
        ).scalars()
    )
    seen.update(
        (
            await conn.execute(select(backorders.c.order_id).where(backorders.c.order_id.in_(ids)))
        ).scalars()
    )
    return seen


async def _lock_stock(conn: AsyncConnection, skus: Iterable[str]) -> domain.StockBook:
    """Every stock row of these SKUs, locked, with the warehouses' preference ranks."""
    result = await conn.execute(
        select(stock.c.sku, stock.c.warehouse, stock.c.on_hand, stock.c.reserved, warehouses.c.rank)
        .join(warehouses, warehouses.c.code == stock.c.warehouse)
        .where(stock.c.sku.in_(sorted(set(skus))))
        .order_by(stock.c.sku, stock.c.warehouse)
        .with_for_update(of=stock)
    )
    levels: dict[tuple[str, str], domain.Level] = {}
    ranks: dict[str, int] = {}
    for sku, warehouse, on_hand, reserved, rank in result:
        levels[(sku, warehouse)] = domain.Level(on_hand, reserved)
        ranks[warehouse] = rank
    return domain.StockBook(levels, ranks)


def _wanted(order: OrderAccepted) -> dict[str, int]:
    return domain.requested((line.sku, line.quantity) for line in order.lines)


async def _save_reservations(
    uow: UnitOfWork,
    reserved: Sequence[tuple[PendingOrder, tuple[domain.Allocation, ...]]],
    metrics: ServiceMetrics,
    now: datetime,
) -> None:
    """Write what ``StockBook.hold`` decided: stock rows, reservations, ledger; emit the events."""
    if not reserved:
        return
    at = now.timestamp()
    held: dict[tuple[str, str], int] = {}
    reservation_rows: list[dict[str, Any]] = []
    ledger_rows: list[dict[str, Any]] = []
    for pending, allocations in reserved:
        order = pending.order
        for a in allocations:
            held[(a.sku, a.warehouse)] = held.get((a.sku, a.warehouse), 0) + a.quantity
            reservation_rows.append(
                {
                    "order_id": order.order_id,
                    "sku": a.sku,
                    "warehouse": a.warehouse,
                    "quantity": a.quantity,
                    "status": "reserved",
                    "created_at": at,
                }
            )
            ledger_rows.append(
                _ledger_row(a.sku, a.warehouse, 0, a.quantity, "reserved", order.order_id, at)
            )
        uow.emit(
            StockReserved(
                order_id=order.order_id,
                allocations=[
                    StockLine(sku=a.sku, warehouse=a.warehouse, quantity=a.quantity)
                    for a in allocations
                ],
                priority=order.priority,
                channel=order.channel,
                ship_to=order.shipping_address,
                submitted_at=order.submitted_at,
            ),
            cause=pending.cause,
            correlation_id=order.order_id,
        )
        metrics.count("reserved", order.channel)
        metrics.observe_stage("reserved", order.channel, order.priority, order.submitted_at)
    # The rows are locked, so adding to what is there is exact; the table's checks refuse an
    # oversell should the arithmetic above ever be wrong.
    await uow.conn.execute(
        update(stock)
        .where(stock.c.sku == bindparam("k_sku"))
        .where(stock.c.warehouse == bindparam("k_wh"))
        .values(reserved=stock.c.reserved + bindparam("d_reserved")),
        [{"k_sku": s, "k_wh": w, "d_reserved": q} for (s, w), q in sorted(held.items())],
    )
    await uow.conn.execute(insert(reservations), reservation_rows)
    await uow.conn.execute(insert(ledger), ledger_rows)


async def _save_backorders(
    uow: UnitOfWork,
    waiting: Sequence[tuple[PendingOrder, tuple[domain.Shortage, ...]]],
    metrics: ServiceMetrics,
    now: datetime,
    deadline: datetime,
) -> None:
    if not waiting:
        return
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
                "created_at": now.timestamp(),
                "deadline": deadline.timestamp(),
                "status": "waiting",
            }
        )
        sku_rows.extend({"order_id": order.order_id, "sku": sku} for sku in _wanted(order))
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
        metrics.count("backordered", order.channel)
    await uow.conn.execute(insert(backorders), rows)
    await uow.conn.execute(insert(backorder_skus), sku_rows)


def _ledger_row(
    sku: str,
    warehouse: str,
    delta_on_hand: int,
    delta_reserved: int,
    reason: str,
    ref: str | None,
    at: float,
    actor: str = SYSTEM_ACTOR,
) -> dict[str, Any]:
    return {
        "sku": sku,
        "warehouse": warehouse,
        "delta_on_hand": delta_on_hand,
        "delta_reserved": delta_reserved,
        "reason": reason,
        "ref": ref,
        "actor": actor[:64],
        "at": at,
    }


# --- restock -----------------------------------------------------------------------------------


async def restock(
    uow: UnitOfWork, command: RestockStock, metrics: ServiceMetrics
) -> dict[str, Any]:
    """Add units at a warehouse, then serve the waiting backorders they make possible."""
    now = datetime.now(UTC)
    at = now.timestamp()
    conn = uow.conn
    ranks: dict[str, int] = {
        code: rank
        for code, rank in await conn.execute(select(warehouses.c.code, warehouses.c.rank))
    }
    if command.warehouse not in ranks:
        ranks[command.warehouse] = domain.next_warehouse_rank(ranks.values())
        await conn.execute(
            insert(warehouses).values(
                code=command.warehouse, rank=ranks[command.warehouse], created_at=at
            )
        )
    waiting = await _waiting_backorders(conn, command.sku, at)
    # One locking read for the restocked SKU and every SKU the waiting orders need.
    skus = {command.sku} | {line.sku for p in waiting for line in p.order.lines}
    book = await _lock_stock(conn, skus)
    key = (command.sku, command.warehouse)
    level = book.levels.get(key)
    if level is None:
        await conn.execute(
            insert(stock).values(
                sku=command.sku,
                warehouse=command.warehouse,
                on_hand=command.quantity,
                reserved=0,
                shipped=0,
            )
        )
        level = domain.Level(command.quantity, 0)
        book = domain.StockBook({**book.levels, key: level}, ranks)
    else:
        await conn.execute(
            update(stock)
            .where(stock.c.sku == command.sku, stock.c.warehouse == command.warehouse)
            .values(on_hand=stock.c.on_hand + command.quantity)
        )
        level.on_hand += command.quantity
    await conn.execute(
        insert(ledger),
        [
            _ledger_row(
                command.sku,
                command.warehouse,
                command.quantity,
                0,
                command.reason,
                None,
                at,
                command.actor,
            )
        ],
    )
    uow.emit(
        StockRestocked(
            sku=command.sku,
            warehouse=command.warehouse,
            quantity=command.quantity,
            on_hand=level.on_hand,
            available=level.available,
            reason=command.reason,
            actor=command.actor,
        )
    )
    served: list[tuple[PendingOrder, tuple[domain.Allocation, ...]]] = []
    for pending in waiting:
        decision = domain.allocate(_wanted(pending.order), book)
        if isinstance(decision, domain.Reserve):
            served.append((pending, decision.allocations))
    await _save_reservations(uow, served, metrics, now)
    if served:
        await conn.execute(
            update(backorders)
            .where(backorders.c.order_id == bindparam("oid"))
            .values(status="reserved"),
            [{"oid": p.order.order_id} for p, _ in served],
        )
    return {
        "sku": command.sku,
        "warehouse": command.warehouse,
        "on_hand": level.on_hand,
        "reserved": level.reserved,
        "available": level.available,
    }


async def _waiting_backorders(conn: AsyncConnection, sku: str, now: float) -> list[PendingOrder]:
    """Waiting backorders that need ``sku``, in the order restocked units go to them."""
    result = await conn.execute(
        select(
            backorders.c.order_id,
            backorders.c.order_doc,
            backorders.c.priority,
            backorders.c.created_at,
        )
        .join(backorder_skus, backorder_skus.c.order_id == backorders.c.order_id)
        .where(backorder_skus.c.sku == sku)
        .where(backorders.c.status == "waiting")
        .where(backorders.c.deadline > now)
        # Locked so the expiry sweep of another replica cannot expire one we are reserving.
        .with_for_update(of=backorders)
    )
    rows = sorted(
        result, key=lambda r: domain.backorder_queue_key(r.priority, r.created_at, r.order_id)
    )
    return [PendingOrder(OrderAccepted.model_validate_json(r.order_doc)) for r in rows]


# --- shipped -> stock leaves --------------------------------------------------------------------


async def deduct_shipped(uow: UnitOfWork, events: list[Envelope]) -> None:
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
        )
        .where(reservations.c.order_id.in_({s.order_id for s in shipments}))
        .where(reservations.c.status == "reserved")
    )
    held: dict[tuple[str, str, str], int] = {(r[0], r[1], r[2]): r[3] for r in result}
    at = time.time()
    stock_rows: list[dict[str, Any]] = []
    shipped_keys: list[dict[str, Any]] = []
    ledger_rows: list[dict[str, Any]] = []
    for shipment in shipments:
        for line in shipment.lines:
            key = (shipment.order_id, line.sku, line.warehouse)
            quantity_held = held.pop(key, None)
            if quantity_held is None:
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
            stock_rows.append(
                {
                    "k_sku": line.sku,
                    "k_wh": line.warehouse,
                    "d_on_hand": units,
                    "d_reserved": quantity_held,
                }
            )
            shipped_keys.append(
                {"k_oid": shipment.order_id, "k_sku": line.sku, "k_wh": line.warehouse}
            )
            ledger_rows.append(
                _ledger_row(
                    line.sku,
                    line.warehouse,
                    -units,
                    -quantity_held,
                    "shipped",
                    shipment.order_id,
                    at,
                    shipment.actor,
                )
            )
    if not stock_rows:
        return
    stock_rows.sort(key=lambda r: (r["k_sku"], r["k_wh"]))
    await conn.execute(
        update(stock)
        .where(stock.c.sku == bindparam("k_sku"))
        .where(stock.c.warehouse == bindparam("k_wh"))
        .values(
            on_hand=stock.c.on_hand - bindparam("d_on_hand"),
            reserved=stock.c.reserved - bindparam("d_reserved"),
            shipped=stock.c.shipped + bindparam("d_on_hand"),
        ),
        stock_rows,
    )
    await conn.execute(
        update(reservations)
        .where(reservations.c.order_id == bindparam("k_oid"))
        .where(reservations.c.sku == bindparam("k_sku"))
        .where(reservations.c.warehouse == bindparam("k_wh"))
        .values(status="shipped"),
        shipped_keys,
    )
    await conn.execute(insert(ledger), ledger_rows)


# --- backorder deadline ----------------------------------------------------------------------------


async def expire_backorders(uow: UnitOfWork, metrics: ServiceMetrics, limit: int = 500) -> int:
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
        metrics.count("backorder_expired", r.channel)
    return len(rows)


# --- reads ----------------------------------------------------------------------------------------


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


async def inventory_stats(conn: AsyncConnection) -> dict[str, Any]:
    by_status = {
        status: n
        for status, n in await conn.execute(
            select(reservations.c.status, func.count()).group_by(reservations.c.status)
        )
    }
    waiting = (
        await conn.execute(
            select(func.count()).select_from(backorders).where(backorders.c.status == "waiting")
        )
    ).scalar_one()
    on_hand, shipped = (
        await conn.execute(
            select(
                func.coalesce(func.sum(stock.c.on_hand), 0),
                func.coalesce(func.sum(stock.c.shipped), 0),
            )
        )
    ).one()
    return {
        "reservations": by_status,
        "backorders_waiting": waiting,
        "on_hand": int(on_hand),
        "shipped": int(shipped),
    }
