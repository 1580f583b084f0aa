"""The batch model as the detector uses it: loaded, verified, with what scoring needs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from detector.alerts import FeatureExplainer
from training.labels import LabelSpec


@dataclass
class BatchModel:
    """A verified model directory (:func:`training.model.load_model`) and its settings."""

    trained: Any  # training.model.TrainedModel
    online_feature_names: list[str]

    @property
    def metadata(self) -> dict[str, Any]:
        return self.trained.metadata

    @property
    def features(self) -> list:
        return self.trained.features

    @property
    def feature_names(self) -> list[str]:
        return self.trained.feature_names

    @property
    def version(self) -> str:
        return str(self.metadata["sha256"])[:12]

    @property
    def threshold(self) -> float:
        return self.trained.threshold

    @property
    def window_secs(self) -> int:
        return int(self.metadata["window_secs"])

    @property
    def kind(self) -> str:
        return str(self.metadata.get("connection_kind", "session"))

    @property
    def label_spec(self) -> LabelSpec:
        spec = self.metadata.get("label_spec") or {}
        return LabelSpec(**{k: int(v) for k, v in spec.items() if k in ("min_events", "lead", "window")})

    def predict(self, features: pd.DataFrame, numeric: np.ndarray | None = None) -> np.ndarray:
        """P(malicious) for each row of a raw feature DataFrame; ``numeric`` is
        ``training.model.numeric_values(features, self.online_feature_names)`` when the caller
        has it already (used only where those are the pipeline's numeric columns, in its order)."""
        if numeric is not None and not self._shares_numeric:
            numeric = None
        return np.asarray(self.trained.score(features, numeric), dtype="float64")

    @cached_property
    def _shares_numeric(self) -> bool:
        return self.online_feature_names == self.trained.numeric_feature_names

    def explainer(self, top: int = 5) -> FeatureExplainer:
        importances = self.metadata.get("feature_importances") or {n: 1.0 for n in self.feature_names}
        return FeatureExplainer(dict(importances), dict(self.metadata.get("feature_stats") or {}), top=top)


def load_batch_model(model_dir: str | Path) -> BatchModel:
    """Load and verify a model directory; raises ``training.model.ModelLoadError`` with advice."""
    from training.dfs import is_categorical
    from training.model import load_model

    trained = load_model(model_dir)
    numeric = [f.get_name() for f in trained.features if not is_categorical(f)]
    return BatchModel(trained=trained, online_feature_names=numeric)
