"""`orderflow up` with its own least-privilege NATS users: the secrets stay private, nobody gets
in without a password, the CLI on the same machine works without extra steps, and a demo load
runs through the four services without a single permission refusal."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time

import nats
import pytest

from shared import nats_access

from .conftest import RunningSystem

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def cli(system: RunningSystem, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ORDERFLOW_HOME": str(system.home)}
    env.pop("ORDERFLOW_NATS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "orderflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def violations(system: RunningSystem) -> list[str]:
    log = (system.home / "logs" / "nats.log").read_text()
    return [line for line in log.splitlines() if "Violation" in line]


async def test_the_embedded_system_runs_with_one_nats_user_per_service(
    system: RunningSystem,
) -> None:
    creds_file = system.home / "credentials.json"
    assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
    users = json.loads(creds_file.read_text())["nats"]
    assert {"intake", "inventory", "fulfillment", "notify", "cli", "admin"} <= set(users)
    assert nats_access.channel_user("web") in users
    configs = list(system.home.glob("nats-*.conf"))
    assert configs and all(stat.S_IMODE(c.stat().st_mode) == 0o600 for c in configs)

    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(system.nats_url, allow_reconnect=False, max_reconnect_attempts=0)

    # The CLI finds the cli user's password in credentials.json by itself.
    shown = cli(system, "stock", "show")
    assert shown.returncode == 0, shown.stderr
    demo = cli(system, "demo", "--orders", "20", "--rate", "100")
    assert demo.returncode == 0, demo.stderr
    deadline = time.monotonic() + 60
    listed = cli(system, "orders", "list", "--json")
    while time.monotonic() < deadline and listed.stdout.count('"order_id"') < 5:
        await asyncio.sleep(1)
        listed = cli(system, "orders", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count('"order_id"') >= 5, listed.stdout[:500]

    # The audit tools read JetStream and ask every service, as the cli user with the local
    # admin token: every service answers and nothing is refused.
    page = json.loads(listed.stdout)
    order_id = (page["orders"] if isinstance(page, dict) else page)[0]["order_id"]
    traced = cli(system, "trace", order_id, "--json")
    assert traced.returncode == 0, traced.stderr
    trace = json.loads(traced.stdout)
    assert trace["missing"] == {}, trace["missing"]
    assert sorted(trace["answered"]) == ["fulfillment", "intake", "inventory", "notify"]
    assert any(e["kind"] == "produced" for e in trace["entries"]), trace["entries"]
    assert cli(system, "replay", "intake").returncode in (0, 1)  # read access, not a verdict
    reconciled = cli(system, "reconcile", "--json")
    assert "permission" not in reconciled.stderr.lower(), reconciled.stderr
    assert violations(system) == []
