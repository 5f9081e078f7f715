"""Intake's handlers against a SQLite database: answers, routing with the customer directory,
look-alike orders, dead letters, metrics, the status view, cancellation and listing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
import pytest
from sqlalchemy import select

from services.intake import handlers
from services.intake.metrics import IntakeMetrics
from services.intake.models import metadata, orders
from services.intake.routing import Router
from shared.consumer import UnitOfWork, run_after_commit
from shared.contracts.common import Address, StockLine
from shared.contracts.envelope import Envelope, Event, new_envelope
from shared.contracts.fulfillment import (
    CancellationRefused,
    OrderCancelled,
    ShipmentDelivered,
    ShipmentQueued,
    ShipmentShipped,
)
from shared.contracts.intake import OrderAccepted, OrderCancelRequested, SubmissionAnswer
from shared.contracts.inventory import StockReserved
from shared.db import Database
from shared.metrics import ServiceMetrics
from tests.conftest import order_doc

T = TypeVar("T")
NOW = datetime.now(UTC)


class Intake:
    """The handlers as the service runs them: one transaction each, after-commit work after."""

    def __init__(self, db: Database, window_s: float = 3600) -> None:
        self.db = db
        self.metrics = IntakeMetrics(ServiceMetrics("intake"))
        self.dead: list[handlers.DeadLetter] = []
        self.events: list[Envelope] = []
        self.policy = handlers.SubmissionPolicy(
            self.metrics, Router.from_file(), window_s, self.park
        )

    async def park(self, dead: list[handlers.DeadLetter]) -> None:
        self.dead.extend(dead)

    async def run(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        async with self.db.transaction() as conn:
            uow = UnitOfWork(conn)
            result = await work(uow)
        self.events.extend(uow.emitted)
        await run_after_commit(uow.after_commit)
        return result

    async def submit(
        self, *docs: dict[str, Any] | bytes, channel: str = "web", at: datetime | None = None
    ) -> list[SubmissionAnswer]:
        items = [
            handlers.Submission(
                channel, d if isinstance(d, bytes) else orjson.dumps(d), at or datetime.now(UTC)
            )
            for d in docs
        ]
        return await self.run(lambda uow: handlers.submit_orders(uow, items, self.policy))

    async def apply(
        self, handler: Callable[[UnitOfWork, list[Envelope]], Awaitable[None]], *events: Event
    ) -> None:
        envs = [new_envelope(e) for e in events]
        await self.run(lambda uow: handler(uow, envs))

    async def status(self, order_id: str) -> dict[str, Any]:
        async with self.db.reading() as conn:
            view = await handlers.order_status(conn, order_id)
        assert view is not None
        return view

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.base.registry.get_sample_value(name, labels)
        return value or 0.0

    def emitted(self, kind: type[Event]) -> list[Any]:
        return [e.data for e in self.events if isinstance(e.data, kind)]


@pytest.fixture
async def intake() -> AsyncIterator[Intake]:
    db = Database("sqlite+aiosqlite:///:memory:", metadata)
    await db.create_schema()
    yield Intake(db)
    await db.close()


def ext() -> str:
    return f"ext-{uuid.uuid4().hex[:12]}"


def customer(email: str) -> dict[str, Any]:
    return {"name": "Mei Lin", "email": email, "locale": "zh-CN"}


def other_customer() -> dict[str, Any]:
    return customer(f"{uuid.uuid4().hex[:8]}@example.com")


async def test_an_accepted_order_carries_its_priority_the_rule_and_its_owner(
    intake: Intake,
) -> None:
    await intake.run(lambda uow: handlers.set_customer(uow, "vip@example.com", "vip", "Alice Wu"))
    [vip] = await intake.submit(order_doc(ext(), customer=customer("VIP@example.com")))
    [plain] = await intake.submit(order_doc(ext(), customer=other_customer(), priority="low"))
    assert (vip.outcome, vip.priority, vip.priority_rule, vip.owner) == (
        "accepted",
        "high",
        "key-account",
        "Alice Wu",
    )
    assert (plain.priority, plain.priority_rule, plain.owner) == ("low", "as-requested", "desk-web")
    first, second = intake.emitted(OrderAccepted)
    assert (first.priority, first.requested_priority, first.customer_tier) == (
        "high",
        "normal",
        "vip",
    )
    assert (first.priority_rule, first.owner) == ("key-account", "Alice Wu")
    assert second.customer_tier is None
    view = await intake.status(vip.order_id)
    assert view["priority"] == "high"
    assert view["owner"] == "Alice Wu"
    accepted = next(e for e in view["timeline"] if e["what"] == "accepted")
    assert "by rule 'key-account'" in accepted["detail"]


async def test_the_same_customer_and_lines_on_another_channel_is_accepted_but_flagged(
    intake: Intake,
) -> None:
    who = other_customer()
    [web] = await intake.submit(order_doc(ext(), customer=who))
    [wechat] = await intake.submit(
        order_doc(ext(), customer=who, channel="wechat"), channel="wechat"
    )
    [other_lines] = await intake.submit(
        order_doc(
            ext(), customer=who, lines=[{"sku": "CUP-010", "quantity": 1, "unit_price": "1.00"}]
        )
    )
    assert web.outcome == wechat.outcome == other_lines.outcome == "accepted"
    assert web.order_id != wechat.order_id
    assert web.suspected_duplicate_of is None
    assert wechat.suspected_duplicate_of == [web.order_id]
    assert other_lines.suspected_duplicate_of is None
    assert intake.emitted(OrderAccepted)[1].suspected_duplicate_of == [web.order_id]
    view = await intake.status(wechat.order_id)
    assert view["suspected_duplicate_of"] == [web.order_id]
    async with intake.db.reading() as conn:
        flagged = await handlers.list_orders(conn, flagged=True)
    assert [o["order_id"] for o in flagged["orders"]] == [wechat.order_id]
    assert (
        intake.metric("orderflow_intake_duplicates_total", channel="wechat", kind="suspected") == 1
    )


async def test_a_cancelled_order_is_no_look_alike(intake: Intake) -> None:
    who = other_customer()
    [typed_twice] = await intake.submit(order_doc(ext(), customer=who))
    await intake.apply(
        handlers.record_cancelled,
        OrderCancelled(order_id=typed_twice.order_id, reason="typed twice", actor="ops"),
    )
    [again] = await intake.submit(order_doc(ext(), customer=who))
    assert again.suspected_duplicate_of is None


async def test_look_alikes_in_one_batch_and_outside_the_window(intake: Intake) -> None:
    who = other_customer()
    old = await intake.submit(order_doc(ext(), customer=who), at=NOW - timedelta(hours=2))
    first, second = await intake.submit(
        order_doc(ext(), customer=who), order_doc(ext(), customer=who), at=NOW
    )
    assert old[0].outcome == "accepted"
    # The order two hours ago is outside the one-hour window; the batch's first is not.
    assert first.suspected_duplicate_of is None
    assert second.suspected_duplicate_of == [first.order_id]


async def test_the_same_reference_twice_in_one_batch_is_one_order_and_one_duplicate(
    intake: Intake,
) -> None:
    doc = order_doc(ext())
    first, again = await intake.submit(doc, doc)
    assert first.outcome == "accepted"
    assert (again.outcome, again.order_id) == ("duplicate", first.order_id)
    assert intake.metric("orderflow_intake_duplicates_total", channel="web", kind="exact") == 1
    async with intake.db.reading() as conn:
        rows = (await conn.execute(select(orders.c.order_id))).all()
    assert len(rows) == 1


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
async def test_an_unparseable_submission_is_rejected_and_kept_raw_as_a_dead_letter(
    intake: Intake, raw: bytes
) -> None:
    [answer] = await intake.submit(raw)
    assert answer.outcome == "rejected"
    assert [e.field for e in answer.errors] == ["(body)"]
    [letter] = intake.dead
    assert letter.rejection_id == answer.order_id
    assert letter.submission.raw == raw
    assert letter.reason == answer.errors[0].reason
    view = await intake.status(answer.order_id)
    assert view["status"] == "rejected"


async def test_an_invalid_but_readable_submission_is_no_dead_letter(intake: Intake) -> None:
    [answer] = await intake.submit(order_doc(ext(), currency="XYZ"))
    assert answer.outcome == "rejected"
    assert intake.dead == []


async def test_rejections_are_counted_by_field_with_list_indexes_folded(intake: Intake) -> None:
    bad_lines = [
        {"sku": "TEA-001", "quantity": 0, "unit_price": "1.00"},
        {"sku": "TEA-002", "quantity": 0, "unit_price": "1.00"},
    ]
    await intake.submit(order_doc(ext(), lines=bad_lines, currency="XYZ"), b"nope")
    assert (
        intake.metric("orderflow_intake_rejections_total", channel="web", field="lines.*.quantity")
        == 1
    )
    assert intake.metric("orderflow_intake_rejections_total", channel="web", field="currency") == 1
    assert intake.metric("orderflow_intake_rejections_total", channel="web", field="(body)") == 1
    assert intake.metric("orderflow_intake_processing_seconds_count", transport="nats") == 2
    assert (
        intake.metric("orderflow_orders_total", service="intake", outcome="rejected", channel="web")
        == 2
    )


async def test_a_batch_that_rolls_back_counts_nothing_and_parks_nothing(intake: Intake) -> None:
    items = [handlers.Submission("web", b"garbage", NOW)]
    with pytest.raises(RuntimeError):
        async with intake.db.transaction() as conn:
            uow = UnitOfWork(conn)
            await handlers.submit_orders(uow, items, intake.policy)
            raise RuntimeError("the commit failed")
    assert intake.dead == []
    assert intake.metric("orderflow_intake_processing_seconds_count", transport="nats") == 0


def reserved(order_id: str) -> StockReserved:
    return StockReserved(
        order_id=order_id,
        allocations=[StockLine(sku="TEA-001", warehouse="WH-SH", quantity=2)],
        priority="normal",
        channel="web",
        ship_to=Address(
            name="Mei", line1="1 Road", city="Hangzhou", postal_code="310000", country="CN"
        ),
        submitted_at=NOW,
    )


def shipment(kind: type[Event], order_id: str, **extra: Any) -> Any:
    return kind(
        order_id=order_id,
        shipment_id=f"shp-{order_id[:8]}",
        warehouse="WH-SH",
        actor="simulator",
        submitted_at=NOW,
        **extra,
    )


async def test_the_timeline_shows_what_happened_when_and_by_which_service(
    intake: Intake,
) -> None:
    [answer] = await intake.submit(order_doc(ext()))
    oid = answer.order_id
    line = [StockLine(sku="TEA-001", warehouse="WH-SH", quantity=2)]
    await intake.apply(handlers.record_progress, reserved(oid))
    await intake.apply(
        handlers.record_progress,
        shipment(ShipmentQueued, oid, priority="normal", sla_deadline=NOW, lines=line),
    )
    await intake.apply(
        handlers.record_progress,
        shipment(ShipmentShipped, oid, carrier="SF", tracking_number="SF1", lines=line),
    )
    await intake.apply(handlers.record_progress, shipment(ShipmentDelivered, oid))
    view = await intake.status(oid)
    assert view["status"] == "delivered"
    assert [(e["what"], e["by"]) for e in view["timeline"]] == [
        ("submitted", "channel"),
        ("accepted", "intake"),
        ("reserved", "inventory"),
        ("queued", "fulfillment"),
        ("shipped", "fulfillment"),
        ("delivered", "fulfillment"),
    ]
    times = [e["at"] for e in view["timeline"]]
    assert times == sorted(times)


async def test_a_cancellation_is_requested_once_and_ends_in_a_final_cancelled(
    intake: Intake,
) -> None:
    [answer] = await intake.submit(order_doc(ext()))
    oid = answer.order_id

    async def cancel(only: str | None = None) -> handlers.CancelAnswer | None:
        return await intake.run(
            lambda uow: handlers.request_cancel(uow, oid, "changed my mind", "operator:ops", only)
        )

    assert await cancel("wechat") is None  # another channel cannot see it, let alone cancel it
    first = await cancel()
    assert first is not None and first.outcome == "requested"
    second = await cancel()
    assert second is not None and second.outcome == "pending"
    [requested] = intake.emitted(OrderCancelRequested)
    assert (requested.order_id, requested.reason, requested.actor) == (
        oid,
        "changed my mind",
        "operator:ops",
    )
    await intake.apply(
        handlers.record_cancelled, OrderCancelled(order_id=oid, reason="on request", actor="ops")
    )
    # A reservation that raced the cancellation does not bring the order back.
    await intake.apply(handlers.record_progress, reserved(oid))
    view = await intake.status(oid)
    assert view["status"] == "cancelled"
    whats = [e["what"] for e in view["timeline"]]
    assert whats.index("cancel requested") < whats.index("cancelled")
    assert next(e for e in view["timeline"] if e["what"] == "cancelled")["by"] == "fulfillment"
    third = await cancel()
    assert third is not None and third.outcome == "refused"
    assert "already cancelled" in third.reason
    assert len(intake.emitted(OrderCancelRequested)) == 1


async def test_a_shipped_order_is_refused_at_once_and_a_refusal_is_recorded(
    intake: Intake,
) -> None:
    shipped_one, racing = await intake.submit(
        order_doc(ext(), customer=other_customer()), order_doc(ext(), customer=other_customer())
    )
    line = [StockLine(sku="TEA-001", warehouse="WH-SH", quantity=2)]
    await intake.apply(
        handlers.record_progress,
        shipment(
            ShipmentShipped, shipped_one.order_id, carrier="SF", tracking_number="1", lines=line
        ),
    )
    refused = await intake.run(
        lambda uow: handlers.request_cancel(uow, shipped_one.order_id, "late", "cli")
    )
    assert refused is not None
    assert (refused.outcome, refused.status) == ("refused", "shipped")
    # Fulfillment can refuse what intake's view had not yet seen shipped.
    await intake.run(lambda uow: handlers.request_cancel(uow, racing.order_id, "late", "cli"))
    await intake.apply(
        handlers.record_cancel_refused,
        CancellationRefused(
            order_id=racing.order_id, reason="shipment left at 10:02", actor="system"
        ),
    )
    view = await intake.status(racing.order_id)
    assert view["status"] == "accepted"
    refusal = view["timeline"][-1]
    assert (refusal["what"], refusal["by"], refusal["detail"]) == (
        "cancellation refused",
        "fulfillment",
        "shipment left at 10:02",
    )
    again = await intake.run(
        lambda uow: handlers.request_cancel(uow, racing.order_id, "please", "cli")
    )
    assert again is not None and again.outcome == "refused"
    assert len(intake.emitted(OrderCancelRequested)) == 1


async def test_cancelling_an_unknown_order_finds_nothing(intake: Intake) -> None:
    assert (
        await intake.run(lambda uow: handlers.request_cancel(uow, str(uuid.uuid4()), "x", "cli"))
        is None
    )


async def test_a_rejected_submission_has_nothing_to_cancel(intake: Intake) -> None:
    [rejected] = await intake.submit(order_doc(ext(), currency="XYZ"))
    answer = await intake.run(
        lambda uow: handlers.request_cancel(uow, rejected.order_id, "x", "cli")
    )
    assert answer is not None
    assert (answer.outcome, answer.status) == ("refused", "rejected")
    assert intake.emitted(OrderCancelRequested) == []


async def test_listing_pages_newest_first_with_filters(intake: Intake) -> None:
    answers = [
        (await intake.submit(order_doc(ext(), customer=other_customer())))[0] for _ in range(5)
    ]
    [wechat] = await intake.submit(
        order_doc(ext(), channel="wechat", customer=other_customer()), channel="wechat"
    )
    [rejected] = await intake.submit(order_doc(ext(), currency="XYZ"))
    async with intake.db.reading() as conn:
        seen: list[str] = []
        after = None
        while True:
            page = await handlers.list_orders(conn, channel="web", limit=2, after=after)
            seen += [o["order_id"] for o in page["orders"]]
            after = page["next"]
            if after is None:
                break
        only_wechat = await handlers.list_orders(conn, channel="wechat")
        rejections = await handlers.list_orders(conn, status="rejected")
        future = await handlers.list_orders(conn, since=(NOW + timedelta(hours=1)).timestamp())
    assert seen == [a.order_id for a in reversed(answers)]
    assert [o["order_id"] for o in only_wechat["orders"]] == [wechat.order_id]
    assert [(o["order_id"], o["status"]) for o in rejections["orders"]] == [
        (rejected.order_id, "rejected")
    ]
    assert future == {"orders": [], "next": None}
