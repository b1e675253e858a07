"""Evaluation report: metrics CSV/JSON and a self-contained HTML page with plots.

Pure numpy + matplotlib (object-oriented API: ``matplotlib.figure.Figure`` drawn on an Agg
canvas, never ``pyplot``), so it runs in a Processing worker thread, a script or a notebook.
No qgis/PyQt import.

The ``results`` structure (a plain dict)
----------------------------------------
=====================  ========================================================================
key                    value
=====================  ========================================================================
``dates``              (T,) dates: datetime64 (any unit), ``datetime.date`` or ISO strings
``obs``                (T, N) float, observed SM, NaN = missing ((T,) is read as N = 1)
``estimates``          ``{name: (T, N) float}``, one entry per model *and* per reference
                       product (e.g. ``"ismoe"``, ``"cnn_lstm"``, ``"ERA5-Land swvl1"``); NaN =
                       missing; insertion order is the order of tables and legends
``location_ids``       optional (N,) str: station ids or ``"pixel r,c"``; default
                       ``"location 1"``..; equal ids are pooled into one location group
``regions``            optional (N,) labels (e.g. region polygon names); ``None``/``''`` = in
                       no region. Adds the ``region`` group kind
``references``         optional list of names in ``estimates`` that are reference products
                       (they are labelled so in the report; scoring is identical)
``same_samples``       optional bool, default True: score every estimate on exactly the same
                       samples (obs finite and *every* estimate finite), so models and
                       reference products are comparable. False: each estimate on its own
                       paired valid samples
``seasonal_importance`` optional: path to the seasonal-importance CSV (columns ``region,
                       period_kind, period, factor, mean_weight, n``), a list of such row
                       dicts, or an ``importance.ImportanceTable``; rendered as monthly lines per factor (and a season table).
                       Optional and tolerant: an unreadable source only adds a note
``title``              optional str, page title
``units``              optional str, SM units for axis labels (default ``m³/m³``)
``notes``              optional list of str shown under the title (model files, split, ...)
``climatology``        optional (T, N) float: the observed day-of-year climatology of the
                       training period on these dates (``metrics.doy_climatology``), removed from
                       the observation for the anomaly CC. Absent: the anomaly CC is undefined
``estimate_climatology`` optional ``{name: (T, N) float}``: each estimate's own training
                       climatology on these dates, removed from it for the anomaly CC. An
                       estimate without one has no anomaly CC (removing the observed climatology
                       from it too would inflate the CC by the shared term)
``climatology_note``   optional str: where the climatology comes from (shown in the report)
``min_location_days``  optional int (default ``metrics.MIN_LOCATION_DAYS`` = 30): the fewest
                       scored days that put a location into the per-location summary
``location_xy``        optional (N, 2) map coordinates of the locations (pixel centres); with
                       it the report draws a map of the per-location CC
``location_kind``      optional ``"stations"`` or ``"grid"``; ``location_crs`` optional label
``location_grid``      optional ``{"rows", "cols", "transform"}`` (GDAL geotransform) of a grid
                       target: its CC map is drawn as a raster
=====================  ========================================================================

Outputs
-------
``metrics.csv`` / ``metrics.json`` rows: ``model, group_kind, group, cc, rmse, ubrmse, bias,
kge, anomaly_cc, n`` with ``group_kind`` in ``overall`` (group ``all``), ``per_location``
(groups ``median``, ``p25``, ``p75``: that statistic of each metric over the locations with at
least ``min_location_days`` scored days; ``n`` = the number of such locations), ``location``,
``region``, ``season`` (DJF/MAM/JJA/SON), model-major in that kind order. ``anomaly_cc`` of
a group is the CC of the anomalies (climatology removed) pooled over the group's samples. NaN
is written as an empty CSV field and as JSON ``null``. ``metrics.json`` is an object with
``rows`` plus metadata (models, references, period, location ids, same_samples, metric
definitions, ``location_skill``: the per-location summary of every model and product).
``location_skill.csv``: one row per model/product and location (``LOCATION_CSV_COLUMNS``).
``report.html``: led by the per-location skill table and map, then the pooled tables, plots
(embedded base64 PNG) and a short explanation of the metrics.
"""
import base64
import csv
import html
import io
import json
import os

import numpy as np

from ..fileutil import atomic_output
from .importance import MONTH_ABBR
from .metrics import (HEADLINE_METRICS, METRIC_NAMES, MIN_LOCATION_DAYS, SEASONS,
                      describe_location_skill, grouped_metrics, location_skill_summary, per_location_skill,
                      season_of)

__all__ = [
    "CSV_COLUMNS",
    "GROUP_KINDS",
    "evaluation_rows",
    "location_skill_of",
    "write_location_csv",
    "write_evaluation",
    "write_metrics_csv",
    "write_metrics_json",
    "read_importance",
]

CSV_COLUMNS = ("model", "group_kind", "group") + METRIC_NAMES + ("anomaly_cc", "n")
GROUP_KINDS = ("overall", "per_location", "location", "region", "season")
LOCATION_CSV_COLUMNS = ("model", "location", "x", "y", "n_days", "qualified", "cc", "anomaly_cc",
                        "n_anomaly_days", "bias", "ubrmse", "rmse", "kge")
# metrics in the HTML tables, in column order
_SHOWN = ("cc", "anomaly_cc", "rmse", "ubrmse", "bias", "kge")
_FLOAT_COLUMNS = METRIC_NAMES + ("anomaly_cc",)

METRIC_LABELS = {"cc": "CC", "rmse": "RMSE", "ubrmse": "ubRMSE", "bias": "bias", "kge": "KGE", "n": "n",
                 "anomaly_cc": "anomaly CC"}
METRIC_TEXT = {
    "cc": "Pearson correlation coefficient r between estimate and observation (1 is best): "
          "does the estimate follow the observed ups and downs? Pooled over many locations it "
          "mostly rewards each location's mean level; per location (over time) it is the skill.",
    "anomaly_cc": "CC of the anomalies: each series (observation, estimate) minus its own day-of-year "
                  "climatology of the training period at that location (15-day window), 1 is best: "
                  "does the estimate follow the departures from the normal seasonal cycle? A pure "
                  "climatology has no anomaly CC (its anomalies are 0).",
    "rmse": "root-mean-square error sqrt(mean((est − obs)²)), in SM units (0 is best).",
    "ubrmse": "unbiased RMSE sqrt(RMSE² − bias²): the error left once the mean offset is removed "
              "(Entekhabi et al. 2010); the usual accuracy target of satellite SM products.",
    "bias": "mean(est) − mean(obs), in SM units (0 is best; positive = too wet).",
    "kge": "Kling–Gupta efficiency, 2009 version (Gupta et al. 2009): 1 − sqrt((r−1)² + (α−1)² + "
           "(β−1)²) with α = sd(est)/sd(obs) and β = mean(est)/mean(obs) (1 is best; below "
           "1 − √2 ≈ −0.41 an estimate does worse than the observed mean, Knoben et al. 2019).",
    "n": "number of paired samples (dates × locations where obs and estimate are both valid).",
}
_ABOUT = ("cc", "anomaly_cc", "rmse", "ubrmse", "bias", "kge", "n")
_MAX_HTML_LOCATIONS = 100   # location rows shown in the HTML table (the CSV has all)
_MAX_SCATTER_POINTS = 20000  # per model, deterministic subsample
_N_SERIES = 4               # locations drawn as time series


# ---------------------------------------------------------------------------------------------
# input normalisation and metric rows
# ---------------------------------------------------------------------------------------------
class _Eval:
    """Validated, normalised view of a ``results`` dict (arrays are not copied if avoidable)."""

    def __init__(self, results):
        if not isinstance(results, dict):
            raise ValueError("results must be a dict (see ismoe_qgis.model.report)")
        for key in ("dates", "obs", "estimates"):
            if key not in results:
                raise ValueError(f"results is missing {key!r}")
        try:
            self.dates = np.asarray(results["dates"]).astype("datetime64[D]").ravel()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"results['dates'] are not dates: {exc}") from None
        obs = np.asarray(results["obs"], dtype=np.float64)
        if obs.ndim == 1:
            obs = obs[:, None]
        if obs.ndim != 2:
            raise ValueError(f"results['obs'] must be (T, N), got shape {obs.shape}")
        T, N = obs.shape
        if len(self.dates) != T:
            raise ValueError(f"{len(self.dates)} dates but obs has {T} time steps")
        self.obs = obs
        est = results["estimates"]
        if not isinstance(est, dict) or not est:
            raise ValueError("results['estimates'] must be a non-empty dict {name: (T, N) array}")
        self.estimates = {}
        for name, a in est.items():
            a = np.asarray(a, dtype=np.float64)
            if a.ndim == 1:
                a = a[:, None]
            if a.shape != obs.shape:
                raise ValueError(f"estimate {name!r} has shape {a.shape}, obs has {obs.shape}")
            self.estimates[str(name)] = a
        ids = results.get("location_ids")
        if ids is None:
            ids = [f"location {i + 1}" for i in range(N)]
        ids = [str(i) for i in np.asarray(ids, dtype=object).ravel()]
        if len(ids) != N:
            raise ValueError(f"{len(ids)} location_ids for {N} locations")
        self.location_ids = ids
        regions = results.get("regions")
        if regions is not None:
            regions = np.asarray(regions, dtype=object).ravel()
            if len(regions) != N:
                raise ValueError(f"{len(regions)} region labels for {N} locations")
            if all(r is None or (isinstance(r, str) and r == "") for r in regions):
                regions = None
        self.regions = regions
        refs = results.get("references") or []
        refs = [str(r) for r in refs]
        unknown = [r for r in refs if r not in self.estimates]
        if unknown:
            raise ValueError(f"references {unknown} are not in results['estimates']")
        self.references = refs
        self.same_samples = bool(results.get("same_samples", True))
        self.title = str(results.get("title") or "Soil moisture evaluation")
        self.units = str(results.get("units") or "m³/m³")
        self.notes = [str(n) for n in (results.get("notes") or [])]
        self.importance = results.get("seasonal_importance")
        self.ensemble = results.get("ensemble") or {}
        clim = results.get("climatology")
        if clim is not None:
            clim = np.asarray(clim, dtype=np.float64)
            if clim.ndim == 1:
                clim = clim[:, None]
            if clim.shape != obs.shape:
                raise ValueError(f"results['climatology'] has shape {clim.shape}, obs has {obs.shape}")
            if not np.isfinite(clim).any():
                clim = None
        self.climatology = clim
        self.est_climatology = {}
        for name, c in (results.get("estimate_climatology") or {}).items():
            if str(name) not in self.estimates or c is None:
                continue
            c = np.asarray(c, dtype=np.float64)
            if c.ndim == 1:
                c = c[:, None]
            if c.shape != obs.shape:
                raise ValueError(f"results['estimate_climatology'][{name!r}] has shape {c.shape}, obs has "
                                 f"{obs.shape}")
            self.est_climatology[str(name)] = c
        self.climatology_note = str(results.get("climatology_note") or "")
        md = results.get("min_location_days")
        self.min_days = MIN_LOCATION_DAYS if md is None else int(md)
        if self.min_days < 1:
            raise ValueError(f"min_location_days must be >= 1, got {self.min_days}")
        xy = results.get("location_xy")
        if xy is not None:
            xy = np.asarray(xy, dtype=np.float64)
            if xy.shape != (N, 2):
                raise ValueError(f"results['location_xy'] must be (N, 2) = ({N}, 2), got {xy.shape}")
        self.location_xy = xy
        self.location_kind = str(results.get("location_kind") or "")
        self.location_crs = str(results.get("location_crs") or "")
        self.location_grid = results.get("location_grid")
        self._skill = None

        obs_ok = np.isfinite(obs)
        if not obs_ok.any():
            raise ValueError("the observations have no valid value")
        self.mask = obs_ok.copy()
        # estimates scored where they are defined inside the common samples, without restricting them
        self.partial = {str(n) for n in (results.get("partial_estimates") or [])}
        for name, a in self.estimates.items():
            ok = np.isfinite(a)
            if not (ok & obs_ok).any():
                raise ValueError(
                    f"estimate {name!r} has no valid value on any date/location with a valid "
                    "observation (no overlapping dates or locations?)")
            if name not in self.partial:
                self.mask &= ok
        self._obs_common = None
        if self.same_samples and not self.mask.any():
            raise ValueError(
                "no date/location has a valid observation and a valid value of every estimate; "
                "the estimates do not overlap each other (set same_samples=False to score each "
                "on its own samples)")

    def scored(self, name):
        """(obs, est) as scored: NaN outside the common sample mask when same_samples."""
        est = self.estimates[name]
        if self.same_samples:
            if self._obs_common is None:
                self._obs_common = np.where(self.mask, self.obs, np.nan)
            return self._obs_common, est
        return self.obs, est

    def location_skill(self):
        """{name: per-location skill dict} (``metrics.per_location_skill`` on the scored samples)."""
        if self._skill is None:
            self._skill = {}
            for name in self.estimates:
                obs, est = self.scored(name)
                clim, est_clim = self.anomaly_climatologies(name)
                if clim is None:   # no anomaly CC for this estimate
                    self._skill[name] = per_location_skill(obs, est, min_days=self.min_days)
                    self._skill[name]["has_climatology"] = self.climatology is not None
                else:
                    self._skill[name] = per_location_skill(obs, est, min_days=self.min_days, climatology=clim,
                                                           est_climatology=est_clim)
        return self._skill

    def anomaly_climatologies(self, name):
        """(observed climatology, the estimate's own) for the anomaly CC, or (None, None)."""
        if self.climatology is None or name not in self.est_climatology:
            return None, None
        return self.climatology, self.est_climatology[name]

    def groups(self):
        g = {"location": np.asarray(self.location_ids, dtype=object)}
        if self.regions is not None:
            g["region"] = self.regions
        g["season"] = season_of(self.dates)[:, None]
        return g


def _rows(ev):
    rows = []
    groups = ev.groups()
    skills = ev.location_skill()
    for name in ev.estimates:
        obs, est = ev.scored(name)
        grows = grouped_metrics(obs, est, groups, overall=True)
        clim, est_clim = ev.anomaly_climatologies(name)
        if clim is not None:
            arows = grouped_metrics(obs - clim, est - est_clim, groups, overall=True)
            for r, a in zip(grows, arows):
                r["anomaly_cc"] = a["cc"]
        else:
            for r in grows:
                r["anomaly_cc"] = float("nan")
        rows.append({"model": name, **grows[0]})
        sk = skills[name]
        for stat in ("median", "p25", "p75"):
            r = {"model": name, "group_kind": "per_location", "group": stat}
            for k in _FLOAT_COLUMNS:
                r[k] = sk["summary"][k][stat]
            r["n"] = int(sk["n_qualified"])
            rows.append(r)
        rows.extend({"model": name, **r} for r in grows[1:])
    return rows


def evaluation_rows(results):
    """Metric rows (dicts with ``CSV_COLUMNS`` keys) for a ``results`` dict, without writing."""
    return _rows(_Eval(results))


def location_skill_of(results):
    """{name: per-location skill} of every estimate of a ``results`` dict (same samples as the
    rows): the dicts of ``metrics.location_skill_samples``, with ``location_ids`` added."""
    ev = _Eval(results)
    out = {}
    for name, sk in ev.location_skill().items():
        out[name] = {**sk, "location_ids": list(ev.location_ids)}
    return out


# ---------------------------------------------------------------------------------------------
# CSV / JSON
# ---------------------------------------------------------------------------------------------
def _num(v):
    """float/int -> JSON-safe value (NaN/inf -> None)."""
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if np.isfinite(v) else None


def write_metrics_csv(path, rows):
    """Write metric rows as CSV (``CSV_COLUMNS``; NaN as an empty field)."""
    with atomic_output(path, ".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            out = []
            for c in CSV_COLUMNS:
                v = r.get(c)
                if c in _FLOAT_COLUMNS:
                    v = _num(float("nan") if v is None else v)
                    out.append("" if v is None else repr(v))
                else:
                    out.append("" if v is None else str(v))
            w.writerow(out)
    return str(path)


def write_metrics_json(path, rows, meta=None):
    """Write ``{"rows": [...], **meta}`` as JSON (NaN as null)."""
    doc = dict(meta or {})
    doc["columns"] = list(CSV_COLUMNS)
    doc["rows"] = [
        {c: (_num(r.get(c, float("nan"))) if c in _FLOAT_COLUMNS or c == "n" else r.get(c)) for c in CSV_COLUMNS}
        for r in rows
    ]
    with atomic_output(path, ".json") as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, allow_nan=False, ensure_ascii=False)
    return str(path)


def write_location_csv(path, skills, location_ids, location_xy=None):
    """Write per-location skill (``LOCATION_CSV_COLUMNS``): one row per estimate and location.

    ``skills``: {name: ``metrics.location_skill_samples`` dict}; ``location_xy``: optional (N, 2)
    map coordinates. Metrics are empty where a location has fewer than ``min_days`` days
    (``qualified`` = 0) or the metric is undefined.
    """
    def num(v):
        v = _num(v)
        return "" if v is None else repr(v)

    with atomic_output(path, ".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(LOCATION_CSV_COLUMNS)
        for name, sk in skills.items():
            for j, loc in enumerate(location_ids):
                x, y = (location_xy[j] if location_xy is not None else (np.nan, np.nan))
                w.writerow([name, loc, num(x), num(y), int(sk["n_days"][j]), int(bool(sk["qualified"][j])),
                            num(sk["cc"][j]), num(sk["anomaly_cc"][j]), int(sk["n_anomaly_days"][j]),
                            num(sk["bias"][j]), num(sk["ubrmse"][j]), num(sk["rmse"][j]), num(sk["kge"][j])])
    return str(path)


def _meta(ev):
    skills = ev.location_skill()
    return {
        "version": 1,
        "title": ev.title,
        "models": [n for n in ev.estimates if n not in ev.references],
        "references": list(ev.references),
        "same_samples": ev.same_samples,
        "period": [str(ev.dates.min()), str(ev.dates.max())] if len(ev.dates) else [None, None],
        "n_dates": int(len(ev.dates)),
        "n_locations": int(len(ev.location_ids)),
        "location_ids": list(ev.location_ids),
        "units": ev.units,
        "metric_definitions": {METRIC_LABELS[k]: METRIC_TEXT[k] for k in _ABOUT},
        "location_skill": {
            "min_days": ev.min_days,
            "climatology": ev.climatology_note or (None if ev.climatology is None else "given"),
            "definition": "per location over time, on the scored samples; summary = median and 25th/75th "
                          "percentile over the locations with at least min_days scored days (anomaly CC: "
                          "with at least min_days days where the climatology is defined)",
            "estimates": {name: location_skill_summary(sk) for name, sk in skills.items()},
        },
        "ensemble": {name: {k: v for k, v in es.items() if k != "describe"} for name, es in ev.ensemble.items()},
    }


# ---------------------------------------------------------------------------------------------
# seasonal importance (optional, tolerant)
# ---------------------------------------------------------------------------------------------
def _month_number(period):
    s = str(period).strip()
    try:
        m = int(float(s))
        return m if 1 <= m <= 12 else None
    except ValueError:
        pass
    key = s[:3].lower()
    for i, name in enumerate(MONTH_ABBR):
        if name.lower() == key:
            return i + 1
    return None


def read_importance(source):
    """Read seasonal-importance rows tolerantly.

    ``source``: a CSV path (columns ``region, period_kind, period, factor, mean_weight, n``),
    a list of row dicts with those keys or of 6-tuples in that order, or any object with a
    ``rows()`` method returning such tuples (``importance.ImportanceTable``).

    Returns a list of ``{"region": str, "period_kind": str, "period": str, "factor": str,
    "mean_weight": float, "n": int|None, "measure": "weight"|"variance_share"}``; rows without a factor or a numeric mean_weight
    are dropped. A missing region becomes ``"all"``. Raises ``ValueError``/``OSError`` only
    when the source itself cannot be read.
    """
    measure = "weight"
    if isinstance(source, (str, os.PathLike)):
        from .importance import read_importance_csv        # the one reader of the CSV file
        table = read_importance_csv(os.fspath(source), strict=False)
        raw, measure = list(table.rows()), table.measure
    elif callable(getattr(source, "rows", None)):
        raw, measure = list(source.rows()), getattr(source, "measure", "weight")
    else:
        raw = list(source)
    cols = ("region", "period_kind", "period", "factor", "mean_weight", "n")
    out = []
    for r in raw:
        if isinstance(r, (tuple, list)) and len(r) == len(cols):
            r = dict(zip(cols, r))
        if not isinstance(r, dict):
            continue
        r = {str(k).strip().lower(): v for k, v in r.items() if k is not None}
        factor = r.get("factor")
        try:
            w = float(r.get("mean_weight"))
        except (TypeError, ValueError):
            continue
        if factor in (None, "") or not np.isfinite(w):
            continue
        try:
            n = int(float(r.get("n")))
        except (TypeError, ValueError):
            n = None
        region = r.get("region")
        out.append({
            "region": "all" if region in (None, "") else str(region),
            "period_kind": str(r.get("period_kind") or "").strip().lower(),
            "period": str(r.get("period") if r.get("period") is not None else "").strip(),
            "factor": str(factor),
            "mean_weight": w,
            "n": n,
            "measure": str(r.get("measure") or measure),
        })
    return out


# ---------------------------------------------------------------------------------------------
# figures (matplotlib OO API on an Agg canvas; no pyplot)
# ---------------------------------------------------------------------------------------------
def _figure(w, h):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_uri(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colors(names):
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _pick_locations(ev, k=_N_SERIES):
    counts = ev.mask.sum(axis=0) if ev.mask.any() else np.isfinite(ev.obs).sum(axis=0)
    order = np.argsort(-counts, kind="stable")
    return [int(i) for i in order[:k] if counts[i] > 0]


def _fig_timeseries(ev, colors):
    import matplotlib.dates as mdates

    locs = _pick_locations(ev)
    fig = _figure(10, 2.3 * len(locs) + 0.6)
    axes = fig.subplots(len(locs), 1, sharex=True, squeeze=False)[:, 0]
    for ax, j in zip(axes, locs):
        for name, a in ev.estimates.items():
            y = a[:, j]
            gappy = np.isfinite(y).mean() < 0.7
            ls = "--" if name in ev.references else "-"
            ax.plot(ev.dates, y, ls, color=colors[name], lw=1.1, label=name,
                    marker="." if gappy else None, ms=3)
        ax.plot(ev.dates, ev.obs[:, j], ".", color="black", ms=3.5, label="observed", zorder=5)
        ax.set_title(ev.location_ids[j], fontsize=10, loc="left")
        ax.set_ylabel(f"SM ({ev.units})")
        ax.grid(alpha=0.3)
    loc = mdates.AutoDateLocator()
    axes[-1].xaxis.set_major_locator(loc)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return fig


def _fig_scatter(ev, colors, overall):
    names = list(ev.estimates)
    ncol = min(3, len(names))
    nrow = int(np.ceil(len(names) / ncol))
    fig = _figure(3.6 * ncol + 0.4, 3.5 * nrow + 0.3)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    rng = np.random.default_rng(0)
    pairs = {}
    lo, hi = np.inf, -np.inf
    for name in names:
        o, e = ev.scored(name)
        ok = np.isfinite(o) & np.isfinite(e)
        o, e = o[ok], e[ok]
        if o.size > _MAX_SCATTER_POINTS:
            idx = np.sort(rng.choice(o.size, _MAX_SCATTER_POINTS, replace=False))
            o, e = o[idx], e[idx]
        pairs[name] = (o, e)
        if o.size:
            lo = min(lo, o.min(), e.min())
            hi = max(hi, o.max(), e.max())
    if not np.isfinite(lo):
        lo, hi = 0.0, 1.0
    pad = 0.03 * (hi - lo if hi > lo else 1.0)
    lim = (lo - pad, hi + pad)
    for ax, name in zip(axes, names):
        o, e = pairs[name]
        alpha = 0.5 if o.size < 2000 else 0.15
        ax.scatter(o, e, s=5, alpha=alpha, color=colors[name], edgecolors="none", rasterized=True)
        ax.plot(lim, lim, color="black", lw=1, label="1:1")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        kind = " (reference)" if name in ev.references else ""
        ax.set_title(f"{name}{kind}", fontsize=10)
        ax.set_xlabel(f"observed ({ev.units})")
        ax.set_ylabel(f"estimated ({ev.units})")
        m = overall.get(name, {})
        ax.text(0.03, 0.97,
                f"CC {_fmt('cc', m.get('cc'))}\nRMSE {_fmt('rmse', m.get('rmse'))}\n"
                f"KGE {_fmt('kge', m.get('kge'))}\nn {m.get('n', 0)}",
                transform=ax.transAxes, va="top", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return fig


def _fig_group_metrics(ev, colors, rows, kind, groups):
    """Grouped bars: CC, ubRMSE and KGE per group (season/region) and model."""
    names = list(ev.estimates)
    fig = _figure(11, 3.4)
    axes = fig.subplots(1, 3)
    x = np.arange(len(groups))
    width = 0.8 / max(len(names), 1)
    table = {(r["model"], r["group"]): r for r in rows if r["group_kind"] == kind}
    for ax, metric in zip(axes, ("cc", "ubrmse", "kge")):
        for i, name in enumerate(names):
            vals = [table.get((name, g), {}).get(metric, np.nan) for g in groups]
            ax.bar(x - 0.4 + width * (i + 0.5), vals, width, color=colors[name], label=name,
                   hatch="//" if name in ev.references else None, edgecolor="white", lw=0.3)
        ax.set_xticks(x)
        ax.set_xticklabels(groups, fontsize=8, rotation=0 if len(groups) <= 6 else 45)
        ax.set_title(METRIC_LABELS[metric] + (f" ({ev.units})" if metric == "ubrmse" else ""),
                     fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.axhline(0, color="black", lw=0.6)
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return fig


_MAX_MAP_PANELS = 9
_MAX_MAP_PIXELS = 4_000_000


def _grid_image(ev, values):
    """(image (h, w), extent) of per-location values on a north-up grid target, else None."""
    g = ev.location_grid
    if not isinstance(g, dict):
        return None
    try:
        rows = np.asarray(g["rows"], dtype=np.int64)
        cols = np.asarray(g["cols"], dtype=np.int64)
        t = [float(v) for v in g["transform"]]
    except (KeyError, TypeError, ValueError):
        return None
    if len(t) != 6 or t[2] != 0 or t[4] != 0 or len(rows) != len(values):
        return None
    r0, c0 = rows.min(), cols.min()
    h, w = int(rows.max() - r0 + 1), int(cols.max() - c0 + 1)
    if h * w > _MAX_MAP_PIXELS:
        return None
    img = np.full((h, w), np.nan)
    img[rows - r0, cols - c0] = values
    x_left, x_right = t[0] + c0 * t[1], t[0] + (c0 + w) * t[1]
    y_top, y_bottom = t[3] + r0 * t[5], t[3] + (r0 + h) * t[5]
    return img, (x_left, x_right, y_bottom, y_top)


def _fig_location_map(ev, skills):
    """The per-location CC of every estimate on a map: stations as coloured dots (grey rings: too
    few days), grid targets as a CC raster."""
    if ev.location_xy is None:
        return None
    from matplotlib import colormaps
    names = list(skills)[:_MAX_MAP_PANELS]
    xy = ev.location_xy
    ok_xy = np.isfinite(xy).all(axis=1)
    if not ok_xy.any():
        return None
    ncol = min(3, len(names))
    nrow = int(np.ceil(len(names) / ncol))
    fig = _figure(3.8 * ncol + 1.2, 3.4 * nrow + 0.4)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    cmap = colormaps["RdYlBu"]
    many = len(xy) > 200
    mappable = None
    for ax, name in zip(axes, names):
        cc = np.asarray(skills[name]["cc"], dtype=np.float64)
        grid = _grid_image(ev, cc) if ev.location_kind == "grid" else None
        if grid is not None:
            img, extent = grid
            mappable = ax.imshow(img, extent=extent, origin="upper", cmap=cmap, vmin=-1, vmax=1,
                                 interpolation="nearest")
        else:
            has = ok_xy & np.isfinite(cc)
            mappable = ax.scatter(xy[has, 0], xy[has, 1], c=cc[has], cmap=cmap, vmin=-1, vmax=1,
                                  s=10 if many else 60, edgecolors="none" if many else "black",
                                  linewidths=0.4, zorder=3)
            none = ok_xy & ~np.isfinite(cc)
            if none.any():
                ax.scatter(xy[none, 0], xy[none, 1], facecolors="none", edgecolors="grey",
                           s=10 if many else 60, linewidths=0.8, zorder=2)
            if not many:
                for j in np.nonzero(ok_xy)[0]:
                    ax.annotate(ev.location_ids[j], (xy[j, 0], xy[j, 1]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points", color="#333")
        kind = " (reference)" if name in ev.references else ""
        med = skills[name]["summary"]["cc"]["median"]
        ax.set_title(f"{name}{kind}: median CC {_fmt('cc', med)}", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if mappable is not None:
        cb = fig.colorbar(mappable, ax=list(axes[:len(names)]), shrink=0.8)
        cb.set_label("per-location CC (over time)", fontsize=8)
    if ev.location_crs:
        fig.suptitle(f"coordinates: {ev.location_crs}", fontsize=8)
    return fig


def _fig_importance(imp):
    """Monthly mean routing weight per factor, one panel per region: the chart of ismoe:seasonalimportance
    (importance_chart.importance_figure), so a factor looks the same everywhere."""
    from .importance import table_from_rows
    from .importance_chart import importance_figure

    monthly = []
    for r in imp:
        m = _month_number(r["period"]) if r["period_kind"].startswith("month") else None
        if m is not None:
            monthly.append({**r, "period_kind": "month", "period": m})
    if not monthly:
        return None
    table = table_from_rows(monthly)
    title = ("Monthly variance share per factor" if table.measure == "variance_share"
             else "Monthly mean weight per factor")
    return importance_figure(table, "month", title=title, dpi=100)


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;
max-width:1150px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}
tr.ref td{color:#555;font-style:italic}td.best{font-weight:bold;background:#e8f4e8}
img{max-width:100%;height:auto}.note{color:#666;font-size:.9em}
dl dt{font-weight:bold;margin-top:.4em}
"""


def _fmt(metric, v):
    if v is None:
        return "–"
    if metric == "n":
        return str(int(v))
    v = float(v)
    if not np.isfinite(v):
        return "–"
    return f"{v:.3f}" if metric in ("cc", "kge", "anomaly_cc") else f"{v:.4f}"


def _best(rows, metrics=_SHOWN):
    """{metric: best value} over a set of rows of one group."""
    best = {}
    for m in metrics:
        vals = np.array([r.get(m, np.nan) for r in rows], dtype=float)
        vals = vals[np.isfinite(vals)]
        if len(rows) < 2 or not vals.size:
            continue
        if m in ("cc", "kge", "anomaly_cc"):
            best[m] = vals.max()
        elif m == "bias":
            best[m] = np.abs(vals).min()
        else:
            best[m] = vals.min()
    return best


def _table(ev, rows, kind, group_label, limit=None):
    groups = []
    for r in rows:
        if r["group_kind"] == kind and r["group"] not in groups:
            groups.append(r["group"])
    shown = groups if limit is None else groups[:limit]
    e = html.escape
    head = "".join(f"<th>{METRIC_LABELS[m]}</th>" for m in _SHOWN + ("n",))
    gl = f'<th class="l">{e(group_label)}</th>' if group_label else ""
    out = [f'<table><tr>{gl}<th class="l">model / product</th>{head}</tr>']
    for g in shown:
        grows = [r for r in rows if r["group_kind"] == kind and r["group"] == g]
        best = _best(grows)
        for i, r in enumerate(grows):
            ref = r["model"] in ev.references
            cls = ' class="ref"' if ref else ""
            cells = []
            if group_label:
                cells.append(f'<td class="l">{e(g)}</td>' if i == 0 else '<td class="l"></td>')
            label = e(r["model"]) + (" (reference)" if ref else "")
            cells.append(f'<td class="l">{label}</td>')
            for m in _SHOWN:
                v = r.get(m, np.nan)
                b = m in best and np.isfinite(v) and np.isclose(
                    abs(v) if m == "bias" else v, best[m], rtol=0, atol=1e-12)
                cells.append(f'<td{" class=best" if b else ""}>{_fmt(m, v)}</td>')
            cells.append(f"<td>{_fmt('n', r['n'])}</td>")
            out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out.append("</table>")
    if limit is not None and len(groups) > limit:
        out.append(f'<p class="note">First {limit} of {len(groups)} shown; metrics.csv has all.</p>')
    return "\n".join(out)


def _location_html(ev, images):
    """The headline: per-location skill (median and IQR over locations) of every estimate, and
    the CC map."""
    e = html.escape
    skills = ev.location_skill()
    N = len(ev.location_ids)
    first = next(iter(skills.values()))
    parts = ['<h2 id="per-location">Per-location skill (headline)</h2>',
             f"<p>Each location's series is scored over time; the table gives the median and the "
             f"interquartile range (25th–75th percentile) over the {first['n_qualified']} of {N} locations "
             f"with at least {ev.min_days} scored days. This is the skill to judge: a CC pooled over "
             "all locations (the table further down) mostly rewards getting each location's mean level "
             "right. Anomaly CC first removes from each series (observation and estimate) its own "
             "day-of-year climatology of the training period"
             + (f" ({e(ev.climatology_note)})" if ev.climatology_note else "")
             + ": it asks whether the estimate follows the departures from the normal seasonal cycle.</p>"]
    head = "".join(f"<th>{METRIC_LABELS[m]} median</th><th>{METRIC_LABELS[m]} IQR</th>"
                   + ("<th>anomaly locations</th>" if m == "anomaly_cc" else "") for m in HEADLINE_METRICS)
    out = [f'<table class="headline"><tr><th class="l">model / product</th><th>locations</th>{head}</tr>']
    rows = [{"model": name, **{m: sk["summary"][m]["median"] for m in HEADLINE_METRICS}}
            for name, sk in skills.items()]
    best = _best(rows, HEADLINE_METRICS)
    for r in rows:
        name = r["model"]
        sk = skills[name]
        ref = name in ev.references
        cells = [f'<td class="l">{e(name) + (" (reference)" if ref else "")}</td>',
                 f"<td>{sk['n_qualified']} / {N}</td>"]
        for m in HEADLINE_METRICS:
            q = sk["summary"][m]
            v = q["median"]
            b = m in best and np.isfinite(v) and np.isclose(abs(v) if m == "bias" else v, best[m],
                                                            rtol=0, atol=1e-12)
            iqr = "–" if not q["n"] else f"{_fmt(m, q['p25'])} … {_fmt(m, q['p75'])}"
            cells.append(f'<td{" class=best" if b else ""}>{_fmt(m, v)}</td><td>{iqr}</td>')
            if m == "anomaly_cc":
                cells.append(f"<td>{sk['n_anomaly']}</td>")
        out.append(f'<tr{" class=ref" if ref else ""}>{"".join(cells)}</tr>')
    out.append("</table>")
    parts.append("\n".join(out))
    counts = []
    if ev.climatology is None:
        counts.append("Anomaly CC is undefined: no training climatology of the observations was given.")
    else:
        counts.append("Anomaly CC: each series minus its own day-of-year climatology of the training period "
                      "(the observation's and the estimate's), at the 'anomaly locations': those with at least "
                      f"{ev.min_days} scored days where both climatologies are defined.")
        for name, sk in skills.items():
            if name == "climatology" or not sk["n_no_climatology"]:
                continue
            counts.append(f"{name}: {sk['n_no_climatology']} of {sk['n_qualified']} location(s) without "
                          + ("an own training climatology" if name not in ev.est_climatology
                             else f"{ev.min_days} days of defined training climatologies") + " are left out.")
    few = N - first["n_qualified"]
    if few:
        counts.append(f"{few} location(s) have fewer than {ev.min_days} scored days and are not in the "
                      "summary (location_skill.csv lists every location with its number of days).")
    counts.append("Bold: best median. Bias: median of the per-location mean(est) − mean(obs); "
                  "ubRMSE per location: sqrt(RMSE² − bias²) of that location.")
    parts.append(f'<p class="note">{e(" ".join(counts))}</p>')
    if images.get("location_map"):
        parts.append("<p>Per-location CC (over time) of each estimate"
                     + (" at the station positions (grey rings: too few days)." if ev.location_kind != "grid"
                        else ".") + "</p>")
        parts.append(f'<img alt="map of the per-location CC" src="{images["location_map"]}">')
    return "\n".join(parts)


def _importance_html(imp, images, notes):
    e = html.escape
    if any(r.get("measure") == "variance_share" for r in imp):
        what = ("Variance share of each factor: at each location, the factor's share of the variance of what it "
                "contributes to SM over the month's or season's days of the evaluation period (SM = mu + the "
                "sum of the contributions), averaged over the region's locations.")
    else:
        what = ("Mean weight of each factor (what the model's weights mean: prediction.json's weights_meaning; for "
                "the convex and scaled mixtures the share of the estimate the router gives to the factor), "
                "averaged per month and per season.")
    parts = ["<h2>Seasonal importance of the factors</h2>", f"<p>{what}</p>"]
    fig_uri = images.get("importance")
    if fig_uri:
        parts.append(f'<img alt="monthly routing weights" src="{fig_uri}">')
    seasonal = [r for r in imp if r["period_kind"].startswith("season")]
    if seasonal:
        factors = []
        for r in seasonal:
            if r["factor"] not in factors:
                factors.append(r["factor"])
        keys = []
        for r in seasonal:
            k = (r["region"], r["period"])
            if k not in keys:
                keys.append(k)
        region_order = {k[0]: i for i, k in reversed(list(enumerate(keys)))}
        keys.sort(key=lambda k: (region_order[k[0]], SEASONS.index(k[1]) if k[1] in SEASONS else 9,
                                 k[1]))
        val = {(r["region"], r["period"], r["factor"]): r["mean_weight"] for r in seasonal}
        head = "".join(f"<th>{e(f)}</th>" for f in factors)
        rows = [f'<table><tr><th class="l">region</th><th class="l">season</th>{head}</tr>']
        for region, period in keys:
            ws = [val.get((region, period, f), np.nan) for f in factors]
            finite = [w for w in ws if np.isfinite(w)]
            top = max(finite) if finite else None
            cells = "".join(
                f'<td{" class=best" if top is not None and w == top else ""}>'
                f'{"–" if not np.isfinite(w) else f"{w:.3f}"}</td>' for w in ws)
            rows.append(f'<tr><td class="l">{e(region)}</td><td class="l">{e(period)}</td>{cells}</tr>')
        rows.append("</table>")
        parts.append("\n".join(rows))
    if not fig_uri and not seasonal:
        notes.append("seasonal importance given but it has no monthly or seasonal rows")
    return "\n".join(parts)


def _ensemble_html(ev):
    """Per ensemble: the ensemble mean's metrics beside the members' mean +- sd, spread-skill, agreement."""
    e = html.escape
    p = ['<h2 id="ensemble">Ensembles: how sure the model is</h2>',
         "<p>Each member is scored on the same samples as every other estimate (rows '&lt;model&gt; [member k]' "
         "below). Spread = the members' standard deviation. A well-calibrated ensemble has about 95% of the "
         "observations inside ±2 spread and a positive correlation of spread with the error. Agreement = the "
         "fraction of members whose most-weighted factor is the ensemble's, per region and season.</p>"]
    for name, es in ev.ensemble.items():
        ms = es["metric_spread"]
        p.append(f"<h3>{e(name)}: {es['members']} members (seeds {e(', '.join(map(str, es.get('seeds') or [])))})</h3>")
        p.append("<table><tr><th>metric</th><th>ensemble mean</th><th>members: mean ± sd</th></tr>")
        for k, v in ms.items():
            p.append(f"<tr><td>{e(METRIC_LABELS.get(k, k))}</td><td>{_fmt(k, v['ensemble'])}</td>"
                     f"<td>{_fmt(k, v['mean'])} ± {_fmt(k, v['std'])}</td></tr>")
        p.append("</table>")
        sk = es["spread_skill"]
        p.append(f"<p>Observations inside ±2 spread: {100 * sk['inside_2sd']:.1f}% of {sk['n']}; correlation of "
                 f"spread with |error|: {sk['corr_spread_abs_error']:.2f}; mean spread {sk['mean_spread']:.4f}.</p>")
        if sk.get("residual_sd") is not None:
            p.append(f"<p>Inside ±2 predictive sd (√(spread² + {sk['residual_sd']:.4f}²), the residual sd the "
                     f"members' spread did not cover on the validation samples): "
                     f"{100 * sk['inside_2sd_predictive']:.1f}%; about 95% when calibrated.</p>")
        ag = es.get("agreement")
        if ag:
            seasons = list(dict.fromkeys(s for row in ag.values() for s in row))
            p.append("<table><tr><th>region</th>" + "".join(f"<th>{e(s)}</th>" for s in seasons) + "</tr>")
            for rname, row in ag.items():
                p.append(f"<tr><td>{e(rname)}</td>" + "".join(
                    f"<td>{row[s]:.2f}</td>" if s in row else "<td>–</td>" for s in seasons) + "</tr>")
            p.append("</table>")
    return "\n".join(p)


def _html(ev, rows, images, imp, notes):
    e = html.escape
    n_common = int(ev.mask.sum())
    models = [n for n in ev.estimates if n not in ev.references]
    period = f"{ev.dates.min()} – {ev.dates.max()}" if len(ev.dates) else "–"
    p = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(ev.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(ev.title)}</h1>",
        "<p>",
        f"Period {e(period)} ({len(ev.dates)} dates), {len(ev.location_ids)} locations, "
        f"{int(np.isfinite(ev.obs).sum())} observed values.<br>",
        f"Models: {e(', '.join(models)) or '–'}. "
        f"Reference products: {e(', '.join(ev.references)) or '–'}.<br>",
    ]
    if ev.same_samples:
        p.append(f"Every model and product is scored on the same {n_common} samples (dates × "
                 "locations where the observation and every estimate are valid).")
    else:
        p.append("Each model and product is scored on its own paired valid samples "
                 "(see n; values are not strictly comparable between rows).")
    p.append("</p>")
    for n in ev.notes:
        p.append(f'<p class="note">{e(n)}</p>')

    p.append(_location_html(ev, images))
    if ev.ensemble:
        p.append(_ensemble_html(ev))
    p.append('<h2 id="pooled">Overall, pooled over all samples</h2>')
    p.append("<p>Every scored sample (date × location) in one set. With several locations this CC "
             "mostly measures whether the estimate ranks the locations' mean levels right; see the "
             "per-location skill above for the skill over time. The anomaly CC column pools the "
             "anomalies (climatology removed).</p>")
    p.append(_table(ev, rows, "overall", None))
    p.append('<p class="note">Bold: best value in the group (highest CC/KGE, lowest RMSE/ubRMSE, '
             "smallest |bias|).</p>")
    p.append("<h2>By season</h2>")
    if images.get("season"):
        p.append(f'<img alt="metrics by season" src="{images["season"]}">')
    p.append(_table(ev, rows, "season", "season"))
    if any(r["group_kind"] == "region" for r in rows):
        p.append("<h2>By region</h2>")
        if images.get("region"):
            p.append(f'<img alt="metrics by region" src="{images["region"]}">')
        p.append(_table(ev, rows, "region", "region"))
    p.append("<h2>Observed and estimated time series</h2>")
    if images.get("timeseries"):
        p.append("<p>The locations with the most valid samples; observations as dots, models as "
                 "lines, reference products dashed.</p>")
        p.append(f'<img alt="time series" src="{images["timeseries"]}">')
    p.append("<h2>Estimated vs observed</h2>")
    if images.get("scatter"):
        p.append("<p>Scored samples (at most "
                 f"{_MAX_SCATTER_POINTS} per panel, drawn at random) with the 1:1 line.</p>")
        p.append(f'<img alt="scatter" src="{images["scatter"]}">')
    p.append("<h2>By location</h2>")
    p.append(_table(ev, rows, "location", "location", limit=_MAX_HTML_LOCATIONS))
    if imp is not None:
        p.append(_importance_html(imp, images, notes))
    p.append("<h2>About the metrics</h2><dl>")
    for m in _ABOUT:
        p.append(f"<dt>{METRIC_LABELS[m]}</dt><dd>{e(METRIC_TEXT[m])}</dd>")
    p.append("</dl><p>Seasons are meteorological: DJF (December–February), MAM, JJA, SON; "
             "December counts with the following January and February. Fewer than 3 samples, "
             "or a constant series, leave a metric undefined (–).</p>")
    if notes:
        p.append("<h2>Notes</h2><ul>")
        p.extend(f"<li>{e(n)}</li>" for n in notes)
        p.append("</ul>")
    p.append("</body></html>")
    return "\n".join(p)


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def _out_paths(out):
    keys = ("csv", "json", "html", "location_csv")
    if isinstance(out, dict):
        unknown = set(out) - set(keys)
        if unknown:
            raise ValueError(f"unknown output keys {sorted(unknown)} (use {', '.join(keys)})")
        return {k: (os.fspath(out[k]) if out.get(k) else None) for k in keys}
    d = os.fspath(out)
    return {"csv": os.path.join(d, "metrics.csv"), "json": os.path.join(d, "metrics.json"),
            "html": os.path.join(d, "report.html"), "location_csv": os.path.join(d, "location_skill.csv")}


def write_evaluation(out, results, callbacks=None):
    """Score every estimate in ``results`` and write the metrics and the HTML report.

    ``out``: a folder (created if needed) that receives ``metrics.csv``, ``metrics.json``,
    ``report.html`` and ``location_skill.csv``; or a dict ``{"csv": path, "json": path, "html":
    path, "location_csv": path}`` where a missing or None entry is not written. ``results``: see the module docstring. ``callbacks``: optional
    ``ismoe_qgis.core_callbacks.Callbacks`` (progress, log, cancel).

    Returns ``{"csv": path|None, "json": path|None, "html": path|None, "location_csv": path|None,
    "rows": [row dicts], "location_skill": {name: per-location skill dict}}``.
    Raises ``ValueError`` on inconsistent input (shapes, no overlap between obs and an
    estimate); a figure that fails to draw is logged and noted in the page instead.
    """
    from ..core_callbacks import ensure

    cb = ensure(callbacks)
    paths = _out_paths(out)
    ev = _Eval(results)
    cb.log(f"evaluating {len(ev.estimates)} estimates at {len(ev.location_ids)} locations, "
           f"{len(ev.dates)} dates")
    rows = _rows(ev)
    skills = ev.location_skill()
    for name, sk in skills.items():
        cb.log(f"{name}: {describe_location_skill(sk)}")
    cb.progress(0.2)
    cb.check_cancel()
    for p in paths.values():
        if p:
            os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    if paths["csv"]:
        write_metrics_csv(paths["csv"], rows)
    if paths["json"]:
        write_metrics_json(paths["json"], rows, _meta(ev))
    if paths["location_csv"]:
        write_location_csv(paths["location_csv"], skills, ev.location_ids, ev.location_xy)
    cb.progress(0.3)
    if paths["html"]:
        notes = []
        imp = None
        if ev.importance is not None:
            try:
                imp = read_importance(ev.importance)
            except Exception as exc:  # optional section: never fail the report for it
                notes.append(f"seasonal importance could not be read: {exc}")
                cb.log(notes[-1])
        images = {}
        try:
            colors = _colors(list(ev.estimates))
            have_mpl = True
        except Exception as exc:
            notes.append(f"matplotlib is not available, the report has no plots: {exc}")
            cb.log(notes[-1])
            colors, have_mpl = {}, False
        overall = {r["model"]: r for r in rows if r["group_kind"] == "overall"}
        seasons = [s for s in SEASONS if any(r["group_kind"] == "season" and r["group"] == s
                                             for r in rows)]
        regions = []
        for r in rows:
            if r["group_kind"] == "region" and r["group"] not in regions:
                regions.append(r["group"])
        jobs = [
            ("location_map", lambda: _fig_location_map(ev, skills)),
            ("season", lambda: _fig_group_metrics(ev, colors, rows, "season", seasons)),
            ("timeseries", lambda: _fig_timeseries(ev, colors)),
            ("scatter", lambda: _fig_scatter(ev, colors, overall)),
        ]
        if regions:
            jobs.append(("region", lambda: _fig_group_metrics(ev, colors, rows, "region", regions)))
        if imp:
            jobs.append(("importance", lambda: _fig_importance(imp)))
        if not have_mpl:
            jobs = []
        for i, (key, make) in enumerate(jobs):
            cb.check_cancel()
            try:
                fig = make()
                if fig is not None:
                    images[key] = _png_uri(fig)
            except Exception as exc:  # a plot must not cost the user the metrics
                notes.append(f"the {key} plot could not be drawn: {exc!r}")
                cb.log(notes[-1])
            cb.progress(0.3 + 0.65 * (i + 1) / len(jobs))
        with atomic_output(paths["html"], ".html") as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(_html(ev, rows, images, imp, notes))
    cb.progress(1.0)
    skill_out = {name: {**sk, "location_ids": list(ev.location_ids)} for name, sk in skills.items()}
    return {**paths, "rows": rows, "location_skill": skill_out}
