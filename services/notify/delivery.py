"""Deliveries: from a committed notification to a sink, exactly once per (event, recipient, sink).

A handler stores each notification with one delivery per sink that takes it, in the transaction
that applies the event, so a redelivered event, a restart or a relay duplicate finds them and
adds none. Each sink has its own worker, so a slow webhook never holds up the log or the e-mail,
and the consumers never wait for any sink:

1. claim: a delivery is ``sending`` only while one worker holds it, named by its token, for a
   lease. The deliveries a handler makes go to this process's worker already claimed (no claim
   query on the hot path) and are handed to it after the commit; the rest (retries, a full
   worker, a claim whose worker died and whose lease ran out) are claimed from the table by one
   conditional UPDATE, so two replicas can never both claim a row.
2. send: one attempt each, outside any transaction.
3. record: every attempt is stored (``delivery_attempts``); a success becomes ``sent`` (and a
   ``notification_sent`` event), a failure ``pending`` again with a backoff, and the last allowed
   failure ``failed`` with a ``notification_failed`` event, a metric and an operations alert.
   Only the claim's holder can record: a worker whose lease ran out changes nothing.

A receiver may still see a delivery twice if a worker dies after sending and before recording
(its lease runs out and another sends it again): each carries its delivery id to drop it by.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.notify import domain
from services.notify.domain import AttemptOutcome, Draft, Notification, Route
from services.notify.models import deliveries, delivery_attempts, notifications
from services.notify.sinks import Outgoing, Sink
from shared.consumer import UnitOfWork
from shared.contracts.notify import NotificationFailed, NotificationSent
from shared.db import Bulk, Database, Query, bulk_insert
from shared.ids import uuid7
from shared.metrics import ServiceMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")

PENDING = "pending"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"

TEMPLATES = domain.TemplateBook.load()
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Execute = Callable[[Callable[[UnitOfWork], Awaitable[T]]], Awaitable[T]]


class NotifyMetrics:
    def __init__(self, metrics: ServiceMetrics) -> None:
        r, self.service = metrics.registry, metrics.service
        self.deliveries = Counter(
            "orderflow_notify_deliveries_total",
            "Deliveries finished, by sink and result (sent; failed = given up)",
            ["service", "sink", "result"],
            registry=r,
        )
        self.duration = Histogram(
            "orderflow_notify_delivery_duration_seconds",
            "Time one delivery attempt took",
            ["service", "sink"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "orderflow_notify_delivery_retries_total",
            "Failed attempts that will be tried again after a backoff",
            ["service", "sink"],
            registry=r,
        )
        self.pending = Gauge(
            "orderflow_notify_deliveries_pending",
            "Deliveries neither sent nor given up (as of the last look)",
            ["service", "sink"],
            registry=r,
        )
        self.alerts = Counter(
            "orderflow_notify_alerts_total",
            "Operations alerts raised (dead_letter, rejection_burst, delivery_failed)",
            ["service", "alert"],
            registry=r,
        )
        self.unrouted = Counter(
            "orderflow_notify_unrouted_total",
            "Notifications that no configured sink takes or can address",
            ["service", "template"],
            registry=r,
        )

    def alert(self, kind: str, n: int = 1) -> None:
        self.alerts.labels(self.service, kind).inc(n)


@dataclass
class Dispatcher:
    """What a handler needs to turn drafts into stored notifications and their deliveries, and
    the sinks' workers that take them."""

    routes: Sequence[Route]
    metrics: NotifyMetrics
    attempt_limit: int = 10
    operations_locale: str = domain.DEFAULT_LOCALE
    templates: domain.TemplateBook = field(default_factory=lambda: TEMPLATES)
    clock: Callable[[], float] = time.time
    workers: dict[str, DeliveryWorker] = field(default_factory=dict)

    def attach(self, worker: DeliveryWorker) -> None:
        self.workers[worker.sink.name] = worker

    def wake(self, sinks: set[str]) -> None:
        for sink in sinks:
            worker = self.workers.get(sink)
            if worker is not None:
                worker.wake()


@dataclass(frozen=True, slots=True)
class Claimed:
    delivery_id: str
    notification_id: str
    address: str
    attempts: int
    attempt_limit: int


@dataclass(frozen=True, slots=True)
class Handed:
    """A delivery stored already claimed by a worker of this process, handed to it after the
    commit: the hot path needs no claim query."""

    claimed: Claimed
    notification: Notification
    claim_expires_at: float


# Built once: building them for every batch cost more than running them.
_MARK_SENT = Query(
    update(deliveries)
    .where(
        deliveries.c.delivery_id.in_(bindparam("ids", expanding=True)),
        deliveries.c.claimed_by == bindparam("token"),
        deliveries.c.status == SENDING,
    )
    .values(status=SENT, sent_at=bindparam("now"), claimed_by=None, claim_expires_at=None)
    .returning(deliveries.c.delivery_id)
)
_RETRY_LATER = Bulk(
    update(deliveries)
    .where(
        deliveries.c.delivery_id == bindparam("b_id"),
        deliveries.c.claimed_by == bindparam("b_token"),
        deliveries.c.status == SENDING,
    )
    .values(
        status=PENDING,
        next_attempt_at=bindparam("b_next"),
        last_error=bindparam("b_error"),
        claimed_by=None,
        claim_expires_at=None,
    )
)
_STORED = Query(
    select(notifications.c.source_event_id, notifications.c.recipient).where(
        notifications.c.source_event_id.in_(bindparam("sources", expanding=True))
    )
)


async def store_notifications(
    uow: UnitOfWork, drafts: Sequence[tuple[str, Draft]], dispatcher: Dispatcher
) -> list[Notification]:
    """Render and store each (source event id, draft) once per recipient, with a delivery per
    sink that takes it.

    Where this process runs that sink's worker and it has room, the delivery is stored claimed
    by it and handed over after the commit; otherwise it is stored pending, for whichever
    replica claims it first."""
    if not drafts:
        return []
    sources = sorted({source for source, _ in drafts})
    done: set[tuple[str, str]] = {
        (r[0], r[1]) for r in await _STORED.all(uow.conn, {"sources": sources})
    }
    now = dispatcher.clock()
    takers = {sink: worker for sink, worker in dispatcher.workers.items() if worker.has_room()}
    made: list[Notification] = []
    rows: list[dict[str, Any]] = []
    handed: dict[str, list[Handed]] = {}
    pending: set[str] = set()
    unrouted: list[str] = []
    for source, draft in drafts:
        once = (source, draft.recipient)
        if once in done:
            continue
        done.add(once)
        text = dispatcher.templates.render(draft)
        note = Notification(
            notification_id=uuid7(),
            source_event_id=source,
            order_id=draft.order_id,
            template=draft.template,
            audience=draft.audience,
            locale=text.locale,
            recipient=draft.recipient,
            subject=text.subject,
            body=text.body,
            created_at=now,
        )
        made.append(note)
        targets = domain.deliveries_for(draft, dispatcher.routes)
        if not targets:
            unrouted.append(draft.template)
        for sink, address in targets:
            delivery_id, address = uuid7(), address[:254]
            worker = takers.get(sink)
            claim: dict[str, Any] = {}
            if worker is None:
                pending.add(sink)
            else:
                expires = now + worker.lease_s
                claim = {
                    "status": SENDING,
                    "attempts": 1,
                    "claimed_by": worker.token,
                    "claim_expires_at": expires,
                }
                claimed = Claimed(
                    delivery_id, note.notification_id, address, 1, dispatcher.attempt_limit
                )
                handed.setdefault(sink, []).append(Handed(claimed, note, expires))
            rows.append(
                {
                    "delivery_id": delivery_id,
                    "notification_id": note.notification_id,
                    "sink": sink,
                    "address": address,
                    "status": PENDING,
                    "attempts": 0,
                    "attempt_limit": dispatcher.attempt_limit,
                    "next_attempt_at": now,
                    "claimed_by": None,
                    "claim_expires_at": None,
                    "last_error": None,
                    "created_at": now,
                    "sent_at": None,
                    "failed_at": None,
                    **claim,
                }
            )
    if not made:
        return []
    await bulk_insert(notifications)(uow.conn, [_notification_row(n) for n in made])
    if rows:
        await bulk_insert(deliveries)(uow.conn, rows)

    async def after_commit() -> None:
        for template in unrouted:
            dispatcher.metrics.unrouted.labels(dispatcher.metrics.service, template).inc()
            log.warning("no sink takes or can address a %s notification", template)
        for sink, items in handed.items():
            takers[sink].hand_over(items)
        dispatcher.wake(pending)

    uow.on_commit(after_commit)
    return made


def _notification_row(n: Notification) -> dict[str, Any]:
    return {
        "notification_id": n.notification_id,
        "source_event_id": n.source_event_id,
        "order_id": n.order_id,
        "template": n.template,
        "audience": n.audience,
        "locale": n.locale,
        "recipient": n.recipient,
        "subject": n.subject,
        "body": n.body,
        "created_at": n.created_at,
    }


def worker_identity() -> str:
    """Names this process in claims, so an operator can see which replica holds a delivery."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}"


class DeliveryWorker:
    """Claims, sends and records the deliveries of one sink, forever."""

    def __init__(
        self,
        sink: Sink,
        db: Database,
        execute: Execute[Any],
        dispatcher: Dispatcher,
        policy: domain.RetryPolicy,
        *,
        batch: int = 100,
        lease_s: float = 60.0,
        poll_s: float = 1.0,
        owner: str | None = None,
        queue_limit: int | None = None,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.sink = sink
        self.db = db
        self.execute = execute
        self.dispatcher = dispatcher
        self.policy = policy
        self.batch = batch
        self.lease_s = lease_s
        self.poll_s = poll_s
        # Names the claims of this worker (and the replica it runs in) in the table.
        self.token = f"{owner or worker_identity()}:{uuid7()[-12:]}"
        self.stop_grace_s = min(lease_s, 15.0)
        self.draw = draw
        self.clock = clock or dispatcher.clock
        self.queue_limit = 20 * batch if queue_limit is None else queue_limit
        self._handed: collections.deque[Handed] = collections.deque()
        self._wake = asyncio.Event()
        # Whether the table may hold deliveries for this worker that nobody handed it (stored
        # pending, released, due for a retry): read it when told so, and at least every poll_s,
        # not after every batch that was handed over (at 1,000 orders/s that was a query per
        # batch that found nothing).
        self._table_due = True
        self._table_read_at = 0.0
        self._wakes = 0
        dispatcher.attach(self)

    def wake(self) -> None:
        """There are deliveries for this worker in the table."""
        self._table_due = True
        self._wakes += 1
        self._wake.set()

    def has_room(self) -> bool:
        # A full queue (the sink is slower than the events) leaves new deliveries pending in
        # the table, where any replica can claim them, instead of growing in memory.
        return len(self._handed) < self.queue_limit

    def hand_over(self, items: list[Handed]) -> None:
        self._handed.extend(items)
        self._wake.set()

    async def run(self) -> None:
        swept_at = 0.0

        async def one_pass() -> int:
            nonlocal swept_at
            claimed = await self.run_once(
                read_table=self.clock() - self._table_read_at >= self.poll_s
            )
            if not claimed and self.clock() - swept_at >= self.lease_s / 2:
                swept_at = self.clock()
                await self.sweep_abandoned()
            return claimed

        try:
            while True:
                current = asyncio.ensure_future(one_pass())
                try:
                    claimed = await asyncio.shield(current)
                except asyncio.CancelledError:
                    # Stopping: an attempt already made is recorded first, or it would be made
                    # again once its lease ran out after the restart.
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        async with asyncio.timeout(self.stop_grace_s):
                            await current
                            # What it was handed but did not get to goes back to the table
                            # for the next replica (or this one restarted) to claim at once.
                            if self._handed:
                                await self._release([h.claimed.delivery_id for h in self._handed])
                                self._handed.clear()
                    raise
                except Exception:
                    log.exception("delivery worker of %s failed a pass", self.sink.name)
                    claimed = 0
                if claimed:
                    continue
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that lands as the wait ends, and the worker would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_s):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            await self.sink.close()

    async def run_once(self, *, read_table: bool = True) -> int:
        """Send a batch (handed over, else claimed from the table) and record the outcomes;
        returns how many deliveries it took (0: nothing was due). With ``read_table`` false the
        table is read only if something was put there for this worker since the last read."""
        started_at = self.clock()
        claimed, notes, stale = self._take_handed(started_at)
        if stale:
            log.warning(
                "%s: %d deliveries waited half their lease in memory (the sink is slower than "
                "the events); back to the table for any replica",
                self.sink.name,
                len(stale),
            )
            await self._release(stale)
        if not claimed and (read_table or self._table_due):
            self._table_read_at, wakes = started_at, self._wakes
            claimed, notes = await self._claim(started_at)
            # Rows found: there may be more behind them, so the next pass reads again; as it
            # must when rows were put there while this read ran.
            self._table_due = bool(claimed) or self._wakes != wakes
        if not claimed:
            return 0
        batch = [
            Outgoing(c.delivery_id, c.attempts, c.address, notes[c.notification_id])
            for c in claimed
        ]
        try:
            outcomes = await self.sink.send(batch)
        except Exception as exc:
            # A sink must report, not raise; if one does, the whole batch counts as failed.
            log.exception("sink %s raised instead of reporting", self.sink.name)
            outcomes = [AttemptOutcome(False, 0.0, f"sink error: {exc!r}")] * len(batch)
        if len(outcomes) != len(batch):
            raise RuntimeError(
                f"sink {self.sink.name} gave {len(outcomes)} outcomes for {len(batch)}"
            )

        async def record(uow: UnitOfWork) -> None:
            await self._record(uow, started_at, claimed, batch, outcomes)

        await self.execute(record)
        return len(claimed)

    def _take_handed(self, now: float) -> tuple[list[Claimed], dict[str, Notification], list[str]]:
        claimed: list[Claimed] = []
        notes: dict[str, Notification] = {}
        stale: list[str] = []
        while self._handed and len(claimed) < self.batch:
            item = self._handed.popleft()
            # One that waited in memory for half its lease (the sink is slower than the events)
            # goes back to the table: sent this late, it could race a replica that claims it
            # once the lease has run out.
            if now < item.claim_expires_at - self.lease_s / 2:
                claimed.append(item.claimed)
                notes[item.notification.notification_id] = item.notification
            else:
                stale.append(item.claimed.delivery_id)
        return claimed, notes, stale

    async def _release(self, delivery_ids: list[str]) -> None:
        """Turn claims this worker will not use back into pending deliveries any replica can
        claim now; the attempt they were counted as never happened."""
        d = deliveries.c
        async with self.db.transaction() as conn:
            await conn.execute(
                update(deliveries)
                .where(
                    d.delivery_id.in_(delivery_ids),
                    d.claimed_by == self.token,
                    d.status == SENDING,
                )
                .values(
                    status=PENDING,
                    attempts=d.attempts - 1,
                    claimed_by=None,
                    claim_expires_at=None,
                )
            )
        self.wake()
        log.info("%s: %d claimed deliveries released unsent", self.sink.name, len(delivery_ids))

    async def _claim(self, now: float) -> tuple[list[Claimed], dict[str, Notification]]:
        d = deliveries.c
        due = or_(
            and_(d.status == PENDING, d.next_attempt_at <= now),
            # A claim whose worker died: tried again, unless that was its last attempt.
            and_(d.status == SENDING, d.claim_expires_at < now, d.attempts < d.attempt_limit),
        )
        # A read first: an idle worker polling for due retries takes no write lock. One branch
        # per status, each a range of ix_deliveries_due: with the OR in one WHERE, SQLite
        # walked every delivery the sink ever had (its query plan: "USING INDEX (sink=?)").
        mine = d.sink == self.sink.name
        pending = (
            select(d.delivery_id, d.next_attempt_at)
            .where(mine, d.status == PENDING, d.next_attempt_at <= now)
            .order_by(d.next_attempt_at)
            .limit(self.batch)
        )
        orphaned = (
            select(d.delivery_id, d.next_attempt_at)
            .where(mine, d.status == SENDING, d.claim_expires_at < now)
            .where(d.attempts < d.attempt_limit)
            .order_by(d.next_attempt_at)
            .limit(self.batch)
        )
        async with self.db.reading() as conn:
            found = [*await conn.execute(pending), *await conn.execute(orphaned)]
        found.sort(key=lambda row: row[1])
        candidates = [row[0] for row in found[: self.batch]]
        if not candidates:
            return [], {}
        # The condition is repeated on the row itself: of two replicas that picked the same
        # candidates, the second finds the row already ``sending`` and claims nothing.
        claim = (
            update(deliveries)
            .where(d.delivery_id.in_(candidates), d.sink == self.sink.name, due)
            .values(
                status=SENDING,
                claimed_by=self.token,
                claim_expires_at=now + self.lease_s,
                attempts=d.attempts + 1,
            )
            .returning(d.delivery_id, d.notification_id, d.address, d.attempts, d.attempt_limit)
        )
        async with self.db.transaction() as conn:
            claimed = [Claimed(*row) for row in await conn.execute(claim)]
            if not claimed:
                return [], {}
            notes = await _notifications(conn, {c.notification_id for c in claimed})
        return claimed, notes

    async def _record(
        self,
        uow: UnitOfWork,
        started_at: float,
        claimed: list[Claimed],
        batch: list[Outgoing],
        outcomes: Sequence[AttemptOutcome],
    ) -> None:
        conn, now, token = uow.conn, self.clock(), self.token
        await bulk_insert(delivery_attempts)(
            conn,
            [
                {
                    "delivery_id": c.delivery_id,
                    "attempt": c.attempts,
                    "claimed_by": token,
                    "started_at": started_at,
                    "duration_s": o.duration_s,
                    "result": SENT if o.ok else "error",
                    "status_code": o.status_code,
                    "error": (o.error or "")[:1000] or None,
                }
                for c, o in zip(claimed, outcomes, strict=True)
            ],
        )
        sent: list[Outgoing] = []
        retries: list[dict[str, Any]] = []
        given_up: list[tuple[str, Claimed, Notification, str]] = []
        for c, item, o in zip(claimed, batch, outcomes, strict=True):
            step = domain.after_attempt(
                o, c.attempts, c.attempt_limit, self.policy, now, self.draw()
            )
            if step.action == "sent":
                sent.append(item)
            elif step.action == "retry":
                retries.append(
                    {
                        "b_id": c.delivery_id,
                        "b_token": token,
                        "b_next": step.retry_at,
                        "b_error": (o.error or "")[:1000],
                    }
                )
            else:
                given_up.append((token, c, item.notification, o.error or "unknown error"))
        marked: set[str] = set()
        if sent:
            ids = [i.delivery_id for i in sent]
            result = await _MARK_SENT.all(conn, {"ids": ids, "token": token, "now": now})
            marked = {row[0] for row in result}
            for item in sent:
                n = item.notification
                if item.delivery_id in marked and n.order_id is not None:
                    uow.emit(
                        NotificationSent(
                            notification_id=n.notification_id,
                            order_id=n.order_id,
                            template=n.template,
                            recipient=n.recipient,
                            sink=self.sink.name,
                            source_event_id=n.source_event_id,
                            delivery_id=item.delivery_id,
                            attempts=item.attempt,
                        ),
                        correlation_id=n.order_id,
                    )
        if retries:
            await _RETRY_LATER(conn, retries)
        failed = await self._give_up(uow, now, given_up)
        sink, metrics = self.sink.name, self.dispatcher.metrics

        async def count() -> None:
            duration = metrics.duration.labels(metrics.service, sink)
            for o in outcomes:
                duration.observe(o.duration_s)
            if marked:
                metrics.deliveries.labels(metrics.service, sink, SENT).inc(len(marked))
            if retries:
                metrics.retries.labels(metrics.service, sink).inc(len(retries))
                log.info("%s: %d deliveries failed, retrying later", sink, len(retries))

        uow.on_commit(count)
        uow.on_commit(functools.partial(self._count_failed, failed))

    async def sweep_abandoned(self) -> int:
        """Give up deliveries whose worker died during their last allowed attempt (the claim
        skips them, so a crash loop cannot retry one forever)."""
        now, d = self.clock(), deliveries.c
        async with self.db.reading() as conn:
            result = await conn.execute(
                select(
                    d.claimed_by,
                    d.delivery_id,
                    d.notification_id,
                    d.address,
                    d.attempts,
                    d.attempt_limit,
                )
                .where(
                    d.sink == self.sink.name,
                    d.status == SENDING,
                    d.claim_expires_at < now,
                    d.attempts >= d.attempt_limit,
                )
                .limit(self.batch)
            )
            rows = [(row[0], Claimed(*row[1:])) for row in result]
            if not rows:
                return 0
            notes = await _notifications(conn, {c.notification_id for _, c in rows})
        error = f"the worker holding it stopped during its last attempt ({self.lease_s:g}s lease)"

        async def work(uow: UnitOfWork) -> int:
            given_up = [(token, c, notes[c.notification_id], error) for token, c in rows]
            failed = await self._give_up(uow, now, given_up)
            uow.on_commit(functools.partial(self._count_failed, failed))
            return len(failed)

        done: int = await self.execute(work)
        return done

    async def _count_failed(self, failed: list[domain.FailedDelivery]) -> None:
        if not failed:
            return
        metrics = self.dispatcher.metrics
        metrics.deliveries.labels(metrics.service, self.sink.name, FAILED).inc(len(failed))
        metrics.alert("delivery_failed", len(failed))
        for f in failed:
            log.error(
                "ALERT notify: %s gave up delivery %s (%s to %s) after %d attempts: %s",
                self.sink.name,
                f.delivery_id,
                f.template,
                f.address,
                f.attempts,
                f.error,
            )

    async def _give_up(
        self,
        uow: UnitOfWork,
        now: float,
        given_up: list[tuple[str, Claimed, Notification, str]],
    ) -> list[domain.FailedDelivery]:
        """Mark each (claim token, delivery, notification, last error) failed if the token
        still holds it; emit ``notification_failed`` and store an operations alert for each."""
        d = deliveries.c
        failed: list[domain.FailedDelivery] = []
        alerts: list[tuple[str, Draft]] = []
        # Rare, so one statement each: each needs to know whether it still held its claim.
        for token, c, n, last_error in given_up:
            error = last_error[:1000]
            held = await uow.conn.execute(
                update(deliveries)
                .where(d.delivery_id == c.delivery_id, d.claimed_by == token, d.status == SENDING)
                .values(
                    status=FAILED,
                    failed_at=now,
                    last_error=error,
                    claimed_by=None,
                    claim_expires_at=None,
                )
                .returning(d.delivery_id)
            )
            if held.first() is None:
                continue
            f = domain.FailedDelivery(
                delivery_id=c.delivery_id,
                notification_id=n.notification_id,
                order_id=n.order_id,
                template=n.template,
                recipient=n.recipient,
                sink=self.sink.name,
                address=c.address,
                attempts=c.attempts,
                error=error,
            )
            failed.append(f)
            env = uow.emit(
                NotificationFailed(
                    delivery_id=f.delivery_id,
                    notification_id=f.notification_id,
                    order_id=f.order_id,
                    template=f.template,
                    recipient=f.recipient,
                    sink=f.sink,
                    address=f.address,
                    attempts=f.attempts,
                    error=f.error,
                    source_event_id=n.source_event_id,
                )
            )
            alert = domain.delivery_failed_alert(f, self.dispatcher.operations_locale)
            if alert is not None:
                alerts.append((env.event_id, alert))
        await store_notifications(uow, alerts, self.dispatcher)
        return failed


async def _notifications(conn: AsyncConnection, ids: set[str]) -> dict[str, Notification]:
    columns = [notifications.c[name] for name in Notification.__dataclass_fields__]
    result = await conn.execute(select(*columns).where(notifications.c.notification_id.in_(ids)))
    return {row.notification_id: Notification(**row._mapping) for row in result}


class ResendRefused(ValueError):
    """A resend that cannot be done: the delivery is not in a state to resend."""


class UnknownDelivery(ResendRefused):
    pass


async def resend(
    conn: AsyncConnection, delivery_id: str, attempts: int, *, force: bool = False
) -> dict[str, Any]:
    """Queue a failed delivery (or, with ``force``, a sent one) to be sent again now, with
    ``attempts`` more tries. Its attempts so far stay on record."""
    d = deliveries.c
    allowed = [FAILED, SENT] if force else [FAILED]
    now = time.time()
    result = await conn.execute(
        update(deliveries)
        .where(d.delivery_id == delivery_id, d.status.in_(allowed))
        .values(
            status=PENDING,
            attempt_limit=d.attempts + attempts,
            next_attempt_at=now,
            failed_at=None,
            claimed_by=None,
            claim_expires_at=None,
        )
        .returning(d.delivery_id, d.sink, d.address, d.attempts)
    )
    row = result.first()
    if row is not None:
        return {
            "delivery_id": row.delivery_id,
            "sink": row.sink,
            "address": row.address,
            "status": PENDING,
            "attempts_so_far": row.attempts,
        }
    status = await conn.scalar(select(d.status).where(d.delivery_id == delivery_id))
    if status is None:
        raise UnknownDelivery(f"no delivery {delivery_id}")
    if status == SENT:
        raise ResendRefused(f"delivery {delivery_id} was sent already; force it to send it again")
    raise ResendRefused(f"delivery {delivery_id} is {status}: it will be sent without a resend")


async def notifications_of(conn: AsyncConnection, order_id: str) -> list[dict[str, Any]]:
    """Every notification made about one order, oldest first, each with its deliveries: what
    was sent, when, where and with what result."""
    n, d = notifications.c, deliveries.c
    result = await conn.execute(
        select(
            n.notification_id,
            n.template,
            n.audience,
            n.locale,
            n.recipient,
            n.subject,
            n.created_at,
            d.delivery_id,
            d.sink,
            d.address,
            d.status,
            d.attempts,
            d.sent_at,
            d.failed_at,
            d.next_attempt_at,
            d.last_error,
        )
        .select_from(notifications.outerjoin(deliveries, d.notification_id == n.notification_id))
        .where(n.order_id == order_id)
        .order_by(n.created_at, n.notification_id, d.sink)
    )
    listed: dict[str, dict[str, Any]] = {}
    for row in result:
        note = listed.get(row.notification_id)
        if note is None:
            note = listed[row.notification_id] = {
                "notification_id": row.notification_id,
                "template": row.template,
                "audience": row.audience,
                "locale": row.locale,
                "recipient": row.recipient,
                "subject": row.subject,
                "created_at": _iso(row.created_at),
                "deliveries": [],
            }
        if row.delivery_id is not None:
            note["deliveries"].append(_delivery_view(row._mapping))
    return list(listed.values())


async def failed_deliveries(conn: AsyncConnection, limit: int = 100) -> list[dict[str, Any]]:
    """Given-up deliveries, the most recent first."""
    n, d = notifications.c, deliveries.c
    result = await conn.execute(
        select(
            d.delivery_id,
            d.sink,
            d.address,
            d.status,
            d.attempts,
            d.sent_at,
            d.failed_at,
            d.next_attempt_at,
            d.last_error,
            n.notification_id,
            n.order_id,
            n.template,
            n.recipient,
            n.subject,
        )
        .select_from(deliveries.join(notifications, d.notification_id == n.notification_id))
        .where(d.status == FAILED)
        .order_by(d.failed_at.desc(), d.delivery_id)
        .limit(limit)
    )
    return [
        {
            **_delivery_view(row._mapping),
            "notification_id": row.notification_id,
            "order_id": row.order_id,
            "template": row.template,
            "recipient": row.recipient,
            "subject": row.subject,
        }
        for row in result
    ]


async def attempts_of(conn: AsyncConnection, delivery_id: str) -> list[dict[str, Any]]:
    a = delivery_attempts.c
    result = await conn.execute(
        select(delivery_attempts).where(a.delivery_id == delivery_id).order_by(a.attempt)
    )
    return [
        {
            "attempt": row.attempt,
            "started_at": _iso(row.started_at),
            "duration_s": round(row.duration_s, 4),
            "result": row.result,
            "status_code": row.status_code,
            "error": row.error,
        }
        for row in result
    ]


async def count_by_template(conn: AsyncConnection) -> dict[str, int]:
    result = await conn.execute(
        select(notifications.c.template, func.count()).group_by(notifications.c.template)
    )
    return {template: count for template, count in result}


async def unfinished_by_sink(conn: AsyncConnection) -> dict[str, dict[str, int]]:
    """{sink: {status: deliveries}} for those pending, being sent, or given up. Sent ones are
    left out: counting them would read the whole table on every look."""
    d = deliveries.c
    result = await conn.execute(
        select(d.sink, d.status, func.count())
        .where(d.status.in_([PENDING, SENDING, FAILED]))
        .group_by(d.sink, d.status)
    )
    out: dict[str, dict[str, int]] = {}
    for sink, status, count in result:
        out.setdefault(sink, {})[status] = count
    return out


async def observe_pending(db: Database, sinks: Sequence[str], metrics: NotifyMetrics) -> None:
    async with db.reading() as conn:
        by_sink = await unfinished_by_sink(conn)
    for sink in sinks:
        counts = by_sink.get(sink, {})
        metrics.pending.labels(metrics.service, sink).set(
            counts.get(PENDING, 0) + counts.get(SENDING, 0)
        )


def _delivery_view(row: Any) -> dict[str, Any]:
    status = row["status"]
    return {
        "delivery_id": row["delivery_id"],
        "sink": row["sink"],
        "address": row["address"],
        "status": status,
        "attempts": row["attempts"],
        "sent_at": _iso(row["sent_at"]) if row["sent_at"] is not None else None,
        "failed_at": _iso(row["failed_at"]) if row["failed_at"] is not None else None,
        "next_attempt_at": _iso(row["next_attempt_at"]) if status == PENDING else None,
        "last_error": row["last_error"],
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
