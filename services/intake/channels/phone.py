"""Phone desk: the form a call-centre agent fills in while the customer is on the line.

A flat form of strings (empty fields are sent as ""), the order lines typed as text, one per
line or separated by ";", each ``SKU x QUANTITY @ UNIT PRICE``::

    {"form": "phone-desk", "ticket": "PD-2026-000417", "agent": "agent-07",
     "caller_name": "Li Wei", "caller_phone": "+86 138 0013 8000", "caller_email": "",
     "deliver_to": "Li Wei", "street": "88 Nanjing Road", "street2": "", "city": "Shanghai",
     "postcode": "200000", "country": "CN",
     "items": "TEA-001 x 2 @ 12.50; CUP-010 x 1 @ 6.90", "currency": "CNY",
     "urgency": "high", "notes": "customer will call back about gift wrap"}
"""

from __future__ import annotations

import re
from typing import Any

from services.intake.channels.reading import Mapped, put, text
from shared.contracts.common import FieldError

CHANNEL = "phone"
FORM = "phone-desk"
MAX_ITEM_LINES = 200

PATHS = {
    "external_id": "ticket",
    "customer": "caller_phone",
    "customer.name": "caller_name",
    "customer.email": "caller_email",
    "customer.phone": "caller_phone",
    "customer.locale": "language",
    "lines": "items",
    "lines.*": "items.*",
    "lines.*.sku": "items.*.sku",
    "lines.*.quantity": "items.*.quantity",
    "lines.*.unit_price": "items.*.unit_price",
    "currency": "currency",
    "total": "total",
    "shipping_address": "deliver_to",
    "shipping_address.name": "deliver_to",
    "shipping_address.line1": "street",
    "shipping_address.line2": "street2",
    "shipping_address.city": "city",
    "shipping_address.postal_code": "postcode",
    "shipping_address.country": "country",
    "priority": "urgency",
    "note": "notes",
}

_ITEM = re.compile(r"^\s*(?P<sku>.+?)\s+x\s*(?P<quantity>\S+)\s*@\s*(?P<price>\S+)\s*$", re.I)


def recognises(doc: dict[str, Any]) -> bool:
    return doc.get("form") == FORM


def to_canonical(doc: dict[str, Any]) -> Mapped:
    errors: list[FieldError] = []
    out: dict[str, Any] = {}
    put(out, "external_id", text(doc.get("ticket")))
    customer: dict[str, Any] = {}
    put(customer, "name", text(doc.get("caller_name")))
    put(customer, "phone", text(doc.get("caller_phone")))
    put(customer, "email", text(doc.get("caller_email")))
    put(customer, "locale", text(doc.get("language")))
    out["customer"] = customer

    items = doc.get("items")
    covered: set[str] = set()
    numbers: list[int] = []
    if isinstance(items, str):
        lines = []
        typed = [s for s in re.split(r"[;\n]", items) if s.strip()][:MAX_ITEM_LINES]
        for i, typed_line in enumerate(typed):
            match = _ITEM.match(typed_line)
            if match is None:
                errors.append(
                    FieldError(
                        field=f"items.{i}",
                        reason=f"cannot read {typed_line.strip()[:60]!r}: "
                        "write SKU x QUANTITY @ UNIT PRICE, e.g. TEA-001 x 2 @ 12.50",
                    )
                )
                continue
            quantity = match["quantity"]
            numbers.append(i)
            lines.append(
                {
                    "sku": match["sku"].strip(),
                    "quantity": _whole(quantity),
                    "unit_price": match["price"],
                }
            )
        out["lines"] = lines
        if errors and not lines:
            covered.add("lines")  # every typed line is already reported
    else:
        put(out, "lines", items)

    put(out, "currency", text(doc.get("currency")))
    put(out, "total", text(doc.get("total")))
    address: dict[str, Any] = {}
    put(address, "name", text(doc.get("deliver_to")) or text(doc.get("caller_name")))
    put(address, "line1", text(doc.get("street")))
    put(address, "line2", text(doc.get("street2")))
    put(address, "city", text(doc.get("city")))
    put(address, "postal_code", text(doc.get("postcode")))
    put(address, "country", text(doc.get("country")))
    out["shipping_address"] = address
    put(out, "priority", text(doc.get("urgency")))
    put(out, "note", text(doc.get("notes")))
    return Mapped(out, errors, PATHS, frozenset(covered), tuple(numbers))


def _whole(typed: str) -> int | str:
    # Typed digits become a number; anything else goes on as typed for validation to name.
    return int(typed) if typed.isdigit() and len(typed) < 10 else typed
