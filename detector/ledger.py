"""What the detector remembers besides the feature windows, kept in arrays.

* **Connections**: slot per connection id, with its partition, how many events it has had
  (positions 0, 1, 2, ... in processing order), its last second, its last event and the
  time of its last alert.
* **Events**: a row per event (absolute row numbers; rows older than anything still
  needed are compacted away), with its connection, ``log_id``, the next row of the same
  connection, and its label once the label topic has delivered it (and when).
* **Pending cutoffs**: scored cutoffs waiting for their label, in creation order, with the
  online model's inputs once their features are computed.

The label of a cutoff is ``training.labels``' definition, evaluated for many cutoffs at
once: walk ``lead`` links from the cutoff's event, read the next ``window`` labels, and
apply :func:`training.labels.resolve_window`'s rules (``tests/test_ledger.py`` checks the
two agree). A connection's cutoffs are learnt in order: one waits while an earlier cutoff
of its connection is unresolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import compress

import numpy as np

from training.labels import MIN_LABEL_EVENTS, LabelSpec

NO_LABEL = -1  # the event's label has not arrived
NO_EVENT = -2  # (in a label window) the event does not exist yet
NO_ALERT = np.iinfo(np.int64).min
_I8 = np.int64


def _room(arr: np.ndarray, size: int, fill: object) -> np.ndarray:
    """``arr`` with room for ``size`` rows (doubling), new rows set to ``fill``."""
    if size <= len(arr):
        return arr
    new = np.full((max(size, 2 * len(arr), 64), *arr.shape[1:]), fill, dtype=arr.dtype)
    new[: len(arr)] = arr
    return new


@dataclass
class Cutoffs:
    """New eligible cutoffs, ordered by (second, connection id)."""

    seq: np.ndarray  # their numbers (creation order)
    conn: list[str]
    slot: np.ndarray
    secs: np.ndarray
    k: np.ndarray  # position of the cutoff's event in its connection
    log_id: np.ndarray  # the largest log_id of the connection's events in that second

    def __len__(self) -> int:
        return len(self.seq)


class Ledger:
    """See the module docstring."""

    _CONN = {"c_part": -1, "c_n": 0, "c_last_secs": -1, "c_last_row": -1, "c_last_alert": NO_ALERT, "c_touched": 0}
    _ROW = {"r_conn": -1, "r_logid": -1, "r_nxt": -1, "r_lab": NO_LABEL, "r_arr": -1}
    _PEND = {"p_seq": -1, "p_row": -1, "p_conn": -1, "p_secs": -1, "p_alive": 0}

    def __init__(self, spec: LabelSpec, n_inputs: int) -> None:
        self.spec = spec
        self.index: dict[str, int] = {}
        self.ids: list[str | None] = []
        self.free: list[int] = []
        for name in self._CONN:
            setattr(self, name, np.zeros(0, dtype=_I8))
        self.base = 0  # absolute number of the first row held
        self.n_rows = 0  # absolute number of the next row
        for name in self._ROW:
            setattr(self, name, np.zeros(0, dtype=_I8))
        self.row_of: dict[int, int] = {}  # log_id -> row
        self.orphans: dict[int, tuple[int, int]] = {}  # log_id -> (label, arrival) of events not seen yet
        self.n_pending = 0  # entries in the pending arrays, learnt ones included until compacted
        self.n_learnt = 0  # of those, learnt (p_alive False)
        self.next_seq = 0
        for name in self._PEND:
            setattr(self, name, np.zeros(0, dtype=_I8))
        self.p_x = np.zeros((0, n_inputs))
        self.p_has_x = np.zeros(0, dtype=bool)

    # ------------------------------------------------------------------ connections
    def __len__(self) -> int:
        return len(self.index)

    def slots(self, conn_ids: list[str], partitions: list[int]) -> np.ndarray:
        """Slots of these connection ids, creating the new ones (on their partition)."""
        got = list(map(self.index.get, conn_ids))
        if None in got:
            for i, slot in enumerate(got):
                if slot is None:
                    got[i] = self.index.get(conn_ids[i])
                    if got[i] is None:
                        got[i] = self._new_conn(conn_ids[i], partitions[i])
        return np.array(got, dtype=_I8)

    def _new_conn(self, conn_id: str, partition: int) -> int:
        if self.free:
            slot = self.free.pop()
            self.ids[slot] = conn_id
        else:
            slot = len(self.ids)
            self.ids.append(conn_id)
            for name, fill in self._CONN.items():
                setattr(self, name, _room(getattr(self, name), slot + 1, fill))
        for name, fill in self._CONN.items():
            getattr(self, name)[slot] = fill
        self.c_part[slot] = partition
        self.index[conn_id] = slot
        return slot

    def drop_connections(self, slots: np.ndarray) -> None:
        """Forget these connections and their pending cutoffs."""
        if not len(slots):
            return
        gone = np.zeros(len(self.ids), dtype=bool)
        gone[slots] = True
        self._keep_pending(~gone[self.p_conn[: self.n_pending]] & (self.p_alive[: self.n_pending] != 0))
        for slot in slots.tolist():
            del self.index[self.ids[slot]]
            self.ids[slot] = None
            self.free.append(slot)
            self.c_last_row[slot] = -1
            self.c_last_secs[slot] = -1

    def idle(self, horizon: int) -> np.ndarray:
        """Slots of connections whose last event is before ``horizon``."""
        live = self.c_last_secs[: len(self.ids)]
        return np.flatnonzero((live >= 0) & (live < horizon))

    def of_partitions(self, partitions: set[int]) -> np.ndarray:
        """Slots of live connections on these partitions."""
        part = self.c_part[: len(self.ids)]
        live = np.array([i is not None for i in self.ids], dtype=bool)
        return np.flatnonzero(live & np.isin(part, list(partitions)))

    # ------------------------------------------------------------------ events
    def add_events(self, slots: np.ndarray, secs: np.ndarray, log_ids: np.ndarray) -> Cutoffs:
        """Append events (processing order, whole seconds only) and return the cutoffs they
        close: one per connection and second, at its last event, if at least
        ``min_events`` events came before it."""
        n = len(slots)
        start = self.n_rows - self.base
        for name, fill in self._ROW.items():
            setattr(self, name, _room(getattr(self, name), start + n, fill))
        rows = np.arange(self.n_rows, self.n_rows + n, dtype=_I8)
        self.r_conn[start : start + n] = slots
        self.r_logid[start : start + n] = log_ids
        self.row_of.update(zip(log_ids.tolist(), rows.tolist(), strict=True))
        self.n_rows += n
        if self.orphans:
            self._adopt(log_ids, rows)
        o = np.argsort(slots, kind="stable")
        ss, so, ro, lo = slots[o], secs[o], rows[o], log_ids[o]
        first = np.ones(n, dtype=bool)
        first[1:] = ss[1:] != ss[:-1]
        starts = np.flatnonzero(first)
        ends = np.r_[starts[1:], n] - 1
        group = np.cumsum(first) - 1
        conns = ss[starts]
        pos = self.c_n[ss] + (np.arange(n) - starts[group])
        prev = np.empty(n, dtype=_I8)
        prev[1:] = ro[:-1]
        prev[starts] = self.c_last_row[conns]
        linked = prev >= self.base
        self.r_nxt[prev[linked] - self.base] = ro[linked]
        self.c_n[conns] += ends - starts + 1
        self.c_last_row[conns] = ro[ends]
        self.c_last_secs[conns] = so[ends]
        self.c_touched[conns] = 1  # a new event can decide a label whose window was too short
        # the last event of each (connection, second), and the largest log_id of that second
        last = np.ones(n, dtype=bool)
        last[:-1] = (ss[1:] != ss[:-1]) | (so[1:] != so[:-1])
        sec_first = np.flatnonzero(np.r_[True, last[:-1]])
        top_log = np.maximum.reduceat(lo, sec_first)
        cut = np.flatnonzero(last)
        eligible = pos[cut] >= self.spec.min_events
        cut, top_log = cut[eligible], top_log[eligible]
        c_slot, c_secs = ss[cut], so[cut]
        ids = [self.ids[s] for s in c_slot.tolist()]
        order = [i for *_, i in sorted(zip(c_secs.tolist(), ids, range(len(ids)), strict=True))]
        cut, top_log = cut[order], top_log[order]
        m = len(cut)
        seq = np.arange(self.next_seq, self.next_seq + m, dtype=_I8)
        self.next_seq += m
        out = Cutoffs(seq=seq, conn=[ids[i] for i in order], slot=ss[cut], secs=so[cut], k=pos[cut], log_id=top_log)
        self._append_pending(out, ro[cut])
        return out

    def _append_pending(self, cuts: Cutoffs, rows: np.ndarray) -> None:
        P, m = self.n_pending, len(cuts)
        for name, fill in self._PEND.items():
            setattr(self, name, _room(getattr(self, name), P + m, fill))
        self.p_x = _room(self.p_x, P + m, np.nan)
        self.p_has_x = _room(self.p_has_x, P + m, False)
        self.p_seq[P : P + m] = cuts.seq
        self.p_row[P : P + m] = rows
        self.p_conn[P : P + m] = cuts.slot
        self.p_secs[P : P + m] = cuts.secs
        self.p_alive[P : P + m] = 1
        self.p_has_x[P : P + m] = False
        self.n_pending = P + m

    def set_inputs(self, seq: np.ndarray, x: np.ndarray) -> None:
        """The online model's inputs of cutoffs (by number) that are still pending."""
        P = self.n_pending
        pos = np.searchsorted(self.p_seq[:P], seq)
        ok = pos < P
        ok[ok] = self.p_seq[pos[ok]] == seq[ok]
        self.p_x[pos[ok]] = x[ok]
        self.p_has_x[pos[ok]] = True

    # ------------------------------------------------------------------ labels
    def apply_labels(self, log_ids: list[int], malicious: list[bool], arrivals: list[int]) -> np.ndarray:
        """Record arrived labels; return the slots of the connections they concern."""
        rows = list(map(self.row_of.get, log_ids))
        if None in rows:
            for log_id, row, mal, arr in zip(log_ids, rows, malicious, arrivals, strict=True):
                if row is None:  # its event is not here (yet): kept until it comes
                    self.orphans[log_id] = (int(mal), arr)
            keep = [r is not None for r in rows]
            rows = list(compress(rows, keep))
            malicious = list(compress(malicious, keep))
            arrivals = list(compress(arrivals, keep))
        if not rows:
            return np.zeros(0, dtype=_I8)
        r = np.array(rows, dtype=_I8) - self.base
        self.r_lab[r] = np.array(malicious, dtype=_I8)
        self.r_arr[r] = np.array(arrivals, dtype=_I8)
        return np.unique(self.r_conn[r])

    def _adopt(self, log_ids: np.ndarray, rows: np.ndarray) -> None:
        for log_id, row in zip(log_ids.tolist(), rows.tolist(), strict=True):
            found = self.orphans.pop(log_id, None)
            if found is not None:
                self.r_lab[row - self.base], self.r_arr[row - self.base] = found

    def _walk(self, rows: np.ndarray, steps: int) -> np.ndarray:
        for _ in range(steps):
            ok = rows >= 0
            rows = rows.copy()
            rows[ok] = self.r_nxt[rows[ok] - self.base]
        return rows

    def _windows(self, pos: np.ndarray, field: np.ndarray, missing: int) -> np.ndarray:
        """``field`` of the label-window events of pending cutoffs (``missing``: no event)."""
        cur = self._walk(self.p_row[pos], self.spec.lead)
        out = np.full((len(pos), self.spec.window), missing, dtype=_I8)
        for j in range(self.spec.window):
            ok = cur >= 0
            out[ok, j] = field[cur[ok] - self.base]
            cur = self._walk(cur, 1)
        return out

    def resolve(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pending cutoffs whose label is decided and that have no undecided earlier cutoff of
        their connection: (positions ordered by (second, connection id), labels). Only the
        connections given (those that got labels) and those with new events since the last
        call can have any."""
        P = self.n_pending
        flag = self.c_touched[: len(self.ids)] != 0
        flag[slots] = True
        self.c_touched[:] = 0
        if not P:
            return np.zeros(0, dtype=_I8), np.zeros(0, dtype=bool)
        sel = np.flatnonzero(flag[self.p_conn[:P]] & (self.p_alive[:P] != 0))
        if not len(sel):
            return sel, np.zeros(0, dtype=bool)
        labs = self._windows(sel, self.r_lab, NO_EVENT)
        exist = (labs != NO_EVENT).sum(axis=1)
        y = (labs == 1).any(axis=1)
        waiting = (labs == NO_LABEL).any(axis=1)
        decided = (exist >= MIN_LABEL_EVENTS) & (y | (~waiting & (exist == self.spec.window)))
        # in order per connection: the cutoffs before the connection's first undecided one
        o = np.argsort(self.p_conn[sel], kind="stable")
        conn = self.p_conn[sel][o]
        undecided = (~decided[o]).astype(_I8)
        first = np.ones(len(o), dtype=bool)
        first[1:] = conn[1:] != conn[:-1]
        cum = np.cumsum(undecided)
        starts = np.flatnonzero(first)
        before = (cum - undecided)[starts][np.cumsum(first) - 1]
        ok = np.zeros(len(sel), dtype=bool)
        ok[o] = cum - before == 0
        pos, y = sel[ok], y[ok]
        ids = [self.ids[s] for s in self.p_conn[pos].tolist()]
        order = [i for *_, i in sorted(zip(self.p_secs[pos].tolist(), ids, range(len(pos)), strict=True))]
        return pos[order], y[order]

    def label_arrivals(self, pos: np.ndarray) -> list[list[int]]:
        """Arrival times of the labels in each pending cutoff's label window (for audits)."""
        arr = self._windows(pos, self.r_arr, -1)
        return [[a for a in row if a >= 0] for row in arr.tolist()]

    def take(self, pos: np.ndarray) -> None:
        """Remove these pending cutoffs (learnt). Entries are compacted away in bulk, once
        learnt ones are the majority (a copy per learning step would cost O(pending))."""
        self.p_alive[pos] = 0
        self.n_learnt += len(pos)
        if self.n_learnt > max(1024, self.n_pending // 2):
            self._keep_pending(self.p_alive[: self.n_pending] != 0)

    @property
    def pending(self) -> int:
        """Cutoffs waiting for their label."""
        return self.n_pending - self.n_learnt

    def _keep_pending(self, keep: np.ndarray) -> None:
        n = int(keep.sum())
        if n < self.n_pending:
            for name in (*self._PEND, "p_x", "p_has_x"):
                arr = getattr(self, name)
                arr[:n] = arr[: self.n_pending][keep]
        self.n_pending = n
        self.n_learnt = 0

    # ------------------------------------------------------------------ memory
    def compact(self, orphan_horizon: int) -> None:
        """Drop rows no pending cutoff or live connection can reach, and stale orphans."""
        live_last = self.c_last_row[: len(self.ids)]
        live_last = live_last[live_last >= 0]
        candidates = [self.n_rows]
        alive = self.p_alive[: self.n_pending] != 0
        if alive.any():
            candidates.append(int(self.p_row[: self.n_pending][alive].min()))
        if len(live_last):
            candidates.append(int(live_last.min()))
        cut = min(candidates) - self.base
        if cut > 0:
            for log_id in self.r_logid[:cut].tolist():
                self.row_of.pop(log_id, None)
            held = self.n_rows - self.base
            for name in self._ROW:
                arr = getattr(self, name)
                arr[: held - cut] = arr[cut:held]
            self.base += cut
        self.orphans = {k: v for k, v in self.orphans.items() if v[1] >= orphan_horizon}

    def __getstate__(self) -> dict:
        """Pickle only the used part of every array (checkpoints)."""
        self._keep_pending(self.p_alive[: self.n_pending] != 0)
        state = dict(self.__dict__)
        n_conn, n_rows, P = len(self.ids), self.n_rows - self.base, self.n_pending
        for name in self._CONN:
            state[name] = getattr(self, name)[:n_conn].copy()
        for name in self._ROW:
            state[name] = getattr(self, name)[:n_rows].copy()
        for name in (*self._PEND, "p_x", "p_has_x"):
            state[name] = getattr(self, name)[:P].copy()
        return state
