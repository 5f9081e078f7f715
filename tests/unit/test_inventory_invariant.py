"""Property: whatever sequence of restocks, adjustments, transfers, orders, cancellations,
shipments and returns arrives, every SKU at every warehouse keeps on hand = available +
reserved with none negative, reserved equals the open reservations, the ledger explains every
unit, and nothing is lost: restocked + adjusted + returned = on hand + shipped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from services.inventory import commands, domain, handlers
from services.inventory.metrics import InventoryMetrics
from services.inventory.models import backorders, ledger, metadata, reservations, stock
from shared.consumer import UnitOfWork
from shared.contracts.common import Address, Customer, OrderLine, StockLine
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.fulfillment import OrderCancelled, ReturnReceived, ShipmentShipped
from shared.contracts.intake import OrderAccepted
from shared.contracts.inventory import AdjustStock, RestockStock, TransferStock
from shared.db import Database
from shared.ids import uuid7
from shared.metrics import ServiceMetrics
from shared.rpc import CommandRefused
from tests.conftest import run_outside_loop

T = TypeVar("T")
SKUS = ("AAA-1", "BBB-2")
WAREHOUSES = ("WH-1", "WH-2")
ADDRESS = Address(name="Ada", line1="1 Road", city="Hangzhou", postal_code="310000", country="CN")

sku = st.sampled_from(SKUS)
warehouse = st.sampled_from(WAREHOUSES)
# Orders, ships and returns are drawn more often than the rest, so that sequences reach
# shipped-then-returned orders and short shipments.
operation = st.one_of(
    st.tuples(st.just("restock"), sku, warehouse, st.integers(1, 6)),
    st.tuples(st.just("adjust"), sku, warehouse, st.integers(-6, 6).filter(bool)),
    st.tuples(st.just("transfer"), sku, warehouse, warehouse, st.integers(1, 6)),
    st.tuples(
        st.just("order"),
        st.lists(st.tuples(sku, st.integers(1, 4)), min_size=1, max_size=3),
        st.sampled_from(("urgent", "normal", "low")),
    ),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("ship"), st.integers(0, 30), st.booleans()),
    st.tuples(st.just("return"), st.integers(0, 30), st.integers(1, 5), warehouse),
)
operation = st.one_of(
    operation,
    st.tuples(
        st.just("order"),
        st.lists(st.tuples(sku, st.integers(1, 3)), min_size=1, max_size=2),
        st.just("normal"),
    ),
    st.tuples(st.just("ship"), st.integers(0, 30), st.booleans()),
    st.tuples(st.just("return"), st.integers(0, 30), st.integers(1, 5), warehouse),
)


def accepted(lines: list[tuple[str, int]], priority: str) -> Envelope:
    order_lines = [OrderLine(sku=s, quantity=q, unit_price=Decimal("1.00")) for s, q in lines]
    order_id = uuid7()
    return new_envelope(
        OrderAccepted(
            order_id=order_id,
            channel="web",
            external_id=order_id,
            customer=Customer(name="Ada", email="ada@example.com"),
            lines=order_lines,
            currency="CNY",
            total=sum((line.unit_price * line.quantity for line in order_lines), Decimal("0")),
            shipping_address=ADDRESS,
            priority=priority,  # type: ignore[arg-type]
            submitted_at=datetime.now(UTC),
        )
    )


class Scenario:
    def __init__(self, db: Database, policy: domain.Policy) -> None:
        self.db = db
        self.policy = policy
        self.metrics = InventoryMetrics(ServiceMetrics("inventory"))
        self.orders: list[str] = []
        self.refused = 0

    async def run(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> None:
        try:
            async with self.db.transaction() as conn:
                await work(UnitOfWork(conn))
        except (CommandRefused, handlers.ShipmentNotAppliedYet):
            # Refused: the transaction rolled back, which must leave everything consistent.
            self.refused += 1

    async def lines_of(self, pick: int, status: str) -> tuple[str, list[StockLine]] | None:
        """The lines of one order (chosen by ``pick``) among those with reservations in
        ``status``, so that ships and returns find something to act on."""
        async with self.db.reading() as conn:
            rows = (
                await conn.execute(
                    select(
                        reservations.c.order_id,
                        reservations.c.sku,
                        reservations.c.warehouse,
                        reservations.c.quantity,
                    )
                    .where(reservations.c.status == status)
                    .order_by(reservations.c.order_id, reservations.c.sku)
                )
            ).all()
        orders = sorted({r.order_id for r in rows})
        if not orders:
            return None
        order_id = orders[pick % len(orders)]
        return order_id, [
            StockLine(sku=r.sku, warehouse=r.warehouse, quantity=r.quantity)
            for r in rows
            if r.order_id == order_id
        ]

    async def apply(self, op: tuple[Any, ...]) -> None:
        m, p = self.metrics, self.policy
        kind = op[0]
        if kind == "restock":
            command = RestockStock(sku=op[1], warehouse=op[2], quantity=op[3], actor="prop")
            await self.run(lambda u: commands.restock(u, command, m, p))
        elif kind == "adjust":
            adjust = AdjustStock(sku=op[1], warehouse=op[2], delta=op[3], reason="count", actor="p")
            await self.run(lambda u: commands.adjust(u, adjust, m, p))
        elif kind == "transfer":
            if op[2] == op[3]:
                return
            move = TransferStock(
                sku=op[1], from_warehouse=op[2], to_warehouse=op[3], quantity=op[4]
            )
            await self.run(lambda u: commands.transfer(u, move, m, p))
        elif kind == "order":
            env = accepted(op[1], op[2])
            self.orders.append(env.key)
            await self.run(lambda u: handlers.reserve_orders(u, [env], m, p))
        elif not self.orders:
            return
        elif kind == "cancel":
            order_id = self.orders[op[1] % len(self.orders)]
            event = new_envelope(OrderCancelled(order_id=order_id, reason="r", actor="a"))
            await self.run(lambda u: handlers.release_cancelled(u, [event], m, p))
        elif kind == "ship":
            found = await self.lines_of(op[1], "reserved")
            if found is None:
                return
            order_id, lines = found
            if op[2]:
                # A short shipment: one unit fewer of the first line (the rest is released).
                first = lines[0]
                lines[0] = first.model_copy(update={"quantity": max(first.quantity - 1, 1)})
            shipped = new_envelope(
                ShipmentShipped(
                    order_id=order_id,
                    shipment_id=uuid7(),
                    warehouse=lines[0].warehouse,
                    actor="picker",
                    submitted_at=datetime.now(UTC),
                    carrier="SF",
                    tracking_number="1",
                    lines=lines,
                )
            )
            await self.run(lambda u: handlers.deduct_shipped(u, [shipped], m, p))
        elif kind == "return":
            found = await self.lines_of(op[1], "shipped")
            if found is None:
                return
            order_id, lines = found
            # Sometimes more than shipped (a duplicate report): the excess must be refused.
            back = lines[0].model_copy(update={"warehouse": op[3], "quantity": op[2]})
            returned = new_envelope(
                ReturnReceived(order_id=order_id, shipment_id=uuid7(), lines=[back], actor="desk")
            )
            await self.run(lambda u: handlers.restock_returns(u, [returned], m, p))


async def check_invariants(db: Database) -> None:
    async with db.reading() as conn:
        rows = (await conn.execute(select(stock))).all()
        held = dict(
            (
                await conn.execute(
                    select(
                        reservations.c.sku + "@" + reservations.c.warehouse,
                        func.sum(reservations.c.quantity),
                    )
                    .where(reservations.c.status == "reserved")
                    .group_by(reservations.c.sku, reservations.c.warehouse)
                )
            ).all()
        )
        moves = {
            f"{r.sku}@{r.warehouse}": (r.on_hand, r.reserved)
            for r in await conn.execute(
                select(
                    ledger.c.sku,
                    ledger.c.warehouse,
                    func.sum(ledger.c.delta_on_hand).label("on_hand"),
                    func.sum(ledger.c.delta_reserved).label("reserved"),
                ).group_by(ledger.c.sku, ledger.c.warehouse)
            )
        }
        brought_in = dict(
            (
                await conn.execute(
                    select(ledger.c.sku, func.sum(ledger.c.delta_on_hand))
                    .where(ledger.c.reason.not_in(("shipped", "return")))
                    .group_by(ledger.c.sku)
                )
            ).all()
        )
        # An order is reserved or waiting, never both.
        both = (
            await conn.execute(
                select(func.count())
                .select_from(backorders)
                .where(backorders.c.status == "waiting")
                .where(
                    backorders.c.order_id.in_(
                        select(reservations.c.order_id).where(reservations.c.status == "reserved")
                    )
                )
            )
        ).scalar_one()
    assert both == 0
    totals: dict[str, int] = {}
    for r in rows:
        key = f"{r.sku}@{r.warehouse}"
        available = r.on_hand - r.reserved
        assert r.on_hand == available + r.reserved
        assert available >= 0 and r.reserved >= 0 and r.shipped >= 0 and r.returned >= 0, r
        assert r.reserved == held.get(key, 0), r
        assert (r.on_hand, r.reserved) == moves.get(key, (0, 0)), r
        totals[r.sku] = totals.get(r.sku, 0) + r.on_hand + r.shipped - r.returned
    for s, total in totals.items():
        assert total == brought_in.get(s, 0), s


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.lists(st.integers(0, 8), min_size=4, max_size=4),
    ops=st.lists(operation, min_size=8, max_size=30),
    allow_split=st.booleans(),
)
def test_no_sequence_of_stock_events_breaks_the_invariant(
    seed: list[int], ops: list[tuple[Any, ...]], allow_split: bool
) -> None:
    async def scenario() -> None:
        db = Database("sqlite+aiosqlite:///:memory:", metadata)
        await db.create_schema()
        try:
            play = Scenario(db, domain.Policy(allow_split=allow_split))
            stocked = [(s, w) for s in SKUS for w in WAREHOUSES]
            for (s, w), units in zip(stocked, seed, strict=True):
                if units:
                    await play.apply(("restock", s, w, units))
            for op in ops:
                await play.apply(op)
                await check_invariants(db)
        finally:
            await db.close()

    run_outside_loop(scenario())
