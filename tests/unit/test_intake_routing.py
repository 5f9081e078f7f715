"""Priority and routing as data: the shipped rules, rules of one's own, and files that are wrong."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from services.intake.routing import DEFAULT_RULES, Router, RoutingError


def decide(router: Router, **changes: Any) -> tuple[str, str, str]:
    values: dict[str, Any] = {
        "channel": "web",
        "urgency": "normal",
        "total": Decimal("25.00"),
        "currency": "CNY",
        "tier": None,
        "account_manager": None,
    }
    values.update(changes)
    routing = router.decide(**values)
    return routing.priority, routing.rule, routing.owner


@pytest.fixture(scope="module")
def shipped() -> Router:
    return Router.from_file(DEFAULT_RULES)


def test_an_ordinary_order_keeps_the_urgency_it_asked_for_and_goes_to_its_channel_desk(
    shipped: Router,
) -> None:
    assert decide(shipped) == ("normal", "as-requested", "desk-web")
    assert decide(shipped, urgency="low", channel="phone") == ("low", "as-requested", "desk-phone")


def test_a_key_account_is_high_priority_and_goes_to_its_account_manager(shipped: Router) -> None:
    assert decide(shipped, tier="vip", account_manager="Alice Wu") == (
        "high",
        "key-account",
        "Alice Wu",
    )


def test_a_key_account_without_a_manager_falls_back_to_the_channel_desk(shipped: Router) -> None:
    assert decide(shipped, tier="key", channel="wechat") == ("high", "key-account", "desk-wechat")


def test_an_urgent_request_wins_over_the_tier(shipped: Router) -> None:
    assert decide(shipped, urgency="urgent", tier="vip", account_manager="Alice Wu") == (
        "urgent",
        "urgent-request",
        "Alice Wu",
    )


@pytest.mark.parametrize(
    ("currency", "total", "large"),
    [
        ("CNY", "4999.99", False),
        ("CNY", "5000.00", True),
        ("USD", "700.00", True),
        ("USD", "699.99", False),
        ("JPY", "100000.00", True),
    ],
)
def test_a_large_order_goes_to_sales_by_its_own_currency(
    shipped: Router, currency: str, total: str, large: bool
) -> None:
    priority, rule, owner = decide(shipped, currency=currency, total=Decimal(total))
    assert (owner == "sales-large-orders") is large
    assert (priority == "high") is large
    assert rule.startswith("large-order") is large


def test_rules_of_ones_own_are_tried_in_order(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        """
[fallback]
owner = "queue-{channel}"

[[rule]]
name = "marketplace-low"
channel = ["marketplace"]
max_total = "10.00"
priority = "low"
owner = "marketplace-bulk"

[[rule]]
name = "gold"
tier = "gold"
priority = "urgent"

[[rule]]
name = "rest"
"""
    )
    router = Router.from_file(path)
    assert decide(router, channel="marketplace", total=Decimal("9.99")) == (
        "low",
        "marketplace-low",
        "marketplace-bulk",
    )
    assert decide(router, channel="marketplace", total=Decimal("10.01")) == (
        "normal",
        "rest",
        "queue-marketplace",
    )
    assert decide(router, tier="gold", account_manager="Bo") == ("urgent", "gold", "Bo")
    assert router.by_name["marketplace-low"].explain() == (
        "channel in ['marketplace'] and total <= 10.00"
    )


def base_rules() -> dict[str, Any]:
    return tomllib.loads(DEFAULT_RULES.read_text())


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"rule": [{"name": "x", "priority": "asap"}]}, "priority must be"),
        ({"rule": [{"name": "x", "teir": ["vip"]}]}, "unknown fields ['teir']"),
        ({"rule": [{"name": "x", "min_total": 5000.5}]}, "decimal string"),
        ({"rule": [{"name": "x", "min_total": "lots"}]}, "not a decimal"),
        ({"rule": [{"name": "x", "urgency": ["soon"]}]}, "urgency must be among"),
        ({"rule": [{"name": "x", "channel": []}]}, "non-empty list"),
        ({"rule": [{"name": "x", "owner": "{boss}"}]}, "may use only"),
        ({"rule": [{"name": "x"}, {"name": "x"}]}, "unique"),
        ({"rule": [{"priority": "high"}]}, "needs a name"),
        ({"rule": []}, "at least one rule"),
        ({"fallback": {}}, "[fallback] needs owner"),
    ],
)
def test_a_wrong_rules_file_is_refused_at_start_up_saying_what_is_wrong(
    change: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(RoutingError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        Router.from_dict({**base_rules(), **change})


def test_a_rules_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[[rule]\nname=")
    with pytest.raises(RoutingError, match="cannot read routing rules"):
        Router.from_file(path)
