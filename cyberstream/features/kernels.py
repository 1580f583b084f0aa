"""The compiled engine's inner loops (numba): window state updated per event, rows per cutoff.

State lives in numpy arrays owned by :class:`~cyberstream.features.compiled.CompiledEngine` and
passed in on every call; these functions read and update it in place. When a pool runs out
of room they stop and say so (``meta[FULL]``); the Python side grows it and calls again.

* *Store* (``st_*``): the window's events in time order, for eviction (logical index =
  physical index + ``meta[BASE]``; ``st_dead`` marks events dropped by the cap).
* *Groups* (pairs ``p_*``, connections ``c_*``): window count, exact integer sum of
  ``secs``, per-attribute-value counts (``*_cnt``; attribute ``a`` at columns ``a_off[a]``..),
  and a *lane*: the group's window ``secs`` (and store indexes) contiguous in a shared lane
  pool, oldest first (``ls`` region start, ``lc`` its room, ``lo`` offset of the oldest).
  MIN/MAX are the lane's ends and STD/SKEW two passes over it, as pandas computes them.
* *Pair lists*: a connection's pairs are contiguous in the list pool
  (``c_pstart[c]`` .. ``+ c_plen[c]``), with each pair's window count (``pl_n``), its values
  of the numeric and categorical streams the plan aggregates over pairs (``pl_v``, ``pl_c``:
  NaN / -1 while absent) and its pair-column codes (``pl_code``). A cutoff reads them in
  contiguous sweeps; a changed pair is flagged stale and recomputed when a cutoff reads it.

STD uses ddof=1; SKEW is pandas' ``nanskew`` (moments below 1e-14 zeroed, 0 for constant
data, NaN below 3 values); reductions over pairs skip NaN like pandas' groupby. Ties in MODE
go to the smallest value (the lowest rank in the sorted vocabulary), as ``Series.mode`` does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# meta slots
BASE, SIZE, EVICT, LIVE, CAPPED, NZERO, PTOP, CTOP, LTOP, FULL = range(10)
META_SIZE = 10
#: live time before anything happened
NEVER = -(1 << 62)
# meta[FULL] values: which pool ran out of room
FULL_PAIR_LANES, FULL_CONN_LANES = 1, 2

# per-pair numeric streams (s_kind)
S_COUNT, S_SUM, S_MEAN, S_MIN, S_MAX, S_STD, S_SKEW, S_NUNIQUE_ATTR, S_ONE = range(9)

# numeric output ops (num_op)
# (LOG_SECS: an aggregation of the connection's own rows or secs, ``num_a`` = its S_* kind;
#  PAIRS_AGG: an aggregation over pairs of stream ``num_a``, ``num_b`` = its S_* kind)
LOG_SECS, LOG_NUNIQUE_ATTR, COL_NUNIQUE, PAIRS_COUNT, PAIRS_AGG, PAIRS_CAT_NUNIQUE = range(6)
# categorical output ops (cat_op)
LOG_MODE_ATTR, COL_MODE_WEIGHTED, COL_MODE, PAIRS_CAT_MODE = range(4)

ZERO_FPERR = 1e-14  # pandas.core.nanops._zero_out_fperr


# ---------------------------------------------------------------------------- numerics
@njit(cache=True)
def _skew(n: float, m2: float, m3: float) -> float:
    """pandas' nanskew from the sums of squared and cubed deviations."""
    if n < 3:
        return np.nan
    if abs(m2) < ZERO_FPERR:
        m2 = 0.0
    if abs(m3) < ZERO_FPERR:
        m3 = 0.0
    if m2 == 0.0:
        return 0.0
    return (n * (n - 1) ** 0.5 / (n - 2)) * (m3 / m2**1.5)


@njit(cache=True)
def _moments(lane, lo, n, total):
    """Sums of squared and cubed deviations of ``lane[lo:lo+n]`` from their float mean."""
    mean = total / n
    m2 = 0.0
    m3 = 0.0
    for i in range(lo, lo + n):
        d = lane[i] - mean
        d2 = d * d
        m2 += d2
        m3 += d2 * d
    return m2, m3


@njit(cache=True)
def _secs_value(kind, n, total, lane, lo, m2, m3):
    """A group's COUNT/SUM/MEAN/MIN/MAX/STD/SKEW (``kind``) of its window secs: ``n`` values
    ``lane[lo:lo+n]`` summing to ``total``, with their deviation sums ``m2``, ``m3``."""
    if kind == S_COUNT:
        return float(n)
    if kind == S_SUM:
        return total
    if kind == S_MEAN:
        return total / n
    if kind == S_MIN:
        return lane[lo]
    if kind == S_MAX:
        return lane[lo + n - 1]
    if kind == S_STD:
        return math.sqrt(m2 / (n - 1)) if n >= 2 else np.nan
    return _skew(float(n), m2, m3)


@njit(cache=True)
def _distinct(counts, lo, width):
    """How many of ``counts[lo : lo + width]`` are non-zero (NUM_UNIQUE of value counts)."""
    u = 0
    for code in range(width):
        if counts[lo + code] > 0:
            u += 1
    return float(u)


@njit(cache=True)
def _mode(counts, lo, width, rank, rank_lo):
    """Code (0 .. width-1) with the highest ``counts[lo + code]``, ties to the lowest
    ``rank[rank_lo + code]``; -1 if every count is 0."""
    best = -1
    best_n = 0
    best_r = 0
    for code in range(width):
        cnt = counts[lo + code]
        if cnt > 0:
            r = rank[rank_lo + code]
            if cnt > best_n or (cnt == best_n and r < best_r):
                best, best_n, best_r = code, cnt, r
    return best


# ---------------------------------------------------------------------------- lanes
@njit(cache=True)
def _lane_room(g, n, lc, lo, top, size):
    """Whether group ``g`` (``n`` values) can take one more value without the pool growing."""
    if lo[g] + n < lc[g]:
        return True
    if lo[g] > 0 and n <= lc[g] // 2:
        return True
    return top + max(4, 2 * lc[g]) <= size


@njit(cache=True)
def _lane_push(g, n, secs, idx, ls, lc, lo, lane, lane_i, meta, top_slot):
    """Append (secs, store index) to group ``g``'s lane (room checked by ``_lane_room``); an
    empty ``lane_i`` keeps no store indexes (pairs need none)."""
    with_i = lane_i.shape[0] > 0
    if lo[g] + n == lc[g]:
        src = ls[g] + lo[g]
        # slide the live values down to the region start (a forward copy: the destination is
        # below the source), or move them to a region twice as big at the pool's end
        if not (lo[g] > 0 and n <= lc[g] // 2):
            ls[g] = meta[top_slot]
            lc[g] = max(4, 2 * lc[g])
            meta[top_slot] = ls[g] + lc[g]
        for r in range(n):
            lane[ls[g] + r] = lane[src + r]
            if with_i:
                lane_i[ls[g] + r] = lane_i[src + r]
        lo[g] = 0
    at = ls[g] + lo[g] + n
    lane[at] = secs
    if with_i:
        lane_i[at] = idx


# ---------------------------------------------------------------------------- updates
@njit(cache=True)
def _mark(a, c, pl_dirty, c_ndirty):
    """The pair at list position ``a`` (of connection ``c``) changed: its values are stale."""
    if pl_dirty[a] == 0:
        pl_dirty[a] = 1
        c_ndirty[c] += 1


@njit(cache=True)
def _remove_oldest(i, st_secs, st_pair, st_conn, st_codes, a_off, p_n, p_sum, p_lo, p_cnt, p_at, p_inz,
                   c_n, c_sum, c_lo, c_cnt, c_npres, c_ndirty, pl_n, pl_dirty, zbuf, meta):
    """Remove store event ``i`` (physical), the oldest of its pair and of its connection."""
    p = st_pair[i]
    c = st_conn[i]
    secs = st_secs[i]
    p_n[p] -= 1
    p_sum[p] -= secs
    p_lo[p] += 1
    c_n[c] -= 1
    c_sum[c] -= secs
    c_lo[c] += 1
    for a in range(st_codes.shape[1]):
        code = st_codes[i, a]
        if code >= 0:
            p_cnt[p, a_off[a] + code] -= 1
            c_cnt[c, a_off[a] + code] -= 1
    pl_n[p_at[p]] -= 1
    _mark(p_at[p], c, pl_dirty, c_ndirty)
    if p_n[p] == 0:
        p_lo[p] = 0
        c_npres[c] -= 1
        if p_inz[p] == 0:
            p_inz[p] = 1
            zbuf[meta[NZERO]] = p
            meta[NZERO] += 1
    if c_n[c] == 0:
        c_lo[c] = 0


@njit(cache=True)
def _pair_values(p, a, lane_p, p_n, p_sum, p_ls, p_lo, p_cnt, a_off, a_len, a_rank, pl_v, pl_c,
                 s_kind, s_arg, cs_attr, need_moments):
    """Recompute pair ``p``'s stream values into list-pool position ``a``."""
    n = p_n[p]
    if n == 0:
        for j in range(s_kind.shape[0]):
            pl_v[a, j] = np.nan
        for j in range(cs_attr.shape[0]):
            pl_c[a, j] = -1
        return
    total = float(p_sum[p])
    lo = p_ls[p] + p_lo[p]
    m2 = 0.0
    m3 = 0.0
    if need_moments and n >= 2:
        m2, m3 = _moments(lane_p, lo, n, total)
    for j in range(s_kind.shape[0]):
        kind = s_kind[j]
        if kind <= S_SKEW:
            v = _secs_value(kind, n, total, lane_p, lo, m2, m3)
        elif kind == S_NUNIQUE_ATTR:
            v = _distinct(p_cnt[p], a_off[s_arg[j]], a_len[s_arg[j]])
        else:  # S_ONE
            v = 1.0
        pl_v[a, j] = v
    for j in range(cs_attr.shape[0]):
        attr = cs_attr[j]
        pl_c[a, j] = _mode(p_cnt[p], a_off[attr], a_len[attr], a_rank, a_off[attr])


# ---------------------------------------------------------------------------- summaries
@njit(cache=True)
def _column_summary(start, length, k, pl_n, pl_code, col_rank, lo, bins, wbins, out):
    """Pair column ``k`` over a connection's present pairs, into ``out``: the number of
    distinct values, the most frequent value by pairs and by log rows (ties: lowest rank)."""
    u = 0
    for a in range(start, start + length):
        if pl_n[a] > 0:
            b = pl_code[a, k]
            if bins[b] == 0:
                u += 1
            bins[b] += 1
            wbins[b] += pl_n[a]
    best = -1
    best_n = 0
    best_r = 0
    wbest = -1
    wbest_n = 0
    wbest_r = 0
    for a in range(start, start + length):
        code = pl_code[a, k]
        cnt = bins[code]
        if cnt > 0:
            rk = col_rank[lo + code]
            if cnt > best_n or (cnt == best_n and rk < best_r):
                best, best_n, best_r = code, cnt, rk
            w = wbins[code]
            if w > wbest_n or (w == wbest_n and rk < wbest_r):
                wbest, wbest_n, wbest_r = code, w, rk
            bins[code] = 0
            wbins[code] = 0
    out[0] = u
    out[1] = best
    out[2] = wbest


@njit(cache=True)
def _cat_summary(start, length, j, pl_c, width, rank, rank_lo, vcount, out):
    """Categorical stream ``j`` over a connection's pairs, into ``out``: the number of
    distinct values and the most frequent one (ties: lowest rank; -1 = NaN, skipped)."""
    u = 0
    for a in range(start, start + length):
        code = pl_c[a, j]
        if code >= 0:
            if vcount[code] == 0:
                u += 1
            vcount[code] += 1
    out[0] = u
    out[1] = _mode(vcount, 0, width, rank, rank_lo)
    for a in range(start, start + length):
        code = pl_c[a, j]
        if code >= 0:
            vcount[code] = 0


@njit(cache=True)
def _stream_summaries(pl_v, start, length, s_mom, acc):
    """Every numeric stream ``j`` over a connection's pairs (NaN skipped), into ``acc[:, j]``:
    count, sum, min, max, and for streams with ``s_mom[j]`` the sums of squared and cubed
    deviations from the mean (two passes, as pandas); ``acc[6:]`` is scratch. Rows are swept
    once per pass with all streams side by side, branch-free (vectorisable).

    The three sums are compensated (Knuth's TwoSum, the rounding error of every addition
    carried in a second accumulator), so they are the exact sums rounded once: the same
    whatever order a connection's pairs are in. That order depends on when idle pairs were
    dropped, i.e. on how the stream was batched; plain sums made features (and so scores)
    differ in the last bits between a restarted detector and an uninterrupted one.
    """
    ns = pl_v.shape[1]
    cnt, sm, mn, mx, m2, m3, mean = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6]
    sm_lo, m2_lo, m3_lo = acc[7], acc[8], acc[9]
    for j in range(ns):
        cnt[j] = 0.0
        sm[j] = 0.0
        mn[j] = np.inf
        mx[j] = -np.inf
        m2[j] = 0.0
        m3[j] = 0.0
        sm_lo[j] = 0.0
        m2_lo[j] = 0.0
        m3_lo[j] = 0.0
    for a in range(start, start + length):
        row = pl_v[a]
        for j in range(ns):
            x = row[j]
            ok = x == x  # not NaN
            cnt[j] += 1.0 if ok else 0.0
            v = x if ok else 0.0
            t = sm[j] + v
            b = t - sm[j]
            sm_lo[j] += (sm[j] - (t - b)) + (v - b)
            sm[j] = t
            mn[j] = x if x < mn[j] else mn[j]  # NaN never compares less: skipped
            mx[j] = x if x > mx[j] else mx[j]
    any_mom = False
    for j in range(ns):
        sm[j] = _fold(sm[j], sm_lo[j])
        mean[j] = sm[j] / cnt[j] if cnt[j] > 0 else 0.0
        any_mom = any_mom or s_mom[j]
    if any_mom:
        for a in range(start, start + length):
            row = pl_v[a]
            for j in range(ns):
                x = row[j]
                d = x - mean[j] if x == x else 0.0
                d2 = d * d
                d3 = d2 * d
                t = m2[j] + d2
                b = t - m2[j]
                m2_lo[j] += (m2[j] - (t - b)) + (d2 - b)
                m2[j] = t
                t = m3[j] + d3
                b = t - m3[j]
                m3_lo[j] += (m3[j] - (t - b)) + (d3 - b)
                m3[j] = t
        for j in range(ns):
            m2[j] = _fold(m2[j], m2_lo[j])
            m3[j] = _fold(m3[j], m3_lo[j])


@njit(cache=True, inline="always")
def _fold(hi, lo):
    """A compensated sum's value (its error term is NaN only if the sum is infinite)."""
    return hi + lo if lo == lo else hi


# ---------------------------------------------------------------------------- the step
@njit(cache=True)
def step(meta, window, cap, until,
         st_secs, st_pair, st_conn, st_dead, st_codes,
         p_n, p_sum, p_pend, p_at, p_inz, p_cnt, p_ls, p_lc, p_lo, lane_p, lane_pi,
         c_n, c_sum, c_npres, c_cnt, c_ls, c_lc, c_lo, lane_c, lane_ci, c_pstart, c_plen,
         pl_pair, pl_n, pl_dirty, pl_v, pl_c, pl_code, c_ndirty, zbuf,
         a_off, a_len, a_rank, col_rank, col_off,
         s_kind, s_arg, cs_attr, s_mom, num_op, num_a, num_b, cat_op, cat_a,
         bins, wbins, vcount, col_sum, cat_sum, s_sum,
         pend_pair, pend_conn, pend_secs, pend_codes,
         q_conn, q_t, out_num, out_cat, out_n):
    """Answer the cutoffs ``(q_conn, q_t)`` (sorted by time, none before the live time), then
    move the live state on to ``until``. Pending events (sorted by secs) are applied as time
    passes them. Returns (pending events applied, cutoffs answered): fewer than asked only
    when a lane pool is full (``meta[FULL]`` says which); call again with the rest.

    ``bins`` .. ``s_sum`` are scratch (``bins``, ``wbins``: one slot per pair-column code,
    zero on entry and left zero; ``vcount``: one per attribute code, likewise).
    ``out_num`` / ``out_cat`` hold each column's default on entry (what featuretools gives
    a connection with nothing in the window); rows of connections with window events are
    overwritten.
    """
    need_moments = False
    for j in range(s_kind.shape[0]):
        if s_kind[j] == S_STD or s_kind[j] == S_SKEW:
            need_moments = True
    applied = 0
    n_pend = pend_secs.shape[0]
    nq = q_t.shape[0]
    for qi in range(nq + 1):
        t = q_t[qi] if qi < nq else until
        if t > meta[LIVE]:
            # -- move the live state to t: arrivals up to t, then departures up to t - window
            while applied < n_pend and pend_secs[applied] <= t:
                p = pend_pair[applied]
                c = pend_conn[applied]
                if not _lane_room(p, p_n[p], p_lc, p_lo, meta[PTOP], lane_p.shape[0]):
                    meta[FULL] = FULL_PAIR_LANES
                    return applied, qi
                if not _lane_room(c, c_n[c], c_lc, c_lo, meta[CTOP], lane_c.shape[0]):
                    meta[FULL] = FULL_CONN_LANES
                    return applied, qi
                base = meta[BASE]
                e = meta[SIZE]
                i = e - base
                secs = pend_secs[applied]
                st_secs[i] = secs
                st_pair[i] = p
                st_conn[i] = c
                st_dead[i] = 0
                for a in range(pend_codes.shape[1]):
                    code = pend_codes[applied, a]
                    st_codes[i, a] = code
                    if code >= 0:
                        p_cnt[p, a_off[a] + code] += 1
                        c_cnt[c, a_off[a] + code] += 1
                meta[SIZE] = e + 1
                _lane_push(p, p_n[p], float(secs), e, p_ls, p_lc, p_lo, lane_p, lane_pi, meta, PTOP)
                _lane_push(c, c_n[c], float(secs), e, c_ls, c_lc, c_lo, lane_c, lane_ci, meta, CTOP)
                if p_n[p] == 0:
                    c_npres[c] += 1
                p_n[p] += 1
                p_sum[p] += secs
                c_n[c] += 1
                c_sum[c] += secs
                pl_n[p_at[p]] += 1
                p_pend[p] -= 1
                _mark(p_at[p], c, pl_dirty, c_ndirty)
                if cap > 0 and c_n[c] > cap:  # drop the connection's oldest window event
                    old = lane_ci[c_ls[c] + c_lo[c]] - base
                    st_dead[old] = 1
                    _remove_oldest(old, st_secs, st_pair, st_conn, st_codes, a_off, p_n, p_sum, p_lo, p_cnt, p_at,
                                   p_inz, c_n, c_sum, c_lo, c_cnt, c_npres, c_ndirty, pl_n, pl_dirty, zbuf, meta)
                    meta[CAPPED] += 1
                applied += 1
            oldest = t - window
            base = meta[BASE]
            while meta[EVICT] < meta[SIZE] and st_secs[meta[EVICT] - base] <= oldest:
                i = meta[EVICT] - base
                if st_dead[i] == 0:
                    st_dead[i] = 1
                    _remove_oldest(i, st_secs, st_pair, st_conn, st_codes, a_off, p_n, p_sum, p_lo, p_cnt, p_at,
                                   p_inz, c_n, c_sum, c_lo, c_cnt, c_npres, c_ndirty, pl_n, pl_dirty, zbuf, meta)
                meta[EVICT] += 1
            meta[LIVE] = t
        if qi == nq:
            break
        c = q_conn[qi]
        if c < 0 or c_n[c] == 0:
            continue
        n = c_n[c]
        out_n[qi] = n
        start = c_pstart[c]
        length = c_plen[c]
        if c_ndirty[c]:  # bring the values of the pairs that changed up to date
            for a in range(start, start + length):
                if pl_dirty[a]:
                    _pair_values(pl_pair[a], a, lane_p, p_n, p_sum, p_ls, p_lo, p_cnt, a_off, a_len, a_rank, pl_v,
                                 pl_c, s_kind, s_arg, cs_attr, need_moments)
                    pl_dirty[a] = 0
            c_ndirty[c] = 0
        s_done = False
        col_sum[:, 0] = -1
        cat_sum[:, 0] = -1
        c_moments = False
        cm2 = 0.0
        cm3 = 0.0
        total = float(c_sum[c])
        clo = c_ls[c] + c_lo[c]
        for f in range(num_op.shape[0]):
            op = num_op[f]
            if op == LOG_SECS:
                kind = num_a[f]
                if (kind == S_STD or kind == S_SKEW) and not c_moments:
                    if n >= 2:
                        cm2, cm3 = _moments(lane_c, clo, n, total)
                    c_moments = True
                v = _secs_value(kind, n, total, lane_c, clo, cm2, cm3)
            elif op == LOG_NUNIQUE_ATTR:
                v = _distinct(c_cnt[c], a_off[num_a[f]], a_len[num_a[f]])
            elif op == COL_NUNIQUE:
                k = num_a[f]
                if col_sum[k, 0] < 0:
                    _column_summary(start, length, k, pl_n, pl_code, col_rank, col_off[k], bins, wbins, col_sum[k])
                v = float(col_sum[k, 0])
            elif op == PAIRS_COUNT:
                v = float(c_npres[c])
            elif op == PAIRS_AGG:
                j = num_a[f]
                agg = num_b[f]
                if not s_done:
                    _stream_summaries(pl_v, start, length, s_mom, s_sum)
                    s_done = True
                cnt = s_sum[0, j]
                if agg == S_SUM:
                    v = s_sum[1, j]
                elif cnt == 0:
                    v = np.nan
                elif agg == S_MEAN:
                    v = s_sum[1, j] / cnt
                elif agg == S_MIN:
                    v = s_sum[2, j]
                elif agg == S_MAX:
                    v = s_sum[3, j]
                elif agg == S_STD:
                    if cnt < 2:
                        v = np.nan
                    elif s_sum[2, j] == s_sum[3, j]:
                        v = 0.0  # pandas' Welford gives exactly 0 for equal values
                    else:
                        v = math.sqrt(s_sum[4, j] / (cnt - 1))
                else:
                    v = _skew(cnt, s_sum[4, j], s_sum[5, j])
            else:  # PAIRS_CAT_NUNIQUE
                j = num_a[f]
                if cat_sum[j, 0] < 0:
                    attr = cs_attr[j]
                    _cat_summary(start, length, j, pl_c, a_len[attr], a_rank, a_off[attr], vcount, cat_sum[j])
                v = float(cat_sum[j, 0])
            out_num[qi, f] = v
        for g in range(cat_op.shape[0]):
            op = cat_op[g]
            if op == LOG_MODE_ATTR:
                attr = cat_a[g]
                out_cat[qi, g] = _mode(c_cnt[c], a_off[attr], a_len[attr], a_rank, a_off[attr])
            elif op == PAIRS_CAT_MODE:
                j = cat_a[g]
                if cat_sum[j, 0] < 0:
                    attr = cs_attr[j]
                    _cat_summary(start, length, j, pl_c, a_len[attr], a_rank, a_off[attr], vcount, cat_sum[j])
                out_cat[qi, g] = cat_sum[j, 1]
            else:  # COL_MODE (by pairs) / COL_MODE_WEIGHTED (by log rows)
                k = cat_a[g]
                if col_sum[k, 0] < 0:
                    _column_summary(start, length, k, pl_n, pl_code, col_rank, col_off[k], bins, wbins, col_sum[k])
                out_cat[qi, g] = col_sum[k, 2] if op == COL_MODE_WEIGHTED else col_sum[k, 1]
    return applied, nq


# ---------------------------------------------------------------------------- lists, pools
@njit(cache=True)
def _copy_entry(src, dst, pl_pair, pl_n, pl_dirty, pl_v, pl_c, pl_code, to_pair, to_n, to_dirty, to_v, to_c, to_code,
                p_at):
    """Copy list-pool entry ``src`` to entry ``dst`` of the ``to_*`` pool (maybe the same)."""
    p = pl_pair[src]
    to_pair[dst] = p
    to_n[dst] = pl_n[src]
    to_dirty[dst] = pl_dirty[src]
    to_v[dst] = pl_v[src]
    to_c[dst] = pl_c[src]
    to_code[dst] = pl_code[src]
    p_at[p] = dst


@njit(cache=True)
def _move_entry(src, dst, pl_pair, pl_n, pl_dirty, pl_v, pl_c, pl_code, p_at):
    _copy_entry(src, dst, pl_pair, pl_n, pl_dirty, pl_v, pl_c, pl_code, pl_pair, pl_n, pl_dirty, pl_v, pl_c, pl_code,
                p_at)


@njit(cache=True)
def link_pairs(pairs, conns, codes, c_pstart, c_plen, c_pcap, pl_pair, pl_n, pl_dirty, pl_v, pl_c, pl_code, p_at,
               meta):
    """Append new pairs (with their pair-column codes) to their connections' lists, moving a
    full list to the pool's end with twice the room. Returns how many were linked: fewer
    when the list pool is full (the caller grows it and calls again with the rest)."""
    for i in range(pairs.shape[0]):
        p = pairs[i]
        c = conns[i]
        n = c_plen[c]
        if n == c_pcap[c]:
            room = max(4, 2 * n)
            top = meta[LTOP]
            if top + room > pl_pair.shape[0]:
                return i
            start = c_pstart[c]
            for r in range(n):
                _move_entry(start + r, top + r, pl_pair, pl_n, pl_dirty, pl_v, pl_c, pl_code, p_at)
            c_pstart[c] = top
            c_pcap[c] = room
            meta[LTOP] = top + room
        a = c_pstart[c] + n
        pl_pair[a] = p
        pl_n[a] = 0
        pl_dirty[a] = 0
        pl_v[a] = np.nan
        pl_c[a] = -1
        pl_code[a] = codes[i]
        p_at[p] = a
        c_plen[c] = n + 1
    return pairs.shape[0]


@njit(cache=True)
def drop_idle(meta, zbuf, p_n, p_pend, p_inz, p_conn, p_at, p_lc, c_pstart, c_plen, c_pcap, c_lc, c_ndirty,
              pl_pair, pl_n, pl_dirty, pl_v, pl_c, pl_code, freed_pairs, freed_conns):
    """Take pairs with nothing in the window and nothing pending out of their connection's
    list (the list's last pair fills the gap), and free connections left without pairs.
    Returns how many of each were freed (their slots are in ``freed_*``)."""
    npairs = 0
    nconns = 0
    for r in range(meta[NZERO]):
        p = zbuf[r]
        p_inz[p] = 0
        if p_n[p] != 0 or p_pend[p] != 0:
            continue
        c = p_conn[p]
        last = c_pstart[c] + c_plen[c] - 1
        hole = p_at[p]
        if pl_dirty[hole]:
            c_ndirty[c] -= 1
        if hole != last:
            _move_entry(last, hole, pl_pair, pl_n, pl_dirty, pl_v, pl_c, pl_code, p_at)
        c_plen[c] -= 1
        p_at[p] = -1
        p_conn[p] = -1
        p_lc[p] = 0  # its lane region is left to the next compaction
        freed_pairs[npairs] = p
        npairs += 1
        if c_plen[c] == 0:
            c_pcap[c] = 0
            c_lc[c] = 0
            freed_conns[nconns] = c
            nconns += 1
    meta[NZERO] = 0
    return npairs, nconns


@njit(cache=True)
def compact_lanes(n, ls, lc, lo, lane, lane_i, new_lane, new_lane_i):
    """Copy every live lane into ``new_*`` with room for twice its values; returns the top."""
    top = 0
    for g in range(n.shape[0]):
        if lc[g] == 0:
            continue
        room = 4
        while room < 2 * n[g]:
            room *= 2
        for r in range(n[g]):
            new_lane[top + r] = lane[ls[g] + lo[g] + r]
            if lane_i.shape[0]:
                new_lane_i[top + r] = lane_i[ls[g] + lo[g] + r]
        ls[g] = top
        lc[g] = room
        lo[g] = 0
        top += room
    return top


@njit(cache=True)
def compact_lists(c_pstart, c_plen, c_pcap, pl_pair, pl_n, pl_dirty, pl_v, pl_c, pl_code, p_at,
                  new_pair, new_n, new_dirty, new_v, new_c, new_code):
    """Copy every connection's pair list into the ``new_*`` pool (same room); returns the top."""
    top = 0
    for c in range(c_pstart.shape[0]):
        if c_pcap[c] == 0:
            continue
        start = c_pstart[c]
        for r in range(c_plen[c]):
            _copy_entry(start + r, top + r, pl_pair, pl_n, pl_dirty, pl_v, pl_c, pl_code, new_pair, new_n, new_dirty,
                        new_v, new_c, new_code, p_at)
        c_pstart[c] = top
        top += c_pcap[c]
    return top
