"""`orderflow replay intake` against the four services on a real nats-server: after a mixed load
the status view rebuilt from the streams equals the live one, field by field; a live row changed
behind intake's back is reported as a difference and the command exits non-zero."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

import pytest

from orderflow.cli import main as cli_main
from orderflow.commands.replay import replay_intake
from tests.integration.audit_system import corrupt, database_of, four_services, mixed_load
from tests.integration.harness import nats_client

pytestmark = pytest.mark.slow


async def test_the_replayed_status_view_equals_the_live_one_after_a_mixed_load(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with four_services(nats_url, tmp_path), nats_client(nats_url) as (nc, _):
        load = await mixed_load(nc)
        equal = await replay_intake(nc, tmp_path / "replayed.db", settle_s=0)

        shipped = next(o for o, s in load.expected.items() if s == "shipped")
        await corrupt(
            database_of(tmp_path, "intake"),
            "UPDATE orders SET status = 'delivered', status_rank = 80 WHERE order_id = :oid",
            oid=shipped,
        )
        monkeypatch.setenv("ORDERFLOW_NATS_URL", nats_url)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = await asyncio.to_thread(
                cli_main, ["replay", "intake", "--settle", "0", "--json"]
            )
        printed = json.loads(out.getvalue())
        refused = await asyncio.to_thread(cli_main, ["replay", "notify"])

    assert equal["differences"] == [] and equal["in_flight"] == []
    assert equal["live_orders"] == equal["rebuilt_orders"] == len(load.expected)
    types = equal["events_by_type"]
    assert types["order_accepted"] == len(load.expected)
    assert {"stock_reserved", "stock_backordered", "shipment_delivered", "order_cancelled"} <= set(
        types
    )
    assert code == 1
    [diff] = printed["differences"]
    assert diff["order_id"] == shipped
    assert diff["fields"]["status"] == {"live": "delivered", "replayed": "shipped"}
    assert refused == 1
