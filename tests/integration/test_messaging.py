"""The shared plumbing (consumer, outbox, inbox, runtime) against a real nats-server.

A throwaway "probe" service, built the way every orderflow service is (ServiceRuntime, its own
MetaData with a state table, outbox and inbox), consumes ``order_duplicate`` events from the
intake stream, records each in its ``things`` table and emits one ``notification_sent`` into the
notify stream. A script tells its handler which orders to fail on, and how.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from nats.js import JetStreamContext
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, insert, select

from shared import streams, subjects
from shared.consumer import ConsumerSpec, UnitOfWork
from shared.contracts.envelope import Envelope, decode_envelope, new_envelope
from shared.contracts.intake import OrderDuplicate
from shared.contracts.notify import NotificationSent
from shared.db import Database
from shared.ids import uuid7
from shared.inbox import inbox_table
from shared.outbox import outbox_table
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings
from tests.conftest import eventually, settings_for
from tests.integration.harness import nats_client, running, stream_messages

PROBE = "probe"
CONSUMER = "probe-duplicates"

probe_metadata = MetaData()
things = Table(
    "things",
    probe_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # Deliberately not unique: if the inbox let an event through twice, it would show as two rows.
    Column("event_id", String(36), nullable=False),
    Column("external_id", String(64), nullable=False),
    Column("label", String(64), nullable=False),
    Column("applied_at", Float, nullable=False),
)
probe_outbox = outbox_table(probe_metadata)
probe_inbox = inbox_table(probe_metadata)


class ProbeRefused(RuntimeError):
    pass


@dataclass
class Script:
    """How the probe's handler treats particular orders, by external id."""

    fail_first: dict[str, int] = field(default_factory=dict)
    always_fail: set[str] = field(default_factory=set)
    # Calls whose insert leaves ``label`` NULL, so the database itself refuses the write.
    break_constraint_first: dict[str, int] = field(default_factory=dict)
    always_break_constraint: set[str] = field(default_factory=set)
    calls: list[list[str]] = field(default_factory=list)
    failed_at: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    tries: collections.Counter[str] = field(default_factory=collections.Counter)


def create_probe(settings: ServiceSettings, script: Script, linger: bool = False) -> ServiceRuntime:
    rt = ServiceRuntime(
        PROBE,
        settings,
        probe_metadata,
        streams=(streams.INTAKE, streams.NOTIFY, streams.DEAD_LETTERS),
    )

    async def note_duplicates(uow: UnitOfWork, items: list[Envelope]) -> None:
        script.calls.append([duplicate_of(e).external_id for e in items])
        rows = []
        for env in items:
            seen = duplicate_of(env)
            ext = seen.external_id
            tries = script.tries[ext]
            script.tries[ext] += 1
            if ext in script.always_fail or tries < script.fail_first.get(ext, 0):
                script.failed_at[ext].append(time.time())
                raise ProbeRefused(f"probe refuses {ext}")
            broken = ext in script.always_break_constraint or tries < (
                script.break_constraint_first.get(ext, 0)
            )
            rows.append(
                {
                    "event_id": env.event_id,
                    "external_id": ext,
                    "label": None if broken else f"duplicate of {seen.order_id}",
                    "applied_at": time.time(),
                }
            )
            uow.emit(
                NotificationSent(
                    notification_id=uuid7(),
                    order_id=seen.order_id,
                    template="duplicate_order",
                    recipient=seen.channel,
                    sink="log",
                    source_event_id=env.event_id,
                ),
                cause=env,
            )
        await uow.conn.execute(insert(things), rows)

    rt.consume(
        ConsumerSpec(
            name=CONSUMER,
            stream=streams.INTAKE.name,
            filter_subjects=[subjects.events_of(subjects.INTAKE, "order_duplicate")],
            handlers={"order_duplicate": note_duplicates},
            linger=linger,
        )
    )
    return rt


def duplicate_seen(external_id: str) -> Envelope:
    return new_envelope(
        OrderDuplicate(
            order_id=uuid7(), channel="web", external_id=external_id, submitted_at=datetime.now(UTC)
        )
    )


def duplicate_of(env: Envelope) -> OrderDuplicate:
    assert isinstance(env.data, OrderDuplicate), env.type
    return env.data


def unique_ext(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


async def publish(js: JetStreamContext, env: Envelope, msg_id: str | None = None) -> None:
    await js.publish(env.subject, env.encode(), headers={"Nats-Msg-Id": msg_id or env.event_id})


async def rows_of(rt: ServiceRuntime, table: Table) -> list[dict[str, Any]]:
    async with rt.db.reading() as conn:
        return [dict(r._mapping) for r in await conn.execute(select(table))]


def sample(rt: ServiceRuntime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, {"service": PROBE, **labels}) or 0.0


def consumer_metric(rt: ServiceRuntime, name: str) -> float:
    return sample(rt, name, consumer=CONSUMER)


async def at_least(js: JetStreamContext, stream: str, n: int) -> list[Any]:
    messages = await stream_messages(js, stream)
    return messages if len(messages) >= n else []


async def prepare_streams(js: JetStreamContext, settings: ServiceSettings) -> None:
    """Create the streams before the service starts, so messages can wait for it."""
    await streams.ensure_streams(js, (streams.INTAKE, streams.NOTIFY), settings)


async def test_state_row_and_emitted_event_are_committed_and_published(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    rt = create_probe(settings_for(nats_url, database_url, tmp_path), Script())
    async with nats_client(nats_url) as (_, js), running(rt):
        incoming = duplicate_seen(unique_ext("a"))
        await publish(js, incoming)

        rows = await eventually(lambda: rows_of(rt, things), what="the probe's state row")
        assert [(r["event_id"], r["label"]) for r in rows] == [
            (incoming.event_id, f"duplicate of {duplicate_of(incoming).order_id}")
        ]

        published = await eventually(
            lambda: stream_messages(js, streams.NOTIFY.name), what="notification_sent"
        )
        assert len(published) == 1
        out = decode_envelope(published[0].data or b"")
        assert isinstance(out.data, NotificationSent)
        assert out.data.source_event_id == incoming.event_id
        assert out.causation_id == incoming.event_id
        assert out.correlation_id == incoming.correlation_id
        assert published[0].subject == subjects.event(
            subjects.NOTIFY, "notification_sent", duplicate_of(incoming).order_id
        )
        assert (published[0].headers or {})["Nats-Msg-Id"] == out.event_id

        async def marked() -> list[dict[str, Any]]:
            return [r for r in await rows_of(rt, probe_outbox) if r["published_at"] is not None]

        outbox_rows = await eventually(marked, what="the outbox row marked published")
        assert [r["event_id"] for r in outbox_rows] == [out.event_id]
        assert sample(rt, "orderflow_events_processed_total", handler="order_duplicate") == 1
        assert sample(rt, "orderflow_outbox_published_total") == 1


async def test_relay_publishes_rows_a_dead_process_left_and_the_stream_drops_repeats(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(nats_url, database_url, tmp_path)
    published_before_crash = new_envelope(
        NotificationSent(
            notification_id=uuid7(),
            order_id=uuid7(),
            template="duplicate_order",
            recipient="web",
            sink="log",
            source_event_id=uuid7(),
        )
    )
    never_published = new_envelope(
        published_before_crash.data.model_copy(update={"notification_id": uuid7()})
    )
    # The previous run committed both rows; it published the first but died before marking it.
    db = Database(database_url, probe_metadata)
    await db.create_schema()
    async with db.transaction() as conn:
        await conn.execute(
            insert(probe_outbox),
            [
                {
                    "event_id": env.event_id,
                    "subject": env.subject,
                    "payload": env.encode(),
                    "created_at": time.time() - 60,
                    "published_at": None,
                }
                for env in (published_before_crash, never_published)
            ],
        )
    await db.close()

    async with nats_client(nats_url) as (_, js):
        await prepare_streams(js, settings)
        await publish(js, published_before_crash)

        rt = create_probe(settings, Script())
        async with running(rt):

            async def all_marked() -> bool:
                rows = await rows_of(rt, probe_outbox)
                return len(rows) == 2 and all(r["published_at"] is not None for r in rows)

            await eventually(all_marked, what="the relay to publish and mark both rows")
            # Both rows went out (JetStream acknowledged a duplicate too) ...
            assert sample(rt, "orderflow_outbox_published_total") == 2
            # ... and a second relay pass over the same rows (two replicas, another crash).
            rows = await rows_of(rt, probe_outbox)
            assert await rt.outbox.publish(rows) == 2

        messages = await stream_messages(js, streams.NOTIFY.name)
        assert sorted((m.headers or {})["Nats-Msg-Id"] for m in messages) == sorted(
            [published_before_crash.event_id, never_published.event_id]
        )
        assert sorted(decode_envelope(m.data or b"").event_id for m in messages) == sorted(
            [published_before_crash.event_id, never_published.event_id]
        )


async def test_inbox_applies_an_event_delivered_twice_once(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    rt = create_probe(settings_for(nats_url, database_url, tmp_path), Script())
    async with nats_client(nats_url) as (_, js), running(rt):
        incoming = duplicate_seen(unique_ext("c"))
        # Different message ids, so JetStream keeps both copies and only the inbox can tell.
        await publish(js, incoming, msg_id=f"{incoming.event_id}:first")
        await eventually(lambda: rows_of(rt, things), what="the first copy applied")
        await publish(js, incoming, msg_id=f"{incoming.event_id}:second")

        async def duplicates_seen() -> float:
            return consumer_metric(rt, "orderflow_inbox_duplicates_total")

        assert await eventually(duplicates_seen, what="the inbox to skip the copy") == 1
        assert len(await stream_messages(js, streams.INTAKE.name)) == 2
        assert [r["event_id"] for r in await rows_of(rt, things)] == [incoming.event_id]
        assert len(await rows_of(rt, probe_outbox)) == 1
        assert sample(rt, "orderflow_events_processed_total", handler="order_duplicate") == 1


async def test_a_lingering_consumer_applies_what_arrived_within_linger_s_as_one_batch(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    # Off the critical path a consumer lets its batch fill: three events published 50 ms apart
    # are applied together, once linger_s has passed since the first arrived.
    linger = 0.6
    settings = settings_for(nats_url, database_url, tmp_path, linger_s=linger)
    script = Script()
    exts = [unique_ext("slow") for _ in range(3)]
    async with nats_client(nats_url) as (_, js):
        await prepare_streams(js, settings)
        rt = create_probe(settings, script, linger=True)
        async with running(rt):
            first_published = time.time()
            for ext in exts:
                await publish(js, duplicate_seen(ext))
                await asyncio.sleep(0.05)

            async def all_applied() -> list[dict[str, Any]]:
                rows = await rows_of(rt, things)
                return rows if len(rows) >= 3 else []

            rows = await eventually(all_applied, what="the three events applied")

    assert script.calls == [exts], script.calls
    assert min(r["applied_at"] for r in rows) >= first_published + linger * 0.8
    assert consumer_metric(rt, "orderflow_dead_letters_total") == 0


async def test_a_failing_handler_is_retried_without_holding_back_its_batch(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    # A long first retry delay makes "not held back" measurable: the others must be applied
    # well before the failing event could have been retried.
    nak_delay = 0.5
    settings = settings_for(nats_url, database_url, tmp_path, nak_delay_s=nak_delay)
    flaky = unique_ext("flaky")
    others = [unique_ext("ok") for _ in range(4)]
    script = Script(fail_first={flaky: 2})
    async with nats_client(nats_url) as (_, js):
        await prepare_streams(js, settings)
        # Published before the consumer exists, so they arrive together as one batch.
        envelopes = {ext: duplicate_seen(ext) for ext in [*others, flaky]}
        for env in envelopes.values():
            await publish(js, env)

        rt = create_probe(settings, script)
        async with running(rt):

            async def all_applied() -> list[dict[str, Any]]:
                rows = await rows_of(rt, things)
                return rows if len(rows) >= 5 else []

            rows = await eventually(all_applied, what="all five events applied")
            notes = await eventually(
                lambda: at_least(js, streams.NOTIFY.name, 5), what="five notifications"
            )

        assert sorted(r["external_id"] for r in rows) == sorted([*others, flaky])
        assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in envelopes.values())
        assert len(notes) == 5
        assert flaky in script.calls[0] and len(script.calls[0]) > 1, script.calls
        first_failure = script.failed_at[flaky][0]
        applied = {r["external_id"]: r["applied_at"] for r in rows}
        assert all(applied[ext] < first_failure + nak_delay for ext in others), (
            applied,
            first_failure,
        )
        assert applied[flaky] >= first_failure + nak_delay
        assert consumer_metric(rt, "orderflow_handler_failures_total") >= 1
        assert consumer_metric(rt, "orderflow_redeliveries_total") >= 1
        assert consumer_metric(rt, "orderflow_dead_letters_total") == 0


async def test_a_poison_event_is_dead_lettered_after_max_deliver(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(nats_url, database_url, tmp_path)
    poison = unique_ext("poison")
    fine = [unique_ext("ok") for _ in range(2)]
    rt = create_probe(settings, Script(always_fail={poison}))
    async with nats_client(nats_url) as (_, js), running(rt):
        envelopes = {ext: duplicate_seen(ext) for ext in [fine[0], poison, fine[1]]}
        for env in envelopes.values():
            await publish(js, env)

        parked = await eventually(
            lambda: stream_messages(js, streams.DEAD_LETTERS.name), what="a dead letter"
        )

        async def applied() -> list[dict[str, Any]]:
            rows = await rows_of(rt, things)
            return rows if len(rows) >= 2 else []

        rows = await eventually(applied, what="the healthy events applied")
        consumer = await js.consumer_info(streams.INTAKE.name, CONSUMER)

    assert len(parked) == 1
    letter = parked[0]
    headers = letter.headers or {}
    assert letter.subject == subjects.dead_letter(PROBE, CONSUMER)
    assert "ProbeRefused" in headers["Orderflow-Error"]
    assert f"probe refuses {poison}" in headers["Orderflow-Error"]
    assert headers["Orderflow-Deliveries"] == str(settings.max_deliver)
    assert headers["Orderflow-Original-Subject"] == envelopes[poison].subject
    assert decode_envelope(letter.data or b"").event_id == envelopes[poison].event_id
    assert consumer_metric(rt, "orderflow_dead_letters_total") == 1
    assert sorted(r["external_id"] for r in rows) == sorted(fine)
    # Terminated, not left to come back: nothing is waiting for an ack.
    assert consumer.num_ack_pending == 0
    assert consumer.num_pending == 0


async def test_an_undecodable_message_is_dead_lettered_at_once(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    rt = create_probe(settings_for(nats_url, database_url, tmp_path), Script())
    async with nats_client(nats_url) as (_, js), running(rt):
        subject = subjects.event(subjects.INTAKE, "order_duplicate", uuid7())
        not_json = b"this is not JSON {"
        unknown_type = orjson.dumps(
            {
                "event_id": uuid7(),
                "type": "order_teleported",
                "schema_version": 1,
                "occurred_at": datetime.now(UTC).isoformat(),
                "producer": "intake",
                "key": "k",
                "correlation_id": "k",
                "causation_id": None,
                "data": {},
            }
        )
        await js.publish(subject, not_json)
        await js.publish(subject, unknown_type)
        healthy = duplicate_seen(unique_ext("ok"))
        await publish(js, healthy)

        parked = await eventually(
            lambda: at_least(js, streams.DEAD_LETTERS.name, 2), what="two dead letters"
        )
        await eventually(lambda: rows_of(rt, things), what="the healthy event applied")

        assert [m.data for m in parked] == [not_json, unknown_type]
        for letter in parked:
            headers = letter.headers or {}
            assert headers["Orderflow-Error"].startswith("undecodable")
            assert headers["Orderflow-Deliveries"] == "1"
        assert "order_teleported" in (parked[1].headers or {})["Orderflow-Error"]
        assert consumer_metric(rt, "orderflow_dead_letters_total") == 2
        assert consumer_metric(rt, "orderflow_handler_failures_total") == 0
        assert [r["event_id"] for r in await rows_of(rt, things)] == [healthy.event_id]


async def test_a_failed_database_write_is_not_acked(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    settings = settings_for(nats_url, database_url, tmp_path)
    once_refused = unique_ext("retry")
    always_refused = unique_ext("never")
    script = Script(
        break_constraint_first={once_refused: 1}, always_break_constraint={always_refused}
    )
    rt = create_probe(settings, script)
    async with nats_client(nats_url) as (_, js), running(rt):
        first = duplicate_seen(once_refused)
        await publish(js, first)
        rows = await eventually(lambda: rows_of(rt, things), what="the retried write")
        # The refused write was rolled back whole: no state row and no event from it.
        assert [r["event_id"] for r in rows] == [first.event_id]
        assert len(await rows_of(rt, probe_outbox)) == 1
        assert script.tries[once_refused] == 2
        assert consumer_metric(rt, "orderflow_redeliveries_total") == 1
        assert consumer_metric(rt, "orderflow_handler_failures_total") == 1

        second = duplicate_seen(always_refused)
        await publish(js, second)
        parked = await eventually(
            lambda: stream_messages(js, streams.DEAD_LETTERS.name), what="the dead letter"
        )
        headers = parked[0].headers or {}
        assert "IntegrityError" in headers["Orderflow-Error"]
        # Every try came back: a failed write is never acknowledged as done.
        assert headers["Orderflow-Deliveries"] == str(settings.max_deliver)
        assert script.tries[always_refused] == settings.max_deliver
        assert [r["event_id"] for r in await rows_of(rt, things)] == [first.event_id]
        assert len(await rows_of(rt, probe_outbox)) == 1
