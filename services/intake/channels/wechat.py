"""WeChat mini-program shop: the order its backend pushes after ``wx.requestPayment``.

Amounts are integers in fen (as WeChat Pay sends them), the address is what
``wx.chooseAddress`` returns (camelCase, province/city/county), the buyer is known by an openid
and usually a phone number rather than an e-mail::

    {"appid": "wx8f3e2a1b4c5d6e7f", "openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
     "out_trade_no": "WX2026030100012", "fee_type": "CNY", "total_fee": 2500,
     "buyer": {"nickname": "Mei Lin", "phone_number": "+86 138 0013 8000", "language": "zh_CN"},
     "goods_list": [{"goods_id": "TEA-001", "goods_num": 2, "goods_price": 1250}],
     "address_info": {"userName": "Mei Lin", "telNumber": "+86 138 0013 8000",
                      "provinceName": "Zhejiang", "cityName": "Hangzhou", "countyName": "Xihu",
                      "detailInfo": "18 Longjing Road", "postalCode": "310000"},
     "is_urgent": false, "remark": "ring twice"}
"""

from __future__ import annotations

from typing import Any

from services.intake.channels.reading import Mapped, minor_units, obj, put, text
from shared.contracts.common import FieldError

CHANNEL = "wechat"

PATHS = {
    "external_id": "out_trade_no",
    "customer": "buyer",
    "customer.name": "buyer.nickname",
    "customer.email": "buyer.email",
    "customer.phone": "buyer.phone_number",
    "customer.locale": "buyer.language",
    "lines": "goods_list",
    "lines.*": "goods_list.*",
    "lines.*.sku": "goods_list.*.goods_id",
    "lines.*.quantity": "goods_list.*.goods_num",
    "lines.*.unit_price": "goods_list.*.goods_price",
    "currency": "fee_type",
    "total": "total_fee",
    "shipping_address": "address_info",
    "shipping_address.name": "address_info.userName",
    "shipping_address.line1": "address_info.detailInfo",
    "shipping_address.line2": "address_info.countyName",
    "shipping_address.city": "address_info.cityName",
    "shipping_address.postal_code": "address_info.postalCode",
    "shipping_address.country": "address_info.countryCode",
    "priority": "is_urgent",
    "note": "remark",
}


def recognises(doc: dict[str, Any]) -> bool:
    return "out_trade_no" in doc or "goods_list" in doc


def to_canonical(doc: dict[str, Any]) -> Mapped:
    errors: list[FieldError] = []
    covered: set[str] = set()
    buyer = obj(doc.get("buyer"))
    address = obj(doc.get("address_info"))
    out: dict[str, Any] = {}
    put(out, "external_id", text(doc.get("out_trade_no")))

    customer: dict[str, Any] = {}
    put(customer, "name", text(buyer.get("nickname")) or text(address.get("userName")))
    put(customer, "phone", text(buyer.get("phone_number")) or text(address.get("telNumber")))
    put(customer, "email", text(buyer.get("email")))
    language = text(buyer.get("language")) or "zh_CN"
    customer["locale"] = language.replace("_", "-")
    out["customer"] = customer

    goods = doc.get("goods_list")
    if isinstance(goods, list):
        lines = []
        for i, item in enumerate(goods):
            item = obj(item)
            line: dict[str, Any] = {}
            put(line, "sku", text(item.get("goods_id")))
            put(line, "quantity", item.get("goods_num"))
            price = item.get("goods_price")
            if price is not None and minor_units(price) is None:
                errors.append(
                    FieldError(
                        field=f"goods_list.{i}.goods_price",
                        reason="must be a whole number of fen (e.g. 1250 for 12.50)",
                    )
                )
                covered.add(f"lines.{i}.unit_price")
            put(line, "unit_price", minor_units(price))
            lines.append(line)
        out["lines"] = lines
    else:
        put(out, "lines", goods)

    out["currency"] = text(doc.get("fee_type")) or "CNY"
    total = doc.get("total_fee")
    if total is not None and minor_units(total) is None:
        errors.append(FieldError(field="total_fee", reason="must be a whole number of fen"))
        covered.add("total")
    put(out, "total", minor_units(total))

    if address:
        where: dict[str, Any] = {}
        put(where, "name", text(address.get("userName")))
        put(where, "line1", text(address.get("detailInfo")))
        district = [text(address.get("countyName")), text(address.get("provinceName"))]
        put(where, "line2", ", ".join(d for d in district if d) or None)
        put(where, "city", text(address.get("cityName")))
        put(where, "postal_code", text(address.get("postalCode")))
        # Mini-program shops deliver within mainland China unless they say otherwise.
        where["country"] = text(address.get("countryCode")) or "CN"
        out["shipping_address"] = where

    out["priority"] = "urgent" if doc.get("is_urgent") is True else "normal"
    put(out, "note", text(doc.get("remark")))
    return Mapped(out, errors, PATHS, frozenset(covered))
