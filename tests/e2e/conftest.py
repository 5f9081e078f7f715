"""The whole system as real processes: `orderflow up` in a subprocess, like a user starts it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


class RunningSystem:
    def __init__(self, home: Path, proc: subprocess.Popen[bytes]) -> None:
        self.home = home
        self.proc = proc

    @property
    def endpoints(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.home / "endpoints.json").read_text())
        return data

    @property
    def nats_url(self) -> str:
        return str(self.endpoints["nats_url"])

    @property
    def nats_options(self) -> dict[str, str]:
        """Connect as the embedded server's admin user (the tests read streams directly)."""
        creds = json.loads((self.home / "credentials.json").read_text())
        return {"user": "admin", "password": creds["nats"]["admin"]}

    def pid(self, service: str) -> int:
        return int(self.endpoints["pids"][service])

    def db(self, service: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self.home / f"{service}.db", timeout=30)
        conn.row_factory = sqlite3.Row
        return conn

    def launcher_output(self) -> str:
        return (self.home / "launcher.out").read_text()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    home = tmp_path_factory.mktemp("orderflow-e2e")
    env = {
        **os.environ,
        "ORDERFLOW_HOME": str(home),
        "ORDERFLOW_SIMULATOR_MIN_DELAY_S": "0.05",
        "ORDERFLOW_SIMULATOR_MAX_DELAY_S": "0.3",
        "ORDERFLOW_NAK_DELAY_S": "0.2",
        # A killed process leaves its unacked messages to be redelivered after ack_wait.
        "ORDERFLOW_ACK_WAIT_S": "5",
    }
    out = open(home / "launcher.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "orderflow", "up", "--no-demo", "--home", str(home)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while not (home / "endpoints.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out.close()
            pytest.fail("orderflow up did not start:\n" + (home / "launcher.out").read_text())
        time.sleep(0.2)
    running = RunningSystem(home, proc)
    try:
        yield running
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        out.close()
