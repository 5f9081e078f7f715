"""A new version of a service that consumes one more event type must receive it, although its
durable consumer already exists with the old version's filter."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared import streams, subjects
from shared.consumer import ConsumerSpec, UnitOfWork
from shared.contracts.envelope import new_envelope
from shared.contracts.intake import OrderDuplicate, OrderRejected
from shared.runtime import ServiceRuntime
from tests.conftest import eventually, settings_for
from tests.integration.harness import nats_client, running
from tests.integration.test_messaging import probe_metadata

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def probe(settings: Any, types: list[str], seen: list[str]) -> ServiceRuntime:
    rt = ServiceRuntime(
        "probe",
        settings,
        probe_metadata,
        streams=(streams.INTAKE, streams.NOTIFY, streams.DEAD_LETTERS),
    )

    async def record(_uow: UnitOfWork, envs: list[Any]) -> None:
        seen.extend(e.type for e in envs)

    rt.consume(
        ConsumerSpec(
            name="probe-upgrade",
            stream=streams.INTAKE.name,
            filter_subjects=[subjects.events_of(subjects.INTAKE, t) for t in types],
            handlers=dict.fromkeys(types, record),
        )
    )
    return rt


async def test_an_upgraded_consumer_receives_the_event_type_it_added(
    nats_url: str, tmp_path: Path
) -> None:
    settings = settings_for(nats_url, f"sqlite+aiosqlite:///{tmp_path / 'probe.db'}", tmp_path)
    seen: list[str] = []
    async with running(probe(settings, ["order_duplicate"], seen)):
        pass
    async with (
        running(probe(settings, ["order_duplicate", "order_rejected"], seen)),
        nats_client(nats_url) as (_nc, js),
    ):
        rejected = OrderRejected(
            order_id="o-upgrade-1", channel="web", external_id="X-1", errors=[], submitted_at=NOW
        )
        duplicate = OrderDuplicate(
            order_id="o-upgrade-2", channel="web", external_id="X-2", submitted_at=NOW
        )
        for data in (rejected, duplicate):
            env = new_envelope(data)
            await js.publish(env.subject, env.encode(), headers={"Nats-Msg-Id": env.event_id})

        async def both_seen() -> bool:
            return sorted(seen) == ["order_duplicate", "order_rejected"]

        await eventually(both_seen, what="both event types applied")
        info = await js.consumer_info(streams.INTAKE.name, "probe-upgrade")
        assert sorted(info.config.filter_subjects or []) == sorted(
            subjects.events_of(subjects.INTAKE, t) for t in ("order_duplicate", "order_rejected")
        )
