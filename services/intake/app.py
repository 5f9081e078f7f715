"""Intake's wiring: the submission and status-view consumers, NATS commands, HTTP routes, stats."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from nats.aio.msg import Msg
from sqlalchemy.exc import IntegrityError

from services.intake import audit, domain, handlers, http_api
from services.intake.auth import ApiKeys, KeysError
from services.intake.metrics import IntakeMetrics
from services.intake.models import MIGRATIONS, metadata
from services.intake.routing import Router, RoutingError
from services.intake.settings import IntakeSettings
from shared import streams, subjects
from shared.consumer import ConsumerSpec, Incoming, UnitOfWork, decode_event_header
from shared.contracts.intake import SubmissionAnswer
from shared.operators import OperatorsError
from shared.rpc import CommandRefused
from shared.runtime import ServiceRuntime, StartupError
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

SERVICE = subjects.INTAKE
SUBMISSIONS_CONSUMER = "intake-submissions"
BATCH_MAX = 1000
# Downstream events that end or refuse a cancellation, and their handlers.
CANCEL_OUTCOMES = {
    "order_cancelled": handlers.record_cancelled,
    "cancellation_refused": handlers.record_cancel_refused,
}


def decode_submission(msg: Msg) -> Incoming:
    # The raw bytes go to the handler: an invalid submission is an answer (rejected), not a
    # poison message. The inbox key is the stream position, so a redelivery is not mistaken
    # for a second submission of the same order.
    meta = msg.metadata
    received = meta.timestamp if meta.timestamp else datetime.now(UTC)
    sub = handlers.Submission(
        subjects.channel_of_submission(msg.subject),
        msg.data,
        received,
        transport="nats",
        source=f"{meta.stream}:{meta.sequence.stream}",
    )
    seq = meta.sequence.stream
    return Incoming("submission", f"submit:{seq}", sub, msg.subject, seq)


class Intake:
    """The service's commands, shared by the NATS and HTTP entry points."""

    def __init__(self, rt: ServiceRuntime, settings: IntakeSettings) -> None:
        self.rt = rt
        self.settings = settings
        self.metrics = IntakeMetrics(rt.metrics)
        try:
            self.router = Router.from_file(settings.routing_rules_file)
            # A keys file of its own may name operators too; they act on every service's terms.
            rt.operators.add_file(settings.keys_file())
            self.keys = ApiKeys.load(settings.keys_file(), settings.channel_keys, rt.operators)
        except (RoutingError, KeysError, OperatorsError) as exc:
            raise StartupError(str(exc)) from exc
        self.policy = handlers.SubmissionPolicy(
            self.metrics, self.router, settings.suspect_window_s, self.park_dead_letters
        )

    async def submit(self, items: list[handlers.Submission]) -> list[SubmissionAnswer]:
        async def work(uow: UnitOfWork) -> list[SubmissionAnswer]:
            return await handlers.submit_orders(uow, items, self.policy)

        # Two requests racing with the same (channel, external_id): on PostgreSQL the loser's
        # insert violates the unique key; run it again and it sees the winner -> "duplicate".
        for attempt in range(3):
            try:
                return await self.rt.execute(work)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def park_dead_letters(self, dead: list[handlers.DeadLetter]) -> None:
        """Keep unparseable payloads, raw, in the dead-letter stream with the reason (their
        rejection, with the same bytes, is already committed)."""
        js = self.rt.js
        if js is None:
            return
        for letter in dead:
            item = letter.submission
            consumer = (
                SUBMISSIONS_CONSUMER if item.transport == "nats" else f"intake-{item.transport}"
            )
            headers = {
                "Nats-Msg-Id": f"dlq:intake:{letter.rejection_id}",
                "Orderflow-Error": letter.reason[:1000].replace("\r", " ").replace("\n", " "),
                "Orderflow-Original-Subject": subjects.submission(item.channel),
                "Orderflow-Consumer": consumer,
                "Orderflow-Channel": item.channel,
                "Orderflow-Transport": item.transport,
                "Orderflow-Rejection": letter.rejection_id,
            }
            if item.source:
                stream, _, seq = item.source.rpartition(":")
                headers.update({"Orderflow-Stream": stream, "Orderflow-Stream-Seq": seq})
            try:
                await js.publish(subjects.dead_letter(SERVICE, consumer), item.raw, headers=headers)
            except Exception as exc:
                # The rejection row keeps the same raw bytes: nothing is lost, only not parked.
                log.error(
                    "could not dead-letter rejected submission %s: %s", letter.rejection_id, exc
                )
                continue
            self.rt.metrics.dead_letters.labels(SERVICE, consumer).inc()
            log.warning(
                "unparseable submission on %s (%s) kept as a dead letter: %s",
                item.channel,
                item.transport,
                letter.reason,
            )

    async def status(self, order_id: str) -> dict[str, Any] | None:
        async with self.rt.db.reading() as conn:
            view = await handlers.order_status(conn, order_id)
        if view is not None and view.get("priority_rule") in self.router.by_name:
            rule = self.router.by_name[view["priority_rule"]]
            view["priority_reason"] = f"rule {rule.name!r}: {rule.explain()}"
        return view

    async def orders(self, **filters: Any) -> dict[str, Any]:
        async with self.rt.db.reading() as conn:
            return await handlers.list_orders(conn, **filters)

    async def cancel(
        self, order_id: str, reason: str, actor: str, only_channel: str | None = None
    ) -> handlers.CancelAnswer | None:
        async def work(uow: UnitOfWork) -> handlers.CancelAnswer | None:
            return await handlers.request_cancel(uow, order_id, reason, actor, only_channel)

        answer = await self.rt.execute(work)
        self.metrics.cancellations.labels(answer.outcome if answer else "unknown").inc()
        return answer


def create_service(settings: ServiceSettings | None = None) -> ServiceRuntime:
    if not isinstance(settings, IntakeSettings):
        # The launcher and tests pass the shared settings; intake's own come from the env.
        settings = IntakeSettings(**settings.model_dump()) if settings else IntakeSettings()
    rt = ServiceRuntime(
        SERVICE,
        settings,
        metadata,
        migrations=MIGRATIONS,
        # On the order's critical path: its writes keep one warm connection (shared/db.py).
        dedicated_writer=True,
        streams=(
            streams.SUBMISSIONS,
            streams.INTAKE,
            streams.INVENTORY,
            streams.FULFILLMENT,
            streams.DEAD_LETTERS,
        ),
    )
    intake = Intake(rt, settings)

    async def on_submissions(uow: UnitOfWork, items: list[Any]) -> None:
        await handlers.submit_orders(uow, items, intake.policy)

    rt.consume(
        ConsumerSpec(
            name=SUBMISSIONS_CONSUMER,
            stream=streams.SUBMISSIONS.name,
            filter_subjects=[subjects.SUBMISSIONS_ALL],
            handlers={"submission": on_submissions},
            decode=decode_submission,
        )
    )
    rt.consume(
        ConsumerSpec(
            name="intake-status-view",
            stream=streams.INVENTORY.name,
            filter_subjects=[
                subjects.events_of(subjects.INVENTORY, t)
                for t in ("stock_reserved", "stock_backordered")
            ],
            handlers={t: handlers.record_progress for t in ("stock_reserved", "stock_backordered")},
            decode=decode_event_header,
            linger=True,
        )
    )
    shipment_types = [t for t in handlers.PROGRESS if t.startswith("shipment_")]
    rt.consume(
        ConsumerSpec(
            name="intake-shipment-view",
            stream=streams.FULFILLMENT.name,
            filter_subjects=[subjects.events_of(subjects.FULFILLMENT, t) for t in shipment_types],
            handlers=dict.fromkeys(shipment_types, handlers.record_progress),
            decode=decode_event_header,
            linger=True,
        )
    )
    # A consumer of its own (not more filters on the shipment view's): an existing durable
    # consumer keeps the filters it was created with.
    rt.consume(
        ConsumerSpec(
            name="intake-cancellation-view",
            stream=streams.FULFILLMENT.name,
            filter_subjects=[subjects.events_of(subjects.FULFILLMENT, t) for t in CANCEL_OUTCOMES],
            handlers=dict(CANCEL_OUTCOMES),
        )
    )

    register_commands(rt, intake)
    http_api.register(rt, intake)

    async def stats() -> dict[str, Any]:
        async with rt.db.reading() as conn:
            return {"orders": await handlers.count_by_status(conn)}

    rt.stats = stats
    audit.register(rt)
    return rt


def register_commands(rt: ServiceRuntime, intake: Intake) -> None:
    """Commands over NATS request/reply, for NATS channels and the CLI.

    On NATS the channel is who the connection says it is: per-channel NATS users limited to
    their own subjects are issue 11's; HTTP callers prove their channel with a key.
    """

    async def cmd_submit(payload: dict[str, Any]) -> dict[str, Any]:
        channel, order = payload.get("channel"), payload.get("order")
        if not isinstance(channel, str) or not isinstance(order, dict):
            raise CommandRefused("submit needs {'channel': str, 'order': {...}}")
        _check_channel(channel)
        item = handlers.Submission(channel, orjson.dumps(order), datetime.now(UTC), "rpc")
        [answer] = await intake.submit([item])
        return answer.model_dump(mode="json", exclude_none=True)

    async def cmd_submit_batch(payload: dict[str, Any]) -> dict[str, Any]:
        channel, batch = payload.get("channel"), payload.get("orders")
        if not isinstance(channel, str) or not isinstance(batch, list):
            raise CommandRefused("submit_batch needs {'channel': str, 'orders': [...]}")
        _check_channel(channel)
        if len(batch) > BATCH_MAX:
            raise CommandRefused(f"a batch holds at most {BATCH_MAX} orders, not {len(batch)}")
        now = datetime.now(UTC)
        items = [handlers.Submission(channel, orjson.dumps(o), now, "rpc") for o in batch]
        answers = await intake.submit(items) if items else []
        return http_api.batch_result(answers)

    async def cmd_status(payload: dict[str, Any]) -> dict[str, Any]:
        order_id = str(payload.get("order_id", ""))
        status = await intake.status(order_id)
        if status is None:
            raise CommandRefused(f"no order {order_id}")
        return status

    async def cmd_list(payload: dict[str, Any]) -> dict[str, Any]:
        try:
            filters = http_api.list_filters(payload)
        except ValueError as exc:
            raise CommandRefused(str(exc)) from exc
        return await intake.orders(**filters)

    async def cmd_cancel(payload: dict[str, Any]) -> dict[str, Any]:
        order_id = payload.get("order_id")
        if not isinstance(order_id, str) or not order_id:
            raise CommandRefused("cancel needs {'order_id': str, 'reason'?: str, 'actor'?: str}")
        reason = str(payload.get("reason") or "cancelled on request")[:500]
        actor = str(payload.get("actor") or "cli")[:100]
        answer = await intake.cancel(order_id, reason, actor)
        if answer is None:
            raise CommandRefused(f"no order {order_id}")
        if answer.outcome == "refused":
            raise CommandRefused(f"cannot cancel order {order_id}: {answer.reason}")
        return answer.as_dict()

    async def cmd_customer_set(payload: dict[str, Any]) -> dict[str, Any]:
        key = domain.customer_key_of(str(payload.get("customer", "")))
        if key is None:
            raise CommandRefused("customer_set needs {'customer': e-mail or phone number, ...}")
        tier, manager = payload.get("tier"), payload.get("account_manager")
        for name, value in (("tier", tier), ("account_manager", manager)):
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 100):
                raise CommandRefused(f"{name} must be a text of 1 to 100 characters")

        async def work(uow: UnitOfWork) -> dict[str, Any]:
            return await handlers.set_customer(uow, key, tier, manager)

        return await rt.execute(work)

    async def cmd_customer_show(payload: dict[str, Any]) -> dict[str, Any]:
        who = str(payload.get("customer", ""))
        key = domain.customer_key_of(who)
        found = None
        if key is not None:
            async with rt.db.reading() as conn:
                found = await handlers.get_customer(conn, key)
        if found is None:
            raise CommandRefused(f"no customer {who!r} in the directory")
        return found

    async def cmd_rules(_payload: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"name": r.name, "when": r.explain(), "priority": r.priority, "owner": r.owner}
            for r in intake.router.rules
        ]

    for name, command in {
        "submit": cmd_submit,
        "submit_batch": cmd_submit_batch,
        "status": cmd_status,
        "list": cmd_list,
        "cancel": cmd_cancel,
        "customer_set": cmd_customer_set,
        "customer_show": cmd_customer_show,
        "rules": cmd_rules,
    }.items():
        rt.rpc.register(name, command)


def _check_channel(channel: str) -> None:
    try:
        subjects.submission(channel)
    except ValueError as exc:
        raise CommandRefused(f"not a channel name: {channel!r}") from exc
