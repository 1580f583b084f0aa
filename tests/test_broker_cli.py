"""`cyberstream broker start|status|stop` against a real local broker (own state directory)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cyberstream.broker import LocalBroker

pytestmark = pytest.mark.integration


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cyberstream.cli", *args], capture_output=True, text=True,
                          env=env, timeout=240)  # fmt: skip


def test_start_refuses_second_start_and_stop_leaves_nothing(tmp_path):
    env = dict(os.environ, CYBERSTREAM_HOME=str(tmp_path))
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    started = _cli("broker", "start", env=env)
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip().splitlines()[-1]
    assert bootstrap.startswith("127.0.0.1:")
    pid = LocalBroker(tmp_path).state().pid
    try:
        status = _cli("broker", "status", env=env)
        assert status.returncode == 0 and status.stdout.strip().splitlines()[-1] == bootstrap

        again = _cli("broker", "start", env=env)
        assert again.returncode != 0
        assert "already running" in again.stderr and bootstrap in again.stderr
    finally:
        stopped = _cli("broker", "stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
    assert _cli("broker", "status", env=env).returncode == 1


def test_missing_java_is_named(tmp_path, monkeypatch):
    from cyberstream.broker import BrokerError

    monkeypatch.setenv("PATH", str(tmp_path))  # neither java nor mvn on PATH
    with pytest.raises(BrokerError, match="'java' was not found.*Java 17"):
        LocalBroker(tmp_path, jars_dir=tmp_path / "jars").start()
