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
import contextlib
import os
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..core_callbacks import Callbacks, ensure
from ..fileutil import check_free_space, gdal_write_errors, io_errors, output_lock, staged_folder
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


def _tile_windows(model: SoilMoistureNet, xt: torch.Tensor, T: int):
    """The per-window inputs of the mixture for the T output days of tile xt (Ttot, V, h + 2r, w + 2r):
    the silent-factor mask (T, P, E) and the centre-pixel windows (T, P, L, V) of the input routers
    (None when the model does not use them)."""
    cfg = model.cfg
    k, L = cfg.patch_size, cfg.seq_len
    r = k // 2
    Ttot, V, H2, W2 = xt.shape
    h, w = H2 - 2 * r, W2 - 2 * r
    P = h * w
    silent = None
    if model.masks_silent:
        xc = xt[:, :, r:r + h, r:r + w].permute(1, 2, 3, 0).reshape(1, V * P, Ttot)
        hi = F.max_pool1d(xc, L, stride=1)
        lo = -F.max_pool1d(-xc, L, stride=1)
        quiet = ((hi - lo) < SILENT_TOL).view(V, P, T)
        silent = torch.stack([quiet[idx].all(dim=0) for idx in model.factor_index], dim=-1)   # P, T, E
        silent = silent.permute(1, 0, 2)                                                      # T, P, E
    centre = None
    if model.router is not None and cfg.router_input.startswith("inputs"):
        centre = xt[:, :, r:r + h, r:r + w].unfold(0, L, 1).permute(0, 2, 3, 4, 1).reshape(T, P, L, V)
    return silent, centre


@torch.no_grad()
def predict_tile(model: SoilMoistureNet, xt: torch.Tensor, doy: torch.Tensor = None,
                 chunk_windows: int = None, amp_dtype=None, state=None, outputs: bool = True,
                 members: bool = False, contributions: bool = False, with_contributions: bool = False):
    """Predict every pixel and date of a tile.

    xt: normalised (Ttot, V, h + 2r, w + 2r) with r = k//2 (halo) and Ttot = T + L - 1.
    doy: (T,) day of year of the output dates (used only by the 'inputs_doy' router).
    Returns sm (T, h, w) in normalised units and weights (E, T, h, w): an ensemble's means over its members,
    or with members=True every member's: sm (N, T, h, w) and weights (N, E, T, h, w).

    Stateful models (MEMORY=stateful) stream: the LSTM steps once per output day from `state` (h, c)
    (E, h * w, H) each (None: zero state), and the return is (sm, weights, new state) to hand to the next
    time chunk of the same tile; with outputs=False (warm-up days) only the state is computed (sm and
    weights are None). The first L - 1 days of xt only feed the silent mask and the input routers.
    contributions=True: the experts' contributions (additive, gated: what each factor adds to SM, in normalised
    units) in place of the weights (the benchmarks' variance shares, benchmarks/interpretability.py).
    with_contributions=True: the contributions as well, after the weights: (sm, weights, contributions[, state]),
    the contributions shaped like the weights (the variance shares of model/contribution_stats.py).
    """
    cfg = model.cfg
    k, L = cfg.patch_size, cfg.seq_len
    r = k // 2
    bank = model.experts
    stateful = cfg.stateful
    Ttot, V, H2, W2 = xt.shape
    T, h, w = Ttot - L + 1, H2 - 2 * r, W2 - 2 * r
    if T < 1:
        raise ValueError(f"a tile needs at least SEQ_LEN={L} time steps, got {Ttot}")
    E, P = model.n_experts, h * w
    dev_type = xt.device.type
    if chunk_windows is None:
        # the LSTM's per-step temporaries are E x chunk x 4H floats: on a CPU they must stay in cache
        # (6 x 1024 x 256 x 4 B = 6 MB); a GPU wants big batches
        chunk_windows = 32768 if dev_type == "cuda" else 1024
    with torch.autocast(dev_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        feats = bank.features(xt[L - 1:] if stateful else xt)        # Tf, E, C, h, w
    Tf = feats.shape[0]
    EN = bank.E                                                     # experts of all members
    feats = feats.float().permute(1, 0, 3, 4, 2).reshape(EN, Tf, P, bank.C)   # N*E, Tf, P, C
    if stateful:
        new_h = torch.empty(EN, P, bank.H, device=xt.device)
        new_c = torch.empty(EN, P, bank.H, device=xt.device)

    # Windows are ordered time-major within a pixel chunk: row = t * n + p.
    silent, centre = _tile_windows(model, xt, T) if outputs else (None, None)
    doy_tp = doy[:, None].expand(T, P) if doy is not None and outputs else None

    N = model.members
    M = (N,) if members else ()
    sm = torch.empty(M + (T, P), device=xt.device) if outputs else None
    wts = torch.empty(M + (E, T, P), device=xt.device) if outputs else None
    cts = torch.empty(M + (E, T, P), device=xt.device) if outputs and with_contributions else None
    # a stateful model steps through the T days of a chunk of pixels: a quarter of chunk_windows pixels keeps a
    # step's gates in cache on a CPU (measured 256 against 1024 pixels: 0.79 against 0.91 s per 32 x 32 x 64 tile)
    px_chunk = max(1, chunk_windows // (4 if stateful else T))
    for p0 in range(0, P, px_chunk):
        p1 = min(P, p0 + px_chunk)
        n = p1 - p0
        with torch.autocast(dev_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if stateful:
                st = None if state is None else (state[0][:, p0:p1], state[1][:, p0:p1])
                hs, (hl, cl) = bank.sequence(feats[:, :, p0:p1], None, st)               # E, T*n, H
                new_h[:, p0:p1], new_c[:, p0:p1] = hl, cl
            else:
                hs = bank.windows(feats[:, :, p0:p1], L)                                # E, T*n, H
            if not outputs:
                continue
            out = bank.head(hs)                                                    # T*n, E
        # mix runs outside autocast: give it fp32 (the router's baddbmm fails on bf16 states + fp32 weights)
        mix = model.mix_members if members else model.mix
        y, wt, contrib = mix(out.float(), hs.float(),
                       None if silent is None else silent[:, p0:p1].reshape(T * n, E),
                       None if centre is None else centre[:, p0:p1].reshape(T * n, L, V),
                       None if doy_tp is None else doy_tp[:, p0:p1].reshape(T * n))
        if contributions:
            wt = contrib
        if members:                   # y (T*n, N), wt (T*n, N, E)
            sm[:, :, p0:p1] = y.float().view(T, n, N).permute(2, 0, 1)
            wts[..., p0:p1] = wt.float().view(T, n, N, E).permute(2, 3, 0, 1)
            if cts is not None:
                cts[..., p0:p1] = contrib.float().view(T, n, N, E).permute(2, 3, 0, 1)
        else:
            sm[:, p0:p1] = y.float().view(T, n)
            wts[:, :, p0:p1] = wt.float().view(T, n, E).permute(2, 0, 1)
            if cts is not None:
                cts[:, :, p0:p1] = contrib.float().view(T, n, E).permute(2, 0, 1)
    res = (sm.view(M + (T, h, w)), wts.view(M + (E, T, h, w))) if outputs else (None, None)
    if with_contributions:
        res = res + ((cts.view(M + (E, T, h, w)) if outputs else None),)
    return res + ((new_h, new_c),) if stateful else res


def day_of_year(dates) -> np.ndarray:
    d = np.asarray(dates).astype("datetime64[D]")
    return ((d - d.astype("datetime64[Y]")).astype(np.int64) + 1)


def iter_tile_predictions(model: SoilMoistureNet, read_block: Callable, height: int, width: int, out_from: int,
                          out_to: int, dates_out: np.ndarray, tile_size: int = 128, time_chunk: int = 64,
                          device="cpu", amp_dtype=None, callbacks: Callbacks = None, contributions: bool = False):
    """The one tile loop behind every raster prediction.

    Output index o uses input indices [o, o + L - 1] of `read_block` (see predict_to_folder).
    Yields (row_off, col_off, o0, o1, sm (o1-o0, h, w) in target units, weights (E, o1-o0, h, w), spread,
    share_stats), NaN where an input variable is missing at the pixel on the output date. For an ensemble sm and
    weights are the members' means and spread is {"sm": member standard deviation (o1-o0, h, w), "weights": (E, ...)
    likewise, "member_weight_sums": (N, o1-o0, E) each member's weights summed over the valid pixels}; None
    for a single model. share_stats: for the additive and gated mixtures the chunk's per-pixel statistics of the
    contributions (an ensemble's: the members' mean contributions) per calendar month,
    contribution_stats.monthly_stats; else None. dates_out: the output dates (datetime64[D]), indexed by o.

    Tiles are independent; within a tile, time chunks run in order. A stateful model carries each pixel's
    LSTM state (h, c per expert: tile pixels x E x hidden x 2 floats) from one chunk to the next, starting
    from zero state SPIN_UP days before out_from: those warm-up days are stepped through, not yielded, and
    days before the first input (negative indices) are read as missing input, as training pads them.
    """
    cb = ensure(callbacks)
    tiles, chunks = tile_plan(model.cfg, height, width, out_from, out_to, tile_size, time_chunk)
    n_steps = len(tiles) * len(chunks)
    for i_tile, (r0, c0, h, w) in enumerate(tiles):
        state = None
        for i_chunk, (o0, o1) in enumerate(chunks):
            cb.check_cancel()
            res, state = predict_tile_chunk(model, read_block, (r0, c0, h, w), (o0, o1), out_from, dates_out,
                                            device, amp_dtype, state, contributions)
            if res is not None:
                yield (r0, c0, o0, o1) + res
            cb.progress((i_tile * len(chunks) + i_chunk + 1) / n_steps)


def tile_plan(cfg, height: int, width: int, out_from: int, out_to: int, tile_size: int, time_chunk: int):
    """The tiles [(row_off, col_off, h, w)] and time chunks [(o0, o1)] of iter_tile_predictions (also the tasks of
    model/parallel.py). A stateful model's chunks start SPIN_UP days before out_from; warm-up chunks end where the
    outputs start, so no chunk mixes the two."""
    start = out_from - cfg.spin_up if cfg.stateful else out_from
    tiles = [(r0, c0, min(tile_size, height - r0), min(tile_size, width - c0))
             for r0 in range(0, height, tile_size) for c0 in range(0, width, tile_size)]
    bounds = list(range(start, out_from, time_chunk)) + list(range(out_from, out_to, time_chunk)) + [out_to]
    return tiles, list(zip(bounds[:-1], bounds[1:]))


def predict_tile_chunk(model: SoilMoistureNet, read_block: Callable, tile, chunk, out_from: int, dates_out,
                       device="cpu", amp_dtype=None, state=None, contributions: bool = False):
    """One step of iter_tile_predictions: tile (r0, c0, h, w) over output indices chunk (o0, o1), i.e. input days
    o0 .. o1 + L - 2 (with the k//2 halo), a stateful model starting from `state` (None: zero state).
    Returns (result, new state): result (sm, weights, spread, share_stats) as iter_tile_predictions yields them,
    None for a
    warm-up chunk (o1 <= out_from); the state is None for a windowed model."""
    cfg = model.cfg
    L, r = cfg.seq_len, cfg.patch_size // 2
    ensemble = model.members > 1
    V = len(cfg.variables)
    r0, c0, h, w = tile
    o0, o1 = chunk
    warm = o1 <= out_from
    t0, t1 = o0, o1 + L - 1                       # input days
    if t1 <= 0:
        raw = np.full((V, t1 - t0, h + 2 * r, w + 2 * r), np.nan, np.float32)
    else:
        raw = read_block(r0 - r, c0 - r, h + 2 * r, w + 2 * r, max(0, t0), t1)
        if t0 < 0:                                 # before the first input: missing
            raw = np.concatenate([np.full((V, -t0) + raw.shape[2:], np.nan, np.float32), raw], axis=1)
    xt = normalise_block(model, raw).to(device)
    doy = None if warm else torch.from_numpy(day_of_year(dates_out[o0:o1])).to(device)
    from . import contribution_stats
    with_shares = not contributions and contribution_stats.defined_for(model.mixture)
    res = predict_tile(model, xt, doy, amp_dtype=amp_dtype, state=state, outputs=not warm, members=ensemble,
                       contributions=contributions, with_contributions=with_shares)
    if cfg.stateful:
        res, state = res[:-1], res[-1]
    else:
        state = None
    sm, wts = res[:2]
    if warm:
        return None, state
    invalid = ~np.isfinite(raw[:, L - 1:, r:r + h, r:r + w]).all(axis=0)
    share_stats = None
    if with_shares:
        cts = res[2].cpu().numpy()
        share_stats = contribution_stats.monthly_stats(cts.mean(0) if ensemble else cts, ~invalid,
                                                       dates_out[o0:o1])
    sm = sm.cpu().numpy() * cfg.y_std + cfg.y_mean
    wts = wts.cpu().numpy()
    spread = None
    if ensemble:       # members (N, T, h, w), (N, E, T, h, w): means, spreads, member sums
        sm_m, w_m = sm, wts
        sm, wts = sm_m.mean(0), w_m.mean(0)
        ok = ~invalid
        spread = {"sm": sm_m.std(0), "weights": w_m.std(0),
                  "member_weight_sums": np.where(ok, w_m, 0.0).sum(axis=(3, 4)).transpose(0, 2, 1)}
        spread["sm"][invalid] = np.nan
        spread["weights"][:, invalid] = np.nan
    sm[invalid] = np.nan
    wts[:, invalid] = np.nan
    return (sm, wts, spread, share_stats), state


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
                      cog: bool = False, callbacks: Callbacks = None, extra_meta: dict = None,
                      first_output: int = None, tile_predictions: Callable = None):
    """Stream a prediction over the grid, tile by tile, into `out_dir`.

    read_block(row_off, col_off, height, width, t0, t1) must return raw inputs
    (V, t1 - t0, height, width) for input dates[t0:t1], NaN outside the grid or where missing.
    Output dates are dates[first_output:] (default L - 1: each needs the L - 1 days before it; a stateful
    model's warm-up days before DATE_FROM are dates[:first_output]).
    Writes sm.tif, weight_<factor>.tif, dominant_factor.tif (see outputs.py), for the additive and gated
    mixtures variance_share_<factor>.tif (the factor's share of the period's contribution variance at each pixel,
    model/contribution_stats.py) and prediction.json atomically
    (temporary folder, then move);
    nothing is left behind on error or cancel. Returns the manifest dict.
    tile_predictions: the tile loop, iter_tile_predictions's signature and yields (default iter_tile_predictions;
    model/parallel.py passes one that runs the tiles as Dask tasks; this writer stays the only one).
    """
    import rasterio
    from rasterio.windows import Window

    from . import contribution_stats, outputs
    from . import prediction_folder as pf

    cb = ensure(callbacks)
    cfg = model.cfg
    L = cfg.seq_len
    dates = np.asarray(dates).astype("datetime64[D]")
    if len(dates) < L:
        raise ValueError(f"prediction needs at least SEQ_LEN={L} consecutive dates of input, got {len(dates)}")
    first_output = L - 1 if first_output is None else max(L - 1, int(first_output))
    out_dates = dates[first_output:]
    T = len(out_dates)
    if T < 1:
        raise ValueError(f"no output date: the {len(dates)} input dates are all warm-up days")
    o_from = first_output - (L - 1)                  # output index (input index - (L - 1)) of the first output
    names = model.output_names
    files = {"sm": pf.SM_FILE, **{f: pf.weight_file(f) for f in names}}
    ensemble = model.members > 1
    # an ensemble's member standard deviations, beside the means
    spread_files = {"sm": pf.SM_SPREAD_FILE, **{f: pf.weight_spread_file(f) for f in names}} if ensemble else {}
    # staging (issue 13): one writer per folder, written into a hidden sibling folder that replaces the whole
    # earlier prediction at the end; nothing inside OUTPUT (nor OUTPUT itself) before that move
    with prediction_staging(out_dir, callbacks=cb) as tmp, io_errors(out_dir, "OUTPUT"), \
            gdal_write_errors(out_dir, "OUTPUT"):
        check_free_space(out_dir, prediction_bytes(grid, T, len(files) + len(spread_files), cog), "OUTPUT",
                         "the prediction rasters")
        prof = _profile(grid, T)
        dsts = {key: rasterio.open(os.path.join(tmp, fn), "w", **prof) for key, fn in files.items()}
        sdsts = {key: rasterio.open(os.path.join(tmp, fn), "w", **prof) for key, fn in spread_files.items()}
        dom, sm_range = pf.DOMINANT_FILE, outputs.SmRange()
        dsts[dom] = rasterio.open(os.path.join(tmp, dom), "w", **outputs.dominant_profile(prof))
        shares = None
        if contribution_stats.defined_for(model.mixture) and T >= 2:     # written as tiles complete
            tiles, chunks = tile_plan(cfg, grid["height"], grid["width"], o_from, o_from + T, tile_size, time_chunk)
            shares = contribution_stats.ShareAccumulator(names, sum(1 for c in chunks if c[1] > o_from))
            share_files = {f: pf.variance_share_file(f) for f in names}
            n_bands = len(contribution_stats.SHARE_BANDS)
            share_dsts = {f: rasterio.open(os.path.join(tmp, fn), "w", **{**prof, "count": n_bands})
                          for f, fn in share_files.items()}
        else:
            share_files, share_dsts = {}, {}
        try:
            iso = [str(d) for d in out_dates]
            for ds in list(dsts.values()) + list(sdsts.values()):
                for i, d in enumerate(iso, start=1):
                    ds.set_band_description(i, d)
            for f, ds in share_dsts.items():
                for i, band in enumerate(contribution_stats.SHARE_BANDS, start=1):
                    ds.set_band_description(i, contribution_stats.band_description(f, band, iso[0], iso[-1]))
            w_sums = np.zeros((T, len(names)), np.float64)    # whole-area seasonal importance, same pass
            w_counts = np.zeros((T, len(names)), np.int64)
            member_sums = np.zeros((model.members, T, len(names)), np.float64) if ensemble else None
            for r0, c0, o0, o1, sm, wts, spread, share_stats in (tile_predictions or iter_tile_predictions)(
                    model, read_block, grid["height"], grid["width"], o_from, o_from + T,
                    dates[L - 1:], tile_size, time_chunk, device, amp_dtype, cb):
                o0, o1 = o0 - o_from, o1 - o_from
                valid = np.isfinite(sm)
                w_sums[o0:o1] += np.where(valid, wts, 0.0).sum(axis=(2, 3)).T
                w_counts[o0:o1] += valid.sum(axis=(1, 2))[:, None]
                win = Window(c0, r0, sm.shape[2], sm.shape[1])
                idx = list(range(o0 + 1, o1 + 1))
                dsts["sm"].write(np.nan_to_num(sm, nan=NODATA), indexes=idx, window=win)
                for e, f in enumerate(names):
                    dsts[f].write(np.nan_to_num(wts[e], nan=NODATA), indexes=idx, window=win)
                dsts[dom].write(outputs.dominant_factor(wts), indexes=idx, window=win)
                sm_range.update(sm)
                if spread is not None:
                    sdsts["sm"].write(np.nan_to_num(spread["sm"], nan=NODATA), indexes=idx, window=win)
                    for e, f in enumerate(names):
                        sdsts[f].write(np.nan_to_num(spread["weights"][e], nan=NODATA), indexes=idx, window=win)
                    member_sums[:, o0:o1] += spread["member_weight_sums"]
                if shares is not None and share_stats is not None:
                    done = shares.add(r0, c0, share_stats)
                    if done is not None:
                        for e, f in enumerate(names):
                            share_dsts[f].write(np.nan_to_num(done[:, e], nan=NODATA),
                                                indexes=list(range(1, done.shape[0] + 1)), window=win)
        finally:
            for ds in list(dsts.values()) + list(sdsts.values()) + list(share_dsts.values()):
                ds.close()
        if shares is not None and shares.incomplete:
            raise RuntimeError(f"the tile loop left {shares.incomplete} tile(s) without all their time chunks")
        if cog:
            _to_cog(tmp, {**files, dom: dom, **{f"spread_{k}": v for k, v in spread_files.items()},
                          **{f"share_{k}": v for k, v in share_files.items()}})
        outputs.annotate_outputs(tmp, files, iso, names, dom, cog=cog)
        from .importance import importance_from_sums, write_importance_csv
        write_importance_csv(importance_from_sums(out_dates, w_sums, w_counts, names, member_sums=member_sums),
                             os.path.join(tmp, pf.IMPORTANCE_CSV))
        manifest = {"format": pf.FORMAT, "factors": names, "dates": [str(d) for d in out_dates], "sm": files["sm"],
                    "weights": {f: files[f] for f in names}, "dominant_factor": dom, "importance": pf.IMPORTANCE_CSV,
                    "sm_units": outputs.SM_UNIT, "sm_range": sm_range.display_range(),
                    "model_type": cfg.model_type, "mixture": model.mixture, "weights_meaning": model.weight_meaning,
                    "memory": warmup_record(cfg, dates, first_output),
                    "variance_share": (None if shares is None else
                                       {"files": share_files,
                                        "meaning": contribution_stats.VARIANCE_SHARE_MEANING,
                                        "bands": list(contribution_stats.SHARE_BANDS),
                                        "min_days": contribution_stats.MIN_DAYS,
                                        "area_mean": shares.area_mean()}),
                    "ensemble": ({"members": model.members, "seeds": list(cfg.member_seeds or []),
                                  "sm_spread": spread_files["sm"],
                                  "weight_spread": {f: spread_files[f] for f in names},
                                  "spread_meaning": "standard deviation over the ensemble's members (ddof 0); "
                                                    "sm.tif and weight_<factor>.tif hold the members' means"}
                                 if ensemble else None),
                    "nodata": NODATA, **(extra_meta or {})}
        pf.write_manifest(tmp, manifest)
    return manifest


@contextlib.contextmanager
def prediction_staging(out_dir: str, callbacks: Callbacks = None, param: str = "OUTPUT"):
    """The lock and staging folder of a prediction folder (fileutil.output_lock + staged_folder): yields the
    hidden staging folder to write the files of a prediction into; at the end they replace `out_dir` (the
    whole earlier prediction, see outputs.is_prediction_file) at once. Refuses a folder holding files that
    are not a prediction's. Used by predict_to_folder and by any other writer of prediction folders."""
    from . import outputs, prediction_folder
    cb = ensure(callbacks)
    with output_lock(out_dir, param, "ismoe:predict", cb.log):
        with staged_folder(out_dir, outputs.is_prediction_file, param, cb.log, "outputs of ismoe:predict",
                           last=(prediction_folder.MANIFEST,), legacy_inside=(".ismoe_predict_",)) as tmp:
            yield tmp


def prediction_bytes(grid: dict, n_dates: int, n_float: int, cog: bool = False) -> int:
    """Upper bound of a prediction's size on disk: n_float float32 rasters and the uint8 dominant factor of
    n_dates bands, uncompressed, plus headers; a COG needs a second copy of the largest raster while it is
    converted."""
    px = int(grid["width"]) * int(grid["height"]) * int(n_dates)
    one = 4 * px
    return n_float * one + px + (one if cog else 0) + (1 << 20)


def warmup_record(cfg, dates, first_output: int) -> dict:
    """prediction.json's "memory": the memory mode, and for a stateful model the warm-up it had: the spin-up
    asked for, the input days before the first output (days_available), and the output dates whose state
    started from fewer than SPIN_UP real input days (the missing days were read as missing input)."""
    rec = {"mode": cfg.memory, "seq_len": cfg.seq_len}
    if not cfg.stateful:
        return rec
    avail = int(first_output)                                               # input days before the first output
    short = max(0, cfg.spin_up - avail)                                     # output days with a short warm-up
    rec.update(spin_up=cfg.spin_up, warmup_days_available=avail,
               short_warmup_dates=[str(dates[first_output]), str(dates[min(len(dates) - 1, first_output + short - 1)])]
               if short else None)
    return rec


def _to_cog(folder, files):
    """Rewrite the finished GeoTIFFs in `folder` (the prediction's staging folder) as COGs. Not through
    fileutil.atomic_output: GDAL's COG driver writes a copy of a finished file, and the staging folder is
    itself moved into place as a whole (prediction_staging), so no partial file ever reaches OUTPUT."""
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


@torch.no_grad()
def predict_cube(model: SoilMoistureNet, cube, t_from: int = None, t_to: int = None, tile_size: int = 64,
                 time_chunk: int = 32, device="cpu", amp_dtype=None, callbacks: Callbacks = None,
                 contributions: bool = False):
    """Tile inference over a dataset cube held in memory.

    Predicts the output dates cube.dates[t_from:t_to] (default: every date with a full window).
    Returns sm (T, H, W) in target units and weights (E, T, H, W); NaN where inputs are missing
    at the pixel on that date. contributions=True: the factors' contributions (additive, gated; normalised
    units) instead of the weights.
    """
    cfg = model.cfg
    L = cfg.seq_len
    t_from = max(L - 1, t_from if t_from is not None else 0)
    t_to = cube.n_dates if t_to is None else min(cube.n_dates, t_to)
    if t_to <= t_from:
        raise ValueError(f"no output date between index {t_from} and {t_to} (each needs {L - 1} days before it)")
    _, _, H, W = cube.x.shape
    T = t_to - t_from
    sm = np.full((T, H, W), np.nan, np.float32)
    wts = np.full((model.n_experts, T, H, W), np.nan, np.float32)
    for r0, c0, o0, o1, y, wt, _, _ in iter_tile_predictions(model, cube_block_reader(cube), H, W, t_from - L + 1,
                                                       t_to - L + 1, cube.dates[L - 1:], tile_size, time_chunk,
                                                       device, amp_dtype, callbacks, contributions):
        a, b = o0 + L - 1 - t_from, o1 + L - 1 - t_from
        sm[a:b, r0:r0 + y.shape[1], c0:c0 + y.shape[2]] = y
        wts[:, a:b, r0:r0 + y.shape[1], c0:c0 + y.shape[2]] = wt
    return sm, wts
