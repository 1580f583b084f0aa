"""Alerts: their id, their JSON form (cyberstream/schemas/alert.schema.json), what drove them."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np


def alert_id(connection: str, cutoff_secs: int) -> str:
    """Deterministic id of the alert of ``connection`` at ``cutoff_secs`` (same on every replay)."""
    return hashlib.sha256(f"{connection}|{int(cutoff_secs)}".encode()).hexdigest()[:32]


def json_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    try:
        if value != value:  # pandas NA / NaT
            return None
    except (TypeError, ValueError):
        return None
    return str(value)


class FeatureExplainer:
    """Ranks the features behind a score: |value - training mean| / training std x importance.

    Importances and per-feature statistics come from the model metadata; a feature without
    statistics is ranked by importance alone. Cheap enough to run for every alert.
    """

    def __init__(self, importances: dict[str, float], stats: dict[str, dict[str, float]], top: int = 5):
        self.importances = importances
        self.stats = stats
        self.top = top

    def explain(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        ranked = []
        for name, value in row.items():
            weight = float(self.importances.get(name, 0.0))
            if weight <= 0:
                continue
            st = self.stats.get(name)
            z = 1.0
            if st is not None and isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                v = float(value)
                if math.isnan(v):
                    continue
                z = abs(v - st.get("mean", 0.0)) / (st.get("std") or 1.0)
            ranked.append((weight * z, name, value))
        ranked.sort(key=lambda t: (-t[0], t[1]))
        return [{"name": n, "value": json_value(v), "contribution": round(c, 6)} for c, n, v in ranked[: self.top]]


def build_alert(
    *,
    connection: str,
    kind: str,
    cutoff_secs: int,
    log_id: int,
    batch_score: float,
    online_score: float | None,
    online_weight: float,
    score: float,
    threshold: float,
    model_version: str,
    events_in_window: int,
    top_features: list[dict[str, Any]],
    detected_at: float,
) -> dict[str, Any]:
    """The alert object published on the alert topic."""
    return {
        "alert_id": alert_id(connection, cutoff_secs),
        "connection": connection,
        "connection_kind": kind,
        "cutoff_secs": int(cutoff_secs),
        "log_id": int(log_id),
        "batch_score": round(float(batch_score), 6),
        "online_score": None if online_score is None else round(float(online_score), 6),
        "online_weight": round(float(online_weight), 6),
        "score": round(float(score), 6),
        "threshold": float(threshold),
        "model_version": model_version,
        "events_in_window": int(events_in_window),
        "top_features": top_features,
        "detected_at": round(detected_at, 3),
    }
