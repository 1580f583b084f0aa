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


def g_count(valid: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(valid.astype(np.int64), starts, axis=-1)


def g_sum(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.add.reduceat(np.where(np.isnan(x), 0.0, x), starts, axis=-1)


def g_mean(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    c = g_count(~np.isnan(x), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, g_sum(x, starts) / np.maximum(c, 1), np.nan)


def g_min(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.fmin.reduceat(x, starts, axis=-1)


def g_max(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return np.fmax.reduceat(x, starts, axis=-1)


def _group_ids(starts: np.ndarray, size: int) -> np.ndarray:
    g = np.zeros(size, dtype=np.int64)
    g[starts[1:]] = 1
    return np.cumsum(g)


def g_std(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    valid = ~np.isnan(x)
    c = g_count(valid, starts)
    gid = _group_ids(starts, x.shape[-1])
    mean = g_sum(x, starts) / np.maximum(c, 1)
    dev = np.where(valid, x - mean[..., gid], 0.0)
    m2 = np.add.reduceat(dev * dev, starts, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.sqrt(m2 / (c - 1))
    # pandas' Welford gives exactly 0 for equal values; two-pass may leave 1e-17.
    out = np.where(g_min(x, starts) == g_max(x, starts), 0.0, out)
    return np.where(c >= 2, out, np.nan)


def g_skew(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``nanskew`` per group, as pandas computes it."""
    valid = ~np.isnan(x)
    cnt = g_count(valid, starts).astype(np.float64)
    gid = _group_ids(starts, x.shape[-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = g_sum(x, starts) / cnt
        adj = np.where(valid, x - mean[..., gid], 0.0)
        adj2 = adj**2
        m2 = np.add.reduceat(adj2, starts, axis=-1)
        m3 = np.add.reduceat(adj2 * adj, starts, axis=-1)
        m2 = np.where(np.abs(m2) < ZERO_FPERR, 0.0, m2)
        m3 = np.where(np.abs(m3) < ZERO_FPERR, 0.0, m3)
        res = (cnt * (cnt - 1) ** 0.5 / (cnt - 2)) * (m3 / m2**1.5)
    res = np.where(m2 == 0, 0.0, res)
    return np.where(cnt >= 3, res, np.nan)


def g_nunique(codes: np.ndarray, starts: np.ndarray, ngroups: int) -> np.ndarray:
    """Distinct non-missing codes (>= 0) per group."""
    gid = _group_ids(starts, len(codes))
    ok = codes >= 0
    if not ok.any():
        return np.zeros(ngroups, dtype=np.int64)
    key = np.unique(gid[ok] * (int(codes.max()) + 1) + codes[ok])
    return np.bincount(key // (int(codes.max()) + 1), minlength=ngroups)


def g_mode(
    codes: np.ndarray, starts: np.ndarray, ngroups: int, rank: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Most frequent code per group (weighted), ties to the smallest rank; -1 when none."""
    out = np.full(ngroups, -1, dtype=np.int64)
    gid = _group_ids(starts, len(codes))
    ok = codes >= 0
    if not ok.any():
        return out
    g, c = gid[ok], codes[ok]
    w = np.ones(len(c), dtype=np.int64) if weights is None else weights[ok]
    r = rank[c]
    span = int(r.max()) + 1
    key = g * span + r
    order = np.argsort(key, kind="stable")
    key_s, w_s = key[order], w[order]
    first = np.flatnonzero(np.r_[True, key_s[1:] != key_s[:-1]])
    tot = np.add.reduceat(w_s, first)
    ukey = key_s[first]
    ug, ur = ukey // span, ukey % span
    best = np.lexsort((ur, -tot, ug))
    lead = best[np.r_[True, ug[best][1:] != ug[best][:-1]]]
    by_rank = np.argsort(rank)  # rank -> code
    out[ug[lead]] = by_rank[ur[lead]]
    return out


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
