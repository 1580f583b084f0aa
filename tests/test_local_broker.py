"""The local broker's lifecycle where it goes wrong: a reused pid, a corrupt state file, a
broker that exits while starting, a jar fetch that fails. No broker is needed: the tools it
runs (java, mvn) are replaced on PATH by scripts that fail the way the real ones do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cyberstream.broker import STATE_FILE, BrokerError, BrokerState, LocalBroker


def _script(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def test_stop_does_not_signal_a_process_that_took_the_brokers_pid(tmp_path):
    # An unrelated process group leader (as the broker was) holds the recorded pid.
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                             start_new_session=True)  # fmt: skip
    try:
        broker = LocalBroker(tmp_path)
        st = BrokerState(other.pid, "127.0.0.1:1", 2, str(tmp_path / "broker-run"), time.time())
        broker.state_path.write_text(json.dumps(st.__dict__))
        assert broker.state() is None, "a live process that is not the broker is no running broker"
        broker.state_path.write_text(json.dumps(st.__dict__))
        assert broker.stop(timeout=5) is False
        assert other.poll() is None, "the unrelated process was signalled"
        assert not broker.state_path.exists()
    finally:
        other.stdin.close()
        other.wait(timeout=30)
    assert other.returncode == 0, "it ended on its own, when its input closed"


@pytest.mark.parametrize("text", ["{not json", json.dumps({"pid": 1}), json.dumps([1, 2])])
def test_a_corrupt_state_file_is_no_broker_and_is_removed(tmp_path, text):
    broker = LocalBroker(tmp_path)
    broker.state_path.write_text(text)
    assert broker.state() is None
    assert not broker.state_path.exists()
    broker.state_path.write_text(text)
    assert broker.stop(timeout=5) is False


def test_status_and_stop_commands_on_a_corrupt_state_file(tmp_path):
    env = dict(os.environ, CYBERSTREAM_HOME=str(tmp_path))
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    (tmp_path / STATE_FILE).write_text("garbage")
    status = subprocess.run([sys.executable, "-m", "cyberstream.cli", "broker", "status"], env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert status.returncode == 1, status.stderr
    assert "Traceback" not in status.stderr
    stop = subprocess.run([sys.executable, "-m", "cyberstream.cli", "broker", "stop"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "Traceback" not in stop.stderr, stop.stderr


def test_a_broker_that_exits_while_starting_is_reported_with_its_log(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # StorageTool works; the broker itself dies at once, as it does on a bad configuration.
    _script(bin_dir, "java", 'case "$*" in\n'
            '  *random-uuid*) echo "fake-cluster-id" ;;\n'
            '  *StorageTool*) echo formatted ;;\n'
            '  *kafka.Kafka*) echo "ERROR Exiting Kafka due to fatal exception: bad listener"; exit 1 ;;\n'
            "esac")  # fmt: skip
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / ".complete").touch()
    broker = LocalBroker(tmp_path / "state", jars_dir=jars)
    with pytest.raises(BrokerError, match=r"(?s)exited with code 1 while starting:.*bad listener"):
        broker.start(timeout=60)
    assert broker.state() is None and not broker.state_path.exists()


def test_a_failed_jar_fetch_says_so_and_leaves_no_partial_jars(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # It fetches one jar, then fails (as when the network goes away halfway).
    _script(bin_dir, "mvn", 'for a in "$@"; do case "$a" in -DoutputDirectory=*) d="${a#-DoutputDirectory=}"; '
            'mkdir -p "$d"; touch "$d/kafka-clients-4.1.1.jar" ;; esac; done\n'
            'echo "[ERROR] Could not transfer artifact org.apache.kafka:kafka_2.13:pom:4.1.1 from/to '
            'central: repo.maven.apache.org: Temporary failure in name resolution"; exit 1')  # fmt: skip
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    jars = tmp_path / "jars"
    broker = LocalBroker(tmp_path / "state", jars_dir=jars)
    with pytest.raises(BrokerError, match=r"(?s)Maven could not fetch Kafka's jars \(is Maven Central reachable\?\)"
                                          r".*Temporary failure in name resolution"):  # fmt: skip
        broker.fetch_jars()
    assert not jars.exists() and not (tmp_path / "jars.partial").exists()
