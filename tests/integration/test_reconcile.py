"""`orderflow reconcile` against the four services on a real nats-server: clean after a mixed
load (delivered, shipped, cancelled, queued, backordered and rejected orders, two currencies);
a row corrupted behind the services' backs is reported, and the command exits non-zero."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest

from orderflow import report
from orderflow.cli import main as cli_main
from orderflow.commands.reconcile import reconcile
from shared import subjects
from tests.integration.audit_system import corrupt, four_services, mixed_load
from tests.integration.harness import nats_client

pytestmark = pytest.mark.slow


async def test_reconcile_is_clean_after_a_mixed_load_and_reports_injected_damage(
    nats_url: str,
    tmp_path: Path,
    service_databases: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    databases = service_databases
    async with four_services(nats_url, tmp_path, databases), nats_client(nats_url) as (nc, _):
        load = await mixed_load(nc)
        clean = await reconcile(nc, settle_s=3.0, page=4)  # small pages: the cursor is used
        figures = await report.gather(nc, None, None)

        queued = next(o for o, s in load.expected.items() if s == "queued")
        await corrupt(
            databases["intake"],
            "UPDATE orders SET status = 'delivered' WHERE order_id = :oid",
            oid=queued,
        )
        await corrupt(
            databases["inventory"],
            "UPDATE stock SET on_hand = on_hand + 5 WHERE sku = 'TEA-001' AND warehouse = 'WH-1'",
        )
        damaged = await reconcile(nc, settle_s=0.5)

        monkeypatch.setenv("ORDERFLOW_NATS_URL", nats_url)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = await asyncio.to_thread(cli_main, ["reconcile", "--settle", "0.5", "--json"])
        printed = json.loads(out.getvalue())

    assert clean["discrepancies"] == [], clean["discrepancies"]
    assert clean["orders"] == len(load.expected)
    cny = clean["money"]["CNY"]
    assert Decimal(cny["accepted"]) > 0 and Decimal(cny["shipped"]) > 0
    assert Decimal(cny["cancelled"]) > 0 and Decimal(cny["in_flight"]) > 0
    assert Decimal(cny["accepted"]) == sum(
        Decimal(cny[k]) for k in ("shipped", "cancelled", "in_flight")
    )
    assert "USD" in clean["money"]

    # The same load, as the report's figures (each from the service that holds it).
    assert figures["missing"] == {}
    web = figures["orders"]["by_channel"]["web"]
    assert (web["accepted"], web["rejected"]) == (len(load.expected), 1)
    assert (web["shipped"], web["cancelled"]) == (5, 2)
    assert figures["lead_time"]["reserve"]["n"] == len(load.expected) - 1  # one backordered
    assert figures["lead_time"]["deliver"]["n"] == 3
    assert figures["lead_time"]["ship"]["p95_s"] >= figures["lead_time"]["ship"]["p50_s"] > 0
    assert sum(v["shipments"] for v in figures["sla"].values()) == 7  # cancelled not counted
    assert figures["top_skus"][0]["sku"] == "TEA-001"
    assert {c["sku"] for c in figures["stock_cover"]} >= {"TEA-001", "CUP-010", "LAMP-042"}

    found = {(d["check"], d["key"]) for d in damaged["discrepancies"]}
    assert ("stock", "TEA-001@WH-1") in found
    assert ("orders", queued) in found
    messages = " ".join(d["message"] for d in damaged["discrepancies"])
    assert "the ledger sums to" in messages
    assert "intake shows delivered" in messages
    assert code == 1
    assert {(d["check"], d["key"]) for d in printed["discrepancies"]} == found


async def test_reconcile_reports_an_unacknowledged_dead_letter_and_a_silent_service(
    nats_url: str, tmp_path: Path
) -> None:
    async with four_services(nats_url, tmp_path) as rts, nats_client(nats_url) as (nc, js):
        await rts["notify"].stop()  # the dead-letter stream's consumer
        await js.publish(
            subjects.dead_letter("inventory", "inventory-orders"),
            b"{not an envelope",
            headers={"Orderflow-Error": "undecodable"},
        )
        result = await reconcile(nc, settle_s=0, timeout=2.0)

    found = {(d["check"], d["key"]): d["message"] for d in result["discrepancies"]}
    assert "1 dead letters not acknowledged" in found[("dead_letters", "notify-dead-letters")]
    assert ("services", "notify") in found
    assert result["ok"] is False
