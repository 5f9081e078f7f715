"""Fulfillment's rules: how a shipment may move, and its SLA deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.fulfillment import domain
from services.fulfillment.domain import ACTIONS, Refusal, ShipmentState

SLA = {"urgent": 2.0, "high": 8.0, "normal": 24.0, "low": 72.0}


def test_the_legal_path_moves_a_shipment_from_queued_to_delivered() -> None:
    status = "queued"
    for name in ("pick", "pack", "ship", "deliver"):
        action = ACTIONS[name]
        assert domain.choose(action, "O-1", [ShipmentState("S-1", status)]) == ["S-1"]
        status = action.becomes
    assert status == "delivered"


ILLEGAL = [
    (action, status)
    for action in ("pick", "pack", "ship", "deliver")
    for status in domain.STATUSES
    if status != ACTIONS[action].requires
]


@pytest.mark.parametrize(("action", "status"), ILLEGAL)
def test_every_other_move_is_refused_with_a_reason(action: str, status: str) -> None:
    outcome = domain.choose(ACTIONS[action], "O-1", [ShipmentState("S-1", status)])
    required = ACTIONS[action].requires
    assert outcome == Refusal(
        f"cannot {action} order O-1: shipment S-1 is {status}, not {required}"
    )


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
    outcome = domain.choose(ACTIONS["deliver"], "O-1", order)
    assert outcome == Refusal(
        "cannot deliver order O-1: shipment S-1 is packed, shipment S-2 is queued, not shipped"
    )


@pytest.mark.parametrize(("priority", "hours"), SLA.items())
def test_the_sla_deadline_depends_on_the_priority(priority: str, hours: float) -> None:
    queued_at = datetime(2030, 1, 1, 8, 0, tzinfo=UTC)
    assert domain.sla_deadline(queued_at, priority, SLA) == queued_at + timedelta(hours=hours)


def test_priorities_rank_urgent_first() -> None:
    ranked = sorted(domain.PRIORITY_RANK, key=domain.PRIORITY_RANK.__getitem__)
    assert ranked == ["urgent", "high", "normal", "low"]


def test_only_shipments_still_in_the_warehouse_can_be_overdue() -> None:
    assert domain.is_overdue("packed", deadline=100.0, now=101.0)
    assert not domain.is_overdue("packed", deadline=100.0, now=99.0)
    assert not domain.is_overdue("shipped", deadline=100.0, now=101.0)


def test_an_order_reaches_a_stage_when_all_its_shipments_have() -> None:
    assert not domain.order_reached("shipped", ["shipped", "packed"])
    assert domain.order_reached("shipped", ["shipped", "delivered"])
    assert domain.order_reached("shipped", ["delivery_failed"])
    assert not domain.order_reached("delivered", ["delivered", "delivery_failed"])
