"""Which labelled cutoffs training uses: the time split and the sampling of negatives.

Time split (never shuffled)
    ``train``: cutoffs whose label is known by ``train_until_secs``, i.e. whose whole label
    window ended by then (``label_end_secs <= train_until``): a training label never looks
    at an event of the validation period. ``valid``: cutoffs after ``train_until_secs``.
    Cutoffs before the split whose label window crosses it are used by neither.

Sampling
    Every positive cutoff is kept. Negatives are sampled uniformly: in the training split
    ``negatives_per_positive`` per positive (more did not help on generated data), in the
    validation split up to ``valid_negatives``, and both shrink in proportion to fit
    ``max_cutoffs`` in all; ``all_cutoffs`` keeps everything. Each sampled negative carries the weight
    ``negatives in the split / negatives sampled``, so that metrics computed with those
    weights (precision, PR AUC, alerts per day) estimate the figures on EVERY cutoff the
    detector would score, not on the rebalanced sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

TRAIN, VALID = "train", "valid"
DEFAULT_TRAIN_FRACTION = 0.7


@dataclass(frozen=True)
class SamplingPlan:
    """How many negatives to keep (None = no limit from that rule)."""

    #: training split: negatives sampled per positive
    negatives_per_positive: float | None = None
    #: validation split: at most this many negatives (more make its metrics closer to exact)
    valid_negatives: int | None = None
    #: both splits: at most this many cutoffs; negatives of both splits shrink in proportion
    max_cutoffs: int | None = None
    all_cutoffs: bool = False
    seed: int = 0

    def to_dict(self) -> dict:
        return {
            "negatives_per_positive": self.negatives_per_positive,
            "valid_negatives": self.valid_negatives,
            "max_cutoffs": self.max_cutoffs,
            "all_cutoffs": self.all_cutoffs,
            "seed": self.seed,
        }


def default_train_until(secs: pd.Series, fraction: float = DEFAULT_TRAIN_FRACTION) -> int:
    """``fraction`` of the way through the data's time span (70 % by default)."""
    lo, hi = int(secs.min()), int(secs.max())
    return lo + int(round(fraction * (hi - lo)))


def split_by_time(label_times: pd.DataFrame, train_until_secs: int) -> pd.DataFrame:
    """The labelled cutoffs with a ``split`` column (``train``/``valid``); unusable ones dropped."""
    lt = label_times[label_times["label"].notna()]
    is_train = lt["label_end_secs"].astype("int64") <= train_until_secs
    is_valid = lt["cutoff_secs"] > train_until_secs
    out = lt[is_train | is_valid].copy()
    out["split"] = np.where(is_train[is_train | is_valid], TRAIN, VALID)
    out["label"] = out["label"].astype(bool)
    return out


def sample_cutoffs(split_times: pd.DataFrame, plan: SamplingPlan) -> pd.DataFrame:
    """All positives plus sampled negatives of each split, with a ``weight`` column (see module doc)."""
    rng = np.random.default_rng(plan.seed)
    parts = []
    wanted: dict[str, int] = {}
    groups = {name: g for name, g in split_times.groupby("split", sort=True)}
    for name, g in groups.items():
        n_pos, n_neg = int(g["label"].sum()), int((~g["label"]).sum())
        want = n_neg
        if not plan.all_cutoffs and name == TRAIN and plan.negatives_per_positive is not None:
            want = min(n_neg, int(np.ceil(plan.negatives_per_positive * max(n_pos, 1))))
        if not plan.all_cutoffs and name == VALID and plan.valid_negatives is not None:
            want = min(n_neg, plan.valid_negatives)
        wanted[name] = want
    if not plan.all_cutoffs and plan.max_cutoffs is not None:
        n_pos_total = int(split_times["label"].sum())
        budget = max(plan.max_cutoffs - n_pos_total, 0)
        total_wanted = sum(wanted.values())
        if total_wanted > budget:
            if n_pos_total >= plan.max_cutoffs:
                log.warning("%d positive cutoffs exceed --max-cutoffs %d; keeping all positives and a minimum of negatives",
                            n_pos_total, plan.max_cutoffs)
            wanted = {k: max(int(budget * v / total_wanted), min(v, 1)) for k, v in wanted.items()}
    for name, g in groups.items():
        pos, neg = g[g["label"]], g[~g["label"]]
        n = wanted[name]
        take = neg if n >= len(neg) else neg.iloc[np.sort(rng.choice(len(neg), size=n, replace=False))]
        pos = pos.assign(weight=1.0)
        take = take.assign(weight=len(neg) / max(len(take), 1))
        parts.append(pd.concat([pos, take]))
    if not parts:
        return split_times.assign(weight=pd.Series(dtype=float))
    out = pd.concat(parts).sort_values(["cutoff_secs", "connection_id"], kind="stable")
    return out.reset_index(drop=True)


def summarize(split_times: pd.DataFrame, sample: pd.DataFrame) -> dict:
    """Cutoff counts per split: available (labelled) and sampled, positives and negatives."""
    out = {}
    for name in (TRAIN, VALID):
        a = split_times[split_times["split"] == name]
        s = sample[sample["split"] == name]
        out[name] = {
            "labelled": len(a),
            "positive": int(a["label"].sum()),
            "sampled": len(s),
            "sampled_positive": int(s["label"].sum()),
            "negative_weight": float(s.loc[~s["label"], "weight"].max()) if (~s["label"]).any() else None,
        }
    return out
