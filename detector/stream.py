"""The streaming detector: consume events and labels, score every cutoff, publish alerts.

The loop (:meth:`StreamDetector.run`) ties five stages together, each in its own module:

* :mod:`detector.merger` — partition queues merged into one event time: a second is
  processed once every partition is known through it; late events are dead-lettered.
* :mod:`detector.ledger` — each connection's positions and pending cutoffs, its labels,
  and the learning steps (with :mod:`detector.connection_state` and :mod:`detector.idle`).
* :mod:`detector.scorer` — feature batches, the batch and online models, the combined score.
* :mod:`detector.alert_stage` — cooldown, building and publishing the alerts.
* :mod:`detector.checkpoint` — what a commit point saves, and the lock on it.

How the stream is cut into work (all of it deterministic, so a restarted detector
reproduces exactly the alerts of an uninterrupted one):

* **Seconds, in global event-time order.** All events of second ``s`` go into the feature
  engine together, and each connection that had events in ``s`` gets a cutoff at ``s``.
* **Learning in event-time steps**, at every multiple of ``learn_every_secs``, from labels
  that arrived before the step (their record timestamps), so scores between two steps use
  the same model state however the records were batched. A step is decided at its
  boundary and learnt right after the next feature batch; each cutoff is scored with the
  model of its own step, so batching changes no score.
* **Commit points** fall between seconds (:meth:`StreamDetector.commit`).
* **Restart.** Offsets come from the checkpoint (else the group's commits); each events
  partition's window is rebuilt from the log (:mod:`detector.rebuild`) without scoring.
* **Rebalance.** Before partitions are revoked everything processed is committed; every
  assignment then starts like a restart. A partition taken over from another member
  resumes at that member's commit, and seconds resume from the earlier of the two event
  times reached, so its events are not taken for late ones.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from cyberstream.kafka_io import dead_letter
from detector import checkpoint, progress
from detector.alert_stage import AlertStage
from detector.alerts import FeatureExplainer
from detector.config import DetectorConfig
from detector.ledger import LabelLedger, ModelStep
from detector.merger import EventTimeMerger
from detector.online import OnlineModel
from detector.progress import Stats
from detector.rdkafka_io import GroupSource, Partition, Sender, last_timestamp
from detector.rebuild import rebuild_window
from detector.scorer import Scorer

log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    """The broker did not acknowledge an alert or dead letter: nothing after it is committed."""


class StreamDetector:
    """One detector instance in a consumer group (see the module docstring)."""

    def __init__(self, cfg: DetectorConfig, batch_model: Any, engine_factory: Any, explainer: FeatureExplainer):
        self.cfg = cfg
        self.batch = batch_model
        self.stats = Stats()
        self.producer = Sender(cfg.bootstrap, client_id=f"{cfg.group_id}-alerts")
        self.merger = EventTimeMerger(
            cfg.events_topic, cfg.labels_topic, base_epoch=cfg.base_epoch, idle_grace_secs=cfg.idle_grace_secs,
            allowed_lateness_secs=cfg.allowed_lateness_secs, dead_letter=self._send_dead_letter, stats=self.stats,
        )  # fmt: skip
        self.ledger = LabelLedger(cfg.kind, cfg.label_spec, cfg.max_idle_connections, self.stats)
        self.scorer = Scorer(batch_model, engine_factory, online_weight=cfg.online_weight,
                             online_warmup_positives=cfg.online_warmup_positives, stats=self.stats)  # fmt: skip
        self.alerts = AlertStage(
            self.producer.send, cfg.alerts_topic, kind=cfg.kind, threshold=cfg.threshold,
            cooldown_secs=cfg.cooldown_secs, model_version=batch_model.version, explainer=explainer,
            stats=self.stats, record_features=cfg.record_features, record_every=cfg.record_every,
        )  # fmt: skip
        self.idle_drop_secs = max(cfg.idle_drop_secs or cfg.window_secs, cfg.window_secs)
        self.next_boundary: int | None = None  # the next learning step, in event time
        self.next_sweep: int | None = None  # the next sweep of idle connections
        self.stop_requested = False
        self.source: GroupSource | None = None
        self.final_lag: int | None = None
        #: (connection, cutoff_secs, log_id) of every scored cutoff, when a caller sets it to a list
        self.cutoff_log: list | None = None

    @property
    def processed_secs(self) -> int:
        """The last second of event time fully processed."""
        return self.merger.processed_secs

    @property
    def learn_log(self) -> list | None:
        """Every learnt cutoff when set to a list (see :attr:`detector.ledger.LabelLedger.learn_log`)."""
        return self.ledger.learn_log

    @learn_log.setter
    def learn_log(self, value: list | None) -> None:
        self.ledger.learn_log = value

    # ------------------------------------------------------------------ the loop
    def request_stop(self, *_: Any) -> None:
        self.stop_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self) -> Stats:
        """Poll, process every complete second, commit and report, until stopped or the stream ends."""
        cfg, merger, stats = self.cfg, self.merger, self.stats
        # Rebalance callbacks run inside poll(), on this thread: they reposition and rebuild.
        self.source = merger.source = GroupSource(
            cfg.bootstrap, cfg.group_id, [cfg.events_topic, cfg.labels_topic], client_id=f"{cfg.group_id}-consumer",
            on_assign=self._on_assigned, on_revoke=self._on_revoked,
        )  # fmt: skip
        last_commit = last_log = last_end_check = merger.last_data = time.monotonic()
        merger.wait_for_records = cfg.end_file is not None
        try:
            while not self.stop_requested:
                records = self.source.poll(timeout=0.2, max_records=cfg.poll_records)
                if records:
                    merger.enqueue(records)
                events_before = stats.events
                if self._advance(final=False):
                    # Every complete second is processed: score now rather than wait for a full
                    # batch (latency). Scores do not depend on when this happens.
                    self._flush_scores()
                if stats.events != events_before:  # (a system call: not once per second processed)
                    stats.last_event_cpu = time.process_time()
                now = time.monotonic()
                if now - last_commit >= cfg.checkpoint_every_secs:
                    self.commit()
                    last_commit = now
                if now - last_log >= cfg.log_every_secs:
                    self._log_progress()
                    last_log = now
                if cfg.max_events is not None and stats.events >= cfg.max_events:
                    log.info("reached --max-events %d", cfg.max_events)
                    break
                ended, held = None, False
                if cfg.idle_timeout is not None and now - merger.last_data >= cfg.idle_timeout:
                    ended = f"no new records for {cfg.idle_timeout:.0f} s"
                elif cfg.end_file is not None and now - last_end_check >= 0.2:
                    last_end_check = now
                    # Its last seconds wait in the queues for records that will not come.
                    ended, held = (f"{cfg.end_file} exists", True) if cfg.end_file.exists() else (None, False)
                if ended and merger.caught_up(held):
                    log.info("end of stream: %s", ended)
                    self._advance(final=True)
                    stats.last_event_cpu = time.process_time()
                    break
            self.commit()
        finally:
            try:
                self.final_lag = merger.lag()
            except Exception:  # the broker may be gone; the summary says "unknown"
                self.final_lag = None
            self.source.close()
            self.producer.flush()
            self.alerts.close()
        self._log_progress(final=True)
        return stats

    def _advance(self, final: bool, time_slice: float = 0.5) -> bool:
        """Process every second that is complete; return after ``time_slice`` wall seconds
        (between two seconds) so the loop can commit and report. True when it stopped
        because no complete second is left (it waits for data)."""
        cfg, merger = self.cfg, self.merger
        deadline = time.monotonic() + time_slice
        horizon = merger.horizon()  # queues only shrink from the front in here
        while not self.stop_requested or final:
            if not final and time.monotonic() > deadline:
                return False
            s = merger.earliest()
            if s is None:
                return True
            if not final and s > horizon and not merger.complete_through(s):
                return True
            if self.next_boundary is None:
                self.next_boundary = (s // cfg.learn_every_secs + 1) * cfg.learn_every_secs
                self.next_sweep = s + self.idle_drop_secs // 4
            if s >= self.next_boundary:
                boundary = (s // cfg.learn_every_secs) * cfg.learn_every_secs
                if not final and not merger.labels_complete_before(boundary):
                    return True
                self.ledger.learn_until(boundary, merger.take_labels(boundary))
                self.next_boundary = boundary + cfg.learn_every_secs
                if s >= self.next_sweep:
                    self._drop_idle(s)
                    self.next_sweep = s + self.idle_drop_secs // 4
            self._process_second(s)
            if self.scorer.waiting >= cfg.batch_size:
                self._flush_scores()
            if cfg.max_events is not None and self.stats.events >= cfg.max_events:
                return False
        return False

    def _process_second(self, s: int) -> None:
        """Feed the events of second ``s`` to the engine; queue the cutoffs it closes."""
        stats = self.stats
        t0 = time.perf_counter()
        taken = self.merger.take_second(s)
        events = [ev for _, evs in taken for ev in evs]
        self.scorer.observe(events)
        stats.events += len(events)
        now = time.time()
        if stats.first_event_at is None:
            stats.first_event_at, stats.first_event_cpu = now, time.process_time()
        stats.last_event_at = now
        self.scorer.queue(self.ledger.observe(taken, s))
        stats.feature_secs += time.perf_counter() - t0

    def _flush_scores(self) -> None:
        """Score everything queued with both models; publish the alerts, in order."""
        self.scorer.compute_features(self.merger.processed_secs, self.ledger.take_unlearnt())
        scored = self.scorer.score()
        if scored is None:
            return
        if self.cutoff_log is not None:
            self.cutoff_log.extend(scored.rows)
        self.alerts.publish(scored, self.ledger.conns)

    def _drop_idle(self, now_secs: int) -> None:
        """Forget connections idle for ``idle_drop_secs`` but their counts (:mod:`detector.idle`)."""
        idle = self.ledger.idle_before(now_secs - self.idle_drop_secs)
        if idle:
            # Their queued cutoffs are scored first, while their state (the cooldown) is here:
            # whether an alert is published must not depend on where a feature batch ended.
            self._flush_scores()
            self.ledger.drop(idle)  # the engine drops its own idle windows in advance()
        self.ledger.prune()

    def _send_dead_letter(self, source: str, reason: str, raw: bytes | None, key: bytes | None) -> None:
        self.producer.send(self.cfg.dlq_topic, dead_letter(source=source, reason=reason, raw=raw), key=key)

    # ------------------------------------------------------------------ commit points and rebalancing
    def commit(self) -> None:
        """A commit point, in this order: every processed second scored and its alerts and
        dead letters acknowledged by the broker; then the checkpoint written; then the same
        offsets committed to the group (a crash in between redoes work, never loses it)."""
        if self.source is None or not self.merger.event_q:
            return
        self._flush_scores()
        self.producer.flush()
        if self.producer.errors:
            errors = self.producer.errors
            raise DeliveryFailed(f"{len(errors)} alert/dead-letter sends failed ({errors[0]}); nothing after the "
                                 "last commit is committed: a restart publishes them again")  # fmt: skip
        self.alerts.flush()
        offsets = self.merger.offsets()
        checkpoint.save(self.cfg.checkpoint_path, self._checkpoint(offsets))
        topic_of = {"events": self.cfg.events_topic, "labels": self.cfg.labels_topic}
        self.source.commit({(topic_of[key], p): off for key, parts in offsets.items() for p, off in parts.items()})

    def _checkpoint(self, offsets: dict) -> checkpoint.Checkpoint:
        cfg = self.cfg
        return checkpoint.Checkpoint(
            group_id=cfg.group_id, topics=[cfg.events_topic, cfg.labels_topic], model_version=self.batch.version,
            offsets=offsets, processed_secs=self.merger.processed_secs, next_boundary=self.next_boundary,
            next_sweep=self.next_sweep, online=self.scorer.online.to_bytes(), conns=self.ledger.conns,
            idle=self.ledger.idle.counts,
        )  # fmt: skip

    def _restore(self, ckpt: checkpoint.Checkpoint) -> None:
        if ckpt.model_version != self.batch.version:
            log.warning("checkpoint %s was written with model %s, now %s: the online model starts afresh",
                        self.cfg.checkpoint_path, ckpt.model_version, self.batch.version)  # fmt: skip
        else:
            self.scorer.online = OnlineModel.from_bytes(ckpt.online)
            self.ledger.step = ModelStep(snapshot=self.scorer.online.snapshot())
        self.ledger.conns = ckpt.conns
        self.ledger.idle.counts = ckpt.idle
        self.merger.processed_secs = ckpt.processed_secs
        self.next_boundary, self.next_sweep = ckpt.next_boundary, ckpt.next_sweep
        log.info("restored checkpoint %s: %d connections, online model learnt %d cutoffs, event time %d",
                 self.cfg.checkpoint_path, len(self.ledger.conns), self.scorer.online.n_learned,
                 self.merger.processed_secs)  # fmt: skip

    def _on_revoked(self, revoked: list[Partition]) -> None:
        """Hand the partitions over with everything processed so far committed (the alerts
        acknowledged, the checkpoint written); the assignment that follows starts afresh
        from the checkpoint and the log."""
        log.info("partitions revoked: %s", ", ".join(f"{t}[{p}]" for t, p in sorted(revoked)) or "none")
        try:
            self.commit()
        except Exception as exc:  # partitions lost to a session timeout: the next owner redoes the work
            log.warning("could not commit before the partitions were revoked (%s): uncommitted work is redone", exc)

    def _on_assigned(self, assigned: list[Partition]) -> dict[Partition, int | None]:
        """Restore what the checkpoint holds for the new assignment, rebuild every window,
        and return the offset each partition resumes at (None: the log start)."""
        cfg, merger = self.cfg, self.merger
        log.info("partitions assigned: %s", ", ".join(f"{t}[{p}]" for t, p in sorted(assigned)) or "none")
        merger.reset()
        self.ledger.reset()
        self.scorer.reset()
        self.next_boundary = self.next_sweep = None
        ckpt = checkpoint.load(cfg.checkpoint_path, [cfg.events_topic, cfg.labels_topic])
        if ckpt is not None:
            self._restore(ckpt)
        client = f"{cfg.group_id}-rebuild"

        def last_secs(topic: str, p: int, end: int) -> int | None:
            last_ms = last_timestamp(cfg.bootstrap, topic, p, end, client)
            return None if last_ms is None else last_ms // 1000 - cfg.base_epoch

        starts = merger.assign(assigned, ckpt.offsets if ckpt else {}, self.source.committed, last_secs)
        self.ledger.keep_partitions(list(merger.event_q))  # only the connections of partitions owned now
        # Every partition's window is rebuilt into a fresh engine (cheap: one window of events).
        self.scorer.new_engine()
        for p in sorted(merger.event_q):
            end = merger.next_event_offset.get(p)
            if end:
                self.stats.rebuilt += rebuild_window(
                    self.scorer.engine, cfg.bootstrap, cfg.events_topic, p, end, processed_secs=merger.processed_secs,
                    window_secs=cfg.window_secs, base_epoch=cfg.base_epoch, client_id=client,
                )  # fmt: skip
        merger.last_data = time.monotonic()
        return starts

    # ------------------------------------------------------------------ reporting
    def summary(self) -> str:
        """A readable end-of-run summary."""
        return progress.summary(self.stats, active=len(self.ledger.conns), idle=len(self.ledger.idle),
                                learned_total=self.scorer.online.n_learned, dlq_topic=self.cfg.dlq_topic,
                                lag=self.final_lag, event_time=self.merger.processed_secs)  # fmt: skip

    def _log_progress(self, final: bool = False) -> None:
        log.info(progress.progress_line(self.stats, lag=self.merger.lag(), event_time=self.merger.processed_secs,
                                        final=final))  # fmt: skip
