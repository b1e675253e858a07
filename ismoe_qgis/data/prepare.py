"""Build the dataset cube from factor raster series and a target (gridded SM series or stations).

Everything is aligned to ONE reference grid (by default the first factor layer's) with GDAL
warp (see rasters.py for the resampling rules) and to ONE daily calendar: the days from the
latest first date to the earliest last date over all inputs. A day a layer lacks is NaN in the
cube (an explicit gap), handled at training time by the gap policy; duplicated dates are an error.

Every factor and target layer passes through one validation layer (validate.py): non-finite values,
fill values and values outside the variable's plausible physical range become nodata with a warning
naming the layer, the dates and the count (or an error with ``strict=True``).
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..core_callbacks import Callbacks, ensure
from . import rasters
from . import validate
from .cube import Cube


class PrepareError(ValueError):
    """Bad input to prepare_dataset; the message names the parameter/layer and what to do."""


def _check_shape_params(patch_size, seq_len):
    if int(patch_size) != patch_size or patch_size < 1 or patch_size % 2 == 0:
        raise PrepareError(f"PATCH_SIZE must be an odd whole number >= 1 (e.g. 7), got {patch_size}")
    if int(seq_len) != seq_len or seq_len < 1:
        raise PrepareError(f"SEQ_LEN must be a whole number >= 1 (e.g. 14), got {seq_len}")


def daily_calendar(series: Sequence[rasters.SeriesInfo]) -> np.ndarray:
    """Daily dates from the latest start to the earliest end over all series."""
    first = max(s.dates.min() for s in series)
    last = min(s.dates.max() for s in series)
    if last < first:
        spans = ", ".join(f"'{s.name}' {s.dates.min()}..{s.dates.max()}" for s in series)
        raise rasters.NoOverlapError(f"the layers have no period in common ({spans}): choose layers that "
                                     f"cover the same dates")
    return np.arange(first, last + np.timedelta64(1, "D"), dtype="datetime64[D]")


def prepare_dataset(factors: Dict[str, List[Tuple[str, object]]], target=None, *,
                    stations: Optional[dict] = None, reference=None, start=None, step_days: int = 1,
                    patch_size: int = 7, seq_len: int = 14, resampling: str = "auto",
                    strict: bool = False, callbacks: Callbacks = None) -> Cube:
    """Align factor layers and the target into a Cube.

    factors:  {factor name: [(variable name, source), ...]}; a source is anything
              rasters.open_series accepts (path, NETCDF:"f.nc":var, SeriesInfo).
    target:   a gridded SM series source (band = date), or None when `stations` is given.
    stations: {"points": [(id, x, y), ...], "crs_wkt": str, "table": {id: (dates, values)},
              "drop_outside": bool, "points_name"/"table_name": names used in messages} (see stations.py);
              the target is the station series at their pixels. Optional "columns": {factor: {column: table}}
              with tables like "table": numeric columns of the station table measured at the stations (rain,
              soil temperature) that become factor variables, known at the station pixels only (NaN elsewhere,
              so a patch sees them at its centre pixel); a factor of that name may also hold raster layers.
    reference: a rasters.Grid, a source whose grid is used, or None (first factor layer).
    start/step_days: dates for layers whose files carry none.
    strict:   non-finite or implausible values in a layer are an error instead of nodata with a warning.
    """
    cb = ensure(callbacks)
    _check_shape_params(patch_size, seq_len)
    if not factors or not any(factors.values()):
        raise PrepareError("FACTORS: no factor layers given: add at least one raster layer per factor")
    if target is None and stations is None:
        raise PrepareError("TARGET: give a soil-moisture raster series or stations")
    columns = (stations or {}).get("columns") or {}
    if columns and target is not None:
        raise PrepareError("STATION_FACTORS: columns of a station table can be factors only with station targets "
                           "(STATIONS + STATION_TABLE); with a TARGET raster there is no station to measure them at")
    variables, infos, factor_vars = [], [], {}
    for fname, layers in factors.items():
        if not layers:
            raise PrepareError(f"FACTORS: factor '{fname}' has no layer")
        factor_vars[fname] = []
        for vname, source in layers:
            if vname in variables:
                raise PrepareError(f"FACTORS: variable name '{vname}' is used twice; give each layer its own name")
            info = rasters.open_series(source, start, step_days, name=vname, log=cb.log)
            cb.log(f"factor '{fname}' variable '{vname}': {info.count} bands, "
                   f"{info.dates.min()}..{info.dates.max()} (dates from {info.date_source})")
            variables.append(vname)
            infos.append(info)
            factor_vars[fname].append(vname)

    if isinstance(reference, rasters.Grid):
        grid = reference
    elif reference is not None:
        grid = rasters.open_series(reference, start, step_days, log=cb.log).grid
    else:
        grid = infos[0].grid
    cb.log(f"reference grid: {grid.width} x {grid.height} pixels, {grid.crs.to_string() if grid.crs else '?'}")
    if patch_size > min(grid.width, grid.height):
        biggest = min(grid.width, grid.height)
        biggest -= 1 - biggest % 2
        raise PrepareError(f"PATCH_SIZE ({patch_size}) is larger than the reference grid ({grid.width} x "
                           f"{grid.height} pixels): every patch would be mostly padding; choose PATCH_SIZE <= "
                           f"{biggest} (odd), or a larger REFERENCE grid")
    for info in infos:
        rasters.check_overlap(grid, info.grid, info.name)

    tinfo = None
    if target is not None:
        tinfo = rasters.open_series(target, start, step_days, name="TARGET", log=cb.log)
        rasters.check_overlap(grid, tinfo.grid, "TARGET")
        dates = daily_calendar(infos + [tinfo])
    else:
        dates = daily_calendar(infos)
        st_dates = np.unique(np.concatenate([np.asarray(d).astype("datetime64[D]")
                                             for d, _ in stations["table"].values()]))
        if not ((st_dates >= dates[0]) & (st_dates <= dates[-1])).any():
            raise rasters.NoOverlapError(
                f"STATIONS: the station table ({st_dates.min()}..{st_dates.max()}) and the factor layers "
                f"({dates[0]}..{dates[-1]}) have no date in common")
    if len(dates) < seq_len:
        raise PrepareError(f"SEQ_LEN ({seq_len}) is longer than the series the layers have in common "
                           f"({len(dates)} days, {dates[0]}..{dates[-1]}): shorten SEQ_LEN or add dates")
    cb.log(f"calendar: {len(dates)} days, {dates[0]}..{dates[-1]}")

    V = len(infos)
    x = np.empty((V, len(dates), grid.height, grid.width), np.float32)
    for v, info in enumerate(infos):
        cb.check_cancel()
        screen = validate.ValueScreen.for_layer(info.name, info.units, param="FACTORS", dates=info.dates,
                                                strict=strict)
        x[v] = rasters.read_aligned(info, grid, dates, resampling, allow_missing=True, name=info.name,
                                    log=cb.log, screen=screen)
        screen.report(cb.log)
        missing = len(dates) - len(np.intersect1d(info.dates, dates))
        if missing:
            cb.log(f"'{info.name}' lacks {missing} of the {len(dates)} days: they are gaps (NaN)")
        cb.progress(0.9 * (v + 1) / (V + 1))

    if tinfo is not None:
        screen = validate.ValueScreen.for_layer("TARGET", tinfo.units, param="TARGET", dates=tinfo.dates,
                                                strict=strict, target=True)
        y_grid = rasters.read_aligned(tinfo, grid, dates, resampling, allow_missing=True, name="TARGET",
                                      log=cb.log, screen=screen)
        screen.report(cb.log)
        has = np.isfinite(y_grid).any(axis=0)
        if not has.any():
            raise PrepareError("TARGET: no valid soil-moisture value on the reference grid in the common "
                               f"period {dates[0]}..{dates[-1]}: check its extent, dates and nodata")
        rows, cols = np.nonzero(has)
        y = y_grid[:, rows, cols]
        station_ids, kind = None, "grid"
    else:
        from . import stations as st
        ids, rows, cols = st.station_pixels(grid, stations["points"], stations["crs_wkt"],
                                            drop_outside=stations.get("drop_outside", False), log=cb.log,
                                            name=stations.get("points_name", "stations"))
        y = st.stations_to_target(stations["table"], ids, dates, log=cb.log,
                                  name=stations.get("table_name", "station table"))
        validate.screen_array(y, validate.ValueScreen.for_layer(
            stations.get("table_name", "STATION_TABLE"), param=stations.get("table_name", "STATION_TABLE"),
            strict=strict, target=True, labels=[str(i) for i in ids]), cb.log)
        if not np.isfinite(y).any():
            raise PrepareError("STATIONS: no station has a valid value in the common period "
                               f"{dates[0]}..{dates[-1]}")
        station_ids, kind = list(ids), "stations"
        if columns:
            x = _with_station_columns(x, variables, factor_vars, columns, ids, rows, cols, dates, strict, cb)
    cube = Cube(x=x, y=y, target_rows=rows, target_cols=cols, dates=dates, factors=factor_vars,
                variables=variables, grid=grid.to_dict(), patch_size=int(patch_size), seq_len=int(seq_len),
                target_kind=kind, station_ids=station_ids)
    cb.log(f"dataset: {V} variables in {len(factor_vars)} factors, {len(dates)} days, "
           f"{grid.height} x {grid.width} pixels, {len(rows)} target locations, "
           f"{int(np.isfinite(y).sum())} target values")
    cb.progress(1.0)
    return cube


def _with_station_columns(x, variables, factor_vars, columns, ids, rows, cols, dates, strict, cb):
    """x (V, T, H, W) with one more variable per station-table column: its daily values at the station
    pixels, NaN elsewhere. Extends `variables` and `factor_vars` in place."""
    from . import stations as st
    extra = []
    for fname, cols_of in columns.items():
        for col, table in cols_of.items():
            if col in variables:
                raise PrepareError(f"STATION_FACTORS: variable name '{col}' is used twice; give each its own name")
            vals = st.stations_to_target(table, ids, dates, log=cb.log, name=f"station column '{col}'")
            validate.screen_array(vals, validate.ValueScreen.for_layer(
                col, param="STATION_FACTORS", strict=strict, labels=[str(i) for i in ids]), cb.log)
            if not np.isfinite(vals).any():
                raise PrepareError(f"STATION_FACTORS: column '{col}' has no value at any station in the common "
                                   f"period {dates[0]}..{dates[-1]}")
            grid = np.full(x.shape[1:], np.nan, np.float32)
            grid[:, rows, cols] = vals
            extra.append(grid)
            variables.append(col)
            factor_vars.setdefault(fname, []).append(col)
            n_st = int(np.isfinite(vals).any(axis=0).sum())
            cb.log(f"factor '{fname}' variable '{col}': station-table column, values at {n_st} of {len(ids)} "
                   f"stations ({int(np.isfinite(vals).sum())} station-days); no value elsewhere on the grid")
    return np.concatenate([x, np.stack(extra)], axis=0) if extra else x
