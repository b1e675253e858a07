"""Predict daily SM and per-factor routing weights from factor raster layers, streamed by tiles."""
import os
from typing import Dict, Optional

import numpy as np

from ..core_callbacks import Callbacks, ensure
from ..data import rasters
from ..data.prepare import daily_calendar
from .inference import predict_to_folder
from .io import load_model
from .device import autocast_dtype, resolve_device

# GDAL's block cache (default 5% of RAM) keeps every block read or written until it is full, so
# without a cap the memory of a streamed prediction grows with the raster. Capped while predicting.
GDAL_CACHE_BYTES = 128 * 2 ** 20


def _gdal_cache_cap() -> int:
    """GDAL_CACHE_BYTES, or the current GDAL cache size when that is smaller."""
    try:
        from osgeo import gdal
        return int(min(GDAL_CACHE_BYTES, gdal.GetCacheMax()))
    except Exception:  # noqa: BLE001 - no GDAL Python bindings: use the default cap
        return GDAL_CACHE_BYTES


def check_layers_match(cfg, layers: Dict[str, object]):
    """The layers must be exactly the model's variables (by name)."""
    missing = [v for v in cfg.variables if v not in layers]
    extra = [v for v in layers if v not in cfg.variables]
    if missing or extra:
        want = "; ".join(f"{f}: {', '.join(vs)}" for f, vs in cfg.factors.items())
        parts = []
        if missing:
            parts.append(f"no layer for variable(s) {', '.join(missing)}")
        if extra:
            parts.append(f"layer(s) {', '.join(extra)} are not variables of this model")
        raise ValueError(f"FACTORS: {'; '.join(parts)}. The model was trained on the factor set [{want}]: "
                         f"give one layer per variable with the same names (or train a model on these layers)")


def training_grid_mismatch(train_grid: Optional[dict], grid: rasters.Grid, patch_size: int) -> Optional[str]:
    """A warning when `grid` has another CRS or pixel size (> 1 %) than the grid the model was
    trained on (models from before this check carry no grid: None). The patch is k x k pixels, so on
    another resolution the experts see a different area than in training."""
    if not train_grid:
        return None
    try:
        t = rasters.Grid.from_dict(train_grid)
        if t.crs != grid.crs:
            return (f"warning: the model was trained on a grid in {t.crs.to_string()}, the prediction grid is in "
                    f"{grid.crs.to_string()}: give REFERENCE (a raster on the training grid) so that the inputs "
                    f"are warped to it")
        (tx, ty), (gx, gy) = (abs(r) for r in t.res), (abs(r) for r in grid.res)
    except Exception:  # noqa: BLE001 - an unreadable stored grid only disables the check
        return None
    if max(abs(gx - tx) / tx, abs(gy - ty) / ty) > 0.01:
        k = patch_size
        return (f"warning: the model was trained on {tx:g} x {ty:g} pixels, the prediction grid has {gx:g} x "
                f"{gy:g}: the {k} x {k}-pixel patch spans {gx / tx:.3g} x {gy / ty:.3g} times the distance it "
                f"spanned in training, so the estimates and weights may not be reliable; give REFERENCE (a raster "
                f"at the training resolution) to warp the inputs to it")
    return None


def subgrid(grid: rasters.Grid, extent) -> rasters.Grid:
    """The part of `grid` covered by extent (xmin, ymin, xmax, ymax in the grid CRS), snapped to pixels."""
    if extent is None:
        return grid
    xmin, ymin, xmax, ymax = extent
    gx0, gy0, gx1, gy1 = grid.bounds()
    if xmax <= gx0 or xmin >= gx1 or ymax <= gy0 or ymin >= gy1:
        raise rasters.NoOverlapError(f"EXTENT ({xmin}, {ymin}, {xmax}, {ymax}) does not overlap the layers "
                                     f"({gx0}, {gy0}, {gx1}, {gy1}): choose an extent inside them")
    rows, cols = grid.rowcol([xmin, xmax], [ymax, ymin])
    r0, r1 = max(0, min(rows)), min(grid.height, max(rows) + 1)
    c0, c1 = max(0, min(cols)), min(grid.width, max(cols) + 1)
    return grid.window_grid(r0, c0, r1 - r0, c1 - c0)


def uncertainty_record(info) -> dict:
    """prediction.json's "uncertainty" of an ensemble model (train's ensemble_residual_sd on the validation
    samples): the residual sd and how to combine it with sm_spread.tif; {} for other models."""
    unc = (info or {}).get("uncertainty")
    if not unc:
        return {}
    return {"uncertainty": {"residual_sd": unc["residual_sd"], "validation": unc,
                            "meaning": "predictive standard deviation = sqrt(sm_spread^2 + residual_sd^2) (m3/m3): "
                                       "sm_spread.tif is the members' disagreement, residual_sd the error it did not "
                                       "cover on the validation samples"}}


class LayerBlockReader:
    """read_block of predict_to_folder over factor layers: (V, t1 - t0, height, width) raw inputs for dates[t0:t1]
    on a pixel window of `grid` (NaN outside the layers or where missing), warped block by block. Holds paths and
    dates only (picklable): model/parallel.py sends it to Dask workers, which open the rasters themselves."""

    def __init__(self, infos, grid, dates, resampling: str = "auto"):
        self.infos, self.grid, self.dates, self.resampling = list(infos), grid, np.asarray(dates), resampling

    def __call__(self, row_off, col_off, height, width, t0, t1):
        out = np.empty((len(self.infos), t1 - t0, height, width), np.float32)
        for v, i in enumerate(self.infos):
            out[v] = rasters.read_window_aligned(i, self.grid, self.dates[t0:t1], (row_off, col_off, height, width),
                                                 self.resampling, allow_missing=True, name=i.name)
        return out


def predict_layers(model_path: str, layers: Dict[str, object], out_dir: str, *, extent=None, grid=None,
                   start=None, step_days: int = 1, date_from=None, date_to=None, tile_size: int = 128,
                   time_chunk: int = 64, device: str = "auto", amp: bool = True, cog: bool = False,
                   resampling: str = "auto", threads: int = 0, workers: int = 0, scheduler: str = None,
                   callbacks: Callbacks = None) -> dict:
    """Run a trained model over the layers (one per model variable) and write a prediction folder.

    The grid is `grid`, else the first variable's layer grid, clipped to `extent`. Output dates are
    the common days of the layers from `date_from` to `date_to` (each needs SEQ_LEN-1 days before it).
    Execution (model/parallel.py): `scheduler` (a Dask scheduler address) runs the tiles on that cluster;
    `workers` 1 = serial, n >= 2 = a local Dask cluster of n worker processes, 0 = auto (a local cluster sized
    to the machine for a large prediction, else serial). The outputs are the same either way.
    """
    cb = ensure(callbacks)
    dev = resolve_device(device, cb.log)
    from ..threads import apply_threads
    apply_threads(threads, dev.type, cb.log)
    model, cfg, info = load_model(model_path, dev)
    if amp and autocast_dtype(dev, True) is not None and (info or {}).get("amp_ok") is False:
        cb.log("this model failed its autocast check in training (autocast changed its validation CC by more "
               "than the allowed amount): predicting in fp32")
        amp = False
    check_layers_match(cfg, layers)
    infos = [rasters.open_series(layers[v], start, step_days, name=v, log=cb.log) for v in cfg.variables]
    g = grid if grid is not None else infos[0].grid
    g = subgrid(g, extent)
    mismatch = training_grid_mismatch((info or {}).get("grid"), g, cfg.patch_size)
    if mismatch:
        cb.log(mismatch)
    for i in infos:
        rasters.check_overlap(g, i.grid, i.name)
    dates = daily_calendar(infos)
    L = cfg.seq_len
    context = cfg.context_days            # input days before the first output: SEQ_LEN - 1, or the spin-up
    first_output = L - 1
    earliest = dates[min(L - 1, len(dates) - 1)]      # the first day with SEQ_LEN - 1 input days before it
    span = f"the layers' common days are {dates[0]}..{dates[-1]}"
    d0 = np.datetime64(str(date_from), "D") if date_from is not None else None
    d1 = np.datetime64(str(date_to), "D") if date_to is not None else None
    if d0 is not None and d1 is not None and d0 > d1:
        raise ValueError(f"DATE_FROM ({d0}) is after DATE_TO ({d1}): give the first output date first")
    if d0 is not None and d0 > dates[-1]:
        raise ValueError(f"DATE_FROM ({d0}) is after the last day the factor layers have in common ({dates[-1]}; "
                         f"{span}): choose an earlier DATE_FROM or layers that cover it")
    if d1 is not None and d1 < earliest:
        raise ValueError(f"DATE_TO ({d1}) is before the first day that can be predicted ({earliest}: {span}, and "
                         f"the model needs the {L - 1} days before an output date as input): choose a later DATE_TO")
    if d0 is not None:
        dates = dates[dates >= d0 - np.timedelta64(context, "D")]
        first_output = max(L - 1, int((dates < d0).sum()))
        if dates[first_output:first_output + 1].size and dates[first_output] > d0:
            cb.log(f"warning: DATE_FROM {d0} is before the first day that can be predicted: the outputs start on "
                   f"{dates[first_output]} ({span}; the model needs the {L - 1} days before an output date as "
                   f"input)")
    if d1 is not None:
        if d1 > dates[-1]:
            cb.log(f"warning: DATE_TO {d1} is after the last day the factor layers have in common: the outputs end "
                   f"on {dates[-1]} ({span})")
        dates = dates[dates <= d1]
    if len(dates) <= first_output:
        raise ValueError(f"the layers have {len(dates)} common day(s) in the chosen period; the model needs at "
                         f"least SEQ_LEN={L} (the {L - 1} days before the first output date are its input)")
    if cfg.stateful:
        if first_output < cfg.spin_up:
            cb.log(f"warning: the stateful model asks for {cfg.spin_up} warm-up days before the first output date "
                   f"{dates[first_output]}, the layers have {first_output}: the missing "
                   f"{cfg.spin_up - first_output} days are read as missing input (as in training), so the first "
                   f"{cfg.spin_up - first_output} output days start from a short memory (marked in prediction.json, "
                   f"'memory'); give layers that start {cfg.spin_up} days before DATE_FROM to avoid it")
        else:
            cb.log(f"stateful model: {cfg.spin_up} warm-up days from {dates[first_output - cfg.spin_up]}, then one "
                   f"LSTM step per pixel-day")
    cb.log(f"predicting {len(dates) - first_output} days ({dates[first_output]}..{dates[-1]}) on {g.width} x "
           f"{g.height} pixels, tiles of {tile_size}, device {dev}")
    for i in infos:
        cb.log(rasters.plan_alignment(i, g, resampling).describe(i.name))
    r = cfg.patch_size // 2
    seen_valid = [False]
    reader = LayerBlockReader(infos, g, dates, resampling)

    def read_block(row_off, col_off, height, width, t0, t1):
        out = reader(row_off, col_off, height, width, t0, t1)
        if not seen_valid[0]:  # any output pixel with every input present (centre of the tile, output dates)?
            seen_valid[0] = bool(np.isfinite(out[:, L - 1:, r:height - r, r:width - r]).all(axis=0).any())
        return out

    # serial, or the same tiles as Dask tasks (model/parallel.py); predict_to_folder writes either way
    from . import parallel
    n_par, _ = parallel.task_counts(cfg, g.height, g.width, len(dates) - first_output, tile_size, time_chunk)
    plan = parallel.plan_workers(workers, scheduler, n_par, g.width * g.height * (len(dates) - first_output),
                                 dev.type, cb.log)
    cb.log(plan.describe())

    def seen(item):            # Dask: a finite estimate = an output pixel with every input present
        if not seen_valid[0]:
            seen_valid[0] = bool(np.isfinite(item[4]).any())

    existed = os.path.isdir(out_dir)
    import contextlib

    import rasterio
    try:
        with rasterio.Env(GDAL_CACHEMAX=_gdal_cache_cap()), contextlib.ExitStack() as stack:   # bytes; restored
            tiles = None
            if plan.mode != "serial":
                client = stack.enter_context(parallel.dask_client(plan, cb.log))
                spec = parallel.PredictSpec(os.path.abspath(model_path), parallel._stamp(model_path), reader,
                                            device=device, amp=bool(amp), gpus=plan.gpus,
                                            torch_threads=1,
                                            gdal_cache=_gdal_cache_cap())
                tiles = parallel.DaskTilePredictions(client, spec, on_result=seen)
            man = predict_to_folder(model, read_block, g.to_dict(), dates, out_dir, tile_size=tile_size,
                                    time_chunk=time_chunk, device=dev, amp_dtype=autocast_dtype(dev, amp), cog=cog,
                                    callbacks=cb, extra_meta={"model": os.path.abspath(model_path),
                                                              **uncertainty_record(info)},
                                    first_output=first_output, tile_predictions=tiles)
    except BaseException:
        if not existed and os.path.isdir(out_dir) and not os.listdir(out_dir):
            os.rmdir(out_dir)  # cancelled or failed: leave no (empty) output folder behind
        raise
    if not seen_valid[0]:
        cb.log(f"warning: no pixel of the {g.width} x {g.height} grid has a value in every factor layer on the "
               f"output dates (nodata, e.g. ocean, or outside the layers): every output pixel is nodata "
               f"({man['nodata']}); choose an EXTENT where all factor layers have data")
    return man
