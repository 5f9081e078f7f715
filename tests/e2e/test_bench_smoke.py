"""The benchmark's small version: it runs, checks every order, and writes every figure.
Correctness only; speed is the benchmark's business, never a test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_bench_smoke_checks_every_order_and_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orderflow",
            "bench",
            "--smoke",
            "--json",
            str(out),
            "--home",
            str(tmp_path / "home"),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in (
        "orders_per_s",
        "ceiling_per_s",
        "ratio",
        "p99_reserved_ms_at_1000",
        "peak_rss_mb",
        "growth_ratio",
    ):
        assert key in report
    assert report["correct"] is True and report["problems"] == []
    assert report["orders_per_s"] > 0 and report["ceiling_per_s"] > 0
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "every order reached every stage exactly once" in proc.stdout
