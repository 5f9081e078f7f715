"""Inventory's rules: which warehouse serves an order, and in which order backorders are served.

No I/O here. A batch of orders is decided in sequence against one ``StockBook`` that every
decision updates, so the second order of a batch never sees units the first one took.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from shared.contracts.common import PRIORITIES

PRIORITY_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}


@dataclass(slots=True)
class Level:
    """One SKU at one warehouse."""

    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


@dataclass(frozen=True, slots=True)
class Allocation:
    sku: str
    warehouse: str
    quantity: int


@dataclass(frozen=True, slots=True)
class Shortage:
    sku: str
    requested: int
    available: int


@dataclass(frozen=True, slots=True)
class Reserve:
    allocations: tuple[Allocation, ...]


@dataclass(frozen=True, slots=True)
class Backorder:
    shortages: tuple[Shortage, ...]


Decision = Reserve | Backorder


class StockBook:
    """Stock levels as one batch sees them; holding units for an order updates them at once."""

    def __init__(
        self, levels: Mapping[tuple[str, str], Level], warehouse_ranks: Mapping[str, int]
    ) -> None:
        self.levels: dict[tuple[str, str], Level] = dict(levels)
        known = {wh for _, wh in self.levels} | set(warehouse_ranks)
        # Ties (and warehouses without a rank) fall back to the code, so decisions are repeatable.
        self.warehouses: list[str] = sorted(
            known, key=lambda wh: (warehouse_ranks.get(wh, len(known) + 1_000_000), wh)
        )

    def available(self, sku: str, warehouse: str) -> int:
        level = self.levels.get((sku, warehouse))
        return level.available if level else 0

    def total_available(self, sku: str) -> int:
        return sum(self.available(sku, wh) for wh in self.warehouses)

    def hold(self, allocations: Iterable[Allocation]) -> None:
        for a in allocations:
            level = self.levels[(a.sku, a.warehouse)]
            if a.quantity > level.available:
                raise ValueError(f"cannot hold {a.quantity} of {a.sku} at {a.warehouse}")
            level.reserved += a.quantity


def requested(lines: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Units wanted per SKU (an order may list one SKU on several lines), in first-seen order."""
    wanted: dict[str, int] = {}
    for sku, quantity in lines:
        wanted[sku] = wanted.get(sku, 0) + quantity
    return wanted


Planner = Callable[[Mapping[str, int], StockBook], tuple[Allocation, ...] | None]


def from_one_warehouse(wanted: Mapping[str, int], book: StockBook) -> tuple[Allocation, ...] | None:
    """Every line from the best-ranked warehouse that has all of them; one parcel per order."""
    for wh in book.warehouses:
        if all(book.available(sku, wh) >= qty for sku, qty in wanted.items()):
            return tuple(Allocation(sku, wh, qty) for sku, qty in wanted.items())
    return None


# Tried in order; the first plan found is reserved. Splitting an order across warehouses is a
# planner that would go after ``from_one_warehouse`` (a later issue).
PLANNERS: tuple[Planner, ...] = (from_one_warehouse,)


def allocate(wanted: Mapping[str, int], book: StockBook) -> Decision:
    """All or nothing: reserve every unit of the order, or none and backorder it."""
    for plan in PLANNERS:
        allocations = plan(wanted, book)
        if allocations is not None:
            book.hold(allocations)
            return Reserve(allocations)
    return Backorder(shortages(wanted, book))


def allocate_in_sequence(orders: Sequence[Mapping[str, int]], book: StockBook) -> list[Decision]:
    """Decide orders one after another; each sees what the ones before it took."""
    return [allocate(wanted, book) for wanted in orders]


def shortages(wanted: Mapping[str, int], book: StockBook) -> tuple[Shortage, ...]:
    """The SKUs short across all warehouses. When none is (the units exist, but no single
    warehouse has them all), every line is reported so the reader sees why it waits."""
    all_lines = tuple(Shortage(sku, qty, book.total_available(sku)) for sku, qty in wanted.items())
    short = tuple(s for s in all_lines if s.requested > s.available)
    return short or all_lines


def backorder_queue_key(priority: str, created_at: float, order_id: str) -> tuple[int, float, str]:
    """Restocked units go to waiting orders by priority first (urgent, high, normal, low),
    then to the oldest. Order ids (UUIDv7) break ties within one batch in acceptance order."""
    return (PRIORITY_RANK.get(priority, len(PRIORITY_RANK)), created_at, order_id)


def next_warehouse_rank(ranks: Iterable[int]) -> int:
    """A new warehouse is preferred last: it is ranked after every warehouse known so far."""
    return max(ranks, default=0) + 1
