"""Fulfillment's rules: how a shipment may move, its SLA deadlines, who wins a cancel, what a
return takes back and what it refunds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.fulfillment import domain
from services.fulfillment.domain import ACTIONS, Cancel, Delivered, Refusal, ShipmentState

SLA = {"urgent": 2.0, "high": 8.0, "normal": 24.0, "low": 72.0}

# Every legal move, as (status before, action, status after).
LEGAL = [
    ("queued", "pick", "picked"),
    ("picked", "pack", "packed"),
    ("packed", "ship", "shipped"),
    ("shipped", "deliver", "delivered"),
    ("shipped", "delivery-failed", "delivery_failed"),
    ("delivery_failed", "deliver", "delivered"),
    ("delivery_failed", "delivery-failed", "delivery_failed"),
]


@pytest.mark.parametrize(("status", "action", "becomes"), LEGAL)
def test_every_legal_move(status: str, action: str, becomes: str) -> None:
    assert domain.choose(ACTIONS[action], "O-1", [ShipmentState("S-1", status)]) == ["S-1"]
    assert ACTIONS[action].becomes == becomes


def test_the_legal_moves_are_all_there_are() -> None:
    allowed = {(s, a.name) for a in ACTIONS.values() for s in a.requires}
    assert allowed == {(s, a) for s, a, _ in LEGAL}


ILLEGAL = [
    (action, status)
    for action in ACTIONS
    for status in domain.STATUSES
    if status not in ACTIONS[action].requires
]


@pytest.mark.parametrize(("action", "status"), ILLEGAL)
def test_every_other_move_is_refused_with_a_reason(action: str, status: str) -> None:
    outcome = domain.choose(ACTIONS[action], "O-1", [ShipmentState("S-1", status)])
    required = " or ".join(ACTIONS[action].requires)
    assert outcome == Refusal(
        f"cannot {action} order O-1: shipment S-1 is {status}, not {required}"
    )


def test_deliver_before_ship_and_ship_twice_are_refused() -> None:
    assert domain.choose(ACTIONS["deliver"], "O-1", [ShipmentState("S-1", "packed")]) == Refusal(
        "cannot deliver order O-1: shipment S-1 is packed, not shipped or delivery_failed"
    )
    assert domain.choose(ACTIONS["ship"], "O-1", [ShipmentState("S-1", "shipped")]) == Refusal(
        "cannot ship order O-1: shipment S-1 is shipped, not packed"
    )


def test_a_cancelled_shipment_never_moves_again() -> None:
    for action in ACTIONS.values():
        outcome = domain.choose(action, "O-1", [ShipmentState("S-1", "cancelled")])
        assert isinstance(outcome, Refusal)
        assert "shipment S-1 is cancelled" in outcome.reason


def test_the_simulator_script_delivers_a_failed_delivery_again() -> None:
    assert domain.NEXT_ACTION["delivery_failed"].name == "deliver"
    assert "cancelled" not in domain.NEXT_ACTION
    assert "delivered" not in domain.NEXT_ACTION


def test_an_order_without_shipments_is_unknown() -> None:
    outcome = domain.choose(ACTIONS["pick"], "O-9", [])
    assert outcome == Refusal("no shipment for order O-9", unknown=True)


def test_a_named_shipment_must_belong_to_the_order() -> None:
    outcome = domain.choose(ACTIONS["pick"], "O-1", [ShipmentState("S-1", "queued")], "S-2")
    assert outcome == Refusal("no shipment S-2 for order O-1", unknown=True)


def test_without_a_shipment_id_every_ready_shipment_moves_and_the_rest_stay() -> None:
    order = [
        ShipmentState("S-1", "queued"),
        ShipmentState("S-2", "picked"),
        ShipmentState("S-3", "queued"),
    ]
    assert domain.choose(ACTIONS["pick"], "O-1", order) == ["S-1", "S-3"]
    assert domain.choose(ACTIONS["pick"], "O-1", order, "S-3") == ["S-3"]


def test_a_refusal_names_every_blocking_shipment() -> None:
    order = [ShipmentState("S-1", "packed"), ShipmentState("S-2", "queued")]
    outcome = domain.choose(ACTIONS["ship"], "O-1", order[1:])
    assert outcome == Refusal("cannot ship order O-1: shipment S-2 is queued, not packed")
    outcome = domain.choose(ACTIONS["pick"], "O-1", [order[0], ShipmentState("S-3", "shipped")])
    assert outcome == Refusal(
        "cannot pick order O-1: shipment S-1 is packed, shipment S-3 is shipped, not queued"
    )


@pytest.mark.parametrize(("priority", "hours"), SLA.items())
def test_the_sla_deadline_and_escalation_depend_on_the_priority(
    priority: str, hours: float
) -> None:
    queued_at = datetime(2030, 1, 1, 8, 0, tzinfo=UTC)
    policy = domain.SlaPolicy(SLA, escalation_factor=1.5)
    assert policy.deadline(queued_at, priority) == queued_at + timedelta(hours=hours)
    assert policy.escalation(queued_at, priority) == queued_at + timedelta(hours=hours * 1.5)


def test_priorities_rank_urgent_first() -> None:
    ranked = sorted(domain.PRIORITY_RANK, key=domain.PRIORITY_RANK.__getitem__)
    assert ranked == ["urgent", "high", "normal", "low"]


def test_only_shipments_still_in_the_warehouse_can_be_overdue() -> None:
    assert domain.is_overdue("packed", deadline=100.0, now=101.0)
    assert not domain.is_overdue("packed", deadline=100.0, now=99.0)
    assert not domain.is_overdue("shipped", deadline=100.0, now=101.0)
    assert not domain.is_overdue("cancelled", deadline=100.0, now=101.0)


def test_an_order_reaches_a_stage_when_all_its_shipments_have() -> None:
    assert not domain.order_reached("shipped", ["shipped", "packed"])
    assert domain.order_reached("shipped", ["shipped", "delivered"])
    assert domain.order_reached("shipped", ["delivery_failed"])
    assert not domain.order_reached("delivered", ["delivered", "delivery_failed"])


# --- cancellation -------------------------------------------------------------------------------


def test_a_cancel_before_shipping_stops_every_shipment_still_in_the_warehouse() -> None:
    order = [ShipmentState("S-1", "queued"), ShipmentState("S-2", "packed")]
    assert domain.decide_cancel("O-1", False, order) == Cancel(("S-1", "S-2"))


def test_a_cancel_of_an_order_without_shipments_wins() -> None:
    assert domain.decide_cancel("O-1", False, []) == Cancel(())


@pytest.mark.parametrize("status", domain.LEFT_WAREHOUSE)
def test_a_cancel_after_any_parcel_left_is_refused_with_the_reason(status: str) -> None:
    order = [
        ShipmentState("S-1", "queued"),
        ShipmentState("S-2", status, carrier="SF-EXPRESS", tracking_number="SF1"),
    ]
    assert domain.decide_cancel("O-1", False, order) == Refusal(
        f"too late to cancel order O-1: shipment S-2 is {status} with SF-EXPRESS SF1"
    )


def test_cancelling_twice_is_refused_as_already_cancelled() -> None:
    order = [ShipmentState("S-1", "cancelled")]
    assert domain.decide_cancel("O-1", True, order) == Refusal("order O-1 is already cancelled")


# --- returns ------------------------------------------------------------------------------------


def test_a_return_without_lines_takes_back_everything_not_yet_returned() -> None:
    delivered = [
        Delivered("S-1", "WH-1", {"TEA-001": 2, "CUP-002": 1}, {"TEA-001": 1}),
        Delivered("S-2", "WH-2", {"POT-003": 1}),
    ]
    assert domain.plan_return("O-1", delivered, None) == {
        "S-1": {"TEA-001": 1, "CUP-002": 1},
        "S-2": {"POT-003": 1},
    }


def test_a_sku_delivered_in_two_shipments_is_taken_from_the_first_first() -> None:
    delivered = [Delivered("S-1", "WH-1", {"TEA-001": 2}), Delivered("S-2", "WH-2", {"TEA-001": 3})]
    assert domain.plan_return("O-1", delivered, {"TEA-001": 4}) == {
        "S-1": {"TEA-001": 2},
        "S-2": {"TEA-001": 2},
    }


def test_a_return_of_more_than_was_delivered_is_refused_naming_each_sku() -> None:
    delivered = [Delivered("S-1", "WH-1", {"TEA-001": 2}, {"TEA-001": 1})]
    outcome = domain.plan_return("O-1", delivered, {"TEA-001": 2, "CUP-002": 1})
    assert outcome == Refusal(
        "cannot return from order O-1: CUP-002: 1 requested, 0 delivered and not returned; "
        "TEA-001: 2 requested, 1 delivered and not returned"
    )


def test_nothing_delivered_or_everything_returned_is_refused() -> None:
    assert domain.plan_return("O-1", [], None) == Refusal(
        "nothing to return: order O-1 has no delivered shipment"
    )
    done = [Delivered("S-1", "WH-1", {"TEA-001": 2}, {"TEA-001": 2})]
    assert domain.plan_return("O-1", done, None) == Refusal(
        "nothing to return: everything of order O-1 is already returned"
    )


def test_the_refund_is_the_prices_paid_times_the_units_returned() -> None:
    refund = domain.refund_for(
        {"TEA-001": 2, "CUP-002": 1},
        {"TEA-001": Decimal("12.50"), "CUP-002": Decimal("3.35"), "POT-003": Decimal("99")},
        "CNY",
    )
    assert refund == domain.Refund(
        Decimal("28.35"), "CNY", "returned 1 x CUP-002 at 3.35, 2 x TEA-001 at 12.50 CNY"
    )


def test_without_prices_no_refund_amount_is_made_up() -> None:
    assert domain.refund_for({"TEA-001": 1}, None, None) == Refusal(
        "the reservation carried no prices, so the refund cannot be computed"
    )
    assert domain.refund_for({"TEA-001": 1, "CUP-002": 1}, {"TEA-001": Decimal("1")}, "CNY") == (
        Refusal("no price known for CUP-002; the refund cannot be computed")
    )
