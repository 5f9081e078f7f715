"""Where notifications go once their transaction has committed.

A sink takes a whole batch at once, so a sink that can batch (one file write, one SMTP session,
one webhook call) pays its cost per batch, not per notification. More sinks (webhook, e-mail)
implement the same protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import orjson

from services.notify.domain import Notification


class Sink(Protocol):
    name: str

    async def send(self, batch: Sequence[Notification]) -> None:
        """Deliver every notification of the batch, or raise (they stay pending and are
        handed over again later, so a sink must tolerate seeing one twice)."""
        ...


class LogFileSink:
    """Appends one JSON line per notification to a file: the foundation's stand-in for real
    delivery, and a record an operator can tail."""

    name = "log"

    def __init__(self, path: Path) -> None:
        self.path = path
        # The consumer and the resend job may write at once; one write at a time keeps every
        # batch's lines together.
        self._lock = asyncio.Lock()

    async def send(self, batch: Sequence[Notification]) -> None:
        if not batch:
            return
        data = b"".join(orjson.dumps(_line(n)) + b"\n" for n in batch)
        async with self._lock:
            await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as out:
            out.write(data)


def _line(n: Notification) -> dict[str, str]:
    return {
        "notification_id": n.notification_id,
        "order_id": n.order_id,
        "template": n.template,
        "locale": n.locale,
        "recipient": n.recipient,
        "subject": n.subject,
        "body": n.body,
        "created_at": datetime.fromtimestamp(n.created_at, UTC).isoformat(),
        "source_event_id": n.source_event_id,
    }
