"""Raster time series: dates, grids and alignment onto one reference grid.

Pure functions on top of rasterio / GDAL (no qgis, no PyQt), so the same code runs in a
Processing algorithm, a script or a notebook.

A *source* is anything GDAL opens where each band is one time step:

* a file path (GeoTIFF, NetCDF with a single variable, GRIB, VRT, ...),
* a GDAL dataset string such as ``NETCDF:"/data/era5land.nc":swvl1`` (what QGIS uses as the
  source of a NetCDF variable layer),
* a ``(netcdf_path, variable)`` tuple, or a path plus ``variable=...``,
* a :class:`SeriesInfo` returned by :func:`open_series` (avoids re-reading the dates).

Dates of the bands, in this order of precedence (see :func:`read_dates`):

1. band descriptions holding ISO dates (``2017-01-01``; a time part is ignored),
2. band metadata ``date`` (ISO), GDAL's ``NETCDF_DIM_<time>`` with the CF ``units``
   (``days|hours|minutes|seconds since ...``) and ``calendar`` of the time coordinate, or
   ``GRIB_VALID_TIME``,
3. an explicit ``start`` date and a step of ``step_days`` days.

Alignment (:func:`read_aligned`, :func:`read_window_aligned`) warps band blocks of the source
into the reference :class:`Grid` with GDAL (``rasterio.warp.reproject``), reading only the part
of the source that covers the requested window, so memory is bounded by
``block_bands x window`` (small windows read more bands at once, up to the memory of
64 bands x 256 x 256 pixels). Resampling ``'auto'``: ``bilinear`` when the grid is finer than,
equal to, or at most 1.5x coarser than the source (GDAL widens the bilinear kernel a little
when it downsamples), ``average`` of the valid source pixels (weighted by coverage) when the
grid is more than 1.5x coarser, and ``nearest`` for masks / categorical
layers (``kind='mask'``). A source on exactly the same lattice as the grid (same CRS and
pixel size, integer offset) is copied without resampling. Nodata, masked pixels and NaN become
NaN; so do cells of the grid the source does not cover. Interpolating kernels (bilinear, cubic)
give a value only where the source pixel under the cell centre is valid, weighting the valid
neighbours only; ``average`` averages the valid source pixels of the footprint. Each band is
treated on its own (the result does not depend on ``block_bands``). Scale/offset (packed
NetCDF/GeoTIFF) are applied.

All input problems raise subclasses of :class:`InputError` (a ``ValueError``) whose message
names the layer and says what to do.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import rasterio
import rasterio.warp
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window

__all__ = [
    "InputError", "SourceError", "GeoreferenceError", "NoDatesError", "BadDatesError",
    "DuplicateDatesError", "BandCountError", "MissingDatesError", "NoOverlapError",
    "Grid", "SeriesInfo", "AlignPlan",
    "netcdf_source", "parse_date", "read_dates", "open_series", "plan_alignment",
    "read_window_aligned", "read_aligned", "common_dates", "check_overlap",
    "write_series_geotiff",
]


# --------------------------------------------------------------------------- exceptions
class InputError(ValueError):
    """Base class of every bad-input error of the core data code."""


class SourceError(InputError):
    """A layer cannot be opened, or it is ambiguous (a NetCDF file with several variables)."""


class GeoreferenceError(InputError):
    """A layer has no CRS / geotransform, or a grid definition is invalid."""


class NoDatesError(InputError):
    """The bands of a layer carry no dates and no start date was given."""


class BadDatesError(InputError):
    """Dates are present but cannot be understood (bad band descriptions, CF units...)."""


class DuplicateDatesError(InputError):
    """Two bands of one layer have the same date."""


class BandCountError(InputError):
    """The number of bands of a layer does not match the number of dates."""


class MissingDatesError(InputError):
    """Requested dates are not in a layer."""


class NoOverlapError(InputError):
    """Layers do not overlap in space or in time."""


# --------------------------------------------------------------------------- helpers
def _noop_log(_msg: str) -> None:
    return None


def _fmt_dates(dates, limit: int = 5) -> str:
    dates = [str(d) for d in np.asarray(dates).astype("datetime64[D]")]
    if len(dates) <= limit:
        return ", ".join(dates)
    return ", ".join(dates[:limit]) + f", ... ({len(dates)} in all)"


def _fmt_bounds(b) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


def _crs_label(crs: CRS) -> str:
    try:
        epsg = crs.to_epsg()
    except Exception:  # pragma: no cover - PROJ lookup failure
        epsg = None
    if epsg:
        return f"EPSG:{epsg}"
    try:
        return crs.to_string()[:80]
    except Exception:  # pragma: no cover
        return "custom CRS"


@functools.lru_cache(maxsize=64)
def _crs_from_text(text: str) -> CRS:
    return CRS.from_user_input(text)


def _as_crs(crs_like) -> CRS:
    if isinstance(crs_like, CRS):
        return crs_like
    if crs_like is None or (isinstance(crs_like, str) and not crs_like.strip()):
        raise GeoreferenceError("no CRS given: set the coordinate reference system of the layer")
    try:
        if isinstance(crs_like, str):
            return _crs_from_text(crs_like)
        return CRS.from_user_input(crs_like)
    except Exception as err:
        raise GeoreferenceError(f"cannot understand the CRS {str(crs_like)[:120]!r}: {err}") from err


def _same_crs(a: CRS, b: CRS) -> bool:
    if a == b:
        return True
    try:
        return a.to_wkt() == b.to_wkt()
    except Exception:  # pragma: no cover
        return False


# --------------------------------------------------------------------------- Grid
@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS (WKT), GDAL geotransform ``(x0, dx, rx, y0, ry, dy)``, size.

    The geotransform maps pixel ``(col, row)`` corners to ``x = x0 + col*dx + row*rx``,
    ``y = y0 + col*ry + row*dy`` (GDAL order; ``dy`` is negative for north-up grids).
    """

    crs_wkt: str
    transform: tuple
    width: int
    height: int

    def __post_init__(self):
        t = tuple(float(v) for v in self.transform)
        if len(t) != 6:
            raise GeoreferenceError(f"a grid transform needs 6 numbers (GDAL order), got {len(t)}")
        object.__setattr__(self, "transform", t)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        if self.width < 1 or self.height < 1:
            raise GeoreferenceError(f"a grid needs at least 1x1 pixels, got {self.width}x{self.height}")
        if t[1] * t[5] - t[2] * t[4] == 0:
            raise GeoreferenceError(f"degenerate grid transform {t}: the pixel size is zero")

    # ---- construction
    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        try:
            return cls(str(d["crs_wkt"]), tuple(d["transform"]), int(d["width"]), int(d["height"]))
        except KeyError as err:
            raise GeoreferenceError(f"grid description lacks {err}: need crs_wkt, transform, width, height") from err

    def to_dict(self) -> dict:
        return {"crs_wkt": self.crs_wkt, "transform": list(self.transform),
                "width": self.width, "height": self.height}

    @classmethod
    def from_raster(cls, source, variable: Optional[str] = None, name: Optional[str] = None) -> "Grid":
        """The grid of a raster layer (path, GDAL string, (nc, var) or SeriesInfo)."""
        if isinstance(source, SeriesInfo):
            return source.grid
        path, label = _resolve_source(source, variable, name)
        with _open(path, label) as ds:
            return _grid_of(ds, label)

    @classmethod
    def from_extent(cls, crs_wkt, xmin: float, ymin: float, xmax: float, ymax: float, res) -> "Grid":
        """A north-up grid covering ``xmin..xmax, ymin..ymax`` with pixel size ``res``.

        ``res`` is a number or ``(xres, yres)`` in CRS units; ``crs_wkt`` may be any CRS
        definition rasterio understands (WKT, ``"EPSG:4326"``). The extent is rounded up to a
        whole number of pixels from (xmin, ymax).
        """
        crs = _as_crs(crs_wkt)
        if isinstance(res, (tuple, list)):
            xres, yres = float(res[0]), float(res[1])
        else:
            xres = yres = float(res)
        xres, yres = abs(xres), abs(yres)
        if not (xres > 0 and yres > 0 and math.isfinite(xres) and math.isfinite(yres)):
            raise GeoreferenceError(f"the grid resolution must be > 0, got {res!r}")
        if not (xmax > xmin and ymax > ymin):
            raise GeoreferenceError(
                f"empty extent ({xmin}, {ymin}, {xmax}, {ymax}): xmax must exceed xmin and ymax exceed ymin")
        width = max(1, int(math.ceil((xmax - xmin) / xres - 1e-6)))
        height = max(1, int(math.ceil((ymax - ymin) / yres - 1e-6)))
        return cls(crs.to_wkt(), (float(xmin), xres, 0.0, float(ymax), 0.0, -yres), width, height)

    # ---- properties
    @property
    def crs(self) -> CRS:
        return _as_crs(self.crs_wkt)

    @property
    def affine(self) -> Affine:
        return Affine.from_gdal(*self.transform)

    @property
    def shape(self) -> tuple:
        return (self.height, self.width)

    @property
    def res(self) -> tuple:
        """Pixel size ``(xres, yres)`` as positive numbers."""
        a = self.affine
        return (math.hypot(a.a, a.d), math.hypot(a.b, a.e))

    def bounds(self) -> tuple:
        """``(xmin, ymin, xmax, ymax)`` of the grid's outer edges in its CRS."""
        a = self.affine
        xs, ys = zip(*[a * (c, r) for c, r in ((0, 0), (self.width, 0), (0, self.height),
                                                  (self.width, self.height))])
        return (min(xs), min(ys), max(xs), max(ys))

    def window_grid(self, row_off: int, col_off: int, height: int, width: int) -> "Grid":
        """The grid of a pixel window (may extend outside this grid)."""
        t = self.affine * Affine.translation(col_off, row_off)
        return Grid(self.crs_wkt, t.to_gdal(), width, height)

    def xy(self, rows, cols):
        """Coordinates of the centres of pixels ``(rows, cols)``."""
        rows = np.asarray(rows, dtype=float) + 0.5
        cols = np.asarray(cols, dtype=float) + 0.5
        a = self.affine
        return a.c + cols * a.a + rows * a.b, a.f + cols * a.d + rows * a.e

    def rowcol(self, xs, ys):
        """Pixel ``(rows, cols)`` (int64, may be outside the grid) holding points ``(xs, ys)``."""
        inv = ~self.affine
        xs = np.asarray(xs, dtype=float)
        ys = np.asarray(ys, dtype=float)
        cols = inv.c + xs * inv.a + ys * inv.b
        rows = inv.f + xs * inv.d + ys * inv.e
        with np.errstate(invalid="ignore"):
            return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)

    def same_as(self, other: "Grid", rtol: float = 1e-9) -> bool:
        """Same size, CRS and transform (within a relative tolerance of a pixel)."""
        if (self.width, self.height) != (other.width, other.height):
            return False
        if not _same_crs(self.crs, other.crs):
            return False
        px = max(self.res)
        return all(abs(a - b) <= rtol * max(1.0, abs(a), abs(b)) + 1e-9 * px
                   for a, b in zip(self.transform, other.transform))


def _grid_of(ds, label: str) -> Grid:
    if ds.crs is None or not ds.crs.to_wkt():
        raise GeoreferenceError(
            f"layer '{label}' has no coordinate reference system: assign one "
            f"(e.g. in QGIS: Layer Properties > Source, or gdal_edit.py -a_srs EPSG:4326)")
    t = ds.transform
    if t.is_identity:
        raise GeoreferenceError(
            f"layer '{label}' has no geotransform (it is not georeferenced): georeference it "
            f"first (e.g. gdal_translate -a_ullr / -a_srs)")
    return Grid(ds.crs.to_wkt(), t.to_gdal(), ds.width, ds.height)


# --------------------------------------------------------------------------- sources
def netcdf_source(path, variable: str) -> str:
    """GDAL's subdataset string for one variable of a NetCDF file."""
    return f'NETCDF:"{os.fspath(path)}":{variable}'


_NETCDF_RE = re.compile(r'^NETCDF:"?(?P<path>.*?)"?:(?P<var>[^:"]+)$', re.IGNORECASE)


def _resolve_source(source, variable=None, name=None):
    """Return ``(gdal_string, display_name)``."""
    if isinstance(source, SeriesInfo):
        return source.path, name or source.name
    if isinstance(source, (tuple, list)) and len(source) == 2:
        source, variable = source
    if source is None:
        raise SourceError(f"no layer given{' for ' + repr(name) if name else ''}: choose a raster layer")
    path = os.fspath(source)
    if variable:
        if path.upper().startswith("NETCDF:"):
            m = _NETCDF_RE.match(path)
            base = m.group("path") if m else path[7:]
        else:
            base = path
        path = netcdf_source(base, variable)
    if name:
        return path, str(name)
    m = _NETCDF_RE.match(path)
    if m:
        return path, f"{os.path.basename(m.group('path'))}:{m.group('var')}"
    if ":" in path and not os.path.exists(path):  # other GDAL strings (HDF5:..., /vsizip/...)
        return path, path
    return path, os.path.basename(path) or path


class _open:
    """Context manager opening a raster with clear errors (and subdataset handling)."""

    def __init__(self, path: str, label: str):
        self.path, self.label, self.ds = path, label, None

    def __enter__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                ds = rasterio.open(self.path)
            except (RasterioIOError, RasterioError) as err:
                m = _NETCDF_RE.match(self.path)
                file_part = m.group("path") if m else self.path
                if (m or ":" not in file_part) and not os.path.exists(file_part):
                    hint = f"the file {file_part} does not exist"
                else:
                    hint = "check the path (and variable name) and that GDAL can read this format"
                raise SourceError(f"cannot open layer '{self.label}' ({self.path}): {hint}. GDAL said: {err}") from err
            if ds.count == 0:
                subs = list(ds.subdatasets or [])
                ds.close()
                if len(subs) == 1:
                    try:
                        ds = rasterio.open(subs[0])
                    except (RasterioIOError, RasterioError) as err:
                        raise SourceError(f"cannot open the only variable of layer '{self.label}': {err}") from err
                elif subs:
                    names = [s.rsplit(":", 1)[-1] for s in subs]
                    example = subs[0]
                    m = re.match(r"^netcdf:(.*):([^:]+)$", example, re.IGNORECASE)
                    if m:
                        example = netcdf_source(m.group(1).strip('"'), m.group(2))
                    raise SourceError(
                        f"layer '{self.label}' holds several variables ({', '.join(names)}): choose one, "
                        f"e.g. {example} (in QGIS, add that variable as its own layer)")
                else:
                    raise SourceError(f"layer '{self.label}' ({self.path}) has no raster bands")
        self.ds = ds
        return ds

    def __exit__(self, *exc):
        if self.ds is not None:
            self.ds.close()
        return False


# --------------------------------------------------------------------------- dates
_ISO_DATE_RE = re.compile(r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ]\S*)?\s*$")
_COMPACT_DATE_RE = re.compile(r"^\s*(\d{4})(\d{2})(\d{2})\s*$")


def parse_date(value) -> np.datetime64:
    """A date as ``datetime64[D]`` from an ISO string (``2017-01-01``, ``2017-01-01T06:00``,
    ``20170101``), a ``datetime.date``/``datetime`` or a ``numpy.datetime64``.

    Raises :class:`BadDatesError` otherwise.
    """
    if hasattr(value, "toPyDateTime") and not hasattr(value, "toPyDate"):  # QDateTime, no Qt import
        value = value.toPyDateTime()
    elif hasattr(value, "toPyDate"):  # QDate
        value = value.toPyDate()
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise BadDatesError("not a date: NaT")
        return value.astype("datetime64[D]")
    if isinstance(value, _dt.datetime):
        return np.datetime64(value.date(), "D")
    if isinstance(value, _dt.date):
        return np.datetime64(value, "D")
    if isinstance(value, str):
        m = _ISO_DATE_RE.match(value) or _COMPACT_DATE_RE.match(value)
        if m:
            try:
                return np.datetime64(_dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3))), "D")
            except ValueError:
                pass
    raise BadDatesError(f"not a date: {value!r} (expected an ISO date such as 2017-01-01)")


def _try_date(value):
    try:
        return parse_date(value)
    except BadDatesError:
        return None


_UNIT_SECONDS = {
    "second": 1.0, "seconds": 1.0, "sec": 1.0, "secs": 1.0, "s": 1.0,
    "minute": 60.0, "minutes": 60.0, "min": 60.0, "mins": 60.0,
    "hour": 3600.0, "hours": 3600.0, "hr": 3600.0, "hrs": 3600.0, "h": 3600.0,
    "day": 86400.0, "days": 86400.0, "d": 86400.0,
    "week": 604800.0, "weeks": 604800.0,
}
_REF_RE = re.compile(
    r"^\s*(?P<y>-?\d{1,4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})"
    r"(?:[T ]+(?P<H>\d{1,2}):(?P<M>\d{1,2})(?::(?P<S>\d{1,2}(?:\.\d*)?))?)?"
    r"\s*(?P<tz>Z|UTC|GMT|[+-]\d{1,2}(?::?\d{2})?)?\s*$", re.IGNORECASE)
_STANDARD_CALENDARS = {"", "standard", "gregorian", "proleptic_gregorian"}


def _cf_to_dates(values: Sequence[float], units: str, calendar: str, label: str) -> np.ndarray:
    """CF ``<unit> since <reference>`` numbers to ``datetime64[D]`` (UTC day, floored)."""
    m = re.match(r"^\s*(\w+)\s+since\s+(.+)$", units or "", re.IGNORECASE)
    if not m:
        raise BadDatesError(f"layer '{label}': time units {units!r} are not of the CF form '<unit> since <date>'")
    unit, ref = m.group(1).lower(), m.group(2)
    cal = (calendar or "").strip().lower()
    values = np.asarray(values, dtype=np.float64)
    if cal not in _STANDARD_CALENDARS:
        try:
            import cftime  # shipped with netCDF4
        except ImportError as err:  # pragma: no cover
            raise BadDatesError(
                f"layer '{label}': calendar {calendar!r} needs the cftime package; "
                f"or give the start date explicitly") from err
        try:
            objs = cftime.num2date(values, units, calendar=cal)
            return np.array([np.datetime64(_dt.date(o.year, o.month, o.day), "D") for o in objs])
        except Exception as err:
            raise BadDatesError(
                f"layer '{label}': cannot convert times in calendar {calendar!r} to dates ({err}); "
                f"give the start date explicitly") from err
    if unit not in _UNIT_SECONDS:
        raise BadDatesError(
            f"layer '{label}': time unit {unit!r} (in {units!r}) is not supported "
            f"(use days/hours/minutes/seconds since ...); give the start date explicitly")
    r = _REF_RE.match(ref)
    if not r:
        raise BadDatesError(f"layer '{label}': cannot read the reference date {ref!r} of time units {units!r}")
    try:
        base = np.datetime64(_dt.date(int(r.group("y")), int(r.group("m")), int(r.group("d"))), "ms")
    except ValueError as err:
        raise BadDatesError(f"layer '{label}': bad reference date in time units {units!r}") from err
    offset_ms = 0.0
    if r.group("H"):
        offset_ms += (int(r.group("H")) * 3600 + int(r.group("M")) * 60 + float(r.group("S") or 0)) * 1000
    tz = (r.group("tz") or "").upper()
    if tz and tz not in ("Z", "UTC", "GMT"):
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        hh, mm = (int(digits[:-2]), int(digits[-2:])) if len(digits) > 2 else (int(digits), 0)
        offset_ms -= sign * (hh * 3600 + mm * 60) * 1000  # local time -> UTC
    if not np.all(np.isfinite(values)):
        raise BadDatesError(f"layer '{label}': the time coordinate holds missing values")
    ms = np.round(values * _UNIT_SECONDS[unit] * 1000.0 + offset_ms).astype(np.int64)
    return (base + ms.astype("timedelta64[ms]")).astype("datetime64[D]")


def _dates_from_descriptions(ds, label):
    descs = list(ds.descriptions)
    parsed = [_try_date(d) if d else None for d in descs]
    ok = [p is not None for p in parsed]
    if all(ok):
        return np.array(parsed, dtype="datetime64[D]"), "band descriptions"
    if any(ok):
        bad = [f"band {i + 1}: {descs[i]!r}" for i, good in enumerate(ok) if not good][:5]
        raise BadDatesError(
            f"layer '{label}': some band descriptions are ISO dates and some are not ({'; '.join(bad)}): "
            f"give every band an ISO date (YYYY-MM-DD) as description")
    return None, None


def _dates_from_band_tags(ds, label):
    tags = [ds.tags(i) for i in range(1, ds.count + 1)]
    for key in ("date", "DATE", "Date"):
        if all(key in t for t in tags):
            parsed = [_try_date(t[key]) for t in tags]
            if all(p is not None for p in parsed):
                return np.array(parsed, dtype="datetime64[D]"), f"band metadata '{key}'"
    if all("GRIB_VALID_TIME" in t for t in tags):
        secs = []
        for t in tags:
            m = re.search(r"-?\d+", t["GRIB_VALID_TIME"])
            if not m:
                break
            secs.append(int(m.group(0)))
        else:
            return _cf_to_dates(secs, "seconds since 1970-01-01", "standard", label), "GRIB_VALID_TIME"
    return None, None


def _netcdf_time_dim(dstags: dict) -> Optional[str]:
    extra = dstags.get("NETCDF_DIM_EXTRA", "").strip("{} ")
    dims = [d.strip() for d in extra.split(",") if d.strip()]
    if not dims:
        return None
    for d in dims:
        units = dstags.get(f"{d}#units", "")
        if " since " in units.lower():
            return d
    for d in dims:
        if dstags.get(f"{d}#standard_name", "").lower() == "time" or dstags.get(f"{d}#axis", "").upper() == "T":
            return d
    for d in dims:
        if d.lower() in ("time", "t", "valid_time", "date"):
            return d
    return None


def _dates_from_netcdf(ds, label):
    dstags = ds.tags()
    dim = _netcdf_time_dim(dstags)
    if dim is None:
        return None, None, None
    units = dstags.get(f"{dim}#units", "")
    calendar = dstags.get(f"{dim}#calendar", "standard")
    key = f"NETCDF_DIM_{dim}"
    values = []
    for i in range(1, ds.count + 1):
        v = ds.tags(i).get(key)
        if v is None:
            return None, None, f"band {i} has no {key}"
        try:
            values.append(float(v))
        except ValueError:
            return None, None, f"band {i}: {key}={v!r} is not a number"
    if not units:
        return None, None, f"the time dimension '{dim}' has no units"
    extra = [d for d in dstags.get("NETCDF_DIM_EXTRA", "").strip("{} ").split(",") if d.strip() and d.strip() != dim]
    return _cf_to_dates(values, units, calendar, label), f"NetCDF time '{dim}' ({units})", extra


def _dates_from_ds(ds, label, start, step_days, log):
    dates, how = _dates_from_descriptions(ds, label)
    extra = []
    problem = None
    if dates is None:
        dates, how = _dates_from_band_tags(ds, label)
    if dates is None:
        try:
            dates, how, extra_or_problem = _dates_from_netcdf(ds, label)
        except BadDatesError as err:
            if start is None:
                raise
            problem, dates = str(err), None
        else:
            if dates is None:
                problem = extra_or_problem
            else:
                extra = extra_or_problem or []
    if dates is None:
        if start is None:
            why = f" ({problem})" if problem else ""
            raise NoDatesError(
                f"layer '{label}' has no dates in its bands{why}: give the date of its first band "
                f"(start date) and the step in days, or set ISO dates (YYYY-MM-DD) as band descriptions")
        step = int(step_days)
        if step < 1:
            raise BadDatesError(f"layer '{label}': the step in days must be >= 1, got {step_days!r}")
        first = parse_date(start)
        dates = first + np.arange(ds.count) * np.timedelta64(step, "D")
        how = f"start date {first} + {step} day(s) per band"
        if problem:
            log(f"{label}: {problem}; using the given start date instead")
    elif start is not None:
        log(f"{label}: dates taken from {how}; the given start date {start} is ignored")
    _check_duplicates(dates, label, extra)
    return np.asarray(dates, dtype="datetime64[D]"), how


def _check_duplicates(dates, label, extra_dims=()):
    uniq, inverse, counts = np.unique(dates, return_inverse=True, return_counts=True)
    if np.any(counts > 1):
        dup = uniq[counts > 1]
        first = dup[0]
        bands = (np.nonzero(dates == first)[0] + 1).tolist()
        hint = ("the variable has extra dimension(s) " + ", ".join(repr(d) for d in extra_dims) +
                ": select one level (e.g. gdal_translate -b, or an xarray .sel) before using it"
                if extra_dims else
                "keep one band per day (aggregate sub-daily data to daily values first, "
                "e.g. with gdal/cdo/xarray), or fix the band dates")
        raise DuplicateDatesError(
            f"layer '{label}' has duplicated dates: {_fmt_dates(dup)} (e.g. {first} in bands "
            f"{', '.join(map(str, bands[:6]))}): {hint}")


def read_dates(source, start=None, step_days: int = 1, *, variable: Optional[str] = None,
               name: Optional[str] = None, log: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """Dates (``datetime64[D]``, one per band, in band order) of a raster time series.

    ``source``: path, GDAL string (``NETCDF:"f.nc":var``), ``(nc_path, variable)`` or a
    path with ``variable=``. Order of precedence: ISO band descriptions, band metadata
    (``date``, ``NETCDF_DIM_<time>`` + CF units/calendar, ``GRIB_VALID_TIME``), then
    ``start`` + ``step_days``. ``name`` is the layer name used in messages.

    Raises :class:`NoDatesError`, :class:`BadDatesError`, :class:`DuplicateDatesError`,
    :class:`SourceError`.
    """
    if isinstance(source, SeriesInfo) and variable is None:
        return source.dates.copy()
    path, label = _resolve_source(source, variable, name)
    with _open(path, label) as ds:
        dates, _ = _dates_from_ds(ds, label, start, step_days, log or _noop_log)
    return dates


# --------------------------------------------------------------------------- SeriesInfo
@dataclass
class SeriesInfo:
    """What :func:`open_series` learnt about a raster time series."""

    path: str            # GDAL string to open it
    name: str            # name used in messages
    dates: np.ndarray    # datetime64[D], one per band
    grid: Grid
    nodata: Optional[float]
    count: int           # number of bands
    dtype: str
    date_source: str = ""  # where the dates came from
    scales: tuple = field(default_factory=tuple)
    offsets: tuple = field(default_factory=tuple)
    units: str = ""      # the unit the file gives (band unit type, or a 'units' metadata item); '' if none

    def band_of(self, date) -> Optional[int]:
        """1-based band index of ``date``, or None."""
        idx = np.nonzero(self.dates == parse_date(date))[0]
        return int(idx[0]) + 1 if idx.size else None


def open_series(source, start=None, step_days: int = 1, *, variable: Optional[str] = None,
                name: Optional[str] = None, dates=None,
                log: Optional[Callable[[str], None]] = None) -> SeriesInfo:
    """Open a raster time series and check it: dates (see :func:`read_dates`), grid, nodata.

    ``dates``, when given, overrides the dates found in the file (one per band).
    Raises :class:`BandCountError` when the number of bands differs from the number of dates.
    """
    if isinstance(source, SeriesInfo) and variable is None and dates is None:
        return source
    path, label = _resolve_source(source, variable, name)
    log = log or _noop_log
    with _open(path, label) as ds:
        grid = _grid_of(ds, label)
        if dates is not None:
            found = np.array([parse_date(d) for d in dates], dtype="datetime64[D]")
            how = "given dates"
            _check_duplicates(found, label)
        else:
            found, how = _dates_from_ds(ds, label, start, step_days, log)
        if len(found) != ds.count:
            raise BandCountError(
                f"layer '{label}' has {ds.count} band(s) but {len(found)} date(s): give one date per band "
                f"(one band per time step)")
        nodata = ds.nodata
        info = SeriesInfo(path=path, name=label, dates=found, grid=grid,
                          nodata=None if nodata is None else float(nodata), count=ds.count,
                          dtype=ds.dtypes[0], date_source=how,
                          scales=tuple(float(s) for s in ds.scales),
                          offsets=tuple(float(o) for o in ds.offsets), units=_units_of(ds))
    return info


def _units_of(ds) -> str:
    """The unit of a dataset's values: band 1's unit type, else a 'units' item of band 1 or of the dataset
    (NetCDF: '<variable>#units'), else ''."""
    try:
        u = (ds.units or ("",))[0] or ""
        if u:
            return str(u)
        for tags in (ds.tags(1), ds.tags()):
            for k, v in tags.items():
                if k.lower() == "units" or (k.lower().endswith("#units") and not k.lower().startswith(
                        ("time#", "lat", "lon", "x#", "y#", "crs#", "spatial_ref#"))):
                    return str(v)
    except Exception:  # noqa: BLE001 - a unit we cannot read only widens the plausible range
        return ""
    return ""


@contextlib.contextmanager
def pam_disabled():
    """GDAL's PAM off (GDAL_PAM_ENABLED=NO, thread-local) while the block runs: opening and reading a
    raster then writes no <file>.aux.xml beside it. QGIS's raster layers compute statistics and
    histograms when they are created, which GDAL keeps in such sidecars; the Processing algorithms load
    their input layers inside this (see algorithms/base.py), so reading an input never writes next to it
    (shared or read-only data folders stay as they are). Our own reads (rasterio, below) do not write
    sidecars: they keep PAM on so that metadata a user keeps in an existing .aux.xml is still read."""
    try:
        from osgeo import gdal
    except ImportError:  # pragma: no cover - rasterio without the GDAL bindings
        with rasterio.Env(GDAL_PAM_ENABLED="NO"):
            yield
        return
    old = gdal.GetThreadLocalConfigOption("GDAL_PAM_ENABLED", None)
    gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", "NO")
    try:
        yield
    finally:
        gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", old)


# --------------------------------------------------------------------------- overlap / dates
def common_dates(date_arrays: Sequence, names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Sorted intersection of several date arrays; :class:`NoOverlapError` when empty."""
    arrays = [np.asarray(a).astype("datetime64[D]") for a in date_arrays]
    if not arrays:
        raise NoOverlapError("no layers given: at least one dated layer is needed")
    names = list(names) if names is not None else [f"layer {i + 1}" for i in range(len(arrays))]

    def span(a):
        return f"{a.min()}..{a.max()}" if a.size else "no dates"

    common = np.unique(arrays[0])
    if common.size == 0:
        raise NoOverlapError(f"'{names[0]}' has no dates")
    for i in range(1, len(arrays)):
        nxt = np.intersect1d(common, arrays[i])
        if nxt.size == 0:
            left = f"'{names[0]}'" if i == 1 else "'" + "', '".join(names[:i]) + "' (together)"
            raise NoOverlapError(
                f"no common dates between {left} ({span(common)}) and '{names[i]}' ({span(arrays[i])}): "
                f"choose layers that cover the same period")
        common = nxt
    return common


def _bounds_and_crs(obj, ref_crs: CRS):
    if isinstance(obj, SeriesInfo):
        obj = obj.grid
    if isinstance(obj, Grid):
        return obj.bounds(), obj.crs
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and not np.isscalar(obj[0]):
        return tuple(float(v) for v in obj[0]), _as_crs(obj[1])
    if isinstance(obj, (tuple, list)) and len(obj) == 4:
        return tuple(float(v) for v in obj), ref_crs
    raise TypeError("expected a Grid, a SeriesInfo, bounds (xmin, ymin, xmax, ymax) or (bounds, crs)")


def _transform_bounds(src_crs: CRS, dst_crs: CRS, b):
    if _same_crs(src_crs, dst_crs):
        return tuple(b)
    out = rasterio.warp.transform_bounds(src_crs, dst_crs, *b, densify_pts=21)
    if not all(math.isfinite(v) for v in out):
        raise ValueError("non-finite bounds")
    return out


def _intersect(a, b):
    xmin, ymin = max(a[0], b[0]), max(a[1], b[1])
    xmax, ymax = min(a[2], b[2]), min(a[3], b[3])
    if xmax > xmin and ymax > ymin:
        return (xmin, ymin, xmax, ymax)
    return None


def check_overlap(grid: Grid, other, name: str = "layer") -> tuple:
    """Check that ``other`` (Grid, SeriesInfo, bounds in the grid CRS, or ``(bounds, crs)``)
    overlaps ``grid``. Returns the overlap bounds in the grid CRS; raises
    :class:`NoOverlapError` naming the layer when the extents do not intersect.
    """
    ref_crs = grid.crs
    ob, ocrs = _bounds_and_crs(other, ref_crs)
    gb = grid.bounds()
    inter = None
    try:
        tb = _transform_bounds(ocrs, ref_crs, ob)
        inter = _intersect(gb, tb)
        compared = True
    except Exception:
        compared = False
    if not compared:  # other's extent does not map into the reference CRS: compare the other way
        try:
            gb_in_other = _transform_bounds(ref_crs, ocrs, gb)
            if _intersect(gb_in_other, ob) is not None:
                inter = gb
            compared = True
        except Exception:
            compared = False
    if inter is None:
        where = (f"extent {_fmt_bounds(ob)} in {_crs_label(ocrs)}" if compared
                 else f"extent {_fmt_bounds(ob)} in {_crs_label(ocrs)}, which cannot be transformed")
        raise NoOverlapError(
            f"layer '{name}' ({where}) does not overlap the reference grid (extent {_fmt_bounds(gb)} in "
            f"{_crs_label(ref_crs)}): choose layers that cover the same area, or another reference "
            f"layer/extent")
    return inter


# --------------------------------------------------------------------------- alignment
_RESAMPLING_NAMES = {r.name: r for r in Resampling}


@dataclass
class AlignPlan:
    """How a source is put onto the grid."""

    resampling: str      # 'none' (same lattice, copied) or a GDAL resampling name
    reprojected: bool    # CRS of the source differs from the grid's
    ratio: float         # grid pixel size / source pixel size (in grid units); > 1 = coarsening
    direct: bool         # pixel-aligned copy, no warp
    src_crs: str = ""
    dst_crs: str = ""

    def describe(self, name: str = "") -> str:
        head = f"{name}: " if name else ""
        if self.direct:
            return f"{head}same grid lattice as the reference: copied without resampling"
        proj = (f"reprojected {self.src_crs} -> {self.dst_crs}" if self.reprojected
                else f"same CRS ({self.dst_crs})")
        return (f"{head}{proj}; resampling {self.resampling} "
                f"(grid pixel = {self.ratio:.3g} x source pixel)")


def _src_res_in(info_grid: Grid, dst_crs: CRS) -> float:
    """Geometric-mean pixel size of the source expressed in ``dst_crs`` units."""
    sx, sy = info_grid.res
    if _same_crs(info_grid.crs, dst_crs):
        return math.sqrt(sx * sy)
    b = info_grid.bounds()
    try:
        t, w, h = rasterio.warp.calculate_default_transform(
            info_grid.crs, dst_crs, info_grid.width, info_grid.height, *b)
        return math.sqrt(abs(t.a * t.e - t.b * t.d))
    except Exception:
        # fall back to one pixel at the centre of the source
        a = info_grid.affine
        cx, cy = a * (info_grid.width / 2, info_grid.height / 2)
        xs, ys = rasterio.warp.transform(info_grid.crs, dst_crs, [cx, cx + sx, cx], [cy, cy, cy + sy])
        return math.sqrt(abs(math.hypot(xs[1] - xs[0], ys[1] - ys[0]) * math.hypot(xs[2] - xs[0], ys[2] - ys[0])))


def _lattice_offset(src: Grid, dst: Grid):
    """Integer (row, col) offset of dst pixel (0,0) in src pixels when both share a lattice."""
    if not _same_crs(src.crs, dst.crs):
        return None
    s, d = src.transform, dst.transform
    if s[2] or s[4] or d[2] or d[4]:
        return None
    if abs(s[1] - d[1]) > 1e-9 * abs(s[1]) or abs(s[5] - d[5]) > 1e-9 * abs(s[5]):
        return None
    col = (d[0] - s[0]) / s[1]
    row = (d[3] - s[3]) / s[5]
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return int(round(row)), int(round(col))


def plan_alignment(info: SeriesInfo, grid: Grid, resampling: str = "auto", kind: str = "continuous") -> AlignPlan:
    """Decide how ``info`` is put on ``grid``.

    ``resampling``: 'auto' or a GDAL/rasterio name ('nearest', 'bilinear', 'cubic', 'average',
    'mode', ...). ``kind``: 'continuous' (default) or 'mask' / 'categorical' (auto -> nearest).
    'auto' for continuous data: bilinear unless the grid is more than 1.5x coarser than the
    source, then average.
    """
    kind = (kind or "continuous").lower()
    if kind not in ("continuous", "mask", "categorical"):
        raise ValueError(f"kind must be 'continuous', 'mask' or 'categorical', got {kind!r}")
    dst_crs, src_crs = grid.crs, info.grid.crs
    reprojected = not _same_crs(src_crs, dst_crs)
    dst_res = math.sqrt(grid.res[0] * grid.res[1])
    ratio = dst_res / _src_res_in(info.grid, dst_crs)
    direct = _lattice_offset(info.grid, grid) is not None
    res = (resampling or "auto").lower()
    if res == "auto":
        if kind != "continuous":
            res = "nearest"
        elif ratio > 1.5:
            res = "average"
        else:
            res = "bilinear"
    elif res not in _RESAMPLING_NAMES:
        raise ValueError(f"unknown resampling {resampling!r}: use 'auto' or one of {', '.join(_RESAMPLING_NAMES)}")
    return AlignPlan(resampling="none" if direct else res, reprojected=reprojected, ratio=ratio, direct=direct,
                     src_crs=_crs_label(src_crs), dst_crs=_crs_label(dst_crs))


def _band_indexes(info: SeriesInfo, dates, allow_missing: bool) -> np.ndarray:
    """1-based band per requested date, 0 where missing (allowed)."""
    want = np.asarray(dates).astype("datetime64[D]")
    order = np.argsort(info.dates, kind="stable")
    sd = info.dates[order]
    pos = np.searchsorted(sd, want)
    pos_c = np.clip(pos, 0, len(sd) - 1)
    found = (pos < len(sd)) & (sd[pos_c] == want)
    bands = np.where(found, order[pos_c] + 1, 0).astype(np.int64)
    if not allow_missing and not np.all(found):
        miss = want[~found]
        raise MissingDatesError(
            f"layer '{info.name}' has no band for {miss.size} of the requested date(s): {_fmt_dates(miss)} "
            f"(its dates: {info.dates.min()}..{info.dates.max()}): use the common period of all layers, "
            f"or fill missing dates")
    return bands


def _as_window(window):
    if isinstance(window, Window):
        return int(window.row_off), int(window.col_off), int(window.height), int(window.width)
    r, c, h, w = (int(v) for v in window)
    if h < 0 or w < 0:
        raise ValueError(f"window height/width must be >= 0, got {window!r}")
    return r, c, h, w


def _read_block(ds, bands, window, info: SeriesInfo, screen=None) -> np.ndarray:
    """Read bands in a source window as float32 with NaN for nodata/masked, scale/offset applied.

    Values that are never data (inf, -inf, |x| >= 1e30: float32 fill values) become NaN too. With a
    ``screen`` (validate.ValueScreen) values outside its plausible range do as well, and the screen
    counts them per band (prepare reports them); this happens before warping, so a bad source pixel
    never leaks into its neighbours through the resampling kernel."""
    arr = ds.read(indexes=[int(b) for b in bands], window=window, masked=True, out_dtype="float32")
    out = np.ma.filled(arr, np.nan).astype(np.float32, copy=False)
    if info.scales or info.offsets:
        for k, b in enumerate(bands):
            s = info.scales[b - 1] if info.scales else 1.0
            o = info.offsets[b - 1] if info.offsets else 0.0
            if s != 1.0 or o != 0.0:
                with np.errstate(over="ignore", invalid="ignore"):
                    out[k] = out[k] * np.float32(s) + np.float32(o)
    if screen is not None:
        screen.apply(out, bands)
    else:
        with np.errstate(invalid="ignore"):
            out[~(np.abs(out) < _ABS_LIMIT)] = np.nan
    return out


_ABS_LIMIT = 1e30      # validate.ABS_LIMIT: at or above it a value is a fill value, not data


def _source_window(ds, src_grid: Grid, dst_grid: Grid, plan: AlignPlan):
    """Source pixel window covering dst_grid (padded for the resampling kernel), or None."""
    db = dst_grid.bounds()
    try:
        sb = _transform_bounds(dst_grid.crs, src_grid.crs, db)
    except Exception:
        return Window(0, 0, src_grid.width, src_grid.height)  # cannot map: use the whole source
    inv = ~src_grid.affine
    xs = [sb[0], sb[2], sb[0], sb[2]]
    ys = [sb[1], sb[1], sb[3], sb[3]]
    cols, rows = zip(*[inv * (x, y) for x, y in zip(xs, ys)])
    pad = 2 + int(math.ceil(2 * max(1.0, plan.ratio)))
    c0 = int(math.floor(min(cols))) - pad
    c1 = int(math.ceil(max(cols))) + pad
    r0 = int(math.floor(min(rows))) - pad
    r1 = int(math.ceil(max(rows))) + pad
    c0, r0 = max(c0, 0), max(r0, 0)
    c1, r1 = min(c1, src_grid.width), min(r1, src_grid.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


_INTERPOLATING = {Resampling.bilinear, Resampling.cubic, Resampling.cubic_spline, Resampling.lanczos}


def _warp_block(src, src_transform, src_crs, dst_grid: Grid, dst_crs, resampling) -> np.ndarray:
    """Warp a (bands, h, w) float32 block with NaN as nodata, each band on its own terms.

    GDAL treats nodata differently for one band (an interpolated pixel is valid only if the
    source pixel under it is valid) and for several bands (UNIFIED_SRC_NODATA=NO: valid if
    any pixel of the kernel is valid). We warp all bands at once (one GDAL call per block, much
    faster than one per band) and, for interpolating kernels, mask with a nearest-neighbour warp
    of the same block, which gives exactly the single-band result whatever ``block_bands``.
    """
    out = np.full((src.shape[0], dst_grid.height, dst_grid.width), np.nan, dtype=np.float32)
    common = dict(src_transform=src_transform, src_crs=src_crs, src_nodata=np.nan,
                  dst_transform=dst_grid.affine, dst_crs=dst_crs, dst_nodata=np.nan,
                  UNIFIED_SRC_NODATA="NO")
    rasterio.warp.reproject(source=src, destination=out, resampling=resampling, **common)
    if resampling in _INTERPOLATING:
        near = np.full_like(out, np.nan)
        rasterio.warp.reproject(source=src, destination=near, resampling=Resampling.nearest, **common)
        out[np.isnan(near)] = np.nan
    return out


_BLOCK_PIXELS = 64 * 256 * 256      # source pixels per warped block of bands, for small windows


def read_window_aligned(source, grid: Grid, dates, window, resampling: str = "auto", start=None,
                        step_days: int = 1, block_bands: int = 64, *, allow_missing: bool = False,
                        kind: str = "continuous", variable: Optional[str] = None, name: Optional[str] = None,
                        log: Optional[Callable[[str], None]] = None, callbacks=None,
                        return_plan: bool = False, screen=None):
    """Read the bands of ``source`` for ``dates`` on a pixel window of ``grid``.

    ``window`` = ``(row_off, col_off, height, width)`` in grid pixels (or a rasterio Window);
    it may extend beyond the grid (e.g. a halo at the edges): those cells are NaN.
    Returns float32 ``(len(dates), height, width)`` with NaN for nodata / not covered
    (and ``(array, AlignPlan)`` when ``return_plan``). Bands are warped ``block_bands`` at a
    time from the part of the source that covers the window, so memory stays bounded.
    ``allow_missing=True`` fills dates the source lacks with NaN instead of raising
    :class:`MissingDatesError`. ``callbacks`` (core_callbacks.Callbacks) gets progress per block
    and is asked for cancel between blocks. ``screen`` (validate.ValueScreen): see :func:`_read_block`.
    """
    log = log or (callbacks.log if callbacks is not None else _noop_log)
    info = source if (isinstance(source, SeriesInfo) and variable is None) else \
        open_series(source, start, step_days, variable=variable, name=name, log=log)
    label = name or info.name
    row_off, col_off, height, width = _as_window(window)
    bands = _band_indexes(info, dates, allow_missing)
    plan = plan_alignment(info, grid, resampling, kind)
    out = np.full((len(bands), height, width), np.nan, dtype=np.float32)
    block_bands = max(1, int(block_bands))

    # part of the window inside the grid
    r0, c0 = max(row_off, 0), max(col_off, 0)
    r1, c1 = min(row_off + height, grid.height), min(col_off + width, grid.width)
    valid = np.nonzero(bands > 0)[0]
    if r1 > r0 and c1 > c0 and valid.size:
        sub = grid.window_grid(r0, c0, r1 - r0, c1 - c0)
        dst = out[:, r0 - row_off:r1 - row_off, c0 - col_off:c1 - col_off]
        offset = _lattice_offset(info.grid, sub) if plan.direct else None
        with _open(info.path, label) as ds:
            if offset is not None:
                sr, sc = offset
                sr0, sc0 = max(sr, 0), max(sc, 0)
                sr1, sc1 = min(sr + sub.height, info.grid.height), min(sc + sub.width, info.grid.width)
                swin = Window(sc0, sr0, sc1 - sc0, sr1 - sr0) if (sr1 > sr0 and sc1 > sc0) else None
            else:
                swin = _source_window(ds, info.grid, sub, plan)
            if swin is not None:
                src_transform = ds.window_transform(swin)
                resampling_enum = _RESAMPLING_NAMES.get(plan.resampling, Resampling.nearest)
                # small windows (stations, 1x1 series) take more bands per read: the block stays
                # within the memory of block_bands bands of a 256 x 256 window
                block_bands = max(block_bands, _BLOCK_PIXELS // max(1, int(swin.width) * int(swin.height)))
                nblocks = int(math.ceil(valid.size / block_bands))
                for bi in range(nblocks):
                    if callbacks is not None:
                        callbacks.check_cancel()
                    sel = valid[bi * block_bands:(bi + 1) * block_bands]
                    src = _read_block(ds, bands[sel], swin, info, screen)
                    if offset is not None:
                        dst[sel, sr0 - sr:sr1 - sr, sc0 - sc:sc1 - sc] = src
                    else:
                        dst[sel] = _warp_block(src, src_transform, info.grid.crs, sub, grid.crs,
                                               resampling_enum)
                    if callbacks is not None:
                        callbacks.progress((bi + 1) / nblocks)
    log(plan.describe(label))
    return (out, plan) if return_plan else out


def read_aligned(source, grid: Grid, dates, resampling: str = "auto", start=None, step_days: int = 1,
                 block_bands: int = 64, *, allow_missing: bool = False, kind: str = "continuous",
                 variable: Optional[str] = None, name: Optional[str] = None,
                 log: Optional[Callable[[str], None]] = None, callbacks=None, return_plan: bool = False,
                 screen=None):
    """Read ``source`` for ``dates`` aligned on the whole ``grid``: float32 ``(T, H, W)``.

    Checks that the source overlaps the grid (:class:`NoOverlapError` otherwise); see
    :func:`read_window_aligned` for the rest.
    """
    log = log or (callbacks.log if callbacks is not None else _noop_log)
    info = source if (isinstance(source, SeriesInfo) and variable is None) else \
        open_series(source, start, step_days, variable=variable, name=name, log=log)
    check_overlap(grid, info.grid, name or info.name)
    return read_window_aligned(info, grid, dates, (0, 0, grid.height, grid.width), resampling,
                               block_bands=block_bands, allow_missing=allow_missing, kind=kind,
                               name=name, log=log, callbacks=callbacks, return_plan=return_plan, screen=screen)


# --------------------------------------------------------------------------- writing
def write_series_geotiff(path, array, grid: Grid, dates, nodata: float = -9999, *,
                         cog: bool = False, units: Optional[str] = None,
                         description: Optional[str] = None) -> str:
    """Write a ``(T, H, W)`` series as a tiled, compressed GeoTIFF, one band per date with the
    ISO date as band description; NaN becomes ``nodata``. Written to a temporary file next to
    ``path`` and moved into place, so no half-written file is left on error. ``cog=True``
    writes a Cloud Optimized GeoTIFF (with overviews). Returns ``path``.
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (grid.height, grid.width):
        raise ValueError(f"array shape {arr.shape} does not match (T, {grid.height}, {grid.width})")
    dates = np.asarray([parse_date(d) for d in dates], dtype="datetime64[D]") if len(dates) else \
        np.array([], dtype="datetime64[D]")
    if len(dates) != arr.shape[0]:
        raise BandCountError(f"{os.path.basename(os.fspath(path))}: {arr.shape[0]} band(s) but {len(dates)} date(s)")
    path = os.fspath(path)
    out_dir = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(out_dir):
        raise InputError(f"cannot write {path}: the folder {out_dir} does not exist")
    if not os.access(out_dir, os.W_OK):
        raise InputError(f"cannot write {path}: the folder {out_dir} is not writable; choose another output path")
    is_float = np.issubdtype(arr.dtype, np.floating)
    dtype = arr.dtype if is_float or np.issubdtype(arr.dtype, np.integer) else np.float32
    profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=arr.shape[0],
                   dtype=dtype, crs=grid.crs, transform=grid.affine, nodata=nodata,
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                   predictor=3 if is_float else 2, interleave="band", bigtiff="if_safer")
    from ..fileutil import atomic_output, temporary_sibling
    with atomic_output(path, suffix=".tif") as tmp:
        # a COG is a copy of a finished GeoTIFF (GDAL's COG driver has no incremental writing): the GeoTIFF is
        # written to a second temporary beside the output and copied into the atomic temporary as COG
        gtiff = temporary_sibling(path, suffix=".gtiff.tif") if cog else tmp
        try:
            _write_gtiff(gtiff, profile, arr, dates, nodata, is_float, dtype, units, description)
            if cog:
                from rasterio.shutil import copy as _rio_copy
                _rio_copy(gtiff, tmp, driver="COG", compress="deflate", predictor="yes" if is_float else "no",
                          blocksize=256, bigtiff="if_safer")
        finally:
            if gtiff != tmp and os.path.exists(gtiff):
                os.remove(gtiff)
    return path


def _write_gtiff(tmp, profile, arr, dates, nodata, is_float, dtype, units, description):
    with rasterio.open(tmp, "w", **profile) as dst:
        for i in range(arr.shape[0]):
            band = arr[i]
            if is_float:
                band = np.where(np.isnan(band), nodata, band).astype(dtype, copy=False)
            dst.write(band, i + 1)
            dst.set_band_description(i + 1, str(dates[i]))
        tags = {}
        if units:
            tags["units"] = units
        if description:
            tags["TIFFTAG_IMAGEDESCRIPTION"] = description
        if tags:
            dst.update_tags(**tags)


# --------------------------------------------------------------------------- polygons on a grid
def rasterize_polygons(geometries: Sequence[dict], out_shape, transform, all_touched: bool = False) -> np.ndarray:
    """The one rasteriser of region polygons: int32 ``out_shape`` labels, ``i + 1`` where the pixel belongs to
    ``geometries[i]`` (its centre is inside, or any touch with ``all_touched``), 0 elsewhere; where polygons
    overlap the later one wins. ``geometries``: GeoJSON-like dicts in the grid's CRS (``transform`` an Affine or
    GDAL's 6 numbers)."""
    from rasterio import features
    if not isinstance(transform, Affine):
        transform = Affine.from_gdal(*transform)
    shapes = [(g, i + 1) for i, g in enumerate(geometries)]
    if not shapes:
        return np.zeros(tuple(out_shape), dtype=np.int32)
    return features.rasterize(shapes, out_shape=tuple(out_shape), transform=transform, fill=0,
                              all_touched=all_touched, dtype="int32")
