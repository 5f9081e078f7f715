"""Inventory's wiring: the order and shipment consumers, the backorder sweep, commands, HTTP."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from services.inventory import handlers
from services.inventory.models import metadata
from services.inventory.settings import InventorySettings
from shared import streams, subjects
from shared.consumer import ConsumerSpec, UnitOfWork
from shared.contracts.envelope import Envelope
from shared.contracts.inventory import RestockStock
from shared.rpc import CommandRefused, validation_errors
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings

SERVICE = subjects.INVENTORY
LEDGER_LIMIT = 1000
EXPIRY_BATCH = 500


def create_service(settings: ServiceSettings | None = None) -> ServiceRuntime:
    if not isinstance(settings, InventorySettings):
        # A plain ServiceSettings (the launcher's) keeps its values; ours come from the env.
        settings = InventorySettings(**settings.model_dump()) if settings else InventorySettings()
    hold = timedelta(seconds=settings.backorder_hold_s)
    sweep_s = settings.backorder_sweep_s
    rt = ServiceRuntime(
        SERVICE,
        settings,
        metadata,
        streams=(streams.INTAKE, streams.INVENTORY, streams.FULFILLMENT, streams.DEAD_LETTERS),
    )

    async def on_orders_accepted(uow: UnitOfWork, events: list[Envelope]) -> None:
        await handlers.reserve_orders(uow, events, rt.metrics, hold)

    rt.consume(
        ConsumerSpec(
            name="inventory-orders",
            stream=streams.INTAKE.name,
            filter_subjects=[subjects.events_of(subjects.INTAKE, "order_accepted")],
            handlers={"order_accepted": on_orders_accepted},
        )
    )
    rt.consume(
        ConsumerSpec(
            name="inventory-shipments",
            stream=streams.FULFILLMENT.name,
            filter_subjects=[subjects.events_of(subjects.FULFILLMENT, "shipment_shipped")],
            handlers={"shipment_shipped": handlers.deduct_shipped},
        )
    )

    async def expire_backorders_forever() -> None:
        async def sweep(uow: UnitOfWork) -> int:
            return await handlers.expire_backorders(uow, rt.metrics, EXPIRY_BATCH)

        while True:
            expired = await rt.execute(sweep)
            # A full sweep means more are due: go again at once.
            if expired < EXPIRY_BATCH:
                await asyncio.sleep(sweep_s)

    rt.background.append(expire_backorders_forever)

    async def restock(payload: dict[str, Any]) -> dict[str, Any]:
        command = RestockStock.model_validate(payload)

        async def work(uow: UnitOfWork) -> dict[str, Any]:
            return await handlers.restock(uow, command, rt.metrics)

        return await rt.execute(work)

    async def stock_of(sku: str | None) -> list[dict[str, Any]]:
        async with rt.db.reading() as conn:
            return await handlers.stock_levels(conn, sku)

    async def ledger_of(sku: str, limit: int) -> list[dict[str, Any]]:
        async with rt.db.reading() as conn:
            return await handlers.ledger_entries(conn, sku, limit)

    # Commands over NATS (request/reply). A ValidationError becomes field errors in the reply.
    async def cmd_stock(payload: dict[str, Any]) -> list[dict[str, Any]]:
        sku = payload.get("sku")
        if sku is not None and not isinstance(sku, str):
            raise CommandRefused("sku must be a string", [{"field": "sku", "reason": "not text"}])
        return await stock_of(sku)

    async def cmd_ledger(payload: dict[str, Any]) -> list[dict[str, Any]]:
        sku = payload.get("sku")
        if not isinstance(sku, str) or not sku:
            raise CommandRefused(
                "ledger needs {'sku': str}", [{"field": "sku", "reason": "required"}]
            )
        limit = payload.get("limit", LEDGER_LIMIT)
        if not isinstance(limit, int) or not 1 <= limit <= LEDGER_LIMIT:
            raise CommandRefused(
                "bad limit", [{"field": "limit", "reason": f"an integer from 1 to {LEDGER_LIMIT}"}]
            )
        return await ledger_of(sku, limit)

    rt.rpc.register("restock", restock)
    rt.rpc.register("stock", cmd_stock)
    rt.rpc.register("ledger", cmd_ledger)

    # HTTP, for operators and tools that cannot speak NATS.
    async def get_stock(request: web.Request) -> web.Response:
        return web.json_response(await stock_of(request.query.get("sku")))

    async def post_restock(request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        except ValueError as exc:
            return _unprocessable([{"field": "(body)", "reason": f"not valid JSON: {exc}"}])
        if not isinstance(payload, dict):
            return _unprocessable([{"field": "(body)", "reason": "must be a JSON object"}])
        try:
            row = await restock(payload)
        except ValidationError as exc:
            return _unprocessable(validation_errors(exc))
        return web.json_response(row)

    async def get_ledger(request: web.Request) -> web.Response:
        return web.json_response(await ledger_of(request.match_info["sku"], LEDGER_LIMIT))

    rt.http.router.add_get("/stock", get_stock)
    rt.http.router.add_post("/stock/restock", post_restock)
    rt.http.router.add_get("/stock/{sku}/ledger", get_ledger)

    async def stats() -> dict[str, Any]:
        async with rt.db.reading() as conn:
            return await handlers.inventory_stats(conn)

    rt.stats = stats
    return rt


def _unprocessable(errors: list[dict[str, str]]) -> web.Response:
    return web.json_response({"errors": errors}, status=422)
