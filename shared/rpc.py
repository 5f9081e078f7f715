"""Service commands over NATS request/reply, answered by any replica (queue group).

Reply body: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "...", "errors": [...]}``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import ValidationError

from shared import subjects
from shared.operators import NotAllowed, Operators, bearer_token, records_actor

log = logging.getLogger(__name__)

Command = Callable[[dict[str, Any]], Awaitable[Any]]


class CommandRefused(Exception):
    """A command that is understood but not allowed (bad input, illegal transition)."""

    def __init__(self, reason: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors = errors or []


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "reason": e["msg"]}
        for e in exc.errors()
    ]


class RpcServer:
    """Answers ``orderflow.rpc.<service>.<command>``. Every request carries an operator token
    (``Authorization: Bearer <token>`` header) whose role must allow the command; the operator
    becomes the ``actor`` of a change, whatever the payload claimed."""

    def __init__(self, service: str, operators: Operators) -> None:
        self.service = service
        self.operators = operators
        self.commands: dict[str, Command] = {}

    def register(self, name: str, command: Command) -> None:
        self.commands[name] = command

    async def start(self, nc: NATS) -> None:
        if self.commands:
            await nc.subscribe(
                subjects.rpc_all(self.service), queue=f"{self.service}-rpc", cb=self._on_request
            )

    async def _on_request(self, msg: Msg) -> None:
        name = msg.subject.rsplit(".", 1)[-1]
        reply: dict[str, Any]
        try:
            command = self.commands.get(name)
            if command is None:
                raise CommandRefused(f"unknown command {name!r}")
            token = bearer_token((msg.headers or {}).get("Authorization"))
            operator = self.operators.check(token, self.service, name)
            payload = orjson.loads(msg.data) if msg.data else {}
            if not isinstance(payload, dict):
                raise CommandRefused("the request body must be a JSON object")
            if records_actor(self.service, name):
                payload["actor"] = operator.actor(payload.get("actor"))
            reply = {"ok": True, "result": await command(payload)}
        except NotAllowed as exc:
            reply = {"ok": False, "error": exc.reason, "status": exc.status}
        except CommandRefused as exc:
            reply = {"ok": False, "error": exc.reason, "errors": exc.errors}
        except ValidationError as exc:
            reply = {"ok": False, "error": "invalid request", "errors": validation_errors(exc)}
        except orjson.JSONDecodeError as exc:
            reply = {"ok": False, "error": f"the request is not JSON: {exc}"}
        except Exception as exc:
            log.exception("command %s failed", name)
            reply = {"ok": False, "error": f"internal error: {exc}"}
        if msg.reply:
            await msg.respond(orjson.dumps(reply, default=str))


async def call(
    nc: NATS,
    service: str,
    command: str,
    payload: dict[str, Any],
    timeout: float = 5.0,
    token: str | None = None,
) -> Any:
    """Send a command as the operator ``token`` names (default: ``ORDERFLOW_TOKEN``) and return
    its result; raises CommandRefused with the service's reason."""
    token = token or os.environ.get("ORDERFLOW_TOKEN")
    msg = await nc.request(
        subjects.rpc(service, command),
        orjson.dumps(payload, default=str),
        timeout=timeout,
        headers={"Authorization": f"Bearer {token}"} if token else None,
    )
    reply = orjson.loads(msg.data)
    if not reply.get("ok"):
        raise CommandRefused(reply.get("error", "refused"), reply.get("errors"))
    return reply.get("result")
