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
import uuid

import jsonschema
import pandas as pd
import pytest

from cyberstream import config
from cyberstream.kafka_io import make_consumer, make_producer, read_topic
from cyberstream.schema import alert_schema
from tests.waits import wait_for
from training.data import read_events

pytestmark = pytest.mark.integration

LABEL_DELAY = 600  # seconds of event time between an event and its label
PARTITIONS = 3


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cyberstream.cli", *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"cyberstream {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


def _produce(data, bootstrap: str, topics: dict, *extra: str) -> None:
    """Replay ``data`` (or the slice ``extra`` selects) into ``topics`` as fast as the broker takes it."""
    _cli("produce", "--data", str(data), "--bootstrap-servers", bootstrap, "--events-topic", topics["events"],
         "--labels-topic", topics["labels"], "--dlq-topic", topics["dlq"], "--partitions", str(PARTITIONS),
         "--label-delay", str(LABEL_DELAY), "--speed", "max", "--no-progress", *extra)  # fmt: skip


def _send_malformed(bootstrap: str, topics: dict) -> None:
    """Two malformed events and one malformed label, at the end of partition 0 of each topic."""
    producer = make_producer(bootstrap)
    for value in (b"not json", b'{"log_id": 1}'):
        producer.send(topics["events"], key=b"bad", value=value, partition=0)
    producer.send(topics["labels"], key=b"bad", value=b'{"connection": "x", "log_id": -1, "secs": 0, "label": "A"}',
                  partition=0)  # fmt: skip
    producer.flush()
    producer.close()


def _partitions(truth: pd.DataFrame) -> pd.Series:
    """The partition the producer writes each event (and its label) to: murmur2 of the connection."""
    from kafka.partitioner.default import murmur2

    conn = truth["src_name"] + " / " + truth["dest_name"]
    return conn.map(lambda c: (murmur2(c.encode()) & 0x7FFFFFFF) % PARTITIONS)


def _saved_offsets(ckpt) -> dict | None:
    """The checkpoint's offsets (None while there is no readable checkpoint)."""
    try:
        return pickle.loads(ckpt.read_bytes())["offsets"]
    except (FileNotFoundError, EOFError, pickle.UnpicklingError, KeyError):
        return None


def _committed_events(ckpt) -> int:
    """Events records covered by the checkpoint's offsets (-1 while there is no readable one)."""
    offsets = _saved_offsets(ckpt)
    return -1 if offsets is None else sum(offsets["events"].values())


def _figure(err: str, pattern: str) -> int:
    match = re.search(pattern, err)
    assert match, f"{pattern!r} not in the detector's output:\n{err[-3000:]}"
    return int(match.group(1).replace(",", ""))


def _in_process(stream: dict, group: str, **overrides) -> object:
    """A detector in this process on the module's stream (its own group and checkpoint)."""
    from cyberstream.features import make_engine
    from detector.models import load_batch_model
    from detector.stream import DetectorConfig, StreamDetector

    model = load_batch_model(stream["models"])
    t = stream["topics"]
    settings = dict(
        bootstrap=stream["bootstrap"], group_id=group, events_topic=t["events"], labels_topic=t["labels"],
        alerts_topic=f"alerts-{group}", dlq_topic=t["dlq"], checkpoint_path=stream["root"] / f"{group}.ckpt",
        kind=model.kind, window_secs=model.window_secs, label_spec=model.label_spec, threshold=model.threshold,
        idle_timeout=4, log_every_secs=5,
    )  # fmt: skip
    settings.update(overrides)
    return StreamDetector(DetectorConfig(**settings), model,
                          lambda: make_engine("compiled", model.features, model.window_secs), model.explainer())  # fmt: skip


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
    _produce(data, kafka_bootstrap, topics)
    # Malformed messages on both input topics: the detector must dead-letter them and go on.
    _send_malformed(kafka_bootstrap, topics)
    truth, report = read_events(data, progress=False)
    assert report.rejected == 0
    return {"root": root, "data": data, "models": models, "topics": topics, "truth": truth,
            "bootstrap": kafka_bootstrap}  # fmt: skip


def _detect_args(stream: dict, group: str, alerts_topic: str, *extra: str, topics: dict | None = None) -> list[str]:
    t = topics or stream["topics"]
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
    from cyberstream.features.history import history_oracle_matrix, is_history_feature
    from training.dfs import load_features
    from training.model import load_model

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
    # The history features' oracle builds an EntitySet of all events so far per cutoff time:
    # checked on the alerted cutoffs and 40 others, at most 60 times.
    history = [f for f in load_model(stream["models"]).features if is_history_feature(f)]
    assert history, "the model has history features"
    checked = [i for i, r in enumerate(rows) if (r["connection"], r["cutoff_secs"]) in alert_keys][:20]
    checked += [i for i in range(0, len(rows), max(1, len(rows) // 40)) if i not in checked][:40]
    rows_h = [rows[i] for i in checked]
    oracle_h = history_oracle_matrix(events.sort_values(["secs", "log_id"]),
                                     [(r["connection"], r["cutoff_secs"]) for r in rows_h], history)
    history_names = {f.get_name() for f in history}
    mismatches = []
    for r, (_, oracle_row) in zip(rows_h, oracle_h.iterrows(), strict=True):
        for name in history_names:
            if not features_equal(r["features"][name], oracle_row[name]):
                mismatches.append((r["connection"], r["cutoff_secs"], name, r["features"][name], oracle_row[name]))
    for i, r in enumerate(rows):
        oracle_row = oracle.iloc[i]  # one row extraction per cutoff, not per value
        for name, value in r["features"].items():
            if name in history_names:
                continue
            expected = oracle_row[name]
            if isinstance(expected, bool) or hasattr(expected, "item"):
                expected = expected.item() if hasattr(expected, "item") else expected
            if not features_equal(value, expected):
                mismatches.append((r["connection"], r["cutoff_secs"], name, value, expected))
    assert not mismatches, f"{len(mismatches)} feature values differ from featuretools, e.g. {mismatches[:5]}"


def test_restart_after_sigkill_yields_the_same_alerts(stream: dict, uninterrupted: dict):
    """Killed mid-stream, provably: the stream is written in two halves into topics of this test,
    the detector is killed once its checkpoint covers exactly the first half and the two
    malformed events behind it, and only then is the second half written."""
    suffix = uuid.uuid4().hex[:8]
    t = {"events": f"ev3-{suffix}", "labels": f"lab3-{suffix}", "dlq": f"dlq3-{suffix}"}
    half = 2 * 86_400
    total = len(stream["truth"])
    first_half = int((stream["truth"]["secs"] < half).sum())
    assert 0.3 * total < first_half < 0.7 * total
    _produce(stream["data"], stream["bootstrap"], t, "--until-secs", str(half))
    _send_malformed(stream["bootstrap"], t)
    group = f"det-b-{uuid.uuid4().hex[:6]}"
    alerts_topic = f"alerts-{group}"
    ckpt = stream["root"] / f"{group}.ckpt"
    args = [sys.executable, "-m", "cyberstream.cli",
            *_detect_args(stream, group, alerts_topic, "--checkpoint-every", "0.3", "--batch-size", "64",
                          topics=t)]  # fmt: skip
    victim = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _committed_events(ckpt) == first_half + 2,
                 f"a checkpoint covering the first half's {first_half:,} events and the 2 malformed ones "
                 f"({ckpt})", timeout=240, procs=(victim,))  # fmt: skip
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    committed = _committed_events(ckpt)
    assert committed == first_half + 2, f"the kill must land mid-stream (committed {committed} of {total + 2})"

    _produce(stream["data"], stream["bootstrap"], t, "--from-secs", str(half))
    # Every record is in the log before the restart: its idle timeout ends it at the log's end.
    restarted = _cli(*_detect_args(stream, group, alerts_topic, "--idle-timeout", "4", topics=t))
    assert "restored checkpoint" in restarted.stderr
    assert _figure(restarted.stderr, r"events processed\s+([\d,]+)") == total - first_half
    assert re.search(r"late events 0 ", restarted.stderr), restarted.stderr[-3000:]
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
    from detector.models import load_batch_model

    model = load_batch_model(stream["models"])
    detector = _in_process(stream, f"det-c-{uuid.uuid4().hex[:6]}")
    cfg = detector.cfg
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
    # Partition 0 holds its good records first, then the malformed ones (see the fixture).
    p0 = int((_partitions(stream["truth"]) == 0).sum())
    label = '{"connection": "x", "log_id": -1, "secs": 0, "label": "A"}'
    expected = {
        (f"{t['events']}[0]@{p0}", "not json", "value is not valid JSON: invalid literal: line 1 column 1 (char 0)"),
        (f"{t['events']}[0]@{p0 + 1}", '{"log_id": 1}', "event lacks field(s) ['secs', 'src_name', 'dest_name', "
         "'src_host', 'dest_host', 'auth_type', 'login_type', 'stage', 'result']"),
        (f"{t['labels']}[0]@{p0}", label, "log_id must be a non-negative integer, got -1"),
    }  # fmt: skip
    # Several detectors of this module read these topics: each dead-letters the same three, nothing else.
    got = [(d["source"], d["raw"], d["reason"]) for d in letters]
    assert set(got) == expected, sorted(set(got) ^ expected)
    assert all(d["raw_encoding"] == "utf-8" for d in letters)


def test_sigterm_commits_checkpoints_and_exits_zero(stream: dict):
    """SIGTERM once a checkpoint covers some events: the detector exits 0, and the offsets it
    saved and committed cover exactly the events and labels it processed."""
    from kafka.structs import TopicPartition

    group = f"det-d-{uuid.uuid4().hex[:6]}"
    ckpt = stream["root"] / f"{group}.ckpt"
    args = [sys.executable, "-m", "cyberstream.cli", *_detect_args(stream, group, f"alerts-{group}",
                                                                    "--checkpoint-every", "0.5")]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def every_partition_started() -> bool:
            offsets = _saved_offsets(ckpt)
            return offsets is not None and all(
                len(offsets[key]) == PARTITIONS and min(offsets[key].values()) > 0 for key in ("events", "labels"))

        wait_for(every_partition_started, f"a checkpoint covering records of every partition ({ckpt})",
                 timeout=240, procs=(proc,))  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "detector summary" in err
    assert re.search(r"late events 0 ", err), err[-2000:]
    saved = pickle.loads(ckpt.read_bytes())["offsets"]
    assert set(saved["events"]) == set(saved["labels"]) == set(range(PARTITIONS)), saved
    # Each partition holds its good records first, then (partition 0) the malformed ones: the
    # good records an offset covers are min(offset, good records of the partition).
    good = _partitions(stream["truth"]).value_counts().reindex(range(PARTITIONS), fill_value=0)
    for key, figure in (("events", r"events processed\s+([\d,]+)"), ("labels", r"labels applied\s+([\d,]+)")):
        covered = sum(min(saved[key][p], int(good[p])) for p in range(PARTITIONS))
        assert covered == _figure(err, figure) > 0, f"{key}: offsets {saved[key]} vs the summary:\n{err[-2000:]}"
        assert all(saved[key][p] <= good[p] + (2 if key == "events" else 1) * (p == 0) for p in saved[key])
    consumer = make_consumer(stream["bootstrap"], group_id=group)
    for topic, key in ((stream["topics"]["events"], "events"), (stream["topics"]["labels"], "labels")):
        for p, offset in saved[key].items():
            assert consumer.committed(TopicPartition(topic, p)) == offset
    consumer.close()


def test_a_member_joining_mid_stream_takes_over_partitions_without_losing_or_rejecting_events(stream: dict):
    """Two detectors in one group: the second joins after the first has processed the first
    half of the stream, before the second half is written. The first commits on revocation,
    the second rebuilds the windows of the partitions it takes over and resumes at the event
    time their previous owner reached.

    Both run with --end-file: a caught-up partition waits for its own next record, however
    long the producer stalls (so no event is late), and neither stops before the test has
    written everything and created the file (so neither leaves on a timeout of its own)."""
    suffix = uuid.uuid4().hex[:8]
    t = {"events": f"ev2-{suffix}", "labels": f"lab2-{suffix}", "dlq": f"dlq2-{suffix}"}
    half = 2 * 86_400
    truth = stream["truth"]
    group = f"det-e-{uuid.uuid4().hex[:6]}"
    end_file = stream["root"] / f"{group}.end"
    # Waiting for each partition's own next record, the first member processes the first half
    # up to the earliest of the partitions' last seconds (the later ones wait for the second half).
    first = truth[truth["secs"] < half]
    reachable = int((first["secs"] < first.groupby(_partitions(first))["secs"].max().min()).sum())
    assert reachable > 0.3 * len(truth)

    def member(name: str) -> tuple[subprocess.Popen, object]:
        ckpt = stream["root"] / f"{group}-{name}.ckpt"
        args = [sys.executable, "-m", "cyberstream.cli", "detect", "--model-dir", str(stream["models"]),
                "--bootstrap-servers", stream["bootstrap"], "--group-id", group, "--events-topic", t["events"],
                "--labels-topic", t["labels"], "--alerts-topic", f"alerts-{group}", "--dlq-topic", t["dlq"],
                "--partitions", str(PARTITIONS), "--checkpoint", str(ckpt), "--checkpoint-every", "0.3",
                "--end-file", str(end_file), "--log-every", "2",
                # The second half is replayed at --speed max while both run: a minute of event time
                # is well under a millisecond, less than the producer's partitions lie apart, so a
                # caught-up partition waits for its own next record instead (what --help advises
                # for fast replays); late events then can only come from the hand-over, which is tested.
                "--allowed-lateness-secs", str(config.replay_lateness_secs("max"))]  # fmt: skip
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), ckpt

    _produce(stream["data"], stream["bootstrap"], t, "--until-secs", str(half))
    a, a_ckpt = member("a")
    b = None
    try:
        wait_for(lambda: _committed_events(a_ckpt) == reachable,
                 f"the first member's checkpoint to cover {reachable:,} events", timeout=240, procs=(a,))
        b, b_ckpt = member("b")
        # b writes its checkpoint once it owns partitions (a commits on their revocation first).
        wait_for(b_ckpt.exists, f"the second member to own partitions ({b_ckpt})", timeout=240, procs=(a, b))
        _produce(stream["data"], stream["bootstrap"], t, "--from-secs", str(half))
        end_file.touch()
        _, a_err = a.communicate(timeout=240)
        _, b_err = b.communicate(timeout=240)
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    assert a.returncode == 0, a_err[-3000:]
    assert b.returncode == 0, b_err[-3000:]
    assert "partitions revoked" in a_err and f"{end_file} exists" in a_err and f"{end_file} exists" in b_err

    processed = [_figure(err, r"events processed\s+([\d,]+)") for err in (a_err, b_err)]
    assert _figure(b_err, r"windows rebuilt\s+([\d,]+)") > 0, "the partitions taken over had events in the window"
    assert processed[0] >= reachable and processed[1] > 0
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


def test_an_alert_the_broker_refuses_blocks_the_commit_and_a_restart_publishes_it(stream: dict, uninterrupted: dict):
    """The alert topic first takes no message as large as an alert (the broker refuses each
    one): the detector stops with DeliveryFailed, and neither its checkpoint nor the group's
    commits reach the first alerted cutoff. Once the topic takes alerts, a restart publishes
    every alert of the uninterrupted run."""
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
    from kafka.structs import TopicPartition

    from cyberstream.kafka_io import make_admin
    from detector.stream import DeliveryFailed

    group = f"det-h-{uuid.uuid4().hex[:6]}"
    alerts_topic = f"alerts-{group}"
    admin = make_admin(stream["bootstrap"])
    admin.create_topics([NewTopic(alerts_topic, num_partitions=1, replication_factor=1,
                                  topic_configs={"max.message.bytes": "100"})])  # fmt: skip
    first_alert = min(a["cutoff_secs"] for a in uninterrupted["alerts"])
    detector = _in_process(stream, group, checkpoint_every_secs=0.2)
    with pytest.raises(DeliveryFailed, match=r"alert/dead-letter sends failed .*MSG_SIZE_TOO_LARGE.*a restart "
                                             r"publishes them again"):  # fmt: skip
        detector.run()
    ckpt = stream["root"] / f"{group}.ckpt"
    saved = pickle.loads(ckpt.read_bytes()) if ckpt.exists() else None
    if saved is not None:
        assert saved["processed_secs"] < first_alert, "a checkpoint covers an alert the broker refused"
    consumer = make_consumer(stream["bootstrap"], group_id=group)
    for topic, key in ((stream["topics"]["events"], "events"), (stream["topics"]["labels"], "labels")):
        for p in range(PARTITIONS):
            committed = consumer.committed(TopicPartition(topic, p))
            assert committed == (saved["offsets"][key].get(p) if saved is not None else None), (topic, p)
    consumer.close()
    assert read_topic(stream["bootstrap"], alerts_topic) == []

    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, alerts_topic,
                                        configs={"max.message.bytes": "1048588"})])  # fmt: skip
    admin.close()
    restarted = _in_process(stream, group)
    restarted.run()
    alerts = read_topic(stream["bootstrap"], alerts_topic)
    assert {a["alert_id"] for a in alerts} == {a["alert_id"] for a in uninterrupted["alerts"]}
    assert any(a["cutoff_secs"] == first_alert for a in alerts)


def _save_checkpoint(det, offsets: dict) -> None:
    """Write ``det``'s checkpoint with these offsets, as a commit point does."""
    from detector import checkpoint

    checkpoint.save(det.cfg.checkpoint_path, det._checkpoint(offsets))


def _load_checkpoint(det):
    """Restore ``det`` from its checkpoint, as a start does; the checkpoint (or None)."""
    from detector import checkpoint

    ckpt = checkpoint.load(det.cfg.checkpoint_path, [det.cfg.events_topic, det.cfg.labels_topic])
    if ckpt is not None:
        det._restore(ckpt)
    return ckpt


def test_the_cooldown_holds_across_idle_revival_and_a_restart(stream: dict):
    """Threshold 0 (every cutoff would alert) and a cooldown of three windows: a connection's
    second alert comes a cooldown after its first, though in between it went idle (dropped,
    its counts kept), came back, and the detector restarted from its checkpoint."""
    from collections import deque

    from cyberstream.schema import Event

    group = f"det-i-{uuid.uuid4().hex[:6]}"
    window = json.loads((stream["models"] / "metadata.json").read_text())["window_secs"]
    cooldown = 3 * window
    first = _in_process(stream, group, threshold=0.0, cooldown_secs=cooldown)
    assert first.cfg.window_secs == window
    u1, u2 = "U1@DOM1 / U1@DOM1", "U2@DOM1 / U2@DOM1"

    def events(user: str, secs: list[int], start_id: int) -> list:
        return [(start_id + i, Event(start_id + i, s, f"{user}@DOM1", f"{user}@DOM1", "C1", "C2", "NTLM", "Network",
                                     "LogOn", "Success")) for i, s in enumerate(secs)]  # fmt: skip

    back = 1000 + 2 * window  # U1 comes back after two windows of silence
    first.merger.event_q = {0: deque(sorted(events("U1", [100, 200, 300, 400], 0)
                                     + events("U2", [1000 + j * window // 4 for j in range(8)], 10),
                                     key=lambda item: item[1].secs))}  # fmt: skip
    first._advance(final=True)
    assert u1 in first.ledger.idle and u1 not in first.ledger.conns, "U1 went idle"
    first.merger.event_q[0].extend(events("U1", [back, back + 100], 20))
    first._advance(final=True)
    first._flush_scores()
    assert u1 in first.ledger.conns and first.ledger.conns[u1].n_seen == 6, "U1 was revived with its count"
    _save_checkpoint(first, {"events": {0: 22}, "labels": {}})
    first.producer.flush()

    restarted = _in_process(stream, group, threshold=0.0, cooldown_secs=cooldown)
    assert _load_checkpoint(restarted) is not None
    restarted.merger.event_q = {0: deque(events("U1", [300 + cooldown - 50, 300 + cooldown, 300 + cooldown + 100], 30))}
    restarted._advance(final=True)
    restarted._flush_scores()
    restarted.producer.flush()
    assert not first.producer.errors and not restarted.producer.errors
    alerts = read_topic(stream["bootstrap"], first.cfg.alerts_topic)
    by_conn = {c: sorted(a["cutoff_secs"] for a in alerts if a["connection"] == c) for c in (u1, u2)}
    # U1's cutoffs: 300 (alert), 400, back, back+100 (cooldown), then after the restart
    # 300+cooldown-50 (cooldown) and 300+cooldown (a cooldown later: alert), +100 (cooldown).
    assert by_conn[u1] == [300, 300 + cooldown], by_conn
    assert by_conn[u2] == [1000 + window // 2], by_conn  # its third event; the others within the cooldown
    assert first.stats.suppressed == 3 + 5 and restarted.stats.suppressed == 2


def test_alert_scores_blend_the_online_model_as_documented(stream: dict, uninterrupted: dict):
    """score = (1 - w) * batch + w * online, w = online weight * min(1, positives learnt /
    warm-up), in every alert of the uninterrupted run (defaults: weight 0.5, warm-up 20)."""
    alerts = sorted(uninterrupted["alerts"], key=lambda a: (a["cutoff_secs"], a["connection"]))
    weights = []
    for a in alerts:
        w = a["online_weight"]
        if a["online_score"] is None:
            assert w == 0 and a["score"] == a["batch_score"], a
            continue
        assert a["score"] == pytest.approx((1 - w) * a["batch_score"] + w * a["online_score"], abs=2e-6), a
        positives = w / 0.5 * 20
        assert 0 <= w <= 0.5 and positives == pytest.approx(round(positives), abs=1e-3), a  # a whole count
        weights.append(w)
    assert weights == sorted(weights), "the weight never falls: positives learnt only grow"
    assert weights[0] < 0.5 and weights[-1] > 0, f"no warm-up seen, from {weights[0]} to {weights[-1]}"
    assert any(a["online_score"] is not None for a in alerts), "no alert had an online score"


def test_a_dead_letter_behind_queued_events_is_committed_only_once_they_are_processed(stream: dict):
    """A malformed record that arrives behind unprocessed events moves the committed offset
    only when they are processed, also when the detector restarts from a checkpoint taken in
    between (it then reads the record again and dead-letters it again: at least once)."""
    from collections import deque

    from cyberstream.schema import Event

    group = f"det-j-{uuid.uuid4().hex[:6]}"
    topic = stream["topics"]["events"]

    class Record:
        """A consumed record as librdkafka hands it over (offset, value, key, timestamp)."""

        def __init__(self, offset: int, value: bytes):
            self._offset, self._value = offset, value

        def offset(self) -> int:
            return self._offset

        def value(self) -> bytes:
            return self._value

        def key(self) -> bytes:
            return b"k"

    def good(offset: int, secs: int) -> Record:
        return Record(offset, Event(offset, secs, "U1@DOM1", "U1@DOM1", "C1", "C2", "NTLM", "Network", "LogOn",
                                    "Success").to_json())  # fmt: skip

    first = _in_process(stream, group, dlq_topic=f"dlq-{group}")
    first.merger.event_q = {0: deque()}
    first.merger.enqueue({(topic, 0): [good(0, 100), good(1, 200), good(2, 300), Record(3, b"garbage")]})
    assert first.merger.next_event_offset == {} and first.merger.skipped_events == {0: 4}
    first._process_second(100)
    assert first.merger.next_event_offset == {0: 1}, "the dead letter must wait for offsets 1 and 2"
    _save_checkpoint(first, {"events": dict(first.merger.next_event_offset), "labels": {}})
    first.producer.flush()

    restarted = _in_process(stream, group, dlq_topic=f"dlq-{group}")
    saved = _load_checkpoint(restarted)
    restarted.merger.next_event_offset = dict(saved.offsets["events"])  # what an assignment resumes at
    restarted.merger.event_q = {0: deque()}
    restarted.merger.enqueue({(topic, 0): [good(1, 200), good(2, 300), Record(3, b"garbage")]})
    assert restarted.merger.next_event_offset == {0: 1} and restarted.merger.skipped_events == {0: 4}
    restarted._process_second(200)
    assert restarted.merger.next_event_offset == {0: 2}
    restarted._process_second(300)
    assert restarted.merger.next_event_offset == {0: 4} and restarted.merger.skipped_events == {}, "drained: past the letter"
    restarted.merger.enqueue({(topic, 0): [Record(4, b"garbage")]})  # nothing queued before it: counted at once
    assert restarted.merger.next_event_offset == {0: 5}
    restarted.producer.flush()
    letters = read_topic(stream["bootstrap"], f"dlq-{group}")
    assert sorted(d["source"] for d in letters) == [f"{topic}[0]@3", f"{topic}[0]@3", f"{topic}[0]@4"]
    assert (first.stats.malformed, restarted.stats.malformed, restarted.stats.events) == (1, 2, 2)


def test_a_checkpoint_behind_the_groups_commit_resumes_at_the_checkpoint(stream: dict):
    """A member's checkpoint holds partitions the group has since committed further (another
    owner went on while this one was away). The checkpoint's offsets win: its state (counts,
    pending cutoffs, the online model) belongs to them, so the member redoes the rest and,
    with the first run, scores exactly the batch cutoffs; the newer commit would have
    skipped events its state never saw."""
    from kafka.structs import OffsetAndMetadata, TopicPartition

    from detector.models import load_batch_model
    from training.labels import label_times

    group = f"det-k-{uuid.uuid4().hex[:6]}"
    half = len(stream["truth"]) // 2
    first = _in_process(stream, group, max_events=half)
    first.cutoff_log = []
    first.run()
    saved = pickle.loads((stream["root"] / f"{group}.ckpt").read_bytes())["offsets"]
    # "Another owner" commits the end of every partition for the group.
    t = stream["topics"]
    consumer = make_consumer(stream["bootstrap"], group_id=group)
    tps = [TopicPartition(topic, p) for topic in (t["events"], t["labels"]) for p in range(PARTITIONS)]
    ends = consumer.end_offsets(tps)
    consumer.commit({tp: OffsetAndMetadata(end, "", -1) for tp, end in ends.items()})
    consumer.close()
    assert all(saved["events"][p] < ends[TopicPartition(t["events"], p)] for p in range(PARTITIONS))

    second = _in_process(stream, group)
    second.cutoff_log = []
    second.run()
    assert second.stats.events == len(stream["truth"]) - sum(
        min(saved["events"][p], int(n)) for p, n in _partitions(stream["truth"]).value_counts().items())
    model = load_batch_model(stream["models"])
    every = label_times(stream["truth"], kind=model.kind, spec=model.label_spec)
    want = set(zip(every["connection_id"], every["cutoff_secs"].astype(int), every["log_id"].astype(int), strict=True))
    scored = [(c, int(secs), int(log_id)) for c, secs, log_id in first.cutoff_log + second.cutoff_log]
    assert len(scored) == len(set(scored)) and set(scored) == want
