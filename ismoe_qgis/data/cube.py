"""The dataset cube: factor variables aligned on one grid and one daily calendar, plus the target.

It is stored whole (not as pre-cut patches): training windows are cut on the fly.
File format: see docs/architecture.md ("Dataset cube file").
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ..fileutil import atomic_output
from ..version import __version__

GAP_POLICIES = ("skip", "fill")


@dataclass
class Cube:
    x: np.ndarray                   # float32 (V, T, H, W), raw units, NaN = nodata
    y: np.ndarray                   # float32 (T, N), NaN = missing
    target_rows: np.ndarray         # int32 (N,)
    target_cols: np.ndarray         # int32 (N,)
    dates: np.ndarray               # datetime64[D] (T,)
    factors: Dict[str, List[str]]   # factor -> variables
    variables: List[str]
    grid: dict                      # {crs_wkt, transform[6], width, height}
    patch_size: int = 7
    seq_len: int = 14
    target_kind: str = "grid"
    station_ids: Optional[List[str]] = None
    x_mean: Optional[List[float]] = None
    x_std: Optional[List[float]] = None
    y_mean: Optional[float] = None
    y_std: Optional[float] = None

    def __post_init__(self):
        self.x = np.asarray(self.x, dtype=np.float32)
        self.y = np.asarray(self.y, dtype=np.float32)
        self.target_rows = np.asarray(self.target_rows, dtype=np.int32)
        self.target_cols = np.asarray(self.target_cols, dtype=np.int32)
        self.dates = np.asarray(self.dates).astype("datetime64[D]")
        V, T, H, W = self.x.shape
        if len(self.variables) != V:
            raise ValueError(f"cube has {V} variables but {len(self.variables)} names")
        if self.y.shape != (T, len(self.target_rows)):
            raise ValueError(f"target shape {self.y.shape} does not match {T} dates x {len(self.target_rows)} locations")
        if len(self.dates) != T:
            raise ValueError(f"{len(self.dates)} dates for {T} time steps")
        if len(self.dates) > 1 and (np.diff(self.dates) <= np.timedelta64(0, "D")).any():
            raise ValueError("dates must be strictly increasing (duplicated dates?)")
        if self.x_mean is None:
            self.compute_stats()

    @property
    def n_dates(self):
        return self.x.shape[1]

    def compute_stats(self):
        """Normalisation statistics: per-variable mean/std over all valid cells, target mean/std."""
        means, stds = [], []
        for v in range(self.x.shape[0]):
            xv = self.x[v]
            m = float(np.nanmean(xv)) if np.isfinite(xv).any() else 0.0
            s = float(np.nanstd(xv)) if np.isfinite(xv).any() else 1.0
            means.append(m)
            stds.append(s if s > 1e-12 else 1.0)
        self.x_mean, self.x_std = means, stds
        finite = np.isfinite(self.y)
        if not finite.any():
            raise ValueError("the target has no valid value: check the TARGET layer, its nodata and its dates")
        self.y_mean = float(self.y[finite].mean())
        s = float(self.y[finite].std())
        self.y_std = s if s > 1e-12 else 1.0

    def meta(self) -> dict:
        return {
            "factors": self.factors, "variables": self.variables, "grid": self.grid,
            "x_mean": self.x_mean, "x_std": self.x_std, "y_mean": self.y_mean, "y_std": self.y_std,
            "patch_size": self.patch_size, "seq_len": self.seq_len, "target_kind": self.target_kind,
            "station_ids": self.station_ids, "version": __version__,
        }

    def save(self, path: str):
        """Write the cube atomically (temporary file, then rename)."""
        with atomic_output(path, ".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, x=self.x, y=self.y, target_rows=self.target_rows, target_cols=self.target_cols,
                     dates=self.dates.astype("datetime64[D]").astype("int64"),
                     meta=np.array(json.dumps(self.meta())))

    @classmethod
    def load(cls, path: str) -> "Cube":
        if not os.path.exists(path):
            raise FileNotFoundError(f"dataset file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in ("x", "y", "target_rows", "target_cols", "dates")}
        except (KeyError, ValueError, OSError) as e:
            raise ValueError(f"{path} is not an ismoe dataset file ({e}); create one with 'ismoe:preparedataset'")
        return cls(x=arrays["x"], y=arrays["y"], target_rows=arrays["target_rows"],
                   target_cols=arrays["target_cols"], dates=arrays["dates"].astype("datetime64[D]"),
                   factors=meta["factors"], variables=meta["variables"], grid=meta["grid"],
                   patch_size=meta["patch_size"], seq_len=meta["seq_len"],
                   target_kind=meta.get("target_kind", "grid"), station_ids=meta.get("station_ids"),
                   x_mean=meta["x_mean"], x_std=meta["x_std"], y_mean=meta["y_mean"], y_std=meta["y_std"])

    def normalised_x(self) -> np.ndarray:
        """(V, T, H, W) normalised, NaN kept (callers decide how to fill)."""
        m = np.asarray(self.x_mean, np.float32)[:, None, None, None]
        s = np.asarray(self.x_std, np.float32)[:, None, None, None]
        return (self.x - m) / s

    def location_labels(self) -> List[str]:
        if self.station_ids:
            return list(self.station_ids)
        return [f"pixel {r},{c}" for r, c in zip(self.target_rows, self.target_cols)]

    def centre_valid(self) -> np.ndarray:
        """bool (T, N): every variable is valid at the target pixel on that date."""
        xc = self.x[:, :, self.target_rows, self.target_cols]          # V, T, N
        return np.isfinite(xc).all(axis=0)

    def sample_mask(self, t_mask: np.ndarray, gap_policy: str = "skip") -> np.ndarray:
        """bool (T, N), True at the valid training samples (t, n): target valid at t, window
        [t-L+1, t] inside the series, and, with gap_policy 'skip', all variables valid at the target
        pixel over the window. With 'fill', missing inputs are filled with the variable mean
        (0 after normalisation)."""
        if gap_policy not in GAP_POLICIES:
            raise ValueError(f"GAP_POLICY must be one of {GAP_POLICIES}, got '{gap_policy}'")
        L = self.seq_len
        ok = np.isfinite(self.y) & np.asarray(t_mask, bool)[:, None]
        ok[:L - 1] = False
        if gap_policy == "skip":
            bad = (~self.centre_valid()).astype(np.int32)
            c = np.concatenate([np.zeros((1, bad.shape[1]), np.int32), np.cumsum(bad, axis=0)])
            win_bad = np.zeros_like(bad)
            win_bad[L - 1:] = c[L:] - c[:-L]
            ok &= win_bad == 0
        return ok

    def sample_index(self, t_mask: np.ndarray, gap_policy: str = "skip"):
        """The valid samples of ``sample_mask`` as int arrays (t_idx, n_idx)."""
        t_idx, n_idx = np.nonzero(self.sample_mask(t_mask, gap_policy))
        return t_idx.astype(np.int64), n_idx.astype(np.int64)

    def why_no_samples(self, n: int, t_mask: np.ndarray) -> str:
        """Why location n has no valid sample in the period t_mask, in words that name the layer:
        the variables (and their factors) with no data at its pixel there, or the target."""
        t_mask = np.asarray(t_mask, bool)
        r, c = int(self.target_rows[n]), int(self.target_cols[n])
        factor_of = {v: f for f, vs in self.factors.items() for v in vs}
        xc = self.x[:, t_mask, r, c]                                     # V, T'
        empty = [v for v, ok in zip(self.variables, np.isfinite(xc).any(axis=1)) if not ok]
        if empty:
            return "no data at its pixel in " + ", ".join(f"layer '{v}' (factor {factor_of.get(v, '?')})"
                                                          for v in empty)
        if not np.isfinite(self.y[t_mask, n]).any():
            return "no soil-moisture observation in the period"
        gappy = [v for v, frac in zip(self.variables, np.isfinite(xc).mean(axis=1)) if frac < 1]
        return (f"every {self.seq_len}-day input window has a gap in "
                + ", ".join(f"layer '{v}' (factor {factor_of.get(v, '?')})" for v in gappy)
                + " at its pixel (GAP_POLICY=fill uses such windows)") if gappy else \
            "no observation day has a complete input window in the period"

    def location_sample_counts(self, masks: dict, gap_policy: str = "skip") -> dict:
        """{period name: int (N,) number of valid samples per location} for period masks {name: (T,)}."""
        return {k: self.sample_mask(m, gap_policy).sum(axis=0).astype(np.int64) for k, m in masks.items()}


def split_masks(dates: np.ndarray, val_start=None, test_start=None, val_fraction=0.15, test_fraction=0.25):
    """Time split: train < val_start <= val < test_start <= test.

    Defaults: the last `test_fraction` of the dates is the test period and the
    `val_fraction` before it the validation period. Returns bool masks (train, val, test)."""
    dates = np.asarray(dates).astype("datetime64[D]")
    T = len(dates)
    if test_start is None:
        test_start = dates[min(T - 1, int(round(T * (1 - test_fraction))))]
    test_start = np.datetime64(test_start, "D")
    if val_start is None:
        n_before = int((dates < test_start).sum())
        val_start = dates[max(0, int(round(n_before * (1 - val_fraction / (1 - test_fraction)))))] \
            if n_before else test_start
    val_start = np.datetime64(val_start, "D")
    if val_start > test_start:
        raise ValueError(f"VAL_START ({val_start}) must not be after TEST_START ({test_start})")
    train = dates < val_start
    val = (dates >= val_start) & (dates < test_start)
    test = dates >= test_start
    return train, val, test
