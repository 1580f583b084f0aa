"""Feature definitions (Deep Feature Synthesis) and the feature matrix at cutoffs.

Definitions
    ``ft.dfs(entityset=build_entityset(sample), target_dataframe_name=<connections>,
    max_depth=3, trans_primitives=[], features_only=True)`` (default aggregation
    primitives; no calendar transforms of the synthetic time base), then two filters:

    * **entity names**: a categorical feature built from an identity column (``src_name``,
      ``dest_name``, ``src_host``, ``dest_host``, the pair or connection id), e.g. the
      identity features ``src_name``/``dest_name`` or ``MODE(name_host_pairs.src_host)``,
      is dropped: its values are entity names, and a model that learns them memorises
      *who* was attacked in the training days instead of *how* an attack looks. Counts of
      distinct names (``NUM_UNIQUE(...)``) are kept. Categorical features over the
      attribute columns (``auth_type``, ``login_type``, ``stage``, ``result``: a handful of
      values) are kept and one-hot encoded inside the model pipeline.
    * **absolute time** (``time_features="drop"``, the default, see the training report):
      a feature whose value moves when every event is shifted by the same number of
      seconds (``MAX(log.secs)``, ``SUM(log.secs)``, ``MEAN(name_host_pairs.MIN(log.secs))``,
      ``STD(name_host_pairs.SUM(log.secs))``) encodes *when* rather than *how*; a model
      trained on days 1-7 cannot use "when" on days 8-10. Shift-invariant features over
      ``secs`` (``STD(log.secs)``, ``SKEW(name_host_pairs.MEAN(log.secs))``, aggregations of
      them) describe the rhythm of a connection and are kept. :func:`time_shift_response`
      decides, and a test checks it against features computed on shifted data.

    No feature may depend on ``label``: :func:`build_entityset` drops it, and
    :func:`feature_columns` lets a test walk every saved feature's dependencies.

Feature matrix
    :func:`feature_matrix` is the ONE place training computes features. It uses the
    detector's compiled engine (``cyberstream.features.feature_matrix``), or, with
    ``engine="oracle"``, featuretools itself: the definition, on the EntitySet of the
    events seen so far (``secs <= t``), never one EntitySet of all events (its last-time
    indexes would come from the future).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable

import featuretools as ft
import numpy as np
import pandas as pd
from featuretools.feature_base import AggregationFeature, DirectFeature, IdentityFeature
from tqdm import tqdm

from cyberstream.config import DEFAULT_BASE_EPOCH
from cyberstream.connections import DEFAULT_CONNECTION
from cyberstream.features.entityset import (
    PAIR_INDEX,
    TIME,
    build_entityset,
    log_frame,
    target_dataframe,
    target_index,
    to_time,
)
from cyberstream.schema import ATTRIBUTE_FIELDS, IDENTITY_FIELDS

MAX_DEPTH = 3
DEFAULT_WINDOW_SECS = 86_400
TIME_FEATURE_POLICIES = ("drop", "keep")
DEFAULT_TIME_FEATURES = "drop"
ENGINES = ("compiled", "oracle")
#: the baseline score: distinct source hosts of the connection in the window.
BASELINE_FEATURE = "NUM_UNIQUE(name_host_pairs.src_host)"
#: ... or, for connection kinds that have a single source host, the first of these that exists.
BASELINE_FALLBACKS = ("NUM_UNIQUE(name_host_pairs.dest_host)", "NUM_UNIQUE(name_host_pairs.src_name)", "COUNT(log)")


def baseline_feature(feature_names: Iterable[str]) -> str:
    """The baseline score's feature for a feature set (see :data:`BASELINE_FEATURE`)."""
    names = set(feature_names)
    for name in (BASELINE_FEATURE, *BASELINE_FALLBACKS):
        if name in names:
            return name
    raise ValueError(f"none of the baseline features {(BASELINE_FEATURE, *BASELINE_FALLBACKS)} was computed")

#: How aggregations respond when all times move by the same amount d.
#: "follow": a uniformly moved input moves the result by d (MIN, MAX, MEAN, ...);
#: "spread": the result does not move if the input moved uniformly (STD, SKEW);
#: "count": the result never moves (COUNT, NUM_UNIQUE, ...). SUM moves by count * d, i.e. not uniformly.
_FOLLOW_PRIMITIVES = {"min", "max", "mean", "median", "mode", "first", "last"}
_SPREAD_PRIMITIVES = {"std", "skew"}
_COUNT_PRIMITIVES = {"count", "num_unique", "num_true", "percent_true", "n_unique_days"}


@contextlib.contextmanager
def _quiet_featuretools():
    """featuretools 1.31 on pandas 2.3 warns about its own groupby calls on every use; not ours to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def feature_columns(feature: ft.Feature) -> set[str]:
    """Names of every raw column ``feature`` is computed from (walking all its dependencies)."""
    out = set()
    for f in [feature, *feature.get_dependencies(deep=True)]:
        if isinstance(f, IdentityFeature):
            out.add(f.column_name)
    return out


def _identity_columns(kind: str) -> set[str]:
    return {*IDENTITY_FIELDS, PAIR_INDEX, target_index(kind)}


def _time_columns(feature: ft.Feature) -> set[str]:
    """Columns that hold absolute time: ``secs`` and every datetime column (time indexes)."""
    es = feature.entityset
    out = {"secs", TIME}
    if es is not None:
        for df in es.dataframes:
            out.update(c for c in df.columns if df.ww.columns[c].is_datetime)
    return out


def time_shift_response(feature: ft.Feature) -> str:
    """How ``feature`` moves when every event time moves by the same ``d`` seconds.

    ``"none"`` (it does not move), ``"uniform"`` (it moves by ``d``, e.g. ``MAX(log.secs)``)
    or ``"other"`` (it moves some other way, e.g. ``SUM(log.secs)`` or
    ``STD(name_host_pairs.SUM(log.secs))``).
    """
    time_cols = _time_columns(feature)

    def response(f) -> str:
        if isinstance(f, IdentityFeature):
            return "uniform" if f.column_name in time_cols else "none"
        inputs = {response(b) for b in f.base_features}
        worst = "other" if "other" in inputs else "uniform" if "uniform" in inputs else "none"
        if isinstance(f, DirectFeature):
            return worst
        name = f.primitive.name if isinstance(f, AggregationFeature) else None
        if name in _COUNT_PRIMITIVES or worst == "none":
            return "none"
        if name in _SPREAD_PRIMITIVES:
            return "none" if worst == "uniform" else "other"
        if name in _FOLLOW_PRIMITIVES:
            return worst
        return "other"  # SUM and anything unknown

    return response(feature)


def is_absolute_time(feature: ft.Feature) -> bool:
    """Whether the value of ``feature`` moves when all event times move by the same amount."""
    return time_shift_response(feature) != "none"


def is_categorical(feature: ft.Feature) -> bool:
    return bool(feature.column_schema.is_categorical)


def drop_reason(feature: ft.Feature, kind: str, time_features: str) -> str | None:
    """Why ``feature`` is left out of the saved definitions (None: it is kept)."""
    cols = feature_columns(feature)
    if "label" in cols:
        return "derived from the label"
    if is_categorical(feature) and cols & _identity_columns(kind):
        return "entity names (high cardinality)"
    if is_categorical(feature) and not cols <= set(ATTRIBUTE_FIELDS):
        return "categorical of unexpected columns"
    if time_features == "drop" and is_absolute_time(feature):
        return "absolute time"
    return None


def run_dfs(events_sample: pd.DataFrame, kind: str = DEFAULT_CONNECTION) -> list[ft.Feature]:
    """All features DFS proposes for the connection dataframe (before the filters)."""
    es = build_entityset(events_sample, kind)
    with _quiet_featuretools():
        return ft.dfs(
        entityset=es,
            target_dataframe_name=target_dataframe(kind),
            max_depth=MAX_DEPTH,
            trans_primitives=[],
            features_only=True,
        )


def filter_features(
    proposed: list[ft.Feature], kind: str = DEFAULT_CONNECTION, time_features: str = DEFAULT_TIME_FEATURES
) -> tuple[list[ft.Feature], dict[str, str]]:
    """The features of ``proposed`` to keep, and the dropped ones (name -> reason)."""
    if time_features not in TIME_FEATURE_POLICIES:
        raise ValueError(f"time_features must be one of {TIME_FEATURE_POLICIES}, got {time_features!r}")
    kept, dropped = [], {}
    for f in proposed:
        reason = drop_reason(f, kind, time_features)
        if reason is None:
            kept.append(f)
        else:
            dropped[f.get_name()] = reason
    return kept, dropped


def feature_definitions(
    events_sample: pd.DataFrame, kind: str = DEFAULT_CONNECTION, time_features: str = DEFAULT_TIME_FEATURES
) -> tuple[list[ft.Feature], dict[str, str]]:
    """The features to save (DFS, then :func:`filter_features`), and the dropped ones (name -> reason)."""
    return filter_features(run_dfs(events_sample, kind), kind, time_features)


#: the parents whose distinct users / hosts DFS counts (the edges are counted through them)
_HISTORY_NODES = ("users", "source_hosts", "destination_hosts")
_HISTORY_NODE_KEYS = ("user", "source_host", "destination_host")


def run_history_dfs(events_sample: pd.DataFrame, kind: str = DEFAULT_CONNECTION,
                    recent_secs: int = DEFAULT_WINDOW_SECS) -> list[ft.Feature]:  # fmt: skip
    """Every history feature DFS proposes for the cutoff's event (target ``log``) on the
    history EntitySet: per parent COUNT, COUNT_RECENT and TIME_SINCE its first event; per
    host and user the distinct users / hosts ever, recently and first seen recently."""
    from cyberstream.features.primitives import CountRecent, NumFirstSeenRecent, NumUniqueRecent  # noqa: PLC0415

    es = build_entityset(events_sample, kind, history=True)
    columns = {"log": [*_HISTORY_NODE_KEYS, TIME]}
    options = {p: {"include_dataframes": ["log"], "include_columns": columns}
               for p in ("num_unique", "num_unique_recent", "num_first_seen_recent")}  # fmt: skip
    options["count_recent"] = {"include_dataframes": ["log"], "include_columns": {"log": [TIME]}}
    with _quiet_featuretools():
        proposed = ft.dfs(
            entityset=es,
            target_dataframe_name="log",
            max_depth=2,
            agg_primitives=[ft.primitives.Count, ft.primitives.NumUnique, CountRecent(recent_secs),
                            NumUniqueRecent(recent_secs), NumFirstSeenRecent(recent_secs)],
            trans_primitives=[ft.primitives.TimeSince],
            ignore_dataframes=[target_dataframe(kind)] if kind != "name_host_pair" else [],
            primitive_options=options,
            features_only=True,
        )  # fmt: skip
    return proposed


def history_drop_reason(feature: ft.Feature) -> str | None:
    """Why a proposed history feature is not kept (None: kept)."""
    from cyberstream.features.history import HistoryUnsupported, compile_history  # noqa: PLC0415

    if "label" in feature_columns(feature):
        return "derived from the label"
    try:
        spec, _ = compile_history(feature)
    except HistoryUnsupported as exc:
        return f"not a history feature of the engine ({exc})"
    if spec.edge and spec.parent not in _HISTORY_NODES:
        return "distinct counts only on hosts and users"
    return None


def history_feature_definitions(
    events_sample: pd.DataFrame, kind: str = DEFAULT_CONNECTION, recent_secs: int = DEFAULT_WINDOW_SECS
) -> tuple[list[ft.Feature], dict[str, str]]:
    """The history features to save (DFS on the history EntitySet, filtered) and the dropped ones."""
    kept, dropped = [], {}
    for f in run_history_dfs(events_sample, kind, recent_secs):
        reason = history_drop_reason(f)
        if reason is None:
            kept.append(f)
        else:
            dropped[f.get_name()] = reason
    return kept, dropped


def save_features(features: list[ft.Feature], path: str | os.PathLike) -> None:
    ft.save_features(features, str(path))


def load_features(path: str | os.PathLike) -> list[ft.Feature]:
    return ft.load_features(str(path))


# ----------------------------------------------------------------------------- feature matrix


def _engine_matrix(
    events: pd.DataFrame, cutoffs: pd.DataFrame, features: list[ft.Feature], window_secs: int, kind: str,
    engine: str, base_epoch: int, progress: bool,
) -> pd.DataFrame:
    """``cyberstream.features.feature_matrix`` (the one feature interface), aligned with ``cutoffs``."""
    from cyberstream.features import feature_matrix as engine_feature_matrix  # noqa: PLC0415

    order = events.sort_values(["secs", "log_id"], kind="stable")  # engines stream events in time order
    with _quiet_featuretools():
        fm = engine_feature_matrix(order, cutoffs[["connection_id", "cutoff_secs"]], features, window_secs,
                                   kind=kind, engine=engine, base_epoch=base_epoch, progress=progress)
    fm.index = cutoffs.index
    return _normalise_dtypes(fm, features)


def feature_matrix(
    events: pd.DataFrame,
    cutoffs: pd.DataFrame,
    features: list[ft.Feature],
    window_secs: int = DEFAULT_WINDOW_SECS,
    kind: str = DEFAULT_CONNECTION,
    engine: str = "compiled",
    *,
    base_epoch: int = DEFAULT_BASE_EPOCH,
    progress: bool = True,
) -> tuple[pd.DataFrame, str]:
    """Features of each cutoff (``connection_id``, ``cutoff_secs``) and the engine that computed them.

    Rows are aligned with ``cutoffs`` (same index, same order), columns are the feature
    names (numeric as float64, categorical as object). ``engine="compiled"`` is the
    detector's compiled engine; ``engine="oracle"`` is featuretools itself, through
    :func:`batched_oracle_feature_matrix` (few calls) or, for features the batched form
    cannot take, :func:`oracle_feature_matrix`. Returns ``(matrix, "compiled" |
    "oracle-batched" | "oracle")``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "compiled":
        return _engine_matrix(events, cutoffs, features, window_secs, kind, engine, base_epoch, progress), engine
    if all(batch_safe(f, kind) for f in features):
        fm = batched_oracle_feature_matrix(events, cutoffs, features, window_secs, kind, base_epoch=base_epoch,
                                           progress=progress)
        return fm, "oracle-batched"
    return oracle_feature_matrix(events, cutoffs, features, window_secs, kind, base_epoch=base_epoch,
                                 progress=progress), "oracle"


def oracle_feature_matrix(
    events: pd.DataFrame,
    cutoffs: pd.DataFrame,
    features: list[ft.Feature],
    window_secs: int = DEFAULT_WINDOW_SECS,
    kind: str = DEFAULT_CONNECTION,
    *,
    base_epoch: int = DEFAULT_BASE_EPOCH,
    progress: bool = True,
) -> pd.DataFrame:
    """The definition: featuretools on the events so far, per cutoff time (the detector's
    oracle engine, ``cyberstream.features.oracle``)."""
    return _engine_matrix(events, cutoffs, features, window_secs, kind, "oracle", base_epoch, progress)


def batch_safe(feature: ft.Feature, kind: str = DEFAULT_CONNECTION) -> bool:
    """Whether renaming connection/pair ids and shifting the time index leave ``feature`` unchanged.

    Unsafe: features reading a datetime column, and categorical features whose values are
    index values (``MODE(log.name_host_pairs.session_id)``). Numeric features reach
    categorical columns only through ``COUNT``/``NUM_UNIQUE``, which do not change when
    ids are renamed one-to-one.
    """
    cols = feature_columns(feature)
    if cols & _time_columns(feature) - {"secs"}:
        return False
    return not (is_categorical(feature) and cols & {"log_id", PAIR_INDEX, target_index(kind)})


def batched_oracle_feature_matrix(
    events: pd.DataFrame,
    cutoffs: pd.DataFrame,
    features: list[ft.Feature],
    window_secs: int = DEFAULT_WINDOW_SECS,
    kind: str = DEFAULT_CONNECTION,
    *,
    base_epoch: int = DEFAULT_BASE_EPOCH,
    max_rows_per_call: int = 400_000,
    progress: bool = True,
) -> pd.DataFrame:
    """The same values as :func:`oracle_feature_matrix`, from few featuretools calls.

    Each cutoff ``(c, t)`` gets its own copy of connection ``c``'s events in
    ``(t - window, t]``, under a connection id and pair ids of its own, with the TIME
    INDEX shifted by ``T - t`` so that every copy's cutoff is the same time ``T``; the
    numeric ``secs`` column keeps its real values. One ``calculate_feature_matrix`` call
    at ``T`` then computes every copy exactly as the per-cutoff EntitySet would: which rows
    and parents fall in the window depends only on ``time - t``, features read ``secs``
    (unchanged), and no saved feature reads index values or a time-index column
    (checked here). ``tests/test_training.py`` compares it with the per-cutoff oracle.
    """
    for f in features:
        if not batch_safe(f, kind):
            raise ValueError(f"feature {f.get_name()} reads index values or time-index values; "
                             "use oracle_feature_matrix")
    conn_col = target_index(kind)
    lf = log_frame(events, kind, base_epoch).sort_values([conn_col, "secs", "log_id"], kind="stable")
    lf = lf.reset_index(drop=True)
    conns = lf[conn_col].to_numpy()
    secs = lf["secs"].to_numpy()
    starts = np.flatnonzero(np.r_[True, conns[1:] != conns[:-1]]) if len(lf) else np.array([], dtype=int)
    first_row = dict(zip(conns[starts], starts, strict=True))
    ends = dict(zip(conns[starts], np.r_[starts[1:], len(lf)], strict=True))
    names = [f.get_name() for f in features]
    cut_conn = cutoffs["connection_id"].to_numpy()
    cut_secs = cutoffs["cutoff_secs"].to_numpy(dtype="int64")
    lo_hi = np.empty((len(cutoffs), 2), dtype=np.int64)
    for i, (c, t) in enumerate(zip(cut_conn, cut_secs, strict=True)):
        if c not in first_row:
            raise KeyError(f"cutoff for unknown connection {c!r}")
        a, b = first_row[c], ends[c]
        lo_hi[i] = (a + np.searchsorted(secs[a:b], t - window_secs, "right"), a + np.searchsorted(secs[a:b], t, "right"))
    sizes = lo_hi[:, 1] - lo_hi[:, 0]
    t_common = int(cut_secs.max()) if len(cut_secs) else 0
    window = f"{int(window_secs)} seconds"
    results = np.empty(len(cutoffs), dtype=object)
    chunks, start, rows = [], 0, 0
    for i, n in enumerate(sizes):
        if rows and rows + n > max_rows_per_call:
            chunks.append((start, i))
            start, rows = i, 0
        rows += n
    if len(cutoffs):
        chunks.append((start, len(cutoffs)))
    with tqdm(total=len(cutoffs), desc="features (oracle, batched)", unit="cutoff", disable=not progress,
              leave=False) as bar:
        for a, b in chunks:
            idx = np.concatenate([np.arange(lo, hi) for lo, hi in lo_hi[a:b]])
            copy = np.repeat(np.arange(a, b), sizes[a:b])
            part = lf.iloc[idx].copy()
            key = pd.Series(copy, index=part.index).astype(str)
            part[conn_col] = key.to_numpy()
            if kind != "name_host_pair":
                part[PAIR_INDEX] = (part[PAIR_INDEX] + "#" + key).to_numpy()
            shift = pd.to_timedelta(t_common - cut_secs[copy], unit="s")
            part[TIME] = part[TIME].to_numpy() + shift.to_numpy()
            part["log_id"] = np.arange(len(part))
            es = build_entityset(part, kind, base_epoch, prepared=True)
            keys = [str(i) for i in range(a, b)]
            ct = pd.DataFrame({conn_col: keys, "time": [to_time(t_common, base_epoch)] * len(keys)})
            with _quiet_featuretools():
                fm = ft.calculate_feature_matrix(features, es, cutoff_time=ct, training_window=window,
                                                 cutoff_time_in_index=False, verbose=False)
            for k, row in zip(fm.index, fm[names].itertuples(index=False, name=None), strict=True):
                results[int(k)] = row
            bar.update(b - a)
    fm = pd.DataFrame.from_records(list(results), columns=names, index=cutoffs.index)
    return _normalise_dtypes(fm, features)


def _normalise_dtypes(fm: pd.DataFrame, features: Iterable[ft.Feature]) -> pd.DataFrame:
    """Numeric features as float64 (NaN for missing), categorical ones as object (None for missing)."""
    for f in features:
        name = f.get_name()
        if is_categorical(f):
            col = fm[name].astype(object)
            fm[name] = col.where(pd.notna(col), None)
        else:
            fm[name] = pd.to_numeric(fm[name], errors="coerce").astype("float64")
    return fm
