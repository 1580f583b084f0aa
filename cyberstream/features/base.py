"""The one interface behind which features are computed, for training and the detector.

A *feature engine* is fed events (``observe``) and answers, for a list of cutoffs
``(connection_id, cutoff_secs)``, the saved DFS features of each connection at that
cutoff (``features_at``). The values are featuretools' (see :mod:`.oracle` for the exact
definition): the features of connection ``c`` at ``t`` with a window of ``w`` seconds are
those of ``ft.calculate_feature_matrix`` on the EntitySet of the events with ``secs <= t``,
cutoff time ``t`` and ``training_window = w seconds``; only events with
``t - w < secs <= t`` count.

Time contract (event time, seconds):

* events of one connection arrive in ``secs`` order (ties in any order);
* a cutoff ``(c, t)`` may be asked once every event of ``c`` with ``secs <= t`` has been
  observed; events with ``secs > t`` observed already are ignored for that cutoff;
* cutoffs are asked in time order across calls (any order within one call), and once a
  cutoff at ``t`` was asked, events observed later must have ``secs > t`` (the compiled
  engine moves one live state forward through time; it says so if either is broken);
* ``advance(w)`` promises that every event with ``secs <= w`` has been observed and that no
  later cutoff has ``t < w``. It lets the engine fold events into its state, evict those that
  left the window (``secs <= w - window``) and drop idle connections: call it regularly,
  state between two calls is held pending and recomputed at each ``features_at``.

Outputs are DataFrames indexed by ``(<connection index>, cutoff_secs)`` in the asked order,
with one column per feature in saved order and featuretools' dtypes: ``Int64`` for
COUNT/NUM_UNIQUE-like features, ``float64`` for other numbers, ``category`` for MODE and
identity features (categories: the sorted values the engine has seen in that column).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import featuretools as ft
import numpy as np
import pandas as pd
from woodwork.logical_types import Boolean, BooleanNullable, Categorical, IntegerNullable

from cyberstream.schema import Event

from .entityset import target_index

#: One cutoff: (connection id, cutoff second).
Cutoff = tuple[str, int]
CUTOFF_COLUMN = "cutoff_secs"
#: Default cap on window events kept per connection (older ones are dropped beyond it).
DEFAULT_MAX_EVENTS_PER_CONNECTION = 200_000


def load_feature_defs(path: str | Path) -> list[ft.FeatureBase]:
    """The saved DFS feature definitions (``ft.save_features`` JSON) at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature definitions not found: {path} (train a model first)")
    return list(ft.load_features(str(path)))


def feature_names(feature_defs: Iterable[ft.FeatureBase]) -> list[str]:
    """Column names of the features, in saved order (multi-output features expanded)."""
    names: list[str] = []
    for f in feature_defs:
        names.extend(f.get_feature_names())
    return names


def output_kind(feature: ft.FeatureBase) -> str:
    """``"int"``, ``"float"``, ``"category"`` or ``"bool"``: the dtype family featuretools gives."""
    logical = feature.column_schema.logical_type
    if isinstance(logical, Categorical) or logical == Categorical:
        return "category"
    if isinstance(logical, IntegerNullable) or logical == IntegerNullable:
        return "int"
    if isinstance(logical, Boolean | BooleanNullable) or logical in (Boolean, BooleanNullable):
        return "bool"
    return "float"


def _cutoff_arrays(cutoffs: Sequence[Cutoff]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([c for c, _ in cutoffs], dtype=object)
    secs = np.fromiter((int(t) for _, t in cutoffs), dtype=np.int64, count=len(cutoffs))
    return ids, secs


def cutoff_index(ids: np.ndarray, secs: np.ndarray, kind: str) -> pd.MultiIndex:
    """The output index for cutoffs given as arrays: (connection id, cutoff second)."""
    # Built from factorized codes: MultiIndex.from_arrays goes through Categoricals and cost
    # several times more per batch.
    id_codes, id_levels = pd.factorize(ids)
    secs_codes, secs_levels = pd.factorize(secs)
    return pd.MultiIndex(
        levels=[pd.Index(id_levels, dtype=object), pd.Index(secs_levels, dtype=np.int64)],
        codes=[id_codes, secs_codes],
        names=[target_index(kind), CUTOFF_COLUMN],
        verify_integrity=False,
    )


def make_column(values: object, kind: str, categories: Sequence[str] | None = None) -> pd.api.extensions.ExtensionArray | np.ndarray:
    """One output column with featuretools' dtype.

    ``values``: for ``"category"`` either a ``pd.Categorical`` or an object array (None/NaN =
    missing); for ``"int"`` a float or object array (NaN = <NA>); otherwise floats.
    """
    if kind == "category":
        if isinstance(values, pd.Categorical):
            return values
        cats = sorted(categories) if categories is not None else None
        return pd.Categorical(values, categories=cats)
    if kind == "int":
        if isinstance(values, np.ndarray) and values.dtype.kind == "f":
            mask = np.isnan(values)
            return pd.arrays.IntegerArray(np.where(mask, 0, values).astype(np.int64), mask)
        arr = np.asarray(values, dtype=object)
        mask = pd.isna(arr)
        ints = np.where(mask, 0, arr).astype(np.int64)
        return pd.arrays.IntegerArray(ints, mask.astype(bool))
    if kind == "bool":
        return pd.array(values, dtype="boolean")
    return np.asarray(values, dtype=np.float64)


def features_equal(a: object, b: object, rel_tol: float = 1e-9, abs_tol: float = 1e-9) -> bool:
    """Equality used for parity checks: NaN == NaN, floats to ``rel_tol``.

    ``abs_tol`` only absorbs rounding noise of quantities that are zero in exact
    arithmetic (featuretools computes, e.g., the STD of several equal per-pair STDs as
    1e-16 rather than 0, depending on the order it happened to sum in).
    """
    a_na, b_na = bool(pd.isna(a)), bool(pd.isna(b))
    if a_na or b_na:
        return a_na and b_na
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    fa, fb = float(a), float(b)
    return math.isclose(fa, fb, rel_tol=rel_tol, abs_tol=abs_tol)


@dataclass(frozen=True)
class EngineStats:
    """What an engine holds and has done; memory is an estimate of its own state."""

    connections: int
    pairs: int
    window_events: int
    pending_events: int
    events_observed: int
    cutoffs_computed: int
    capped_events: int
    state_bytes: int

    @property
    def bytes_per_connection(self) -> float:
        return self.state_bytes / self.connections if self.connections else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**self.__dict__, "bytes_per_connection": self.bytes_per_connection}


@runtime_checkable
class FeatureEngine(Protocol):
    """Computes the saved features of connections at cutoffs over a sliding window."""

    #: feature names, in saved order (the output columns)
    names: list[str]
    window_secs: int
    kind: str

    def observe(self, event: Event) -> None:
        """Take one event (event-time order per connection)."""

    def observe_many(self, events: Sequence[Event]) -> None:
        """:meth:`observe` for each of ``events`` (one call per second of the stream)."""

    def observe_frame(self, events: pd.DataFrame) -> None:
        """Take many events at once: schema columns plus ``log_id``, sorted by ``secs``."""

    def features_at(self, cutoffs: Sequence[Cutoff]) -> pd.DataFrame:
        """Features at each cutoff, one row per cutoff in the given order."""

    def advance(self, watermark_secs: int) -> None:
        """All events with ``secs <= watermark`` are in and no later cutoff is before it."""

    def stats(self) -> EngineStats:
        """Sizes and counters of the engine's state."""


class EngineSettings:
    """What every engine is built from: the saved definitions and the window's settings."""

    def __init__(
        self,
        feature_defs: Sequence[ft.FeatureBase],
        window_secs: int,
        *,
        kind: str,
        base_epoch: int,
        max_events_per_connection: int | None,
        max_window_secs: int | None = None,
    ) -> None:
        window_secs = int(window_secs)
        if window_secs < 1 or (max_window_secs is not None and window_secs > max_window_secs):
            upper = f" .. {max_window_secs}" if max_window_secs is not None else " or more"
            raise ValueError(f"window must be 1{upper} seconds, got {window_secs}")
        self.defs = list(feature_defs)
        self.names = feature_names(self.defs)
        self.window_secs = window_secs
        self.kind = kind
        self.base_epoch = base_epoch
        self.max_events = max_events_per_connection


def frame(cutoffs: Sequence[Cutoff], kind: str, columns: Mapping[str, object]) -> pd.DataFrame:
    """Assemble the output DataFrame (columns already in saved order and dtype)."""
    return frame_of(*_cutoff_arrays(cutoffs), kind, columns)


def frame_of(ids: np.ndarray, secs: np.ndarray, kind: str, columns: Mapping[str, object]) -> pd.DataFrame:
    """:func:`frame` for cutoffs given as arrays of connection ids (object) and seconds.

    The columns are built already (one array of the right dtype and length each), so
    pandas' per-column checks are skipped: the detector assembles a frame per batch.
    """
    return pd.DataFrame._from_arrays(
        list(columns.values()), columns=pd.Index(list(columns)), index=cutoff_index(ids, secs, kind),
        verify_integrity=False,
    )  # fmt: skip
