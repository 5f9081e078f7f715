"""The demo load: a small catalogue and realistic orders from several channels.

Most orders are valid; some are invalid (to show rejections with field errors), some repeat an
earlier external id (duplicates), and some ask for a scarce SKU (backorders). Each channel sends
its orders in its own shape (a WeChat mini-program push, a phone-desk form, a marketplace
webhook; the web shop the canonical JSON), and intake's adapters read them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
from nats.js import JetStreamContext

from shared import subjects

# (sku, units per warehouse, unit price); LAMP-042 is scarce on purpose.
CATALOGUE: list[tuple[str, int, str]] = [
    ("TEA-001", 5000, "12.50"),
    ("TEA-002", 5000, "18.00"),
    ("CUP-010", 5000, "6.90"),
    ("POT-020", 3000, "49.00"),
    ("BAG-030", 5000, "3.20"),
    ("LAMP-042", 3, "129.00"),
]
WAREHOUSES = ("WH-SH", "WH-BJ")
CHANNELS = ("web", "wechat", "phone", "marketplace")
CITIES = [
    ("Shanghai", "200000", "CN"),
    ("Beijing", "100000", "CN"),
    ("Hangzhou", "310000", "CN"),
    ("Singapore", "018956", "SG"),
    ("Hong Kong", "999077", "HK"),
]
NAMES = ["Li Wei", "Wang Fang", "Zhang Min", "Chen Jing", "Tan Mei Ling", "Alex Ho", "Sam Lee"]


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    channel: str
    external_id: str
    expect: str  # accepted | rejected | duplicate | backordered
    payload: dict[str, Any]


def valid_order(
    rng: random.Random,
    channel: str,
    external_id: str,
    skus: list[tuple[str, int, str]] | None = None,
) -> dict[str, Any]:
    name = rng.choice(NAMES)
    city, postal, country = rng.choice(CITIES)
    picks = rng.sample(skus or CATALOGUE[:5], k=rng.randint(1, 3))
    return {
        "channel": channel,
        "external_id": external_id,
        "customer": {
            "name": name,
            "email": f"{name.split()[0].lower()}{rng.randint(1, 999)}@example.com",
            "phone": f"+86 138 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
            "locale": rng.choice(["en", "zh-CN"]),
        },
        "lines": [
            {"sku": sku, "quantity": rng.randint(1, 3), "unit_price": price}
            for sku, _, price in picks
        ],
        "currency": "CNY",
        "shipping_address": {
            "name": name,
            "line1": f"{rng.randint(1, 999)} Nanjing Road",
            "city": city,
            "postal_code": postal,
            "country": country,
        },
        "priority": rng.choices(["urgent", "high", "normal", "low"], [1, 2, 6, 1])[0],
    }


def invalid_order(rng: random.Random, channel: str, external_id: str) -> dict[str, Any]:
    order = valid_order(rng, channel, external_id)
    broken = rng.choice(["quantity", "currency", "email", "sku", "address"])
    if broken == "quantity":
        order["lines"][0]["quantity"] = 0
    elif broken == "currency":
        order["currency"] = "XYZ"
    elif broken == "email":
        order["customer"]["email"] = "not-an-email"
    elif broken == "sku":
        order["lines"][0]["sku"] = "bad sku!"
    else:
        order["shipping_address"]["country"] = "China"
    return order


def scarce_order(rng: random.Random, channel: str, external_id: str) -> dict[str, Any]:
    order = valid_order(rng, channel, external_id)
    sku, _, price = CATALOGUE[5]
    order["lines"] = [{"sku": sku, "quantity": 50, "unit_price": price}]
    return order


def plan(
    n: int, seed: int = 7, channels: tuple[str, ...] = CHANNELS, run_id: str | None = None
) -> list[Submitted]:
    """n submissions: ~86 % valid, 6 % invalid, 4 % duplicates, 4 % backorders."""
    rng = random.Random(seed)
    run = run_id or format(int(time.time() * 1000) % 10**9, "x")
    out: list[Submitted] = []
    for i in range(n):
        channel = channels[i % len(channels)]
        ext = f"{channel[:3].upper()}-{run}-{i:06d}"
        roll = rng.random()
        previous = [s for s in out[-50:] if s.expect == "accepted"]
        if roll < 0.06:
            order = as_sent_by(channel, invalid_order(rng, channel, ext))
            out.append(Submitted(channel, ext, "rejected", order))
        elif roll < 0.10 and previous:
            orig = rng.choice(previous)
            out.append(Submitted(orig.channel, orig.external_id, "duplicate", orig.payload))
        elif roll < 0.14:
            order = as_sent_by(channel, scarce_order(rng, channel, ext))
            out.append(Submitted(channel, ext, "backordered", order))
        else:
            order = as_sent_by(channel, valid_order(rng, channel, ext))
            out.append(Submitted(channel, ext, "accepted", order))
    return out


def as_sent_by(channel: str, order: dict[str, Any]) -> dict[str, Any]:
    """A canonical order in the shape its channel's own software sends it."""
    shape = {"wechat": wechat_push, "phone": phone_desk_form, "marketplace": marketplace_webhook}
    return shape[channel](order) if channel in shape else order


def _fen(amount: str) -> int:
    return int(Decimal(amount) * 100)


def wechat_push(order: dict[str, Any]) -> dict[str, Any]:
    customer, address = order["customer"], order["shipping_address"]
    return {
        "appid": "wx8f3e2a1b4c5d6e7f",
        "openid": f"oUpF8u{zlib.crc32(customer['name'].encode()):010d}",
        "out_trade_no": order["external_id"],
        "fee_type": order["currency"],
        "buyer": {
            "nickname": customer["name"],
            "phone_number": customer.get("phone"),
            "email": customer.get("email"),
            "language": customer.get("locale", "zh-CN").replace("-", "_"),
        },
        "goods_list": [
            {
                "goods_id": line["sku"],
                "goods_num": line["quantity"],
                "goods_price": _fen(line["unit_price"]),
            }
            for line in order["lines"]
        ],
        "address_info": {
            "userName": address["name"],
            "telNumber": customer.get("phone"),
            "cityName": address["city"],
            "detailInfo": address["line1"],
            "postalCode": address["postal_code"],
            "countryCode": address["country"],
        },
        "is_urgent": order.get("priority") == "urgent",
    }


def phone_desk_form(order: dict[str, Any]) -> dict[str, Any]:
    customer, address = order["customer"], order["shipping_address"]
    return {
        "form": "phone-desk",
        "ticket": order["external_id"],
        "agent": "agent-07",
        "caller_name": customer["name"],
        "caller_phone": customer.get("phone") or "",
        "caller_email": customer.get("email") or "",
        "language": customer.get("locale", ""),
        "deliver_to": address["name"],
        "street": address["line1"],
        "street2": address.get("line2") or "",
        "city": address["city"],
        "postcode": address["postal_code"],
        "country": address["country"],
        "items": "; ".join(
            f"{line['sku']} x {line['quantity']} @ {line['unit_price']}" for line in order["lines"]
        ),
        "currency": order["currency"],
        "urgency": order.get("priority", "normal"),
        "notes": "",
    }


SERVICE_LEVELS = {"urgent": "NextDay", "high": "Expedited", "normal": "Standard", "low": "Economy"}


def marketplace_webhook(order: dict[str, Any]) -> dict[str, Any]:
    customer, address = order["customer"], order["shipping_address"]
    currency = order["currency"]

    def money(amount: Decimal | str) -> dict[str, str]:
        return {"amount": str(amount), "currency_code": currency}

    items = [
        {
            "seller_sku": line["sku"],
            "quantity_purchased": line["quantity"],
            "item_price": money(line["unit_price"]),
            "line_total": money(Decimal(line["unit_price"]) * line["quantity"]),
        }
        for line in order["lines"]
    ]
    total = sum(
        (Decimal(line["unit_price"]) * line["quantity"] for line in order["lines"]), Decimal("0.00")
    )
    return {
        "event": "order.created",
        "event_id": f"evt_{order['external_id']}",
        "shop_id": "SHOP-88",
        "data": {
            "order_sn": order["external_id"],
            "buyer": {
                "username": customer["name"].lower().replace(" ", "_"),
                "full_name": customer["name"],
                "email": customer.get("email"),
                "phone": customer.get("phone"),
                "locale": customer.get("locale"),
            },
            "recipient_address": {
                "name": address["name"],
                "address_line_1": address["line1"],
                "address_line_2": address.get("line2"),
                "city": address["city"],
                "zipcode": address["postal_code"],
                "region": address["country"],
            },
            "items": items,
            "order_total": money(total),
            "shipping_service_level": SERVICE_LEVELS[order.get("priority", "normal")],
            "buyer_note": None,
        },
    }


def paced(items: list[Submitted], rate: float) -> Iterator[tuple[float, Submitted]]:
    start = time.monotonic()
    for i, item in enumerate(items):
        yield start + i / rate if rate > 0 else start, item


class Counter:
    """How many submissions a running load has published so far (for progress lines)."""

    def __init__(self) -> None:
        self.sent = 0


@dataclass
class HttpChannels:
    """Channels that submit over HTTP (as a phone desk's tool would), each with its own key."""

    url: str
    keys: dict[str, str] = field(default_factory=dict)


async def publish(
    js: JetStreamContext,
    items: list[Submitted],
    rate: float,
    counter: Counter | None = None,
    http: HttpChannels | None = None,
) -> float:
    """Publish submissions on their channels' subjects at a steady rate; returns seconds taken.
    Channels named in ``http`` POST to intake's HTTP API with their key instead.

    A duplicate is a *new* message with the same external id (a channel retrying later), so its
    Nats-Msg-Id is distinct: it must be caught by intake, not by the stream's dedup window.
    """
    counter = counter or Counter()
    if http is not None and http.keys:
        async with aiohttp.ClientSession() as session:
            return await _publish(js, items, rate, counter, (session, http))
    return await _publish(js, items, rate, counter, None)


async def _post(session: aiohttp.ClientSession, http: HttpChannels, item: Submitted) -> None:
    headers = {"Authorization": f"Bearer {http.keys[item.channel]}"}
    try:
        async with session.post(f"{http.url}/orders", json=item.payload, headers=headers) as r:
            if r.status >= 500 or r.status in (401, 403):
                log.warning("demo: HTTP %s for %s: %s", r.status, item.external_id, await r.text())
    except aiohttp.ClientError as exc:
        log.warning("demo: HTTP submission of %s failed: %s", item.external_id, exc)


async def _publish(
    js: JetStreamContext,
    items: list[Submitted],
    rate: float,
    counter: Counter,
    http: tuple[aiohttp.ClientSession, HttpChannels] | None,
) -> float:
    started = time.monotonic()
    pending: list[asyncio.Future[Any]] = []
    posts: list[asyncio.Task[None]] = []
    for i, (due, item) in enumerate(paced(items, rate)):
        delay = due - time.monotonic()
        if delay > 0.002:
            await asyncio.sleep(delay)
        if http is not None and item.channel in http[1].keys:
            posts.append(asyncio.create_task(_post(http[0], http[1], item)))
            counter.sent += 1
            continue
        msg_id = f"{item.channel}:{item.external_id}:{i}"
        pending.append(
            await js.publish_async(
                subjects.submission(item.channel),
                orjson.dumps(item.payload),
                headers={"Nats-Msg-Id": msg_id},
            )
        )
        counter.sent += 1
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending, *posts)
    return time.monotonic() - started
