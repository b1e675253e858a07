"""Seasonal importance of the experts: mean routing weight per factor by period.

This is the one place where routing weights become "which factor matters when":
the evaluation, the dock (`ismoe_qgis.ui`) and the `ismoe:seasonalimportance`
algorithm all go through these functions, so their numbers agree.

Pure numpy, no qgis/PyQt import.

Periods (``period_kind``):
- ``month``: 1..12
- ``season``: meteorological seasons ``DJF``, ``MAM``, ``JJA``, ``SON``
  (December counts in the DJF of its own calendar year: seasons pool by calendar,
  not by winter)
- ``doy``: day of year 1..366 (the calendar day; in leap years 29 February is 60
  and 31 December is 366)

The mean of a period is the mean over every valid (date, location) weight in it, so
``mean_weight = sum / n`` with ``n`` the number of valid values. The streaming path
(:func:`importance_from_sums`, fed by block-wise raster sums) and the array path
(:func:`seasonal_importance`) give the same numbers.

CSV layout (one row per region, period kind, period and factor)::

    region,period_kind,period,factor,mean_weight,n
    all,month,1,snow,0.412345,31000

Measures (``ImportanceTable.measure``, the CSV's optional ``measure`` column, "weight" when absent):
- ``weight``: the mean daily weight raster value (``options.WEIGHT_MEANING``), by month, season and day of year;
- ``variance_share``: the region's mean of each pixel's share of the contribution variance within the period
  (model/contribution_stats.py; additive and gated models), by month and season only: a share needs the days
  of a period, so there is none per day of year. ``mean_weight`` then holds the mean share and ``n`` the pixels.
"""
from __future__ import annotations

import colorsys
import csv
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

PERIOD_KINDS: Tuple[str, ...] = ("month", "season", "doy")
SEASONS: Tuple[str, ...] = ("DJF", "MAM", "JJA", "SON")
# month (1..12) -> index into SEASONS
_MONTH_TO_SEASON = np.array([-1, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0])
# season name -> its calendar months (the same rule, for code that merges months into seasons)
SEASON_MONTHS: Dict[str, Tuple[int, ...]] = {s: tuple(m for m in range(1, 13) if _MONTH_TO_SEASON[m] == i)
                                             for i, s in enumerate(SEASONS)}
MONTH_ABBR: Tuple[str, ...] = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                               "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
CSV_COLUMNS: Tuple[str, ...] = ("region", "period_kind", "period", "factor", "mean_weight", "n")
DEFAULT_REGION = "all"
WEIGHT, VARIANCE_SHARE = "weight", "variance_share"      # ImportanceTable.measure (options.IMPORTANCE_MEASURES)
MEASURE_TITLES = {WEIGHT: "mean factor weight", VARIANCE_SHARE: "variance share of the contributions"}


class ImportanceError(ValueError):
    """Bad input to the importance functions (message is meant for the user)."""


# --------------------------------------------------------------------------- colours
# Okabe-Ito colour-blind-safe palette for the factors of the paper, plus a few more.
FACTOR_COLOURS: Dict[str, str] = {
    "snow": "#56B4E9",           # sky blue
    "radiation": "#E69F00",      # orange
    "precipitation": "#0072B2",  # blue
    "wind": "#009E73",           # bluish green
    "temperature": "#D55E00",    # vermillion
    "lake": "#CC79A7",           # reddish purple
    "soil": "#8C564B",           # brown
    "vegetation": "#7CAE00",     # leaf green
    "humidity": "#17BECF",       # cyan
    "evaporation": "#9467BD",    # purple
    "pressure": "#7F7F7F",       # grey
}
# keywords (checked in order, on the lower-cased name) that map a variant name onto a
# fixed colour, e.g. "snow_depth" -> snow, "t2m" -> temperature
_COLOUR_KEYWORDS: Tuple[Tuple[str, str], ...] = (
    ("snow", "snow"), ("lake", "lake"), ("radiat", "radiation"), ("solar", "radiation"),
    ("thermal", "radiation"), ("precip", "precipitation"), ("rain", "precipitation"),
    ("wind", "wind"), ("temp", "temperature"), ("t2m", "temperature"),
    ("soil", "soil"), ("veg", "vegetation"), ("ndvi", "vegetation"), ("lai", "vegetation"),
    ("humid", "humidity"), ("evap", "evaporation"), ("pressure", "pressure"),
)


def factor_colour(name: str) -> str:
    """Stable ``#rrggbb`` colour of a factor, the same in every chart and every run.

    Common factor names (snow, radiation, precipitation, wind, temperature, lake, ...)
    and names containing them get fixed colours; any other name gets a colour derived
    from a hash of the name (md5, so it does not change between Python runs).
    """
    key = str(name).strip().lower()
    if key in FACTOR_COLOURS:
        return FACTOR_COLOURS[key]
    for word, base in _COLOUR_KEYWORDS:
        if word in key:
            return FACTOR_COLOURS[base]
    digest = hashlib.md5(key.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    light = 0.38 + 0.16 * digest[2] / 255.0
    sat = 0.55 + 0.30 * digest[3] / 255.0
    r, g, b = colorsys.hls_to_rgb(hue, light, sat)
    return "#{:02X}{:02X}{:02X}".format(round(r * 255), round(g * 255), round(b * 255))


def factor_colours(names: Iterable[str]) -> Dict[str, str]:
    """``{name: colour}`` for several factors (each colour depends only on its name)."""
    return {n: factor_colour(n) for n in names}


# --------------------------------------------------------------------------- periods
def as_dates(dates) -> np.ndarray:
    """Dates as ``datetime64[D]`` (accepts ISO strings, datetime/date objects, datetime64)."""
    try:
        out = np.asarray(dates).astype("datetime64[D]")
    except (ValueError, TypeError) as exc:
        raise ImportanceError("dates could not be read as calendar days: {}".format(exc))
    if out.ndim != 1:
        raise ImportanceError("dates must be one-dimensional, got shape {}".format(out.shape))
    if np.isnat(out).any():
        raise ImportanceError("dates contain missing values (NaT)")
    return out


def months_of(dates) -> np.ndarray:
    d = as_dates(dates)
    return (d.astype("datetime64[M]").astype(np.int64) % 12 + 1).astype(np.int64)


def doy_of(dates) -> np.ndarray:
    d = as_dates(dates)
    return (d - d.astype("datetime64[Y]")).astype(np.int64) + 1


def seasons_of(dates) -> np.ndarray:
    """Index into :data:`SEASONS` (0=DJF .. 3=SON) of each date."""
    return _MONTH_TO_SEASON[months_of(dates)]


def period_codes(dates, kind: str) -> Tuple[np.ndarray, list]:
    """(code per date, ordered list of the period labels present).

    Codes index into the returned labels list. Labels are ints for month/doy and
    season names for season.
    """
    if kind == "month":
        raw = months_of(dates)
        present = sorted(set(raw.tolist()))
        labels = present
    elif kind == "doy":
        raw = doy_of(dates)
        present = sorted(set(raw.tolist()))
        labels = present
    elif kind == "season":
        raw = seasons_of(dates)
        present = sorted(set(raw.tolist()))
        labels = [SEASONS[i] for i in present]
    else:
        raise ImportanceError("unknown period kind {!r}; use one of {}".format(kind, ", ".join(PERIOD_KINDS)))
    lookup = {p: i for i, p in enumerate(present)}
    codes = np.array([lookup[v] for v in raw.tolist()], dtype=np.int64)
    return codes, labels


# --------------------------------------------------------------------------- table
@dataclass
class PeriodSeries:
    """Mean weight per period and factor of one region and one period kind."""
    region: str
    kind: str
    periods: list            # ints (month, doy) or season names, in calendar order
    mean: np.ndarray         # (P, E) float64, NaN where n == 0
    n: np.ndarray            # (P, E) int64, number of valid weights averaged
    factors: List[str]
    spread: Optional[np.ndarray] = None   # (P, E): an ensemble's member standard deviation of `mean`

    def x(self) -> np.ndarray:
        """Numeric x positions: month/doy numbers, season 1..4."""
        if self.kind == "season":
            return np.array([SEASONS.index(p) + 1 for p in self.periods], dtype=float)
        return np.asarray(self.periods, dtype=float)

    def column(self, factor: str) -> np.ndarray:
        return self.mean[:, self.factors.index(factor)]

    def dominant(self) -> List[Optional[str]]:
        """Factor with the largest mean weight in each period (None where no data)."""
        out = []
        for row in self.mean:
            if np.all(np.isnan(row)):
                out.append(None)
            else:
                out.append(self.factors[int(np.nanargmax(row))])
        return out


class ImportanceTable:
    """Seasonal importance of several regions: ``table.get(region, kind)``."""

    def __init__(self, factors: Sequence[str], series: Optional[Iterable[PeriodSeries]] = None,
                 measure: str = WEIGHT):
        if measure not in MEASURE_TITLES:
            raise ImportanceError("unknown importance measure {!r}; use one of {}".format(
                measure, ", ".join(MEASURE_TITLES)))
        self.measure = measure
        self.factors: List[str] = [str(f) for f in factors]
        self._series: Dict[Tuple[str, str], PeriodSeries] = {}
        for s in series or ():
            self.add(s)

    def add(self, s: PeriodSeries):
        if list(s.factors) != self.factors:
            raise ImportanceError("factors {} do not match the table's {}".format(list(s.factors), self.factors))
        self._series[(s.region, s.kind)] = s

    @property
    def regions(self) -> List[str]:
        seen: List[str] = []
        for region, _kind in self._series:
            if region not in seen:
                seen.append(region)
        return seen

    def kinds(self, region: Optional[str] = None) -> List[str]:
        ks = {k for (r, k) in self._series if region is None or r == region}
        return [k for k in PERIOD_KINDS if k in ks] + sorted(ks - set(PERIOD_KINDS))

    def get(self, region: Optional[str] = None, kind: str = "month") -> PeriodSeries:
        if region is None:
            if not self.regions:
                raise ImportanceError("the importance table is empty")
            region = self.regions[0]
        try:
            return self._series[(region, kind)]
        except KeyError:
            raise ImportanceError("no {!r} values for region {!r} (regions: {})".format(
                kind, region, ", ".join(self.regions) or "none"))

    def merge(self, other: "ImportanceTable") -> "ImportanceTable":
        """Regions of both tables (other wins on a clash); factors must agree."""
        if other.factors != self.factors:
            raise ImportanceError("cannot merge tables with factors {} and {}".format(self.factors, other.factors))
        if other.measure != self.measure and len(self) and len(other):
            raise ImportanceError("cannot merge a table of {} with one of {}".format(self.measure, other.measure))
        out = ImportanceTable(self.factors, self._series.values(), other.measure if len(other) else self.measure)
        for s in other._series.values():
            out.add(s)
        return out

    def rows(self):
        """CSV rows (region, period_kind, period, factor, mean_weight, n)."""
        for (region, kind), s in self._series.items():
            for i, p in enumerate(s.periods):
                for j, f in enumerate(self.factors):
                    yield region, kind, p, f, float(s.mean[i, j]), int(s.n[i, j])

    def __len__(self):
        return len(self._series)

    @property
    def title(self) -> str:
        """What the values are, for a chart's axis: 'mean factor weight' or 'variance share of the contributions'."""
        return MEASURE_TITLES[self.measure]

    def __repr__(self):
        return "ImportanceTable(factors={}, regions={}, measure={})".format(self.factors, self.regions, self.measure)


# --------------------------------------------------------------------------- aggregation
def importance_from_sums(dates, sums, counts, factors: Sequence[str], region: str = DEFAULT_REGION,
                         kinds: Sequence[str] = PERIOD_KINDS, member_sums=None) -> ImportanceTable:
    """Seasonal importance from per-date sums of weights and counts of valid weights.

    ``sums``/``counts``: (T, E), e.g. the spatial sum and pixel count of each factor's
    weight on each date over a region (what :mod:`ismoe_qgis.model.prediction_folder` streams).
    ``member_sums`` (N, T, E): an ensemble's members' sums over the same pixels; the spread of a period's
    mean weight is then the standard deviation (ddof 0) of the members' means.
    """
    d = as_dates(dates)
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    factors = [str(f) for f in factors]
    _check_shape(sums, (len(d), len(factors)), "sums")
    _check_shape(counts, (len(d), len(factors)), "counts")
    table = ImportanceTable(factors)
    for kind in kinds:
        codes, labels = period_codes(d, kind)
        p = len(labels)
        s = np.zeros((p, len(factors)))
        n = np.zeros((p, len(factors)), dtype=np.int64)
        np.add.at(s, codes, np.where(counts > 0, sums, 0.0))
        np.add.at(n, codes, counts)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, s / np.maximum(n, 1), np.nan)
        spread = None
        if member_sums is not None:
            ms = np.asarray(member_sums, np.float64)
            per = np.zeros((ms.shape[0], p, len(factors)))
            for k in range(ms.shape[0]):
                np.add.at(per[k], codes, np.where(counts > 0, ms[k], 0.0))
            with np.errstate(invalid="ignore", divide="ignore"):
                spread = np.where(n > 0, (per / np.maximum(n, 1)).std(axis=0), np.nan)
        table.add(PeriodSeries(region=str(region), kind=kind, periods=list(labels), mean=mean, n=n,
                               factors=factors, spread=spread))
    return table


def importance_from_band_sums(bands: Sequence[str], sums, counts, factors: Sequence[str],
                              region: str = DEFAULT_REGION) -> ImportanceTable:
    """The variance-share table (measure ``variance_share``, kinds month and season) of one region from the
    spatial sums and counts of the share bands (``contribution_stats.SHARE_BANDS``: "period", "1".."12",
    "DJF".."SON"; sums/counts (B, E)), as model/prediction_folder.py streams them from
    variance_share_<factor>.tif. A period none of whose pixels has a share is left out."""
    sums = np.asarray(sums, np.float64)
    counts = np.asarray(counts, np.int64)
    factors = [str(f) for f in factors]
    bands = [str(b) for b in bands]
    _check_shape(sums, (len(bands), len(factors)), "sums")
    _check_shape(counts, (len(bands), len(factors)), "counts")
    table = ImportanceTable(factors, measure=VARIANCE_SHARE)
    for kind, periods in (("month", list(range(1, 13))), ("season", list(SEASONS))):
        rows = [(p, bands.index(str(p))) for p in periods if str(p) in bands]
        rows = [(p, b) for p, b in rows if counts[b].any()]
        if not rows:
            continue
        idx = [b for _p, b in rows]
        n = counts[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, sums[idx] / np.maximum(n, 1), np.nan)
        table.add(PeriodSeries(region=str(region), kind=kind, periods=[p for p, _b in rows], mean=mean, n=n,
                               factors=factors))
    return table


def seasonal_importance(dates, weights, factors: Sequence[str], groups: Optional[Sequence] = None,
                        kinds: Sequence[str] = PERIOD_KINDS, region: str = DEFAULT_REGION,
                        nodata: Optional[float] = None) -> ImportanceTable:
    """Mean routing weight per factor by month, season and day of year.

    dates: (T,) days; weights: (T, E) or (T, E, N) (N locations, e.g. stations or
    pixels); factors: E names. NaN (and ``nodata`` when given) weights are ignored.
    groups: optional (N,) labels (e.g. the region of each station): one region per
    distinct label, in order of first appearance. Without groups all locations are
    pooled into one region named ``region``.
    """
    d = as_dates(dates)
    w = np.asarray(weights, dtype=np.float64)
    factors = [str(f) for f in factors]
    if len(set(factors)) != len(factors):
        raise ImportanceError("factor names must be unique, got {}".format(factors))
    if w.ndim == 2:
        w = w[:, :, None]
    if w.ndim != 3:
        raise ImportanceError("weights must be (T, E) or (T, E, N), got shape {}".format(w.shape))
    if w.shape[0] != len(d):
        raise ImportanceError("weights have {} dates but {} dates were given".format(w.shape[0], len(d)))
    if w.shape[1] != len(factors):
        raise ImportanceError("weights have {} factors but {} factor names were given ({})".format(
            w.shape[1], len(factors), ", ".join(factors)))
    if nodata is not None:
        w = np.where(w == nodata, np.nan, w)
    valid = np.isfinite(w)
    wz = np.where(valid, w, 0.0)
    if groups is None:
        return importance_from_sums(d, wz.sum(axis=2), valid.sum(axis=2), factors, region, kinds)
    labels = list(groups)
    if len(labels) != w.shape[2]:
        raise ImportanceError("{} group labels for {} locations".format(len(labels), w.shape[2]))
    order: List = []
    for g in labels:
        if g not in order:
            order.append(g)
    table = ImportanceTable(factors)
    for g in order:
        idx = np.array([i for i, lab in enumerate(labels) if lab == g])
        part = importance_from_sums(d, wz[:, :, idx].sum(axis=2), valid[:, :, idx].sum(axis=2),
                                    factors, str(g), kinds)
        table = table.merge(part)
    return table


def _check_shape(arr, shape, name):
    if arr.shape != tuple(shape):
        raise ImportanceError("{} must have shape {} (dates, factors), got {}".format(name, tuple(shape), arr.shape))


# --------------------------------------------------------------------------- CSV
def write_importance_csv(table: ImportanceTable, path: str) -> str:
    """Write the table as CSV (columns :data:`CSV_COLUMNS`), atomically; returns the path."""
    from ..fileutil import atomic_output
    with atomic_output(path, ".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        wr = csv.writer(fh)
        share = table.measure != WEIGHT
        wr.writerow(CSV_COLUMNS + ("spread",) + (("measure",) if share else ()))
        for (region, kind), s in table._series.items():
            for i, period in enumerate(s.periods):
                for j, factor in enumerate(table.factors):
                    mean, n = float(s.mean[i, j]), int(s.n[i, j])
                    sp = float("nan") if s.spread is None else float(s.spread[i, j])
                    wr.writerow([region, kind, period, factor, "" if math.isnan(mean) else "{:.6f}".format(mean), n,
                                 "" if math.isnan(sp) else "{:.6f}".format(sp)] + ([table.measure] if share else []))
    return path


def read_importance_csv(path: str, strict: bool = True) -> ImportanceTable:
    """Read a CSV written by :func:`write_importance_csv` (extra columns are ignored); the one reader of the
    file (the dock, ismoe:seasonalimportance and the evaluation report read through it). ``strict=False``
    (the report): column names in any case, and rows that cannot be read are dropped instead of refused."""
    if not os.path.isfile(path):
        raise ImportanceError("importance CSV not found: {}".format(path))
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rd = csv.DictReader(fh)
        if not strict and rd.fieldnames:
            rd.fieldnames = [str(c).strip().lower() for c in rd.fieldnames]
        header = rd.fieldnames or []
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ImportanceError("{} is not a seasonal-importance CSV: missing column(s) {} (expected {})".format(
                os.path.basename(path), ", ".join(missing), ", ".join(CSV_COLUMNS)))
        return table_from_rows(rd, os.path.basename(path), first_line=2, strict=strict)


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def table_from_rows(rows: Iterable[Mapping], label: str = "importance rows", first_line: int = 1,
                    strict: bool = True) -> ImportanceTable:
    """A table from rows with the CSV's columns (:data:`CSV_COLUMNS`, optional ``spread``; text or numbers,
    an empty mean_weight/spread is NaN, an empty n 0). A row that cannot be read: ImportanceError naming
    ``label`` and the line, or with ``strict=False`` the row is dropped (and an empty region is 'all')."""
    factors: List[str] = []
    cells: Dict[Tuple[str, str], Dict] = {}
    measures = set()
    for lineno, row in enumerate(rows, start=first_line):
        region, kind, period, factor = (row.get("region"), _text(row.get("period_kind")), _text(row.get("period")),
                                        row.get("factor"))
        if not strict:
            region, kind = region or DEFAULT_REGION, kind.lower()
            if kind not in PERIOD_KINDS or not factor:
                continue
        if kind not in PERIOD_KINDS:
            raise ImportanceError("{} line {}: period_kind {!r} is not one of {}".format(
                label, lineno, kind, ", ".join(PERIOD_KINDS)))
        try:
            p = _parse_period(kind, period)
            mean = float(row["mean_weight"]) if _text(row.get("mean_weight")) else float("nan")
            n = int(float(row["n"])) if _text(row.get("n")) else 0
            sp = row.get("spread")
            sp = float(sp) if _text(sp) else float("nan")
        except (TypeError, ValueError) as exc:
            if not strict:
                continue
            raise ImportanceError("{} line {}: {}".format(label, lineno, exc))
        if not strict and math.isnan(mean):
            continue
        measure = _text(row.get("measure")) or WEIGHT
        if measure not in MEASURE_TITLES:
            raise ImportanceError("{} line {}: measure {!r} is not one of {}".format(
                label, lineno, measure, ", ".join(MEASURE_TITLES)))
        measures.add(measure)
        if factor not in factors:
            factors.append(factor)
        cells.setdefault((region, kind), {})[(p, factor)] = (mean, n, sp)
    if not cells:
        raise ImportanceError("{} holds no importance rows".format(label))
    if len(measures) > 1:
        raise ImportanceError("{} mixes measures ({}): one table holds one".format(label, ", ".join(sorted(measures))))
    table = ImportanceTable(factors, measure=measures.pop() if measures else WEIGHT)
    for (region, kind), values in cells.items():
        periods = sorted({p for (p, _f) in values}, key=lambda p: _period_sort_key(kind, p))
        mean = np.full((len(periods), len(factors)), np.nan)
        spread = np.full((len(periods), len(factors)), np.nan)
        n = np.zeros((len(periods), len(factors)), dtype=np.int64)
        pidx = {p: i for i, p in enumerate(periods)}
        for (p, f), (m, c, sp) in values.items():
            mean[pidx[p], factors.index(f)] = m
            n[pidx[p], factors.index(f)] = c
            spread[pidx[p], factors.index(f)] = sp
        table.add(PeriodSeries(region=region, kind=kind, periods=periods, mean=mean, n=n, factors=factors,
                               spread=None if np.isnan(spread).all() else spread))
    return table


def _parse_period(kind, text):
    if kind == "season":
        if text.upper() not in SEASONS:
            raise ValueError("season {!r} is not one of {}".format(text, ", ".join(SEASONS)))
        return text.upper()
    value = int(float(text))
    hi = 12 if kind == "month" else 366
    if not 1 <= value <= hi:
        raise ValueError("{} {} is outside 1..{}".format(kind, value, hi))
    return value


def _period_sort_key(kind, p):
    return SEASONS.index(p) if kind == "season" else p


def period_label(kind: str, period) -> str:
    """Human label of a period: 'Jan', 'DJF', '183'."""
    if kind == "month":
        return MONTH_ABBR[int(period) - 1]
    return str(period)


def table_from_mapping(factors: Sequence[str], region_series: Mapping[str, Tuple[np.ndarray, np.ndarray, np.ndarray]],
                       kinds: Sequence[str] = PERIOD_KINDS) -> ImportanceTable:
    """Table of several regions from ``{region: (dates, sums (T,E), counts (T,E))}``."""
    table = ImportanceTable(factors)
    for region, (dates, sums, counts) in region_series.items():
        table = table.merge(importance_from_sums(dates, sums, counts, factors, region, kinds))
    return table
