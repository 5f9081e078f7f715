"""Operator tokens and roles without a network: how tokens are configured, what each role may
do (every command every service registers is in the table), how the actor is recorded, and
intake's HTTP API answering 403 to a role that may not cancel."""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text

from services.intake.app import create_service as create_intake
from services.intake.settings import IntakeSettings
from shared import subjects
from shared.operators import (
    ADMIN,
    PERMISSIONS,
    ROLES,
    NotAllowed,
    Operator,
    Operators,
    OperatorsError,
    token_digest,
)
from shared.runtime import ServiceRuntime, StartupError
from shared.settings import ServiceSettings
from tests.conftest import order_doc

TOKENS = {role: f"{role}-token-0123456789abcdef" for role in ROLES}
NAMES = {"sales": "ann", "warehouse": "wu", "finance": "fay", "admin": "root"}


def configured() -> dict[str, Any]:
    """One operator per role; the admin's token is kept as a digest only, as a server would."""
    return {
        NAMES[role]: {"role": role, "token_sha256": token_digest(token)}
        if role == ADMIN
        else {"role": role, "token": token}
        for role, token in TOKENS.items()
    }


def test_each_token_names_its_operator_and_role() -> None:
    operators = Operators(configured())
    for role, token in TOKENS.items():
        assert operators.identify(token) == Operator(NAMES[role], role)
    assert operators.identify("not-a-known-token-at-all") is None
    assert operators.identify(None) is None


def test_a_bare_token_from_before_roles_is_an_admins(tmp_path: Path) -> None:
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"channels": {}, "operators": {"ops": "x" * 32}, "nats": {}}))
    operators = Operators.configured({}, [creds, tmp_path / "missing.json"])
    assert operators.identify("x" * 32) == Operator("ops", ADMIN)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"ann": {"role": "boss", "token": "t" * 20}}, "has role 'boss'; roles are sales"),
        ({"ann": {"role": "sales", "token": "short"}}, "shorter than 16"),
        ({"ann": {"role": "sales", "token_sha256": "abc"}}, "needs 'token_sha256'"),
        ({"a b": {"role": "sales", "token": "t" * 20}}, "not a valid operator name"),
        (
            {
                "ann": {"role": "sales", "token": "t" * 20},
                "bo": {"role": "admin", "token": "t" * 20},
            },
            "shares its token",
        ),
        (["ann"], "operators must be"),
    ],
)
def test_a_bad_configuration_is_refused_at_start_up(entries: Any, message: str) -> None:
    with pytest.raises(OperatorsError, match=message):
        Operators(entries)


def test_a_service_with_a_bad_operators_setting_does_not_start(tmp_path: Path) -> None:
    settings = IntakeSettings(home=tmp_path, operators={"ann": {"role": "boss", "token": "t" * 20}})
    with pytest.raises(StartupError, match="roles are sales, warehouse, finance, admin"):
        create_intake(settings)


SALES_AND_ADMIN = {"sales", ADMIN}
WAREHOUSE_AND_ADMIN = {"warehouse", ADMIN}


@pytest.mark.parametrize(
    ("service", "command", "allowed"),
    [
        ("intake", "submit", SALES_AND_ADMIN),
        ("intake", "cancel", SALES_AND_ADMIN),
        ("fulfillment", "pick", WAREHOUSE_AND_ADMIN),
        ("fulfillment", "pack", WAREHOUSE_AND_ADMIN),
        ("fulfillment", "ship", WAREHOUSE_AND_ADMIN),
        ("fulfillment", "deliver", WAREHOUSE_AND_ADMIN),
        ("inventory", "restock", WAREHOUSE_AND_ADMIN),
        ("fulfillment", "return", {"sales", "finance", ADMIN}),
        ("notify", "resend", SALES_AND_ADMIN),
        ("intake", "status", set(ROLES)),
        ("inventory", "stock", set(ROLES)),
        # A command nobody put in the table is an admin's until someone opens it.
        ("inventory", "a-new-command", {ADMIN}),
    ],
)
def test_each_role_may_run_only_its_commands(service: str, command: str, allowed: set[str]) -> None:
    operators = Operators(configured())
    for role in ROLES:
        try:
            operators.check(TOKENS[role], service, command)
            may = True
        except NotAllowed:
            may = False
        assert may == (role in allowed), (role, service, command)


def test_a_refusal_says_who_what_and_which_role_is_needed() -> None:
    operators = Operators(configured())
    with pytest.raises(NotAllowed) as refused:
        operators.check(TOKENS["warehouse"], "intake", "cancel")
    assert refused.value.status == 403
    assert refused.value.reason == (
        "operator 'wu' has the role warehouse; 'cancel' on intake needs the role sales or admin"
    )
    with pytest.raises(NotAllowed, match="needs an operator token") as missing:
        operators.check(None, "inventory", "restock")
    assert missing.value.status == 401
    with pytest.raises(NotAllowed, match="does not know this operator token"):
        operators.check("a-token-nobody-configured", "inventory", "restock")


def test_the_actor_is_the_operator_and_whom_it_acted_for() -> None:
    wu = Operator("wu", "warehouse")
    assert wu.actor() == "operator:wu"
    assert wu.actor("wu") == "operator:wu"
    assert wu.actor("li.na") == "operator:wu/li.na"
    assert len(wu.actor("x" * 200)) == 64


async def test_every_command_a_service_registers_has_its_roles(tmp_path: Path) -> None:
    settings = ServiceSettings(home=tmp_path)
    for service in subjects.SERVICES:
        app = importlib.import_module(f"services.{service}.app")
        rt: ServiceRuntime = app.create_service(settings)
        try:
            assert set(rt.rpc.commands) == set(PERMISSIONS[service]), service
        finally:
            await rt.db.close()


# --- intake's HTTP API --------------------------------------------------------------------------

WEB_KEY = "web-key-0123456789abcdef"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"channels": {"web": WEB_KEY}, "operators": configured()}))
    settings = IntakeSettings(
        home=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}"
    )
    rt = create_intake(settings)
    await rt.db.create_schema()
    try:
        async with TestClient(TestServer(rt.http)) as c:
            yield c
    finally:
        await rt.db.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_http_cancel_is_refused_to_roles_that_may_not_cancel(
    client: TestClient[Any, Any],
) -> None:
    r = await client.post("/orders", json=order_doc(), headers=bearer(WEB_KEY))
    assert r.status == 202
    order_id = (await r.json())["order_id"]
    for role in ("warehouse", "finance"):
        r = await client.post(f"/orders/{order_id}/cancel", headers=bearer(TOKENS[role]))
        assert r.status == 403, role
        assert (await r.json())["error"] == (
            f"operator {NAMES[role]!r} has the role {role}; cancelling needs admin or sales"
        )
        # Looking is every operator's.
        r = await client.get(f"/orders/{order_id}", headers=bearer(TOKENS[role]))
        assert r.status == 200 and (await r.json())["status"] == "accepted"
    r = await client.post(
        f"/orders/{order_id}/cancel",
        json={"reason": "called back"},
        headers=bearer(TOKENS["sales"]),
    )
    assert r.status == 202
    r = await client.get(f"/orders/{order_id}", headers=bearer(TOKENS["admin"]))
    view = await r.json()
    assert (view["status"], view["timeline"][-1]["detail"]) == (
        "accepted",
        "operator:ann: called back",
    )
    r = await client.post(f"/orders/{order_id}/cancel", headers=bearer("nobody-knows-this-one"))
    assert r.status == 401


# --- the other services' HTTP routes ------------------------------------------------------------

OPEN_ROUTES = {"/healthz", "/readyz", "/metrics", "/stats"}


async def test_every_command_route_wants_an_operator(tmp_path: Path) -> None:
    settings = ServiceSettings(home=tmp_path)
    for service in ("inventory", "fulfillment", "notify"):
        app = importlib.import_module(f"services.{service}.app")
        rt: ServiceRuntime = app.create_service(settings)
        try:
            routes = {
                (r.method, r.resource.canonical)
                for r in rt.http.router.routes()
                if r.method != "HEAD" and r.resource and r.resource.canonical not in OPEN_ROUTES
            }
            assert routes == set(rt.http_commands), service
        finally:
            await rt.db.close()


@pytest.fixture
async def inventory(tmp_path: Path) -> AsyncIterator[tuple[ServiceRuntime, TestClient[Any, Any]]]:
    from services.inventory.app import create_service

    settings = ServiceSettings(
        home=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'inventory.db'}",
        operators=configured(),
    )
    rt = create_service(settings)
    await rt.db.create_schema()
    try:
        async with TestClient(TestServer(rt.http)) as c:
            yield rt, c
    finally:
        await rt.db.close()


async def test_inventory_over_http_checks_the_role_and_records_the_operator(
    inventory: tuple[ServiceRuntime, TestClient[Any, Any]],
) -> None:
    rt, client = inventory
    restock = {"sku": "TEA-301", "quantity": 4, "actor": "li.na"}
    r = await client.post("/stock/restock", json=restock, headers=bearer(TOKENS["sales"]))
    assert (r.status, (await r.json())["error"]) == (
        403,
        "operator 'ann' has the role sales; 'restock' on inventory needs the role warehouse "
        "or admin",
    )
    r = await client.post("/stock/restock", json=restock)
    assert r.status == 401 and "needs an operator token" in (await r.json())["error"]
    r = await client.post("/stock/restock", json=restock, headers=bearer(TOKENS["warehouse"]))
    assert r.status == 200
    r = await client.get("/stock/TEA-301/ledger", headers=bearer(TOKENS["finance"]))
    assert [e["actor"] for e in await r.json()] == ["operator:wu/li.na"]
    r = await client.put("/warehouses/WH-9", json={"rank": 9}, headers=bearer(TOKENS["warehouse"]))
    assert r.status == 200
    async with rt.db.reading() as conn:
        who = await conn.execute(text("SELECT updated_by FROM warehouses WHERE code = 'WH-9'"))
        assert who.scalar_one() == "operator:wu"


async def test_a_fulfillment_step_over_http_is_the_warehouses(tmp_path: Path) -> None:
    from services.fulfillment.app import create_service

    settings = ServiceSettings(
        home=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'fulfillment.db'}",
        operators=configured(),
    )
    rt = create_service(settings)
    await rt.db.create_schema()
    try:
        async with TestClient(TestServer(rt.http)) as client:
            order = "01a23552-4527-7000-bab3-e4f8b4a78cc7"
            r = await client.post(f"/orders/{order}/pick", headers=bearer(TOKENS["finance"]))
            assert (
                r.status == 403
                and "'pick' on fulfillment needs the role warehouse" in (await r.json())["error"]
            )
            r = await client.post(f"/orders/{order}/pick", headers=bearer(TOKENS["warehouse"]))
            assert r.status == 404  # past the role check: there is no such shipment
            r = await client.get("/queue", headers=bearer(TOKENS["sales"]))
            assert r.status == 200
    finally:
        await rt.db.close()
