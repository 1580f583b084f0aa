"""History features: the hosts, users and edges a cutoff's event touches, over all time.

The window features (:mod:`.compiled`) see one connection's own events of the last day.
An intruder changes what lies outside that view: the source host suddenly used by many
accounts new to it, destinations a user never reached, edges never seen before. These
features describe the cutoff's own event (the connection's last event at or before the
cutoff) through the parents :data:`cyberstream.features.entityset.HISTORY_PARENTS` of the history
EntitySet (and the name-host pair), over EVERY event so far, with the "recent" primitives
of :mod:`.primitives` restricted to the last ``window_secs``.

Definition (the oracle, :func:`history_oracle_matrix`): ``ft.calculate_feature_matrix``
on ``build_entityset(<events with secs <= t>, history=True)``, target ``log``, instance
the connection's last event (highest ``log_id`` among its events with the highest
``secs <= t``), cutoff time ``t``, no training window.

Compiled forms (:class:`HistoryEngine`), one per feature:

* ``attr``: an attribute of the event itself (``auth_type`` ...);
* ``count`` / ``count_recent`` / ``time_since``: a parent's events ever, in the window,
  and the seconds since its first event (``users.COUNT(log)``,
  ``source_destinations.TIME_SINCE(first_log_time)``);
* ``num_unique`` / ``num_unique_recent`` / ``num_first_seen_recent``: on a host or user,
  how many distinct users / hosts it met ever, in the window, and for the first time in
  the window (``source_hosts.NUM_FIRST_SEEN_RECENT(log.user, time)``). These are counts
  of the edges (``user_sources`` ...) at one end, so they share the edges' state.

State lives in capped maps (``max_keys`` per map): past the cap, the entries seen least
recently and with no event in the window are forgotten first; a forgotten edge is new
again when it comes back. Forgotten entries are counted (:attr:`HistoryEngine.forgotten`).
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter

import featuretools as ft
import numpy as np
import pandas as pd
from featuretools.feature_base import AggregationFeature, DirectFeature, IdentityFeature, TransformFeature
from featuretools.primitives import Count, NumUnique, TimeSince

from cyberstream.config import DEFAULT_BASE_EPOCH
from cyberstream.connections import DEFAULT_CONNECTION, SEPARATOR, connection_fields, connection_id_of
from cyberstream.schema import ATTRIBUTE_FIELDS, EVENT_FIELDS, IDENTITY_FIELDS, Event

from .base import Cutoff, EngineStats, frame, make_column, output_kind
from .entityset import HISTORY_PARENTS, LOG, PAIRS, build_entityset, to_time
from .primitives import CountRecent, NumFirstSeenRecent, NumUniqueRecent

log = logging.getLogger(__name__)

#: default cap on the entries of each history map (pairs, edges, hosts, users, connections)
DEFAULT_MAX_KEYS = 2_000_000
#: parent dataframe -> the event fields of its key
PARENT_FIELDS: dict[str, tuple[str, ...]] = {PAIRS: IDENTITY_FIELDS, **{n: f for n, (_, f) in HISTORY_PARENTS.items()}}
#: log column of a history key -> the event field it copies (only the single-field ones)
KEY_FIELD: dict[str, str] = {index: fields[0] for index, fields in HISTORY_PARENTS.values() if len(fields) == 1}
_PARENT_OPS = {Count: "count", CountRecent: "count_recent"}
_EDGE_OPS = {NumUnique: "num_unique", NumUniqueRecent: "num_unique_recent", NumFirstSeenRecent: "num_first_seen_recent"}
# entry fields of a parent map and of an edge end's counters
_FIRST, _TOTAL, _RECENT, _LAST = range(4)
_DISTINCT, _DISTINCT_RECENT, _FIRST_RECENT = range(3)


class HistoryUnsupported(ValueError):
    """A history feature this engine does not compile (the message names it)."""


def is_history_feature(feature: ft.FeatureBase) -> bool:
    """History features describe the cutoff's event: their target dataframe is ``log``."""
    return feature.dataframe_name == LOG


@dataclass(frozen=True)
class HistorySpec:
    """One compiled history feature."""

    name: str
    op: str
    output: str
    parent: str | None = None  # dataframe whose entry is read
    column: str | None = None  # attr: the attribute; edge ops: the edge end's field
    edge: str | None = None  # edge ops: the edge dataframe (``user_sources`` ...)


def _edge_of(parent: str, column: str) -> str:
    """The history edge joining ``parent`` (a host or user) to the log column ``column``."""
    fields = set(PARENT_FIELDS[parent]) | {KEY_FIELD[column]}
    for name, (_, edge_fields) in HISTORY_PARENTS.items():
        if len(edge_fields) == 2 and set(edge_fields) == fields:
            return name
    raise HistoryUnsupported(f"no history edge joins {parent} and {column}")


def compile_history(feature: ft.FeatureBase) -> tuple[HistorySpec, int | None]:
    """The spec of one history feature and the window its recent primitive uses (or None)."""
    name, out = feature.get_name(), output_kind(feature)
    if isinstance(feature, IdentityFeature) and feature.column_name in ATTRIBUTE_FIELDS:
        return HistorySpec(name, "attr", out, column=feature.column_name), None
    if not isinstance(feature, DirectFeature) or len(feature.relationship_path) != 1:
        raise HistoryUnsupported(f"{name}: not a feature of one parent of the cutoff's event")
    base = feature.base_features[0]
    parent = base.dataframe_name
    if parent not in PARENT_FIELDS:
        raise HistoryUnsupported(f"{name}: parent {parent} is not a history parent")
    if isinstance(base, TransformFeature) and isinstance(base.primitive, TimeSince):
        inner = base.base_features[0]
        if isinstance(inner, IdentityFeature) and inner.column_name == inner.dataframe.ww.time_index:
            return HistorySpec(name, "time_since", out, parent=parent), None
        raise HistoryUnsupported(f"{name}: TIME_SINCE of something other than the first-seen time")
    if not isinstance(base, AggregationFeature) or base.where is not None or base.use_previous is not None:
        raise HistoryUnsupported(f"{name}: not a plain aggregation of the parent's events")
    prim = type(base.primitive)
    window = getattr(base.primitive, "window_secs", None)
    if prim in _PARENT_OPS:
        return HistorySpec(name, _PARENT_OPS[prim], out, parent=parent), window
    if prim in _EDGE_OPS:
        col = base.base_features[0]
        if not isinstance(col, IdentityFeature) or col.column_name not in KEY_FIELD:
            raise HistoryUnsupported(f"{name}: counts distinct values of a column that is not a host or user")
        if parent == PAIRS or len(PARENT_FIELDS[parent]) != 1:
            raise HistoryUnsupported(f"{name}: distinct counts are compiled on hosts and users only")
        return HistorySpec(name, _EDGE_OPS[prim], out, parent=parent, column=KEY_FIELD[col.column_name],
                           edge=_edge_of(parent, col.column_name)), window  # fmt: skip
    raise HistoryUnsupported(f"{name}: primitive {prim.__name__}")


class HistoryEngine:
    """History features of cutoffs, from capped maps updated per event (see the module doc).

    Follows the time contract of :mod:`.base`: events in ``secs`` order per connection;
    cutoffs in time order across calls; ``advance(w)`` once every event ``<= w`` is in.
    """

    def __init__(
        self,
        feature_defs: Sequence[ft.FeatureBase],
        window_secs: int,
        *,
        kind: str = DEFAULT_CONNECTION,
        base_epoch: int = DEFAULT_BASE_EPOCH,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.defs = list(feature_defs)
        self.kind = kind
        self.base_epoch = base_epoch
        self.max_keys = int(max_keys)
        self.specs: list[HistorySpec] = []
        windows = set()
        for f in self.defs:
            spec, window = compile_history(f)
            self.specs.append(spec)
            if window is not None:
                windows.add(int(window))
        if len(windows) > 1:
            raise HistoryUnsupported(f"history features use several recent windows {sorted(windows)}; one is compiled")
        self.window_secs = windows.pop() if windows else int(window_secs)
        self.names = [s.name for s in self.specs]
        edges = sorted({s.edge for s in self.specs if s.edge})
        #: every parent whose entries are kept: the ones read, and the edges the distinct counts use
        self.parents = sorted({s.parent for s in self.specs if s.parent and not s.edge} | set(edges))
        self._getters = [attrgetter(*PARENT_FIELDS[p]) for p in self.parents]
        self._maps: list[dict] = [{} for _ in self.parents]
        #: per kept parent: the (end field, counters map) of each edge end a feature reads
        self._ends: list[list[tuple[int, dict]]] = [[] for _ in self.parents]
        self._counters: dict[tuple[str, str], dict] = {}
        for s in self.specs:
            if s.edge and (s.edge, s.parent) not in self._counters:
                counters: dict = {}
                self._counters[(s.edge, s.parent)] = counters
                end = PARENT_FIELDS[s.edge].index(PARENT_FIELDS[s.parent][0])
                self._ends[self.parents.index(s.edge)].append((end, counters))
        #: (kept parent index, end position in its key, counters) of each edge end read, and its position
        self._end_sources: list[tuple[int, int, dict]] = []
        self._end_index: dict[tuple[str, str], int] = {}
        for (edge, parent), counters in self._counters.items():
            end = PARENT_FIELDS[edge].index(PARENT_FIELDS[parent][0])
            self._end_index[(edge, parent)] = len(self._end_sources)
            self._end_sources.append((self.parents.index(edge), end, counters))
        self._attr_index = {f: i for i, f in enumerate(ATTRIBUTE_FIELDS)}
        self._attrs = attrgetter(*ATTRIBUTE_FIELDS)
        self._conn = connection_id_of(kind)
        self._pending: list[Event] = []  # observed events; those before ``_done`` are applied
        self._done = 0
        self._unsorted = False
        self._window: deque[tuple[int, tuple]] = deque()  # (secs, keys) of applied events in the window
        self._first_seen: deque[tuple[int, dict, object]] = deque()  # (first secs, counters, end key)
        self._last: dict[str, tuple] = {}  # connection -> (secs, attrs, keys) of its last applied event
        self._applied_until: int | None = None
        self._asked_until: int | None = None
        self.forgotten = 0
        self.over_cap = 0
        self._observed = 0
        self._cutoffs = 0

    # -- input ----------------------------------------------------------------------------
    def observe(self, event: Event) -> None:
        self.observe_many((event,))

    def observe_many(self, events: Sequence[Event]) -> None:
        if not events:
            return
        self._check_late(min(e.secs for e in events))
        pending = self._pending
        last = pending[-1].secs if len(pending) > self._done else None
        for e in events:  # keep the pending list in time order (rarely needed: events come in order)
            if last is not None and e.secs < last:
                self._unsorted = True
            last = e.secs
        pending.extend(events)
        self._observed += len(events)

    def observe_frame(self, events: pd.DataFrame) -> None:
        if events.empty:
            return
        cols = [events[f].to_numpy(dtype=object) for f in EVENT_FIELDS]
        cols[1] = events["secs"].to_numpy(dtype=np.int64).tolist()
        for i in range(5, len(cols)):  # attributes: NaN -> None, as the schema parses "?"
            cols[i] = [None if (isinstance(v, float) and v != v) else v for v in cols[i]]
        self.observe_many([Event(*row) for row in zip(*cols, strict=True)])

    def _check_late(self, secs: int) -> None:
        if self._asked_until is not None and secs <= self._asked_until:
            raise ValueError(f"late event: secs={secs} is not after the last cutoff or watermark {self._asked_until}")

    # -- state ----------------------------------------------------------------------------
    def _apply(self, until: int) -> None:
        """Fold pending events with ``secs <= until`` into the maps, in time order."""
        pending, start = self._pending, self._done
        if start == len(pending) or pending[start].secs > until and not self._unsorted:
            return
        if self._unsorted:
            pending[start:] = sorted(pending[start:], key=attrgetter("secs"))
            self._unsorted = False
        n = start
        while n < len(pending) and pending[n].secs <= until:
            n += 1
        maps, getters, ends = self._maps, self._getters, self._ends
        window_append, first_append = self._window.append, self._first_seen.append
        evict_to = None
        for e in pending[start:n]:
            t = e.secs
            if evict_to is None or t - self.window_secs > evict_to:
                evict_to = t - self.window_secs
                self._evict(evict_to)
            keys = [get(e) for get in getters]
            for m, key, end_list in zip(maps, keys, ends, strict=True):
                entry = m.get(key)
                if entry is None:
                    entry = m[key] = [t, 0, 0, t]
                    for end, counters in end_list:
                        k = key[end]
                        c = counters.get(k)
                        if c is None:
                            c = counters[k] = [0, 0, 0]
                        c[_DISTINCT] += 1
                        c[_FIRST_RECENT] += 1
                        first_append((t, counters, k))
                if entry[_RECENT] == 0:
                    for end, counters in end_list:
                        counters[key[end]][_DISTINCT_RECENT] += 1
                entry[_TOTAL] += 1
                entry[_RECENT] += 1
                entry[_LAST] = t
            window_append((t, keys))
            self._last[self._conn(e)] = (t, self._attrs(e), keys)
        if n > 4096 and n * 2 > len(pending):  # forget applied events now and then, not at every call
            del pending[:n]
            n = 0
        self._done = n
        self._applied_until = until if self._applied_until is None else max(self._applied_until, until)

    def _evict(self, oldest: int) -> None:
        """Events and first sightings with ``secs <= oldest`` leave the recent window."""
        q, fs = self._window, self._first_seen
        while q and q[0][0] <= oldest:
            _, keys = q.popleft()
            for m, key, end_list in zip(self._maps, keys, self._ends, strict=True):
                entry = m[key]
                entry[_RECENT] -= 1
                if entry[_RECENT] == 0:
                    for end, counters in end_list:
                        counters[key[end]][_DISTINCT_RECENT] -= 1
        while fs and fs[0][0] <= oldest:
            _, counters, k = fs.popleft()
            counters[k][_FIRST_RECENT] -= 1

    def _move_to(self, t: int) -> None:
        self._apply(t)
        self._evict(t - self.window_secs)

    # -- output ---------------------------------------------------------------------------
    def features_at(self, cutoffs: Sequence[Cutoff]) -> pd.DataFrame:
        cutoffs = [(str(c), int(t)) for c, t in cutoffs]
        if cutoffs and self._asked_until is not None and min(t for _, t in cutoffs) < self._asked_until:
            raise ValueError(f"cutoff {min(t for _, t in cutoffs)} is before an earlier cutoff or watermark "
                             f"{self._asked_until}")  # fmt: skip
        n = len(cutoffs)
        # Each cutoff takes a copy of the few entries it reads (its parents' and its edge ends'
        # counters); the columns are then cut from those copies with numpy, not per value.
        attrs: list = [None] * n
        parents: list[list] = [[None] * n for _ in self.parents]
        ends: list[list] = [[None] * n for _ in self._end_sources]
        maps, sources = self._maps, self._end_sources
        order = sorted(range(n), key=lambda i: cutoffs[i][1])
        at = None
        for i in order:
            c, t = cutoffs[i]
            if t != at:
                self._move_to(t)
                at = t
            last = self._last.get(c)
            if last is None:
                raise KeyError(f"cutoff ({c!r}, {t}) for a connection with no event observed (or forgotten)")
            _, attrs[i], keys = last
            for p, m in enumerate(maps):
                parents[p][i] = m[keys[p]][:3]
            for j, (p, end, counters) in enumerate(sources):
                ends[j][i] = counters[keys[p][end]][:]
        if cutoffs:
            top = max(t for _, t in cutoffs)
            self._asked_until = top if self._asked_until is None else max(self._asked_until, top)
        self._cutoffs += n
        t_arr = np.fromiter((t for _, t in cutoffs), dtype=np.float64, count=n)
        parent_arr = [np.array(v, dtype=np.float64).reshape(n, 3) for v in parents]
        end_arr = [np.array(v, dtype=np.float64).reshape(n, 3) for v in ends]
        columns = {}
        for s in self.specs:
            if s.op == "attr":
                i = self._attr_index[s.column]
                values = np.array([a[i] for a in attrs], dtype=object)
                columns[s.name] = make_column(values, "category", sorted({v for v in values if v is not None}))
                continue
            if s.edge:
                block = end_arr[self._end_index[(s.edge, s.parent)]]
                col = block[:, {"num_unique": _DISTINCT, "num_unique_recent": _DISTINCT_RECENT}.get(s.op, _FIRST_RECENT)]
            else:
                block = parent_arr[self.parents.index(s.parent)]
                col = t_arr - block[:, _FIRST] if s.op == "time_since" else block[:, _TOTAL if s.op == "count" else _RECENT]
            columns[s.name] = make_column(np.ascontiguousarray(col), s.output)
        return frame(cutoffs, self.kind, columns)

    def advance(self, watermark_secs: int) -> None:
        w = int(watermark_secs)
        if self._asked_until is not None and w < self._asked_until:
            raise ValueError(f"watermark cannot go back from {self._asked_until} to {w}")
        self._move_to(w)
        self._asked_until = w
        self._forget()

    def _forget(self) -> None:
        """Keep each map within ``max_keys``: forget the least recently seen entries outside the window."""
        for p, (m, end_list) in enumerate(zip(self._maps, self._ends, strict=True)):
            excess = len(m) - self.max_keys
            if excess <= 0:
                continue
            idle = [(e[_LAST], k) for k, e in m.items() if e[_RECENT] == 0]
            if len(idle) < excess:
                self.over_cap += excess - len(idle)
                log.warning("history map %s holds %d entries active in the window, over its cap of %d",
                            self.parents[p], len(m) - len(idle), self.max_keys)  # fmt: skip
            idle.sort(key=lambda x: x[0])
            drop = idle[: max(excess + self.max_keys // 10, 0)] if len(idle) >= excess else idle
            for _, k in drop:
                del m[k]
                for end, counters in end_list:
                    c = counters[k[end]]
                    c[_DISTINCT] -= 1
                    if c[_DISTINCT] == 0:
                        del counters[k[end]]
            self.forgotten += len(drop)
        excess = len(self._last) - self.max_keys
        if excess > 0:
            oldest = sorted(self._last.items(), key=lambda kv: kv[1][0])[: excess + self.max_keys // 10]
            for k, _ in oldest:
                del self._last[k]
            self.forgotten += len(oldest)

    def stats(self) -> EngineStats:
        entries = sum(len(m) for m in self._maps)
        counters = sum(len(c) for c in self._counters.values())
        size = sum(sys.getsizeof(m) for m in self._maps) + entries * (sys.getsizeof([0, 0, 0, 0]) + 100)
        size += sum(sys.getsizeof(c) for c in self._counters.values()) + counters * (sys.getsizeof([0, 0, 0]) + 60)
        size += sys.getsizeof(self._last) + len(self._last) * 200 + len(self._window) * 120
        return EngineStats(
            connections=len(self._last),
            pairs=len(self._maps[self.parents.index(PAIRS)]) if PAIRS in self.parents else 0,
            window_events=len(self._window),
            pending_events=len(self._pending) - self._done,
            events_observed=self._observed,
            cutoffs_computed=self._cutoffs,
            capped_events=self.forgotten,
            state_bytes=size,
        )

    def map_sizes(self) -> dict[str, int]:
        """Entries per history map (for memory reports)."""
        out = {p: len(m) for p, m in zip(self.parents, self._maps, strict=True)}
        out.update({f"{e}<-{p}": len(c) for (e, p), c in self._counters.items()})
        out["connections"] = len(self._last)
        return out


# ------------------------------------------------------------------------------ the oracle


def last_events(events: pd.DataFrame, cutoffs: Sequence[Cutoff], kind: str = DEFAULT_CONNECTION) -> np.ndarray:
    """The ``log_id`` of each cutoff's event: its connection's last event with ``secs <= t``."""
    fields = connection_fields(kind)
    conn = events[fields[0]].astype(str)
    for f in fields[1:]:
        conn = conn + SEPARATOR + events[f].astype(str)
    ordered = pd.DataFrame({"c": conn.to_numpy(), "secs": events["secs"].to_numpy(np.int64),
                            "log_id": events["log_id"].to_numpy(np.int64)}).sort_values(["c", "secs", "log_id"])  # fmt: skip
    out = np.empty(len(cutoffs), dtype=np.int64)
    groups = {c: g for c, g in ordered.groupby("c", sort=False)}
    for i, (c, t) in enumerate(cutoffs):
        g = groups.get(c)
        pos = -1 if g is None else int(np.searchsorted(g["secs"].to_numpy(), t, side="right")) - 1
        if pos < 0:
            raise KeyError(f"cutoff ({c!r}, {t}) has no event of its connection at or before it")
        out[i] = int(g["log_id"].to_numpy()[pos])
    return out


def history_oracle_matrix(
    events: pd.DataFrame,
    cutoffs: Sequence[Cutoff],
    feature_defs: Sequence[ft.FeatureBase],
    *,
    kind: str = DEFAULT_CONNECTION,
    base_epoch: int = DEFAULT_BASE_EPOCH,
) -> pd.DataFrame:
    """featuretools' history features of ``cutoffs``: the definition (see the module doc).

    One EntitySet of the events with ``secs <= t`` and one ``calculate_feature_matrix``
    call per distinct cutoff time ``t``. Slow; for tests and the ``oracle`` engine.
    """
    cutoffs = [(str(c), int(t)) for c, t in cutoffs]
    ids = last_events(events, cutoffs, kind)
    names = [f.get_name() for f in feature_defs]
    values = np.empty((len(cutoffs), len(names)), dtype=object)
    by_time: dict[int, list[int]] = {}
    for i, (_, t) in enumerate(cutoffs):
        by_time.setdefault(t, []).append(i)
    for t, rows in sorted(by_time.items()):
        es = build_entityset(events[events["secs"] <= t], kind, base_epoch, history=True)
        instances = list(dict.fromkeys(int(ids[i]) for i in rows))
        ct = pd.DataFrame({"log_id": instances, "time": [to_time(t, base_epoch)] * len(instances)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fm = ft.calculate_feature_matrix(list(feature_defs), entityset=es, cutoff_time=ct, verbose=False)
        fm = fm[names].astype(object)
        for i in rows:
            values[i] = fm.loc[int(ids[i])].to_numpy()
    columns = {}
    for j, f in enumerate(feature_defs):
        col = [None if pd.isna(v) else v for v in values[:, j]]
        kind_ = output_kind(f)
        columns[names[j]] = make_column(np.array(col, dtype=object), kind_,
                                        sorted({v for v in col if v is not None}) if kind_ == "category" else None)
    return frame(cutoffs, kind, columns)


class HistoryOracleEngine:
    """:class:`HistoryEngine`'s interface over :func:`history_oracle_matrix` (keeps every event)."""

    def __init__(self, feature_defs: Sequence[ft.FeatureBase], window_secs: int, *, kind: str = DEFAULT_CONNECTION,
                 base_epoch: int = DEFAULT_BASE_EPOCH, **_ignored) -> None:  # fmt: skip
        self.defs = list(feature_defs)
        for f in self.defs:
            compile_history(f)  # the same features as the compiled engine, or a clear error
        self.names = [f.get_name() for f in self.defs]
        self.window_secs, self.kind, self.base_epoch = int(window_secs), kind, base_epoch
        self._rows: list[tuple] = []
        self._cutoffs = 0

    def observe(self, event: Event) -> None:
        self._rows.append(tuple(event))

    def observe_many(self, events: Sequence[Event]) -> None:
        self._rows.extend(tuple(e) for e in events)

    def observe_frame(self, events: pd.DataFrame) -> None:
        self._rows.extend(events[list(EVENT_FIELDS)].itertuples(index=False, name=None))

    def features_at(self, cutoffs: Sequence[Cutoff]) -> pd.DataFrame:
        events = pd.DataFrame(self._rows, columns=list(EVENT_FIELDS))
        self._cutoffs += len(cutoffs)
        return history_oracle_matrix(events, cutoffs, self.defs, kind=self.kind, base_epoch=self.base_epoch)

    def advance(self, watermark_secs: int) -> None:
        pass

    def stats(self) -> EngineStats:
        return EngineStats(0, 0, len(self._rows), 0, len(self._rows), self._cutoffs, 0, 0)

