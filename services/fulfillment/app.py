"""Fulfillment's wiring: the reservations consumer, operator commands, HTTP routes, simulator."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from services.fulfillment import domain, handlers
from services.fulfillment.models import metadata
from services.fulfillment.settings import FulfillmentSettings
from services.fulfillment.simulator import WarehouseSimulator
from shared import streams, subjects
from shared.consumer import ConsumerSpec, UnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.fulfillment import (
    SHIPMENT_COMMANDS,
    QueueQuery,
    ShipmentsQuery,
)
from shared.contracts.inventory import StockReserved
from shared.rpc import Command, CommandRefused, validation_errors
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings

SERVICE = subjects.FULFILLMENT


def create_service(settings: ServiceSettings | None = None) -> ServiceRuntime:
    settings = as_fulfillment_settings(settings)
    rt = ServiceRuntime(
        SERVICE,
        settings,
        metadata,
        streams=(streams.INVENTORY, streams.FULFILLMENT, streams.DEAD_LETTERS),
    )
    sla_hours = settings.sla_hours()

    async def on_reserved(uow: UnitOfWork, items: list[Envelope]) -> None:
        await handlers.queue_shipments(uow, items, rt.metrics, sla_hours)

    rt.consume(
        ConsumerSpec(
            name="fulfillment-reservations",
            stream=streams.INVENTORY.name,
            filter_subjects=[subjects.events_of(subjects.INVENTORY, StockReserved.event_type)],
            handlers={StockReserved.event_type: on_reserved},
        )
    )

    async def command(action: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        """The one entry of an operator command, whether it came by NATS or HTTP."""
        parsed = SHIPMENT_COMMANDS[action].model_validate(payload)

        async def work(uow: UnitOfWork) -> list[dict[str, Any]]:
            return await handlers.run_command(uow, action, parsed, rt.metrics)

        return await rt.execute(work)

    async def queue(payload: dict[str, Any]) -> list[dict[str, Any]]:
        query = QueueQuery.model_validate(payload)
        async with rt.db.reading() as conn:
            return await handlers.work_queue(conn, query.limit)

    async def shipments(payload: dict[str, Any]) -> list[dict[str, Any]]:
        query = ShipmentsQuery.model_validate(payload)
        async with rt.db.reading() as conn:
            found = await handlers.shipments_of(conn, query.order_id)
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
    rt.rpc.register("queue", queue)
    rt.rpc.register("shipments", shipments)

    # HTTP, for warehouse terminals and dashboards.
    async def post_command(request: web.Request) -> web.Response:
        order_id = request.match_info["order_id"]
        action = request.match_info["action"]
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            return _invalid([{"field": "(body)", "reason": f"not valid JSON: {exc}"}])
        if not isinstance(body, dict):
            return _invalid([{"field": "(body)", "reason": "the body must be a JSON object"}])
        body.setdefault("actor", "http")
        try:
            moved = await command(action, {**body, "order_id": order_id})
        except ValidationError as exc:
            return _invalid(validation_errors(exc))
        except handlers.ShipmentNotFound as exc:
            return web.json_response({"error": exc.reason}, status=404)
        except CommandRefused as exc:
            return web.json_response({"error": exc.reason}, status=409)
        return web.json_response({"order_id": order_id, "shipments": moved})

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
    rt.http.router.add_post(f"/orders/{{order_id}}/{{action:{actions}}}", post_command)
    rt.http.router.add_get("/orders/{order_id}/shipments", get_shipments)
    rt.http.router.add_get("/queue", get_queue)

    async def stats() -> dict[str, Any]:
        async with rt.db.reading() as conn:
            return {"shipments": await handlers.count_by_status(conn)}

    rt.stats = stats

    if settings.simulator:
        rt.background.append(WarehouseSimulator(rt, settings).run)
    return rt


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
