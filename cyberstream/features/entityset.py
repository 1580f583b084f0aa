"""The EntitySet shape, defined once for training and the detector.

``log`` (one row per event, index ``log_id``, datetime time index ``time``)
-> ``name_host_pairs`` (``src_name / dest_name / src_host / dest_host``)
-> the connection dataframe (``sessions``, index ``session_id`` = ``src_name / dest_name``,
by default; other connection kinds from :mod:`cyberstream.connections` work the same way).

The time index is a datetime (``base_epoch + secs``) because featuretools' training
window needs one (numeric time indexes make ``training_window`` fail); ``secs`` stays an
ordinary numeric column, as in the demo. Last-time indexes are added so a training window
keeps parents that were *active* in the window, not only those *first seen* in it.
The ``label`` column never enters the EntitySet.

With ``history=True`` the same EntitySet gains the parents an attacker changes: the
event's user (``users``, from ``src_name``), source host, destination host, and the three
edges between them (user -> source host, source -> destination host, user -> destination
host), each a parent of ``log`` (:data:`HISTORY_PARENTS`). The history features
(:mod:`training.dfs`, target ``log``: the cutoff's own event) are aggregations of these
parents over every event so far, and over the recent window through the primitives of
:mod:`cyberstream.features.primitives`.
"""

from __future__ import annotations

import featuretools as ft
import pandas as pd
from woodwork.logical_types import Categorical, Datetime, Integer

from cyberstream.config import DEFAULT_BASE_EPOCH
from cyberstream.connections import DEFAULT_CONNECTION, SEPARATOR, connection_fields
from cyberstream.schema import ATTRIBUTE_FIELDS, IDENTITY_FIELDS

LOG = "log"
PAIRS = "name_host_pairs"
PAIR_INDEX = "name_host_pair"
TIME = "time"

#: history parents of ``log``: dataframe name -> (index column, the event fields it joins).
HISTORY_PARENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "users": ("user", ("src_name",)),
    "source_hosts": ("source_host", ("src_host",)),
    "destination_hosts": ("destination_host", ("dest_host",)),
    "user_sources": ("user_source", ("src_name", "src_host")),
    "source_destinations": ("source_destination", ("src_host", "dest_host")),
    "user_destinations": ("user_destination", ("src_name", "dest_host")),
}
#: the columns of ``log`` that name a history parent
HISTORY_KEYS: tuple[str, ...] = tuple(index for index, _ in HISTORY_PARENTS.values())


def target_dataframe(kind: str = DEFAULT_CONNECTION) -> str:
    """Name of the dataframe that holds one row per connection of ``kind``."""
    return PAIRS if kind == "name_host_pair" else f"{kind}s"


def target_index(kind: str = DEFAULT_CONNECTION) -> str:
    """Index column of the connection dataframe (``session_id`` for sessions)."""
    return PAIR_INDEX if kind == "name_host_pair" else f"{kind}_id"


def to_time(secs: pd.Series | int, base_epoch: int = DEFAULT_BASE_EPOCH):
    """The datetime time index value(s) for event-time ``secs``."""
    base = pd.Timestamp(base_epoch, unit="s")
    if isinstance(secs, pd.Series):
        return base + pd.to_timedelta(secs.astype("int64"), unit="s")
    return base + pd.Timedelta(seconds=int(secs))


def _join(df: pd.DataFrame, fields: tuple[str, ...]) -> pd.Series:
    out = df[fields[0]].astype(str)
    for f in fields[1:]:
        out = out + SEPARATOR + df[f].astype(str)
    return out


def log_frame(
    events: pd.DataFrame, kind: str = DEFAULT_CONNECTION, base_epoch: int = DEFAULT_BASE_EPOCH, *, history: bool = False
) -> pd.DataFrame:
    """The ``log`` dataframe from events (columns of the schema plus ``log_id``).

    Adds ``time``, ``name_host_pair`` and the connection id (and, with ``history``, the
    keys of :data:`HISTORY_PARENTS`); drops ``label`` if present. Attribute fields keep
    missing values as NaN.
    """
    df = events.drop(columns=["label"], errors="ignore").copy()
    df["secs"] = df["secs"].astype("int64")
    df[TIME] = to_time(df["secs"], base_epoch)
    df[PAIR_INDEX] = _join(df, IDENTITY_FIELDS)
    if kind != "name_host_pair":
        df[target_index(kind)] = _join(df, connection_fields(kind))
    if history:
        for index, fields in HISTORY_PARENTS.values():
            df[index] = _join(df, fields)
    return df


def build_entityset(
    events: pd.DataFrame,
    kind: str = DEFAULT_CONNECTION,
    base_epoch: int = DEFAULT_BASE_EPOCH,
    *,
    prepared: bool = False,
    history: bool = False,
) -> ft.EntitySet:
    """Build the ``log -> name_host_pairs -> <connections>`` EntitySet from events.

    ``prepared=True`` means ``events`` already went through :func:`log_frame` (with the
    same ``history``). ``history=True`` adds the parents of :data:`HISTORY_PARENTS`.
    """
    df = events if prepared else log_frame(events, kind, base_epoch, history=history)
    conn_fields = connection_fields(kind)
    conn_index = target_index(kind)
    columns = ["log_id", "secs", TIME, PAIR_INDEX, *IDENTITY_FIELDS, *ATTRIBUTE_FIELDS]
    if kind != "name_host_pair":
        columns.append(conn_index)
    logical_types = {f: Categorical for f in (*IDENTITY_FIELDS, *ATTRIBUTE_FIELDS, PAIR_INDEX)}
    logical_types.update({"secs": Integer, TIME: Datetime})
    if kind != "name_host_pair":
        logical_types[conn_index] = Categorical
    if history:
        columns.extend(HISTORY_KEYS)
        logical_types.update({key: Categorical for key in HISTORY_KEYS})
    es = ft.EntitySet(id="cyberstream")
    es.add_dataframe(
        dataframe_name=LOG,
        dataframe=df[columns].copy(),
        index="log_id",
        time_index=TIME,
        logical_types=logical_types,
    )
    pair_columns = list(IDENTITY_FIELDS)
    if kind != "name_host_pair":
        pair_columns.append(conn_index)
    es.normalize_dataframe(
        base_dataframe_name=LOG,
        new_dataframe_name=PAIRS,
        index=PAIR_INDEX,
        additional_columns=pair_columns,
        make_time_index=True,
    )
    if kind != "name_host_pair":
        es.normalize_dataframe(
            base_dataframe_name=PAIRS,
            new_dataframe_name=target_dataframe(kind),
            index=conn_index,
            additional_columns=list(conn_fields),
            make_time_index=True,
        )
    if history:
        for name, (index, _) in HISTORY_PARENTS.items():
            es.normalize_dataframe(base_dataframe_name=LOG, new_dataframe_name=name, index=index, make_time_index=True)
    es.add_last_time_indexes()
    return es
