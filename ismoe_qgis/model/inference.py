"""Fully convolutional inference: tile by tile, convolution once per tile and time step.

A CNN made of 'valid' convolutions applied to the k x k patch around a pixel equals the
same CNN applied to the whole tile (with a k//2 halo) read at that pixel. So a tile of
h x w pixels and T output dates costs one convolution pass over (T + L - 1) time steps and
one LSTM pass batched over all h*w*T windows; windows over time are slices of the per-step
input projections (no L-fold copy of the features). ``tests/test_inference.py`` proves
tile == patch-by-patch to float tolerance.

Missing inputs inside a window are filled with the variable mean (0 after normalisation);
an output pixel is nodata where any input variable is missing at that pixel on that date.
"""
import json
import os
import shutil
import tempfile
from typing import Callable, List

import numpy as np
import torch
import torch.nn.functional as F

from ..core_callbacks import Callbacks, ensure
from .networks import SILENT_TOL, SoilMoistureNet

NODATA = -9999.0


def normalise_block(model: SoilMoistureNet, raw: np.ndarray) -> torch.Tensor:
    """raw (V, T, h, w) in input units with NaN -> normalised (T, V, h, w) tensor, NaN -> 0."""
    cfg = model.cfg
    m = np.asarray(cfg.x_mean, np.float32)[:, None, None, None]
    s = np.asarray(cfg.x_std, np.float32)[:, None, None, None]
    xn = (raw.astype(np.float32) - m) / s
    np.nan_to_num(xn, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return torch.from_numpy(np.ascontiguousarray(xn.transpose(1, 0, 2, 3)))


@torch.no_grad()
def predict_tile(model: SoilMoistureNet, xt: torch.Tensor, doy: torch.Tensor = None,
                 chunk_windows: int = 32768, amp_dtype=None):
    """Predict every pixel and date of a tile.

    xt: normalised (Ttot, V, h + 2r, w + 2r) with r = k//2 (halo) and Ttot = T + L - 1.
    doy: (T,) day of year of the output dates (used only by the 'inputs_doy' router).
    Returns sm (T, h, w) in normalised units and weights (E, T, h, w).
    """
    cfg = model.cfg
    k, L = cfg.patch_size, cfg.seq_len
    r = k // 2
    bank = model.experts
    Ttot, V, H2, W2 = xt.shape
    T, h, w = Ttot - L + 1, H2 - 2 * r, W2 - 2 * r
    if T < 1:
        raise ValueError(f"a tile needs at least SEQ_LEN={L} time steps, got {Ttot}")
    E, P = bank.E, h * w
    dev_type = xt.device.type
    with torch.autocast(dev_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        feats = bank.features(xt)                                     # Ttot, E, C, h, w
    feats = feats.float().permute(1, 3, 4, 0, 2).reshape(E, P, Ttot, bank.C)   # E, P, Ttot, C

    silent = None
    if model.router is not None and cfg.mask_silent:
        xc = xt[:, :, r:r + h, r:r + w].permute(1, 2, 3, 0).reshape(1, V * P, Ttot)
        hi = F.max_pool1d(xc, L, stride=1)
        lo = -F.max_pool1d(-xc, L, stride=1)
        quiet = ((hi - lo) < SILENT_TOL).view(V, h, w, T).permute(0, 3, 1, 2)   # V, T, h, w
        silent = torch.stack([quiet[idx].all(dim=0) for idx in model.factor_index])   # E, T, h, w
        silent = silent.permute(2, 3, 1, 0).reshape(P * T, E)
    centre = None
    if model.router is not None and cfg.router_input.startswith("inputs"):
        xc = xt[:, :, r:r + h, r:r + w].unfold(0, L, 1)               # T, V, h, w, L
        centre = xc.permute(2, 3, 0, 4, 1).reshape(P * T, L, V)
    doy_all = doy.repeat(P) if doy is not None else None

    sm = torch.empty(P * T, device=xt.device)
    wts = torch.empty(P * T, E, device=xt.device)
    px_chunk = max(1, chunk_windows // T)
    for p0 in range(0, P, px_chunk):
        p1 = min(P, p0 + px_chunk)
        n = p1 - p0
        with torch.autocast(dev_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            g = bank.input_gates(feats[:, p0:p1].reshape(E, n * Ttot, bank.C)).view(E, n, Ttot, -1)
            hs = bank.recur(lambda s: g[:, :, s:s + T].reshape(E, n * T, -1), L)   # E, n*T, H
            out = bank.head(hs)                                                    # n*T, E
        a, b = p0 * T, p1 * T
        y, wt = model.mix(out, hs, None if silent is None else silent[a:b],
                          None if centre is None else centre[a:b],
                          None if doy_all is None else doy_all[a:b])
        sm[a:b] = y.float()
        wts[a:b] = wt.float()
    sm = sm.view(h, w, T).permute(2, 0, 1)
    wts = wts.view(h, w, T, E).permute(3, 2, 0, 1)
    return sm, wts


def day_of_year(dates) -> np.ndarray:
    d = np.asarray(dates).astype("datetime64[D]")
    return ((d - d.astype("datetime64[Y]")).astype(np.int64) + 1)


def _profile(grid: dict, count: int, tile: int = 256):
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    gt = grid["transform"]
    prof = dict(driver="GTiff", width=grid["width"], height=grid["height"], count=count, dtype="float32",
                crs=CRS.from_wkt(grid["crs_wkt"]), transform=Affine.from_gdal(*gt), nodata=NODATA,
                compress="deflate", predictor=3, interleave="band", BIGTIFF="IF_SAFER")
    if grid["width"] >= 16 and grid["height"] >= 16:
        b = 256 if min(grid["width"], grid["height"]) >= 256 else 16 * max(1, min(grid["width"], grid["height"]) // 16)
        prof.update(tiled=True, blockxsize=b, blockysize=b)
    return prof


def predict_to_folder(model: SoilMoistureNet, read_block: Callable, grid: dict, dates, out_dir: str,
                      tile_size: int = 128, time_chunk: int = 64, device="cpu", amp_dtype=None,
                      cog: bool = False, callbacks: Callbacks = None, extra_meta: dict = None):
    """Stream a prediction over the grid, tile by tile, into `out_dir`.

    read_block(row_off, col_off, height, width, t0, t1) must return raw inputs
    (V, t1 - t0, height, width) for input dates[t0:t1], NaN outside the grid or where missing.
    Output dates are dates[L-1:] (each needs the L-1 days before it).
    Writes sm.tif, weight_<factor>.tif and prediction.json atomically (temporary folder, then move);
    nothing is left behind on error or cancel. Returns the manifest dict.
    """
    import rasterio
    from rasterio.windows import Window

    cb = ensure(callbacks)
    cfg = model.cfg
    L, r = cfg.seq_len, cfg.patch_size // 2
    dates = np.asarray(dates).astype("datetime64[D]")
    if len(dates) < L:
        raise ValueError(f"prediction needs at least SEQ_LEN={L} consecutive dates of input, got {len(dates)}")
    out_dates = dates[L - 1:]
    T = len(out_dates)
    doy_all = day_of_year(out_dates)
    names = model.output_names
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".ismoe_predict_", dir=out_dir)
    files = {"sm": "sm.tif", **{f: f"weight_{f}.tif" for f in names}}
    try:
        prof = _profile(grid, T)
        dsts = {key: rasterio.open(os.path.join(tmp, fn), "w", **prof) for key, fn in files.items()}
        try:
            iso = [str(d) for d in out_dates]
            for ds in dsts.values():
                for i, d in enumerate(iso, start=1):
                    ds.set_band_description(i, d)
            H, W = grid["height"], grid["width"]
            tiles = [(r0, c0) for r0 in range(0, H, tile_size) for c0 in range(0, W, tile_size)]
            chunks = list(range(0, T, time_chunk))
            n_steps, step = len(tiles) * len(chunks), 0
            for r0, c0 in tiles:
                h, w = min(tile_size, H - r0), min(tile_size, W - c0)
                for t0 in chunks:
                    cb.check_cancel()
                    t1 = min(T, t0 + time_chunk)
                    raw = read_block(r0 - r, c0 - r, h + 2 * r, w + 2 * r, t0, t1 + L - 1)
                    xt = normalise_block(model, raw).to(device)
                    doy = torch.from_numpy(doy_all[t0:t1]).to(device)
                    sm, wts = predict_tile(model, xt, doy, amp_dtype=amp_dtype)
                    sm = sm.cpu().numpy() * cfg.y_std + cfg.y_mean
                    wts = wts.cpu().numpy()
                    centre = raw[:, L - 1:, r:r + h, r:r + w]
                    invalid = ~np.isfinite(centre).all(axis=0)            # T', h, w
                    sm[invalid] = NODATA
                    wts[:, invalid] = NODATA
                    win = Window(c0, r0, w, h)
                    idx = list(range(t0 + 1, t1 + 1))
                    dsts["sm"].write(sm.astype(np.float32), indexes=idx, window=win)
                    for e, f in enumerate(names):
                        dsts[f].write(wts[e].astype(np.float32), indexes=idx, window=win)
                    step += 1
                    cb.progress(step / n_steps)
        finally:
            for ds in dsts.values():
                ds.close()
        if cog:
            _to_cog(tmp, files)
        manifest = {"factors": names, "dates": [str(d) for d in out_dates], "sm": files["sm"],
                    "weights": {f: files[f] for f in names}, "model_type": cfg.model_type,
                    "nodata": NODATA, **(extra_meta or {})}
        with open(os.path.join(tmp, "prediction.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        for fn in list(files.values()) + ["prediction.json"]:
            os.replace(os.path.join(tmp, fn), os.path.join(out_dir, fn))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _to_cog(folder, files):
    from osgeo import gdal
    gdal.UseExceptions()
    for fn in files.values():
        src = os.path.join(folder, fn)
        dst = src + ".cog.tif"
        gdal.Translate(dst, src, format="COG", creationOptions=["COMPRESS=DEFLATE", "PREDICTOR=YES", "BIGTIFF=IF_SAFER"])
        os.replace(dst, src)


def cube_block_reader(cube):
    """read_block for a dataset cube (used by tests and evaluation): NaN outside the grid."""
    V, Tn, H, W = cube.x.shape

    def read(row_off, col_off, height, width, t0, t1):
        out = np.full((V, t1 - t0, height, width), np.nan, np.float32)
        rs, cs = max(0, row_off), max(0, col_off)
        re, ce = min(H, row_off + height), min(W, col_off + width)
        if re > rs and ce > cs:
            out[:, :, rs - row_off:re - row_off, cs - col_off:ce - col_off] = cube.x[:, t0:t1, rs:re, cs:ce]
        return out
    return read
