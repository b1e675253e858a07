"""Small synthetic prediction folders (the ismoe:predict output contract) for the
chart/dock/algorithm tests. No qgis import."""
import json
import os

import numpy as np
import rasterio
from rasterio.transform import from_origin

NODATA = -9999.0
# 4 x 5 pixels of 1000 m in UTM 33N, upper-left corner (500000, 4000000)
CRS = "EPSG:32633"
X0, Y0, RES = 500000.0, 4000000.0, 1000.0


def write_stack(path, data, transform, crs=CRS, nodata=NODATA, dates=None, tiled=False):
    data = np.asarray(data, dtype="float32")
    t, h, w = data.shape
    profile = dict(driver="GTiff", width=w, height=h, count=t, dtype="float32", crs=crs,
                   transform=transform, nodata=nodata, compress="deflate")
    if tiled:
        profile.update(tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if dates is not None:
            for i, d in enumerate(dates):
                dst.set_band_description(i + 1, str(d))


def winter_summer_weights(dates, h=4, w=5):
    """Factor 'snow' dominates in DJF (0.8), 'wind' in JJA (0.7); a third factor
    'radiation' takes the rest. Returns (T, 3, h, w) with a tiny per-pixel ramp so
    pixels differ."""
    dates = np.asarray(dates).astype("datetime64[D]")
    months = dates.astype("datetime64[M]").astype(int) % 12 + 1
    snow = np.where(np.isin(months, [12, 1, 2]), 0.8, np.where(np.isin(months, [6, 7, 8]), 0.1, 0.3))
    wind = np.where(np.isin(months, [12, 1, 2]), 0.1, np.where(np.isin(months, [6, 7, 8]), 0.7, 0.3))
    rad = 1.0 - snow - wind
    base = np.stack([snow, rad, wind], axis=1)[:, :, None, None]  # (T,3,1,1)
    ramp = (np.arange(h * w).reshape(h, w) / (h * w) - 0.5) * 0.02  # +-0.01
    out = np.repeat(np.repeat(base, h, axis=2), w, axis=3).copy()
    out[:, 0] += ramp
    out[:, 1] -= ramp
    return out.astype("float32")


def make_prediction_folder(folder, factors=("snow", "radiation", "wind"), dates=None, weights=None, sm=None,
                           crs=CRS, transform=None, write_json=True, observations=None, tiled=False,
                           nodata_pixels=(), shares=None):
    """Write sm.tif + weight_<factor>.tif + prediction.json; returns dict with the arrays. shares: optional
    (len(SHARE_BANDS), E, h, w) variance shares, written as variance_share_<factor>.tif like an additive or gated
    model's prediction."""
    os.makedirs(folder, exist_ok=True)
    if dates is None:
        dates = np.arange(np.datetime64("2019-01-01"), np.datetime64("2020-01-01"))
    dates = np.asarray(dates).astype("datetime64[D]")
    if weights is None:
        weights = winter_summer_weights(dates)
    weights = np.array(weights, dtype="float32")
    t, e, h, w = weights.shape
    if sm is None:
        sm = (0.2 + 0.1 * np.sin(np.arange(t) / 58.0)[:, None, None]
              + 0.001 * np.arange(h * w).reshape(1, h, w)).astype("float32")
    sm = np.array(sm, dtype="float32")
    for (r, c) in nodata_pixels:
        weights[:, :, r, c] = NODATA
        sm[:, r, c] = NODATA
    if transform is None:
        transform = from_origin(X0, Y0, RES, RES)
    iso = [str(d) for d in dates]
    write_stack(os.path.join(folder, "sm.tif"), sm, transform, crs, dates=iso, tiled=tiled)
    for i, f in enumerate(factors):
        write_stack(os.path.join(folder, "weight_%s.tif" % f), weights[:, i], transform, crs, dates=iso, tiled=tiled)
    meta = {"factors": list(factors), "dates": iso, "sm": "sm.tif",
            "weights": {f: "weight_%s.tif" % f for f in factors}, "model_type": "ismoe", "nodata": NODATA}
    if observations is not None:
        # observations: {station_id: (row, col, values (T,))}
        with open(os.path.join(folder, "observations.csv"), "w") as fh:
            fh.write("station_id,row,col,date,sm\n")
            for sid, (r, c, vals) in observations.items():
                for d, v in zip(iso, vals):
                    fh.write("%s,%d,%d,%s,%s\n" % (sid, r, c, d, "" if np.isnan(v) else "%.6f" % v))
        meta["observations"] = "observations.csv"
    if shares is not None:
        from ismoe_qgis.model.contribution_stats import SHARE_BANDS
        shares = np.asarray(shares, dtype="float32")
        assert shares.shape == (len(SHARE_BANDS), e, h, w), shares.shape
        for i, f in enumerate(factors):
            write_stack(os.path.join(folder, "variance_share_%s.tif" % f), shares[:, i], transform, crs,
                        dates=list(SHARE_BANDS), tiled=tiled)
        meta["mixture"] = "gated"
        meta["variance_share"] = {"files": {f: "variance_share_%s.tif" % f for f in factors},
                                  "bands": list(SHARE_BANDS), "meaning": "test", "min_days": 2}
    if write_json:
        with open(os.path.join(folder, "prediction.json"), "w") as fh:
            json.dump(meta, fh)
    return {"dates": dates, "weights": weights, "sm": sm, "transform": transform, "factors": list(factors)}


# --------------------------------------------------------------------------- a tiny random model
TINY_DAYS, TINY_SIZE, TINY_SEQ = 12, 10, 4
TINY_START = np.datetime64("2019-03-01")
TINY_FACTORS = {"snow": ["sd"], "wind": ["u10"], "rain": ["tp"]}
TINY_NODATA_COLS = 3        # the left columns are nodata in every layer


def write_tiny_series(path, data):
    """A TINY_DAYS-band EPSG:4326 GeoTIFF (0.1 deg pixels), band descriptions = dates from TINY_START."""
    prof = dict(driver="GTiff", width=TINY_SIZE, height=TINY_SIZE, count=TINY_DAYS, dtype="float32",
                crs="EPSG:4326", transform=rasterio.Affine(0.1, 0.0, 10.0, 0.0, -0.1, 50.0), nodata=-9999.0)
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(np.where(np.isnan(data), -9999.0, data).astype(np.float32))
        for i in range(TINY_DAYS):
            ds.set_band_description(i + 1, str(TINY_START + i))
    return str(path)


def make_tiny_model(folder):
    """A random (untrained) 3-factor model (patch 3, SEQ_LEN 4) saved as <folder>/tiny.pt and its three
    10 x 10 x 12-day layers (left TINY_NODATA_COLS columns nodata). Returns (model path, [layer paths])."""
    import torch
    from ismoe_qgis.model.io import save_model
    from ismoe_qgis.model.networks import ModelConfig, SoilMoistureNet
    folder = str(folder)
    variables = [v for vs in TINY_FACTORS.values() for v in vs]
    cfg = ModelConfig(factors=TINY_FACTORS, variables=variables, patch_size=3, seq_len=TINY_SEQ, conv_channels=2,
                      hidden=4, router_hidden=4, x_mean=[0.5] * 3, x_std=[0.3] * 3, y_mean=0.25, y_std=0.05)
    torch.manual_seed(3)
    model = os.path.join(folder, "tiny.pt")
    save_model(model, SoilMoistureNet(cfg).eval())
    rng = np.random.default_rng(11)
    layers = []
    for v in variables:
        data = rng.random((TINY_DAYS, TINY_SIZE, TINY_SIZE)).astype(np.float32)
        data[:, :, :TINY_NODATA_COLS] = np.nan
        layers.append(write_tiny_series(os.path.join(folder, f"{v}.tif"), data))
    return model, layers
