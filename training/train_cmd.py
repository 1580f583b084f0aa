"""Train the batch model on a CyberFLTenDays CSV and write a model directory.

Steps: read the CSV strictly (rejected rows are counted and reported), label every cutoff
of every connection (the shared label function: a cutoff at the last event of each second
after N events; label = any of the events k+L .. k+L+W-1 malicious), split by time
(train on cutoffs whose label is known by --train-until-secs, validate on the later ones;
never shuffled), keep every positive cutoff and a weighted sample of negatives, run Deep
Feature Synthesis (max depth 3, featuretools training window = the detector's sliding
window), compute the features of each sampled cutoff on the events seen so far, fit the
candidate classifiers and keep the best by validation PR AUC, choose the alert threshold,
and compare with a baseline (distinct source hosts of the connection in the window).

Writes to --out: model.joblib, features.json (featuretools.save_features), metadata.json
(versions, features, N/L/W, window, span, metrics, threshold, SHA-256) and report.html.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

from cyberstream import config
from cyberstream.connections import CONNECTION_KINDS, DEFAULT_CONNECTION

log = logging.getLogger("cyberstream.train")

#: default cap on sampled cutoffs, by feature engine: the compiled engine computes ~3,000 cutoffs/s,
#: featuretools (the batched oracle) ~50 on the generator's data (10,000 cutoffs: ~3.5 min).
DEFAULT_MAX_CUTOFFS = {"compiled": None, "oracle": 10_000}
DEFAULT_NEGATIVES_PER_POSITIVE = 20.0
DEFAULT_VALID_NEGATIVES = 100_000  # all of them on the generator's ten days: exact validation figures
DFS_SAMPLE_EVENTS = 2_000
#: the history feature that says whether the cutoff's name-host pair was first seen in its second
UNSEEN_EDGE_FEATURE = "name_host_pairs.TIME_SINCE(first_log_time)"
IMPORTANCE_NEGATIVES = 3_000


def configure_parser(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data and output")
    g.add_argument("--data", type=Path, default=config.data_path(),
                   help="CyberFLTenDays CSV to train on (default: $CYBERSTREAM_DATA or %(default)s)")
    g.add_argument("--out", type=Path, default=config.model_dir(),
                   help="model directory to write (default: $CYBERSTREAM_MODEL_DIR or %(default)s)")
    g.add_argument("--base-epoch", type=int, default=config.base_epoch(),
                   help="epoch seconds that secs=0 maps to (default: $CYBERSTREAM_BASE_EPOCH or %(default)s)")
    g.add_argument("--max-bad-rows", type=int, default=-1,
                   help="fail if more rows than this are rejected by the schema (default: no limit; "
                        "rejected rows are always counted and reported)")
    g = parser.add_argument_group("labels and cutoffs")
    g.add_argument("--connection", choices=sorted(CONNECTION_KINDS), default=DEFAULT_CONNECTION,
                   help="what a connection is (default %(default)s: src_name / dest_name)")
    g.add_argument("--min-events", type=int, default=2, metavar="N",
                   help="earlier events a cutoff needs (default %(default)s)")
    g.add_argument("--lead", type=int, default=2, metavar="L",
                   help="events from the cutoff event on that the label skips (default %(default)s)")
    g.add_argument("--label-window", type=int, default=10, metavar="W",
                   help="events after the lead whose labels decide (default %(default)s)")
    g.add_argument("--train-until-secs", type=int, default=None,
                   help="train on cutoffs labelled by this time, validate on later ones "
                        "(default: 70%% of the data's time span)")
    g.add_argument("--negatives-per-positive", type=float, default=DEFAULT_NEGATIVES_PER_POSITIVE,
                   help="training split: negative cutoffs sampled per positive (default %(default)s)")
    g.add_argument("--valid-negatives", type=int, default=DEFAULT_VALID_NEGATIVES,
                   help="validation split: at most this many negative cutoffs (default %(default)s)")
    g.add_argument("--max-cutoffs", type=int, default=None,
                   help="cap on all sampled cutoffs, positives always kept (default: none with the compiled "
                        f"engine, {DEFAULT_MAX_CUTOFFS['oracle']:,} with the oracle)")
    g.add_argument("--all-cutoffs", action="store_true", help="use every labelled cutoff (no sampling)")
    g.add_argument("--seed", type=int, default=0, help="sampling and model seed (default %(default)s)")
    g = parser.add_argument_group("features and model")
    g.add_argument("--window-secs", type=int, default=86_400,
                   help="sliding window = featuretools training window, seconds of event time (default %(default)s)")
    g.add_argument("--features", choices=("compiled", "oracle"), default="compiled",
                   help="feature engine: the detector's compiled engine (~3,000 cutoffs/s), or featuretools "
                        "itself on the events so far (the oracle, batched: exact, ~50 cutoffs/s; used anyway "
                        "when cyberstream.features is not installed) (default %(default)s)")
    g.add_argument("--time-features", choices=("drop", "keep"), default="drop",
                   help="features over absolute time such as MAX(log.secs): drop (default) or keep; "
                        "the report shows the other choice too")
    g.add_argument("--history-features", choices=("on", "off"), default="on",
                   help="the history features of the cutoff's event (its user, hosts and edges over all time "
                        "and the last window: new users on the source host, unseen edges ...): on (default) or "
                        "off (the demo's window features only)")
    g.add_argument("--classifiers", default="hist_gradient_boosting,logistic_regression,random_forest",
                   help="comma-separated candidates; the best validation PR AUC wins (default %(default)s)")
    g.add_argument("--alerts-per-day", type=float, default=config.DEFAULT_FALSE_ALERTS_PER_DAY,
                   help="threshold: the lowest one that gives at most this many FALSE alerts per day on the "
                        "validation period (an analyst's budget; default %(default)s). 0 or less: maximise F1")
    g.add_argument("--max-alerts-per-day", type=float, default=None,
                   help="with --alerts-per-day 0: maximise F1 among thresholds with at most this many alerts "
                        "per day (default: no cap)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from training.labels import LabelSpec
    from training.model import CLASSIFIERS

    try:
        spec = LabelSpec(args.min_events, args.lead, args.label_window)
    except ValueError as exc:
        print(f"cyberstream train: {exc}", file=sys.stderr)
        return 2
    classifiers = [c.strip() for c in args.classifiers.split(",") if c.strip()]
    unknown = [c for c in classifiers if c not in CLASSIFIERS]
    if unknown or not classifiers:
        print(f"cyberstream train: unknown classifier(s) {unknown}; choose from {list(CLASSIFIERS)}", file=sys.stderr)
        return 2
    problem = _argument_problem(args)
    if problem:
        print(f"cyberstream train: {problem}", file=sys.stderr)
        return 2
    try:
        return train(args, spec, classifiers)
    except TrainingArgumentError as exc:
        print(f"cyberstream train: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"cyberstream train: {exc}", file=sys.stderr)
        return 1


def _argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the numeric arguments on their own (None when nothing is)."""
    if args.window_secs <= 0:
        return "--window-secs must be positive"
    if args.max_bad_rows < -1:
        return "--max-bad-rows must be -1 (no limit) or a count of rows"
    if args.negatives_per_positive <= 0:
        return "--negatives-per-positive must be positive"
    if args.valid_negatives < 0:
        return "--valid-negatives must be 0 or more"
    if args.max_cutoffs is not None and args.max_cutoffs < 1:
        return "--max-cutoffs must be at least 1"
    return None


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


class TrainingArgumentError(TrainingError):
    """An argument does not fit the data (exit 2, like any other bad argument)."""


class _Steps:
    """Wall time per step, logged as each step ends."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: dict[str, float] = {}
        self._t = self.start

    def done(self, name: str, detail: str = "") -> None:
        now = time.perf_counter()
        self.times[name] = round(now - self._t, 2)
        self._t = now
        log.info("%s done in %.1f s%s", name, self.times[name], f": {detail}" if detail else "")

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def _peak_memory_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(args: argparse.Namespace, spec, classifiers: list[str]) -> int:
    import datetime as dt

    import numpy as np

    from cyberstream import __version__
    from training import cutoffs as cut
    from training import dfs, model
    from training.data import read_events
    from training.labels import label_times
    from training.report import write_report

    progress = not args.no_progress
    steps = _Steps()
    warnings.filterwarnings("ignore", category=FutureWarning)  # featuretools 1.31 on pandas 2.3, on every call

    # --- data
    try:
        events, read_report = read_events(args.data, progress=progress)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainingError(str(exc)) from None
    log.info("%s", read_report.summary())
    for line, reason in read_report.examples:
        log.warning("rejected line %d: %s", line, reason)
    if 0 <= args.max_bad_rows < read_report.rejected:
        raise TrainingError(f"{read_report.rejected:,} rows rejected (more than --max-bad-rows {args.max_bad_rows})")
    if events.empty:
        raise TrainingError(f"{args.data}: no usable rows")
    steps.done("read", f"{len(events):,} events")

    # --- labels, split, sample
    lt = label_times(events, args.connection, spec)
    n_eligible, n_labelled = len(lt), int(lt["label"].notna().sum())
    lo, hi = int(events["secs"].min()), int(events["secs"].max())
    train_until = args.train_until_secs if args.train_until_secs is not None else cut.default_train_until(events["secs"])
    if not lo < train_until < hi:
        raise TrainingArgumentError(f"--train-until-secs {train_until} is outside the data's time span "
                                    f"({lo} .. {hi})")  # fmt: skip
    split_times = cut.split_by_time(lt, train_until)
    n_pos = {s: int(split_times.loc[split_times["split"] == s, "label"].sum()) for s in (cut.TRAIN, cut.VALID)}
    if not lt["label"].fillna(False).any():
        raise TrainingError(
            f"no cutoff has a positive label ({int(events['label'].sum()):,} malicious events; {n_labelled:,} "
            f"labelled cutoffs of {args.connection} connections with N={spec.min_events}, L={spec.lead}, "
            f"W={spec.window}): the data needs malicious events in connections with at least "
            f"N+L+2={spec.min_events + spec.lead + 2} events"
        )
    if n_pos[cut.TRAIN] == 0:
        raise TrainingError(
            f"no positive cutoff is labelled by secs {train_until} ({n_labelled:,} labelled cutoffs, "
            f"{int(lt['label'].sum()):,} positive in all); move --train-until-secs later or use data with "
            "malicious events earlier"
        )
    if n_pos[cut.VALID] == 0:
        # Without one, every candidate's PR AUC is undefined (the first would win by default) and
        # the threshold would be chosen on negatives alone: refuse rather than save such a model.
        raise TrainingError(
            f"no positive cutoff in the validation period (cutoffs after secs {train_until}; "
            f"{n_pos[cut.TRAIN]:,} positive before it): the model and its alert threshold cannot be chosen "
            "on negatives alone; move --train-until-secs earlier or use data with malicious events later"
        )
    engine = args.features
    max_cutoffs = args.max_cutoffs if args.max_cutoffs is not None else DEFAULT_MAX_CUTOFFS[engine]
    plan = cut.SamplingPlan(args.negatives_per_positive, args.valid_negatives, max_cutoffs, args.all_cutoffs,
                            args.seed)
    sample = cut.sample_cutoffs(split_times, plan)
    counts = cut.summarize(split_times, sample)
    steps.done("labels", f"{n_eligible:,} cutoffs, {n_labelled:,} labelled, {len(sample):,} sampled "
                         f"({n_pos[cut.TRAIN]} + {n_pos[cut.VALID]} positive in train + valid)")  # fmt: skip

    # --- features
    other_policy = "keep" if args.time_features == "drop" else "drop"
    proposed = dfs.run_dfs(events.head(DFS_SAMPLE_EVENTS), args.connection)  # depends on the schema, not the values
    saved_features, dropped = dfs.filter_features(proposed, args.connection, args.time_features)
    other_features, _ = dfs.filter_features(proposed, args.connection, other_policy)
    all_features, _ = dfs.filter_features(proposed, args.connection, "keep")  # both of the above
    if args.history_features == "on":
        history, history_dropped = dfs.history_feature_definitions(events.head(DFS_SAMPLE_EVENTS), args.connection,
                                                                   args.window_secs)  # fmt: skip
        saved_features, other_features, all_features = (f + history for f in (saved_features, other_features,
                                                                                all_features))  # fmt: skip
        dropped.update(history_dropped)
    fm, engine_used = dfs.feature_matrix(events, sample, all_features, args.window_secs, args.connection, engine,
                                         base_epoch=args.base_epoch, progress=progress)
    steps.done("features", f"{len(all_features)} computed ({len(saved_features)} saved) for {len(sample):,} "
                           f"cutoffs with the {engine_used} engine")  # fmt: skip
    per_cutoff = steps.times["features"] / max(len(sample), 1)

    # --- models
    is_train = (sample["split"] == cut.TRAIN).to_numpy()
    y = sample["label"].to_numpy(dtype=bool)
    w = sample["weight"].to_numpy(dtype=float)
    yv, wv = y[~is_train], w[~is_train]
    valid_days = (hi - train_until) / model.SECONDS_PER_DAY

    # The detector alerts a connection at most once per cooldown (an hour by default): false
    # alerts are counted per connection and hour, as an analyst receives them.
    alert_groups = (sample["connection_id"].astype(str) + "#" + (sample["cutoff_secs"] // config.DEFAULT_COOLDOWN_SECS).astype(str)).to_numpy()

    def columns(features):
        num = [f.get_name() for f in features if not dfs.is_categorical(f)]
        cat = [f.get_name() for f in features if dfs.is_categorical(f)]
        return num, cat

    def fit_eval(name, features, train_mask, test_mask, days):
        num, cat = columns(features)
        pipe = model.build_pipeline(name, num, cat, args.seed)
        pipe.fit(fm.loc[train_mask, num + cat], y[train_mask])
        s = model.scores(pipe, fm.loc[test_mask, num + cat])
        g = alert_groups[test_mask]
        if args.alerts_per_day > 0 and y[test_mask].any():
            thr = model.budget_threshold(y[test_mask], s, w[test_mask], days, args.alerts_per_day, g)
            how = (f"the lowest with at most {args.alerts_per_day:g} false alerts per day on validation "
                   "(a connection's negatives within one cooldown hour count once)")
        else:
            thr, how = model.choose_threshold(y[test_mask], s, w[test_mask], days, args.max_alerts_per_day)
        return pipe, s, model.evaluate(y[test_mask], s, w[test_mask], thr, days, g), how

    candidates, fitted = {}, {}
    for name in classifiers:
        t0 = time.perf_counter()
        pipe, s, metrics, how = fit_eval(name, saved_features, is_train, ~is_train, valid_days)
        metrics["fit_secs"] = round(time.perf_counter() - t0, 2)
        candidates[name], fitted[name] = metrics, (pipe, s, how)
        log.info("candidate %-24s validation PR AUC %s, ROC AUC %s (%.1f s)", name, _f(metrics["pr_auc"]),
                 _f(metrics["roc_auc"]), metrics["fit_secs"])  # fmt: skip
    best = max(classifiers, key=lambda n: (candidates[n]["pr_auc"] or 0.0, -classifiers.index(n)))
    pipeline, valid_scores, threshold_method = fitted[best]
    validation = {k: v for k, v in candidates[best].items() if k != "fit_secs"}
    threshold = validation["threshold"]

    base_name = dfs.baseline_feature(fm.columns)
    base = fm[base_name].fillna(0.0).to_numpy(dtype=float)
    b_thr, _ = model.choose_threshold(yv, base[~is_train], wv, valid_days, args.max_alerts_per_day)
    baseline = {"score": base_name, **model.evaluate(yv, base[~is_train], wv, b_thr, valid_days,
                                                      alert_groups[~is_train])}

    comparisons = {}
    if UNSEEN_EDGE_FEATURE in fm.columns:  # the one-line rule: alert when the event's edge is new this second
        rule = (fm[UNSEEN_EDGE_FEATURE].to_numpy(dtype=float) == 0).astype(float)
        comparisons["unseen-edge rule (name-host pair first seen at the cutoff)"] = model.evaluate(
            yv, rule[~is_train], wv, 1.0, valid_days, alert_groups[~is_train])
    if args.history_features == "on":
        from cyberstream.features.history import is_history_feature

        window_only = [f for f in saved_features if not is_history_feature(f)]
        _, _, m, _ = fit_eval(best, window_only, is_train, ~is_train, valid_days)
        comparisons[f"without history features ({len(window_only)} features)"] = m
    _, _, m, _ = fit_eval(best, other_features, is_train, ~is_train, valid_days)
    comparisons[f"time features: {other_policy} ({len(other_features)} features)"] = m
    rng = np.random.default_rng(args.seed)
    shuffled_test = rng.random(len(sample)) < 0.3
    span_days = (hi - lo) / model.SECONDS_PER_DAY
    _, _, m, _ = fit_eval(best, saved_features, ~shuffled_test, shuffled_test, span_days * 0.3)
    comparisons["shuffled split (leaky, like the demo)"] = m
    steps.done("models", f"best {best}: validation PR AUC {_f(validation['pr_auc'])} vs baseline "
                         f"{_f(baseline['pr_auc'])}")  # fmt: skip

    importances = _importances(pipeline, fm, saved_features, sample, is_train, y, w, args.seed)
    saved_names = [f.get_name() for f in saved_features]
    feature_importances = _per_feature(importances, saved_names)
    feature_stats = _feature_stats(fm.loc[is_train], w[is_train], saved_features)
    steps.done("importances")

    # --- save
    metadata = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cyberstream_version": __version__,
        "data": read_report.to_dict(),
        "connection_kind": args.connection,
        "label_spec": spec.to_dict(),
        "window_secs": args.window_secs,
        "base_epoch": args.base_epoch,
        "training_span": {
            "data_min_secs": lo,
            "data_max_secs": hi,
            "train_until_secs": train_until,
            "train_days": round((train_until - lo) / model.SECONDS_PER_DAY, 3),
            "valid_days": round(valid_days, 3),
            "rule": "train: label_end_secs <= train_until_secs; valid: cutoff_secs > train_until_secs",
        },
        "cutoffs": {"eligible": n_eligible, "labelled": n_labelled, "sampling": plan.to_dict(), **counts},
        "feature_engine": engine_used,
        "feature_secs_per_cutoff": round(per_cutoff, 5),
        "time_features": args.time_features,
        "dropped_features": dropped,
        "classifier": best,
        "candidates": candidates,
        "validation": validation,
        "baseline": baseline,
        "threshold": threshold,
        "threshold_method": threshold_method,
        "comparisons": comparisons,
        "top_features": importances[:20],
        "feature_importances": feature_importances,
        "feature_stats": feature_stats,
        "timing": {**steps.times, "total_secs": round(steps.total, 2), "peak_memory_mb": round(_peak_memory_mb(), 1)},
    }
    meta = model.save_model(args.out, pipeline, saved_features, metadata)
    curves = {f"model ({best})": model.curves(yv, valid_scores, wv), "baseline": model.curves(yv, base[~is_train], wv)} \
        if yv.any() and (~yv).any() else {}  # fmt: skip
    prevalence = float(wv[yv].sum() / wv.sum()) if wv.sum() else None
    write_report(args.out / model.REPORT_FILE, meta, curves, importances, prevalence)
    steps.done("save")
    _print_summary(args, meta, steps)
    return 0


def _importances(pipeline, fm, features, sample, is_train, y, w, seed) -> list[dict]:
    """Permutation importance on validation cutoffs (all positives, up to 3,000 negatives).

    Permutes the columns the classifier sees (after the pipeline's preprocessing, so a
    one-hot column such as ``MODE(log.auth_type)_NTLM`` counts on its own): the same
    figure as on raw features for numeric columns, at a fraction of the cost.
    """
    import numpy as np
    from sklearn.inspection import permutation_importance

    from training.dfs import is_categorical

    valid = np.flatnonzero(~is_train)
    pos, neg = valid[y[valid]], valid[~y[valid]]
    if len(pos) == 0 or len(neg) == 0:
        return []
    rng = np.random.default_rng(seed)
    keep_neg = neg if len(neg) <= IMPORTANCE_NEGATIVES else rng.choice(neg, IMPORTANCE_NEGATIVES, replace=False)
    rows = np.sort(np.r_[pos, keep_neg])
    weight = w[rows].copy()
    weight[~y[rows]] *= w[neg].sum() / w[keep_neg].sum()
    names = [f.get_name() for f in features if not is_categorical(f)] + [f.get_name() for f in features if is_categorical(f)]
    preprocess, classifier = pipeline[:-1], pipeline[-1]
    X = preprocess.transform(fm.iloc[rows][names])
    columns = list(pipeline.named_steps["columns"].get_feature_names_out())
    result = permutation_importance(classifier, X, y[rows], scoring="average_precision", n_repeats=3,
                                    random_state=seed, sample_weight=weight, n_jobs=1)  # fmt: skip
    order = np.argsort(-result.importances_mean)
    return [{"feature": columns[i], "mean": float(result.importances_mean[i]), "std": float(result.importances_std[i])}
            for i in order]  # fmt: skip


def _per_feature(importances: list[dict], names: list[str]) -> dict[str, float]:
    """Importance per saved feature: one-hot columns and missing-value indicators summed into their feature."""
    known = set(names)
    out = dict.fromkeys(names, 0.0)
    for item in importances:
        col = item["feature"].removeprefix("missingindicator_")
        if col not in known:  # a one-hot column "<feature>_<value>": the longest feature name it starts with
            col = max((n for n in names if col.startswith(n + "_")), key=len, default=None)
        if col is not None:
            out[col] += item["mean"]
    return {k: round(v, 6) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def _feature_stats(fm, weight, features) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each numeric feature over the training cutoffs.

    Weighted by the sampling weights, so they describe every training cutoff rather than
    the rebalanced sample; the detector uses them to say which features made an alert unusual.
    """
    import numpy as np

    from training.dfs import is_categorical

    out = {}
    for f in features:
        if is_categorical(f):
            continue
        x = fm[f.get_name()].to_numpy(dtype=float)
        ok = np.isfinite(x)
        if not ok.any():
            continue
        mean = float(np.average(x[ok], weights=weight[ok]))
        std = float(np.sqrt(np.average((x[ok] - mean) ** 2, weights=weight[ok])))
        out[f.get_name()] = {"mean": mean, "std": std}
    return out


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _print_summary(args, meta: dict, steps: _Steps) -> None:
    v, b = meta["validation"], meta["baseline"]
    c = meta["cutoffs"]
    lines = [
        f"wrote {args.out}/ (model.joblib, features.json, metadata.json, report.html)",
        f"  data            {meta['data']['accepted']:,} events ({meta['data']['rejected']:,} rejected rows)",
        f"  cutoffs         {c['eligible']:,} eligible, {c['labelled']:,} labelled; sampled "
        f"{c['train']['sampled']:,} train ({c['train']['sampled_positive']} positive) + "
        f"{c['valid']['sampled']:,} valid ({c['valid']['sampled_positive']} positive)",
        f"  features        {len(meta['feature_names'])} saved ({meta['feature_engine']} engine, "
        f"{meta['feature_secs_per_cutoff'] * 1000:.1f} ms per cutoff)",
        f"  model           {meta['classifier']}, threshold {meta['threshold']:.4g}",
        f"  {'':14}  {'ROC AUC':>8} {'PR AUC':>8} {'precision':>9} {'recall':>8} {'alerts/day':>10}",
    ]
    for name, m in (("validation", v), ("baseline", b)):
        lines.append(f"  {name:14}  {_f(m['roc_auc']):>8} {_f(m['pr_auc']):>8} {_f(m['precision']):>9} "
                     f"{_f(m['recall']):>8} {_f(m['alerts_per_day']):>10}")  # fmt: skip
    for name, m in meta["comparisons"].items():
        lines.append(f"  {'':14}  {_f(m['roc_auc']):>8} {_f(m['pr_auc']):>8}   <- {name}")
    lines.append("  recall of positive validation cutoffs at N false alerts per day:")
    for name, m in (("validation", v), ("baseline", b), *meta["comparisons"].items()):
        at = m.get("recall_at_false_alerts_per_day") or {}
        if at and "shuffled" not in name:
            lines.append(f"    {'  '.join(f'{k:>2}: {_f(r):>5}' for k, r in at.items())}   {name}")
    lines.append(f"  wall time       {steps.total:.1f} s, peak memory {_peak_memory_mb():.0f} MB")
    print("\n".join(lines))
