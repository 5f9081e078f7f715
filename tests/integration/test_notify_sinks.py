"""The webhook and e-mail sinks against real local servers: an aiohttp endpoint that checks the
signature the way a receiver would, and an aiosmtpd SMTP server. The receivers are used by the
service tests too (test_notify_service.py)."""

from __future__ import annotations

import asyncio
import email
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from services.notify.domain import Notification, Route
from services.notify.sinks import EmailSink, Outgoing, SmtpServer, WebhookSink
from shared.embedded_nats import free_port
from shared.ids import uuid7

SECRET = "test-secret-0123456789"


@dataclass
class WebhookCall:
    at: float
    headers: dict[str, str]
    doc: dict[str, Any]
    status: int


class WebhookReceiver:
    """A webhook endpoint that verifies each call's signature with its own copy of the secret
    (refusing a bad one with 401) and answers from a script of statuses (the last repeats)."""

    def __init__(
        self, secret: str = SECRET, statuses: Sequence[int] = (200,), delay_s: float = 0.0
    ) -> None:
        self.secret = secret.encode()
        self.statuses = list(statuses)
        self.delay_s = delay_s
        self.calls: list[WebhookCall] = []
        self.bad_signatures = 0
        self.finished = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    def verify(self, headers: Any, raw: bytes) -> bool:
        timestamp = headers.get("Orderflow-Timestamp", "")
        given = headers.get("Orderflow-Signature", "")
        mac = hmac.new(self.secret, f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
        return fresh and hmac.compare_digest(given, f"sha256={mac}")

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not self.verify(request.headers, raw):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        status = self.statuses[min(len(self.statuses) - 1, len(self.calls))]
        self.calls.append(
            WebhookCall(time.monotonic(), dict(request.headers), orjson.loads(raw), status)
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.finished += 1
        return web.Response(status=status, text="ok" if status < 300 else "try later")

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [c.doc for c in self.calls if 200 <= c.status < 300]

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class SmtpReceiver:
    """A real SMTP server (aiosmtpd, in its own thread) that keeps every message it accepts and
    refuses mailboxes starting with ``nobody@``."""

    messages: list[EmailMessage] = field(default_factory=list)
    port: int = 0
    _controller: Controller | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content, policy=default_policy)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 Message accepted"

    async def start(self) -> int:
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        await asyncio.to_thread(self._controller.start)
        return self.port

    async def stop(self) -> None:
        if self._controller is not None:
            await asyncio.to_thread(self._controller.stop)


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpReceiver]:
    server = SmtpReceiver()
    await server.start()
    yield server
    await server.stop()


def outgoing(
    address: str = "mei.lin@example.com", subject: str = "您的订单 W-1 已发货"
) -> Outgoing:
    return Outgoing(
        delivery_id=uuid7(),
        attempt=1,
        address=address,
        notification=Notification(
            notification_id=uuid7(),
            source_event_id=uuid7(),
            order_id=uuid7(),
            template="order_shipped",
            audience="customer",
            locale="zh-CN",
            recipient=address,
            subject=subject,
            body="Mei Lin，您好：\n\n运单号：SF123",  # noqa: RUF001 (full-width punctuation)
            created_at=time.time(),
        ),
    )


HOOK = Route("webhook", "webhook", frozenset({"customer"}))
MAIL = Route("email", "email", frozenset({"all"}))


async def test_a_webhook_call_is_signed_so_the_receiver_can_verify_it() -> None:
    receiver = WebhookReceiver()
    url = await receiver.start()
    sink = WebhookSink(url, SECRET, HOOK, timeout_s=5)
    item = outgoing()
    try:
        [outcome] = await sink.send([item])
    finally:
        await sink.close()
        await receiver.stop()

    assert outcome.ok and outcome.status_code == 200
    assert receiver.bad_signatures == 0
    [call] = receiver.calls
    assert call.headers["Orderflow-Delivery-Id"] == item.delivery_id
    assert call.headers["Orderflow-Event"] == "order_shipped"
    assert call.doc["delivery_id"] == item.delivery_id
    assert call.doc["subject"] == "您的订单 W-1 已发货"
    assert call.doc["order_id"] == item.notification.order_id


async def test_a_call_signed_with_another_secret_is_refused_by_the_receiver() -> None:
    receiver = WebhookReceiver()
    url = await receiver.start()
    sink = WebhookSink(url, "not-the-receivers-secret", HOOK, timeout_s=5)
    try:
        [outcome] = await sink.send([outgoing()])
    finally:
        await sink.close()
        await receiver.stop()

    assert receiver.bad_signatures == 1 and receiver.calls == []
    # 401 will not get better by itself: given up at once rather than retried for an hour.
    assert not outcome.ok and not outcome.retryable and outcome.status_code == 401


async def test_server_errors_timeouts_and_refused_connections_are_retryable() -> None:
    failing = WebhookReceiver(statuses=[503, 400, 429])
    slow = WebhookReceiver(delay_s=2)
    failing_url, slow_url = await failing.start(), await slow.start()
    closed_url = f"http://127.0.0.1:{free_port()}/hook"
    sinks = [
        WebhookSink(failing_url, SECRET, HOOK, timeout_s=5),
        WebhookSink(slow_url, SECRET, HOOK, timeout_s=0.3),
        WebhookSink(closed_url, SECRET, HOOK, timeout_s=2),
    ]
    try:
        unavailable, bad_request, too_many = [
            (await sinks[0].send([outgoing()]))[0] for _ in range(3)
        ]
        started = time.monotonic()
        [timed_out] = await sinks[1].send([outgoing()])
        waited = time.monotonic() - started
        [refused] = await sinks[2].send([outgoing()])
    finally:
        for sink in sinks:
            await sink.close()
        await failing.stop()
        await slow.stop()

    assert (unavailable.ok, unavailable.retryable, unavailable.status_code) == (False, True, 503)
    assert unavailable.error == "HTTP 503: try later"
    assert (bad_request.retryable, bad_request.status_code) == (False, 400)
    assert (too_many.retryable, too_many.status_code) == (True, 429)
    assert (
        not timed_out.ok
        and timed_out.retryable
        and "timed out after 0.3s" in (timed_out.error or "")
    )
    assert waited < 1.5
    assert not refused.ok and refused.retryable


async def test_a_batch_of_emails_reaches_a_real_smtp_server_in_one_session(
    smtp: SmtpReceiver,
) -> None:
    sink = EmailSink(SmtpServer("127.0.0.1", smtp.port, "shop@example.com", timeout_s=5), MAIL)
    items = [outgoing(), outgoing("li.wei@example.com", "Your order W-2 has shipped")]

    outcomes = await sink.send(items)

    assert [o.ok for o in outcomes] == [True, True]
    first, second = smtp.messages
    assert first["To"] == "mei.lin@example.com" and first["From"] == "shop@example.com"
    assert first["Subject"] == "您的订单 W-1 已发货"
    assert first["Message-ID"] == f"<{items[0].delivery_id}@orderflow>"
    body = first.get_body()
    assert body is not None and "运单号：SF123" in body.get_content()  # noqa: RUF001
    assert second["To"] == "li.wei@example.com"
    assert second["Subject"] == "Your order W-2 has shipped"


async def test_a_refused_mailbox_fails_alone_and_for_good(smtp: SmtpReceiver) -> None:
    sink = EmailSink(SmtpServer("127.0.0.1", smtp.port, "shop@example.com", timeout_s=5), MAIL)

    good, gone = await sink.send([outgoing(), outgoing("nobody@example.com")])

    assert good.ok
    assert not gone.ok and not gone.retryable and gone.status_code == 550
    assert "no such mailbox" in (gone.error or "")
    assert [m["To"] for m in smtp.messages] == ["mei.lin@example.com"]


async def test_an_smtp_server_that_is_down_fails_every_delivery_retryably() -> None:
    sink = EmailSink(SmtpServer("127.0.0.1", free_port(), "shop@example.com", timeout_s=2), MAIL)

    outcomes = await sink.send([outgoing(), outgoing()])

    assert [(o.ok, o.retryable) for o in outcomes] == [(False, True), (False, True)]
    assert "SMTP connect" in (outcomes[0].error or "")
