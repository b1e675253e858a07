"""Table time series (one row per day, one column per variable) -> 1x1-pixel raster series.

Station-style data (a basin mean, a flux tower, an in-situ probe with its meteorology) comes as
a table. Written as one single-pixel GeoTIFF per variable (one band per day, band description =
ISO date, georeferenced at the site), it goes through the SAME Processing algorithms as gridded
data: ``ismoe:preparedataset`` with ``PATCH_SIZE 1``, ``ismoe:train``, ``ismoe:evaluate``.

The single-pixel GeoTIFFs are pixel-interleaved and untiled (all dates of the pixel in one
compressed strip), so a 40-year daily series reads in milliseconds.

Caravan (Kratzert et al. 2023) helpers at the end: the file layout of a Caravan folder, the
factor grouping of the ERA5-Land columns and :func:`caravan_to_rasters`.

No qgis/PyQt import.
"""
from __future__ import annotations

import csv
import datetime as _dt
import glob
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import rasters

__all__ = [
    "TableError", "read_table", "site_location", "point_grid", "write_point_series", "table_to_rasters",
    "CARAVAN_FACTORS", "CARAVAN_TARGET", "caravan_files", "caravan_to_rasters", "factor_groups_text",
]

MAX_BANDS = 65535  # a pixel-interleaved TIFF holds at most this many samples per pixel


class TableError(ValueError):
    """A table cannot be read or lacks what was asked for (the message is meant for the user)."""


def _parse_day(text, path, lineno):
    t = (text or "").strip()
    try:
        return _dt.date.fromisoformat(t[:10])
    except ValueError:
        raise TableError(f"{os.path.basename(path)} line {lineno}: '{t}' is not an ISO date (YYYY-MM-DD)") from None


def _to_float(text):
    t = (text or "").strip()
    if not t or t.lower() in ("nan", "na", "null", "none"):
        return np.nan
    try:
        return float(t)
    except ValueError:
        return np.nan


def read_table(path, columns: Optional[Sequence[str]] = None, date_column: str = "date", start=None, end=None,
               daily: bool = True):
    """Read a CSV of daily series: ``(dates datetime64[D] (T,), {column: float32 (T,)})``.

    ``columns``: the value columns to return (default: every column but the date); a missing
    column raises :class:`TableError` listing the available ones. Empty fields and non-numbers
    become NaN. ``start``/``end``: optional inclusive date limits. ``daily``: fill missing days
    with NaN so the series is one row per calendar day. Duplicated or unordered dates raise.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TableError(f"table not found: {path}")
    lo = np.datetime64(str(start)[:10], "D") if start else None
    hi = np.datetime64(str(end)[:10], "D") if end else None
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rd = csv.reader(fh)
        try:
            header = [h.strip() for h in next(rd)]
        except StopIteration:
            raise TableError(f"{os.path.basename(path)} is empty") from None
        if date_column not in header:
            raise TableError(f"{os.path.basename(path)} has no date column '{date_column}' "
                             f"(columns: {', '.join(header)})")
        want = [c for c in header if c != date_column] if columns is None else list(columns)
        missing = [c for c in want if c not in header]
        if missing:
            raise TableError(f"{os.path.basename(path)} has no column(s) {', '.join(missing)} "
                             f"(columns: {', '.join(header)})")
        di = header.index(date_column)
        idx = [header.index(c) for c in want]
        dates, values = [], []
        for lineno, row in enumerate(rd, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            d = np.datetime64(_parse_day(row[di] if di < len(row) else "", path, lineno), "D")
            if (lo is not None and d < lo) or (hi is not None and d > hi):
                continue
            dates.append(d)
            values.append([_to_float(row[i]) if i < len(row) else np.nan for i in idx])
    if not dates:
        span = f" between {lo or '...'} and {hi or '...'}" if (lo is not None or hi is not None) else ""
        raise TableError(f"{os.path.basename(path)} has no row{span}")
    d = np.array(dates, dtype="datetime64[D]")
    v = np.array(values, dtype=np.float64).reshape(len(d), len(want)).astype(np.float32)
    steps = np.diff(d).astype(np.int64)
    if (steps <= 0).any():
        k = int(np.nonzero(steps <= 0)[0][0])
        raise TableError(f"{os.path.basename(path)}: dates must increase, but {d[k + 1]} follows {d[k]} "
                         f"(duplicated or unsorted rows)")
    if daily and len(d) > 1 and (steps > 1).any():
        full = np.arange(d[0], d[-1] + np.timedelta64(1, "D"), dtype="datetime64[D]")
        out = np.full((len(full), len(want)), np.nan, np.float32)
        out[(d - d[0]).astype(np.int64)] = v
        d, v = full, out
    return d, {c: v[:, j].copy() for j, c in enumerate(want)}


def site_location(attribute_files, site_id: str, id_column: str = "gauge_id", lat_column: str = "gauge_lat",
                  lon_column: str = "gauge_lon"):
    """(lon, lat) of a site from attribute CSV file(s), reading the columns by name.

    ``attribute_files``: a path or a list of paths; the first file with a row whose
    ``id_column`` is ``site_id`` and both coordinate columns wins.
    """
    files = [attribute_files] if isinstance(attribute_files, (str, os.PathLike)) else list(attribute_files)
    looked = []
    for f in files:
        f = os.fspath(f)
        with open(f, newline="", encoding="utf-8-sig") as fh:
            rd = csv.DictReader(fh)
            cols = rd.fieldnames or []
            looked.append(os.path.basename(f))
            if id_column not in cols or lat_column not in cols or lon_column not in cols:
                continue
            for row in rd:
                if (row.get(id_column) or "").strip() == site_id:
                    try:
                        lat, lon = float(row[lat_column]), float(row[lon_column])
                    except (TypeError, ValueError):
                        raise TableError(f"{os.path.basename(f)}: site {site_id} has no numeric "
                                         f"{lat_column}/{lon_column}") from None
                    if not (-90 <= lat <= 90 and -180 <= lon <= 360):
                        raise TableError(f"{os.path.basename(f)}: site {site_id} has coordinates out of range "
                                         f"(lat {lat}, lon {lon})")
                    return lon, lat
    raise TableError(f"site '{site_id}' with columns {id_column}, {lat_column}, {lon_column} not found in "
                     f"{', '.join(looked) or 'no attribute file'}")


def point_grid(lon: float, lat: float, pixel_size: float = 0.1, crs: str = "EPSG:4326") -> rasters.Grid:
    """A 1x1 grid whose single pixel is centred on (lon, lat) (or x, y in ``crs``)."""
    if not pixel_size > 0:
        raise TableError(f"pixel_size must be > 0, got {pixel_size}")
    h = pixel_size / 2.0
    from rasterio.crs import CRS
    return rasters.Grid(crs_wkt=CRS.from_user_input(crs).to_wkt(),
                        transform=(lon - h, pixel_size, 0.0, lat + h, 0.0, -pixel_size), width=1, height=1)


def write_point_series(path, values, dates, grid: rasters.Grid, nodata: float = -9999.0,
                       units: Optional[str] = None, description: Optional[str] = None) -> str:
    """Write a (T,) series as a 1x1-pixel GeoTIFF: one band per date (band description = ISO date),
    float32, NaN -> ``nodata``, pixel-interleaved in one deflate strip. Written to a temporary file
    and moved into place. Returns ``path``."""
    from osgeo import gdal  # rasterio's per-band overhead makes 10^4-band writes slow; GDAL's is not
    v = np.asarray(values, dtype=np.float32).ravel()
    d = np.asarray(dates).astype("datetime64[D]")
    if len(v) != len(d):
        raise TableError(f"{len(v)} values but {len(d)} dates")
    if not 0 < len(v) <= MAX_BANDS:
        raise TableError(f"a single-pixel GeoTIFF holds 1..{MAX_BANDS} dates, got {len(v)}: split the period")
    if (grid.width, grid.height) != (1, 1):
        raise TableError(f"write_point_series needs a 1x1 grid, got {grid.width}x{grid.height}")
    path = os.fspath(path)
    data = np.where(np.isfinite(v), v, np.float32(nodata)).astype("<f4")
    from ..fileutil import atomic_output
    with atomic_output(path, suffix=".tif") as tmp:
        drv = gdal.GetDriverByName("GTiff")
        ds = drv.Create(tmp, 1, 1, len(v), gdal.GDT_Float32,
                        ["INTERLEAVE=PIXEL", "COMPRESS=DEFLATE", "PREDICTOR=3", "BLOCKYSIZE=1"])
        if ds is None:
            raise TableError(f"cannot create {path}: {gdal.GetLastErrorMsg()}")
        try:
            ds.SetGeoTransform(list(grid.transform))
            ds.SetProjection(grid.crs_wkt)
            bands = list(range(1, len(v) + 1))
            if ds.WriteRaster(0, 0, 1, 1, data.tobytes(), 1, 1, gdal.GDT_Float32, band_list=bands) != 0:
                raise TableError(f"cannot write {path}: {gdal.GetLastErrorMsg()}")
            for i, day in enumerate(d.astype(str), start=1):
                band = ds.GetRasterBand(i)
                band.SetNoDataValue(float(nodata))
                band.SetDescription(str(day))
            if units:
                ds.SetMetadataItem("units", units)
            if description:
                ds.SetMetadataItem("TIFFTAG_IMAGEDESCRIPTION", description)
            ds.FlushCache()
        finally:
            ds = None
    return path


def table_to_rasters(table_path, out_dir, columns: Sequence[str], lon: float, lat: float, *,
                     date_column: str = "date", start=None, end=None, pixel_size: float = 0.1,
                     crs: str = "EPSG:4326", nodata: float = -9999.0, callbacks=None) -> Dict[str, str]:
    """Write one 1x1-pixel GeoTIFF per column of a daily table: ``{column: path}`` (``<column>.tif``).

    The pixel is centred on (lon, lat) in ``crs``; all files share the same grid and dates, so
    the layer names (the file names) are the variable names ``ismoe:preparedataset`` uses.
    """
    from ..core_callbacks import ensure
    cb = ensure(callbacks)
    dates, values = read_table(table_path, columns, date_column, start, end)
    grid = point_grid(lon, lat, pixel_size, crs)
    out = {}
    for i, c in enumerate(columns):
        cb.check_cancel()
        if not np.isfinite(values[c]).any():
            raise TableError(f"{os.path.basename(os.fspath(table_path))}: column {c} has no value in "
                             f"{dates[0]}..{dates[-1]}")
        out[c] = write_point_series(os.path.join(os.fspath(out_dir), f"{c}.tif"), values[c], dates, grid, nodata,
                                    description=f"{c} from {os.path.basename(os.fspath(table_path))}")
        cb.progress((i + 1) / len(columns))
    cb.log(f"wrote {len(out)} single-pixel series ({len(dates)} days, {dates[0]}..{dates[-1]}) at "
           f"lon {lon}, lat {lat} to {out_dir}")
    return out


# --------------------------------------------------------------------------- Caravan
#: factor -> Caravan ERA5-Land columns (daily basin means / sums)
CARAVAN_FACTORS: Dict[str, List[str]] = {
    "temperature": ["temperature_2m_mean", "dewpoint_temperature_2m_mean"],
    "radiation": ["surface_net_solar_radiation_mean", "surface_net_thermal_radiation_mean"],
    "wind": ["u_component_of_wind_10m_mean", "v_component_of_wind_10m_mean"],
    "precipitation": ["total_precipitation_sum", "potential_evaporation_sum"],
    "snow": ["snow_depth_water_equivalent_mean"],
}
#: the target: ERA5-Land volumetric soil water of layer 1 (0-7 cm), m3/m3
CARAVAN_TARGET = "volumetric_soil_water_layer_1_mean"


def factor_groups_text(factors: Dict[str, List[str]]) -> str:
    """The FACTOR_GROUPS string of ismoe:preparedataset: 'f1=a,b;f2=c'."""
    return ";".join(f"{f}={','.join(vs)}" for f, vs in factors.items())


def caravan_files(root, basin: str) -> dict:
    """``{"timeseries": csv path, "attributes": [csv paths]}`` of a basin in a Caravan folder
    (``timeseries/csv/<source>/<basin>.csv``, ``attributes/<source>/attributes_*.csv``)."""
    root = os.fspath(root)
    source = basin.split("_", 1)[0]
    ts = os.path.join(root, "timeseries", "csv", source, f"{basin}.csv")
    if not os.path.isfile(ts):
        found = sorted(glob.glob(os.path.join(root, "timeseries", "csv", "*", f"{basin}.csv")))
        if not found:
            have = sorted(os.path.splitext(os.path.basename(p))[0]
                          for p in glob.glob(os.path.join(root, "timeseries", "csv", "*", "*.csv")))
            raise TableError(f"basin '{basin}' not found in {root} (basins: {', '.join(have) or 'none'})")
        ts = found[0]
        source = os.path.basename(os.path.dirname(ts))
    attrs = sorted(glob.glob(os.path.join(root, "attributes", source, "attributes_*.csv")))
    # attributes_other_* holds gauge_lat/gauge_lon: read it first
    attrs.sort(key=lambda p: (0 if "other" in os.path.basename(p) else 1, p))
    return {"timeseries": ts, "attributes": attrs}


def caravan_to_rasters(root, basin: str, out_dir, *, start=None, end=None, pixel_size: float = 0.1,
                       factors: Optional[Dict[str, List[str]]] = None, target: str = CARAVAN_TARGET,
                       callbacks=None) -> dict:
    """Convert one Caravan basin into 1x1-pixel GeoTIFF series at its gauge (EPSG:4326).

    Returns ``{"basin", "lon", "lat", "factors", "target", "layers": {column: path}, "target_path",
    "factor_groups" (the FACTOR_GROUPS string), "start", "end", "n_days"}``.
    """
    factors = dict(factors or CARAVAN_FACTORS)
    files = caravan_files(root, basin)
    lon, lat = site_location(files["attributes"], basin)
    columns = [v for vs in factors.values() for v in vs] + [target]
    paths = table_to_rasters(files["timeseries"], out_dir, columns, lon, lat, start=start, end=end,
                             pixel_size=pixel_size, callbacks=callbacks)
    dates = rasters.open_series(paths[target]).dates
    return {"basin": basin, "lon": lon, "lat": lat, "factors": factors, "target": target,
            "layers": {c: paths[c] for c in columns if c != target}, "target_path": paths[target],
            "factor_groups": factor_groups_text(factors), "start": str(dates[0]), "end": str(dates[-1]),
            "n_days": int(len(dates))}
