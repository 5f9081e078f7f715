"""The log-file sink, and which sinks the settings configure."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from services.notify.domain import Notification, Route
from services.notify.settings import NotifySettings
from services.notify.sinks import EmailSink, LogFileSink, Outgoing, Sink, WebhookSink, build_sinks
from shared.ids import uuid7

EVERYTHING = Route("log", "log", frozenset({"all"}))


def outgoing(subject: str = "Your order EXT-1 has shipped") -> Outgoing:
    return Outgoing(
        delivery_id=uuid7(),
        attempt=1,
        address="li.wei@example.com",
        notification=Notification(
            notification_id=uuid7(),
            source_event_id=uuid7(),
            order_id=uuid7(),
            template="order_shipped",
            audience="customer",
            locale="zh-CN",
            recipient="li.wei@example.com",
            subject=subject,
            body="第一行\n第二行",
            created_at=time.time(),
        ),
    )


async def test_each_delivery_becomes_one_json_line_in_a_new_folder(tmp_path: Path) -> None:
    path = tmp_path / "not-yet" / "notifications.log"
    sink: Sink = LogFileSink(path, EVERYTHING)
    first = [outgoing(), outgoing()]
    second = [outgoing("您的订单已发货")]

    outcomes = await sink.send(first) + await sink.send(second) + await sink.send([])

    assert [o.ok for o in outcomes] == [True, True, True]
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3
    docs = [orjson.loads(line) for line in lines]
    assert [d["delivery_id"] for d in docs] == [o.delivery_id for o in first + second]
    assert docs[0]["body"] == "第一行\n第二行"
    assert docs[2]["subject"] == "您的订单已发货"
    assert docs[0]["recipient"] == "li.wei@example.com"
    assert docs[0]["order_id"] == first[0].notification.order_id
    assert sink.name == "log"


async def test_a_log_file_that_cannot_be_written_reports_every_delivery_failed(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    sink = LogFileSink(blocked / "notifications.log", EVERYTHING)

    outcomes = await sink.send([outgoing(), outgoing()])

    assert [o.ok for o in outcomes] == [False, False]
    assert all(o.retryable and "log file" in (o.error or "") for o in outcomes)


def test_by_default_only_the_log_sink_takes_everything(tmp_path: Path) -> None:
    sinks = build_sinks(NotifySettings(home=tmp_path))

    assert [(s.name, s.route.selects) for s in sinks] == [("log", {"all"})]


def test_two_variables_send_every_customer_message_to_one_webhook(tmp_path: Path) -> None:
    settings = NotifySettings(
        home=tmp_path,
        notify_webhook_url="http://127.0.0.1:9/hook",
        notify_webhook_secret="s3cret-s3cret-s3cret",
        notify_smtp_host="127.0.0.1",
        notify_operations_email="ops@example.com",
        notify_webhooks=[
            {
                "name": "pager",
                "url": "https://pager.example.com/in",
                "secret": "another-secret-for-the-pager",
                "events": "alert_dead_letter,alert_delivery_failed",
            }
        ],
    )

    sinks = {s.name: s for s in build_sinks(settings)}

    assert set(sinks) == {"log", "webhook", "pager", "email"}
    assert isinstance(sinks["webhook"], WebhookSink)
    assert sinks["webhook"].route.selects == {"customer"}
    assert sinks["pager"].route.takes("alert_dead_letter")
    assert not sinks["pager"].route.takes("order_confirmed")
    assert isinstance(sinks["email"], EmailSink)
    assert sinks["email"].route.address_for("operations") == "ops@example.com"


def test_the_environment_configures_the_sinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORDERFLOW_NOTIFY_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    monkeypatch.setenv("ORDERFLOW_NOTIFY_WEBHOOK_SECRET", "s3cret-s3cret-s3cret")
    monkeypatch.setenv("ORDERFLOW_NOTIFY_LOG_EVENTS", "none")

    sinks = build_sinks(NotifySettings(home=tmp_path))

    assert [s.name for s in sinks] == ["webhook"]


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"notify_webhook_url": "http://127.0.0.1:9/hook"}, "WEBHOOK_SECRET"),
        ({"notify_webhook_events": "customers"}, "unknown event selector customers"),
        (
            {
                "notify_webhooks": [
                    {"name": "log", "url": "http://x.example/", "secret": "0123456789abcdef"}
                ]
            },
            "unique",
        ),
        (
            {"notify_webhooks": [{"name": "ops", "url": "http://x.example/", "secret": "short"}]},
            "16 characters",
        ),
    ],
)
def test_a_misconfigured_sink_stops_the_service_with_a_reason(
    tmp_path: Path, changes: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        NotifySettings(home=tmp_path, **changes)  # type: ignore[arg-type]
