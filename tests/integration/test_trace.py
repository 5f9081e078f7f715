"""`orderflow trace` against the four services on a real nats-server: after a whole lifecycle the
timeline holds entries from all four in time order, with the events' stream sequences; with a
service stopped it still answers and names the silent one; intake serves it over HTTP too."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from orderflow.cli import main as cli_main
from shared import audit, rpc, subjects
from tests.conftest import eventually
from tests.integration.audit_system import drive, four_services, reach, submit
from tests.integration.harness import nats_client
from tests.integration.test_intake import auth

pytestmark = pytest.mark.slow


async def test_trace_of_a_delivered_order_holds_all_four_services_in_time_order(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with four_services(nats_url, tmp_path) as rts, nats_client(nats_url) as (nc, _):
        await rpc.call(
            nc, "inventory", "restock", {"sku": "TEA-001", "quantity": 10, "warehouse": "WH-1"}
        )
        order_id = (await submit(nc))["order_id"]
        await drive(nc, order_id, "delivered")

        async def notified() -> bool:
            found = await audit.gather_trace(nc, order_id)
            return any(e["service"] == "notify" and e["kind"] == "state" for e in found["entries"])

        await eventually(notified, timeout=20, what="notify's part of the trace")
        found = await audit.gather_trace(nc, order_id)

        # The same over intake's HTTP API, with an operator's key... and a channel's.
        base = f"http://127.0.0.1:{rts['intake'].http_port}"
        async with aiohttp.ClientSession() as http:
            url = f"{base}/orders/{order_id}/trace"
            async with http.get(url, headers=auth("web")) as resp:
                assert resp.status == 200
                over_http = await resp.json()
            async with http.get(url, headers=auth("ops")) as resp:
                assert resp.status == 200
            # Another channel's order is not this caller's.
            async with http.get(url, headers=auth("phone")) as resp:
                assert resp.status == 404

        # And through the CLI, as a user types it.
        monkeypatch.setenv("ORDERFLOW_NATS_URL", nats_url)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = await _in_thread(lambda: cli_main(["trace", order_id, "--json"]))
        assert code == 0
        printed = json.loads(out.getvalue())

    assert found["missing"] == {}
    assert set(found["answered"]) == set(subjects.SERVICES)
    entries = found["entries"]
    assert {e["service"] for e in entries} == set(subjects.SERVICES)
    times = [e["at"] for e in entries]
    assert times == sorted(times)
    whats = [(e["service"], e["kind"], e["what"]) for e in entries]
    # Who did what, in order: intake accepted, inventory reserved, fulfillment moved it.
    first = {w: i for i, w in reversed(list(enumerate(whats)))}
    assert (
        first[("intake", "state", "accepted")]
        < first[("inventory", "produced", "stock_reserved")]
        < first[("fulfillment", "state", "shipment queue")]
        < first[("fulfillment", "state", "shipment ship")]
        < first[("fulfillment", "state", "shipment deliver")]
    )
    ship = next(e for e in entries if e["what"] == "shipment ship")
    assert ship["by"]  # who shipped it
    # Every event is placed in its stream: produced ones from the stream, consumed from inbox.
    produced = [e for e in entries if e["kind"] == "produced"]
    consumed = [e for e in entries if e["kind"] == "consumed"]
    assert produced and all(e["stream_seq"] > 0 and e["published"] for e in produced)
    assert consumed and all(e["stream_seq"] > 0 for e in consumed)
    accepted = next(e for e in produced if e["what"] == "order_accepted")
    took = [e for e in consumed if e["event_id"] == accepted["event_id"]]
    assert {e["service"] for e in took} >= {"inventory", "notify"}
    assert {e["stream_seq"] for e in took} == {accepted["stream_seq"]}
    assert any(
        e["service"] == "notify" and e["what"] == "notified order_confirmed" for e in entries
    )
    assert over_http["order_id"] == order_id and len(over_http["entries"]) >= len(entries)
    assert printed["order_id"] == order_id and printed["missing"] == {}


async def test_trace_with_a_service_stopped_still_answers_and_names_it(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with four_services(nats_url, tmp_path) as rts, nats_client(nats_url) as (nc, _):
        await rpc.call(
            nc, "inventory", "restock", {"sku": "TEA-001", "quantity": 10, "warehouse": "WH-1"}
        )
        order_id = (await submit(nc))["order_id"]
        await reach(nc, order_id, "queued")
        await rts["notify"].stop()
        found = await audit.gather_trace(nc, order_id, timeout=1.0)
        monkeypatch.setenv("ORDERFLOW_NATS_URL", nats_url)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = await _in_thread(lambda: cli_main(["trace", order_id, "--timeout", "1"]))

    assert set(found["missing"]) == {"notify"}
    assert set(found["answered"]) == {"intake", "inventory", "fulfillment"}
    assert {e["service"] for e in found["entries"]} == {"intake", "inventory", "fulfillment"}
    assert code == 0
    assert "NO ANSWER from notify" in out.getvalue()
    assert "notify did not answer" in err.getvalue()


async def _in_thread(fn: Callable[[], int]) -> int:
    # The CLI runs its own event loop: keep it off the test's.
    return await asyncio.to_thread(fn)
