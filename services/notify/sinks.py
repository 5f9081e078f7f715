"""Where notifications go: a log file, webhooks, e-mail over SMTP.

A sink makes one attempt per delivery it is given and reports each one's outcome; it never
retries by itself and never raises for a refused delivery. Retries, backoff, the give-up and the
record of every attempt belong to the delivery worker (``delivery.py``), so they survive a
restart and are the same for every sink. A sink takes a whole batch at once, so a sink that can
batch (one file write, one SMTP session) pays its cost per batch.

Each delivery carries its id; receivers use it to drop a repeat, which can happen when a worker
dies after sending but before recording it (the claim lease then expires and it is sent again).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import smtplib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson

from services.notify.domain import (
    AttemptOutcome,
    Notification,
    Route,
    SinkKind,
    parse_selector,
)
from services.notify.settings import NotifySettings

SIGNATURE_HEADER = "Orderflow-Signature"
TIMESTAMP_HEADER = "Orderflow-Timestamp"
DELIVERY_HEADER = "Orderflow-Delivery-Id"
ATTEMPT_HEADER = "Orderflow-Attempt"
EVENT_HEADER = "Orderflow-Event"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One delivery attempt handed to a sink."""

    delivery_id: str
    attempt: int
    address: str
    notification: Notification


class Sink(Protocol):
    route: Route

    @property
    def name(self) -> str: ...

    async def send(self, batch: Sequence[Outgoing]) -> list[AttemptOutcome]:
        """Attempt each delivery once; one outcome per item, in order."""
        ...

    async def close(self) -> None: ...


def payload_of(item: Outgoing) -> dict[str, Any]:
    """What a webhook receives and the log file holds for one delivery."""
    n = item.notification
    return {
        "delivery_id": item.delivery_id,
        "attempt": item.attempt,
        "notification_id": n.notification_id,
        "source_event_id": n.source_event_id,
        "order_id": n.order_id,
        "template": n.template,
        "audience": n.audience,
        "locale": n.locale,
        "recipient": n.recipient,
        "address": item.address,
        "subject": n.subject,
        "body": n.body,
        "created_at": datetime.fromtimestamp(n.created_at, UTC).isoformat(),
    }


class LogFileSink:
    """Appends one JSON line per delivery to a file: the embedded demo's sink, and a record an
    operator can tail."""

    def __init__(self, path: Path, route: Route) -> None:
        self.path = path
        self.route = route
        # Two workers (or a resend) may write at once; one write at a time keeps every batch's
        # lines together.
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.route.sink

    async def send(self, batch: Sequence[Outgoing]) -> list[AttemptOutcome]:
        if not batch:
            return []
        started = time.perf_counter()
        data = b"".join(orjson.dumps(payload_of(item)) + b"\n" for item in batch)
        try:
            async with self._lock:
                await asyncio.to_thread(self._append, data)
        except OSError as exc:
            failed = AttemptOutcome(False, time.perf_counter() - started, f"log file: {exc}")
            return [failed] * len(batch)
        # One write for the batch: each delivery is charged its share of it.
        done = AttemptOutcome(True, (time.perf_counter() - started) / len(batch))
        return [done] * len(batch)

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as out:
            out.write(data)

    async def close(self) -> None:
        return None


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``: the timestamp is signed too, so a
    receiver that checks its age can refuse a replayed call."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


# A 4xx other than these means the endpoint refuses this message itself: trying it again
# cannot help, so it is given up at once (and alerted) instead of retried for an hour.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 409, 425, 429})


class WebhookSink:
    """POSTs each delivery as JSON, signed with the endpoint's secret."""

    def __init__(self, url: str, secret: str, route: Route, timeout_s: float = 10.0) -> None:
        self.url = url
        self.route = route
        self._secret = secret.encode()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return self.route.sink

    async def send(self, batch: Sequence[Outgoing]) -> list[AttemptOutcome]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        # Concurrent calls: a slow endpoint costs one timeout per batch, not per message.
        return list(await asyncio.gather(*(self._post(self._session, item) for item in batch)))

    async def _post(self, session: aiohttp.ClientSession, item: Outgoing) -> AttemptOutcome:
        body = orjson.dumps(payload_of(item))
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            DELIVERY_HEADER: item.delivery_id,
            ATTEMPT_HEADER: str(item.attempt),
            EVENT_HEADER: item.notification.template,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self._secret, timestamp, body),
        }
        started = time.perf_counter()
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                status = response.status
                text = (await response.text(errors="replace"))[:200] if status >= 300 else ""
        except TimeoutError:
            return AttemptOutcome(
                False,
                time.perf_counter() - started,
                f"timed out after {self._timeout.total:g}s",
            )
        except aiohttp.ClientError as exc:
            return AttemptOutcome(
                False, time.perf_counter() - started, f"{exc.__class__.__name__}: {exc}"
            )
        elapsed = time.perf_counter() - started
        if 200 <= status < 300:
            return AttemptOutcome(True, elapsed, status_code=status)
        retryable = status >= 500 or status in RETRYABLE_CLIENT_ERRORS or status < 400
        return AttemptOutcome(
            False,
            elapsed,
            f"HTTP {status}{': ' + text.strip() if text.strip() else ''}",
            retryable=retryable,
            status_code=status,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(frozen=True, slots=True)
class SmtpServer:
    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout_s: float = 10.0


class EmailSink:
    """Sends each delivery as a plain-text UTF-8 e-mail, one SMTP session per batch.

    smtplib runs in a worker thread: the event loop (and the consumers on it) never waits for
    the mail server.
    """

    def __init__(self, server: SmtpServer, route: Route) -> None:
        self.server = server
        self.route = route
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.route.sink

    async def send(self, batch: Sequence[Outgoing]) -> list[AttemptOutcome]:
        if not batch:
            return []
        async with self._lock:
            return await asyncio.to_thread(self._send_all, list(batch))

    def message_of(self, item: Outgoing) -> EmailMessage:
        n = item.notification
        msg = EmailMessage()
        msg["From"] = self.server.sender
        msg["To"] = item.address
        msg["Subject"] = n.subject
        msg["Date"] = formatdate(n.created_at, usegmt=True)
        # The same Message-ID on every attempt lets a mail system drop a repeat.
        msg["Message-ID"] = f"<{item.delivery_id}@orderflow>"
        msg[DELIVERY_HEADER] = item.delivery_id
        msg[EVENT_HEADER] = n.template
        msg.set_content(n.body, charset="utf-8")
        return msg

    def _send_all(self, batch: list[Outgoing]) -> list[AttemptOutcome]:
        s = self.server
        started = time.perf_counter()
        try:
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
        except (OSError, smtplib.SMTPException) as exc:
            failed = AttemptOutcome(
                False, time.perf_counter() - started, f"SMTP connect to {s.host}:{s.port}: {exc}"
            )
            return [failed] * len(batch)
        outcomes: list[AttemptOutcome] = []
        try:
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.username:
                smtp.login(s.username, s.password or "")
            for item in batch:
                outcomes.append(self._send_one(smtp, item))
        except (OSError, smtplib.SMTPException) as exc:
            # The session broke: what it did not get to is retried.
            lost = AttemptOutcome(False, time.perf_counter() - started, f"SMTP session: {exc}")
            outcomes.extend([lost] * (len(batch) - len(outcomes)))
        finally:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()
        return outcomes

    def _send_one(self, smtp: smtplib.SMTP, item: Outgoing) -> AttemptOutcome:
        started = time.perf_counter()
        try:
            smtp.send_message(self.message_of(item))
        except smtplib.SMTPRecipientsRefused as exc:
            (code, reason), *_ = exc.recipients.values()
            return _smtp_refusal(code, reason, time.perf_counter() - started)
        except smtplib.SMTPResponseException as exc:
            return _smtp_refusal(exc.smtp_code, exc.smtp_error, time.perf_counter() - started)
        return AttemptOutcome(True, time.perf_counter() - started)

    async def close(self) -> None:
        return None


def _smtp_refusal(code: int, reason: bytes | str, elapsed: float) -> AttemptOutcome:
    text = reason.decode(errors="replace") if isinstance(reason, bytes) else reason
    # 5xx is permanent (no such mailbox...); 4xx is "try again later".
    return AttemptOutcome(
        False, elapsed, f"SMTP {code}: {text}", retryable=code < 500, status_code=code
    )


def build_sinks(settings: NotifySettings) -> list[Sink]:
    """Every sink the settings configure; a sink whose selector is ``none`` is left out."""
    sinks: list[Sink] = []
    log_route = _route("log", "log", settings.notify_log_events)
    if log_route.selects:
        sinks.append(LogFileSink(settings.notification_log, log_route))
    if settings.notify_webhook_url and settings.notify_webhook_secret is not None:
        sinks.append(
            WebhookSink(
                settings.notify_webhook_url,
                settings.notify_webhook_secret.get_secret_value(),
                _route("webhook", "webhook", settings.notify_webhook_events),
                settings.notify_webhook_timeout_s,
            )
        )
    for endpoint in settings.notify_webhooks:
        sinks.append(
            WebhookSink(
                endpoint.url,
                endpoint.secret.get_secret_value(),
                _route(endpoint.name, "webhook", endpoint.events),
                endpoint.timeout_s,
            )
        )
    if settings.notify_smtp_host:
        sinks.append(
            EmailSink(
                SmtpServer(
                    host=settings.notify_smtp_host,
                    port=settings.notify_smtp_port,
                    sender=settings.notify_smtp_sender,
                    username=settings.notify_smtp_username,
                    password=(
                        settings.notify_smtp_password.get_secret_value()
                        if settings.notify_smtp_password
                        else None
                    ),
                    starttls=settings.notify_smtp_starttls,
                    timeout_s=settings.notify_smtp_timeout_s,
                ),
                _route(
                    "email", "email", settings.notify_smtp_events, settings.notify_operations_email
                ),
            )
        )
    return [s for s in sinks if s.route.selects]


def _route(
    name: str, kind: SinkKind, selector: str, operations_address: str | None = None
) -> Route:
    return Route(name, kind, parse_selector(selector), operations_address)
