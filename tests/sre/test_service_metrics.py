"""The metrics a running service adds for SREs, against a real nats-server and database:
backlog gauges (outbox, JetStream consumer info, dead-letter stream), command and HTTP RED, and
log lines that carry the order and correlation ids of the message being handled."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import insert

from shared import logs, rpc
from shared.ids import uuid7
from shared.rpc import CommandRefused
from shared.runtime import ServiceRuntime
from tests.conftest import eventually, settings_for
from tests.integration.harness import nats_client, running
from tests.integration.test_messaging import (
    CONSUMER,
    PROBE,
    Script,
    create_probe,
    duplicate_of,
    duplicate_seen,
    prepare_streams,
    probe_outbox,
    publish,
    unique_ext,
)


def value(rt: ServiceRuntime, name: str, **labels: str) -> float | None:
    return rt.metrics.registry.get_sample_value(name, {"service": PROBE, **labels})


async def test_backlog_gauges_show_consumer_lag_unpublished_outbox_rows_and_dead_letters(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    # One unacknowledged message at a time: while the poison one waits for its (long) retry,
    # the others stay undelivered. The relay sweeps once an hour, so a row we leave stays.
    settings = settings_for(
        nats_url,
        database_url,
        tmp_path,
        max_ack_pending=1,
        nak_delay_s=60,
        outbox_sweep_s=3600,
        backlog_interval_s=3600,
    )
    poison = unique_ext("poison")
    rt = create_probe(settings, Script(always_fail={poison}))
    async with nats_client(nats_url) as (_, js):
        await prepare_streams(js, settings)
        await publish(js, duplicate_seen(poison))
        for _ in range(3):
            await publish(js, duplicate_seen(unique_ext("ok")))
        async with running(rt):

            async def failed_once() -> bool:
                return (value(rt, "orderflow_handler_failures_total", consumer=CONSUMER) or 0) >= 1

            await eventually(failed_once, timeout=20, what="the poison message to fail")
            async with rt.db.transaction() as conn:
                await conn.execute(
                    insert(probe_outbox),
                    [
                        {
                            "event_id": uuid7(),
                            "subject": "orderflow.probe.stuck.x",
                            "payload": b"{}",
                            "created_at": time.time() - 120,
                            "published_at": None,
                        }
                    ],
                )
            await rt.read_backlog()

            consumer = {"consumer": CONSUMER}
            assert value(rt, "orderflow_consumer_pending_messages", **consumer) == 3
            assert value(rt, "orderflow_consumer_ack_pending_messages", **consumer) == 1
            assert value(rt, "orderflow_consumer_redelivered_messages", **consumer) == 0
            assert value(rt, "orderflow_outbox_pending") == 1
            age = value(rt, "orderflow_outbox_oldest_age_seconds") or 0
            assert 119 <= age < 180
            assert value(rt, "orderflow_dead_letter_stream_messages") == 0
            assert value(rt, "orderflow_dependency_up", dependency="nats") == 1
            assert value(rt, "orderflow_dependency_up", dependency="database") == 1

            await js.publish(f"orderflow.dlq.{PROBE}.test", b"parked by the test")
            await rt.read_backlog()
            assert value(rt, "orderflow_dead_letter_stream_messages") == 1
            exposition = rt.metrics.exposition().decode()
            assert (
                f'orderflow_consumer_pending_messages{{consumer="{CONSUMER}",service="{PROBE}"}} 3.0'
                in exposition
            )


async def test_commands_and_http_requests_are_timed_by_outcome(
    nats_url: str, tmp_path: Path
) -> None:
    settings = settings_for(nats_url, f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", tmp_path)
    rt = create_probe(settings, Script())

    async def echo(payload: dict[str, Any]) -> Any:
        if payload.get("refuse"):
            raise CommandRefused("refused on request")
        if payload.get("boom"):
            raise RuntimeError("boom")
        return payload

    async def thing(request: web.Request) -> web.Response:
        raise RuntimeError(f"cannot show {request.match_info['order_id']}")

    rt.rpc.register("echo", echo)
    rt.http.router.add_get("/things/{order_id}", thing)
    async with running(rt), nats_client(nats_url) as (nc, _):
        assert await rpc.call(nc, PROBE, "echo", {"a": 1}) == {"a": 1}
        for bad in ({"refuse": True}, {"boom": True}):
            with pytest.raises(CommandRefused):
                await rpc.call(nc, PROBE, "echo", bad)
        base = f"http://127.0.0.1:{rt.http_port}"
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/healthz", "/no/such/page", f"/things/{uuid7()}"):
                async with http.get(base + path) as response:
                    await response.read()

    def count(name: str, **labels: str) -> float | None:
        return value(rt, f"{name}_count", **labels)

    for outcome in ("ok", "refused", "error"):
        assert count("orderflow_rpc_duration_seconds", command="echo", outcome=outcome) == 1
    http = "orderflow_http_request_duration_seconds"
    assert count(http, route="/healthz", method="GET", status="2xx") == 2
    assert count(http, route="unmatched", method="GET", status="4xx") == 1
    # The route template, never the order id itself.
    assert count(http, route="/things/{order_id}", method="GET", status="5xx") == 1


async def test_log_lines_of_a_failing_message_carry_its_order_and_correlation_ids(
    nats_url: str, tmp_path: Path
) -> None:
    settings = settings_for(nats_url, f"sqlite+aiosqlite:///{tmp_path / 'p.db'}", tmp_path)
    poison = unique_ext("poison")
    rt = create_probe(settings, Script(always_fail={poison}))
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.ContextFilter(PROBE))
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("shared.consumer")
    logger.addHandler(handler)
    envelope = duplicate_seen(poison)
    try:
        async with running(rt), nats_client(nats_url) as (_, js):
            await publish(js, envelope)
            await eventually(
                lambda: _dead_lettered(rt), timeout=20, what="the poison message dead-lettered"
            )
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    about = [line for line in lines if "failed" in line["message"] or "ALERT" in line["message"]]
    assert about, lines
    for line in about:
        assert line["service"] == PROBE
        assert line["order_id"] == duplicate_of(envelope).order_id
        assert line["correlation_id"] == envelope.correlation_id


async def _dead_lettered(rt: ServiceRuntime) -> bool:
    return (value(rt, "orderflow_dead_letters_total", consumer=CONSUMER) or 0) >= 1


def test_text_and_json_formats_show_bound_ids_and_nothing_when_unbound() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello %s", ("there",), None)
    logs.bind("order-1", "corr-1")
    logs.ContextFilter("intake").filter(record)
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["message"] == "hello there"
    assert (entry["service"], entry["order_id"], entry["correlation_id"]) == (
        "intake",
        "order-1",
        "corr-1",
    )
    assert (
        logs.TextFormatter("intake")
        .format(record)
        .endswith("hello there [order_id=order-1 correlation_id=corr-1]")
    )
    logs.bind()
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "quiet", (), None)
    logs.ContextFilter("intake").filter(plain)
    assert "order_id" not in json.loads(logs.JsonFormatter().format(plain))
    assert logs.TextFormatter("intake").format(plain).endswith("quiet")
