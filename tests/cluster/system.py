"""The four services in-process (N replicas each), a load of orders from one channel, and a
summary of what came out that does not depend on ids, timing or which replica did the work."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from services.fulfillment import models as fulfillment_models
from services.fulfillment.app import create_service as create_fulfillment
from services.intake import models as intake_models
from services.intake.app import create_service as create_intake
from services.inventory import models as inventory_models
from services.inventory.app import create_service as create_inventory
from services.notify import models as notify_models
from services.notify.app import create_service as create_notify
from shared import nats_access, rpc, subjects
from shared.runtime import NatsAuth, ServiceRuntime, connect_nats
from tests.conftest import eventually, order_doc, settings_for

FACTORIES: dict[str, Callable[[Any], ServiceRuntime]] = {
    "intake": create_intake,
    "inventory": create_inventory,
    "fulfillment": create_fulfillment,
    "notify": create_notify,
}
SKU = "TEA-001"
CHANNELS = ("web", "wechat")


def passwords() -> dict[str, str]:
    return {u.name: secrets.token_urlsafe(16) for u in nats_access.users(CHANNELS)}


def auth(user: str, pw: dict[str, str] | None, tls: NatsAuth | None = None) -> NatsAuth | None:
    """``user``'s credentials (when ``pw``), plus the TLS settings of ``tls``."""
    base = tls or NatsAuth()
    if not pw:
        return base
    return dataclasses.replace(base, user=user, password=pw[user])


@contextlib.asynccontextmanager
async def running_system(
    nats_url: str,
    db_url_of: Callable[[str], str],
    tmp_path: Path,
    *,
    replicas: int = 1,
    pw: dict[str, str] | None = None,
    **changes: Any,
) -> AsyncIterator[list[ServiceRuntime]]:
    """Every service, ``replicas`` times, each replica with its own home, all on one database
    per service; the warehouse simulator runs in every fulfillment replica."""
    started: list[ServiceRuntime] = []
    try:
        for service, factory in FACTORIES.items():
            for i in range(replicas):
                values: dict[str, Any] = {
                    "simulator": service == "fulfillment",
                    "simulator_min_delay_s": 0.05,
                    "simulator_max_delay_s": 0.2,
                    **changes,
                }
                if pw:
                    values.update(nats_user=service, nats_password=pw[service])
                settings = settings_for(
                    nats_url, db_url_of(service), tmp_path / f"{service}-{i}", **values
                )
                rt = factory(settings)
                await rt.start()
                started.append(rt)
        yield started
    finally:
        for rt in reversed(started):
            await rt.stop()


def make_load(n: int, run: str) -> list[tuple[str, bytes]]:
    """``n`` valid orders, plus every 10th resubmitted (a duplicate) and every 15th followed by
    an invalid one (rejected): (channel, body) in submission order."""
    load: list[tuple[str, bytes]] = []
    for i in range(n):
        channel = CHANNELS[i % 2]
        doc = order_doc(f"{run}-{i}", channel=channel)
        load.append((channel, orjson.dumps(doc)))
        if i % 10 == 0:
            load.append((channel, orjson.dumps(doc)))
        if i % 15 == 0:
            load.append((channel, orjson.dumps(order_doc(f"{run}-bad-{i}", lines=[]))))
    return load


async def submit(
    url: str,
    load: list[tuple[str, bytes]],
    pw: dict[str, str] | None,
    first: int = 0,
    tls: NatsAuth | None = None,
) -> None:
    """Each channel submits its own orders, as its own NATS user when ``pw`` is given; like a
    careful channel, it retries a submission until the stream acks it (same message id, so a
    retry of one that did land is dropped as a duplicate)."""
    clients: dict[str, NATS] = {}
    try:
        for channel in CHANNELS:
            clients[channel] = await connect_nats(
                url, f"channel-{channel}", auth=auth(nats_access.channel_user(channel), pw, tls)
            )
        await asyncio.gather(
            *(
                _submit_one(clients[channel], channel, body, f"{first + i}")
                for i, (channel, body) in enumerate(load)
            )
        )
    finally:
        for nc in clients.values():
            await nc.close()


async def _submit_one(nc: NATS, channel: str, body: bytes, msg_id: str) -> None:
    js = nc.jetstream()
    for _ in range(60):
        try:
            await js.publish(
                subjects.submission(channel), body, headers={"Nats-Msg-Id": msg_id}, timeout=2
            )
            return
        except Exception:
            await asyncio.sleep(0.5)
    raise AssertionError(f"submission {msg_id} never acked")


async def restock(
    url: str, units: int, pw: dict[str, str] | None, tls: NatsAuth | None = None
) -> None:
    nc = await connect_nats(url, "test-cli", auth=auth(nats_access.CLI_USER, pw, tls))
    try:
        await rpc.call(
            nc, "inventory", "restock", {"sku": SKU, "quantity": units, "warehouse": "WH-1"}
        )
    finally:
        await nc.close()


async def _rows(url: str, query: Any) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(query)).all())
    finally:
        await engine.dispose()


async def summary(db_url_of: Callable[[str], str], run: str) -> dict[str, Any]:
    """What a user would see of the load, keyed by external id (order ids differ per run)."""
    io, ir = intake_models.orders, intake_models.rejections
    orders = await _rows(db_url_of("intake"), select(io.c.order_id, io.c.external_id, io.c.status))
    ext = {oid: e.replace(run, "RUN") for oid, e, _ in orders}
    rejected = await _rows(db_url_of("intake"), select(ir.c.external_id))
    res, led = inventory_models.reservations, inventory_models.ledger
    st = inventory_models.stock
    reservations = await _rows(
        db_url_of("inventory"), select(res.c.order_id, res.c.quantity, res.c.status)
    )
    ledger = await _rows(
        db_url_of("inventory"),
        select(led.c.ref, led.c.reason, func.count()).group_by(led.c.ref, led.c.reason),
    )
    stock = await _rows(
        db_url_of("inventory"),
        select(func.sum(st.c.on_hand), func.sum(st.c.reserved), func.sum(st.c.shipped)),
    )
    sh, log = fulfillment_models.shipments, fulfillment_models.shipment_log
    shipments = await _rows(db_url_of("fulfillment"), select(sh.c.order_id, sh.c.status))
    actions = await _rows(
        db_url_of("fulfillment"),
        select(log.c.order_id, log.c.action, func.count()).group_by(log.c.order_id, log.c.action),
    )
    nt, dl = notify_models.notifications, notify_models.deliveries
    notes = await _rows(
        db_url_of("notify"),
        select(nt.c.order_id, nt.c.template, func.count(dl.c.delivery_id))
        .select_from(nt.outerjoin(dl, dl.c.notification_id == nt.c.notification_id))
        .where(dl.c.status == "sent")
        .group_by(nt.c.notification_id, nt.c.order_id, nt.c.template),
    )
    per_order: dict[str, dict[str, Any]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for _oid, e, status in orders:
        per_order[e.replace(run, "RUN")]["status"].append(status)
    for oid, qty, status in reservations:
        per_order[ext.get(oid, oid)]["reservations"].append((qty, status))
    for ref, reason, n in ledger:
        if ref in ext:
            per_order[ext[ref]]["ledger"].append((reason, n))
    for oid, status in shipments:
        per_order[ext.get(oid, oid)]["shipments"].append(status)
    for oid, action, n in actions:
        per_order[ext.get(oid, oid)]["actions"].append((action, n))
    for oid, template, sent in notes:
        if oid in ext:
            per_order[ext[oid]]["notifications"].append((template, sent))
    return {
        "orders": {k: {f: sorted(v) for f, v in d.items()} for k, d in sorted(per_order.items())},
        "rejected": sorted((e or "").replace(run, "RUN") for (e,) in rejected),
        "stock": tuple(stock[0]),
    }


async def wait_until_all_delivered(db_url_of: Callable[[str], str], n: int, timeout: float) -> None:
    """Every valid order delivered, and its delivery notification sent."""
    io, nt = intake_models.orders, notify_models.notifications

    async def done() -> bool:
        delivered = await _rows(
            db_url_of("intake"), select(func.count()).where(io.c.status == "delivered")
        )
        told = await _rows(
            db_url_of("notify"),
            select(func.count()).where(nt.c.template == "order_delivered"),
        )
        return bool(delivered[0][0] >= n and told[0][0] >= n)

    await eventually(done, timeout=timeout, what=f"{n} orders delivered and notified")


def run_id() -> str:
    return f"r{uuid.uuid4().hex[:8]}"


async def events_on_streams(url: str, pw: dict[str, str] | None) -> dict[str, int]:
    """How many events of each type the streams hold: a row published twice and not
    deduplicated would show here."""
    nc = await connect_nats(url, "test-admin", auth=auth(nats_access.ADMIN_USER, pw))
    counts: collections.Counter[str] = collections.Counter()
    try:
        js = nc.jetstream()
        for stream in (
            nats_access.S_INTAKE,
            nats_access.S_INVENTORY,
            nats_access.S_FULFILLMENT,
            nats_access.S_NOTIFY,
            nats_access.S_DEADLETTER,
        ):
            with contextlib.suppress(Exception):
                info = await js.stream_info(stream, subjects_filter=">")
                for subject, n in (info.state.subjects or {}).items():
                    counts[".".join(subject.split(".")[:3])] += n
    finally:
        await nc.close()
    return dict(sorted(counts.items()))
