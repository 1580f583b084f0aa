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
    # River's arithmetic; the dot product's rounding may differ in the last bit with the layout
    np.testing.assert_allclose(snap.predict(x.to_numpy()), river, rtol=1e-14, atol=0)
    assert 0 < river.min() < river.max() < 1
    before = snap.predict(x.to_numpy())
    model.learn(x, [True] * len(x))  # later learning does not move an earlier snapshot
    assert np.array_equal(snap.predict(x.to_numpy()), before)
    assert not np.array_equal(model.snapshot().predict(x.to_numpy()), before)


def test_reused_river_inputs_learn_exactly_like_fresh_ones():
    rng = np.random.default_rng(7)
    cols = [f"f{i}" for i in range(9)]
    reused, fresh = OnlineModel(cols, positive_weight=3.0), OnlineModel(cols, positive_weight=3.0)
    fresh._batch_inputs = lambda n: None  # always wraps new inputs for River
    for n in (25, 3, 25, 1, 25, 3):  # sizes repeat: their inputs are rewritten in place
        x = rng.lognormal(2, 2, size=(n, len(cols)))
        y = rng.random(n) < 0.3
        reused.learn_values(x, y)
        fresh.learn_values(x, y)
        assert reused.weights() == fresh.weights()
    assert sorted(reused._inputs_by_size) == [1, 3, 25]
    assert reused.n_learned == fresh.n_learned == 82
    restored = OnlineModel.from_bytes(reused.to_bytes())  # the buffers are not checkpointed
    assert "_inputs_by_size" not in restored.__dict__ and restored.weights() == reused.weights()
    x = rng.lognormal(2, 2, size=(25, len(cols)))
    restored.learn_values(x, np.ones(25, dtype=bool))
    fresh.learn_values(x, np.ones(25, dtype=bool))
    assert restored.weights() == fresh.weights()
