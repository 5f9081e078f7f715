"""Reading an order sheet (CSV and .xlsx): rows grouped into orders, each problem on its row."""

from __future__ import annotations

from pathlib import Path

import pytest
from openpyxl import Workbook

from services.intake.channels.spreadsheet import SheetError, parse_rows, read_sheet
from services.intake.domain import validate_submission
from shared.contracts.intake import OrderSubmission

HEADER = (
    "order_ref,customer_name,email,phone,sku,quantity,unit_price,currency,"
    "address_line1,city,postal_code,country,priority"
)
CSV = f"""{HEADER}
SS-1,Mei Lin,mei.lin@example.com,,TEA-001,2,12.50,CNY,18 Longjing Road,Hangzhou,310000,CN,high
SS-1,,,,CUP-010,1,6.90,,,,,,
,,,,,,,,,,,,
SS-2,Li Wei,,+86 138 0013 8001,POT-020,1,49.00,CNY,88 Nanjing Road,Shanghai,200000,CN,
SS-2,,,,BAG-030,3,3.20,USD,,,,,
,Sam Lee,sam@example.com,,TEA-002,1,18.00,CNY,1 Road,Beijing,100000,CN,
"""


def test_rows_with_the_same_reference_make_one_order(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(CSV)
    sheet = read_sheet(path)
    assert sheet.rows == 5  # the blank row is not counted
    first, second = sheet.orders
    assert first.external_id == "SS-1"
    assert first.rows == [2, 3]
    assert first.problems == []
    outcome = validate_submission(first.doc, "spreadsheet")
    assert isinstance(outcome, OrderSubmission)
    assert [(line.sku, line.quantity, str(line.unit_price)) for line in outcome.lines] == [
        ("TEA-001", 2, "12.50"),
        ("CUP-010", 1, "6.90"),
    ]
    assert outcome.shipping_address.name == "Mei Lin"  # no ship_to column: the customer
    assert outcome.priority == "high"
    # A later row that fills an order-level column differently is a problem on that row.
    assert [(p.row, p.column) for p in second.problems] == [(6, "currency")]
    # A row without a reference belongs to no order and is reported, not guessed.
    assert [(p.row, p.column) for p in sheet.stray] == [(7, "order_ref")]


def test_a_canonical_error_points_at_the_row_and_column_to_fix() -> None:
    sheet = parse_rows(
        [
            HEADER.split(","),
            ["SS-9", "Mei", "bad", "", "TEA-001", "2", "12.50", "CNY", "1 Rd", "X", "1", "CN"],
            ["SS-9", "", "", "", "TEA-002", "0", "1.00", "", "", "", "", ""],
        ]
    )
    [order] = sheet.orders
    assert order.locate("lines.1.quantity") == (3, "quantity")
    assert order.locate("customer.email") == (2, "email")
    assert order.locate("shipping_address.postal_code") == (2, "postal_code")
    assert order.locate("external_id") == (2, "order_ref")


def test_an_xlsx_sheet_reads_like_the_csv(tmp_path: Path) -> None:
    book = Workbook()
    ws = book.active
    assert ws is not None
    ws.append(HEADER.split(","))
    # Spreadsheets type numbers: 2 arrives as 2.0, a postcode as a number.
    order = ["XL-1", "Mei Lin", "mei@example.com", None, "TEA-001", 2.0, 12.5, "CNY"]
    ws.append([*order, "18 Longjing Road", "Hangzhou", 310000, "CN", None])
    path = tmp_path / "orders.xlsx"
    book.save(path)
    [order] = read_sheet(path).orders
    outcome = validate_submission(order.doc, "spreadsheet")
    assert isinstance(outcome, OrderSubmission), outcome
    assert outcome.lines[0].quantity == 2
    assert str(outcome.lines[0].unit_price) == "12.5"
    assert outcome.shipping_address.postal_code == "310000"


@pytest.mark.parametrize(
    ("name", "content", "complaint"),
    [
        ("orders.txt", "x", "reads .csv or .xlsx"),
        ("orders.csv", "", "empty"),
        ("orders.csv", "ref,name\n1,2\n", "missing order_ref"),
        ("orders.xlsx", "not a workbook", "not a readable .xlsx"),
    ],
)
def test_a_file_that_is_no_order_sheet_is_refused(
    tmp_path: Path, name: str, content: str, complaint: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SheetError, match=complaint):
        read_sheet(path)
