"""Fulfillment's wiring: the reservation and cancellation consumers, operator commands (NATS and
HTTP), the SLA job and the simulator."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from services.fulfillment import audit, domain, handlers, returns, views
from services.fulfillment.metrics import FulfillmentMetrics
from services.fulfillment.models import MIGRATIONS, metadata
from services.fulfillment.settings import FulfillmentSettings
from services.fulfillment.simulator import WarehouseSimulator
from shared import streams, subjects
from shared.consumer import ConsumerSpec, UnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.fulfillment import (
    SHIPMENT_COMMANDS,
    QueueQuery,
    ReturnReceipt,
    ReturnRequest,
    ShipmentsQuery,
)
from shared.contracts.intake import OrderCancelRequested
from shared.contracts.inventory import StockReserved
from shared.rpc import Command, CommandRefused, validation_errors
from shared.runtime import OPERATOR, ServiceRuntime
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

SERVICE = subjects.FULFILLMENT

Route = Callable[[web.Request], Awaitable[web.Response]]


def create_service(settings: ServiceSettings | None = None) -> ServiceRuntime:
    settings = as_fulfillment_settings(settings)
    rt = ServiceRuntime(
        SERVICE,
        settings,
        metadata,
        migrations=MIGRATIONS,
        streams=(streams.INTAKE, streams.INVENTORY, streams.FULFILLMENT, streams.DEAD_LETTERS),
    )
    metrics = FulfillmentMetrics.of(rt.metrics)
    sla = settings.sla_policy()

    async def on_reserved(uow: UnitOfWork, items: list[Envelope]) -> None:
        await handlers.queue_shipments(uow, items, metrics, sla)

    async def on_cancel_requested(uow: UnitOfWork, items: list[Envelope]) -> None:
        await handlers.cancel_orders(uow, items, metrics)

    rt.consume(
        ConsumerSpec(
            name="fulfillment-reservations",
            stream=streams.INVENTORY.name,
            filter_subjects=[subjects.events_of(subjects.INVENTORY, StockReserved.event_type)],
            handlers={StockReserved.event_type: on_reserved},
            # Stock is held once reserved; queueing for the warehouse's next pick wave can
            # wait a tenth of a second, in fewer, larger transactions.
            linger=True,
        )
    )
    rt.consume(
        ConsumerSpec(
            name="fulfillment-cancellations",
            stream=streams.INTAKE.name,
            filter_subjects=[subjects.events_of(subjects.INTAKE, OrderCancelRequested.event_type)],
            handlers={OrderCancelRequested.event_type: on_cancel_requested},
        )
    )

    async def command(action: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """The one entry of an operator command, whether it came by NATS or HTTP."""
        parsed = SHIPMENT_COMMANDS[action].model_validate(payload)

        async def work(uow: UnitOfWork) -> list[dict[str, Any]]:
            return await handlers.run_command(uow, action, parsed, metrics)

        return await rt.execute(work)

    async def request_return(payload: dict[str, Any]) -> list[dict[str, Any]]:
        parsed = ReturnRequest.model_validate(payload)

        async def work(uow: UnitOfWork) -> list[dict[str, Any]]:
            return await returns.request_return(uow, parsed, metrics)

        return await rt.execute(work)

    async def receive_return(payload: dict[str, Any]) -> list[dict[str, Any]]:
        parsed = ReturnReceipt.model_validate(payload)

        async def work(uow: UnitOfWork) -> list[dict[str, Any]]:
            return await returns.receive_return(uow, parsed, metrics)

        return await rt.execute(work)

    async def queue(payload: dict[str, Any]) -> list[dict[str, Any]]:
        query = QueueQuery.model_validate(payload)
        async with rt.db.reading() as conn:
            return await views.work_queue(conn, query.limit, query.warehouse)

    async def shipments(payload: dict[str, Any]) -> list[dict[str, Any]]:
        query = ShipmentsQuery.model_validate(payload)
        async with rt.db.reading() as conn:
            found = await views.shipments_of(conn, query.order_id)
            cancellation = None if found else await views.cancellation_of(conn, query.order_id)
        if cancellation is not None:
            raise handlers.ShipmentNotFound(
                f"order {query.order_id} was cancelled before any shipment was queued "
                f"(by {cancellation['cancelled_by']} at {cancellation['cancelled_at']}: "
                f"{cancellation['reason']})"
            )
        if not found:
            raise handlers.ShipmentNotFound(f"no shipment for order {query.order_id}")
        return found

    # Commands over NATS (request/reply).
    def rpc_command(action: str) -> Command:
        async def run(payload: dict[str, Any]) -> list[dict[str, Any]]:
            return await command(action, payload)

        return run

    for action in domain.ACTIONS:
        rt.rpc.register(action, rpc_command(action))
    rt.rpc.register("return", request_return)
    rt.rpc.register("receive-return", receive_return)
    rt.rpc.register("queue", queue)
    rt.rpc.register("shipments", shipments)
    audit.register(rt)

    # HTTP, for warehouse terminals and dashboards.
    def post_route(answer: Callable[[web.Request, dict[str, Any]], Awaitable[Any]]) -> Route:
        """A POST route: the body is a JSON object, the order id comes from the path."""

        async def route(request: web.Request) -> web.Response:
            raw = await request.read()
            try:
                body = orjson.loads(raw) if raw.strip() else {}
            except orjson.JSONDecodeError as exc:
                return _invalid([{"field": "(body)", "reason": f"not valid JSON: {exc}"}])
            if not isinstance(body, dict):
                return _invalid([{"field": "(body)", "reason": "the body must be a JSON object"}])
            body["actor"] = request[OPERATOR].actor(body.get("actor"))
            payload = {**body, "order_id": request.match_info["order_id"]}
            try:
                return web.json_response(await answer(request, payload))
            except ValidationError as exc:
                return _invalid(validation_errors(exc))
            except handlers.ShipmentNotFound as exc:
                return web.json_response({"error": exc.reason}, status=404)
            except CommandRefused as exc:
                return web.json_response({"error": exc.reason}, status=409)

        return route

    async def post_command(request: web.Request, payload: dict[str, Any]) -> dict[str, Any]:
        moved = await command(request.match_info["action"], payload)
        return {"order_id": payload["order_id"], "shipments": moved}

    async def post_return(_request: web.Request, payload: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": payload["order_id"], "returns": await request_return(payload)}

    async def post_receive(_request: web.Request, payload: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": payload["order_id"], "returns": await receive_return(payload)}

    async def get_queue(request: web.Request) -> web.Response:
        try:
            listed = await queue(dict(request.query))
        except ValidationError as exc:
            return _invalid(validation_errors(exc))
        return web.json_response({"shipments": listed})

    async def get_shipments(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        try:
            found = await shipments({"order_id": order_id})
        except ValidationError as exc:
            return _invalid(validation_errors(exc))
        except handlers.ShipmentNotFound as exc:
            return web.json_response({"error": exc.reason}, status=404)
        return web.json_response({"order_id": order_id, "shipments": found})

    actions = "|".join(domain.ACTIONS)
    rt.http.router.add_post(f"/orders/{{order_id}}/{{action:{actions}}}", post_route(post_command))
    rt.http.router.add_post("/orders/{order_id}/returns", post_route(post_return))
    rt.http.router.add_post("/orders/{order_id}/returns/receive", post_route(post_receive))
    rt.http.router.add_get("/orders/{order_id}/shipments", get_shipments)
    rt.http.router.add_get("/queue", get_queue)
    # Each route wants an operator token whose role may run its command (shared/operators.py).
    rt.http_commands.update(
        {
            ("POST", "/orders/{order_id}/{action}"): "{action}",
            ("POST", "/orders/{order_id}/returns"): "return",
            ("POST", "/orders/{order_id}/returns/receive"): "receive-return",
            ("GET", "/orders/{order_id}/shipments"): "shipments",
            ("GET", "/queue"): "queue",
        }
    )

    async def stats() -> dict[str, Any]:
        async with rt.db.reading() as conn:
            return {
                "shipments": await views.count_by_status(conn),
                "overdue": await views.overdue_count(conn),
            }

    rt.stats = stats

    async def sla_job() -> None:
        await SlaWatch(rt, metrics, settings).run()

    rt.background.append(sla_job)
    if settings.simulator:
        rt.background.append(WarehouseSimulator(rt, settings).run)
    return rt


class SlaWatch:
    """The SLA job: every ``sla_check_s`` flags what missed a threshold and refreshes the queue
    depth gauge. Several replicas may run it: each shipment is flagged once (rows are claimed
    with a conditional update)."""

    def __init__(
        self,
        rt: ServiceRuntime,
        metrics: FulfillmentMetrics,
        settings: FulfillmentSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rt = rt
        self.metrics = metrics
        self.settings = settings
        self.clock = clock

    async def tick(self) -> tuple[int, int]:
        now = self.clock()

        async def work(uow: UnitOfWork) -> tuple[int, int]:
            return await handlers.check_sla(uow, now, self.metrics, self.settings.sla_batch)

        flagged = await self.rt.execute(work)
        async with self.rt.db.reading() as conn:
            self.metrics.set_queue_depth(await views.queue_depth(conn))
        return flagged

    async def run(self) -> None:
        while True:
            try:
                overdue, escalated = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("SLA check failed; trying again")
                overdue = escalated = 0
            # A full batch means more are waiting: look again at once.
            full = max(overdue, escalated) >= self.settings.sla_batch
            await asyncio.sleep(0 if full else self.settings.sla_check_s)


def as_fulfillment_settings(settings: ServiceSettings | None) -> FulfillmentSettings:
    """Fulfillment's settings, keeping whatever the caller set on the common ones."""
    if isinstance(settings, FulfillmentSettings):
        return settings
    if settings is None:
        return FulfillmentSettings()
    # Fields the caller did not set (the SLA hours...) still come from the environment.
    return FulfillmentSettings(**settings.model_dump())


def _invalid(errors: list[dict[str, str]]) -> web.Response:
    return web.json_response({"error": "invalid request", "errors": errors}, status=422)
