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

Grouped metrics are computed in one vectorised pass (``np.bincount``) so that thousands of
pixel groups over long series stay fast; ``metrics()`` uses the same code path, so a group's
row is identical to ``metrics()`` on that group's samples.
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
# a standard deviation at or below this fraction of mean(|x|) counts as zero variance
# (a constant series in floating point has sd ~ 1e-17 * |x|, not exactly 0)
_ZERO_VAR_REL = 1e-9
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


def _group_stats(o, e, codes, ngroups):
    """Metrics of 1-D paired-valid samples ``o``, ``e`` grouped by ``codes`` (0..ngroups-1).

    Returns a dict of float64 arrays of length ``ngroups`` (``n`` as int64).
    Two-pass (means first, then centred sums) for numerical robustness.
    """
    n = np.bincount(codes, minlength=ngroups).astype(np.int64)
    with np.errstate(all="ignore"):
        nf = n.astype(np.float64)
        mo = np.bincount(codes, weights=o, minlength=ngroups) / nf
        me = np.bincount(codes, weights=e, minlength=ngroups) / nf
        do = o - mo[codes]
        de = e - me[codes]
        var_o = np.bincount(codes, weights=do * do, minlength=ngroups) / nf
        var_e = np.bincount(codes, weights=de * de, minlength=ngroups) / nf
        cov = np.bincount(codes, weights=do * de, minlength=ngroups) / nf
        diff = e - o
        mse = np.bincount(codes, weights=diff * diff, minlength=ngroups) / nf
        ddiff = de - do
        ub = np.bincount(codes, weights=ddiff * ddiff, minlength=ngroups) / nf
        scale_o = np.bincount(codes, weights=np.abs(o), minlength=ngroups) / nf
        scale_e = np.bincount(codes, weights=np.abs(e), minlength=ngroups) / nf

        sd_o = np.sqrt(np.maximum(var_o, 0.0))
        sd_e = np.sqrt(np.maximum(var_e, 0.0))
        enough = n >= MIN_PAIRS
        flat_o = sd_o <= _ZERO_VAR_REL * scale_o
        flat_e = sd_e <= _ZERO_VAR_REL * scale_e
        has_var = enough & ~flat_o & ~flat_e

        bias = np.where(enough, me - mo, np.nan)
        rmse = np.where(enough, np.sqrt(np.maximum(mse, 0.0)), np.nan)
        ubrmse = np.where(enough, np.sqrt(np.maximum(ub, 0.0)), np.nan)
        # cov / sqrt(var_o * var_e) is exactly 1 for a perfect estimate (sqrt(x*x) == x in
        # IEEE arithmetic); fall back to sd_o * sd_e if the product underflows
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
    stats = _group_stats(o, e, np.zeros(o.size, dtype=np.intp), 1)
    return _row(stats, 0)


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
    rows = []
    if overall:
        stats = _group_stats(o[valid], e[valid], np.zeros(int(valid.sum()), dtype=np.intp), 1)
        rows.append({"group_kind": "overall", "group": "all", **_row(stats, 0)})
    for kind, labels in (groups or {}).items():
        codes, names = _factorize(labels)
        try:
            codes = np.broadcast_to(codes, o.shape)
        except ValueError:
            raise ValueError(
                f"labels of group kind {kind!r} with shape {codes.shape} do not broadcast "
                f"to the data shape {o.shape} (per-time labels of (T, N) data: shape (T, 1))"
            ) from None
        sel = valid & (codes >= 0)
        stats = _group_stats(o[sel], e[sel], codes[sel], len(names))
        for i, name in enumerate(names):
            rows.append({"group_kind": str(kind), "group": name, **_row(stats, i)})
    return rows


def season_of(dates):
    """Meteorological season label of each date: 'DJF', 'MAM', 'JJA' or 'SON'.

    ``dates``: array-like of numpy datetime64 (any unit), ``datetime.date``/``datetime``
    or ISO strings. NaT gives ''. Returns a numpy str array of the same shape.
    December belongs to the DJF of the following winter (labels carry no year).
    """
    d = np.asarray(dates)
    if d.dtype.kind != "M":
        d = np.asarray(dates, dtype="datetime64[D]")
    nat = np.isnat(d)
    months = d.astype("datetime64[M]").astype(np.int64) % 12 + 1
    months = np.where(nat, 0, months)
    return _MONTH_TO_SEASON[months]
