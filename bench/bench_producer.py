"""Producer throughput: `cyberstream produce --speed max` against kafka-python's raw send rate.

Usage: .venv/bin/python bench/bench_producer.py [--data CSV] [--rows N] [--bootstrap-servers H:P]

Both measurements send the SAME messages in the same run, to fresh topics with the same
partition count: for every event, the event message and its label message (same keys,
values and timestamps the replay sends). "raw" is a bare loop of ``KafkaProducer.send`` over
messages encoded in memory beforehand (no CSV reading, parsing, encoding, dead-letter
checks, progress or pacing), with the producer settings of ``cyberstream.kafka_io`` and
kafka-python's default partitioner; "raw, explicit partition" passes the partition the
replay computes. The replay is timed end to end (scanning the file, reading, parsing,
encoding, sending, flushing). Target (issue 3): >= 50,000 events/s, or >= 80 % of the raw
rate when kafka-python itself is slower than that.

Without --data it generates the demo's default data set (10 days x 25,000 events). Without a
broker address it uses $KAFKA_BOOTSTRAP_SERVERS, the local broker, or starts a temporary one.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cyberstream import config, kafka_io  # noqa: E402
from cyberstream.broker import running_broker  # noqa: E402
from cyberstream.schema import LabelRecord, parse_row  # noqa: E402
from producer.replay import ReplaySettings, replay  # noqa: E402

RAW, RAW_EXPLICIT, PRODUCE = "raw send", "raw, explicit partition", "produce --speed max"


def messages(path: Path, base_epoch: int, until: int | None) -> list[tuple[bytes, bytes, int, bytes, int]]:
    """(key, event value, event timestamp, label value, label timestamp) per event, as the replay sends them."""
    out = []
    with open(path, newline="") as fh:
        fh.readline()
        for log_id, fields in enumerate(csv.reader(fh)):
            event, malicious = parse_row(fields, log_id)
            if until is not None and event.secs >= until:
                break
            conn = f"{event.src_name} / {event.dest_name}"
            ts = (base_epoch + event.secs) * 1000
            label = LabelRecord(conn, log_id, event.secs, malicious).to_json()
            out.append((conn.encode(), event.to_json(), ts, label, ts))
    return out


def raw_send(bootstrap: str, msgs, partitions: int, explicit: bool) -> tuple[float, float]:
    """(events per wall second, events per CPU second) of a bare send loop (two messages per event)."""
    from kafka.partitioner.default import murmur2

    ev, lb = f"bench-raw-ev-{uuid.uuid4().hex[:8]}", f"bench-raw-lb-{uuid.uuid4().hex[:8]}"
    kafka_io.ensure_topics(bootstrap, {ev: partitions, lb: partitions})
    producer = kafka_io.make_producer(bootstrap)
    producer.send(ev, b"warm-up").get(timeout=30)
    producer.send(lb, b"warm-up").get(timeout=30)
    if explicit:
        parts = {k: (murmur2(k) & 0x7FFFFFFF) % partitions for k, *_ in msgs}
        t0, c0 = time.perf_counter(), time.process_time()
        for key, value, ts, label, lts in msgs:
            p = parts[key]
            producer.send(ev, key=key, value=value, timestamp_ms=ts, partition=p)
            producer.send(lb, key=key, value=label, timestamp_ms=lts, partition=p)
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        for key, value, ts, label, lts in msgs:
            producer.send(ev, key=key, value=value, timestamp_ms=ts)
            producer.send(lb, key=key, value=label, timestamp_ms=lts)
    producer.flush()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    producer.close()
    return len(msgs) / elapsed, len(msgs) / cpu


def replay_rate(bootstrap: str, data: Path, partitions: int, until: int | None) -> tuple[float, float, int]:
    """(events per wall second, events per CPU second, events sent) of the replay, end to end."""
    suffix = uuid.uuid4().hex[:8]
    settings = ReplaySettings(
        data=data,
        bootstrap=bootstrap,
        events_topic=f"bench-ev-{suffix}",
        labels_topic=f"bench-lb-{suffix}",
        dlq_topic=f"bench-dlq-{suffix}",
        partitions=partitions,
        base_epoch=config.DEFAULT_BASE_EPOCH,
        until_secs=until,
        progress=False,
    )
    kafka_io.ensure_topics(bootstrap, {settings.events_topic: partitions, settings.labels_topic: partitions,
                                       settings.dlq_topic: partitions})  # fmt: skip
    c0 = time.process_time()
    summary = replay(settings)
    cpu = time.process_time() - c0
    assert summary.ok and summary.dead_letters == 0, summary.lines()
    return summary.events_sent / summary.elapsed, summary.events_sent / cpu, summary.events_sent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="CSV to replay (default: generate the demo's data set)")
    parser.add_argument("--rows", type=int, default=None, help="replay only the first N rows' seconds")
    parser.add_argument("--bootstrap-servers", default=None)
    parser.add_argument("--partitions", type=int, default=config.DEFAULT_PARTITIONS)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, best one reported")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-producer-") as tmp:
        data = args.data
        if data is None:
            from producer.generator import GeneratorConfig, generate

            data = Path(tmp) / "CyberFLTenDays.csv"
            t0 = time.perf_counter()
            s = generate(GeneratorConfig(), data)
            print(f"generated {s.rows:,} rows in {time.perf_counter() - t0:.1f} s -> {data}")
        until = None
        if args.rows is not None:  # a slice of whole seconds covering the first N rows
            with open(data) as fh:
                fh.readline()
                for i, line in enumerate(fh):
                    if i == args.rows:
                        until = int(line.split(",", 1)[0])
                        break
        msgs = messages(data, config.DEFAULT_BASE_EPOCH, until)
        with running_broker(args.bootstrap_servers) as bootstrap:
            print(f"broker {bootstrap}; {len(msgs):,} events, 2 messages each (event + label), "
                  f"{args.partitions} partitions, best of {args.repeat}")  # fmt: skip
            wall: dict[str, list[float]] = {RAW: [], RAW_EXPLICIT: [], PRODUCE: []}
            cpu: dict[str, list[float]] = {RAW: [], RAW_EXPLICIT: [], PRODUCE: []}
            for _ in range(args.repeat):  # interleaved, so load from other processes hits all alike
                for name in (RAW, PRODUCE, RAW_EXPLICIT):
                    if name == PRODUCE:
                        w, c, sent = replay_rate(bootstrap, data, args.partitions, until)
                        assert sent == len(msgs), (sent, len(msgs))
                    else:
                        w, c = raw_send(bootstrap, msgs, args.partitions, explicit=name == RAW_EXPLICIT)
                    wall[name].append(w)
                    cpu[name].append(c)
    best = {k: max(v) for k, v in wall.items()}
    best_cpu = {k: max(v) for k, v in cpu.items()}
    print(f"  {'':<26} {'events/s':>10} {'events/CPU-s':>13}   wall-clock runs")
    for name in (RAW, RAW_EXPLICIT, PRODUCE):
        runs = ", ".join(f"{r:,.0f}" for r in wall[name])
        print(f"  {name:<26} {best[name]:>10,.0f} {best_cpu[name]:>13,.0f}   ({runs})")
    ratio = best[PRODUCE] / best[RAW]
    print(f"  produce / raw              {ratio:>10.0%} {best_cpu[PRODUCE] / best_cpu[RAW]:>13.0%}")
    print(f"  produce / raw (explicit)   {best[PRODUCE] / best[RAW_EXPLICIT]:>10.0%} "
          f"{best_cpu[PRODUCE] / best_cpu[RAW_EXPLICIT]:>13.0%}")  # fmt: skip
    met = best[PRODUCE] >= 50_000 or ratio >= 0.8
    print(f"target (>= 50,000 events/s or >= 80 % of raw): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
