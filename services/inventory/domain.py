"""Inventory's rules: which warehouses serve an order, in which order backorders are served, when
stock is low, and how much to reorder.

No I/O here. A batch of orders is decided in sequence against one ``StockBook`` that every
decision updates, so the second order of a batch never sees units the first one took.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shared.contracts.common import PRIORITIES

PRIORITY_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
DAY_S = 86_400


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

    @property
    def split(self) -> bool:
        return len({a.warehouse for a in self.allocations}) > 1


@dataclass(frozen=True, slots=True)
class Backorder:
    shortages: tuple[Shortage, ...]


Decision = Reserve | Backorder


@dataclass(frozen=True, slots=True)
class Warehouse:
    code: str
    rank: int
    country: str | None = None


class StockBook:
    """Stock levels as one transaction sees them; holding units for an order updates them."""

    def __init__(
        self,
        levels: Mapping[tuple[str, str], Level],
        warehouses: Mapping[str, int] | Iterable[Warehouse],
    ) -> None:
        self.levels: dict[tuple[str, str], Level] = dict(levels)
        if isinstance(warehouses, Mapping):
            known = [Warehouse(code, rank) for code, rank in warehouses.items()]
        else:
            known = list(warehouses)
        by_code = {w.code: w for w in known}
        for _, code in self.levels:
            by_code.setdefault(code, Warehouse(code, 1_000_000_000))
        self.by_code = by_code
        # Ties (and warehouses without a rank) fall back to the code, so decisions are repeatable.
        self.warehouses: list[str] = sorted(by_code, key=lambda c: (by_code[c].rank, c))
        self._nearest: dict[str | None, list[str]] = {None: self.warehouses}

    def preference(self, country: str | None) -> list[str]:
        """Warehouses in the order an order shipping to ``country`` tries them: those in that
        country first (nearest), each group by rank."""
        if country not in self._nearest:
            self._nearest[country] = sorted(
                self.warehouses, key=lambda c: self.by_code[c].country != country
            )
        return self._nearest[country]

    def level(self, sku: str, warehouse: str) -> Level:
        """The level of a SKU at a warehouse, created empty if the book has none yet."""
        key = (sku, warehouse)
        if key not in self.levels:
            self.levels[key] = Level(0, 0)
            if warehouse not in self.by_code:
                self.by_code[warehouse] = Warehouse(warehouse, 1_000_000_000)
                self.warehouses.append(warehouse)
                self._nearest = {None: self.warehouses}
        return self.levels[key]

    def available(self, sku: str, warehouse: str) -> int:
        level = self.levels.get((sku, warehouse))
        return level.available if level else 0

    def total_available(self, sku: str) -> int:
        return sum(level.available for (s, _), level in self.levels.items() if s == sku)

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


def from_one_warehouse(
    wanted: Mapping[str, int], book: StockBook, preference: Sequence[str]
) -> tuple[Allocation, ...] | None:
    """Every line from the first warehouse (in preference order) that has all of them: one
    parcel per order."""
    for wh in preference:
        if all(book.available(sku, wh) >= qty for sku, qty in wanted.items()):
            return tuple(Allocation(sku, wh, qty) for sku, qty in wanted.items())
    return None


def split_across_warehouses(
    wanted: Mapping[str, int], book: StockBook, preference: Sequence[str]
) -> tuple[Allocation, ...] | None:
    """The order from as few warehouses as a greedy choice finds: each step takes the warehouse
    that completes the most remaining lines (then gives the most units; then the preferred one).
    None when some SKU is short across all warehouses together."""
    if any(book.total_available(sku) < qty for sku, qty in wanted.items()):
        return None
    remaining = dict(wanted)
    taken: dict[tuple[str, str], int] = {}
    candidates = list(preference)
    while remaining:

        def score(wh: str) -> tuple[int, int, int]:
            whole = sum(1 for s, q in remaining.items() if book.available(s, wh) >= q)
            units = sum(min(q, book.available(s, wh)) for s, q in remaining.items())
            return (-whole, -units, preference.index(wh))

        best = min(candidates, key=score)
        candidates.remove(best)
        for sku, qty in list(remaining.items()):
            units = min(qty, book.available(sku, best))
            if units > 0:
                taken[(sku, best)] = units
                if units == qty:
                    del remaining[sku]
                else:
                    remaining[sku] = qty - units
    # Keep the order's line order, then the warehouses' preference, so events read naturally.
    sku_order = list(wanted)
    return tuple(
        Allocation(sku, wh, q)
        for (sku, wh), q in sorted(
            taken.items(), key=lambda kv: (sku_order.index(kv[0][0]), preference.index(kv[0][1]))
        )
    )


def allocate(
    wanted: Mapping[str, int],
    book: StockBook,
    *,
    country: str | None = None,
    allow_split: bool = False,
) -> Decision:
    """All or nothing: reserve every unit of the order, or none and backorder it. One warehouse
    when one can serve it all; else several, when splitting is allowed."""
    preference = book.preference(country)
    allocations = from_one_warehouse(wanted, book, preference)
    if allocations is None and allow_split:
        allocations = split_across_warehouses(wanted, book, preference)
    if allocations is None:
        return Backorder(shortages(wanted, book))
    book.hold(allocations)
    return Reserve(allocations)


def shortages(wanted: Mapping[str, int], book: StockBook) -> tuple[Shortage, ...]:
    """The SKUs short across all warehouses. When none is (the units exist, but no single
    warehouse has them all and splitting is off), every line is reported so the reader sees
    why it waits."""
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


# --- returns ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Shipped:
    """What one reservation of an order shipped, and how much of it has come back."""

    warehouse: str
    quantity: int
    returned: int

    @property
    def returnable(self) -> int:
        return self.quantity - self.returned


def take_back(shipped: Sequence[Shipped], quantity: int, warehouse: str) -> int:
    """Book a return of ``quantity`` against what the order shipped of one SKU (the reservation
    at the receiving warehouse first); returns how many units are taken back. More than was
    shipped and not yet returned is not taken: a duplicate or a wrong count must not create
    stock."""
    left = quantity
    for row in sorted(shipped, key=lambda r: r.warehouse != warehouse):
        units = min(left, row.returnable)
        row.returned += units
        left -= units
    return quantity - left


# --- low stock and forecasts -----------------------------------------------------------------


def below_reorder_point(available: int, reorder_point: int | None) -> bool:
    return reorder_point is not None and available < reorder_point


@dataclass(frozen=True, slots=True)
class Forecast:
    daily_demand: float
    days_of_cover: float | None
    suggested_quantity: int


def daily_demand_series(
    units_by_day: Mapping[int, float], now: float, window_days: int
) -> list[float]:
    """Units per day from the first day with demand (within the window) to today, zeros
    included. Today is a day in progress: its units are scaled up to a whole day (from at least
    an hour observed, so one early order does not look like a flood)."""
    today = int(now // DAY_S)
    first_day = today - window_days + 1
    days = [d for d, units in units_by_day.items() if first_day <= d <= today and units > 0]
    if not days:
        return []
    series = [float(units_by_day.get(d, 0)) for d in range(min(days), today + 1)]
    seconds_today = max(now - today * DAY_S, 3600.0)
    series[-1] = series[-1] * DAY_S / seconds_today
    return series


def smoothed(series: Sequence[float], alpha: float) -> float:
    """Simple exponential smoothing: the level after the last observation."""
    if not series:
        return 0.0
    level = series[0]
    for value in series[1:]:
        level = alpha * value + (1 - alpha) * level
    return level


def forecast(
    available: int,
    series: Sequence[float],
    *,
    alpha: float,
    lead_time_days: float,
    target_cover_days: float,
) -> Forecast:
    """Daily demand, days the available units cover, and units to order so that stock lasts
    the lead time plus the target cover."""
    daily = smoothed(series, alpha)
    cover = available / daily if daily > 0 else None
    needed = daily * (lead_time_days + target_cover_days) - max(available, 0)
    # A hair of tolerance: 0.1 + 0.2 style float noise must not order one unit more.
    suggested = max(0, math.ceil(needed - 1e-9))
    return Forecast(daily, cover, suggested)


@dataclass(frozen=True, slots=True)
class Policy:
    """How this inventory decides: splitting, how long backorders wait, what forecasts assume."""

    allow_split: bool = True
    backorder_hold_s: float = 24 * 3600.0
    forecast_alpha: float = 0.3
    forecast_window_days: int = 56
    lead_time_days: float = 7.0
    target_cover_days: float = 14.0
