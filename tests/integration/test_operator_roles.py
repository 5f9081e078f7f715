"""Operator roles against the four running services over a real nats-server: each role runs its
commands and is refused the others with a clear reason, the change records the operator, and
the CLI acts as the local admin without extra steps, or as --token says (exit 1 when refused)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from orderflow.cli import main
from orderflow.launcher import ensure_credentials, local_token
from services.fulfillment.app import create_service as create_fulfillment
from services.intake.app import create_service as create_intake
from services.inventory.app import create_service as create_inventory
from services.notify.app import create_service as create_notify
from shared.ids import uuid7
from shared.rpc import CommandRefused, call
from tests.conftest import order_doc, settings_for
from tests.integration.harness import nats_client, running
from tests.unit.test_operator_roles import NAMES, TOKENS, configured

FACTORIES = {
    "intake": create_intake,
    "inventory": create_inventory,
    "fulfillment": create_fulfillment,
    "notify": create_notify,
}


@pytest.fixture
async def system(nats_url: str, tmp_path: Path) -> AsyncIterator[Path]:
    """The four services, knowing one operator per role and the admin `orderflow up` writes to
    credentials.json; returns the home folder."""
    home = tmp_path / "var"
    ensure_credentials(home)
    async with AsyncExitStack() as stack:
        for name, factory in FACTORIES.items():
            settings = settings_for(
                nats_url,
                f"sqlite+aiosqlite:///{tmp_path / name}.db",
                tmp_path,
                operators=configured(),
            )
            await stack.enter_async_context(running(factory(settings)))
        yield home


def restock(actor: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"sku": "TEA-001", "quantity": 5, "warehouse": "WH-1", "reason": "count"}
    return {**body, "actor": actor} if actor else body


# (service, command, payload, roles allowed). An allowed command may still be refused for a
# business reason (no such order); only the role check must not stop it.
CHECKS: list[tuple[str, str, dict[str, Any], set[str]]] = [
    ("intake", "submit", {"channel": "web", "order": order_doc()}, {"sales", "admin"}),
    ("intake", "cancel", {"order_id": uuid7()}, {"sales", "admin"}),
    ("inventory", "restock", restock(), {"warehouse", "admin"}),
    ("fulfillment", "pick", {"order_id": uuid7()}, {"warehouse", "admin"}),
    ("fulfillment", "return", {"order_id": uuid7()}, {"sales", "finance", "admin"}),
    ("notify", "resend", {"delivery_id": "d-1"}, {"sales", "admin"}),
    ("inventory", "stock", {}, {"sales", "warehouse", "finance", "admin"}),
]


async def test_each_role_runs_its_commands_and_is_refused_the_others(
    system: Path, nats_url: str
) -> None:
    wrong: list[str] = []
    async with nats_client(nats_url) as (nc, _js):
        for service, command, payload, allowed in CHECKS:
            for role, token in TOKENS.items():
                try:
                    await call(nc, service, command, dict(payload), token=token)
                    refusal = None
                except CommandRefused as exc:
                    refusal = exc.reason
                denied = refusal is not None and "needs the role" in refusal
                if denied != (role not in allowed):
                    wrong.append(f"{role} {service}.{command}: {refusal or 'ran'}")
                if denied:
                    assert refusal == (
                        f"operator {NAMES[role]!r} has the role {role}; {command!r} on {service} "
                        f"needs the role {' or '.join(r for r in TOKENS if r in allowed)}"
                    )
        with pytest.raises(CommandRefused, match="does not know this operator token"):
            await call(nc, "inventory", "restock", restock(), token="a-token-nobody-configured")
        # Who acted is the token's operator, whatever the payload claims; for whom, beside it.
        await call(nc, "inventory", "restock", restock("li.na"), token=TOKENS["warehouse"])
        await call(
            nc, "inventory", "restock", {**restock(), "actor": "root"}, token=TOKENS["admin"]
        )
        ledger = await call(nc, "inventory", "ledger", {"sku": "TEA-001"}, token=TOKENS["finance"])
    assert not wrong, "\n".join(wrong)
    actors = [e["actor"] for e in ledger]
    assert {"operator:wu/li.na", "operator:root", "operator:wu"} <= set(actors)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


async def test_the_cli_acts_as_the_local_admin_or_as_its_token_says(
    system: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDERFLOW_HOME", str(system))
    monkeypatch.setenv("ORDERFLOW_NATS_URL", nats_url)
    monkeypatch.delenv("ORDERFLOW_TOKEN", raising=False)

    async def cli(*argv: str) -> tuple[int, str, str]:
        # The CLI runs its own event loop, as from a shell.
        return await asyncio.to_thread(run_cli, *argv)

    code, out, err = await cli("stock", "restock", "TEA-002", "3", "--json")
    assert code == 0, err
    code, out, err = await cli("stock", "ledger", "TEA-002", "--json")
    assert code == 0, err
    assert [e["actor"] for e in json.loads(out)] == ["operator:ops"]

    code, out, err = await cli("--token", TOKENS["warehouse"], "cancel", uuid7())
    assert code == 1 and out == ""
    assert err.strip() == (
        "refused: operator 'wu' has the role warehouse; 'cancel' on intake needs the role "
        "sales or admin"
    )
    monkeypatch.setenv("ORDERFLOW_TOKEN", TOKENS["sales"])
    code, _, err = await cli("stock", "restock", "TEA-002", "3")
    assert code == 1 and "operator 'ann' has the role sales" in err
    code, _, err = await cli("--token", local_token(ensure_credentials(system)), "stock", "show")
    assert code == 0, err
