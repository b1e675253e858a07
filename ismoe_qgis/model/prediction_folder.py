"""The prediction folder (the output of ``ismoe:predict``): its file names, its ``prediction.json``
(schema, the one validating reader) and the reader of its rasters (no Qt, no qgis).

One owner of the format: ``model/inference.predict_to_folder`` writes through the names and the
manifest writer here; the dock, ``ismoe:seasonalimportance``, the layer loader and the evaluation read
through :func:`read_manifest` / :func:`open_prediction`. See docs/architecture.md "Prediction folder"::

    prediction.json              {"format": "ismoe-prediction/1", "factors": [...], "dates": [...],
                                  "sm": "sm.tif", "weights": {factor: "weight_<factor>.tif"},
                                  "dominant_factor": "dominant_factor.tif", "importance": "importance.csv",
                                  "nodata": -9999, optional "observations": "observations.csv",
                                  "ensemble": {"members": N, ...} or null (single model), ...}
    sm.tif                       one band per date
    weight_<factor>.tif          one band per date, same grid
    dominant_factor.tif          uint8, the top-weighted factor per pixel and date (model/outputs.py)
    observations.csv (optional)  station observations, see :func:`read_observations`
    importance.csv (optional)    whole-area seasonal importance precomputed by predict
                                 (region "all", :mod:`ismoe_qgis.model.importance` CSV);
                                 used by :func:`whole_area_importance` instead of a full read;
                                 an ensemble's has a "spread" column (members' sd of each mean),
                                 the band of the charts. Importance computed here from the weight
                                 rasters (any other region) has no spread: the members' spread of
                                 a region's mean cannot be had from per-pixel spreads.

Reading:

- :func:`open_prediction` validates the folder (clear :class:`ChartDataError` messages);
- :func:`region_sums` / :func:`region_importance` stream the weight rasters block by
  block (memory bounded, progress + cancel through :class:`~ismoe_qgis.core_callbacks.Callbacks`)
  to per-date spatial sums over one or several regions (whole raster, a bounding box,
  a polygon given as a GeoJSON-like dict in any CRS), then to seasonal importance;
- :func:`pixel_at` / :func:`pixel_series` read one pixel's SM and weight series with a
  1x1 window per file (never a full read).
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import rasterio
import rasterio.errors
from rasterio.crs import CRS
from rasterio.windows import Window

from ..core_callbacks import Callbacks, Cancelled, ensure
from . import importance as imp

# --------------------------------------------------------------------------- file names
PREDICTION_JSON = "prediction.json"
MANIFEST = PREDICTION_JSON
FORMAT = "ismoe-prediction/1"        # prediction.json "format"; a folder without it is from before (same schema)
SM_FILE = "sm.tif"
SM_SPREAD_FILE = "sm_spread.tif"
DOMINANT_FILE = "dominant_factor.tif"
IMPORTANCE_CSV = "importance.csv"
OBSERVATIONS_CSV = "observations.csv"
DEFAULT_NODATA = -9999.0
# the files of a prediction folder (what ismoe:predict owns there, and replaces as one set)
PREDICTION_FILES = (SM_FILE, SM_SPREAD_FILE, DOMINANT_FILE, IMPORTANCE_CSV, PREDICTION_JSON)
PREDICTION_PATTERNS = ("weight_*.tif", "weight_spread_*.tif", "variance_share_*.tif")
_WEIGHT_RE = re.compile(r"^weight_(.+)\.tiff?$", re.IGNORECASE)


def weight_file(factor: str) -> str:
    """File name of a factor's weight raster."""
    return "weight_{}.tif".format(factor)


def variance_share_file(factor: str) -> str:
    """File name of a factor's variance-share raster (additive and gated models; bands
    contribution_stats.SHARE_BANDS: the whole period, the months, the seasons)."""
    return "variance_share_{}.tif".format(factor)


def weight_spread_file(factor: str) -> str:
    """File name of an ensemble's member spread of a factor's weight."""
    return "weight_spread_{}.tif".format(factor)


# --------------------------------------------------------------------------- prediction.json
MANIFEST_MAX_BYTES = 64 * 2 ** 20       # a real one is a few KB (one ISO date per output band)


class ManifestError(ValueError):
    """A prediction.json that cannot be used; the message names the file and the item."""


def _manifest_files(man: dict):
    """(item name, relative file name) of every file prediction.json refers to."""
    for key in ("sm", "dominant_factor", "importance", "observations"):
        if man.get(key) is not None:
            yield key, man[key]
    for f, fn in (man.get("weights") or {}).items():
        yield f"weights.{f}", fn
    vs = man.get("variance_share") or {}
    if isinstance(vs, dict):
        for f, fn in (vs.get("files") or {}).items():
            yield f"variance_share.files.{f}", fn
    ens = man.get("ensemble") or {}
    if isinstance(ens, dict):
        if ens.get("sm_spread") is not None:
            yield "ensemble.sm_spread", ens["sm_spread"]
        for f, fn in (ens.get("weight_spread") or {}).items():
            yield f"ensemble.weight_spread.{f}", fn


def confined_path(folder: str, rel, what: str = "file") -> str:
    """The absolute path of `rel` inside `folder`; ManifestError when `rel` is not a relative path that stays
    inside the folder once '..' and symbolic links are resolved (an absolute path, '../../etc/passwd', a
    link pointing out)."""
    if not isinstance(rel, str) or not rel.strip() or "\0" in rel:
        raise ManifestError(f"{what} is {rel!r}, not a file name")
    if os.path.isabs(rel) or os.path.splitdrive(rel)[0]:
        raise ManifestError(f"{what} is an absolute path ({rel}): a prediction folder refers only to files "
                            f"inside it")
    root = os.path.realpath(folder)
    full = os.path.realpath(os.path.join(root, rel))
    if os.path.commonpath([root, full]) != root:
        raise ManifestError(f"{what} ({rel}) points outside the prediction folder: a prediction folder refers "
                            f"only to files inside it")
    return full


def write_manifest(folder: str, manifest: dict) -> str:
    """Write ``<folder>/prediction.json`` ("format" first, then ``manifest``); returns its path. The writer of
    the schema :func:`read_manifest` checks (model/inference.predict_to_folder writes it into its staging
    folder, which is moved into place as a whole)."""
    path = os.path.join(folder, MANIFEST)
    from ..fileutil import atomic_output
    with atomic_output(path, ".json") as tmp, open(tmp, "w") as f:
        json.dump({"format": FORMAT, **manifest}, f, indent=1)
    return path


def read_manifest(folder: str) -> dict:
    """Read and validate ``<folder>/prediction.json`` (written by ``ismoe:predict``); the one reader of it.

    Checks: a JSON object of a sane size; "factors" a list of distinct names; "dates" ISO dates; "weights"
    {factor: file} for those factors; every file it names (sm, weights, dominant factor, importance,
    observations, ensemble spreads) a relative path that stays inside `folder` (no absolute paths, no '..'
    out of it, no link out of it). Returns the dict as stored. Raises ManifestError naming the file and the
    item, FileNotFoundError when there is no prediction.json."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {MANIFEST} in {folder}: choose the output folder of ismoe:predict")
    if os.path.getsize(path) > MANIFEST_MAX_BYTES:
        raise ManifestError(f"{path} is {os.path.getsize(path)} bytes, far more than a prediction.json holds: "
                            f"not a prediction.json of this plugin")
    try:
        with open(path, encoding="utf-8") as f:
            man = json.load(f)
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path} could not be read ({type(e).__name__}: {e}): run ismoe:predict again") from None
    if not isinstance(man, dict):
        raise ManifestError(f"{path} does not hold a JSON object: not a prediction.json of this plugin")
    fmt = man.get("format", FORMAT)
    name, _, major = str(fmt).partition("/")
    if name != FORMAT.split("/")[0] or not major.isdigit():
        raise ManifestError(f"{path}: 'format' is {fmt!r}, not a prediction.json of this plugin")
    if int(major) > int(FORMAT.split("/")[1]):
        raise ManifestError(f"{path} is a {fmt} prediction, newer than this plugin reads ({FORMAT}): update the "
                            f"plugin")
    factors = man.get("factors", [])
    if not isinstance(factors, list) or not all(isinstance(f, str) and f for f in factors):
        raise ManifestError(f"{path}: 'factors' is not a list of factor names")
    if len(set(factors)) != len(factors):
        raise ManifestError(f"{path}: 'factors' lists a factor twice ({', '.join(factors)})")
    weights = man.get("weights", {})
    if not isinstance(weights, dict) or not all(isinstance(k, str) for k in weights):
        raise ManifestError(f"{path}: 'weights' is not an object of factor: file name")
    unknown = [k for k in weights if factors and k not in factors]
    if unknown:
        raise ManifestError(f"{path}: 'weights' names factor(s) {', '.join(unknown)} that are not in 'factors'")
    dates = man.get("dates", [])
    if not isinstance(dates, list):
        raise ManifestError(f"{path}: 'dates' is not a list of ISO dates")
    try:
        [np.datetime64(str(d)[:10], "D") for d in dates]
    except ValueError:
        raise ManifestError(f"{path}: 'dates' holds something that is not an ISO date (YYYY-MM-DD)") from None
    for key, rel in _manifest_files(man):
        try:
            confined_path(folder, rel, f"'{key}'")
        except ManifestError as e:
            raise ManifestError(f"{path}: {e}") from None
    if "nodata" in man and not isinstance(man["nodata"], (int, float)):
        raise ManifestError(f"{path}: 'nodata' is {man['nodata']!r}, not a number")
    return man


class ChartDataError(ValueError):
    """Bad input for the prediction reader or a chart; the message is written for the user."""


class OutsideRasterError(ChartDataError):
    """A map position that is not on the prediction raster."""


# --------------------------------------------------------------------------- folder
@dataclass
class PredictionFolder:
    path: str
    factors: List[str]
    dates: np.ndarray                      # datetime64[D] (T,)
    weight_paths: Dict[str, str]           # factor -> absolute path
    sm_path: Optional[str]
    nodata: float
    crs: Optional[CRS]
    transform: "rasterio.Affine"
    width: int
    height: int
    block_shape: Tuple[int, int]           # internal (rows, cols) block of the weight rasters
    model_type: str = "ismoe"
    observations_path: Optional[str] = None
    importance_path: Optional[str] = None   # precomputed whole-area importance CSV, if any
    warnings: List[str] = field(default_factory=list)
    ensemble: Optional[dict] = None         # prediction.json "ensemble" (None for a single model)
    # prediction.json "variance_share": factor -> variance_share_<factor>.tif, and the bands they hold
    # (contribution_stats.SHARE_BANDS; ["period"] in folders from before the seasonal bands); empty if none
    share_paths: Dict[str, str] = field(default_factory=dict)
    share_bands: List[str] = field(default_factory=list)

    @property
    def n_dates(self) -> int:
        return len(self.dates)

    @property
    def has_seasonal_shares(self) -> bool:
        """Whether the folder holds each factor's variance share by month and season (the chartable measure)."""
        return bool(self.share_paths) and set(self.factors) <= set(self.share_paths) and "1" in self.share_bands

    @property
    def default_measure(self) -> str:
        """What the seasonal chart shows by default: the variance share where the folder has it by season
        (additive and gated models), else the daily weights."""
        return imp.VARIANCE_SHARE if self.has_seasonal_shares else imp.WEIGHT

    def resolve_measure(self, measure: str) -> str:
        """'auto' -> :attr:`default_measure`; 'variance_share' on a folder without seasonal shares: ChartDataError
        that says why and what to do."""
        if measure in (None, "", "auto"):
            return self.default_measure
        if measure == imp.VARIANCE_SHARE and not self.has_seasonal_shares:
            why = ("its model's mixture has no contributions to share (convex, scaled or a baseline)"
                   if not self.share_paths else
                   "it holds only the whole-period share (predicted by an older plugin, or a one-date prediction)")
            raise ChartDataError("{} has no seasonal variance shares: {}. Chart the daily weights (measure "
                                 "'weight'), or predict again with an additive or gated model.".format(
                                     os.path.basename(self.path) or self.path, why))
        if measure not in imp.MEASURE_TITLES:
            raise ChartDataError("unknown measure {!r}: use auto, {}".format(measure, ", ".join(imp.MEASURE_TITLES)))
        return measure

    @property
    def members(self) -> Optional[int]:
        """Number of ensemble members (None for a single model)."""
        return _members_of(self.ensemble)

    @property
    def crs_wkt(self) -> str:
        return self.crs.to_wkt() if self.crs else ""

    @property
    def bounds(self) -> Tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in the raster CRS."""
        t = self.transform
        xs = [t.c, t.c + t.a * self.width, t.c + t.b * self.height, t.c + t.a * self.width + t.b * self.height]
        ys = [t.f, t.f + t.d * self.width, t.f + t.e * self.height, t.f + t.d * self.width + t.e * self.height]
        return min(xs), min(ys), max(xs), max(ys)

    def describe(self) -> str:
        return "{} factors ({}), {} dates {}..{}, {}x{} pixels".format(
            len(self.factors), ", ".join(self.factors), self.n_dates,
            self.dates[0] if self.n_dates else "-", self.dates[-1] if self.n_dates else "-",
            self.width, self.height)


def open_prediction(path: str) -> PredictionFolder:
    """Validate a prediction folder (or its prediction.json) and describe it."""
    if not path or not str(path).strip():
        raise ChartDataError("No source chosen: pick the output folder of ismoe:predict "
                             "(sm.tif + weight_<factor>.tif + prediction.json) or a seasonal-importance CSV.")
    path = os.path.abspath(os.path.expanduser(str(path).strip()))
    if os.path.isfile(path):
        if os.path.basename(path).lower() == PREDICTION_JSON:
            path = os.path.dirname(path)
        elif path.lower().endswith(".csv"):
            raise ChartDataError("{} is a CSV file, not a prediction folder; open it as an importance "
                                 "CSV.".format(path))
        else:
            raise ChartDataError("{} is a file; choose the prediction folder that holds it.".format(path))
    if not os.path.isdir(path):
        raise ChartDataError("Prediction folder not found: {}".format(path))

    on_disk: Dict[str, str] = {}
    for p in sorted(glob.glob(os.path.join(path, "weight_*"))):
        m = _WEIGHT_RE.match(os.path.basename(p))
        if m and not os.path.basename(p).lower().startswith("weight_spread_"):   # an ensemble's spreads
            on_disk[m.group(1)] = p

    meta: dict = {}
    json_path = os.path.join(path, PREDICTION_JSON)
    warnings: List[str] = []
    if os.path.isfile(json_path):
        try:                                           # the one validating reader (paths stay in the folder)
            meta = read_manifest(path)
        except (OSError, ValueError) as exc:
            raise ChartDataError(str(exc))
    else:
        warnings.append("no {} in the folder: factors taken from the weight_<factor>.tif names, "
                        "dates from the band descriptions".format(PREDICTION_JSON))

    if meta:
        factors = [str(f) for f in (meta.get("factors") or list((meta.get("weights") or {}).keys()))]
        weights_map = dict(meta.get("weights") or {})
        if not factors and not on_disk:
            mt = meta.get("model_type")
            extra = (" (prediction.json says model_type '{}', a model without a router has no per-factor "
                     "weights)".format(mt)) if mt and mt != "ismoe" else ""
            raise ChartDataError(_no_weights_message(path) + extra)
        weight_paths: Dict[str, str] = {}
        missing = []
        for f in factors:
            rel = weights_map.get(f, weight_file(f))
            p = os.path.join(path, rel)
            if os.path.isfile(p):
                weight_paths[f] = p
            else:
                missing.append("{} ({})".format(f, os.path.basename(p)))
        listed = {os.path.normcase(os.path.abspath(p)) for p in weight_paths.values()}
        extra = ["{} ({})".format(f, os.path.basename(p)) for f, p in on_disk.items()
                 if f not in factors and os.path.normcase(os.path.abspath(p)) not in listed]
        if missing or extra:
            parts = []
            if missing:
                parts.append("listed in prediction.json but missing: " + ", ".join(missing))
            if extra:
                parts.append("found in the folder but not listed in prediction.json: " + ", ".join(extra))
            if not weight_paths and not on_disk:
                raise ChartDataError(_no_weights_message(path))
            raise ChartDataError("The weight rasters do not match the factors of prediction.json ({}): {}.".format(
                ", ".join(factors) or "none", "; ".join(parts)))
    else:
        if not on_disk:
            raise ChartDataError(_no_weights_message(path))
        factors = list(on_disk)
        weight_paths = dict(on_disk)
    if len(set(factors)) != len(factors):
        raise ChartDataError("prediction.json lists a factor twice: {}".format(", ".join(factors)))

    sm_rel = meta.get("sm", SM_FILE)
    sm_path = sm_rel if os.path.isabs(sm_rel) else os.path.join(path, sm_rel)
    if not os.path.isfile(sm_path):
        warnings.append("no SM raster ({}): the pixel inspector shows weights only".format(os.path.basename(sm_path)))
        sm_path = None

    # grid consistency across all rasters
    ref_name, ref = None, None
    descriptions: Tuple = ()
    block_shape = (256, 256)
    nodata_file = None
    for name, p in [(f, weight_paths[f]) for f in factors] + ([("sm", sm_path)] if sm_path else []):
        try:
            with rasterio.open(p) as src:
                info = (src.count, src.width, src.height, src.transform, src.crs)
                if ref is None:
                    ref_name, ref = name, info
                    descriptions = src.descriptions
                    block_shape = tuple(src.block_shapes[0])
                    nodata_file = src.nodata
        except rasterio.errors.RasterioError as exc:
            raise ChartDataError("{} is not a readable raster: {}".format(os.path.basename(p), exc))
        label = os.path.basename(p)
        ref_label = os.path.basename(weight_paths.get(ref_name, ref_name))
        if info[0] != ref[0]:
            raise ChartDataError("{} has {} bands (dates) but {} has {}".format(label, info[0], ref_label, ref[0]))
        if info[1:3] != ref[1:3]:
            raise ChartDataError("{} is {}x{} pixels but {} is {}x{}".format(label, info[1], info[2], ref_label,
                                                                           ref[1], ref[2]))
        if not info[3].almost_equals(ref[3]) or (info[4] != ref[4]):
            raise ChartDataError("{} is not on the same grid (transform/CRS) as {}".format(label, ref_label))
    count, width, height, transform, crs = ref

    dates_meta = meta.get("dates")
    if dates_meta:
        try:
            dates = imp.as_dates(dates_meta)
        except ValueError as exc:
            raise ChartDataError("prediction.json dates could not be read: {}".format(exc))
        if len(dates) != count:
            raise ChartDataError("prediction.json lists {} dates but the rasters have {} bands".format(
                len(dates), count))
    else:
        try:
            dates = imp.as_dates([d for d in descriptions])
        except ValueError:
            raise ChartDataError("No dates: prediction.json has no 'dates' and the band descriptions of {} are "
                                 "not ISO dates".format(os.path.basename(weight_paths[factors[0]])))

    nodata = meta.get("nodata", nodata_file if nodata_file is not None else DEFAULT_NODATA)
    share_paths, share_bands = _share_files(path, meta, factors, (width, height, transform, crs), warnings)
    obs_rel = meta.get("observations") or OBSERVATIONS_CSV
    obs_path = obs_rel if os.path.isabs(obs_rel) else os.path.join(path, obs_rel)
    imp_rel = meta.get("importance") or IMPORTANCE_CSV
    imp_path = imp_rel if os.path.isabs(imp_rel) else os.path.join(path, imp_rel)
    return PredictionFolder(path=path, factors=factors, dates=dates, weight_paths=weight_paths, sm_path=sm_path,
                            nodata=float(nodata), crs=crs, transform=transform, width=width, height=height,
                            block_shape=(int(block_shape[0]), int(block_shape[1])),
                            model_type=str(meta.get("model_type", "ismoe")),
                            observations_path=obs_path if os.path.isfile(obs_path) else None,
                            importance_path=imp_path if os.path.isfile(imp_path) else None,
                            warnings=warnings,
                            ensemble=meta.get("ensemble") if isinstance(meta.get("ensemble"), dict) else None,
                            share_paths=share_paths, share_bands=share_bands)


def _share_files(path: str, meta: dict, factors, grid, warnings) -> Tuple[Dict[str, str], List[str]]:
    """The variance-share rasters prediction.json lists, checked against the weights' grid: ({factor: path},
    band labels); ({}, []) when there are none or they do not fit (then a warning says which and why)."""
    vs = meta.get("variance_share")
    if not isinstance(vs, dict) or not isinstance(vs.get("files"), dict):
        return {}, []
    bands = [str(b) for b in (vs.get("bands") or ["period"])]
    out: Dict[str, str] = {}
    for f in factors:
        rel = vs["files"].get(f)
        p = os.path.join(path, rel) if rel else None
        problem = None
        if not p or not os.path.isfile(p):
            problem = "missing"
        else:
            try:
                with rasterio.open(p) as src:
                    if src.count != len(bands):
                        problem = "{} bands, prediction.json says {}".format(src.count, len(bands))
                    elif (src.width, src.height) != grid[:2] or not src.transform.almost_equals(grid[2]) \
                            or src.crs != grid[3]:
                        problem = "not on the weights' grid"
            except rasterio.errors.RasterioError as exc:
                problem = "not readable ({})".format(exc)
        if problem:
            warnings.append("variance shares not used: {} ({}) is {}".format(
                f, os.path.basename(p) if p else "not listed", problem))
            return {}, []
        out[f] = p
    return out, bands


def _members_of(ensemble) -> Optional[int]:
    try:
        n = int((ensemble or {}).get("members") or 0)
    except (TypeError, ValueError, AttributeError):
        return None
    return n if n > 0 else None


def ensemble_members(path: str) -> Optional[int]:
    """Members of the ensemble whose prediction.json is in the folder ``path`` or beside the file ``path``
    (e.g. a prediction's importance.csv); None for a single model or without a readable prediction.json."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    try:
        with open(os.path.join(folder, PREDICTION_JSON), encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    return _members_of(meta.get("ensemble")) if isinstance(meta, dict) else None


def _no_weights_message(path):
    return ("No weight rasters in {}: expected weight_<factor>.tif files (one per factor) written by "
            "ismoe:predict. Is this the prediction output folder of an ISMoE model?".format(path))


def open_source(path: str) -> Union[PredictionFolder, imp.ImportanceTable]:
    """A prediction folder (-> PredictionFolder) or a seasonal-importance CSV (-> ImportanceTable)."""
    if path and str(path).strip().lower().endswith(".csv"):
        try:
            return imp.read_importance_csv(str(path).strip())
        except imp.ImportanceError as exc:
            raise ChartDataError(str(exc))
    return open_prediction(path)


# --------------------------------------------------------------------------- regions
@dataclass
class BBox:
    """A rectangle; ``crs`` None means the raster CRS."""
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    crs: Optional[object] = None


@dataclass
class PolygonRegion:
    """A (multi)polygon as a GeoJSON-like dict; ``crs`` None means the raster CRS."""
    geometry: dict
    crs: Optional[object] = None


@dataclass
class MaskRegion:
    """Pixels given as a boolean mask on the prediction grid (e.g. one zone of a label raster)."""
    mask: np.ndarray


Region = Union[None, BBox, PolygonRegion, MaskRegion]


@dataclass
class RegionMask:
    row_off: int
    col_off: int
    height: int
    width: int
    mask: Optional[np.ndarray]   # bool (height, width), None = every pixel of the window
    n_pixels: int

    @property
    def window(self) -> Window:
        return Window(self.col_off, self.row_off, self.width, self.height)


def _to_crs(crs) -> Optional[CRS]:
    if crs is None or crs == "":
        return None
    if isinstance(crs, CRS):
        return crs
    try:
        return CRS.from_user_input(crs)
    except Exception as exc:  # rasterio raises CRSError, keep the message
        raise ChartDataError("Unknown CRS {!r}: {}".format(str(crs)[:80], exc))


def _needs_reprojection(folder: PredictionFolder, crs) -> bool:
    c = _to_crs(crs)
    if c is None:
        return False
    if folder.crs is None:
        raise ChartDataError("The prediction rasters have no CRS, so a region in {} cannot be reprojected onto "
                             "them".format(c.to_string()))
    return c != folder.crs


def _geom_bounds(geom: dict) -> Tuple[float, float, float, float]:
    xs: List[float] = []
    ys: List[float] = []

    def walk(c):
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            xs.append(float(c[0]))
            ys.append(float(c[1]))
        elif isinstance(c, (list, tuple)):
            for sub in c:
                walk(sub)

    if geom.get("type") == "GeometryCollection":
        for g in geom.get("geometries", []):
            b = _geom_bounds(g)
            xs += [b[0], b[2]]
            ys += [b[1], b[3]]
    else:
        walk(geom.get("coordinates", []))
    if not xs:
        raise ChartDataError("The polygon has no coordinates")
    return min(xs), min(ys), max(xs), max(ys)


def _densified_box(b: BBox, n: int = 32) -> dict:
    t = np.linspace(0.0, 1.0, n + 1)
    x0, y0, x1, y1 = b.xmin, b.ymin, b.xmax, b.ymax
    ring = ([(x0 + (x1 - x0) * s, y0) for s in t] + [(x1, y0 + (y1 - y0) * s) for s in t[1:]]
            + [(x1 - (x1 - x0) * s, y1) for s in t[1:]] + [(x0, y1 - (y1 - y0) * s) for s in t[1:]])
    return {"type": "Polygon", "coordinates": [ring]}


def _window_of_bounds(folder: PredictionFolder, xmin, ymin, xmax, ymax):
    """Pixel window (r0, c0, r1, c1) covering a raster-CRS box, clipped; None when disjoint."""
    inv = ~folder.transform
    cols, rows = [], []
    for x, y in ((xmin, ymin), (xmin, ymax), (xmax, ymin), (xmax, ymax)):
        c, r = inv * (x, y)
        cols.append(c)
        rows.append(r)
    c0, c1 = int(math.floor(min(cols))), int(math.ceil(max(cols)))
    r0, r1 = int(math.floor(min(rows))), int(math.ceil(max(rows)))
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, folder.width), min(r1, folder.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return r0, c0, r1, c1


def region_mask(folder: PredictionFolder, region: Region = None, name: str = "region") -> RegionMask:
    """The pixels of ``region`` (None = whole raster) as a window + boolean mask.

    A BBox in the raster CRS selects the pixels whose centre lies inside it. A
    polygon (or a BBox in another CRS) is reprojected to the raster CRS and rasterised
    (pixel centres inside; a polygon smaller than a pixel falls back to every pixel it
    touches).
    """
    if region is None:
        return RegionMask(0, 0, folder.height, folder.width, None, folder.height * folder.width)
    if isinstance(region, BBox):
        if region.xmax < region.xmin or region.ymax < region.ymin:
            raise ChartDataError("The extent of {} is empty or inverted".format(name))
        if _needs_reprojection(folder, region.crs):
            return region_mask(folder, PolygonRegion(_densified_box(region), region.crs), name)
        t = folder.transform
        if t.b == 0 and t.d == 0:
            inv = ~t
            ca, ra = inv * (region.xmin, region.ymax)
            cb, rb = inv * (region.xmax, region.ymin)
            c0, c1 = sorted((ca, cb))
            r0, r1 = sorted((ra, rb))
            # pixel centres (i + 0.5) inside [lo, hi]
            c0i, c1i = max(int(math.ceil(c0 - 0.5)), 0), min(int(math.floor(c1 - 0.5)) + 1, folder.width)
            r0i, r1i = max(int(math.ceil(r0 - 0.5)), 0), min(int(math.floor(r1 - 0.5)) + 1, folder.height)
            if c1i <= c0i or r1i <= r0i:
                raise ChartDataError("{} does not cover any pixel of the prediction raster (raster extent {})".format(
                    name, _fmt_bounds(folder.bounds)))
            return RegionMask(r0i, c0i, r1i - r0i, c1i - c0i, None, (r1i - r0i) * (c1i - c0i))
        return region_mask(folder, PolygonRegion(_densified_box(region), None), name)
    if isinstance(region, MaskRegion):
        mask = np.asarray(region.mask, dtype=bool)
        if mask.shape != (folder.height, folder.width):
            raise ChartDataError("{}: the mask is {}x{} but the prediction raster is {}x{}".format(
                name, mask.shape[1], mask.shape[0], folder.width, folder.height))
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            raise ChartDataError("{} does not cover any pixel of the prediction raster".format(name))
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        return RegionMask(int(r0), int(c0), int(r1 - r0), int(c1 - c0), mask[r0:r1, c0:c1].copy(), int(rows.size))
    if isinstance(region, PolygonRegion):
        geom = region.geometry
        if hasattr(geom, "__geo_interface__"):
            geom = geom.__geo_interface__
        if not isinstance(geom, dict) or "type" not in geom:
            raise ChartDataError("{}: the polygon must be a GeoJSON-like dict with 'type' and "
                                 "'coordinates'".format(name))
        if geom["type"] not in ("Polygon", "MultiPolygon", "GeometryCollection"):
            raise ChartDataError("{} is a {}, not a polygon".format(name, geom["type"]))
        if _needs_reprojection(folder, region.crs):
            from rasterio.warp import transform_geom
            try:
                geom = transform_geom(_to_crs(region.crs), folder.crs, geom)
            except Exception as exc:
                raise ChartDataError("{} could not be reprojected to the raster CRS: {}".format(name, exc))
        b = _geom_bounds(geom)
        win = _window_of_bounds(folder, *b)
        if win is None:
            raise ChartDataError("{} lies outside the prediction raster (polygon extent {}, raster extent {} in the "
                                 "raster CRS)".format(name, _fmt_bounds(b), _fmt_bounds(folder.bounds)))
        r0, c0, r1, c1 = win
        from rasterio.windows import transform as window_transform

        from ..data.rasters import rasterize_polygons
        wt = window_transform(Window(c0, r0, c1 - c0, r1 - r0), folder.transform)
        shape = (r1 - r0, c1 - c0)
        mask = rasterize_polygons([geom], shape, wt, all_touched=False) > 0
        if not mask.any():
            mask = rasterize_polygons([geom], shape, wt, all_touched=True) > 0
        n = int(mask.sum())
        if n == 0:
            raise ChartDataError("{} does not cover any pixel of the prediction raster".format(name))
        return RegionMask(r0, c0, shape[0], shape[1], mask, n)
    raise ChartDataError("Unknown region type {}".format(type(region).__name__))


def parse_zone_names(text: str) -> Dict[int, str]:
    """'1=arid;2=tundra' (or commas/newlines) -> {1: 'arid', 2: 'tundra'}."""
    out: Dict[int, str] = {}
    for part in re.split(r"[;,\n]", text or ""):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ChartDataError("zone names: {!r} is not of the form value=name".format(part))
        value, name = part.split("=", 1)
        try:
            out[int(float(value))] = name.strip()
        except ValueError:
            raise ChartDataError("zone names: {!r} is not a number".format(value.strip()))
    return out


def zone_regions(folder: PredictionFolder, path: str, names: Optional[Mapping[int, str]] = None,
                 band: int = 1) -> Dict[str, MaskRegion]:
    """One region per zone value of a label raster (e.g. the demo's regions.tif).

    The raster is read on the prediction grid (reprojected with nearest neighbour when it
    is on another grid). Nodata is no zone, and so is 0 unless ``names`` names it. Zone
    names: ``names`` {value: name}, else the raster's ``region_<value>`` tags (as the demo
    writes them), else 'zone <value>'.
    """
    try:
        src = rasterio.open(path)
    except (rasterio.errors.RasterioError, OSError) as exc:
        raise ChartDataError("Zone raster {} could not be read: {}".format(path, exc))
    with src:
        if band < 1 or band > src.count:
            raise ChartDataError("Zone raster {} has no band {}".format(os.path.basename(path), band))
        tags = src.tags()
        nodata = src.nodata
        same = (src.width, src.height) == (folder.width, folder.height) and \
            src.transform.almost_equals(folder.transform) and (src.crs == folder.crs or not src.crs or not folder.crs)
        if same:
            labels = src.read(band).astype("float64")
        else:
            if src.crs is None or folder.crs is None:
                raise ChartDataError("Zone raster {} is on another grid and one of the two has no CRS".format(
                    os.path.basename(path)))
            from rasterio.warp import Resampling, reproject
            labels = np.full((folder.height, folder.width), np.nan)
            reproject(rasterio.band(src, band), labels, src_nodata=nodata, dst_nodata=np.nan,
                      dst_transform=folder.transform, dst_crs=folder.crs, resampling=Resampling.nearest)
    valid = np.isfinite(labels)
    if nodata is not None:
        valid &= labels != nodata
    names = dict(names or {})
    values = [v for v in np.unique(labels[valid]).tolist() if v != 0 or 0 in names]
    if not values:
        raise ChartDataError("Zone raster {} has no zone on the prediction grid".format(os.path.basename(path)))
    out: Dict[str, MaskRegion] = {}
    for v in values:
        key = int(v) if float(v).is_integer() else v
        name = names.get(key) or tags.get("region_{}".format(key)) or "zone {}".format(key)
        out[str(name)] = MaskRegion(valid & (labels == v))
    return out


def _fmt_bounds(b):
    return "[{:.6g}, {:.6g}, {:.6g}, {:.6g}]".format(*b)


# --------------------------------------------------------------------------- streaming
@dataclass
class RegionSums:
    """Per-date spatial sum and count of valid weights of each factor over a region."""
    name: str
    dates: np.ndarray        # (T,)
    factors: List[str]
    sums: np.ndarray         # (T, E) float64
    counts: np.ndarray       # (T, E) int64
    n_pixels: int

    def means(self) -> np.ndarray:
        """(T, E) spatial mean weight per date (NaN where no valid pixel)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)


def _chunks(folder: PredictionFolder, r0, c0, r1, c1, n_bands, max_bytes):
    """Block-aligned windows over [r0:r1, c0:c1] and the number of bands per read."""
    bh, bw = folder.block_shape
    bh, bw = max(1, bh), max(1, bw)
    # stripes (bw == width) or tiny blocks: group rows to ~64k pixels per read
    if bh * bw < 65536:
        bh *= max(1, 65536 // (bh * bw))
    bpr = max(1, min(n_bands, int(max_bytes // (4 * bh * bw))))
    wins = []
    for rs in range((r0 // bh) * bh, r1, bh):
        for cs in range((c0 // bw) * bw, c1, bw):
            a, b = max(rs, r0), min(rs + bh, r1)
            c, d = max(cs, c0), min(cs + bw, c1)
            if b > a and d > c:
                wins.append((a, c, b, d))
    return wins, bpr


def region_sums(folder: PredictionFolder, regions: Union[Region, Mapping[str, Region]] = None,
                callbacks: Optional[Callbacks] = None, bands: Optional[Sequence[int]] = None,
                max_bytes: int = 64 * 2 ** 20, max_workers: Optional[int] = None,
                measure: str = imp.WEIGHT) -> Dict[str, RegionSums]:
    """Stream the weight rasters once and sum each factor's weight per date over each region.

    measure "variance_share": the variance-share rasters instead, one band per share period
    (folder.share_bands); RegionSums.dates then holds those band labels.

    regions: one region (None = whole raster, BBox, PolygonRegion) or ``{name: region}``;
    all regions are served by the same single pass over the blocks of their union.
    bands: optional 0-based date indices to read (e.g. one month), default all dates.
    Reads block-aligned windows of at most ``max_bytes`` per read, one thread per factor
    file (at most ``max_workers``, default min(factors, CPUs, 4)); reports progress and
    raises :class:`~ismoe_qgis.core_callbacks.Cancelled` when ``callbacks.is_cancelled()``.
    """
    cb = ensure(callbacks)
    if regions is None or isinstance(regions, (BBox, PolygonRegion)):
        regions = {imp.DEFAULT_REGION: regions}
    if not regions:
        raise ChartDataError("No region given")
    masks = {name: region_mask(folder, reg, name) for name, reg in regions.items()}
    measure = folder.resolve_measure(measure)        # a folder without shares: the error says why
    if measure == imp.VARIANCE_SHARE:
        paths, n_bands, labels = folder.share_paths, len(folder.share_bands), np.asarray(folder.share_bands)
    else:
        paths, n_bands, labels = folder.weight_paths, folder.n_dates, folder.dates
    band_idx = np.arange(n_bands) if bands is None else np.asarray(bands, dtype=np.int64)
    if band_idx.size == 0:
        raise ChartDataError("No dates selected")
    if band_idx.min() < 0 or band_idx.max() >= n_bands:
        raise ChartDataError("Date index out of range 0..{}".format(n_bands - 1))
    T, E = len(band_idx), len(folder.factors)
    sums = {n: np.zeros((T, E)) for n in masks}
    counts = {n: np.zeros((T, E), dtype=np.int64) for n in masks}
    r0 = min(m.row_off for m in masks.values())
    c0 = min(m.col_off for m in masks.values())
    r1 = max(m.row_off + m.height for m in masks.values())
    c1 = max(m.col_off + m.width for m in masks.values())
    wins, bpr = _chunks(folder, r0, c0, r1, c1, T, max_bytes)
    # which regions each window serves (window-relative slices + mask)
    plan = []
    for (a, c, b, d) in wins:
        hits = []
        for name, m in masks.items():
            ia, ib = max(a, m.row_off), min(b, m.row_off + m.height)
            ic, id_ = max(c, m.col_off), min(d, m.col_off + m.width)
            if ib <= ia or id_ <= ic:
                continue
            sub = None
            if m.mask is not None:
                sub = m.mask[ia - m.row_off:ib - m.row_off, ic - m.col_off:id_ - m.col_off]
                if not sub.any():
                    continue
            hits.append((name, ia - a, ib - a, ic - c, id_ - c, sub))
        if hits:
            plan.append((Window(c, a, d - c, b - a), hits))
    nodata = folder.nodata
    total = max(1, len(plan) * E)
    done = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def work(e):
        with rasterio.open(paths[folder.factors[e]]) as src:
            for win, hits in plan:
                if stop.is_set():
                    return
                for k in range(0, T, bpr):
                    idx = band_idx[k:k + bpr]
                    data = src.read(indexes=[int(i) + 1 for i in idx], window=win, out_dtype="float32")
                    for name, ra, rb, ca, cb_, sub in hits:
                        block = data[:, ra:rb, ca:cb_]
                        vals = block[:, sub] if sub is not None else block.reshape(block.shape[0], -1)
                        valid = np.isfinite(vals) & (vals != nodata)
                        sums[name][k:k + len(idx), e] += np.where(valid, vals, 0.0).sum(axis=1, dtype=np.float64)
                        counts[name][k:k + len(idx), e] += valid.sum(axis=1)
                with lock:
                    done[0] += 1
                if single:  # same thread as the caller: report here
                    report()

    last = [-1.0]

    def report():
        frac = done[0] / total
        if frac != last[0]:
            last[0] = frac
            cb.progress(frac)
        if cb.is_cancelled():
            stop.set()

    workers = max_workers or min(E, os.cpu_count() or 1, 4)
    single = workers <= 1
    report()
    if stop.is_set():
        raise Cancelled("cancelled by the user")
    if single:
        for e in range(E):
            work(e)
    else:
        # the callbacks are only called from this (the caller's) thread
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(work, e) for e in range(E)]
            pending = set(futures)
            while pending:
                _done, pending = futures_wait(pending, timeout=0.1)
                report()
                for fut in _done:
                    if fut.exception() is not None:
                        stop.set()
            for fut in futures:
                if fut.exception() is not None:
                    raise fut.exception()
    if stop.is_set():
        raise Cancelled("cancelled by the user")
    cb.progress(1.0)
    dates = labels[band_idx]
    return {n: RegionSums(n, dates, list(folder.factors), sums[n], counts[n], masks[n].n_pixels) for n in masks}


def region_importance(folder: PredictionFolder, regions: Union[Region, Mapping[str, Region]] = None,
                      callbacks: Optional[Callbacks] = None, kinds: Sequence[str] = imp.PERIOD_KINDS,
                      measure: str = imp.WEIGHT, **kwargs) -> imp.ImportanceTable:
    """Seasonal importance of each region, streamed from the rasters: measure "weight" the mean daily weight
    by month, season and day of year (`kinds`); "variance_share" the mean of the pixels' variance shares by
    month and season; "auto" the folder's default (:attr:`PredictionFolder.default_measure`)."""
    measure = folder.resolve_measure(measure)
    rs = region_sums(folder, regions, callbacks, measure=measure, **kwargs)
    table = imp.ImportanceTable(folder.factors, measure=measure)
    for name, r in rs.items():
        if not r.counts.any():
            ensure(callbacks).log("{}: no valid {} values (all nodata)".format(name, measure.replace("_", " ")))
        if measure == imp.VARIANCE_SHARE:
            part = imp.importance_from_band_sums(r.dates, r.sums, r.counts, folder.factors, name)
        else:
            part = imp.importance_from_sums(r.dates, r.sums, r.counts, folder.factors, name, kinds)
        table = table.merge(part)
    return table


def whole_area_importance(folder: PredictionFolder, callbacks: Optional[Callbacks] = None,
                          use_cache: bool = True, measure: str = imp.WEIGHT) -> imp.ImportanceTable:
    """Importance over the whole raster: for the weights the folder's importance.csv when it holds region
    'all' with the same factors, else streamed from the rasters (measure as in :func:`region_importance`)."""
    measure = folder.resolve_measure(measure)
    if measure != imp.WEIGHT:
        return region_importance(folder, None, callbacks, measure=measure)
    if use_cache and folder.importance_path:
        try:
            table = imp.read_importance_csv(folder.importance_path)
            if table.factors == folder.factors and imp.DEFAULT_REGION in table.regions:
                sub = imp.ImportanceTable(table.factors,
                                          [table.get(imp.DEFAULT_REGION, k) for k in table.kinds(imp.DEFAULT_REGION)])
                ensure(callbacks).log("whole-area importance read from {}".format(
                    os.path.basename(folder.importance_path)))
                return sub
        except imp.ImportanceError as exc:
            ensure(callbacks).log("ignoring {}: {}".format(os.path.basename(folder.importance_path), exc))
    return region_importance(folder, None, callbacks)


# --------------------------------------------------------------------------- pixels
@dataclass
class PixelSeries:
    row: int
    col: int
    x: float                       # pixel centre, raster CRS
    y: float
    dates: np.ndarray              # (T,)
    factors: List[str]
    sm: Optional[np.ndarray]       # (T,) float64, NaN = nodata; None without sm.tif
    weights: np.ndarray            # (T, E) float64, NaN = nodata
    observations: Optional[np.ndarray] = None   # (T,) NaN where no observation
    station_id: Optional[str] = None

    @property
    def has_data(self) -> bool:
        return bool(np.isfinite(self.weights).any() or (self.sm is not None and np.isfinite(self.sm).any()))


def pixel_at(folder: PredictionFolder, x: float, y: float, crs=None) -> Tuple[int, int]:
    """(row, col) of the pixel holding map point (x, y); ``crs`` None = raster CRS."""
    if _needs_reprojection(folder, crs):
        from rasterio.warp import transform as warp_transform
        try:
            xs, ys = warp_transform(_to_crs(crs), folder.crs, [x], [y])
        except Exception as exc:
            raise ChartDataError("The point could not be reprojected to the raster CRS: {}".format(exc))
        x, y = xs[0], ys[0]
    if not (math.isfinite(x) and math.isfinite(y)):
        raise OutsideRasterError("The clicked point is outside the prediction raster (it has no position in the "
                                 "raster CRS)")
    c, r = ~folder.transform * (x, y)
    col, row = int(math.floor(c)), int(math.floor(r))
    if not (0 <= row < folder.height and 0 <= col < folder.width):
        raise OutsideRasterError(
            "The clicked point ({:.6g}, {:.6g} in the raster CRS) is outside the prediction raster, which covers "
            "{}. Click inside it.".format(x, y, _fmt_bounds(folder.bounds)))
    return row, col


def _read_pixel(path, row, col, nodata):
    with rasterio.open(path) as src:
        v = src.read(window=Window(col, row, 1, 1), out_dtype="float64")[:, 0, 0]
    v[~np.isfinite(v) | (v == nodata)] = np.nan
    return v


def pixel_series(folder: PredictionFolder, row: int, col: int, observations_path: Optional[str] = None,
                 max_workers: int = 4) -> PixelSeries:
    """SM and per-factor weight series of one pixel (1x1 window per file, files read in parallel).

    Observations come from ``observations_path`` or the folder's observations.csv when a
    station lies in this pixel.
    """
    if not (0 <= row < folder.height and 0 <= col < folder.width):
        raise OutsideRasterError("Pixel (row {}, col {}) is outside the {}x{} raster".format(
            row, col, folder.width, folder.height))
    paths = [folder.weight_paths[f] for f in folder.factors] + ([folder.sm_path] if folder.sm_path else [])
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(paths)))) as pool:
        cols = list(pool.map(lambda p: _read_pixel(p, row, col, folder.nodata), paths))
    weights = np.stack(cols[:len(folder.factors)], axis=1)
    sm = cols[-1] if folder.sm_path else None
    x, y = folder.transform * (col + 0.5, row + 0.5)
    obs, sid = None, None
    obs_path = observations_path or folder.observations_path
    if obs_path:
        stations = read_observations(obs_path, folder)
        for st in stations.values():
            if st.row == row and st.col == col:
                obs, sid = st.aligned(folder.dates), st.station_id
                break
    return PixelSeries(row, col, float(x), float(y), folder.dates, list(folder.factors), sm, weights, obs, sid)


# --------------------------------------------------------------------------- observations
@dataclass
class Station:
    station_id: str
    row: int
    col: int
    dates: np.ndarray
    values: np.ndarray

    def aligned(self, dates) -> np.ndarray:
        out = np.full(len(dates), np.nan)
        pos = {d: i for i, d in enumerate(np.asarray(dates).astype("datetime64[D]").tolist())}
        for d, v in zip(self.dates.tolist(), self.values.tolist()):
            i = pos.get(d)
            if i is not None:
                out[i] = v
        return out


def read_observations(path: str, folder: PredictionFolder) -> Dict[str, Station]:
    """Station observations: a long CSV with columns ``station_id, date, sm`` and the
    station position as ``row, col`` (pixel of the prediction grid) or ``x, y`` (raster
    CRS). Empty or non-numeric ``sm`` = missing."""
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ChartDataError("Observations file could not be read: {}".format(exc))
    with fh:
        rd = csv.DictReader(fh)
        cols = set(rd.fieldnames or [])
        need = {"station_id", "date", "sm"}
        if not need <= cols or not ({"row", "col"} <= cols or {"x", "y"} <= cols):
            raise ChartDataError("{} needs columns station_id, date, sm and either row, col or x, y".format(
                os.path.basename(path)))
        use_rc = {"row", "col"} <= cols
        acc: Dict[str, dict] = {}
        for line, r in enumerate(rd, start=2):
            sid = r["station_id"]
            st = acc.get(sid)
            if st is None:
                try:
                    if use_rc:
                        rc = (int(float(r["row"])), int(float(r["col"])))
                    else:
                        rc = pixel_at(folder, float(r["x"]), float(r["y"]))
                except (ValueError, ChartDataError):
                    rc = (-1, -1)   # station off the grid: never matches a pixel
                st = acc[sid] = {"rc": rc, "d": [], "v": []}
            try:
                v = float(r["sm"])
            except ValueError:
                v = float("nan")
            st["d"].append(r["date"][:10])
            st["v"].append(v)
    out = {}
    for sid, st in acc.items():
        try:
            d = imp.as_dates(st["d"])
        except ValueError as exc:
            raise ChartDataError("{}: bad date for station {}: {}".format(os.path.basename(path), sid, exc))
        out[sid] = Station(sid, st["rc"][0], st["rc"][1], d, np.asarray(st["v"], dtype=float))
    return out
