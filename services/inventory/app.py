"""Inventory's wiring: the order and fulfillment consumers, the backorder sweep, commands (NATS
request/reply and HTTP), gauges and stats."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from services.inventory import audit, commands, domain, handlers, queries
from services.inventory.metrics import InventoryMetrics
from services.inventory.models import MIGRATIONS, metadata
from services.inventory.settings import InventorySettings
from shared import streams, subjects
from shared.consumer import ConsumerSpec, UnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.fulfillment import OrderCancelled, ReturnReceived, ShipmentShipped
from shared.contracts.inventory import (
    AdjustStock,
    RestockStock,
    SetReorderPoint,
    SetWarehouse,
    TransferStock,
)
from shared.rpc import CommandRefused, validation_errors
from shared.runtime import OPERATOR, ServiceRuntime
from shared.settings import ServiceSettings

SERVICE = subjects.INVENTORY
LEDGER_LIMIT = 1000
EXPIRY_BATCH = 500

Payload = dict[str, Any]


def create_service(settings: ServiceSettings | None = None) -> ServiceRuntime:
    if not isinstance(settings, InventorySettings):
        # A plain ServiceSettings (the launcher's) keeps its values; ours come from the env.
        settings = InventorySettings(**settings.model_dump()) if settings else InventorySettings()
    policy = settings.policy()
    rt = ServiceRuntime(
        SERVICE,
        settings,
        metadata,
        migrations=MIGRATIONS,
        # On the order's critical path: its writes keep one warm connection (shared/db.py).
        dedicated_writer=True,
        streams=(streams.INTAKE, streams.INVENTORY, streams.FULFILLMENT, streams.DEAD_LETTERS),
    )
    metrics = InventoryMetrics(rt.metrics)

    def with_rules(
        handler: Callable[
            [UnitOfWork, list[Envelope], InventoryMetrics, domain.Policy], Awaitable[None]
        ],
    ) -> Callable[[UnitOfWork, list[Envelope]], Awaitable[None]]:
        async def handle(uow: UnitOfWork, events: list[Envelope]) -> None:
            await handler(uow, events, metrics, policy)

        return handle

    rt.consume(
        ConsumerSpec(
            name="inventory-orders",
            stream=streams.INTAKE.name,
            filter_subjects=[subjects.events_of(subjects.INTAKE, "order_accepted")],
            handlers={"order_accepted": with_rules(handlers.reserve_orders)},
        )
    )
    # One consumer for the three, so that a return is applied after the shipment it returns
    # (stream order), and a cancellation in the order fulfillment decided it.
    fulfillment_events = {
        ShipmentShipped.event_type: with_rules(handlers.deduct_shipped),
        OrderCancelled.event_type: with_rules(handlers.release_cancelled),
        ReturnReceived.event_type: with_rules(handlers.restock_returns),
    }
    rt.consume(
        ConsumerSpec(
            name="inventory-shipments",
            stream=streams.FULFILLMENT.name,
            filter_subjects=[
                subjects.events_of(subjects.FULFILLMENT, t) for t in fulfillment_events
            ],
            handlers=fulfillment_events,
            linger=True,
        )
    )

    async def sweep_forever() -> None:
        async def sweep(uow: UnitOfWork) -> int:
            await handlers.release_raced_cancellations(
                uow, metrics, policy, settings.cancel_race_window_s
            )
            return await handlers.expire_backorders(uow, metrics, EXPIRY_BATCH)

        while True:
            expired = await rt.execute(sweep)
            # A full sweep means more are due: go again at once.
            if expired < EXPIRY_BATCH:
                await asyncio.sleep(settings.backorder_sweep_s)

    async def refresh_gauges_forever() -> None:
        while True:
            async with rt.db.reading() as conn:
                waiting, below = await queries.gauge_values(conn)
            metrics.backorders_waiting.set(waiting)
            metrics.skus_below_reorder_point.set(below)
            await asyncio.sleep(settings.gauge_refresh_s)

    rt.background.extend([sweep_forever, refresh_gauges_forever])

    # --- commands: one function each, whether it comes over NATS or HTTP ---

    async def restock(payload: Payload) -> dict[str, Any]:
        command = RestockStock.model_validate(payload)
        return await rt.execute(lambda uow: commands.restock(uow, command, metrics, policy))

    async def adjust(payload: Payload) -> dict[str, Any]:
        command = AdjustStock.model_validate(payload)
        return await rt.execute(lambda uow: commands.adjust(uow, command, metrics, policy))

    async def transfer(payload: Payload) -> list[dict[str, Any]]:
        command = TransferStock.model_validate(payload)
        return await rt.execute(lambda uow: commands.transfer(uow, command, metrics, policy))

    async def reorder(payload: Payload) -> dict[str, Any]:
        command = SetReorderPoint.model_validate(payload)
        return await rt.execute(lambda uow: commands.set_reorder_point(uow, command, policy))

    async def warehouse(payload: Payload) -> dict[str, Any]:
        command = SetWarehouse.model_validate(payload)
        return await rt.execute(lambda uow: commands.set_warehouse(uow, command))

    async def stock_levels(payload: Payload) -> list[dict[str, Any]]:
        sku = _optional_text(payload, "sku")
        async with rt.db.reading() as conn:
            return await queries.stock_levels(conn, sku)

    async def ledger(payload: Payload) -> list[dict[str, Any]]:
        sku = _optional_text(payload, "sku")
        if not sku:
            raise CommandRefused(
                "ledger needs {'sku': str}", [{"field": "sku", "reason": "required"}]
            )
        limit = payload.get("limit", LEDGER_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= LEDGER_LIMIT:
            raise CommandRefused(
                "bad limit", [{"field": "limit", "reason": f"an integer from 1 to {LEDGER_LIMIT}"}]
            )
        async with rt.db.reading() as conn:
            return await queries.ledger_entries(conn, sku, limit)

    async def forecast(payload: Payload) -> list[dict[str, Any]]:
        sku = _optional_text(payload, "sku")
        async with rt.db.reading() as conn:
            return await queries.forecasts(conn, policy, sku)

    async def warehouses(_payload: Payload) -> list[dict[str, Any]]:
        async with rt.db.reading() as conn:
            return await queries.warehouse_list(conn)

    rpc_commands: dict[str, Callable[[Payload], Awaitable[Any]]] = {
        "restock": restock,
        "adjust": adjust,
        "transfer": transfer,
        "reorder": reorder,
        "warehouse": warehouse,
        "stock": stock_levels,
        "ledger": ledger,
        "forecast": forecast,
        "warehouses": warehouses,
    }
    for name, command in rpc_commands.items():
        rt.rpc.register(name, command)

    # --- HTTP, for operators and tools that cannot speak NATS ---

    def posted(command: Callable[[Payload], Awaitable[Any]]) -> Handler:
        async def route(request: web.Request) -> web.Response:
            try:
                payload = await request.json()
            except ValueError as exc:
                return _unprocessable([{"field": "(body)", "reason": f"not valid JSON: {exc}"}])
            if not isinstance(payload, dict):
                return _unprocessable([{"field": "(body)", "reason": "must be a JSON object"}])
            payload.update(request.match_info)
            payload["actor"] = request[OPERATOR].actor(payload.get("actor"))
            return await _answer(command, payload)

        return route

    def queried(command: Callable[[Payload], Awaitable[Any]]) -> Handler:
        async def route(request: web.Request) -> web.Response:
            payload: Payload = {**request.query, **request.match_info}
            if "limit" in payload:
                try:
                    payload["limit"] = int(payload["limit"])
                except ValueError:
                    return _unprocessable([{"field": "limit", "reason": "not an integer"}])
            return await _answer(command, payload)

        return route

    router = rt.http.router
    router.add_get("/stock", queried(stock_levels))
    router.add_get("/stock/forecast", queried(forecast))
    router.add_post("/stock/restock", posted(restock))
    router.add_post("/stock/adjust", posted(adjust))
    router.add_post("/stock/transfer", posted(transfer))
    router.add_get("/stock/{sku}/ledger", queried(ledger))
    router.add_put("/stock/{sku}/reorder", posted(reorder))
    router.add_get("/warehouses", queried(warehouses))
    router.add_put("/warehouses/{code}", posted(warehouse))
    # Each route wants an operator token whose role may run its command (shared/operators.py).
    rt.http_commands.update(
        {
            ("GET", "/stock"): "stock",
            ("GET", "/stock/forecast"): "forecast",
            ("POST", "/stock/restock"): "restock",
            ("POST", "/stock/adjust"): "adjust",
            ("POST", "/stock/transfer"): "transfer",
            ("GET", "/stock/{sku}/ledger"): "ledger",
            ("PUT", "/stock/{sku}/reorder"): "reorder",
            ("GET", "/warehouses"): "warehouses",
            ("PUT", "/warehouses/{code}"): "warehouse",
        }
    )

    async def stats() -> dict[str, Any]:
        async with rt.db.reading() as conn:
            return await queries.inventory_stats(conn)

    rt.stats = stats
    audit.register(rt, policy)
    return rt


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _optional_text(payload: Payload, field: str) -> str | None:
    value = payload.get(field)
    if value is not None and not isinstance(value, str):
        raise CommandRefused(f"{field} must be a string", [{"field": field, "reason": "not text"}])
    return value


async def _answer(command: Callable[[Payload], Awaitable[Any]], payload: Payload) -> web.Response:
    try:
        result = await command(payload)
    except ValidationError as exc:
        return _unprocessable(validation_errors(exc))
    except CommandRefused as exc:
        return web.json_response({"error": exc.reason, "errors": exc.errors}, status=409)
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    return web.json_response(result)


def _unprocessable(errors: list[dict[str, str]]) -> web.Response:
    return web.json_response({"errors": errors}, status=422)
