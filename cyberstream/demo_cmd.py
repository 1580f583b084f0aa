"""Replay ten days end to end and show the alerts (what `make demo` runs).

1. Broker: $KAFKA_BOOTSTRAP_SERVERS if set; else Docker Compose's Kafka if a Docker engine
   answers; else the local broker (a running one, or one started here and stopped at the end).
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
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cyberstream import config

log = logging.getLogger("cyberstream.demo")

COMPOSE_BOOTSTRAP = "localhost:29092"


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
        self.compose = False

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
        if self.compose:
            subprocess.run(["docker", "compose", "stop", "kafka"], check=False)


def _docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _find_broker(demo: Demo) -> tuple[str, bool]:
    """The bootstrap address, and whether the broker is fresh (started by this demo)."""
    given = config.env("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        log.info("broker: %s (KAFKA_BOOTSTRAP_SERVERS)", given)
        return given, False
    if _docker_engine_answers():
        log.info("broker: Docker Compose's kafka service")
        subprocess.run(["docker", "compose", "up", "-d", "--wait", "kafka"], check=True)
        demo.compose = True
        return COMPOSE_BOOTSTRAP, False
    from cyberstream.broker import BrokerError, LocalBroker

    broker = LocalBroker(config.state_dir())
    running = broker.state()
    if running is not None:
        log.info("broker: the local broker already running at %s", running.bootstrap)
        return running.bootstrap, False
    log.info("broker: starting a local Apache Kafka (no Docker engine, no KAFKA_BOOTSTRAP_SERVERS)")
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
