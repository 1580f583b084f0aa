"""The detector end to end against a real broker: alerts, feature parity, restart after SIGKILL,
and delayed labels.

One small generated stream (a few days, two red-team campaigns) and one model trained on it
are shared by the module; each test uses its own consumer group and alert topic.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import uuid

import jsonschema
import pandas as pd
import pytest

from cyberstream import config
from cyberstream.kafka_io import make_consumer, make_producer, read_topic
from cyberstream.schema import alert_schema
from training.data import read_events

pytestmark = pytest.mark.integration

LABEL_DELAY = 600  # seconds of event time between an event and its label
PARTITIONS = 3


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cyberstream.cli", *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"cyberstream {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def stream(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A generated stream replayed into fresh topics, and a model trained on the same data."""
    root = tmp_path_factory.mktemp("detector")
    data = root / "events.csv"
    _cli("generate", "--days", "4", "--events-per-day", "4000", "--campaigns", "2", "--campaign-intensity", "60",
         "--seed", "5", "--out", str(data), "--no-progress")  # fmt: skip
    models = root / "models"
    _cli("train", "--data", str(data), "--out", str(models), "--no-progress",
         "--classifiers", "hist_gradient_boosting,logistic_regression")  # fmt: skip
    suffix = uuid.uuid4().hex[:8]
    topics = {"events": f"ev-{suffix}", "labels": f"lab-{suffix}", "dlq": f"dlq-{suffix}"}
    _cli("produce", "--data", str(data), "--bootstrap-servers", kafka_bootstrap, "--events-topic", topics["events"],
         "--labels-topic", topics["labels"], "--dlq-topic", topics["dlq"], "--partitions", str(PARTITIONS),
         "--label-delay", str(LABEL_DELAY), "--speed", "max", "--no-progress")  # fmt: skip
    # Malformed messages on both input topics: the detector must dead-letter them and go on.
    producer = make_producer(kafka_bootstrap)
    for value in (b"not json", b'{"log_id": 1}'):
        producer.send(topics["events"], key=b"bad", value=value, partition=0)
    producer.send(topics["labels"], key=b"bad", value=b'{"connection": "x", "log_id": -1, "secs": 0, "label": "A"}',
                  partition=0)  # fmt: skip
    producer.flush()
    producer.close()
    truth, report = read_events(data, progress=False)
    assert report.rejected == 0
    return {"root": root, "data": data, "models": models, "topics": topics, "truth": truth,
            "bootstrap": kafka_bootstrap}  # fmt: skip


def _detect_args(stream: dict, group: str, alerts_topic: str, *extra: str) -> list[str]:
    t = stream["topics"]
    return [
        "detect", "--model-dir", str(stream["models"]), "--bootstrap-servers", stream["bootstrap"],
        "--group-id", group, "--events-topic", t["events"], "--labels-topic", t["labels"],
        "--alerts-topic", alerts_topic, "--dlq-topic", t["dlq"], "--partitions", str(PARTITIONS),
        "--checkpoint", str(stream["root"] / f"{group}.ckpt"), "--log-every", "2", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(stream: dict) -> dict:
    """One detector run over the whole stream, recording features for the parity check."""
    group = f"det-a-{uuid.uuid4().hex[:6]}"
    alerts_topic = f"alerts-{group}"
    recorded = stream["root"] / "features-a.jsonl"
    proc = _cli(*_detect_args(stream, group, alerts_topic, "--idle-timeout", "4", "--record-features",
                              str(recorded), "--record-every", "10"))  # fmt: skip
    return {"alerts": read_topic(stream["bootstrap"], alerts_topic), "recorded": recorded, "stderr": proc.stderr}


def test_alerts_appear_for_the_campaigns_with_unique_ids(stream: dict, uninterrupted: dict):
    alerts = uninterrupted["alerts"]
    assert "detector summary" in uninterrupted["stderr"]
    assert alerts, "the detector published no alert"
    ids = [a["alert_id"] for a in alerts]
    assert len(ids) == len(set(ids)), "two alerts share an id"
    schema = alert_schema()
    for a in alerts:
        jsonschema.validate(a, schema)
        assert a["score"] >= a["threshold"]
    truth = stream["truth"]
    conn = truth["src_name"] + " / " + truth["dest_name"]
    malicious = set(conn[truth["label"]])
    alerted = {a["connection"] for a in alerts}
    caught = alerted & malicious
    # Each campaign comes from its own attacker host: at least one of each one's connections is alerted.
    attackers = truth.loc[truth["label"], "src_host"].unique()
    assert len(attackers) == 2
    for host in attackers:
        conns = set(conn[truth["label"] & (truth["src_host"] == host)])
        assert conns & alerted, f"no alert for the campaign from {host}"
    # Alerts concentrate on malicious connections: clearly more than picking connections at random.
    base_rate = len(malicious) / conn.nunique()
    precision = len(caught) / len(alerted)
    assert precision > 1.5 * base_rate, f"precision by connection {precision:.3f} vs base rate {base_rate:.3f}"


def test_features_equal_the_featuretools_oracle(stream: dict, uninterrupted: dict):
    from cyberstream.features import feature_matrix, features_equal
    from training.dfs import load_features

    rows = [json.loads(line) for line in uninterrupted["recorded"].read_text().splitlines()]
    alert_keys = {(a["connection"], a["cutoff_secs"]) for a in uninterrupted["alerts"]}
    recorded_keys = {(r["connection"], r["cutoff_secs"]) for r in rows}
    assert alert_keys <= recorded_keys, "every alerted cutoff is recorded"
    assert len(rows) >= 200
    features = load_features(stream["models"] / "features.json")
    window = json.loads((stream["models"] / "metadata.json").read_text())["window_secs"]
    events = stream["truth"].drop(columns=["label"])
    cutoffs = pd.DataFrame({"connection_id": [r["connection"] for r in rows],
                            "cutoff_secs": [r["cutoff_secs"] for r in rows]})  # fmt: skip
    oracle = feature_matrix(events, cutoffs, features, window, engine="oracle")
    mismatches = []
    for i, r in enumerate(rows):
        oracle_row = oracle.iloc[i]  # one row extraction per cutoff, not per value
        for name, value in r["features"].items():
            expected = oracle_row[name]
            if isinstance(expected, bool) or hasattr(expected, "item"):
                expected = expected.item() if hasattr(expected, "item") else expected
            if not features_equal(value, expected):
                mismatches.append((r["connection"], r["cutoff_secs"], name, value, expected))
    assert not mismatches, f"{len(mismatches)} feature values differ from featuretools, e.g. {mismatches[:5]}"


def test_restart_after_sigkill_yields_the_same_alerts(stream: dict, uninterrupted: dict):
    group = f"det-b-{uuid.uuid4().hex[:6]}"
    alerts_topic = f"alerts-{group}"
    ckpt = stream["root"] / f"{group}.ckpt"
    args = [sys.executable, "-m", "cyberstream.cli",
            *_detect_args(stream, group, alerts_topic, "--checkpoint-every", "0.3", "--batch-size", "64")]  # fmt: skip
    victim = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    total = len(stream["truth"])
    deadline = time.monotonic() + 120
    committed = 0
    while time.monotonic() < deadline:
        if ckpt.exists():
            try:
                committed = sum(pickle.loads(ckpt.read_bytes())["offsets"]["events"].values())
            except (EOFError, pickle.UnpicklingError, KeyError):
                committed = 0
            if committed > 0:
                break
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert 0 < committed < total, f"the kill must land mid-stream (committed {committed} of {total} events)"

    restarted = _cli(*_detect_args(stream, group, alerts_topic, "--idle-timeout", "4"))
    assert "restored checkpoint" in restarted.stderr
    alerts = read_topic(stream["bootstrap"], alerts_topic)
    by_id = {a["alert_id"]: a for a in alerts}
    expected = {a["alert_id"]: a for a in uninterrupted["alerts"]}
    assert set(by_id) == set(expected)
    for aid, a in expected.items():
        assert by_id[aid]["cutoff_secs"] == a["cutoff_secs"] and by_id[aid]["log_id"] == a["log_id"]
        assert by_id[aid]["score"] == pytest.approx(a["score"], abs=1e-6)


def test_a_restart_mid_stream_scores_every_batch_cutoff_exactly_once(stream: dict):
    """A detector stopped halfway (committing a checkpoint) and another resuming from it score,
    together, exactly the batch definition's cutoffs: the idle connections' counts travel in
    the checkpoint, so connections that come back after the restart count on."""
    from cyberstream.features import make_engine
    from detector.models import load_batch_model
    from detector.stream import DetectorConfig, StreamDetector
    from training.labels import label_times

    model = load_batch_model(stream["models"])
    t = stream["topics"]
    group = f"det-r-{uuid.uuid4().hex[:6]}"
    logs, idle_at_restart = [], 0
    for max_events in (len(stream["truth"]) // 2, None):
        cfg = DetectorConfig(
            bootstrap=stream["bootstrap"], group_id=group, events_topic=t["events"], labels_topic=t["labels"],
            alerts_topic=f"alerts-{group}", dlq_topic=t["dlq"], checkpoint_path=stream["root"] / f"{group}.ckpt",
            kind=model.kind, window_secs=model.window_secs, label_spec=model.label_spec, threshold=model.threshold,
            idle_timeout=4, log_every_secs=5, max_events=max_events,
        )  # fmt: skip
        detector = StreamDetector(cfg, model, lambda: make_engine("compiled", model.features, model.window_secs),
                                  model.explainer())  # fmt: skip
        detector.cutoff_log = []
        detector.run()
        logs.append(detector.cutoff_log)
        if max_events is not None:
            idle_at_restart = len(pickle.loads(cfg.checkpoint_path.read_bytes())["idle"])
    assert idle_at_restart > 0, "the restart must hold idle connections for the test to mean anything"
    assert logs[0] and logs[1]
    scored = [(c, int(secs), int(log_id)) for c, secs, log_id in logs[0] + logs[1]]
    every = label_times(stream["truth"], kind=model.kind, spec=model.label_spec)
    want = set(zip(every["connection_id"], every["cutoff_secs"].astype(int), every["log_id"].astype(int), strict=True))
    assert len(scored) == len(set(scored)), "a cutoff was scored twice"
    assert set(scored) == want, f"{len(want - set(scored))} batch cutoffs not scored, {len(set(scored) - want)} extra"


def test_online_model_learns_only_from_labels_that_arrived(stream: dict):
    from cyberstream.features import make_engine
    from detector.models import load_batch_model
    from detector.stream import DetectorConfig, StreamDetector

    model = load_batch_model(stream["models"])
    t = stream["topics"]
    group = f"det-c-{uuid.uuid4().hex[:6]}"
    cfg = DetectorConfig(
        bootstrap=stream["bootstrap"], group_id=group, events_topic=t["events"], labels_topic=t["labels"],
        alerts_topic=f"alerts-{group}", dlq_topic=t["dlq"], checkpoint_path=stream["root"] / f"{group}.ckpt",
        kind=model.kind, window_secs=model.window_secs, label_spec=model.label_spec, threshold=model.threshold,
        idle_timeout=4, log_every_secs=5,
    )  # fmt: skip
    detector = StreamDetector(cfg, model, lambda: make_engine("compiled", model.features, model.window_secs),
                              model.explainer())  # fmt: skip
    detector.learn_log = []
    detector.cutoff_log = []
    stats = detector.run()
    assert stats.learned > 0 and stats.learned_positive > 0
    assert len(detector.learn_log) == stats.learned
    for boundary, _conn, cutoff_secs, _label, arrivals in detector.learn_log:
        assert arrivals, "a resolved cutoff used at least one label"
        # Every label used had arrived (its record time, secs + delay) before the learning step.
        assert max(arrivals) < boundary
        # ... which is at least the label delay after the cutoff it resolves.
        assert boundary > cutoff_secs + LABEL_DELAY
    # Each learnt label is the batch label of that cutoff (the one definition, applied to the
    # whole data at once).
    from training.labels import label_times

    every = label_times(stream["truth"], kind=model.kind, spec=model.label_spec)
    # The detector scores exactly the batch definition's cutoffs, those of connections that come
    # back after more than a window of silence included (their counts outlive their windows).
    scored = [(conn, int(secs), int(log_id)) for conn, secs, log_id in detector.cutoff_log]
    assert len(set(scored)) == len(scored) == stats.cutoffs, "a cutoff was scored twice"
    want = set(zip(every["connection_id"], every["cutoff_secs"].astype(int), every["log_id"].astype(int), strict=True))
    assert set(scored) == want, f"{len(want - set(scored))} batch cutoffs not scored, {len(set(scored) - want)} extra"
    batch = every.dropna(subset=["label"])
    expected = {(c, int(t)): bool(y) for c, t, y in zip(batch["connection_id"], batch["cutoff_secs"], batch["label"],
                                                         strict=True)}  # fmt: skip
    learnt = {(conn, int(secs)): bool(y) for _, conn, secs, y, _ in detector.learn_log}
    assert len(learnt) == len(detector.learn_log), "a cutoff was learnt twice"
    wrong = [(key, y, expected.get(key)) for key, y in learnt.items() if expected.get(key) != y]
    assert not wrong, f"{len(wrong)} learnt labels differ from the batch labels, e.g. {wrong[:3]}"
    # Every cutoff the stream can resolve is learnt: its label is True, or its window is full
    # (batch labels also decide windows cut short by the end of the data), its last label
    # arrived a learning step before the stream's end, and no silence of a window's length
    # falls between it and its last label-window event (the detector drops an idle
    # connection's pending cutoffs: their labels wait for events that may never come).
    truth = stream["truth"].assign(connection_id=stream["truth"]["src_name"] + " / " + stream["truth"]["dest_name"])
    size = truth["connection_id"].value_counts()
    ordered = truth.sort_values(["connection_id", "secs", "log_id"])
    silences = ordered.assign(gap=ordered.groupby("connection_id")["secs"].diff())
    silences = silences[silences["gap"] > model.window_secs].groupby("connection_id")["secs"].apply(list).to_dict()
    last = int(truth["secs"].max())
    resolvable = {
        (c, int(t)) for c, t, k, y, end in zip(batch["connection_id"], batch["cutoff_secs"], batch["cutoff_index"],
                                               batch["label"], batch["label_end_secs"], strict=True)
        if (y or k + model.label_spec.horizon <= size[c]) and end + LABEL_DELAY + cfg.learn_every_secs < last
        and not any(t < back <= end for back in silences.get(c, ()))
    }  # fmt: skip
    assert len(resolvable) > 0.7 * len(expected)
    assert any(silences.get(c) and t > min(silences[c]) for c, t in resolvable), "no connection came back"
    missing = resolvable - set(learnt)
    assert not missing, f"{len(missing)} resolvable cutoffs were not learnt, e.g. {sorted(missing)[:3]}"


def test_malformed_messages_are_dead_lettered_with_their_reason(stream: dict, uninterrupted: dict):
    assert re.search(r"malformed records\s+3,", uninterrupted["stderr"]), uninterrupted["stderr"][-2000:]
    letters = read_topic(stream["bootstrap"], stream["topics"]["dlq"])
    t = stream["topics"]
    mine = {(d["source"].split("[")[0], d["raw"], d["reason"]) for d in letters}
    assert (t["events"], "not json", next(d["reason"] for d in letters if d["raw"] == "not json")) in mine
    reasons = {d["raw"]: d["reason"] for d in letters}
    assert "not valid JSON" in reasons["not json"]
    assert "lacks field" in reasons['{"log_id": 1}']
    assert "log_id must be a non-negative integer" in next(r for raw, r in reasons.items() if '"log_id": -1' in raw)


def test_sigterm_commits_checkpoints_and_exits_zero(stream: dict):
    from kafka.structs import TopicPartition

    group = f"det-d-{uuid.uuid4().hex[:6]}"
    ckpt = stream["root"] / f"{group}.ckpt"
    args = [sys.executable, "-m", "cyberstream.cli", *_detect_args(stream, group, f"alerts-{group}",
                                                                    "--checkpoint-every", "0.5")]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "detector summary" in err
    saved = pickle.loads(ckpt.read_bytes())["offsets"]
    consumer = make_consumer(stream["bootstrap"], group_id=group)
    for topic, key in ((stream["topics"]["events"], "events"), (stream["topics"]["labels"], "labels")):
        for p, offset in saved[key].items():
            assert consumer.committed(TopicPartition(topic, p)) == offset
    consumer.close()


def test_a_member_joining_mid_stream_takes_over_partitions_without_losing_or_rejecting_events(stream: dict):
    """Two detectors in one group: the second joins after the first has processed half the
    stream. The first commits on revocation, the second rebuilds the windows of the
    partitions it takes over and resumes at the event time their previous owner reached."""
    suffix = uuid.uuid4().hex[:8]
    t = {"events": f"ev2-{suffix}", "labels": f"lab2-{suffix}", "dlq": f"dlq2-{suffix}"}
    half = 2 * 86_400
    truth = stream["truth"]
    first_half = int((truth["secs"] < half).sum())

    def produce(*slice_args: str) -> None:
        _cli("produce", "--data", str(stream["data"]), "--bootstrap-servers", stream["bootstrap"],
             "--events-topic", t["events"], "--labels-topic", t["labels"], "--dlq-topic", t["dlq"],
             "--partitions", str(PARTITIONS), "--label-delay", str(LABEL_DELAY), "--speed", "max", "--no-progress",
             *slice_args)  # fmt: skip

    group = f"det-e-{uuid.uuid4().hex[:6]}"

    def member(name: str, idle: str) -> tuple[subprocess.Popen, object]:
        ckpt = stream["root"] / f"{group}-{name}.ckpt"
        args = [sys.executable, "-m", "cyberstream.cli", "detect", "--model-dir", str(stream["models"]),
                "--bootstrap-servers", stream["bootstrap"], "--group-id", group, "--events-topic", t["events"],
                "--labels-topic", t["labels"], "--alerts-topic", f"alerts-{group}", "--dlq-topic", t["dlq"],
                "--partitions", str(PARTITIONS), "--checkpoint", str(ckpt), "--checkpoint-every", "0.3",
                "--idle-timeout", idle, "--log-every", "2",
                # The second half is replayed at --speed max while both run: a minute of event time
                # is well under a millisecond, less than the producer's partitions lie apart, so a
                # caught-up partition waits for a pause instead (what --help advises for fast
                # replays); late events then can only come from the hand-over, which is tested.
                "--allowed-lateness-secs", str(config.replay_lateness_secs("max"))]  # fmt: skip
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), ckpt

    def committed_events(ckpt) -> int:
        try:
            return sum(pickle.loads(ckpt.read_bytes())["offsets"]["events"].values())
        except (FileNotFoundError, EOFError, pickle.UnpicklingError, KeyError):
            return -1

    produce("--until-secs", str(half))
    a, a_ckpt = member("a", "20")
    deadline = time.monotonic() + 120
    while committed_events(a_ckpt) < first_half and time.monotonic() < deadline:
        time.sleep(0.1)
    assert committed_events(a_ckpt) == first_half, "the first member processes the first half alone"
    b, b_ckpt = member("b", "6")
    while not b_ckpt.exists() and time.monotonic() < deadline:  # written once it owns partitions
        time.sleep(0.1)
    produce("--from-secs", str(half))
    _, a_err = a.communicate(timeout=180)
    _, b_err = b.communicate(timeout=180)
    assert a.returncode == 0, a_err[-3000:]
    assert b.returncode == 0, b_err[-3000:]

    def figure(err: str, pattern: str) -> int:
        return int(re.search(pattern, err).group(1).replace(",", ""))

    processed = [figure(err, r"events processed\s+([\d,]+)") for err in (a_err, b_err)]
    assert figure(b_err, r"windows rebuilt\s+([\d,]+)") > 0, "the partitions taken over had events in the window"
    assert processed[0] >= first_half and processed[1] > 0
    for err in (a_err, b_err):
        assert re.search(r"late events 0 ", err), err[-4000:]
    assert sum(processed) == len(truth), f"every event processed once across the two members:\n{a_err[-4000:]}\n{b_err[-4000:]}"


def test_a_second_detector_on_the_same_checkpoint_is_refused(stream: dict):
    from detector.checkpoint import lock_checkpoint

    group = f"det-f-{uuid.uuid4().hex[:6]}"
    held = lock_checkpoint(stream["root"] / f"{group}.ckpt")  # a detector that is running
    try:
        proc = subprocess.run([sys.executable, "-m", "cyberstream.cli",
                               *_detect_args(stream, group, f"alerts-{group}", "--idle-timeout", "2")],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        held.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"is in use by another detector (pid {os.getpid()})" in proc.stderr
    assert "its own --checkpoint" in proc.stderr
    # Once the first one is gone, the checkpoint is free again.
    lock_checkpoint(stream["root"] / f"{group}.ckpt").close()


def test_late_events_of_a_lagging_partition_are_dead_lettered_and_event_time_never_goes_back(stream: dict):
    """A partition whose first records arrive after the others have run ahead (a live
    producer writes partitions a little apart): its events before the processed event time
    are late, and the seconds they fall in must not move the detector's event time back."""
    from collections import deque

    from cyberstream.features import make_engine
    from cyberstream.schema import Event
    from detector.models import load_batch_model
    from detector.stream import DetectorConfig, StreamDetector

    model = load_batch_model(stream["models"])
    group = f"det-g-{uuid.uuid4().hex[:6]}"
    cfg = DetectorConfig(
        bootstrap=stream["bootstrap"], group_id=group, events_topic="ev-unused", labels_topic="lab-unused",
        alerts_topic=f"alerts-{group}", dlq_topic=f"dlq-{group}", checkpoint_path=stream["root"] / f"{group}.ckpt",
        kind=model.kind, window_secs=model.window_secs, label_spec=model.label_spec, threshold=model.threshold,
    )  # fmt: skip
    detector = StreamDetector(cfg, model, lambda: make_engine("compiled", model.features, model.window_secs),
                              model.explainer())  # fmt: skip

    def event(log_id: int, secs: int, user: str) -> Event:
        return Event(log_id, secs, f"{user}@DOM1", f"{user}@DOM1", "C1", "C2", "NTLM", "Network", "LogOn", "Success")

    detector.merger.event_q = {0: deque((i, event(i, secs, "U1")) for i, secs in enumerate((100, 200, 278))), 1: deque()}
    detector._advance(final=True)
    detector._flush_scores()  # features computed at 278: the engine cannot take earlier events any more
    assert detector.processed_secs == 278
    detector.merger.event_q[1].extend((i, event(10 + i, secs, "U2")) for i, secs in enumerate((21, 30)))
    detector.merger.event_q[0].append((3, event(3, 300, "U1")))
    detector._advance(final=True)
    assert detector.stats.late == 2
    assert detector.processed_secs == 300
    assert detector.stats.events == 4
    detector.producer.flush()
    letters = read_topic(stream["bootstrap"], cfg.dlq_topic)
    assert sorted(d["source"] for d in letters) == ["ev-unused[1]@0", "ev-unused[1]@1"]
    assert all("late event" in d["reason"] for d in letters)
