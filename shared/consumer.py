"""The consume-commit-publish-ack loop every service runs for each durable consumer.

Measured on this kind of machine (docs/performance.md): the cost is Python CPU per message, and
a transaction per message caps a hop at ~1.3k msgs/s on SQLite. So messages arrive on a JetStream
push consumer, a worker takes everything that has arrived (up to ``batch_max``) and applies it
in ONE transaction together with its inbox rows and outbox rows; after the commit the inputs are
acked and the outbox rows published. Nothing waits for a batch to fill: under light load a batch
is one message, under heavy load batches grow by themselves.

A message whose handler raises is retried alone (so one poison message cannot hold back the rest
of its batch), nak'ed with a growing delay, and after ``max_deliver`` tries moved to the
dead-letter stream with its error. A message that cannot be decoded at all goes there at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from shared import logs, subjects
from shared.contracts.envelope import Envelope, Event, decode_envelope, decode_header, new_envelope
from shared.db import Database
from shared.inbox import already_applied, record_applied
from shared.metrics import ServiceMetrics
from shared.outbox import Outbox
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class UnitOfWork:
    """What a handler gets: the open transaction and a way to emit events into the outbox."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.emitted: list[Envelope] = []
        self.after_commit: list[Callable[[], Awaitable[None]]] = []

    def on_commit(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` once the transaction has committed (e.g. write to a log file).

        It does not run again after a crash between commit and callback (the inbox skips the
        redelivered message): a service whose effect must happen keeps its own record of it
        (e.g. a pending status that a background job retries)."""
        self.after_commit.append(callback)

    def emit(
        self,
        data: Event,
        *,
        cause: Envelope | None = None,
        correlation_id: str | None = None,
    ) -> Envelope:
        env = new_envelope(
            data,
            correlation_id=correlation_id or (cause.correlation_id if cause else None),
            causation_id=cause.event_id if cause else None,
        )
        self.emitted.append(env)
        return env


Handler = Callable[[UnitOfWork, list[Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Incoming:
    """A decoded message: which handler takes it, its inbox key and its body."""

    kind: str
    message_id: str
    body: Any
    # Where it came from and which order it concerns: kept in the inbox for `orderflow trace`.
    subject: str | None = None
    stream_seq: int | None = None
    order_id: str | None = None


async def in_unit_of_work(
    db: Database, outbox: Outbox, work: Callable[[UnitOfWork], Awaitable[T]]
) -> tuple[T, list[dict[str, Any]]]:
    """Run ``work`` in one transaction together with its outbox rows (and the marks of rows
    published since the last transaction); after the commit, run its on-commit callbacks.
    Returns the work's result and the outbox rows to publish."""
    marks = outbox.take_marks()
    try:
        async with db.transaction() as conn:
            await outbox.mark(conn, marks)
            uow = UnitOfWork(conn)
            result = await work(uow)
            rows = await outbox.write(conn, uow.emitted)
    except BaseException:
        outbox.restore_marks(marks)
        raise
    await run_after_commit(uow.after_commit)
    return result, rows


async def run_after_commit(callbacks: list[Callable[[], Awaitable[None]]]) -> None:
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            log.exception("after-commit callback %s failed", callback)


def decode_event(msg: Msg) -> Incoming:
    env = decode_envelope(msg.data)
    seq = msg.metadata.sequence.stream
    return Incoming(env.type, env.event_id, env, msg.subject, seq, env.correlation_id)


def decode_event_header(msg: Msg) -> Incoming:
    """For handlers that read only the envelope (type, key, time): the payload is not validated,
    a third of the cost of ``decode_event``."""
    header = decode_header(msg.data)
    return Incoming(header.type, header.event_id, header)


@dataclass
class ConsumerSpec:
    name: str
    stream: str
    filter_subjects: Sequence[str]
    handlers: dict[str, Handler]
    decode: Callable[[Msg], Incoming] = decode_event
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    # Per-consumer retry budget, where the service default is too short (e.g. waiting for an
    # event that arrives on another stream).
    max_deliver: int | None = None
    nak_delay_s: float | None = None
    # Off the order's critical path (a status view, a notice after the fact): the worker lets
    # a batch fill for ``settings.linger_s`` before applying it. Nobody waits on these within
    # milliseconds, and at moderate load a batch of one costs nearly what a batch of a hundred
    # does, CPU that the critical path's consumers (here and in the other services on the same
    # cores) then wait for.
    linger: bool = False


@dataclass
class BatchConsumer:
    spec: ConsumerSpec
    service: str
    db: Database
    inbox: Table
    outbox: Outbox
    metrics: ServiceMetrics
    settings: ServiceSettings
    js: JetStreamContext | None = None
    _pending: list[Msg] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _full: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _sub: Any = None
    _stopping: bool = False

    def __post_init__(self) -> None:
        # The label children every batch observes, looked up once (``labels()`` costs a few µs
        # a call, and a batch of one at moderate load made five such calls).
        m, service, name = self.metrics, self.service, self.spec.name
        self._batch_duration = m.batch_duration.labels(service, name)
        self._batch_size = m.batch_size.labels(service, name)
        self._handler_duration = {
            k: m.handler_duration.labels(service, k) for k in self.spec.handlers
        }
        self._events_processed = {
            k: m.events_processed.labels(service, k) for k in self.spec.handlers
        }

    @property
    def max_deliver(self) -> int:
        return self.spec.max_deliver or self.settings.max_deliver

    @property
    def nak_delay_s(self) -> float:
        return (
            self.spec.nak_delay_s
            if self.spec.nak_delay_s is not None
            else self.settings.nak_delay_s
        )

    async def start(self, js: JetStreamContext) -> None:
        self.js = js
        spec, s = self.spec, self.settings
        config = ConsumerConfig(
            durable_name=spec.name,
            deliver_group=spec.name,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=spec.deliver_policy,
            ack_wait=s.ack_wait_s,
            # One more than our own tries: the last delivery is the one we dead-letter.
            max_deliver=self.max_deliver + 1,
            max_ack_pending=s.max_ack_pending,
            filter_subjects=list(spec.filter_subjects),
            # A fixed deliver subject: every replica subscribes to it in the deliver group.
            deliver_subject=f"_ORDERFLOW.deliver.{spec.name}",
        )
        await self._declare(js, config)
        # A queue (deliver group) subscription lets N replicas share one durable consumer.
        self._sub = await js.subscribe(
            spec.filter_subjects[0],
            queue=spec.name,
            durable=spec.name,
            stream=spec.stream,
            cb=self._on_message,
            manual_ack=True,
            config=config,
            pending_msgs_limit=4 * s.max_ack_pending,
            pending_bytes_limit=512 * 1024 * 1024,
        )
        self._task = asyncio.create_task(self._work(), name=f"consumer-{spec.name}")

    async def _declare(self, js: JetStreamContext, config: ConsumerConfig) -> None:
        """Create the durable consumer, or bring an existing one up to this version's config.

        Binding alone would keep an old consumer's filter: a new version that consumes one more
        event type would silently never receive it.
        """
        try:
            info = await js.consumer_info(self.spec.stream, self.spec.name)
        except NotFoundError:
            info = None
        if info is not None:
            current = info.config
            unchanged = (
                sorted(current.filter_subjects or [current.filter_subject or ""])
                == sorted(config.filter_subjects or [])
                and current.max_deliver == config.max_deliver
                and current.ack_wait == config.ack_wait
                and current.max_ack_pending == config.max_ack_pending
            )
            if unchanged:
                return
            # Keep what cannot change on a live consumer (its deliver subject and policy).
            config.deliver_subject = current.deliver_subject
            config.deliver_policy = current.deliver_policy
        try:
            await js.add_consumer(self.spec.stream, config=config)
            if info is not None:
                log.info("%s: consumer config updated", self.spec.name)
        except Exception as exc:
            if info is None:
                raise
            log.warning(
                "%s: could not update the consumer config (%s); using the existing one",
                self.spec.name,
                exc,
            )

    async def stop(self) -> None:
        self._stopping = True
        if self._sub is not None:
            # Bounded: with the connection between servers (a cluster node just died) nats-py
            # can wait on the unsubscribe indefinitely, and a stopping service must stop.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._sub.unsubscribe()
        self._wake.set()
        self._full.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _on_message(self, msg: Msg) -> None:
        self._pending.append(msg)
        self._wake.set()
        if len(self._pending) >= self.settings.batch_max:
            self._full.set()

    async def _work(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self.spec.linger and self.settings.linger_s > 0:
                await self._linger()
            while self._pending and not self._stopping:
                n = self.settings.batch_max
                batch, self._pending = self._pending[:n], self._pending[n:]
                try:
                    await self.process(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Never let the worker die: unacked messages come back after ack_wait.
                    log.exception("%s: batch failed outside any handler", self.spec.name)

    async def _linger(self) -> None:
        """Wait until a full batch has arrived or ``linger_s`` has passed (or stopping)."""
        if len(self._pending) >= self.settings.batch_max:
            return
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.linger_s):
                await self._full.wait()

    async def process(self, batch: list[Msg]) -> None:
        """Apply a batch: one transaction, then ack, then publish."""
        items: list[tuple[Msg, Incoming]] = []
        for msg in batch:
            if msg.metadata.num_delivered > 1:
                self.metrics.redeliveries.labels(self.service, self.spec.name).inc()
            try:
                incoming = self.spec.decode(msg)
            except Exception as exc:
                await self._dead_letter(msg, f"undecodable: {exc}")
                continue
            if incoming.kind not in self.spec.handlers:
                # A valid event of a type this consumer does not take, on a subject it does:
                # acking it would drop it unseen.
                await self._dead_letter(
                    msg, f"unexpected {incoming.kind!r} on {msg.subject}: no handler for it here"
                )
                continue
            items.append((msg, incoming))
        if not items:
            return
        # Log lines name the order only when there is one (once per batch, not per message).
        logs.bind_body(items[0][1].body if len(items) == 1 else None)
        started = time.perf_counter()
        try:
            rows = await self._apply([incoming for _, incoming in items], batch)
        except Exception as exc:
            if len(items) == 1:
                await self._failed(items[0][0], exc)
                return
            log.warning(
                "%s: batch of %d failed (%s); retrying one by one", self.spec.name, len(items), exc
            )
            for msg, incoming in items:
                logs.bind_body(incoming.body)
                try:
                    rows = await self._apply([incoming], [msg])
                except Exception as one_exc:
                    await self._failed(msg, one_exc)
                    continue
                await self.outbox.publish_soon(rows)
                await msg.ack()
            return
        self._batch_duration.observe(time.perf_counter() - started)
        self._batch_size.observe(len(items))
        # Outputs first, then the acks: nothing here yields to the loop, so both leave in one
        # socket write (a write wakes nats-server, which on a VM costs as much as the write).
        await self.outbox.publish_soon(rows)
        for msg, _ in items:
            await msg.ack()

    async def _apply(self, items: list[Incoming], msgs: list[Msg]) -> list[dict[str, Any]]:
        """Apply, waiting out a database that cannot be reached: an outage is not the
        messages' fault, so it must not spend their tries (they would be dead-lettered after a
        few seconds of it). Meanwhile the messages are kept in progress, so JetStream neither
        redelivers them nor counts deliveries towards its own limit."""
        waited_since: float | None = None
        while True:
            try:
                rows = await self._apply_once(items)
            except Exception as exc:
                if not await self.db.unreachable(exc):
                    raise
                if self._stopping:
                    # Not the messages' fault either: leave them unacked for redelivery.
                    raise asyncio.CancelledError from exc
                now = time.monotonic()
                if waited_since is None:
                    waited_since = now
                    log.warning(
                        "%s: database unavailable (%r); holding %d messages until it is back",
                        self.spec.name,
                        exc,
                        len(msgs) + len(self._pending),
                    )
                for msg in [*msgs, *self._pending]:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
                await asyncio.sleep(min(0.25 * 2 ** min((now - waited_since) // 2, 4), 2.0))
                continue
            if waited_since is not None:
                log.info(
                    "%s: database back after %.1fs", self.spec.name, time.monotonic() - waited_since
                )
            return rows

    async def _apply_once(self, items: list[Incoming]) -> list[dict[str, Any]]:
        async def work(uow: UnitOfWork) -> None:
            conn = uow.conn
            seen = await already_applied(
                conn, self.inbox, self.spec.name, [i.message_id for i in items]
            )
            fresh: list[Incoming] = []
            for item in items:
                if item.message_id not in seen:
                    seen.add(item.message_id)
                    fresh.append(item)
            skipped = len(items) - len(fresh)
            if skipped:
                self.metrics.duplicates_skipped.labels(self.service, self.spec.name).inc(skipped)
            await record_applied(conn, self.inbox, self.spec.name, fresh)
            # Runs of the same kind, in arrival order: a handler sees a list it can apply with a
            # few set-based statements, and causal order across kinds is kept.
            for kind, run in itertools.groupby(fresh, key=lambda i: i.kind):
                handler = self.spec.handlers.get(kind)
                if handler is None:
                    continue
                bodies = [i.body for i in run]
                t0 = time.perf_counter()
                await handler(uow, bodies)
                self._handler_duration[kind].observe(time.perf_counter() - t0)
                self._events_processed[kind].inc(len(bodies))

        _, rows = await in_unit_of_work(self.db, self.outbox, work)
        return rows

    async def _failed(self, msg: Msg, exc: BaseException) -> None:
        self.metrics.handler_failures.labels(self.service, self.spec.name).inc()
        tries = msg.metadata.num_delivered
        if tries >= self.max_deliver:
            await self._dead_letter(msg, f"failed {tries} times, last error: {exc!r}")
            return
        delay = min(self.nak_delay_s * (2 ** (tries - 1)), 300.0)
        log.warning(
            "%s: message %s failed (try %d of %d), retry in %.1fs: %r",
            self.spec.name,
            msg.metadata.sequence.stream,
            tries,
            self.max_deliver,
            delay,
            exc,
        )
        await msg.nak(delay=delay)

    async def _dead_letter(self, msg: Msg, reason: str) -> None:
        """Move a message we cannot process to the dead-letter stream; never drop it."""
        assert self.js is not None
        seq = msg.metadata.sequence.stream
        headers = {
            "Nats-Msg-Id": f"dlq:{self.spec.stream}:{seq}:{self.spec.name}",
            "Orderflow-Error": reason[:1000].replace("\r", " ").replace("\n", " "),
            "Orderflow-Original-Subject": msg.subject,
            "Orderflow-Stream": self.spec.stream,
            "Orderflow-Stream-Seq": str(seq),
            "Orderflow-Consumer": self.spec.name,
            "Orderflow-Deliveries": str(msg.metadata.num_delivered),
        }
        try:
            await self.js.publish(
                subjects.dead_letter(self.service, self.spec.name), msg.data, headers=headers
            )
        except Exception as exc:
            # Could not park it: leave it to be redelivered rather than lose it.
            log.error(
                "%s: could not dead-letter message %s (%s); it will be redelivered",
                self.spec.name,
                seq,
                exc,
            )
            await msg.nak(delay=self.settings.nak_delay_s * 10)
            return
        self.metrics.dead_letters.labels(self.service, self.spec.name).inc()
        log.error(
            "ALERT %s: message %s on %s dead-lettered: %s", self.spec.name, seq, msg.subject, reason
        )
        await msg.term()
