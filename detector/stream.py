"""The streaming detector: consume events and labels, score every cutoff, publish alerts.

How the stream is cut into work (all of it deterministic, so a restarted detector
reproduces exactly the alerts of an uninterrupted one):

* **Seconds, in global event-time order.** Events are buffered per partition; second ``s``
  is processed once every assigned partition is known through ``s`` (it holds a later
  event, or it is caught up with the broker). All events of second ``s`` then go into the
  feature engine, and each connection that had events in ``s`` gets a cutoff at ``s``
  (the training issue's definition: one cutoff per connection per distinct ``secs``, at
  the last event of that second). Eligible cutoffs (at least N earlier events) are scored.
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
* **Rebalance.** Before partitions are revoked everything processed is committed; every
  assignment then starts like a restart. A partition taken over from another member
  resumes at that member's commit, and seconds resume from the earlier of the two event
  times reached, so its events are not taken for late ones.
* **Learning is deferred, not reordered.** A learning step is decided at its boundary and
  learnt right after the next feature batch; each cutoff is scored with the model of its
  own step (see :class:`ModelStep`), so batching changes no score.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pickle
import resource
import signal
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import groupby, islice
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from cyberstream.connections import connection_id_of
from cyberstream.kafka_io import dead_letter, json_bytes
from cyberstream.schema import SchemaError, decode_event, decode_label
from detector.alerts import FeatureExplainer, build_alert, json_value
from detector.online import OnlineModel
from detector.rdkafka_io import GroupSource, Partition, Sender, last_timestamp, read_partition
from training.labels import LabelSpec, resolve_window
from training.model import numeric_values

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1


class CheckpointInUse(RuntimeError):
    """Another running detector writes this checkpoint; the message says what to do."""


class DeliveryFailed(RuntimeError):
    """The broker did not acknowledge an alert or dead letter: nothing after it is committed."""


def lock_checkpoint(path: Path) -> IO:
    """Take the checkpoint's lock file (``<path>.lock``) for this process, or raise
    :class:`CheckpointInUse`: two detectors writing one checkpoint would overwrite each
    other's offsets and state. The lock goes when the returned file is closed or the
    process ends, however it ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_name(path.name + ".lock"), "a+")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise CheckpointInUse(f"checkpoint {path} is in use by another detector (pid {holder}); give each "
                              "member of a consumer group its own --checkpoint") from None  # fmt: skip
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


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
    #: a finite replay's end: once this file exists and every partition is read to its end, the
    #: detector processes what it holds and stops; until then a caught-up partition waits for its
    #: own next record (no idle grace: a stalled producer cannot make its records late)
    end_file: Path | None = None
    idle_drop_secs: int | None = None
    #: idle connections whose event counts are remembered (the oldest dropped are forgotten first)
    max_idle_connections: int = 1_000_000
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


@dataclass
class Pending:
    """A cutoff waiting for its label: position, time, the online model's inputs (filled in
    when its features are computed)."""

    k: int
    secs: int
    x: np.ndarray | None = None


@dataclass(eq=False)  # compared by identity: one per learning step
class ModelStep:
    """The online model as of one learning step.

    A step is decided when its boundary is reached (which cutoffs it learns from, with
    which labels), but learnt only once the features of those cutoffs are computed, in
    the next feature batch: learning never forces a small batch of its own. Every cutoff
    is queued with the step current at its time and scored with that step's snapshot.
    """

    pending: list[Pending] = field(default_factory=list)  # the cutoffs it learns from, in order
    labels: list[bool] = field(default_factory=list)
    snapshot: Any = None  # OnlineSnapshot once learnt (None: the model has learnt nothing yet)


@dataclass
class ConnState:
    """What the detector remembers of one connection besides its feature window."""

    partition: int
    n_seen: int = 0
    last_secs: int = -1
    base: int = 0  # position (event index in the connection) of recent[0]
    recent: deque = field(default_factory=deque)  # (log_id, secs) of positions base .. n_seen-1
    labels: dict = field(default_factory=dict)  # log_id -> (malicious, secs), arrived labels
    pending: deque = field(default_factory=deque)  # Pending cutoffs, oldest first
    last_alert_secs: int | None = None
    last_malicious_secs: int = -1  # secs of the latest event labelled malicious so far
    #: every position from ``base`` up to this one (excluded) has its label: the prefix grows
    #: as labels arrive, so a cutoff's window is seen to be complete without a look at each label
    labelled: int = 0

    def labelled_through(self) -> int:
        """Grow and return :attr:`labelled` (positions ``base`` .. ``labelled - 1`` all have
        their labels)."""
        i = max(self.labelled - self.base, 0)
        recent, labels = self.recent, self.labels
        n = len(recent)
        while i < n and recent[i][0] in labels:
            i += 1
        self.labelled = self.base + i
        return self.labelled

    def prune(self, spec: LabelSpec) -> None:
        """Forget positions and labels no pending or future cutoff can need."""
        keep_from = (self.pending[0].k if self.pending else self.n_seen) + spec.lead
        while self.recent and self.base < keep_from:
            self.recent.popleft()
            self.base += 1
        if self.labels:
            # Labels of events older than every remembered position are not needed (those
            # positions hold the newer events). Labels arrive in event-time order per
            # connection, so the stale ones are at the front; a straggler waits for later.
            oldest = self.recent[0][1] if self.recent else self.last_secs + 1
            stale = []
            for lid, (_, s, _) in self.labels.items():
                if s >= oldest:
                    break
                stale.append(lid)
            for lid in stale:
                del self.labels[lid]

    def window_labels(self, start: int, stop: int) -> list[bool | None]:
        """Labels (None: not arrived) of the remembered positions ``start`` .. ``stop - 1``
        (counted from ``base``)."""
        labels = self.labels
        return [labels[lid][0] if lid in labels else None for lid, _ in islice(self.recent, start, stop)]


class IdleConnections:
    """Connections dropped as idle, by partition and event count, so that a connection coming
    back goes on counting: its next events are cutoffs as in the batch labels, which count
    a connection's events over all its history. Its last alert is kept too (a cooldown may
    outlast the silence). At most ``capacity`` (about 200 bytes each); beyond it the longest
    idle are forgotten, and would count afresh if they came back."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        #: partition, event count, last alert's secs; in the order they went idle
        self.counts: dict[str, tuple[int, int, int | None]] = {}

    def __len__(self) -> int:
        return len(self.counts)

    def __contains__(self, conn: str) -> bool:
        return conn in self.counts

    def remember(self, conn: str, st: ConnState) -> int:
        """Keep ``st``'s count; return how many connections were forgotten to make room."""
        self.counts[conn] = (st.partition, st.n_seen, st.last_alert_secs)
        if len(self.counts) <= self.capacity:
            return 0
        del self.counts[next(iter(self.counts))]
        return 1

    def revive(self, conn: str, partition: int) -> ConnState:
        """The state of a connection with no state: an idle one's positions go on from its
        count (its window is empty by now); an unknown one starts at 0."""
        seen = self.counts.pop(conn, None)
        if seen is None:
            return ConnState(partition=partition)
        _, n, last_alert = seen
        return ConnState(partition=partition, n_seen=n, base=n, labelled=n, last_alert_secs=last_alert)

    def keep_partitions(self, partitions: list[int]) -> None:
        """Forget the connections of partitions this member does not own (after a rebalance)."""
        self.counts = {c: v for c, v in self.counts.items() if v[0] in partitions}


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
    forgotten: int = 0  # idle connections forgotten beyond max_idle_connections
    feature_secs: float = 0.0
    model_secs: float = 0.0
    started: float = field(default_factory=time.monotonic)
    first_event_at: float | None = None  # wall-clock time (time.time) the first event was processed
    last_event_at: float | None = None
    #: the process's CPU time (every thread: the consumer's and producer's too) at the first
    #: event and after the last batch of events
    first_event_cpu: float = 0.0
    last_event_cpu: float = 0.0

    @property
    def busy_rate(self) -> float:
        """Events/s from the first processed event to the last (no start-up, no idle tail)."""
        if self.first_event_at is None or self.last_event_at is None or self.last_event_at <= self.first_event_at:
            return 0.0
        return self.events / (self.last_event_at - self.first_event_at)

    @property
    def cpu_per_event(self) -> float:
        """CPU seconds (all threads) per event from the first processed event to the last:
        a measure of cost that other work on the machine does not blur."""
        return (self.last_event_cpu - self.first_event_cpu) / max(1, self.events)


class StreamDetector:
    """One detector instance in a consumer group (see the module docstring)."""

    def __init__(self, cfg: DetectorConfig, batch_model: Any, engine_factory: Any, explainer: FeatureExplainer):
        self.cfg = cfg
        self.batch = batch_model
        self.engine_factory = engine_factory
        self.engine = engine_factory()
        self.explainer = explainer
        self.online_cols = list(batch_model.online_feature_names)
        self.idle_drop_secs = max(cfg.idle_drop_secs or cfg.window_secs, cfg.window_secs)
        self.end_offsets: dict[tuple[str, int], int] = {}
        self.end_offsets_at = 0.0
        self._reset_stream_state()
        self._connection_id = connection_id_of(cfg.kind)
        self.stats = Stats()
        self.stop_requested = False
        self.producer = Sender(cfg.bootstrap, client_id=f"{cfg.group_id}-alerts")
        self.source: GroupSource | None = None
        self.final_lag: int | None = None
        #: (boundary, connection, cutoff_secs, label, label arrivals) of every learnt cutoff, when a
        #: caller sets it to a list (tests check that no label is used before it arrived).
        self.learn_log: list | None = None
        #: (connection, cutoff_secs, log_id) of every scored cutoff, when a caller sets it to a list
        self.cutoff_log: list | None = None
        self._recorder = open(cfg.record_features, "a") if cfg.record_features else None

    def _reset_stream_state(self) -> None:
        """Forget everything learnt from the stream: the state of a detector that owns no
        partition yet (an assignment restores it from the checkpoint and the log)."""
        self.online = OnlineModel(self.online_cols)
        self.conns: dict[str, ConnState] = {}
        self.idle = IdleConnections(self.cfg.max_idle_connections)
        self.event_q: dict[int, deque] = {}
        self.label_q: dict[int, deque] = {}
        self.next_event_offset: dict[int, int] = {}
        self.next_label_offset: dict[int, int] = {}
        # partition -> offset after a dead-lettered record that sits behind unprocessed ones
        self.skipped_events: dict[int, int] = {}
        self.skipped_labels: dict[int, int] = {}
        self.processed_secs = -1  # last second fully processed
        self.next_boundary: int | None = None
        self.next_sweep: int | None = None
        #: cutoffs awaiting features: (conn, secs, log_id, Pending, the online model of their step)
        self.queued: list[tuple] = []
        #: (cutoffs, features, online scores, online weights, numeric features) awaiting the batch model
        self.scored: list[tuple] = []
        self.n_scored = 0
        #: the online model as of the current learning step; steps decided but not yet learnt
        self.step = ModelStep(snapshot=None)
        self.unlearnt: list[ModelStep] = []

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self, *_: Any) -> None:
        self.stop_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> Stats:
        cfg = self.cfg
        # Rebalance callbacks run inside poll(), on this thread: they reposition and rebuild.
        self.source = GroupSource(
            cfg.bootstrap, cfg.group_id, [cfg.events_topic, cfg.labels_topic], client_id=f"{cfg.group_id}-consumer",
            on_assign=self._on_assigned, on_revoke=self._on_revoked,
        )  # fmt: skip
        last_commit = last_log = last_end_check = time.monotonic()
        self._last_data = time.monotonic()
        try:
            while not self.stop_requested:
                records = self.source.poll(timeout=0.2, max_records=cfg.poll_records)
                if records:
                    self._last_data = time.monotonic()
                    self._enqueue(records)
                events_before = self.stats.events
                if self._advance(final=False):
                    # Every complete second is processed: score now rather than wait for a full
                    # batch (latency). Scores do not depend on when this happens.
                    self._flush_scores()
                if self.stats.events != events_before:  # (a system call: not once per second processed)
                    self.stats.last_event_cpu = time.process_time()
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
                ended, held = None, False
                if cfg.idle_timeout is not None and now - self._last_data >= cfg.idle_timeout:
                    ended = f"no new records for {cfg.idle_timeout:.0f} s"
                elif cfg.end_file is not None and now - last_end_check >= 0.2:
                    last_end_check = now
                    # Its last seconds wait in the queues for records that will not come.
                    ended, held = (f"{cfg.end_file} exists", True) if cfg.end_file.exists() else (None, False)
                if ended and self._caught_up(held):
                    log.info("end of stream: %s", ended)
                    self._advance(final=True)
                    self.stats.last_event_cpu = time.process_time()
                    break
            self._commit()
        finally:
            try:
                self.final_lag = self.lag()
            except Exception:  # the broker may be gone; the summary says "unknown"
                self.final_lag = None
            self.source.close()
            self.producer.flush()
            if self._recorder is not None:
                self._recorder.close()
        self._log_progress(final=True)
        return self.stats

    # ------------------------------------------------------------------ rebalancing
    def _on_revoked(self, revoked: list[Partition]) -> None:
        """Hand the partitions over with everything processed so far committed (the alerts
        acknowledged, the checkpoint written); the assignment that follows starts afresh
        from the checkpoint and the log."""
        log.info("partitions revoked: %s", ", ".join(f"{t}[{p}]" for t, p in sorted(revoked)) or "none")
        try:
            self._commit()
        except Exception as exc:  # partitions lost to a session timeout: the next owner redoes the work
            log.warning("could not commit before the partitions were revoked (%s): uncommitted work is redone", exc)

    def _on_assigned(self, assigned: list[Partition]) -> dict[Partition, int | None]:
        """Restore what the checkpoint holds for the new assignment, rebuild every window,
        and return the offset each partition resumes at (None: the log start)."""
        cfg = self.cfg
        log.info("partitions assigned: %s", ", ".join(f"{t}[{p}]" for t, p in sorted(assigned)) or "none")
        self._reset_stream_state()
        parts = sorted({p for topic, p in assigned if topic == cfg.events_topic})
        label_parts = sorted({p for topic, p in assigned if topic == cfg.labels_topic})
        if parts != label_parts:
            log.warning("events partitions %s and labels partitions %s differ: are the topics co-partitioned?",
                        parts, label_parts)  # fmt: skip
        ckpt = self._load_checkpoint()
        if ckpt is not None:  # keep only the connections of partitions this member now owns
            self.conns = {c: st for c, st in self.conns.items() if st.partition in parts}
            self.idle.keep_partitions(parts)
        for p in parts:
            self.event_q.setdefault(p, deque())
            self.label_q.setdefault(p, deque())
        for p in label_parts:
            self.label_q.setdefault(p, deque())
        saved = (ckpt or {}).get("offsets", {})
        key_of = {cfg.events_topic: "events", cfg.labels_topic: "labels"}  # the checkpoint's names
        missing = [(topic, p) for topic, p in assigned if saved.get(key_of[topic], {}).get(p) is None]
        committed = self.source.committed(missing) if missing else {}
        starts: dict[Partition, int | None] = {}
        for topic, p in assigned:
            key = key_of[topic]
            start = saved.get(key, {}).get(p)
            if start is None:
                start = committed.get((topic, p))
            starts[(topic, p)] = start
            if start is not None:
                (self.next_event_offset if key == "events" else self.next_label_offset)[p] = start
            if start and key == "events" and p not in saved.get("events", {}) and self.processed_secs >= 0:
                # Taken over from another member, who reached another event time: resume the
                # seconds from the earlier of the two, so its events are not taken for late ones.
                last_ms = last_timestamp(cfg.bootstrap, topic, p, start, f"{cfg.group_id}-rebuild")
                if last_ms is not None:
                    self.processed_secs = min(self.processed_secs, last_ms // 1000 - cfg.base_epoch)
        # Every partition's window is rebuilt into a fresh engine (cheap: one window of events).
        self.engine = self.engine_factory()
        for p in sorted(self.event_q):
            end = self.next_event_offset.get(p)
            if end:
                self._rebuild(p, end)
        self._last_data = time.monotonic()
        return starts

    def _rebuild(self, partition: int, end_offset: int) -> None:
        """Re-read partition's events of the window before ``end_offset`` into the engine."""
        cfg = self.cfg
        t0 = time.monotonic()
        client = f"{cfg.group_id}-rebuild"
        if self.processed_secs >= 0:
            from_secs = self.processed_secs - cfg.window_secs + 1
        else:
            last_ms = last_timestamp(cfg.bootstrap, cfg.events_topic, partition, end_offset, client)
            from_secs = (last_ms // 1000 - cfg.base_epoch) - cfg.window_secs + 1 if last_ms is not None else 0
        n = 0
        start = None
        # History features count every event so far: replay the partition from its start, the
        # events before the window into the history state only.
        history = getattr(self.engine, "needs_history", False)
        from_ms = 0 if history else (cfg.base_epoch + max(0, from_secs)) * 1000
        for offset, value in read_partition(cfg.bootstrap, cfg.events_topic, partition, from_ms, end_offset, client):
            start = offset if start is None else start
            try:
                ev = decode_event(value)
            except SchemaError:
                continue
            if history and ev.secs < from_secs:
                self.engine.observe_history(ev)
            else:
                self.engine.observe(ev)
            n += 1
        self.stats.rebuilt += n
        if start is not None:
            log.info("partition %d: rebuilt the window from %d events (offsets %d..%d) in %.2f s", partition, n,
                     start, end_offset - 1, time.monotonic() - t0)  # fmt: skip

    # ------------------------------------------------------------------ input
    def _enqueue(self, records: dict[Partition, list]) -> None:
        cfg = self.cfg
        for (topic, p), recs in records.items():
            if topic == cfg.events_topic:
                q = self.event_q.setdefault(p, deque())
                for m in recs:
                    try:
                        q.append((m.offset(), decode_event(m.value())))
                    except SchemaError as exc:
                        self._dead_letter(topic, p, m.offset(), m.value(), m.key(), exc.reason)
                        self._skip(self.next_event_offset, self.skipped_events, q, p, m.offset())
            else:
                q = self.label_q.setdefault(p, deque())
                base_epoch = cfg.base_epoch
                for m in recs:
                    try:
                        lab = decode_label(m.value())
                    except SchemaError as exc:
                        self._dead_letter(topic, p, m.offset(), m.value(), m.key(), exc.reason)
                        self._skip(self.next_label_offset, self.skipped_labels, q, p, m.offset())
                        continue
                    # Arrival in event time: the record timestamp the producer stamped.
                    q.append((m.offset(), lab, m.timestamp()[1] // 1000 - base_epoch))

    @staticmethod
    def _skip(next_offset: dict[int, int], skipped: dict[int, int], q: deque, partition: int, offset: int) -> None:
        """A dead-lettered record counts as processed once every record queued before it is."""
        if q:
            skipped[partition] = offset + 1
        else:
            next_offset[partition] = offset + 1

    @staticmethod
    def _drained(next_offset: dict[int, int], skipped: dict[int, int], partition: int) -> None:
        if partition in skipped:
            next_offset[partition] = max(next_offset.get(partition, 0), skipped.pop(partition))

    def _late(self, partition: int, offset: int, ev) -> None:
        self.stats.late += 1
        reason = (f"late event: secs {ev.secs} arrived after event time {self.processed_secs} was processed "
                  f"(beyond --allowed-lateness-secs {self.cfg.allowed_lateness_secs})")  # fmt: skip
        self._send_dead_letter(f"{self.cfg.events_topic}[{partition}]@{offset}", reason, ev.to_json())

    def _dead_letter(self, topic: str, partition: int, offset: int, raw: bytes | None, key: bytes | None,
                     reason: str) -> None:  # fmt: skip
        self.stats.malformed += 1
        self._send_dead_letter(f"{topic}[{partition}]@{offset}", reason, raw, key)

    def _send_dead_letter(self, source: str, reason: str, raw: bytes, key: bytes | None = None) -> None:
        value = dead_letter(source=source, reason=reason, raw=raw)
        self.producer.send(self.cfg.dlq_topic, value, key=key)

    def _refresh_end_offsets(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.end_offsets_at < 0.5:
            return
        self.end_offsets = self.source.end_offsets()
        self.end_offsets_at = now

    def _partition_caught_up(self, topic: str, p: int) -> bool:
        end = self.end_offsets.get((topic, p))
        fetched = self.source.fetched.get((topic, p))
        return end is not None and fetched is not None and fetched >= end

    def _caught_up(self, held: bool = False) -> bool:
        """Every assigned partition is read to its end offset, and every events partition
        processed (unless ``held``: events may remain queued, as a finite replay's last
        seconds are). Labels may wait in their queue for their arrival time."""
        if not self.event_q:  # not assigned yet (a rejoin can wait for a dead member's session)
            return False
        self._refresh_end_offsets(force=True)
        return all(self._partition_caught_up(self.cfg.events_topic, p) and (held or not self.event_q[p])
                   for p in self.event_q) and all(
            self._partition_caught_up(self.cfg.labels_topic, p) for p in self.label_q)  # fmt: skip

    def _known_through(self, topic: str, q: deque, p: int, secs: int, key) -> bool:
        """Whether partition ``p`` can hold no more records up to event time ``secs``.

        True when it has a later record. When it is caught up with the broker, a producer may
        still be writing to it (its partitions are written a few milliseconds apart), so it
        also needs the stream to have paused for ``idle_grace_secs`` (not with an ``end_file``:
        a replay ends with that file), or the other partitions to be more than
        ``allowed_lateness_secs`` of event time ahead.
        """
        if q and key(q[-1]) > secs:
            return True
        self._refresh_end_offsets()
        if not self._partition_caught_up(topic, p):
            return False
        if self.cfg.end_file is None and time.monotonic() - self._last_data >= self.cfg.idle_grace_secs:
            return True
        queues = self.event_q if topic == self.cfg.events_topic else self.label_q
        ahead = max((key(other[-1]) for other in queues.values() if other), default=-1)
        return ahead > secs + self.cfg.allowed_lateness_secs

    # ------------------------------------------------------------------ processing
    def _advance(self, final: bool, time_slice: float = 0.5) -> bool:
        """Process every second that is complete; return after ``time_slice`` wall seconds
        (between two seconds) so the loop can commit and report. True when it stopped
        because no complete second is left (it waits for data)."""
        cfg = self.cfg
        deadline = time.monotonic() + time_slice
        # Every partition holds a record later than `horizon`, so every second up to it is
        # complete without asking the broker (queues only shrink from the front in here).
        queues = list(self.event_q.values())
        horizon = min(q[-1][1].secs for q in queues) - 1 if queues and all(queues) else -1
        while not self.stop_requested or final:
            if not final and time.monotonic() > deadline:
                return False
            heads = [q[0] for q in queues if q]
            if not heads:
                return True
            s = min(item[1].secs for item in heads)
            if not final and s > horizon:
                for p, q in self.event_q.items():
                    if not self._known_through(cfg.events_topic, q, p, s, self._event_secs):
                        return True
            if self.next_boundary is None:
                self.next_boundary = (s // cfg.learn_every_secs + 1) * cfg.learn_every_secs
                self.next_sweep = s + self.idle_drop_secs // 4
            if s >= self.next_boundary:
                boundary = (s // cfg.learn_every_secs) * cfg.learn_every_secs
                if not final and not self._labels_known_before(boundary):
                    return True
                self._learn_until(boundary)
                self.next_boundary = boundary + cfg.learn_every_secs
                if s >= self.next_sweep:
                    self._drop_idle(s)
                    self.next_sweep = s + self.idle_drop_secs // 4
            self._process_second(s)
            if len(self.queued) + self.n_scored >= cfg.batch_size:
                self._flush_scores()
            if cfg.max_events is not None and self.stats.events >= cfg.max_events:
                return False
        return False

    @staticmethod
    def _event_secs(item) -> int:
        return item[1].secs

    @staticmethod
    def _label_arrival(item) -> int:
        return item[2]

    def _labels_known_before(self, boundary: int) -> bool:
        for p, q in self.label_q.items():
            if not self._known_through(self.cfg.labels_topic, q, p, boundary - 1, self._label_arrival):
                return False
        return True

    def _process_second(self, s: int) -> None:
        """Feed the events of second ``s`` to the engine; queue the cutoffs it closes."""
        cfg = self.cfg
        touched: dict[str, ConnState] = {}
        last_log: dict[str, int] = {}
        t0 = time.perf_counter()
        conns, connection_id, closed = self.conns, self._connection_id, self.processed_secs
        events: list = []
        for p, q in self.event_q.items():
            offset = None
            while q and q[0][1].secs <= s:
                offset, ev = q.popleft()
                if ev.secs <= closed:  # its second is closed: featuretools' answer has changed
                    self._late(p, offset, ev)
                    continue
                conn = connection_id(ev)
                st = conns.get(conn)
                if st is None:
                    st = conns[conn] = self.idle.revive(conn, p)
                st.recent.append((ev.log_id, ev.secs))
                st.n_seen += 1
                st.last_secs = ev.secs
                touched[conn] = st
                if ev.log_id > last_log.get(conn, -1):
                    last_log[conn] = ev.log_id
                events.append(ev)
            if offset is not None:
                self.next_event_offset[p] = offset + 1
            if not q:
                self._drained(self.next_event_offset, self.skipped_events, p)
        self.engine.observe_many(events)
        self.stats.events += len(events)
        now = time.time()
        if self.stats.first_event_at is None:
            self.stats.first_event_at, self.stats.first_event_cpu = now, time.process_time()
        self.stats.last_event_at = now
        for c in sorted(touched):
            st = touched[c]
            k = st.n_seen - 1
            if k >= cfg.label_spec.min_events:
                pend = Pending(k, s)
                st.pending.append(pend)
                self.queued.append((c, s, last_log[c], pend, self.step))
        self.stats.feature_secs += time.perf_counter() - t0
        # A second before the last one processed held only late events (dead-lettered above):
        # event time does not go back, or the next events of that partition would pass as on time.
        self.processed_secs = max(self.processed_secs, s)

    def _compute_features(self) -> None:
        """Features of the queued cutoffs (one engine call), the learning steps decided
        since the last batch, and the cutoffs' online scores.

        Features depend on events only, so they are computed in large batches: when the
        batch is full, when no complete second is left, and at commit points. Each cutoff's
        online score uses the model of its own learning step (the step queued with it),
        so batching changes no score.
        """
        if not self.queued:
            self._learn_steps()
            return
        t0 = time.perf_counter()
        features = self.engine.features_at([row[:2] for row in self.queued])
        features = features.reset_index(drop=True)
        self.engine.advance(self.processed_secs)
        t1 = time.perf_counter()
        xs = numeric_values(features, self.online_cols)  # both models' numeric inputs, converted once
        for row, x in zip(self.queued, xs, strict=True):
            row[3].x = x  # the cutoff's Pending: the online model learns from it later
        self._learn_steps()
        scores = np.full(len(self.queued), np.nan)
        weights = np.zeros(len(self.queued))
        start = 0
        for step, run in groupby(self.queued, key=itemgetter(4)):  # runs of cutoffs with the same model
            end = start + sum(1 for _ in run)
            snap = step.snapshot
            if snap is not None:
                scores[start:end] = snap.predict(xs[start:end])
                weights[start:end] = self.cfg.online_weight * min(
                    1.0, snap.n_positive / max(1, self.cfg.online_warmup_positives))
            start = end
        self.scored.append(([row[:3] for row in self.queued], features, scores, weights, xs))
        self.n_scored += len(self.queued)
        self.queued.clear()
        self.stats.feature_secs += t1 - t0
        self.stats.model_secs += time.perf_counter() - t1

    def _flush_scores(self) -> None:
        """Score everything computed with the batch model; publish the alerts, in order."""
        self._compute_features()
        if not self.scored:
            return
        t0 = time.perf_counter()
        cfg = self.cfg
        blocks, frames, online, weight, numeric = zip(*self.scored, strict=True)
        features = pd.concat(frames, ignore_index=True)
        batch = np.asarray(self.batch.predict(features, np.concatenate(numeric)), dtype="float64")
        self.stats.model_secs += time.perf_counter() - t0
        rows = [row for block in blocks for row in block]
        if self.cutoff_log is not None:
            self.cutoff_log.extend(rows)
        online = np.concatenate(online)
        weight = np.concatenate(weight)  # 0 where there is no online score
        has_online = ~np.isnan(online)
        score = np.where(has_online, (1 - weight) * batch + weight * online, batch)
        alerted = score >= cfg.threshold
        look = alerted  # only alerted and recorded cutoffs need a look of their own
        if self._recorder is not None:
            look = alerted | ((self.stats.cutoffs + np.arange(len(score))) % cfg.record_every == 0)
        now = time.time()
        for i in np.flatnonzero(look).tolist():
            conn, secs, log_id = rows[i]
            if self._recorder is not None:
                self._record(conn, secs, features.iloc[i], float(score[i]))
            if alerted[i]:
                o = float(online[i]) if has_online[i] else None
                self._alert(conn, secs, log_id, features, i, batch[i], o, float(weight[i]), float(score[i]), now)
        self.stats.cutoffs += len(score)
        self.scored.clear()
        self.n_scored = 0

    def _alert(self, conn: str, secs: int, log_id: int, features: pd.DataFrame, i: int, batch_score: float,
               online_score: float | None, weight: float, score: float, now: float) -> None:
        """Publish an alert for cutoff ``i`` unless its connection is in its cooldown."""
        cfg = self.cfg
        st = self.conns.get(conn)
        last = st.last_alert_secs if st is not None else None
        if last is not None and secs - last < cfg.cooldown_secs:
            self.stats.suppressed += 1
            return
        if st is not None:
            st.last_alert_secs = secs
        row = features.iloc[i].to_dict()
        alert = build_alert(
            connection=conn, kind=cfg.kind, cutoff_secs=secs, log_id=log_id, batch_score=batch_score,
            online_score=online_score, online_weight=weight, score=score, threshold=cfg.threshold,
            model_version=self.batch.version, events_in_window=_count(row.get(WINDOW_COUNT_FEATURE)),
            top_features=self.explainer.explain(row), detected_at=now,
        )  # fmt: skip
        self.producer.send(cfg.alerts_topic, json_bytes(alert), key=conn.encode())
        self.stats.alerts += 1

    def _record(self, conn: str, secs: int, row: pd.Series, score: float) -> None:
        values = {k: json_value(v) for k, v in row.items()}
        self._recorder.write(json.dumps({"connection": conn, "cutoff_secs": int(secs), "score": float(score),
                                         "features": values}) + "\n")  # fmt: skip

    def _learn_until(self, boundary: int) -> None:
        """Apply labels that arrived before ``boundary``; learn from the cutoffs they resolve."""
        spec = self.cfg.label_spec
        conns = self.conns
        dirty: dict[str, ConnState] = {}
        applied = 0
        for p, q in self.label_q.items():
            offset = None
            while q and q[0][2] < boundary:
                offset, lab, arrival = q.popleft()
                conn = lab.connection
                st = dirty.get(conn) or conns.get(conn)
                if st is None:
                    # Every event before the boundary is processed by now, so this label's event
                    # was not processed here with its connection kept: the connection went idle
                    # (its cutoffs with it) or its events went to another member before a
                    # rebalance. It can settle no cutoff, and keeping it would keep the
                    # connection forever (one without events is never idle).
                    applied += 1
                    continue
                st.labels[lab.log_id] = (lab.malicious, lab.secs, arrival)
                if lab.malicious and lab.secs > st.last_malicious_secs:
                    st.last_malicious_secs = lab.secs
                dirty[conn] = st
                applied += 1
            if offset is not None:
                self.next_label_offset[p] = offset + 1
            if not q:
                self._drained(self.next_label_offset, self.skipped_labels, p)
        self.stats.labels += applied
        lead, width, horizon = spec.lead, spec.window, spec.horizon
        resolved, ys, order = [], [], []
        for conn in sorted(dirty):
            st = dirty[conn]
            if not st.pending:
                continue
            labels, recent = st.labels, st.recent
            labelled = st.labelled_through()
            settled = len(resolved)
            while st.pending:
                pend = st.pending[0]
                start = pend.k - st.base + lead
                if st.last_malicious_secs < pend.secs:
                    # No malicious label in its window (those events are at or after the cutoff):
                    # it resolves to False once the window is full and all its labels arrived
                    # (at once when the labelled prefix covers it; a gap before it is looked past).
                    if pend.k + horizon > st.n_seen or recent[start + width - 1][0] not in labels or (
                            pend.k + horizon > labelled
                            and not all(lid in labels for lid, _ in islice(recent, start, start + width))):  # fmt: skip
                        break
                    y = False
                else:
                    y = resolve_window(st.window_labels(start, start + width), spec)
                    if y is None:
                        break
                st.pending.popleft()
                order.append((pend.secs, conn))
                if self.learn_log is not None:
                    used = [labels[lid][2] for lid, _ in islice(recent, start, start + width) if lid in labels]
                    self.learn_log.append((boundary, conn, pend.secs, y, used))
                resolved.append(pend)
                ys.append(y)
            if len(resolved) > settled:  # else its oldest pending cutoff, and so what it keeps, is unchanged
                st.prune(spec)
        if resolved:
            idx = sorted(range(len(resolved)), key=order.__getitem__)
            self.step = ModelStep(pending=[resolved[i] for i in idx], labels=[ys[i] for i in idx])
            self.unlearnt.append(self.step)
            self.stats.learned += len(resolved)
            self.stats.learned_positive += sum(ys)

    def _learn_steps(self) -> None:
        """Learn the decided steps in order (their cutoffs' features are all computed by now:
        a step only learns from cutoffs queued before its boundary)."""
        for step in self.unlearnt:
            self.online.learn_values(np.array([pend.x for pend in step.pending]), np.array(step.labels, dtype=bool))
            step.snapshot = self.online.snapshot()
            step.pending = []  # the inputs are learnt: do not keep them alive
        self.unlearnt.clear()

    def _drop_idle(self, now_secs: int) -> None:
        """Move connections idle for ``idle_drop_secs`` to :attr:`idle`, which keeps their
        counts only: their pending cutoffs, whose label windows wait for events that may
        never come, go with them."""
        horizon = now_secs - self.idle_drop_secs
        idle = [c for c, st in self.conns.items() if st.last_secs < horizon and st.last_secs >= 0]
        if idle:
            # Their queued cutoffs are scored first, while their state (the cooldown) is here:
            # whether an alert is published must not depend on where a feature batch ended.
            self._flush_scores()
            for conn in idle:  # the engine drops its own idle windows in advance()
                self.stats.forgotten += self.idle.remember(conn, self.conns.pop(conn))
            log.debug("dropped %d idle connections (%d remembered)", len(idle), len(self.idle))
        for st in self.conns.values():
            st.prune(self.cfg.label_spec)

    # ------------------------------------------------------------------ commit / checkpoint
    def _commit(self) -> None:
        if self.source is None or not self.event_q:
            return
        self._flush_scores()
        self.producer.flush()
        if self.producer.errors:
            errors = self.producer.errors
            raise DeliveryFailed(f"{len(errors)} alert/dead-letter sends failed ({errors[0]}); nothing after the "
                                 "last commit is committed: a restart publishes them again")  # fmt: skip
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
            "conns": self.conns,
            "idle": self.idle.counts,
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
            self.step = ModelStep(snapshot=self.online.snapshot())
        self.conns = ckpt["conns"]
        self.idle.counts = ckpt.get("idle", {})  # absent from checkpoints written before it existed
        self.processed_secs = ckpt["processed_secs"]
        self.next_boundary = ckpt["next_boundary"]
        self.next_sweep = ckpt["next_sweep"]
        log.info("restored checkpoint %s: %d connections, online model learnt %d cutoffs, event time %d",
                 path, len(self.conns), self.online.n_learned, self.processed_secs)  # fmt: skip
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
            f"  connections        {len(self.conns):,} active, {len(self.idle):,} idle (their counts kept; "
            f"{s.forgotten:,} forgotten beyond --max-idle-connections)",
            f"  cutoffs scored     {s.cutoffs:,} ({s.cutoffs / elapsed:,.0f} cutoffs/s)",
            f"  alerts published   {s.alerts:,} ({s.suppressed:,} more suppressed by the cooldown)",
            f"  labels applied     {s.labels:,}; online model learnt {s.learned:,} cutoffs "
            f"({s.learned_positive:,} positive; {self.online.n_learned:,} in total with the checkpoint)",
            f"  malformed records  {s.malformed:,}, late events {s.late:,} (sent to {self.cfg.dlq_topic})",
            f"  consumer lag       {'unknown' if self.final_lag is None else f'{self.final_lag:,}'} events",
            f"  time per event     features {s.feature_secs * per_event:.1f} us, models {s.model_secs * per_event:.1f} us; "
            f"CPU {s.cpu_per_event * 1e6:.1f} us (all threads, first event to last)",
            f"  event time reached {_fmt_secs(self.processed_secs)}",
            f"  busy from          {s.first_event_at or 0:.3f} to {s.last_event_at or 0:.3f} (Unix time, first and last event)",
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


