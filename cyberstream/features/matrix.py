"""Whole-DataFrame feature computation (training) through the same engines as the detector."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import featuretools as ft
import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals
from tqdm import tqdm

from cyberstream.config import DEFAULT_BASE_EPOCH
from cyberstream.connections import DEFAULT_CONNECTION

from .base import CUTOFF_COLUMN, DEFAULT_MAX_EVENTS_PER_CONNECTION, Cutoff, FeatureEngine, cutoff_index

log = logging.getLogger(__name__)

ENGINES = ("compiled", "oracle")


def make_engine(
    engine: str,
    feature_defs: Sequence[ft.FeatureBase],
    window_secs: int,
    *,
    kind: str = DEFAULT_CONNECTION,
    base_epoch: int = DEFAULT_BASE_EPOCH,
    max_events_per_connection: int | None = DEFAULT_MAX_EVENTS_PER_CONNECTION,
) -> FeatureEngine:
    """A feature engine by name: ``"compiled"`` (fast) or ``"oracle"`` (featuretools).

    Window features (of the connection) go to that engine; history features (of the
    cutoff's event, :mod:`.history`) to the history engine of the same name, and a
    :class:`CombinedEngine` puts their columns together in saved order.
    """
    from .history import HistoryEngine, HistoryOracleEngine, is_history_feature  # noqa: PLC0415

    history_defs = [f for f in feature_defs if is_history_feature(f)]
    if history_defs:
        window_defs = [f for f in feature_defs if not is_history_feature(f)]
        window = make_engine(engine, window_defs, window_secs, kind=kind, base_epoch=base_epoch,
                             max_events_per_connection=max_events_per_connection)  # fmt: skip
        if engine not in ENGINES:
            raise ValueError(f"unknown feature engine {engine!r}; choose one of {ENGINES}")
        history_cls = HistoryEngine if engine == "compiled" else HistoryOracleEngine
        history = history_cls(history_defs, window_secs, kind=kind, base_epoch=base_epoch)
        return CombinedEngine(window, history, [n for f in feature_defs for n in f.get_feature_names()])
    if engine == "compiled":
        from .compiled import CompiledEngine

        cls = CompiledEngine
    elif engine == "oracle":
        from .oracle import OracleEngine

        cls = OracleEngine
    else:
        raise ValueError(f"unknown feature engine {engine!r}; choose one of {ENGINES}")
    return cls(
        feature_defs,
        window_secs,
        kind=kind,
        base_epoch=base_epoch,
        max_events_per_connection=max_events_per_connection,
    )


class CombinedEngine:
    """Window features and history features of the same cutoffs, as one engine.

    Both engines see every event; the history engine also takes events older than the
    window (:meth:`observe_history`), which the detector replays when it rebuilds its state.
    """

    needs_history = True

    def __init__(self, window: FeatureEngine, history: FeatureEngine, names: list[str]) -> None:
        self.window, self.history, self.names = window, history, names
        self.window_secs, self.kind = window.window_secs, window.kind

    def observe(self, event) -> None:
        self.window.observe(event)
        self.history.observe(event)

    def observe_many(self, events) -> None:
        self.window.observe_many(events)
        self.history.observe_many(events)

    def observe_frame(self, events: pd.DataFrame) -> None:
        self.window.observe_frame(events)
        self.history.observe_frame(events)

    def observe_history(self, event) -> None:
        """An event older than the window: it counts for the history features only."""
        self.history.observe(event)

    def features_at(self, cutoffs: Sequence[Cutoff]) -> pd.DataFrame:
        a = self.window.features_at(cutoffs)
        b = self.history.features_at(cutoffs)
        columns = {n: (a[n] if n in a.columns else b[n]).array for n in self.names}
        return pd.DataFrame._from_arrays(list(columns.values()), columns=pd.Index(self.names), index=a.index,
                                         verify_integrity=False)  # fmt: skip

    def advance(self, watermark_secs: int) -> None:
        self.window.advance(watermark_secs)
        self.history.advance(watermark_secs)

    def stats(self):
        w, h = self.window.stats(), self.history.stats()
        return type(w)(**{**w.__dict__, "state_bytes": w.state_bytes + h.state_bytes,
                          "capped_events": w.capped_events + h.capped_events})  # fmt: skip


def _ids_and_secs(cutoffs: Sequence[Cutoff] | pd.DataFrame) -> tuple[list[str], np.ndarray]:
    if isinstance(cutoffs, pd.DataFrame):
        if cutoffs.shape[1] != 2:
            raise ValueError(f"cutoffs DataFrame must have two columns (connection id, secs), got {list(cutoffs.columns)}")
        ids = cutoffs.iloc[:, 0].astype(str).tolist()
        secs = cutoffs.iloc[:, 1].to_numpy(dtype=np.int64)
        return ids, secs
    ids = [str(c) for c, _ in cutoffs]
    secs = np.fromiter((int(t) for _, t in cutoffs), dtype=np.int64, count=len(cutoffs))
    return ids, secs


def feature_matrix(
    events: pd.DataFrame,
    cutoffs: Sequence[Cutoff] | pd.DataFrame,
    feature_defs: Sequence[ft.FeatureBase],
    window_secs: int,
    *,
    kind: str = DEFAULT_CONNECTION,
    engine: str = "compiled",
    base_epoch: int = DEFAULT_BASE_EPOCH,
    chunk_events: int = 100_000,
    progress: bool = False,
) -> pd.DataFrame:
    """Features of every cutoff, streaming ``events`` through an engine.

    ``events``: schema columns plus ``log_id``, sorted by ``secs`` (then ``log_id``).
    ``cutoffs``: ``(connection id, cutoff secs)`` pairs, or a two-column DataFrame.
    Rows come back in the order of ``cutoffs``, indexed by (connection id, cutoff secs).
    No per-connection cap is applied: the values are featuretools' for every cutoff.
    """
    secs = events["secs"].to_numpy(dtype=np.int64)
    if len(secs) > 1 and (np.diff(secs) < 0).any():
        raise ValueError("events must be sorted by secs")
    ids, t = _ids_and_secs(cutoffs)
    eng = make_engine(engine, feature_defs, window_secs, kind=kind, base_epoch=base_epoch, max_events_per_connection=None)
    order = np.argsort(t, kind="stable")
    t_sorted = t[order]
    parts: list[pd.DataFrame] = []
    done = 0  # cutoffs computed (in sorted order)
    pos = 0
    bar = tqdm(total=len(secs), unit="ev", desc=f"features ({engine})", disable=not progress)
    while pos < len(secs):
        end = min(pos + chunk_events, len(secs))
        end = int(np.searchsorted(secs, secs[end - 1], side="right"))  # whole seconds only
        until = int(secs[end - 1])
        eng.observe_frame(events.iloc[pos:end])
        upto = int(np.searchsorted(t_sorted, until, side="right"))
        if upto > done:
            sel = order[done:upto]
            parts.append(eng.features_at([(ids[i], int(t[i])) for i in sel]))
            done = upto
        eng.advance(until)
        bar.update(end - pos)
        pos = end
    bar.close()
    if done < len(order):
        sel = order[done:]
        parts.append(eng.features_at([(ids[i], int(t[i])) for i in sel]))
    if not parts:
        return eng.features_at([])
    fm = _concat(parts, eng)
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    fm = fm.iloc[inverse].reset_index(drop=True)
    fm.index = cutoff_index(np.asarray(ids, dtype=object), t, kind)
    log.info("computed %d feature rows x %d features with the %s engine", len(fm), fm.shape[1], engine)
    return fm


def _concat(parts: list[pd.DataFrame], eng: FeatureEngine) -> pd.DataFrame:
    """Concatenate batches column by column (the index is rebuilt by the caller)."""
    if len(parts) == 1:
        return parts[0]
    out = {}
    for name in parts[0].columns:
        cols = [p[name].array for p in parts]
        if isinstance(cols[0], pd.Categorical):
            out[name] = union_categoricals(cols, ignore_order=True)
        else:
            out[name] = type(cols[0])._concat_same_type(cols)
    return pd.DataFrame(out)[parts[0].columns]


__all__ = ["ENGINES", "CUTOFF_COLUMN", "feature_matrix", "make_engine"]
