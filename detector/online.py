"""The online River model: learns from delayed analyst labels while the stream flows.

Choice: ``LogisticRegression`` (Adam) with a positive-class weight. Why:
labels arrive late and are rare (a few hundred malicious events in ten days), so the model
must learn from a handful of positives without forgetting them, react to a new campaign
within minutes of event time, and score *every* cutoff in mini-batches. A linear model
does all three cheaply (``learn_many`` / ``predict_proba_many`` on a DataFrame, a few
microseconds per row), its state is tiny to checkpoint, and its weights explain a score.
Tree ensembles (ARF, Hoeffding trees) need many more positives to split on and are two
orders of magnitude slower per row.

Inputs: the numeric DFS features only (categorical MODE features are left to the batch
model), passed through ``sign(x) * log1p(|x|)`` so heavy-tailed counts and absolute
``secs`` sums do not dominate the updates, with NaN as 0, then standardised with running
statistics of the learnt rows (Chan's parallel update; River's StandardScaler was not
used: its mini-batch variance went negative on near-constant columns here).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import narwhals.stable.v2 as nw
import numpy as np
import pandas as pd
from numba import njit


def _squash(values: np.ndarray) -> np.ndarray:
    values = np.sign(values) * np.log1p(np.abs(values))
    values[~np.isfinite(values)] = 0.0
    return values


def _standardise(squashed: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.clip((squashed - mean) / std, -10.0, 10.0)


@njit(cache=True)
def _scale_update(squashed: np.ndarray, n_a: int, mean_a: np.ndarray, m2_a: np.ndarray) -> tuple:
    """Chan et al.'s parallel update of count, mean and M2 with a batch: stable for any size.

    Compiled: on a learning step's few dozen rows, the dozen numpy calls it took cost more in
    dispatch than in arithmetic. Rows are summed in order, as numpy's reductions over the
    first axis of a C array do (so the result is the same to the bit), whatever the layout.
    """
    n_b, m = squashed.shape
    mean_b = np.zeros(m)
    for i in range(n_b):
        for j in range(m):
            mean_b[j] += squashed[i, j]
    mean_b /= n_b
    m2_b = np.zeros(m)
    for i in range(n_b):
        for j in range(m):
            d = squashed[i, j] - mean_b[j]
            m2_b[j] += d * d
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n


@dataclass(frozen=True, eq=False)  # compared by identity: one per learning step
class OnlineSnapshot:
    """The online model frozen at one learning step: what scoring a cutoff of that step needs.

    ``predict`` is River's own arithmetic (``loss.mean_func(X @ w + intercept)``) on the same
    scaled inputs, without River's per-call DataFrame handling, so that cutoffs scored in
    one batch can each use the model of their own step. (It can differ from River's result
    in the last bit: the dot product's rounding follows the inputs' memory layout.)
    """

    weights: np.ndarray
    intercept: float
    mean: np.ndarray
    std: np.ndarray
    mean_func: Callable[[np.ndarray], np.ndarray]
    n_positive: int

    def predict(self, values: np.ndarray) -> np.ndarray:
        """P(malicious) per row of raw numeric feature values (columns in the model's order)."""
        z = _standardise(_squash(np.asarray(values, dtype="float64")), self.mean, self.std)
        return np.asarray(self.mean_func(z @ self.weights + self.intercept), dtype="float64")


class OnlineModel:
    """A River logistic regression over the numeric features, learnt in mini-batches."""

    def __init__(self, feature_names: Sequence[str], positive_weight: float = 1.0, learning_rate: float = 0.01):
        from river import linear_model, optim

        self.feature_names = list(feature_names)
        self.model = linear_model.LogisticRegression(
            optimizer=optim.Adam(learning_rate),
            loss=optim.losses.Log(weight_pos=positive_weight, weight_neg=1.0),
            l2=1e-4,
        )
        self.n_learned = 0
        self.n_positive = 0
        # running standardisation of the squashed inputs (updated on learning only)
        self._n = 0
        self._mean = np.zeros(len(self.feature_names))
        self._m2 = np.zeros(len(self.feature_names))

    def _std(self) -> np.ndarray:
        std = np.sqrt(self._m2 / max(1, self._n - 1))
        std[std == 0] = 1.0
        return std

    def _scaled(self, values: np.ndarray, learn: bool = False) -> np.ndarray:
        """River's inputs from raw values; learning updates the scaling first."""
        x = _squash(np.asarray(values, dtype="float64"))
        if learn:
            self._update_scale(x)
        return _standardise(x, self._mean, self._std())

    def _inputs(self, features: pd.DataFrame) -> pd.DataFrame:
        x = features.reindex(columns=self.feature_names)
        return pd.DataFrame(self._scaled(x.to_numpy(dtype="float64", na_value=np.nan)), columns=x.columns,
                            index=x.index)  # fmt: skip

    def snapshot(self) -> OnlineSnapshot | None:
        """The model as it stands (None while it has learnt nothing)."""
        if self.n_learned == 0:
            return None
        return OnlineSnapshot(
            weights=self.model._weights.to_numpy(self.feature_names).astype("float64"),
            intercept=float(self.model.intercept),
            mean=self._mean.copy(),
            std=self._std(),
            mean_func=self.model.loss.mean_func,
            n_positive=self.n_positive,
        )

    def _update_scale(self, values: np.ndarray) -> None:
        self._n, self._mean, self._m2 = _scale_update(values, self._n, self._mean, self._m2)

    def learn(self, features: pd.DataFrame, labels: Sequence[bool]) -> None:
        """Learn from resolved cutoffs (features as scored, labels from the label topic)."""
        if features.empty:
            return
        x = features.reindex(columns=self.feature_names).to_numpy(dtype="float64", na_value=np.nan)
        self.learn_values(x, np.asarray(labels, dtype=bool))

    def learn_values(self, values: np.ndarray, labels: np.ndarray) -> None:
        """:meth:`learn` given the raw numeric features as an array (columns in the model's
        order): no DataFrame round trip for the detector, which holds arrays."""
        if not len(values):
            return
        inputs = self._batch_inputs(len(values))
        if inputs is None:
            x = nw.from_numpy(np.ascontiguousarray(self._scaled(values, learn=True)), schema=self.feature_names,
                              backend="pandas")  # fmt: skip
            y = nw.new_series("y", labels.astype(bool), backend="pandas")
        else:
            xbuf, ybuf, x, y = inputs
            xbuf[:] = self._scaled(values, learn=True)
            ybuf[:] = labels
        self.model.learn_many(x, y)
        self.n_learned += len(values)
        self.n_positive += int(labels.sum())

    #: batch sizes whose River inputs are kept for reuse (a learning step resolves a few dozen)
    MAX_REUSED_SIZES = 256

    def _batch_inputs(self, n: int) -> tuple[np.ndarray, np.ndarray, Any, Any] | None:
        """A narwhals frame and series of ``n`` rows over buffers of their own, made once per size.

        Wrapping new data for River (``learn_many`` takes narwhals-compatible frames) costs
        more than River's update itself for a few dozen rows, so each size's inputs are
        wrapped once and their buffers rewritten; pandas frames built from an array are views
        of it, which is checked here (None: build fresh inputs instead).
        """
        cache = self.__dict__.setdefault("_inputs_by_size", {})
        found = cache.get(n)
        if found is None:
            if len(cache) >= self.MAX_REUSED_SIZES:
                cache.clear()
            xbuf = np.zeros((n, len(self.feature_names)))
            ybuf = np.zeros(n, dtype=bool)
            frame = pd.DataFrame(xbuf, columns=self.feature_names, copy=False)
            series = pd.Series(ybuf, name="y", copy=False)
            shared = np.shares_memory(frame.to_numpy(), xbuf) and np.shares_memory(series.to_numpy(), ybuf)
            found = cache[n] = (xbuf, ybuf, nw.from_native(frame, eager_only=True),
                                nw.from_native(series, series_only=True)) if shared else False  # fmt: skip
        return found or None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_inputs_by_size", None)  # buffers, not state: the checkpoint stays small
        return state

    def weights(self) -> dict[str, float]:
        """The linear weights per feature (on the scaled inputs)."""
        return dict(self.model.weights)

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_bytes(data: bytes) -> OnlineModel:
        model = pickle.loads(data)
        if not isinstance(model, OnlineModel):
            raise TypeError(f"checkpoint holds a {type(model).__name__}, not an OnlineModel")
        return model


def online_features(feature_frame: pd.DataFrame) -> list[str]:
    """The columns of a feature matrix the online model uses: the numeric ones."""
    return [c for c in feature_frame.columns if pd.api.types.is_numeric_dtype(feature_frame[c].dtype)
            and not pd.api.types.is_bool_dtype(feature_frame[c].dtype)]  # fmt: skip
