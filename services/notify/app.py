"""Notify's wiring: the consumers of order events, the sink, commands, HTTP routes and stats."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from services.notify import handlers
from services.notify.models import metadata
from services.notify.settings import NotifySettings
from services.notify.sinks import LogFileSink
from shared import streams, subjects
from shared.consumer import ConsumerSpec, UnitOfWork
from shared.contracts.envelope import Envelope
from shared.rpc import CommandRefused
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings

SERVICE = subjects.NOTIFY


def create_service(settings: ServiceSettings | None = None) -> ServiceRuntime:
    if not isinstance(settings, NotifySettings):
        # Explicit values win over the environment; notify's own fields still come from it.
        settings = NotifySettings(**(settings.model_dump() if settings else {}))
    rt = ServiceRuntime(
        SERVICE,
        settings,
        metadata,
        streams=(
            streams.INTAKE,
            streams.INVENTORY,
            streams.FULFILLMENT,
            streams.NOTIFY,
            streams.DEAD_LETTERS,
        ),
    )
    delivery = handlers.Delivery(rt.db, LogFileSink(settings.notification_log), rt.metrics)

    async def on_accepted(uow: UnitOfWork, events: list[Envelope]) -> None:
        await handlers.order_accepted(uow, events, delivery, rt.metrics)

    async def on_rejected(uow: UnitOfWork, events: list[Envelope]) -> None:
        await handlers.order_rejected(uow, events, delivery)

    async def on_backordered(uow: UnitOfWork, events: list[Envelope]) -> None:
        await handlers.stock_backordered(uow, events, delivery)

    async def on_shipped(uow: UnitOfWork, events: list[Envelope]) -> None:
        await handlers.shipment_shipped(uow, events, delivery)

    async def on_delivered(uow: UnitOfWork, events: list[Envelope]) -> None:
        await handlers.shipment_delivered(uow, events, delivery)

    for name, stream, producer, by_type in (
        (
            "notify-intake",
            streams.INTAKE,
            subjects.INTAKE,
            {"order_accepted": on_accepted, "order_rejected": on_rejected},
        ),
        (
            "notify-inventory",
            streams.INVENTORY,
            subjects.INVENTORY,
            {"stock_backordered": on_backordered},
        ),
        (
            "notify-fulfillment",
            streams.FULFILLMENT,
            subjects.FULFILLMENT,
            {"shipment_shipped": on_shipped, "shipment_delivered": on_delivered},
        ),
    ):
        rt.consume(
            ConsumerSpec(
                name=name,
                stream=stream.name,
                filter_subjects=[subjects.events_of(producer, t) for t in by_type],
                handlers=dict(by_type),
                # Shipment and backorder events wait for the order_accepted that names the
                # recipient, which comes on another stream and may lag far behind under a
                # backlog: give them ~20 minutes of retries (doubling, capped at 5 min) instead
                # of the default budget before they are dead-lettered.
                max_deliver=None if name == "notify-intake" else 12,
            )
        )

    async def resend_pending() -> None:
        while True:
            await asyncio.sleep(settings.notify_resend_interval_s)
            await delivery.resend_pending(settings.notify_resend_after_s)

    rt.background.append(resend_pending)

    async def notifications_of(order_id: str) -> list[dict[str, Any]]:
        async with rt.db.reading() as conn:
            return await handlers.notifications_of(conn, order_id)

    async def cmd_notifications(payload: dict[str, Any]) -> list[dict[str, Any]]:
        order_id = payload.get("order_id")
        if not isinstance(order_id, str) or not order_id:
            raise CommandRefused("notifications needs {'order_id': str}")
        return await notifications_of(order_id)

    rt.rpc.register("notifications", cmd_notifications)

    async def get_notifications(request: web.Request) -> web.Response:
        # An order notify has not heard of gets an empty list, not a 404: notify cannot tell an
        # unknown order from one whose events have not arrived yet.
        return web.json_response(await notifications_of(request.match_info["order_id"]))

    rt.http.router.add_get("/orders/{order_id}/notifications", get_notifications)

    async def stats() -> dict[str, Any]:
        async with rt.db.reading() as conn:
            return {"notifications": await handlers.count_by_template(conn)}

    rt.stats = stats
    return rt
