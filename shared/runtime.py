"""One place that wires a service: database, NATS, streams, consumers, relay, commands, HTTP.

A service builds a ``ServiceRuntime`` with production defaults from its settings, registers its
consumers, commands, routes and background tasks, and calls ``serve()``; tests call ``start()``
and ``stop()`` with settings of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy import MetaData

from shared import streams as stream_specs
from shared.consumer import BatchConsumer, ConsumerSpec, UnitOfWork, in_unit_of_work
from shared.db import Database
from shared.metrics import ServiceMetrics
from shared.outbox import Outbox
from shared.rpc import RpcServer
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class StartupError(RuntimeError):
    """A dependency (NATS, the database) cannot be reached: said plainly, without a traceback."""


async def connect_nats(url: str, name: str, timeout: float = 10.0) -> NATS:
    """Connect, retrying until ``timeout``; then stay connected (reconnecting forever).

    Raises StartupError with one plain sentence when NATS cannot be reached at all.
    """
    connected = False
    client: NATS | None = None

    async def on_error(exc: Exception) -> None:
        # nats-py's default prints a traceback for every failed attempt; before the first
        # connection the StartupError below says it once.
        if connected:
            log.warning("NATS: %s", exc or exc.__class__.__name__)

    async def on_disconnected() -> None:
        closing = client is not None and (client.is_closed or client.is_draining)
        if connected and not closing:
            log.warning("NATS: disconnected; reconnecting")

    async def on_reconnected() -> None:
        log.info("NATS: reconnected")

    last: BaseException | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=url.split(","),
                    name=name,
                    connect_timeout=2,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    allow_reconnect=True,
                    pending_size=64 * 1024 * 1024,
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                ),
                timeout=max(0.5, deadline - time.monotonic()),
            )
            connected, client = True, nc
            return nc
        except (TimeoutError, Exception) as exc:
            last = exc
            await asyncio.sleep(0.3)
    reason = f": {last}" if last and str(last) else ""
    raise StartupError(f"cannot reach NATS at {url} (tried for {timeout:.0f}s){reason}")


class ServiceRuntime:
    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        metadata: MetaData,
        streams: tuple[stream_specs.StreamSpec, ...],
    ) -> None:
        self.name = name
        self.settings = settings
        self.metrics = ServiceMetrics(name)
        self.db = Database(settings.database_url_for(name), metadata)
        self.outbox = Outbox(metadata.tables["outbox"], self.metrics)
        self.inbox = metadata.tables["inbox"]
        self.streams = streams
        self.rpc = RpcServer(name)
        self.http = web.Application(middlewares=[self._database_unavailable])
        self.http_port: int | None = None
        self.consumer_specs: list[ConsumerSpec] = []
        self.consumers: list[BatchConsumer] = []
        self.background: list[Callable[[], Awaitable[None]]] = []
        self.stats: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.http.router.add_get("/healthz", self._healthz)
        self.http.router.add_get("/readyz", self._readyz)
        self.http.router.add_get("/metrics", self._metrics)
        self.http.router.add_get("/stats", self._stats)

    def consume(self, spec: ConsumerSpec) -> None:
        self.consumer_specs.append(spec)

    async def execute(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """Run a command in one transaction with its outbox rows, then publish them."""
        result, rows = await in_unit_of_work(self.db, self.outbox, work)
        self.outbox.publish_soon(rows)
        return result

    async def start(self) -> None:
        # Objects alive after start-up (modules, tables, compiled statements) never need
        # collecting: freeze them out of the GC's view, and collect the young generation less
        # often — each message allocates hundreds of short-lived objects.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        try:
            await self.db.create_schema()
        except Exception as exc:
            raise StartupError(f"cannot open the database {self.db.url!r}: {exc}") from exc
        self.nc = await connect_nats(self.settings.nats_url, f"orderflow-{self.name}")
        self.js = self.nc.jetstream(publish_async_max_pending=20_000)
        await stream_specs.ensure_streams(self.js, self.streams, self.settings)
        self.outbox.js = self.js
        for spec in self.consumer_specs:
            consumer = BatchConsumer(
                spec, self.name, self.db, self.inbox, self.outbox, self.metrics, self.settings
            )
            await consumer.start(self.js)
            self.consumers.append(consumer)
        await self.rpc.start(self.nc)
        self._tasks.append(
            asyncio.create_task(
                self.outbox.run_relay(self.db, self.settings.outbox_sweep_s), name="outbox-relay"
            )
        )
        for job in self.background:
            self._tasks.append(
                asyncio.create_task(_forever(job), name=getattr(job, "__name__", "job"))
            )
        self._runner = web.AppRunner(self.http, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http_host, self.settings.http_port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else self.settings.http_port
        log.info(
            "%s ready: http://%s:%s nats=%s db=%s",
            self.name,
            self.settings.http_host,
            self.http_port,
            self.settings.nats_url,
            self.db.url.render_as_string(),
        )

    async def stop(self) -> None:
        for consumer in self.consumers:
            await consumer.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.outbox.drain()
        with contextlib.suppress(Exception):
            await self.outbox.relay_once(self.db, min_age_s=1e9)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        await self.db.close()

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("%s stopping", self.name)
        await self.stop()

    @web.middleware
    async def _database_unavailable(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A request that failed while the database cannot be reached gets 503 and a hint to
        retry, not a 500: the caller did nothing wrong, and a retry will be answered."""
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            if await self.db.ping():
                raise
            log.warning("%s %s: database unavailable: %r", request.method, request.path, exc)
            return web.json_response(
                {"error": "the database is unavailable; try again shortly"},
                status=503,
                headers={"Retry-After": "2"},
            )

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "service": self.name})

    async def _readyz(self, _request: web.Request) -> web.Response:
        nats_ok = self.nc is not None and self.nc.is_connected
        db_ok = await self.db.ping()
        body = {"service": self.name, "nats": nats_ok, "database": db_ok}
        return web.json_response(body, status=200 if nats_ok and db_ok else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.exposition(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _stats(self, _request: web.Request) -> web.Response:
        body = await self.stats() if self.stats else {}
        return web.json_response({"service": self.name, **body})


async def _forever(job: Callable[[], Awaitable[None]]) -> None:
    """Background jobs restart after an error instead of dying silently."""
    while True:
        try:
            await job()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background job %s failed; restarting in 1s", job)
            await asyncio.sleep(1)
