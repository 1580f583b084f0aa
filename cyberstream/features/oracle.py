"""The featuretools path: the definition of every feature value, and the slow reference.

Features of connection ``c`` at cutoff ``t`` (window ``w``) are
``ft.calculate_feature_matrix(defs, build_entityset(<events with secs <= t>),
cutoff_time=[(c, t)], training_window="w seconds")``.

Under our EntitySet shape (log -> name_host_pairs -> connection) a connection's features
depend only on its own events: every name-host pair belongs to one connection and the
last-time indexes that decide which pairs are in the window are computed from the pair's
own rows. And only rows with ``t - w < secs <= t`` pass the training window (a pair or a
connection is kept iff its last-time index is in the window, i.e. iff it has such a row).
So the EntitySet for a cutoff only needs the window's events of the connections asked
(``tests/test_features_parity.py`` checks this against the EntitySet of all events).

Cutoffs are micro-batched in *rounds*: one EntitySet and one ``calculate_feature_matrix``
call per round, each connection at most once per round (its events after the cutoff must
not enter the EntitySet, they would move its pairs' last-time indexes into the future).
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections import deque
from collections.abc import Sequence

import featuretools as ft
import numpy as np
import pandas as pd

from cyberstream.config import DEFAULT_BASE_EPOCH
from cyberstream.connections import DEFAULT_CONNECTION, connection_fields, connection_id
from cyberstream.schema import ATTRIBUTE_FIELDS, EVENT_FIELDS, IDENTITY_FIELDS, Event

from .base import (
    DEFAULT_MAX_EVENTS_PER_CONNECTION,
    Cutoff,
    EngineSettings,
    EngineStats,
    frame,
    make_column,
    output_kind,
)
from .entityset import build_entityset, target_index, to_time

log = logging.getLogger(__name__)

_DUMMY = "\x00cyberstream-oracle-filler"


class OracleEngine(EngineSettings):
    """Feature engine that calls featuretools on the window's events (slow, exact)."""

    def __init__(
        self,
        feature_defs: Sequence[ft.FeatureBase],
        window_secs: int,
        *,
        kind: str = DEFAULT_CONNECTION,
        base_epoch: int = DEFAULT_BASE_EPOCH,
        max_events_per_connection: int | None = DEFAULT_MAX_EVENTS_PER_CONNECTION,
    ) -> None:
        super().__init__(feature_defs, window_secs, kind=kind, base_epoch=base_epoch,
                         max_events_per_connection=max_events_per_connection)
        self._conn_fields = connection_fields(kind)
        self._kinds = {n: output_kind(f) for f in self.defs for n in f.get_feature_names()}
        self._events: dict[str, deque[tuple]] = {}
        self._watermark: int | None = None
        self._observed = 0
        self._cutoffs = 0
        self._capped = 0
        self.featuretools_calls = 0

    # -- input -------------------------------------------------------------------------
    def observe(self, event: Event) -> None:
        self._check_late(event.secs)
        row = tuple(getattr(event, f) for f in EVENT_FIELDS)
        self._events.setdefault(connection_id(event, self.kind), deque()).append(row)
        self._observed += 1

    def observe_many(self, events: Sequence[Event]) -> None:
        for event in events:
            self.observe(event)

    def observe_frame(self, events: pd.DataFrame) -> None:
        if events.empty:
            return
        self._check_late(int(events["secs"].min()))
        cols = [events[f].to_numpy(dtype=object) for f in EVENT_FIELDS]
        conn_cols = [events[f].to_numpy(dtype=object) for f in self._conn_fields]
        for i, row in enumerate(zip(*cols, strict=True)):
            cid = " / ".join(c[i] for c in conn_cols)
            row = tuple(None if (isinstance(v, float) and v != v) else v for v in row)
            self._events.setdefault(cid, deque()).append(row)
        self._observed += len(events)

    def _check_late(self, secs: int) -> None:
        if self._watermark is not None and secs <= self._watermark:
            raise ValueError(f"late event: secs={secs} is not after the watermark {self._watermark}")

    # -- output ------------------------------------------------------------------------
    def features_at(self, cutoffs: Sequence[Cutoff]) -> pd.DataFrame:
        cutoffs = [(str(c), int(t)) for c, t in cutoffs]
        if self._watermark is not None:
            early = [t for _, t in cutoffs if t < self._watermark]
            if early:
                raise ValueError(f"cutoff {min(early)} is before the watermark {self._watermark}")
        values: dict[str, list] = {n: [None] * len(cutoffs) for n in self.names}
        categories: dict[str, set] = {n: set() for n, k in self._kinds.items() if k == "category"}
        for round_ in self._rounds(cutoffs):
            fm = self._calculate([cutoffs[i] for i in round_])
            for n in self.names:
                col = fm[n]
                if n in categories:
                    categories[n].update(col.cat.categories if hasattr(col, "cat") else col.dropna())
                vals = col.astype(object).to_numpy()
                for pos, i in enumerate(round_):
                    values[n][i] = vals[pos]
        self._cutoffs += len(cutoffs)
        cols = {
            n: make_column(
                np.array([None if pd.isna(v) else v for v in values[n]], dtype=object),
                self._kinds[n],
                sorted(categories[n]) if n in categories else None,
            )
            for n in self.names
        }
        return frame(cutoffs, self.kind, cols)

    @staticmethod
    def _rounds(cutoffs: list[Cutoff]) -> list[list[int]]:
        """Group cutoff positions so that each connection appears once per group."""
        rounds: list[list[int]] = []
        seen: list[set[str]] = []
        for i, (c, _) in enumerate(cutoffs):
            for r, s in zip(rounds, seen, strict=True):
                if c not in s:
                    r.append(i)
                    s.add(c)
                    break
            else:
                rounds.append([i])
                seen.append({c})
        return rounds

    def _window_rows(self, conn: str, t: int) -> list[tuple]:
        lo = t - self.window_secs
        return [r for r in self._events.get(conn, ()) if lo < r[1] <= t]

    def _calculate(self, cutoffs: list[Cutoff]) -> pd.DataFrame:
        rows: list[tuple] = []
        for c, t in cutoffs:
            rows.extend(self._window_rows(c, t))
        if not rows:
            # featuretools needs some data; a filler connection changes nothing for the others.
            t0 = max(t for _, t in cutoffs)
            rows = [(-1, t0, *([_DUMMY] * len(IDENTITY_FIELDS)), *([None] * len(ATTRIBUTE_FIELDS)))]
        events = pd.DataFrame(rows, columns=list(EVENT_FIELDS))
        self.featuretools_calls += 1
        return calculate_with_featuretools(
            self.defs, events, cutoffs, self.window_secs, kind=self.kind, base_epoch=self.base_epoch
        )

    def advance(self, watermark_secs: int) -> None:
        watermark_secs = int(watermark_secs)
        if self._watermark is not None and watermark_secs < self._watermark:
            raise ValueError(f"watermark cannot go back from {self._watermark} to {watermark_secs}")
        self._watermark = watermark_secs
        oldest = watermark_secs - self.window_secs
        for conn in list(self._events):
            q = self._events[conn]
            while q and q[0][1] <= oldest:
                q.popleft()
            if self.max_events is not None:
                while len(q) > self.max_events:
                    q.popleft()
                    self._capped += 1
            if not q:
                del self._events[conn]

    def stats(self) -> EngineStats:
        n = sum(len(q) for q in self._events.values())
        size = sum(sys.getsizeof(q) for q in self._events.values())
        size += n * (sys.getsizeof((0,) * len(EVENT_FIELDS)) + 8)
        return EngineStats(
            connections=len(self._events),
            pairs=len({r[2:6] for q in self._events.values() for r in q}),
            window_events=n,
            pending_events=0,
            events_observed=self._observed,
            cutoffs_computed=self._cutoffs,
            capped_events=self._capped,
            state_bytes=size,
        )


def calculate_with_featuretools(
    feature_defs: Sequence[ft.FeatureBase],
    events: pd.DataFrame,
    cutoffs: Sequence[Cutoff],
    window_secs: int,
    *,
    kind: str = DEFAULT_CONNECTION,
    base_epoch: int = DEFAULT_BASE_EPOCH,
) -> pd.DataFrame:
    """featuretools' features for ``cutoffs`` on the EntitySet of ``events``, verbatim.

    ``events`` must hold no event of an asked connection after its cutoff; each connection
    appears at most once in ``cutoffs``. Rows come back in ``cutoffs`` order.
    """
    ids = [c for c, _ in cutoffs]
    if len(set(ids)) != len(ids):
        raise ValueError("each connection may appear only once per featuretools call")
    es = build_entityset(events, kind, base_epoch)
    index = target_index(kind)
    cutoff_time = pd.DataFrame({index: ids, "time": [to_time(int(t), base_epoch) for _, t in cutoffs]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm = ft.calculate_feature_matrix(
            list(feature_defs),
            entityset=es,
            cutoff_time=cutoff_time,
            training_window=f"{int(window_secs)} seconds",
            verbose=False,
        )
    return fm.loc[ids]
