"""docker-compose.yml run for real: the whole stack from the built images, end to end.

`up` starts Kafka (healthy), the topics, generates a small slice, trains, then the detector,
the replay and the alert consumer; the test waits for the consumer's summary, reads the alert
topic itself and checks the printed figures against its own, then runs the same data and
model WITHOUT containers (`cyberstream demo` on this host, against the stack's Kafka) and
requires the stack to detect at least the campaigns the host run detects. `down -v` must
leave no container, volume or network behind.

Needs a Docker engine with the two images (`make engine`, or `make images`) and Compose (v2
or Debian's v1). Without them it is skipped with the reason, except when CI provisioned the
engine (CYBERSTREAM_EXPECT_DOCKER=1, .ci/run): then it fails.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from alerts.summary import DEFAULT_CAMPAIGN_GAP_SECS, Summary, summarize
from cyberstream import images
from cyberstream.kafka_io import read_topic
from tests.conftest import expect_docker
from tests.test_demo_e2e import _figure
from training.data import read_events
from training.labels import LabelSpec
from training.model import METADATA_FILE

pytestmark = [pytest.mark.integration, pytest.mark.docker]

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
#: The slice of test_demo_e2e: small enough to train in a few minutes.
GENERATE_ARGS = "--days 4 --events-per-day 4000"
#: One classifier instead of three: the stack is under test here, not the model selection.
TRAIN_ARGS = "--classifiers random_forest"
#: Seconds without a new alert after which the alert consumer prints its summary.
ALERTS_IDLE_SECS = 60


def stack_problem() -> str | None:
    """None when this machine can run the stack, else why not."""
    problem = images.engine_problem()
    if problem:
        return problem
    if images.compose_command() is None:
        return "no Docker Compose (neither the `docker compose` plugin nor Debian's docker-compose)"
    missing = [name for name in (images.APP_IMAGE, images.KAFKA_IMAGE) if not images.image_present(name)]
    if missing:
        return f"the engine has no {', '.join(missing)} (build them: make images)"
    return None


def require_stack() -> None:
    """Skip without an engine that can run the stack, or fail when CI provisioned one."""
    problem = stack_problem()
    if problem:
        message = f"the compose stack cannot run here: {problem}"
        if expect_docker():
            pytest.fail(f"CYBERSTREAM_EXPECT_DOCKER=1 but {message}")
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _labelled(project: str, kind: str, service: str | None = None) -> list[str]:
    """Ids of the project's containers, volumes or networks (Compose labels them, v1 and v2)."""
    lister = {"container": ["ps", "-aq"], "volume": ["volume", "ls", "-q"], "network": ["network", "ls", "-q"]}[kind]
    filters = ["--filter", f"label=com.docker.compose.project={project}"]
    if service:
        filters += ["--filter", f"label=com.docker.compose.service={service}"]
    proc = images.docker(*lister, *filters, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def _summary(alerts: list[dict], truth, models: Path) -> Summary:
    meta = json.loads((models / METADATA_FILE).read_text())
    spec = LabelSpec(**{k: int(v) for k, v in meta["label_spec"].items() if k in ("min_events", "lead", "window")})
    gap = int(meta.get("window_secs") or DEFAULT_CAMPAIGN_GAP_SECS)
    return summarize(alerts, truth, spec=spec, campaign_gap_secs=gap)


def _detected_campaigns(s: Summary) -> set[tuple[str, int]]:
    return {(c.src_host, c.start_secs) for c in s.campaigns if c.connections_detected > 0}


def test_the_stack_runs_end_to_end_detects_what_the_host_detects_and_down_leaves_nothing(tmp_path):
    require_stack()
    compose = [*images.compose_command(), "-f", str(COMPOSE_FILE), "-p", f"cstest{uuid.uuid4().hex[:8]}"]
    project = compose[-1]
    data, models = tmp_path / "data", tmp_path / "models"
    for d in (data, models):
        d.mkdir()
        d.chmod(0o777)  # the image's user (uid 10001) writes there
    port = _free_port()
    env = {
        **os.environ,
        "CYBERSTREAM_DATA_DIR": str(data),
        "CYBERSTREAM_MODELS_DIR": str(models),
        "CYBERSTREAM_KAFKA_PORT": str(port),
        "CYBERSTREAM_GENERATE_ARGS": GENERATE_ARGS,
        "CYBERSTREAM_TRAIN_ARGS": TRAIN_ARGS,
        "CYBERSTREAM_ALERTS_IDLE_TIMEOUT": str(ALERTS_IDLE_SECS),
    }

    def run(*args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([*compose, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    try:
        # Returns once the detector, producer and alerts started: topics, generate and train are done.
        up = run("up", "-d", "--no-build", timeout=1500)
        assert up.returncode == 0, f"compose up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        csv = data / "CyberFLTenDays.csv"
        assert csv.stat().st_size > 0 and (models / METADATA_FILE).is_file()
        bootstrap = f"127.0.0.1:{port}"

        # The same data and model without containers, while the stack's consumer waits out its idle time.
        home = tmp_path / "host"
        home.mkdir()
        host_env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "CYBERSTREAM_HOME": str(home / "var")}
        host = subprocess.run(
            [sys.executable, "-m", "cyberstream.cli", "demo", "--data", str(csv), "--model-dir", str(models),
             "--quiet", "--idle-timeout", "4"],
            cwd=home, env=host_env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert host.returncode == 0, host.stderr[-3000:]
        host_topic = re.search(r"alert topic: (\S+) on ", host.stdout).group(1)

        [alerts_container] = _labelled(project, "container", service="alerts")
        waited = images.docker("wait", alerts_container, timeout=1200)
        logs = run("logs", "--no-color", "alerts", timeout=120).stdout
        assert waited.stdout.strip() == "0", f"the alerts service exited {waited.stdout.strip()}:\n{logs[-3000:]}"
        assert "alerts summary" in logs, logs[-3000:]

        truth, _ = read_events(csv, progress=False)
        stack_alerts = {a["alert_id"]: a for a in read_topic(bootstrap, "alerts")}
        stack = _summary(list(stack_alerts.values()), truth, models)
        host_summary = _summary(list({a["alert_id"]: a for a in read_topic(bootstrap, host_topic)}.values()), truth, models)
    finally:
        down = run("down", "-v", "--remove-orphans", timeout=300)
    assert down.returncode == 0, down.stderr[-3000:]
    assert _labelled(project, "container") == [] and _labelled(project, "volume") == []
    assert _labelled(project, "network") == []

    # The consumer's printed summary is the test's own count of the alert topic against the truth.
    assert _figure(logs, r"-> ([\d,]+) alerts") == (len(stack_alerts),) == (stack.alerts,)
    assert _figure(logs, r"connections alerted\s+([\d,]+): ([\d,]+) malicious \(TP\), ([\d,]+) clean") == (
        stack.connections_alerted, stack.connection_tp, stack.connection_fp)  # fmt: skip
    assert _figure(logs, r"campaigns\s+([\d,]+) ") == (len(stack.campaigns),)
    # In containers, at least the campaigns the same data and model detect on this host.
    expected = _detected_campaigns(host_summary)
    assert expected, "the run without containers detected no campaign: nothing to compare"
    assert expected <= _detected_campaigns(stack), (expected, _detected_campaigns(stack))


def test_demo_falls_back_to_the_local_broker_when_the_engine_cannot_serve_kafka(tmp_path, monkeypatch, caplog):
    """The engine answers but compose's kafka cannot start (its host port is taken): one line says
    why, and the demo's broker is the local one."""
    require_stack()
    from cyberstream import demo_cmd
    from cyberstream.broker import LocalBroker

    project = f"cstest{uuid.uuid4().hex[:8]}"
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("CYBERSTREAM_HOME", str(tmp_path / "var"))
    monkeypatch.setattr(demo_cmd, "COMPOSE_PROJECT", project)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        monkeypatch.setenv("CYBERSTREAM_KAFKA_PORT", str(taken.getsockname()[1]))
        demo = demo_cmd.Demo()
        try:
            with caplog.at_level("INFO", logger="cyberstream.demo"):
                bootstrap, fresh = demo_cmd._find_broker(demo)
            assert isinstance(demo.broker, LocalBroker) and fresh
            assert bootstrap == demo.broker.state().bootstrap
        finally:
            demo.stop_all()
            subprocess.run([*images.compose_command(), "-f", str(COMPOSE_FILE), "-p", project, "down", "-v"],
                           capture_output=True, timeout=300)  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("the Docker engine cannot serve the stack (`compose up kafka` failed: ")
    assert warnings[0].endswith("): using the local broker")
    assert _labelled(project, "container") == []
