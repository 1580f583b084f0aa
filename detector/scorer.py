"""The scorer: feature batches, the batch and the online model, the combined score.

Cutoffs are queued as seconds are processed and featurised in large batches (when the
batch is full, when no complete second is left, at commit points, or when learning needs
them): features depend on events only. Each cutoff's online score uses the model of its
own learning step (the :class:`~detector.ledger.ModelStep` queued with it), and the steps
are learnt in order once their cutoffs' features are computed, so batching changes no
score. The combined score is ``(1 - w) * batch + w * online``, ``w`` growing from 0 to
``online_weight`` over the online model's first ``online_warmup_positives`` positives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd

from cyberstream.schema import Event
from detector.ledger import Cutoff, ModelStep
from detector.online import OnlineModel
from detector.progress import Stats
from training.model import numeric_values


@dataclass
class Scored:
    """Cutoffs scored by both models, in the order they were queued."""

    rows: list[tuple[str, int, int]]  # (connection, cutoff secs, log_id)
    features: pd.DataFrame  # one row per cutoff, featuretools' columns and dtypes
    batch: np.ndarray  # the batch model's P(malicious)
    online: np.ndarray  # the online model's, NaN where it has learnt nothing yet
    weight: np.ndarray  # the online score's weight (0 where there is none)
    score: np.ndarray  # the combined score


class Scorer:
    """Owns the feature engine and the online model; scores queued cutoffs with both models.

    ``batch_model`` needs ``predict(features, numeric)``, ``online_feature_names`` and
    ``version`` (:class:`detector.models.BatchModel`); ``engine_factory`` returns a fresh
    feature engine (:func:`cyberstream.features.make_engine`).
    """

    def __init__(self, batch_model: Any, engine_factory: Callable[[], Any], *, online_weight: float,
                 online_warmup_positives: int, stats: Stats):  # fmt: skip
        self.batch = batch_model
        self.engine_factory = engine_factory
        self.engine = engine_factory()
        self.online_cols = list(batch_model.online_feature_names)
        self.online_weight = online_weight
        self.online_warmup_positives = online_warmup_positives
        self.stats = stats
        self.reset()

    def reset(self) -> None:
        """A fresh online model and nothing queued (before an assignment)."""
        self.online = OnlineModel(self.online_cols)
        #: cutoffs awaiting features: (conn, secs, log_id, Pending, the online model of their step)
        self.queued: list[Cutoff] = []
        #: (cutoffs, features, online scores, online weights, numeric features) awaiting the batch model
        self.scored: list[tuple] = []
        self.n_scored = 0

    def new_engine(self) -> None:
        """An empty feature engine (an assignment rebuilds its windows from the log)."""
        self.engine = self.engine_factory()

    @property
    def waiting(self) -> int:
        """Cutoffs queued or featurised but not yet scored by the batch model."""
        return len(self.queued) + self.n_scored

    def observe(self, events: list[Event]) -> None:
        """Add a processed second's events to the feature windows."""
        self.engine.observe_many(events)

    def queue(self, cutoffs: list[Cutoff]) -> None:
        self.queued.extend(cutoffs)

    def compute_features(self, processed_secs: int, steps: list[ModelStep]) -> None:
        """Features of the queued cutoffs (one engine call), then learn ``steps`` (decided
        since the last batch), then the cutoffs' online scores."""
        if not self.queued:
            self._learn(steps)
            return
        t0 = time.perf_counter()
        features = self.engine.features_at([row[:2] for row in self.queued])
        features = features.reset_index(drop=True)
        self.engine.advance(processed_secs)
        t1 = time.perf_counter()
        xs = numeric_values(features, self.online_cols)  # both models' numeric inputs, converted once
        for row, x in zip(self.queued, xs, strict=True):
            row[3].x = x  # the cutoff's Pending: the online model learns from it later
        self._learn(steps)
        scores = np.full(len(self.queued), np.nan)
        weights = np.zeros(len(self.queued))
        start = 0
        for step, run in groupby(self.queued, key=itemgetter(4)):  # runs of cutoffs with the same model
            end = start + sum(1 for _ in run)
            snap = step.snapshot
            if snap is not None:
                scores[start:end] = snap.predict(xs[start:end])
                weights[start:end] = self.online_weight * min(
                    1.0, snap.n_positive / max(1, self.online_warmup_positives))
            start = end
        self.scored.append(([row[:3] for row in self.queued], features, scores, weights, xs))
        self.n_scored += len(self.queued)
        self.queued.clear()
        self.stats.feature_secs += t1 - t0
        self.stats.model_secs += time.perf_counter() - t1

    def _learn(self, steps: list[ModelStep]) -> None:
        """Learn the steps in order (their cutoffs' features are all computed by now: a step
        only learns from cutoffs queued before its boundary)."""
        for step in steps:
            self.online.learn_values(np.array([pend.x for pend in step.pending]), np.array(step.labels, dtype=bool))
            step.snapshot = self.online.snapshot()
            step.pending = []  # the inputs are learnt: do not keep them alive

    def score(self) -> Scored | None:
        """Score everything featurised with the batch model and combine (None: nothing to score)."""
        if not self.scored:
            return None
        t0 = time.perf_counter()
        blocks, frames, online, weight, numeric = zip(*self.scored, strict=True)
        features = pd.concat(frames, ignore_index=True)
        batch = np.asarray(self.batch.predict(features, np.concatenate(numeric)), dtype="float64")
        self.stats.model_secs += time.perf_counter() - t0
        rows = [row for block in blocks for row in block]
        online = np.concatenate(online)
        weight = np.concatenate(weight)  # 0 where there is no online score
        has_online = ~np.isnan(online)
        score = np.where(has_online, (1 - weight) * batch + weight * online, batch)
        self.scored.clear()
        self.n_scored = 0
        return Scored(rows, features, batch, online, weight, score)
