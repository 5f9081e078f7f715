"""Intake's wiring: the submission and status consumers, commands and HTTP routes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from nats.aio.msg import Msg
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from services.intake import handlers
from services.intake.models import metadata, orders, rejections
from shared import streams, subjects
from shared.consumer import ConsumerSpec, Incoming, UnitOfWork, decode_event
from shared.contracts.intake import MAX_SUBMISSION_BYTES, SubmissionAnswer
from shared.rpc import CommandRefused
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings

SERVICE = subjects.INTAKE
_CHANNEL = re.compile(r"[a-z][a-z0-9_-]{1,31}")


def decode_submission(msg: Msg) -> Incoming:
    # The raw bytes go to the handler: an invalid submission is an answer (rejected), not a
    # poison message. The inbox key is the stream position, so a redelivery is not mistaken
    # for a second submission of the same order.
    meta = msg.metadata
    received = meta.timestamp if meta.timestamp else datetime.now(UTC)
    sub = handlers.Submission(subjects.channel_of_submission(msg.subject), msg.data, received)
    return Incoming("submission", f"submit:{meta.sequence.stream}", sub)


def create_service(settings: ServiceSettings | None = None) -> ServiceRuntime:
    settings = settings or ServiceSettings()
    rt = ServiceRuntime(
        SERVICE,
        settings,
        metadata,
        streams=(
            streams.SUBMISSIONS,
            streams.INTAKE,
            streams.INVENTORY,
            streams.FULFILLMENT,
            streams.DEAD_LETTERS,
        ),
    )

    async def on_submissions(uow: UnitOfWork, items: list[Any]) -> None:
        await handlers.submit_orders(uow, items, rt.metrics)

    rt.consume(
        ConsumerSpec(
            name="intake-submissions",
            stream=streams.SUBMISSIONS.name,
            filter_subjects=[subjects.SUBMISSIONS_ALL],
            handlers={"submission": on_submissions},
            decode=decode_submission,
        )
    )
    rt.consume(
        ConsumerSpec(
            name="intake-status-view",
            stream=streams.INVENTORY.name,
            filter_subjects=[
                subjects.events_of(subjects.INVENTORY, t)
                for t in ("stock_reserved", "stock_backordered")
            ],
            handlers={t: handlers.record_progress for t in ("stock_reserved", "stock_backordered")},
            decode=decode_event,
        )
    )
    shipment_types = [t for t in handlers.PROGRESS if t.startswith("shipment_")]
    rt.consume(
        ConsumerSpec(
            name="intake-shipment-view",
            stream=streams.FULFILLMENT.name,
            filter_subjects=[subjects.events_of(subjects.FULFILLMENT, t) for t in shipment_types],
            handlers=dict.fromkeys(shipment_types, handlers.record_progress),
        )
    )

    async def submit_one(channel: str, raw: bytes) -> SubmissionAnswer:
        item = handlers.Submission(channel, raw, datetime.now(UTC))

        async def work(uow: UnitOfWork) -> SubmissionAnswer:
            return (await handlers.submit_orders(uow, [item], rt.metrics))[0]

        # Two requests racing with the same (channel, external_id): on PostgreSQL the loser's
        # insert violates the unique key; run it again and it sees the winner -> "duplicate".
        for attempt in range(3):
            try:
                return await rt.execute(work)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def status_of(order_id: str) -> dict[str, Any] | None:
        async with rt.db.reading() as conn:
            return await handlers.order_status(conn, order_id)

    # Commands over NATS (request/reply).
    async def cmd_submit(payload: dict[str, Any]) -> dict[str, Any]:
        channel = payload.get("channel")
        order = payload.get("order")
        if not isinstance(channel, str) or not isinstance(order, dict):
            raise CommandRefused("submit needs {'channel': str, 'order': {...}}")
        answer = await submit_one(channel, orjson.dumps(order))
        return answer.model_dump(mode="json")

    async def cmd_status(payload: dict[str, Any]) -> dict[str, Any]:
        order_id = str(payload.get("order_id", ""))
        status = await status_of(order_id)
        if status is None:
            raise CommandRefused(f"no order {order_id}")
        return status

    rt.rpc.register("submit", cmd_submit)
    rt.rpc.register("status", cmd_status)

    # HTTP, for channels that cannot speak NATS.
    async def post_order(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_SUBMISSION_BYTES:
            return _too_large()
        raw = await request.content.read(MAX_SUBMISSION_BYTES + 1)
        if len(raw) > MAX_SUBMISSION_BYTES:
            return _too_large()
        channel = _channel_of(raw) or "web"
        answer = await submit_one(channel, raw)
        body = answer.model_dump(mode="json")
        status = {"accepted": 202, "duplicate": 200, "rejected": 422}[answer.outcome]
        return web.json_response(body, status=status)

    async def get_order(request: web.Request) -> web.Response:
        status = await status_of(request.match_info["order_id"])
        if status is None:
            return web.json_response({"error": "no such order"}, status=404)
        return web.json_response(status)

    rt.http.router.add_post("/orders", post_order)
    rt.http.router.add_get("/orders/{order_id}", get_order)

    async def stats() -> dict[str, Any]:
        async with rt.db.reading() as conn:
            counts = await conn.execute(
                select(orders.c.status, func.count()).group_by(orders.c.status)
            )
            by_status: dict[str, int] = {status: n for status, n in counts}
            rejected = (
                await conn.execute(select(func.count()).select_from(rejections))
            ).scalar_one()
        return {"orders": {**by_status, "rejected": rejected}}

    rt.stats = stats
    return rt


def _channel_of(raw: bytes) -> str | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    channel = doc.get("channel") if isinstance(doc, dict) else None
    return channel if isinstance(channel, str) and _CHANNEL.fullmatch(channel) else None


def _too_large() -> web.Response:
    return web.json_response(
        {
            "outcome": "rejected",
            "errors": [
                {
                    "field": "(body)",
                    "reason": f"submission larger than {MAX_SUBMISSION_BYTES} bytes",
                }
            ],
        },
        status=413,
    )
