"""Notify's wiring: the consumers of order events and dead letters, a delivery worker per sink,
commands, HTTP routes and stats."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from nats.aio.msg import Msg

from services.notify import audit, delivery, domain, handlers
from services.notify.delivery import Dispatcher, NotifyMetrics, ResendRefused, UnknownDelivery
from services.notify.models import MIGRATIONS, metadata
from services.notify.settings import NotifySettings
from services.notify.sinks import build_sinks
from shared import streams, subjects
from shared.consumer import ConsumerSpec, Incoming, UnitOfWork
from shared.contracts.envelope import Envelope
from shared.rpc import CommandRefused
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings

SERVICE = subjects.NOTIFY
DEAD_LETTER_CONSUMER = "notify-dead-letters"
DEAD_LETTER = "dead_letter"

Handler = Callable[[UnitOfWork, list[Any]], Awaitable[None]]


def decode_dead_letter(msg: Msg) -> Incoming:
    # Dead letters are raw payloads (a submission that was never JSON, an envelope this build
    # cannot read) with the reason in headers: read what is there, never refuse one, or it
    # would be dead-lettered again.
    seq = msg.metadata.sequence.stream
    position = (msg.headers or {}).get("Nats-Msg-Id") or f"{streams.DEAD_LETTERS.name}:{seq}"
    letter = domain.dead_letter_of(msg.subject, msg.headers, msg.data or b"")
    return Incoming(
        DEAD_LETTER,
        f"dlq:{seq}",
        handlers.IncomingDeadLetter(handlers.dead_letter_id(position), letter),
        msg.subject,
        seq,
    )


def create_service(settings: ServiceSettings | None = None) -> ServiceRuntime:
    if not isinstance(settings, NotifySettings):
        # Explicit values win over the environment; notify's own fields still come from it.
        settings = NotifySettings(**(settings.model_dump() if settings else {}))
    rt = ServiceRuntime(
        SERVICE,
        settings,
        metadata,
        migrations=MIGRATIONS,
        streams=(
            streams.INTAKE,
            streams.INVENTORY,
            streams.FULFILLMENT,
            streams.NOTIFY,
            streams.DEAD_LETTERS,
        ),
    )
    notify_metrics = NotifyMetrics(rt.metrics)
    sinks = build_sinks(settings)
    policy = settings.retry_policy()
    dispatcher = Dispatcher(
        routes=[sink.route for sink in sinks],
        metrics=notify_metrics,
        attempt_limit=policy.max_attempts,
        operations_locale=settings.notify_operations_locale,
    )
    burst = handlers.BurstRule(settings.notify_burst_window_s, settings.notify_burst_threshold)

    async def on_accepted(uow: UnitOfWork, events: list[Envelope]) -> None:
        await handlers.order_accepted(uow, events, dispatcher, rt.metrics)

    async def on_rejected(uow: UnitOfWork, events: list[Envelope]) -> None:
        await handlers.order_rejected(uow, events, dispatcher, burst)

    def customer(
        handler: Callable[[UnitOfWork, list[Envelope], Dispatcher], Awaitable[None]],
    ) -> Handler:
        async def handle(uow: UnitOfWork, events: list[Envelope]) -> None:
            await handler(uow, events, dispatcher)

        return handle

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
            {
                "stock_backordered": customer(handlers.stock_backordered),
                "low_stock": customer(handlers.low_stock),
            },
        ),
        (
            "notify-fulfillment",
            streams.FULFILLMENT,
            subjects.FULFILLMENT,
            {
                "shipment_shipped": customer(handlers.shipment_shipped),
                "shipment_delivered": customer(handlers.shipment_delivered),
                "order_cancelled": customer(handlers.order_cancelled),
                "return_received": customer(handlers.return_received),
                "refund_due": customer(handlers.refund_due),
                "shipment_delivery_failed": customer(handlers.delivery_failed),
                "shipment_overdue": customer(handlers.sla_breaches),
                "shipment_escalated": customer(handlers.sla_breaches),
            },
        ),
    ):
        rt.consume(
            ConsumerSpec(
                name=name,
                stream=stream.name,
                filter_subjects=[subjects.events_of(producer, t) for t in by_type],
                handlers=dict(by_type),
                # Events after the acceptance wait for the order_accepted that names the
                # recipient, which comes on another stream and may lag far behind under a
                # backlog: give them ~20 minutes of retries (doubling, capped at 5 min) instead
                # of the default budget before they are dead-lettered.
                max_deliver=None if name == "notify-intake" else 12,
                # No notice is on the order's critical path (submission to reservation): a
                # tenth of a second's wait makes for fewer, larger transactions.
                linger=True,
            )
        )

    async def on_dead_letters(uow: UnitOfWork, letters: list[Any]) -> None:
        await handlers.dead_letters(uow, letters, dispatcher)

    rt.consume(
        ConsumerSpec(
            name=DEAD_LETTER_CONSUMER,
            stream=streams.DEAD_LETTERS.name,
            filter_subjects=[subjects.DEAD_LETTERS_ALL],
            handlers={DEAD_LETTER: on_dead_letters},
            decode=decode_dead_letter,
        )
    )

    workers = [
        delivery.DeliveryWorker(
            sink,
            rt.db,
            rt.execute,
            dispatcher,
            policy,
            batch=settings.notify_delivery_batch,
            lease_s=settings.notify_claim_lease_s,
            poll_s=settings.notify_delivery_poll_s,
            queue_limit=settings.notify_delivery_queue,
        )
        for sink in sinks
    ]
    rt.background.extend(worker.run for worker in workers)

    async def observe_pending() -> None:
        while True:
            await delivery.observe_pending(rt.db, [s.name for s in sinks], notify_metrics)
            await asyncio.sleep(max(5.0, settings.notify_delivery_poll_s))

    rt.background.append(observe_pending)

    async def notifications_of(order_id: str) -> list[dict[str, Any]]:
        async with rt.db.reading() as conn:
            return await delivery.notifications_of(conn, order_id)

    async def cmd_notifications(payload: dict[str, Any]) -> list[dict[str, Any]]:
        order_id = payload.get("order_id")
        if not isinstance(order_id, str) or not order_id:
            raise CommandRefused("notifications needs {'order_id': str}")
        return await notifications_of(order_id)

    async def cmd_failed(payload: dict[str, Any]) -> list[dict[str, Any]]:
        limit = payload.get("limit", 100)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise CommandRefused("limit must be a whole number from 1 to 1000")
        async with rt.db.reading() as conn:
            return await delivery.failed_deliveries(conn, limit)

    async def cmd_attempts(payload: dict[str, Any]) -> list[dict[str, Any]]:
        delivery_id = payload.get("delivery_id")
        if not isinstance(delivery_id, str) or not delivery_id:
            raise CommandRefused("attempts needs {'delivery_id': str}")
        async with rt.db.reading() as conn:
            return await delivery.attempts_of(conn, delivery_id)

    async def cmd_resend(payload: dict[str, Any]) -> dict[str, Any]:
        delivery_id = payload.get("delivery_id")
        force = payload.get("force", False)
        if not isinstance(delivery_id, str) or not delivery_id or not isinstance(force, bool):
            raise CommandRefused("resend needs {'delivery_id': str, 'force': bool}")
        try:
            async with rt.db.transaction() as conn:
                queued = await delivery.resend(conn, delivery_id, policy.max_attempts, force=force)
        except ResendRefused as exc:
            raise CommandRefused(str(exc)) from exc
        dispatcher.wake({queued["sink"]})
        return queued

    rt.rpc.register("notifications", cmd_notifications)
    rt.rpc.register("failed_deliveries", cmd_failed)
    rt.rpc.register("delivery_attempts", cmd_attempts)
    rt.rpc.register("resend", cmd_resend)
    audit.register(rt)

    async def get_notifications(request: web.Request) -> web.Response:
        # An order notify has not heard of gets an empty list, not a 404: notify cannot tell an
        # unknown order from one whose events have not arrived yet.
        return web.json_response(await notifications_of(request.match_info["order_id"]))

    async def get_failed(_request: web.Request) -> web.Response:
        return web.json_response(await cmd_failed({}))

    async def post_resend(request: web.Request) -> web.Response:
        force = request.query.get("force", "") in ("1", "true", "yes")
        try:
            queued = await cmd_resend(
                {"delivery_id": request.match_info["delivery_id"], "force": force}
            )
        except CommandRefused as exc:
            status = 404 if isinstance(exc.__cause__, UnknownDelivery) else 409
            return web.json_response({"error": exc.reason}, status=status)
        return web.json_response(queued, status=202)

    rt.http.router.add_get("/orders/{order_id}/notifications", get_notifications)
    rt.http.router.add_get("/deliveries/failed", get_failed)
    rt.http.router.add_post("/deliveries/{delivery_id}/resend", post_resend)
    # Each route wants an operator token whose role may run its command (shared/operators.py).
    rt.http_commands.update(
        {
            ("GET", "/orders/{order_id}/notifications"): "notifications",
            ("GET", "/deliveries/failed"): "failed_deliveries",
            ("POST", "/deliveries/{delivery_id}/resend"): "resend",
        }
    )

    async def stats() -> dict[str, Any]:
        async with rt.db.reading() as conn:
            return {
                "notifications": await delivery.count_by_template(conn),
                "deliveries": await delivery.unfinished_by_sink(conn),
            }

    rt.stats = stats
    return rt
