"""The report document built from the services' answers, as terminal tables and as an HTML page:
the page parses, every chart is a PNG that decodes to an image, the figures are the ones given;
rendered in headless Chromium when the machine has it."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread

from orderflow.report import build, html, text

ANSWERS: dict[str, dict[str, Any]] = {
    "intake": {
        "by_channel": {
            "web": {"accepted": 8, "shipped": 5, "cancelled": 1, "in progress": 2, "rejected": 2},
            "wechat": {"accepted": 3, "shipped": 1, "in progress": 2},
        },
        "by_priority": {"normal": 9, "urgent": 2},
        "lead_time": {
            "accept": {"n": 11, "p50_s": 0.01, "p95_s": 0.05},
            "reserve": {"n": 10, "p50_s": 0.02, "p95_s": 0.3},
            "ship": {"n": 6, "p50_s": 3600.0, "p95_s": 14400.0},
            "deliver": {"n": 0, "p50_s": None, "p95_s": None},
        },
        "accepted_value": {"CNY": "412.50", "USD": "19.90"},
    },
    "inventory": {
        "top_skus": [{"sku": "TEA-001", "units": 30}, {"sku": "<CUP&010>", "units": 4}],
        "stock_cover": [
            {
                "sku": "TEA-001",
                "available": 70,
                "daily_demand": 30.0,
                "days_of_cover": 2.33,
                "reorder_point": 100,
                "suggested_quantity": 350,
                "below_reorder_point": True,
            },
            {
                "sku": "<CUP&010>",
                "available": 500,
                "daily_demand": 4.0,
                "days_of_cover": 125.0,
                "reorder_point": None,
                "suggested_quantity": 0,
                "below_reorder_point": False,
            },
        ],
    },
    "fulfillment": {
        "sla": {
            "normal": {"shipments": 8, "breached": 2, "breach_rate": 0.25},
            "urgent": {"shipments": 2, "breached": 0, "breach_rate": 0.0},
        }
    },
}


class Page(HTMLParser):
    """Collects the images and the text; fails on tags closed out of order."""

    VOID = {"meta", "img", "br", "link", "hr", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_report_combines_the_services_figures() -> None:
    report = build(ANSWERS, {}, 1_700_000_000.0, None)
    orders = report["orders"]
    assert orders["accepted"] == 11 and orders["rejected"] == 2
    assert orders["acceptance_rate"]["web"] == pytest.approx(0.8)
    assert orders["acceptance_rate"]["all"] == pytest.approx(11 / 13)
    assert orders["by_channel"]["wechat"]["rejected"] == 0
    assert [r["sku"] for r in report["reorder"]] == ["TEA-001"]
    assert report["window"]["since"].startswith("2023-11-14")


def test_the_terminal_tables_show_the_figures() -> None:
    out = text.render(build(ANSWERS, {"fulfillment": "no answer (TimeoutError)"}, None, None))
    assert "WARNING: fulfillment did not answer" in out
    web = next(line for line in out.splitlines() if line.startswith("web "))
    assert web.split() == ["web", "8", "5", "1", "2", "2", "80.0%"]
    assert "60.0min" in out and "4.0h" in out  # the ship stage, p50 and p95
    assert "350 x TEA-001" in out


def test_the_html_page_parses_and_every_chart_is_a_png(tmp_path: Path) -> None:
    page = html.render(build(ANSWERS, {}, None, None))
    parser = Page()
    parser.feed(page)
    parser.close()
    assert parser.open == []
    assert len(parser.images) == len(html.CHARTS)
    for img in parser.images:
        src = img["src"] or ""
        assert src.startswith("data:image/png;base64,")
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        pixels = imread(io.BytesIO(raw), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        # Not a blank canvas: a chart has more than a couple of colours.
        assert len({tuple(p) for p in pixels.reshape(-1, pixels.shape[-1])[::97]}) > 3
    words = " ".join(parser.text)
    assert "<CUP&010>" in words  # escaped in the page, read back as text
    assert "84.6%" in words  # acceptance, all channels
    chromium = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if chromium is None:
        return
    target = tmp_path / "report.html"
    target.write_text(page, encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1000,2400",
            target.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert imread(str(shot)).shape[0] > 0


def test_an_empty_window_still_renders() -> None:
    report = build({"intake": {}, "inventory": {}, "fulfillment": {}}, {}, None, None)
    assert report["orders"]["acceptance_rate"]["all"] is None
    parser = Page()
    parser.feed(html.render(report))
    assert len(parser.images) == len(html.CHARTS)
    assert "Orders by channel" in text.render(report)
