"""`cyberstream demo` end to end on a small generated slice, against the real broker.

The demo generates the data, trains, runs the detector and the producer, and prints the
alert summary. The test reads the alert topic and the ground truth itself and checks the
printed figures against its own count.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from cyberstream.kafka_io import read_topic
from training.data import read_events

pytestmark = pytest.mark.integration


def _figure(text: str, pattern: str) -> tuple[int, ...]:
    match = re.search(pattern, text)
    assert match, f"summary line {pattern!r} not found in:\n{text}"
    return tuple(int(g.replace(",", "")) for g in match.groups())


def test_demo_prints_a_summary_that_matches_the_ground_truth(kafka_bootstrap: str, tmp_path):
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, CYBERSTREAM_HOME=str(tmp_path / "var"))
    # No idle timeout: the demo tells the detector when the replay is complete (--end-file), so
    # a stalled producer can neither make events late nor end the detector early.
    proc = subprocess.run(
        [sys.executable, "-m", "cyberstream.cli", "demo", "--days", "4", "--events-per-day", "4000", "--quiet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert (tmp_path / "data" / "CyberFLTenDays.csv").is_file() and (tmp_path / "models" / "metadata.json").is_file()
    report = re.search(r"report: (\S+)", out).group(1)
    assert (tmp_path / report).is_file() or os.path.isfile(report)
    topic = re.search(r"alert topic: (\S+) on ", out).group(1)

    # The test's own figures: alerts from the topic (unique ids), truth from the CSV.
    alerts: dict[str, dict] = {}
    for a in read_topic(kafka_bootstrap, topic):
        alerts.setdefault(a["alert_id"], a)
    truth, _ = read_events(tmp_path / "data" / "CyberFLTenDays.csv", progress=False)
    # The detector ran beside a --speed max replay and processed every event, none of them
    # dead-lettered as late (it waits for each caught-up partition's own next record).
    assert re.search(r"end of stream: \S+\.end exists", proc.stderr), proc.stderr[-4000:]
    assert "read the topic to its end offsets" in proc.stderr, proc.stderr[-4000:]
    summary = proc.stderr[proc.stderr.index("detector summary"):]
    assert _figure(summary, r"events processed\s+([\d,]+)") == (len(truth),), summary
    assert re.search(r"late events 0 ", summary), summary
    conn = truth["src_name"] + " / " + truth["dest_name"]
    malicious = set(conn[truth["label"]])
    alerted = {a["connection"] for a in alerts.values()}
    tp, fp = len(alerted & malicious), len(alerted - malicious)

    assert _figure(out, r"-> ([\d,]+) alerts") == (len(alerts),)
    assert _figure(out, r"connections alerted\s+([\d,]+): ([\d,]+) malicious \(TP\), ([\d,]+) clean") == (
        len(alerted), tp, fp)  # fmt: skip
    assert _figure(out, r"malicious connections\s+([\d,]+): ([\d,]+) alerted, ([\d,]+) missed") == (
        len(malicious), tp, len(malicious) - tp)  # fmt: skip
    recall = float(re.search(r"recall \(connections\)\s+([\d.]+) %", out).group(1))
    assert recall == pytest.approx(100 * tp / len(malicious), abs=0.05)
    assert tp > 0, "the demo detected no malicious connection"
