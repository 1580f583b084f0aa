"""Custom featuretools aggregation primitives for the history features.

The history features of a cutoff are computed WITHOUT a training window (they see every
event so far); these primitives restrict themselves to the recent window where a feature
needs it, relative to the cutoff time featuretools passes them (``uses_calc_time``):

* ``COUNT_RECENT(log.time)``: rows with ``t - w < time <= t``;
* ``NUM_UNIQUE_RECENT(log.x, log.time)``: distinct values of ``x`` among those rows;
* ``NUM_FIRST_SEEN_RECENT(log.x, log.time)``: distinct values of ``x`` whose FIRST row
  (over all history) lies in the window: e.g. on a source host, the users that logged on
  from it for the first time in the last day, the shape of credential hopping.

``w`` is the primitive's ``window_secs`` argument (saved with the feature definitions).
Importing this module registers them with featuretools, so saved definitions that use
them load (:func:`cyberstream.features.load_feature_defs` imports it first).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from featuretools.primitives import AggregationPrimitive
from woodwork.column_schema import ColumnSchema
from woodwork.logical_types import Datetime, IntegerNullable

DEFAULT_RECENT_SECS = 86_400

_TIME = ColumnSchema(logical_type=Datetime, semantic_tags={"time_index"})
_CATEGORY = ColumnSchema(semantic_tags={"category"})
_COUNT = ColumnSchema(logical_type=IntegerNullable, semantic_tags={"numeric"})


class _Recent(AggregationPrimitive):
    return_type = _COUNT
    uses_calc_time = True
    stack_on_self = False
    stack_on_exclude = []
    default_value = 0

    def __init__(self, window_secs: int = DEFAULT_RECENT_SECS) -> None:
        self.window_secs = int(window_secs)

    def _since(self, time) -> pd.Timestamp:
        return pd.Timestamp(time) - pd.Timedelta(seconds=self.window_secs)


class CountRecent(_Recent):
    """Rows in the window ``(t - window_secs, t]``."""

    name = "count_recent"
    input_types = [_TIME]

    def get_function(self):
        def count_recent(times, time=None):
            return int((times > self._since(time)).sum())

        return count_recent


class NumUniqueRecent(_Recent):
    """Distinct non-missing values among the rows in the window."""

    name = "num_unique_recent"
    input_types = [_CATEGORY, _TIME]

    def get_function(self):
        def num_unique_recent(values, times, time=None):
            return int(pd.Series(values)[np.asarray(times > self._since(time))].nunique())

        return num_unique_recent


class NumFirstSeenRecent(_Recent):
    """Distinct non-missing values whose first row (over all rows given) is in the window."""

    name = "num_first_seen_recent"
    input_types = [_CATEGORY, _TIME]

    def get_function(self):
        def num_first_seen_recent(values, times, time=None):
            frame = pd.DataFrame({"v": np.asarray(values, dtype=object), "t": np.asarray(times)}).dropna()
            if frame.empty:
                return 0
            first = frame.groupby("v", sort=False)["t"].min()
            return int((first > self._since(time)).sum())

        return num_first_seen_recent


HISTORY_PRIMITIVES = (CountRecent, NumUniqueRecent, NumFirstSeenRecent)
