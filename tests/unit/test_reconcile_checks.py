"""The reconcile rules on facts as the services would give them: a consistent system has no
finding, and each kind of damage is reported once, naming the order, SKU or currency."""

from __future__ import annotations

from typing import Any

from orderflow.commands.reconcile import Facts, check


def consistent() -> Facts:
    """Three orders in step everywhere: delivered, cancelled before shipping, still queued."""
    return Facts(
        missing={},
        intake={
            "o-delivered": _view("delivered", "25.00"),
            "o-cancelled": _view("cancelled", "10.00"),
            "o-queued": _view("queued", "7.50", currency="USD"),
        },
        inventory={
            "o-delivered": _inv({"shipped": 2}),
            "o-cancelled": _inv({"released": 1}, cancelled=True),
            "o-queued": _inv({"reserved": 3}),
        },
        fulfillment={
            "o-delivered": _ful("open", {"delivered": 1}, shipped="25.00"),
            "o-cancelled": _ful("cancelled", {"cancelled": 1}),
            "o-queued": _ful("open", {"queued": 1}, currency="USD", open_value="7.50"),
        },
        notify={
            o: {"order_id": o, "templates": []} for o in ("o-delivered", "o-cancelled", "o-queued")
        },
        stock=[_level("TEA-001", on_hand=10, reserved=3)],
        outbox={"intake": {"pending": 0, "oldest_age_s": None}},
        dead_letters={"messages": 0, "consumers": {}},
    )


def _view(status: str, total: str, currency: str = "CNY") -> dict[str, Any]:
    return {"status": status, "total": total, "currency": currency}


def _inv(units: dict[str, int], backorder: str | None = None, cancelled: bool = False) -> Any:
    return {"units": units, "backorder": backorder, "cancelled": cancelled}


def _ful(
    status: str,
    shipments: dict[str, int],
    shipped: str = "0",
    currency: str = "CNY",
    open_value: str = "0",
) -> dict[str, Any]:
    return {
        "status": status,
        "currency": currency,
        "shipments": shipments,
        "shipped_value": shipped,
        "open_value": open_value,
        "priced": True,
    }


def _level(sku: str, on_hand: int, reserved: int) -> dict[str, Any]:
    return {
        "sku": sku,
        "warehouse": "WH-1",
        "on_hand": on_hand,
        "reserved": reserved,
        "available": on_hand - reserved,
        "ledger_on_hand": on_hand,
        "ledger_reserved": reserved,
        "open_reservations": reserved,
    }


def findings(facts: Facts) -> set[tuple[str, str]]:
    found, _ = check(facts, outbox_age_s=60)
    return {(f.check, f.key) for f in found}


def test_a_consistent_system_has_no_finding_and_the_money_adds_up() -> None:
    found, summary = check(consistent(), outbox_age_s=60)
    assert found == []
    assert summary["money"]["CNY"] == {
        "accepted": "35.00",
        "shipped": "25.00",
        "cancelled": "10.00",
        "in_flight": "0.00",
    }
    assert summary["money"]["USD"]["in_flight"] == "7.50"


def test_a_cancelled_order_still_holding_stock_is_reported() -> None:
    facts = consistent()
    facts.inventory["o-cancelled"]["units"] = {"reserved": 1}
    assert findings(facts) == {("orders", "o-cancelled")}


def test_statuses_that_disagree_across_services_are_reported() -> None:
    facts = consistent()
    facts.fulfillment["o-queued"]["status"] = "cancelled"  # fulfillment cancelled, intake did not
    facts.intake["o-delivered"]["status"] = "shipped"  # behind fulfillment's delivered
    facts.fulfillment["o-ghost"] = _ful("open", {"queued": 1})  # unknown to intake
    del facts.notify["o-cancelled"]
    assert findings(facts) == {
        ("orders", "o-queued"),
        ("orders", "o-delivered"),
        ("orders", "o-ghost"),
        ("orders", "o-cancelled"),
    }


def test_money_shipped_beyond_the_order_or_short_of_it_is_reported() -> None:
    facts = consistent()
    facts.fulfillment["o-delivered"]["shipped_value"] = "24.00"  # every shipment left
    facts.fulfillment["o-queued"]["currency"] = "CNY"
    assert findings(facts) == {("money", "o-delivered"), ("money", "o-queued")}


def test_stock_that_disagrees_with_its_ledger_or_reservations_is_reported() -> None:
    facts = consistent()
    facts.stock[0]["ledger_on_hand"] = 9
    facts.stock.append({**_level("CUP-010", 5, 2), "open_reservations": 1})
    facts.stock.append(
        {**_level("BAG-030", 0, 0), "on_hand": None, "reserved": None, "available": None}
    )
    assert findings(facts) == {
        ("stock", "TEA-001@WH-1"),
        ("stock", "CUP-010@WH-1"),
        ("stock", "BAG-030@WH-1"),
    }


def test_an_old_outbox_row_and_unread_dead_letters_are_reported() -> None:
    facts = consistent()
    facts.outbox["notify"] = {"pending": 3, "oldest_age_s": 61.0}
    facts.dead_letters = {"messages": 2, "consumers": {}}
    assert findings(facts) == {("outbox", "notify"), ("dead_letters", "ORDERFLOW_DEADLETTER")}
