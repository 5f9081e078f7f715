"""Inventory's allocation rules: one warehouse, all or nothing, never oversold."""

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


def test_stock_spread_over_warehouses_backorders_and_says_it_exists() -> None:
    # 3 + 3 teas would cover 5, but not from one warehouse; splitting is not done (yet).
    stock = book({("TEA-1", "WH-A"): 3, ("TEA-1", "WH-B"): 3}, {"WH-A": 1, "WH-B": 2})

    decision = domain.allocate({"TEA-1": 5}, stock)

    assert decision == Backorder((domain.Shortage("TEA-1", 5, 6),))


def test_unknown_sku_is_short_with_nothing_available() -> None:
    stock = book({("TEA-1", "WH-A"): 3}, {"WH-A": 1})

    assert domain.allocate({"NEW-9": 1}, stock) == Backorder((domain.Shortage("NEW-9", 1, 0),))


def test_orders_in_a_batch_are_decided_in_sequence_and_never_oversell() -> None:
    stock = book({("TEA-1", "WH-A"): 5, ("TEA-1", "WH-B"): 2}, {"WH-A": 1, "WH-B": 2})

    decisions = domain.allocate_in_sequence(
        [{"TEA-1": 3}, {"TEA-1": 3}, {"TEA-1": 2}, {"TEA-1": 1}], stock
    )

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
)
def test_no_sequence_of_orders_oversells(
    on_hand: dict[tuple[str, str], int], orders: list[dict[str, int]]
) -> None:
    stock = book(on_hand, {wh: i for i, wh in enumerate(WAREHOUSES)})

    held: dict[tuple[str, str], int] = {}
    for wanted in orders:
        servers = [
            wh
            for wh in WAREHOUSES
            if all(stock.available(sku, wh) >= q for sku, q in wanted.items())
        ]
        decision = domain.allocate(wanted, stock)
        if isinstance(decision, Reserve):
            # All of it, from the best-ranked warehouse able to serve it.
            assert {a.sku: a.quantity for a in decision.allocations} == wanted
            assert {a.warehouse for a in decision.allocations} == {servers[0]}
            for a in decision.allocations:
                held[(a.sku, a.warehouse)] = held.get((a.sku, a.warehouse), 0) + a.quantity
        else:
            assert servers == []
    for key, level in stock.levels.items():
        assert level.reserved == held.get(key, 0)
        assert 0 <= level.reserved <= level.on_hand == on_hand[key]
