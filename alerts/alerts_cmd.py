"""Follow the alert topic, or summarise a run of alerts against the ground truth.

Follow mode (default): one line per alert as it arrives, from the start of the topic (or
only new ones with --from-now):

    day 6 09:41:27  U7741@DOM1 / U7741@DOM1   score 0.912 (batch 0.880, online 0.950)  top COUNT(log) = 12

The time is the cutoff's event time, as day/hh:mm:ss since secs=0. --json prints the raw
alert objects instead, one per line, for piping (e.g. into jq).

--summary --truth CSV: when the run ends (--idle-timeout seconds without a new alert,
--max-alerts messages read, --until-end, or Ctrl-C), joins the alerts with the ground truth (the same
CyberFLTenDays CSV, parsed strictly) and prints alerts, connections alerted, true and
false positives by connection and by cutoff, recall, precision, the median detection
delay and alerts per day, and writes an HTML report with plots (--report).

Every alert is checked against cyberstream/schemas/alert.schema.json: invalid ones are
counted and reported, never fatal. Alerts are delivered at least once, so duplicates are
dropped by alert_id. The consumer joins no group and commits nothing: any number of
`cyberstream alerts` can read the topic side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_SUMMARY_IDLE_TIMEOUT = 30.0
MAX_INVALID_LOGGED = 20


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from cyberstream.config import DEFAULT_DATA_PATH, alerts_topic, model_dir
    from cyberstream.kafka_io import add_bootstrap_argument

    add_bootstrap_argument(parser)
    parser.add_argument("--topic", default=alerts_topic(),
                        help="alert topic (default: $CYBERSTREAM_ALERTS_TOPIC or %(default)s)")  # fmt: skip
    parser.add_argument("--from-now", action="store_true",
                        help="only alerts published from now on (default: from the start of the topic)")  # fmt: skip
    parser.add_argument("--json", action="store_true",
                        help="print the raw alert objects, one JSON object per line (the summary, if any, goes to stderr)")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no line per alert (with --summary: only the summary)")
    parser.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS",
                        help="end the run after this many seconds without a new alert "
                             f"(default: never; {DEFAULT_SUMMARY_IDLE_TIMEOUT:g} with --summary)")  # fmt: skip
    parser.add_argument("--max-alerts", type=int, default=None, metavar="N",
                        help="end the run after reading N alert messages")  # fmt: skip
    parser.add_argument("--until-end", action="store_true",
                        help="end the run once every alert on the topic when it starts is read (for a "
                             "finished detector run: no waiting for a quiet spell)")  # fmt: skip
    group = parser.add_argument_group("summary")
    group.add_argument("--summary", action="store_true",
                       help="when the run ends, join the alerts with --truth, print the figures and write --report")  # fmt: skip
    group.add_argument("--truth", type=Path, default=None,
                       help=f"the ground-truth CyberFLTenDays CSV (default: $CYBERSTREAM_DATA or {DEFAULT_DATA_PATH})")  # fmt: skip
    group.add_argument("--report", type=Path, default=Path("reports") / "alerts.html",
                       help="HTML report with the plots (default %(default)s)")  # fmt: skip
    group.add_argument("--summary-json", type=Path, default=None, metavar="PATH",
                       help="also write the summary's figures as JSON")  # fmt: skip
    group.add_argument("--model-dir", type=Path, default=model_dir(),
                       help="the model the detector ran; its metadata gives the label definition and the "
                            "window (default: $CYBERSTREAM_MODEL_DIR or %(default)s; training's defaults "
                            "if it has no metadata)")  # fmt: skip
    group.add_argument("--campaign-gap-hours", type=float, default=None,
                       help="a pause longer than this between malicious events of one src_host starts a new "
                            "campaign (default: the model's window, else 24)")  # fmt: skip
    group.add_argument("--label-lead", type=int, default=None, metavar="L",
                       help="label lead L (default: the model's, else training's default)")  # fmt: skip
    group.add_argument("--label-window", type=int, default=None, metavar="W",
                       help="label window W (default: the model's, else training's default)")  # fmt: skip
    group.add_argument("--min-events", type=int, default=None, metavar="N",
                       help="earlier events a cutoff needs, N (default: the model's, else training's default)")  # fmt: skip
    group.add_argument("--no-progress", action="store_true", help="no progress bar while reading --truth")


# --------------------------------------------------------------------------------------
# One line per alert
# --------------------------------------------------------------------------------------
def _num(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def format_alert_line(alert: dict) -> str:
    """One readable line: cutoff time (day/hh:mm:ss of event time), connection, scores, top feature."""
    secs = int(alert["cutoff_secs"])
    d, rest = divmod(secs, 86_400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    online = alert.get("online_score")
    online_text = "-" if online is None else f"{online:.3f}"
    line = (
        f"day {d} {h:02d}:{m:02d}:{s:02d}  {alert['connection']:<36} score {alert['score']:.3f} "
        f"(batch {alert['batch_score']:.3f}, online {online_text})"
    )
    top = alert.get("top_features") or []
    if top:
        line += f"  top {top[0]['name']} = {_num(top[0].get('value'))}"
    return line


def _decode(raw: bytes | None) -> Any:
    """The message value as JSON, or its text (which then fails validation, with the text as reason)."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", errors="replace")[:200]


# --------------------------------------------------------------------------------------
# The consumer loop
# --------------------------------------------------------------------------------------
class _Stop:
    """Set by SIGINT/SIGTERM so the loop ends cleanly and the summary still prints."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True


def _assign(consumer, topic: str, from_now: bool, stop: _Stop, idle_timeout: float | None) -> dict | None:
    """Assign every partition of ``topic`` (waiting for it to exist) and return their end
    offsets; None if the run ended first."""
    from kafka import TopicPartition

    t0 = time.monotonic()
    waited = False
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            break
        if not waited:
            log.info("waiting for topic %r to exist (the detector creates it)", topic)
            waited = True
        if stop.requested or (idle_timeout is not None and time.monotonic() - t0 > idle_timeout):
            log.warning("topic %r does not exist; no alerts read", topic)
            return None
        time.sleep(1.0)
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    if from_now:
        consumer.seek_to_end(*tps)
    else:
        consumer.seek_to_beginning(*tps)
    log.info("reading %s (%d partitions) %s", topic, len(tps), "from now on" if from_now else "from the start")
    return consumer.end_offsets(tps)


def _consume(args: argparse.Namespace, bootstrap: str, idle_timeout: float | None) -> list[Any]:
    """Read alerts until the run ends; print them as asked; return every decoded message value."""
    from alerts.summary import alert_problem
    from cyberstream.kafka_io import at_end, make_consumer

    stop = _Stop()
    # Signal handlers can only be set from the main thread (the demo may run this elsewhere).
    signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {s: signal.signal(s, stop) for s in signals}
    consumer = make_consumer(bootstrap, group_id=None, client_id="cyberstream-alerts")
    values: list[Any] = []
    seen: set[str] = set()
    invalid = 0
    try:
        ends = _assign(consumer, args.topic, args.from_now, stop, idle_timeout)
        if ends is None:
            return values
        last = time.monotonic()
        while not stop.requested:
            if args.max_alerts is not None and len(values) >= args.max_alerts:
                break
            if args.until_end and at_end(consumer, ends):
                log.info("read the topic to its end offsets: the run is over")
                break
            if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                log.info("no new alert for %.0f s: the run is over", idle_timeout)
                break
            batches = consumer.poll(timeout_ms=500)
            for record in (r for records in batches.values() for r in records):
                if args.max_alerts is not None and len(values) >= args.max_alerts:
                    break
                last = time.monotonic()
                obj = _decode(record.value)
                values.append(obj)
                problem = alert_problem(obj)
                if problem is not None:
                    invalid += 1
                    if invalid <= MAX_INVALID_LOGGED:
                        log.warning("invalid alert at %s[%d]@%d: %s", record.topic, record.partition, record.offset, problem)
                    continue
                if obj["alert_id"] in seen:
                    continue  # re-delivered (at-least-once): shown once
                seen.add(obj["alert_id"])
                if args.json:
                    print(json.dumps(obj, separators=(",", ":")), flush=True)
                elif not args.quiet:
                    print(format_alert_line(obj), flush=True)
    finally:
        consumer.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info("read %d alert messages: %d unique, %d invalid", len(values), len(seen), invalid)
    return values


def _check_truth(path: Path) -> str | None:
    """Why ``path`` cannot be the ground truth (missing, wrong header), or None."""
    from cyberstream.schema import COLUMNS, HEADER

    if not path.is_file():
        return (f"{path}: no such file; pass the CSV the producer replayed with --truth "
                f"(e.g. `cyberstream generate --out {path}` made it)")  # fmt: skip
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline().strip()
    if [h.strip() for h in header.split(",")] != list(COLUMNS):
        return f"{path}: first line must be the header {HEADER!r}, got {header[:200]!r}"
    return None


def run(args: argparse.Namespace) -> int:
    from cyberstream.config import data_path
    from cyberstream.kafka_io import BrokerUnavailable, resolve_bootstrap

    if args.max_alerts is not None and args.max_alerts < 1:
        print("cyberstream alerts: --max-alerts must be at least 1", file=sys.stderr)
        return 2
    truth = args.truth or data_path()
    if args.summary:
        problem = _check_truth(truth)
        if problem:
            print(f"cyberstream alerts: {problem}", file=sys.stderr)
            return 2
    idle_timeout = args.idle_timeout
    if idle_timeout is None and args.summary and args.max_alerts is None and not args.until_end:
        idle_timeout = DEFAULT_SUMMARY_IDLE_TIMEOUT
    try:
        bootstrap = resolve_bootstrap(args.bootstrap_servers)
    except BrokerUnavailable as exc:
        print(f"cyberstream alerts: {exc}", file=sys.stderr)
        return 1
    values = _consume(args, bootstrap, idle_timeout)
    if not args.summary:
        return 0
    return _summarize(args, values, truth)


def _model_metadata(model_dir: Path) -> dict[str, Any]:
    """The model's metadata (label definition, window), or {} when there is no model."""
    from training.model import METADATA_FILE

    path = Path(model_dir) / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        log.info("no model metadata at %s: training's default label definition", path)
        return {}
    except ValueError as exc:
        log.warning("%s is not valid JSON (%s): training's default label definition", path, exc)
        return {}
    return meta if isinstance(meta, dict) else {}


def _summarize(args: argparse.Namespace, values: list[Any], truth_path: Path) -> int:
    from alerts.report import write_report
    from alerts.summary import DEFAULT_CAMPAIGN_GAP_SECS, format_summary, summarize
    from training.data import read_events
    from training.labels import LabelSpec

    meta = _model_metadata(args.model_dir)
    spec_meta = {k: int(v) for k, v in (meta.get("label_spec") or {}).items() if k in ("min_events", "lead", "window")}
    flags = {"min_events": args.min_events, "lead": args.label_lead, "window": args.label_window}
    try:
        spec = LabelSpec(**{**spec_meta, **{k: v for k, v in flags.items() if v is not None}})
    except (TypeError, ValueError) as exc:
        print(f"cyberstream alerts: {exc}", file=sys.stderr)
        return 2
    if args.campaign_gap_hours is not None:
        gap_secs = int(args.campaign_gap_hours * 3600)
    else:
        gap_secs = int(meta.get("window_secs") or DEFAULT_CAMPAIGN_GAP_SECS)
    try:
        events, report = read_events(truth_path, progress=not args.no_progress)
    except (OSError, ValueError) as exc:
        print(f"cyberstream alerts: {exc}", file=sys.stderr)
        return 2
    if report.rejected:
        log.warning("ground truth: %s", report.summary())
    try:
        summary = summarize(values, events, spec=spec, campaign_gap_secs=gap_secs)
    except ValueError as exc:
        print(f"cyberstream alerts: {exc}", file=sys.stderr)
        return 2
    out = sys.stderr if args.json else sys.stdout
    print(format_summary(summary), file=out, flush=True)
    path = write_report(summary, args.report, title=f"cyberstream alerts: {truth_path.name}")
    print(f"report: {path}", file=out, flush=True)
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    return 0
