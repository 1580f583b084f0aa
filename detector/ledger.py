"""The label ledger: each connection's positions, its cutoffs waiting for labels, the learning steps.

Every connection with an event in a processed second gets a cutoff at that second (the
training definition: one per connection per distinct ``secs``, at its last event), once it
has at least N earlier events. The cutoff waits in its connection's ``pending`` queue until
the labels of its window (events k+L .. k+L+W-1) have arrived. Labels are applied at
learning steps, every ``learn_every_secs`` of event time, only those that arrived before
the step; the cutoffs they resolve make up the step (a :class:`ModelStep`), which the
scorer learns once their features are computed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from cyberstream.connections import connection_id_of
from cyberstream.schema import Event, LabelRecord
from detector.connection_state import ConnState, Pending
from detector.idle import IdleConnections
from detector.progress import Stats
from training.labels import LabelSpec, resolve_window

log = logging.getLogger(__name__)

#: a cutoff to score: (connection, cutoff secs, log_id of its last event, its Pending, the step it is scored with)
Cutoff = tuple[str, int, int, Pending, "ModelStep"]


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


class LabelLedger:
    """The connections' state (:attr:`conns`, :attr:`idle`) and the learning steps."""

    def __init__(self, kind: str, spec: LabelSpec, max_idle_connections: int, stats: Stats):
        self.spec = spec
        self.max_idle_connections = max_idle_connections
        self.stats = stats
        self._connection_id: Callable[[Event], str] = connection_id_of(kind)
        #: (boundary, connection, cutoff_secs, label, label arrivals) of every learnt cutoff, when a
        #: caller sets it to a list (tests check that no label is used before it arrived).
        self.learn_log: list | None = None
        self.reset()

    def reset(self) -> None:
        """No connection, no step learnt (before an assignment)."""
        self.conns: dict[str, ConnState] = {}
        self.idle = IdleConnections(self.max_idle_connections)
        #: the online model as of the current learning step; steps decided but not yet learnt
        self.step = ModelStep(snapshot=None)
        self.unlearnt: list[ModelStep] = []

    def observe(self, taken: list[tuple[int, list[Event]]], s: int) -> list[Cutoff]:
        """Count the events of second ``s`` (per partition) in their connections; return the
        cutoffs they close, by connection."""
        touched: dict[str, ConnState] = {}
        last_log: dict[str, int] = {}
        conns, connection_id, idle = self.conns, self._connection_id, self.idle
        for p, events in taken:
            for ev in events:
                conn = connection_id(ev)
                st = conns.get(conn)
                if st is None:
                    st = conns[conn] = idle.revive(conn, p)
                st.recent.append((ev.log_id, ev.secs))
                st.n_seen += 1
                st.last_secs = ev.secs
                touched[conn] = st
                if ev.log_id > last_log.get(conn, -1):
                    last_log[conn] = ev.log_id
        cutoffs = []
        min_events, step = self.spec.min_events, self.step
        for c in sorted(touched):
            st = touched[c]
            k = st.n_seen - 1
            if k >= min_events:
                pend = Pending(k, s)
                st.pending.append(pend)
                cutoffs.append((c, s, last_log[c], pend, step))
        return cutoffs

    def learn_until(self, boundary: int, labels: list[tuple[LabelRecord, int]]) -> None:
        """Apply ``labels`` (each with its arrival, all before ``boundary``); the cutoffs they
        resolve make up a new learning step."""
        spec = self.spec
        conns = self.conns
        dirty: dict[str, ConnState] = {}
        for lab, arrival in labels:
            conn = lab.connection
            st = dirty.get(conn) or conns.get(conn)
            if st is None:
                # Every event before the boundary is processed by now, so this label's event
                # was not processed here with its connection kept: the connection went idle
                # (its cutoffs with it) or its events went to another member before a
                # rebalance. It can settle no cutoff, and keeping it would keep the
                # connection forever (one without events is never idle).
                continue
            st.labels[lab.log_id] = (lab.malicious, lab.secs, arrival)
            if lab.malicious and lab.secs > st.last_malicious_secs:
                st.last_malicious_secs = lab.secs
            dirty[conn] = st
        self.stats.labels += len(labels)
        lead, width, horizon = spec.lead, spec.window, spec.horizon
        resolved, ys, order = [], [], []
        for conn in sorted(dirty):
            st = dirty[conn]
            if not st.pending:
                continue
            labels_of, recent = st.labels, st.recent
            labelled = st.labelled_through()
            settled = len(resolved)
            while st.pending:
                pend = st.pending[0]
                start = pend.k - st.base + lead
                if st.last_malicious_secs < pend.secs:
                    # No malicious label in its window (those events are at or after the cutoff):
                    # it resolves to False once the window is full and all its labels arrived
                    # (at once when the labelled prefix covers it; a gap before it is looked past).
                    if pend.k + horizon > st.n_seen or recent[start + width - 1][0] not in labels_of or (
                            pend.k + horizon > labelled
                            and not all(lid in labels_of for lid, _ in islice(recent, start, start + width))):  # fmt: skip
                        break
                    y = False
                else:
                    y = resolve_window(st.window_labels(start, start + width), spec)
                    if y is None:
                        break
                st.pending.popleft()
                order.append((pend.secs, conn))
                if self.learn_log is not None:
                    used = [labels_of[lid][2] for lid, _ in islice(recent, start, start + width) if lid in labels_of]
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

    def take_unlearnt(self) -> list[ModelStep]:
        """The steps decided since the last call, oldest first, for the scorer to learn."""
        steps, self.unlearnt = self.unlearnt, []
        return steps

    def idle_before(self, secs: int) -> list[str]:
        """Connections whose last event is before ``secs``."""
        return [c for c, st in self.conns.items() if st.last_secs < secs and st.last_secs >= 0]

    def drop(self, conns: list[str]) -> None:
        """Move ``conns`` to :attr:`idle`, which keeps their counts only: their pending cutoffs,
        whose label windows wait for events that may never come, go with them."""
        for conn in conns:
            self.stats.forgotten += self.idle.remember(conn, self.conns.pop(conn))
        log.debug("dropped %d idle connections (%d remembered)", len(conns), len(self.idle))

    def prune(self) -> None:
        """Forget, in every connection, the positions and labels no cutoff can need."""
        for st in self.conns.values():
            st.prune(self.spec)

    def keep_partitions(self, partitions: list[int]) -> None:
        """Forget the connections of partitions this member does not own (after a rebalance)."""
        self.conns = {c: st for c, st in self.conns.items() if st.partition in partitions}
        self.idle.keep_partitions(partitions)
