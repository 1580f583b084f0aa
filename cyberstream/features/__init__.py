"""Feature computation shared by training and the detector.

One interface (:class:`FeatureEngine`): ``observe`` events, ``features_at`` cutoffs,
``advance`` the watermark, ``stats``. Two engines: :class:`CompiledEngine` (the saved DFS
definitions compiled into incremental window state, fast) and :class:`OracleEngine`
(featuretools itself, the definition). :func:`feature_matrix` streams a whole events
DataFrame through either. Engines are imported lazily so importing this package is cheap.
"""

from __future__ import annotations

from .base import (
    CUTOFF_COLUMN,
    DEFAULT_MAX_EVENTS_PER_CONNECTION,
    Cutoff,
    EngineStats,
    FeatureEngine,
    feature_names,
    features_equal,
    load_feature_defs,
)
from .matrix import ENGINES, feature_matrix, make_engine


def __getattr__(name: str):
    if name == "CompiledEngine":
        from .compiled import CompiledEngine

        return CompiledEngine
    if name == "OracleEngine":
        from .oracle import OracleEngine

        return OracleEngine
    raise AttributeError(name)


__all__ = [
    "CUTOFF_COLUMN",
    "DEFAULT_MAX_EVENTS_PER_CONNECTION",
    "ENGINES",
    "CompiledEngine",
    "Cutoff",
    "EngineStats",
    "FeatureEngine",
    "OracleEngine",
    "feature_matrix",
    "feature_names",
    "features_equal",
    "load_feature_defs",
    "make_engine",
]
