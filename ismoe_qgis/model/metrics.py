"""Skill metrics for soil-moisture estimates: CC, RMSE, ubRMSE, bias, KGE and n.

Pure numpy; no qgis, PyQt or torch import.

Definitions (``o`` = observed, ``e`` = estimated, over the *paired valid* samples: a sample
is used only where both ``o`` and ``e`` are finite; population moments, ddof = 0):

- ``n``      number of paired valid samples.
- ``cc``     Pearson correlation coefficient r = cov(o, e) / (sd(o) * sd(e)).
- ``rmse``   root-mean-square error sqrt(mean((e - o)^2)).
- ``ubrmse`` unbiased RMSE (Entekhabi et al. 2010): RMSE of the anomalies,
             sqrt(mean(((e - mean e) - (o - mean o))^2)) = sqrt(RMSE^2 - bias^2).
- ``bias``   mean(e) - mean(o)  (positive: the estimate is too wet).
- ``kge``    Kling-Gupta efficiency, **2009 version** (Gupta et al. 2009):
             1 - sqrt((r - 1)^2 + (alpha - 1)^2 + (beta - 1)^2) with
             alpha = sd(e) / sd(o) (variability ratio) and beta = mean(e) / mean(o)
             (bias ratio). (Not the 2012 variant, which uses the ratio of coefficients
             of variation instead of alpha.)

Undefined cases give NaN, never a warning or an exception:

- fewer than ``MIN_PAIRS`` (3) paired valid samples: every metric is NaN (n is still given);
- zero variance of obs or of the estimate (relative to the data's magnitude): cc and kge
  are NaN (rmse, ubrmse and bias stay defined);
- mean(obs) == 0: kge is NaN (beta is undefined).

Grouped metrics are vectorised (``np.bincount``): one pass over the samples collects
two-pass centred moments per cell (a combination of one group of every kind), which are
then pooled exactly into each kind's groups (Chan et al.'s parallel update), so thousands of
pixel groups over long series stay fast. A group's row equals ``metrics()`` on that group's
samples to floating-point rounding.
"""
import numpy as np

__all__ = [
    "METRIC_NAMES",
    "MIN_PAIRS",
    "SEASONS",
    "metrics",
    "grouped_metrics",
    "season_of",
]

#: metric keys, in the order reports show them (``n`` comes last)
METRIC_NAMES = ("cc", "rmse", "ubrmse", "bias", "kge")
#: fewer paired valid samples than this give NaN metrics
MIN_PAIRS = 3
#: meteorological seasons, in calendar order
SEASONS = ("DJF", "MAM", "JJA", "SON")
# a standard deviation at or below this fraction of |mean| + sd counts as zero variance
_ZERO_VAR_REL = 1e-9
# grouped_metrics pools per-cell moments (one cell per combination of groups) when the
# number of cells is at most max(_MAX_CELLS_MIN, min(_MAX_CELLS, valid samples / 4))
_MAX_CELLS_MIN = 4096
_MAX_CELLS = 2_000_000
# label arrays larger than this are factorised with np.unique instead of a Python loop
_FACTORIZE_LOOP_MAX = 50_000

# month 1..12 -> season label (index 0 unused)
_MONTH_TO_SEASON = np.array(
    ["", "DJF", "DJF", "MAM", "MAM", "MAM", "JJA", "JJA", "JJA", "SON", "SON", "SON", "DJF"]
)


def _as_float(a, name):
    try:
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None


def _paired(obs, est):
    """Return float64 arrays of the same shape plus the paired-valid mask."""
    o = _as_float(obs, "obs")
    e = _as_float(est, "est")
    if o.shape != e.shape:
        raise ValueError(f"obs and est must have the same shape, got {o.shape} and {e.shape}")
    return o, e, np.isfinite(o) & np.isfinite(e)


def _moments(o, e, codes, ncells):
    """Sufficient statistics of 1-D paired-valid samples grouped by ``codes`` (0..ncells-1).

    Two-pass (means first, then centred sums) for numerical robustness. Returns a dict of
    arrays of length ``ncells``: ``n`` (int64), means ``mo``/``me`` and the centred sums
    ``m2o`` = sum(do^2), ``m2e`` = sum(de^2), ``coe`` = sum(do*de), ``m2d`` = sum((de-do)^2)
    (``do = o - mo``, ``de = e - me``).
    """
    n = np.bincount(codes, minlength=ncells).astype(np.int64)
    with np.errstate(all="ignore"):
        nf = n.astype(np.float64)
        mo = np.bincount(codes, weights=o, minlength=ncells) / nf
        me = np.bincount(codes, weights=e, minlength=ncells) / nf
        do = o - mo[codes]
        de = e - me[codes]
        m2o = np.bincount(codes, weights=do * do, minlength=ncells)
        m2e = np.bincount(codes, weights=de * de, minlength=ncells)
        coe = np.bincount(codes, weights=do * de, minlength=ncells)
        de -= do
        m2d = np.bincount(codes, weights=de * de, minlength=ncells)
    return {"n": n, "mo": mo, "me": me, "m2o": m2o, "m2e": m2e, "coe": coe, "m2d": m2d}


def _combine(m, group_of_cell, ngroups):
    """Pool cell moments into groups (Chan et al.'s exact pairwise update, vectorised).

    ``group_of_cell``: group code of each cell, -1 = in no group.
    """
    keep = (group_of_cell >= 0) & (m["n"] > 0)
    g = group_of_cell[keep]
    c = {k: v[keep] for k, v in m.items()}
    nf = c["n"].astype(np.float64)
    n = np.bincount(g, weights=nf, minlength=ngroups)
    with np.errstate(all="ignore"):
        mo = np.bincount(g, weights=nf * c["mo"], minlength=ngroups) / n
        me = np.bincount(g, weights=nf * c["me"], minlength=ngroups) / n
        dmo = c["mo"] - mo[g]
        dme = c["me"] - me[g]
        ddd = dme - dmo
        out = {
            "n": np.rint(n).astype(np.int64),
            "mo": mo,
            "me": me,
            "m2o": np.bincount(g, weights=c["m2o"] + nf * dmo * dmo, minlength=ngroups),
            "m2e": np.bincount(g, weights=c["m2e"] + nf * dme * dme, minlength=ngroups),
            "coe": np.bincount(g, weights=c["coe"] + nf * dmo * dme, minlength=ngroups),
            "m2d": np.bincount(g, weights=c["m2d"] + nf * ddd * ddd, minlength=ngroups),
        }
    return out


def _finalize(m):
    """Metric arrays (cc, rmse, ubrmse, bias, kge, n) from moments; NaN where undefined."""
    n = m["n"]
    mo, me = m["mo"], m["me"]
    with np.errstate(all="ignore"):
        nf = n.astype(np.float64)
        var_o = np.maximum(m["m2o"] / nf, 0.0)
        var_e = np.maximum(m["m2e"] / nf, 0.0)
        ub = np.maximum(m["m2d"] / nf, 0.0)
        sd_o = np.sqrt(var_o)
        sd_e = np.sqrt(var_e)
        enough = n >= MIN_PAIRS
        # zero variance relative to the data's magnitude (a constant series in floating
        # point has sd ~ 1e-17 * |mean|, not exactly 0)
        flat_o = sd_o <= _ZERO_VAR_REL * (np.abs(mo) + sd_o)
        flat_e = sd_e <= _ZERO_VAR_REL * (np.abs(me) + sd_e)
        has_var = enough & ~flat_o & ~flat_e

        b = me - mo
        bias = np.where(enough, b, np.nan)
        # mean((e - o)^2) = ubRMSE^2 + bias^2 exactly
        rmse = np.where(enough, np.sqrt(ub + b * b), np.nan)
        ubrmse = np.where(enough, np.sqrt(ub), np.nan)
        # cov / sqrt(var_o * var_e) is exactly 1 for a perfect estimate (sqrt(x*x) == x in
        # IEEE arithmetic); fall back to sd_o * sd_e if the product underflows
        cov = m["coe"] / nf
        prod = var_o * var_e
        denom = np.where(prod > 0, np.sqrt(prod), sd_o * sd_e)
        r = np.where(has_var, cov / denom, np.nan)
        r = np.clip(r, -1.0, 1.0)  # NaN stays NaN
        alpha = sd_e / sd_o
        beta = me / mo
        kge_ok = has_var & (mo != 0)
        kge = np.where(
            kge_ok,
            1.0 - np.sqrt((r - 1.0) ** 2 + (alpha - 1.0) ** 2 + (beta - 1.0) ** 2),
            np.nan,
        )
    return {"cc": r, "rmse": rmse, "ubrmse": ubrmse, "bias": bias, "kge": kge, "n": n}


def _row(stats, i):
    row = {k: float(stats[k][i]) for k in METRIC_NAMES}
    row["n"] = int(stats["n"][i])
    return row


def metrics(obs, est):
    """CC, RMSE, ubRMSE, bias, KGE (2009) and n of ``est`` against ``obs``.

    ``obs`` and ``est`` are array-likes of the same shape (any number of dimensions);
    all paired valid samples are pooled. Returns
    ``{"cc": float, "rmse": float, "ubrmse": float, "bias": float, "kge": float, "n": int}``
    with NaN for undefined values (see the module docstring).
    """
    o, e, valid = _paired(obs, est)
    o = o[valid]
    e = e[valid]
    return _row(_finalize(_moments(o, e, np.zeros(o.size, dtype=np.intp), 1)), 0)


def _is_missing_label(v):
    if v is None:
        return True
    if isinstance(v, (float, np.floating)):
        return bool(np.isnan(v))
    if isinstance(v, (str, np.str_)):
        return v == ""
    return False


def _factorize(labels):
    """Integer codes (same shape as ``labels``; -1 = no group) and the ordered label list.

    Order: first appearance in C order, except that season labels (a subset of
    DJF/MAM/JJA/SON) are put in calendar order.
    """
    arr = np.asarray(labels, dtype=object)
    flat = arr.ravel()
    codes = np.full(flat.shape, -1, dtype=np.intp)
    if flat.size > _FACTORIZE_LOOP_MAX:
        # vectorised path for large label arrays (same result as the loop below)
        missing = np.frompyfunc(_is_missing_label, 1, 1)(flat).astype(bool)
        keys = np.frompyfunc(str, 1, 1)(flat[~missing]).astype(str)
        uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(uniq), dtype=np.intp)
        rank[order] = np.arange(len(uniq))
        codes[~missing] = rank[inv]
        names = [str(u) for u in uniq[order]]
    else:
        index = {}
        names = []
        for i, v in enumerate(flat):
            if _is_missing_label(v):
                continue
            key = str(v)
            c = index.get(key)
            if c is None:
                c = index[key] = len(names)
                names.append(key)
            codes[i] = c
    if names and set(names) <= set(SEASONS):
        order = sorted(range(len(names)), key=lambda c: SEASONS.index(names[c]))
        remap = np.empty(len(names), dtype=np.intp)
        remap[order] = np.arange(len(names))
        codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
        names = [names[c] for c in order]
    return codes.reshape(arr.shape), names


def grouped_metrics(obs, est, groups=None, overall=True):
    """Metrics overall and per group.

    Parameters
    ----------
    obs, est : array-like, same shape (e.g. (T, N): time x location)
    groups : dict ``{group_kind: labels}``, optional
        ``labels`` must broadcast to ``obs.shape`` under numpy rules, so for (T, N) data
        pass per-location labels as shape (N,) (or (1, N)) and per-time labels (e.g.
        ``season_of(dates)``) as shape (T, 1). Labels are converted to ``str``;
        ``None``, ``''`` and float NaN mean "in no group" (those samples are skipped for
        that kind, but still count in ``overall``). Groups appear in order of first
        appearance (C order), seasons in DJF, MAM, JJA, SON order. A group with no valid
        samples still gets a row (n = 0, NaN metrics).
    overall : bool
        Prepend the row ``group_kind='overall', group='all'``.

    Returns
    -------
    list of dict rows ``{"group_kind": str, "group": str, "cc", "rmse", "ubrmse", "bias",
    "kge": float, "n": int}``; overall first, then each kind in the dict's order.
    """
    o, e, valid = _paired(obs, est)
    kinds = []
    for kind, labels in (groups or {}).items():
        codes, names = _factorize(labels)
        try:
            codes = np.broadcast_to(codes, o.shape)
        except ValueError:
            raise ValueError(
                f"labels of group kind {kind!r} with shape {codes.shape} do not broadcast "
                f"to the data shape {o.shape} (per-time labels of (T, N) data: shape (T, 1))"
            ) from None
        kinds.append((str(kind), codes, names))

    n_valid = int(valid.sum())
    sizes = [len(names) + 1 for _k, _c, names in kinds]  # +1: "in no group" (code -1)
    ncells = int(np.prod(sizes, dtype=np.float64)) if sizes else 1
    rows = []
    if ncells <= max(_MAX_CELLS_MIN, min(_MAX_CELLS, n_valid // 4)):
        # one pass over the samples: moments per cell (one combination of every kind's
        # group), then pooled exactly into the groups of each kind
        cell = np.zeros(o.shape, dtype=np.int64)
        stride = 1
        for (_k, codes, _n), size in zip(kinds, sizes):
            cell += (codes + 1).astype(np.int64) * stride
            stride *= size
        cell = cell[valid]
        cm = _moments(o[valid], e[valid], cell, ncells)
        if overall:
            stats = _finalize(_combine(cm, np.zeros(ncells, dtype=np.intp), 1))
            rows.append({"group_kind": "overall", "group": "all", **_row(stats, 0)})
        cells = np.arange(ncells, dtype=np.int64)
        stride = 1
        for (kind, _c, names), size in zip(kinds, sizes):
            group_of_cell = (cells // stride) % size - 1
            stride *= size
            stats = _finalize(_combine(cm, group_of_cell, len(names)))
            rows.extend({"group_kind": kind, "group": name, **_row(stats, i)}
                        for i, name in enumerate(names))
        return rows

    # too many combinations: one pass per kind
    if overall:
        stats = _finalize(_moments(o[valid], e[valid], np.zeros(n_valid, dtype=np.intp), 1))
        rows.append({"group_kind": "overall", "group": "all", **_row(stats, 0)})
    for kind, codes, names in kinds:
        sel = valid & (codes >= 0)
        stats = _finalize(_moments(o[sel], e[sel], codes[sel], len(names)))
        rows.extend({"group_kind": kind, "group": name, **_row(stats, i)}
                    for i, name in enumerate(names))
    return rows


def season_of(dates):
    """Meteorological season label of each date: 'DJF', 'MAM', 'JJA' or 'SON'.

    ``dates``: array-like of numpy datetime64 (any unit), ``datetime.date``/``datetime``
    or ISO strings. NaT gives ''. Returns a numpy str array of the same shape.
    Labels carry no year: December, January and February all give 'DJF'.
    """
    d = np.asarray(dates)
    if d.dtype.kind != "M":
        d = np.asarray(dates, dtype="datetime64[D]")
    nat = np.isnat(d)
    months = d.astype("datetime64[M]").astype(np.int64) % 12 + 1
    months = np.where(nat, 0, months)
    return _MONTH_TO_SEASON[months]
