"""Variance-share importance: each factor's share of the variance of what it contributes to SM at a pixel.

For the additive and gated mixtures SM = mu + sum_e c_e (gated: c_e is the gated contribution g_e c_e). The
variance share of factor e at a pixel over a period is

    share_e = Var_t(c_e) / sum_f Var_t(c_f)

over the period's valid days at that pixel (population variance, ddof 0). A factor that moves SM day to day has
a large share; a contribution that is constant at the pixel (a regional level, the intercept a factor can
carry) has none, unlike the daily weight rasters, which measure departures from one training-wide reference
(``options.WEIGHT_MEANING``). Shares sum to 1 at every pixel with at least two valid days and some variance.

Seasons: the same share within each calendar month and meteorological season (DJF, MAM, JJA, SON; all the
years of the period pooled, December in the DJF of its own year like model/importance.py), so the dock and
ismoe:seasonalimportance chart "which factor moves SM when" from the contributions instead of the daily weights.
A prediction folder's variance_share_<factor>.tif holds them as bands (``SHARE_BANDS``): 1 the whole period,
2-13 the months, 14-17 the seasons; nodata where a pixel has fewer than two valid days in the band's period.

Streaming: the tile loop (model/inference.py, serial or Dask) computes per-chunk statistics (n, mean, M2) of
each pixel's contributions per calendar month of the chunk's days (``monthly_stats``); the writer merges the
chunks of a tile with Chan et al.'s pairwise update (``merge``), which is exact and stable in any order, derives
the seasons and the whole period by merging months (disjoint sets of days), and writes a tile's shares as soon
as all its chunks are in (``ShareAccumulator``), so memory is a few tiles' worth whatever the raster size.
No qgis import.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..options import VARIANCE_SHARE_MIXTURES
from .importance import MONTH_ABBR, SEASON_MONTHS, SEASONS, months_of

# the bands of a variance_share_<factor>.tif: the whole period, the 12 calendar months, the 4 seasons, and the
# calendar months each band pools
SHARE_BANDS: Tuple[str, ...] = ("period",) + tuple(str(m) for m in range(1, 13)) + SEASONS
BAND_MONTHS: Tuple[Tuple[int, ...], ...] = ((tuple(range(1, 13)),) + tuple((m,) for m in range(1, 13))
                                            + tuple(SEASON_MONTHS[s] for s in SEASONS))
MIN_DAYS = 2      # valid days a pixel needs in a period for a share there

VARIANCE_SHARE_MEANING = ("share of the prediction period's variance of the factor's contribution at the pixel: "
                          "Var_t(c_e) / sum_f Var_t(c_f), where SM = mu + sum_e c_e (gated: c_e = g_e c_e); "
                          "a contribution constant at the pixel has no share")


def defined_for(mixture: str) -> bool:
    """Whether the variance share is defined for a network's (effective) mixture: the estimate must be mu plus
    the sum of the contributions (additive, gated); convex mixes full SM estimates, scaled scales router
    weights over contributions."""
    return mixture in VARIANCE_SHARE_MIXTURES


def chunk_stats(contrib: np.ndarray, valid: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-pixel statistics of one time chunk: contrib (E, T, h, w), valid (T, h, w) (the days with every input
    at the pixel). Returns {"n": (h, w) int64, "mean": (E, h, w) float64, "m2": (E, h, w) float64 (sum of squared
    departures from the chunk mean)}."""
    c = np.asarray(contrib, np.float64)
    ok = np.asarray(valid, bool)
    if c.ndim != 4 or c.shape[1:] != ok.shape:
        raise ValueError(f"contributions {c.shape} do not match the valid mask {ok.shape}")
    n = ok.sum(axis=0).astype(np.int64)
    cz = np.where(ok[None], c, 0.0)
    mean = cz.sum(axis=1) / np.maximum(n, 1)
    m2 = np.where(ok[None], (c - mean[:, None]) ** 2, 0.0).sum(axis=1)
    return {"n": n, "mean": mean, "m2": m2}


def monthly_stats(contrib: np.ndarray, valid: np.ndarray, dates) -> Dict[int, Dict[str, np.ndarray]]:
    """``chunk_stats`` of each calendar month (1..12) present in the chunk's output `dates` (T,):
    ``{month: stats}``, what the tile loop hands the writer (a 64-day chunk touches at most 3 months)."""
    months = months_of(dates)
    if len(months) != np.asarray(valid).shape[0]:
        raise ValueError(f"{len(months)} dates for a chunk of {np.asarray(valid).shape[0]} days")
    return {int(m): chunk_stats(contrib[:, months == m], np.asarray(valid)[months == m])
            for m in np.unique(months)}


def merge(a: Optional[Dict[str, np.ndarray]], b: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The statistics of two disjoint sets of days (Chan, Golub & LeVeque's pairwise update); a may be None."""
    if a is None:
        return {k: np.array(v, copy=True) for k, v in b.items()}
    na, nb = a["n"], b["n"]
    n = na + nb
    frac = np.where(n > 0, nb / np.maximum(n, 1), 0.0)
    delta = b["mean"] - a["mean"]
    mean = a["mean"] + delta * frac
    m2 = a["m2"] + b["m2"] + delta ** 2 * (na * frac)
    return {"n": n, "mean": mean, "m2": m2}


def shares(stats: Dict[str, np.ndarray], min_days: int = 2) -> np.ndarray:
    """(E, h, w) float32 variance shares from merged statistics; NaN where a pixel has fewer than `min_days`
    valid days or no contribution varies there."""
    n, m2 = stats["n"], stats["m2"]
    var = m2 / np.maximum(n, 1)
    tot = var.sum(axis=0)
    ok = (n >= min_days) & (tot > 0)
    out = np.full(var.shape, np.nan, np.float32)
    out[:, ok] = (var[:, ok] / tot[ok]).astype(np.float32)
    return out


def _merged(by_month: Dict[int, Dict[str, np.ndarray]], months) -> Optional[Dict[str, np.ndarray]]:
    out = None
    for m in months:
        if m in by_month:
            out = merge(out, by_month[m])
    return out


def band_shares(by_month: Dict[int, Dict[str, np.ndarray]], shape) -> np.ndarray:
    """(len(SHARE_BANDS), E, h, w) float32 shares of one tile from its merged monthly statistics: the whole
    period, each month, each season (NaN where a period has no day or too few valid days)."""
    out = np.full((len(SHARE_BANDS),) + tuple(shape), np.nan, np.float32)
    for b, months in enumerate(BAND_MONTHS):
        st = _merged(by_month, months)
        if st is not None:
            out[b] = shares(st, MIN_DAYS)
    return out


def band_description(factor: str, band: str, first: str, last: str) -> str:
    """The band description of a variance_share_<factor>.tif band (SHARE_BANDS)."""
    if band == "period":
        return f"{factor} variance share {first}/{last}"
    if band in SEASONS:
        return f"{factor} variance share {band} ({first}/{last})"
    return f"{factor} variance share {MONTH_ABBR[int(band) - 1]} ({first}/{last})"


class ShareAccumulator:
    """Merges the monthly chunk statistics of each tile as they arrive (any order) and hands back a tile's band
    shares (``band_shares``) once all `chunks_per_tile` of its output chunks are in. Also keeps the area sums of
    the whole-period shares for the mean over the valid pixels (``area_mean``)."""

    def __init__(self, factors: Sequence[str], chunks_per_tile: int):
        self.factors = list(factors)
        self.chunks_per_tile = int(chunks_per_tile)
        self._open: Dict[Tuple[int, int], tuple] = {}
        self._sum = np.zeros(len(self.factors), np.float64)
        self._count = 0

    def add(self, r0: int, c0: int, by_month: Dict[int, Dict[str, np.ndarray]]) -> Optional[np.ndarray]:
        """Add one chunk of tile (r0, c0) (``monthly_stats``); returns the tile's band shares
        (len(SHARE_BANDS), E, h, w) when it is complete, else None."""
        key = (int(r0), int(c0))
        merged, seen = self._open.get(key, ({}, 0))
        for m, st in by_month.items():
            merged[m] = merge(merged.get(m), st)
        seen += 1
        if seen < self.chunks_per_tile:
            self._open[key] = (merged, seen)
            return None
        self._open.pop(key, None)
        if not merged:
            return None
        shape = next(iter(merged.values()))["mean"].shape
        sh = band_shares(merged, shape)
        ok = np.isfinite(sh[0]).all(axis=0)
        self._sum += sh[0][:, ok].sum(axis=1)
        self._count += int(ok.sum())
        return sh

    @property
    def incomplete(self) -> int:
        """Tiles with some but not all of their chunks (0 at the end of a complete prediction)."""
        return len(self._open)

    def area_mean(self) -> Dict[str, Optional[float]]:
        """Each factor's mean whole-period share over the pixels that have one (None where no pixel has)."""
        if self._count == 0:
            return {f: None for f in self.factors}
        return {f: round(float(s / self._count), 6) for f, s in zip(self.factors, self._sum)}
