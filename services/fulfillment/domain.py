"""Fulfillment's rules: priorities, SLA deadlines, and which way a shipment may move. No I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

# The work queue is sorted by this first: a lower rank is worked on sooner.
PRIORITY_RANK: dict[str, int] = {"urgent": 0, "high": 1, "normal": 2, "low": 3}

STATUSES = ("queued", "picked", "packed", "shipped", "delivered", "delivery_failed")
# Still in the warehouse: what the work queue lists and what an SLA deadline applies to.
IN_WAREHOUSE = ("queued", "picked", "packed")

# How far along the way each status is; an order has reached a stage when all its shipments
# have. A failed delivery did leave the warehouse, but did not arrive.
_PROGRESS: dict[str, int] = {
    "queued": 0,
    "picked": 1,
    "packed": 2,
    "shipped": 3,
    "delivery_failed": 3,
    "delivered": 4,
}


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    requires: str
    becomes: str


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action("pick", requires="queued", becomes="picked"),
        Action("pack", requires="picked", becomes="packed"),
        Action("ship", requires="packed", becomes="shipped"),
        Action("deliver", requires="shipped", becomes="delivered"),
    )
}
# What moves a shipment on from each status (the simulator's script).
NEXT_ACTION: dict[str, Action] = {a.requires: a for a in ACTIONS.values()}


@dataclass(frozen=True, slots=True)
class ShipmentState:
    shipment_id: str
    status: str


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    # The order or the shipment does not exist, as opposed to a move that is not allowed.
    unknown: bool = False


def sla_deadline(queued_at: datetime, priority: str, sla_hours: Mapping[str, float]) -> datetime:
    return queued_at + timedelta(hours=sla_hours[priority])


def is_overdue(status: str, deadline: float, now: float) -> bool:
    return status in IN_WAREHOUSE and now > deadline


def choose(
    action: Action,
    order_id: str,
    shipments: Sequence[ShipmentState],
    shipment_id: str | None = None,
) -> list[str] | Refusal:
    """The shipments ``action`` moves: the named one, or every one of the order that is ready.

    Refused when there is nothing to move, with a reason that names each blocking shipment."""
    if not shipments:
        return Refusal(f"no shipment for order {order_id}", unknown=True)
    targets = list(shipments)
    if shipment_id is not None:
        targets = [s for s in shipments if s.shipment_id == shipment_id]
        if not targets:
            return Refusal(f"no shipment {shipment_id} for order {order_id}", unknown=True)
    ready = [s.shipment_id for s in targets if s.status == action.requires]
    if ready:
        return ready
    blocking = ", ".join(f"shipment {s.shipment_id} is {s.status}" for s in targets)
    return Refusal(f"cannot {action.name} order {order_id}: {blocking}, not {action.requires}")


def order_reached(stage: str, statuses: Sequence[str]) -> bool:
    """True when every shipment of an order has reached ``stage`` (a status name)."""
    return bool(statuses) and all(_PROGRESS[s] >= _PROGRESS[stage] for s in statuses)
