"""How the warehouse commands read to a person: the queue, due times, return lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orderflow.cli import build_parser
from orderflow.commands import shipments as cli
from shared.rpc import CommandRefused

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def waiting(priority: str, due_in: timedelta, **changes: Any) -> dict[str, Any]:
    shipment = {
        "order_id": f"order-{priority}",
        "warehouse": "WH-1",
        "priority": priority,
        "next_action": "pick",
        "sla_deadline": (NOW + due_in).isoformat(),
        "overdue": due_in < timedelta(0),
        "escalated": False,
        "lines": [{"sku": "TEA-001", "warehouse": "WH-1", "quantity": 2}],
    }
    shipment.update(changes)
    return shipment


def test_the_queue_says_what_to_do_next_by_when_and_what_to_take() -> None:
    text = cli.format_queue(
        [
            waiting("urgent", -timedelta(minutes=12), next_action="ship"),
            waiting("urgent", -timedelta(hours=5), escalated=True),
            waiting("normal", timedelta(hours=3, minutes=5)),
            waiting("low", timedelta(days=2, hours=3)),
            waiting("low", timedelta(seconds=40)),
        ],
        NOW,
    )
    lines = text.splitlines()
    assert lines[0] == "5 shipment(s) waiting (urgent 2, normal 1, low 2); 2 overdue"
    assert lines[1].split() == ["PRIORITY", "DUE", "NEXT", "ORDER", "WH", "ITEMS"]
    rows = [line.split("  ") for line in lines[2:]]
    assert [[c.strip() for c in row if c.strip()][:3] for row in rows] == [
        ["urgent", "OVERDUE 12m", "ship"],
        ["urgent", "ESCALATED 5h00m", "pick"],
        ["normal", "in 3h05m", "pick"],
        ["low", "in 2d03h", "pick"],
        ["low", "in 40s", "pick"],
    ]
    assert all(line.endswith("2 x TEA-001") for line in lines[2:])
    assert cli.format_queue([], NOW) == "the work queue is empty"


def test_return_lines_are_sku_equals_quantity() -> None:
    assert cli.parse_lines(["TEA-001=2", "CUP-002=1"]) == [
        {"sku": "TEA-001", "quantity": 2},
        {"sku": "CUP-002", "quantity": 1},
    ]
    assert cli.parse_lines(None) is None
    with pytest.raises(CommandRefused, match="write it as SKU=QUANTITY"):
        cli.parse_lines(["TEA-001:2"])


def test_ship_needs_a_carrier_and_a_tracking_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ship", "O-1", "--carrier", "SF"])
    assert "--tracking" in capsys.readouterr().err
    args = build_parser().parse_args(["delivery-failed", "O-1", "--reason", "dog"])
    assert (args.move, args.reason) == ("delivery-failed", "dog")


def test_the_actor_defaults_to_orderflow_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERFLOW_ACTOR", "ana")
    assert cli.default_actor() == "ana"
