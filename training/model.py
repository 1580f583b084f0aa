"""The batch model: candidate pipelines, metrics, threshold, and the saved artifact.

Pipelines
    Every candidate is ONE scikit-learn ``Pipeline`` that takes the raw feature DataFrame
    (the columns of ``features.json``, as featuretools or the detector's engine computes
    them) and returns scores: it coerces dtypes, one-hot encodes the few categorical
    features (the MODE of ``auth_type``/``login_type``/``stage``/``result``; encoder fitted
    on training rows, unseen values go to an "infrequent" column) and handles missing values
    itself, so the detector only calls ``predict_proba(feature_df)``. The classifiers suit
    heavy imbalance with ``class_weight="balanced"``: histogram gradient boosting, logistic
    regression (on signed-log, standardised inputs) and a random forest.

Metrics
    Computed on validation cutoffs with the sampling weights (see :mod:`training.cutoffs`),
    so precision, PR AUC and alerts per day estimate the figures over every cutoff the
    detector would score. The threshold maximises F1 on the validation cutoffs (optionally
    under an alert budget per day); precision and recall at that threshold are therefore
    in-sample for the threshold choice, while ROC AUC and PR AUC are threshold-free.

Artifact (a model directory)
    ``model.joblib`` (the pipeline), ``features.json`` (``featuretools.save_features``),
    ``metadata.json`` (library versions, feature names, label spec, window, metrics,
    threshold, SHA-256 of the model and feature files) and ``report.html``.
    :func:`load_model` refuses a directory whose checksums or library versions do not match.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

log = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
FEATURES_FILE = "features.json"
#: the history features (their own EntitySet, so their own featuretools file); absent without them
HISTORY_FEATURES_FILE = "history_features.json"
METADATA_FILE = "metadata.json"
REPORT_FILE = "report.html"
FORMAT_VERSION = 1
#: libraries whose versions must match between training and loading (pickles and feature semantics).
CHECKED_LIBRARIES = ("scikit-learn", "numpy", "scipy", "pandas", "joblib", "featuretools", "woodwork")
MISSING_CATEGORY = "__missing__"
CLASSIFIERS = ("hist_gradient_boosting", "logistic_regression", "random_forest")
SECONDS_PER_DAY = 86_400


class ModelLoadError(RuntimeError):
    """A model directory that cannot be used as it is; the message says what to do."""


# ----------------------------------------------------------------------------- pipelines


def numeric_values(X: pd.DataFrame, numeric: list[str]) -> np.ndarray:
    """The numeric columns as one float64 block, inf as NaN (strings among them coerced)."""
    values = np.empty((len(X), len(numeric)), order="F")
    try:  # column by column: float64 columns as they are (the detector scores every batch)
        for j, c in enumerate(numeric):
            col = X[c]
            values[:, j] = col.to_numpy() if col.dtype == np.float64 else col.to_numpy(dtype="float64", na_value=np.nan)
    except (TypeError, ValueError):  # strings among them: coerce every column
        values = np.column_stack(
            [pd.to_numeric(X[c], errors="coerce").to_numpy(dtype="float64", na_value=np.nan) for c in numeric]
        )
    values[~np.isfinite(values)] = np.nan
    return values


def category_codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A categorical feature column as codes into its names (strings; missing as a marker)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        names = np.append(col.cat.categories.astype(str).to_numpy(dtype=object), MISSING_CATEGORY)
        codes = col.cat.codes.to_numpy().astype(np.int64)
        codes[codes < 0] = len(names) - 1  # missing: the marker
        return codes, names
    col = col.astype(object)
    codes, names = pd.factorize(col.where(pd.notna(col), MISSING_CATEGORY).astype(str))
    return codes.astype(np.int64), np.asarray(names, dtype=object)


def coerce_features(X: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Numeric columns as float64 (inf -> NaN), categorical ones as strings (missing -> a marker).

    Module-level so that pickled pipelines can find it (``training.model.coerce_features``).
    """
    out = pd.DataFrame(numeric_values(X, numeric), index=X.index, columns=numeric)
    for c in categorical:
        codes, names = category_codes(X[c])
        out[c] = names[codes]
    return out


def signed_log1p(X):
    """``sign(x) * log1p(|x|)``: tames heavy-tailed counts and spreads for linear models."""
    return np.sign(X) * np.log1p(np.abs(X))


def build_pipeline(name: str, numeric: list[str], categorical: list[str], seed: int = 0) -> Pipeline:
    """The candidate pipeline ``name`` (one of :data:`CLASSIFIERS`) over these feature columns."""
    onehot = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5, sparse_output=False)
    if name == "hist_gradient_boosting":
        num = "passthrough"  # NaN handled natively
        clf = HistGradientBoostingClassifier(
            class_weight="balanced", max_iter=100, learning_rate=0.1, max_leaf_nodes=15,
            min_samples_leaf=40, l2_regularization=1.0, early_stopping=False, random_state=seed,
        )  # fmt: skip
    elif name == "logistic_regression":
        num = Pipeline([
            ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
            ("log", FunctionTransformer(signed_log1p, feature_names_out="one-to-one")),
            ("scale", StandardScaler()),
        ])  # fmt: skip
        clf = LogisticRegression(class_weight="balanced", C=0.1, max_iter=2000)
    elif name == "random_forest":
        num = SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)
        clf = RandomForestClassifier(
            n_estimators=200, class_weight="balanced_subsample", min_samples_leaf=5,
            max_features="sqrt", n_jobs=1, random_state=seed,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown classifier {name!r}; choose from {CLASSIFIERS}")
    columns = ColumnTransformer(
        [("numeric", num, list(numeric)), ("categorical", onehot, list(categorical))],
        remainder="drop",
        verbose_feature_names_out=False,
    )
    coerce = FunctionTransformer(coerce_features, kw_args={"numeric": list(numeric), "categorical": list(categorical)})
    return Pipeline([("coerce", coerce), ("columns", columns), ("classifier", clf)])


def scores(pipeline: Pipeline, X: pd.DataFrame) -> np.ndarray:
    """Probability of the positive class for each row of the raw feature DataFrame."""
    return pipeline.predict_proba(X)[:, 1]


class PipelineScorer:
    """:func:`scores` for pipelines whose numeric columns pass through unchanged (the
    gradient boosting one), with the categorical encoding cached.

    The pipeline's own path rebuilds a DataFrame, string columns and their one-hot block
    for every call: about as long as the trees take. Here the numeric block is coerced as
    :func:`coerce_features` does, and each distinct combination of categorical values
    (63 in three days of the generated traffic) is encoded once, by the pipeline's own fitted
    ColumnTransformer, and then reused; the classifier gets the same matrix, so the
    scores are identical (``tests/test_training.py`` checks they are equal).
    """

    MAX_CACHED = 100_000  # combinations kept; the cache starts again beyond that

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        coerce, columns = pipeline.named_steps["coerce"], pipeline.named_steps["columns"]
        self.numeric = list(coerce.kw_args["numeric"])
        self.categorical = list(coerce.kw_args["categorical"])
        self.columns = columns
        self.classifier = pipeline.steps[-1][1]
        self.width = columns.output_indices_["categorical"].stop
        self._encoded: dict[tuple, np.ndarray] = {}

    @classmethod
    def of(cls, pipeline: Pipeline) -> PipelineScorer | None:
        """The scorer for ``pipeline``, or None when it is not of the shape this path reproduces."""
        try:
            coerce, columns = pipeline.named_steps["coerce"], pipeline.named_steps["columns"]
            spec = {name: (t, list(cols)) for name, t, cols in columns.transformers}
            ok = (list(pipeline.named_steps) == ["coerce", "columns", "classifier"]
                  and spec["numeric"] == ("passthrough", list(coerce.kw_args["numeric"]))
                  and spec["categorical"][1] == list(coerce.kw_args["categorical"])
                  and columns.output_indices_["numeric"] == slice(0, len(coerce.kw_args["numeric"]))
                  and columns.output_indices_["remainder"].stop - columns.output_indices_["remainder"].start == 0
                  and not hasattr(pipeline.steps[-1][1], "feature_names_in_"))  # fmt: skip
        except (AttributeError, KeyError, TypeError):
            return None
        return cls(pipeline) if ok else None

    def scores(self, X: pd.DataFrame, numeric: np.ndarray | None = None) -> np.ndarray:
        """``scores(pipeline, X)``, computed faster; ``numeric`` is ``numeric_values(X,
        self.numeric)`` when the caller has it already."""
        n = len(X)
        # Column-major: each tree reads one feature down many rows (the trees ran 13-23 % faster
        # so on the detector's batches; the arithmetic per row, and so each score, is the same).
        matrix = np.empty((n, self.width), order="F")
        if numeric is not None and numeric.shape != (n, len(self.numeric)):
            raise ValueError(f"numeric values of shape {numeric.shape} for {n} rows of {len(self.numeric)} columns")
        matrix[:, : len(self.numeric)] = numeric_values(X, self.numeric) if numeric is None else numeric
        if self.categorical and n:
            codes = np.empty((n, len(self.categorical)), dtype=np.int64)
            names = []
            for j, c in enumerate(self.categorical):
                codes[:, j], column_names = category_codes(X[c])
                names.append(column_names)
            # One integer per row (mixed radix of the codes) makes the distinct rows a fast 1-d unique.
            radix = np.cumprod([1] + [len(v) for v in names[:-1]], dtype=np.float64)
            if radix[-1] * len(names[-1]) < 2**62:
                flat = codes @ radix.astype(np.int64)
                first, inverse = np.unique(flat, return_index=True, return_inverse=True)[1:]
                combos = codes[first]
            else:
                combos, inverse = np.unique(codes, axis=0, return_inverse=True)
            keys = [tuple(names[j][code] for j, code in enumerate(row)) for row in combos.tolist()]
            if len(self._encoded) + len(keys) > self.MAX_CACHED:  # bounded memory, whatever the vocabularies
                self._encoded.clear()
            self._encode([k for k in keys if k not in self._encoded])
            block = np.vstack([self._encoded[k] for k in keys])
            matrix[:, len(self.numeric) :] = block[inverse.reshape(-1)]
        return self.classifier.predict_proba(matrix)[:, 1]

    def _encode(self, keys: list[tuple]) -> None:
        """One-hot blocks of new combinations, through the fitted ColumnTransformer itself."""
        if not keys:
            return
        frame = pd.DataFrame(np.nan, index=range(len(keys)), columns=self.numeric)
        for j, c in enumerate(self.categorical):
            frame[c] = [k[j] for k in keys]
        block = self.columns.transform(frame)[:, len(self.numeric) :]
        for k, row in zip(keys, np.asarray(block, dtype="float64"), strict=True):
            self._encoded[k] = row


# ----------------------------------------------------------------------------- metrics


def choose_threshold(
    y: np.ndarray, score: np.ndarray, weight: np.ndarray, days: float, max_alerts_per_day: float | None = None
) -> tuple[float, str]:
    """The score threshold (alert when ``score >= threshold``) and how it was chosen.

    Maximises F1 over the weighted validation cutoffs; with ``max_alerts_per_day``, only
    among thresholds whose weighted alerts per day stay within that budget.
    """
    how = "maximises F1 on the validation cutoffs (negatives weighted by their sampling rate)"
    if y.sum() == 0:
        return float(np.max(score, initial=0.0)) + 1e-12, "no positive validation cutoff: above every score"
    precision, recall, thresholds = precision_recall_curve(y, score, sample_weight=weight)
    precision, recall = precision[:-1], recall[:-1]
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    if max_alerts_per_day is not None:
        order = np.argsort(score)
        sorted_w = weight[order]
        above = sorted_w[::-1].cumsum()[::-1]  # weighted count of score >= each sorted value
        per_day = above[np.searchsorted(score[order], thresholds, side="left")] / max(days, 1e-9)
        within = per_day <= max_alerts_per_day
        how += f", with at most {max_alerts_per_day:g} alerts per day"
        if not within.any():  # no threshold keeps to the budget: alert as little as possible
            return float(thresholds[-1]), how + " (budget unreachable: the highest score)"
        f1 = np.where(within, f1, -1.0)
    best = int(np.argmax(f1))
    return float(thresholds[best]), how


#: false alerts per day at which the training report gives the recall (an analyst's budget)
BUDGETS = (1, 5, 10, 20)


def budget_threshold(y: np.ndarray, score: np.ndarray, weight: np.ndarray, days: float,
                     false_alerts_per_day: float, groups: np.ndarray | None = None) -> float:  # fmt: skip
    """The lowest threshold whose weighted false alerts per day stay within the budget.

    Analysts work to a number of alerts a day, not to an F1 score: this alerts on as many
    cutoffs as the budget of false ones allows (the most recall it can buy). ``groups``
    (e.g. connection and cooldown period of each cutoff) counts the negatives of one group
    as one false alert, at the group's highest score, as the detector's cooldown does.
    With no negative above any score the lowest score is returned.
    """
    y = np.asarray(y, dtype=bool)
    if groups is not None:
        score, weight, y = _one_negative_per_group(y, score, weight, np.asarray(groups))
    order = np.argsort(-score, kind="stable")
    s, neg = score[order], np.where(y[order], 0.0, weight[order])
    fp_per_day = np.cumsum(neg) / max(days, 1e-9)  # false alerts per day alerting on s[:i+1]
    # thresholds are distinct scores: the false alerts of a threshold are those of its last tie
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    ok = last_of_tie & (fp_per_day <= false_alerts_per_day)
    if not ok.any():
        return float(s[0]) + 1e-12 if len(s) else 1.0
    return float(s[np.flatnonzero(ok)[-1]])


def _one_negative_per_group(y: np.ndarray, score: np.ndarray, weight: np.ndarray,
                            groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Positives as they are, and of each group's negatives the one with the highest score."""
    neg = np.flatnonzero(~y)
    frame = pd.DataFrame({"g": groups[neg], "s": score[neg], "i": neg}).sort_values("s", ascending=False)
    keep = np.sort(np.r_[np.flatnonzero(y), frame.drop_duplicates("g")["i"].to_numpy()]).astype(np.int64)
    return score[keep], weight[keep], y[keep]


def recall_at_budgets(y: np.ndarray, score: np.ndarray, weight: np.ndarray, days: float,
                      budgets: tuple[float, ...] = BUDGETS, groups: np.ndarray | None = None,
                      ) -> dict[str, float | None]:  # fmt: skip
    """Recall of the positive cutoffs at each budget of false alerts per day (see :func:`budget_threshold`)."""
    y = np.asarray(y, dtype=bool)
    if not y.any():
        return {str(b): None for b in budgets}
    out = {}
    for b in budgets:
        thr = budget_threshold(y, score, weight, days, b, groups)
        out[str(b)] = float(weight[y & (score >= thr)].sum() / weight[y].sum())
    return out


def evaluate(y: np.ndarray, score: np.ndarray, weight: np.ndarray, threshold: float, days: float,
             groups: np.ndarray | None = None) -> dict[str, Any]:
    """ROC AUC, PR AUC (average precision), precision, recall, alerts per day at ``threshold``."""
    y = np.asarray(y, dtype=bool)
    alert = score >= threshold
    tp = float(weight[alert & y].sum())
    fp = float(weight[alert & ~y].sum())
    pos = float(weight[y].sum())
    both = y.any() and (~y).any()
    return {
        "roc_auc": float(roc_auc_score(y, score, sample_weight=weight)) if both else None,
        "pr_auc": float(average_precision_score(y, score, sample_weight=weight)) if both else None,
        "precision": tp / (tp + fp) if tp + fp > 0 else None,
        "recall": tp / pos if pos > 0 else None,
        "alerts_per_day": (tp + fp) / days if days > 0 else None,
        "threshold": float(threshold),
        "cutoffs": int(len(y)),
        "positives": int(y.sum()),
        "weighted_cutoffs": float(weight.sum()),
        "false_alerts_per_day": fp / days if days > 0 else None,
        "recall_at_false_alerts_per_day": recall_at_budgets(y, score, weight, days, groups=groups) if days > 0 else {},
    }


def curves(y: np.ndarray, score: np.ndarray, weight: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted ROC and PR curve points, for the report."""
    from sklearn.metrics import roc_curve  # noqa: PLC0415

    fpr, tpr, _ = roc_curve(y, score, sample_weight=weight)
    precision, recall, _ = precision_recall_curve(y, score, sample_weight=weight)
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}


# ----------------------------------------------------------------------------- artifact


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries an artifact depends on, and Python's major.minor."""
    out = {name: importlib.metadata.version(name) for name in CHECKED_LIBRARIES}
    out["python"] = ".".join(platform.python_version_tuple()[:2])
    return out


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(
    model_dir: str | os.PathLike, pipeline: Pipeline, features: list, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Write ``model.joblib``, ``features.json`` and ``metadata.json`` (with checksums); returns the metadata."""
    from training.dfs import save_features  # noqa: PLC0415  (featuretools is heavy)

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    from cyberstream.features.history import is_history_feature  # noqa: PLC0415

    joblib.dump(pipeline, model_dir / MODEL_FILE)
    window = [f for f in features if not is_history_feature(f)]
    history = [f for f in features if is_history_feature(f)]
    if [f.get_name() for f in features] != [f.get_name() for f in window + history]:
        raise ValueError("save_model wants the window features first, then the history features")
    save_features(window, model_dir / FEATURES_FILE)
    (model_dir / HISTORY_FEATURES_FILE).unlink(missing_ok=True)
    meta = dict(metadata)
    if history:
        save_features(history, model_dir / HISTORY_FEATURES_FILE)
        meta.update(history_features_file=HISTORY_FEATURES_FILE,
                    history_features_sha256=sha256_file(model_dir / HISTORY_FEATURES_FILE))
    meta.update(
        format_version=FORMAT_VERSION,
        library_versions=library_versions(),
        feature_names=[f.get_name() for f in features],
        model_file=MODEL_FILE,
        sha256=sha256_file(model_dir / MODEL_FILE),
        features_file=FEATURES_FILE,
        features_sha256=sha256_file(model_dir / FEATURES_FILE),
    )
    (model_dir / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    return meta


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _load_feature_files(model_dir: Path, meta: dict, load_features) -> list:
    """The window features, then the history features (their own file), of a model directory."""
    features = load_features(model_dir / meta["features_file"])
    if "history_features_file" in meta:
        import cyberstream.features.primitives  # noqa: F401, PLC0415  (registers the history primitives)

        features = features + load_features(model_dir / meta["history_features_file"])
    return features


@dataclass
class TrainedModel:
    """A loaded, verified model directory."""

    pipeline: Pipeline
    features: list  # featuretools feature definitions, in the pipeline's column order
    metadata: dict[str, Any]

    @property
    def feature_names(self) -> list[str]:
        return list(self.metadata["feature_names"])

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    def score(self, feature_df: pd.DataFrame, numeric: np.ndarray | None = None) -> np.ndarray:
        """Scores of the rows of a raw feature DataFrame (columns: :attr:`feature_names`).

        ``numeric``: ``numeric_values(feature_df, self.numeric_feature_names)``, when the
        caller has it already (the detector converts each batch once for both models).
        """
        names = self.feature_names
        X = feature_df if list(feature_df.columns) == names else feature_df[names]
        return self._scorer.scores(X, numeric) if self._scorer is not None else scores(self.pipeline, X)

    @property
    def numeric_feature_names(self) -> list[str]:
        """The numeric feature columns, in the order the pipeline's coercion takes them."""
        coerce = self.pipeline.named_steps.get("coerce")
        return list(coerce.kw_args["numeric"]) if coerce is not None else []

    @cached_property
    def _scorer(self) -> PipelineScorer | None:
        return PipelineScorer.of(self.pipeline)


def load_model(model_dir: str | os.PathLike) -> TrainedModel:
    """Load a model directory written by ``cyberstream train``, after checking it.

    Raises :class:`ModelLoadError` when a file is missing, when the SHA-256 of the model
    or feature file differs from ``metadata.json`` (the file changed after training), or
    when the installed library versions differ from the ones it was trained with (a
    pickled pipeline or the feature semantics may silently change across versions).
    """
    model_dir = Path(model_dir)
    meta_path = model_dir / METADATA_FILE
    if not meta_path.is_file():
        raise ModelLoadError(f"{meta_path} not found: train a model first with `cyberstream train --out {model_dir}`")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{meta_path} is not valid JSON ({exc}); retrain with `cyberstream train`") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"{meta_path}: artifact format {meta.get('format_version')!r}, this version reads {FORMAT_VERSION}; "
            "retrain with `cyberstream train`"
        )
    files = [("model_file", "sha256"), ("features_file", "features_sha256")]
    if "history_features_file" in meta:
        files.append(("history_features_file", "history_features_sha256"))
    for file_key, sum_key in files:
        path = model_dir / meta[file_key]
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing (named in {meta_path}); retrain with `cyberstream train`")
        actual = sha256_file(path)
        if actual != meta[sum_key]:
            raise ModelLoadError(
                f"checksum mismatch for {path}: metadata says sha256 {meta[sum_key]}, the file has {actual}. "
                "The file changed after training (corrupt copy or edited); refusing to load it. "
                "Copy the model directory again or retrain with `cyberstream train`."
            )
    installed = library_versions()
    trained = meta.get("library_versions", {})
    diff = [f"{k}: trained with {trained.get(k)}, installed {installed.get(k)}"
            for k in sorted(set(trained) | set(installed)) if trained.get(k) != installed.get(k)]  # fmt: skip
    if diff:
        raise ModelLoadError(
            f"{model_dir} was trained with other library versions ({'; '.join(diff)}). "
            "A pickled pipeline or the feature semantics may differ across versions; install the versions "
            "pinned in pyproject.toml or retrain with `cyberstream train`."
        )
    from training.dfs import load_features  # noqa: PLC0415

    pipeline = joblib.load(model_dir / meta["model_file"])
    try:
        features = _load_feature_files(model_dir, meta, load_features)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{model_dir}: its feature definitions do not load with this version ({exc}); "
                             "retrain with `cyberstream train`") from None
    names = [f.get_name() for f in features]
    if names != meta["feature_names"]:
        raise ModelLoadError(f"{model_dir}: features.json and metadata.json list different features; retrain")
    return TrainedModel(pipeline=pipeline, features=features, metadata=meta)
