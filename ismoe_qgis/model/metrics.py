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

Per-location skill (``per_location_skill``, ``location_skill_samples``): a pooled CC over many
locations mostly rewards getting each location's mean level right (the spread of the location
means dominates the pooled variance). The headline skill is therefore computed per location,
over time, and summarised by the median and the interquartile range (25th/75th percentile) over
the locations with at least ``min_days`` (default ``MIN_LOCATION_DAYS`` = 30) scored days:

- ``cc``, ``bias``, ``ubrmse``, ``rmse``, ``kge``: the metrics above on one location's series;
  ``ubrmse**2 == rmse**2 - bias**2`` per location.
- ``anomaly_cc``: CC of the anomalies ``o - c_o`` and ``e - c_e``, where ``c_o`` and ``c_e`` are
  the location's day-of-year climatologies of the observation and of the estimate *over the
  training period* (``climatology_table``: 366 calendar slots, 29 February its own, each pooled
  over a centred ``CLIMATOLOGY_WINDOW`` = 15 day circular window). It asks: does the estimate
  follow the departures from the normal seasonal cycle? Each series loses its *own* climatology:
  removing the observed one from both would leave the shared term ``-c_o`` in both anomalies and
  inflate their CC when the climatology varies as much as the series (short training periods: a
  constant estimate would score well). A climatology as the estimate has anomalies 0: undefined.
  Days where either climatology is undefined (no training value within the window) are left out;
  a location with fewer than ``min_days`` anomaly days has no anomaly CC and is counted in
  ``n_no_climatology``.
"""
import numpy as np

__all__ = [
    "METRIC_NAMES",
    "MIN_PAIRS",
    "SEASONS",
    "metrics",
    "cc_rmse",
    "grouped_metrics",
    "season_of",
    "MIN_LOCATION_DAYS",
    "CLIMATOLOGY_WINDOW",
    "LOCATION_METRICS",
    "HEADLINE_METRICS",
    "calendar_slot",
    "climatology_table",
    "ClimatologyAccumulator",
    "doy_climatology",
    "location_skill_samples",
    "per_location_skill",
    "location_skill_summary",
    "describe_location_skill",
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


def cc_rmse(obs, est):
    """(CC, RMSE) of ``est`` against ``obs`` (:func:`metrics` on the pairs where both are valid): the two numbers
    training reports per epoch and for its validation and test samples."""
    m = metrics(obs, est)
    return m["cc"], m["rmse"]


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


# ---------------------------------------------------------------------------------------------
# per-location skill
# ---------------------------------------------------------------------------------------------
#: a location enters the per-location summary with at least this many scored days
MIN_LOCATION_DAYS = 30
#: days pooled (centred, circular) into each calendar slot of the climatology
CLIMATOLOGY_WINDOW = 15
#: per-location metrics, in report order
LOCATION_METRICS = ("cc", "anomaly_cc", "bias", "ubrmse", "rmse", "kge")
#: the per-location metrics of the headline table
HEADLINE_METRICS = ("cc", "anomaly_cc", "bias", "ubrmse")
# anomalies with a standard deviation below this fraction of the series' |mean| + sd count as zero
# (looser than _ZERO_VAR_REL: a float32 copy of the climatology leaves rounding-size anomalies)
_ZERO_VAR_REL_ANOMALY = 1e-6
_SLOT_START = np.array([0, 31, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335])


def calendar_slot(dates):
    """0..365: each date's position in a leap year (29 February = 59, 1 March = 60 in every year)."""
    d = np.asarray(dates).astype("datetime64[D]")
    month = d.astype("datetime64[M]").astype(np.int64) % 12       # 0..11
    day = (d - d.astype("datetime64[M]")).astype(np.int64)          # 0..30
    return _SLOT_START[month] + day


class ClimatologyAccumulator:
    """Day-of-year sums of samples, per location, added chunk by chunk (memory 2 x 366 x N), for a
    climatology of values that come in pieces (e.g. a model's predictions over a training period).

    ``add(values, dates, location)``: 1-D samples (NaN values are skipped); ``table(window)``: the
    (366, N) climatology of :func:`climatology_table`.
    """

    def __init__(self, n_locations):
        self.n = int(n_locations)
        self.sums = np.zeros(366 * self.n)
        self.counts = np.zeros(366 * self.n)

    def add(self, values, dates, location):
        v = _as_float(values, "values").reshape(-1)
        loc = np.asarray(location, dtype=np.int64).reshape(-1)
        slots = calendar_slot(np.asarray(dates).reshape(-1))
        if not (v.size == loc.size == slots.size):
            raise ValueError(f"values, dates and location must have the same length, got {v.size}, "
                             f"{slots.size}, {loc.size}")
        ok = np.isfinite(v) & (loc >= 0)
        code = slots[ok] * self.n + loc[ok]
        self.sums += np.bincount(code, weights=v[ok], minlength=366 * self.n)
        self.counts += np.bincount(code, minlength=366 * self.n)
        return self

    def table(self, window=CLIMATOLOGY_WINDOW):
        N = self.n
        sums = self.sums.reshape(366, N)
        counts = self.counts.reshape(366, N)
        window = min(366, max(1, int(window)))
        if window > 1:
            h = window // 2
            # circular moving sum over the slots by cumulative sums (memory 2 x (366 + window) x N)
            pad_s = np.concatenate([sums[366 - h:], sums, sums[:window - h - 1]])
            pad_c = np.concatenate([counts[366 - h:], counts, counts[:window - h - 1]])
            cs = np.concatenate([np.zeros((1, N)), np.cumsum(pad_s, axis=0)])
            cc = np.concatenate([np.zeros((1, N)), np.cumsum(pad_c, axis=0)])
            sums = cs[window:window + 366] - cs[:366]
            counts = np.rint(cc[window:window + 366] - cc[:366])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def climatology_table(y, dates, train_mask, window=CLIMATOLOGY_WINDOW):
    """Day-of-year mean of ``y`` (T, N) over the dates of ``train_mask`` (T,), per location.

    Returns float64 (366, N): slot = :func:`calendar_slot`; each slot pools the training values of
    the ``window`` calendar slots centred on it (circular over the year end; ``window=1``: the plain
    day-of-year mean). NaN where the window holds no training value.
    """
    y = _as_float(y, "y")
    if y.ndim == 1:
        y = y[:, None]
    T, N = y.shape
    train = np.asarray(train_mask, bool).reshape(-1)
    if train.shape != (T,):
        raise ValueError(f"train_mask has {train.size} values for {T} dates")
    d = np.asarray(dates).reshape(-1)
    if d.shape != (T,):
        raise ValueError(f"{d.size} dates for {T} time steps")
    tt, nn = np.nonzero(train[:, None] & np.isfinite(y))
    return ClimatologyAccumulator(N).add(y[tt, nn], d[tt], nn).table(window)


def doy_climatology(y, dates, train_mask, window=CLIMATOLOGY_WINDOW, at_dates=None):
    """The training climatology of ``y`` (see :func:`climatology_table`) on ``at_dates``
    (default: ``dates``): float64 (len(at_dates), N), NaN where the slot is undefined."""
    table = climatology_table(y, dates, train_mask, window)
    return table[calendar_slot(dates if at_dates is None else at_dates).reshape(-1)]


def _quartiles(values):
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"median": float("nan"), "p25": float("nan"), "p75": float("nan"), "n": 0}
    p25, med, p75 = np.percentile(v, [25.0, 50.0, 75.0])
    return {"median": float(med), "p25": float(p25), "p75": float(p75), "n": int(v.size)}


def location_skill_samples(obs, est, location, n_locations, min_days=MIN_LOCATION_DAYS, clim=None,
                           est_clim=None):
    """Per-location skill from 1-D samples: ``obs``, ``est``, ``location`` (int 0..n_locations-1,
    -1 = none) and optionally ``clim`` (the observation's training climatology at each sample, NaN =
    undefined) and ``est_clim`` (the estimate's own training climatology) of the same length. The
    anomalies are ``obs - clim`` and ``est - est_clim``; without ``est_clim`` the estimate's anomaly
    is ``est - clim`` (beware: that shared term inflates the CC when ``clim`` varies much over the
    period; give ``est_clim``). Without ``clim`` there is no anomaly CC.

    Returns a dict:

    - ``min_days``, ``n_locations``;
    - per location (arrays of length ``n_locations``): ``n_days`` (paired valid samples),
      ``qualified`` (``n_days >= min_days``), ``cc``, ``bias``, ``ubrmse``, ``rmse``, ``kge`` (NaN
      where not qualified or undefined), ``n_anomaly_days`` (samples with a defined climatology),
      ``anomaly_qualified``, ``anomaly_cc`` (NaN where not anomaly-qualified or undefined);
    - ``n_qualified``, ``n_anomaly`` (locations with an anomaly CC sample set), ``n_no_climatology``
      (qualified locations whose climatology leaves fewer than ``min_days`` days);
    - ``summary``: ``{metric: {"median", "p25", "p75", "n"}}`` for :data:`LOCATION_METRICS` over
      the qualified locations (``n``: locations with a finite value).
    """
    o = _as_float(obs, "obs").reshape(-1)
    e = _as_float(est, "est").reshape(-1)
    loc = np.asarray(location, dtype=np.int64).reshape(-1)
    N = int(n_locations)
    if not (o.size == e.size == loc.size):
        raise ValueError(f"obs, est and location must have the same length, got {o.size}, {e.size}, {loc.size}")
    if loc.size and loc.max() >= N:
        raise ValueError(f"location index {int(loc.max())} for {N} locations")
    min_days = max(int(min_days), MIN_PAIRS)
    valid = np.isfinite(o) & np.isfinite(e) & (loc >= 0)
    stats = _finalize(_moments(o[valid], e[valid], loc[valid], N))
    n_days = stats["n"]
    qualified = n_days >= min_days
    out = {"min_days": min_days, "n_locations": N, "n_days": n_days, "qualified": qualified}
    for k in METRIC_NAMES:
        out[k] = np.where(qualified, stats[k], np.nan)
    if clim is not None:
        c = _as_float(clim, "clim").reshape(-1)
        if c.size != o.size:
            raise ValueError(f"clim has {c.size} values for {o.size} samples")
        ce = c if est_clim is None else _as_float(est_clim, "est_clim").reshape(-1)
        if ce.size != o.size:
            raise ValueError(f"est_clim has {ce.size} values for {o.size} samples")
        a = valid & np.isfinite(c) & np.isfinite(ce)
        am = _moments(o[a] - c[a], e[a] - ce[a], loc[a], N)
        astats = _finalize(am)
        # an estimate (or obs) equal to the climatology up to rounding (e.g. float32 copies) has no
        # anomaly: judge its flatness relative to the series' own magnitude, not to the ~0 anomalies
        raw = _moments(o[a], e[a], loc[a], N)
        with np.errstate(all="ignore"):
            nf = np.maximum(am["n"], 1).astype(np.float64)
            flat = ((np.sqrt(np.maximum(am["m2e"], 0) / nf)
                     <= _ZERO_VAR_REL_ANOMALY * (np.abs(raw["me"]) + np.sqrt(np.maximum(raw["m2e"], 0) / nf)))
                    | (np.sqrt(np.maximum(am["m2o"], 0) / nf)
                       <= _ZERO_VAR_REL_ANOMALY * (np.abs(raw["mo"]) + np.sqrt(np.maximum(raw["m2o"], 0) / nf))))
        astats["cc"] = np.where(flat, np.nan, astats["cc"])
        n_anom = astats["n"]
        aq = n_anom >= min_days
        anomaly_cc = np.where(aq, astats["cc"], np.nan)
    else:
        n_anom = np.zeros(N, np.int64)
        aq = np.zeros(N, bool)
        anomaly_cc = np.full(N, np.nan)
    out.update(n_anomaly_days=n_anom, anomaly_qualified=aq, anomaly_cc=anomaly_cc,
               n_qualified=int(qualified.sum()), n_anomaly=int(aq.sum()),
               n_no_climatology=int((qualified & ~aq).sum()) if clim is not None else int(qualified.sum()),
               has_climatology=clim is not None)
    out["summary"] = {k: _quartiles(out[k][out["anomaly_qualified" if k == "anomaly_cc" else "qualified"]])
                      for k in LOCATION_METRICS}
    return out


def per_location_skill(obs, est, dates=None, train_mask=None, min_days=MIN_LOCATION_DAYS, *, climatology=None,
                       est_climatology=None, eval_mask=None, window=CLIMATOLOGY_WINDOW):
    """Per-location (column) skill of ``est`` against ``obs``, both (T, N) (time x location).

    Anomaly CC: with ``dates`` (T,) and ``train_mask`` (T,) (and no ``climatology``), the
    climatologies of ``obs`` and of ``est`` are computed over the ``train_mask`` dates, so both
    series must span the training period. Or give them on the same (T, N) dates and locations:
    ``climatology`` (the observation's, e.g. from :func:`doy_climatology`) and ``est_climatology``
    (the estimate's own; see :func:`location_skill_samples` for what happens without it). Neither:
    no anomaly CC. ``eval_mask`` (T,): the dates scored (default all; pass e.g. ``~train_mask``
    when the series span the training period too). ``min_days``: locations with fewer paired valid
    days are excluded from the summary (and counted). Returns the dict of
    :func:`location_skill_samples`.
    """
    o, e, valid = _paired(obs, est)
    if o.ndim == 1:
        o, e, valid = o[:, None], e[:, None], valid[:, None]
    if o.ndim != 2:
        raise ValueError(f"obs and est must be (T, N), got shape {o.shape}")
    T, N = o.shape
    if climatology is None and train_mask is not None:
        if dates is None:
            raise ValueError("per_location_skill: train_mask needs the dates")
        climatology = doy_climatology(o, dates, train_mask, window)
        if est_climatology is None:
            est_climatology = doy_climatology(e, dates, train_mask, window)
    if eval_mask is not None:
        em = np.asarray(eval_mask, bool).reshape(-1)
        if em.shape != (T,):
            raise ValueError(f"eval_mask has {em.size} values for {T} dates")
        valid = valid & em[:, None]
    tt, nn = np.nonzero(valid)

    def at_samples(c, name):
        c = _as_float(c, name)
        if c.ndim == 1:
            c = c[:, None]
        if c.shape != (T, N):
            raise ValueError(f"{name} has shape {c.shape}, obs has {(T, N)}")
        return c[tt, nn]

    clim = None if climatology is None else at_samples(climatology, "climatology")
    est_clim = None if (clim is None or est_climatology is None) else at_samples(est_climatology,
                                                                                  "est_climatology")
    return location_skill_samples(o[tt, nn], e[tt, nn], nn, N, min_days, clim, est_clim)


def _json_num(v):
    v = float(v)
    return v if np.isfinite(v) else None


def location_skill_summary(skill):
    """A JSON-safe summary of a :func:`location_skill_samples` result (no per-location arrays):
    ``min_days``, ``n_locations``, ``n_qualified``, ``n_anomaly``, ``n_no_climatology`` and
    ``{metric: {median, p25, p75, n}}`` (NaN as None)."""
    out = {k: int(skill[k]) for k in ("min_days", "n_locations", "n_qualified", "n_anomaly", "n_no_climatology")}
    for k, q in skill["summary"].items():
        out[k] = {s: (int(v) if s == "n" else _json_num(v)) for s, v in q.items()}
    return out


def describe_location_skill(skill):
    """One line: median [IQR] per-location CC, anomaly CC, bias and ubRMSE, and the counts."""
    s = skill["summary"]

    def q(k, fmt):
        if not s[k]["n"]:
            return "undefined"
        return f"{s[k]['median']:{fmt}} (IQR {s[k]['p25']:{fmt}}..{s[k]['p75']:{fmt}})"

    text = (f"median per-location CC {q('cc', '.3f')} over {skill['n_qualified']} of {skill['n_locations']} "
            f"locations with >= {skill['min_days']} days")
    if skill.get("has_climatology", True):
        text += f"; anomaly CC {q('anomaly_cc', '.3f')} over {skill['n_anomaly']}"
        if skill["n_no_climatology"]:
            text += f" ({skill['n_no_climatology']} without a training climatology)"
    text += f"; bias {q('bias', '+.4f')}; ubRMSE {q('ubrmse', '.4f')}"
    return text
