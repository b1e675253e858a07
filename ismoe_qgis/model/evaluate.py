"""Evaluation of trained models (and reference products) on a dataset cube.

``evaluate(cube, models, references, ...)`` predicts every valid sample of an evaluation period
with each model, reads reference soil-moisture products onto the cube's grid and dates, adds the
built-in references (persistence, climatology), scores everything on exactly the same samples
(``report.write_evaluation``) and writes::

    <out_dir>/metrics.csv              one row per model/product and group (overall, location,
                                       region, season)
    <out_dir>/metrics.json             the same rows plus metadata
    <out_dir>/report.html              tables and plots (self-contained), led by the per-location
                                       skill (median and IQR over locations) and a map of it
    <out_dir>/location_skill.csv       per model/product and location: days scored, CC, anomaly
                                       CC, bias, ubRMSE, RMSE, KGE, pixel-centre coordinates
    <out_dir>/seasonal_importance.csv  mean routing weight per factor by month / season / day of
                                       year and region, of the (first) ISMoE model
    <out_dir>/seasonal_importance_<name>.csv   the same for every further ISMoE model
    <out_dir>/variance_share.csv       additive and gated ISMoE models: each location's share of the
                                       evaluation period's variance per factor (model, location,
                                       region, factor, variance_share, n_days); the per-region means are
                                       in the result's models[name]["variance_share"]["regions"]
    <out_dir>/seasonal_variance_share.csv  the same by month and season: per region the mean of its
                                       locations' shares (the importance CSV, measure variance_share),
                                       of the first additive or gated model (further ones:
                                       seasonal_variance_share_<name>.csv); the report charts it when the
                                       first ISMoE model has one, the mean weights otherwise

Files are written to a temporary folder next to ``out_dir`` and moved in at the end: a failed or
cancelled evaluation leaves no partial output.

Samples. A sample is a (date, target location) of the period where the target is observed and
the model has its full input window (``SEQ_LEN`` days, and with the model's gap policy ``skip``
all inputs valid at the pixel), exactly the samples ``ismoe:train`` uses. Every model predicts
all of its samples; the report then scores every model and product on the samples where the
observation *and every* estimate are valid (the same-samples rule), so the rows of a group are
comparable.

Built-in references (``baselines``); the models never see them:

- ``persistence``: yesterday's observed value of the target, ``obs[t - 1]`` (NaN when
  yesterday was not observed). A strong benchmark for slowly varying soil moisture that a model
  fed only meteorological factors cannot use.
- ``climatology``: the day-of-year mean of the observed target over the training period (the
  dates before the first model's validation start), per location, smoothed with a centred
  ``climatology_window``-day (default 15) circular moving window; 29 February has its own slot.

Pure numpy / torch / rasterio; no qgis or PyQt import.
"""
import dataclasses
import os
import re
import shutil
import tempfile
from typing import Dict, Optional, Sequence

import numpy as np

from ..core_callbacks import ensure
from ..data import rasters
from ..data.cube import Cube, split_masks
from ..options import BASELINES
from ..options import EVAL_PERIODS as PERIODS
from .importance import months_of
from .metrics import (CLIMATOLOGY_WINDOW, MIN_LOCATION_DAYS, ClimatologyAccumulator, calendar_slot, doy_climatology,
                      season_of)

__all__ = [
    "BASELINES", "PERIODS", "evaluate", "persistence", "climatology", "resolve_period",
    "check_factor_set", "region_labels_from_polygons", "sample_reference",
]

_PERIOD_ALIASES = {"test": "test", "validation": "validation", "val": "validation", "all": "all",
                   "train": "train", "training": "train"}
IMPORTANCE_CSV = "seasonal_importance.csv"
VARIANCE_SHARE_CSV = "variance_share.csv"     # additive/gated models: each location's variance shares
SEASONAL_SHARE_CSV = "seasonal_variance_share.csv"   # ... their region means by month and season
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


# --------------------------------------------------------------------------- built-in references
def persistence(y, dates):
    """Yesterday's observed value: ``out[t] = y[t - 1]`` when ``dates[t] - dates[t-1]`` is one day.

    ``y``: (T, N) observed target, ``dates``: (T,) daily dates. Returns float32 (T, N), NaN where
    yesterday is not in the series or was not observed.
    """
    y = np.asarray(y, dtype=np.float32)
    d = np.asarray(dates).astype("datetime64[D]")
    out = np.full_like(y, np.nan)
    if len(d) > 1:
        consecutive = (d[1:] - d[:-1]) == np.timedelta64(1, "D")
        out[1:] = np.where(consecutive[:, None], y[:-1], np.nan)
    return out


def _calendar_slot(dates):
    """0..365: the day's position in a leap year (29 Feb = 59, 1 Mar = 60 in every year)."""
    return calendar_slot(dates)


def climatology(y, dates, train_mask, window: int = CLIMATOLOGY_WINDOW):
    """Day-of-year mean of ``y`` over the dates of ``train_mask``, per location.

    Slots are calendar days of a leap year (366, so 29 February keeps its own slot); the mean
    of a slot pools the training values of the ``window`` calendar days centred on it
    (circular over the year end; ``window=1``: the plain day-of-year mean). Returns float32
    (T, N) for every date of ``dates`` (NaN where a slot had no training value). The same
    climatology is removed for the anomaly CC (``metrics.climatology_table``).
    """
    return doy_climatology(y, dates, train_mask, window).astype(np.float32)


# --------------------------------------------------------------------------- inputs
def check_factor_set(cfg, cube: Cube, name: str = "model"):
    """Raise ValueError naming the differing variables when the model's factor set is not the
    dataset's. Returns the permutation of dataset variables into the model's order (None when the
    order is the same)."""
    mvars, dvars = list(cfg.variables), list(cube.variables)
    if mvars == dvars and dict(cfg.factors) == dict(cube.factors):
        return None
    missing = [v for v in mvars if v not in dvars]
    extra = [v for v in dvars if v not in mvars]

    def fmt(factors):
        return "; ".join(f"{f}: {', '.join(vs)}" for f, vs in factors.items())

    if missing or extra:
        parts = []
        if missing:
            parts.append(f"variable(s) the model needs but the dataset lacks: {', '.join(missing)}")
        if extra:
            parts.append(f"variable(s) of the dataset the model was not trained on: {', '.join(extra)}")
        raise ValueError(f"model '{name}' was trained on another factor set than the dataset: "
                         f"{'; '.join(parts)}. Model factors [{fmt(cfg.factors)}], dataset factors "
                         f"[{fmt(cube.factors)}]: evaluate it on a dataset prepared from the same layers")
    if dict(cfg.factors) != dict(cube.factors):
        diff = sorted(set(cfg.factors) ^ set(cube.factors)) + sorted(
            f for f in set(cfg.factors) & set(cube.factors) if list(cfg.factors[f]) != list(cube.factors[f]))
        raise ValueError(f"model '{name}' groups the variables into other factors than the dataset "
                         f"(differing factor(s): {', '.join(diff)}). Model factors [{fmt(cfg.factors)}], "
                         f"dataset factors [{fmt(cube.factors)}]")
    return [dvars.index(v) for v in mvars]


def _split_of(info, cube: Cube):
    """(val_start, test_start) of a model's training split, as datetime64[D] or None."""
    split = (info or {}).get("split") or {}
    train_cfg = (info or {}).get("train") or {}
    val = split.get("val")
    test = split.get("test")
    if split:
        val_start = np.datetime64(val[0], "D") if val else None
        if test:
            test_start = np.datetime64(test[0], "D")
        else:  # the model had no test period: nothing after the validation end
            end = np.datetime64(val[1], "D") if val else cube.dates[-1]
            test_start = end + np.timedelta64(1, "D")
        if val_start is None:
            val_start = test_start
        return val_start, test_start
    tr, va, te = split_masks(cube.dates, train_cfg.get("val_start"), train_cfg.get("test_start"))
    val_start = cube.dates[va][0] if va.any() else (cube.dates[te][0] if te.any() else cube.dates[-1] + 1)
    test_start = cube.dates[te][0] if te.any() else cube.dates[-1] + np.timedelta64(1, "D")
    return val_start, test_start


def resolve_period(cube: Cube, period, info=None):
    """Boolean (T,) mask of the evaluation period and a label.

    ``period``: 'test', 'validation' (or 'val'), 'all', 'train', or an explicit
    ``(date_from, date_to)`` pair (ISO strings/dates; either may be None, both inclusive).
    The split comes from ``info`` (a model's training info: its ``split``, else its
    ``train.val_start/test_start``), else the default split of ``split_masks``.
    """
    dates = cube.dates
    if isinstance(period, (tuple, list)):
        if len(period) != 2:
            raise ValueError(f"an explicit period is (date_from, date_to), got {period!r}")
        lo = np.datetime64(str(period[0])[:10], "D") if period[0] not in (None, "") else None
        hi = np.datetime64(str(period[1])[:10], "D") if period[1] not in (None, "") else None
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"DATE_FROM ({lo}) is after DATE_TO ({hi})")
        mask = np.ones(len(dates), bool)
        if lo is not None:
            mask &= dates >= lo
        if hi is not None:
            mask &= dates <= hi
        return mask, f"{lo or dates[0]} .. {hi or dates[-1]}"
    key = _PERIOD_ALIASES.get(str(period or "test").strip().lower())
    if key is None:
        raise ValueError(f"PERIOD must be one of {', '.join(PERIODS)} or a (date_from, date_to) pair, "
                         f"got {period!r}")
    if key == "all":
        return np.ones(len(dates), bool), "all dates"
    if info is None:
        tr, va, te = split_masks(dates)
        masks = {"train": tr, "validation": va, "test": te}
    else:
        val_start, test_start = _split_of(info, cube)
        masks = {"train": dates < val_start, "validation": (dates >= val_start) & (dates < test_start),
                 "test": dates >= test_start}
    return masks[key], f"{key} period"


def train_mask_of(cube: Cube, info=None):
    """(T,) mask of the training period of a model (dates before its validation start)."""
    return resolve_period(cube, "train", info)[0]


def sample_reference(source, cube: Cube, dates, name: str, log=None):
    """A reference SM raster series on the cube grid at the target pixels: float32 (len(dates), N).

    Raises ValueError when the series has no date in ``dates`` or no valid value at the targets.
    """
    info = rasters.open_series(source, name=name, log=log)
    want = np.asarray(dates).astype("datetime64[D]")
    common = np.intersect1d(info.dates, want)
    if common.size == 0:
        span = f"{info.dates.min()}..{info.dates.max()}" if info.dates.size else "no dates"
        raise rasters.NoOverlapError(
            f"reference '{name}' has no date in the evaluation period {want.min()}..{want.max()} (its dates: "
            f"{span}): give a reference series that covers the period, or choose another period")
    grid = rasters.Grid(**{k: cube.grid[k] for k in ("crs_wkt", "transform", "width", "height")})
    rasters.check_overlap(grid, info, name)
    rows, cols = cube.target_rows, cube.target_cols
    r0, c0 = int(rows.min()), int(cols.min())
    h, w = int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1
    arr = rasters.read_window_aligned(info, grid, want, (r0, c0, h, w), allow_missing=True, name=name, log=log)
    out = arr[:, rows - r0, cols - c0]
    if not np.isfinite(out).any():
        raise ValueError(f"reference '{name}' has no valid value at the target locations on the "
                         f"{common.size} date(s) it shares with the evaluation period: check its nodata and extent")
    return out.astype(np.float32, copy=False)


def region_labels_from_polygons(cube: Cube, polygons, all_touched: bool = False):
    """Region name of each target location from polygons in the dataset CRS.

    ``polygons``: sequence of ``(name, geometry)`` with GeoJSON-like geometry dicts in the
    dataset's CRS. Rasterised onto the dataset grid (a pixel belongs to a polygon when its
    centre is inside, or any touch with ``all_touched``); where polygons overlap the later one
    wins. Returns an object array (N,), None where a target is in no polygon.
    """
    grid = rasters.Grid(**{k: cube.grid[k] for k in ("crs_wkt", "transform", "width", "height")})
    kept = [(str(name), geom) for name, geom in polygons if geom is not None]
    names = [name for name, _ in kept]
    labels = np.full(len(cube.target_rows), None, dtype=object)
    if not kept:
        return labels
    burned = rasters.rasterize_polygons([geom for _, geom in kept], grid.shape, grid.affine, all_touched)
    codes = burned[cube.target_rows, cube.target_cols]
    for i, c in enumerate(codes):
        if c > 0:
            labels[i] = names[c - 1]
    return labels


def location_geometry(cube: Cube):
    """Map coordinates of the target locations for the report's skill map: ``{"location_xy": (N, 2)
    pixel-centre x, y in the dataset CRS, "location_kind": 'stations' | 'grid', "location_crs": label,
    "location_grid": {rows, cols, transform} (grid targets, to draw a raster)}``; {} without a grid."""
    try:
        t = [float(v) for v in cube.grid["transform"]]
    except (KeyError, TypeError, ValueError):
        return {}
    if len(t) != 6:
        return {}
    r = cube.target_rows.astype(np.float64) + 0.5
    c = cube.target_cols.astype(np.float64) + 0.5
    xy = np.stack([t[0] + c * t[1] + r * t[2], t[3] + c * t[4] + r * t[5]], axis=1)
    crs = ""
    try:
        from rasterio.crs import CRS
        crs_obj = CRS.from_wkt(cube.grid.get("crs_wkt") or "")
        crs = crs_obj.to_string() or ""
    except Exception:  # a label only
        crs = ""
    out = {"location_xy": xy, "location_kind": cube.target_kind, "location_crs": crs}
    if cube.target_kind != "stations":
        out["location_grid"] = {"rows": cube.target_rows, "cols": cube.target_cols, "transform": t}
    return out


def model_names(models):
    """{name: path}: a dict as given, else each file's base name (made unique with ' (2)', ...)."""
    if isinstance(models, dict):
        return {str(k): v for k, v in models.items()}
    out = {}
    for path in models:
        base = os.path.splitext(os.path.basename(os.fspath(path)))[0] or "model"
        name, k = base, 2
        while name in out:
            name = f"{base} ({k})"
            k += 1
        out[name] = path
    return out


# --------------------------------------------------------------------------- ensembles
def ensemble_summary(obs, mean_est, d: dict, common, model_names=None) -> dict:
    """What an ensemble's members say about its certainty, on the common scored samples:
    - metric_spread: each metric (CC, RMSE, KGE, bias, ubRMSE) of every member, and their mean and standard
      deviation over the members (the ensemble mean's own values beside them);
    - spread_skill: the fraction of observations inside the ensemble mean +- 2 member standard deviations,
      and the correlation of that standard deviation with the ensemble mean's absolute error;
    - agreement (ISMoE): per region and season, the fraction of members whose top factor (largest mean
      weight) is the ensemble's top factor."""
    from .metrics import metrics
    members = d["member_estimates"]                      # (M, T, N)
    M = members.shape[0]
    o = obs[common]
    per = [metrics(o, members[k][common]) for k in range(M)]
    ens = metrics(o, mean_est[common])
    keys = [k for k in ("cc", "rmse", "kge", "bias", "ubrmse") if k in ens]
    spread = {k: {"members": [float(p[k]) for p in per], "mean": float(np.nanmean([p[k] for p in per])),
                  "std": float(np.nanstd([p[k] for p in per])), "ensemble": float(ens[k])} for k in keys}
    sd = members.std(axis=0)[common]
    err = np.abs(mean_est[common] - o)
    inside = float(np.mean(err <= 2 * sd)) if len(o) else float("nan")
    corr = float(np.corrcoef(sd, err)[0, 1]) if len(o) > 2 and np.std(sd) > 0 and np.std(err) > 0 else float("nan")
    out = {"members": M, "seeds": d["seeds"], "member_names": d["members"], "metric_spread": spread,
           "spread_skill": {"inside_2sd": inside, "corr_spread_abs_error": corr, "n": int(len(o)),
                            "mean_spread": float(np.mean(sd)) if len(o) else float("nan")}}
    r = d.get("residual_sd")
    if r is not None:                 # the model's predictive sd: sqrt(member sd^2 + residual sd^2) (train)
        total = np.sqrt(sd ** 2 + float(r) ** 2)
        out["spread_skill"].update(residual_sd=float(r),
                                   inside_2sd_predictive=float(np.mean(err <= 2 * total)) if len(o) else float("nan"))
    agreement = None
    ws = d.get("weight_sums")
    if ws is not None:
        agreement = {}
        for r, rname in enumerate(d["regions"]):
            row = {}
            for k, season in enumerate(d["seasons"]):
                m_w = ws[:, r, k]                              # (M, E) sums: the counts are the same for all
                if not np.any(m_w):
                    continue
                top_ens = int(np.argmax(m_w.sum(0)))
                row[season] = float(np.mean(np.argmax(m_w, axis=1) == top_ens))
            if row:
                agreement[rname] = row
    out["agreement"] = agreement
    cc = spread.get("cc", {})
    out["describe"] = (f"CC {cc.get('ensemble', float('nan')):.3f} (members {cc.get('mean', float('nan')):.3f} +- "
                       f"{cc.get('std', float('nan')):.3f}); {100 * inside:.0f}% of the observations inside +-2 "
                       f"member sd"
                       + ("" if r is None else f", {100 * out['spread_skill']['inside_2sd_predictive']:.0f}% inside "
                          f"+-2 predictive sd (residual sd {float(r):.4f} from validation)")
                       + f"; corr(spread, |error|) {corr:.2f}"
                       + ("" if not agreement else "; top-factor agreement (all, by season) "
                          + ", ".join(f"{s_} {v:.2f}" for s_, v in agreement.get("all", {}).items())))
    return out


# --------------------------------------------------------------------------- the evaluation period
@dataclasses.dataclass
class _Period:
    """The evaluation period on the cube, and the training period (the first model's) whose day-of-year
    climatology of every series the anomaly CC removes."""
    mask: np.ndarray          # (T,) bool: the evaluation dates
    label: str
    train: np.ndarray         # (T,) bool: the training period
    window: int               # the climatology's moving window, days
    cube_dates: np.ndarray    # (T,)

    def __post_init__(self):
        self.dates = self.cube_dates[self.mask]                 # (T_p,)
        self.span = f"{self.dates[0]}..{self.dates[-1]}"
        self.slots = calendar_slot(self.dates)
        self.t_of = np.full(len(self.mask), -1, np.int64)        # cube date -> evaluation date (or -1)
        self.t_of[self.mask] = np.arange(int(self.mask.sum()))
        self.train_only = self.train & ~self.mask
        self.overlap = self.train[self.mask]                    # evaluation dates inside the training period

    def own_climatology(self, est_period, extra=None):
        """(T_p, N) float32 training climatology of an estimate: its values on evaluation dates in the
        training period plus ``extra`` = (values, dates, locations) of the other training dates."""
        acc = ClimatologyAccumulator(est_period.shape[1])
        if self.overlap.any():
            tt, nn = np.nonzero(np.isfinite(est_period[self.overlap]))
            acc.add(est_period[self.overlap][tt, nn], self.dates[self.overlap][tt], nn)
        if extra is not None:
            acc.add(*extra)
        return acc.table(self.window)[self.slots].astype(np.float32)


def _check_inputs(cube: Cube, models, references, baselines, region_labels):
    """The named models, references and baselines, checked (names unique, baselines known, one region label
    per location, a target with values). Returns (models, references, baselines)."""
    models = model_names(models)
    if not models:
        raise ValueError("MODELS: no model file given: add at least one model from ismoe:train")
    references = dict(references or {})
    baselines = [b.strip().lower() for b in (baselines or ())]
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}: use {', '.join(BASELINES)}")
    names = list(models) + list(references) + baselines
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"the name(s) {', '.join(dup)} are used twice among the models, reference products "
                         f"and baselines: rename the file or layer")
    if region_labels is not None and len(region_labels) != len(cube.target_rows):
        raise ValueError(f"{len(region_labels)} region labels for {len(cube.target_rows)} target locations")
    if not np.isfinite(cube.y).any():
        raise ValueError("the dataset's target has no valid value (all NaN): check the TARGET layer and its "
                         "nodata, then prepare the dataset again")
    return models, references, baselines


def _load_models(cube: Cube, models: dict, cb):
    """{name: (model, cfg, info, variable permutation)} on the CPU, each checked against the cube's factor
    set, and a note for every model trained with another split than the first."""
    from .io import load_model
    loaded = {}
    for name, path in models.items():
        cb.check_cancel()
        if not os.path.exists(os.fspath(path)):
            raise FileNotFoundError(f"MODELS: model file not found: '{path}'")
        model, cfg, info = load_model(os.fspath(path), "cpu")
        perm = check_factor_set(cfg, cube, name)
        loaded[name] = (model, cfg, info, perm)
    first_info = next(iter(loaded.values()))[2]
    split_notes = []
    first_split = _split_of(first_info, cube)
    for name, (_m, _c, info, _p) in list(loaded.items())[1:]:
        other = _split_of(info, cube)
        if other != first_split:
            split_notes.append(f"model '{name}' was trained with another split (validation from {other[0]}, test "
                               f"from {other[1]}) than the first model ({first_split[0]}, {first_split[1]}): "
                               f"part of the evaluation period may be its training data")
            cb.log(split_notes[-1])
    return loaded, first_info, split_notes


def _evaluation_period(cube: Cube, period, first_info, climatology_window: int, cb) -> _Period:
    pmask, plabel = resolve_period(cube, period, first_info)
    if not pmask.any():
        raise ValueError(f"the evaluation period ({plabel}) is empty: no date of the dataset "
                         f"({cube.dates[0]}..{cube.dates[-1]}) falls in it; choose another period or dates")
    # the anomaly CC removes each series' own day-of-year climatology of the training period: the
    # models also predict the training samples that are not in the evaluation period, for their own
    P = _Period(pmask, plabel, train_mask_of(cube, first_info), climatology_window, cube.dates)
    if not np.isfinite(cube.y[pmask]).any():
        raise ValueError(f"the target has no valid value in the evaluation period ({plabel}, {P.span}): "
                         f"choose another period or dates")
    cb.log(f"evaluation period: {plabel}, {P.span} ({int(pmask.sum())} dates)")
    return P


def _region_array(region_labels):
    """(N,) object array of region names (None = in no region), or None."""
    if region_labels is None:
        return None
    labels = [None if (r is None or (isinstance(r, float) and np.isnan(r)) or str(r) == "") else str(r)
              for r in region_labels]
    return np.asarray(labels, dtype=object)


# --------------------------------------------------------------------------- models
class _WeightSums:
    """An ISMoE model's routing weights summed (and counted where finite) per evaluation date, over all
    locations and per region; for an ensemble also per member, region (0 = all) and season (the members'
    top-factor agreement, ``ensemble_summary``)."""

    def __init__(self, n_dates: int, E: int, regions, members: int = 0, season_names=None):
        self.n_dates, self.E, self.regions, self.season_names = n_dates, E, regions, season_names
        self.sums = np.zeros((n_dates, E))
        self.counts = np.zeros((n_dates, E), np.int64)
        self.rnames = []
        if regions is not None:
            self.rnames = [r for r in dict.fromkeys(regions.tolist()) if r is not None]
            self.rcode = np.array([self.rnames.index(r) if r is not None else -1 for r in regions], np.int64)
            self.rsums = np.zeros((len(self.rnames), n_dates, E))
            self.rcounts = np.zeros((len(self.rnames), n_dates, E), np.int64)
        self.msums = (np.zeros((members, 1 + (len(self.rnames) if regions is not None else 0), len(season_names), E))
                      if members else None)

    def add(self, tp, nn, w):
        """Weights w (S, E) of samples at evaluation dates tp and locations nn."""
        ok = np.isfinite(w)
        wz = np.where(ok, w, 0.0)
        for e in range(self.E):
            self.sums[:, e] += np.bincount(tp, weights=wz[:, e], minlength=self.n_dates)
            self.counts[:, e] += np.bincount(tp, weights=ok[:, e], minlength=self.n_dates).astype(np.int64)
        if self.regions is not None:
            rc = self.rcode[nn]
            inr = rc >= 0
            flat = rc[inr] * self.n_dates + tp[inr]
            size = len(self.rnames) * self.n_dates
            for e in range(self.E):
                self.rsums[:, :, e] += np.bincount(flat, weights=wz[inr, e], minlength=size).reshape(
                    len(self.rnames), self.n_dates)
                self.rcounts[:, :, e] += np.bincount(flat, weights=ok[inr, e], minlength=size).reshape(
                    len(self.rnames), self.n_dates).astype(np.int64)

    def add_members(self, seasons_tp, nn, wm):
        """Every member's weights wm (S, M, E) by region and season (seasons_tp: each sample's season name)."""
        sc = np.array([self.season_names.index(x) for x in seasons_tp], np.int64)
        rc = (np.array([0 if self.regions[n] is None else 1 + self.rnames.index(self.regions[n]) for n in nn])
              if self.regions is not None else np.zeros(len(nn), np.int64))
        wz = np.where(np.isfinite(wm), wm, 0.0)
        for r_ in {0} | set(rc.tolist()):
            sel = np.ones(len(nn), bool) if r_ == 0 else rc == r_
            for k in range(len(self.season_names)):
                m_ = sel & (sc == k)
                self.msums[:, r_, k] += wz[m_].sum(0)

    def table(self, dates, output_names, kinds):
        """The seasonal importance table (all locations, and every region with weights)."""
        from . import importance as imp
        table = imp.importance_from_sums(dates, self.sums, self.counts, output_names, imp.DEFAULT_REGION, kinds)
        if self.regions is not None:
            for k, rn in enumerate(self.rnames):
                if self.rcounts[k].sum() == 0:
                    continue
                table = table.merge(imp.importance_from_sums(dates, self.rsums[k], self.rcounts[k], output_names,
                                                             rn, kinds))
        return table


class _LocationShares:
    """Each location's variance shares of an additive or gated model over the evaluation period and by month and
    season (model/contribution_stats.py, the bands of a prediction's variance_share_<factor>.tif): per location
    and calendar month the count, sum and sum of squares of the factors' contributions on its predicted samples
    (float64; contributions are in SM units, so no cancellation to fear). Months merge into seasons and the
    period by adding their sums (disjoint days)."""

    def __init__(self, N: int, E: int):
        self.nm = np.zeros((N, 12), np.int64)
        self.s = np.zeros((N, 12, E))
        self.ss = np.zeros((N, 12, E))

    @property
    def n(self):
        """(N,) samples per location over the period."""
        return self.nm.sum(axis=1)

    def add(self, nn, c, months):
        ok = np.isfinite(c).all(axis=1)
        nn, c, mm = nn[ok], np.asarray(c[ok], np.float64), np.asarray(months)[ok] - 1
        np.add.at(self.nm, (nn, mm), 1)
        np.add.at(self.s, (nn, mm), c)
        np.add.at(self.ss, (nn, mm), c * c)

    def _shares_of(self, month_idx):
        from .contribution_stats import MIN_DAYS, shares
        n = self.nm[:, month_idx].sum(axis=1)
        s, ss = self.s[:, month_idx].sum(axis=1), self.ss[:, month_idx].sum(axis=1)
        mean = s / np.maximum(n, 1)[:, None]
        m2 = np.clip(ss - n[:, None] * mean ** 2, 0.0, None)
        return shares({"n": n[None], "m2": m2.T[:, None]}, MIN_DAYS)[:, 0].T

    def shares(self):
        """(N, E) shares over the period, NaN where a location has fewer than 2 samples or no contribution
        varies."""
        return self._shares_of(list(range(12)))

    def band_shares(self):
        """(N, len(SHARE_BANDS), E): the period, each month, each season (NaN where too few samples)."""
        from .contribution_stats import BAND_MONTHS
        return np.stack([self._shares_of([m - 1 for m in months]) for months in BAND_MONTHS], axis=1)

    def table(self, regions, factors):
        """The seasonal variance-share ImportanceTable (measure variance_share, month and season) of region
        'all' and each region: the mean over its locations of each location's share; n = locations."""
        from . import importance as imp
        from .contribution_stats import SHARE_BANDS
        sh = self.band_shares()
        ok = np.isfinite(sh)
        groups = {imp.DEFAULT_REGION: np.ones(sh.shape[0], bool)}
        if regions is not None:
            for r in dict.fromkeys(x for x in regions.tolist() if x is not None):
                groups[str(r)] = regions == r
        table = imp.ImportanceTable(list(factors), measure=imp.VARIANCE_SHARE)
        for g, m in groups.items():
            table = table.merge(imp.importance_from_band_sums(
                SHARE_BANDS, np.where(ok[m], sh[m], 0.0).sum(axis=0), ok[m].sum(axis=0), factors, g))
        return table


def _model_view(cube: Cube, cfg, perm):
    """The cube as the model reads it: its variable order, patch, sequence length and normalisation."""
    return dataclasses.replace(cube, x=cube.x if perm is None else cube.x[perm], variables=list(cfg.variables),
                               factors=dict(cfg.factors), patch_size=cfg.patch_size, seq_len=cfg.seq_len,
                               x_mean=list(cfg.x_mean), x_std=list(cfg.x_std))


def _fold_index(name, cfg, info, view, M: int, N: int, notes, cb):
    """Cross-validation models: each location's fold (-1 = in none of the model's folds), else None."""
    if cfg.member_kind != "folds":
        return None
    cvi = (info or {}).get("cv") or {}
    fmap = dict(zip(cvi.get("locations") or [], cvi.get("fold_of") or []))
    fold_idx = np.array([fmap.get(lab, -1) for lab in view.location_labels()], np.int64)
    n_known = int((fold_idx >= 0).sum())
    notes.append(f"{name}: cross-validation ({cvi.get('split')}, {M} folds): out-of-fold estimates, every "
                 f"location by the model of its fold, which never trained on it ({n_known} of {N} locations "
                 f"are in the model's folds; any other by the mean of the fold models)")
    cb.log(notes[-1])
    return fold_idx


def _out_of_fold(ym, fold_idx, nn):
    """Each sample's estimate by the model of its location's fold (the fold models' mean where it has none)."""
    f_ = fold_idx[nn]
    return np.where(f_ >= 0, ym[np.arange(len(nn)), np.maximum(f_, 0)], ym.mean(1)), f_


class _ModelRun:
    """One model's predictions on the evaluation period (and on the rest of the training period, for its own
    climatology), its members' and its routing weights' sums."""

    def __init__(self, name, model, cfg, info, perm, cube: Cube, P: _Period, regions, sampler_for, dev,
                 batch_size: int, notes, cb):
        self.name, self.model, self.cfg, self.info = name, model, cfg, info
        self.cube, self.P, self.regions, self.dev, self.batch_size, self.cb = cube, P, regions, dev, batch_size, cb
        self.gap = ((info or {}).get("train") or {}).get("gap_policy", "skip")
        self.view = _model_view(cube, cfg, perm)
        self.sampler = sampler_for(self.view, cfg, perm)
        self.t_idx, self.n_idx = self._samples()
        N = cube.y.shape[1]
        self.E = len(model.output_names)
        self.is_moe = cfg.model_type == "ismoe"
        self.M = model.members
        self.fold_idx = _fold_index(name, cfg, info, self.view, self.M, N, notes, cb)
        self.folds = self.fold_idx is not None      # cross-validation: each location by its fold's model
        # an ensemble: every member is scored too (its own estimate, "<name> [member k]")
        self.ens = self.M > 1 and not self.folds
        self.member_est = np.full((self.M, len(P.dates), N), np.nan, np.float32) if self.ens else None
        self.seasons = season_of(P.dates) if self.ens else None
        self.season_names = [s_ for s_ in dict.fromkeys(self.seasons.tolist())] if self.ens else None
        self.weights = (_WeightSums(len(P.dates), self.E, regions, self.M if self.ens else 0, self.season_names)
                        if self.is_moe else None)
        from .contribution_stats import defined_for
        self.shares = _LocationShares(N, self.E) if self.is_moe and defined_for(model.mixture) else None
        self.months = months_of(P.dates) if self.shares is not None else None
        self.est = np.full((len(P.dates), N), np.nan, np.float32)
        self.chunk = max(batch_size, 8192)

    def _samples(self):
        cfg, P = self.cfg, self.P
        t_idx, n_idx = self.view.sample_index(P.mask, self.gap)
        if len(t_idx) == 0:
            raise ValueError(f"the evaluation period ({P.label}, {P.span}) has no valid sample for model "
                             f"'{self.name}' (target observed and a full {cfg.seq_len}-day input window): choose a "
                             f"longer period")
        if cfg.stateful:   # location-major: each chunk covers whole runs of days (one spin-up per run)
            order = np.lexsort((t_idx, n_idx))
            t_idx, n_idx = t_idx[order], n_idx[order]
        return t_idx, n_idx

    def _predict(self, tt, nn, members):
        from .sample_inference import predict_samples
        return predict_samples(self.model, self.sampler, tt, nn, batch_size=self.batch_size, amp_dtype=self.amp,
                               members=members)

    def predict(self, progress):
        """The evaluation period's estimates and weights; progress(fraction of this model's samples)."""
        from .device import autocast_dtype
        self.model.to(self.dev)
        self.amp = autocast_dtype(self.dev, bool(((self.info or {}).get("train") or {}).get("amp", True)))
        t_idx, n_idx, chunk = self.t_idx, self.n_idx, self.chunk
        for s in range(0, len(t_idx), chunk):
            self.cb.check_cancel()
            tt, nn = t_idx[s:s + chunk], n_idx[s:s + chunk]
            tp = self.P.t_of[tt]
            if self.ens:
                ym, wm, cm = self._predict(tt, nn, True)
                self.member_est[:, tp, nn] = ym.T
                y, w, c = ym.mean(1), wm.mean(1), cm.mean(1)
                if self.weights is not None:
                    self.weights.add_members(self.seasons[tp], nn, wm)
            elif self.folds:
                ym, wm, cm = self._predict(tt, nn, True)
                y, f_ = _out_of_fold(ym, self.fold_idx, nn)
                own = (f_ >= 0)[:, None]
                w = np.where(own, wm[np.arange(len(nn)), np.maximum(f_, 0)], wm.mean(1))
                c = np.where(own, cm[np.arange(len(nn)), np.maximum(f_, 0)], cm.mean(1))
            else:
                y, w, c = self._predict(tt, nn, False)
            self.est[tp, nn] = y
            if self.is_moe:
                self.weights.add(tp, nn, w)
            if self.shares is not None:
                self.shares.add(nn, c, self.months[tp])
            progress(min(1.0, (s + chunk) / len(t_idx)))

    def predict_training(self, progress):
        """Its predictions on the training dates outside the evaluation period, for its own climatology (the
        anomaly CC): (values (S, members) or (S, 1), dates, locations), or None."""
        P, chunk = self.P, self.chunk
        ct, cn = (self.view.sample_index(P.train_only, self.gap) if P.train_only.any()
                  else (np.zeros(0, np.int64),) * 2)
        self.n_training = len(ct)
        acc_vals, acc_t, acc_n = [], [], []
        for s in range(0, len(ct), chunk):
            self.cb.check_cancel()
            tt, nn = ct[s:s + chunk], cn[s:s + chunk]
            y, _, _ = self._predict(tt, nn, self.ens or self.folds)
            if self.folds:
                y = _out_of_fold(y, self.fold_idx, nn)[0]
            acc_vals.append(np.asarray(y, np.float64).reshape(len(tt), -1))
            acc_t.append(self.cube.dates[tt])
            acc_n.append(nn)
            progress(min(1.0, (s + chunk) / len(ct)))
        if not acc_vals:
            return None
        return np.concatenate(acc_vals), np.concatenate(acc_t), np.concatenate(acc_n)

    def collect(self, path, training, estimates, est_clims, ens_members, model_meta, tables, importance_kinds,
                share_tables):
        """Its estimates, climatologies, ensemble members, metadata and importance table into the evaluation's."""
        name, cfg, info, P = self.name, self.cfg, self.info, self.P
        vals, at, an = training if training is not None else (None, None, None)
        est_clims[name] = P.own_climatology(self.est, (vals.mean(1), at, an) if training is not None else None)
        if self.ens:
            for k in range(self.M):
                mname = f"{name} [member {k + 1}]"
                estimates[mname] = self.member_est[k]
                est_clims[mname] = P.own_climatology(self.member_est[k],
                                                     (vals[:, k], at, an) if training is not None else None)
            ens_members[name] = {"members": [f"{name} [member {k + 1}]" for k in range(self.M)],
                                 "seeds": list(cfg.member_seeds or []), "member_estimates": self.member_est,
                                 "residual_sd": ((info or {}).get("uncertainty") or {}).get("residual_sd"),
                                 "weight_sums": self.weights.msums if self.weights is not None else None,
                                 "seasons": self.season_names,
                                 "regions": ["all"] + (list(self.weights.rnames)
                                                       if self.regions is not None and self.is_moe else [])}
        self.model.to("cpu")
        estimates[name] = self.est
        model_meta[name] = {"path": os.fspath(path), "model_type": cfg.model_type,
                            "n_predicted": int(len(self.t_idx)), "seq_len": cfg.seq_len,
                            "patch_size": cfg.patch_size, "best_epoch": (info or {}).get("best_epoch")}
        self.cb.log(f"{name} ({cfg.model_type}): {len(self.t_idx)} samples predicted, and {self.n_training} of the "
                    f"training period for its own climatology (anomaly CC)")
        if self.is_moe:
            tables[name] = self.weights.table(P.dates, self.model.output_names, importance_kinds)
        if self.shares is not None:
            sh = self.shares.shares()
            model_meta[name]["variance_share"] = {"factors": list(self.model.output_names), "locations": sh,
                                                  "n_days": self.shares.n.copy(),
                                                  "regions": _share_means(sh, self.regions, self.model.output_names)}
            share_tables[name] = self.shares.table(self.regions, self.model.output_names)


def _predict_models(loaded: dict, models: dict, cube: Cube, P: _Period, regions, dev, batch_size: int,
                    importance_kinds, notes, cb):
    """Every model on the evaluation period. Returns (estimates, their own climatologies, ensemble members,
    model metadata, importance tables of the weights, seasonal variance-share tables of the additive and gated
    models), each {name: ...}."""
    from .sampler import WindowSampler
    estimates, est_clims, ens_members, model_meta, tables, share_tables = {}, {}, {}, {}, {}, {}
    samplers = {}

    def sampler_for(view, cfg, perm):
        pad = cfg.context_days - (cfg.seq_len - 1)      # a stateful model's spin-up before the first date
        key = (tuple(perm or ()), cfg.patch_size, tuple(cfg.x_mean), tuple(cfg.x_std), pad)
        if key not in samplers:
            samplers.clear()   # one normalised copy of the cube at a time
            samplers[key] = WindowSampler(view, dev, pad_days=pad)
        sampler = samplers[key]
        sampler.seq_len = cfg.seq_len
        return sampler

    n = len(loaded)
    for i, (name, (model, cfg, info, perm)) in enumerate(loaded.items()):
        cb.check_cancel()
        run = _ModelRun(name, model, cfg, info, perm, cube, P, regions, sampler_for, dev, batch_size, notes, cb)
        run.predict(lambda f: cb.progress(0.6 * (i + f) / n))
        training = run.predict_training(lambda f: cb.progress(0.6 * (i + 1) / n + 0.1 * f / n))
        run.collect(models[name], training, estimates, est_clims, ens_members, model_meta, tables, importance_kinds,
                    share_tables)
    samplers.clear()
    return estimates, est_clims, ens_members, model_meta, tables, share_tables


def _share_means(sh, regions, factors):
    """{"all" or region: {factor: mean share over its locations that have one}}."""
    ok = np.isfinite(sh).all(axis=1)
    groups = {"all": ok}
    if regions is not None:
        for r in dict.fromkeys(x for x in regions.tolist() if x is not None):
            groups[str(r)] = ok & (regions == r)
    return {g: ({f: round(float(sh[m, e].mean()), 6) for e, f in enumerate(factors)} if m.any() else None)
            for g, m in groups.items()}


# --------------------------------------------------------------------------- references and baselines
def _add_references(references: dict, cube: Cube, P: _Period, estimates, est_clims, notes, cb):
    """The reference products on the evaluation dates (and their own training climatology). Returns their
    names."""
    ref_names = []
    for j, (name, source) in enumerate(references.items()):
        cb.check_cancel()
        estimates[name] = sample_reference(source, cube, P.dates, name, log=cb.log)
        ref_names.append(name)
        extra = None
        if P.train_only.any():
            tdates = cube.dates[P.train_only]
            try:
                tr = sample_reference(source, cube, tdates, name, log=cb.log)
                tt, nn = np.nonzero(np.isfinite(tr))
                extra = (tr[tt, nn], tdates[tt], nn)
            except ValueError as exc:   # no date / no value in the training period
                notes.append(f"{name}: no own climatology of the training period, so no anomaly CC "
                             f"outside the evaluation dates it shares with it ({exc})")
                cb.log(notes[-1])
        est_clims[name] = P.own_climatology(estimates[name], extra)
        cb.progress(0.7 + 0.05 * (j + 1) / max(1, len(references)))
    return ref_names


def _add_baselines(baselines, cube: Cube, P: _Period, first_info, estimates, est_clims, ref_names, notes):
    """Persistence and climatology (as asked), and the observed training climatology (the anomaly CC's
    observed side; None where the training period has no observation)."""
    tmask, window = P.train, P.window
    if "persistence" in baselines:
        pers = persistence(cube.y, cube.dates)
        estimates["persistence"] = pers[P.mask]
        est_clims["persistence"] = climatology(pers, cube.dates, tmask, window)[P.mask]
        ref_names.append("persistence")
        notes.append("persistence: yesterday's observed value (a reference only; the models never see it)")
    train_observed = bool(tmask.any() and np.isfinite(cube.y[tmask]).any())
    clim = climatology(cube.y, cube.dates, tmask, window)[P.mask] if train_observed else None
    if clim is None or not np.isfinite(clim).any():
        notes.append("anomaly CC undefined: no observed day-of-year climatology of the training period (before "
                     f"{_split_of(first_info, cube)[0]}) covers the evaluation dates")
    if "climatology" in baselines:
        if clim is None:
            raise ValueError("climatology needs observed target values in the training period "
                             f"(before {_split_of(first_info, cube)[0]}); there are none: leave it out")
        estimates["climatology"] = clim.copy()
        est_clims["climatology"] = clim      # its own climatology is itself: anomalies 0, no anomaly CC
        ref_names.append("climatology")
        tdates = cube.dates[tmask]
        notes.append(f"climatology: day-of-year mean of the training period {tdates[0]}..{tdates[-1]}, "
                     f"{window}-day window")
        if (P.mask & tmask).any():
            notes.append("the evaluation period overlaps the training period: scores there are not independent")
    return clim


# --------------------------------------------------------------------------- same samples
def _common_samples(obs, estimates: dict, ref_names, notes, cb):
    """The samples every estimate is scored on (observed, and valid in every estimate but the partial ones),
    with a note on what each estimate costs. Returns (common mask, the partial estimates' names)."""
    obs_ok = np.isfinite(obs)
    common = obs_ok.copy()
    # the climatology baseline is scored where it is defined, inside the common samples: a location whose
    # evaluation months have no training observation must not be removed from every other estimate's score
    partial = [n for n in ("climatology",) if n in estimates]
    for name, e in estimates.items():
        if name not in partial:
            common &= np.isfinite(e)
    n_common = int(common.sum())
    for name in partial:
        n_def = int((common & np.isfinite(estimates[name])).sum())
        notes.append(f"{name}: defined on {n_def} of the {n_common} common samples ({100 * n_def / max(n_common, 1):.0f}% "
                     f"coverage; it is scored there, and the others on all {n_common})")
        cb.log(notes[-1])
    for name, e in estimates.items():
        own = int((obs_ok & np.isfinite(e)).sum())
        if own == 0:
            raise ValueError(f"'{name}' has no valid value on any observed sample of the evaluation period")
        cb.log(f"{name}: {own} samples with an observation, {n_common} scored in common")
    if n_common == 0:
        raise ValueError("no sample of the evaluation period has an observation and a value of every model and "
                         "reference: the estimates do not overlap (check the references' dates and extent)")
    for name, e in estimates.items():
        own = int((obs_ok & np.isfinite(e)).sum())
        if own - n_common > 0.1 * own:
            notes.append(f"{name}: {own} samples of its own, {n_common} in common with every other estimate")
    for name in ref_names:  # different units (e.g. % vs m3/m3) are a common mistake
        e = estimates[name][common]
        o = obs[common]
        if e.size and np.nanmean(o) != 0:
            ratio = float(np.nanmean(e) / np.nanmean(o))
            if ratio > 5 or ratio < 0.2:
                notes.append(f"{name}: its mean is {ratio:.1f} times the observed mean: other units?")
                cb.log(notes[-1])
    return common, partial


# --------------------------------------------------------------------------- writing
def _write_variance_shares(path, shared: dict, location_ids, regions):
    """variance_share.csv: model, location, region, factor, share, n_days (the additive and gated models)."""
    import csv

    from ..fileutil import atomic_output
    with atomic_output(path, ".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["model", "location", "region", "factor", "variance_share", "n_days"])
        for name, d in shared.items():
            for j, loc in enumerate(location_ids):
                reg = "" if regions is None or regions[j] is None else str(regions[j])
                for e, fac in enumerate(d["factors"]):
                    v = d["locations"][j, e]
                    w.writerow([name, loc, reg, fac, "" if not np.isfinite(v) else f"{v:.6g}", int(d["n_days"][j])])


def _write_outputs(out_dir, result: dict, tables: dict, cb, share_tables: Optional[dict] = None) -> dict:
    """The importance CSVs and the report (``report.write_evaluation``) written into a temporary folder beside
    ``out_dir``, then moved in: a failed or cancelled evaluation leaves no partial output. Returns the
    report's answer (rows, location skill)."""
    from ..core_callbacks import Callbacks
    from . import importance as imp
    from .report import write_evaluation
    moe_names = list(tables)
    out_dir = os.path.abspath(os.fspath(out_dir))
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".ismoe-evaluate-", dir=parent)
    try:
        files = []
        if moe_names:
            for k, name in enumerate(moe_names):
                fname = IMPORTANCE_CSV if k == 0 else f"seasonal_importance_{_SAFE.sub('_', name)}.csv"
                imp.write_importance_csv(tables[name], os.path.join(tmp, fname))
                files.append(fname)
            result["seasonal_importance"] = os.path.join(tmp, IMPORTANCE_CSV)
            if len(moe_names) > 1:
                result["notes"].append(f"seasonal importance shown for {moe_names[0]}; the other ISMoE models' "
                                       f"are in seasonal_importance_<name>.csv")
        for k, name in enumerate(share_tables or {}):
            fname = (SEASONAL_SHARE_CSV if k == 0 else
                     f"{SEASONAL_SHARE_CSV[:-4]}_{_SAFE.sub('_', name)}.csv")
            imp.write_importance_csv(share_tables[name], os.path.join(tmp, fname))
            files.append(fname)
            if moe_names and name == moe_names[0]:    # the report charts the chosen definition
                result["seasonal_importance"] = os.path.join(tmp, fname)

        shared = {n: m["variance_share"] for n, m in result["models"].items() if m.get("variance_share")}
        if shared:
            _write_variance_shares(os.path.join(tmp, VARIANCE_SHARE_CSV), shared, result["location_ids"],
                                   result["regions"])
            files.append(VARIANCE_SHARE_CSV)

        def sub_progress(f):
            cb.progress(0.8 + 0.19 * float(f))

        rep = write_evaluation(tmp, result, Callbacks(progress=sub_progress, log=cb.log,
                                                      is_cancelled=cb.is_cancelled))
        files += [os.path.basename(rep[k]) for k in ("csv", "json", "html", "location_csv") if rep.get(k)]
        cb.check_cancel()
        os.makedirs(out_dir, exist_ok=True)
        for f in files:
            os.replace(os.path.join(tmp, f), os.path.join(out_dir, f))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["paths"] = {"csv": os.path.join(out_dir, "metrics.csv"), "json": os.path.join(out_dir, "metrics.json"),
                       "html": os.path.join(out_dir, "report.html"),
                       "location_csv": os.path.join(out_dir, "location_skill.csv"),
                       "importance": os.path.join(out_dir, IMPORTANCE_CSV) if moe_names else None,
                       "variance_share": (os.path.join(out_dir, VARIANCE_SHARE_CSV)
                                          if VARIANCE_SHARE_CSV in files else None),
                       "seasonal_variance_share": (os.path.join(out_dir, SEASONAL_SHARE_CSV)
                                                   if SEASONAL_SHARE_CSV in files else None)}
    if moe_names:           # where the report read it from is gone: the moved file
        shown = result.get("seasonal_importance")
        result["seasonal_importance"] = os.path.join(out_dir, os.path.basename(shown))
    return rep


# --------------------------------------------------------------------------- main entry
def evaluate(cube, models, references: Optional[Dict[str, object]] = None, period="test",
             region_labels=None, out_dir=None, callbacks=None, *, baselines: Sequence[str] = BASELINES,
             device: str = "cpu", climatology_window: int = 15, title: Optional[str] = None,
             batch_size: int = 2048, importance_kinds=("month", "season", "doy"),
             min_location_days: int = MIN_LOCATION_DAYS):
    """Evaluate models and reference products on the samples of an evaluation period.

    ``cube``: a :class:`Cube` or the path of a dataset file. ``models``: ``{name: model_path}``
    (or a list of paths, named by file name). ``references``: ``{product name: raster source}``
    (anything :func:`rasters.open_series` opens; band dates needed). ``period``: 'test',
    'validation', 'all' or ``(date_from, date_to)`` (see :func:`resolve_period`; the split is the
    first model's). ``region_labels``: optional (N,) region name per target location (None = in
    no region). ``out_dir``: folder for the outputs (None: compute only). ``baselines``: built-in
    references to add, any of ``('persistence', 'climatology')``. ``device``: 'cpu', 'auto' or
    'cuda'. ``min_location_days``: the fewest scored days that put a location into the per-location
    summary (median and IQR of its CC, anomaly CC, bias, ubRMSE).

    Returns a dict: ``rows`` (metric rows), ``paths`` ({csv, json, html, importance: path or
    None}), ``dates`` (T_p,), ``obs`` (T_p, N), ``estimates`` {name: (T_p, N)}, ``references``
    [names], ``n_samples`` (the common scored samples), ``importance`` {model: ImportanceTable},
    ``period`` (first, last date), ``models`` {name: {path, model_type, n_predicted}},
    ``location_skill`` {name: per-location skill dict of ``metrics.location_skill_samples``},
    ``climatology`` (T_p, N) the observed training climatology (or None) and
    ``estimate_climatology`` {name: (T_p, N)} each estimate's own (the anomaly CC removes them).
    The same dict is what the report reads (``report.write_evaluation``), so it also holds the report's
    inputs: ``location_ids``, ``regions``, ``title``, ``notes``, ``partial_estimates``, the locations'
    geometry, ``seasonal_importance`` (the first ISMoE model's table, or its CSV in ``out_dir``).

    Raises ValueError for: a model trained on another factor set (naming the variables), a
    reference with no date in the period, an empty period, a target without valid values.
    """
    import torch  # noqa: F401  (first: without torch the error names it)

    from .device import resolve_device

    cb = ensure(callbacks)
    if isinstance(cube, (str, os.PathLike)):
        cube = Cube.load(os.fspath(cube))
    models, references, baselines = _check_inputs(cube, models, references, baselines, region_labels)
    loaded, first_info, notes = _load_models(cube, models, cb)
    P = _evaluation_period(cube, period, first_info, climatology_window, cb)
    regions = _region_array(region_labels)
    estimates, est_clims, ens_members, model_meta, tables, share_tables = _predict_models(
        loaded, models, cube, P, regions, resolve_device(device, cb.log), batch_size, importance_kinds, notes, cb)
    del loaded

    obs = cube.y[P.mask]
    ref_names = _add_references(references, cube, P, estimates, est_clims, notes, cb)
    clim = _add_baselines(baselines, cube, P, first_info, estimates, est_clims, ref_names, notes)
    common, partial = _common_samples(obs, estimates, ref_names, notes, cb)
    cb.progress(0.8)

    ensemble = {name: ensemble_summary(obs, estimates[name], d, common, model_names=list(model_meta))
                for name, d in ens_members.items()}
    for name, es in ensemble.items():
        cb.log(f"{name}: ensemble of {es['members']}: {es['describe']}")
    head_notes = [f"{n}: {m['model_type']} model {os.path.basename(m['path'])}, {m['n_predicted']} samples predicted"
                  for n, m in model_meta.items()]
    result = {"dates": P.dates, "obs": obs, "estimates": estimates, "references": ref_names, "ensemble": ensemble,
              "n_samples": int(common.sum()), "importance": tables, "period": (str(P.dates[0]), str(P.dates[-1])),
              "models": model_meta, "rows": None, "location_skill": None, "climatology": clim,
              "estimate_climatology": est_clims,
              "paths": {"csv": None, "json": None, "html": None, "importance": None, "location_csv": None},
              # what the report reads besides
              "location_ids": cube.location_labels(), "regions": regions, "same_samples": True,
              "title": title or f"Soil moisture evaluation, {P.label} {P.span}", "notes": head_notes + notes,
              "min_location_days": min_location_days, "partial_estimates": partial, **location_geometry(cube)}
    if clim is not None:
        tdates = cube.dates[P.train]
        result["climatology_note"] = f"training period {tdates[0]}..{tdates[-1]}, {climatology_window}-day window"
    if out_dir is None:
        from .report import evaluation_rows, location_skill_of
        if tables:       # the report's chart: the first ISMoE model's variance shares where it has them
            first = next(iter(tables))
            result["seasonal_importance"] = share_tables.get(first, tables[first])
        result["rows"] = evaluation_rows(result)
        result["location_skill"] = location_skill_of(result)
    else:
        rep = _write_outputs(out_dir, result, tables, cb, share_tables)
        result["rows"] = rep["rows"]
        result["location_skill"] = rep["location_skill"]
    cb.progress(1.0)
    return result
