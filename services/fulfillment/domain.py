"""Fulfillment's rules: priorities, SLA deadlines, which way a shipment may move, who wins a
cancel, what a return takes back and what it refunds. No I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

# The work queue is sorted by this first: a lower rank is worked on sooner.
PRIORITY_RANK: dict[str, int] = {"urgent": 0, "high": 1, "normal": 2, "low": 3}

STATUSES = ("queued", "picked", "packed", "shipped", "delivered", "delivery_failed", "cancelled")
# Still in the warehouse: what the work queue lists, what an SLA deadline applies to, and what
# a cancellation may still stop.
IN_WAREHOUSE = ("queued", "picked", "packed")
# Left the warehouse: too late to cancel.
LEFT_WAREHOUSE = ("shipped", "delivered", "delivery_failed")

# How far along the way each status is; an order has reached a stage when all its shipments
# have. A failed delivery did leave the warehouse, but did not arrive.
_PROGRESS: dict[str, int] = {
    "cancelled": -1,
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
    requires: tuple[str, ...]
    becomes: str


ACTIONS: dict[str, Action] = {
    a.name: a
    for a in (
        Action("pick", requires=("queued",), becomes="picked"),
        Action("pack", requires=("picked",), becomes="packed"),
        Action("ship", requires=("packed",), becomes="shipped"),
        # A failed delivery is retried: the carrier tries again, and may fail again.
        Action("deliver", requires=("shipped", "delivery_failed"), becomes="delivered"),
        Action(
            "delivery-failed", requires=("shipped", "delivery_failed"), becomes="delivery_failed"
        ),
    )
}
# What moves a shipment on from each status when all goes well (the simulator's script).
NEXT_ACTION: dict[str, Action] = {
    "queued": ACTIONS["pick"],
    "picked": ACTIONS["pack"],
    "packed": ACTIONS["ship"],
    "shipped": ACTIONS["deliver"],
    "delivery_failed": ACTIONS["deliver"],
}


@dataclass(frozen=True, slots=True)
class ShipmentState:
    shipment_id: str
    status: str
    carrier: str | None = None
    tracking_number: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    # The order or the shipment does not exist, as opposed to a move that is not allowed.
    unknown: bool = False


def sla_deadline(queued_at: datetime, priority: str, sla_hours: Mapping[str, float]) -> datetime:
    return queued_at + timedelta(hours=sla_hours[priority])


@dataclass(frozen=True, slots=True)
class SlaPolicy:
    """Queued-to-shipped hours per priority; a shipment still not shipped after
    ``escalation_factor`` times its hours is escalated."""

    hours: Mapping[str, float]
    escalation_factor: float = 2.0

    def deadline(self, queued_at: datetime, priority: str) -> datetime:
        return sla_deadline(queued_at, priority, self.hours)

    def escalation(self, queued_at: datetime, priority: str) -> datetime:
        return queued_at + timedelta(hours=self.hours[priority] * self.escalation_factor)


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
    ready = [s.shipment_id for s in targets if s.status in action.requires]
    if ready:
        return ready
    blocking = ", ".join(f"shipment {s.shipment_id} is {s.status}" for s in targets)
    return Refusal(
        f"cannot {action.name} order {order_id}: {blocking}, not {' or '.join(action.requires)}"
    )


def order_reached(stage: str, statuses: Sequence[str]) -> bool:
    """True when every shipment of an order has reached ``stage`` (a status name)."""
    return bool(statuses) and all(_PROGRESS[s] >= _PROGRESS[stage] for s in statuses)


# --- cancellation -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel the order: these shipments (possibly none yet) stop where they are."""

    shipment_ids: tuple[str, ...]


def decide_cancel(
    order_id: str, already_cancelled: bool, shipments: Sequence[ShipmentState]
) -> Cancel | Refusal:
    """Whether a cancel request wins. All or nothing: once any parcel of the order has left the
    warehouse it is too late for the whole order (the customer returns it instead)."""
    if already_cancelled:
        return Refusal(f"order {order_id} is already cancelled")
    gone = [s for s in shipments if s.status in LEFT_WAREHOUSE]
    if gone:
        parts = []
        for s in gone:
            via = f" with {s.carrier} {s.tracking_number}" if s.carrier else ""
            parts.append(f"shipment {s.shipment_id} is {s.status}{via}")
        return Refusal(f"too late to cancel order {order_id}: {', '.join(parts)}")
    return Cancel(tuple(s.shipment_id for s in shipments if s.status in IN_WAREHOUSE))


# --- returns ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivered:
    """A delivered shipment as a return sees it: what arrived, and what is already coming back
    (requested or received) per SKU."""

    shipment_id: str
    warehouse: str
    lines: Mapping[str, int]
    returned: Mapping[str, int] = field(default_factory=dict)

    def returnable(self, sku: str) -> int:
        return self.lines.get(sku, 0) - self.returned.get(sku, 0)


def plan_return(
    order_id: str,
    delivered: Sequence[Delivered],
    requested: Mapping[str, int] | None,
) -> dict[str, dict[str, int]] | Refusal:
    """What comes back from which shipment: {shipment_id: {sku: quantity}}.

    Without ``requested``, everything delivered and not yet returned. A SKU delivered in several
    shipments is taken from the first ones first."""
    if not delivered:
        return Refusal(f"nothing to return: order {order_id} has no delivered shipment")
    wanted = (
        dict(requested)
        if requested is not None
        else {sku: sum(d.returnable(sku) for d in delivered) for d in delivered for sku in d.lines}
    )
    problems = []
    for sku, quantity in sorted(wanted.items()):
        available = sum(d.returnable(sku) for d in delivered)
        if quantity > available:
            problems.append(f"{sku}: {quantity} requested, {available} delivered and not returned")
    if problems:
        return Refusal(f"cannot return from order {order_id}: {'; '.join(problems)}")
    plan: dict[str, dict[str, int]] = {}
    for sku, quantity in wanted.items():
        left = quantity
        for d in delivered:
            take = min(left, d.returnable(sku))
            if take > 0:
                plan.setdefault(d.shipment_id, {})[sku] = take
                left -= take
    if not plan:
        return Refusal(f"nothing to return: everything of order {order_id} is already returned")
    return plan


@dataclass(frozen=True, slots=True)
class Refund:
    amount: Decimal
    currency: str
    reason: str


def refund_for(
    lines: Mapping[str, int],
    unit_prices: Mapping[str, Decimal] | None,
    currency: str | None,
) -> Refund | Refusal:
    """The amount a return refunds, at the prices paid. Refused (never guessed, never zero)
    when the reservation did not carry the prices: finance settles it by hand."""
    if unit_prices is None or currency is None:
        return Refusal("the reservation carried no prices, so the refund cannot be computed")
    unpriced = sorted(sku for sku in lines if sku not in unit_prices)
    if unpriced:
        return Refusal(f"no price known for {', '.join(unpriced)}; the refund cannot be computed")
    amount = sum((unit_prices[sku] * quantity for sku, quantity in lines.items()), Decimal("0.00"))
    items = ", ".join(
        f"{quantity} x {sku} at {unit_prices[sku]}" for sku, quantity in sorted(lines.items())
    )
    return Refund(amount.quantize(Decimal("0.01")), currency, f"returned {items} {currency}")
