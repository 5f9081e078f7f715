"""Channel adapters: each channel's own payload (fixtures below, as its software sends them)
read into the canonical order, and every problem reported under the field the channel sent."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import orjson
import pytest

from services.intake import domain
from services.intake.channels import ADAPTERS
from services.intake.channels.reading import translate
from shared.contracts.common import FieldError
from shared.contracts.intake import OrderSubmission
from tests.conftest import order_doc

WECHAT_PUSH: dict[str, Any] = {
    "appid": "wx8f3e2a1b4c5d6e7f",
    "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
    "out_trade_no": "WX2026030100012",
    "fee_type": "CNY",
    "total_fee": 3190,
    "buyer": {"nickname": "Mei Lin", "phone_number": "+86 138 0013 8000", "language": "zh_CN"},
    "goods_list": [
        {"goods_id": "TEA-001", "goods_num": 2, "goods_price": 1250},
        {"goods_id": "CUP-010", "goods_num": 1, "goods_price": 690},
    ],
    "address_info": {
        "userName": "Mei Lin",
        "telNumber": "+86 138 0013 8000",
        "provinceName": "Zhejiang",
        "cityName": "Hangzhou",
        "countyName": "Xihu",
        "detailInfo": "18 Longjing Road",
        "postalCode": "310000",
    },
    "is_urgent": True,
    "remark": "ring twice",
}

PHONE_DESK_FORM: dict[str, Any] = {
    "form": "phone-desk",
    "ticket": "PD-2026-000417",
    "agent": "agent-07",
    "caller_name": "Li Wei",
    "caller_phone": "+86 138 0013 8001",
    "caller_email": "",
    "deliver_to": "Li Wei",
    "street": "88 Nanjing Road",
    "street2": "",
    "city": "Shanghai",
    "postcode": "200000",
    "country": "CN",
    "items": "TEA-001 x 2 @ 12.50; CUP-010 x1 @ 6.90\nPOT-020 x 1 @ 49.00",
    "currency": "CNY",
    "urgency": "high",
    "notes": "customer will call back about gift wrap",
}

MARKETPLACE_WEBHOOK: dict[str, Any] = {
    "event": "order.created",
    "event_id": "evt_01HV3T9Q",
    "shop_id": "SHOP-88",
    "created_at": "2026-03-01T08:30:00Z",
    "data": {
        "order_sn": "MP-2603010001",
        "buyer": {
            "username": "meilin88",
            "full_name": "Mei Lin",
            "email": "mei.lin@example.com",
            "phone": "+86 138 0013 8000",
        },
        "recipient_address": {
            "name": "Mei Lin",
            "address_line_1": "18 Longjing Road",
            "address_line_2": None,
            "city": "Hangzhou",
            "zipcode": "310000",
            "region": "CN",
        },
        "items": [
            {
                "seller_sku": "TEA-001",
                "quantity_purchased": 2,
                "item_price": {"amount": "12.50", "currency_code": "CNY"},
                "line_total": {"amount": "25.00", "currency_code": "CNY"},
            }
        ],
        "order_total": {"amount": "25.00", "currency_code": "CNY"},
        "shipping_service_level": "Expedited",
        "buyer_note": None,
    },
}


def read(doc: dict[str, Any], channel: str) -> domain.Reading:
    return domain.read(orjson.dumps(doc), channel)


def accepted(doc: dict[str, Any], channel: str) -> OrderSubmission:
    reading = read(doc, channel)
    assert reading.submission is not None, reading.errors
    return reading.submission


def fields(doc: dict[str, Any], channel: str) -> list[str]:
    reading = read(doc, channel)
    assert reading.submission is None, "expected a rejection"
    return sorted(e.field for e in reading.errors)


def changed(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target: Any = out
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    if value is ...:
        del target[int(last) if last.isdigit() else last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return out


def test_every_adapter_module_names_its_channel() -> None:
    assert set(ADAPTERS) == {"wechat", "phone", "marketplace"}


def test_a_wechat_push_becomes_the_canonical_order_with_fen_as_decimal_money() -> None:
    sub = accepted(WECHAT_PUSH, "wechat")
    assert sub.channel == "wechat"
    assert sub.external_id == "WX2026030100012"
    assert [(line.sku, line.quantity, line.unit_price) for line in sub.lines] == [
        ("TEA-001", 2, Decimal("12.50")),
        ("CUP-010", 1, Decimal("6.90")),
    ]
    assert sub.total == Decimal("31.90") == sub.lines_total()
    assert sub.customer.phone == "+86 138 0013 8000"
    assert sub.customer.email is None
    assert sub.customer.locale == "zh-CN"
    assert sub.shipping_address.city == "Hangzhou"
    assert sub.shipping_address.line2 == "Xihu, Zhejiang"
    assert sub.shipping_address.country == "CN"
    assert sub.priority == "urgent"
    assert sub.note == "ring twice"


def test_a_wechat_price_that_is_not_whole_fen_is_named_in_wechat_terms() -> None:
    doc = changed(WECHAT_PUSH, "goods_list.1.goods_price", "6.90")
    reading = read(doc, "wechat")
    assert reading.external_id == "WX2026030100012"
    assert [e.field for e in reading.errors] == ["goods_list.1.goods_price"]
    assert "fen" in reading.errors[0].reason


def test_wechat_errors_name_the_wechat_fields_all_at_once() -> None:
    doc = changed(WECHAT_PUSH, "goods_list.0.goods_num", 0)
    doc = changed(doc, "goods_list.1.goods_id", "cup")
    doc = changed(doc, "fee_type", "XYZ")
    doc = changed(doc, "total_fee", 99.5)
    doc = changed(doc, "address_info.postalCode", ...)
    assert fields(doc, "wechat") == [
        "address_info.postalCode",
        "fee_type",
        "goods_list.0.goods_num",
        "goods_list.1.goods_id",
        "total_fee",
    ]


def test_a_wechat_total_that_does_not_add_up_is_named_as_total_fee() -> None:
    [error] = read(changed(WECHAT_PUSH, "total_fee", 3100), "wechat").errors
    assert error.field == "total_fee"
    assert "31.00" in error.reason and "31.90" in error.reason


def test_a_phone_desk_form_becomes_the_canonical_order() -> None:
    sub = accepted(PHONE_DESK_FORM, "phone")
    assert sub.external_id == "PD-2026-000417"
    assert [(line.sku, line.quantity, str(line.unit_price)) for line in sub.lines] == [
        ("TEA-001", 2, "12.50"),
        ("CUP-010", 1, "6.90"),
        ("POT-020", 1, "49.00"),
    ]
    assert sub.customer.email is None  # the empty form field is no address
    assert sub.customer.phone == "+86 138 0013 8001"
    assert sub.shipping_address.line2 is None
    assert sub.priority == "high"
    assert sub.note == "customer will call back about gift wrap"


def test_a_typed_item_line_that_cannot_be_read_is_named_and_the_others_still_checked() -> None:
    doc = changed(
        PHONE_DESK_FORM, "items", "TEA-001 x 2 @ 12.50; two cups please; CUP-010 x 0 @ 6.90"
    )
    assert fields(doc, "phone") == ["items.1", "items.2.quantity"]
    [unreadable] = [e for e in read(doc, "phone").errors if e.field == "items.1"]
    assert "two cups please" in unreadable.reason
    assert "SKU x QUANTITY @ UNIT PRICE" in unreadable.reason


def test_a_form_with_no_readable_item_says_so_once_per_line() -> None:
    doc = changed(PHONE_DESK_FORM, "items", "tea; cups")
    assert fields(doc, "phone") == ["items.0", "items.1"]


def test_an_empty_phone_form_reports_every_missing_field_in_form_terms() -> None:
    doc = {key: "" for key in PHONE_DESK_FORM} | {"form": "phone-desk"}
    # (Whether the caller can be reached is checked once the caller has a name.)
    assert fields(doc, "phone") == [
        "caller_name",
        "city",
        "country",
        "currency",
        "deliver_to",
        "items",
        "postcode",
        "street",
        "ticket",
    ]


def test_a_marketplace_webhook_becomes_the_canonical_order() -> None:
    sub = accepted(MARKETPLACE_WEBHOOK, "marketplace")
    assert sub.external_id == "MP-2603010001"
    assert sub.customer.name == "Mei Lin"
    assert [(line.sku, line.quantity, str(line.unit_price)) for line in sub.lines] == [
        ("TEA-001", 2, "12.50")
    ]
    assert sub.total == Decimal("25.00")
    assert sub.currency == "CNY"
    assert sub.priority == "high"  # Expedited
    assert sub.shipping_address.postal_code == "310000"


def test_marketplace_line_totals_and_line_currencies_are_checked() -> None:
    doc = changed(MARKETPLACE_WEBHOOK, "data.items.0.line_total.amount", "24.00")
    doc = changed(doc, "data.items.0.item_price.currency_code", "USD")
    doc = changed(doc, "data.order_total.amount", "30.00")
    assert fields(doc, "marketplace") == [
        "data.items.0.item_price.currency_code",
        "data.items.0.line_total.amount",
        "data.order_total.amount",
    ]


def test_a_webhook_that_is_not_an_order_creation_is_refused() -> None:
    doc = changed(MARKETPLACE_WEBHOOK, "event", "order.cancelled")
    assert fields(doc, "marketplace") == ["event"]


def test_an_unknown_service_level_is_named_once() -> None:
    doc = changed(MARKETPLACE_WEBHOOK, "data.shipping_service_level", "Teleport")
    assert fields(doc, "marketplace") == ["data.shipping_service_level"]


@pytest.mark.parametrize("channel", ["web", "wechat", "phone", "marketplace", "shop"])
def test_the_canonical_json_is_accepted_on_every_channel(channel: str) -> None:
    sub = accepted(order_doc("ext-1", channel=channel), channel)
    assert sub.channel == channel
    assert sub.external_id == "ext-1"


def test_a_native_payload_on_another_channel_is_not_read_as_that_channel() -> None:
    # A WeChat push sent on the web channel is not WeChat's to map: web reads canonical JSON.
    assert "customer" in fields(WECHAT_PUSH, "web")


@pytest.mark.parametrize(
    ("canonical", "native"),
    [
        ("lines.3.quantity", "goods_list.3.goods_num"),
        ("lines.0", "goods_list.0"),
        ("lines", "goods_list"),
        ("customer.email", "buyer.email"),
        ("shipping_address", "address_info"),
        ("(body)", "(body)"),
        ("unmapped.field", "unmapped.field"),
    ],
)
def test_canonical_paths_translate_to_wechat_paths(canonical: str, native: str) -> None:
    from services.intake.channels import wechat

    assert translate(canonical, wechat.PATHS) == native


def test_a_line_total_in_the_canonical_json_must_add_up() -> None:
    doc = order_doc(
        lines=[
            {"sku": "TEA-001", "quantity": 2, "unit_price": "12.50", "line_total": "25.00"},
            {"sku": "CUP-010", "quantity": 3, "unit_price": "1.10", "line_total": "3.00"},
        ]
    )
    reading = read(doc, "web")
    assert reading.errors == [
        FieldError(field="lines.1.line_total", reason="3.00 is not 3 x 1.10 = 3.30")
    ]
