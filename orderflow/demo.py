"""The demo load: a small catalogue and realistic orders from several channels.

Most orders are valid; some are invalid (to show rejections with field errors), some repeat an
earlier external id (duplicates), and some ask for a scarce SKU (backorders).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
            out.append(Submitted(channel, ext, "rejected", invalid_order(rng, channel, ext)))
        elif roll < 0.10 and previous:
            orig = rng.choice(previous)
            out.append(Submitted(orig.channel, orig.external_id, "duplicate", orig.payload))
        elif roll < 0.14:
            out.append(Submitted(channel, ext, "backordered", scarce_order(rng, channel, ext)))
        else:
            out.append(Submitted(channel, ext, "accepted", valid_order(rng, channel, ext)))
    return out


def paced(items: list[Submitted], rate: float) -> Iterator[tuple[float, Submitted]]:
    start = time.monotonic()
    for i, item in enumerate(items):
        yield start + i / rate if rate > 0 else start, item


class Counter:
    """How many submissions a running load has published so far (for progress lines)."""

    def __init__(self) -> None:
        self.sent = 0


async def publish(
    js: JetStreamContext, items: list[Submitted], rate: float, counter: Counter | None = None
) -> float:
    """Publish submissions on their channels' subjects at a steady rate; returns seconds taken.

    A duplicate is a *new* message with the same external id (a channel retrying later), so its
    Nats-Msg-Id is distinct: it must be caught by intake, not by the stream's dedup window.
    """
    started = time.monotonic()
    pending: list[asyncio.Future[Any]] = []
    for i, (due, item) in enumerate(paced(items, rate)):
        delay = due - time.monotonic()
        if delay > 0.002:
            await asyncio.sleep(delay)
        msg_id = f"{item.channel}:{item.external_id}:{i}"
        pending.append(
            await js.publish_async(
                subjects.submission(item.channel),
                orjson.dumps(item.payload),
                headers={"Nats-Msg-Id": msg_id},
            )
        )
        if counter is not None:
            counter.sent += 1
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return time.monotonic() - started
