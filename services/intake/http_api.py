"""Intake's HTTP API, for channels that cannot speak NATS. Every /orders route wants
``Authorization: Bearer <key>``: a channel's key submits as that channel and sees only that
channel's orders; an operator's token sees them all and cancels if its role allows. The routes are described in openapi.py,
served on GET /openapi.json (a test checks the two agree)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from services.intake import domain, handlers, openapi
from services.intake.auth import Principal
from shared import audit
from shared.contracts.intake import MAX_SUBMISSION_BYTES, SubmissionAnswer
from shared.operators import bearer_token, roles_for

if TYPE_CHECKING:
    from services.intake.app import Intake
    from shared.runtime import ServiceRuntime

SERVICE = "intake"
BATCH_MAX = 1000
MAX_BATCH_BYTES = 16 * 1024 * 1024
STATUSES = frozenset({*domain.STATUS_RANK, "rejected"})

Handler = Callable[[web.Request], Awaitable[web.Response]]


def register(rt: ServiceRuntime, intake: Intake) -> None:
    api = HttpApi(intake)
    router = rt.http.router
    router.add_post("/orders", api.post_order)
    router.add_post("/orders:batch", api.post_batch)
    router.add_get("/orders", api.get_orders)
    router.add_get("/orders/{order_id}", api.get_order)
    router.add_get("/orders/{order_id}/trace", api.get_trace)
    router.add_post("/orders/{order_id}/cancel", api.post_cancel)
    router.add_get("/openapi.json", api.get_openapi)


def problem(status: int, error: str, errors: list[dict[str, str]] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if errors:
        body["errors"] = errors
    headers = {"WWW-Authenticate": 'Bearer realm="orderflow-intake"'} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


class HttpApi:
    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.document = openapi.document()

    def caller(self, request: web.Request) -> Principal | None:
        return self.intake.keys.principal(request.headers.get("Authorization"))

    async def post_order(self, request: web.Request) -> web.Response:
        who = self.caller(request)
        if who is None:
            return _unauthorised(self.intake)
        if who.kind != "channel":
            return problem(403, "an operator key cannot submit orders; use the channel's key")
        raw = await _read_body(request, MAX_SUBMISSION_BYTES)
        if raw is None:
            return _too_large(MAX_SUBMISSION_BYTES)
        item = handlers.Submission(who.name, raw, datetime.now(UTC), "http")
        [answer] = await self.intake.submit([item])
        status = {"accepted": 202, "duplicate": 200, "rejected": 422}[answer.outcome]
        return web.json_response(answer.model_dump(mode="json", exclude_none=True), status=status)

    async def post_batch(self, request: web.Request) -> web.Response:
        who = self.caller(request)
        if who is None:
            return _unauthorised(self.intake)
        if who.kind != "channel":
            return problem(403, "an operator key cannot submit orders; use the channel's key")
        raw = await _read_body(request, MAX_BATCH_BYTES)
        if raw is None:
            return _too_large(MAX_BATCH_BYTES)
        now = datetime.now(UTC)
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # Not even JSON: kept raw as one rejected submission (and a dead letter), answered.
            [answer] = await self.intake.submit([handlers.Submission(who.name, raw, now, "batch")])
            return web.json_response(answer.model_dump(mode="json"), status=422)
        batch = doc.get("orders") if isinstance(doc, dict) else None
        if not isinstance(batch, list):
            return problem(
                400,
                "a batch is {'orders': [order, ...]}",
                [{"field": "orders", "reason": "a list of orders is required"}],
            )
        if len(batch) > BATCH_MAX:
            return problem(
                413,
                f"a batch holds at most {BATCH_MAX} orders, not {len(batch)}",
                [{"field": "orders", "reason": f"at most {BATCH_MAX} orders"}],
            )
        items = [handlers.Submission(who.name, orjson.dumps(o), now, "batch") for o in batch]
        answers = await self.intake.submit(items) if items else []
        return web.json_response(batch_result(answers), status=200)

    async def get_order(self, request: web.Request) -> web.Response:
        who = self.caller(request)
        if who is None:
            return _unauthorised(self.intake)
        view = await self.intake.status(request.match_info["order_id"])
        # Another channel's order is reported as unknown: its existence is not this caller's.
        if view is None or not who.may_see(view["channel"]):
            return problem(404, "no such order")
        return web.json_response(view)

    async def get_trace(self, request: web.Request) -> web.Response:
        """What every service knows of the order, merged into one timeline (shared.audit)."""
        who = self.caller(request)
        if who is None:
            return _unauthorised(self.intake)
        order_id = request.match_info["order_id"]
        view = await self.intake.status(order_id)
        nc = self.intake.rt.nc
        if view is None or not who.may_see(view["channel"]) or nc is None:
            return problem(404, "no such order")
        # An operator's trace is asked with the operator's own token. A channel (its key is no
        # operator token) is answered with intake's own, ORDERFLOW_TOKEN where one is
        # configured; without it the answer names the services that refused.
        token = (
            bearer_token(request.headers.get("Authorization")) if who.kind == "operator" else None
        )
        return web.json_response(await audit.gather_trace(nc, order_id, token=token))

    async def get_orders(self, request: web.Request) -> web.Response:
        who = self.caller(request)
        if who is None:
            return _unauthorised(self.intake)
        try:
            filters = list_filters(request.query)
        except ValueError as exc:
            return problem(400, str(exc))
        if who.kind == "channel":
            if filters.get("channel") not in (None, who.name):
                return problem(403, f"the key of channel {who.name} sees only its own orders")
            filters["channel"] = who.name
        return web.json_response(await self.intake.orders(**filters))

    async def post_cancel(self, request: web.Request) -> web.Response:
        who = self.caller(request)
        if who is None:
            return _unauthorised(self.intake)
        raw = await _read_body(request, 8192)
        if raw is None:
            return _too_large(8192)
        reason = "cancelled on request"
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
            if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
                return problem(400, "the body, if any, is {'reason': '...'}")
            reason = (body.get("reason") or reason)[:500]
        if who.kind == "operator" and who.role not in roles_for(SERVICE, "cancel"):
            needs = " or ".join(sorted(roles_for(SERVICE, "cancel")))
            return problem(
                403, f"operator {who.name!r} has the role {who.role}; cancelling needs {needs}"
            )
        only = who.name if who.kind == "channel" else None
        answer = await self.intake.cancel(
            request.match_info["order_id"], reason, who.actor, only_channel=only
        )
        if answer is None:
            return problem(404, "no such order")
        status = {"requested": 202, "pending": 200, "refused": 409}[answer.outcome]
        return web.json_response(answer.as_dict(), status=status)

    async def get_openapi(self, _request: web.Request) -> web.Response:
        return web.json_response(self.document)


def list_filters(params: Mapping[str, Any]) -> dict[str, Any]:
    """The list query (HTTP query string or NATS payload), checked; ValueError says what is wrong."""
    filters: dict[str, Any] = {}
    status = params.get("status")
    if status:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(sorted(STATUSES))}")
        filters["status"] = status
    channel = params.get("channel")
    if channel:
        filters["channel"] = str(channel)
    since = params.get("since")
    if since not in (None, ""):
        filters["since"] = _instant(since)
    flagged = params.get("flagged")
    if flagged not in (None, ""):
        if str(flagged).lower() not in ("true", "false"):
            raise ValueError("flagged must be true or false")
        filters["flagged"] = str(flagged).lower() == "true"
    after = params.get("after")
    if after:
        filters["after"] = str(after)
    limit = params.get("limit")
    if limit not in (None, ""):
        try:
            filters["limit"] = int(limit)
        except (TypeError, ValueError) as exc:
            raise ValueError("limit must be a whole number") from exc
        if not 1 <= filters["limit"] <= handlers.LIST_MAX:
            raise ValueError(f"limit must be between 1 and {handlers.LIST_MAX}")
    return filters


def _instant(value: Any) -> float:
    """An RFC 3339 time (a date alone means its midnight UTC) or epoch seconds."""
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"since must be an RFC 3339 time or epoch seconds, not {text!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def batch_result(answers: list[SubmissionAnswer]) -> dict[str, Any]:
    """The answer to a batch: one answer per order, in the order sent, and the counts."""
    counts = {"accepted": 0, "rejected": 0, "duplicate": 0}
    for answer in answers:
        counts[answer.outcome] += 1
    return {
        **counts,
        "answers": [a.model_dump(mode="json", exclude_none=True) for a in answers],
    }


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The body, or None if it is larger than ``limit`` (without reading past the limit)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    # read(n) returns what has arrived so far, not n bytes: read until the end of the body.
    while chunk := await request.content.read(65536):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> web.Response:
    return web.json_response(
        {
            "outcome": "rejected",
            "errors": [{"field": "(body)", "reason": f"submission larger than {limit} bytes"}],
        },
        status=413,
    )


def _unauthorised(intake: Intake) -> web.Response:
    if not len(intake.keys):
        return problem(401, "no channel keys are configured on this intake, so no caller can be")
    return problem(401, "a valid channel key is required: Authorization: Bearer <key>")
