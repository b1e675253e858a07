"""The dataset cube: factor variables aligned on one grid and one daily calendar, plus the target.

It is stored whole (not as pre-cut patches): training windows are cut on the fly.
File formats (docs/architecture.md "Dataset cube file"): a ``.npz`` file (format ``ismoe-cube/1``, loaded whole)
or a ``.zarr`` folder (``ismoe-cube-zarr/1``, chunked, opened lazily: ``x`` is then a
``zarrcube.LazyCubeArray`` that reads chunks on demand; see zarrcube.py). ``Cube.load`` tells them apart by
the path, ``Cube.save`` by the extension.
"""
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from ..fileutil import atomic_output
from ..options import GAP_POLICIES
from ..version import __version__

NPZ_FORMAT = "ismoe-cube/1"     # the .npz layout (every file written so far); the Zarr one: zarrcube.ZARR_FORMAT
_ARRAYS = ("x", "y", "target_rows", "target_cols", "dates")


class DatasetFileError(ValueError):
    """A dataset file that cannot be used; the message names the file and what is wrong with it."""


def _zip_reason(e) -> str:
    text = str(e) or type(e).__name__
    if "pickle" in text.lower():
        return "it holds pickled Python objects, which are not read (they could run code)"
    return text


def _finite_mean_std(a: np.ndarray, chunk: int = 1 << 22):
    """(mean, std) in float64 over the finite values of a, by chunks (bounded extra memory); (0, 1)
    without finite values; std 1 when it is ~0 or not finite."""
    flat = np.asarray(a).reshape(-1)
    n, total = 0, 0.0
    for i in range(0, flat.size, chunk):
        c = flat[i:i + chunk]
        c = c[np.isfinite(c)].astype(np.float64)
        n += c.size
        total += float(c.sum())
    if n == 0:
        return 0.0, 1.0
    mean = total / n
    sq = 0.0
    for i in range(0, flat.size, chunk):
        c = flat[i:i + chunk]
        c = c[np.isfinite(c)].astype(np.float64)
        sq += float(((c - mean) ** 2).sum())
    std = (sq / n) ** 0.5
    if not np.isfinite(mean):
        mean = 0.0
    if not np.isfinite(std) or std <= 1e-12:
        std = 1.0
    return float(mean), float(std)


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
        if not is_lazy(self.x):         # a Zarr cube's values stay on disk (zarrcube.LazyCubeArray)
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
        """Normalisation statistics: per-variable mean/std over all finite cells, target mean/std.

        Computed in float64 over the finite values only (inf is ignored like NaN), so float32 values
        near its limit cannot overflow; a statistic that still is not finite is never stored (mean 0,
        std 1: the variable is then used unscaled)."""
        means, stds = [], []
        for v in range(self.x.shape[0]):
            m, s = _finite_mean_std(self.x[v])
            means.append(m)
            stds.append(s)
        self.x_mean, self.x_std = means, stds
        if not np.isfinite(self.y).any():
            raise ValueError("the target has no valid value: check the TARGET layer, its nodata and its dates")
        self.y_mean, self.y_std = _finite_mean_std(self.y)

    def meta(self) -> dict:
        return {
            "factors": self.factors, "variables": self.variables, "grid": self.grid,
            "x_mean": self.x_mean, "x_std": self.x_std, "y_mean": self.y_mean, "y_std": self.y_std,
            "patch_size": self.patch_size, "seq_len": self.seq_len, "target_kind": self.target_kind,
            "station_ids": self.station_ids, "version": __version__,
        }

    @property
    def lazy(self) -> bool:
        """True for a cube opened from Zarr: its values are read from disk on demand."""
        return is_lazy(self.x)

    def save(self, path: str, chunks=None):
        """Write the cube atomically (temporary file or folder, then rename): a ``.zarr`` path as a chunked Zarr
        folder (chunks: (V, days, rows, cols), default zarrcube.default_chunks), any other as ``.npz``."""
        from . import zarrcube
        if os.fspath(path).rstrip("/\\").lower().endswith(".zarr"):
            zarrcube.write_cube(self, path, chunks)
            return
        with atomic_output(path, ".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, x=self.x, y=self.y, target_rows=self.target_rows, target_cols=self.target_cols,
                     dates=self.dates.astype("datetime64[D]").astype("int64"),
                     meta=np.array(json.dumps(self.meta())))

    @classmethod
    def load(cls, path: str) -> "Cube":
        """Read a dataset file, validated before use: a missing, truncated or corrupt file, a file of
        another kind, missing arrays or header items, inconsistent shapes, target locations outside the
        grid, and non-finite statistics or inf values are all a DatasetFileError naming the file and
        what is wrong (never a numpy/zipfile traceback)."""
        path = os.fspath(path)
        from . import zarrcube
        if zarrcube.is_zarr_path(path):          # a .zarr folder (or a metadata file in one): opened lazily
            return zarrcube.open_cube(path, cls)
        if not os.path.exists(path):
            raise FileNotFoundError(f"dataset file not found: {path}")
        if os.path.isdir(path):
            raise DatasetFileError(f"{path} is a folder, not a dataset file: give the .npz file written by "
                                   f"'ismoe:preparedataset'")
        hint = "; create it again with 'ismoe:preparedataset'"
        with open(path, "rb") as f:
            head = f.read(4)
        if not head.startswith(b"PK\x03\x04"):
            what = "the file is empty" if not head else "its bytes are not a .npz archive"
            raise DatasetFileError(f"{path} is not an ismoe dataset file: {what}{hint}")
        try:
            z = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise DatasetFileError(f"{path} is truncated or damaged ({_zip_reason(e)}){hint}") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DatasetFileError(f"{path} is not an ismoe dataset file: it holds a single array, not the "
                                   f"dataset arrays and header{hint}")
        try:
            with z:
                missing = [k for k in _ARRAYS + ("meta",) if k not in z.files]
                if missing:
                    raise DatasetFileError(f"{path} is not an ismoe dataset file: it lacks "
                                           f"{', '.join(missing)}{hint}")
                try:
                    meta = json.loads(str(z["meta"]))
                    arrays = {k: z[k] for k in _ARRAYS}
                except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
                    raise DatasetFileError(f"{path} is truncated or damaged ({_zip_reason(e)}){hint}") from None
        except zipfile.BadZipFile as e:  # pragma: no cover - closing a damaged archive
            raise DatasetFileError(f"{path} is truncated or damaged ({e}){hint}") from None
        x = arrays["x"]
        check_header(path, meta, None, hint)
        if x.ndim != 4 or arrays["y"].ndim != 2 or arrays["dates"].ndim != 1:
            raise DatasetFileError(f"{path}: array shapes x {x.shape}, y {arrays['y'].shape}, dates "
                                   f"{arrays['dates'].shape} are not (V, T, H, W), (T, N), (T,){hint}")
        check_header(path, meta, x.shape[0], hint)
        for k in ("x", "y"):
            if np.isinf(arrays[k]).any():
                raise DatasetFileError(f"{path}: array '{k}' holds inf values (written by an older version of "
                                       f"the plugin){hint} (it reads them as nodata)")
        return cls.from_stored(x, arrays["y"], arrays["target_rows"], arrays["target_cols"], arrays["dates"], meta,
                               path, hint)

    @classmethod
    def from_stored(cls, x, y, rows, cols, dates, meta: dict, path: str, hint: str = "") -> "Cube":
        """A cube from the arrays and header (``meta()``) a dataset file stores, .npz or Zarr (data/zarrcube.py):
        the target locations must lie on the grid and the header must fit the arrays, else DatasetFileError
        naming `path` (and `hint`, what to do)."""
        H, W = x.shape[2:]
        if rows.shape != cols.shape or (rows.size and (rows.min() < 0 or rows.max() >= H or cols.min() < 0
                                                       or cols.max() >= W)):
            raise DatasetFileError(f"{path}: its target locations lie outside its {H} x {W} grid{hint}")
        try:
            return cls(x=x, y=y, target_rows=rows, target_cols=cols, dates=np.asarray(dates).astype("datetime64[D]"),
                       factors=meta["factors"], variables=meta["variables"], grid=meta["grid"],
                       patch_size=meta["patch_size"], seq_len=meta["seq_len"],
                       target_kind=meta.get("target_kind", "grid"), station_ids=meta.get("station_ids"),
                       x_mean=meta["x_mean"], x_std=meta["x_std"], y_mean=meta["y_mean"], y_std=meta["y_std"])
        except (ValueError, TypeError) as e:
            raise DatasetFileError(f"{path} is inconsistent: {e}{hint}") from None

    def normalised_x(self) -> np.ndarray:
        """(V, T, H, W) normalised, NaN kept (callers decide how to fill). One float32 copy (in place after it:
        the same values as (x - mean) / std); a Zarr cube is read whole here, so only where it fits."""
        m = np.asarray(self.x_mean, np.float32)[:, None, None, None]
        s = np.asarray(self.x_std, np.float32)[:, None, None, None]
        xn = np.array(self.x, dtype=np.float32, copy=True)
        xn -= m
        xn /= s
        return xn

    def location_labels(self) -> List[str]:
        if self.station_ids:
            return list(self.station_ids)
        return [f"pixel {r},{c}" for r, c in zip(self.target_rows, self.target_cols)]

    def centre_valid(self) -> np.ndarray:
        """bool (T, N): every variable is valid at the target pixel on that date."""
        stored = getattr(self.x, "centre_valid", None)      # a Zarr cube's, written by prepare
        if stored is not None and stored.shape == (self.x.shape[1], len(self.target_rows)):
            return stored.astype(bool)
        xc = self.x[:, :, self.target_rows, self.target_cols]          # V, T, N (a Zarr cube: tile by tile)
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


def is_lazy(x) -> bool:
    """x is a lazily read array (a Zarr cube's values), not a numpy array."""
    return not isinstance(x, np.ndarray) and hasattr(x, "shape") and hasattr(x, "chunks")


def check_header(path: str, meta, V, hint: str):
    """The header items every cube file needs and (V not None) V finite per-variable statistics
    (DatasetFileError naming the file)."""
    if not isinstance(meta, dict):
        raise DatasetFileError(f"{path}: its header is not a JSON object{hint}")
    need = ("factors", "variables", "grid", "patch_size", "seq_len", "x_mean", "x_std", "y_mean", "y_std")
    lacking = [k for k in need if k not in meta]
    if lacking:
        raise DatasetFileError(f"{path}: its header lacks {', '.join(lacking)}{hint}")
    if V is None:
        return
    for k in ("x_mean", "x_std"):
        vals = meta[k]
        if not isinstance(vals, list) or len(vals) != V or not all(
                isinstance(v, (int, float)) and np.isfinite(v) for v in vals):
            raise DatasetFileError(f"{path}: its statistics '{k}' are not {V} finite numbers ({vals!r:.80})"
                                   f"{hint}")
    for k in ("y_mean", "y_std"):
        if not isinstance(meta[k], (int, float)) or not np.isfinite(meta[k]):
            raise DatasetFileError(f"{path}: its statistic '{k}' is {meta[k]!r}, not a finite number{hint}")


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


def check_split(cube: "Cube", val_start=None, test_start=None, param_val: str = "VAL_START",
                param_test: str = "TEST_START"):
    """Before training: the split must leave data in every period. Raises ValueError naming the parameter
    when VAL_START/TEST_START lie outside the dataset's dates, or when the test period holds no target value
    (a test period after the data would train and then report no test score). Returns the masks."""
    d0, d1 = cube.dates[0], cube.dates[-1]
    span = f"the dataset covers {d0}..{d1}"
    for name, value in ((param_val, val_start), (param_test, test_start)):
        if value is not None and not (d0 <= np.datetime64(value, "D") <= d1):
            raise ValueError(f"{name} ({np.datetime64(value, 'D')}) is outside the dataset's dates: {span}; "
                             f"choose a date after {d0} and not after {d1}")
    train, val, test = split_masks(cube.dates, val_start, test_start)
    usable = test.copy()
    usable[:cube.seq_len - 1] = False          # the first SEQ_LEN-1 days have no full input window
    if not np.isfinite(cube.y[usable]).any():
        when = f"{cube.dates[test][0]}..{cube.dates[test][-1]}" if test.any() else "empty"
        raise ValueError(f"{param_test}: the test period ({when}) holds no soil-moisture value ({span}): "
                         f"choose a {param_test} before the last observations")
    return train, val, test
