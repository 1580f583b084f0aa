"""`cyberstream produce`: order, keys, labels, dead letters, slices, pacing, loss.

The tests marked ``integration`` replay generated files into the real broker of the
``kafka_bootstrap`` fixture and read every topic back. The others drive the same
:class:`producer.replay.Replayer` with an in-memory producer.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from cyberstream import kafka_io
from cyberstream.cli import main as cli_main
from cyberstream.connections import connection_id
from cyberstream.schema import HEADER, SchemaError, decode_event, decode_label, parse_row
from producer.generator import GeneratorConfig, generate
from producer.replay import Replayer, ReplaySettings, _Encoder, read_records, scan, sorted_records

BASE = 1_577_836_800


# --------------------------------------------------------------------------------------
# Test data: a generated file with corrupted rows mixed in
# --------------------------------------------------------------------------------------
def _generated(tmp_path: Path, days: int = 2, events_per_day: int = 2000, seed: int = 3) -> Path:
    path = tmp_path / "gen.csv"
    generate(
        GeneratorConfig(
            days=days, events_per_day=events_per_day, seed=seed, campaigns=1, campaign_intensity=30
        ),
        path,
    )
    return path


def _corruptions(secs: int) -> list[tuple[bytes, str]]:
    """Bad rows (raw bytes, expected reason) whose leading secs keep the file sorted."""
    good = f"{secs},U1@DOM1,U1@DOM1,C1,C2,NTLM,Network,LogOn,Success,N"
    return [
        (good.rsplit(",", 1)[0].encode(), "expected 10 columns"),
        ((good + ",extra").encode(), "expected 10 columns"),
        (good.replace(f"{secs},", f"{secs}.5,", 1).encode(), "secs must be a non-negative integer"),
        (good.replace("U1@DOM1,U1@DOM1,C1,", "U1@DOM1,U1@DOM1,,", 1).encode(), "src_host is empty"),
        (good.replace(",C2,", ",,", 1).encode(), "dest_host is empty"),
        (good[:-1].encode() + b"X", "label must be one of"),
        (good.replace("U1@DOM1,U1@DOM1", ",U1@DOM1", 1).encode(), "src_name is empty"),
        (good.replace("U1@", "U1\xff@", 1).encode("latin-1"), "row is not valid UTF-8"),
        (b"", "expected 10 columns"),
    ]


def _corrupt(path: Path, every: int = 400, utf8: bool = False) -> Path:
    """Insert the corruptions after every ``every``-th data row; return the new file.

    ``utf8=True`` leaves out the row that is not valid UTF-8."""
    lines = path.read_bytes().split(b"\n")
    header, rows = lines[0], [r for r in lines[1:] if r]
    out, k = [header], 0
    for i, row in enumerate(rows):
        out.append(row)
        if i % every == every - 1:
            kinds = [b for b in _corruptions(int(row.split(b",", 1)[0])) if not (utf8 and b"\xff" in b[0])]
            out.append(kinds[k % len(kinds)][0])
            k += 1
    corrupted = path.with_name("corrupted.csv")
    corrupted.write_bytes(b"\n".join(out) + b"\n")
    return corrupted


def _expected(path: Path) -> tuple[dict, dict]:
    """log_id -> (event, malicious) for good rows and log_id -> (raw, reason) for bad rows."""
    good, bad = {}, {}
    for log_id, fields, raw in read_records(path):
        if not raw.isascii():
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError:
                bad[log_id] = (raw, "row is not valid UTF-8")
                continue
        try:
            good[log_id] = parse_row(fields, log_id)
        except SchemaError as exc:
            bad[log_id] = (raw, exc.reason)
    return good, bad


# --------------------------------------------------------------------------------------
# Reading, sorting and encoding (no broker)
# --------------------------------------------------------------------------------------
def test_records_are_numbered_like_training_reads_them(tmp_path):
    path = _corrupt(_generated(tmp_path, days=1, events_per_day=1000), every=50, utf8=True)
    good, bad = _expected(path)
    from training.data import read_events

    df, report = read_events(path, progress=False)
    assert sorted(df.log_id) == sorted(good)
    assert report.rejected == len(bad) > 8
    n_lines, ordered = scan(path)
    assert ordered and n_lines == len(good) + len(bad)


def test_external_sort_is_stable_by_secs_then_log_id_and_yields_bad_rows_first(tmp_path):
    rows = [
        f"{s},U{i % 7}@DOM1,U{i % 7}@DOM1,C{i},C2,?,?,TGS,Success,N"
        for i, s in enumerate([5, 3, 5, 1, 3, 9, 0, 5, 2, 2])
    ]
    rows.insert(4, "7,broken")
    path = tmp_path / "unsorted.csv"
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    assert scan(path) == (11, False)
    out = list(sorted_records(path, chunk_rows=3))  # four sorted runs merged
    assert out[0][0] == 4 and out[0][2] == "7,broken"
    secs_and_ids = [(int(f[0]), log_id) for log_id, f, _ in out[1:]]
    assert secs_and_ids == sorted(secs_and_ids)
    assert [log_id for _, log_id in secs_and_ids] == [7, 3, 9, 10, 1, 5, 0, 2, 8, 6]


def test_fast_encoding_is_byte_identical_to_the_schema_encoding(tmp_path):
    from cyberstream.schema import LabelRecord

    path = _generated(tmp_path, days=1, events_per_day=1000)
    enc = _Encoder(partitions=5, kind="session")
    from kafka.partitioner.default import murmur2

    for log_id, fields, _ in list(read_records(path))[:3000]:
        event, malicious = parse_row(fields, log_id)
        key, partition, conn_json = enc.key(event)
        assert key == connection_id(event).encode()
        assert partition == (murmur2(key) & 0x7FFFFFFF) % 5
        assert enc.event(event) == event.to_json()
        label = LabelRecord(connection_id(event), log_id, event.secs, malicious)
        assert enc.label(conn_json, log_id, event.secs, malicious) == label.to_json()
    odd = parse_row(["1", 'U"q\\@DOM1', "é@DOM1", "C1", "C2", "?", "?", "TGS", "?", "N"], 1)[0]
    assert enc.event(odd) == odd.to_json()


# --------------------------------------------------------------------------------------
# The replay loop with an in-memory producer
# --------------------------------------------------------------------------------------
class _Future:
    def __init__(self, fail: bool):
        self.fail = fail

    def add_errback(self, fn):
        if self.fail:
            fn(RuntimeError("not acknowledged"))
        return self


class FakeProducer:
    """Records what would be sent, and when by ``clock``; ``fail_topic`` messages are reported as lost."""

    def __init__(self, fail_topic: str | None = None, clock=time.monotonic):
        self.sent: list[tuple[str, bytes | None, bytes, int | None, int | None, float]] = []
        self.fail_topic = fail_topic
        self.flushed = False
        self.clock = clock

    def send(self, topic, key=None, value=None, partition=None, timestamp_ms=None):
        self.sent.append((topic, key, value, partition, timestamp_ms, self.clock()))
        return _Future(topic == self.fail_topic)

    def flush(self):
        self.flushed = True

    def close(self):
        pass

    def on(self, topic):
        return [m for m in self.sent if m[0] == topic]


@pytest.fixture
def no_admin(monkeypatch):
    monkeypatch.setattr(kafka_io, "ensure_topics", lambda bootstrap, topics, timeout=30.0: dict(topics))


def _settings(path: Path, **kw) -> ReplaySettings:
    base = dict(data=path, bootstrap="unused:9092", events_topic="ev", labels_topic="lb", dlq_topic="dlq",
                partitions=4, base_epoch=BASE, progress=False)  # fmt: skip
    base.update(kw)
    return ReplaySettings(**base)


def test_label_delay_publishes_each_label_after_event_time_passes_its_verdict_time(tmp_path, no_admin):
    path = _generated(tmp_path, days=1, events_per_day=1500)
    producer = FakeProducer()
    summary = Replayer(_settings(path, label_delay=300), producer).run()
    assert summary.ok and producer.flushed
    assert summary.events_sent == summary.labels_sent == len(producer.on("ev"))
    events_sent, labelled = [], set()
    sent = producer.sent
    for i, (topic, _, value, _, ts, _) in enumerate(sent):
        if topic == "ev":
            event = decode_event(value)
            # every verdict due by now is out before this event
            assert all(e.log_id in labelled for e in events_sent if e.secs + 300 <= event.secs)
            events_sent.append(event)
            continue
        label = decode_label(value)
        assert ts == (BASE + label.secs + 300) * 1000
        # ... and none earlier: the next event (if any) is at or past the verdict time
        following = next((decode_event(m[2]) for m in sent[i + 1 :] if m[0] == "ev"), None)
        assert following is None or following.secs >= label.secs + 300
        labelled.add(label.log_id)
    assert labelled == {e.log_id for e in events_sent}
    assert any(
        m[0] == "lb" for m in sent[: len(sent) // 2]
    )  # labels flow during the replay, not only at the end


def test_slice_replays_only_from_secs_until_secs(tmp_path, no_admin):
    path = _generated(tmp_path, days=2, events_per_day=1000)
    producer = FakeProducer()
    summary = Replayer(_settings(path, from_secs=40_000, until_secs=100_000), producer).run()
    secs = [json.loads(v)["secs"] for _, _, v, *_ in producer.on("ev")]
    good, _ = _expected(path)
    assert secs == sorted(s for s in (e.secs for e, _ in good.values()) if 40_000 <= s < 100_000)
    assert summary.first_secs >= 40_000 and summary.last_secs < 100_000
    assert summary.skipped > 0


def test_speed_paces_event_time_against_wall_time(tmp_path, no_admin):
    path = tmp_path / "paced.csv"
    rows = [f"{s},U1@DOM1,U1@DOM1,C1,C2,?,?,TGS,Success,N" for s in (100, 100, 700, 1300, 1900)]
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")

    class Clock:
        """Simulated wall time: it moves only when the replay sleeps, so pacing is exact."""

        def __init__(self):
            self.now, self.sleeps = 1000.0, []

        def __call__(self) -> float:
            return self.now

        def sleep(self, secs: float) -> None:
            self.sleeps.append(secs)
            self.now += secs

    clock = Clock()
    producer = FakeProducer(clock=clock)
    # 1800 s of event time at 1200x: each event leaves at its event time / 1200 after the first.
    Replayer(_settings(path, speed=1200.0), producer, clock=clock, sleep=clock.sleep).run()
    sent_at = [t - 1000.0 for topic, *_, t in producer.sent if topic == "ev"]
    assert sent_at == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5], abs=1e-9)
    assert clock.sleeps == pytest.approx([0.5, 0.5, 0.5], abs=1e-9)
    # With the real clock the replay sleeps as long (a lower bound: sleeping never ends early).
    t0 = time.monotonic()
    Replayer(_settings(path, speed=1200.0), FakeProducer()).run()
    assert time.monotonic() - t0 >= 1.5


def test_lost_messages_make_the_summary_fail_and_the_command_exit_non_zero(
    tmp_path, no_admin, monkeypatch, capsys
):
    path = _generated(tmp_path, days=1, events_per_day=500)
    summary = Replayer(_settings(path), FakeProducer(fail_topic="lb")).run()
    assert not summary.ok and summary.failed == summary.labels_sent > 0
    monkeypatch.setattr(
        kafka_io, "make_producer", lambda bootstrap, **kw: FakeProducer(fail_topic="auth-events")
    )
    code = cli_main(["produce", "--data", str(path), "--bootstrap-servers", "unused:9092", "--no-progress"])
    assert code == 1
    assert "message(s) were lost" in capsys.readouterr().err


def test_produce_command_rejects_bad_arguments(tmp_path, capsys):
    assert cli_main(["produce", "--data", str(tmp_path / "missing.csv"), "--bootstrap-servers", "x:1"]) == 2
    assert "no such file" in capsys.readouterr().err
    path = _generated(tmp_path, days=1, events_per_day=200)
    assert cli_main(["produce", "--data", str(path), "--from-secs", "10", "--until-secs", "5"]) == 2
    with pytest.raises(SystemExit):
        cli_main(["produce", "--data", str(path), "--speed", "fast"])


# --------------------------------------------------------------------------------------
# Into the real broker
# --------------------------------------------------------------------------------------
def _read_all(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list:
    """Every record of ``topic`` (waits for ``expected`` of them, then drains a little more)."""
    from kafka.structs import TopicPartition

    consumer = kafka_io.make_consumer(bootstrap, group_id=None)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(records)
        if len(got) >= expected and all(consumer.position(tp) >= end[tp] for tp in parts):
            break
    consumer.close()
    return got


def _topics() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {"events": f"ev-{suffix}", "labels": f"lb-{suffix}", "dlq": f"dlq-{suffix}"}


@pytest.mark.integration
def test_replay_into_kafka_every_good_event_once_in_order_labels_apart_bad_rows_to_dlq(
    kafka_bootstrap, tmp_path, capsys
):
    path = _corrupt(_generated(tmp_path, days=2, events_per_day=2500))
    good, bad = _expected(path)
    assert len(bad) >= 9 and len(good) > 4000
    t = _topics()
    code = cli_main(["produce", "--data", str(path), "--bootstrap-servers", kafka_bootstrap,
                     "--events-topic", t["events"], "--labels-topic", t["labels"], "--dlq-topic", t["dlq"],
                     "--partitions", "3", "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert f"events sent     {len(good):,}" in printed and f"dead letters    {len(bad):,}" in printed

    events = _read_all(kafka_bootstrap, t["events"], len(good))
    labels = _read_all(kafka_bootstrap, t["labels"], len(good))
    dead = _read_all(kafka_bootstrap, t["dlq"], len(bad))

    # every good event exactly once per log_id, as parsed from the file
    decoded = [decode_event(r.value) for r in events]
    ids = [e.log_id for e in decoded]
    assert len(ids) == len(set(ids)) == len(good)
    assert set(ids) == set(good)
    partition_of: dict[str, int] = {}
    per_partition: dict[int, list] = defaultdict(list)
    for rec, event in zip(events, decoded, strict=True):
        assert event == good[event.log_id][0]
        assert "label" not in json.loads(rec.value)
        assert rec.key == connection_id(event).encode()
        assert rec.timestamp == (kafka_io.config.base_epoch() + event.secs) * 1000
        assert partition_of.setdefault(rec.key, rec.partition) == rec.partition  # one partition per key
        per_partition[rec.partition].append((rec.offset, event))
    assert len(per_partition) == 3
    # in event-time order per key (and per partition): by (secs, log_id) in offset order
    for recs in per_partition.values():
        order = [(e.secs, e.log_id) for _, e in sorted(recs, key=lambda x: x[0])]
        assert order == sorted(order)

    # labels: one per good event, only on the label topic, on the event's partition number
    got_labels = {}
    for rec in labels:
        label = decode_label(rec.value)
        assert label.log_id not in got_labels
        got_labels[label.log_id] = label
        assert rec.key == label.connection.encode()
        assert rec.partition == partition_of[rec.key]
        with pytest.raises(SchemaError):
            decode_event(rec.value)
    assert set(got_labels) == set(good)
    assert all(got_labels[i].malicious == good[i][1] for i in good)
    assert sum(lb.malicious for lb in got_labels.values()) == sum(m for _, m in good.values()) > 0

    # dead letters: exactly the bad rows, with their raw text and reason
    assert len(dead) == len(bad)
    by_id = {int(r.key): json.loads(r.value) for r in dead}
    assert set(by_id) == set(bad)
    for log_id, (raw, reason) in bad.items():
        msg = by_id[log_id]
        assert msg["source"] == "producer" and msg["reason"] == reason
        raw_bytes = raw.encode("utf-8", "surrogateescape")
        assert (
            bytes.fromhex(msg["raw"]) if msg["raw_encoding"] == "hex" else msg["raw"].encode()
        ) == raw_bytes
    reasons = {m["reason"].split(" (")[0].split(", got")[0] for m in by_id.values()}
    for _, expected_reason in _corruptions(0):
        assert any(r.startswith(expected_reason) for r in reasons), expected_reason


@pytest.mark.integration
def test_replay_of_an_unsorted_file_slice_with_label_delay(kafka_bootstrap, tmp_path):
    src = _generated(tmp_path, days=2, events_per_day=1500, seed=9)
    lines = src.read_text().splitlines()
    body = lines[1:]
    random.Random(1).shuffle(body)
    path = tmp_path / "shuffled.csv"
    path.write_text("\n".join([lines[0], *body]) + "\n")
    good, _ = _expected(path)
    t = _topics()
    settings = ReplaySettings(data=path, bootstrap=kafka_bootstrap, events_topic=t["events"],
                              labels_topic=t["labels"], dlq_topic=t["dlq"], partitions=2, base_epoch=BASE,
                              label_delay=120, from_secs=20_000, until_secs=150_000, sort_chunk_rows=700,
                              progress=False)  # fmt: skip
    summary = Replayer(settings).run()
    want = {i for i, (e, _) in good.items() if 20_000 <= e.secs < 150_000}
    assert summary.ok and not summary.sorted_input and summary.events_sent == len(want)
    events = _read_all(kafka_bootstrap, t["events"], len(want))
    labels = _read_all(kafka_bootstrap, t["labels"], len(want))
    assert sorted(decode_event(r.value).log_id for r in events) == sorted(want)
    per_partition = defaultdict(list)
    for rec in events:
        e = decode_event(rec.value)
        per_partition[rec.partition].append((rec.offset, (e.secs, e.log_id)))
    for recs in per_partition.values():
        order = [k for _, k in sorted(recs)]
        assert order == sorted(order)
    assert sorted(decode_label(r.value).log_id for r in labels) == sorted(want)
    for rec in labels:
        label = decode_label(rec.value)
        assert rec.timestamp == (BASE + label.secs + 120) * 1000


# --------------------------------------------------------------------------------------
# Failure paths
# --------------------------------------------------------------------------------------
class _RefusingProducer(FakeProducer):
    """A producer whose sends fail at once, as kafka-python's do when no broker answers."""

    def send(self, topic, key=None, value=None, partition=None, timestamp_ms=None):
        from kafka.errors import KafkaTimeoutError

        self.sent.append((topic, key, value, partition, timestamp_ms, self.clock()))
        raise KafkaTimeoutError("Failed to update metadata after 60.0 secs.")


def test_repeated_failed_sends_give_up_with_exit_3(tmp_path, no_admin, monkeypatch, capsys):
    from producer.replay import MAX_CONSECUTIVE_SEND_ERRORS

    path = _generated(tmp_path, days=1, events_per_day=500)
    producer = _RefusingProducer()
    monkeypatch.setattr(kafka_io, "make_producer", lambda bootstrap, **kw: producer)
    code = cli_main(["produce", "--data", str(path), "--bootstrap-servers", "unused:9092", "--no-progress"])
    assert code == 3
    err = capsys.readouterr().err
    assert (f"cyberstream produce: broker unreachable at unused:9092: {MAX_CONSECUTIVE_SEND_ERRORS} sends in a row "
            "failed, last: KafkaTimeoutError") in err, err  # fmt: skip
    assert len(producer.sent) == MAX_CONSECUTIVE_SEND_ERRORS and producer.flushed, "it stops at the limit"


def test_ctrl_c_flushes_what_was_sent_and_exits_130(tmp_path, no_admin, monkeypatch, capsys):
    path = _generated(tmp_path, days=1, events_per_day=500)

    class Interrupted(FakeProducer):
        def send(self, topic, *args, **kw):
            if len(self.sent) == 100:
                raise KeyboardInterrupt
            return super().send(topic, *args, **kw)

    producer = Interrupted()
    monkeypatch.setattr(kafka_io, "make_producer", lambda bootstrap, **kw: producer)
    code = cli_main(["produce", "--data", str(path), "--bootstrap-servers", "unused:9092", "--no-progress"])
    assert code == 130
    out = capsys.readouterr().out
    assert producer.flushed and len(producer.sent) == 100
    assert f"events sent     {len(producer.on('auth-events')):,}" in out, out


@pytest.mark.integration
def test_topics_with_different_partition_counts_are_refused_with_exit_2(kafka_bootstrap, tmp_path, capsys):
    t = _topics()
    kafka_io.ensure_topics(kafka_bootstrap, {t["events"]: 2, t["labels"]: 3})
    path = _generated(tmp_path, days=1, events_per_day=200)
    code = cli_main(["produce", "--data", str(path), "--bootstrap-servers", kafka_bootstrap, "--events-topic",
                     t["events"], "--labels-topic", t["labels"], "--dlq-topic", t["dlq"], "--no-progress"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert (f"topics {t['events']!r} (2 partitions) and {t['labels']!r} (3) must have the same partition count"
            in err), err  # fmt: skip
    assert _read_all(kafka_bootstrap, t["events"], 0) == [], "nothing was sent"
