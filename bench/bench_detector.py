"""Detector end to end through a real broker: throughput, publish-to-alert latency, memory.

Usage: .venv/bin/python bench/bench_detector.py [--data CSV] [--model-dir DIR]
       [--bootstrap-servers H:P] [--features compiled|oracle] [--latency-speed X]
       [--latency-hours H]

1. Throughput: the whole file is replayed at --speed max into fresh topics first; then
   the raw consumption of the event topic is timed with kafka-python and with librdkafka
   (a bare consumer reading every partition to the end), and then `cyberstream detect`
   consumes the same topics with both models scoring every cutoff: one detector, then
   --members detectors in one consumer group (one per core: each owns some partitions of
   both topics, with its own online model). A rate is counted from the first event any
   member processed to the last (group join and the idle tail excluded; a rebalance while
   the members join is included).
2. Latency: a slice of --latency-hours of event time is replayed at --latency-speed times
   real time into other fresh topics while a detector runs; a watcher consumer records when
   each event became readable in Kafka, and each alert's latency is its `detected_at` minus
   that time for its triggering event (log_id). p50 and p99 are printed.
3. Peak memory: the detector process's largest resident set size, sampled every 0.2 s.

Without --data it generates the default ten days; without --model-dir it trains on them.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cyberstream import config  # noqa: E402
from cyberstream.broker import running_broker  # noqa: E402
from cyberstream.kafka_io import ensure_topics, make_consumer, read_topic  # noqa: E402
from detector.rdkafka_io import take  # noqa: E402

PARTITIONS = 4


def cli(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cyberstream.cli", *args], capture_output=capture, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cyberstream {' '.join(args)} failed:\n{(proc.stderr or '')[-3000:]}")
    return proc


def topics(tag: str) -> dict[str, str]:
    run = f"{tag}-{uuid.uuid4().hex[:6]}"
    return {k: f"bench-{k}-{run}" for k in ("events", "labels", "alerts", "dlq")}


def produce(bootstrap: str, data: Path, t: dict[str, str], *extra: str) -> None:
    cli("produce", "--data", str(data), "--bootstrap-servers", bootstrap, "--events-topic", t["events"],
        "--labels-topic", t["labels"], "--dlq-topic", t["dlq"], "--partitions", str(PARTITIONS),
        "--no-progress", *extra)  # fmt: skip


def raw_rdkafka_rate(bootstrap: str, topic: str) -> tuple[int, float]:
    """Messages/s of a bare librdkafka (confluent-kafka) consumer reading ``topic`` to its end,
    the client the detector uses."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-raw-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "queued.max.messages.kbytes": 262_144,
                         "fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 8 * 1024 * 1024})  # fmt: skip
    parts = sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
    total = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    n = 0
    t0 = time.perf_counter()
    while n < total:
        for m in take(consumer, 50_000, 1.0):  # as the detector's GroupSource.poll takes them
            if m.error() is None:
                m.value()
                n += 1
    elapsed = time.perf_counter() - t0
    consumer.close()
    return n, n / elapsed


def raw_consume_rate(bootstrap: str, topic: str) -> tuple[int, float]:
    """Messages/s of a bare kafka-python consumer reading every partition of ``topic`` to its end."""
    from kafka.structs import TopicPartition

    consumer = make_consumer(bootstrap, group_id=None, client_id="bench-raw")
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    total, n = sum(end.values()), 0
    t0 = time.perf_counter()
    while n < total:
        for recs in consumer.poll(timeout_ms=1000).values():
            n += len(recs)
    elapsed = time.perf_counter() - t0
    consumer.close()
    return n, n / elapsed


def detect(bootstrap: str, model_dir: Path, t: dict[str, str], features: str, state: Path,
           idle: float = 5.0, members: int = 1, extra: tuple[str, ...] = ()) -> tuple[list[str], float]:  # fmt: skip
    """Run ``members`` `cyberstream detect` processes in one group until idle; return their
    summaries and the peak RSS of the largest, in MB."""
    group = f"bench-{uuid.uuid4().hex[:6]}"
    procs = []
    for i in range(members):
        args = [sys.executable, "-m", "cyberstream.cli", "detect", "--model-dir", str(model_dir),
                "--bootstrap-servers", bootstrap, "--group-id", group,
                "--events-topic", t["events"], "--labels-topic", t["labels"], "--alerts-topic", t["alerts"],
                "--dlq-topic", t["dlq"], "--partitions", str(PARTITIONS), "--features", features,
                "--checkpoint", str(state / f"{group}-{i}.ckpt"), "--idle-timeout", str(idle), "--log-every", "30",
                *extra]  # fmt: skip
        proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        chunks: list[str] = []
        reader = threading.Thread(target=lambda p=proc, c=chunks: c.append(p.stderr.read()), daemon=True)
        reader.start()
        procs.append((proc, psutil.Process(proc.pid), reader, chunks))
    peak = 0
    while any(proc.poll() is None for proc, *_ in procs):
        for _proc, ps, *_ in procs:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.2)
    summaries = []
    for proc, _ps, reader, chunks in procs:
        reader.join()
        err = "".join(chunks)
        if proc.returncode != 0:
            raise SystemExit(f"detector failed:\n{err[-3000:]}")
        summaries.append(err[err.index("detector summary"):])
    return summaries, peak / 2**20


def group_rate(summaries: list[str]) -> tuple[int, float]:
    """Events processed by all members, and events/s from the first event any member
    processed to the last."""
    events = sum(int(re.search(r"events processed\s+([\d,]+)", s).group(1).replace(",", "")) for s in summaries)
    spans = [tuple(map(float, re.search(r"busy from\s+([\d.]+) to ([\d.]+)", s).groups())) for s in summaries]
    first, last = min(a for a, _ in spans), max(b for _, b in spans)
    return events, events / max(last - first, 1e-9)


def member_lines(summaries: list[str]) -> list[str]:
    """Each member's share of the events and its own busy rate: how evenly the key hash
    spread the work, and how fast one member ran beside the others."""
    lines = []
    for i, s in enumerate(summaries):
        events, rate = group_rate([s])
        lines.append(f"  member {i + 1}: {events:,} events, {rate:,.0f} events/s from its first event to its last")
    return lines


def alert_quality(bootstrap: str, topics: list[str], data: Path, model_dir: Path) -> list[str]:
    """The alerts of each run (its alert topic) against the ground truth, as
    `cyberstream alerts --summary` counts them."""
    from alerts.summary import summarize
    from detector.models import load_batch_model
    from training.data import read_events

    spec = load_batch_model(model_dir).label_spec
    truth, _ = read_events(data, progress=False)
    return [_figures(summarize(read_topic(bootstrap, topic), truth, spec=spec)) for topic in topics]


def _figures(s) -> str:
    pct = lambda x: "-" if x is None else f"{x:.0%}"  # noqa: E731
    return (f"{s.alerts} alerts on {s.connections_alerted} connections; {s.connection_tp} of "
            f"{s.malicious_connections} malicious connections (recall {pct(s.recall)}, precision "
            f"{pct(s.precision_connections)}); cutoff precision {pct(s.precision_cutoffs)}")


class Watcher(threading.Thread):
    """Records the wall time at which each event (by log_id) became readable in Kafka."""

    def __init__(self, bootstrap: str, topic: str):
        from kafka.structs import TopicPartition

        super().__init__(daemon=True)
        # Partitions assigned by hand: a group subscription to a topic created a moment ago can
        # see no partitions and wait for the next metadata refresh (minutes), missing the slice.
        self.consumer = make_consumer(bootstrap, group_id=None, client_id="bench-watch")
        deadline = time.monotonic() + 30
        while not (found := self.consumer.partitions_for_topic(topic)):
            if time.monotonic() > deadline:
                raise SystemExit(f"topic {topic} has no partitions after 30 s")
            time.sleep(0.2)
        parts = [TopicPartition(topic, p) for p in sorted(found)]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        self.seen: dict[int, float] = {}
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            for recs in self.consumer.poll(timeout_ms=200).values():
                now = time.time()
                for r in recs:
                    self.seen[json.loads(r.value)["log_id"]] = now
        self.consumer.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--model-dir", type=Path)
    ap.add_argument("--bootstrap-servers")
    ap.add_argument("--features", choices=["compiled", "oracle"], default="compiled")
    ap.add_argument("--latency-speed", type=float, default=1000.0, help="replay speed of the latency run")
    ap.add_argument("--latency-hours", type=float, default=48.0, help="event-time hours replayed for latency")
    ap.add_argument("--skip-throughput", action="store_true", help="only the latency run")
    ap.add_argument("--members", type=int, default=2, help="detectors in one group for the scale-out run (0: skip)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-detector-") as tmp:
        work = Path(tmp)
        data = args.data
        if data is None:
            data = work / "CyberFLTenDays.csv"
            cli("generate", "--out", str(data), "--no-progress")
        model_dir = args.model_dir
        if model_dir is None:
            model_dir = work / "models"
            cli("train", "--data", str(data), "--out", str(model_dir), "--no-progress")
        rows = sum(1 for _ in open(data)) - 1
        with running_broker(args.bootstrap_servers) as bootstrap:
            # 1. throughput
            n_raw = raw_rate = rd_rate = busy = peak_mb = group_events = group_busy = group_peak = 0
            summaries: list[str] = []
            quality: dict[str, str] = {}
            summary = "(skipped)"
            t = topics("tput")
            if not args.skip_throughput:
                ensure_topics(bootstrap, {t["events"]: PARTITIONS, t["labels"]: PARTITIONS})
                produce(bootstrap, data, t, "--speed", "max")
                n_raw, raw_rate = raw_consume_rate(bootstrap, t["events"])
                _, rd_rate = raw_rdkafka_rate(bootstrap, t["events"])
                (summary,), peak_mb = detect(bootstrap, model_dir, t, args.features, work)
                busy = group_rate([summary])[1]
                runs = {"one detector": t["alerts"]}
                if args.members > 1:
                    tg = {**t, "alerts": t["alerts"] + "-group"}
                    summaries, group_peak = detect(bootstrap, model_dir, tg, args.features, work, members=args.members)
                    group_events, group_busy = group_rate(summaries)
                    runs[f"{args.members} detectors"] = tg["alerts"]
                quality = dict(zip(runs, alert_quality(bootstrap, list(runs.values()), data, model_dir), strict=True))
            # 2. latency, on a paced slice
            lt = topics("lat")
            ensure_topics(bootstrap, {lt["events"]: PARTITIONS, lt["labels"]: PARTITIONS})
            watcher = Watcher(bootstrap, lt["events"])
            watcher.start()
            until = int(args.latency_hours * 3600)
            results: dict = {}

            def run_latency_detector() -> None:
                try:
                    # beside the paced replay: a caught-up partition waits for its own next record
                    lateness = ("--allowed-lateness-secs", str(config.replay_lateness_secs(args.latency_speed)))
                    results["lat"] = detect(bootstrap, model_dir, lt, args.features, work, idle=8.0, extra=lateness)
                except SystemExit as exc:  # a thread would swallow it: report it after the join
                    results["error"] = str(exc)

            det = threading.Thread(target=run_latency_detector)
            det.start()
            time.sleep(5)  # let the detector join its group
            produce(bootstrap, data, lt, "--speed", str(args.latency_speed), "--until-secs", str(until))
            det.join()
            watcher.stop = True
            watcher.join()
            alerts = read_topic(bootstrap, lt["alerts"])
    lat = np.array([a["detected_at"] - watcher.seen[a["log_id"]] for a in alerts if a["log_id"] in watcher.seen])
    print(f"data: {data} ({rows:,} events); model: {model_dir}; feature engine: {args.features}")
    print("\n== throughput (whole file, both models scoring every cutoff)")
    print(f"kafka-python raw consumption of the event topic: {n_raw:,} messages, {raw_rate:,.0f} messages/s")
    print(f"librdkafka raw consumption of the event topic: {rd_rate:,.0f} messages/s")
    print(f"detector end to end: {busy:,.0f} events/s ({busy / max(raw_rate, 1):.0%} of kafka-python's raw rate)")
    print(f"detector peak memory (RSS): {peak_mb:,.0f} MB")
    print(summary.rstrip())
    if group_events:
        print(f"\n{args.members} detectors in one group: {group_events:,} events, {group_busy:,.0f} events/s "
              f"({group_busy / max(raw_rate, 1):.0%} of kafka-python's raw rate); largest peak RSS {group_peak:,.0f} MB")
        print("\n".join(member_lines(summaries)))
    for label, figures in quality.items():
        print(f"alerts of {label}: {figures}")
    print(f"\n== latency, event published -> alert ({args.latency_hours:g} h of event time at "
          f"{args.latency_speed:g}x real time)")  # fmt: skip
    if "error" in results:
        raise SystemExit(f"the latency run's {results['error']}")
    print(results["lat"][0][0].rstrip())
    if len(lat):
        print(f"alerts: {len(lat)}; p50 {np.percentile(lat, 50) * 1000:,.0f} ms, "
              f"p99 {np.percentile(lat, 99) * 1000:,.0f} ms, max {lat.max() * 1000:,.0f} ms")  # fmt: skip
    else:
        print("no alert in the latency slice: raise --latency-hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
