"""THE label definition, shared by training (batch) and the detector (online learning).

A connection's events are ordered by ``(secs, log_id)`` and numbered 0, 1, 2, ...

Cutoffs
    One cutoff per connection per distinct ``secs``, at the LAST event of that second
    (position ``k``), because features at cutoff time ``t`` see every event with
    ``secs <= t`` (featuretools' rule): the features of a cutoff never depend on the order
    of events inside one second. A cutoff needs at least ``N`` (``min_events``) earlier
    events, i.e. ``k >= N``: the events strictly before event ``k`` in ``(secs, log_id)``
    order. Since ``k`` is the last event of its second, ``k + 1`` is the number of events
    with ``secs <= t``, so eligibility does not depend on arrival order within a second
    either. This is composeml's ``minimum_data=N`` (the first slice starts at row ``N``).

Label
    Whether any of events ``k+L .. k+L+W-1`` (lead ``L``, window ``W``) is malicious.
    Event ``k`` itself and the ``L - 1`` events after it are the lead: an attack that has
    already happened there is not the prediction target. There is no label when fewer
    than two of those events exist (the connection ended, or the data did). This is
    composeml's ``LabelMaker(window_size=L+W)`` with the labelling function
    ``slice.iloc[L:].label.any()`` (nothing when the slice has fewer than ``L+2`` rows),
    searched with ``minimum_data=N, gap=1``; ``tests/test_labels.py`` checks the two agree.

Streaming form
    :func:`resolve_label` answers "is the label of the cutoff at position ``k`` known yet?"
    from the labels that have arrived so far: ``True`` as soon as a malicious event is
    inside the label window (and at least two label-window events exist), ``False`` once
    all ``W`` label-window events are known clean, ``None`` (not resolved yet) otherwise.
    The batch labels are the same function applied with ``complete=True`` (no more events
    will come), so the detector can never learn a label that training would not give.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from cyberstream.connections import DEFAULT_CONNECTION, SEPARATOR, connection_fields

log = logging.getLogger(__name__)

#: a cutoff has a label only when at least this many label-window events exist (the demo's rule).
MIN_LABEL_EVENTS = 2


@dataclass(frozen=True)
class LabelSpec:
    """N, L, W of the label definition (defaults: the original demo's 2, 2, 10)."""

    min_events: int = 2  # N: earlier events a cutoff needs
    lead: int = 2  # L: events from the cutoff event on that the label skips
    window: int = 10  # W: events after the lead whose labels decide

    def __post_init__(self) -> None:
        if self.min_events < 0 or self.lead < 0:
            raise ValueError(f"min_events (N) and lead (L) must be >= 0, got N={self.min_events} L={self.lead}")
        if self.window < MIN_LABEL_EVENTS:
            raise ValueError(f"window (W) must be >= {MIN_LABEL_EVENTS}, got {self.window}")

    @property
    def horizon(self) -> int:
        """Events from the cutoff event on (included) that decide the label: ``L + W``."""
        return self.lead + self.window

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class CutoffLabel(NamedTuple):
    """One cutoff of one connection: position of its event, its time, its label (None: no label)."""

    index: int
    secs: int
    label: bool | None


def is_cutoff(secs: Sequence[int], k: int, spec: LabelSpec = LabelSpec(), *, complete: bool = True) -> bool:
    """Whether position ``k`` of a connection's ordered ``secs`` is an eligible cutoff.

    ``complete=False`` (streaming): event ``k`` is the last one known so far; it is the last
    of its second only once a later second has been seen, so it is not a cutoff yet.
    """
    if k < spec.min_events or k >= len(secs):
        return False
    if k == len(secs) - 1:
        return complete
    return secs[k + 1] != secs[k]


def resolve_label(
    labels: Sequence[bool | None], k: int, spec: LabelSpec = LabelSpec(), *, complete: bool = False
) -> bool | None:
    """The label of the cutoff at position ``k``, or ``None`` if it is not (yet) decided.

    ``labels`` holds one entry per event of the connection seen so far, in
    ``(secs, log_id)`` order, with the same positions as ``k`` (a suffix is enough if
    ``k`` is shifted the same way): ``True``/``False`` once the event's label has arrived,
    ``None`` while it has not. ``complete=True`` says no further events of the connection
    will come (the batch case), so a window running off the end is decided by the events
    it has, if there are at least two of them.
    """
    start = k + spec.lead
    return resolve_window(list(labels[start : start + spec.window]), spec, complete=complete)


def resolve_window(window: Sequence[bool | None], spec: LabelSpec = LabelSpec(), *, complete: bool = False) -> bool | None:
    """:func:`resolve_label` given only the cutoff's label window (the labels of its events
    ``k + lead`` .. ``k + lead + window - 1`` that exist so far)."""
    if len(window) < MIN_LABEL_EVENTS:
        return None  # fewer than two label-window events exist (yet)
    if any(x is True for x in window):
        return True  # whatever comes later, "any" is already true
    if any(x is None for x in window):
        return None  # a label has not arrived yet
    if len(window) == spec.window or complete:
        return False
    return None  # the window is not full yet and more events may come


def label_cutoffs(
    secs: Sequence[int], labels: Sequence[bool], spec: LabelSpec = LabelSpec()
) -> list[CutoffLabel]:
    """Every eligible cutoff of ONE connection whose events are sorted by ``(secs, log_id)``.

    Batch form: all labels are known and the connection is complete. Cutoffs without a
    label (the label window runs off the end with fewer than two events) are returned
    with ``label=None``: the detector still scores them.
    """
    if len(secs) != len(labels):
        raise ValueError(f"secs and labels differ in length ({len(secs)} != {len(labels)})")
    out = []
    for k in range(spec.min_events, len(secs)):
        if is_cutoff(secs, k, spec):
            out.append(CutoffLabel(k, int(secs[k]), resolve_label(labels, k, spec, complete=True)))
    return out


def label_times(
    events: pd.DataFrame, kind: str = DEFAULT_CONNECTION, spec: LabelSpec = LabelSpec()
) -> pd.DataFrame:
    """All cutoffs of all connections of ``kind`` with their labels (batch, via :func:`label_cutoffs`).

    ``events`` has the schema columns, ``log_id`` and a boolean ``label``. Returns one row
    per cutoff: ``connection_id``, ``cutoff_secs``, ``cutoff_index`` (position ``k``),
    ``log_id`` (of event ``k``), ``label`` (nullable boolean; NA = no label) and
    ``label_end_secs`` (``secs`` of the last event of the label window, i.e. when the label
    is known at the latest; NA when there is no label), sorted by connection and time.
    """
    fields = connection_fields(kind)
    conn = events[fields[0]].astype(str)
    for f in fields[1:]:
        conn = conn + SEPARATOR + events[f].astype(str)
    order = pd.DataFrame(
        {"connection_id": conn, "secs": events["secs"].astype("int64"), "log_id": events["log_id"].astype("int64")}
    )
    order["malicious"] = events["label"].astype(bool).to_numpy()
    order = order.sort_values(["connection_id", "secs", "log_id"], kind="stable")
    conns = order["connection_id"].to_numpy()
    secs = order["secs"].to_numpy()
    log_ids = order["log_id"].to_numpy()
    malicious = order["malicious"].tolist()
    starts = np.flatnonzero(np.r_[True, conns[1:] != conns[:-1]]) if len(conns) else np.array([], dtype=int)
    ends = np.r_[starts[1:], len(conns)]
    rows_conn, rows_secs, rows_k, rows_log, rows_label, rows_end = [], [], [], [], [], []
    for a, b in zip(starts, ends, strict=True):
        if b - a <= spec.min_events:
            continue  # no eligible cutoff in a connection this short
        for cut in label_cutoffs(secs[a:b], malicious[a:b], spec):
            rows_conn.append(conns[a])
            rows_secs.append(cut.secs)
            rows_k.append(cut.index)
            rows_log.append(log_ids[a + cut.index])
            rows_label.append(cut.label)
            last = min(a + cut.index + spec.horizon - 1, b - 1)
            rows_end.append(secs[last] if cut.label is not None else None)
    return pd.DataFrame(
        {
            "connection_id": pd.Series(rows_conn, dtype=object),
            "cutoff_secs": pd.Series(rows_secs, dtype="int64"),
            "cutoff_index": pd.Series(rows_k, dtype="int64"),
            "log_id": pd.Series(rows_log, dtype="int64"),
            "label": pd.Series(rows_label, dtype="boolean"),
            "label_end_secs": pd.Series(rows_end, dtype="Int64"),
        }
    )
