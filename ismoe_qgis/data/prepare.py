"""Build the dataset cube from factor raster series and a target (gridded SM series or stations).

Everything is aligned to ONE reference grid (by default the first factor layer's) with GDAL
warp (see rasters.py for the resampling rules) and to ONE daily calendar: the days from the
latest first date to the earliest last date over all inputs. A day a layer lacks is NaN in the
cube (an explicit gap), handled at training time by the gap policy; duplicated dates are an error.

Every factor and target layer passes through one validation layer (validate.py): non-finite values,
fill values and values outside the variable's plausible physical range become nodata with a warning
naming the layer, the dates and the count (or an error with ``strict=True``).

With ``out_path`` ending in ``.zarr`` the cube is written as a chunked Zarr folder block by block
(``_prepare_zarr``): each block (all variables, a run of days, a spatial tile; ``block_bytes`` at most) is read,
aligned, screened and written before the next, and the statistics are accumulated per block in float64, so memory
stays bounded whatever the region size. The result is the same cube as the in-memory path (values and dates
exactly, statistics to float64 rounding).
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core_callbacks import Callbacks, ensure
from ..options import patch_size_problem
from . import rasters
from . import validate
from .cube import Cube


class PrepareError(ValueError):
    """Bad input to prepare_dataset; the message names the parameter/layer and what to do."""


def _check_shape_params(patch_size, seq_len):
    if patch_size_problem(patch_size):          # the odd-patch rule (options.py), checked where the value enters
        raise PrepareError(patch_size_problem(patch_size))
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
                    strict: bool = False, callbacks: Callbacks = None, out_path: Optional[str] = None,
                    chunks=None, block_bytes: int = 256 << 20, workers: int = 0,
                    scheduler: Optional[str] = None) -> Cube:
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
    out_path: where to write the cube: a ``.zarr`` path is written block by block (memory bounded by
              ``block_bytes``, chunks (V, days, rows, cols) default zarrcube.default_chunks) and the cube returned
              is the lazily opened folder; any other path is saved as ``.npz`` after building it in memory;
              None: nothing is written (the caller saves).
    workers/scheduler: the Zarr path's factor block reads (warp + screen) as Dask tasks, as predict's
              (model/parallel.plan_workers: 1 = serial, n = a local cluster, 0 = auto, or a scheduler address); the
              blocks are written in order by this process, so the cube is the same.
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

    if out_path is not None and os.fspath(out_path).rstrip("/\\").lower().endswith(".zarr"):
        return _prepare_zarr(out_path, infos, variables, factor_vars, grid, dates, tinfo, stations, columns,
                             resampling, strict, int(patch_size), int(seq_len), chunks, block_bytes, cb,
                             workers=workers, scheduler=scheduler)
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
        ids, rows, cols, y = _station_target(grid, stations, dates, strict, cb)
        station_ids, kind = list(ids), "stations"
        if columns:
            x = _with_station_columns(x, variables, factor_vars, columns, ids, rows, cols, dates, strict, cb)
    cube = Cube(x=x, y=y, target_rows=rows, target_cols=cols, dates=dates, factors=factor_vars,
                variables=variables, grid=grid.to_dict(), patch_size=int(patch_size), seq_len=int(seq_len),
                target_kind=kind, station_ids=station_ids)
    cb.log(f"dataset: {V} variables in {len(factor_vars)} factors, {len(dates)} days, "
           f"{grid.height} x {grid.width} pixels, {len(rows)} target locations, "
           f"{int(np.isfinite(y).sum())} target values")
    if out_path is not None:
        cube.save(out_path)
    cb.progress(1.0)
    return cube


def _station_target(grid, stations, dates, strict, cb):
    """The stations' pixels on the grid and their daily series: (ids, rows, cols, y (T, N)), screened like any
    target layer; an error when no station has a value in the common period."""
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
    return ids, rows, cols, y


def _with_station_columns(x, variables, factor_vars, columns, ids, rows, cols, dates, strict, cb, collect=None):
    """x (V, T, H, W) with one more variable per station-table column: its daily values at the station
    pixels, NaN elsewhere. Extends `variables` and `factor_vars` in place. collect (a list): the columns'
    (name, values (T, N)) are appended to it instead and x is returned as it is (the Zarr path)."""
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
            variables.append(col)
            factor_vars.setdefault(fname, []).append(col)
            n_st = int(np.isfinite(vals).any(axis=0).sum())
            cb.log(f"factor '{fname}' variable '{col}': station-table column, values at {n_st} of {len(ids)} "
                   f"stations ({int(np.isfinite(vals).sum())} station-days); no value elsewhere on the grid")
            if collect is not None:
                collect.append((col, vals))
                continue
            grid = np.full(x.shape[1:], np.nan, np.float32)
            grid[:, rows, cols] = vals
            extra.append(grid)
    return np.concatenate([x, np.stack(extra)], axis=0) if extra else x


# ------------------------------------------------------------------------------ Zarr: block by block
class _Moments:
    """Count, mean and sum of squared deviations in float64, combined block by block (Chan et al.)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values: np.ndarray):
        v = np.asarray(values).reshape(-1)
        v = v[np.isfinite(v)].astype(np.float64)
        if not v.size:
            return
        nb, mb = v.size, float(v.mean())
        m2b = float(((v - mb) ** 2).sum())
        n = self.n + nb
        d = mb - self.mean
        self.mean += d * nb / n
        self.m2 += m2b + d * d * self.n * nb / n
        self.n = n

    def mean_std(self):
        """As cube._finite_mean_std: (0, 1) without values; std 1 when ~0 or not finite."""
        if self.n == 0:
            return 0.0, 1.0
        mean, std = self.mean, (self.m2 / self.n) ** 0.5
        if not np.isfinite(mean):
            mean = 0.0
        if not np.isfinite(std) or std <= 1e-12:
            std = 1.0
        return float(mean), float(std)


def _merge_screen(into: "validate.ValueScreen", part: "validate.ValueScreen"):
    """Add the counts of a screen of one block of a layer to the layer's screen."""
    for name in ("nonfinite", "outside"):
        d = getattr(into, name)
        for b, n in getattr(part, name).items():
            d[b] = d.get(b, 0) + n
    into.n_valid += part.n_valid
    into.seen_min, into.seen_max = min(into.seen_min, part.seen_min), max(into.seen_max, part.seen_max)


class _OnceLog:
    """A log that passes each distinct message once (the alignment plan is described per block)."""

    def __init__(self, log):
        self.log, self.seen = log, set()

    def __call__(self, msg):
        if msg not in self.seen:
            self.seen.add(msg)
            self.log(msg)


def _screen_for(info, strict, target=False):
    if target:
        return validate.ValueScreen.for_layer("TARGET", info.units, param="TARGET", dates=info.dates,
                                              strict=strict, target=True)
    return validate.ValueScreen.for_layer(info.name, info.units, param="FACTORS", dates=info.dates, strict=strict)


def _read_block(info, grid, dates, window, resampling, log, screen):
    return rasters.read_window_aligned(info, grid, dates, window, resampling, allow_missing=True, name=info.name,
                                       log=log, screen=screen)


def _read_factor_block(infos, n_vars, grid, dates, window, resampling, strict, log=None):
    """One block of the factor layers: (block (n_vars, len(dates), h, w) with the layers' rows filled, their screens,
    the log messages when no `log` is given). Runs in this process or on a Dask worker (model/parallel.ordered_map)."""
    msgs = []
    log = log or msgs.append
    block = np.empty((n_vars, len(dates), window[2], window[3]), np.float32)
    parts = []
    for v, info in enumerate(infos):
        part = _screen_for(info, strict)
        block[v] = _read_block(info, grid, dates, window, resampling, log, part)
        parts.append(part)
    return block, parts, msgs


def _factor_block_reads(blocks, infos, n_vars, grid, dates, resampling, strict, log, workers, scheduler, cb):
    """(block, screens) of each block in order: serial, or as Dask tasks (workers/scheduler, see prepare_dataset)."""
    from ..model import parallel
    args = [(infos, n_vars, grid, dates[t0:t1], (r0, c0, r1 - r0, c1 - c0), resampling, strict)
            for t0, t1, r0, r1, c0, c1 in blocks]
    plan = parallel.plan_workers(workers, scheduler, len(blocks), len(dates) * grid.height * grid.width, "cpu",
                                 cb.log)
    if plan.mode == "serial":
        for a in args:
            block, parts, _ = _read_factor_block(*a, log=log)
            yield block, parts
        return
    cb.log(plan.describe().replace("execution:", "block reads:"))
    with parallel.dask_client(plan, cb.log) as client:
        for block, parts, msgs in parallel.ordered_map(client, _read_factor_block, args, cb):
            for m in msgs:
                log(m)
            yield block, parts


def _prepare_zarr(out_path, infos, variables, factor_vars, grid, dates, tinfo, stations, columns, resampling,
                  strict, patch_size, seq_len, chunks, block_bytes, cb, workers=0, scheduler=None) -> Cube:
    """prepare_dataset's Zarr path: the cube written block by block into out_path (see the module doc)."""
    from . import zarrcube
    log = _OnceLog(cb.log)
    V0, T, H, W = len(infos), len(dates), grid.height, grid.width
    variables = list(variables)
    factor_vars = {f: list(v) for f, v in factor_vars.items()}
    st_extra = []                   # (variable, values (T, N)) of station-table columns
    if tinfo is not None:
        # pass 1 over the target: which pixels have a value at all (the target locations), screened as in memory
        has = np.zeros((H, W), bool)
        screen = _screen_for(tinfo, strict, target=True)
        ch = zarrcube.default_chunks(1, T, H, W)
        for t0, t1, r0, r1, c0, c1 in zarrcube.iter_blocks((1, T, H, W), ch, block_bytes):
            cb.check_cancel()
            part = _screen_for(tinfo, strict, target=True)
            blk = _read_block(tinfo, grid, dates[t0:t1], (r0, c0, r1 - r0, c1 - c0), resampling, log, part)
            has[r0:r1, c0:c1] |= np.isfinite(blk).any(axis=0)
            _merge_screen(screen, part)
        screen.report(cb.log)
        if not has.any():
            raise PrepareError("TARGET: no valid soil-moisture value on the reference grid in the common "
                               f"period {dates[0]}..{dates[-1]}: check its extent, dates and nodata")
        rows, cols = np.nonzero(has)
        station_ids, kind, y_st = None, "grid", None
    else:
        ids, rows, cols, y_st = _station_target(grid, stations, dates, strict, cb)
        station_ids, kind = list(ids), "stations"
        if columns:
            probe = np.empty((0, T, 0, 0), np.float32)       # names and values only; the grid is written below
            before = len(variables)
            _with_station_columns(probe, variables, factor_vars, columns, ids, rows, cols, dates, strict, cb,
                                  collect=st_extra)
            assert len(variables) == before + len(st_extra)
    rows, cols = np.asarray(rows, np.int32), np.asarray(cols, np.int32)
    V = len(variables)
    moments = [_Moments() for _ in range(V)]
    y_moments = _Moments()
    screens = [_screen_for(info, strict) for info in infos]
    missing_logged = set()
    with zarrcube.ZarrCubeWriter(out_path, variables, dates, grid.to_dict(), rows, cols, chunks) as w:
        blocks = list(zarrcube.iter_blocks((V, T, H, W), w.chunks, block_bytes))
        cb.log(f"writing {out_path}: chunks {w.chunks}, {len(blocks)} block(s) of at most "
               f"{block_bytes / 2 ** 20:.0f} MiB")
        reads = _factor_block_reads(blocks, infos, V, grid, dates, resampling, strict, log, workers, scheduler, cb)
        for bi, ((t0, t1, r0, r1, c0, c1), (block, parts)) in enumerate(zip(blocks, reads)):
            cb.check_cancel()
            window = (r0, c0, r1 - r0, c1 - c0)
            for v, part in enumerate(parts):
                _merge_screen(screens[v], part)
            inside = np.nonzero((rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1))[0]
            rr, cc = rows[inside] - r0, cols[inside] - c0
            for j, (_name, vals) in enumerate(st_extra):
                block[V0 + j] = np.nan
                block[V0 + j][:, rr, cc] = vals[t0:t1][:, inside]
            for v in range(V):
                moments[v].add(block[v])
            w.write_data(t0, r0, c0, block)
            if len(inside):
                if tinfo is not None:
                    yb = _read_block(tinfo, grid, dates[t0:t1], window, resampling, log,
                                     _screen_for(tinfo, strict, target=True))[:, rr, cc]
                else:
                    yb = y_st[t0:t1][:, inside]
                y_moments.add(yb)
                valid = np.isfinite(block[:, :, rr, cc]).all(axis=0)
                w.write_targets(t0, inside, yb.astype(np.float32), valid)
            cb.progress(0.95 * (bi + 1) / len(blocks))
        for v, info in enumerate(infos):
            screens[v].report(cb.log)
            missing = len(dates) - len(np.intersect1d(info.dates, dates))
            if missing and info.name not in missing_logged:
                missing_logged.add(info.name)
                cb.log(f"'{info.name}' lacks {missing} of the {len(dates)} days: they are gaps (NaN)")
        if y_moments.n == 0:
            raise PrepareError("TARGET: no valid soil-moisture value at the target locations: check the target")
        stats = [m.mean_std() for m in moments]
        y_mean, y_std = y_moments.mean_std()
        meta = {"factors": factor_vars, "variables": variables, "grid": grid.to_dict(),
                "x_mean": [m for m, _ in stats], "x_std": [s for _, s in stats], "y_mean": y_mean, "y_std": y_std,
                "patch_size": patch_size, "seq_len": seq_len, "target_kind": kind, "station_ids": station_ids}
        from ..version import __version__
        meta["version"] = __version__
        w.finish(meta)
    cube = Cube.load(out_path)
    cb.log(f"dataset: {V} variables in {len(factor_vars)} factors, {len(dates)} days, "
           f"{grid.height} x {grid.width} pixels, {len(rows)} target locations, "
           f"{int(np.isfinite(cube.y).sum())} target values (Zarr, {out_path})")
    cb.progress(1.0)
    return cube
