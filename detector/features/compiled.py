"""The fast feature engine: saved DFS definitions compiled into incremental window state.

Events are grouped at two levels: the name-host *pair* and the *connection* (a set of
pairs; each pair belongs to one connection). For every group the engine keeps, *committed*
up to the watermark (see :mod:`.base` for the time contract):

* the count ``n`` and exact integer power sums of ``d = secs - ref`` (``d``, ``d**2``,
  ``d**3``), from which SUM/MEAN/STD/SKEW of ``secs`` follow exactly (:mod:`.numeric`);
* per attribute column (``auth_type`` ...), the window count of each value (NUM_UNIQUE,
  MODE);
* the group's window events as a chain through a time-ordered event store: the oldest is
  MIN(secs), the newest MAX(secs) (secs arrive in order, so the chain *is* the monotonic
  deque), and the chain says what leaves the window next.

``features_at`` answers a batch of cutoffs with numpy. Events observed since the watermark
(arrivals at ``secs``) and committed events leaving the window before the latest cutoff
(departures at ``secs + window``) become signed deltas sorted per group and time; the
state of a group at ``t`` is committed state plus its deltas up to ``t`` (rows with
``t - w < secs <= t``; a pair is present iff it has one, which is featuretools' rule with
last-time indexes).

* Connection-level log aggregations (``COUNT(log)``, ``STD(log.secs)``...) read the
  connection's state: O(1) per cutoff.
* Aggregations over the connection's pairs (``MEAN(name_host_pairs.SUM(log.secs))``...):
  pairs without a delta in the batch are summarised once per connection from their cached
  committed values; pairs with deltas are summarised per cutoff (their values after each
  delta are computed once per delta); the two summaries merge (counts and sums added,
  centred moments moved to pandas' centre, per-value counts added). Cost: the pairs of a
  connection once per batch, plus its changed pairs per cutoff.

``advance(watermark)`` folds arrivals and departures up to the watermark into committed
state, applies the per-connection cap and drops pairs and connections with nothing left
in the window. Features the plan cannot compile are computed by the featuretools engine
(:mod:`.oracle`) fed with the same events; a warning lists them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from itertools import chain
from operator import attrgetter

import featuretools as ft
import numpy as np
import pandas as pd

from cyberstream.config import DEFAULT_BASE_EPOCH
from cyberstream.connections import DEFAULT_CONNECTION, SEPARATOR, connection_fields
from cyberstream.schema import ATTRIBUTE_FIELDS, IDENTITY_FIELDS, Event
from training.entityset import PAIR_INDEX, target_index

from . import numeric as nm
from .base import (
    DEFAULT_MAX_EVENTS_PER_CONNECTION,
    Cutoff,
    EngineSettings,
    EngineStats,
    frame,
    make_column,
)
from .oracle import OracleEngine
from .plan import TARGET_COLUMN, TARGET_LOG, TARGET_PAIRS, LogSource, PairValue, Spec, compile_plan

log = logging.getLogger(__name__)

_A = len(ATTRIBUTE_FIELDS)
_IDENT = attrgetter(*IDENTITY_FIELDS)
_ATTRS = attrgetter(*ATTRIBUTE_FIELDS)
#: rebase ``ref`` once the watermark is this far past it (keeps |secs - ref| < 2**20)
_REBASE_AFTER = 1 << 18
_MAX_WINDOW = 1 << 19
_EMPTY = np.empty(0, dtype=np.int64)
_COUNT = PairValue("log_agg", primitive="count", source=LogSource("rows"))


class Vocab:
    """Codes for the values of one categorical column; ranks give the sorted order."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.index: dict[object, int] = {}
        self._sorted: tuple[int, np.ndarray, np.ndarray, pd.CategoricalDtype] | None = None

    def code(self, value: str) -> int:
        c = self.index.get(value)
        if c is None:
            c = self.index[value] = len(self.values)
            self.values.append(value)
        return c

    def _order(self) -> tuple[int, np.ndarray, np.ndarray, pd.CategoricalDtype]:
        """Sorted order, updated by inserting new values (vocabularies only grow)."""
        if self._sorted is None or self._sorted[0] != len(self.values):
            done = self._sorted[0] if self._sorted else 0
            old_by_rank = self._sorted[2] if self._sorted else np.empty(0, np.int64)
            old_sorted = self._sorted[3].categories.to_numpy(dtype=object) if self._sorted else np.empty(0, object)
            new = np.array(self.values[done:], dtype=object)
            order = np.argsort(new, kind="stable")
            new_sorted = new[order]
            at = np.searchsorted(old_sorted, new_sorted) if len(old_sorted) else np.zeros(len(new), np.int64)
            by_rank = np.insert(old_by_rank, at, done + order).astype(np.int64)
            rank = np.empty(len(by_rank), dtype=np.int64)
            rank[by_rank] = np.arange(len(by_rank))
            dtype = pd.CategoricalDtype(np.insert(old_sorted, at, new_sorted))
            self._sorted = (len(self.values), rank, by_rank, dtype)
        return self._sorted

    def rank(self) -> np.ndarray:
        """``rank[code]`` = position of the value in sorted order."""
        return self._order()[1]

    def by_rank(self) -> np.ndarray:
        """``by_rank[position in sorted order]`` = code."""
        return self._order()[2]

    def categorical(self, codes: np.ndarray) -> pd.Categorical:
        """Codes (-1 = missing) as a pandas Categorical with sorted categories."""
        _, rank, _, dtype = self._order()
        ranked = np.where(codes >= 0, rank[np.maximum(codes, 0)] if len(rank) else -1, -1)
        return pd.Categorical.from_codes(ranked, dtype=dtype, validate=False)


class _Grow:
    """Arrays indexed by a slot, grown by doubling."""

    def __init__(self, capacity: int, **specs: tuple[object, object]) -> None:
        self.capacity = capacity
        self._specs = specs
        for name, (dtype, fill) in specs.items():
            setattr(self, name, np.full(capacity, fill, dtype=dtype))

    def ensure(self, size: int) -> bool:
        if size <= self.capacity:
            return False
        cap = max(size, 2 * self.capacity)
        for name, (dtype, fill) in self._specs.items():
            old = getattr(self, name)
            new = np.full(cap, fill, dtype=dtype)
            new[: len(old)] = old
            setattr(self, name, new)
        self.capacity = cap
        return True

    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in self._specs)


def _grow_rows(mat: np.ndarray, rows: int, fill) -> np.ndarray:
    if mat.shape[0] >= rows:
        return mat
    new = np.full((rows, *mat.shape[1:]), fill, dtype=mat.dtype)
    new[: mat.shape[0]] = mat
    return new


class _Level:
    """Committed window state of one grouping of events (pairs or connections)."""

    def __init__(self, key: str, attrs: list[str]) -> None:
        self.key = key  # event column holding the group slot ("pair" / "conn")
        self.next = "next_" + key  # event column chaining the group's events in time order
        self.a = _Grow(
            1024,
            n=(np.int64, 0),
            s1=(np.int64, 0),
            s2=(object, 0),
            s3=(object, 0),
            head=(np.int64, -1),
            last=(np.int64, -1),
            last_secs=(np.int64, -1),
            pending=(np.int64, 0),
        )
        self.counts = {a: np.zeros((1024, 4), dtype=np.int64) for a in attrs}

    def ensure(self, size: int) -> None:
        if self.a.ensure(size):
            for attr, mat in self.counts.items():
                self.counts[attr] = _grow_rows(mat, self.a.capacity, 0)

    def widen(self, attr: str, width: int) -> np.ndarray:
        mat = self.counts[attr]
        if mat.shape[1] < width:
            new = np.zeros((mat.shape[0], max(width, 2 * mat.shape[1])), dtype=np.int64)
            new[:, : mat.shape[1]] = mat
            self.counts[attr] = mat = new
        return mat

    def reset(self, slot: int) -> None:
        a = self.a
        a.n[slot] = a.s1[slot] = 0
        a.s2[slot] = a.s3[slot] = 0
        a.head[slot] = a.last[slot] = a.last_secs[slot] = -1
        for mat in self.counts.values():
            mat[slot] = 0

    def nbytes(self) -> int:
        return self.a.nbytes() + sum(m.nbytes for m in self.counts.values())


class CompiledEngine(EngineSettings):
    """Streaming feature engine with featuretools' semantics (see module docstring)."""

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
                         max_events_per_connection=max_events_per_connection, max_window_secs=_MAX_WINDOW)
        window_secs = self.window_secs
        self.plan = compile_plan(self.defs, kind)
        self.fallback: OracleEngine | None = None
        if self.plan.fallback:
            log.warning(
                "%d feature(s) not compiled, computed by featuretools instead (slow): %s",
                len(self.plan.fallback),
                "; ".join(f"{n} ({r})" for n, r in self.plan.fallback_reasons.items()),
            )
            self.fallback = OracleEngine(
                self.plan.fallback,
                window_secs,
                kind=kind,
                base_epoch=base_epoch,
                max_events_per_connection=max_events_per_connection,
            )
        self._attrs = [a for a in ATTRIBUTE_FIELDS if a in self.plan.attributes]
        self._attr_pos = [ATTRIBUTE_FIELDS.index(a) for a in self._attrs]
        self._need_std = self.plan.needs("std")
        self._need_skew = self.plan.needs("skew")
        self._conn_pos = [IDENTITY_FIELDS.index(f) for f in connection_fields(kind)]
        self._index = target_index(kind)
        self.vocab: dict[str, Vocab] = {c: Vocab() for c in (*IDENTITY_FIELDS, *ATTRIBUTE_FIELDS)}
        self.vocab.setdefault(self._index, Vocab())
        # what the plan reads
        specs = self.plan.specs
        pair_values = [s.pair_value for s in specs if s.level == TARGET_PAIRS]
        self._num_streams = [_COUNT] + sorted(
            {pv for pv in pair_values if pv.kind == "log_agg" and pv.primitive != "mode"} - {_COUNT}, key=repr
        )
        self._cat_streams = sorted({pv for pv in pair_values if pv.kind == "log_agg" and pv.primitive == "mode"}, key=repr)
        self._pair_cols = sorted(
            {pv.column for pv in pair_values if pv.kind == "column"}
            | {s.source.column for s in specs if s.level == TARGET_LOG and s.source.kind == "pair_column"}
        )
        self._target_cols = sorted({s.column for s in specs if s.level == TARGET_COLUMN})
        for c in (*self._pair_cols, *self._target_cols):
            self.vocab.setdefault(c, Vocab())
        self._need_rows = bool(pair_values) or any(
            s.level == TARGET_LOG and s.source.kind == "pair_column" for s in specs
        )
        # -- pairs
        self._pair_index: dict[tuple, int] = {}
        self._pair_key: list[tuple | None] = []
        self._free_pairs: list[int] = []
        self.P = _Level("pair", self._attrs)
        self._p_conn = np.full(1024, -1, dtype=np.int64)
        self._p_cols = {c: np.full(1024, -1, dtype=np.int64) for c in self._pair_cols}
        self._p_local = {c: np.full(1024, -1, dtype=np.int64) for c in self._pair_cols}
        # committed per-pair values, (streams x pairs): column reductions are contiguous
        self._vnum = np.full((len(self._num_streams), 1024), np.nan)
        self._vnum[0] = 0
        self._vcat = np.full((len(self._cat_streams), 1024), -1, dtype=np.int64)
        # -- connections
        self._conn_index: dict[str, int] = {}
        self._conn_ids: list[str | None] = []
        self._conn_pairs: list[list[int] | None] = []
        self._conn_local: list[dict[str, dict[int, int]] | None] = []
        self._free_conns: list[int] = []
        self.C = _Level("conn", self._attrs)
        self._c_cols = {c: np.full(1024, -1, dtype=np.int64) for c in self._target_cols}
        self._c_nlocal = {c: np.zeros(1024, dtype=np.int64) for c in self._pair_cols}
        # -- event store: committed window events in time order; logical index = phys + base
        self.s = _Grow(
            4096,
            pair=(np.int64, -1),
            conn=(np.int64, -1),
            secs=(np.int64, 0),
            next_pair=(np.int64, -1),
            next_conn=(np.int64, -1),
            flag=(np.bool_, False),
        )
        self._s_codes = np.zeros((4096, _A), dtype=np.int32)
        self._base = 0
        self._size = 0
        self._evict_ptr = 0
        # -- pending (observed, not committed) events
        self._raw: list[Event] = []
        self._pd_pair = _EMPTY
        self._pd_conn = _EMPTY
        self._pd_secs = _EMPTY
        self._pd_codes = np.empty((0, _A), dtype=np.int32)
        self._sig_index: dict[tuple, tuple[int, ...]] = {}
        self._ref: int | None = None
        self._watermark: int | None = None
        self._observed = 0
        self._cutoffs = 0
        self._capped = 0

    # ================================================================== input
    def observe(self, event: Event) -> None:
        if self._watermark is not None and event.secs <= self._watermark:
            raise ValueError(f"late event: secs={event.secs} is not after the watermark {self._watermark}")
        self._raw.append(event)
        if self.fallback is not None:
            self.fallback.observe(event)

    def observe_frame(self, events: pd.DataFrame) -> None:
        if events.empty:
            return
        secs = events["secs"].to_numpy(dtype=np.int64)
        if self._watermark is not None and secs.min() <= self._watermark:
            raise ValueError(f"late event: secs={secs.min()} is not after the watermark {self._watermark}")
        self._materialize()
        # factorize each identity column and combine the codes (re-factorized so they stay small)
        key = np.zeros(len(events), dtype=np.int64)
        columns = []
        for f in IDENTITY_FIELDS:
            codes_f, uniq_f = pd.factorize(events[f].to_numpy(dtype=object))
            key = pd.factorize(key * len(uniq_f) + codes_f)[0]
            columns.append((codes_f, uniq_f))
        key_codes = key  # 0 .. K-1 in order of first appearance
        first = np.unique(key_codes, return_index=True)[1]
        uniques = list(zip(*(u[c[first]] for c, u in columns), strict=True))
        slots = self._pair_slots(uniques)
        codes = np.full((len(events), _A), -1, dtype=np.int32)
        for j, a in enumerate(ATTRIBUTE_FIELDS):
            col_codes, col_uniques = pd.factorize(events[a].to_numpy(dtype=object), use_na_sentinel=True)
            vocab = self.vocab[a]
            lut = np.fromiter((vocab.code(v) for v in col_uniques), dtype=np.int64, count=len(col_uniques))
            if len(lut):
                codes[:, j] = np.where(col_codes >= 0, lut[np.maximum(col_codes, 0)], -1)
        self._add_pending(slots[key_codes], secs, codes)
        if self.fallback is not None:
            self.fallback.observe_frame(events)

    def _materialize(self) -> None:
        """Turn events taken by :meth:`observe` into pending arrays."""
        raw = self._raw
        if not raw:
            return
        self._raw = []
        pairs = self._pair_slots(list(map(_IDENT, raw)))
        sig_index = self._sig_index
        sigs = list(map(_ATTRS, raw))
        codes = [sig_index.get(s) for s in sigs]
        for i, c in enumerate(codes):
            if c is None:
                codes[i] = self._signature(sigs[i])
        self._add_pending(
            pairs,
            np.fromiter((e.secs for e in raw), dtype=np.int64, count=len(raw)),
            np.array(codes, dtype=np.int32).reshape(len(raw), _A),
        )

    def _signature(self, values: tuple) -> tuple[int, ...]:
        codes = tuple(-1 if v is None else self.vocab[a].code(v) for a, v in zip(ATTRIBUTE_FIELDS, values, strict=True))
        self._sig_index[values] = codes
        return codes

    def _add_pending(self, pairs: np.ndarray, secs: np.ndarray, codes: np.ndarray) -> None:
        if self._ref is None:
            self._ref = int(secs.min())
        conns = self._p_conn[pairs]
        self._pd_pair = np.concatenate([self._pd_pair, pairs])
        self._pd_conn = np.concatenate([self._pd_conn, conns])
        self._pd_secs = np.concatenate([self._pd_secs, secs])
        self._pd_codes = np.concatenate([self._pd_codes, codes])
        np.add.at(self.P.a.pending, pairs, 1)
        np.add.at(self.C.a.pending, conns, 1)
        self._observed += len(pairs)

    def _pair_slots(self, keys: Sequence[tuple]) -> np.ndarray:
        """Slots of pairs (src_name, dest_name, src_host, dest_host), creating new ones in bulk."""
        index = self._pair_index
        slots = [index.get(k) for k in keys]
        new = [i for i, s in enumerate(slots) if s is None]
        if not new:
            return np.array(slots, dtype=np.int64)
        fresh: list[int] = []
        for i in new:
            key = keys[i]
            slot = index.get(key)  # the same new key may occur twice
            if slot is None:
                if self._free_pairs:
                    slot = self._free_pairs.pop()
                    self._pair_key[slot] = key
                else:
                    slot = len(self._pair_key)
                    self._pair_key.append(key)
                index[key] = slot
                fresh.append(slot)
            slots[i] = slot
        if len(self._pair_key) > len(self._p_conn):
            self._grow_pairs(len(self._pair_key))
        fresh_keys = [self._pair_key[s] for s in fresh]
        conn_ids = [SEPARATOR.join([k[i] for i in self._conn_pos]) for k in fresh_keys]
        conns = [self._conn_slot(c, k) for c, k in zip(conn_ids, fresh_keys, strict=True)]
        fresh_arr = np.array(fresh, dtype=np.int64)
        self._p_conn[fresh_arr] = conns
        members = self._conn_pairs
        for slot, conn in zip(fresh, conns, strict=True):
            members[conn].append(slot)
        for col in self._pair_cols:
            vocab, local_all = self.vocab[col], self._conn_local
            codes, bins = [], []
            for key, cid, conn in zip(fresh_keys, conn_ids, conns, strict=True):
                code = vocab.code(self._column_value(col, key, cid))
                local = local_all[conn][col]
                b = local.get(code)
                if b is None:
                    b = local[code] = len(local)
                codes.append(code)
                bins.append(b)
            self._p_cols[col][fresh_arr] = codes
            self._p_local[col][fresh_arr] = bins
            nloc = self._c_nlocal[col]
            np.maximum.at(nloc, np.array(conns, dtype=np.int64), np.array(bins, dtype=np.int64) + 1)
        return np.array(slots, dtype=np.int64)

    def _grow_pairs(self, size: int) -> None:
        self.P.ensure(size)
        cap = self.P.a.capacity
        self._p_conn = _grow_rows(self._p_conn, cap, -1)
        for col in self._pair_cols:
            self._p_cols[col] = _grow_rows(self._p_cols[col], cap, -1)
            self._p_local[col] = _grow_rows(self._p_local[col], cap, -1)
        old = self._vnum.shape[1]
        self._vnum = _grow_rows(self._vnum.T, cap, np.nan).T.copy()
        self._vnum[0, old:] = 0
        self._vcat = _grow_rows(self._vcat.T, cap, -1).T.copy()

    def _column_value(self, col: str, key: tuple, conn_id: str) -> str:
        if col in IDENTITY_FIELDS:
            return key[IDENTITY_FIELDS.index(col)]
        if col == PAIR_INDEX:
            return SEPARATOR.join(key)
        if col == self._index:
            return conn_id
        raise KeyError(col)

    def _conn_slot(self, conn_id: str, key: tuple) -> int:
        slot = self._conn_index.get(conn_id)
        if slot is not None:
            return slot
        local = {c: {} for c in self._pair_cols}
        if self._free_conns:
            slot = self._free_conns.pop()
            self._conn_ids[slot] = conn_id
            self._conn_pairs[slot] = []
            self._conn_local[slot] = local
        else:
            slot = len(self._conn_ids)
            self._conn_ids.append(conn_id)
            self._conn_pairs.append([])
            self._conn_local.append(local)
            if slot >= self.C.a.capacity:
                self.C.ensure(slot + 1)
                for col in self._target_cols:
                    self._c_cols[col] = _grow_rows(self._c_cols[col], self.C.a.capacity, -1)
                for col in self._pair_cols:
                    self._c_nlocal[col] = _grow_rows(self._c_nlocal[col], self.C.a.capacity, 0)
        self._conn_index[conn_id] = slot
        for col in self._pair_cols:
            self._c_nlocal[col][slot] = 0
        for col in self._target_cols:
            self._c_cols[col][slot] = self.vocab[col].code(self._column_value(col, key, conn_id))
        return slot

    def _level_codes(self, level: _Level, attr: str) -> np.ndarray:
        return level.widen(attr, len(self.vocab[attr].values))

    # ================================================================== output
    def features_at(self, cutoffs: Sequence[Cutoff]) -> pd.DataFrame:
        cutoffs = [(str(c), int(t)) for c, t in cutoffs]
        self._materialize()
        Q = len(cutoffs)
        q_conn = np.fromiter((self._conn_index.get(c, -1) for c, _ in cutoffs), dtype=np.int64, count=Q)
        q_t = np.fromiter((t for _, t in cutoffs), dtype=np.int64, count=Q)
        if self._watermark is not None and Q and q_t.min() < self._watermark:
            raise ValueError(f"cutoff {q_t.min()} is before the watermark {self._watermark}")
        batch = _Batch(self, q_conn, q_t, np.flatnonzero(q_conn >= 0))
        ev = _Evaluator(self, batch)
        columns = {spec.name: ev.column(spec) for spec in self.plan.specs}
        if self.fallback is not None:
            fb = self.fallback.features_at(cutoffs)
            for name in fb.columns:
                columns[name] = fb[name].array
        self._cutoffs += Q
        return frame(cutoffs, self.kind, {n: columns[n] for n in self.names})

    def _committed(self, level: _Level, slots: np.ndarray) -> dict[str, np.ndarray]:
        a = level.a
        out = {
            "n": a.n[slots],
            "s1": a.s1[slots],
            "s2": a.s2[slots],
            "s3": a.s3[slots],
            "max": a.last_secs[slots],
            "min": self._head_secs(level, slots),
        }
        for attr in self._attrs:
            out["cnt_" + attr] = self._level_codes(level, attr)[slots]
        return out

    def _head_secs(self, level: _Level, slots: np.ndarray) -> np.ndarray:
        """secs of each group's oldest committed window event (or of its first pending one)."""
        head = level.a.head[slots]
        out = np.where(head >= 0, self.s.secs[np.maximum(head - self._base, 0)], -1)
        none = np.flatnonzero(head < 0)
        if len(none):
            out[none] = self._nth_pending(level, slots[none], np.zeros(len(none), np.int64))
        return out

    def _nth_pending(self, level: _Level, slots: np.ndarray, skip: np.ndarray) -> np.ndarray:
        """secs of the (skip+1)-th pending event of each group (-1 if none)."""
        key = self._pd_pair if level is self.P else self._pd_conn
        order = np.lexsort((self._pd_secs, key))
        sk = key[order]
        start = np.searchsorted(sk, slots, side="left")
        end = np.searchsorted(sk, slots, side="right")
        pos = start + skip
        ok = pos < end
        out = np.full(len(slots), -1, dtype=np.int64)
        out[ok] = self._pd_secs[order[pos[ok]]]
        return out

    def _pair_values(self, st: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per-pair values of the plan's streams from pair states (absent pairs: n=0, NaN, -1)."""
        n = st["n"]
        present = n > 0
        total = st["s1"] + n * (self._ref or 0)
        safe_n = np.maximum(n, 1)
        vnum = np.full((len(self._num_streams), len(n)), np.nan)
        for j, pv in enumerate(self._num_streams):
            prim, src = pv.primitive, pv.source
            if prim == "count":
                v = n.astype(np.float64)
            elif src.kind == "secs":
                if prim == "sum":
                    v = total.astype(np.float64)
                elif prim == "mean":
                    v = total.astype(np.float64) / safe_n
                elif prim == "min":
                    v = st["min"].astype(np.float64)
                elif prim == "max":
                    v = st["max"].astype(np.float64)
                elif prim == "std":
                    v = nm.std_from_sums(n, st["s1"], st["s2"])
                else:
                    v = nm.skew_from_sums(n, st["s1"], st["s2"], st["s3"], total)
            elif src.kind == "attr":  # num_unique
                v = (st["cnt_" + src.column] > 0).sum(axis=1).astype(np.float64)
            else:  # num_unique of a pair column seen through the pair's rows
                v = np.ones(len(n))
            vnum[j] = np.where(present, v, np.nan)
        vnum[0] = n
        vcat = np.full((len(self._cat_streams), len(n)), -1, dtype=np.int64)
        for j, pv in enumerate(self._cat_streams):
            if pv.source.kind == "attr":
                counts = st["cnt_" + pv.source.column]
                vcat[j] = nm.row_mode(counts, self.vocab[pv.source.column].rank())
            else:
                raise AssertionError(pv)
        return vnum, vcat

    # ================================================================== watermark
    def advance(self, watermark_secs: int) -> None:
        w_secs = int(watermark_secs)
        if self._watermark is not None and w_secs < self._watermark:
            raise ValueError(f"watermark cannot go back from {self._watermark} to {w_secs}")
        self._materialize()
        touched: list[np.ndarray] = [_EMPTY]
        committed = _EMPTY
        due = self._pd_secs <= w_secs
        if due.any():
            idx = np.flatnonzero(due)
            idx = idx[np.argsort(self._pd_secs[idx], kind="stable")]
            pairs, conns = self._pd_pair[idx], self._pd_conn[idx]
            secs, codes = self._pd_secs[idx], self._pd_codes[idx]
            keep = ~due
            self._pd_pair, self._pd_conn = self._pd_pair[keep], self._pd_conn[keep]
            self._pd_secs, self._pd_codes = self._pd_secs[keep], self._pd_codes[keep]
            np.subtract.at(self.P.a.pending, pairs, 1)
            np.subtract.at(self.C.a.pending, conns, 1)
            self._append_store(pairs, conns, secs, codes)
            self._apply(pairs, conns, secs, codes, +1)
            committed = pairs
        touched.append(committed)
        touched.append(self._evict_until(w_secs - self.window_secs))
        if self.max_events is not None and len(committed):
            touched.append(self._enforce_cap(np.unique(self._p_conn[committed])))
        touched = np.unique(np.concatenate(touched))
        if self._need_rows and len(touched):
            self._vnum[:, touched], self._vcat[:, touched] = self._pair_values(self._committed(self.P, touched))
        self._drop_idle(touched)
        self._watermark = w_secs
        self._maybe_rebase(w_secs)
        self._maybe_compact()
        if self.fallback is not None:
            self.fallback.advance(w_secs)

    def _append_store(self, pairs: np.ndarray, conns: np.ndarray, secs: np.ndarray, codes: np.ndarray) -> None:
        m = len(pairs)
        self._ensure_store(self._size - self._base + m)
        lo = self._size - self._base
        s = self.s
        s.pair[lo : lo + m] = pairs
        s.conn[lo : lo + m] = conns
        s.secs[lo : lo + m] = secs
        s.next_pair[lo : lo + m] = -1
        s.next_conn[lo : lo + m] = -1
        s.flag[lo : lo + m] = False
        self._s_codes[lo : lo + m] = codes
        logical = self._size + np.arange(m)
        self._size += m
        for level, keys in ((self.P, pairs), (self.C, conns)):
            nxt = getattr(s, level.next)
            a = level.a
            order = np.argsort(keys, kind="stable")
            sk, li = keys[order], logical[order]
            same = sk[1:] == sk[:-1]
            nxt[li[:-1][same] - self._base] = li[1:][same]
            first = np.flatnonzero(np.r_[True, ~same])
            last = np.r_[first[1:] - 1, len(sk) - 1]
            g = sk[first]
            prev = a.last[g]
            link = prev >= self._base
            nxt[prev[link] - self._base] = li[first][link]
            empty = a.head[g] < 0
            a.head[g[empty]] = li[first][empty]
            a.last[g] = li[last]
            a.last_secs[g] = s.secs[li[last] - self._base]

    def _ensure_store(self, size: int) -> None:
        if self.s.ensure(size):
            self._s_codes = _grow_rows(self._s_codes, self.s.capacity, 0)

    def _apply(self, pairs: np.ndarray, conns: np.ndarray, secs: np.ndarray, codes: np.ndarray, sign: int) -> None:
        """Add (sign=+1) or remove (-1) events from the committed state of their groups."""
        if not len(pairs):
            return
        d_all = secs - self._ref
        for level, keys in ((self.P, pairs), (self.C, conns)):
            order = np.argsort(keys, kind="stable")
            sk = keys[order]
            first = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
            g = sk[first]
            d = d_all[order]
            a = level.a
            a.n[g] += sign * np.diff(np.r_[first, len(sk)])
            a.s1[g] += sign * np.add.reduceat(d, first)
            if self._need_std or self._need_skew:
                do = d.astype(object)
                a.s2[g] = a.s2[g] + sign * np.add.reduceat(do * do, first)
                if self._need_skew:
                    a.s3[g] = a.s3[g] + sign * np.add.reduceat(do * do * do, first)
            for attr, j in zip(self._attrs, self._attr_pos, strict=True):
                mat = self._level_codes(level, attr)
                c = codes[:, j]
                ok = c >= 0
                np.add.at(mat, (keys[ok], c[ok]), sign)

    def _evict_until(self, oldest: int) -> np.ndarray:
        """Remove committed events with ``secs <= oldest``; returns the pairs touched."""
        lo, hi = self._evict_ptr - self._base, self._size - self._base
        k = int(np.searchsorted(self.s.secs[lo:hi], oldest, side="right"))
        if not k:
            return _EMPTY
        phys = lo + np.flatnonzero(~self.s.flag[lo : lo + k])
        self._evict_ptr += k
        return self._remove(phys)

    def _remove(self, phys: np.ndarray) -> np.ndarray:
        """Remove store events (a prefix of each group's chain) from committed state."""
        if not len(phys):
            return _EMPTY
        s = self.s
        pairs, conns = s.pair[phys], s.conn[phys]
        self._apply(pairs, conns, s.secs[phys], self._s_codes[phys], -1)
        s.flag[phys] = True
        for level, keys in ((self.P, pairs), (self.C, conns)):
            last = np.full(level.a.capacity, -1, dtype=np.int64)
            np.maximum.at(last, keys, phys)
            g = np.unique(keys)
            level.a.head[g] = getattr(s, level.next)[last[g]]
        return np.unique(pairs)

    def _enforce_cap(self, conns: np.ndarray) -> np.ndarray:
        """Drop the oldest events of connections over the cap (featuretools would keep them)."""
        over = conns[self.C.a.n[conns] > self.max_events]
        if not len(over):
            return _EMPTY
        drop: list[int] = []
        s, base = self.s, self._base
        for conn in over.tolist():
            e = int(self.C.a.head[conn])
            for _ in range(int(self.C.a.n[conn]) - self.max_events):
                drop.append(e - base)
                e = int(s.next_conn[e - base])
        self._capped += len(drop)
        log.warning(
            "%d connection(s) over the cap of %d window events: dropped their %d oldest event(s)",
            len(over),
            self.max_events,
            len(drop),
        )
        return self._remove(np.array(sorted(drop), dtype=np.int64))

    def _drop_idle(self, pairs: np.ndarray) -> None:
        """Forget pairs (and connections) with nothing in the window and nothing pending."""
        a = self.P.a
        idle = pairs[(a.n[pairs] == 0) & (a.pending[pairs] == 0)]
        for slot in idle.tolist():
            key = self._pair_key[slot]
            if key is None:
                continue
            del self._pair_index[key]
            self._pair_key[slot] = None
            conn = int(self._p_conn[slot])
            members = self._conn_pairs[conn]
            members.remove(slot)
            if not members:
                del self._conn_index[self._conn_ids[conn]]
                self._conn_ids[conn] = None
                self._conn_pairs[conn] = None
                self._conn_local[conn] = None
                self.C.reset(conn)
                self._free_conns.append(conn)
            self._p_conn[slot] = -1
            self.P.reset(slot)
            self._vnum[:, slot] = np.nan
            self._vnum[0, slot] = 0
            self._vcat[:, slot] = -1
            self._free_pairs.append(slot)

    def _maybe_rebase(self, w_secs: int) -> None:
        """Move ``ref`` forward so that |secs - ref| stays small (exactly, in Python ints)."""
        if self._ref is None or w_secs - self._ref <= _REBASE_AFTER:
            return
        shift = w_secs - self.window_secs - self._ref
        if shift <= 0:
            return
        for level in (self.P, self.C):
            a = level.a
            live = np.flatnonzero(a.n > 0)
            n = a.n[live].astype(object)
            s1, s2, s3 = a.s1[live].astype(object), a.s2[live], a.s3[live]
            a.s3[live] = s3 - 3 * shift * s2 + 3 * shift * shift * s1 - n * shift**3
            a.s2[live] = s2 - 2 * shift * s1 + n * shift * shift
            a.s1[live] = (s1 - n * shift).astype(np.int64)
        self._ref += shift

    def _maybe_compact(self) -> None:
        dead = self._evict_ptr - self._base
        if dead < max(1 << 16, self.s.capacity // 2):
            return
        live = self._size - self._evict_ptr
        for name in ("pair", "conn", "secs", "next_pair", "next_conn", "flag"):
            arr = getattr(self.s, name)
            arr[:live] = arr[dead : dead + live]
        self._s_codes[:live] = self._s_codes[dead : dead + live]
        self._base = self._evict_ptr

    # ================================================================== stats
    def stats(self) -> EngineStats:
        pairs = len(self._pair_index)
        conns = len(self._conn_index)
        size = (
            self.P.nbytes()
            + self.C.nbytes()
            + self._vnum.nbytes
            + self._vcat.nbytes
            + self._p_conn.nbytes
            + sum(a.nbytes for a in self._p_cols.values())
            + sum(a.nbytes for a in self._p_local.values())
            + sum(a.nbytes for a in self._c_cols.values())
            + self.s.nbytes()
            + self._s_codes.nbytes
            + self._pd_pair.nbytes * 3
            + self._pd_codes.nbytes
            + (pairs + conns) * (2 * 32)  # Python ints of s2, s3
            + pairs * (sys.getsizeof((0,) * 4) + 100 + 8)  # key tuple, dict entry, list slot
            + conns * (150 + 100 * len(self._pair_cols))  # id, dict entry, local host dicts
            + sum(sys.getsizeof(v.values) + sys.getsizeof(v.index) for v in self.vocab.values())
        )
        return EngineStats(
            connections=conns,
            pairs=pairs,
            window_events=int(self.C.a.n.sum()),
            pending_events=len(self._pd_secs) + len(self._raw),
            events_observed=self._observed + len(self._raw),
            cutoffs_computed=self._cutoffs,
            capped_events=self._capped,
            state_bytes=int(size),
        )


class _WindowSum:
    """Sums of per-delta values over each row's deltas ``[gstart, idx)`` (prefix differences)."""

    def __init__(self, gstart: np.ndarray, idx: np.ndarray) -> None:
        self.gstart, self.idx = gstart, idx

    def __call__(self, values: np.ndarray) -> np.ndarray:
        zero = np.zeros((1, *values.shape[1:]), dtype=values.dtype)
        pref = np.concatenate([zero, np.cumsum(values, axis=0)])
        return pref[self.idx] - pref[self.gstart]

    def exact_power(self, sign: np.ndarray, d: np.ndarray, power: int) -> np.ndarray:
        """Window sums of ``sign * d**power`` as exact Python ints (int64 math where safe)."""
        dmax = int(np.abs(d).max()) if len(d) else 0
        if dmax**power * max(len(d), 1) < (1 << 62):
            return self(sign * d**power).astype(object)
        if dmax < (1 << 20):  # |d**3| < 2**60: split in two int64 limbs
            v = sign * d**power
            hi, lo = v >> 31, v & ((1 << 31) - 1)
            return self(hi).astype(object) * (1 << 31) + self(lo).astype(object)
        return self(sign.astype(object) * d.astype(object) ** power)


class _Batch:
    """The deltas of one ``features_at`` call and the group states they give."""

    def __init__(self, e: CompiledEngine, q_conn: np.ndarray, q_t: np.ndarray, known: np.ndarray) -> None:
        self.e = e
        self.q_conn, self.q_t, self.known = q_conn, q_t, known
        self.t_max = int(q_t[known].max()) if len(known) else 0
        inv = np.zeros(e.C.a.capacity, dtype=bool)
        inv[q_conn[known]] = True
        w = e.window_secs
        pd_inv = inv[e._pd_conn] if len(known) else np.zeros(len(e._pd_conn), bool)
        arr = np.flatnonzero(pd_inv & (e._pd_secs <= self.t_max))
        lo, hi = e._evict_ptr - e._base, e._size - e._base
        k = int(np.searchsorted(e.s.secs[lo:hi], self.t_max - w, side="right")) if len(known) else 0
        self.sc = lo + np.flatnonzero(inv[e.s.conn[lo : lo + k]] & ~e.s.flag[lo : lo + k])
        self.pdep = np.flatnonzero(pd_inv & (e._pd_secs <= self.t_max - w))
        sc, pdep = self.sc, self.pdep
        self.pair = np.concatenate([e._pd_pair[arr], e.s.pair[sc], e._pd_pair[pdep]])
        self.conn = np.concatenate([e._pd_conn[arr], e.s.conn[sc], e._pd_conn[pdep]])
        self.secs = np.concatenate([e._pd_secs[arr], e.s.secs[sc], e._pd_secs[pdep]])
        self.codes = np.concatenate([e._pd_codes[arr], e._s_codes[sc], e._pd_codes[pdep]])
        self.dep = np.r_[np.zeros(len(arr), bool), np.ones(len(sc) + len(pdep), bool)]
        self.time = self.secs + np.where(self.dep, w, 0)

    def state(self, level: _Level, slots: np.ndarray, times: np.ndarray) -> dict[str, np.ndarray]:
        """Window state of group ``slots[i]`` at ``times[i]``: committed state plus deltas."""
        e = self.e
        out = e._committed(level, slots)
        if not len(self.pair) or not len(slots):
            return out
        keys = self.pair if level is e.P else self.conn
        order = np.lexsort((self.time, keys))
        sk, stime, ssecs, sdep = keys[order], self.time[order], self.secs[order], self.dep[order]
        sign = np.where(sdep, -1, 1).astype(np.int64)
        span = self.t_max + 1
        gstart = np.searchsorted(sk, slots, side="left")
        idx = np.searchsorted(sk * span + stime, slots * span + times, side="right")
        has = idx > gstart
        window_sum = _WindowSum(gstart, idx)
        d = ssecs - (e._ref or 0)
        out["n"] = out["n"] + window_sum(sign)
        out["s1"] = out["s1"] + window_sum(sign * d)
        if e._need_std or e._need_skew:
            out["s2"] = out["s2"] + window_sum.exact_power(sign, d, 2)
        if e._need_skew:
            out["s3"] = out["s3"] + window_sum.exact_power(sign, d, 3)
        for attr, j in zip(e._attrs, e._attr_pos, strict=True):
            width = e._level_codes(level, attr).shape[1]
            c = self.codes[order, j].astype(np.int64)
            onehot = np.zeros((len(c), width), dtype=np.int64)
            ok = np.flatnonzero(c >= 0)
            onehot[ok, c[ok]] = sign[ok]
            out["cnt_" + attr] = out["cnt_" + attr] + window_sum(onehot)
        # MAX: the newest arrival up to t, else the newest committed event
        last_arr = np.maximum.accumulate(np.where(sdep, -1, np.arange(len(sk))))
        la = np.where(has, last_arr[np.maximum(idx - 1, 0)], -1)
        out["max"] = np.where(has & (la >= gstart), ssecs[np.maximum(la, 0)], out["max"])
        # MIN: the oldest event not departed at t, walking the group's chain
        dep_pos = np.flatnonzero(sdep)
        if len(dep_pos):
            dep_key = sk[dep_pos]
            dstart = np.searchsorted(dep_key, slots, side="left")
            ndep = np.searchsorted(dep_key, slots, side="right") - dstart
            gone = window_sum(sdep.astype(np.int64))
            from_dep = ssecs[dep_pos[np.minimum(dstart + gone, len(dep_pos) - 1)]]
            succ = self._successors(level, slots)
            out["min"] = np.where(gone > 0, np.where(gone < ndep, from_dep, succ), out["min"])
        return out

    def _successors(self, level: _Level, slots: np.ndarray) -> np.ndarray:
        """Per group: secs of the first chain event that does not depart by ``t_max``."""
        e = self.e
        groups = np.unique(slots)
        nxt = level.a.head[groups].copy()
        if len(self.sc):
            keys = getattr(e.s, level.key)[self.sc]
            lastc = np.full(level.a.capacity, -1, dtype=np.int64)
            np.maximum.at(lastc, keys, self.sc + e._base)
            lc = lastc[groups]
            has = lc >= 0
            nxt[has] = getattr(e.s, level.next)[lc[has] - e._base]
        out = np.full(len(groups), -1, dtype=np.int64)
        com = nxt >= 0
        out[com] = e.s.secs[nxt[com] - e._base]
        if (~com).any():
            pend_keys = (e._pd_pair if level is e.P else e._pd_conn)[self.pdep]
            npd = np.zeros(level.a.capacity, dtype=np.int64)
            np.add.at(npd, pend_keys, 1)
            gp = groups[~com]
            out[~com] = e._nth_pending(level, gp, npd[gp])
        return out[np.searchsorted(groups, slots)]

    def pair_sets(self) -> _PairSets:
        """The present pairs of each cutoff's connection, split in two.

        ``unchanged``: pairs without a delta in this batch; their committed values are the
        same at every cutoff, so they are summarised once per connection. ``changed``: pairs
        with deltas; their values at each cutoff are summarised per cutoff. Aggregations over
        a connection's pairs merge the two summaries, so a busy connection with many pairs
        costs its pair count once per batch, not once per cutoff.
        """
        e = self.e
        known = self.known
        conns, inv = np.unique(self.q_conn[known], return_inverse=True)
        lists = [e._conn_pairs[c] for c in conns.tolist()]
        lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        flat = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(lens.sum()))
        owner = np.repeat(np.arange(len(conns)), lens)
        changed = np.zeros(e.P.a.capacity, dtype=bool)
        changed[self.pair] = True
        chg = changed[flat]
        # unchanged: committed values, grouped by connection (flat is grouped by owner)
        up, uo = flat[~chg], owner[~chg]
        unum, ucat = e._vnum[:, up], e._vcat[:, up]
        keep = unum[0] > 0
        unchanged = _Rows(uo[keep], up[keep], unum[:, keep], ucat[:, keep], len(conns))
        # changed: each cutoff x each changed pair of its connection, values at the cutoff
        cp, co = flat[chg], owner[chg]
        nch = np.bincount(co, minlength=len(conns))
        first = np.cumsum(nch) - nch
        per_q = nch[inv]
        ends = np.cumsum(per_q)
        rows_i = np.repeat(np.arange(len(known)), per_q)  # position in ``known``
        rows_p = cp[np.repeat(first[inv] - (ends - per_q), per_q) + np.arange(int(ends[-1]) if len(ends) else 0)]
        vnum, vcat = e._vnum[:, rows_p], e._vcat[:, rows_p]
        if len(self.pair) and len(rows_p):
            # values after each delta (one state per distinct (pair, time)), latest <= t wins
            span = self.t_max + 1
            ukey = np.unique(self.pair * span + self.time)
            vp, vt = ukey // span, ukey % span
            dnum, dcat = e._pair_values(self.state(e.P, vp, vt))
            j = np.searchsorted(ukey, rows_p * span + self.q_t[known[rows_i]], side="right") - 1
            hit = (j >= 0) & (vp[np.maximum(j, 0)] == rows_p)
            vnum[:, hit], vcat[:, hit] = dnum[:, j[hit]], dcat[:, j[hit]]
        keep = vnum[0] > 0
        changed_rows = _Rows(rows_i[keep], rows_p[keep], vnum[:, keep], vcat[:, keep], len(known))
        return _PairSets(conns, inv, unchanged, changed_rows)


class _Rows:
    """Present pairs (``p``) with their values, grouped by ``group`` (sorted)."""

    def __init__(self, group: np.ndarray, p: np.ndarray, num: np.ndarray, cat: np.ndarray, ngroups: int) -> None:
        self.group, self.p, self.num, self.cat, self.ngroups = group, p, num, cat, ngroups
        self.n = np.bincount(group, minlength=ngroups)  # present pairs per group
        self.starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group) else _EMPTY
        self.ids = group[self.starts]  # groups that have rows
        self._stats: nm.GroupStats | None = None
        self._numeric: dict[int, dict[str, np.ndarray]] = {}

    @property
    def stats(self) -> nm.GroupStats | None:
        if self._stats is None and len(self.group):
            self._stats = nm.GroupStats(self.num, self.starts)
        return self._stats

    def numeric(self, j: int) -> dict[str, np.ndarray]:
        """Per group (all ``ngroups``): count, sum, mean, min, max, M2, M3 of stream ``j``."""
        if j not in self._numeric:
            self._numeric[j] = self._summarise(j)
        return self._numeric[j]

    def _summarise(self, j: int) -> dict[str, np.ndarray]:
        g = self.ngroups
        out = {
            "cnt": np.zeros(g),
            "sum": np.zeros(g),
            "min": np.full(g, np.nan),
            "max": np.full(g, np.nan),
            "m1": np.zeros(g),
            "m2": np.zeros(g),
            "m3": np.zeros(g),
        }
        st = self.stats
        if st is not None:
            m2, m3 = st.moments()
            out["m1"][self.ids] = np.nan_to_num(st.residual()[j])
            out["cnt"][self.ids] = st.count[j]
            out["sum"][self.ids] = st.total[j]
            out["min"][self.ids] = st.get("min")[j]
            out["max"][self.ids] = st.get("max")[j]
            out["m2"][self.ids] = np.nan_to_num(m2[j])
            out["m3"][self.ids] = np.nan_to_num(m3[j])
        with np.errstate(invalid="ignore", divide="ignore"):
            out["mean"] = np.where(out["cnt"] > 0, out["sum"] / np.maximum(out["cnt"], 1), np.nan)
        return out

    def code_counts(self, codes: np.ndarray, width: int) -> np.ndarray:
        """(groups x values) counts of codes (-1 skipped)."""
        ok = codes >= 0
        flat = np.bincount(self.group[ok] * width + codes[ok], minlength=self.ngroups * width)
        return flat.reshape(self.ngroups, width)


class _PairSets:
    """Unchanged pairs (per connection) and changed pairs (per cutoff) of one batch."""

    def __init__(self, conns: np.ndarray, inv: np.ndarray, unchanged: _Rows, changed: _Rows) -> None:
        self.conns = conns  # connection slots
        self.inv = inv  # known cutoff -> index in conns
        self.u = unchanged
        self.c = changed
        self.n = unchanged.n[inv] + changed.n  # present pairs per known cutoff
        self._gathered: dict[int, dict[str, np.ndarray]] = {}

    def numeric(self, j: int, prim: str) -> np.ndarray:
        """``prim`` over the union, per known cutoff (pandas groupby semantics)."""
        if j not in self._gathered:
            self._gathered[j] = {k: v[self.inv] for k, v in self.u.numeric(j).items()}
        a, b = self._gathered[j], self.c.numeric(j)
        n = a["cnt"] + b["cnt"]
        if prim == "sum":
            return a["sum"] + b["sum"]
        if prim == "min":
            return np.fmin(a["min"], b["min"])
        if prim == "max":
            return np.fmax(a["max"], b["max"])
        with np.errstate(invalid="ignore", divide="ignore"):
            if prim == "mean":
                return np.where(n > 0, (a["sum"] + b["sum"]) / np.maximum(n, 1), np.nan)
            # pandas centres on the float mean of the union; move each part's sums there
            centre = (a["sum"] + b["sum"]) / np.maximum(n, 1)
            m2 = np.zeros(len(n))
            m3 = np.zeros(len(n))
            for part in (a, b):
                k = part["cnt"]
                h = np.where(k > 0, part["mean"] - centre, 0.0)
                m2 += part["m2"] + 2 * h * part["m1"] + k * h * h
                m3 += part["m3"] + 3 * h * part["m2"] + 3 * h * h * part["m1"] + k * h * h * h
            if prim == "std":
                out = np.sqrt(m2 / (n - 1))
                flat = np.fmin(a["min"], b["min"]) == np.fmax(a["max"], b["max"])
                return np.where(n >= 2, np.where(flat, 0.0, out), np.nan)
            m2 = np.where(np.abs(m2) < nm.ZERO_FPERR, 0.0, m2)
            m3 = np.where(np.abs(m3) < nm.ZERO_FPERR, 0.0, m3)
            res = (n * (n - 1) ** 0.5 / (n - 2)) * (m3 / m2**1.5)
        return np.where(n >= 3, np.where(m2 == 0, 0.0, res), np.nan)

    def code_counts(self, j: int, width: int) -> np.ndarray:
        """(known cutoffs x values) counts of categorical stream ``j`` over the union."""
        a = self.u.code_counts(self.u.cat[j], width)[self.inv]
        return a + self.c.code_counts(self.c.cat[j], width)

    def column(self, e: CompiledEngine, col: str, prim: str, weighted: bool) -> np.ndarray:
        """NUM_UNIQUE / MODE of a pair column per known cutoff (rows weighted by n if asked).

        Bins are each connection's own distinct values (local indices): no hashing of codes.
        """
        u, c = self.u, self.c
        width = e._c_nlocal[col][self.conns]
        offs = np.cumsum(width) - width
        nbins = int(width.sum())
        ubins = offs[u.group] + e._p_local[col][u.p]
        counts = np.bincount(ubins, weights=u.num[0] if weighted else None, minlength=nbins)
        code = np.full(nbins, -1, dtype=np.int64)
        code[ubins] = e._p_cols[col][u.p]
        rank = e.vocab[col].rank()
        big = len(rank) + 1

        def score(cnt: np.ndarray, codes: np.ndarray) -> np.ndarray:
            return np.where(cnt > 0, cnt.astype(np.int64) * big + (big - 1 - rank[np.maximum(codes, 0)]), -1)

        owner = np.repeat(np.arange(len(width)), width)
        u_unique = np.bincount(owner, weights=counts > 0, minlength=len(width))
        u_best = np.maximum.reduceat(score(counts, code), offs) if nbins else np.zeros(0, np.int64)
        n_known = len(self.inv)
        unique = u_unique[self.inv].astype(np.float64)
        best = u_best[self.inv].copy() if nbins else np.full(n_known, -1, dtype=np.int64)
        if len(c.group):
            cbins = offs[self.inv[c.group]] + e._p_local[col][c.p]
            key = c.group * (nbins + 1) + cbins
            order = np.argsort(key, kind="stable")
            key_s = key[order]
            first = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]])
            w = (c.num[0] if weighted else np.ones(len(key)))[order]
            add = np.add.reduceat(w, first)
            grp, bins = key_s[first] // (nbins + 1), key_s[first] % (nbins + 1)
            before = counts[bins]
            unique += np.bincount(grp, weights=(before == 0) & (add > 0), minlength=n_known)
            np.maximum.at(best, grp, score(before + add, e._p_cols[col][c.p[order[first]]]))
        if prim == "num_unique":
            return unique
        best_rank = np.where(best >= 0, big - 1 - best % big, -1)
        by_rank = e.vocab[col].by_rank()
        return np.where(best_rank >= 0, by_rank[np.maximum(best_rank, 0)] if len(by_rank) else -1, -1)


class _Evaluator:
    """Evaluates compiled specs for one batch of cutoffs."""

    def __init__(self, engine: CompiledEngine, batch: _Batch) -> None:
        self.e = engine
        self.b = batch
        self.Q = len(batch.q_t)
        self._conn: dict[str, np.ndarray] | None = None
        self._pairs: _PairSets | None = None
        self._cache: dict[object, np.ndarray] = {}

    # -- lazily computed inputs
    @property
    def conn(self) -> dict[str, np.ndarray]:
        """Connection state at each known cutoff (``q`` = cutoff positions with n > 0)."""
        if self._conn is None:
            b = self.b
            st = b.state(self.e.C, b.q_conn[b.known], b.q_t[b.known])
            present = st["n"] > 0
            self._conn = {k: v[present] for k, v in st.items()}
            self._conn["q"] = b.known[present]
            self._conn["total"] = self._conn["s1"] + self._conn["n"] * (self.e._ref or 0)
        return self._conn

    @property
    def pairs(self) -> _PairSets:
        if self._pairs is None:
            self._pairs = self.b.pair_sets()
        return self._pairs

    # -- assembly
    def column(self, spec: Spec):
        if spec.level == TARGET_COLUMN:
            codes = np.full(self.Q, -1, dtype=np.int64)
            q = self.conn["q"]
            codes[q] = self.e._c_cols[spec.column][self.b.q_conn[q]]
            return self.e.vocab[spec.vocab].categorical(codes)
        if spec.level == TARGET_LOG and spec.source.kind != "pair_column":
            where, values = self.conn["q"], self._target_log(spec)
        elif not len(self.b.known):
            where, values = _EMPTY, np.empty(0)
        else:
            present = self.pairs.n > 0
            where, values = self.b.known[present], self._over_pairs(spec)[present]
        if spec.output == "category":
            codes = np.full(self.Q, -1, dtype=np.int64)
            codes[where] = values
            return self.e.vocab[spec.vocab].categorical(codes)
        out = np.full(self.Q, 0.0 if spec.primitive in ("count", "sum") else np.nan)
        out[where] = values
        return make_column(out, spec.output)

    # -- connection level, over its log rows
    def _target_log(self, spec: Spec) -> np.ndarray:
        prim, src, st = spec.primitive, spec.source, self.conn
        n = st["n"]
        if src.kind == "rows":
            return n.astype(np.float64)
        if src.kind == "secs":
            if prim == "sum":
                return st["total"].astype(np.float64)
            if prim == "mean":
                return st["total"].astype(np.float64) / n
            if prim == "min":
                return st["min"].astype(np.float64)
            if prim == "max":
                return st["max"].astype(np.float64)
            if prim == "std":
                return self._memo("std", lambda: nm.std_from_sums(n, st["s1"], st["s2"]))
            return self._memo("skew", lambda: nm.skew_from_sums(n, st["s1"], st["s2"], st["s3"], st["total"]))
        counts = st["cnt_" + src.column]
        if prim == "num_unique":
            return (counts > 0).sum(axis=1).astype(np.float64)
        return nm.row_mode(counts, self.e.vocab[src.column].rank())

    def _memo(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    # -- connection level, over its present pairs (per known cutoff)
    def _over_pairs(self, spec: Spec) -> np.ndarray:
        ps, e, prim = self.pairs, self.e, spec.primitive
        if spec.level == TARGET_LOG:  # a pair column counted over the connection's log rows
            return ps.column(e, spec.source.column, prim, weighted=True)
        pv = spec.pair_value
        if prim == "count":
            return ps.n.astype(np.float64)
        if pv.kind == "column":
            return ps.column(e, pv.column, prim, weighted=False)
        if pv.primitive == "mode":
            width = len(e.vocab[pv.source.column].values)
            counts = self._memo(("cat", pv), lambda: ps.code_counts(e._cat_streams.index(pv), width))
            if prim == "num_unique":
                return (counts > 0).sum(axis=1).astype(np.float64)
            return nm.row_mode(counts, e.vocab[spec.vocab].rank())
        return self._memo(("num", pv, prim), lambda: ps.numeric(e._num_streams.index(pv), prim))
