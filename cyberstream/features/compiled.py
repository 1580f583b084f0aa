"""The fast feature engine: saved DFS definitions compiled into incremental window state.

Events are grouped at two levels: the name-host *pair* and the *connection* (a set of
pairs; each pair belongs to one connection). The engine keeps *live* window state at one
event time (the live time), in numpy arrays updated per event by the numba kernels of
:mod:`.kernels` (see there for the layout):

* per group: the count, the exact integer sum of ``secs``, the window's ``secs`` oldest
  first in a contiguous lane (MIN, MAX, and STD/SKEW in two passes as pandas computes
  them), and per attribute column (``auth_type`` ...) the window count of each value;
* per connection: its pairs in a contiguous list, with each pair's values of the streams
  the plan aggregates over pairs (``SUM(log.secs)``, ``MODE(log.stage)`` ...), recomputed
  when a cutoff reads a pair that changed.

``features_at`` sorts its cutoffs by time and moves the live state forward through them:
events observed up to ``t`` are applied, events with ``secs <= t - window`` evicted, then
the row of each cutoff at ``t`` is read off: connection-level aggregations in O(1) (STD and
SKEW in O(window)), aggregations over its pairs in sweeps over its list. Cutoffs must
therefore come in time order across calls (within a call any order), which is how both the
detector and :func:`.matrix.feature_matrix` ask. ``advance(watermark)`` moves the live state
on and forgets pairs and connections with nothing left in the window.

Python keeps what numba cannot: the dictionaries from pair keys and connection ids to
slots, the vocabularies (value <-> code, sorted ranks for MODE's ties), and the assembly
of the output DataFrame. Features the plan cannot compile are computed by the featuretools
engine (:mod:`.oracle`) fed with the same events; a warning lists them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from itertools import repeat
from operator import attrgetter

import featuretools as ft
import numpy as np
import pandas as pd

from cyberstream.config import DEFAULT_BASE_EPOCH
from cyberstream.connections import DEFAULT_CONNECTION, SEPARATOR, connection_fields
from cyberstream.schema import ATTRIBUTE_FIELDS, IDENTITY_FIELDS, Event

from . import kernels as k
from .base import (
    DEFAULT_MAX_EVENTS_PER_CONNECTION,
    Cutoff,
    EngineSettings,
    EngineStats,
    frame_of,
    make_column,
)
from .entityset import PAIR_INDEX, target_index
from .oracle import OracleEngine
from .plan import TARGET_COLUMN, TARGET_LOG, TARGET_PAIRS, PairValue, Spec, compile_plan

log = logging.getLogger(__name__)

_A = len(ATTRIBUTE_FIELDS)
_IDENT = attrgetter(*IDENTITY_FIELDS)
_ATTRS = attrgetter(*ATTRIBUTE_FIELDS)
_SECS = attrgetter("secs")
_EMPTY = np.empty(0, dtype=np.int64)
_MAX_WINDOW = 1 << 30
#: initial sizes of the slot arrays, lane pools and list pool (all grow by doubling; tests
#: shrink them to exercise growth and compaction)
INITIAL_SLOTS = 1024
INITIAL_POOL = 1 << 16
_SECS_KIND = {"sum": k.S_SUM, "mean": k.S_MEAN, "min": k.S_MIN, "max": k.S_MAX, "std": k.S_STD, "skew": k.S_SKEW}


class Vocab:
    """Codes for the values of one categorical column; ranks give the sorted order."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.index: dict[object, int] = {}
        self._done = 0
        self._sorted = np.empty(0, dtype=object)  # values in sorted order
        self._by_rank = np.empty(0, dtype=np.int64)  # code of each sorted value
        self._rank = np.empty(0, dtype=np.int64)  # position of each code in sorted order
        self._array = np.empty(64, dtype=object)  # values by code (room to grow)
        self._in_array = 0
        self._dtype: pd.CategoricalDtype | None = None

    def code(self, value: str) -> int:
        c = self.index.get(value)
        if c is None:
            c = self.index[value] = len(self.values)
            self.values.append(value)
        return c

    def codes(self, values: Sequence[str]) -> list[int]:
        """:meth:`code` of many values (known ones looked up in one C-level pass)."""
        known = list(map(self.index.get, values))
        if None not in known:
            return known
        return [self.code(v) if c is None else c for v, c in zip(values, known, strict=True)]

    def rank(self) -> np.ndarray:
        """``rank[code]`` = position of the value in sorted order (new values inserted)."""
        done = self._done
        if done < len(self.values):
            new = np.array(self.values[done:], dtype=object)
            order = np.argsort(new, kind="stable")
            new_sorted = new[order]
            at = np.searchsorted(self._sorted, new_sorted) if len(self._sorted) else np.zeros(len(new), np.int64)
            self._by_rank = np.insert(self._by_rank, at, done + order).astype(np.int64)
            self._sorted = np.insert(self._sorted, at, new_sorted)
            self._rank = np.empty(len(self._by_rank), dtype=np.int64)
            self._rank[self._by_rank] = np.arange(len(self._by_rank))
            self._done = len(self.values)
        return self._rank

    def array(self) -> np.ndarray:
        """The values by code as an object array (a view; grown by doubling)."""
        n = len(self.values)
        if self._in_array < n:
            if n > len(self._array):
                grown = np.empty(max(n, 2 * len(self._array)), dtype=object)
                grown[: self._in_array] = self._array[: self._in_array]
                self._array = grown
            self._array[self._in_array : n] = self.values[self._in_array : n]
            self._in_array = n
        return self._array[:n]

    def categoricals(self, columns: Sequence[np.ndarray]) -> list[pd.Categorical]:
        """Code arrays (-1 = missing) as pandas Categoricals with one shared dtype: the whole
        sorted vocabulary when it is small, else the values that occur (unordered
        categoricals; featuretools' categories are the values of its EntitySet, so neither is
        more right than the other)."""
        if len(self.values) <= _SMALL_VOCAB:
            rank = self.rank()
            if self._dtype is None or len(self._dtype.categories) != len(self.values):
                self._dtype = _dtype(self._sorted)
            if not len(self.values):
                return [_from_codes(np.full(len(c), -1, dtype=np.int64), self._dtype) for c in columns]
            return [_from_codes(np.where(c >= 0, rank[np.maximum(c, 0)], -1), self._dtype) for c in columns]
        codes = np.concatenate(columns)
        ok = codes >= 0
        position = np.full(len(codes), -1, dtype=np.int64)
        position[ok], used = pd.factorize(codes[ok])  # hashing, in order of appearance
        dtype = _dtype(self.array()[used])
        ends = np.cumsum([len(c) for c in columns])
        return [_from_codes(position[end - len(c) : end], dtype) for c, end in zip(columns, ends, strict=True)]


#: vocabularies up to this size use all their values as categories (one cached dtype)
_SMALL_VOCAB = 256


def _dtype(sorted_values: np.ndarray) -> pd.CategoricalDtype:
    # The values are distinct by construction: skip pandas' uniqueness check (hashing the
    # categories of every batch cost more than computing the features).
    return pd.CategoricalDtype._from_fastpath(pd.Index(sorted_values, dtype=object), False)


def _from_codes(codes: np.ndarray, dtype: pd.CategoricalDtype) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, dtype=dtype, validate=False)


def _grow_rows(mat: np.ndarray, rows: int, fill) -> np.ndarray:
    if mat.shape[0] >= rows:
        return mat
    new = np.full((rows, *mat.shape[1:]), fill, dtype=mat.dtype)
    new[: mat.shape[0]] = mat
    return new



class _Slots:
    """Arrays indexed by a slot (their first axis), grown together by doubling.

    ``packed`` int64 fields live side by side in one record per slot (``rec``) and are seen
    as column views: the kernels touch several of them per event, and one record is one
    cache line where separate arrays would be one each.
    """

    def __init__(self, capacity: int, packed: dict[str, int], **specs: tuple) -> None:
        """``packed``: name -> fill; ``specs``: name -> (dtype, fill) or (dtype, fill, width)."""
        self.capacity = capacity
        self._packed = packed
        self._specs = specs
        self.rec = self._blank_records(capacity)
        self._views()
        for name, spec in specs.items():
            setattr(self, name, np.full((capacity, *spec[2:]), spec[1], dtype=spec[0]))

    def _blank_records(self, rows: int) -> np.ndarray:
        return np.tile(np.array(list(self._packed.values()), dtype=np.int64), (rows, 1))

    def _views(self) -> None:
        for i, name in enumerate(self._packed):
            setattr(self, name, self.rec[:, i])

    def ensure(self, size: int) -> None:
        if size > self.capacity:
            old = self.capacity
            self.capacity = max(size, 2 * self.capacity)
            rec = self._blank_records(self.capacity)
            rec[:old] = self.rec
            self.rec = rec
            self._views()
            for name, spec in self._specs.items():
                setattr(self, name, _grow_rows(getattr(self, name), self.capacity, spec[1]))

    def nbytes(self) -> int:
        return self.rec.nbytes + sum(getattr(self, n).nbytes for n in self._specs)


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
                self.window_secs,
                kind=kind,
                base_epoch=base_epoch,
                max_events_per_connection=max_events_per_connection,
            )
        self._conn_pos = [IDENTITY_FIELDS.index(f) for f in connection_fields(kind)]  # in a pair key
        self._index = target_index(kind)
        self.vocab: dict[str, Vocab] = {c: Vocab() for c in (*IDENTITY_FIELDS, *ATTRIBUTE_FIELDS)}
        self.vocab.setdefault(self._index, Vocab())
        self._compile_ops(self.plan.specs)
        for c in (*self._pair_cols, *self._target_cols):
            self.vocab.setdefault(c, Vocab())
        self._column_value = {c: self._column_getter(c) for c in (*self._pair_cols, *self._target_cols)}
        K = max(len(self._pair_cols), 1)
        # attribute value counts: attribute a at columns a_off[a] .. a_off[a] + a_cap[a]
        self._a_cap = np.full(_A, 8, dtype=np.int64)
        self._a_off = np.r_[0, np.cumsum(self._a_cap)[:-1]].astype(np.int64)
        self._a_len = np.zeros(_A, dtype=np.int64)
        self._a_rank = np.zeros(int(self._a_cap.sum()), dtype=np.int64)
        self._col_rank = _EMPTY
        self._col_off = np.zeros(K, dtype=np.int64)
        self._col_sizes: tuple[int, ...] = ()
        W = int(self._a_cap.sum())
        # -- pairs
        self._pair_index: dict[tuple, int] = {}
        self._pair_key: list[tuple | None] = []
        self._free_pairs: list[int] = []
        self.P = _Slots(
            INITIAL_SLOTS,
            dict(n=0, sum=0, pend=0, at=-1, inz=0, ls=0, lc=0, lo=0),
            conn=(np.int64, -1), zbuf=(np.int64, -1), cnt=(np.int32, 0, W),
        )  # fmt: skip
        # -- connections
        self._conn_index: dict[str, int] = {}
        self._conn_ids: list[str | None] = []
        self._free_conns: list[int] = []
        self.C = _Slots(
            INITIAL_SLOTS,
            dict(n=0, sum=0, npres=0, ndirty=0, ls=0, lc=0, lo=0, pstart=0, plen=0, pcap=0),
            cnt=(np.int32, 0, W), **{"col_" + c: (np.int64, -1) for c in self._target_cols},
        )  # fmt: skip
        # -- lanes: each group's window secs oldest first (and for connections their store
        #    indexes, which the cap needs to drop a connection's oldest event)
        self._lanes = {"P": (np.zeros(INITIAL_POOL), _EMPTY), "C": (np.zeros(INITIAL_POOL), np.zeros(INITIAL_POOL, np.int64))}
        # -- pair lists: each connection's pairs with their values, contiguous
        self._lists = self._new_lists(INITIAL_POOL)
        # -- the window's events, in time order (logical index = physical + meta[BASE])
        self.S = _Slots(
            INITIAL_SLOTS,
            {},
            secs=(np.int64, 0), pair=(np.int64, -1), conn=(np.int64, -1), dead=(np.uint8, 0),
            codes=(np.int64, -1, _A),
        )  # fmt: skip
        self._meta = np.zeros(k.META_SIZE, dtype=np.int64)
        self._meta[k.LIVE] = k.NEVER
        # -- observed events not yet applied (sorted by secs)
        self._raw: list[Event] = []
        self._pd_pair = _EMPTY
        self._pd_conn = _EMPTY
        self._pd_secs = _EMPTY
        self._pd_codes = np.empty((0, _A), dtype=np.int64)
        self._sig_index: dict[tuple, tuple[int, ...]] = {}
        self._watermark: int | None = None
        self._live: int | None = None
        self._observed = 0
        self._cutoffs = 0

    # ================================================================== plan -> kernel ops
    def _compile_ops(self, specs: list[Spec]) -> None:
        """Turn the plan's specs into the kernels' op codes (numeric and categorical outputs)."""
        attr = {a: i for i, a in enumerate(ATTRIBUTE_FIELDS)}
        pair_values = [s.pair_value for s in specs if s.level == TARGET_PAIRS]
        self._pair_cols = sorted(
            {pv.column for pv in pair_values if pv.kind == "column"}
            | {s.source.column for s in specs if s.level == TARGET_LOG and s.source.kind == "pair_column"}
        )
        self._target_cols = sorted({s.column for s in specs if s.level == TARGET_COLUMN})
        num_streams: list[PairValue] = []
        cat_streams: list[PairValue] = []

        def stream(pv: PairValue, cat: bool) -> int:
            streams = cat_streams if cat else num_streams
            if pv not in streams:
                streams.append(pv)
            return streams.index(pv)

        self._col_specs: list[Spec] = []  # the connection's own columns (no kernel op)
        num, cat = [], []  # (spec, op, a, b) / (spec, op, a)
        for s in specs:
            prim, src, pv = s.primitive, s.source, s.pair_value
            if s.level == TARGET_COLUMN:  # read off the connection's slot in features_at
                self._col_specs.append(s)
                continue
            if s.level == TARGET_LOG:
                if src.kind == "rows":
                    num.append((s, k.LOG_SECS, k.S_COUNT, 0))
                elif src.kind == "secs":
                    num.append((s, k.LOG_SECS, _SECS_KIND[prim], 0))
                elif src.kind == "attr":
                    if prim == "mode":
                        cat.append((s, k.LOG_MODE_ATTR, attr[src.column]))
                    else:
                        num.append((s, k.LOG_NUNIQUE_ATTR, attr[src.column], 0))
                elif prim == "mode":  # a pair column over the connection's rows
                    cat.append((s, k.COL_MODE_WEIGHTED, self._pair_cols.index(src.column)))
                else:
                    num.append((s, k.COL_NUNIQUE, self._pair_cols.index(src.column), 0))
            elif prim == "count":
                num.append((s, k.PAIRS_COUNT, 0, 0))
            elif pv.kind == "column":
                col = self._pair_cols.index(pv.column)
                if prim == "mode":
                    cat.append((s, k.COL_MODE, col))
                else:
                    num.append((s, k.COL_NUNIQUE, col, 0))
            elif pv.primitive == "mode":
                j = stream(pv, cat=True)
                if prim == "mode":
                    cat.append((s, k.PAIRS_CAT_MODE, j))
                else:
                    num.append((s, k.PAIRS_CAT_NUNIQUE, j, 0))
            else:
                num.append((s, k.PAIRS_AGG, stream(pv, cat=False), _SECS_KIND[prim]))
        s_kind, s_arg = [], []
        for pv in num_streams:
            if pv.primitive == "count":
                s_kind.append(k.S_COUNT), s_arg.append(0)
            elif pv.source.kind == "secs":
                s_kind.append(_SECS_KIND[pv.primitive]), s_arg.append(0)
            elif pv.source.kind == "attr":  # NUM_UNIQUE of an attribute over the pair's rows
                s_kind.append(k.S_NUNIQUE_ATTR), s_arg.append(attr[pv.source.column])
            else:  # NUM_UNIQUE of one of the pair's own columns over its rows: 1
                s_kind.append(k.S_ONE), s_arg.append(0)
        self._s_kind = np.array(s_kind, dtype=np.int64)
        self._s_arg = np.array(s_arg, dtype=np.int64)
        self._cs_attr = np.array([attr[pv.source.column] for pv in cat_streams], dtype=np.int64)
        self._s_mom = np.zeros(max(len(num_streams), 1), dtype=np.bool_)  # streams aggregated by STD/SKEW
        for _, op, a, b in num:
            if op == k.PAIRS_AGG and b in (k.S_STD, k.S_SKEW):
                self._s_mom[a] = True
        self._scratch = self._new_scratch(1024, 64)
        self._num = [s for s, *_ in num]
        self._num_op = np.array([op for _, op, _, _ in num], dtype=np.int64)
        self._num_a = np.array([a for _, _, a, _ in num], dtype=np.int64)
        self._num_b = np.array([b for *_, b in num], dtype=np.int64)
        self._num_default = np.array([0.0 if s.primitive in ("count", "sum") else np.nan for s in self._num])
        self._cat = [s for s, *_ in cat]
        self._cat_op = np.array([op for _, op, _ in cat], dtype=np.int64)
        self._cat_a = np.array([a for *_, a in cat], dtype=np.int64)

    # ================================================================== input
    def observe(self, event: Event) -> None:
        if self._live is not None and event.secs <= self._live:
            raise ValueError(f"late event: secs={event.secs} is not after {self._live}, where features were computed")
        self._raw.append(event)
        if self.fallback is not None:
            self.fallback.observe(event)

    def observe_many(self, events: Sequence[Event]) -> None:
        if not events:
            return
        if self._live is not None and min(map(_SECS, events)) <= self._live:
            raise ValueError(f"late event: secs={min(map(_SECS, events))} is not after {self._live}, "
                             "where features were computed")  # fmt: skip
        self._raw.extend(events)
        if self.fallback is not None:
            self.fallback.observe_many(events)

    def observe_frame(self, events: pd.DataFrame) -> None:
        if events.empty:
            return
        secs = events["secs"].to_numpy(dtype=np.int64)
        if self._live is not None and secs.min() <= self._live:
            raise ValueError(f"late event: secs={secs.min()} is not after {self._live}, where features were computed")
        self._materialize()
        # factorize each identity column and combine the codes (re-factorized so they stay small)
        key = np.zeros(len(events), dtype=np.int64)
        columns = []
        for f in IDENTITY_FIELDS:
            codes_f, uniq_f = pd.factorize(events[f].to_numpy(dtype=object))
            key = pd.factorize(key * len(uniq_f) + codes_f)[0]
            columns.append((codes_f, uniq_f))
        first = np.unique(key, return_index=True)[1]
        uniques = list(zip(*(u[c[first]] for c, u in columns), strict=True))
        slots = self._pair_slots(uniques)
        codes = np.full((len(events), _A), -1, dtype=np.int64)
        for j, a in enumerate(ATTRIBUTE_FIELDS):
            col_codes, col_uniques = pd.factorize(events[a].to_numpy(dtype=object), use_na_sentinel=True)
            lut = np.array(self.vocab[a].codes(list(col_uniques)), dtype=np.int64)
            if len(lut):
                codes[:, j] = np.where(col_codes >= 0, lut[np.maximum(col_codes, 0)], -1)
        self._add_pending(slots[key], secs, codes)
        if self.fallback is not None:
            self.fallback.observe_frame(events)

    def _materialize(self) -> None:
        """Turn events taken by :meth:`observe` into pending arrays."""
        raw = self._raw
        if not raw:
            return
        self._raw = []
        pairs = self._pair_slots(list(map(_IDENT, raw)))
        sigs = list(map(_ATTRS, raw))
        codes = list(map(self._sig_index.get, sigs))
        if None in codes:
            codes = [self._signature(sig) if c is None else c for sig, c in zip(sigs, codes, strict=True)]
        self._add_pending(
            pairs,
            np.fromiter(map(_SECS, raw), dtype=np.int64, count=len(raw)),
            np.array(codes, dtype=np.int64).reshape(len(raw), _A),
        )

    def _signature(self, values: tuple) -> tuple[int, ...]:
        codes = tuple(-1 if v is None else self.vocab[a].code(v) for a, v in zip(ATTRIBUTE_FIELDS, values, strict=True))
        self._sig_index[values] = codes
        return codes

    def _add_pending(self, pairs: np.ndarray, secs: np.ndarray, codes: np.ndarray) -> None:
        np.add.at(self.P.pend, pairs, 1)
        conns = self.P.conn[pairs]
        ordered = len(secs) < 2 or bool((secs[1:] >= secs[:-1]).all())
        if len(self._pd_secs) and secs.min() < self._pd_secs[-1]:
            ordered = False
        self._pd_pair = np.concatenate([self._pd_pair, pairs])
        self._pd_conn = np.concatenate([self._pd_conn, conns])
        self._pd_secs = np.concatenate([self._pd_secs, secs])
        self._pd_codes = np.concatenate([self._pd_codes, codes])
        if not ordered:  # events of different connections may interleave out of order
            o = np.argsort(self._pd_secs, kind="stable")
            self._pd_pair, self._pd_conn = self._pd_pair[o], self._pd_conn[o]
            self._pd_secs, self._pd_codes = self._pd_secs[o], self._pd_codes[o]
        self._observed += len(pairs)

    def _pair_slots(self, keys: Sequence[tuple]) -> np.ndarray:
        """Slots of pairs (src_name, dest_name, src_host, dest_host), creating new ones in bulk."""
        index = self._pair_index
        slots = list(map(index.get, keys))
        if None not in slots:
            return np.array(slots, dtype=np.int64)
        new_keys = list(dict.fromkeys(key for key, slot in zip(keys, slots, strict=True) if slot is None))
        m = len(new_keys)
        free = self._free_pairs
        reused = free[len(free) - min(m, len(free)) :]
        del free[len(free) - len(reused) :]
        fresh = list(range(len(self._pair_key), len(self._pair_key) + m - len(reused)))
        self._pair_key.extend([None] * len(fresh))
        new_slots = reused + fresh
        for key, slot in zip(new_keys, new_slots, strict=True):
            index[key] = slot
            self._pair_key[slot] = key
        self.P.ensure(len(self._pair_key))
        pos = self._conn_pos
        conn_ids = [SEPARATOR.join([key[i] for i in pos]) for key in new_keys]
        conns = [self._conn_slot(c, key) for c, key in zip(conn_ids, new_keys, strict=True)]
        slot_arr = np.array(new_slots, dtype=np.int64)
        conn_arr = np.array(conns, dtype=np.int64)
        self.P.conn[slot_arr] = conn_arr
        codes = np.empty((m, max(len(self._pair_cols), 1)), dtype=np.int64)
        for j, col in enumerate(self._pair_cols):
            value = self._column_value[col]
            codes[:, j] = self.vocab[col].codes([value(key, cid) for key, cid in zip(new_keys, conn_ids, strict=True)])
        self._link(slot_arr, conn_arr, codes)
        return np.array([index[key] if slot is None else slot for key, slot in zip(keys, slots, strict=True)],
                        dtype=np.int64)  # fmt: skip

    def _new_lists(self, size: int) -> tuple[np.ndarray, ...]:
        """An empty list pool: pair, window count, stale flag, numeric and categorical values,
        column codes."""
        return (
            np.full(size, -1, dtype=np.int64),
            np.zeros(size, dtype=np.int64),
            np.zeros(size, dtype=np.uint8),
            np.full((size, len(self._s_kind)), np.nan),
            np.full((size, len(self._cs_attr)), -1, dtype=np.int64),
            np.full((size, max(len(self._pair_cols), 1)), -1, dtype=np.int64),
        )

    def _link(self, pairs: np.ndarray, conns: np.ndarray, codes: np.ndarray) -> None:
        """Append new pairs to their connections' lists, growing the list pool when full."""
        C = self.C
        done = 0
        while True:
            done += k.link_pairs(pairs[done:], conns[done:], codes[done:], C.pstart, C.plen, C.pcap, *self._lists,
                                 self.P.at, self._meta)  # fmt: skip
            if done == len(pairs):
                return
            live = int(C.pcap.sum())
            new = self._new_lists(max(len(self._lists[0]), 2 * (live + 4 * (len(pairs) - done))))
            self._meta[k.LTOP] = k.compact_lists(C.pstart, C.plen, C.pcap, *self._lists, self.P.at, *new)
            self._lists = new

    def _grow_lanes(self, level: str) -> None:
        """Copy the live lanes of one level into a pool with room for them to double."""
        g = self.P if level == "P" else self.C
        lane, lane_i = self._lanes[level]
        live = g.lc > 0
        size = max(len(lane), 2 * (4 * int(g.n[live].sum()) + 4 * int(live.sum())))
        new = (np.zeros(size), np.zeros(size if len(lane_i) else 0, dtype=np.int64))
        self._meta[k.PTOP if level == "P" else k.CTOP] = k.compact_lanes(g.n, g.ls, g.lc, g.lo, lane, lane_i, *new)
        self._lanes[level] = new

    def _column_getter(self, col: str) -> Callable[[tuple, str], str]:
        """How a pair or connection column is read off a pair key and its connection id."""
        if col in IDENTITY_FIELDS:
            i = IDENTITY_FIELDS.index(col)
            return lambda key, _conn_id: key[i]
        if col == PAIR_INDEX:
            return lambda key, _conn_id: SEPARATOR.join(key)
        if col == self._index:
            return lambda _key, conn_id: conn_id
        raise KeyError(col)

    def _conn_slot(self, conn_id: str, key: tuple) -> int:
        slot = self._conn_index.get(conn_id)
        if slot is not None:
            return slot
        if self._free_conns:
            slot = self._free_conns.pop()
            self._conn_ids[slot] = conn_id
        else:
            slot = len(self._conn_ids)
            self._conn_ids.append(conn_id)
            self.C.ensure(slot + 1)
        self._conn_index[conn_id] = slot
        for col in self._target_cols:
            getattr(self.C, "col_" + col)[slot] = self.vocab[col].code(self._column_value[col](key, conn_id))
        return slot

    # ================================================================== kernel calls
    def _prepare(self) -> None:
        """Make room for every pending event and for the vocabularies' sizes."""
        S, meta = self.S, self._meta
        live = int(meta[k.SIZE] - meta[k.BASE])
        if live + len(self._pd_secs) > S.capacity:
            self._compact(force=True)
            S.ensure(int(meta[k.SIZE] - meta[k.BASE]) + len(self._pd_secs))
        sizes = np.array([len(self.vocab[a].values) for a in ATTRIBUTE_FIELDS], dtype=np.int64)
        if (sizes > self._a_cap).any():
            self._widen(sizes)
        if (sizes != self._a_len).any():
            for j, a in enumerate(ATTRIBUTE_FIELDS):
                self._a_rank[self._a_off[j] : self._a_off[j] + sizes[j]] = self.vocab[a].rank()
            self._a_len = sizes
        col_sizes = tuple(len(self.vocab[c].values) for c in self._pair_cols)
        bins, wbins, vcount = self._scratch[:3]
        if max(col_sizes, default=1) > len(bins) or int(sizes.max()) > len(vcount):
            self._scratch = self._new_scratch(2 * max(col_sizes, default=1), 2 * int(sizes.max()))
        if col_sizes != self._col_sizes:
            ranks = [self.vocab[c].rank() for c in self._pair_cols]
            self._col_off = np.r_[0, np.cumsum([len(r) for r in ranks])[:-1]].astype(np.int64)
            self._col_rank = np.concatenate(ranks).astype(np.int64) if ranks else _EMPTY
            self._col_sizes = col_sizes

    def _new_scratch(self, codes: int, attr_codes: int) -> tuple[np.ndarray, ...]:
        """The kernel's scratch: per pair-column code (x2), per attribute code, summaries."""
        return (
            np.zeros(max(codes, 1), dtype=np.int64),
            np.zeros(max(codes, 1), dtype=np.int64),
            np.zeros(max(attr_codes, 1), dtype=np.int64),
            np.zeros((max(len(self._pair_cols), 1), 3), dtype=np.int64),
            np.zeros((max(len(self._cs_attr), 1), 2), dtype=np.int64),
            np.zeros((10, max(len(self._s_kind), 1))),
        )

    def _widen(self, sizes: np.ndarray) -> None:
        """Give attributes whose vocabulary outgrew their columns more count columns."""
        cap = np.maximum(self._a_cap, 2 ** np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64))
        off = np.r_[0, np.cumsum(cap)[:-1]].astype(np.int64)
        for level in (self.P, self.C):
            old = level.cnt
            new = np.zeros((old.shape[0], int(cap.sum())), dtype=np.int32)
            for j in range(_A):
                new[:, off[j] : off[j] + self._a_cap[j]] = old[:, self._a_off[j] : self._a_off[j] + self._a_cap[j]]
            level.cnt = new
            level._specs["cnt"] = (np.int32, 0, int(cap.sum()))
        self._a_cap, self._a_off = cap, off
        self._a_rank = np.zeros(int(cap.sum()), dtype=np.int64)
        self._a_len = np.zeros(_A, dtype=np.int64)  # ranks are rewritten

    def _step(self, q_conn: np.ndarray, q_t: np.ndarray, until: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the kernel: rows for the sorted cutoffs, then live state to ``until``."""
        self._prepare()
        Q = len(q_t)
        out_num = np.empty((Q, len(self._num)))
        out_num[:] = self._num_default
        out_cat = np.full((Q, len(self._cat)), -1, dtype=np.int64)
        out_n = np.zeros(Q, dtype=np.int64)
        P, C, S, meta = self.P, self.C, self.S, self._meta
        done = 0
        while True:
            applied, answered = k.step(
                meta, self.window_secs, self.max_events or 0, until,
                S.secs, S.pair, S.conn, S.dead, S.codes,
                P.n, P.sum, P.pend, P.at, P.inz, P.cnt, P.ls, P.lc, P.lo, *self._lanes["P"],
                C.n, C.sum, C.npres, C.cnt, C.ls, C.lc, C.lo, *self._lanes["C"], C.pstart, C.plen,
                *self._lists, C.ndirty, P.zbuf,
                self._a_off, self._a_len, self._a_rank, self._col_rank, self._col_off,
                self._s_kind, self._s_arg, self._cs_attr, self._s_mom, self._num_op, self._num_a, self._num_b,
                self._cat_op, self._cat_a, *self._scratch,
                self._pd_pair, self._pd_conn, self._pd_secs, self._pd_codes,
                q_conn[done:], q_t[done:], out_num[done:], out_cat[done:], out_n[done:],
            )  # fmt: skip
            if applied:
                self._pd_pair, self._pd_conn = self._pd_pair[applied:], self._pd_conn[applied:]
                self._pd_secs, self._pd_codes = self._pd_secs[applied:], self._pd_codes[applied:]
            done += answered
            full = int(meta[k.FULL])
            if not full:
                break
            meta[k.FULL] = 0
            self._grow_lanes("P" if full == k.FULL_PAIR_LANES else "C")
        self._live = int(meta[k.LIVE]) if meta[k.LIVE] != k.NEVER else None
        return out_num, out_cat, out_n

    # ================================================================== output
    def features_at(self, cutoffs: Sequence[Cutoff]) -> pd.DataFrame:
        self._materialize()
        Q = len(cutoffs)
        ids = np.array([str(c) for c, _ in cutoffs], dtype=object)
        q_t = np.fromiter((t for _, t in cutoffs), dtype=np.int64, count=Q)
        q_conn = np.fromiter(map(self._conn_index.get, ids, repeat(-1)), dtype=np.int64, count=Q)
        if Q and self._watermark is not None and q_t.min() < self._watermark:
            raise ValueError(f"cutoff {q_t.min()} is before the watermark {self._watermark}")
        if Q and self._live is not None and q_t.min() < self._live:
            raise ValueError(f"cutoff {q_t.min()} is before {self._live}, where features were already computed: "
                             "ask cutoffs in time order")  # fmt: skip
        order = np.argsort(q_t, kind="stable")
        in_order = bool((order == np.arange(Q)).all())
        out_num, out_cat, out_n = self._step(q_conn[order], q_t[order], k.NEVER)
        if not in_order:
            inverse = np.empty(Q, dtype=np.int64)
            inverse[order] = np.arange(Q)
            out_num, out_cat, out_n = out_num[inverse], out_cat[inverse], out_n[inverse]
        columns: dict[str, object] = {}
        for f, spec in enumerate(self._num):
            columns[spec.name] = make_column(out_num[:, f], spec.output)
        cats: dict[str, list[tuple[str, np.ndarray]]] = {}
        for g, spec in enumerate(self._cat):
            cats.setdefault(spec.vocab, []).append((spec.name, out_cat[:, g]))
        for spec in self._col_specs:
            codes = np.where(out_n > 0, getattr(self.C, "col_" + spec.column)[np.maximum(q_conn, 0)], -1)
            cats.setdefault(spec.vocab, []).append((spec.name, codes))
        for vocab, cols in cats.items():
            for (name, _), col in zip(cols, self.vocab[vocab].categoricals([c for _, c in cols]), strict=True):
                columns[name] = col
        if self.fallback is not None:
            fb = self.fallback.features_at(cutoffs)
            for name in fb.columns:
                columns[name] = fb[name].array
        self._cutoffs += Q
        return frame_of(ids, q_t, self.kind, {n: columns[n] for n in self.names})

    # ================================================================== watermark
    def advance(self, watermark_secs: int) -> None:
        w_secs = int(watermark_secs)
        if self._watermark is not None and w_secs < self._watermark:
            raise ValueError(f"watermark cannot go back from {self._watermark} to {w_secs}")
        self._materialize()
        self._step(_EMPTY, _EMPTY, w_secs)
        self._drop_idle()
        self._watermark = w_secs
        self._compact()
        if self.fallback is not None:
            self.fallback.advance(w_secs)

    def _drop_idle(self) -> None:
        """Forget pairs (and connections) with nothing in the window and nothing pending."""
        P, C = self.P, self.C
        freed_p = np.empty(max(int(self._meta[k.NZERO]), 1), dtype=np.int64)
        freed_c = np.empty_like(freed_p)
        np_, nc = k.drop_idle(self._meta, P.zbuf, P.n, P.pend, P.inz, P.conn, P.at, P.lc, C.pstart, C.plen, C.pcap,
                              C.lc, C.ndirty, *self._lists, freed_p, freed_c)  # fmt: skip
        keys = self._pair_key
        freed = freed_p[:np_].tolist()
        list(map(self._pair_index.pop, map(keys.__getitem__, freed)))
        for slot in freed:
            keys[slot] = None
        self._free_pairs.extend(freed)
        for conn in freed_c[:nc].tolist():
            del self._conn_index[self._conn_ids[conn]]
            self._conn_ids[conn] = None
            self._free_conns.append(conn)

    def _compact(self, force: bool = False) -> None:
        """Move the window's events to the front of the store once half of it is dead."""
        meta, S = self._meta, self.S
        dead = int(meta[k.EVICT] - meta[k.BASE])
        if not dead or (not force and dead < max(INITIAL_POOL, S.capacity // 2)):
            return
        live = int(meta[k.SIZE] - meta[k.EVICT])
        for name in S._specs:
            arr = getattr(S, name)
            arr[:live] = arr[dead : dead + live]
        meta[k.BASE] = meta[k.EVICT]

    # ================================================================== stats
    def stats(self) -> EngineStats:
        pairs = len(self._pair_index)
        conns = len(self._conn_index)
        size = (
            self.P.nbytes()
            + self.C.nbytes()
            + self.S.nbytes()
            + sum(a.nbytes for lanes in self._lanes.values() for a in lanes)
            + sum(a.nbytes for a in self._lists)
            + self._pd_secs.nbytes * 3
            + self._pd_codes.nbytes
            + pairs * (sys.getsizeof((0,) * 4) + 100 + 8)  # key tuple, dict entry, list slot
            + conns * 150  # id, dict entry
            + sum(sys.getsizeof(v.values) + sys.getsizeof(v.index) for v in self.vocab.values())
        )
        return EngineStats(
            connections=conns,
            pairs=pairs,
            window_events=int(self.C.n.sum()),
            pending_events=len(self._pd_secs) + len(self._raw),
            events_observed=self._observed + len(self._raw),
            cutoffs_computed=self._cutoffs,
            capped_events=int(self._meta[k.CAPPED]),
            state_bytes=int(size),
        )
