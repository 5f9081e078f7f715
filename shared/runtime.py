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
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError
from sqlalchemy import MetaData, func, select

from shared import logs, nats_access
from shared import streams as stream_specs
from shared.consumer import BatchConsumer, ConsumerSpec, UnitOfWork, in_unit_of_work
from shared.db import Database
from shared.metrics import ServiceMetrics
from shared.migrations import MigrationError, upgrade
from shared.operators import NotAllowed, Operator, Operators, OperatorsError, bearer_token
from shared.outbox import Outbox
from shared.rpc import Command, CommandRefused, RpcServer
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
# The operator an HTTP request acts as, on routes in ``ServiceRuntime.http_commands``.
OPERATOR = web.RequestKey("operator", Operator)
# /readyz and the backlog job give up on a dependency that has not answered in this long.
READY_TIMEOUT_S = 2.0


class StartupError(RuntimeError):
    """A dependency (NATS, the database) cannot be reached: said plainly, without a traceback."""


@dataclass(frozen=True)
class NatsAuth:
    """Who a client is on NATS and how it trusts the server (see deploy/README.md)."""

    user: str | None = None
    password: str | None = None
    creds_file: Path | None = None
    inbox_prefix: str | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @classmethod
    def from_settings(cls, s: ServiceSettings) -> NatsAuth:
        return cls(
            user=s.nats_user,
            password=s.nats_password.get_secret_value() if s.nats_password else None,
            creds_file=s.nats_creds_file,
            inbox_prefix=s.nats_inbox_prefix,
            tls_ca_file=s.nats_tls_ca_file,
            tls_cert_file=s.nats_tls_cert_file,
            tls_key_file=s.nats_tls_key_file,
        )

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        opts: dict[str, Any] = {}
        if self.user is not None:
            opts["user"] = self.user
            opts["password"] = self.password or ""
        if self.creds_file is not None:
            opts["user_credentials"] = str(self.creds_file)
        # Least-privilege users may only receive replies under their own prefix.
        prefix = self.inbox_prefix or (nats_access.inbox_prefix(self.user) if self.user else None)
        if prefix:
            opts["inbox_prefix"] = prefix
        if self.tls_ca_file or self.tls_cert_file:
            ctx = ssl.create_default_context(
                cafile=str(self.tls_ca_file) if self.tls_ca_file else None
            )
            if self.tls_cert_file:
                ctx.load_cert_chain(
                    str(self.tls_cert_file), str(self.tls_key_file) if self.tls_key_file else None
                )
            opts["tls"] = ctx
        return opts


async def connect_nats(
    url: str, name: str, timeout: float = 10.0, *, auth: NatsAuth | None = None
) -> NATS:
    """Connect, retrying until ``timeout``; then stay connected (reconnecting forever).

    Raises StartupError with one plain sentence when NATS cannot be reached at all, or at once
    when the server refuses the credentials (retrying would not change its mind).
    """
    try:
        options = auth.options() if auth else {}
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load the NATS TLS files: {exc}") from exc
    connected = False
    client: NATS | None = None
    refused: list[str] = []
    refused_now = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        # nats-py's default prints a traceback for every failed attempt; before the first
        # connection the StartupError below says it once.
        if connected:
            log.warning("NATS: %s", exc or exc.__class__.__name__)
        elif "authorization violation" in str(exc).lower():
            refused.append(str(exc))
            refused_now.set()

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
            connecting = asyncio.ensure_future(
                asyncio.wait_for(
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
                        **options,
                    ),
                    timeout=max(0.5, deadline - time.monotonic()),
                )
            )
            refusal = asyncio.ensure_future(refused_now.wait())
            try:
                await asyncio.wait({connecting, refusal}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                refusal.cancel()
            if not connecting.done():
                # The server refused the credentials; nats-py would keep trying them.
                connecting.cancel()
                with contextlib.suppress(BaseException):
                    await connecting
                raise ConnectionRefusedError(refused[0])
            nc = connecting.result()
            connected, client = True, nc
            return nc
        except (TimeoutError, Exception) as exc:
            last = exc
            if refused or "authorization violation" in str(exc).lower():
                # Retrying would not change the server's mind about these credentials.
                who = f"user {auth.user!r}" if auth and auth.user else "these credentials"
                raise StartupError(f"NATS at {url} refused {who}: Authorization Violation") from exc
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
        migrations: Path | None = None,
        dedicated_writer: bool = False,
    ) -> None:
        self.name = name
        # The service's Alembic revisions; without them (tests' ad-hoc services) create_all.
        self.migrations = migrations
        self.settings = settings
        self.metrics = ServiceMetrics(name)
        self.db = Database(
            settings.database_url_for(name), metadata, dedicated_writer=dedicated_writer
        )
        self.outbox = Outbox(metadata.tables["outbox"], self.metrics)
        self.inbox = metadata.tables["inbox"]
        self.streams = streams
        try:
            self.operators = Operators.configured(settings.operators, [settings.operators_path()])
        except OperatorsError as exc:
            raise StartupError(str(exc)) from exc
        self.rpc = RpcServer(name, self.operators)
        # (method, route) -> the command it runs: such routes want an operator token whose role
        # may run that command ("{action}": the command is named by that part of the path).
        self.http_commands: dict[tuple[str, str], str] = {}
        self.http = web.Application(
            middlewares=[
                _observe_http(self.metrics, name),
                self._operators_only(),
                self._database_unavailable,
            ]
        )
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
        await self.outbox.publish_soon(rows)
        return result

    async def start(self) -> None:
        # Objects alive after start-up (modules, tables, compiled statements) never need
        # collecting: freeze them out of the GC's view, and collect the young generation less
        # often — each message allocates hundreds of short-lived objects.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        try:
            if self.migrations is not None:
                await upgrade(self.db, self.name, self.migrations)
            else:
                await self.db.create_schema()
        except MigrationError as exc:
            raise StartupError(str(exc)) from exc
        except Exception as exc:
            raise StartupError(f"cannot open the database {self.db.url!r}: {exc}") from exc
        self.nc = await connect_nats(
            self.settings.nats_url,
            f"orderflow-{self.name}",
            auth=NatsAuth.from_settings(self.settings),
        )
        self.js = self.nc.jetstream(publish_async_max_pending=20_000)
        await stream_specs.ensure_streams(self.js, self.streams, self.settings)
        self.outbox.js = self.js
        for spec in self.consumer_specs:
            consumer = BatchConsumer(
                spec, self.name, self.db, self.inbox, self.outbox, self.metrics, self.settings
            )
            await consumer.start(self.js)
            self.consumers.append(consumer)
        self.rpc.commands = {
            command: _measured(self.metrics, command, run)
            for command, run in self.rpc.commands.items()
        }
        await self.rpc.start(self.nc)
        self._tasks.append(
            asyncio.create_task(
                self.outbox.run_relay(self.db, self.settings.outbox_sweep_s), name="outbox-relay"
            )
        )
        jobs = [self.watch_backlog, *self.background]
        if self.db.is_sqlite:
            jobs.append(self._checkpoints)
        for job in jobs:
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
        await _cancel_all(self._tasks)
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
            if not await self.db.unreachable(exc):
                raise
            log.warning("%s %s: database unavailable: %r", request.method, request.path, exc)
            return web.json_response(
                {"error": "the database is unavailable; try again shortly"},
                status=503,
                headers={"Retry-After": "2"},
            )

    def _operators_only(self) -> Middleware:
        @web.middleware
        async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
            command = self._command_of(request)
            if command is None:
                return await handler(request)
            token = bearer_token(request.headers.get("Authorization"))
            try:
                request[OPERATOR] = self.operators.check(token, self.name, command)
            except NotAllowed as exc:
                headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
                return web.json_response({"error": exc.reason}, status=exc.status, headers=headers)
            return await handler(request)

        return check

    def _command_of(self, request: web.Request) -> str | None:
        resource = request.match_info.route.resource
        if resource is None:
            return None
        command = self.http_commands.get((request.method, resource.canonical))
        if command is not None and command.startswith("{"):
            return request.match_info.get(command.strip("{}"))
        return command

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "service": self.name})

    async def check_dependencies(self) -> tuple[bool, bool]:
        """Whether NATS and the database answer now; also sets ``orderflow_dependency_up``."""
        nats_ok = self.nc is not None and self.nc.is_connected
        try:
            # A database behind a dead network path would hold the probe for minutes. Not
            # wait_for: on 3.11 it swallows a cancellation that arrives as the ping completes
            # (the ping of SQLite completes at once), and stop() then waited forever.
            async with asyncio.timeout(READY_TIMEOUT_S):
                db_ok = await self.db.ping()
        except TimeoutError:
            db_ok = False
        self.metrics.dependency_up.labels(self.name, "nats").set(int(nats_ok))
        self.metrics.dependency_up.labels(self.name, "database").set(int(db_ok))
        return nats_ok, db_ok

    async def _readyz(self, _request: web.Request) -> web.Response:
        nats_ok, db_ok = await self.check_dependencies()
        body = {"service": self.name, "nats": nats_ok, "database": db_ok}
        return web.json_response(body, status=200 if nats_ok and db_ok else 503)

    async def read_backlog(self) -> None:
        """One pass of the backlog gauges: unpublished outbox rows and the oldest one's age
        (the partial index on unpublished rows makes this a small index scan), and what
        JetStream says of each durable consumer and of the dead-letter stream."""
        m = self.metrics
        await self.check_dependencies()
        table = self.outbox.table
        try:
            async with self.db.reading() as conn:
                count, oldest = (
                    await conn.execute(
                        select(func.count(), func.min(table.c.created_at)).where(
                            table.c.published_at.is_(None)
                        )
                    )
                ).one()
            m.outbox_pending.set(count)
            m.outbox_oldest_age.set(max(time.time() - oldest, 0.0) if oldest else 0.0)
        except Exception as exc:
            m.backlog_scrape_errors.labels(self.name, "outbox").inc()
            log.debug("backlog: outbox query failed: %s", exc)
        js = self.js
        if js is None or self.nc is None or not self.nc.is_connected:
            return
        for consumer in self.consumers:
            spec = consumer.spec
            try:
                info = await js.consumer_info(spec.stream, spec.name, timeout=READY_TIMEOUT_S)
            except Exception as exc:
                m.backlog_scrape_errors.labels(self.name, "jetstream").inc()
                log.debug("backlog: consumer info of %s failed: %s", spec.name, exc)
                continue
            m.consumer_pending.labels(self.name, spec.name).set(info.num_pending or 0)
            m.consumer_ack_pending.labels(self.name, spec.name).set(info.num_ack_pending or 0)
            m.consumer_redelivered.labels(self.name, spec.name).set(info.num_redelivered or 0)
        try:
            dlq = await js.stream_info(stream_specs.DEAD_LETTERS.name)
            m.dead_letter_messages.set(dlq.state.messages)
        except NotFoundError:
            m.dead_letter_messages.set(0)
        except Exception as exc:
            m.backlog_scrape_errors.labels(self.name, "jetstream").inc()
            log.debug("backlog: dead-letter stream info failed: %s", exc)

    async def _checkpoints(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.db.checkpoint()
            except Exception as exc:  # busy or locked: the next pass will do it
                log.debug("SQLite checkpoint skipped: %s", exc)

    async def watch_backlog(self) -> None:
        while True:
            await self.read_backlog()
            await asyncio.sleep(self.settings.backlog_interval_s)

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.exposition(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _stats(self, _request: web.Request) -> web.Response:
        body = await self.stats() if self.stats else {}
        return web.json_response({"service": self.name, **body})


def _measured(metrics: ServiceMetrics, name: str, command: Command) -> Command:
    """A command that records its duration and outcome, with the log context of its payload."""
    service = metrics.service
    children = {
        outcome: metrics.rpc_duration.labels(service, name, outcome)
        for outcome in ("ok", "refused", "error")
    }

    async def run(payload: dict[str, Any]) -> Any:
        logs.bind_payload(payload)
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await command(payload)
            outcome = "ok"
            return result
        except (CommandRefused, ValidationError):
            outcome = "refused"
            raise
        finally:
            children[outcome].observe(time.perf_counter() - started)

    return run


def _observe_http(metrics: ServiceMetrics, service: str) -> Any:
    """Middleware: each request's duration by route template (bounded, never the raw path)
    and status class, and its correlation and order ids bound for the log lines it causes."""

    @web.middleware
    async def observe(request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource
        template = route.canonical if route is not None else "unmatched"
        logs.bind(
            request.match_info.get("order_id"),
            request.headers.get("X-Correlation-Id"),
        )
        started = time.perf_counter()
        status = 500
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.http_duration.labels(
                service, template, request.method, f"{status // 100}xx"
            ).observe(time.perf_counter() - started)

    return observe


async def _cancel_all(tasks: Iterable[asyncio.Task[Any]], patience_s: float = 10.0) -> None:
    """Cancel tasks and wait for them to end, cancelling again any that swallowed its
    cancellation: on Python 3.11 ``asyncio.wait_for`` (inside nats-py's requests too) drops a
    cancellation that arrives as the awaited result does, and the task carries on."""
    pending = {t for t in tasks if not t.done()}
    deadline = time.monotonic() + patience_s
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
        if pending and time.monotonic() > deadline:
            names = ", ".join(t.get_name() for t in pending)
            log.warning("background tasks did not stop in %.0fs: %s", patience_s, names)
            return


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
