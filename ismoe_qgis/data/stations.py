"""In-situ station targets: the station table, station pixels and the (T, N) target matrix.

Pure Python / numpy (+ rasterio for CRS transforms, osgeo.ogr for reading vector files);
no qgis import. The Processing glue turns a QGIS point layer into ``(id, x, y)`` tuples and a
table layer into rows (dicts), then calls these functions.

* :func:`read_station_table` - a CSV (or rows) of ``station_id, date, sm`` into
  ``{id: (dates datetime64[D], values float64)}``; empty cells are NaN.
* :func:`read_points_csv`, :func:`read_points_vector` - station points from a CSV with lon/lat
  columns or any OGR vector file (GeoPackage, shapefile, ...).
* :func:`station_pixels` - the grid pixel of each station (points transformed into the grid
  CRS).
* :func:`stations_to_target` - the float32 ``(T, N)`` target matrix for given dates.

Errors are :class:`~ismoe_qgis.data.rasters.InputError` subclasses (``ValueError``) that name
the table / station and say what to do.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .rasters import BadDatesError, Grid, InputError, NoOverlapError, _as_crs, _same_crs, parse_date

__all__ = [
    "StationTableError", "EmptyTableError", "DuplicateStationDateError", "MissingStationError",
    "StationOutsideGridError", "PointsError",
    "read_station_table", "read_points_csv", "read_points_vector", "station_pixels", "stations_to_target",
]

StationTable = Dict[str, Tuple[np.ndarray, np.ndarray]]


class StationTableError(InputError):
    """The station table cannot be read (missing column, bad date or value, empty id)."""


class EmptyTableError(StationTableError):
    """The station table has no rows."""


class DuplicateStationDateError(StationTableError):
    """A station has two rows for the same date."""


class MissingStationError(InputError):
    """A station of the point layer has no rows in the table."""


class StationOutsideGridError(InputError):
    """Stations lie outside the reference grid."""


class PointsError(InputError):
    """The station points are unusable (none, duplicated ids, missing coordinates)."""


def _noop_log(_msg: str) -> None:
    return None


_MISSING = {"", "nan", "na", "n/a", "null", "none", "-", "nodata"}


def normalize_id(value) -> str:
    """Station ids are compared as strings; 12, 12.0 and '12' are the same id."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value).strip()


def _parse_value(value, where: str) -> float:
    if value is None:
        return float("nan")
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if text.lower() in _MISSING:
        return float("nan")
    try:
        return float(text)
    except ValueError:
        try:
            return float(text.replace(",", "."))  # decimal comma
        except ValueError:
            raise StationTableError(f"{where}: value {value!r} is not a number (leave the cell empty for a missing value)") from None


def _find_field(fields: Sequence[str], wanted: str, table: str, role: str, err=None) -> str:
    if wanted in fields:
        return wanted
    low = {f.lower().strip(): f for f in fields}
    if wanted.lower().strip() in low:
        return low[wanted.lower().strip()]
    raise (err or StationTableError)(
        f"table '{table}' has no {role} column '{wanted}'; its columns are: "
        f"{', '.join(fields)}: set the {role} field to one of them")


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _iter_csv(path: str, label: str):
    if not os.path.exists(path):
        raise StationTableError(f"station table '{label}': the file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        sample = fh.read(8192)
        fh.seek(0)
        reader = csv.DictReader(fh, delimiter=_sniff_delimiter(sample.split("\n", 1)[0] if sample else ""))
        fields = list(reader.fieldnames or [])
        yield fields
        for row in reader:
            yield row


def read_station_table(source, id_field: str = "station_id", date_field: str = "date",
                       value_field: str = "sm", *, name: Optional[str] = None,
                       on_duplicate: str = "error",
                       log: Optional[Callable[[str], None]] = None) -> StationTable:
    """Read station time series: ``{station_id: (dates datetime64[D] sorted, values float64)}``.

    ``source`` is a CSV path (comma/semicolon/tab separated, header row) or an iterable of rows:
    dicts keyed by field names (e.g. a QGIS table layer's attributes) or ``(id, date, value)``
    sequences. Dates are ISO (``2017-01-01``; a time part is ignored, so rows are UTC-day
    values as written). Empty / ``NA`` / ``nan`` values are NaN.

    ``on_duplicate``: ``'error'`` (default) raises :class:`DuplicateStationDateError` for two
    rows with the same (id, date); ``'mean'`` averages them (e.g. sub-daily rows).
    Raises :class:`EmptyTableError` for a table with no rows, :class:`StationTableError` for a
    missing column or an unreadable date/value.
    """
    log = log or _noop_log
    if on_duplicate not in ("error", "mean"):
        raise ValueError("on_duplicate must be 'error' or 'mean'")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        label = name or os.path.basename(path)
        it = _iter_csv(path, label)
        fields = next(it)
        if not fields:
            raise EmptyTableError(f"station table '{label}' is empty (no header, no rows): give a CSV with columns "
                                  f"{id_field}, {date_field}, {value_field}")
        rows = it
        first_line = 2
    else:
        label = name or "station table"
        rows = iter(source)
        fields = None
        first_line = 1

    ids: List[str] = []
    dates: List[np.datetime64] = []
    values: List[float] = []
    keys = None
    for n, row in enumerate(rows, start=first_line):
        where = f"station table '{label}', {'line' if fields is not None else 'row'} {n}"
        if isinstance(row, Mapping):
            if keys is None:
                avail = fields if fields is not None else list(row.keys())
                keys = (_find_field(avail, id_field, label, "id"), _find_field(avail, date_field, label, "date"),
                        _find_field(avail, value_field, label, "value"))
            sid, d, v = row.get(keys[0]), row.get(keys[1]), row.get(keys[2])
        else:
            try:
                sid, d, v = row
            except (TypeError, ValueError):
                raise StationTableError(f"{where}: expected (station_id, date, value), got {row!r}") from None
        sid = normalize_id(sid)
        if not sid:
            raise StationTableError(f"{where}: empty station id: fill the {id_field} column on every row")
        if d is None or (isinstance(d, str) and not d.strip()):
            raise StationTableError(f"{where}: empty date for station {sid}: every row needs a date (YYYY-MM-DD)")
        try:
            day = parse_date(d)
        except BadDatesError:
            raise StationTableError(f"{where}: date {d!r} of station {sid} is not an ISO date (YYYY-MM-DD)") from None
        ids.append(sid)
        dates.append(day)
        values.append(_parse_value(v, where))
    if not ids:
        cols = f" (columns: {', '.join(fields)})" if fields else ""
        raise EmptyTableError(f"station table '{label}' has no rows{cols}: give at least one row of "
                              f"{id_field}, {date_field}, {value_field}")

    id_arr = np.asarray(ids, dtype=object)
    date_arr = np.asarray(dates, dtype="datetime64[D]")
    val_arr = np.asarray(values, dtype=np.float64)
    table: StationTable = {}
    n_dup = 0
    for sid in dict.fromkeys(ids):  # keeps first-seen order
        sel = id_arr == sid
        d, v = date_arr[sel], val_arr[sel]
        order = np.argsort(d, kind="stable")
        d, v = d[order], v[order]
        uniq, start, counts = np.unique(d, return_index=True, return_counts=True)
        if np.any(counts > 1):
            if on_duplicate == "error":
                dup = uniq[counts > 1]
                shown = ", ".join(str(x) for x in dup[:5]) + (f", ... ({dup.size} dates)" if dup.size > 5 else "")
                raise DuplicateStationDateError(
                    f"station table '{label}': station {sid} has several rows for {shown}: keep one value per "
                    f"station and day (aggregate sub-daily values to daily means first)")
            with np.errstate(invalid="ignore"):
                sums = np.add.reduceat(np.nan_to_num(v), start)
                nvalid = np.add.reduceat(np.isfinite(v).astype(np.int64), start)
                v = np.where(nvalid > 0, sums / np.maximum(nvalid, 1), np.nan)
            n_dup += int(np.sum(counts > 1))
            d = uniq
        table[sid] = (d, v)
    if n_dup:
        log(f"{label}: averaged duplicated rows on {n_dup} station-day(s)")
    n_nan = int(np.isnan(val_arr).sum())
    log(f"{label}: {len(table)} station(s), {len(ids)} row(s), {n_nan} missing value(s)")
    return table


# --------------------------------------------------------------------------- points
_X_NAMES = ("lon", "longitude", "long", "lng", "x", "easting")
_Y_NAMES = ("lat", "latitude", "y", "northing")


def _pick(fields: Sequence[str], wanted: Optional[str], candidates: Sequence[str], label: str, role: str) -> str:
    if wanted:
        return _find_field(fields, wanted, label, role, PointsError)
    low = {f.lower().strip(): f for f in fields}
    for c in candidates:
        if c in low:
            return low[c]
    raise PointsError(
        f"points table '{label}' has no {role} column (looked for {', '.join(candidates)}); its columns are "
        f"{', '.join(fields)}: name the {role} column explicitly")


def read_points_csv(path, id_field: str = "station_id", x_field: Optional[str] = None,
                    y_field: Optional[str] = None) -> List[Tuple[str, float, float]]:
    """Station points ``[(id, x, y), ...]`` from a CSV with an id column and coordinates.

    Without ``x_field``/``y_field``, columns named lon/longitude/x and lat/latitude/y are used
    (case-insensitive). The coordinates are returned as written: for lon/lat that is
    EPSG:4326, which the caller passes to :func:`station_pixels`.
    """
    path = os.fspath(path)
    label = os.path.basename(path)
    it = _iter_csv(path, label)
    fields = next(it)
    if not fields:
        raise PointsError(f"points table '{label}' is empty: give a CSV with {id_field}, lon, lat columns")
    fid = _find_field(fields, id_field, label, "id", PointsError)
    fx = _pick(fields, x_field, _X_NAMES, label, "x/longitude")
    fy = _pick(fields, y_field, _Y_NAMES, label, "y/latitude")
    points = []
    for n, row in enumerate(it, start=2):
        where = f"points table '{label}', line {n}"
        x = _parse_value(row.get(fx), where)
        y = _parse_value(row.get(fy), where)
        points.append((normalize_id(row.get(fid)), x, y))
    if not points:
        raise PointsError(f"points table '{label}' has no rows: give one row per station")
    return points


def read_points_vector(path, id_field: str = "station_id", layer: Optional[str] = None):
    """Station points and their CRS from an OGR vector file (GeoPackage, shapefile, GeoJSON...).

    Returns ``(points [(id, x, y)], crs_wkt)``; multipoints use their first point.
    """
    from osgeo import ogr  # lazily: osgeo is only needed here

    path = os.fspath(path)
    label = os.path.basename(path) + (f"|{layer}" if layer else "")
    ds = ogr.Open(path)
    if ds is None:
        raise PointsError(f"cannot open the point layer '{label}' ({path}): check the path")
    try:
        lyr = ds.GetLayerByName(layer) if layer else ds.GetLayer(0)
        if lyr is None:
            raise PointsError(f"point layer '{label}' not found in {path}")
        defn = lyr.GetLayerDefn()
        fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
        fid = _find_field(fields, id_field, label, "id", PointsError)
        srs = lyr.GetSpatialRef()
        crs_wkt = srs.ExportToWkt() if srs is not None else ""
        points = []
        for feat in lyr:
            geom = feat.GetGeometryRef()
            sid = normalize_id(feat.GetField(fid))
            if geom is None or geom.IsEmpty():
                points.append((sid, float("nan"), float("nan")))
                continue
            if geom.GetGeometryCount() > 0 and ogr.GT_Flatten(geom.GetGeometryType()) != ogr.wkbPoint:
                geom = geom.GetGeometryRef(0)
            if ogr.GT_Flatten(geom.GetGeometryType()) != ogr.wkbPoint:
                raise PointsError(f"layer '{label}' is not a point layer: give stations as points")
            points.append((sid, geom.GetX(), geom.GetY()))
    finally:
        ds = None
    if not points:
        raise PointsError(f"point layer '{label}' has no features: give one point per station")
    return points, crs_wkt


def station_pixels(grid: Grid, points: Sequence[Tuple], points_crs_wkt=None, *, drop_outside: bool = False,
                   name: str = "stations", log: Optional[Callable[[str], None]] = None):
    """Grid pixel of each station.

    ``points``: ``[(id, x, y), ...]`` in ``points_crs_wkt`` (any CRS definition; None = the
    grid CRS). Returns ``(ids list[str], rows int32, cols int32)`` in the input order.
    Stations outside the grid raise :class:`StationOutsideGridError` naming them, or are dropped
    with a message to ``log`` when ``drop_outside=True``. Duplicated ids, missing coordinates
    or no points raise :class:`PointsError`.
    """
    log = log or _noop_log
    pts = list(points)
    if not pts:
        raise PointsError(f"'{name}' has no points: give a point layer with one point per station")
    ids = [normalize_id(p[0]) for p in pts]
    seen, dups = set(), []
    for sid in ids:
        if sid in seen:
            dups.append(sid)
        seen.add(sid)
    if dups:
        raise PointsError(f"'{name}': station id(s) {', '.join(sorted(set(dups)))} appear more than once: "
                          f"give each station a unique id")
    if any(not s for s in ids):
        raise PointsError(f"'{name}': some points have an empty id: fill the id field of every point")
    xs = np.array([float(p[1]) if p[1] is not None else np.nan for p in pts], dtype=np.float64)
    ys = np.array([float(p[2]) if p[2] is not None else np.nan for p in pts], dtype=np.float64)
    bad = [ids[i] for i in np.nonzero(~(np.isfinite(xs) & np.isfinite(ys)))[0]]
    if bad:
        raise PointsError(f"'{name}': station(s) {', '.join(bad)} have no coordinates (empty geometry): "
                          f"fix or remove them")
    gcrs = grid.crs
    tx, ty = xs, ys
    if points_crs_wkt is not None and str(points_crs_wkt).strip():
        pcrs = _as_crs(points_crs_wkt)
        if not _same_crs(pcrs, gcrs):
            import rasterio.warp

            tx, ty = rasterio.warp.transform(pcrs, gcrs, xs.tolist(), ys.tolist())
            tx, ty = np.asarray(tx, dtype=np.float64), np.asarray(ty, dtype=np.float64)
    rows, cols = grid.rowcol(tx, ty)
    inside = (np.isfinite(tx) & np.isfinite(ty) & (rows >= 0) & (rows < grid.height)
              & (cols >= 0) & (cols < grid.width))
    if not np.all(inside):
        out = [f"{ids[i]} ({xs[i]:.6g}, {ys[i]:.6g})" for i in np.nonzero(~inside)[0]]
        b = grid.bounds()
        msg = (f"{len(out)} station(s) of '{name}' lie outside the reference grid (extent "
               f"{b[0]:.6g}, {b[1]:.6g}, {b[2]:.6g}, {b[3]:.6g}): {', '.join(out)}")
        if not drop_outside:
            raise StationOutsideGridError(msg + ": remove them from the point layer, enlarge the reference "
                                                "extent, or choose to drop stations outside the grid")
        log(msg + ": dropped")
        if not np.any(inside):
            raise StationOutsideGridError(f"no station of '{name}' lies inside the reference grid: check the "
                                          f"point layer's CRS and the reference extent")
    keep = np.nonzero(inside)[0]
    ids_kept = [ids[i] for i in keep]
    r, c = rows[keep].astype(np.int32), cols[keep].astype(np.int32)
    pix = {}
    for sid, rr, cc in zip(ids_kept, r.tolist(), c.tolist()):
        pix.setdefault((rr, cc), []).append(sid)
    shared = [v for v in pix.values() if len(v) > 1]
    if shared:
        log(f"'{name}': stations sharing a grid pixel (they get the same factor patch): "
            + "; ".join(", ".join(v) for v in shared))
    return ids_kept, r, c


def stations_to_target(table: StationTable, ids: Sequence, dates, *,
                       log: Optional[Callable[[str], None]] = None, name: str = "station table") -> np.ndarray:
    """Target matrix float32 ``(len(dates), len(ids))``, NaN where the table has no value.

    Raises :class:`MissingStationError` for ids with no rows in the table and
    :class:`NoOverlapError` when no station has any value on ``dates``.
    """
    log = log or _noop_log
    want = np.asarray(dates).astype("datetime64[D]")
    ids = [normalize_id(i) for i in ids]
    missing = [i for i in ids if i not in table]
    if missing:
        avail = list(table.keys())
        shown = ", ".join(avail[:10]) + (f", ... ({len(avail)} in all)" if len(avail) > 10 else "")
        raise MissingStationError(
            f"station(s) {', '.join(missing)} of the point layer have no rows in '{name}' (its stations: {shown}): "
            f"check the id field of the points and of the table, or remove those points")
    out = np.full((want.size, len(ids)), np.nan, dtype=np.float32)
    empty = []
    for j, sid in enumerate(ids):
        d, v = table[sid]
        pos = np.searchsorted(d, want)
        pos_c = np.clip(pos, 0, max(len(d) - 1, 0))
        hit = (pos < len(d)) & (d[pos_c] == want) if len(d) else np.zeros(want.size, bool)
        out[hit, j] = v[pos_c[hit]]
        if not np.any(np.isfinite(out[:, j])):
            empty.append(sid)
    if want.size and len(ids) and not np.any(np.isfinite(out)):
        spans = [f"{table[s][0].min()}..{table[s][0].max()}" for s in ids if len(table[s][0])]
        raise NoOverlapError(
            f"'{name}' has no value on the dates of the factors ({want.min()}..{want.max()}); station dates span "
            f"{spans[0] if spans else 'nothing'}: choose factor layers and stations that cover the same period")
    if empty:
        log(f"'{name}': station(s) with no value on the selected dates: {', '.join(empty)}")
    return out
