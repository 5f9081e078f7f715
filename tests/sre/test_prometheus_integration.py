"""A real Prometheus (Debian's package) scrapes a running system started with `orderflow up`,
with the shipped config and rules; a test queries histogram_quantile through its HTTP API."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.embedded_nats import free_port, wait_for_port
from tests.sre.conftest import PROMETHEUS_DIR

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
SERVICES = ("intake", "inventory", "fulfillment", "notify")


def orderflow(home: Path, *args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "orderflow", *args],
        env={**os.environ, "ORDERFLOW_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def system(tmp_path: Path) -> Iterator[Path]:
    """`orderflow up` (no demo load) in its own home folder; yields the home."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "ORDERFLOW_HOME": str(home),
        "ORDERFLOW_SIMULATOR_MIN_DELAY_S": "0.05",
        "ORDERFLOW_SIMULATOR_MAX_DELAY_S": "0.2",
        "ORDERFLOW_BACKLOG_INTERVAL_S": "1",
    }
    with open(home / "launcher.out", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orderflow", "up", "--no-demo", "--home", str(home)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 90
            while not (home / "endpoints.json").exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        "orderflow up did not start:\n" + (home / "launcher.out").read_text()
                    )
                time.sleep(0.2)
            yield home
        finally:
            stop(proc, signal.SIGINT)


class Prometheus:
    def __init__(self, binary: str, config_dir: Path, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={data_dir}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not wait_for_port("127.0.0.1", self.port, 30) or not self._ready(30):
            stop(self.proc)
            pytest.fail("prometheus did not start:\n" + log.read_text())

    def _ready(self, timeout: float) -> bool:
        """/-/ready answers 503 until the TSDB is open."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                    return True
            except OSError:
                time.sleep(0.2)
        return False

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result


def wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {found!r}")
        time.sleep(0.5)


def finite(series: list[dict[str, Any]]) -> dict[str, float]:
    values = {json.dumps(s["metric"], sort_keys=True): float(s["value"][1]) for s in series}
    return {k: v for k, v in values.items() if not math.isnan(v)}


def test_prometheus_scrapes_the_system_and_answers_latency_quantiles(
    system: Path, prometheus_binary: str, tmp_path: Path
) -> None:
    # The shipped config and rules, with a 1 s scrape so the test need not wait long.
    config = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, config, ignore=shutil.ignore_patterns("*.json", "tests"))
    conf = config / "prometheus.yml"
    conf.write_text(conf.read_text().replace("interval: 5s", "interval: 1s"))
    exporter_port = free_port()
    exporter = subprocess.Popen(
        [sys.executable, "-m", "orderflow", "nats-exporter", f"--listen=127.0.0.1:{exporter_port}"],
        env={**os.environ, "ORDERFLOW_HOME": str(system)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    orderflow(
        system,
        "prometheus-targets",
        "--out",
        str(config / "targets"),
        f"--nats-exporter=127.0.0.1:{exporter_port}",
    )
    prometheus = Prometheus(prometheus_binary, config, tmp_path / "tsdb", tmp_path / "prom.log")
    try:
        jobs = {*SERVICES, "nats"}
        up = wait_for(
            lambda: (
                {s["metric"]["job"] for s in prometheus.query("up == 1")} >= jobs
                and prometheus.query("up")
            ),
            "all four services and the nats exporter scraped",
        )
        assert {s["metric"]["job"] for s in up} == jobs

        orderflow(system, "demo", "--orders", "60", "--rate", "30")

        def handler_p99() -> dict[str, float]:
            found = finite(
                prometheus.query(
                    "histogram_quantile(0.99, sum by (le, service) "
                    "(rate(orderflow_handler_duration_seconds_bucket[30s])))"
                )
            )
            return found if len(found) == len(SERVICES) else {}

        p99 = wait_for(handler_p99, "a handler duration p99 for every service")
        assert all(0 < v < 5 for v in p99.values()), p99

        reserved = wait_for(
            lambda: finite(
                prometheus.query(
                    "histogram_quantile(0.5, sum by (le) (rate("
                    'orderflow_stage_latency_seconds_bucket{stage="reserved"}[30s])))'
                )
            ),
            "submission-to-reserved median",
        )
        assert all(0 < v < 10 for v in reserved.values()), reserved

        pending = prometheus.query("orderflow_consumer_pending_messages")
        assert {s["metric"]["service"] for s in pending} == set(SERVICES)
        ready = prometheus.query("min by (job) (orderflow_dependency_up)")
        assert {s["metric"]["job"]: s["value"][1] for s in ready} == {s: "1" for s in SERVICES}

        held = wait_for(
            lambda: prometheus.query(
                'nats_jetstream_stream_messages{stream="ORDERFLOW_SUBMISSIONS"} > 0'
            ),
            "nats-server's stream figures",
        )
        assert held[0]["metric"]["job"] == "nats"

        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) > 20
        assert [r["name"] for r in rules if r["health"] != "ok"] == []
        firing = prometheus.query('ALERTS{alertstate="firing"}')
        assert firing == [], firing
    finally:
        stop(prometheus.proc)
        stop(exporter)
