"""Intake's HTTP API in-process (aiohttp test server, SQLite; no NATS needed to answer): channel
keys, the batch route, listing, cancelling, and the OpenAPI document against the real routes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.intake.app import create_service
from services.intake.auth import ApiKeys, Principal
from services.intake.settings import IntakeSettings
from shared.runtime import ServiceRuntime, StartupError
from tests.conftest import order_doc

KEYS = {"web": "web-key-0123456789abcdef", "wechat": "wechat-key-0123456789abcd"}
OPS = "ops-key-0123456789abcdefgh"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


WEB, WECHAT, OPERATOR = bearer(KEYS["web"]), bearer(KEYS["wechat"]), bearer(OPS)


def ext() -> str:
    return f"http-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ServiceRuntime]:
    keys_file = tmp_path / "credentials.json"
    keys_file.write_text(json.dumps({"channels": KEYS, "operators": {"ops": OPS}}))
    settings = IntakeSettings(
        home=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'intake.db'}",
        channel_keys_file=keys_file,
    )
    rt = create_service(settings)
    await rt.db.create_schema()
    yield rt
    await rt.db.close()


@pytest.fixture
async def client(service: ServiceRuntime) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(service.http)) as c:
        yield c


async def post(
    client: TestClient[Any, Any], path: str, body: Any, headers: dict[str, str]
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with client.post(path, data=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def get(
    client: TestClient[Any, Any], path: str, headers: dict[str, str], **params: str
) -> tuple[int, Any]:
    async with client.get(path, headers=headers, params=params) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-0123456789abcdef"},
        {"Authorization": f"Basic {KEYS['web']}"},
        {"Authorization": "Bearer "},
    ],
    ids=["none", "wrong", "not-bearer", "empty"],
)
async def test_every_orders_route_wants_a_valid_key(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    for method, path in [
        ("POST", "/orders"),
        ("POST", "/orders:batch"),
        ("GET", "/orders"),
        ("GET", f"/orders/{uuid.uuid4()}"),
        ("POST", f"/orders/{uuid.uuid4()}/cancel"),
    ]:
        async with client.request(method, path, json=order_doc(ext()), headers=headers) as resp:
            assert resp.status == 401, (method, path)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "key" in (await resp.json())["error"]


async def test_a_channel_can_only_submit_as_itself(client: TestClient[Any, Any]) -> None:
    # The web key submitting an order that says it comes from WeChat: refused, on the channel.
    status, answer = await post(client, "/orders", order_doc(ext(), channel="wechat"), WEB)
    assert status == 422
    assert [e["field"] for e in answer["errors"]] == ["channel"]
    # Without a channel in the body, the key decides it.
    doc = order_doc(ext())
    del doc["channel"]
    status, answer = await post(client, "/orders", doc, WECHAT)
    assert status == 202
    status, view = await get(client, f"/orders/{answer['order_id']}", WECHAT)
    assert (status, view["channel"]) == (200, "wechat")
    # An operator's key reads every order but submits none.
    status, _ = await post(client, "/orders", order_doc(ext()), OPERATOR)
    assert status == 403


async def test_a_channel_sees_only_its_own_orders(client: TestClient[Any, Any]) -> None:
    _, web_order = await post(client, "/orders", order_doc(ext()), WEB)
    _, wechat_order = await post(client, "/orders", order_doc(ext(), channel="wechat"), WECHAT)
    status, _ = await get(client, f"/orders/{web_order['order_id']}", WECHAT)
    assert status == 404
    status, _ = await post(client, f"/orders/{web_order['order_id']}/cancel", {}, WECHAT)
    assert status == 404
    status, page = await get(client, "/orders", WECHAT)
    assert [o["order_id"] for o in page["orders"]] == [wechat_order["order_id"]]
    status, _ = await get(client, "/orders", WECHAT, channel="web")
    assert status == 403
    status, page = await get(client, "/orders", OPERATOR)
    assert {o["order_id"] for o in page["orders"]} == {
        web_order["order_id"],
        wechat_order["order_id"],
    }


async def test_a_batch_gets_one_answer_per_order_in_order(client: TestClient[Any, Any]) -> None:
    good, bad = order_doc(ext()), order_doc(ext(), currency="XYZ")
    status, result = await post(
        client, "/orders:batch", {"orders": [good, bad, good, "not an order"]}, WEB
    )
    assert status == 200
    assert [a["outcome"] for a in result["answers"]] == [
        "accepted",
        "rejected",
        "duplicate",
        "rejected",
    ]
    assert result["answers"][2]["order_id"] == result["answers"][0]["order_id"]
    assert [e["field"] for e in result["answers"][1]["errors"]] == ["currency"]
    assert (result["accepted"], result["rejected"], result["duplicate"]) == (1, 2, 1)


async def test_a_batch_holds_at_most_a_thousand_orders(client: TestClient[Any, Any]) -> None:
    status, refused = await post(client, "/orders:batch", {"orders": [{}] * 1001}, WEB)
    assert status == 413
    assert "1000" in refused["error"]
    status, result = await post(
        client, "/orders:batch", {"orders": [order_doc(ext()) for _ in range(1000)]}, WEB
    )
    assert (status, result["accepted"]) == (200, 1000)


async def test_a_batch_that_is_not_json_is_kept_and_answered(client: TestClient[Any, Any]) -> None:
    status, answer = await post(client, "/orders:batch", b"orders: [1, 2]", WEB)
    assert status == 422
    assert answer["outcome"] == "rejected"
    status, view = await get(client, f"/orders/{answer['order_id']}", WEB)
    assert (status, view["status"]) == (200, "rejected")
    status, refused = await post(client, "/orders:batch", {"order": []}, WEB)
    assert status == 400
    assert refused["errors"][0]["field"] == "orders"


async def test_listing_filters_and_pages(client: TestClient[Any, Any]) -> None:
    ids = [(await post(client, "/orders", order_doc(ext()), WEB))[1]["order_id"] for _ in range(3)]
    status, first = await get(client, "/orders", WEB, limit="2", status="accepted")
    assert status == 200
    assert [o["order_id"] for o in first["orders"]] == ids[:0:-1]
    _, second = await get(client, "/orders", WEB, limit="2", after=first["next"])
    assert [o["order_id"] for o in second["orders"]] == [ids[0]]
    assert second["next"] is None
    _, later = await get(client, "/orders", WEB, since="2999-01-01T00:00:00Z")
    assert later["orders"] == []
    for bad in ({"status": "lost"}, {"since": "yesterday"}, {"limit": "0"}, {"flagged": "maybe"}):
        status, problem = await get(client, "/orders", WEB, **bad)
        assert status == 400, bad
        assert problem["error"]


async def test_cancel_over_http(client: TestClient[Any, Any]) -> None:
    _, order = await post(client, "/orders", order_doc(ext()), WEB)
    path = f"/orders/{order['order_id']}/cancel"
    status, answer = await post(client, path, {"reason": "customer called"}, WEB)
    assert (status, answer["outcome"]) == (202, "requested")
    status, answer = await post(client, path, b"", OPERATOR)
    assert (status, answer["outcome"]) == (200, "pending")
    status, _ = await post(client, path, b"[1]", WEB)
    assert status == 400
    status, view = await get(client, f"/orders/{order['order_id']}", WEB)
    requested = next(e for e in view["timeline"] if e["what"] == "cancel requested")
    assert requested["detail"] == "channel:web: customer called"


# --- the OpenAPI document against what the service really does --------------------------------


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def conforms(doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "") -> None:
    """A small check of a value against a documented schema: object properties (required and
    undocumented ones), arrays, enums and basic types; enough to catch a document that lies."""
    schema = resolve(doc, schema)
    if "oneOf" in schema or "anyOf" in schema:
        return
    if "const" in schema:
        assert value == schema["const"], where
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    types = schema.get("type")
    types = types if isinstance(types, list) else [types] if types else []
    python = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "boolean": bool,
        "null": type(None),
    }
    if types:
        assert any(isinstance(value, python[t]) for t in types if t in python), (
            f"{where}: {value!r} is not {types}"
        )
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        missing = [k for k in schema.get("required", []) if k not in value]
        assert not missing, f"{where}: missing {missing}"
        undocumented = [k for k in value if k not in props]
        assert not undocumented, f"{where}: undocumented {undocumented}"
        for key, item in value.items():
            conforms(doc, props[key], item, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            conforms(doc, schema["items"], item, f"{where}[{i}]")


async def test_the_openapi_document_names_exactly_the_routes_the_service_has(
    service: ServiceRuntime, client: TestClient[Any, Any]
) -> None:
    async with client.get("/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    real = {
        (route.resource.canonical, route.method)
        for route in service.http.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert documented == real


async def test_real_responses_match_the_documented_schemas(client: TestClient[Any, Any]) -> None:
    async with client.get("/openapi.json") as resp:
        doc = await resp.json()

    async def check(
        method: str, path: str, template: str, headers: dict[str, str], **kw: Any
    ) -> Any:
        async with client.request(method, path, headers=headers, **kw) as resp:
            body = await resp.json()
            documented = doc["paths"][template][method.lower()]["responses"]
            assert str(resp.status) in documented, (method, path, resp.status)
            schema = documented[str(resp.status)]["content"]["application/json"]["schema"]
            conforms(doc, schema, body, f"{method} {template} {resp.status}")
            return body

    created = await check("POST", "/orders", "/orders", WEB, json=order_doc(ext()))
    oid = created["order_id"]
    await check("POST", "/orders", "/orders", WEB, json=order_doc(created and ext(), currency="X"))
    await check("POST", "/orders", "/orders", {})
    await check("POST", "/orders", "/orders", WEB, data=b"x" * 70_000)
    await check("POST", "/orders:batch", "/orders:batch", WEB, json={"orders": [order_doc(ext())]})
    await check("POST", "/orders:batch", "/orders:batch", WEB, json={"nope": 1})
    await check("GET", "/orders", "/orders", WEB)
    await check("GET", "/orders", "/orders", WEB, params={"status": "rejected"})
    await check("GET", "/orders", "/orders", WEB, params={"limit": "x"})
    await check("GET", f"/orders/{oid}", "/orders/{order_id}", WEB)
    await check("GET", f"/orders/{uuid.uuid4()}", "/orders/{order_id}", WEB)
    await check("POST", f"/orders/{oid}/cancel", "/orders/{order_id}/cancel", WEB, json={})
    await check("POST", f"/orders/{oid}/cancel", "/orders/{order_id}/cancel", WEB, json={})


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"routing_rules_file": "rules.toml"}, "cannot read routing rules"),
        ({"channel_keys": {"web": "short"}}, "shorter than 16"),
        (
            {"channel_keys": {"web": "same-key-0123456789", "phone": "same-key-0123456789"}},
            "shares",
        ),
        ({"channel_keys": {"Web Shop": "a-key-0123456789abcdef"}}, "not a valid channel name"),
    ],
)
def test_a_service_that_cannot_use_its_configuration_says_so_at_start_up(
    tmp_path: Path, changes: dict[str, Any], complaint: str
) -> None:
    if "routing_rules_file" in changes:
        (tmp_path / "rules.toml").write_text("[[rule]\n")
        changes = {"routing_rules_file": tmp_path / "rules.toml"}
    settings = IntakeSettings(home=tmp_path, **changes)
    with pytest.raises(StartupError, match=complaint):
        create_service(settings)


def test_channel_keys_come_from_the_environment_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDERFLOW_CHANNEL_KEYS", json.dumps({"kiosk": "kiosk-key-0123456789ab"}))
    settings = IntakeSettings(home=tmp_path)
    keys = ApiKeys.load(settings.keys_file(), settings.channel_keys)
    assert keys.principal("Bearer kiosk-key-0123456789ab") == Principal("channel", "kiosk")
    assert keys.principal("bearer  kiosk-key-0123456789ab ") == Principal("channel", "kiosk")
    assert keys.principal("Bearer kiosk-key-0123456789ac") is None
    assert keys.channels == ["kiosk"]
