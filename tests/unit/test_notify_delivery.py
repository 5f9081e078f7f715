"""The delivery worker against a real SQLite database and scripted sinks: claim, send, record,
retry with backoff, give up with an alert, leases, resends, and two workers on one table."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from services.notify import delivery, handlers
from services.notify.delivery import Dispatcher, NotifyMetrics
from services.notify.domain import AttemptOutcome, RetryPolicy, Route
from services.notify.models import deliveries, delivery_attempts, metadata, notifications
from services.notify.sinks import Outgoing
from shared.consumer import UnitOfWork, run_after_commit
from shared.contracts.common import Address, Customer, OrderLine
from shared.contracts.envelope import Envelope, new_envelope
from shared.contracts.intake import OrderAccepted
from shared.contracts.notify import NotificationFailed, NotificationSent
from shared.db import Database
from shared.ids import uuid7
from shared.metrics import ServiceMetrics
from tests.plans import full_scans

T = TypeVar("T")
OK = AttemptOutcome(ok=True, duration_s=0.01, status_code=200)
DOWN = AttemptOutcome(ok=False, duration_s=0.02, error="HTTP 503: down", status_code=503)
REFUSED = AttemptOutcome(
    ok=False, duration_s=0.01, error="HTTP 400: bad", retryable=False, status_code=400
)


class ScriptedSink:
    """Answers each attempt from a script (the last answer repeats); keeps what it was given."""

    def __init__(
        self, name: str, script: Sequence[AttemptOutcome] = (OK,), delay_s: float = 0.0
    ) -> None:
        self.route = Route(name, "webhook", frozenset({"all"}))
        self.script = list(script)
        self.delay_s = delay_s
        self.got: list[Outgoing] = []
        self.calls = 0

    @property
    def name(self) -> str:
        return self.route.sink

    async def send(self, batch: Sequence[Outgoing]) -> list[AttemptOutcome]:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        out = []
        for item in batch:
            self.got.append(item)
            out.append(self.script[min(len(self.script) - 1, len(self.got) - 1)])
        return out

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        # A little ahead of the wall clock the handlers stamp new deliveries with.
        self.now = datetime.now(UTC).timestamp() + 1.0

    def __call__(self) -> float:
        return self.now


class Executor:
    """What ServiceRuntime.execute does, keeping the events it would publish."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.emitted: list[Envelope] = []

    async def __call__(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        async with self.db.transaction() as conn:
            uow = UnitOfWork(conn)
            result = await work(uow)
        self.emitted.extend(uow.emitted)
        await run_after_commit(uow.after_commit)
        return result

    def of(self, kind: type[Any]) -> list[Any]:
        return [e.data for e in self.emitted if isinstance(e.data, kind)]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'notify.db'}", metadata)
    await database.create_schema()
    yield database
    await database.close()


@pytest.fixture
def metrics() -> ServiceMetrics:
    return ServiceMetrics("notify")


POLICY = RetryPolicy(max_attempts=3, base_s=10.0, max_delay_s=100.0, jitter=0.0)


def worker_for(
    sink: ScriptedSink,
    db: Database,
    dispatcher: Dispatcher,
    execute: Executor,
    clock: Clock,
    **kw: Any,
) -> delivery.DeliveryWorker:
    return delivery.DeliveryWorker(
        sink, db, execute, dispatcher, POLICY, clock=clock, draw=lambda: 0.5, **kw
    )


def dispatching(
    routes: list[Route], metrics: ServiceMetrics, clock: Clock, attempt_limit: int = 3
) -> Dispatcher:
    return Dispatcher(routes, NotifyMetrics(metrics), attempt_limit=attempt_limit, clock=clock)


def order() -> OrderAccepted:
    oid = uuid7()
    return OrderAccepted(
        order_id=oid,
        channel="web",
        external_id=f"EXT-{oid[-12:]}",
        customer=Customer(name="Ana", email=f"a-{oid[-8:]}@example.com", locale="en"),
        lines=[OrderLine(sku="TEA-001", quantity=1, unit_price=Decimal("4.00"))],
        currency="EUR",
        total=Decimal("4.00"),
        shipping_address=Address(
            name="Ana", line1="Rua 1", city="Lisboa", postal_code="1000-001", country="PT"
        ),
        priority="normal",
        submitted_at=datetime.now(UTC),
    )


async def confirm(
    db: Database, dispatcher: Dispatcher, n: int = 1, *, hand_over: bool = False
) -> list[OrderAccepted]:
    """Apply order_accepted for n new orders. Their deliveries are left pending in the table
    (as another replica would leave them), or, with ``hand_over``, handed to the dispatcher's
    workers the way the running service does."""
    orders = [order() for _ in range(n)]
    applying = (
        dispatcher
        if hand_over
        else Dispatcher(
            dispatcher.routes,
            NotifyMetrics(ServiceMetrics("notify")),
            attempt_limit=dispatcher.attempt_limit,
            clock=dispatcher.clock,
        )
    )
    metrics = ServiceMetrics("notify")
    async with db.transaction() as conn:
        uow = UnitOfWork(conn)
        await handlers.order_accepted(uow, [new_envelope(o) for o in orders], applying, metrics)
    await run_after_commit(uow.after_commit)
    return orders


async def delivery_rows(db: Database, sink: str) -> list[dict[str, Any]]:
    async with db.reading() as conn:
        result = await conn.execute(
            select(deliveries).where(deliveries.c.sink == sink).order_by(deliveries.c.created_at)
        )
        return [dict(r._mapping) for r in result]


async def attempts(db: Database, delivery_id: str) -> list[dict[str, Any]]:
    async with db.reading() as conn:
        return await delivery.attempts_of(conn, delivery_id)


def sample(metrics: ServiceMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"service": "notify", **labels})


async def test_a_pending_delivery_is_sent_once_recorded_and_announced(
    db: Database, metrics: ServiceMetrics
) -> None:
    sink = ScriptedSink("hook")
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([sink.route], metrics, clock, attempt_limit=3)
    worker = worker_for(sink, db, dispatcher, execute, clock)
    [o] = await confirm(db, dispatcher)

    assert await worker.run_once() == 1
    assert await worker.run_once() == 0

    [row] = await delivery_rows(db, "hook")
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("sent", 1, None)
    assert row["sent_at"] == clock.now
    [item] = sink.got
    assert item.delivery_id == row["delivery_id"] and item.attempt == 1
    assert item.notification.template == "order_confirmed"
    assert item.address == o.customer.email
    [attempt] = await attempts(db, row["delivery_id"])
    assert (attempt["result"], attempt["status_code"], attempt["error"]) == ("sent", 200, None)
    [sent] = execute.of(NotificationSent)
    assert (sent.order_id, sent.sink, sent.delivery_id, sent.attempts) == (
        o.order_id,
        "hook",
        row["delivery_id"],
        1,
    )
    assert sample(metrics, "orderflow_notify_deliveries_total", sink="hook", result="sent") == 1
    assert sample(metrics, "orderflow_notify_delivery_duration_seconds_count", sink="hook") == 1


async def test_the_running_worker_drains_a_table_larger_than_its_batch_without_waiting_to_poll(
    db: Database, metrics: ServiceMetrics
) -> None:
    # Deliveries left pending in the table (by another replica, or while this worker's queue was
    # full) are claimed batch after batch until none is left, not one batch per poll interval.
    sink = ScriptedSink("hook")
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([sink.route], metrics, clock, attempt_limit=3)
    worker = worker_for(sink, db, dispatcher, execute, clock, batch=10, poll_s=60.0)
    await confirm(db, dispatcher, n=25)
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while len(sink.got) < 25:
                await asyncio.sleep(0.01)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert len(sink.got) == 25
    assert {r["status"] for r in await delivery_rows(db, "hook")} == {"sent"}


async def test_a_failing_sink_is_retried_with_backoff_until_it_takes_it(
    db: Database, metrics: ServiceMetrics
) -> None:
    sink = ScriptedSink("hook", [DOWN, DOWN, OK])
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([sink.route], metrics, clock, attempt_limit=3)
    worker = worker_for(sink, db, dispatcher, execute, clock)
    await confirm(db, dispatcher)
    start = clock.now

    assert await worker.run_once() == 1
    [row] = await delivery_rows(db, "hook")
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 1, "HTTP 503: down")
    assert row["next_attempt_at"] == start + 10.0
    # Not due yet: nothing is claimed, nothing sent.
    clock.now = start + 9.9
    assert await worker.run_once() == 0
    clock.now = start + 10.0
    assert await worker.run_once() == 1
    [row] = await delivery_rows(db, "hook")
    assert row["next_attempt_at"] == start + 10.0 + 20.0
    clock.now = start + 30.0
    assert await worker.run_once() == 1

    [row] = await delivery_rows(db, "hook")
    assert (row["status"], row["attempts"]) == ("sent", 3)
    assert [a["result"] for a in await attempts(db, row["delivery_id"])] == [
        "error",
        "error",
        "sent",
    ]
    assert len(sink.got) == 3
    assert sample(metrics, "orderflow_notify_delivery_retries_total", sink="hook") == 2
    assert execute.of(NotificationFailed) == []


async def test_a_sink_that_keeps_failing_is_given_up_with_an_event_a_metric_and_an_alert(
    db: Database, metrics: ServiceMetrics
) -> None:
    hook = ScriptedSink("hook", [DOWN])
    log_sink = ScriptedSink("log")
    log_sink.route = Route("log", "log", frozenset({"all"}))
    hook.route = Route("hook", "webhook", frozenset({"customer"}))
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([log_sink.route, hook.route], metrics, clock, attempt_limit=3)
    worker = worker_for(hook, db, dispatcher, execute, clock)
    [o] = await confirm(db, dispatcher)

    for _ in range(3):
        assert await worker.run_once() == 1
        clock.now += 1000
    assert await worker.run_once() == 0

    [row] = await delivery_rows(db, "hook")
    assert (row["status"], row["attempts"]) == ("failed", 3)
    assert row["failed_at"] is not None and row["last_error"] == "HTTP 503: down"
    assert len(hook.got) == 3
    [failed] = execute.of(NotificationFailed)
    assert (failed.delivery_id, failed.order_id, failed.sink, failed.attempts) == (
        row["delivery_id"],
        o.order_id,
        "hook",
        3,
    )
    assert sample(metrics, "orderflow_notify_deliveries_total", sink="hook", result="failed") == 1
    assert sample(metrics, "orderflow_notify_alerts_total", alert="delivery_failed") == 1
    # The alert is a notification for operations, delivered by the sinks that take those.
    async with db.reading() as conn:
        listed = await delivery.failed_deliveries(conn)
        alert = (
            await conn.execute(
                select(notifications).where(notifications.c.template == "alert_delivery_failed")
            )
        ).one()
    assert [f["delivery_id"] for f in listed] == [row["delivery_id"]]
    assert listed[0]["order_id"] == o.order_id and listed[0]["template"] == "order_confirmed"
    assert alert.order_id == o.order_id and alert.recipient == "operations"
    assert row["delivery_id"] in alert.body
    assert [d["sink"] for d in await delivery_rows(db, "log")] == ["log", "log"]
    assert [d["sink"] for d in await delivery_rows(db, "hook")] == ["hook"]


async def test_a_message_the_endpoint_refuses_is_given_up_at_once(
    db: Database, metrics: ServiceMetrics
) -> None:
    sink = ScriptedSink("hook", [REFUSED])
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([sink.route], metrics, clock, attempt_limit=3)
    await confirm(db, dispatcher)

    await worker_for(sink, db, dispatcher, execute, clock).run_once()

    # The alert about it goes to the same (only) sink, which is left pending for its worker.
    row = next(r for r in await delivery_rows(db, "hook") if r["attempts"] == 1)
    assert (row["status"], row["last_error"]) == ("failed", "HTTP 400: bad")
    assert len(execute.of(NotificationFailed)) == 1


async def test_an_undeliverable_alert_is_given_up_without_another_alert(
    db: Database, metrics: ServiceMetrics
) -> None:
    sink = ScriptedSink("hook", [DOWN])
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([sink.route], metrics, clock, attempt_limit=1)
    worker = worker_for(sink, db, dispatcher, execute, clock)
    await confirm(db, dispatcher)

    for _ in range(5):
        await worker.run_once()

    rows = await delivery_rows(db, "hook")
    # The confirmation failed, then the alert about it failed, and that is the end.
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert len(sink.got) == 2
    assert len(execute.of(NotificationFailed)) == 2
    assert sample(metrics, "orderflow_notify_alerts_total", alert="delivery_failed") == 2


async def test_a_failed_delivery_can_be_resent_and_a_sent_one_only_by_force(
    db: Database, metrics: ServiceMetrics
) -> None:
    sink = ScriptedSink("hook", [REFUSED, OK])
    sink.route = Route("hook", "webhook", frozenset({"customer"}))
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([sink.route], metrics, clock, attempt_limit=3)
    worker = worker_for(sink, db, dispatcher, execute, clock)
    await confirm(db, dispatcher)
    await worker.run_once()
    [row] = await delivery_rows(db, "hook")
    assert row["status"] == "failed"

    async with db.transaction() as conn:
        queued = await delivery.resend(conn, row["delivery_id"], attempts=3)
    with pytest.raises(delivery.ResendRefused, match="will be sent"):
        async with db.transaction() as conn:
            await delivery.resend(conn, row["delivery_id"], attempts=3)
    clock.now += 1
    assert await worker.run_once() == 1

    [row] = await delivery_rows(db, "hook")
    assert queued["status"] == "pending" and queued["attempts_so_far"] == 1
    assert (row["status"], row["attempts"], row["attempt_limit"], row["failed_at"]) == (
        "sent",
        2,
        4,
        None,
    )
    assert [a["attempt"] for a in await attempts(db, row["delivery_id"])] == [1, 2]
    with pytest.raises(delivery.ResendRefused, match="sent already"):
        async with db.transaction() as conn:
            await delivery.resend(conn, row["delivery_id"], attempts=3)
    async with db.transaction() as conn:
        await delivery.resend(conn, row["delivery_id"], attempts=3, force=True)
    with pytest.raises(delivery.UnknownDelivery):
        async with db.transaction() as conn:
            await delivery.resend(conn, uuid7(), attempts=3)
    clock.now += 1
    assert await worker.run_once() == 1
    assert [i.attempt for i in sink.got] == [1, 2, 3]


async def test_a_claim_whose_worker_died_is_taken_over_after_its_lease(
    db: Database, metrics: ServiceMetrics
) -> None:
    sink = ScriptedSink("hook")
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([sink.route], metrics, clock, attempt_limit=3)
    dead = worker_for(sink, db, dispatcher, execute, clock, lease_s=30, owner="dead")
    alive = worker_for(sink, db, dispatcher, execute, clock, lease_s=30, owner="alive")
    await confirm(db, dispatcher)
    # The first worker claims it and dies before sending.
    claimed, _ = await dead._claim(clock.now)
    assert len(claimed) == 1

    assert await alive.run_once() == 0
    clock.now += 31
    assert await alive.run_once() == 1

    [row] = await delivery_rows(db, "hook")
    assert (row["status"], row["attempts"]) == ("sent", 2)
    assert [i.attempt for i in sink.got] == [2]


async def test_a_worker_that_lost_its_claim_changes_nothing_when_it_finishes(
    db: Database, metrics: ServiceMetrics
) -> None:
    slow = ScriptedSink("hook", [DOWN], delay_s=0.3)
    fast = ScriptedSink("hook", [OK])
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([slow.route], metrics, clock, attempt_limit=5)
    stale = worker_for(slow, db, dispatcher, execute, clock, lease_s=10, owner="stale")
    other = worker_for(fast, db, dispatcher, execute, clock, lease_s=10, owner="other")
    await confirm(db, dispatcher)

    stalled = asyncio.create_task(stale.run_once())
    await asyncio.sleep(0.1)
    clock.now += 11  # its lease runs out while its send still hangs
    assert await other.run_once() == 1
    await stalled

    [row] = await delivery_rows(db, "hook")
    assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 2, None)
    results = [(a["attempt"], a["result"]) for a in await attempts(db, row["delivery_id"])]
    assert results == [(1, "error"), (2, "sent")]


async def test_a_delivery_abandoned_during_its_last_attempt_is_given_up_not_retried(
    db: Database, metrics: ServiceMetrics
) -> None:
    sink = ScriptedSink("hook")
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([sink.route], metrics, clock, attempt_limit=1)
    worker = worker_for(sink, db, dispatcher, execute, clock, lease_s=30)
    await confirm(db, dispatcher)
    crashed = worker_for(sink, db, dispatcher, execute, clock, lease_s=30, owner="crashed")
    await crashed._claim(clock.now)
    clock.now += 31

    assert await worker.run_once() == 0  # its last attempt is used up: not claimed again
    assert await worker.sweep_abandoned() == 1

    rows = await delivery_rows(db, "hook")
    assert rows[0]["status"] == "failed" and "stopped during its last attempt" in (
        rows[0]["last_error"] or ""
    )
    assert sink.got == []
    assert len(execute.of(NotificationFailed)) == 1


async def test_two_replicas_working_one_table_send_each_delivery_once(
    tmp_path: Path, metrics: ServiceMetrics
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first, second = Database(url, metadata), Database(url, metadata)
    await first.create_schema()
    try:
        sink_a, sink_b = ScriptedSink("hook", delay_s=0.01), ScriptedSink("hook", delay_s=0.01)
        clock = Clock()
        dispatcher = dispatching([sink_a.route], metrics, clock)
        a = worker_for(sink_a, first, dispatcher, Executor(first), clock, batch=7, owner="a")
        b = worker_for(sink_b, second, dispatcher, Executor(second), clock, batch=7, owner="b")
        orders = await confirm(first, dispatcher, n=60)

        async def drain(worker: delivery.DeliveryWorker) -> None:
            # A replica that finds nothing due keeps polling for a while, as the service's
            # worker does, instead of giving up while the other one holds every claim.
            idle = 0
            while idle < 5:
                if await worker.run_once():
                    idle = 0
                else:
                    idle += 1
                    await asyncio.sleep(0.005)

        await asyncio.gather(drain(a), drain(b), drain(a), drain(b))

        sent = [i.delivery_id for i in sink_a.got + sink_b.got]
        assert len(sent) == len(set(sent)) == len(orders)
        assert sink_a.got and sink_b.got, "both replicas should have taken a share"
        async with first.reading() as conn:
            statuses = set(await conn.scalars(select(deliveries.c.status)))
            attempt_rows = len((await conn.execute(select(delivery_attempts))).all())
        assert statuses == {"sent"} and attempt_rows == len(orders)
    finally:
        await first.close()
        await second.close()


async def test_new_deliveries_are_handed_over_at_commit_and_a_slow_sink_holds_up_no_other(
    db: Database, metrics: ServiceMetrics
) -> None:
    slow = ScriptedSink("slow", delay_s=1.5)
    fast = ScriptedSink("fast")
    dispatcher = Dispatcher([slow.route, fast.route], NotifyMetrics(metrics), attempt_limit=3)
    execute = Executor(db)
    workers = [
        delivery.DeliveryWorker(s, db, execute, dispatcher, POLICY, poll_s=60) for s in (slow, fast)
    ]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await asyncio.sleep(0.05)
        [o] = await confirm(db, dispatcher, hand_over=True)
        for _ in range(50):
            if fast.got:
                break
            await asyncio.sleep(0.02)
        # Handed over at the commit (the poll is a minute away); the slow one is still sending.
        assert [i.notification.order_id for i in fast.got] == [o.order_id]
        assert [r["status"] for r in await delivery_rows(db, "slow")] == ["sending"]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Stopping let the slow sink's attempt finish and be recorded, not left to a lease.
    assert [r["status"] for r in await delivery_rows(db, "slow")] == ["sent"]


async def test_a_delivery_made_here_is_stored_claimed_and_sent_without_a_claim_query(
    db: Database, metrics: ServiceMetrics
) -> None:
    sink = ScriptedSink("hook")
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([sink.route], metrics, clock)
    worker = worker_for(sink, db, dispatcher, execute, clock, lease_s=30)

    await confirm(db, dispatcher, hand_over=True)

    [row] = await delivery_rows(db, "hook")
    assert (row["status"], row["attempts"], row["claimed_by"]) == ("sending", 1, worker.token)
    assert row["claim_expires_at"] == clock.now + 30
    assert await worker._claim(clock.now) == ([], {})  # nobody else can claim it meanwhile
    assert await worker.run_once() == 1
    [row] = await delivery_rows(db, "hook")
    assert (row["status"], row["attempts"]) == ("sent", 1)
    assert [i.attempt for i in sink.got] == [1]


async def test_a_handed_over_delivery_that_waited_too_long_goes_back_to_the_table(
    db: Database, metrics: ServiceMetrics
) -> None:
    sink = ScriptedSink("hook")
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([sink.route], metrics, clock)
    worker = worker_for(sink, db, dispatcher, execute, clock, lease_s=30, batch=1)
    await confirm(db, dispatcher, n=2, hand_over=True)

    assert await worker.run_once() == 1
    clock.now += 16  # the second has waited for more than half its lease
    # It is released, claimed back from the table at once, and sent as its first attempt.
    assert await worker.run_once() == 1

    rows = await delivery_rows(db, "hook")
    assert [(r["status"], r["attempts"]) for r in rows] == [("sent", 1), ("sent", 1)]
    assert [i.attempt for i in sink.got] == [1, 1]


async def test_a_stopping_worker_records_its_attempt_and_gives_back_what_it_holds(
    db: Database, metrics: ServiceMetrics
) -> None:
    sink = ScriptedSink("hook", delay_s=0.3)
    dispatcher = Dispatcher([sink.route], NotifyMetrics(metrics), attempt_limit=3)
    worker = delivery.DeliveryWorker(sink, db, Executor(db), dispatcher, POLICY, batch=1)
    task = asyncio.create_task(worker.run())
    await confirm(db, dispatcher, n=3, hand_over=True)
    for _ in range(50):
        if sink.calls:
            break
        await asyncio.sleep(0.01)

    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    rows = await delivery_rows(db, "hook")
    assert sorted((r["status"], r["attempts"], r["claimed_by"] or "") for r in rows) == [
        ("pending", 0, ""),
        ("pending", 0, ""),
        ("sent", 1, ""),
    ]


async def test_the_workers_table_reads_and_the_gauges_search_never_scan_every_delivery(
    db: Database, metrics: ServiceMetrics
) -> None:
    # They run every poll interval for as long as the service runs, and notifications,
    # deliveries and attempts grow with every order ever taken.
    sink = ScriptedSink("hook")
    execute, clock = Executor(db), Clock()
    dispatcher = dispatching([sink.route], metrics, clock)
    worker = worker_for(sink, db, dispatcher, execute, clock)
    await confirm(db, dispatcher, 3)

    async def periodic() -> None:
        assert await worker.run_once() == 3
        assert await worker.run_once() == 0
        await worker.sweep_abandoned()
        await delivery.observe_pending(db, [sink.name], dispatcher.metrics)

    growing = ("notifications", "deliveries", "delivery_attempts", "recipients")
    assert await full_scans(db, growing, periodic) == []
