"""Malformed, oversized, wrongly typed and hostile inputs on every entry point, against the four
services running together: intake's HTTP routes (single, batch), the NATS submit subjects, the
NATS commands of every service, every other service's HTTP routes, the events between services
(garbage and unknown schema versions on their subjects) and the CLI's import files.

Each must get a clear answer (a 4xx with the reason, a refused command, a rejection) or be
dead-lettered with its reason; none may crash a service, answer 500 / "internal error", or be
dropped silently. A load of valid orders runs through the same system afterwards, and the
invariants are checked over everything.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import io
import json
import re
import sys
import uuid
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest.mock import patch

import aiohttp
import orjson
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from orderflow import demo
from orderflow.cli import main as cli_main
from shared import streams, subjects
from shared.contracts.intake import MAX_SUBMISSION_BYTES
from shared.embedded_nats import EmbeddedNats
from shared.ids import uuid7
from tests.conftest import order_doc
from tests.faults import invariants
from tests.faults.system import (
    ADMIN_TOKEN,
    CHANNEL_KEYS,
    InProcessSystem,
    connect,
    in_process_system,
    publish_load,
)

pytestmark = [pytest.mark.slow]

HOSTILE_TEXT = [
    "'; DROP TABLE orders; --",
    "<script>alert(1)</script>",
    "a.b.*.>",
    "\u0000nul\u0000",
    "\u202eRTL\u202c 🎉",
    "x" * 100_000,
    "../../../etc/passwd",
    "%s%s%n",
]


def hostile_bodies() -> list[tuple[str, bytes]]:
    """(what, body) pairs: each is wrong in one way."""
    good = order_doc()
    bodies: list[tuple[str, bytes]] = [
        ("empty body", b""),
        ("not JSON", b"{{{ not json"),
        ("invalid UTF-8", b'{"channel": "web", "x": "\xff\xfe"}'),
        ("JSON array", b"[1, 2, 3]"),
        ("JSON string", b'"order"'),
        ("JSON null", b"null"),
        ("deeply nested", b"[" * 5000 + b"]" * 5000),
        ("oversized", orjson.dumps({**good, "note": "x" * (MAX_SUBMISSION_BYTES + 10)})),
        ("empty object", b"{}"),
    ]
    wrong: dict[str, Any] = {
        "quantity as text": {"lines": [{"sku": "TEA-001", "quantity": "two", "unit_price": "1"}]},
        "negative quantity": {"lines": [{"sku": "TEA-001", "quantity": -3, "unit_price": "1"}]},
        "huge quantity": {"lines": [{"sku": "TEA-001", "quantity": 10**40, "unit_price": "1"}]},
        "float quantity": {"lines": [{"sku": "TEA-001", "quantity": 1.5, "unit_price": "1"}]},
        "price NaN": {"lines": [{"sku": "TEA-001", "quantity": 1, "unit_price": "NaN"}]},
        "price huge": {"lines": [{"sku": "TEA-001", "quantity": 1, "unit_price": "1e999999"}]},
        "lines not a list": {"lines": "TEA-001 x 2"},
        "no lines": {"lines": []},
        "ten thousand lines": {
            "lines": [{"sku": f"S-{i}", "quantity": 1, "unit_price": "1"} for i in range(10_000)]
        },
        "customer as text": {"customer": "Mei Lin"},
        "address as list": {"shipping_address": ["Hangzhou"]},
        "priority unknown": {"priority": "yesterday"},
        "currency wrong": {"currency": 156},
        "external id as object": {"external_id": {"$ne": None}},
        "external id with subject wildcards": {"external_id": "a.b.*.>"},
    }
    for what, change in wrong.items():
        bodies.append((what, json.dumps({**order_doc(), **change}).encode()))
    for text in HOSTILE_TEXT:
        doc = order_doc()
        doc["customer"] = {**doc["customer"], "name": text}
        doc["lines"] = [{"sku": text[:40], "quantity": 1, "unit_price": "1.00"}]
        bodies.append((f"hostile text {text[:12]!r}", orjson.dumps(doc)))
    return bodies


def unparseable(body: bytes) -> bool:
    """Bodies intake must keep raw as dead letters: too large, not JSON, not a JSON object."""
    if len(body) > MAX_SUBMISSION_BYTES:
        return True
    try:
        return not isinstance(orjson.loads(body), dict)
    except orjson.JSONDecodeError:
        return True


def dead_letter_of_payload(what: str, body: bytes, consumer: str) -> invariants.ExpectedDeadLetter:
    def matches(msg: Msg) -> bool:
        headers = msg.headers or {}
        return headers.get("Orderflow-Consumer") == consumer and (msg.data or b"") == body

    return invariants.ExpectedDeadLetter(f"{what} via {consumer}", matches)


class Tally:
    def __init__(self) -> None:
        self.injected: collections.Counter[str] = collections.Counter()
        self.answers: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.dead: list[invariants.ExpectedDeadLetter] = []
        self.answered: set[str] = set()

    def bad(self, text: str) -> None:
        self.problems.append(text)


@pytest.fixture(scope="module")
async def system(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("hostile")
    server = EmbeddedNats(home / "nats")
    url = server.start()
    try:
        async with in_process_system(home / "var", url) as running:
            yield running
    finally:
        server.stop()


async def intake_http(system: InProcessSystem, tally: Tally) -> None:
    port = system.runtimes["intake"].http_port
    base = f"http://127.0.0.1:{port}"
    web_key = {"Authorization": f"Bearer {CHANNEL_KEYS['web']}"}
    async with aiohttp.ClientSession() as http:

        async def post(path: str, body: bytes, headers: dict[str, str], what: str) -> int:
            async with http.post(base + path, data=body, headers=headers) as r:
                text = await r.text()
                tally.injected["http"] += 1
                tally.answers[f"http {r.status}"] += 1
                if r.status >= 500:
                    tally.bad(f"POST {path} {what}: {r.status} {text[:200]}")
                elif r.status in (400, 413, 422) and "error" not in text:
                    tally.bad(f"POST {path} {what}: {r.status} without a reason: {text[:200]}")
                return r.status

        for what, body in hostile_bodies():
            status = await post("/orders", body, web_key, what)
            if status not in (200, 202, 413, 422):
                tally.bad(f"POST /orders {what}: {status}")
            if status in (200, 202) and what.startswith(("hostile text", "external id with")):
                pass  # odd but valid text is an order like any other
            elif status in (200, 202):
                tally.bad(f"POST /orders {what}: accepted ({status})")
            if unparseable(body) and status != 413:
                tally.dead.append(dead_letter_of_payload(what, body, "intake-http"))
        for what, headers in (
            ("no key", {}),
            ("wrong key", {"Authorization": "Bearer nope"}),
            ("hostile key", {"Authorization": "Bearer " + "\u00ff" * 300}),
        ):
            status = await post("/orders", orjson.dumps(order_doc()), headers, what)
            if status != 401:
                tally.bad(f"POST /orders {what}: {status}, expected 401")
        for what, body in [
            ("batch not JSON", b"[[[["),
            ("batch without orders", b'{"order": []}'),
            ("batch orders as text", b'{"orders": "all of them"}'),
            ("batch too many", orjson.dumps({"orders": [{}] * 1001})),
            ("batch of garbage", orjson.dumps({"orders": [1, None, "x", [], {"lines": 5}]})),
        ]:
            status = await post("/orders:batch", body, web_key, what)
            if status >= 500 or (status in (200, 202) and what != "batch of garbage"):
                tally.bad(f"POST /orders:batch {what}: {status}")
            if what == "batch not JSON":
                tally.dead.append(dead_letter_of_payload(what, body, "intake-batch"))
        for item in (b"1", b"null", b'"x"', b"[]"):
            tally.dead.append(dead_letter_of_payload(f"batch item {item!r}", item, "intake-batch"))
        for path in ("/orders/" + "x" * 5000, "/orders/..%2F..%2Fetc", "/orders?limit=abc"):
            async with http.get(base + path, headers=web_key) as r:
                tally.injected["http"] += 1
                tally.answers[f"http {r.status}"] += 1
                if r.status >= 500:
                    tally.bad(f"GET {path[:40]}: {r.status}")


async def intake_nats(nc: NATS, tally: Tally) -> list[int]:
    """Hostile submissions on the submit subjects; returns their stream sequences."""
    js = nc.jetstream()
    seqs = []
    for channel in ("web", "wechat", "marketplace", "phone", "no-such-channel"):
        for what, body in hostile_bodies():
            if len(body) > 900_000:
                continue  # past the server's max_payload: the publisher is refused, not us
            ack = await js.publish(subjects.submission(channel), body)
            tally.injected["nats submit"] += 1
            seqs.append(ack.seq)
            if unparseable(body):
                seq = ack.seq

                def matches(msg: Msg, seq: int = seq) -> bool:
                    return (msg.headers or {}).get("Orderflow-Stream-Seq") == str(seq)

                tally.dead.append(
                    invariants.ExpectedDeadLetter(f"{what} on {channel}", matches, "")
                )
    return seqs


async def commands(nc: NATS, system: InProcessSystem, tally: Tally) -> None:
    """Every command of every service, sent by an admin operator (so the payload is what is
    judged), with payloads that are wrong in shape or type."""
    payloads: list[bytes] = [
        b"not json",
        b"[]",
        b"{}",
        orjson.dumps({"order_id": 12, "sku": ["x"], "quantity": "lots", "warehouse": None}),
        orjson.dumps({"order_id": "x" * 10_000, "sku": "TEA-001", "quantity": -5}),
        json.dumps({"channel": "a.b", "order": "x", "orders": {"a": 1}, "limit": 10**30}).encode(),
        orjson.dumps({"customer": {"$gt": ""}, "delivery_id": "' OR 1=1 --"}),
    ]
    for service, rt in system.runtimes.items():
        for name in rt.rpc.commands:
            for body in payloads:
                reply_msg = await nc.request(
                    subjects.rpc(service, name), body, timeout=10, headers=ADMIN
                )
                reply = orjson.loads(reply_msg.data)
                tally.injected["nats command"] += 1
                tally.answers["command ok" if reply.get("ok") else "command refused"] += 1
                if reply.get("ok"):
                    tally.answered.add(f"{service}.{name}")
                if "internal error" in str(reply.get("error", "")):
                    tally.bad(f"{service}.{name} {body[:60]!r}: {reply['error'][:200]}")
                elif reply.get("ok") and name in MUTATING and body != b"{}":
                    tally.bad(f"{service}.{name} {body[:60]!r} accepted: {str(reply)[:200]}")


# An admin operator may run every command: what is refused is refused for its content.
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MUTATING = {"restock", "adjust", "transfer", "submit", "submit_batch", "cancel", "pick", "pack"}


async def other_http_routes(system: InProcessSystem, tally: Tally) -> None:
    """Every POST/PUT route of inventory, fulfillment and notify, with garbage bodies."""
    async with aiohttp.ClientSession() as http:
        for service in ("inventory", "fulfillment", "notify"):
            rt = system.runtimes[service]
            base = f"http://127.0.0.1:{rt.http_port}"
            for route in rt.http.router.routes():
                if route.method not in ("POST", "PUT"):
                    continue
                path = re.sub(
                    r"\{[^}]+\}", "nope-" + uuid.uuid4().hex[:6], route.resource.canonical
                )  # type: ignore[union-attr]
                for body in (b"not json", b"[]", b'{"quantity": "many", "sku": 5}', b"{}"):
                    async with http.request(
                        route.method, base + path, data=body, headers=ADMIN
                    ) as r:
                        tally.injected["http"] += 1
                        tally.answers[f"http {r.status}"] += 1
                        if r.status >= 500 or r.status < 400:
                            text = await r.text()
                            tally.bad(
                                f"{service} {route.method} {path} {body!r}: {r.status} {text[:200]}"
                            )


def envelope(event_type: str, version: Any, data: Any, **changes: Any) -> bytes:
    doc = {
        "event_id": uuid7(),
        "type": event_type,
        "schema_version": version,
        "occurred_at": datetime.now(UTC).isoformat(),
        "producer": "intake",
        "key": "k",
        "correlation_id": "k",
        "causation_id": None,
        "data": data,
        **changes,
    }
    return orjson.dumps(doc)


async def events(nc: NATS, system: InProcessSystem, tally: Tally) -> None:
    """Garbage and unknown versions on the subjects services consume from each other: every
    consumer of the subject must park each message, with why."""
    js = nc.jetstream()
    accepted = orjson.loads(orjson.dumps(order_doc()))
    subject = subjects.event(subjects.INTAKE, "order_accepted", uuid7())
    # Every consumer of order_accepted must park each of these, with why.
    consumers = ("inventory-orders", "notify-intake")
    duplicate = {
        "order_id": uuid7(),
        "channel": "web",
        "external_id": "ext-1",
        "submitted_at": datetime.now(UTC).isoformat(),
    }
    cases = [
        ("not JSON", b"\x00\x01garbage", "undecodable"),
        ("JSON array", b"[]", "undecodable"),
        ("unknown schema version", envelope("order_accepted", 99, accepted), "newer than"),
        ("old version, no upcaster", envelope("order_accepted", 0, accepted), "no upcaster"),
        ("version as text", envelope("order_accepted", "1", accepted), "schema_version"),
        ("data of the wrong type", envelope("order_accepted", 1, {"lines": "x"}), "validation"),
        ("no event id", envelope("order_accepted", 1, accepted, event_id=None), "undecodable"),
        ("another type on this subject", envelope("order_duplicate", 1, duplicate), ""),
        ("unknown type", envelope("order_teleported", 1, {}), "unknown event type"),
    ]
    for what, body, reason in cases:
        await js.publish(subject, body)
        tally.injected["events"] += 1
        for consumer in consumers:

            def matches(msg: Msg, body: bytes = body, consumer: str = consumer) -> bool:
                return (msg.headers or {}).get("Orderflow-Consumer") == consumer and (
                    msg.data == body
                )

            tally.dead.append(
                invariants.ExpectedDeadLetter(f"{what} ({consumer})", matches, reason)
            )
    # The same on the other streams' subjects, for each of their consumers.
    for producer, event_type, its_consumers in (
        (subjects.INVENTORY, "stock_reserved", ("fulfillment-reservations", "intake-status-view")),
        (
            subjects.FULFILLMENT,
            "shipment_shipped",
            ("inventory-shipments", "intake-shipment-view", "notify-fulfillment"),
        ),
        (
            subjects.FULFILLMENT,
            "order_cancelled",
            ("inventory-shipments", "intake-cancellation-view", "notify-fulfillment"),
        ),
    ):
        for what, body, reason in (
            ("not JSON", f"garbage {event_type}".encode(), "undecodable"),
            (f"{event_type} v99", envelope(event_type, 99, {"who": event_type}), "newer than"),
        ):
            await js.publish(subjects.event(producer, event_type, uuid7()), body)
            tally.injected["events"] += 1
            for consumer in its_consumers:

                def on(msg: Msg, body: bytes = body, consumer: str = consumer) -> bool:
                    return (msg.headers or {}).get("Orderflow-Consumer") == consumer and (
                        msg.data == body
                    )

                tally.dead.append(invariants.ExpectedDeadLetter(f"{what} ({consumer})", on, reason))


class Cli:
    def __init__(self, system: InProcessSystem) -> None:
        self.env = {
            "ORDERFLOW_HOME": str(system.home),
            "ORDERFLOW_NATS_URL": system.nats_url,
            "ORDERFLOW_INTAKE_URL": f"http://127.0.0.1:{system.runtimes['intake'].http_port}",
        }

    async def run(self, *argv: str) -> tuple[int, str]:
        def call() -> tuple[int, str]:
            out, err = io.StringIO(), io.StringIO()
            with (
                patch.dict("os.environ", self.env),
                patch.object(sys, "stdout", out),
                patch.object(sys, "stderr", err),
            ):
                try:
                    code = cli_main(list(argv))
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except Exception as exc:  # what a shell would show as a traceback
                    return 99, f"Traceback: {exc!r}"
            return code, out.getvalue() + err.getvalue()

        return await asyncio.to_thread(call)


def sheet_files(folder: Path) -> list[tuple[str, Path]]:
    header = [
        "order_ref",
        "customer_name",
        "email",
        "sku",
        "quantity",
        "unit_price",
        "currency",
        "ship_to",
        "address_line1",
        "city",
        "postal_code",
        "country",
    ]

    def write_csv(name: str, rows: list[list[Any]], encoding: str = "utf-8") -> Path:
        path = folder / name
        buf = io.StringIO()
        csv.writer(buf).writerows(rows)
        path.write_bytes(buf.getvalue().encode(encoding, errors="replace"))
        return path

    base = [
        "Mei Lin",
        "mei@example.com",
        "TEA-001",
        "2",
        "12.50",
        "CNY",
        "Mei Lin",
        "1 Road",
        "Hangzhou",
        "310000",
        "CN",
    ]
    files = [
        ("empty file", write_csv("empty.csv", [])),
        ("header only", write_csv("header.csv", [header])),
        ("no required columns", write_csv("cols.csv", [["a", "b"], ["1", "2"]])),
        (
            "wrong types",
            write_csv("types.csv", [header, ["R-1", *base[:3], "two", "abc", *base[5:]]]),
        ),
        ("formula injection", write_csv("formula.csv", [header, ["=cmd|' /C calc'!A0", *base]])),
        ("huge quantity", write_csv("huge.csv", [header, ["R-2", *base[:3], "9" * 50, *base[4:]]])),
        ("latin-1 bytes", write_csv("latin.csv", [header, ["R-3", "Zoë Ñ", *base[1:]]], "latin-1")),
        ("a 200 kB cell", write_csv("cell.csv", [header, ["R-4", "x" * 200_000, *base[1:]]])),
        ("NUL bytes", write_csv("nul.csv", [header, ["R-5\x00", *base]])),
    ]
    binary = folder / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 50)
    files.append(("binary junk as .csv", binary))
    fake = folder / "fake.xlsx"
    fake.write_bytes(b"PK\x03\x04 this is not a workbook")
    files.append(("not a workbook", fake))
    bomb = folder / "zip.xlsx"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("xl/worksheets/sheet1.xml", b"<" * 5_000_000)
    files.append(("a zip that is not a workbook", bomb))
    wrong_kind = folder / "orders.pdf"
    wrong_kind.write_bytes(b"%PDF-1.4")
    files.append(("wrong file kind", wrong_kind))
    files.append(("missing file", folder / "nowhere.csv"))
    return files


async def cli_imports(system: InProcessSystem, tally: Tally, folder: Path) -> None:
    cli = Cli(system)
    for what, path in sheet_files(folder):
        code, output = await cli.run("import", str(path))
        tally.injected["cli import"] += 1
        tally.answers[f"cli exit {code}"] += 1
        if code not in (0, 1) or "Traceback" in output or "internal error" in output:
            tally.bad(f"import {what}: exit {code}: {output[-300:]}")
        elif code == 1 and not output.strip():
            tally.bad(f"import {what}: refused without saying why")


async def test_hostile_inputs_on_every_entry_point_change_nothing_and_crash_nothing(
    system: InProcessSystem, tmp_path: Path
) -> None:
    tally = Tally()
    nc = await connect(system.nats_url)
    try:
        await intake_http(system, tally)
        seqs = await intake_nats(nc, tally)
        await commands(nc, system, tally)
        await other_http_routes(system, tally)
        await events(nc, system, tally)
        await cli_imports(system, tally, tmp_path)
        # The same system, afterwards: a load of valid orders goes through as if nothing happened.
        items = demo.plan(80, seed=31, channels=("web", "wechat", "marketplace"), run_id="hi")
        await publish_load(nc.jetstream(), items, rate=40)
    finally:
        await nc.close()
    observed = invariants.Observed(system.nats_url, system.database_urls)
    await invariants.settle(observed, items, timeout=120)
    report = await invariants.check(
        observed, items, dead_letters=tally.dead, seeded=invariants.SEEDED
    )
    rejected = await rejections_of(observed, seqs)
    print(
        f"\nhostile inputs injected {dict(tally.injected)}; answers {dict(tally.answers)}; "
        f"{len(tally.dead)} dead letters expected; commands that answered: "
        f"{sorted(tally.answered)}; {report.figures}"
    )
    missing = [s for s in seqs if rejected.get(s) != 1]
    assert not missing, f"hostile NATS submissions without exactly one rejection: {missing[:10]}"
    problems = tally.problems + report.violations
    assert not problems, "\n".join(problems[:40])
    for service, rt in system.runtimes.items():
        assert rt.nc is not None and rt.nc.is_connected, f"{service} lost NATS"
        assert all(c._task is not None and not c._task.done() for c in rt.consumers), service


async def rejections_of(observed: invariants.Observed, seqs: list[int]) -> dict[int, int]:
    """How many rejections name each submission's stream position."""
    nc = await connect(observed.nats_url)
    try:
        events = await invariants.read_stream(nc.jetstream(), streams.INTAKE.name)
    finally:
        await nc.close()
    wanted = {f"{streams.SUBMISSIONS.name}:{s}": s for s in seqs}
    found: collections.Counter[int] = collections.Counter()
    for msg in events:
        env = invariants._envelope(msg)
        source = env["data"].get("submission") if env.get("type") == "order_rejected" else None
        if source in wanted:
            found[wanted[source]] += 1
    return dict(found)
