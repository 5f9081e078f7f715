"""Returns (after-sales): the customer sends delivered goods back, the warehouse receives them,
inventory restocks them and finance is told the refund. Load, decide, save, emit, like the
handlers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import bindparam, insert, select, update

from services.fulfillment import domain, handlers
from services.fulfillment.metrics import FulfillmentMetrics
from services.fulfillment.models import orders, returns, shipment_log, shipments
from services.fulfillment.views import return_view
from shared.consumer import UnitOfWork
from shared.contracts.common import StockLine
from shared.contracts.fulfillment import (
    RefundDue,
    ReturnReceipt,
    ReturnReceived,
    ReturnRequest,
    ReturnRequested,
)
from shared.ids import uuid7
from shared.rpc import CommandRefused

log = logging.getLogger(__name__)


async def request_return(
    uow: UnitOfWork, command: ReturnRequest, metrics: FulfillmentMetrics
) -> list[dict[str, Any]]:
    """Record what the customer sends back, per shipment it came from; refused with the reason
    when the order has nothing (or not that much) delivered and not already returned."""
    rows = (
        (
            await uow.conn.execute(
                select(shipments)
                .where(shipments.c.order_id == command.order_id)
                .order_by(shipments.c.shipment_id)
                .with_for_update()
            )
        )
        .mappings()
        .all()
    )
    if not rows:
        raise handlers.ShipmentNotFound(f"no shipment for order {command.order_id}")
    already: dict[str, dict[str, int]] = {}
    for return_row in (
        await uow.conn.execute(
            select(returns.c.shipment_id, returns.c.lines).where(
                returns.c.order_id == command.order_id
            )
        )
    ).mappings():
        counts = already.setdefault(return_row["shipment_id"], {})
        for sku, quantity in orjson.loads(return_row["lines"]).items():
            counts[sku] = counts.get(sku, 0) + quantity
    delivered = [
        domain.Delivered(
            r["shipment_id"],
            r["warehouse"],
            _sku_quantities(orjson.loads(r["lines"])),
            already.get(r["shipment_id"], {}),
        )
        for r in rows
        if r["status"] == "delivered"
    ]
    requested: dict[str, int] | None = None
    if command.lines is not None:
        requested = {}
        for line in command.lines:
            requested[line.sku] = requested.get(line.sku, 0) + line.quantity
    plan = domain.plan_return(command.order_id, delivered, requested)
    if isinstance(plan, domain.Refusal):
        raise CommandRefused(plan.reason)

    ts = time.time()
    warehouse_of = {r["shipment_id"]: r["warehouse"] for r in rows}
    new_rows: list[dict[str, Any]] = []
    log_rows: list[dict[str, Any]] = []
    for shipment_id, lines in plan.items():
        return_id = uuid7()
        new_rows.append(
            {
                "return_id": return_id,
                "order_id": command.order_id,
                "shipment_id": shipment_id,
                "warehouse": warehouse_of[shipment_id],
                "lines": orjson.dumps(lines),
                "status": "requested",
                "reason": command.reason,
                "requested_at": ts,
                "requested_by": command.actor,
            }
        )
        log_rows.append(
            {
                "shipment_id": shipment_id,
                "order_id": command.order_id,
                "action": "return",
                "actor": command.actor,
                "at": ts,
                "detail": f"return {return_id} requested: {_items(lines)} ({command.reason})",
            }
        )
        uow.emit(
            ReturnRequested(
                order_id=command.order_id,
                return_id=return_id,
                shipment_id=shipment_id,
                lines=_stock_lines(lines, warehouse_of[shipment_id]),
                reason=command.reason,
                actor=command.actor,
            )
        )
    await uow.conn.execute(insert(returns), new_rows)
    await uow.conn.execute(insert(shipment_log), log_rows)
    handlers.after_commit(uow, lambda: metrics.returns.labels("requested").inc(len(new_rows)))
    return [return_view(r) for r in new_rows]


async def receive_return(
    uow: UnitOfWork, command: ReturnReceipt, metrics: FulfillmentMetrics
) -> list[dict[str, Any]]:
    """The goods of the order's open returns (or the one named) are back: inventory restocks
    them (ReturnReceived) and finance is told what to refund (RefundDue, at the prices paid).

    Without prices on the reservation no RefundDue is sent: a refund of 0, or of a guessed
    amount, would be a wrong instruction to finance. The return records why, and it is logged."""
    query = (
        select(returns)
        .where(returns.c.order_id == command.order_id)
        .order_by(returns.c.return_id)
        .with_for_update()
    )
    if command.return_id is not None:
        query = query.where(returns.c.return_id == command.return_id)
    found = [dict(r) for r in (await uow.conn.execute(query)).mappings()]
    waiting = [r for r in found if r["status"] == "requested"]
    if not waiting:
        if not found:
            what = f"return {command.return_id}" if command.return_id else "return"
            raise handlers.ShipmentNotFound(f"no {what} requested for order {command.order_id}")
        raise CommandRefused(f"every return of order {command.order_id} is already received")
    order = (
        (await uow.conn.execute(select(orders).where(orders.c.order_id == command.order_id)))
        .mappings()
        .first()
    )
    prices = None
    currency = None
    if order is not None and order["unit_prices"] is not None:
        prices = {sku: Decimal(p) for sku, p in orjson.loads(order["unit_prices"]).items()}
        currency = order["currency"]

    ts = time.time()
    updates: list[dict[str, Any]] = []
    log_rows: list[dict[str, Any]] = []
    unpriced = 0
    for row in waiting:
        lines: dict[str, int] = orjson.loads(row["lines"])
        row.update(status="received", received_at=ts, received_by=command.actor)
        uow.emit(
            ReturnReceived(
                order_id=row["order_id"],
                shipment_id=row["shipment_id"],
                lines=_stock_lines(lines, row["warehouse"]),
                actor=command.actor,
                return_id=row["return_id"],
            )
        )
        refund = domain.refund_for(lines, prices, currency)
        if isinstance(refund, domain.Refund):
            row.update(refund_amount=str(refund.amount), currency=refund.currency)
            uow.emit(
                RefundDue(
                    order_id=row["order_id"],
                    amount=refund.amount,
                    currency=refund.currency,
                    reason=f"return {row['return_id']}: {refund.reason}",
                    return_id=row["return_id"],
                )
            )
            detail = (
                f"return {row['return_id']} received; refund due {refund.amount} {refund.currency}"
            )
        else:
            unpriced += 1
            row["refund_note"] = f"no refund event sent: {refund.reason}"
            log.warning(
                "order %s return %s: %s; finance must settle it by hand",
                row["order_id"],
                row["return_id"],
                refund.reason,
            )
            detail = f"return {row['return_id']} received; {row['refund_note']}"
        updates.append(
            {
                "b_return_id": row["return_id"],
                "b_at": ts,
                "b_actor": command.actor,
                "b_amount": row["refund_amount"],
                "b_currency": row["currency"],
                "b_note": row["refund_note"],
            }
        )
        log_rows.append(
            {
                "shipment_id": row["shipment_id"],
                "order_id": row["order_id"],
                "action": "return-received",
                "actor": command.actor,
                "at": ts,
                "detail": detail,
            }
        )
    await uow.conn.execute(
        update(returns)
        .where(returns.c.return_id == bindparam("b_return_id"))
        .where(returns.c.status == "requested")
        .values(
            status="received",
            received_at=bindparam("b_at"),
            received_by=bindparam("b_actor"),
            refund_amount=bindparam("b_amount"),
            currency=bindparam("b_currency"),
            refund_note=bindparam("b_note"),
        ),
        updates,
    )
    await uow.conn.execute(insert(shipment_log), log_rows)

    def record() -> None:
        metrics.returns.labels("received").inc(len(updates))
        if len(updates) > unpriced:
            metrics.returns.labels("refund_due").inc(len(updates) - unpriced)
        if unpriced:
            metrics.returns.labels("refund_unpriced").inc(unpriced)

    handlers.after_commit(uow, record)
    return [return_view(r) for r in waiting]


def _sku_quantities(lines: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lines:
        out[line["sku"]] = out.get(line["sku"], 0) + int(line["quantity"])
    return out


def _stock_lines(lines: Mapping[str, int], warehouse: str) -> list[StockLine]:
    return [
        StockLine(sku=sku, warehouse=warehouse, quantity=quantity)
        for sku, quantity in sorted(lines.items())
    ]


def _items(lines: Mapping[str, int]) -> str:
    return ", ".join(f"{quantity} x {sku}" for sku, quantity in sorted(lines.items()))
