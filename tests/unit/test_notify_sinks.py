"""The log-file sink: one JSON line per notification, appended."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from services.notify.domain import Notification
from services.notify.sinks import LogFileSink, Sink
from shared.ids import uuid7


def notification(subject: str = "Your order EXT-1 has shipped") -> Notification:
    order_id = uuid7()
    return Notification(
        notification_id=uuid7(),
        source_event_id=uuid7(),
        order_id=order_id,
        template="order_shipped",
        locale="zh-CN",
        recipient="li.wei@example.com",
        sink="log",
        subject=subject,
        body="第一行\n第二行",
        created_at=time.time(),
    )


async def test_each_notification_becomes_one_json_line_in_a_new_folder(tmp_path: Path) -> None:
    path = tmp_path / "not-yet" / "notifications.log"
    sink: Sink = LogFileSink(path)
    first = [notification(), notification()]
    second = [notification("您的订单已发货")]

    await sink.send(first)
    await sink.send(second)
    await sink.send([])

    lines = path.read_bytes().splitlines()
    assert len(lines) == 3
    docs = [orjson.loads(line) for line in lines]
    assert [d["notification_id"] for d in docs] == [n.notification_id for n in first + second]
    assert docs[0]["body"] == "第一行\n第二行"
    assert docs[2]["subject"] == "您的订单已发货"
    assert docs[0]["recipient"] == "li.wei@example.com"
    assert docs[0]["order_id"] == first[0].order_id
    assert sink.name == "log"
