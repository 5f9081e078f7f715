"""Inventory's rules: one warehouse or a split, all or nothing, never oversold; returns never
exceed shipments; forecasts from daily demand."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.inventory import domain
from services.inventory.domain import Allocation, Backorder, Level, Reserve, StockBook


def book(levels: dict[tuple[str, str], int], ranks: dict[str, int]) -> StockBook:
    return StockBook({k: Level(on_hand, 0) for k, on_hand in levels.items()}, ranks)


def test_the_best_ranked_warehouse_that_has_everything_serves_the_order() -> None:
    stock = book(
        {("TEA-1", "WH-B"): 10, ("TEA-1", "WH-A"): 10, ("CUP-1", "WH-A"): 10},
        {"WH-A": 2, "WH-B": 1},
    )

    assert domain.allocate({"TEA-1": 3}, stock) == Reserve((Allocation("TEA-1", "WH-B", 3),))
    # WH-B is preferred but has no cups: the whole order goes to WH-A, not split.
    assert domain.allocate({"TEA-1": 2, "CUP-1": 1}, stock) == Reserve(
        (Allocation("TEA-1", "WH-A", 2), Allocation("CUP-1", "WH-A", 1))
    )
    assert stock.available("TEA-1", "WH-B") == 7
    assert stock.available("TEA-1", "WH-A") == 8
    assert stock.available("CUP-1", "WH-A") == 9


def test_all_or_nothing_leaves_stock_untouched_and_reports_the_shortage() -> None:
    stock = book({("TEA-1", "WH-A"): 5, ("CUP-1", "WH-A"): 1}, {"WH-A": 1})

    decision = domain.allocate({"TEA-1": 2, "CUP-1": 3}, stock)

    assert decision == Backorder((domain.Shortage("CUP-1", 3, 1),))
    assert stock.available("TEA-1", "WH-A") == 5
    assert stock.available("CUP-1", "WH-A") == 1


def test_stock_spread_over_warehouses_backorders_unless_splitting_is_allowed() -> None:
    # 3 + 3 teas would cover 5, but not from one warehouse.
    stock = book({("TEA-1", "WH-A"): 3, ("TEA-1", "WH-B"): 3}, {"WH-A": 1, "WH-B": 2})

    assert domain.allocate({"TEA-1": 5}, stock) == Backorder((domain.Shortage("TEA-1", 5, 6),))
    split = domain.allocate({"TEA-1": 5}, stock, allow_split=True)

    assert split == Reserve((Allocation("TEA-1", "WH-A", 3), Allocation("TEA-1", "WH-B", 2)))
    assert isinstance(split, Reserve) and split.split
    assert stock.total_available("TEA-1") == 1


def test_a_split_uses_few_warehouses_and_one_is_still_preferred_when_it_has_everything() -> None:
    stock = book(
        {
            ("TEA-1", "WH-A"): 1,
            ("TEA-1", "WH-C"): 5,
            ("CUP-1", "WH-B"): 1,
            ("CUP-1", "WH-C"): 5,
            ("POT-1", "WH-B"): 4,
        },
        {"WH-A": 1, "WH-B": 2, "WH-C": 3},
    )

    whole = domain.allocate({"TEA-1": 1, "CUP-1": 1}, stock, allow_split=True)
    split = domain.allocate({"TEA-1": 2, "CUP-1": 2, "POT-1": 1}, stock, allow_split=True)

    # WH-C has both: one parcel, though WH-A is preferred.
    assert whole == Reserve((Allocation("TEA-1", "WH-C", 1), Allocation("CUP-1", "WH-C", 1)))
    # Nobody has all three: WH-C completes two lines, WH-B the pot; preferred WH-A is not needed.
    assert split == Reserve(
        (
            Allocation("TEA-1", "WH-C", 2),
            Allocation("CUP-1", "WH-C", 2),
            Allocation("POT-1", "WH-B", 1),
        )
    )


def test_a_split_is_refused_when_a_sku_is_short_everywhere() -> None:
    stock = book({("TEA-1", "WH-A"): 2, ("CUP-1", "WH-B"): 9}, {"WH-A": 1, "WH-B": 2})

    decision = domain.allocate({"TEA-1": 3, "CUP-1": 1}, stock, allow_split=True)

    assert decision == Backorder((domain.Shortage("TEA-1", 3, 2),))
    assert stock.available("CUP-1", "WH-B") == 9


def test_warehouses_in_the_ship_to_country_come_first() -> None:
    stock = StockBook(
        {("TEA-1", "WH-SH"): Level(5, 0), ("TEA-1", "WH-SG"): Level(5, 0)},
        [domain.Warehouse("WH-SH", 1, "CN"), domain.Warehouse("WH-SG", 2, "SG")],
    )

    assert stock.preference("SG") == ["WH-SG", "WH-SH"]
    assert stock.preference("CN") == ["WH-SH", "WH-SG"]
    assert stock.preference("GB") == ["WH-SH", "WH-SG"]
    assert domain.allocate({"TEA-1": 1}, stock, country="SG") == Reserve(
        (Allocation("TEA-1", "WH-SG", 1),)
    )


def test_unknown_sku_is_short_with_nothing_available() -> None:
    stock = book({("TEA-1", "WH-A"): 3}, {"WH-A": 1})

    assert domain.allocate({"NEW-9": 1}, stock) == Backorder((domain.Shortage("NEW-9", 1, 0),))


def test_orders_in_a_batch_are_decided_in_sequence_and_never_oversell() -> None:
    stock = book({("TEA-1", "WH-A"): 5, ("TEA-1", "WH-B"): 2}, {"WH-A": 1, "WH-B": 2})

    decisions = [
        domain.allocate(wanted, stock)
        for wanted in ({"TEA-1": 3}, {"TEA-1": 3}, {"TEA-1": 2}, {"TEA-1": 1})
    ]

    assert decisions == [
        Reserve((Allocation("TEA-1", "WH-A", 3),)),
        # Only 2 left at WH-A and 2 at WH-B: the second order waits even though 4 remain.
        Backorder((domain.Shortage("TEA-1", 3, 4),)),
        Reserve((Allocation("TEA-1", "WH-A", 2),)),
        Reserve((Allocation("TEA-1", "WH-B", 1),)),
    ]
    assert stock.total_available("TEA-1") == 1


def test_lines_of_one_sku_are_added_up() -> None:
    assert domain.requested([("TEA-1", 2), ("CUP-1", 1), ("TEA-1", 3)]) == {
        "TEA-1": 5,
        "CUP-1": 1,
    }
    stock = book({("TEA-1", "WH-A"): 4}, {"WH-A": 1})
    assert isinstance(
        domain.allocate(domain.requested([("TEA-1", 2), ("TEA-1", 3)]), stock), Backorder
    )


def test_holding_more_than_available_is_refused() -> None:
    stock = book({("TEA-1", "WH-A"): 1}, {"WH-A": 1})

    with pytest.raises(ValueError):
        stock.hold([Allocation("TEA-1", "WH-A", 2)])


def test_backorders_are_served_by_priority_then_age() -> None:
    waiting = [
        ("low", 1.0, "o1"),
        ("normal", 5.0, "o2"),
        ("urgent", 9.0, "o3"),
        ("normal", 2.0, "o5"),
        ("high", 3.0, "o6"),
        ("normal", 2.0, "o4"),
    ]

    ordered = sorted(waiting, key=lambda w: domain.backorder_queue_key(*w))

    assert [order_id for _, _, order_id in ordered] == ["o3", "o6", "o4", "o5", "o2", "o1"]


def test_a_new_warehouse_is_ranked_last() -> None:
    assert domain.next_warehouse_rank([]) == 1
    assert domain.next_warehouse_rank([1, 3, 2]) == 4


SKUS = ["AAA-1", "BBB-2", "CCC-3"]
WAREHOUSES = ["WH-1", "WH-2", "WH-3"]


@given(
    on_hand=st.dictionaries(
        st.tuples(st.sampled_from(SKUS), st.sampled_from(WAREHOUSES)), st.integers(0, 20)
    ),
    orders=st.lists(
        st.dictionaries(st.sampled_from(SKUS), st.integers(1, 10), min_size=1), max_size=30
    ),
    allow_split=st.booleans(),
)
def test_no_sequence_of_orders_oversells(
    on_hand: dict[tuple[str, str], int], orders: list[dict[str, int]], allow_split: bool
) -> None:
    stock = book(on_hand, {wh: i for i, wh in enumerate(WAREHOUSES)})

    held: dict[tuple[str, str], int] = {}
    for wanted in orders:
        servers = [
            wh
            for wh in WAREHOUSES
            if all(stock.available(sku, wh) >= q for sku, q in wanted.items())
        ]
        enough = all(stock.total_available(sku) >= q for sku, q in wanted.items())
        decision = domain.allocate(wanted, stock, allow_split=allow_split)
        if isinstance(decision, Reserve):
            # All of it: from the best-ranked warehouse able to serve it, if there is one.
            got: dict[str, int] = {}
            for a in decision.allocations:
                got[a.sku] = got.get(a.sku, 0) + a.quantity
                held[(a.sku, a.warehouse)] = held.get((a.sku, a.warehouse), 0) + a.quantity
            assert got == wanted
            if servers:
                assert {a.warehouse for a in decision.allocations} == {servers[0]}
            else:
                assert allow_split and decision.split
        else:
            assert servers == []
            assert not (allow_split and enough)
    for key, level in stock.levels.items():
        assert level.reserved == held.get(key, 0)
        assert 0 <= level.reserved <= level.on_hand == on_hand[key]


def test_a_return_is_booked_against_what_shipped_and_never_more() -> None:
    shipped = [domain.Shipped("WH-A", 2, 0), domain.Shipped("WH-B", 3, 1)]

    assert domain.take_back(shipped, 3, "WH-B") == 3
    assert [(s.warehouse, s.returned) for s in shipped] == [("WH-A", 1), ("WH-B", 3)]
    assert domain.take_back(shipped, 5, "WH-A") == 1
    assert domain.take_back(shipped, 1, "WH-A") == 0
    assert domain.take_back([], 4, "WH-A") == 0


def test_daily_demand_starts_at_the_first_day_with_demand_and_scales_today() -> None:
    day = domain.DAY_S
    now = 100 * day + 6 * 3600  # six hours into day 100

    series = domain.daily_demand_series({96: 4, 98: 8, 100: 3, 10: 99}, now, window_days=7)

    assert series == [4.0, 0.0, 8.0, 0.0, 12.0]
    # One order in the first minutes does not count as a whole day's flood.
    assert domain.daily_demand_series({100: 1}, 100 * day + 60, 7) == [24.0]
    assert domain.daily_demand_series({}, now, 7) == []


def test_forecast_smooths_demand_and_suggests_cover_for_lead_time_plus_target() -> None:
    assert domain.smoothed([10, 20], alpha=0.5) == 15
    assert domain.smoothed([10, 20, 40], alpha=0.5) == 27.5
    assert domain.smoothed([], alpha=0.5) == 0

    outlook = domain.forecast(30, [10, 20], alpha=0.5, lead_time_days=2, target_cover_days=4)

    assert outlook == domain.Forecast(daily_demand=15, days_of_cover=2, suggested_quantity=60)
    plenty = domain.forecast(500, [10], alpha=0.3, lead_time_days=2, target_cover_days=4)
    assert plenty.suggested_quantity == 0
    idle = domain.forecast(5, [], alpha=0.3, lead_time_days=2, target_cover_days=4)
    assert (idle.daily_demand, idle.days_of_cover, idle.suggested_quantity) == (0, None, 0)


def test_below_the_reorder_point_only_when_one_is_set() -> None:
    assert domain.below_reorder_point(4, 5)
    assert not domain.below_reorder_point(5, 5)
    assert not domain.below_reorder_point(0, None)
