"""What a prediction folder's rasters say about themselves: units, dates, the dominant factor.

Qt/QGIS-free (numpy here, GDAL imported inside the functions that need it), so the same
outputs come from ``ismoe:predict``, a script or a cluster job:

- ``dominant_factor(weights)``: the per-pixel, per-date index (1..E) of the top-weighted factor,
  0 where the pixel is nodata; written as ``dominant_factor.tif`` by ``predict_to_folder``.
- ``SmRange``: running min/max of SM over the tile loop -> the display range of the SM map
  (``prediction.json`` "sm_range"), the same for every date so the dates compare.
- ``annotate_outputs``: GDAL metadata other tools read: per band ``DATE=YYYY-MM-DD`` (the band
  description already is the ISO date), the unit (``m3 m-3`` on SM, ``1`` on weights), and on
  ``dominant_factor.tif`` the factor names (category names) and the factor colours.
- ``band_views``: one single-band VRT per date of a multi-band GeoTIFF (no data copied): the
  per-date layers of the Temporal Controller on QGIS < 3.38.

Factor colours have one owner, ``ismoe_qgis.model.importance.factor_colour``, also used by the dock
and the charts, so a factor has the same colour on the map and in the chart.

GeoTIFF limit: a colour table (palette) is only allowed on a single-band file. A one-date
``dominant_factor.tif`` gets a real GDAL colour table; with several dates every band carries a
thematic raster attribute table (value, factor, red, green, blue, alpha: the colour table in the form
GDAL keeps for multi-band files, in ``dominant_factor.tif.aux.xml``) and the category names.
"""
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .importance import factor_colour
from .prediction_folder import DOMINANT_FILE, PREDICTION_FILES, PREDICTION_PATTERNS

SM_UNIT = "m3 m-3"              # CF spelling of m3/m3 (volumetric water content)
WEIGHT_UNIT = "1"               # dimensionless share
DOMINANT_NODATA = 0
BAND_VIEW_DIR = "by_date"       # the per-date VRTs (QGIS < 3.38 time navigation)
DEFAULT_SM_RANGE = (0.0, 0.5)   # m3/m3, when a prediction has no valid pixel


def dominant_factor(weights: np.ndarray) -> np.ndarray:
    """weights (E, T, h, w), NaN where the pixel is nodata -> uint8 (T, h, w): 1 + argmax over the
    factors, 0 (nodata) where any weight is not finite. Ties go to the first factor (in
    prediction.json order): a mean_expert model (all weights 1/E) is always factor 1."""
    w = np.asarray(weights)
    if w.ndim != 4:
        raise ValueError(f"weights must be (E, T, h, w), got shape {w.shape}")
    if w.shape[0] > 254:
        raise ValueError(f"dominant_factor.tif holds at most 254 factors, got {w.shape[0]}")
    valid = np.isfinite(w).all(axis=0)
    idx = np.argmax(np.where(np.isfinite(w), w, -np.inf), axis=0).astype(np.uint8) + 1
    idx[~valid] = DOMINANT_NODATA
    return idx


def dominant_profile(profile: dict) -> dict:
    """The rasterio profile of dominant_factor.tif from the float outputs' profile: uint8, nodata 0,
    single-channel (not RGB) photometric, no floating-point predictor."""
    prof = dict(profile)
    prof.update(dtype="uint8", nodata=DOMINANT_NODATA, photometric="MINISBLACK")
    prof.pop("predictor", None)
    return prof


class SmRange:
    """Running min/max of the SM values seen in the tile loop (NaN ignored)."""

    def __init__(self):
        self.lo, self.hi = np.inf, -np.inf

    def update(self, sm: np.ndarray):
        v = np.asarray(sm)
        v = v[np.isfinite(v)]
        if v.size:
            self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))

    def display_range(self) -> List[float]:
        return display_range(self.lo, self.hi)


def display_range(lo: float, hi: float, step: float = 0.01) -> List[float]:
    """[lo, hi] rounded outwards to `step` (m3/m3) and clipped to [0, 1]; DEFAULT_SM_RANGE when empty."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return list(DEFAULT_SM_RANGE)
    a = max(0.0, np.floor(lo / step + 1e-9) * step)
    b = min(1.0, np.ceil(hi / step - 1e-9) * step)
    if b <= a:
        a, b = max(0.0, a - step), min(1.0, b + step)
    return [round(float(a), 6), round(float(b), 6)]


def hex_rgb(colour: str) -> Tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def dominant_classes(factors: Sequence[str]) -> List[Tuple[int, str, str]]:
    """[(value, factor, '#rrggbb')] of dominant_factor.tif: value i + 1 is factors[i]."""
    return [(i + 1, f, factor_colour(f)) for i, f in enumerate(factors)]


def _dominant_rat(classes):
    from osgeo import gdal
    rat = gdal.RasterAttributeTable()
    rat.SetTableType(gdal.GRTT_THEMATIC)
    rat.CreateColumn("value", gdal.GFT_Integer, gdal.GFU_MinMax)
    rat.CreateColumn("factor", gdal.GFT_String, gdal.GFU_Name)
    for name, usage in (("red", gdal.GFU_Red), ("green", gdal.GFU_Green), ("blue", gdal.GFU_Blue),
                        ("alpha", gdal.GFU_Alpha)):
        rat.CreateColumn(name, gdal.GFT_Integer, usage)
    for row, (value, name, colour) in enumerate(classes):
        rat.SetValueAsInt(row, 0, value)
        rat.SetValueAsString(row, 1, name)
        for j, c in enumerate(hex_rgb(colour) + (255,)):
            rat.SetValueAsInt(row, 2 + j, c)
    return rat


def _colour_table(classes):
    from osgeo import gdal
    ct = gdal.ColorTable()
    ct.SetColorEntry(DOMINANT_NODATA, (0, 0, 0, 0))
    for value, _, colour in classes:
        ct.SetColorEntry(value, hex_rgb(colour) + (255,))
    return ct


def annotate_outputs(folder: str, files: Dict[str, str], dates: Sequence[str], factors: Sequence[str],
                     dominant: str = DOMINANT_FILE, cog: bool = False) -> List[str]:
    """Write the GDAL metadata of a prediction's rasters in `folder` (after they are closed).

    files: {"sm": "sm.tif", factor: "weight_<factor>.tif", ...} as in predict_to_folder; `dominant` the
    dominant-factor file (skipped when absent). Every band gets DATE=<ISO date> and its description;
    sm gets unit 'm3 m-3', weights '1'; dominant_factor gets category names, the factor colours
    (colour table or attribute table, see the module doc) and dataset items FACTORS/FACTOR_<i>.
    cog: the rasters are Cloud Optimized GeoTIFFs already: they are not rewritten (an update would move
    their header and break the COG layout); the metadata goes to .aux.xml sidecars (GDAL's PAM) instead.
    Returns the names of the sidecars (PAM .aux.xml: category names, attribute tables, COG metadata) now
    beside the rasters, to move with them.
    """
    from osgeo import gdal
    gdal.UseExceptions()
    dates = [str(d) for d in dates]
    classes = dominant_classes(factors)
    targets = [(fn, "sm" if key == "sm" else "weight", key) for key, fn in files.items()]
    if os.path.exists(os.path.join(folder, dominant)):
        targets.append((dominant, "dominant_factor", None))
    for fn, kind, key in targets:
        ds = gdal.Open(os.path.join(folder, fn), gdal.GA_ReadOnly if cog else gdal.GA_Update)
        try:
            md = {"ISMOE_OUTPUT": kind, "TIME_UNIT": "day", "FIRST_DATE": dates[0] if dates else "",
                  "LAST_DATE": dates[-1] if dates else ""}
            if kind == "sm":
                md.update(UNITS=SM_UNIT, LONG_NAME="volumetric soil moisture")
            elif kind == "weight":
                md.update(UNITS=WEIGHT_UNIT, FACTOR=str(key), LONG_NAME=f"weight of factor {key}")
            else:
                md.update(FACTORS=",".join(factors), LONG_NAME="top-weighted factor (0 = nodata)",
                          **{f"FACTOR_{v}": f"{n} {c}" for v, n, c in classes})
            for k, v in md.items():
                ds.SetMetadataItem(k, v)
            names = ["nodata"] + [n for _, n, _ in classes]
            single = ds.RasterCount == 1
            for b in range(1, ds.RasterCount + 1):
                band = ds.GetRasterBand(b)
                if b <= len(dates):
                    if band.GetDescription() != dates[b - 1]:
                        band.SetDescription(dates[b - 1])
                    band.SetMetadataItem("DATE", dates[b - 1])
                if kind == "sm":
                    band.SetUnitType(SM_UNIT)
                elif kind == "weight":
                    band.SetUnitType(WEIGHT_UNIT)
                else:
                    band.SetCategoryNames(names)
                    if single:       # GeoTIFF allows a palette on single-band files only
                        band.SetColorTable(_colour_table(classes))
                    else:
                        band.SetDefaultRAT(_dominant_rat(classes))
        finally:
            ds = None
    return [fn + ".aux.xml" for fn, _, _ in targets if os.path.exists(os.path.join(folder, fn + ".aux.xml"))]


def band_views(tif: str, dates: Sequence[str], out_dir: str = None, stem: str = None) -> List[str]:
    """One single-band VRT per band of `tif` (band i = dates[i - 1]), written to
    `out_dir` (default <folder of tif>/by_date) as <stem>_<date>.vrt; the VRTs reference the GeoTIFF by a
    relative path, so the folder can move. Stale views of the same stem are removed first.
    Returns the VRT paths in band order."""
    from osgeo import gdal
    gdal.UseExceptions()
    tif = os.path.abspath(tif)
    out_dir = out_dir or os.path.join(os.path.dirname(tif), BAND_VIEW_DIR)
    stem = stem or os.path.splitext(os.path.basename(tif))[0]
    os.makedirs(out_dir, exist_ok=True)
    for old in os.listdir(out_dir):
        if old.startswith(stem + "_") and old.endswith(".vrt"):
            os.remove(os.path.join(out_dir, old))
    src = gdal.Open(tif)
    try:
        if src.RasterCount != len(dates):
            raise ValueError(f"{tif} has {src.RasterCount} bands but {len(dates)} dates")
        paths = []
        for b, d in enumerate(dates, start=1):
            path = os.path.join(out_dir, f"{stem}_{d}.vrt")
            view = gdal.Translate(path, src, format="VRT", bandList=[b])
            view = None  # noqa: F841 - closing writes the file
            _relative_source(path, tif)
            paths.append(path)
    finally:
        src = None
    return paths


def _relative_source(vrt: str, source: str):
    """Make a VRT reference its source by a path relative to the VRT (GDAL writes an absolute one when the
    source is not below the VRT's folder)."""
    from xml.sax.saxutils import escape
    with open(vrt, encoding="utf-8") as f:
        text = f.read()
    rel = os.path.relpath(source, os.path.dirname(os.path.abspath(vrt))).replace(os.sep, "/")
    absolute = '<SourceFilename relativeToVRT="0">%s</SourceFilename>' % escape(source)
    if absolute in text:
        text = text.replace(absolute, '<SourceFilename relativeToVRT="1">%s</SourceFilename>' % escape(rel))
        from ..fileutil import atomic_output
        with atomic_output(vrt, ".vrt") as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


SIDECAR_SUFFIXES = (".aux.xml", ".qml", ".ovr", ".msk")


def is_prediction_file(name: str) -> bool:
    """Whether `name` (a file or folder in a prediction folder) belongs to a prediction of ismoe:predict:
    sm.tif, weight_<factor>.tif, the spreads, dominant_factor.tif, importance.csv, prediction.json, their
    sidecars (.aux.xml, .qml styles, .ovr overviews) and the by_date/ views. Anything else in the folder is
    not ours: predict refuses to replace such a folder."""
    import fnmatch
    if name == BAND_VIEW_DIR or name.startswith(".ismoe_predict_"):   # (temporaries of plugin versions < issue 13)
        return True
    base = name
    for suf in SIDECAR_SUFFIXES:
        if name.endswith(suf) and name != suf:
            base = name[:-len(suf)] + (".tif" if suf == ".qml" else "")    # sm.qml is the style of sm.tif
            break
    return base in PREDICTION_FILES or any(fnmatch.fnmatchcase(base, p) for p in PREDICTION_PATTERNS)


def drop_stale(out_dir: str, rasters: Sequence[str], keep: Sequence[str] = None):
    """Before new rasters replace old ones in `out_dir` file by file: remove the old ones' .aux.xml sidecars
    (PAM would override the new metadata) and the per-date VRT views of an earlier prediction; with `keep`
    (the names of the whole new set), also every other file of the earlier prediction (is_prediction_file):
    old weight_<factor>.tif of factors the new model does not have, their styles and sidecars.
    (predict_to_folder replaces the whole folder at once, fileutil.staged_folder; this is its file-by-file
    form, for folders that cannot be renamed.)"""
    if keep is not None:
        keep = set(keep)
        for fn in os.listdir(out_dir):
            full = os.path.join(out_dir, fn)
            if fn not in keep and fn != BAND_VIEW_DIR and is_prediction_file(fn) and os.path.isfile(full):
                os.remove(full)
    for fn in rasters:
        side = os.path.join(out_dir, fn + ".aux.xml")
        if os.path.exists(side):
            os.remove(side)
    views = os.path.join(out_dir, BAND_VIEW_DIR)
    if os.path.isdir(views):
        stems = tuple(os.path.splitext(fn)[0] + "_" for fn in rasters)
        for fn in os.listdir(views):
            if fn.endswith(".vrt") and fn.startswith(stems):
                os.remove(os.path.join(views, fn))
        if not os.listdir(views):
            os.rmdir(views)
