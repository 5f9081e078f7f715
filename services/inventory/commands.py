"""Inventory's operator commands (CLI, HTTP and NATS all end here): restock, adjust, transfer,
reorder settings and warehouses. Each runs in one transaction and answers with what it changed;
an illegal one raises ``CommandRefused`` with the reason, and changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update

from services.inventory import domain
from services.inventory.metrics import InventoryMetrics
from services.inventory.models import sku_settings, stock, warehouses
from services.inventory.movements import (
    ReorderState,
    StockChange,
    emit_low_stock,
    insert_or_ignore,
)
from services.inventory.queries import forecasts
from shared.consumer import UnitOfWork
from shared.contracts.inventory import (
    AdjustStock,
    RestockStock,
    SetReorderPoint,
    SetWarehouse,
    StockAdjusted,
    StockRestocked,
    StockTransferred,
    TransferStock,
)
from shared.ids import uuid7
from shared.rpc import CommandRefused


def _row(sku: str, warehouse: str, level: domain.Level) -> dict[str, Any]:
    return {
        "sku": sku,
        "warehouse": warehouse,
        "on_hand": level.on_hand,
        "reserved": level.reserved,
        "available": level.available,
    }


async def restock(
    uow: UnitOfWork, command: RestockStock, metrics: InventoryMetrics, policy: domain.Policy
) -> dict[str, Any]:
    """Add units at a warehouse, then serve the waiting backorders they make possible."""
    change = StockChange(uow, metrics.tally(uow), policy)
    await change.ensure([(command.sku, command.warehouse)])
    await change.lock([command.sku], serve_backorders=True)
    level = change.level(command.sku, command.warehouse)
    level.on_hand += command.quantity
    change.log(
        command.sku,
        command.warehouse,
        command.quantity,
        0,
        command.reason,
        actor=command.actor,
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
    await change.serve_waiting()
    await change.write()
    return _row(command.sku, command.warehouse, level)


async def adjust(
    uow: UnitOfWork, command: AdjustStock, metrics: InventoryMetrics, policy: domain.Policy
) -> dict[str, Any]:
    """Correct a count. Units reserved for orders cannot be adjusted away: release or ship
    those orders first."""
    change = StockChange(uow, metrics.tally(uow), policy)
    if command.delta > 0:
        await change.ensure([(command.sku, command.warehouse)])
    await change.lock([command.sku], serve_backorders=command.delta > 0)
    if (command.sku, command.warehouse) not in change.book.levels:
        raise CommandRefused(
            f"no stock of {command.sku} at {command.warehouse} to take away",
            [{"field": "delta", "reason": "nothing on hand there"}],
        )
    level = change.level(command.sku, command.warehouse)
    if command.delta < 0 and -command.delta > level.available:
        raise CommandRefused(
            f"only {level.available} of {command.sku} at {command.warehouse} are not reserved "
            f"({level.reserved} are held for orders); cannot take away {-command.delta}",
            [{"field": "delta", "reason": f"at least -{level.available}"}],
        )
    level.on_hand += command.delta
    change.log(
        command.sku, command.warehouse, command.delta, 0, command.reason, actor=command.actor
    )
    uow.emit(
        StockAdjusted(
            sku=command.sku,
            warehouse=command.warehouse,
            delta=command.delta,
            on_hand=level.on_hand,
            available=level.available,
            reason=command.reason,
            actor=command.actor,
        )
    )
    await change.serve_waiting()
    await change.write()
    return _row(command.sku, command.warehouse, level)


async def transfer(
    uow: UnitOfWork, command: TransferStock, metrics: InventoryMetrics, policy: domain.Policy
) -> list[dict[str, Any]]:
    """Move available units between warehouses: two ledger rows under one reference."""
    change = StockChange(uow, metrics.tally(uow), policy)
    await change.ensure([(command.sku, command.to_warehouse)])
    # Units in another warehouse may let a waiting order be served from one parcel.
    await change.lock([command.sku], serve_backorders=True)
    source = change.book.levels.get((command.sku, command.from_warehouse))
    available = source.available if source else 0
    if source is None or command.quantity > available:
        raise CommandRefused(
            f"only {available} of {command.sku} at {command.from_warehouse} are available "
            f"to transfer; asked for {command.quantity}",
            [{"field": "quantity", "reason": f"at most {available}"}],
        )
    target = change.level(command.sku, command.to_warehouse)
    source.on_hand -= command.quantity
    target.on_hand += command.quantity
    ref = uuid7()
    change.log(
        command.sku,
        command.from_warehouse,
        -command.quantity,
        0,
        command.reason,
        ref,
        command.actor,
    )
    change.log(
        command.sku, command.to_warehouse, command.quantity, 0, command.reason, ref, command.actor
    )
    uow.emit(
        StockTransferred(
            sku=command.sku,
            from_warehouse=command.from_warehouse,
            to_warehouse=command.to_warehouse,
            quantity=command.quantity,
            reason=command.reason,
            actor=command.actor,
        )
    )
    await change.serve_waiting()
    await change.write()
    return [
        _row(command.sku, command.from_warehouse, source),
        _row(command.sku, command.to_warehouse, target),
    ]


async def set_reorder_point(
    uow: UnitOfWork, command: SetReorderPoint, policy: domain.Policy
) -> dict[str, Any]:
    """Store a SKU's reorder settings; a SKU already below the new point is low at once."""
    conn = uow.conn
    # The SKU's stock rows are locked, as every change that may cross the point locks them.
    await conn.execute(
        select(stock.c.sku)
        .where(stock.c.sku == command.sku)
        .order_by(stock.c.warehouse)
        .with_for_update()
    )
    available = (
        await conn.execute(
            select(func.coalesce(func.sum(stock.c.on_hand - stock.c.reserved), 0)).where(
                stock.c.sku == command.sku
            )
        )
    ).scalar_one()
    was_below = (
        await conn.execute(
            select(sku_settings.c.below_reorder).where(sku_settings.c.sku == command.sku)
        )
    ).scalar()
    below = domain.below_reorder_point(int(available), command.reorder_point)
    values = {
        "reorder_point": command.reorder_point,
        "lead_time_days": command.lead_time_days,
        "target_cover_days": command.target_cover_days,
        "below_reorder": below,
        "updated_at": datetime.now(UTC).timestamp(),
        "updated_by": command.actor,
    }
    if was_below is None:
        await conn.execute(insert_or_ignore(conn, sku_settings), [{"sku": command.sku, **values}])
    await conn.execute(
        update(sku_settings).where(sku_settings.c.sku == command.sku).values(**values)
    )
    if below and not was_below:
        state = ReorderState(
            command.reorder_point, command.lead_time_days, command.target_cover_days, below
        )
        await emit_low_stock(
            uow, command.sku, int(available), state, policy, datetime.now(UTC).timestamp()
        )
    [outlook] = await forecasts(conn, policy, command.sku)
    return outlook


async def set_warehouse(uow: UnitOfWork, command: SetWarehouse) -> dict[str, Any]:
    conn = uow.conn
    ranks = dict((await conn.execute(select(warehouses.c.code, warehouses.c.rank))).all())
    if command.code not in ranks:
        await conn.execute(
            insert_or_ignore(conn, warehouses),
            [
                {
                    "code": command.code,
                    "rank": command.rank or domain.next_warehouse_rank(ranks.values()),
                    "country": command.country,
                    "created_at": datetime.now(UTC).timestamp(),
                    "updated_by": command.actor,
                }
            ],
        )
    else:
        changes: dict[str, Any] = {}
        if command.rank is not None:
            changes["rank"] = command.rank
        if command.country is not None:
            changes["country"] = command.country
        if changes:
            changes["updated_by"] = command.actor
            await conn.execute(
                update(warehouses).where(warehouses.c.code == command.code).values(**changes)
            )
    row = (await conn.execute(select(warehouses).where(warehouses.c.code == command.code))).one()
    return {"code": row.code, "rank": row.rank, "country": row.country}
