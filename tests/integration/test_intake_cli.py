"""A new user's session with the CLI against a running intake: good, bad and duplicate orders,
a WeChat payload, a spreadsheet import reported row by row, the customer directory, status with
its timeline, a cancellation and the order list."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from openpyxl import Workbook

from orderflow.cli import main
from services.intake.app import create_service
from shared.runtime import ServiceRuntime
from tests.conftest import order_doc
from tests.integration.harness import running
from tests.integration.test_intake import intake_settings, unique_ext
from tests.unit.test_intake_channels import WECHAT_PUSH


class Cli:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    async def __call__(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        self.capsys.readouterr()
        # The CLI runs its own event loop (as from a shell), so it gets a thread of its own.
        with patch.object(sys, "stdin", io.StringIO(stdin)):
            code = await asyncio.to_thread(main, list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err

    async def json(self, *argv: str, exit_code: int = 0, stdin: str = "") -> Any:
        code, out, err = await self(*argv, "--json", stdin=stdin)
        assert code == exit_code, err
        return json.loads(out)


@pytest.fixture
async def intake(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ServiceRuntime]:
    database = f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}"
    async with running(create_service(intake_settings(nats_url, database, tmp_path))) as rt:
        # Where the CLI finds the system and the channel keys (as `orderflow up` leaves them).
        monkeypatch.setenv("ORDERFLOW_HOME", str(tmp_path))
        monkeypatch.setenv("ORDERFLOW_NATS_URL", nats_url)
        monkeypatch.setenv("ORDERFLOW_INTAKE_URL", f"http://127.0.0.1:{rt.http_port}")
        monkeypatch.delenv("ORDERFLOW_API_KEY", raising=False)
        yield rt


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


async def test_a_new_users_session(intake: ServiceRuntime, cli: Cli, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(order_doc(unique_ext("cli"))))
    code, out, _ = await cli("submit", str(good))
    assert code == 0
    assert out.startswith("accepted: order id ")
    assert "priority normal (rule as-requested), owner desk-web" in out
    order_id = out.split()[3]

    code, out, _ = await cli("submit", str(good))
    assert (code, out.strip()) == (0, f"duplicate: already taken as order {order_id}")

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            order_doc(
                unique_ext("cli"),
                currency="XYZ",
                lines=[{"sku": "tea", "quantity": 0, "unit_price": "1.005"}],
            )
        )
    )
    code, out, _ = await cli("submit", str(bad))
    assert code == 1
    assert out.startswith("rejected (order id ")
    for field in ("currency", "lines.0.sku", "lines.0.quantity", "lines.0.unit_price"):
        assert f"  {field}: " in out

    wechat = tmp_path / "wechat.json"
    wechat.write_text(json.dumps(WECHAT_PUSH))
    answer = await cli.json("submit", str(wechat), "--channel", "wechat")
    assert (answer["outcome"], answer["priority"]) == ("accepted", "urgent")

    code, out, _ = await cli("status", order_id)
    assert code == 0
    assert out.splitlines()[0] == f"order {order_id}: accepted"
    assert "why          rule 'as-requested': every order" in out
    assert "submitted" in out and "by channel" in out and "by intake" in out

    code, out, _ = await cli("cancel", order_id, "--reason", "customer called back")
    assert code == 0
    assert f"cancellation of {order_id} requested; fulfillment decides" in out
    status = await cli.json("status", order_id)
    assert status["timeline"][-1]["what"] == "cancel requested"
    assert status["timeline"][-1]["detail"] == "operator:tests: customer called back"

    listing = await cli.json("orders", "list", "--channel", "web")
    assert [o["order_id"] for o in listing["orders"]] == [order_id]
    code, out, _ = await cli("orders", "rules")
    assert "1. urgent-request: when urgency in ['urgent'] -> urgent" in out

    code, _, err = await cli("status", "no-such-order")
    assert code == 1
    assert "refused: no order no-such-order" in err


async def test_the_customer_directory_routes_a_key_account(
    intake: ServiceRuntime, cli: Cli
) -> None:
    row = await cli.json(
        "customer", "set", "Mei.Lin@Example.com", "--tier", "vip", "--manager", "Alice Wu"
    )
    assert row == {"customer": "mei.lin@example.com", "tier": "vip", "account_manager": "Alice Wu"}
    shown = await cli.json("customer", "show", "mei.lin@example.com")
    assert shown["tier"] == "vip"
    code, _, err = await cli("customer", "show", "nobody@example.com")
    assert code == 1 and "no customer" in err
    answer = await cli.json("submit", "-", stdin=json.dumps(order_doc(unique_ext("vip"))))
    assert (answer["priority"], answer["priority_rule"], answer["owner"]) == (
        "high",
        "key-account",
        "Alice Wu",
    )


SHEET_HEADER = [
    "order_ref",
    "customer_name",
    "email",
    "phone",
    "sku",
    "quantity",
    "unit_price",
    "currency",
    "address_line1",
    "city",
    "postal_code",
    "country",
]


def sheet_rows(ref: str) -> list[list[Any]]:
    address = ["18 Longjing Road", "Hangzhou", "310000", "CN"]
    return [
        [f"{ref}-1", "Mei Lin", "mei@example.com", "", "TEA-001", "2", "12.50", "CNY", *address],
        [f"{ref}-1", "", "", "", "CUP-010", "1", "6.90", "", "", "", "", ""],
        [f"{ref}-2", "Li Wei", "", "+86 138 0013 8001", "POT-020", "0", "49.00", "CNY", *address],
        [f"{ref}-3", "Sam Lee", "sam@", "", "BAG-030", "1", "3.20", "CNY", *address],
        ["", "Nobody", "n@example.com", "", "TEA-002", "1", "18.00", "CNY", *address],
    ]


async def test_a_csv_import_reports_every_row(
    intake: ServiceRuntime, cli: Cli, tmp_path: Path
) -> None:
    ref = unique_ext("SS")
    path = tmp_path / "orders.csv"
    path.write_text(
        "\n".join(",".join(map(str, r)) for r in [SHEET_HEADER, *sheet_rows(ref)]) + "\n"
    )
    code, out, _ = await cli("import", str(path))
    assert code == 1  # some rows need fixing
    report = (await cli.json("import", str(path), exit_code=1))["rows"]
    by_row = {r["row"]: r for r in report}
    assert [by_row[n]["outcome"] for n in (2, 3, 4, 5, 6)] == [
        "duplicate",  # the first import already took it
        "duplicate",
        "rejected",
        "rejected",
        "skipped",
    ]
    assert by_row[4]["errors"] == [
        {"column": "quantity", "reason": "Input should be greater than or equal to 1"}
    ]
    assert [e["column"] for e in by_row[5]["errors"]] == ["email"]
    assert by_row[6]["errors"][0]["column"] == "order_ref"
    assert by_row[2]["order_id"] == by_row[3]["order_id"]
    first_run = out.splitlines()
    assert first_run[0].startswith(f"row 2 {ref}-1: accepted (order ")
    assert first_run[-1] == "5 rows, 3 orders: 2 accepted, 2 rejected, 1 skipped"


async def test_an_xlsx_import(intake: ServiceRuntime, cli: Cli, tmp_path: Path) -> None:
    ref = unique_ext("XL")
    book = Workbook()
    ws = book.active
    assert ws is not None
    ws.append(SHEET_HEADER)
    for row in sheet_rows(ref)[:2]:
        ws.append([int(v) if v.isdigit() and len(v) < 3 else v for v in row])
    path = tmp_path / "orders.xlsx"
    book.save(path)
    code, out, _ = await cli("import", str(path))
    assert code == 0, out
    assert out.splitlines()[-1] == "2 rows, 1 orders: 2 accepted"
