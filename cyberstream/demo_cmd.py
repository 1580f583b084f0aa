"""Replay ten days end to end and show the alerts (what `make demo` runs).

1. Broker: $KAFKA_BOOTSTRAP_SERVERS if set; else Docker Compose's Kafka if a Docker engine
   answers and can serve it (Compose installed, the Kafka image built or buildable); else the
   local broker (a running one, or one started here and stopped at the end), with one line
   saying why the engine could not serve.
2. Data: data/CyberFLTenDays.csv if it exists (put the real LANL file there), otherwise
   ten generated days.
3. Model: trained into models/ if models/metadata.json is missing.
4. The detector starts, the producer replays the data (as fast as the broker takes it, or
   --speed X); once the producer has exited, the detector reads to the end and stops.
5. The alerts are read back from the alert topic and summarised against the ground truth;
   the HTML report's path is printed.
Ctrl-C stops everything the demo started.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cyberstream import config, images

log = logging.getLogger("cyberstream.demo")

COMPOSE_FILE = images.ROOT / "docker-compose.yml"
COMPOSE_PROJECT = "cyberstream"
#: Seconds for `compose up -d kafka` (which may build the image from apache/kafka) and for health.
COMPOSE_UP_TIMEOUT = 600
COMPOSE_HEALTH_TIMEOUT = 180


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=config.data_path(),
                        help="CSV to replay; generated if missing (default: %(default)s)")  # fmt: skip
    parser.add_argument("--model-dir", type=Path, default=config.model_dir(),
                        help="model directory; trained if missing (default: %(default)s)")  # fmt: skip
    parser.add_argument("--days", type=int, default=10, help="days to generate when there is no data (default 10)")
    parser.add_argument("--events-per-day", type=int, default=None,
                        help="generated rows per day (default: the generator's, sized for a quick demo)")
    parser.add_argument("--speed", default="max", help="replay speed: X times real time, or max (default)")
    parser.add_argument("--label-delay", type=int, default=3600,
                        help="seconds of event time before an event's label reaches the detector (default 3600)")
    parser.add_argument("--features", choices=["compiled", "oracle"], default="compiled",
                        help="detector feature engine (default compiled)")
    parser.add_argument("--report", type=Path, default=Path("reports") / "alerts.html", help="HTML report path")
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="also end the detector after this many wall seconds without new events "
                        "(default: none; the detector ends once it has read what the producer wrote)")
    parser.add_argument("--quiet", action="store_true", help="do not print every alert, only the summary")
    parser.add_argument("--keep-broker", action="store_true",
                        help="leave a local broker the demo started running, to read the alert topic "
                        "afterwards (`cyberstream alerts`; stop it with `cyberstream broker stop`)")


class Demo:
    """The processes and broker one demo run owns, so Ctrl-C can stop all of them."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen] = []
        self.broker = None
        self.compose: list[str] | None = None  # the compose command whose kafka the demo started

    def run(self, args: list[str], **kwargs) -> None:
        proc = self.start(args, **kwargs)
        if proc.wait() != 0:
            raise SystemExit(f"cyberstream demo: `cyberstream {' '.join(args)}` failed (exit {proc.returncode})")

    def start(self, args: list[str], **kwargs) -> subprocess.Popen:
        log.info("$ cyberstream %s", " ".join(args))
        proc = subprocess.Popen([sys.executable, "-m", "cyberstream.cli", *args], start_new_session=True, **kwargs)
        self.children.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.children:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.children:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if self.broker is not None:
            log.info("stopping the local broker the demo started")
            self.broker.stop()
        self.stop_compose()

    def stop_compose(self) -> None:
        if self.compose:
            log.info("stopping Docker Compose's kafka service")
            subprocess.run([*self.compose, "stop", "kafka"], check=False, capture_output=True)
            self.compose = None


def compose_bootstrap() -> str:
    """The compose Kafka's address on the host (its HOST listener, docker-compose.yml)."""
    return f"127.0.0.1:{config.env_int('CYBERSTREAM_KAFKA_PORT', config.DEFAULT_COMPOSE_KAFKA_PORT)}"


def _reason(output: str) -> str:
    """The telling line of a failed compose command: its last error (v1 ends with a generic one)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith("Encountered errors")]
    line = (errors or lines or ["no output"])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def _kafka_health(compose: list[str]) -> str:
    """The health of the compose kafka container: healthy, starting, unhealthy, or why unknown."""
    ids = subprocess.run([*compose, "ps", "-q", "kafka"], capture_output=True, text=True, timeout=60).stdout.split()
    if not ids:
        return "no kafka container"
    proc = images.docker("inspect", "--format", "{{.State.Status}} {{.State.Health.Status}}", ids[0], timeout=30)
    state, _, health = proc.stdout.strip().partition(" ")
    return health if state == "running" else f"kafka container {state or 'gone'}"


def compose_kafka(demo: Demo) -> str | None:
    """Start Compose's kafka service and wait until healthy. None when it serves; else why not
    (and whatever was started is stopped)."""
    compose_cmd = images.compose_command()
    if compose_cmd is None:
        return "no Docker Compose (neither the `docker compose` plugin nor docker-compose)"
    compose = [*compose_cmd, "-f", str(COMPOSE_FILE), "-p", COMPOSE_PROJECT]
    log.info("broker: Docker Compose's kafka service (%s)", images.KAFKA_IMAGE)
    try:
        up = subprocess.run([*compose, "up", "-d", "kafka"], capture_output=True, text=True, timeout=COMPOSE_UP_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"`compose up kafka` did not finish in {COMPOSE_UP_TIMEOUT} s"
    if up.returncode != 0:
        why = f"`compose up kafka` failed: {_reason(up.stdout + up.stderr)}"
        if not images.image_present(images.KAFKA_IMAGE):
            why += f"; {images.KAFKA_IMAGE} is not built (make images)"
        return why
    demo.compose = compose
    deadline = time.monotonic() + COMPOSE_HEALTH_TIMEOUT
    health = "starting"
    while time.monotonic() < deadline:
        health = _kafka_health(compose)
        if health == "healthy":
            return None
        if health not in ("starting", "unhealthy"):
            break
        time.sleep(2)
    demo.stop_compose()
    return f"compose's kafka is not healthy ({health})"


def _find_broker(demo: Demo) -> tuple[str, bool]:
    """The bootstrap address, and whether the broker is fresh (started by this demo)."""
    given = config.env("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        log.info("broker: %s (KAFKA_BOOTSTRAP_SERVERS)", given)
        return given, False
    if images.engine_problem() is None:
        why = compose_kafka(demo)
        if why is None:
            return compose_bootstrap(), False
        log.warning("the Docker engine cannot serve the stack (%s): using the local broker", why)
    from cyberstream.broker import BrokerError, LocalBroker

    broker = LocalBroker(config.state_dir())
    running = broker.state()
    if running is not None:
        log.info("broker: the local broker already running at %s", running.bootstrap)
        return running.bootstrap, False
    log.info("broker: starting a local Apache Kafka (no KAFKA_BOOTSTRAP_SERVERS, no Docker Compose Kafka)")
    try:
        st = broker.start()
    except BrokerError as exc:
        raise SystemExit(f"cyberstream demo: {exc}") from None
    demo.broker = broker
    return st.bootstrap, True


def run(args: argparse.Namespace) -> int:
    demo = Demo()
    started = time.monotonic()
    try:
        return _run(demo, args, started)
    except KeyboardInterrupt:
        print("\ncyberstream demo: interrupted; stopping what it started", file=sys.stderr)
        return 130
    finally:
        demo.stop_all()


def _run(demo: Demo, args: argparse.Namespace, started: float) -> int:
    bootstrap, fresh = _find_broker(demo)
    if args.data.exists():
        log.info("data: %s (found)", args.data)
    else:
        gen = ["generate", "--days", str(args.days), "--out", str(args.data)]
        if args.events_per_day:
            gen += ["--events-per-day", str(args.events_per_day)]
        demo.run(gen)
    if (args.model_dir / "metadata.json").exists():
        log.info("model: %s (found)", args.model_dir)
    else:
        demo.run(["train", "--data", str(args.data), "--out", str(args.model_dir)])

    # A fresh broker gets the default topic names; on a shared one this run gets its own.
    run_id = uuid.uuid4().hex[:6]
    suffix = "" if fresh else f"-demo-{run_id}"
    topics = {
        "events": config.events_topic() + suffix,
        "labels": config.labels_topic() + suffix,
        "alerts": config.alerts_topic() + suffix,
        "dlq": config.dlq_topic() + suffix,
    }
    common = ["--bootstrap-servers", bootstrap]
    checkpoint = config.state_dir() / f"demo-{run_id}.ckpt"
    # Created once the producer has exited: the detector then reads to the end and stops.
    end_file = config.state_dir() / f"demo-{run_id}.end"
    idle = ["--idle-timeout", str(args.idle_timeout)] if args.idle_timeout is not None else []
    detector = demo.start([
        "detect", *common, "--model-dir", str(args.model_dir), "--group-id", f"cyberstream-demo-{run_id}",
        "--events-topic", topics["events"], "--labels-topic", topics["labels"], "--alerts-topic", topics["alerts"],
        "--dlq-topic", topics["dlq"], "--checkpoint", str(checkpoint), "--features", args.features,
        "--end-file", str(end_file), *idle,
        "--allowed-lateness-secs", str(config.replay_lateness_secs(args.speed)),
    ])  # fmt: skip
    demo.run([
        "produce", *common, "--data", str(args.data), "--events-topic", topics["events"],
        "--labels-topic", topics["labels"], "--dlq-topic", topics["dlq"], "--speed", str(args.speed),
        "--label-delay", str(args.label_delay),
    ])  # fmt: skip
    end_file.parent.mkdir(parents=True, exist_ok=True)
    end_file.touch()
    if detector.wait() != 0:
        raise SystemExit(f"cyberstream demo: the detector failed (exit {detector.returncode})")
    summary = ["alerts", *common, "--topic", topics["alerts"], "--summary", "--truth", str(args.data),
               "--model-dir", str(args.model_dir), "--report", str(args.report), "--until-end"]  # fmt: skip
    if args.quiet:
        summary.append("--quiet")
    demo.run(summary)
    checkpoint.unlink(missing_ok=True)
    end_file.unlink(missing_ok=True)
    where = f"alert topic: {topics['alerts']} on {bootstrap}"
    if demo.broker is not None and args.keep_broker:
        demo.broker = None  # not stopped: `cyberstream alerts` can read it; `cyberstream broker stop` ends it
    elif demo.broker is not None:
        where += " (the demo's broker is stopped now; --keep-broker leaves it running)"
    print(f"\ndemo finished in {time.monotonic() - started:,.0f} s; {where}")
    return 0
