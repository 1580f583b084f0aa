"""What the detector remembers of each connection besides its feature window.

One :class:`ConnState` per active connection, owned by the label ledger
(:mod:`detector.ledger`): its event positions, the labels arrived for them, the cutoffs
waiting for their label windows, and the time of its last alert (the alert stage's
cooldown). It goes idle, is checkpointed and moves with its partition as one record.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from training.labels import LabelSpec


@dataclass
class Pending:
    """A cutoff waiting for its label: position, time, the online model's inputs (filled in
    when its features are computed)."""

    k: int
    secs: int
    x: np.ndarray | None = None


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
