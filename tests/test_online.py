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


def test_the_compiled_scale_update_is_chans_update_to_the_bit():
    from detector.online import _scale_update

    rng = np.random.default_rng(11)
    n, mean, m2 = 0, np.zeros(7), np.zeros(7)
    rows = []
    for size in (1, 30, 69, 2, 500):
        x = rng.lognormal(1, 2, size=(size, 7)) * rng.choice([-1.0, 1.0], size=(size, 7))
        rows.append(x)
        # numpy's formulas (reductions over the first axis of a C array add the rows in order)
        mean_b, m2_b = x.mean(axis=0), ((x - x.mean(axis=0)) ** 2).sum(axis=0)
        delta = mean_b - mean
        expected = (n + size, mean + delta * size / (n + size), m2 + m2_b + delta**2 * n * size / (n + size))
        n, mean, m2 = _scale_update(x, n, mean, m2)
        assert n == expected[0] and np.array_equal(mean, expected[1]) and np.array_equal(m2, expected[2])
    everything = np.vstack(rows)  # and it is the running mean and variance of all the rows
    np.testing.assert_allclose(mean, everything.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m2 / (n - 1), everything.var(axis=0, ddof=1), rtol=1e-10)
