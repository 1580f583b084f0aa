"""What one event costs in the detector's libraries alone: a floor under its CPU per event.

Usage: .venv/bin/python bench/bench_floor.py --data CSV --model-dir DIR [--bootstrap-servers H:P]
       [--rounds N] [--learn-every-secs S]

The file is replayed at --speed max into fresh topics. Each round then runs one
`cyberstream detect` on them and, right after it (the machine's speed swings), times each
piece of work the detector cannot do without on its own, in CPU seconds of this process
(every thread), over the same events and cutoffs the detector sees:

1. librdkafka: a bare consumer reads both topics to their ends (an event and its label);
2. decoding and validating every record (``decode_event``, ``decode_label``);
3. the compiled feature engine, driven as the detector drives it (the events of each
   second observed at once, every cutoff of a batch in one ``features_at``);
4. the batch model on every cutoff (the numeric conversion, the cached encoding, the trees);
5. the River model: one learning step per ``--learn-every-secs`` of event time on that
   step's share of the cutoffs, a snapshot per step, every cutoff scored.

Nothing here is the detector's own bookkeeping (queues, labels, pending cutoffs, commits),
so the sum is a floor: one detector process cannot be faster than 1e6 / floor events/s on
the machine of that moment; the detector's own CPU per event is printed beside it.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import defaultdict
from itertools import groupby
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detector import PARTITIONS, detect, produce, topics  # noqa: E402

from cyberstream.broker import running_broker  # noqa: E402
from cyberstream.features import make_engine  # noqa: E402
from cyberstream.kafka_io import ensure_topics  # noqa: E402
from cyberstream.schema import EVENT_FIELDS, decode_event, decode_label  # noqa: E402
from detector.detect_cmd import tune_gc  # noqa: E402
from detector.models import load_batch_model  # noqa: E402
from detector.online import OnlineModel  # noqa: E402
from detector.rdkafka_io import take  # noqa: E402
from training.labels import label_times  # noqa: E402
from training.model import numeric_values  # noqa: E402


def consume_values(bootstrap: str, topic_names: list[str]) -> tuple[dict[str, list[bytes]], float]:
    """Every value of ``topic_names``, read by one bare librdkafka consumer as the detector
    reads them; and the CPU seconds it took."""
    from confluent_kafka import Consumer, TopicPartition

    from detector.rdkafka_io import consumer_config

    consumer = Consumer(consumer_config(bootstrap, f"bench-floor-{time.time_ns()}", "bench-floor"))
    parts, total = [], 0
    for topic in topic_names:
        for p in sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions):
            parts.append(TopicPartition(topic, p, 0))
            total += consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
    consumer.assign(parts)
    values: dict[str, list[bytes]] = defaultdict(list)
    n = 0
    c0 = time.process_time()
    while n < total:
        for m in take(consumer, 20_000, 1.0):
            if m.error() is None:
                values[m.topic()].append(m.value())
                n += 1
    cpu = time.process_time() - c0
    consumer.close()
    return values, cpu


def timed(fn, *args):
    c0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - c0


def second_plan(model, events: list, batch_size: int = 4096) -> list[tuple[int, list, list, bool]]:
    """The detector's work list, worked out beforehand so that only the engine is timed:
    per second, its events, the cutoffs it queues (the label definition's, in the detector's
    order), and whether a feature batch closes after it."""
    frame = pd.DataFrame(events, columns=list(EVENT_FIELDS)).assign(label=False)
    cuts_at: dict[int, list[str]] = defaultdict(list)
    cutoffs = label_times(frame, kind=model.kind, spec=model.label_spec)
    for conn, secs in zip(cutoffs["connection_id"], cutoffs["cutoff_secs"].tolist(), strict=True):
        cuts_at[secs].append(conn)
    plan, queued = [], 0
    for s, group in groupby(events, key=lambda e: e.secs):
        cuts = [(c, s) for c in sorted(cuts_at.get(s, ()))]
        queued += len(cuts)
        plan.append((s, list(group), cuts, queued >= batch_size))
        queued = 0 if queued >= batch_size else queued
    return plan


def features_pass(model, plan: list) -> tuple[list, list]:
    """The detector's way through the engine: each second's events observed at once, the
    features of a batch of cutoffs in one call, then the window moved on."""
    engine = make_engine("compiled", model.features, model.window_secs, kind=model.kind)
    queued: list[tuple[str, int]] = []
    frames, cutoff_secs = [], []
    for s, evs, cuts, closes in plan:
        engine.observe_many(evs)
        queued += cuts
        if closes or s == plan[-1][0]:
            frames.append(engine.features_at(queued).reset_index(drop=True))
            cutoff_secs.append(np.array([q[1] for q in queued]))
            engine.advance(s)
            queued = []
    return frames, cutoff_secs


def batch_pass(model, frames: list) -> list:
    numerics = []
    for f in frames:
        x = numeric_values(f, model.online_feature_names)
        model.predict(f, x)
        numerics.append(x)
    return numerics


def online_pass(model, numerics: list, cutoff_secs: list, learn_every: int) -> int:
    """One learning step per ``learn_every`` seconds on the cutoffs of the step before (the
    labels are made up: the cost does not depend on them); every cutoff scored with the
    snapshot of its step."""
    online = OnlineModel(model.online_feature_names)
    x = np.concatenate(numerics)
    secs = np.concatenate(cutoff_secs)
    rng = np.random.default_rng(0)
    y = rng.random(len(x)) < 0.01
    steps = 0
    snap = None
    bounds = np.flatnonzero(np.diff(secs // learn_every)) + 1
    for block_x, block_y in zip(np.split(x, bounds), np.split(y, bounds), strict=True):
        if snap is not None:
            snap.predict(block_x)
        online.learn_values(block_x, block_y)
        snap = online.snapshot()
        steps += 1
    return steps


def floor_pass(model, ev_values: list[bytes], lab_values: list[bytes], learn_every: int) -> tuple[list, int]:
    """Decode, features, batch model, River on the consumed values: (what, CPU s) rows and
    the number of cutoffs."""
    events, dec_ev = timed(lambda: [decode_event(v) for v in ev_values])
    _, dec_lab = timed(lambda: [decode_label(v) for v in lab_values])
    events.sort(key=lambda e: (e.secs, e.log_id))
    plan = second_plan(model, events)
    features_pass(model, plan[:5_000])  # warm-up: numba's compiled kernels load
    (frames, cutoff_secs), feat_cpu = timed(features_pass, model, plan)
    batch_pass(model, frames[:1])
    numerics, batch_cpu = timed(batch_pass, model, frames)
    steps, online_cpu = timed(online_pass, model, numerics, cutoff_secs, learn_every)
    cutoffs = sum(len(f) for f in frames)
    rows = [
        ("decoding and validating the event and the label", dec_ev + dec_lab),
        ("feature engine, the detector's way", feat_cpu),
        (f"batch model on every cutoff ({cutoffs:,})", batch_cpu),
        (f"River: {steps:,} learning steps, every cutoff scored", online_cpu),
    ]
    return rows, cutoffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--bootstrap-servers")
    ap.add_argument("--learn-every-secs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2, help="detector run, then the floor, this many times")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # as the detector runs its models
    model = load_batch_model(args.model_dir)
    tune_gc()  # as the detector does once loaded
    with running_broker(args.bootstrap_servers) as bootstrap, tempfile.TemporaryDirectory() as tmp:
        t = topics("floor")
        ensure_topics(bootstrap, {t["events"]: PARTITIONS, t["labels"]: PARTITIONS})
        produce(bootstrap, args.data, t, "--speed", "max")
        for r in range(1, args.rounds + 1):
            # The machine's speed swings: each round measures the detector and the floor back to back.
            (summary,), _ = detect(bootstrap, args.model_dir, t, "compiled", Path(tmp))
            values, consume_cpu = consume_values(bootstrap, [t["events"], t["labels"]])
            ev_values, lab_values = values[t["events"]], values[t["labels"]]
            rows, cutoffs = floor_pass(model, ev_values, lab_values, args.learn_every_secs)
            rows.insert(0, ("librdkafka: both topics read (an event and its label)", consume_cpu))
            n = len(ev_values)
            per = 1e6 / n
            floor = sum(c for _, c in rows)
            print(f"\nround {r}: {n:,} events, {len(lab_values):,} labels, {cutoffs:,} cutoffs; "
                  "CPU microseconds per event:")  # fmt: skip
            for label, cpu in rows:
                print(f"  {label:<60} {cpu * per:6.1f}")
            print(
                f"  {'sum: the floor':<60} {floor * per:6.1f}  (at most {n / floor:,.0f} events/s in one process)"
            )
            detector_cpu = float(re.search(r"CPU ([\d.]+) us", summary).group(1))
            busy = re.search(r"([\d,]+) events/s from the first event", summary).group(1)
            print(
                f"  {'the detector on the same topics, just before':<60} {detector_cpu:6.1f}  ({busy} events/s)"
            )
            print(f"  {'its own bookkeeping (the difference)':<60} {detector_cpu - floor * per:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
