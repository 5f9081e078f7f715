"""Property-based tests: whatever a channel sends -- noise, JSON of any shape, a valid order
with any field replaced by anything, a channel's own payload likewise -- the validator and the
adapters answer without an exception, the handler answers every submission exactly once, and
the HTTP API never answers 5xx."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.intake import domain, handlers
from services.intake.app import create_service
from services.intake.metrics import IntakeMetrics
from services.intake.models import metadata
from services.intake.routing import Router
from services.intake.settings import IntakeSettings
from shared.consumer import UnitOfWork
from shared.contracts.intake import OrderAccepted, OrderDuplicate, OrderRejected
from shared.db import Database
from shared.metrics import ServiceMetrics
from tests.conftest import order_doc, run_outside_loop
from tests.unit.test_intake_channels import MARKETPLACE_WEBHOOK, PHONE_DESK_FORM, WECHAT_PUSH

CHANNELS = ["web", "wechat", "phone", "marketplace"]
NATIVE = {"web": order_doc("prop-1"), "wechat": WECHAT_PUSH, "phone": PHONE_DESK_FORM}
NATIVE["marketplace"] = MARKETPLACE_WEBHOOK

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["", "12.50", "-1", "1e9999", "NaN", "TEA-001", "CNY", "0", "2.005"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield (*prefix, i)
            yield from paths_of(item, (*prefix, i))


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """A channel's payload with a few fields replaced by anything, or removed."""
    doc = copy.deepcopy(base)
    paths = list(paths_of(doc))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        path = draw(st.sampled_from(paths))
        target: Any = doc
        try:
            for key in path[:-1]:
                target = target[key]
            if draw(st.booleans()):
                target[path[-1]] = draw(json_values)
            elif isinstance(target, dict):
                target.pop(path[-1], None)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed or replaced the parent
    return doc


def dumps(value: Any) -> bytes:
    # The standard encoder, not orjson: it writes integers past 64 bits (and Infinity), which
    # a channel may well send.
    return json.dumps(value).encode()


def submissions(channel: str) -> st.SearchStrategy[bytes]:
    return (
        st.binary(max_size=300)
        | json_values.map(dumps)
        | mutated(NATIVE[channel]).map(dumps)
        | mutated(order_doc("prop-2", channel=channel)).map(dumps)
    )


@pytest.mark.parametrize("channel", CHANNELS)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_reading_anything_gives_an_order_or_its_errors_never_an_exception(
    channel: str, data: st.DataObject
) -> None:
    raw = data.draw(submissions(channel))
    reading = domain.read(raw, channel)
    if reading.submission is not None:
        assert reading.errors == []
        assert reading.submission.channel == channel
    else:
        assert reading.errors, "a rejection must say why"
        assert all(e.field and e.reason for e in reading.errors)
    assert reading.parseable or reading.submission is None


async def _submit_all(items: list[handlers.Submission]) -> tuple[list[Any], list[Any]]:
    db = Database("sqlite+aiosqlite:///:memory:", metadata)
    await db.create_schema()
    policy = handlers.SubmissionPolicy(IntakeMetrics(ServiceMetrics("intake")), Router.from_file())
    try:
        async with db.transaction() as conn:
            uow = UnitOfWork(conn)
            answers = await handlers.submit_orders(uow, items, policy)
        return answers, uow.emitted
    finally:
        await db.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_submission_gets_exactly_one_answer(data: st.DataObject) -> None:
    from datetime import UTC, datetime

    items = []
    for _ in range(data.draw(st.integers(min_value=1, max_value=12))):
        channel = data.draw(st.sampled_from(CHANNELS))
        raw = data.draw(submissions(channel) | st.just(dumps(order_doc("same", channel=channel))))
        items.append(handlers.Submission(channel, raw, datetime.now(UTC)))
    answers, events = run_outside_loop(_submit_all(items))
    assert len(answers) == len(items) == len(events)
    accepted = {a.order_id for a in answers if a.outcome == "accepted"}
    for answer, event in zip(answers, events, strict=True):
        assert answer.outcome in ("accepted", "rejected", "duplicate")
        kind = {"accepted": OrderAccepted, "rejected": OrderRejected, "duplicate": OrderDuplicate}
        assert isinstance(event.data, kind[answer.outcome])
        assert event.data.order_id == answer.order_id
        if answer.outcome == "duplicate":
            assert answer.order_id in accepted
        assert (answer.outcome == "rejected") == bool(answer.errors)


class BackgroundIntake:
    """Intake's HTTP API served from a thread of its own, so that hypothesis (synchronous) can
    call it like any channel would."""

    def __init__(self, tmp: Path) -> None:
        keys = tmp / "credentials.json"
        keys.write_text(
            json.dumps({"channels": {c: f"{c}-key-0123456789abcdef" for c in CHANNELS}})
        )
        self.settings = IntakeSettings(
            home=tmp,
            database_url=f"sqlite+aiosqlite:///{tmp / 'intake.db'}",
            channel_keys_file=keys,
        )
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, name="intake-http", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        rt = create_service(self.settings)
        self.loop.run_until_complete(rt.db.create_schema())
        runner = web.AppRunner(rt.http)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.run_until_complete(rt.db.close())

    def __enter__(self) -> BackgroundIntake:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def post(self, path: str, body: bytes, channel: str) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=body,
            headers={"Authorization": f"Bearer {channel}-key-0123456789abcdef"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def http_intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundIntake]:
    with BackgroundIntake(tmp_path_factory.mktemp("intake-http")) as server:
        yield server


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_the_http_api_answers_anything_without_a_5xx(
    http_intake: BackgroundIntake, data: st.DataObject
) -> None:
    channel = data.draw(st.sampled_from(CHANNELS))
    raw = data.draw(submissions(channel))
    status, body = http_intake.post("/orders", raw, channel)
    assert status in (200, 202, 422, 413)
    assert body["outcome"] in ("accepted", "duplicate", "rejected")
    assert (status == 422) == (body["outcome"] == "rejected")
    batch = data.draw(st.lists(json_values | mutated(NATIVE[channel]), max_size=5))
    body = dumps({"orders": batch})
    status, result = http_intake.post("/orders:batch", body, channel)
    try:
        json.loads(body, parse_constant=lambda name: pytest.fail(name))
    except BaseException:
        # Not JSON after all (no JSON number is infinite): one rejection for the whole body.
        assert (status, result["outcome"]) == (422, "rejected")
        return
    assert status == 200
    assert len(result["answers"]) == len(batch)
