"""Date cursor of the dock's charts (no Qt, no qgis): where a date sits on a chart axis and which date a
click on an axis means. The numbers the charts show come from the core: the prediction folder's reader
(:mod:`ismoe_qgis.model.prediction_folder`) and the chart series and ticks
(:mod:`ismoe_qgis.model.importance_chart`, shared with the headless matplotlib chart).
"""
from __future__ import annotations

import math

import numpy as np

from ..model import importance as imp
from ..model.prediction_folder import ChartDataError

# --------------------------------------------------------------------------- date cursor
# "time": a real time axis in seconds since 1970-01-01 UTC (the pixel inspector's DateAxisItem,
# a date plotted at its 00:00 UTC). The period kinds place a date inside its period: month m
# spans m - 0.5 .. m + 0.5 (m itself mid-month), season s (1..4) spans s - 0.5 .. s + 0.5 over
# its three months in the order D J F / M A M / J J A / S O N, day of year d is at d.
_SEASON_MONTHS = ((12, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11))


def _day(date) -> np.datetime64:
    return np.datetime64(str(date)[:10], "D") if not isinstance(date, np.datetime64) else date.astype("datetime64[D]")


def _month_len(year: int, month: int) -> int:
    m = np.datetime64("{:04d}-{:02d}".format(year, month), "M")
    return int(((m + 1).astype("datetime64[D]") - m.astype("datetime64[D]")).astype(int))


def date_position(kind: str, date) -> float:
    """x of a date on a chart axis: ``kind`` month | season | doy | time (see above)."""
    d = _day(date)
    if kind == "time":
        return float(d.astype("datetime64[s]").astype(np.int64))
    if kind == "doy":
        return float(imp.doy_of([d])[0])
    year = int(str(d)[:4])
    month = int(imp.months_of([d])[0])
    frac = (int(str(d)[8:10]) - 0.5) / _month_len(year, month)   # 0..1 within the month
    if kind == "month":
        return month - 0.5 + frac
    if kind == "season":
        s = int(imp.seasons_of([d])[0])
        k = _SEASON_MONTHS[s].index(month)
        return s + 1 - 0.5 + (k + frac) / 3.0
    raise ChartDataError("unknown axis kind {!r}".format(kind))


def date_at_position(kind: str, x: float, dates=None, near=None) -> np.datetime64:
    """The date at ``x`` on a chart axis (the inverse of :func:`date_position`).

    On a period axis the day is placed in the year of ``near`` (a date, e.g. the current
    Temporal Controller date; else the first of ``dates``; else 1970) and then snapped to the
    nearest of ``dates`` (the prediction's dates) in the same period, when there is one. On the
    time axis it is the nearest of ``dates`` (else the day at x).
    """
    dd = None if dates is None or len(dates) == 0 else np.asarray(dates).astype("datetime64[D]")
    x = float(x)
    if kind == "time":
        day = np.datetime64(int(math.floor(x / 86400.0 + 0.5)), "D")
        return dd[int(np.argmin(np.abs((dd - day).astype(np.int64))))] if dd is not None else day
    ref = _day(near) if near is not None else (dd[0] if dd is not None else np.datetime64("1970-01-01"))
    year = int(str(ref)[:4])
    if kind == "doy":
        doy = int(min(max(round(x), 1), 366))
        start = np.datetime64("{:04d}-01-01".format(year), "D")
        day = min(start + (doy - 1), np.datetime64("{:04d}-12-31".format(year), "D"))
    elif kind in ("month", "season"):
        if kind == "month":
            month = int(min(max(round(x), 1), 12))
            frac = x - (month - 0.5)
        else:
            s = int(min(max(round(x), 1), 4))
            pos = min(max((x - (s - 0.5)) * 3.0, 0.0), 2.999999)
            month = _SEASON_MONTHS[s - 1][int(pos)]
            frac = pos - int(pos)
        n = _month_len(year, month)
        day = np.datetime64("{:04d}-{:02d}-{:02d}".format(year, month, int(min(max(frac, 0.0), 0.999999) * n) + 1),
                            "D")
    else:
        raise ChartDataError("unknown axis kind {!r}".format(kind))
    if dd is not None:
        codes = {"doy": imp.doy_of, "month": imp.months_of, "season": imp.seasons_of}[kind]
        same = dd[codes(dd) == codes([day])[0]]
        if same.size:
            return same[int(np.argmin(np.abs((same - day).astype(np.int64))))]
    return day
