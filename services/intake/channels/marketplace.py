"""Marketplace: the ``order.created`` webhook a marketplace platform posts for each sale.

Money comes as ``{"amount": "12.50", "currency_code": "CNY"}`` objects on every item and on the
order, each item carries its line total, and urgency is the buyer's shipping service level::

    {"event": "order.created", "event_id": "evt_01HV3T9Q", "shop_id": "SHOP-88",
     "created_at": "2026-03-01T08:30:00Z",
     "data": {
       "order_sn": "MP-2603010001",
       "buyer": {"username": "meilin88", "full_name": "Mei Lin",
                 "email": "mei.lin@example.com", "phone": "+86 138 0013 8000"},
       "recipient_address": {"name": "Mei Lin", "address_line_1": "18 Longjing Road",
                             "address_line_2": null, "city": "Hangzhou", "zipcode": "310000",
                             "region": "CN"},
       "items": [{"seller_sku": "TEA-001", "quantity_purchased": 2,
                  "item_price": {"amount": "12.50", "currency_code": "CNY"},
                  "line_total": {"amount": "25.00", "currency_code": "CNY"}}],
       "order_total": {"amount": "25.00", "currency_code": "CNY"},
       "shipping_service_level": "Standard",
       "buyer_note": null}}
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from services.intake.channels.reading import Mapped, amount, obj, put, text
from shared.contracts.common import FieldError

CHANNEL = "marketplace"
EVENT = "order.created"

# The buyer's shipping choice is the order's urgency.
SERVICE_LEVELS = {"NextDay": "urgent", "Expedited": "high", "Standard": "normal", "Economy": "low"}

PATHS = {
    "external_id": "data.order_sn",
    "customer": "data.buyer",
    "customer.name": "data.buyer.full_name",
    "customer.email": "data.buyer.email",
    "customer.phone": "data.buyer.phone",
    "customer.locale": "data.buyer.locale",
    "lines": "data.items",
    "lines.*": "data.items.*",
    "lines.*.sku": "data.items.*.seller_sku",
    "lines.*.quantity": "data.items.*.quantity_purchased",
    "lines.*.unit_price": "data.items.*.item_price.amount",
    "currency": "data.order_total.currency_code",
    "total": "data.order_total.amount",
    "shipping_address": "data.recipient_address",
    "shipping_address.name": "data.recipient_address.name",
    "shipping_address.line1": "data.recipient_address.address_line_1",
    "shipping_address.line2": "data.recipient_address.address_line_2",
    "shipping_address.city": "data.recipient_address.city",
    "shipping_address.postal_code": "data.recipient_address.zipcode",
    "shipping_address.country": "data.recipient_address.region",
    "priority": "data.shipping_service_level",
    "note": "data.buyer_note",
}


def recognises(doc: dict[str, Any]) -> bool:
    return "event" in doc and "data" in doc


def to_canonical(doc: dict[str, Any]) -> Mapped:
    errors: list[FieldError] = []
    if doc.get("event") != EVENT:
        errors.append(FieldError(field="event", reason=f"intake takes {EVENT!r} webhooks only"))
    data = obj(doc.get("data"))
    order_total = obj(data.get("order_total"))
    currency = text(order_total.get("currency_code"))
    out: dict[str, Any] = {}
    put(out, "external_id", text(data.get("order_sn")))

    buyer = obj(data.get("buyer"))
    customer: dict[str, Any] = {}
    put(customer, "name", text(buyer.get("full_name")) or text(buyer.get("username")))
    put(customer, "email", text(buyer.get("email")))
    put(customer, "phone", text(buyer.get("phone")))
    put(customer, "locale", text(buyer.get("locale")))
    out["customer"] = customer

    items = data.get("items")
    if isinstance(items, list):
        lines = []
        for i, item in enumerate(items):
            item = obj(item)
            price = obj(item.get("item_price"))
            line: dict[str, Any] = {}
            put(line, "sku", text(item.get("seller_sku")))
            put(line, "quantity", item.get("quantity_purchased"))
            put(line, "unit_price", amount(price.get("amount")))
            lines.append(line)
            errors.extend(_item_checks(i, item, currency))
        out["lines"] = lines
    else:
        put(out, "lines", items)

    put(out, "currency", currency)
    put(out, "total", amount(order_total.get("amount")))

    where = obj(data.get("recipient_address"))
    address: dict[str, Any] = {}
    put(address, "name", text(where.get("name")))
    put(address, "line1", text(where.get("address_line_1")))
    put(address, "line2", text(where.get("address_line_2")))
    put(address, "city", text(where.get("city")))
    put(address, "postal_code", text(where.get("zipcode")))
    put(address, "country", text(where.get("region")))
    out["shipping_address"] = address

    level = data.get("shipping_service_level")
    if level is not None:
        urgency = SERVICE_LEVELS.get(level) if isinstance(level, str) else None
        if urgency is None:
            errors.append(
                FieldError(
                    field="data.shipping_service_level",
                    reason=f"unknown service level; one of {', '.join(SERVICE_LEVELS)}",
                )
            )
        put(out, "priority", urgency)
    put(out, "note", text(data.get("buyer_note")))
    covered = frozenset({"priority"}) if level is not None else frozenset()
    return Mapped(out, errors, PATHS, covered)


def _item_checks(i: int, item: dict[str, Any], currency: str | None) -> list[FieldError]:
    """Problems only the webhook's own fields show: a line in another currency, a line total
    that is not quantity times price."""
    errors = []
    price = obj(item.get("item_price"))
    line_currency = text(price.get("currency_code"))
    if line_currency is not None and currency is not None and line_currency != currency:
        errors.append(
            FieldError(
                field=f"data.items.{i}.item_price.currency_code",
                reason=f"{line_currency} differs from the order's currency {currency}",
            )
        )
    line_total = obj(item.get("line_total"))
    quantity = item.get("quantity_purchased")
    if line_total and isinstance(quantity, int) and not isinstance(quantity, bool):
        try:
            unit = Decimal(str(price.get("amount")))
            stated = Decimal(str(line_total.get("amount")))
            if unit.is_finite() and stated.is_finite() and unit * quantity != stated:
                errors.append(
                    FieldError(
                        field=f"data.items.{i}.line_total.amount",
                        reason=f"{stated} is not {quantity} x {unit} = {unit * quantity}",
                    )
                )
        except (InvalidOperation, ArithmeticError):
            pass  # an unreadable price is named by the canonical validation
    return errors
