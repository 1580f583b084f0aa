"""The online model: River learns; a snapshot scores cutoffs exactly as River would."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detector.online import OnlineModel


def test_snapshot_scores_equal_rivers_predict_and_stay_frozen():
    rng = np.random.default_rng(3)
    cols = [f"f{i}" for i in range(12)]
    model = OnlineModel(cols, positive_weight=5.0)
    assert model.snapshot() is None  # nothing learnt: no online score
    for _ in range(4):
        x = pd.DataFrame(rng.lognormal(3, 2, size=(80, len(cols))), columns=cols)
        model.learn(x, list(rng.random(80) < 0.2))
    snap = model.snapshot()
    x = pd.DataFrame(rng.lognormal(3, 2, size=(40, len(cols))), columns=cols)
    x.iloc[0, 0], x.iloc[1, 1] = np.nan, np.inf
    river = model.model.predict_proba_many(model._inputs(x))[True].to_numpy()
    assert np.array_equal(snap.predict(x.to_numpy()), river)
    assert 0 < river.min() < river.max() < 1
    before = snap.predict(x.to_numpy())
    model.learn(x, [True] * len(x))  # later learning does not move an earlier snapshot
    assert np.array_equal(snap.predict(x.to_numpy()), before)
    assert not np.array_equal(model.snapshot().predict(x.to_numpy()), before)
