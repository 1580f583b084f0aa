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


def log_frame(events: pd.DataFrame, kind: str = DEFAULT_CONNECTION, base_epoch: int = DEFAULT_BASE_EPOCH) -> pd.DataFrame:
    """The ``log`` dataframe from events (columns of the schema plus ``log_id``).

    Adds ``time``, ``name_host_pair`` and the connection id; drops ``label`` if present.
    Attribute fields keep missing values as NaN.
    """
    df = events.drop(columns=["label"], errors="ignore").copy()
    df["secs"] = df["secs"].astype("int64")
    df[TIME] = to_time(df["secs"], base_epoch)
    df[PAIR_INDEX] = _join(df, IDENTITY_FIELDS)
    if kind != "name_host_pair":
        df[target_index(kind)] = _join(df, connection_fields(kind))
    return df


def build_entityset(
    events: pd.DataFrame,
    kind: str = DEFAULT_CONNECTION,
    base_epoch: int = DEFAULT_BASE_EPOCH,
    *,
    prepared: bool = False,
) -> ft.EntitySet:
    """Build the ``log -> name_host_pairs -> <connections>`` EntitySet from events.

    ``prepared=True`` means ``events`` already went through :func:`log_frame`.
    """
    df = events if prepared else log_frame(events, kind, base_epoch)
    conn_fields = connection_fields(kind)
    conn_index = target_index(kind)
    columns = ["log_id", "secs", TIME, PAIR_INDEX, *IDENTITY_FIELDS, *ATTRIBUTE_FIELDS]
    if kind != "name_host_pair":
        columns.append(conn_index)
    logical_types = {f: Categorical for f in (*IDENTITY_FIELDS, *ATTRIBUTE_FIELDS, PAIR_INDEX)}
    logical_types.update({"secs": Integer, TIME: Datetime})
    if kind != "name_host_pair":
        logical_types[conn_index] = Categorical
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
    es.add_last_time_indexes()
    return es
