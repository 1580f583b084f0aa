"""The streaming detector: consume events and labels, score every cutoff, publish alerts.

How the stream is cut into work (all of it deterministic, so a restarted detector
reproduces exactly the alerts of an uninterrupted one):

* **Seconds, in global event-time order.** Events are buffered per partition; second ``s``
  is complete once every assigned partition is known through ``s`` (it holds a later
  event, or it is caught up with the broker). All complete seconds are processed together,
  in ``secs`` order: their events go into the feature engine and the ledger (arrays of
  connections, recent events and pending cutoffs, ``detector/ledger.py``), and each
  connection that had events in second ``s`` gets a cutoff at ``s`` (the training issue's
  definition: one cutoff per connection per distinct ``secs``, at the last event of that
  second). Eligible cutoffs (at least N earlier events) are scored.
* **Learning in event-time steps.** Labels are applied, and the online model learns from
  the cutoffs they resolve, at every multiple of ``learn_every_secs`` of event time. A
  label's arrival time is its record timestamp (the producer stamps it with the event
  time at which it was published, ``secs + label delay``), so the online model never
  sees a label before the label topic delivers it, and scores between two steps use the
  same model state however the records were batched.
* **Commit points** fall between seconds. The alerts produced so far are flushed
  (acknowledged by the broker), the checkpoint (online model, per-connection counters,
  pending cutoffs, cooldowns and the next offsets of every partition of both topics) is
  written atomically, then the same offsets are committed to the consumer group.
* **Restart.** Offsets come from the checkpoint (else the group's commits); each events
  partition's window is rebuilt by re-reading the log from the window's start (record
  timestamps are event time) without scoring, then consumption resumes.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import pickle
import resource
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cyberstream.connections import connection_ids_of_rows
from cyberstream.kafka_io import dead_letter, json_bytes, make_producer
from cyberstream.schema import LABEL_MALICIOUS, Event, decode_events, decode_labels
from detector.alerts import FeatureExplainer, build_alert, json_value
from detector.ledger import Cutoffs, Ledger
from detector.online import OnlineModel
from detector.source import GroupSource, Partition, Records, last_timestamp, read_partition
from training.labels import LabelSpec

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2
#: "known through any time": a partition that is caught up and quiet
FOREVER = np.iinfo(np.int64).max // 2


@dataclass
class DetectorConfig:
    """Everything the detector loop needs besides its models (see ``detect --help``)."""

    bootstrap: str
    group_id: str
    events_topic: str
    labels_topic: str
    alerts_topic: str
    dlq_topic: str
    checkpoint_path: Path
    kind: str = "session"
    window_secs: int = 86_400
    label_spec: LabelSpec = field(default_factory=LabelSpec)
    threshold: float = 0.5
    cooldown_secs: int = 3_600
    learn_every_secs: int = 300
    online_weight: float = 0.5
    online_warmup_positives: int = 20
    batch_size: int = 4_096
    checkpoint_every_secs: float = 10.0
    max_events: int | None = None
    idle_timeout: float | None = None
    idle_drop_secs: int | None = None
    base_epoch: int = 1_577_836_800
    log_every_secs: float = 10.0
    poll_records: int = 20_000
    #: a caught-up partition counts as complete after this long without new records ...
    idle_grace_secs: float = 0.5
    #: ... or once other partitions are this far ahead in event time (later events are late)
    allowed_lateness_secs: int = 60
    #: write the features of every alerted cutoff and of one in N others to this JSON-lines
    #: file, for audits and for the parity check against featuretools.
    record_features: Path | None = None
    record_every: int = 50


class Buffer:
    """Decoded records of one partition waiting to be processed, in offset order, each with
    its time (an event's ``secs``, a label's arrival)."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.times: list[int] = []
        self.rows: list[tuple] = []
        self.head = 0
        self.in_order = True  # times never decrease (the normal case: bisect instead of a scan)
        self.seen: int | None = None  # offset after the last record polled (dead-lettered ones too)

    def __len__(self) -> int:
        return len(self.offsets) - self.head

    def extend(self, offsets: list[int], times: list[int], rows: list[tuple], seen: int) -> None:
        if self.head and self.head >= len(self.offsets) // 2:
            del self.offsets[: self.head], self.times[: self.head], self.rows[: self.head]
            self.head = 0
        if times and self.in_order:
            last = self.times[-1] if len(self) else times[0]
            self.in_order = last <= times[0] and times == sorted(times)
        self.offsets.extend(offsets)
        self.times.extend(times)
        self.rows.extend(rows)
        self.seen = seen

    def last_time(self) -> int | None:
        return self.times[-1] if len(self) else None

    def count_through(self, limit: int) -> int:
        """How many records from the head have times <= ``limit`` (up to the first later one)."""
        if self.in_order:
            return bisect.bisect_right(self.times, limit, self.head) - self.head
        n = 0
        for t in self.times[self.head :]:
            if t > limit:
                break
            n += 1
        return n

    def take(self, n: int) -> tuple[list[int], list[int], list[tuple]]:
        h = self.head
        self.head = h + n
        if self.head == len(self.offsets):
            self.in_order = True
        return self.offsets[h : h + n], self.times[h : h + n], self.rows[h : h + n]

    def next_offset(self, taken: list[int]) -> int:
        """The offset to resume at once ``taken`` (the last take) is processed."""
        if not len(self) and self.seen is not None:
            return max(taken[-1] + 1, self.seen)
        return taken[-1] + 1

    def clear(self) -> None:
        self.__init__()


@dataclass
class Stats:
    events: int = 0
    malformed: int = 0
    late: int = 0
    labels: int = 0
    cutoffs: int = 0
    alerts: int = 0
    suppressed: int = 0
    learned: int = 0
    learned_positive: int = 0
    rebuilt: int = 0
    feature_secs: float = 0.0
    model_secs: float = 0.0
    started: float = field(default_factory=time.monotonic)
    first_event_at: float | None = None  # wall (monotonic) time the first event was processed
    last_event_at: float | None = None

    @property
    def busy_rate(self) -> float:
        """Events/s from the first processed event to the last (no start-up, no idle tail)."""
        if self.first_event_at is None or self.last_event_at is None or self.last_event_at <= self.first_event_at:
            return 0.0
        return self.events / (self.last_event_at - self.first_event_at)


@dataclass
class LearnTask:
    """Cutoffs resolved at one learning step: the online model learns them before scoring
    any cutoff queued after them. Inputs of cutoffs still queued are filled in when their
    features are computed, so learning never forces a feature computation of its own."""

    seq: np.ndarray
    y: np.ndarray
    x: np.ndarray
    missing: np.ndarray  # rows of x not known yet


@dataclass
class Scored:
    """A batch of cutoffs with their features and online scores, awaiting the batch model."""

    cutoffs: Cutoffs
    features: pd.DataFrame
    online: np.ndarray  # NaN: no online model yet
    weight: np.ndarray  # the online score's weight in the final score


class StreamDetector:
    """One detector instance in a consumer group (see the module docstring)."""

    def __init__(self, cfg: DetectorConfig, batch_model: Any, engine_factory: Any, explainer: FeatureExplainer):
        self.cfg = cfg
        self.batch = batch_model
        self.engine_factory = engine_factory
        self.engine = engine_factory()
        self.explainer = explainer
        self.online = OnlineModel(batch_model.online_feature_names)
        self.online_cols = list(batch_model.online_feature_names)
        self.idle_drop_secs = max(cfg.idle_drop_secs or cfg.window_secs, cfg.window_secs)
        self.ledger = Ledger(cfg.label_spec, len(self.online_cols))
        self.events: dict[int, Buffer] = {}
        self.labels: dict[int, Buffer] = {}
        self.next_event_offset: dict[int, int] = {}
        self.next_label_offset: dict[int, int] = {}
        self.end_offsets: dict[Partition, int] = {}
        self.end_offsets_at = 0.0
        self.processed_secs = -1  # last second fully processed
        self.next_boundary: int | None = None
        self.next_sweep: int | None = None
        #: cutoffs awaiting features and learning steps waiting for their inputs, in order
        self.queued: list[Cutoffs | LearnTask] = []
        self.n_queued = 0
        self.scored: list[Scored] = []
        self.n_scored = 0
        self.snapshot = self.online.snapshot()  # the online model after every learning step applied
        self._connection_ids = connection_ids_of_rows(cfg.kind)
        self.stats = Stats()
        self.stop_requested = False
        self.send_errors: list[BaseException] = []
        self.producer = make_producer(cfg.bootstrap, client_id=f"{cfg.group_id}-alerts")
        self.source: GroupSource | None = None
        self.final_lag: int | None = None
        #: (boundary, connection, cutoff_secs, label, label arrivals) of every learnt cutoff, when a
        #: caller sets it to a list (tests check that no label is used before it arrived).
        self.learn_log: list | None = None
        self._recorder = open(cfg.record_features, "a") if cfg.record_features else None
        self._last_data = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self, *_: Any) -> None:
        self.stop_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> Stats:
        cfg = self.cfg
        self.source = GroupSource(cfg.bootstrap, cfg.group_id, [cfg.events_topic, cfg.labels_topic],
                                  f"{cfg.group_id}-consumer", self._on_assigned, self._on_revoked)  # fmt: skip
        last_commit = last_log = time.monotonic()
        self._last_data = time.monotonic()
        try:
            while not self.stop_requested:
                polled = self.source.poll(0.2, cfg.poll_records)
                if polled:
                    self._last_data = time.monotonic()
                    self._enqueue(polled)
                if self._advance(final=False):
                    # Every complete second is processed: score now rather than wait for a full
                    # batch (latency). Scores do not depend on when this happens.
                    self._flush_scores()
                now = time.monotonic()
                if now - last_commit >= cfg.checkpoint_every_secs:
                    self._commit()
                    last_commit = now
                if now - last_log >= cfg.log_every_secs:
                    self._log_progress()
                    last_log = now
                if cfg.max_events is not None and self.stats.events >= cfg.max_events:
                    log.info("reached --max-events %d", cfg.max_events)
                    break
                if (cfg.idle_timeout is not None and now - self._last_data >= cfg.idle_timeout
                        and self._caught_up()):  # fmt: skip
                    log.info("no new records for %.0f s: end of stream", cfg.idle_timeout)
                    self._advance(final=True)
                    break
            self._commit()
        finally:
            try:
                self.final_lag = self.lag()
            except Exception:  # the broker may be gone; the summary says "unknown"
                self.final_lag = None
            self.source.close()
            self.producer.flush()
            self.producer.close()
            if self._recorder is not None:
                self._recorder.close()
        self._log_progress(final=True)
        return self.stats

    # ------------------------------------------------------------------ rebalancing
    def _on_revoked(self, parts: list[Partition]) -> None:
        # The partitions are gone: work not committed yet is redone by their next owner (at
        # least once; alert ids are deterministic, so duplicates are recognisable).
        gone = {p for t, p in parts if t == self.cfg.events_topic}
        self._flush_scores()  # the work in hand (the engine still has its windows)
        self.ledger.drop_connections(self.ledger.of_partitions(gone))
        for p in gone:
            self.events.pop(p, None)
            self.labels.pop(p, None)
            self.next_event_offset.pop(p, None)
            self.next_label_offset.pop(p, None)

    def _on_assigned(self, parts: list[Partition]) -> dict[Partition, int | None]:
        """Position new partitions at the checkpoint's (else the group's) offsets and
        rebuild every owned partition's window into a fresh engine."""
        cfg = self.cfg
        ev_parts = sorted(p for t, p in parts if t == cfg.events_topic)
        lab_parts = sorted(p for t, p in parts if t == cfg.labels_topic)
        if ev_parts != lab_parts:
            log.warning("events partitions %s and labels partitions %s differ: are the topics co-partitioned?",
                        ev_parts, lab_parts)  # fmt: skip
        ckpt = self._load_checkpoint()
        owned = set(ev_parts) | set(self.events)
        self.ledger.drop_connections(np.setdiff1d(np.flatnonzero([i is not None for i in self.ledger.ids]),
                                                  self.ledger.of_partitions(owned)))  # fmt: skip
        for p in ev_parts:
            self.events.setdefault(p, Buffer()).clear()
        for p in lab_parts:
            self.labels.setdefault(p, Buffer()).clear()
        committed = self.source.committed(parts) if self.source is not None else {}
        starts: dict[Partition, int | None] = {}
        for topic, key, ps, nxt in ((cfg.events_topic, "events", ev_parts, self.next_event_offset),
                                    (cfg.labels_topic, "labels", lab_parts, self.next_label_offset)):  # fmt: skip
            for p in ps:
                start = (ckpt or {}).get("offsets", {}).get(key, {}).get(p)
                if start is None:
                    start = committed.get((topic, p))
                starts[(topic, p)] = start
                if start is not None:
                    nxt[p] = start
                else:
                    nxt.pop(p, None)
        self.engine = self.engine_factory()
        self.queued.clear()
        self.n_queued = 0
        for p in sorted(self.events):
            end = self.next_event_offset.get(p)
            if end:
                self._rebuild(p, end)
        self._last_data = time.monotonic()
        return starts

    def _rebuild(self, partition: int, end_offset: int) -> None:
        """Re-read partition's events of the window before ``end_offset`` into the engine."""
        cfg = self.cfg
        client = f"{cfg.group_id}-rebuild"
        if self.processed_secs >= 0:
            from_secs = self.processed_secs - cfg.window_secs + 1
        else:
            last = last_timestamp(cfg.bootstrap, cfg.events_topic, partition, end_offset, client)
            from_secs = (last // 1000 - cfg.base_epoch) - cfg.window_secs + 1 if last is not None else 0
        from_ms = (cfg.base_epoch + from_secs) * 1000
        n = 0
        first = None
        chunk: list[bytes] = []

        def feed() -> int:
            rows, _errors = decode_events(chunk)  # dead-lettered when first consumed
            if rows:
                self.engine.observe_rows(rows, min(r[1] for r in rows))
            chunk.clear()
            return len(rows)

        for offset, value in read_partition(cfg.bootstrap, cfg.events_topic, partition, from_ms, end_offset, client):
            first = offset if first is None else first
            chunk.append(value)
            if len(chunk) >= 10_000:
                n += feed()
        n += feed()
        self.stats.rebuilt += n
        if first is not None:
            log.info("partition %d: rebuilt the window from %d events (offsets %d..%d)", partition, n, first,
                     end_offset - 1)  # fmt: skip

    # ------------------------------------------------------------------ input
    def _enqueue(self, polled: dict[Partition, Records]) -> None:
        cfg = self.cfg
        for (topic, p), recs in polled.items():
            is_events = topic == cfg.events_topic
            buffers = self.events if is_events else self.labels
            buf = buffers.get(p)
            if buf is None:  # not (or no longer) ours
                continue
            rows, errors = (decode_events if is_events else decode_labels)(recs.values)
            offsets, stamps = recs.offsets, recs.timestamps
            if errors:
                bad = {i for i, _ in errors}
                for i, reason in errors:
                    self._dead_letter(topic, p, offsets[i], recs.keys[i], recs.values[i], reason)
                offsets = [o for i, o in enumerate(offsets) if i not in bad]
                stamps = [t for i, t in enumerate(stamps) if i not in bad]
            if is_events:
                times = [r[1] for r in rows]
            else:  # a label's arrival in event time: the record timestamp the producer stamped
                base = cfg.base_epoch
                times = [t // 1000 - base for t in stamps]
            buf.extend(offsets, times, rows, recs.offsets[-1] + 1)
            if not len(buf) and offsets == [] and buf.seen is not None:
                self._resume_at(is_events, p, buf.seen)

    def _resume_at(self, is_events: bool, p: int, offset: int) -> None:
        nxt = self.next_event_offset if is_events else self.next_label_offset
        nxt[p] = max(nxt.get(p, 0), offset)

    def _dead_letter(self, topic: str, p: int, offset: int, key: bytes | None, raw: bytes | None, reason: str) -> None:
        self.stats.malformed += 1
        value = dead_letter(source=f"{topic}[{p}]@{offset}", reason=reason, raw=raw)
        self.producer.send(self.cfg.dlq_topic, key=key, value=value).add_errback(self.send_errors.append)

    def _late(self, partition: int, offset: int, row: tuple) -> None:
        self.stats.late += 1
        ev = Event(*row)
        reason = (f"late event: secs {ev.secs} arrived after event time {self.processed_secs} was processed "
                  f"(beyond --allowed-lateness-secs {self.cfg.allowed_lateness_secs})")  # fmt: skip
        value = dead_letter(source=f"{self.cfg.events_topic}[{partition}]@{offset}", reason=reason, raw=ev.to_json())
        self.producer.send(self.cfg.dlq_topic, value=value).add_errback(self.send_errors.append)

    def _refresh_end_offsets(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.end_offsets_at < 0.5:
            return
        self.end_offsets = self.source.end_offsets()
        self.end_offsets_at = now

    def _caught_up_partitions(self, topic: str) -> set[int]:
        self._refresh_end_offsets()
        positions = self.source.positions()
        out = set()
        for (t, p), end in self.end_offsets.items():
            pos = positions.get((t, p))
            if t == topic and pos is not None and pos >= end:
                out.add(p)
        return out

    def _caught_up(self) -> bool:
        if not self.events:  # not assigned yet (a rejoin can wait for a dead member's session)
            return False
        self._refresh_end_offsets(force=True)
        done = self._caught_up_partitions(self.cfg.events_topic)
        return all(p in done and not len(buf) for p, buf in self.events.items())

    def _known_through(self, topic: str, buffers: dict[int, Buffer]) -> int:
        """The latest time up to which every partition of ``topic`` can hold no more records.

        A partition is known through the time before its last buffered record. When it is
        caught up with the broker, a producer may still be writing to it (its partitions are
        written a few milliseconds apart), so it is known through any time once the stream has
        paused for ``idle_grace_secs``, else up to ``allowed_lateness_secs`` of event time
        behind the other partitions.
        """
        if not buffers:
            return -1
        through = {p: (buf.last_time() - 1 if len(buf) else -1) for p, buf in buffers.items()}
        caught = self._caught_up_partitions(topic)
        quiet = time.monotonic() - self._last_data >= self.cfg.idle_grace_secs
        ahead = max((buf.last_time() for buf in buffers.values() if len(buf)), default=-1)
        for p in caught:
            if p in through:
                through[p] = FOREVER if quiet else max(through[p], ahead - self.cfg.allowed_lateness_secs - 1)
        return min(through.values())

    # ------------------------------------------------------------------ processing
    def _advance(self, final: bool) -> bool:
        """Process every complete second. True when it stopped because no complete second is
        left (it waits for data)."""
        cfg = self.cfg
        if not self.events:
            return True
        limit = FOREVER if final else self._known_through(cfg.events_topic, self.events)
        step = cfg.learn_every_secs
        if not final and self.next_boundary is not None and limit >= self.next_boundary:
            # a second at or after a learning boundary needs the labels that arrived before it
            labels_through = self._known_through(cfg.labels_topic, self.labels)
            limit = min(limit, (labels_through + 1) // step * step + step - 1)
        if cfg.max_events is not None:
            limit = self._max_events_limit(limit)
        taken = self._take_events(limit)
        if taken is None:
            return True
        parts, offsets, secs, rows = taken
        now = time.monotonic()
        if self.stats.first_event_at is None:
            self.stats.first_event_at = now
        i, n = 0, len(secs)
        while i < n:
            s = int(secs[i])
            if self.next_boundary is None:
                self.next_boundary = (s // step + 1) * step
                self.next_sweep = s + self.idle_drop_secs // 4
            if s >= self.next_boundary:
                boundary = s // step * step
                self._learn_until(boundary)
                self.next_boundary = boundary + step
                if s >= self.next_sweep:
                    self._drop_idle(s)
                    self.next_sweep = s + self.idle_drop_secs // 4
            j = int(np.searchsorted(secs, self.next_boundary, side="left"))
            self._ingest(parts[i:j], secs[i:j], rows[i:j])
            if self.n_queued + self.n_scored >= cfg.batch_size:
                self._flush_scores()
            i = j
        self.stats.last_event_at = time.monotonic()
        return False

    def _max_events_limit(self, limit: int) -> int:
        """Lower ``limit`` so that processing stops at the second that reaches --max-events."""
        left = self.cfg.max_events - self.stats.events
        times = sorted(t for buf in self.events.values() for t in buf.times[buf.head : buf.head + buf.count_through(limit)])
        return min(limit, times[left - 1]) if 0 < left <= len(times) else limit

    def _take_events(self, limit: int) -> tuple[np.ndarray, list[int], np.ndarray, list[tuple]] | None:
        """Take every buffered event with ``secs <= limit``, merged in ``secs`` order (stable:
        partition order within a second); dead-letter late ones."""
        parts, offsets, secs, rows = [], [], [], []
        for p in sorted(self.events):
            buf = self.events[p]
            n = buf.count_through(limit)
            if not n:
                continue
            o, t, r = buf.take(n)
            self.next_event_offset[p] = buf.next_offset(o)
            parts.extend([p] * n)
            offsets.extend(o)
            secs.extend(t)
            rows.extend(r)
        if not secs:
            return None
        secs_arr = np.array(secs, dtype=np.int64)
        late = secs_arr <= self.processed_secs
        if late.any():  # their second is closed: featuretools' answer has changed
            for i in np.flatnonzero(late).tolist():
                self._late(parts[i], offsets[i], rows[i])
            keep = ~late
            parts = [p for p, k in zip(parts, keep, strict=True) if k]
            offsets = [o for o, k in zip(offsets, keep, strict=True) if k]
            rows = [r for r, k in zip(rows, keep, strict=True) if k]
            secs_arr = secs_arr[keep]
            if not len(secs_arr):
                return None
        order = np.argsort(secs_arr, kind="stable")
        if (order[1:] < order[:-1]).any():
            rows = [rows[i] for i in order.tolist()]
            parts = [parts[i] for i in order.tolist()]
            offsets = [offsets[i] for i in order.tolist()]
            secs_arr = secs_arr[order]
        return np.array(parts, dtype=np.int64), offsets, secs_arr, rows

    def _ingest(self, parts: np.ndarray, secs: np.ndarray, rows: list[tuple]) -> None:
        """Feed whole seconds of events to the engine and the ledger; queue their cutoffs."""
        t0 = time.perf_counter()
        ledger = self.ledger
        slots = ledger.slots(self._connection_ids(rows), parts.tolist())
        cuts = ledger.add_events(slots, secs, np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))
        self.engine.observe_rows(rows, int(secs[0]))
        self.stats.events += len(rows)
        if len(cuts):
            self.queued.append(cuts)
            self.n_queued += len(cuts)
        self.processed_secs = int(secs[-1])
        self.stats.feature_secs += time.perf_counter() - t0

    def _compute_features(self) -> None:
        """Features of the queued cutoffs (one engine call), the queued learning steps, and
        the cutoffs' online scores.

        Features depend on events only, so they are computed in large batches: when the
        batch is full, when no complete second is left, and at commit points. The queue is
        then replayed in order: each learning step updates the online model, and each block
        of cutoffs is scored with the model as it stood when they were queued, so batching
        changes no score.
        """
        if not self.queued:
            return
        t0 = time.perf_counter()
        blocks = [item for item in self.queued if isinstance(item, Cutoffs)]
        if blocks:
            cuts = _concat_cutoffs(blocks)
            features = self.engine.features_at(list(zip(cuts.conn, cuts.secs.tolist(), strict=True)))
            features = features.reset_index(drop=True)
            self.engine.advance(self.processed_secs)
            xs = features.reindex(columns=self.online_cols).to_numpy(dtype="float64", na_value=np.nan)
            self.ledger.set_inputs(cuts.seq, xs)
        t1 = time.perf_counter()
        scores = np.full(self.n_queued, np.nan)
        weights = np.zeros(self.n_queued)
        start = 0
        for item in self.queued:
            if isinstance(item, LearnTask):
                if item.missing.any():
                    item.x[item.missing] = xs[np.searchsorted(cuts.seq, item.seq[item.missing])]
                self._learn(item)
                continue
            end = start + len(item)
            snap = self.snapshot
            if snap is not None:
                scores[start:end] = snap.predict(xs[start:end])
                weights[start:end] = self.cfg.online_weight * min(
                    1.0, snap.n_positive / max(1, self.cfg.online_warmup_positives))
            start = end
        if blocks:
            self.scored.append(Scored(cuts, features, scores, weights))
            self.n_scored += len(cuts)
        self.queued = []
        self.n_queued = 0
        self.stats.feature_secs += t1 - t0
        self.stats.model_secs += time.perf_counter() - t1

    def _learn(self, task: LearnTask) -> None:
        self.online.learn_values(task.x, task.y)
        self.snapshot = self.online.snapshot()

    def _flush_scores(self) -> None:
        """Score everything computed with the batch model; publish the alerts, in order."""
        self._compute_features()
        if not self.scored:
            return
        t0 = time.perf_counter()
        cfg = self.cfg
        features = pd.concat([s.features for s in self.scored], ignore_index=True)
        cuts = _concat_cutoffs([s.cutoffs for s in self.scored])
        online = np.concatenate([s.online for s in self.scored])
        weight = np.concatenate([s.weight for s in self.scored])
        batch = np.asarray(self.batch.predict(features), dtype="float64")
        has_online = ~np.isnan(online)
        score = np.where(has_online, (1 - weight) * batch + weight * np.where(has_online, online, 0.0), batch)
        self.stats.model_secs += time.perf_counter() - t0
        now = time.time()
        alerted = score >= cfg.threshold
        look = alerted.copy()
        if self._recorder is not None:
            look |= (self.stats.cutoffs + np.arange(len(score))) % cfg.record_every == 0
        for i in np.flatnonzero(look).tolist():
            if self._recorder is not None:
                self._record(cuts.conn[i], int(cuts.secs[i]), features.iloc[i], float(score[i]))
            if alerted[i]:
                o = float(online[i]) if has_online[i] else None
                self._alert(cuts, i, features, float(batch[i]), o, float(weight[i]), float(score[i]), now)
        self.stats.cutoffs += len(score)
        self.scored.clear()
        self.n_scored = 0

    def _alert(self, cuts: Cutoffs, i: int, features: pd.DataFrame, batch_score: float, online_score: float | None,
               weight: float, score: float, now: float) -> None:  # fmt: skip
        cfg = self.cfg
        conn, secs = cuts.conn[i], int(cuts.secs[i])
        slot = self.ledger.index.get(conn)
        if slot is not None:
            last = int(self.ledger.c_last_alert[slot])
            if last != np.iinfo(np.int64).min and secs - last < cfg.cooldown_secs:
                self.stats.suppressed += 1
                return
            self.ledger.c_last_alert[slot] = secs
        row = features.iloc[i].to_dict()
        alert = build_alert(
            connection=conn, kind=cfg.kind, cutoff_secs=secs, log_id=int(cuts.log_id[i]), batch_score=batch_score,
            online_score=online_score, online_weight=weight, score=score, threshold=cfg.threshold,
            model_version=self.batch.version, events_in_window=_count(row.get(WINDOW_COUNT_FEATURE)),
            top_features=self.explainer.explain(row), detected_at=now,
        )  # fmt: skip
        fut = self.producer.send(cfg.alerts_topic, key=conn.encode(), value=json_bytes(alert))
        fut.add_errback(self.send_errors.append)
        self.stats.alerts += 1

    def _record(self, conn: str, secs: int, row: pd.Series, score: float) -> None:
        values = {k: json_value(v) for k, v in row.items()}
        self._recorder.write(json.dumps({"connection": conn, "cutoff_secs": int(secs), "score": float(score),
                                         "features": values}) + "\n")  # fmt: skip

    def _learn_until(self, boundary: int) -> None:
        """Apply labels that arrived before ``boundary``; learn from the cutoffs they resolve."""
        log_ids: list[int] = []
        malicious: list[bool] = []
        arrivals: list[int] = []
        for p, buf in self.labels.items():
            n = buf.count_through(boundary - 1)
            if not n:
                continue
            offsets, times, rows = buf.take(n)
            self.next_label_offset[p] = buf.next_offset(offsets)
            log_ids.extend(r[1] for r in rows)
            malicious.extend(r[3] == LABEL_MALICIOUS for r in rows)
            arrivals.extend(times)
        if not log_ids:
            return
        t0 = time.perf_counter()
        self.stats.labels += len(log_ids)
        ledger = self.ledger
        pos, y = ledger.resolve(ledger.apply_labels(log_ids, malicious, arrivals))
        if len(pos):
            if self.learn_log is not None:
                conns = [ledger.ids[s] for s in ledger.p_conn[pos].tolist()]
                for conn, secs, label, used in zip(conns, ledger.p_secs[pos].tolist(), y.tolist(),
                                                   ledger.label_arrivals(pos), strict=True):  # fmt: skip
                    self.learn_log.append((boundary, conn, secs, label, used))
            task = LearnTask(seq=ledger.p_seq[pos].copy(), y=y, x=ledger.p_x[pos].copy(),
                             missing=~ledger.p_has_x[pos])  # fmt: skip
            ledger.take(pos)
            self.stats.learned += len(pos)
            self.stats.learned_positive += int(y.sum())
            if self.queued:  # learnt once the cutoffs queued before it have features
                self.queued.append(task)
            else:
                self._learn(task)
        self.stats.model_secs += time.perf_counter() - t0

    def _drop_idle(self, now_secs: int) -> None:
        horizon = now_secs - self.idle_drop_secs
        idle = self.ledger.idle(horizon)
        self.ledger.drop_connections(idle)  # the engine drops its own idle windows in advance()
        if len(idle):
            log.debug("dropped %d idle connections", len(idle))
        self.ledger.compact(orphan_horizon=horizon)

    # ------------------------------------------------------------------ commit / checkpoint
    def _commit(self) -> None:
        if self.source is None or not self.events:
            return
        self._flush_scores()
        self.producer.flush()
        if self.send_errors:
            raise RuntimeError(f"{len(self.send_errors)} alert/dead-letter sends failed: {self.send_errors[0]!r}")
        if self._recorder is not None:
            self._recorder.flush()
        offsets = {"events": dict(self.next_event_offset), "labels": dict(self.next_label_offset)}
        self._save_checkpoint(offsets)
        commit = {}
        for topic, key in ((self.cfg.events_topic, "events"), (self.cfg.labels_topic, "labels")):
            for p, off in offsets[key].items():
                commit[(topic, p)] = off
        self.source.commit(commit)

    def _checkpoint_state(self, offsets: dict) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "group_id": self.cfg.group_id,
            "topics": [self.cfg.events_topic, self.cfg.labels_topic],
            "model_version": self.batch.version,
            "offsets": offsets,
            "processed_secs": self.processed_secs,
            "next_boundary": self.next_boundary,
            "next_sweep": self.next_sweep,
            "online": self.online.to_bytes(),
            "ledger": self.ledger,
        }

    def _save_checkpoint(self, offsets: dict) -> None:
        path = self.cfg.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(self._checkpoint_state(offsets), f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _load_checkpoint(self) -> dict | None:
        path = self.cfg.checkpoint_path
        if not path.exists():
            return None
        with open(path, "rb") as f:
            ckpt = pickle.load(f)
        if ckpt.get("version") != CHECKPOINT_VERSION or ckpt.get("topics") != [self.cfg.events_topic,
                                                                              self.cfg.labels_topic]:  # fmt: skip
            log.warning("ignoring checkpoint %s: written for other topics or by another version", path)
            return None
        if ckpt.get("model_version") != self.batch.version:
            log.warning("checkpoint %s was written with model %s, now %s: the online model starts afresh",
                        path, ckpt.get("model_version"), self.batch.version)  # fmt: skip
        else:
            self.online = OnlineModel.from_bytes(ckpt["online"])
            self.snapshot = self.online.snapshot()
        self.ledger = ckpt["ledger"]
        self.processed_secs = ckpt["processed_secs"]
        self.next_boundary = ckpt["next_boundary"]
        self.next_sweep = ckpt["next_sweep"]
        log.info("restored checkpoint %s: %d connections, online model learnt %d cutoffs, event time %d",
                 path, len(self.ledger), self.online.n_learned, self.processed_secs)  # fmt: skip
        return ckpt

    # ------------------------------------------------------------------ reporting
    def lag(self) -> int:
        if self.source is None:
            return 0
        self._refresh_end_offsets()
        total = 0
        for (topic, p), end in self.end_offsets.items():
            if topic == self.cfg.events_topic:
                total += max(0, end - self.next_event_offset.get(p, 0))
        return total

    def summary(self) -> str:
        """A readable end-of-run summary."""
        s = self.stats
        elapsed = max(1e-9, time.monotonic() - s.started)
        per_event = 1e6 / max(1, s.events)
        return "\n".join([
            "detector summary",
            f"  events processed   {s.events:,} in {elapsed:,.1f} s ({s.events / elapsed:,.0f} events/s; "
            f"{s.busy_rate:,.0f} events/s from the first event to the last)",
            f"  peak memory        {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB",
            f"  windows rebuilt    {s.rebuilt:,} events re-read from the log",
            f"  cutoffs scored     {s.cutoffs:,} ({s.cutoffs / elapsed:,.0f} cutoffs/s)",
            f"  alerts published   {s.alerts:,} ({s.suppressed:,} more suppressed by the cooldown)",
            f"  labels applied     {s.labels:,}; online model learnt {s.learned:,} cutoffs "
            f"({s.learned_positive:,} positive; {self.online.n_learned:,} in total with the checkpoint)",
            f"  malformed records  {s.malformed:,}, late events {s.late:,} (sent to {self.cfg.dlq_topic})",
            f"  consumer lag       {'unknown' if self.final_lag is None else f'{self.final_lag:,}'} events",
            f"  time per event     features {s.feature_secs * per_event:.1f} us, models {s.model_secs * per_event:.1f} us",
            f"  event time reached {_fmt_secs(self.processed_secs)}",
        ])

    def _log_progress(self, final: bool = False) -> None:
        s = self.stats
        elapsed = max(1e-9, time.monotonic() - s.started)
        per_event = 1e6 / max(1, s.events)
        line = (
            f"{'FINAL ' if final else ''}events {s.events:,} ({s.events / elapsed:,.0f}/s), "
            f"cutoffs {s.cutoffs:,} ({s.cutoffs / elapsed:,.0f}/s), alerts {s.alerts:,} "
            f"(+{s.suppressed:,} in cooldown), labels {s.labels:,}, learnt {s.learned:,} "
            f"({s.learned_positive:,} positive), malformed {s.malformed:,}, lag {self.lag():,}, "
            f"event time {_fmt_secs(self.processed_secs)}, per event: features "
            f"{s.feature_secs * per_event:.1f} us, models {s.model_secs * per_event:.1f} us"
        )
        log.info(line)


#: the DFS feature that counts a connection's events in the window (always generated by DFS).
WINDOW_COUNT_FEATURE = "COUNT(log)"


def _concat_cutoffs(blocks: list[Cutoffs]) -> Cutoffs:
    if len(blocks) == 1:
        return blocks[0]
    return Cutoffs(
        seq=np.concatenate([b.seq for b in blocks]), conn=[c for b in blocks for c in b.conn],
        slot=np.concatenate([b.slot for b in blocks]), secs=np.concatenate([b.secs for b in blocks]),
        k=np.concatenate([b.k for b in blocks]), log_id=np.concatenate([b.log_id for b in blocks]),
    )  # fmt: skip


def _count(value: Any) -> int:
    try:
        return 0 if value is None or pd.isna(value) else int(value)
    except (TypeError, ValueError):
        return 0


def _fmt_secs(secs: int) -> str:
    if secs < 0:
        return "-"
    d, rem = divmod(int(secs), 86_400)
    return f"day {d + 1} {rem // 3600:02d}:{rem % 3600 // 60:02d}:{rem % 60:02d}"


