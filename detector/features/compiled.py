"""The fast feature engine: saved DFS definitions compiled into incremental window state.

State, per name-host pair (every connection is a set of pairs; a pair belongs to one
connection), *committed* up to the watermark (see :mod:`.base` for the time contract):

* the count ``n`` and exact integer power sums of ``d = secs - ref`` (``d``, ``d**2``,
  ``d**3``) of the pair's events in the window (see :mod:`.numeric`);
* per attribute column (``auth_type`` ...), the window count of each value;
* the pair's window events as a chain through a time-ordered event store (oldest = MIN of
  ``secs``, newest = MAX; secs arrive in order, so the chain *is* the monotonic deque),
  which also tells what to subtract when an event leaves the window.

``features_at`` works on a batch of cutoffs at once with numpy: events observed since the
watermark (arrivals at ``secs``) and committed events leaving the window before the
latest cutoff (departures at ``secs + window``) become signed deltas, sorted per pair
and time; each cutoff ``(c, t)`` reads, for each pair of ``c``, committed state plus the
deltas of that pair up to ``t``. That gives the pair's window at ``t`` (rows with
``t - w < secs <= t``; a pair is present iff it has such a row, which is featuretools' rule
with last-time indexes), from which the plan's features are evaluated: per-pair values,
their aggregations over the connection's present pairs, and the connection's log-level
aggregations (pair states summed). ``advance(watermark)`` folds arrivals and departures up
to the watermark into committed state, applies the per-connection cap and drops pairs and
connections with nothing left in the window.

Features the plan cannot compile are computed by the featuretools engine (:mod:`.oracle`)
fed with the same events; a warning lists them.
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
    EngineStats,
    feature_names,
    frame,
    make_column,
)
from .oracle import OracleEngine
from .plan import TARGET_COLUMN, TARGET_LOG, PairValue, Spec, compile_plan

log = logging.getLogger(__name__)

_A = len(ATTRIBUTE_FIELDS)
_IDENT = attrgetter(*IDENTITY_FIELDS)
_ATTRS = attrgetter(*ATTRIBUTE_FIELDS)
#: rebase ``ref`` once the watermark is this far past it (keeps |d| < 2**20 s)
_REBASE_AFTER = 1 << 18
_MAX_WINDOW = 1 << 19


class Vocab:
    """Codes for the values of one categorical column; ranks give the sorted order."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.index: dict[object, int] = {}
        self._rank: np.ndarray | None = None

    def code(self, value: str) -> int:
        c = self.index.get(value)
        if c is None:
            c = self.index[value] = len(self.values)
            self.values.append(value)
            self._rank = None
        return c

    def rank(self) -> np.ndarray:
        """``rank[code]`` = position of the value in sorted order."""
        if self._rank is None or len(self._rank) != len(self.values):
            order = np.argsort(np.array(self.values, dtype=object), kind="stable")
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            self._rank = rank
        return self._rank

    def categorical(self, codes: np.ndarray) -> pd.Categorical:
        """Codes (-1 = missing) as a pandas Categorical with sorted categories."""
        rank = self.rank()
        cats = [self.values[i] for i in np.argsort(rank)]
        ranked = np.where(codes >= 0, rank[np.maximum(codes, 0)] if len(rank) else -1, -1)
        return pd.Categorical.from_codes(ranked, categories=cats)


class _Grow:
    """Arrays indexed by a slot, grown by doubling."""

    def __init__(self, capacity: int, **specs: tuple[object, object]) -> None:
        self.capacity = capacity
        self._specs = specs
        for name, (dtype, fill) in specs.items():
            setattr(self, name, np.full(capacity, fill, dtype=dtype))

    def ensure(self, size: int) -> None:
        if size <= self.capacity:
            return
        cap = max(size, 2 * self.capacity)
        for name, (dtype, fill) in self._specs.items():
            old = getattr(self, name)
            new = np.full(cap, fill, dtype=dtype)
            new[: len(old)] = old
            setattr(self, name, new)
        self.capacity = cap

    def nbytes(self) -> int:
        return sum(getattr(self, n).nbytes for n in self._specs)


class CompiledEngine:
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
        window_secs = int(window_secs)
        if not 1 <= window_secs <= _MAX_WINDOW:
            raise ValueError(f"window must be 1 .. {_MAX_WINDOW} seconds, got {window_secs}")
        self.defs = list(feature_defs)
        self.names = feature_names(self.defs)
        self.window_secs = window_secs
        self.kind = kind
        self.base_epoch = base_epoch
        self.max_events = max_events_per_connection
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
        self._conn_fields = connection_fields(kind)
        self._conn_pos = [IDENTITY_FIELDS.index(f) for f in self._conn_fields]
        self._index = target_index(kind)
        # vocabularies of every categorical column the engine may output or aggregate
        self.vocab: dict[str, Vocab] = {c: Vocab() for c in (*IDENTITY_FIELDS, *ATTRIBUTE_FIELDS)}
        self.vocab.setdefault(self._index, Vocab())
        self._pair_cols = self._columns_needed()
        # -- pairs and connections
        self._pair_index: dict[tuple, int] = {}
        self._pair_key: list[tuple | None] = []
        self._free_pairs: list[int] = []
        self.p = _Grow(
            1024,
            conn=(np.int64, -1),
            n=(np.int64, 0),
            s1=(np.int64, 0),
            s2=(object, 0),
            s3=(object, 0),
            head=(np.int64, -1),
            last=(np.int64, -1),
            last_secs=(np.int64, -1),
            pending=(np.int64, 0),
        )
        self._p_cols = {c: np.full(1024, -1, dtype=np.int64) for c in self._pair_cols}
        self._counts = {a: np.zeros((1024, 4), dtype=np.int64) for a in self._attrs}
        self._conn_index: dict[str, int] = {}
        self._conn_ids: list[str | None] = []
        self._conn_pairs: list[list[int] | None] = []
        self._free_conns: list[int] = []
        self.c = _Grow(1024, n=(np.int64, 0))
        self._c_cols = {c: np.full(1024, -1, dtype=np.int64) for c in self._target_cols_needed()}
        # -- event store (committed window events, time order), logical index = phys + base
        self.s = _Grow(
            4096,
            pair=(np.int64, -1),
            secs=(np.int64, 0),
            next=(np.int64, -1),
            flag=(np.bool_, False),
        )
        self._s_codes = np.zeros((4096, _A), dtype=np.int32)
        self._base = 0
        self._size = 0
        self._evict_ptr = 0
        # -- pending (observed, not committed) events
        self._raw: list[Event] = []
        self._pd_pair = np.empty(0, dtype=np.int64)
        self._pd_secs = np.empty(0, dtype=np.int64)
        self._pd_codes = np.empty((0, _A), dtype=np.int32)
        self._sig_index: dict[tuple, tuple[int, ...]] = {}
        self._ref: int | None = None
        self._watermark: int | None = None
        self._observed = 0
        self._cutoffs = 0
        self._capped = 0

    # ------------------------------------------------------------------ compile helpers
    def _columns_needed(self) -> list[str]:
        cols: set[str] = set()
        for s in self.plan.specs:
            if s.source is not None and s.source.kind == "pair_column":
                cols.add(s.source.column)
            pv = s.pair_value
            if pv is not None:
                if pv.kind == "column":
                    cols.add(pv.column)
                if pv.source is not None and pv.source.kind == "pair_column":
                    cols.add(pv.source.column)
        for c in cols:
            self.vocab.setdefault(c, Vocab())
        return sorted(cols)

    def _target_cols_needed(self) -> list[str]:
        cols = sorted({s.column for s in self.plan.specs if s.level == TARGET_COLUMN})
        for c in cols:
            self.vocab.setdefault(c, Vocab())
        return cols

    # ------------------------------------------------------------------ input
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
        keys = pd.MultiIndex.from_arrays([events[f].to_numpy(dtype=object) for f in IDENTITY_FIELDS])
        key_codes, uniques = keys.factorize()
        slots = np.fromiter((self._pair_slot(k) for k in uniques), dtype=np.int64, count=len(uniques))
        pairs = slots[key_codes]
        codes = np.full((len(events), _A), -1, dtype=np.int32)
        for j, a in enumerate(ATTRIBUTE_FIELDS):
            col_codes, col_uniques = pd.factorize(events[a].to_numpy(dtype=object), use_na_sentinel=True)
            vocab = self.vocab[a]
            lut = np.fromiter((vocab.code(v) for v in col_uniques), dtype=np.int64, count=len(col_uniques))
            codes[:, j] = np.where(col_codes >= 0, lut[np.maximum(col_codes, 0)] if len(lut) else -1, -1)
        self._add_pending(pairs, secs, codes)
        if self.fallback is not None:
            self.fallback.observe_frame(events)

    def _materialize(self) -> None:
        """Turn events taken by :meth:`observe` into pending arrays."""
        raw = self._raw
        if not raw:
            return
        self._raw = []
        index = self._pair_index
        keys = list(map(_IDENT, raw))
        pairs = [index.get(k) for k in keys]
        for i, p in enumerate(pairs):
            if p is None:
                pairs[i] = self._pair_slot(keys[i])
        sig_index = self._sig_index
        sigs = list(map(_ATTRS, raw))
        codes = [sig_index.get(s) for s in sigs]
        for i, c in enumerate(codes):
            if c is None:
                codes[i] = self._signature(sigs[i])
        self._add_pending(
            np.array(pairs, dtype=np.int64),
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
        self._pd_pair = np.concatenate([self._pd_pair, pairs])
        self._pd_secs = np.concatenate([self._pd_secs, secs])
        self._pd_codes = np.concatenate([self._pd_codes, codes])
        np.add.at(self.p.pending, pairs, 1)
        self._observed += len(pairs)

    def _pair_slot(self, key: tuple) -> int:
        slot = self._pair_index.get(key)
        if slot is not None:
            return slot
        if self._free_pairs:
            slot = self._free_pairs.pop()
            self._pair_key[slot] = key
        else:
            slot = len(self._pair_key)
            self._pair_key.append(key)
            self.p.ensure(slot + 1)
            self._grow_pair_tables(self.p.capacity)
        self._pair_index[key] = slot
        conn_id = SEPARATOR.join(key[i] for i in self._conn_pos)
        conn = self._conn_slot(conn_id, key)
        self.p.conn[slot] = conn
        self._conn_pairs[conn].append(slot)
        for col in self._pair_cols:
            self._p_cols[col][slot] = self.vocab[col].code(self._column_value(col, key, conn_id))
        return slot

    def _grow_pair_tables(self, capacity: int) -> None:
        for col, arr in self._p_cols.items():
            if len(arr) < capacity:
                new = np.full(capacity, -1, dtype=np.int64)
                new[: len(arr)] = arr
                self._p_cols[col] = new
        for a, mat in self._counts.items():
            if mat.shape[0] < capacity:
                new = np.zeros((capacity, mat.shape[1]), dtype=np.int64)
                new[: mat.shape[0]] = mat
                self._counts[a] = new

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
        if self._free_conns:
            slot = self._free_conns.pop()
            self._conn_ids[slot] = conn_id
            self._conn_pairs[slot] = []
        else:
            slot = len(self._conn_ids)
            self._conn_ids.append(conn_id)
            self._conn_pairs.append([])
            self.c.ensure(slot + 1)
            for col, arr in self._c_cols.items():
                if len(arr) < self.c.capacity:
                    new = np.full(self.c.capacity, -1, dtype=np.int64)
                    new[: len(arr)] = arr
                    self._c_cols[col] = new
        self._conn_index[conn_id] = slot
        for col in self._c_cols:
            self._c_cols[col][slot] = self.vocab[col].code(self._column_value(col, key, conn_id))
        return slot

    def _counts_for(self, attr: str) -> np.ndarray:
        """The (pairs x values) count matrix of ``attr``, widened to the vocabulary."""
        mat = self._counts[attr]
        width = len(self.vocab[attr].values)
        if mat.shape[1] < width:
            new = np.zeros((mat.shape[0], max(width, 2 * mat.shape[1])), dtype=np.int64)
            new[:, : mat.shape[1]] = mat
            self._counts[attr] = mat = new
        return mat

    # ------------------------------------------------------------------ output
    def features_at(self, cutoffs: Sequence[Cutoff]) -> pd.DataFrame:
        cutoffs = [(str(c), int(t)) for c, t in cutoffs]
        self._materialize()
        q_conn = np.fromiter((self._conn_index.get(c, -1) for c, _ in cutoffs), dtype=np.int64, count=len(cutoffs))
        q_t = np.fromiter((t for _, t in cutoffs), dtype=np.int64, count=len(cutoffs))
        if self._watermark is not None and len(q_t) and q_t.min() < self._watermark:
            raise ValueError(f"cutoff {q_t.min()} is before the watermark {self._watermark}")
        rows_q, rows_p = self._expand(q_conn)
        st = self._window_state(rows_p, q_t[rows_q])
        present = st["n"] > 0
        rows_q = rows_q[present]
        st = {k: v[present] for k, v in st.items()}
        st["pair"] = rows_p[present]
        starts = np.flatnonzero(np.r_[True, rows_q[1:] != rows_q[:-1]]) if len(rows_q) else np.empty(0, np.int64)
        groups = rows_q[starts]
        ev = _Evaluator(self, st, starts, groups, len(cutoffs), q_conn)
        columns = {spec.name: ev.column(spec) for spec in self.plan.specs}
        if self.fallback is not None:
            fb = self.fallback.features_at(cutoffs)
            for name in fb.columns:
                columns[name] = fb[name].array
        self._cutoffs += len(cutoffs)
        return frame(cutoffs, self.kind, {n: columns[n] for n in self.names})

    def _expand(self, q_conn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows (cutoff position, pair slot) for every pair of each cutoff's connection."""
        known = np.flatnonzero(q_conn >= 0)
        if not len(known):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        uconn, inv = np.unique(q_conn[known], return_inverse=True)
        lists = [self._conn_pairs[c] for c in uconn]
        lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        flat = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(lens.sum()))
        offs = np.cumsum(lens) - lens
        per_q = lens[inv]
        rows_q = np.repeat(known, per_q)
        ends = np.cumsum(per_q)
        pos = np.repeat(offs[inv] - (ends - per_q), per_q) + np.arange(int(ends[-1]) if len(ends) else 0)
        return rows_q, flat[pos]

    def _window_state(self, rows_p: np.ndarray, rows_t: np.ndarray) -> dict[str, np.ndarray]:
        """Window state of pair ``rows_p[i]`` at time ``rows_t[i]``: committed + deltas."""
        p, w, ref = self.p, self.window_secs, self._ref or 0
        out: dict[str, np.ndarray] = {
            "n": p.n[rows_p].copy(),
            "s1": p.s1[rows_p].copy(),
            "s2": p.s2[rows_p].copy(),
            "s3": p.s3[rows_p].copy(),
            "max": p.last_secs[rows_p].copy(),
            "min": self._head_secs(rows_p),
        }
        for a in self._attrs:
            out["cnt_" + a] = self._counts_for(a)[rows_p].copy()
        if not len(rows_p):
            return out
        t_max = int(rows_t.max())
        involved = np.zeros(p.capacity, dtype=bool)
        involved[rows_p] = True
        # arrivals: pending events of involved pairs up to the last cutoff
        pd_inv = involved[self._pd_pair]
        arr = np.flatnonzero(pd_inv & (self._pd_secs <= t_max))
        # departures: committed events and pending ones whose secs + w <= t_max
        lo, hi = self._evict_ptr - self._base, self._size - self._base
        k = int(np.searchsorted(self.s.secs[lo:hi], t_max - w, side="right"))
        sc = lo + np.flatnonzero(involved[self.s.pair[lo : lo + k]] & ~self.s.flag[lo : lo + k])
        pdep = np.flatnonzero(pd_inv & (self._pd_secs <= t_max - w))
        if not (len(arr) or len(sc) or len(pdep)):
            return out
        d_pair = np.concatenate([self._pd_pair[arr], self.s.pair[sc], self._pd_pair[pdep]])
        d_secs = np.concatenate([self._pd_secs[arr], self.s.secs[sc], self._pd_secs[pdep]])
        d_codes = np.concatenate([self._pd_codes[arr], self._s_codes[sc], self._pd_codes[pdep]])
        n_arr = len(arr)
        is_dep = np.r_[np.zeros(n_arr, bool), np.ones(len(sc) + len(pdep), bool)]
        d_time = d_secs + np.where(is_dep, w, 0)
        order = np.lexsort((d_time, d_pair))
        sp, stime, ssecs, sdep = d_pair[order], d_time[order], d_secs[order], is_dep[order]
        sign = np.where(sdep, -1, 1).astype(np.int64)
        span = t_max + 1
        key = sp * span + stime
        # per row: deltas of its pair up to its time are [gstart, idx)
        gstart = np.searchsorted(sp, rows_p, side="left")
        idx = np.searchsorted(key, rows_p * span + rows_t, side="right")
        has = idx > gstart

        window_sum = _WindowSum(gstart, idx)
        d = ssecs - ref
        out["n"] += window_sum(sign)
        out["s1"] += window_sum(sign * d)
        if self._need_std or self._need_skew:
            out["s2"] = out["s2"] + window_sum.exact_power(sign, d, 2)
        if self._need_skew:
            out["s3"] = out["s3"] + window_sum.exact_power(sign, d, 3)
        for a, j in zip(self._attrs, self._attr_pos, strict=True):
            width = self._counts_for(a).shape[1]
            c = d_codes[order, j].astype(np.int64)
            onehot = np.zeros((len(c), width), dtype=np.int64)
            ok = c >= 0
            onehot[np.flatnonzero(ok), c[ok]] = sign[ok]
            out["cnt_" + a] += window_sum(onehot)
        # MAX: the newest arrival up to t, else the newest committed event
        last_arr = np.maximum.accumulate(np.where(sdep, -1, np.arange(len(sp))))
        la = np.where(has, last_arr[np.maximum(idx - 1, 0)], -1)
        use = has & (la >= gstart)
        out["max"] = np.where(use, ssecs[np.maximum(la, 0)], out["max"])
        # MIN: the oldest event not yet departed at t, walking the pair's chain
        dep_pos = np.flatnonzero(sdep)
        dep_pair = sp[dep_pos]
        dstart = np.searchsorted(dep_pair, rows_p, side="left")
        ndep = np.searchsorted(dep_pair, rows_p, side="right") - dstart
        gone = window_sum(sdep.astype(np.int64))
        succ = self._successors(rows_p, sc, pdep, t_max)
        pick = np.minimum(dstart + gone, max(len(dep_pos) - 1, 0))
        from_dep = ssecs[dep_pos[pick]] if len(dep_pos) else np.zeros(len(rows_p), np.int64)
        moved = gone > 0
        out["min"] = np.where(moved, np.where(gone < ndep, from_dep, succ), out["min"])
        return out

    def _head_secs(self, pairs: np.ndarray) -> np.ndarray:
        """secs of each pair's oldest committed window event (or of its first pending one)."""
        head = self.p.head[pairs]
        out = np.where(head >= 0, self.s.secs[np.maximum(head - self._base, 0)], -1)
        none = np.flatnonzero(head < 0)
        if len(none):
            out[none] = self._first_pending(pairs[none], np.zeros(len(none), np.int64))
        return out

    def _first_pending(self, pairs: np.ndarray, skip: np.ndarray) -> np.ndarray:
        """secs of the (skip+1)-th pending event of each pair (-1 if none)."""
        order = np.lexsort((self._pd_secs, self._pd_pair))
        sp = self._pd_pair[order]
        start = np.searchsorted(sp, pairs, side="left")
        end = np.searchsorted(sp, pairs, side="right")
        pos = start + skip
        ok = pos < end
        out = np.full(len(pairs), -1, dtype=np.int64)
        out[ok] = self._pd_secs[order[pos[ok]]]
        return out

    def _successors(self, rows_p: np.ndarray, sc: np.ndarray, pdep: np.ndarray, t_max: int) -> np.ndarray:
        """Per row's pair: secs of the first chain event that does not depart by ``t_max``."""
        upairs = np.unique(rows_p)
        nxt = self.p.head[upairs].copy()
        if len(sc):
            sp = self.s.pair[sc]
            lastc = np.full(self.p.capacity, -1, dtype=np.int64)
            np.maximum.at(lastc, sp, sc + self._base)
            lc = lastc[upairs]
            has = lc >= 0
            nxt[has] = self.s.next[lc[has] - self._base]
        out = np.full(len(upairs), -1, dtype=np.int64)
        com = nxt >= 0
        out[com] = self.s.secs[nxt[com] - self._base]
        if (~com).any():
            npd = np.zeros(self.p.capacity, dtype=np.int64)
            np.add.at(npd, self._pd_pair[pdep], 1)
            pp = upairs[~com]
            out[~com] = self._first_pending(pp, npd[pp])
        return out[np.searchsorted(upairs, rows_p)]

    # ------------------------------------------------------------------ watermark
    def advance(self, watermark_secs: int) -> None:
        w_secs = int(watermark_secs)
        if self._watermark is not None and w_secs < self._watermark:
            raise ValueError(f"watermark cannot go back from {self._watermark} to {w_secs}")
        self._materialize()
        touched: list[np.ndarray] = []
        due = self._pd_secs <= w_secs
        if due.any():
            idx = np.flatnonzero(due)
            idx = idx[np.argsort(self._pd_secs[idx], kind="stable")]
            pairs, secs, codes = self._pd_pair[idx], self._pd_secs[idx], self._pd_codes[idx]
            keep = ~due
            self._pd_pair, self._pd_secs, self._pd_codes = (
                self._pd_pair[keep],
                self._pd_secs[keep],
                self._pd_codes[keep],
            )
            np.subtract.at(self.p.pending, pairs, 1)
            self._append_store(pairs, secs, codes)
            self._apply(pairs, secs, codes, +1)
            touched.append(pairs)
        touched.append(self._evict_until(w_secs - self.window_secs))
        if self.max_events is not None and touched[0].size:
            touched.append(self._enforce_cap(np.unique(self.p.conn[touched[0]])))
        self._drop_idle(np.unique(np.concatenate(touched)))
        self._watermark = w_secs
        self._maybe_rebase(w_secs)
        self._maybe_compact()
        if self.fallback is not None:
            self.fallback.advance(w_secs)

    def _append_store(self, pairs: np.ndarray, secs: np.ndarray, codes: np.ndarray) -> None:
        m = len(pairs)
        self._ensure_store(self._size - self._base + m)
        lo = self._size - self._base
        s = self.s
        s.pair[lo : lo + m] = pairs
        s.secs[lo : lo + m] = secs
        s.next[lo : lo + m] = -1
        s.flag[lo : lo + m] = False
        self._s_codes[lo : lo + m] = codes
        logical = self._size + np.arange(m)
        self._size += m
        order = np.argsort(pairs, kind="stable")
        sp, li = pairs[order], logical[order]
        same = sp[1:] == sp[:-1]
        s.next[li[:-1][same] - self._base] = li[1:][same]
        first = np.flatnonzero(np.r_[True, ~same])
        last = np.r_[first[1:] - 1, len(sp) - 1]
        gp = sp[first]
        prev = self.p.last[gp]
        link = prev >= self._base
        s.next[prev[link] - self._base] = li[first][link]
        empty = self.p.head[gp] < 0
        self.p.head[gp[empty]] = li[first][empty]
        self.p.last[gp] = li[last]
        self.p.last_secs[gp] = s.secs[li[last] - self._base]

    def _ensure_store(self, size: int) -> None:
        if size > self.s.capacity:
            self.s.ensure(size)
            new = np.zeros((self.s.capacity, _A), dtype=np.int32)
            new[: len(self._s_codes)] = self._s_codes
            self._s_codes = new

    def _apply(self, pairs: np.ndarray, secs: np.ndarray, codes: np.ndarray, sign: int) -> None:
        """Add (sign=+1) or remove (-1) events from the committed state of their pairs."""
        if not len(pairs):
            return
        order = np.argsort(pairs, kind="stable")
        sp = pairs[order]
        first = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
        gp = sp[first]
        d = secs[order] - self._ref
        cnt = np.diff(np.r_[first, len(sp)])
        p = self.p
        p.n[gp] += sign * cnt
        p.s1[gp] += sign * np.add.reduceat(d, first)
        do = d.astype(object)
        if self._need_std or self._need_skew:
            p.s2[gp] = p.s2[gp] + sign * np.add.reduceat(do * do, first)
        if self._need_skew:
            p.s3[gp] = p.s3[gp] + sign * np.add.reduceat(do * do * do, first)
        np.add.at(self.c.n, p.conn[gp], sign * cnt)
        for a, j in zip(self._attrs, self._attr_pos, strict=True):
            mat = self._counts_for(a)
            c = codes[:, j]
            ok = c >= 0
            np.add.at(mat, (pairs[ok], c[ok]), sign)

    def _evict_until(self, oldest: int) -> np.ndarray:
        """Remove committed events with ``secs <= oldest``; returns the pairs touched."""
        lo, hi = self._evict_ptr - self._base, self._size - self._base
        k = int(np.searchsorted(self.s.secs[lo:hi], oldest, side="right"))
        if not k:
            return np.empty(0, np.int64)
        phys = lo + np.flatnonzero(~self.s.flag[lo : lo + k])
        self._evict_ptr += k
        return self._remove(phys)

    def _remove(self, phys: np.ndarray) -> np.ndarray:
        """Remove store events (a prefix of each pair's chain) from committed state."""
        if not len(phys):
            return np.empty(0, np.int64)
        s = self.s
        pairs = s.pair[phys]
        self._apply(pairs, s.secs[phys], self._s_codes[phys], -1)
        s.flag[phys] = True
        last = np.full(self.p.capacity, -1, dtype=np.int64)
        np.maximum.at(last, pairs, phys)
        gp = np.unique(pairs)
        self.p.head[gp] = s.next[last[gp]]
        return gp

    def _enforce_cap(self, conns: np.ndarray) -> np.ndarray:
        """Drop the oldest events of connections over the cap (featuretools would keep them)."""
        over = conns[self.c.n[conns] > self.max_events]
        if not len(over):
            return np.empty(0, np.int64)
        drop: list[int] = []
        s, base = self.s, self._base
        for conn in over:
            excess = int(self.c.n[conn]) - self.max_events
            heads = {p: int(self.p.head[p]) for p in self._conn_pairs[conn] if self.p.head[p] >= 0}
            while excess > 0 and heads:
                p = min(heads, key=lambda q: s.secs[heads[q] - base])
                e = heads[p]
                drop.append(e - base)
                nxt = int(s.next[e - base])
                if nxt >= 0:
                    heads[p] = nxt
                else:
                    del heads[p]
                excess -= 1
        self._capped += len(drop)
        if drop:
            log.warning(
                "%d connection(s) over the cap of %d window events: dropped %d oldest event(s)",
                len(over),
                self.max_events,
                len(drop),
            )
        return self._remove(np.array(sorted(drop), dtype=np.int64))

    def _drop_idle(self, pairs: np.ndarray) -> None:
        """Forget pairs (and connections) with nothing in the window and nothing pending."""
        p = self.p
        idle = pairs[(p.n[pairs] == 0) & (p.pending[pairs] == 0)]
        for slot in idle.tolist():
            key = self._pair_key[slot]
            if key is None:
                continue
            del self._pair_index[key]
            self._pair_key[slot] = None
            conn = int(p.conn[slot])
            members = self._conn_pairs[conn]
            members.remove(slot)
            if not members:
                del self._conn_index[self._conn_ids[conn]]
                self._conn_ids[conn] = None
                self._conn_pairs[conn] = None
                self._free_conns.append(conn)
            p.conn[slot] = -1
            p.s1[slot] = 0
            p.s2[slot] = 0
            p.s3[slot] = 0
            p.head[slot] = -1
            p.last[slot] = -1
            p.last_secs[slot] = -1
            self._free_pairs.append(slot)

    def _maybe_rebase(self, w_secs: int) -> None:
        """Move ``ref`` forward so that |secs - ref| stays small (exactly, in Python ints)."""
        if self._ref is None or w_secs - self._ref <= _REBASE_AFTER:
            return
        new_ref = w_secs - self.window_secs
        shift = new_ref - self._ref
        if shift <= 0:
            return
        p = self.p
        live = np.flatnonzero(p.n[: len(self._pair_key)] > 0)
        n = p.n[live].astype(object)
        s1, s2, s3 = p.s1[live].astype(object), p.s2[live], p.s3[live]
        p.s3[live] = s3 - 3 * shift * s2 + 3 * shift * shift * s1 - n * shift**3
        p.s2[live] = s2 - 2 * shift * s1 + n * shift * shift
        p.s1[live] = (s1 - n * shift).astype(np.int64)
        self._ref = new_ref

    def _maybe_compact(self) -> None:
        dead = self._evict_ptr - self._base
        if dead < max(1 << 16, self.s.capacity // 2):
            return
        live = self._size - self._evict_ptr
        s = self.s
        for name in ("pair", "secs", "next", "flag"):
            arr = getattr(s, name)
            arr[:live] = arr[dead : dead + live]
        self._s_codes[:live] = self._s_codes[dead : dead + live]
        self._base = self._evict_ptr

    # ------------------------------------------------------------------ stats
    def stats(self) -> EngineStats:
        pairs = len(self._pair_index)
        per_key = sys.getsizeof((0,) * 4) + 100  # key tuple + dict entry (strings are shared)
        size = (
            self.p.nbytes()
            + sum(a.nbytes for a in self._p_cols.values())
            + sum(m.nbytes for m in self._counts.values())
            + self.c.nbytes()
            + self.s.nbytes()
            + self._s_codes.nbytes
            + self._pd_pair.nbytes * 2
            + self._pd_codes.nbytes
            + pairs * (per_key + 2 * 32)  # + Python ints of s2, s3
            + len(self._conn_index) * 150
            + sum(sys.getsizeof(v) for v in self.vocab.values())
        )
        return EngineStats(
            connections=len(self._conn_index),
            pairs=pairs,
            window_events=int(self.c.n.sum()),
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


class _Evaluator:
    """Evaluates compiled specs for one batch of cutoffs (present rows grouped by cutoff)."""

    def __init__(
        self,
        engine: CompiledEngine,
        st: dict[str, np.ndarray],
        starts: np.ndarray,
        groups: np.ndarray,
        n_cutoffs: int,
        q_conn: np.ndarray,
    ) -> None:
        self.e = engine
        self.st = st
        self.starts = starts
        self.groups = groups  # cutoff position of each present group
        self.Q = n_cutoffs
        self.q_conn = q_conn
        self.G = len(groups)
        self._pair_cache: dict[PairValue, np.ndarray] = {}
        self._conn_cache: dict[str, object] = {}
        self.total = st["s1"] + st["n"] * (engine._ref or 0)  # exact sum of secs per row

    # -- assembly
    def column(self, spec: Spec):
        if spec.level == TARGET_COLUMN:
            codes = np.full(self.Q, -1, dtype=np.int64)
            if self.G:
                codes[self.groups] = self.e._c_cols[spec.column][self.q_conn[self.groups]]
            return self.e.vocab[spec.vocab].categorical(codes)
        values = self._target_log(spec) if spec.level == TARGET_LOG else self._target_pairs(spec)
        return self._fill(spec, values)

    def _fill(self, spec: Spec, values: np.ndarray):
        if spec.output == "category":
            codes = np.full(self.Q, -1, dtype=np.int64)
            codes[self.groups] = values
            return self.e.vocab[spec.vocab].categorical(codes)
        default = 0.0 if spec.primitive in ("count", "sum") else np.nan
        out = np.full(self.Q, default)
        out[self.groups] = values
        return make_column(out, spec.output)

    # -- connection level, over log rows (pair states summed)
    def _sum(self, key: str) -> np.ndarray:
        if key not in self._conn_cache:
            v = self.st[key] if key != "total" else self.total
            self._conn_cache[key] = np.add.reduceat(v, self.starts, axis=0) if self.G else v[:0]
        return self._conn_cache[key]

    def _target_log(self, spec: Spec) -> np.ndarray:
        prim, src = spec.primitive, spec.source
        if not self.G:
            return np.empty(0)
        if src.kind == "rows":
            return self._sum("n").astype(np.float64)
        if src.kind == "secs":
            n = self._sum("n")
            if prim == "sum":
                return self._sum("total").astype(np.float64)
            if prim == "mean":
                return self._sum("total").astype(np.float64) / n
            if prim == "min":
                return np.minimum.reduceat(self.st["min"], self.starts).astype(np.float64)
            if prim == "max":
                return np.maximum.reduceat(self.st["max"], self.starts).astype(np.float64)
            if prim == "std":
                return nm.std_from_sums(n, self._sum("s1"), self._sum("s2"))
            if prim == "skew":
                return nm.skew_from_sums(n, self._sum("s1"), self._sum("s2"), self._sum("s3"), self._sum("total"))
        if src.kind == "attr":
            counts = self._sum("cnt_" + src.column)
            if prim == "num_unique":
                return (counts > 0).sum(axis=1).astype(np.float64)
            if prim == "mode":
                return nm.row_mode(counts, self.e.vocab[src.column].rank())
        if src.kind == "pair_column":
            codes = self.e._p_cols[src.column][self.st["pair"]]
            if prim == "num_unique":
                return nm.g_nunique(codes, self.starts, self.G).astype(np.float64)
            if prim == "mode":
                return nm.g_mode(codes, self.starts, self.G, self.e.vocab[src.column].rank(), self.st["n"])
        raise AssertionError(f"uncompiled {spec}")

    # -- connection level, over present pairs
    def _pair_values(self, pv: PairValue) -> np.ndarray:
        if pv in self._pair_cache:
            return self._pair_cache[pv]
        st = self.st
        if pv.kind == "column":
            v = self.e._p_cols[pv.column][st["pair"]]
        else:
            prim, src = pv.primitive, pv.source
            n = st["n"]
            if src.kind == "rows":
                v = n.astype(np.float64)
            elif src.kind == "secs":
                v = {
                    "sum": lambda: self.total.astype(np.float64),
                    "mean": lambda: self.total.astype(np.float64) / n,
                    "min": lambda: st["min"].astype(np.float64),
                    "max": lambda: st["max"].astype(np.float64),
                    "std": lambda: nm.std_from_sums(n, st["s1"], st["s2"]),
                    "skew": lambda: nm.skew_from_sums(n, st["s1"], st["s2"], st["s3"], self.total),
                }[prim]()
            elif src.kind == "attr":
                counts = st["cnt_" + src.column]
                if prim == "num_unique":
                    v = (counts > 0).sum(axis=1).astype(np.float64)
                else:
                    v = nm.row_mode(counts, self.e.vocab[src.column].rank())
            else:  # a pair column seen through the pair's own rows
                codes = self.e._p_cols[src.column][st["pair"]]
                v = np.ones(len(codes)) if prim == "num_unique" else codes
        self._pair_cache[pv] = v
        return v

    def _target_pairs(self, spec: Spec) -> np.ndarray:
        if not self.G:
            return np.empty(0)
        prim, pv = spec.primitive, spec.pair_value
        if prim == "count":
            return np.diff(np.r_[self.starts, len(self.st["n"])]).astype(np.float64)
        x = self._pair_values(pv)
        if prim == "num_unique":
            return nm.g_nunique(x, self.starts, self.G).astype(np.float64)
        if prim == "mode":
            return nm.g_mode(x, self.starts, self.G, self.e.vocab[spec.vocab].rank())
        return {
            "sum": nm.g_sum,
            "mean": nm.g_mean,
            "min": nm.g_min,
            "max": nm.g_max,
            "std": nm.g_std,
            "skew": nm.g_skew,
        }[prim](x, self.starts)
