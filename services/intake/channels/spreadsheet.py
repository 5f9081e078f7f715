"""Spreadsheets (CSV or .xlsx): one row per order line, rows with the same ``order_ref`` make one
order. ``orderflow import`` reads a sheet with this module, submits the orders in batches as the
``spreadsheet`` channel, and reports every row, with each problem under its column::

    order_ref,customer_name,email,phone,sku,quantity,unit_price,currency,ship_to,address_line1,
    address_line2,city,postal_code,country,priority,note
    SS-1001,Mei Lin,mei.lin@example.com,,TEA-001,2,12.50,CNY,Mei Lin,18 Longjing Road,,Hangzhou,
    310000,CN,normal,
    SS-1001,,,,CUP-010,1,6.90,,,,,,,,,

Order-level columns may be left empty on an order's later rows; if filled, they must agree
with its first row.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

CHANNEL = "spreadsheet"
HEADER_ROW = 1

LINE_COLUMNS = ("sku", "quantity", "unit_price", "line_total")
# Order-level column -> where it goes in the canonical order.
ORDER_COLUMNS: dict[str, tuple[str, ...]] = {
    "customer_name": ("customer", "name"),
    "email": ("customer", "email"),
    "phone": ("customer", "phone"),
    "locale": ("customer", "locale"),
    "currency": ("currency",),
    "ship_to": ("shipping_address", "name"),
    "address_line1": ("shipping_address", "line1"),
    "address_line2": ("shipping_address", "line2"),
    "city": ("shipping_address", "city"),
    "postal_code": ("shipping_address", "postal_code"),
    "country": ("shipping_address", "country"),
    "priority": ("priority",),
    "note": ("note",),
    "total": ("total",),
}
REQUIRED = ("order_ref", "sku", "quantity", "unit_price", "currency")
# Canonical field -> the column a person fixes.
COLUMN_OF: dict[str, str] = {".".join(path): column for column, path in ORDER_COLUMNS.items()} | {
    "external_id": "order_ref",
    "customer": "email",
    "shipping_address": "address_line1",
    "lines": "sku",
}


class SheetError(ValueError):
    """The file cannot be read as an order sheet at all (wrong type, no header, no columns)."""


@dataclass(frozen=True, slots=True)
class RowProblem:
    row: int
    column: str
    reason: str


@dataclass
class SheetOrder:
    """One order: its reference, the sheet rows it came from (its lines, in order), and the
    canonical document to submit."""

    external_id: str
    rows: list[int]
    doc: dict[str, Any]
    problems: list[RowProblem] = field(default_factory=list)

    def locate(self, canonical_field: str) -> tuple[int, str]:
        """(row, column) of a canonical field path, for a person to fix."""
        parts = canonical_field.split(".")
        if parts[0] == "lines" and len(parts) > 1 and parts[1].isdigit():
            index = int(parts[1])
            row = self.rows[index] if index < len(self.rows) else self.rows[0]
            return row, parts[2] if len(parts) > 2 else "sku"
        for end in range(len(parts), 0, -1):
            column = COLUMN_OF.get(".".join(parts[:end]))
            if column is not None:
                return self.rows[0], column
        return self.rows[0], canonical_field


@dataclass
class Sheet:
    orders: list[SheetOrder]
    # Rows that belong to no order (no order_ref): reported, never submitted.
    stray: list[RowProblem]
    rows: int


def read_sheet(path: Path) -> Sheet:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                table = [list(r) for r in csv.reader(f)]
        except UnicodeDecodeError as exc:
            raise SheetError(
                f"{path.name} is not UTF-8 text (byte {exc.start}): save the sheet as CSV UTF-8"
            ) from exc
        except csv.Error as exc:
            raise SheetError(f"{path.name} is not a readable CSV file: {exc}") from exc
    elif suffix in (".xlsx", ".xlsm"):
        table = _xlsx_rows(path)
    else:
        raise SheetError(f"{path.name}: import reads .csv or .xlsx files")
    return parse_rows(table)


def _xlsx_rows(path: Path) -> list[list[Any]]:
    from openpyxl import load_workbook

    try:
        book = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a file that is not a workbook
        raise SheetError(f"{path.name} is not a readable .xlsx workbook: {exc}") from exc
    try:
        sheet = book.worksheets[0]
        return [list(r) for r in sheet.iter_rows(values_only=True)]
    finally:
        book.close()


def parse_rows(table: Iterable[list[Any]]) -> Sheet:
    rows = list(table)
    if not rows:
        raise SheetError("the sheet is empty: the first row must name the columns")
    header = [_column_name(c) for c in rows[0]]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise SheetError(f"the first row must name the columns; missing {', '.join(missing)}")
    by_ref: dict[str, SheetOrder] = {}
    first_values: dict[str, dict[str, str]] = {}
    stray: list[RowProblem] = []
    count = 0
    for offset, values in enumerate(rows[1:], start=HEADER_ROW + 1):
        cells = {name: _cell(v) for name, v in zip(header, values, strict=False) if name}
        if not any(cells.values()):
            continue  # blank rows between orders are common
        count += 1
        ref = cells.get("order_ref")
        if not ref:
            stray.append(RowProblem(offset, "order_ref", "every row needs the order it belongs to"))
            continue
        order = by_ref.get(ref)
        if order is None:
            order = by_ref[ref] = SheetOrder(ref, [], _order_doc(ref, cells))
            first_values[ref] = cells
        else:
            for column in ORDER_COLUMNS:
                value, first = cells.get(column), first_values[ref].get(column)
                if value and value != first:
                    order.problems.append(
                        RowProblem(
                            offset,
                            column,
                            f"{value!r} differs from {first!r} on the order's first row",
                        )
                    )
        order.rows.append(offset)
        order.doc["lines"].append(_line(cells))
    return Sheet(list(by_ref.values()), stray, count)


def _order_doc(ref: str, cells: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"channel": CHANNEL, "external_id": ref, "lines": []}
    for column, path in ORDER_COLUMNS.items():
        value = cells.get(column)
        if not value:
            continue
        target = doc
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    doc.setdefault("customer", {})
    doc.setdefault("shipping_address", {})
    if "name" not in doc["shipping_address"] and "name" in doc["customer"]:
        doc["shipping_address"]["name"] = doc["customer"]["name"]
    return doc


def _line(cells: dict[str, str]) -> dict[str, Any]:
    line: dict[str, Any] = {}
    for column in LINE_COLUMNS:
        value = cells.get(column)
        if value:
            line[column] = int(value) if column == "quantity" and value.isdigit() else value
    return line


def _column_name(value: Any) -> str:
    return str(value or "").strip().lower().replace(" ", "_").replace("-", "_")


def _cell(value: Any) -> str:
    """A cell as text: spreadsheets turn 2 into 2.0 and 310000 into a number; a price keeps
    the digits it was typed with."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return str(Decimal(repr(value)))
    return str(value).strip()
