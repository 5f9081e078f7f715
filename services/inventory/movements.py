"""Applying stock movements: lock the rows, change them, explain every change in the ledger, and
check what the change means (a stock-out, a SKU crossing its reorder point, backorders that can
now be served).

Every handler and command that changes stock goes through one ``StockChange`` per transaction.

Locks, on PostgreSQL, are always taken in this order, so that replicas cannot deadlock on each
other: an order's own backorder and reservation rows, then the waiting backorders a change may
serve (by order id), then stock rows (by SKU, warehouse). SQLite has one writer and ignores
``FOR UPDATE``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table, and_, bindparam, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Insert

from services.inventory import domain
from services.inventory.metrics import Tally
from services.inventory.models import (
    backorder_skus,
    backorders,
    cancellations,
    ledger,
    reservations,
    sku_settings,
    stock,
    warehouses,
)
from shared.consumer import UnitOfWork
from shared.contracts.common import StockLine
from shared.contracts.envelope import Envelope
from shared.contracts.intake import OrderAccepted
from shared.contracts.inventory import LowStock, ReorderSuggested, StockReserved
from shared.db import Bulk, Query, bulk_insert

log = logging.getLogger(__name__)

# Who wrote a ledger row that no person asked for.
SYSTEM_ACTOR = "inventory"
Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class PendingOrder:
    """An order to reserve, and the event that brought it (None when a restock retries it)."""

    order: OrderAccepted
    cause: Envelope | None = None

    def wanted(self) -> dict[str, int]:
        return domain.requested((line.sku, line.quantity) for line in self.order.lines)


@dataclass(slots=True)
class ReorderState:
    reorder_point: int | None
    lead_time_days: float | None
    target_cover_days: float | None
    below: bool


def insert_or_ignore(conn: AsyncConnection, table: Table) -> Insert:
    """INSERT that leaves an existing row (same key) alone, on SQLite and PostgreSQL."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"no insert-or-ignore for {conn.dialect.name}")


# The statements every reservation batch runs, built once: building them per batch cost more
# than running them.
_LOCK_STOCK = Query(
    select(
        stock.c.sku,
        stock.c.warehouse,
        stock.c.on_hand,
        stock.c.reserved,
        warehouses.c.rank,
        warehouses.c.country,
        sku_settings.c.reorder_point,
        sku_settings.c.lead_time_days,
        sku_settings.c.target_cover_days,
        sku_settings.c.below_reorder,
    )
    .join(warehouses, warehouses.c.code == stock.c.warehouse)
    .outerjoin(sku_settings, sku_settings.c.sku == stock.c.sku)
    .where(stock.c.sku.in_(bindparam("skus", expanding=True)))
    .order_by(stock.c.sku, stock.c.warehouse)
    .with_for_update(of=stock)
)
_ADD_TO_STOCK = Bulk(
    update(stock)
    .where(stock.c.sku == bindparam("k_sku"))
    .where(stock.c.warehouse == bindparam("k_wh"))
    .values(
        on_hand=stock.c.on_hand + bindparam("d_on_hand"),
        reserved=stock.c.reserved + bindparam("d_reserved"),
        shipped=stock.c.shipped + bindparam("d_shipped"),
        returned=stock.c.returned + bindparam("d_returned"),
    )
)


class StockChange:
    """The stock rows one transaction touches, locked, and everything it changes in them."""

    def __init__(
        self, uow: UnitOfWork, tally: Tally, policy: domain.Policy, now: datetime | None = None
    ) -> None:
        self.uow = uow
        self.conn = uow.conn
        self.tally = tally
        self.policy = policy
        self.now = now or datetime.now(UTC)
        self.at = self.now.timestamp()
        self.book = domain.StockBook({}, {})
        self.waiting: list[PendingOrder] = []
        self.shipped: Counter[Key] = Counter()
        self.returned: Counter[Key] = Counter()
        self._before: dict[Key, tuple[int, int]] = {}
        self._reorder: dict[str, ReorderState] = {}
        self._ledger: list[dict[str, Any]] = []

    # --- loading -------------------------------------------------------------------------------

    async def ensure(self, keys: Iterable[Key]) -> None:
        """Create the warehouses and (empty) stock rows that do not exist yet, so that they
        can be locked like the others. Another replica creating the same row is fine."""
        wanted = sorted(set(keys))
        if not wanted:
            return
        ranks = dict((await self.conn.execute(select(warehouses.c.code, warehouses.c.rank))).all())
        new_codes = sorted({wh for _, wh in wanted} - set(ranks))
        if new_codes:
            first = domain.next_warehouse_rank(ranks.values())
            await self.conn.execute(
                insert_or_ignore(self.conn, warehouses),
                [
                    {"code": code, "rank": first + i, "country": None, "created_at": self.at}
                    for i, code in enumerate(new_codes)
                ],
            )
        await self.conn.execute(
            insert_or_ignore(self.conn, stock),
            [
                {
                    "sku": sku,
                    "warehouse": wh,
                    "on_hand": 0,
                    "reserved": 0,
                    "shipped": 0,
                    "returned": 0,
                }
                for sku, wh in wanted
            ],
        )

    async def lock(self, skus: Iterable[str], *, serve_backorders: bool = False) -> None:
        """Lock every stock row of these SKUs (and, to serve them, the waiting backorders that
        need them, and the rows of every SKU those orders need)."""
        wanted = set(skus)
        if serve_backorders and wanted:
            self.waiting = await self._lock_waiting(wanted)
            wanted |= {line.sku for p in self.waiting for line in p.order.lines}
        if not wanted:
            return
        rows = await _LOCK_STOCK.all(self.conn, {"skus": sorted(wanted)})
        levels: dict[Key, domain.Level] = {}
        known: dict[str, domain.Warehouse] = {}
        for sku, wh, on_hand, reserved, rank, country, point, lead, cover, below in rows:
            levels[(sku, wh)] = domain.Level(on_hand, reserved)
            known[wh] = domain.Warehouse(wh, rank, country)
            if point is not None and sku not in self._reorder:
                self._reorder[sku] = ReorderState(point, lead, cover, bool(below))
        self._before = {k: (v.on_hand, v.reserved) for k, v in levels.items()}
        self.book = domain.StockBook(levels, known.values())

    async def _lock_waiting(self, skus: set[str]) -> list[PendingOrder]:
        """Waiting backorders that need any of ``skus``, in the order units go to them."""
        result = await self.conn.execute(
            select(
                backorders.c.order_id,
                backorders.c.order_doc,
                backorders.c.priority,
                backorders.c.created_at,
            )
            .where(backorders.c.status == "waiting")
            .where(backorders.c.deadline > self.at)
            .where(
                exists().where(
                    and_(
                        backorder_skus.c.order_id == backorders.c.order_id,
                        backorder_skus.c.sku.in_(sorted(skus)),
                    )
                )
            )
            .where(~exists().where(cancellations.c.order_id == backorders.c.order_id))
            .order_by(backorders.c.order_id)
            # Locked so that the expiry sweep or a cancellation on another replica cannot end
            # one we are reserving.
            .with_for_update(of=backorders)
        )
        rows = sorted(
            result, key=lambda r: domain.backorder_queue_key(r.priority, r.created_at, r.order_id)
        )
        return [PendingOrder(OrderAccepted.model_validate_json(r.order_doc)) for r in rows]

    # --- changing --------------------------------------------------------------------------------

    def level(self, sku: str, warehouse: str) -> domain.Level:
        return self.book.level(sku, warehouse)

    def log(
        self,
        sku: str,
        warehouse: str,
        delta_on_hand: int,
        delta_reserved: int,
        reason: str,
        ref: str | None = None,
        actor: str = SYSTEM_ACTOR,
    ) -> None:
        """A ledger row: why the level changed as it did. The caller changes the level."""
        self._ledger.append(
            {
                "sku": sku,
                "warehouse": warehouse,
                "delta_on_hand": delta_on_hand,
                "delta_reserved": delta_reserved,
                "reason": reason[:64],
                "ref": ref,
                "actor": actor[:64],
                "at": self.at,
                "day": int(self.at // domain.DAY_S),
            }
        )

    async def record_reservations(
        self,
        reserved: Sequence[tuple[PendingOrder, domain.Reserve]],
        *,
        reason: str,
    ) -> None:
        """Write what ``StockBook.hold`` decided (reservations, ledger) and emit StockReserved."""
        if not reserved:
            return
        rows: list[dict[str, Any]] = []
        for pending, decision in reserved:
            order = pending.order
            for a in decision.allocations:
                rows.append(
                    {
                        "order_id": order.order_id,
                        "sku": a.sku,
                        "warehouse": a.warehouse,
                        "quantity": a.quantity,
                        "status": "reserved",
                        "created_at": self.at,
                        "returned": 0,
                    }
                )
                self.log(a.sku, a.warehouse, 0, a.quantity, reason, order.order_id)
            self.uow.emit(
                StockReserved(
                    order_id=order.order_id,
                    allocations=[
                        StockLine(sku=a.sku, warehouse=a.warehouse, quantity=a.quantity)
                        for a in decision.allocations
                    ],
                    priority=order.priority,
                    channel=order.channel,
                    ship_to=order.shipping_address,
                    submitted_at=order.submitted_at,
                    currency=order.currency,
                    unit_prices=unit_prices(order),
                ),
                cause=pending.cause,
                correlation_id=order.order_id,
            )
            self.tally.order("reserved", order.channel)
            self.tally.stages.append(
                ("reserved", order.channel, order.priority, order.submitted_at)
            )
        await bulk_insert(reservations)(self.conn, rows)

    async def serve_waiting(self) -> None:
        """Reserve the waiting backorders the stock now allows, priority first, then oldest."""
        served: list[tuple[PendingOrder, domain.Reserve]] = []
        for pending in self.waiting:
            decision = domain.allocate(
                pending.wanted(),
                self.book,
                country=pending.order.shipping_address.country,
                allow_split=self.policy.allow_split,
            )
            if isinstance(decision, domain.Reserve):
                served.append((pending, decision))
                self.tally.outcomes["backorder_reserved"] += 1
        self.waiting = []
        if not served:
            return
        await self.record_reservations(served, reason="backorder reserved")
        await self.conn.execute(
            update(backorders)
            .where(backorders.c.order_id == bindparam("oid"))
            .values(status="reserved"),
            [{"oid": p.order.order_id} for p, _ in served],
        )

    # --- writing -------------------------------------------------------------------------------

    async def write(self) -> None:
        """Write the changed levels and the ledger; count stock-outs; send LowStock (and a
        reorder suggestion) for SKUs that crossed their reorder point."""
        changes: list[dict[str, Any]] = []
        for key in sorted(self.book.levels):
            level = self.book.levels[key]
            on_hand, reserved = self._before.get(key, (0, 0))
            d_on_hand, d_reserved = level.on_hand - on_hand, level.reserved - reserved
            if d_on_hand or d_reserved or self.shipped[key] or self.returned[key]:
                changes.append(
                    {
                        "k_sku": key[0],
                        "k_wh": key[1],
                        "d_on_hand": d_on_hand,
                        "d_reserved": d_reserved,
                        "d_shipped": self.shipped[key],
                        "d_returned": self.returned[key],
                    }
                )
            if on_hand - reserved > 0 and level.available == 0:
                self.tally.stockouts[key[1]] += 1
        if changes:
            # The rows are locked, so adding to what is there is exact; the table's checks
            # refuse an oversell should the arithmetic here ever be wrong.
            await _ADD_TO_STOCK(self.conn, changes)
        if self._ledger:
            await bulk_insert(ledger)(self.conn, self._ledger)
            self._ledger = []
        await self._check_reorder_points()
        self._before = {k: (v.on_hand, v.reserved) for k, v in self.book.levels.items()}
        self.shipped.clear()
        self.returned.clear()

    async def _check_reorder_points(self) -> None:
        flips: list[dict[str, Any]] = []
        for sku, state in sorted(self._reorder.items()):
            available = self.book.total_available(sku)
            below = domain.below_reorder_point(available, state.reorder_point)
            if below == state.below:
                continue
            state.below = below
            flips.append({"k_sku": sku, "below": below})
            if below:
                assert state.reorder_point is not None
                await emit_low_stock(self.uow, sku, available, state, self.policy, self.at)
        if flips:
            await self.conn.execute(
                update(sku_settings)
                .where(sku_settings.c.sku == bindparam("k_sku"))
                .values(below_reorder=bindparam("below")),
                flips,
            )


async def emit_low_stock(
    uow: UnitOfWork,
    sku: str,
    available: int,
    state: ReorderState,
    policy: domain.Policy,
    now: float,
) -> None:
    """LowStock, and what to reorder according to the SKU's own demand history."""
    assert state.reorder_point is not None
    uow.emit(LowStock(sku=sku, available=available, reorder_point=state.reorder_point))
    demand = await demand_by_day(uow.conn, [sku], now, policy.forecast_window_days)
    lead = state.lead_time_days or policy.lead_time_days
    cover = state.target_cover_days or policy.target_cover_days
    outlook = domain.forecast(
        available,
        domain.daily_demand_series(demand.get(sku, {}), now, policy.forecast_window_days),
        alpha=policy.forecast_alpha,
        lead_time_days=lead,
        target_cover_days=cover,
    )
    uow.emit(
        ReorderSuggested(
            sku=sku,
            available=available,
            daily_demand=round(outlook.daily_demand, 3),
            days_of_cover=None
            if outlook.days_of_cover is None
            else round(outlook.days_of_cover, 2),
            suggested_quantity=outlook.suggested_quantity,
            lead_time_days=lead,
            target_cover_days=cover,
        )
    )


async def demand_by_day(
    conn: AsyncConnection, skus: Sequence[str] | None, now: float, window_days: int
) -> dict[str, dict[int, float]]:
    """Units customers asked for, per SKU and day: what was reserved at once (ledger reason
    "reserved") plus what had to wait (backorders, counted on the day they came in; their later
    reservation is "backorder reserved" and not counted again)."""
    first_day = int(now // domain.DAY_S) - window_days + 1
    waited_q = (
        select(backorder_skus.c.sku, backorders.c.created_at, backorder_skus.c.quantity)
        .join(backorders, backorders.c.order_id == backorder_skus.c.order_id)
        .where(backorders.c.created_at >= first_day * domain.DAY_S)
    )
    summed = (
        select(ledger.c.sku, ledger.c.day, func.sum(ledger.c.delta_reserved))
        .where(ledger.c.reason == "reserved")
        .where(ledger.c.day >= first_day)
        .group_by(ledger.c.sku, ledger.c.day)
    )
    if skus is not None:
        summed = summed.where(ledger.c.sku.in_(list(skus)))
        waited_q = waited_q.where(backorder_skus.c.sku.in_(list(skus)))
    out: dict[str, dict[int, float]] = {}
    for sku, day, units in await conn.execute(summed):
        out.setdefault(sku, {})[int(day)] = float(units or 0)
    for sku, created_at, quantity in await conn.execute(waited_q):
        days = out.setdefault(sku, {})
        day = int(created_at // domain.DAY_S)
        days[day] = days.get(day, 0.0) + quantity
    return out


def unit_prices(order: OrderAccepted) -> dict[str, Decimal]:
    """Unit price per SKU, for refunds. When one SKU is on several lines at different prices,
    the lowest: a refund never pays back more than a unit cost."""
    prices: dict[str, Decimal] = {}
    for line in order.lines:
        prices[line.sku] = min(prices.get(line.sku, line.unit_price), line.unit_price)
    return prices
