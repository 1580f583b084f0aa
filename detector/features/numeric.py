"""Exact window moments and featuretools' (pandas') numeric and categorical reductions.

Window sums of ``d = secs - ref`` (``d``, ``d**2``, ``d**3``) are kept as exact integers,
so STD and SKEW never suffer catastrophic cancellation however many events came and went.
From them:

* STD is ``sqrt(M2 / (n - 1))`` with the exact ``M2`` (pandas: ddof=1, NaN below 2 values);
* SKEW reproduces ``pandas.core.nanops.nanskew`` (what ``pd.Series.skew`` runs): pandas
  centres on the *rounded* float mean ``mu = float(sum) / n``; its moments about that mean
  are ``M2 + n*delta**2`` and ``M3 - 3*delta*M2 - n*delta**3`` with
  ``delta = mu - sum/n``, computed here without rounding, then pandas' zeroing of
  moments below 1e-14, its bias-corrected formula, 0 for constant data, NaN below 3 values.
  (The exact skew differs from pandas' by up to ~1e-7 relative at secs ~ 8.6e5 when
  the window is only a few seconds wide; this follows pandas instead.)

The grouped reductions over per-pair values follow pandas' groupby semantics: NaN skipped,
SUM of nothing is 0, MIN/MAX/MEAN/STD/SKEW of nothing NaN, MODE ties broken towards the
smallest value (pandas sorts ``Series.mode()``; categories are sorted strings).
"""

from __future__ import annotations

import numpy as np

_SPLIT = 134217729.0  # 2**27 + 1, Veltkamp splitting constant
ZERO_FPERR = 1e-14  # pandas.core.nanops._zero_out_fperr


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = _SPLIT * x
    hi = c - (c - x)
    return hi, x - hi


def two_prod(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a * b == p + e`` exactly (Dekker)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


def as_objects(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == object else x.astype(object)


def central_m2n(n: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """``n * M2`` exactly (Python ints): ``n*S2 - S1**2``."""
    n, s1, s2 = as_objects(n), as_objects(s1), as_objects(s2)
    return n * s2 - s1 * s1


def std_from_sums(n: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """Sample standard deviation (ddof=1) from exact power sums; NaN when n < 2."""
    out = np.full(len(n), np.nan)
    ok = n >= 2
    if ok.any():
        nn = as_objects(n[ok])
        var = (central_m2n(nn, s1[ok], s2[ok]) / (nn * (nn - 1))).astype(np.float64)
        out[ok] = np.sqrt(var)
    return out


def skew_from_sums(
    n: np.ndarray, s1: np.ndarray, s2: np.ndarray, s3: np.ndarray, total: np.ndarray
) -> np.ndarray:
    """pandas' ``Series.skew`` of the window, from exact power sums of ``secs - ref``.

    ``total`` is the exact sum of the raw ``secs`` (int64), from which pandas takes its mean.
    """
    out = np.full(len(n), np.nan)
    ok = n >= 3
    if not ok.any():
        return out
    nn = as_objects(n[ok])
    a1, a2, a3 = as_objects(s1[ok]), as_objects(s2[ok]), as_objects(s3[ok])
    m2n = nn * a2 - a1 * a1
    m3n2 = nn * nn * a3 - 3 * nn * a1 * a2 + 2 * a1 * a1 * a1
    m2 = (m2n / nn).astype(np.float64)  # exact M2, rounded once
    m3 = (m3n2 / (nn * nn)).astype(np.float64)
    cnt = n[ok].astype(np.float64)
    tot = total[ok].astype(np.float64)
    mu = tot / cnt
    p, e = two_prod(mu, cnt)
    delta = -((tot - p) - e) / cnt  # pandas' rounded mean minus the exact one
    m2p = m2 + cnt * delta * delta
    m3p = m3 - 3.0 * delta * m2 - cnt * delta * delta * delta
    m2p = np.where(np.abs(m2p) < ZERO_FPERR, 0.0, m2p)
    m3p = np.where(np.abs(m3p) < ZERO_FPERR, 0.0, m3p)
    with np.errstate(invalid="ignore", divide="ignore"):
        res = (cnt * (cnt - 1) ** 0.5 / (cnt - 2)) * (m3p / m2p**1.5)
    out[ok] = np.where(m2p == 0, 0.0, res)
    return out


# -- grouped reductions along the last axis (rows sorted by group; ``starts`` = first row
#    of each group). A 2-D input is (streams x rows): reducing contiguous rows is ~4x faster.


def group_ids(starts: np.ndarray, size: int) -> np.ndarray:
    g = np.zeros(size, dtype=np.int64)
    g[starts[1:]] = 1
    return np.cumsum(g)


class GroupStats:
    """Grouped SUM/MEAN/MIN/MAX/STD/SKEW (pandas groupby semantics), sharing common passes.

    NaN skipped; SUM of nothing 0, the others NaN; STD ddof=1 and exactly 0 for equal values
    (as pandas' Welford); SKEW as ``nanskew`` (moments below 1e-14 zeroed, NaN below 3).
    Each statistic is computed on first use.
    """

    def __init__(self, x: np.ndarray, starts: np.ndarray) -> None:
        self.x, self.starts = x, starts
        self.valid = ~np.isnan(x)
        self.x0 = np.where(self.valid, x, 0.0)
        self.count = np.add.reduceat(self.valid.astype(np.int64), starts, axis=-1)
        self.total = np.add.reduceat(self.x0, starts, axis=-1)
        self._memo: dict[str, np.ndarray] = {}

    def get(self, prim: str) -> np.ndarray:
        if prim not in self._memo:
            self._memo[prim] = getattr(self, "_" + prim)()
        return self._memo[prim]

    def _sum(self) -> np.ndarray:
        return self.total

    def _mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / np.maximum(self.count, 1), np.nan)

    def _min(self) -> np.ndarray:
        return np.fmin.reduceat(self.x, self.starts, axis=-1)

    def _max(self) -> np.ndarray:
        return np.fmax.reduceat(self.x, self.starts, axis=-1)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per group: sums of squared and cubed deviations from the group's float mean."""
        if "m2" not in self._memo:
            gid = group_ids(self.starts, self.x.shape[-1])
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = self.total / self.count
            adj = np.where(self.valid, self.x - mean[..., gid], 0.0)
            adj2 = adj * adj
            self._memo["m1"] = np.add.reduceat(adj, self.starts, axis=-1)
            self._memo["m2"] = np.add.reduceat(adj2, self.starts, axis=-1)
            self._memo["m3"] = np.add.reduceat(adj2 * adj, self.starts, axis=-1)
        return self._memo["m2"], self._memo["m3"]

    def residual(self) -> np.ndarray:
        """Per group: the sum of deviations from the group's float mean (rounding, ~0)."""
        self.moments()
        return self._memo["m1"]

    def _std(self) -> np.ndarray:
        m2, _ = self.moments()
        c = self.count
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.sqrt(m2 / (c - 1))
        out = np.where(self.get("min") == self.get("max"), 0.0, out)  # Welford: exactly 0
        return np.where(c >= 2, out, np.nan)

    def _skew(self) -> np.ndarray:
        m2, m3 = self.moments()
        cnt = self.count.astype(np.float64)
        m2 = np.where(np.abs(m2) < ZERO_FPERR, 0.0, m2)
        m3 = np.where(np.abs(m3) < ZERO_FPERR, 0.0, m3)
        with np.errstate(invalid="ignore", divide="ignore"):
            res = (cnt * (cnt - 1) ** 0.5 / (cnt - 2)) * (m3 / m2**1.5)
        res = np.where(m2 == 0, 0.0, res)
        return np.where(cnt >= 3, res, np.nan)


def row_mode(counts: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Per row of a (rows x values) count matrix: the most frequent code, ties to the
    smallest rank, -1 when the row is all zero."""
    if counts.shape[1] == 0 or len(rank) == 0:
        return np.full(counts.shape[0], -1, dtype=np.int64)
    by_rank = np.argsort(rank)
    ordered = counts[:, by_rank]
    best = ordered.argmax(axis=1)
    code = by_rank[best]
    return np.where(ordered.max(axis=1) > 0, code, -1)
