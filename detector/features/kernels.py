"""The compiled engine's inner loops (numba): window state updated per event, rows per cutoff.

State lives in plain numpy arrays owned by :class:`~detector.features.compiled.CompiledEngine`
and is passed in on every call; these functions only read and update it, so the Python
side stays the single owner of sizes and growth.

*Store*: the window's events in time order (``st_*``; logical index = physical index +
``meta[BASE]``). Each event links to the next event of its pair and of its connection,
so a group's events form a chain from its ``head`` (oldest, = MIN(secs)) to its ``last``
(newest, = MAX(secs)); events leave in time order, so eviction just moves heads forward.

*Groups* (pairs ``p_*``, connections ``c_*``; a connection's pairs are
``pool[c_pstart[c] : c_pstart[c] + c_plen[c]]``): count, exact integer sum of ``secs``,
per-attribute-value counts (``*_cnt``, attribute ``a`` at columns ``a_off[a]`` ..).
Pairs also cache their per-pair values (``p_vnum``, ``p_vcat``: the streams the plan
aggregates over a connection's pairs), recomputed lazily when the pair changed.

STD and SKEW are computed the way pandas does (two passes over the values, around the
float mean; ``nanskew``'s zeroing of moments below 1e-14), so they never accumulate
rounding over millions of window updates. Ties in MODE go to the smallest value (the
lowest rank in the sorted vocabulary), as pandas' ``Series.mode`` does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# meta slots
BASE, SIZE, EVICT, LIVE, CAPPED, NZERO = range(6)
META_SIZE = 6
#: live time before anything happened
NEVER = -(1 << 62)

# per-pair numeric streams (s_kind)
S_COUNT, S_SUM, S_MEAN, S_MIN, S_MAX, S_STD, S_SKEW, S_NUNIQUE_ATTR, S_ONE = range(9)

# numeric output ops (num_op)
(
    LOG_COUNT,
    LOG_SUM,
    LOG_MEAN,
    LOG_MIN,
    LOG_MAX,
    LOG_STD,
    LOG_SKEW,
    LOG_NUNIQUE_ATTR,
    COL_NUNIQUE,
    PAIRS_COUNT,
    PAIRS_AGG,
    PAIRS_CAT_NUNIQUE,
) = range(12)
# aggregations over pairs (num_b of PAIRS_AGG)
AGG_SUM, AGG_MEAN, AGG_MIN, AGG_MAX, AGG_STD, AGG_SKEW = range(6)
# categorical output ops (cat_op)
LOG_MODE_ATTR, COL_MODE_WEIGHTED, COL_MODE, PAIRS_CAT_MODE = range(4)

ZERO_FPERR = 1e-14  # pandas.core.nanops._zero_out_fperr


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
def _chain_moments(head, n, total, nxt, st_secs, base):
    """Sums of squared and cubed deviations of a chain's secs from their float mean."""
    mean = total / n
    m2 = 0.0
    m3 = 0.0
    e = head
    for _ in range(n):
        d = st_secs[e - base] - mean
        d2 = d * d
        m2 += d2
        m3 += d2 * d
        e = nxt[e - base]
    return m2, m3


@njit(cache=True)
def _mode(counts, lo, width, rank):
    """Code (0 .. width-1) with the highest count, ties to the lowest rank; -1 if none."""
    best = -1
    best_n = 0
    best_r = 0
    for k in range(width):
        cnt = counts[k + lo] if lo >= 0 else counts[k]
        if cnt > 0:
            r = rank[lo + k] if lo >= 0 else rank[k]
            if cnt > best_n or (cnt == best_n and r < best_r):
                best, best_n, best_r = k, cnt, r
    return best


@njit(cache=True)
def _add(e, sign, st_secs, st_pair, st_conn, st_next_p, st_next_c, st_codes, base, a_off,
         p_n, p_sum, p_head, p_last, p_dirty, p_inz, p_cnt, c_n, c_sum, c_head, c_last, c_cnt, zbuf, meta):
    """Add logical event ``e`` (the newest of its groups) or remove it (the oldest)."""
    i = e - base
    p = st_pair[i]
    c = st_conn[i]
    secs = st_secs[i]
    if sign > 0:
        if p_n[p] == 0:
            p_head[p] = e
        else:
            st_next_p[p_last[p] - base] = e
        p_last[p] = e
        if c_n[c] == 0:
            c_head[c] = e
        else:
            st_next_c[c_last[c] - base] = e
        c_last[c] = e
    else:
        p_head[p] = st_next_p[i]
        c_head[c] = st_next_c[i]
    p_n[p] += sign
    p_sum[p] += sign * secs
    c_n[c] += sign
    c_sum[c] += sign * secs
    for a in range(st_codes.shape[1]):
        code = st_codes[i, a]
        if code >= 0:
            p_cnt[p, a_off[a] + code] += sign
            c_cnt[c, a_off[a] + code] += sign
    p_dirty[p] = 1
    if p_n[p] == 0:
        p_head[p] = -1
        p_last[p] = -1
        if p_inz[p] == 0:
            p_inz[p] = 1
            zbuf[meta[NZERO]] = p
            meta[NZERO] += 1
    if c_n[c] == 0:
        c_head[c] = -1
        c_last[c] = -1


@njit(cache=True)
def _pair_values(p, st_secs, st_next_p, base, a_off, a_len, a_rank, p_n, p_sum, p_head, p_last, p_cnt,
                 p_vnum, p_vcat, s_kind, s_arg, cs_attr, need_moments):
    n = p_n[p]
    total = float(p_sum[p])
    m2 = 0.0
    m3 = 0.0
    if need_moments and n >= 2:
        m2, m3 = _chain_moments(p_head[p], n, total, st_next_p, st_secs, base)
    for j in range(s_kind.shape[0]):
        k = s_kind[j]
        if k == S_COUNT:
            v = float(n)
        elif k == S_SUM:
            v = total
        elif k == S_MEAN:
            v = total / n
        elif k == S_MIN:
            v = float(st_secs[p_head[p] - base])
        elif k == S_MAX:
            v = float(st_secs[p_last[p] - base])
        elif k == S_STD:
            v = math.sqrt(m2 / (n - 1)) if n >= 2 else np.nan
        elif k == S_SKEW:
            v = _skew(float(n), m2, m3)
        elif k == S_NUNIQUE_ATTR:
            a = s_arg[j]
            u = 0
            for code in range(a_len[a]):
                if p_cnt[p, a_off[a] + code] > 0:
                    u += 1
            v = float(u)
        else:  # S_ONE
            v = 1.0
        p_vnum[p, j] = v
    for j in range(cs_attr.shape[0]):
        a = cs_attr[j]
        p_vcat[p, j] = _mode(p_cnt[p], a_off[a], a_len[a], a_rank)


@njit(cache=True)
def _column_summary(pres, npres, k, p_n, p_code, col_rank, lo, bins, wbins, out):
    """Pair column ``k`` over the present pairs, into ``out``: the number of distinct values,
    the most frequent value by pairs and by log rows (ties to the lowest rank)."""
    u = 0
    for r in range(npres):
        p = pres[r]
        b = p_code[p, k]
        if bins[b] == 0:
            u += 1
        bins[b] += 1
        wbins[b] += p_n[p]
    best = -1
    best_n = 0
    best_r = 0
    wbest = -1
    wbest_n = 0
    wbest_r = 0
    for r in range(npres):
        code = p_code[pres[r], k]
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
def _cat_summary(pres, npres, j, p_vcat, width, rank, vcount, out):
    """Categorical pair stream ``j`` over the present pairs, into ``out``: the number of
    distinct values and the most frequent one (ties to the lowest rank; NaN skipped)."""
    u = 0
    for r in range(npres):
        code = p_vcat[pres[r], j]
        if code >= 0:
            if vcount[code] == 0:
                u += 1
            vcount[code] += 1
    out[0] = u
    out[1] = _mode(vcount, -1, width, rank)
    for r in range(npres):
        code = p_vcat[pres[r], j]
        if code >= 0:
            vcount[code] = 0


@njit(cache=True)
def step(meta, window, cap, until,
         st_secs, st_pair, st_conn, st_next_p, st_next_c, st_dead, st_codes,
         p_n, p_sum, p_head, p_last, p_pend, p_dirty, p_inz, p_cnt, p_vnum, p_vcat, p_code,
         c_n, c_sum, c_head, c_last, c_pstart, c_plen, pool, c_cnt, max_code, zbuf,
         a_off, a_len, a_rank, col_rank, col_off,
         s_kind, s_arg, cs_attr, num_op, num_a, num_b, cat_op, cat_a,
         pend_pair, pend_conn, pend_secs, pend_codes,
         q_conn, q_t, out_num, out_cat, out_n):
    """Answer the cutoffs ``(q_conn, q_t)`` (sorted by time, not before the live time), then
    move the live state on to ``until``. Pending events (sorted by secs) are applied as
    time passes them; returns how many were applied.

    ``out_num`` / ``out_cat`` hold each column's default on entry (what featuretools gives
    a connection with nothing in the window); rows of connections with window events are
    overwritten.
    """
    need_moments = False
    for j in range(s_kind.shape[0]):
        if s_kind[j] == S_STD or s_kind[j] == S_SKEW:
            need_moments = True
    n_streams = s_kind.shape[0]
    max_width = 1
    for a in range(a_len.shape[0]):
        if a_len[a] > max_width:
            max_width = a_len[a]
    pres = np.empty(p_n.shape[0], dtype=np.int64)
    bins = np.zeros(max(max_code, 1), dtype=np.int64)
    vcount = np.zeros(max_width, dtype=np.int64)
    wbins = np.zeros(max(max_code, 1), dtype=np.int64)
    col_sum = np.zeros((col_off.shape[0], 3), dtype=np.int64)
    cat_sum = np.zeros((max(cs_attr.shape[0], 1), 2), dtype=np.int64)
    s_cnt = np.zeros(n_streams)
    s_sum = np.zeros(n_streams)
    s_min = np.zeros(n_streams)
    s_max = np.zeros(n_streams)
    s_m2 = np.zeros(n_streams)
    s_m3 = np.zeros(n_streams)
    s_done = np.zeros(n_streams, dtype=np.int64)
    applied = 0
    n_pend = pend_secs.shape[0]
    nq = q_t.shape[0]
    for qi in range(nq + 1):
        t = q_t[qi] if qi < nq else until
        if t > meta[LIVE]:
            # -- move the live state to t: arrivals up to t, then departures up to t - window
            while applied < n_pend and pend_secs[applied] <= t:
                base = meta[BASE]
                e = meta[SIZE]
                i = e - base
                p = pend_pair[applied]
                c = pend_conn[applied]
                st_secs[i] = pend_secs[applied]
                st_pair[i] = p
                st_conn[i] = c
                st_next_p[i] = -1
                st_next_c[i] = -1
                st_dead[i] = 0
                for a in range(pend_codes.shape[1]):
                    st_codes[i, a] = pend_codes[applied, a]
                meta[SIZE] = e + 1
                p_pend[p] -= 1
                _add(e, 1, st_secs, st_pair, st_conn, st_next_p, st_next_c, st_codes, base, a_off,
                     p_n, p_sum, p_head, p_last, p_dirty, p_inz, p_cnt, c_n, c_sum, c_head, c_last, c_cnt, zbuf, meta)
                if cap > 0 and c_n[c] > cap:  # drop the connection's oldest window event
                    old = c_head[c]
                    st_dead[old - base] = 1
                    _add(old, -1, st_secs, st_pair, st_conn, st_next_p, st_next_c, st_codes, base, a_off,
                         p_n, p_sum, p_head, p_last, p_dirty, p_inz, p_cnt, c_n, c_sum, c_head, c_last, c_cnt,
                         zbuf, meta)
                    meta[CAPPED] += 1
                applied += 1
            oldest = t - window
            base = meta[BASE]
            while meta[EVICT] < meta[SIZE] and st_secs[meta[EVICT] - base] <= oldest:
                e = meta[EVICT]
                if st_dead[e - base] == 0:
                    st_dead[e - base] = 1
                    _add(e, -1, st_secs, st_pair, st_conn, st_next_p, st_next_c, st_codes, base, a_off,
                         p_n, p_sum, p_head, p_last, p_dirty, p_inz, p_cnt, c_n, c_sum, c_head, c_last, c_cnt,
                         zbuf, meta)
                meta[EVICT] = e + 1
            meta[LIVE] = t
        if qi == nq:
            break
        c = q_conn[qi]
        if c < 0 or c_n[c] == 0:
            continue
        base = meta[BASE]
        n = c_n[c]
        out_n[qi] = n
        # the connection's present pairs, their cached values brought up to date
        npres = 0
        start = c_pstart[c]
        for r in range(c_plen[c]):
            p = pool[start + r]
            if p_n[p] > 0:
                if p_dirty[p]:
                    _pair_values(p, st_secs, st_next_p, base, a_off, a_len, a_rank, p_n, p_sum, p_head, p_last,
                                 p_cnt, p_vnum, p_vcat, s_kind, s_arg, cs_attr, need_moments)
                    p_dirty[p] = 0
                pres[npres] = p
                npres += 1
        s_done[:] = 0
        col_sum[:, 0] = -1
        cat_sum[:, 0] = -1
        c_moments = False
        cm2 = 0.0
        cm3 = 0.0
        total = float(c_sum[c])
        for f in range(num_op.shape[0]):
            op = num_op[f]
            if op == LOG_COUNT:
                v = float(n)
            elif op == LOG_SUM:
                v = total
            elif op == LOG_MEAN:
                v = total / n
            elif op == LOG_MIN:
                v = float(st_secs[c_head[c] - base])
            elif op == LOG_MAX:
                v = float(st_secs[c_last[c] - base])
            elif op == LOG_STD or op == LOG_SKEW:
                if not c_moments:
                    if n >= 2:
                        cm2, cm3 = _chain_moments(c_head[c], n, total, st_next_c, st_secs, base)
                    c_moments = True
                if op == LOG_STD:
                    v = math.sqrt(cm2 / (n - 1)) if n >= 2 else np.nan
                else:
                    v = _skew(float(n), cm2, cm3)
            elif op == LOG_NUNIQUE_ATTR:
                a = num_a[f]
                u = 0
                for code in range(a_len[a]):
                    if c_cnt[c, a_off[a] + code] > 0:
                        u += 1
                v = float(u)
            elif op == COL_NUNIQUE:
                k = num_a[f]
                if col_sum[k, 0] < 0:
                    _column_summary(pres, npres, k, p_n, p_code, col_rank, col_off[k], bins, wbins, col_sum[k])
                v = float(col_sum[k, 0])
            elif op == PAIRS_COUNT:
                v = float(npres)
            elif op == PAIRS_AGG:
                j = num_a[f]
                agg = num_b[f]
                if s_done[j] == 0:
                    cnt = 0.0
                    sm = 0.0
                    mn = np.inf
                    mx = -np.inf
                    for r in range(npres):
                        x = p_vnum[pres[r], j]
                        if not math.isnan(x):
                            cnt += 1.0
                            sm += x
                            if x < mn:
                                mn = x
                            if x > mx:
                                mx = x
                    s_cnt[j], s_sum[j], s_min[j], s_max[j] = cnt, sm, mn, mx
                    s_done[j] = 1
                if (agg == AGG_STD or agg == AGG_SKEW) and s_done[j] == 1:
                    mean = s_sum[j] / s_cnt[j] if s_cnt[j] > 0 else 0.0
                    m2 = 0.0
                    m3 = 0.0
                    for r in range(npres):
                        x = p_vnum[pres[r], j]
                        if not math.isnan(x):
                            d = x - mean
                            m2 += d * d
                            m3 += d * d * d
                    s_m2[j], s_m3[j] = m2, m3
                    s_done[j] = 2
                cnt = s_cnt[j]
                if agg == AGG_SUM:
                    v = s_sum[j]
                elif cnt == 0:
                    v = np.nan
                elif agg == AGG_MEAN:
                    v = s_sum[j] / cnt
                elif agg == AGG_MIN:
                    v = s_min[j]
                elif agg == AGG_MAX:
                    v = s_max[j]
                elif agg == AGG_STD:
                    if cnt < 2:
                        v = np.nan
                    elif s_min[j] == s_max[j]:
                        v = 0.0  # pandas' Welford gives exactly 0 for equal values
                    else:
                        v = math.sqrt(s_m2[j] / (cnt - 1))
                else:
                    v = _skew(cnt, s_m2[j], s_m3[j])
            else:  # PAIRS_CAT_NUNIQUE
                j = num_a[f]
                if cat_sum[j, 0] < 0:
                    a = cs_attr[j]
                    _cat_summary(pres, npres, j, p_vcat, a_len[a], a_rank[a_off[a]:], vcount, cat_sum[j])
                v = float(cat_sum[j, 0])
            out_num[qi, f] = v
        for g in range(cat_op.shape[0]):
            op = cat_op[g]
            if op == LOG_MODE_ATTR:
                a = cat_a[g]
                out_cat[qi, g] = _mode(c_cnt[c], a_off[a], a_len[a], a_rank)
            elif op == PAIRS_CAT_MODE:
                j = cat_a[g]
                if cat_sum[j, 0] < 0:
                    a = cs_attr[j]
                    _cat_summary(pres, npres, j, p_vcat, a_len[a], a_rank[a_off[a]:], vcount, cat_sum[j])
                out_cat[qi, g] = cat_sum[j, 1]
            else:  # COL_MODE (by pairs) / COL_MODE_WEIGHTED (by log rows)
                k = cat_a[g]
                if col_sum[k, 0] < 0:
                    _column_summary(pres, npres, k, p_n, p_code, col_rank, col_off[k], bins, wbins, col_sum[k])
                out_cat[qi, g] = col_sum[k, 2] if op == COL_MODE_WEIGHTED else col_sum[k, 1]
    return applied


@njit(cache=True)
def link_pairs(pairs, conns, c_pstart, c_plen, c_pcap, pool, p_pos, top):
    """Append each new pair to its connection's pair list, moving a full list to the pool's
    end with twice the room. Returns (pairs linked, new pool top); stops early when the
    pool is full (the caller compacts or grows it and calls again with the rest)."""
    for i in range(pairs.shape[0]):
        p = pairs[i]
        c = conns[i]
        n = c_plen[c]
        if n == c_pcap[c]:
            cap = max(4, 2 * n)
            if top + cap > pool.shape[0]:
                return i, top
            start = c_pstart[c]
            for r in range(n):
                pool[top + r] = pool[start + r]
            c_pstart[c] = top
            c_pcap[c] = cap
            top += cap
        pool[c_pstart[c] + n] = p
        p_pos[p] = n
        c_plen[c] = n + 1
    return pairs.shape[0], top


@njit(cache=True)
def drop_idle(meta, zbuf, p_n, p_pend, p_inz, p_conn, p_pos, c_pstart, c_plen, c_pcap, pool, freed_pairs, freed_conns):
    """Remove pairs that have nothing in the window and nothing pending from their
    connection's pair list, and free connections left without pairs. Returns how many of
    each were freed (their slots are in ``freed_*``)."""
    npairs = 0
    nconns = 0
    for k in range(meta[NZERO]):
        p = zbuf[k]
        p_inz[p] = 0
        if p_n[p] != 0 or p_pend[p] != 0:
            continue
        c = p_conn[p]
        start = c_pstart[c]
        last = c_plen[c] - 1
        moved = pool[start + last]  # the list's last pair takes p's place
        pool[start + p_pos[p]] = moved
        p_pos[moved] = p_pos[p]
        c_plen[c] = last
        p_pos[p] = -1
        p_conn[p] = -1
        freed_pairs[npairs] = p
        npairs += 1
        if last == 0:
            c_pcap[c] = 0
            freed_conns[nconns] = c
            nconns += 1
    meta[NZERO] = 0
    return npairs, nconns
