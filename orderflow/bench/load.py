"""Offering orders to a running system and reading back, from the streams, when each reached
each stage. Timestamps are JetStream's own (when a stream stored the message), so every stage is
measured on one clock and the measuring costs the services nothing while they run."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from orderflow import demo
from shared import streams, subjects

BENCH_SKUS = [(f"BENCH-{i:03d}", 1_000_000, f"{10 + i}.50") for i in range(20)]


def restocks() -> list[dict[str, Any]]:
    """Inventory's restock commands that give every bench SKU its units."""
    return [
        {
            "sku": sku,
            "quantity": units,
            "warehouse": "WH-BENCH",
            "reason": "bench",
            "actor": "bench",
        }
        for sku, units, _ in BENCH_SKUS
    ]


CHANNELS = ("web", "wechat", "phone", "marketplace")
STAGES = ("accepted", "reserved", "queued", "notified")


@dataclass
class Load:
    """One batch of orders offered at a rate (0 = as fast as possible)."""

    name: str
    rate: float
    payloads: list[tuple[str, str, bytes]]  # (channel, external_id, body)
    started: float = 0.0
    published: float = 0.0
    completed: float = 0.0

    @property
    def n(self) -> int:
        return len(self.payloads)


def make_load(name: str, n: int, rate: float, seed: int) -> Load:
    rng = random.Random(seed)
    payloads = []
    for i in range(n):
        channel = CHANNELS[i % len(CHANNELS)]
        ext = f"B{name}-{i:07d}"
        order = demo.valid_order(rng, channel, ext, skus=BENCH_SKUS)
        payloads.append((channel, ext, orjson.dumps(order)))
    return Load(name, rate, payloads)


async def stream_count(js: JetStreamContext, stream: str, subject: str | None = None) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    if subject is None:
        return int(info.state.messages)
    return int(sum((info.state.subjects or {}).values()))


class Arrivals:
    """How many messages a stream has stored on a subject filter since this was created.

    An ephemeral pull consumer that nobody pulls from: the server keeps its pending count as
    messages arrive, so polling it is cheap. (``stream_info`` with a subject filter returns a
    count per subject, and every order has its own subject: polled every 20 ms during a run,
    that made nats-server and the bench process serialise a map of every order ever taken.)
    """

    def __init__(self, js: JetStreamContext, stream: str, name: str) -> None:
        self.js, self.stream, self.name = js, stream, name

    @classmethod
    async def watch(cls, js: JetStreamContext, stream: str, subject: str) -> Arrivals:
        info = await js.add_consumer(
            stream,
            config=ConsumerConfig(
                filter_subject=subject,
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=300.0,
            ),
        )
        return cls(js, stream, info.name)

    async def count(self) -> int:
        return int((await self.js.consumer_info(self.stream, self.name)).num_pending)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.js.delete_consumer(self.stream, self.name)


async def offer(
    js: JetStreamContext, load: Load, done_when: list[tuple[str, str]], timeout: float
) -> None:
    """Publish the load at its rate, then wait until every done_when (stream, subject filter)
    has stored load.n more messages."""
    watches = [await Arrivals.watch(js, s, f) for s, f in done_when]
    try:
        await _offer(js, load, watches, timeout)
    finally:
        for w in watches:
            await w.close()


async def _offer(js: JetStreamContext, load: Load, watches: list[Arrivals], timeout: float) -> None:
    load.started = time.monotonic()
    pending: list[asyncio.Future[Any]] = []
    interval = 1.0 / load.rate if load.rate > 0 else 0.0
    for i, (channel, ext, body) in enumerate(load.payloads):
        if interval:
            delay = load.started + i * interval - time.monotonic()
            if delay > 0.001:
                await asyncio.sleep(delay)
        pending.append(
            await js.publish_async(
                subjects.submission(channel), body, headers={"Nats-Msg-Id": f"{channel}:{ext}"}
            )
        )
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    load.published = time.monotonic()
    deadline = load.published + timeout
    while True:
        counts = [await w.count() for w in watches]
        if all(c >= load.n for c in counts):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{load.name}: after {timeout:.0f}s only {counts} of {load.n} completed"
            )
        await asyncio.sleep(0.02)
    load.completed = time.monotonic()


async def read_stream(nc: NATS, stream: str, subject: str) -> list[Msg]:
    """Every message now in a stream (matching subject), in order."""
    js = nc.jetstream()
    total = await stream_count(js, stream, subject)
    got: list[Msg] = []
    if total == 0:
        return got
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        got.append(msg)
        if len(got) >= total:
            done.set()

    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, cb=on_msg)
    try:
        await asyncio.wait_for(done.wait(), timeout=max(30.0, total / 5000))
    finally:
        await sub.unsubscribe()
    return got


@dataclass
class Trace:
    """When each order of a load reached each stage (epoch seconds), and what went wrong."""

    stage_times: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    submitted: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def latencies_ms(self, stage: str) -> list[float]:
        out = []
        for order_id, at in self.stage_times[stage].items():
            sub = self.submitted.get(order_id)
            if sub is not None:
                out.append((at - sub) * 1000)
        return sorted(out)


async def trace(nc: NATS, loads: list[Load]) -> dict[str, Trace]:
    """Read the streams once and check every order of every load reached every stage once."""
    ours: dict[tuple[str, str], str] = {}
    for load in loads:
        for channel, ext, _ in load.payloads:
            ours[(channel, ext)] = load.name
    traces = {load.name: Trace() for load in loads}
    submitted_at: dict[tuple[str, str], float] = {}
    for msg in await read_stream(nc, streams.SUBMISSIONS.name, subjects.SUBMISSIONS_ALL):
        doc = orjson.loads(msg.data)
        key = (subjects.channel_of_submission(msg.subject), doc.get("external_id"))
        if key in ours:
            submitted_at[key] = msg.metadata.timestamp.timestamp()
    order_load: dict[str, str] = {}
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for msg in await read_stream(nc, streams.INTAKE.name, subjects.events_of(subjects.INTAKE)):
        env = orjson.loads(msg.data)
        data = env["data"]
        key = (data.get("channel"), data.get("external_id"))
        name = ours.get(key)
        if name is None:
            continue
        if env["type"] != "order_accepted":
            traces[name].problems.append(f"{key}: answered {env['type']}")
            continue
        oid = data["order_id"]
        order_load[oid] = name
        traces[name].submitted[oid] = submitted_at.get(key, float("nan"))
        traces[name].stage_times["accepted"][oid] = msg.metadata.timestamp.timestamp()
        counts[(oid, "accepted")] += 1

    def record(stage: str, oid: str, msg: Msg) -> None:
        name = order_load.get(oid)
        if name is not None:
            traces[name].stage_times[stage][oid] = msg.metadata.timestamp.timestamp()
            counts[(oid, stage)] += 1

    for msg in await read_stream(
        nc, streams.INVENTORY.name, subjects.events_of(subjects.INVENTORY, "stock_reserved")
    ):
        record("reserved", msg.subject.rsplit(".", 1)[1], msg)
    for msg in await read_stream(
        nc, streams.FULFILLMENT.name, subjects.events_of(subjects.FULFILLMENT, "shipment_queued")
    ):
        record("queued", msg.subject.rsplit(".", 1)[1], msg)
    for msg in await read_stream(
        nc, streams.NOTIFY.name, subjects.events_of(subjects.NOTIFY, "notification_sent")
    ):
        data = orjson.loads(msg.data)["data"]
        if data.get("template") == "order_confirmed":
            record("notified", data["order_id"], msg)
    for load in loads:
        t = traces[load.name]
        if len(t.submitted) != load.n:
            t.problems.append(f"{load.n - len(t.submitted)} of {load.n} orders never accepted")
        for stage in STAGES:
            if len(t.stage_times[stage]) != len(t.submitted):
                t.problems.append(
                    f"{len(t.submitted) - len(t.stage_times[stage])} orders never reached {stage}"
                )
    for (oid, stage), n in counts.items():
        if n != 1:
            traces[order_load[oid]].problems.append(f"order {oid} reached {stage} {n} times")
    return traces


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return round(values[k], 2)
