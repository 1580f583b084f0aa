"""`cyberstream alerts --summary`: the figures on a hand-made truth, the HTML report, the Kafka path.

The truth below is small enough to label by hand. Label spec N=1, L=1, W=3: a cutoff at
position k (k >= 1, last event of its second) is positive when any of events k+1..k+3 is
malicious; no label when fewer than two of those events exist.

    A  UA / UA  secs 10 20 30 40 50* 60* 70 80        (* malicious, from ATK)
       cutoffs k=1..7 (secs 20..80): T T T T F - -    4 positive
    B  UB / UB  secs 15 25 35 45 55                   clean
       cutoffs k=1..4 (secs 25..55): F F - -
    C  UC / UC  secs 100 1000* 1000* 1100 1200        malicious, never alerted
       cutoffs: k=2 (1000; k=1 shares its second) F, k=3 -, k=4 -
    D  UD / UD  secs 199000 199500 200000* 200100 200200
       cutoffs k=1..4: T F - -                        1 positive
"""

from __future__ import annotations

import base64
import csv
import json
import re
import time

import pandas as pd
import pytest

from alerts.alerts_cmd import format_alert_line
from alerts.report import write_report
from alerts.summary import format_summary, summarize
from detector.alerts import build_alert
from training.labels import LabelSpec

SPEC = LabelSpec(min_events=1, lead=1, window=3)
A, B, C, D, X = (f"U{c}@DOM1 / U{c}@DOM1" for c in "ABCDX")

# connection -> [(secs, malicious)]
EVENTS = {
    A: [(10, 0), (20, 0), (30, 0), (40, 0), (50, 1), (60, 1), (70, 0), (80, 0)],
    B: [(15, 0), (25, 0), (35, 0), (45, 0), (55, 0)],
    C: [(100, 0), (1000, 1), (1000, 1), (1100, 0), (1200, 0)],
    D: [(199000, 0), (199500, 0), (200000, 1), (200100, 0), (200200, 0)],
}


def truth_frame() -> pd.DataFrame:
    rows = []
    for conn, events in EVENTS.items():
        user = conn.split(" / ")[0]
        for secs, bad in events:
            host = "ATK" if bad else "C" + user[1]
            rows.append((secs, user, user, host, "C9", "NTLM", "Network", "LogOn", "Success", bool(bad)))
    rows.sort(key=lambda r: r[0])  # log_id = row number of a time-sorted file, as in the CSV
    df = pd.DataFrame(rows, columns=["secs", "src_name", "dest_name", "src_host", "dest_host",
                                     "auth_type", "login_type", "stage", "result", "label"])  # fmt: skip
    df.insert(0, "log_id", range(len(df)))
    return df


def make_alert(conn: str, cutoff: int, score: float = 0.9, online: float | None = 0.8) -> dict:
    """An alert as the detector publishes it (its own builder: the contract is exercised)."""
    return build_alert(
        connection=conn, kind="session", cutoff_secs=cutoff, log_id=0, batch_score=score, online_score=online,
        online_weight=0.5, score=score, threshold=0.5, model_version="test", events_in_window=4,
        top_features=[{"name": "COUNT(log)", "value": 4, "contribution": 1.5}], detected_at=time.time(),
    )  # fmt: skip


def alerts() -> list:
    bad = make_alert(B, 35)
    bad["score"] = 1.5  # out of [0, 1]: invalid
    return [
        make_alert(A, 60, 0.7),  # k=5: label F -> cutoff FP; A's first alert: 1 event, 10 s after 50
        make_alert(A, 70, 0.6, None),  # k=6: no label
        make_alert(B, 25, 0.55),  # k=1: F -> FP; B is clean -> connection FP
        make_alert(B, 25, 0.55),  # re-delivered: dropped
        make_alert(B, 15, 0.52),  # k=0: not an eligible cutoff
        make_alert(D, 199500, 0.95),  # k=1: T -> TP; before D's first malicious event: early, delay 0
        make_alert(X, 500, 0.8),  # a connection the truth does not know
        bad,
        "not an alert",
    ]


def test_summary_figures_on_a_hand_made_truth():
    s = summarize(alerts(), truth_frame(), spec=SPEC)

    assert (s.messages, s.invalid, s.duplicates, s.alerts) == (9, 2, 1, 6)
    # connections: alerted A B D X; malicious A C D
    assert s.connections_alerted == 4
    assert s.malicious_connections == 3
    assert (s.connection_tp, s.connection_fp, s.connection_unknown, s.connection_missed) == (2, 1, 1, 1)
    assert s.recall == pytest.approx(2 / 3)
    assert s.precision_connections == pytest.approx(2 / 3)
    # cutoffs: A60 F, A70 -, B25 F, B15 not a cutoff, D199500 T, X500 unknown connection
    assert (s.cutoff_tp, s.cutoff_fp, s.cutoff_unlabelled, s.cutoff_unknown) == (1, 2, 1, 2)
    assert s.positive_cutoffs == 4 + 1
    assert s.precision_cutoffs == pytest.approx(1 / 3)
    assert s.recall_cutoffs == pytest.approx(1 / 5)
    # delays: A 1 event / 10 s, D early (0, 0)
    assert s.early_alerts == 1 and s.early_beyond_horizon == 0
    assert s.median_delay_events == pytest.approx(0.5)
    assert s.median_delay_secs == pytest.approx(5.0)
    delays = s.delays.set_index("connection")
    assert delays.loc[A, ["delay_events", "delay_secs", "events_early"]].tolist() == [1, 10, 0]
    assert delays.loc[D, ["delay_events", "delay_secs", "events_early"]].tolist() == [0, 0, 1]
    days = (200200 - 10 + 1) / 86400
    assert s.days == pytest.approx(days)
    assert s.alerts_per_day == pytest.approx(6 / days)
    assert s.false_alerts_per_day == pytest.approx(2 / days)
    # campaigns of ATK: 50..1000 (A, C) and 200000 (D), more than a day apart
    assert [(c.src_host, c.start_secs, c.end_secs, c.malicious_events, c.connections) for c in s.campaigns] == [
        ("ATK", 50, 1000, 4, 2),
        ("ATK", 200000, 200000, 1, 1),
    ]
    assert [(c.connections_detected, c.alerts, c.first_alert_secs, c.delay_secs) for c in s.campaigns] == [
        (1, 2, 60, 10),
        (1, 1, 199500, 0),
    ]
    assert sum(s.invalid_reasons.values()) == 2
    assert json.loads(json.dumps(s.to_dict()))["spec"] == {"min_events": 1, "lead": 1, "window": 3}


def test_summary_text_states_the_figures_and_definitions():
    text = format_summary(summarize(alerts(), truth_frame(), spec=SPEC))
    assert "9 messages: 2 invalid, 1 duplicate ids dropped -> 6 alerts" in text
    assert "recall (connections)     66.7 %" in text
    assert "precision (cutoffs)      33.3 %" in text
    assert "median 0.5 events, 5 s of event time" in text
    assert "events k+1 .. k+3" in text and "L=1, W=3" in text
    assert "(delay 0)" in text


def test_a_shorter_campaign_gap_splits_campaigns_and_label_strings_are_accepted():
    truth = truth_frame()
    truth["label"] = truth["label"].map({True: "A", False: "N"})
    s = summarize(alerts(), truth, spec=SPEC, campaign_gap_secs=100)
    # 50, 60 | 1000, 1000 | 200000
    assert [(c.start_secs, c.end_secs) for c in s.campaigns] == [(50, 60), (1000, 1000), (200000, 200000)]
    # D's alert at 199500 is 500 s before its campaign: outside a 100 s gap, so that campaign is missed
    assert [c.delay_secs for c in s.campaigns] == [10, None, None]
    assert summarize(alerts(), truth, spec=SPEC, campaign_gap_secs=600).campaigns[2].delay_secs == 0


@pytest.mark.parametrize("cutoff_k, label, beyond", [(2, "negative", 1), (3, "positive", 0)])
def test_an_early_alert_is_beyond_the_horizon_exactly_when_its_cutoff_label_is_negative(cutoff_k, label, beyond):
    # one connection, events at secs 10, 20, ..., 100; the only malicious one is position 6 (secs 70)
    E = "UE@DOM1 / UE@DOM1"
    truth = pd.DataFrame({
        "log_id": range(10), "secs": [10 * (i + 1) for i in range(10)], "src_name": "UE@DOM1",
        "dest_name": "UE@DOM1", "src_host": "CE", "dest_host": "C9", "label": [i == 6 for i in range(10)],
    })  # fmt: skip
    s = summarize([make_alert(E, 10 * (cutoff_k + 1))], truth, spec=SPEC)  # L+W = 4
    assert s.alert_table["cutoff_label"].tolist() == [label]
    assert (s.early_alerts, s.early_beyond_horizon) == (1, beyond)
    assert (s.median_delay_events, s.median_delay_secs) == (0, 0)


def test_alerts_of_another_connection_kind_are_refused():
    a = make_alert(A, 60)
    a["connection_kind"] = "src_pair"
    with pytest.raises(ValueError, match="src_pair"):
        summarize([a], truth_frame(), spec=SPEC, kind="session")


def test_no_alerts_gives_zero_recall_not_a_crash():
    s = summarize([], truth_frame(), spec=SPEC)
    assert (s.alerts, s.connections_alerted, s.connection_missed, s.recall) == (0, 0, 3, 0.0)
    assert s.precision_cutoffs is None and s.median_delay_events is None
    assert "no malicious connection alerted" in format_summary(s)


def test_report_is_written_with_the_three_plots(tmp_path):
    s = summarize(alerts(), truth_frame(), spec=SPEC)
    path = write_report(s, tmp_path / "sub" / "alerts.html")
    page = path.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3
    assert all(base64.b64decode(b).startswith(b"\x89PNG\r\n\x1a\n") for b in images)
    assert "recall (connections)" in page and "#2" in page and "alerted cutoffs" in page


def test_alert_line_shows_event_time_connection_scores_and_top_feature():
    line = format_alert_line(make_alert(D, 199500, 0.95, None))
    assert line.startswith("day 2 07:25:00  UD@DOM1 / UD@DOM1")
    assert "score 0.950 (batch 0.950, online -)" in line
    assert line.endswith("top COUNT(log) = 4")


@pytest.mark.integration
def test_alerts_command_reads_the_topic_and_prints_the_summary(kafka_bootstrap, topic_name, tmp_path, capsys):
    from cyberstream.cli import main
    from cyberstream.kafka_io import ensure_topics, json_bytes, make_producer

    csv_path = tmp_path / "truth.csv"
    truth = truth_frame()
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["secs", "src_name", "dest_name", "src_host", "dest_host", "auth_type", "login_type",
                    "stage", "result", "label"])  # fmt: skip
        for r in truth.itertuples():
            w.writerow([r.secs, r.src_name, r.dest_name, r.src_host, r.dest_host, "?", "Network", "LogOn",
                        "Success", "A" if r.label else "N"])  # fmt: skip
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "metadata.json").write_text(json.dumps({"label_spec": SPEC.to_dict(), "window_secs": 86400}))

    ensure_topics(kafka_bootstrap, {topic_name: 2})
    producer = make_producer(kafka_bootstrap)
    for a in alerts():
        key = a["connection"].encode() if isinstance(a, dict) else None
        value = json_bytes(a) if isinstance(a, dict) else b"{not json"
        producer.send(topic_name, key=key, value=value)
    producer.flush()
    producer.close()

    # --until-end: the run ends at the topic's end offsets, whatever the first fetch takes.
    code = main([
        "alerts", "--bootstrap-servers", kafka_bootstrap, "--topic", topic_name, "--summary",
        "--truth", str(csv_path), "--model-dir", str(model_dir), "--until-end", "--no-progress",
        "--report", str(tmp_path / "alerts.html"), "--summary-json", str(tmp_path / "summary.json"),
    ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("day ")]
    assert len(lines) == 6  # unique valid alerts, each shown once
    assert "recall (connections)     66.7 %" in out
    figures = json.loads((tmp_path / "summary.json").read_text())
    assert (figures["alerts"], figures["invalid"], figures["duplicates"]) == (6, 2, 1)
    assert (figures["cutoff_tp"], figures["cutoff_fp"], figures["positive_cutoffs"]) == (1, 2, 5)
    assert (tmp_path / "alerts.html").stat().st_size > 10_000

    # --json: the objects, one per line, and the run ends after --max-alerts messages, before
    # the end offsets (--until-end keeps a run that finds fewer from waiting forever).
    code = main(["alerts", "--bootstrap-servers", kafka_bootstrap, "--topic", topic_name, "--json",
                 "--max-alerts", "3", "--until-end"])  # fmt: skip
    assert code == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(objs) == 3 and all(o["alert_id"] for o in objs)
    # ... and with more allowed than the topic holds, at its end: the 6 unique valid alerts.
    code = main(["alerts", "--bootstrap-servers", kafka_bootstrap, "--topic", topic_name, "--json",
                 "--max-alerts", "100", "--until-end"])  # fmt: skip
    assert code == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(objs) == 6 and len({o["alert_id"] for o in objs}) == 6
