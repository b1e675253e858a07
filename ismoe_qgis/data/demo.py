"""Synthetic demo region with planted soil-moisture drivers (the ISMoE "embedded demo").

A small, deterministic, Tibetan-Plateau-like region written as ordinary GeoTIFFs
(EPSG:32645, 1 km pixels, one band per day, band description = ISO date), so that the
plugin's prepare -> train -> predict chain can be exercised on the same kind of input a
user has, and so that the interpretability of the router can be *checked*: each of the
three sub-regions has known drivers planted in its soil-moisture process.

    region   like        soil moisture driven by           (factors with no influence)
    arid     NGARI       snow (snowmelt) + radiation        precipitation, wind, temperature, lake(=0)
    tundra   NAQU        lake (mix-layer temp.) + precip.   snow(=0), radiation, wind, temperature
    monsoon  MAQU        wind (onshore flow) + lake (mixing depth)   snow(=0), radiation, precip., temperature

Every factor variable is a smooth random spatial field x a seasonal cycle whose amplitude
depends on the region, plus its own independent day-to-day weather noise (AR(1) in time,
spatially smooth). Soil moisture is a daily bucket (water-balance) model per region in
which only that region's planted drivers enter; see docs/demo_region.md for the
equations, units and calibration.

Use ``generate_demo(out_dir)`` or ``python -m ismoe_qgis.data.demo --out DIR``.
``simulate(...)`` gives the same arrays in memory without writing files, and
``explained_variance(...)`` measures how much of the SM variance each factor explains.

No qgis / PyQt import here (core code).
"""
import argparse
import datetime as _dt
import json
import os
import sys
import time

import numpy as np

from ..fileutil import atomic_output

# ----------------------------------------------------------------------------- constants

FACTORS = {
    "snow": ["snow_depth", "snow_cover", "snowmelt"],
    "radiation": ["net_solar", "net_thermal"],
    "precipitation": ["precipitation"],
    "wind": ["u10", "v10"],
    "temperature": ["t2m"],
    "lake": ["lake_mix_temp", "lake_mix_depth"],
}
VARIABLES = [v for vs in FACTORS.values() for v in vs]

UNITS = {
    "snow_depth": "m",
    "snow_cover": "%",
    "snowmelt": "mm w.e. day-1",
    "net_solar": "W m-2",
    "net_thermal": "W m-2",
    "precipitation": "mm day-1",
    "u10": "m s-1",
    "v10": "m s-1",
    "t2m": "degC",
    "lake_mix_temp": "degC",
    "lake_mix_depth": "m",
    "soil_moisture": "m3 m-3",
}
LONG_NAMES = {
    "snow_depth": "snow depth (physical depth of the snowpack)",
    "snow_cover": "snow cover fraction",
    "snowmelt": "snowmelt (water equivalent)",
    "net_solar": "surface net solar (shortwave) radiation, daily mean, downward positive",
    "net_thermal": "surface net thermal (longwave) radiation, daily mean, downward positive",
    "precipitation": "total precipitation",
    "u10": "10 m eastward wind component (positive = from the west)",
    "v10": "10 m northward wind component (positive = from the south)",
    "t2m": "2 m air temperature",
    "lake_mix_temp": "lake mix-layer temperature",
    "lake_mix_depth": "lake mix-layer depth",
    "soil_moisture": "volumetric soil moisture of the top layer",
}

REGION_NAMES = {1: "arid", 2: "tundra", 3: "monsoon"}
REGION_IDS = {name: rid for rid, name in REGION_NAMES.items()}
DRIVERS = {
    "arid": ["snow", "radiation"],
    "tundra": ["lake", "precipitation"],
    "monsoon": ["wind", "lake"],
}

CRS = "EPSG:32645"            # WGS 84 / UTM zone 45N
ORIGIN = (500000.0, 3500000.0)  # upper-left corner: ~87.0 E, 31.6 N, central Tibetan Plateau
PIXEL = 1000.0                # metres
NODATA = -9999.0
REGION_NODATA = 0
SPINUP_DAYS = 150             # forcing is simulated this many days before `start`, then dropped
MEMORY_DAYS = 6.0             # bucket relaxation time scale tau (days)
DAYS_PER_YEAR = 365.2425
SEASONS = {"DJF": (12, 1, 2), "MAM": (3, 4, 5), "JJA": (6, 7, 8), "SON": (9, 10, 11)}

# Soil-moisture process parameters per region (all m3/m3):
#   mean: target regional mean; sigma_in / sigma_loss: SM standard deviation contributed by
#   the inflow / loss driver (sets the calibrated coefficients); wilting/porosity: clip range;
#   noise: measurement-noise standard deviation.
SM_PARAMS = {
    "arid": dict(mean=0.13, sigma_in=0.028, sigma_loss=0.024, wilting=0.03, porosity=0.38, noise=0.004),
    "tundra": dict(mean=0.24, sigma_in=0.035, sigma_loss=0.035, wilting=0.05, porosity=0.45, noise=0.005),
    "monsoon": dict(mean=0.30, sigma_in=0.035, sigma_loss=0.035, wilting=0.08, porosity=0.50, noise=0.005),
}
ONSHORE_DEG = 20.0  # moist air comes from the south-south-east: onshore = wind towards 340 deg


# ----------------------------------------------------------------------------- random fields

def gaussian_filter_fft(a, sigma):
    """Periodic Gaussian filter (std `sigma` pixels) over the last two axes, using numpy FFT."""
    a = np.asarray(a, dtype=np.float64)
    h, w = a.shape[-2:]
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    tf = np.exp(-2.0 * (np.pi * sigma) ** 2 * (ky ** 2 + kx ** 2))
    return np.fft.irfft2(np.fft.rfft2(a) * tf, s=(h, w))


def _gaussian_1d(a, sigma):
    n = a.shape[-1]
    k = np.fft.rfftfreq(n)
    tf = np.exp(-2.0 * (np.pi * sigma) ** 2 * k ** 2)
    return np.fft.irfft(np.fft.rfft(a) * tf, n=n)


def smooth_noise(rng, n_fields, size, sigma, chunk=256):
    """`n_fields` independent unit-variance smooth Gaussian fields of `size` x `size`.

    Spectral synthesis: complex white noise is shaped by the Fourier transform of a
    Gaussian kernel (std `sigma` pixels) and brought back with one inverse FFT, on a grid
    padded by 1.5 sigma on each side and then cropped (so the fields are not periodic over
    the region). This is the same field as Gaussian-filtering white noise
    (`gaussian_filter_fft`), without the forward transform. Each pixel has variance 1.
    """
    pad = int(min(np.ceil(1.5 * sigma), 2 * size))
    m = size + 2 * pad
    ky = np.fft.fftfreq(m)[:, None]
    tf_full = np.exp(-2.0 * (np.pi * sigma) ** 2 * (ky ** 2 + np.fft.fftfreq(m)[None, :] ** 2))
    std = np.sqrt(np.sum(tf_full ** 2)) / m
    tf = np.exp(-2.0 * (np.pi * sigma) ** 2 * (ky ** 2 + np.fft.rfftfreq(m)[None, :] ** 2))
    scale = m * tf / np.sqrt(2.0)
    # irfft2 keeps only the Hermitian part of the self-conjugate columns: give them twice the power
    scale[:, 0] *= np.sqrt(2.0)
    if m % 2 == 0:
        scale[:, -1] *= np.sqrt(2.0)
    keep = tf > 1e-9
    k = int(keep.sum())
    out = np.empty((n_fields, size, size), dtype=np.float64)
    for i in range(0, n_fields, chunk):
        j = min(n_fields, i + chunk)
        z = rng.standard_normal((j - i, 2, k))
        spec = np.zeros((j - i,) + tf.shape, dtype=np.complex128)
        spec[:, keep] = (z[:, 0] + 1j * z[:, 1]) * scale[keep]
        f = np.fft.irfft2(spec, s=(m, m))
        out[i:j] = f[:, pad:pad + size, pad:pad + size] / std
    return out


def ar1_noise(rng, n_days, size, sigma, phi):
    """Unit-variance AR(1) process in time whose innovations are smooth spatial fields."""
    e = smooth_noise(rng, n_days, size, sigma)
    x = np.empty_like(e)
    x[0] = e[0]
    c = np.sqrt(1.0 - phi ** 2)
    for t in range(1, n_days):
        x[t] = phi * x[t - 1] + c * e[t]
    return x


def _softplus(x, k=1.0):
    return np.logaddexp(0.0, k * x) / k


def _wet_transform_mean(thr, power):
    """E[max(0, z - thr) ** power] for z ~ N(0, 1) (numerical quadrature)."""
    z = np.linspace(-8.0, 8.0, 16001)
    pdf = np.exp(-0.5 * z ** 2) / np.sqrt(2.0 * np.pi)
    return float(np.trapz(np.maximum(0.0, z - thr) ** power * pdf, z))


# ----------------------------------------------------------------------------- regions

def make_regions(rng, size):
    """Three west-to-east bands (arid | tundra | monsoon) with smooth, wavy borders.

    Each row is cut at two columns b1(row) < b2(row) that wander smoothly around
    size/3 and 2*size/3 (zero-mean wiggles), so every region is one contiguous band and
    covers about a third of the area.
    """
    rows = np.arange(size)
    wig = _gaussian_1d(rng.standard_normal((2, 4 * size)), sigma=size / 5.0)[:, :size]
    wig -= wig.mean(axis=1, keepdims=True)
    wig /= np.abs(wig).max(axis=1, keepdims=True) + 1e-12
    tilt = rng.uniform(-0.06, 0.06) * (rows - (size - 1) / 2.0)
    b1 = size / 3.0 + 0.08 * size * wig[0] + tilt
    b2 = 2.0 * size / 3.0 + 0.08 * size * wig[1] + tilt
    cols = np.arange(size)[None, :] + 0.5
    reg = np.full((size, size), 2, dtype=np.uint8)
    reg[cols < b1[:, None]] = 1
    reg[cols >= b2[:, None]] = 3
    return reg


# ----------------------------------------------------------------------------- dates

def make_dates(start, years):
    d0 = _dt.date.fromisoformat(str(start))
    try:
        d1 = d0.replace(year=d0.year + int(years))
    except ValueError:  # 29 February
        d1 = d0.replace(year=d0.year + int(years), day=28)
    n = (d1 - d0).days
    return np.datetime64(d0.isoformat(), "D") + np.arange(n)


def _season(day_of_year, peak):
    return np.cos(2.0 * np.pi * (day_of_year - peak) / DAYS_PER_YEAR)


# ----------------------------------------------------------------------------- simulation

def simulate(size=48, years=3, seed=42, start="2017-01-01", memory_days=MEMORY_DAYS):
    """Simulate the demo region in memory.

    Returns a dict with ``dates`` (datetime64[D], T), ``regions`` (uint8 H x W),
    ``variables`` {name: float32 (T, H, W)}, ``soil_moisture`` float32 (T, H, W) and
    ``process`` (the per-region coefficients actually used, JSON-serialisable).
    """
    size = int(size)
    if size < 8:
        raise ValueError("size must be >= 8 pixels")
    if int(years) < 1:
        raise ValueError("years must be >= 1")
    rng = np.random.default_rng(seed)
    dates = make_dates(start, years)
    n_out = len(dates)
    n = n_out + SPINUP_DAYS
    all_dates = dates[0] - SPINUP_DAYS + np.arange(n)
    doy = ((all_dates - np.datetime64("2000-01-01")).astype(np.float64) % DAYS_PER_YEAR)[:, None, None]

    regions = make_regions(rng, size)
    masks = {name: regions == rid for rid, name in REGION_NAMES.items()}
    # soft membership (for smooth transitions of the fields shared by all regions)
    soft = np.stack([gaussian_filter_fft(masks[r].astype(float), size / 16.0)
                     for r in ("arid", "tundra", "monsoon")])
    soft = np.clip(soft, 0.0, None)
    soft /= soft.sum(axis=0, keepdims=True)

    def by_region(arid, tundra, monsoon):
        """A static (H, W) parameter field blended between the regions' values."""
        return soft[0] * arid + soft[1] * tundra + soft[2] * monsoon

    s_static = size / 5.0   # length scale of the static spatial patterns (pixels)
    s_weather = size / 6.0  # length scale of the weather noise

    def static_field():
        return smooth_noise(rng, 1, size, s_static)[0]

    def weather(phi):
        return ar1_noise(rng, n, size, s_weather, phi)

    v = {}

    # --- temperature (distractor everywhere): degC
    t_mean = by_region(-1.0, -1.5, 2.0) + 1.5 * static_field()
    t_amp = by_region(11.0, 10.0, 9.0) * (1.0 + 0.1 * static_field())
    v["t2m"] = t_mean + t_amp * _season(doy, 200.0) + 3.0 * weather(0.8)

    # --- radiation (drives arid only): W m-2, daily means, downward positive
    sw_mean = by_region(175.0, 150.0, 135.0) * (1.0 + 0.06 * static_field())
    sw_amp = by_region(65.0, 55.0, 50.0)
    sw_noise = by_region(55.0, 50.0, 55.0)
    v["net_solar"] = np.clip(sw_mean + sw_amp * _season(doy, 172.0) + sw_noise * weather(0.85), 15.0, 320.0)
    lw_mean = by_region(-100.0, -75.0, -60.0) * (1.0 + 0.06 * static_field())
    lw_amp = by_region(10.0, 12.0, 15.0)
    lw_noise = by_region(22.0, 15.0, 15.0)
    v["net_thermal"] = np.clip(lw_mean + lw_amp * _season(doy, 200.0) + lw_noise * weather(0.75), -180.0, -5.0)

    # --- precipitation (drives tundra only): mm/day, intermittent, summer monsoon peak
    p_base = by_region(0.15, 0.2, 0.3)
    p_amp = by_region(0.7, 4.0, 5.0) * (1.0 + 0.2 * static_field())
    p_peak = by_region(215.0, 205.0, 195.0)
    p_clim = p_base + p_amp * np.clip(_season(doy, p_peak), 0.0, None) ** 1.5
    thr, pw = 0.2, 1.5
    v["precipitation"] = p_clim * np.maximum(0.0, weather(0.6) - thr) ** pw / _wet_transform_mean(thr, pw)

    # --- wind (drives monsoon only): m/s; winter westerlies, summer southerlies
    u_mean = by_region(4.0, 3.0, 2.0) + 0.5 * static_field()
    u_amp = by_region(3.0, 2.5, 2.0)
    v["u10"] = u_mean + u_amp * _season(doy, 15.0) + 2.5 * weather(0.75)
    v_mean = by_region(0.0, 0.3, 0.8) + 0.3 * static_field()
    v_amp = by_region(0.5, 1.2, 1.5)
    v["v10"] = v_mean + v_amp * _season(doy, 200.0) + by_region(2.0, 2.2, 2.5) * weather(0.75)

    # --- snow (arid only; exactly 0 elsewhere): a degree-day-free snowpack with its own
    #     snowfall and melt-energy weather, so that it is independent of t2m/radiation noise
    arid = masks["arid"]
    sf_clim = 1.0 * np.clip(_season(doy, 80.0), 0.0, None) * (1.0 + 0.3 * static_field())
    snowfall = np.maximum(sf_clim, 0.0) * np.maximum(0.0, weather(0.5) - thr) ** pw / _wet_transform_mean(thr, pw)
    melt_pot = np.maximum(0.0, 6.0 * _season(doy, 172.0) - 2.0 + 3.0 * weather(0.8))
    swe = np.zeros((size, size))
    melt = np.zeros((n, size, size))
    swe_all = np.zeros((n, size, size))
    for t in range(n):
        swe = swe + snowfall[t]
        m = np.minimum(swe, melt_pot[t])
        swe = swe - m
        melt[t] = m
        swe_all[t] = swe
    depth = swe_all / 250.0  # mm w.e. -> m of snow at 250 kg m-3
    v["snow_depth"] = np.where(arid, depth, 0.0)
    v["snow_cover"] = np.where(arid, 100.0 * (1.0 - np.exp(-depth / 0.03)), 0.0)
    v["snowmelt"] = np.where(arid, melt, 0.0)
    del snowfall, melt_pot, swe_all, depth, melt

    # --- lake (tundra + monsoon only; exactly 0 in arid): lakes are everywhere in these
    #     two lake districts, with a static "lake size" field scaling the mixing depth
    lakes = ~arid
    lt_mean = by_region(4.0, 4.0, 6.0) + 0.7 * static_field()
    lt_raw = lt_mean + 6.0 * _season(doy, 215.0) + 3.0 * weather(0.9)
    lake_t = 0.5 + _softplus(lt_raw, 1.5)  # under ice the mixed layer stays at ~0.5-1 degC
    lake_size = np.clip(1.0 + 0.25 * static_field(), 0.5, 1.5)
    ld_mean = np.where(masks["tundra"], 2.5, 9.0)
    ld_amp = np.where(masks["tundra"], 1.0, 2.0)
    ld_noise = np.where(masks["tundra"], 0.6, 2.0)
    # dimictic lakes: deepest mixing at the spring (mid-May) and autumn (early Nov) overturns,
    # shallow under summer stratification and under winter ice (a semi-annual cycle)
    overturn = np.cos(4.0 * np.pi * (doy - 130.0) / DAYS_PER_YEAR) + 0.3 * _season(doy, 312.0)
    lake_d = np.maximum(0.5, lake_size * (ld_mean + ld_amp * overturn) + ld_noise * weather(0.85))
    v["lake_mix_temp"] = np.where(lakes, lake_t, 0.0)
    v["lake_mix_depth"] = np.where(lakes, lake_d, 0.0)
    del lt_raw, lake_t, lake_d

    # --- soil moisture: a bucket per region driven ONLY by the planted drivers
    rn = v["net_solar"] + v["net_thermal"]
    th = np.deg2rad(ONSHORE_DEG)
    onshore = np.cos(th) * v["v10"] - np.sin(th) * v["u10"]
    forcing = {  # region: (inflow series, inflow name, loss series, loss name)
        "arid": (v["snowmelt"], "snowmelt [mm/d]", rn, "net_solar + net_thermal [W/m2]"),
        "tundra": (v["precipitation"], "precipitation [mm/d]", v["lake_mix_temp"], "lake_mix_temp [degC]"),
        "monsoon": (onshore, f"onshore wind = cos({ONSHORE_DEG:g}deg) v10 - sin({ONSHORE_DEG:g}deg) u10 [m/s]", v["lake_mix_depth"], "lake_mix_depth [m]"),
    }
    a = 1.0 - 1.0 / float(memory_days)
    sm = np.full((n, size, size), np.nan)
    process = {"memory_days": float(memory_days), "spinup_days": SPINUP_DAYS,
               "onshore_direction_deg": ONSHORE_DEG, "regions": {}}
    for name, (inflow, in_name, loss, loss_name) in forcing.items():
        mk = masks[name]
        if not mk.any():
            continue
        p = SM_PARAMS[name]
        fi = inflow[:, mk]
        fl = loss[:, mk]
        ci = _filter(fi, a)[SPINUP_DAYS:]
        cl = _filter(fl, a)[SPINUP_DAYS:]
        g_in = p["sigma_in"] / max(ci.std(), 1e-12)
        g_loss = p["sigma_loss"] / max(cl.std(), 1e-12)
        s_eq = p["mean"] - float(np.mean(g_in * ci - g_loss * cl))
        s = np.full(fi.shape[1], s_eq)
        out = np.empty_like(fi)
        for t in range(n):
            s = s + (s_eq - s) / memory_days + g_in * fi[t] - g_loss * fl[t]
            s = np.clip(s, p["wilting"], p["porosity"])
            out[t] = s
        out = out + p["noise"] * rng.standard_normal(out.shape)
        sm[:, mk] = np.clip(out, p["wilting"], p["porosity"])
        process["regions"][name] = {
            "inflow": in_name, "loss": loss_name,
            "inflow_coef": float(g_in), "loss_coef": float(g_loss),
            "s_eq": s_eq, **{k: float(x) for k, x in p.items()},
        }

    keep = slice(SPINUP_DAYS, None)
    variables = {name: v[name][keep].astype(np.float32) for name in VARIABLES}
    return {
        "dates": dates,
        "regions": regions,
        "variables": variables,
        "soil_moisture": sm[keep].astype(np.float32),
        "process": process,
    }


def _filter(f, a):
    """y_t = a * y_{t-1} + f_t along axis 0 (the bucket's linear response, unit gain per day)."""
    y = np.empty_like(f, dtype=np.float64)
    acc = np.zeros(f.shape[1:])
    for t in range(f.shape[0]):
        acc = a * acc + f[t]
        y[t] = acc
    return y


# ----------------------------------------------------------------------------- writing

def _block(size):
    return 256 if size >= 256 else max(16, int(np.ceil(size / 16.0)) * 16)


def _profile(size, count, dtype, nodata):
    from rasterio.transform import from_origin
    b = _block(size)
    return dict(driver="GTiff", width=size, height=size, count=count, dtype=dtype,
                crs=CRS, transform=from_origin(ORIGIN[0], ORIGIN[1], PIXEL, PIXEL),
                nodata=nodata, tiled=True, blockxsize=b, blockysize=b,
                compress="deflate", predictor=3 if dtype == "float32" else 2,
                interleave="band")


def write_series(path, data, dates, name, factor=None):
    """Write a (T, H, W) float32 series, one band per day, description = ISO date."""
    import rasterio
    data = np.asarray(data, dtype=np.float32)
    data = np.where(np.isfinite(data), data, np.float32(NODATA))
    prof = _profile(data.shape[1], data.shape[0], "float32", NODATA)
    iso = [str(d) for d in dates]
    with atomic_output(path, ".tif") as tmp, rasterio.open(tmp, "w", **prof) as dst:
        dst.write(data)
        for i, d in enumerate(iso, start=1):
            dst.set_band_description(i, d)
        tags = dict(variable=name, units=UNITS.get(name, ""), long_name=LONG_NAMES.get(name, ""),
                    first_date=iso[0], last_date=iso[-1], time_step="1 day",
                    source="ismoe_qgis synthetic demo region")
        if factor:
            tags["factor"] = factor
        dst.update_tags(**tags)


def write_regions(path, regions):
    import rasterio
    prof = _profile(regions.shape[0], 1, "uint8", REGION_NODATA)
    with atomic_output(path, ".tif") as tmp, rasterio.open(tmp, "w", **prof) as dst:
        dst.write(regions.astype(np.uint8), 1)
        dst.set_band_description(1, "region")
        dst.update_tags(**{f"region_{k}": n for k, n in REGION_NAMES.items()})


def generate_demo(out_dir, size=48, years=3, seed=42, start="2017-01-01", memory_days=MEMORY_DAYS,
                  callbacks=None):
    """Generate the demo region into `out_dir` (created if needed) and return its manifest.

    Writes one GeoTIFF per factor variable (``<variable>.tif``), ``soil_moisture.tif``,
    ``regions.tif`` and ``demo.json``. The returned dict is the manifest (paths relative
    to `out_dir`) plus ``"paths"``: absolute paths of every file ({variable: path,
    "soil_moisture", "regions", "manifest"}) and ``"out_dir"``.
    """
    from ..core_callbacks import ensure
    cb = ensure(callbacks)
    out_dir = os.path.abspath(str(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    cb.log(f"simulating demo region: {size}x{size} px, {years} years, seed {seed}")
    sim = simulate(size=size, years=years, seed=seed, start=start, memory_days=memory_days)
    cb.progress(0.3)
    dates = sim["dates"]
    layers = {}
    var_factor = {v: f for f, vs in FACTORS.items() for v in vs}
    for i, name in enumerate(VARIABLES):
        cb.check_cancel()
        fname = f"{name}.tif"
        write_series(os.path.join(out_dir, fname), sim["variables"][name], dates, name, var_factor[name])
        layers[name] = fname
        cb.progress(0.3 + 0.6 * (i + 1) / len(VARIABLES))
    write_series(os.path.join(out_dir, "soil_moisture.tif"), sim["soil_moisture"], dates, "soil_moisture")
    write_regions(os.path.join(out_dir, "regions.tif"), sim["regions"])
    manifest = {
        "factors": {f: list(vs) for f, vs in FACTORS.items()},
        "layers": layers,
        "target": "soil_moisture.tif",
        "regions": "regions.tif",
        "region_names": {str(k): n for k, n in REGION_NAMES.items()},
        "drivers": {k: list(d) for k, d in DRIVERS.items()},
        "start": str(dates[0]),
        "end": str(dates[-1]),
        "n_days": int(len(dates)),
        "size": int(size),
        "years": int(years),
        "seed": int(seed),
        "crs": CRS,
        "pixel_size_m": PIXEL,
        "origin": list(ORIGIN),
        "nodata": NODATA,
        "units": dict(UNITS),
        "process": sim["process"],
    }
    with atomic_output(os.path.join(out_dir, "demo.json"), ".json") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
    paths = {name: os.path.join(out_dir, f) for name, f in layers.items()}
    paths["soil_moisture"] = os.path.join(out_dir, "soil_moisture.tif")
    paths["regions"] = os.path.join(out_dir, "regions.tif")
    paths["manifest"] = os.path.join(out_dir, "demo.json")
    result = dict(manifest)
    result["paths"] = paths
    result["out_dir"] = out_dir
    cb.progress(1.0)
    return result


# ----------------------------------------------------------------------------- reading / checking

def load_demo(out_dir):
    """Read a generated demo folder back into the dict layout of `simulate()`."""
    import rasterio
    with open(os.path.join(out_dir, "demo.json"), encoding="utf-8") as fh:
        man = json.load(fh)
    variables = {}
    for name, f in man["layers"].items():
        with rasterio.open(os.path.join(out_dir, f)) as ds:
            variables[name] = ds.read()
    with rasterio.open(os.path.join(out_dir, man["target"])) as ds:
        sm = ds.read()
        dates = np.array([np.datetime64(d, "D") for d in ds.descriptions])
    with rasterio.open(os.path.join(out_dir, man["regions"])) as ds:
        regions = ds.read(1)
    return {"dates": dates, "regions": regions, "variables": variables, "soil_moisture": sm,
            "manifest": man}


def _trailing_means(x, window, lags):
    """Means over the `lags` consecutive `window`-day blocks ending at each day (axis 0).

    Returns (lags, T - window * lags + 1, ...): block 0 ends at day t, block 1 at t - window, ...
    """
    t = x.shape[0]
    c = np.concatenate([np.zeros((1,) + x.shape[1:]), np.cumsum(x, axis=0, dtype=np.float64)])
    first = window * lags - 1
    ends = np.arange(first, t)
    return np.stack([(c[ends + 1 - k * window] - c[ends + 1 - (k + 1) * window]) / window
                     for k in range(lags)])


def _r2(features, y):
    if features.shape[1] == 0:
        return 0.0
    x = np.column_stack([np.ones(len(y)), features])
    sd = x.std(axis=0)
    sd[0] = 1.0
    keep = sd > 0
    x = x[:, keep] / sd[keep]
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    res = y - x @ coef
    sst = np.sum((y - y.mean()) ** 2)
    return float(1.0 - np.sum(res ** 2) / sst) if sst > 0 else 0.0


def explained_variance(data, window=7, lags=2, unique=True, months=None):
    """Linear R^2 of soil moisture on each factor's trailing `window`-day means, per region.

    For each region and factor, SM(t) at every region pixel is regressed (OLS with
    intercept) on the means of each of the factor's variables over the `lags`
    consecutive `window`-day blocks ending at t (default: days t-6..t and t-13..t-7, i.e.
    a 14-day window). Also reported: ``"drivers"`` (the planted drivers together),
    ``"non_drivers"`` (all other factors together), ``"all"`` and, when `unique`,
    ``"unique"`` {factor: R^2(all) - R^2(all but that factor)}: the share of SM variance
    that only that factor explains.

    `months` (e.g. (6, 7, 8)) restricts the samples to days in those calendar months.

    `data` is the dict from `simulate()` / `load_demo()`. Returns {region: {key: R^2}}.
    """
    sm = np.asarray(data["soil_moisture"])
    first = window * lags - 1
    day_ok = np.ones(sm.shape[0] - first, dtype=bool)
    if months is not None:
        mon = (np.asarray(data["dates"]).astype("datetime64[M]").astype(np.int64) % 12 + 1)[first:]
        day_ok = np.isin(mon, list(months))
    out = {}
    for rid, rname in REGION_NAMES.items():
        mk = np.asarray(data["regions"]) == rid
        if not mk.any():
            continue
        y = sm[first:, mk].astype(np.float64)
        ok = (np.isfinite(y) & day_ok[:, None]).reshape(-1)
        y = y.reshape(-1)
        feats = {v: _trailing_means(np.asarray(data["variables"][v])[:, mk].astype(np.float64), window, lags)
                 for v in VARIABLES}
        per_factor = {}
        for f, vs in FACTORS.items():
            per_factor[f] = np.column_stack([feats[v][k].reshape(-1) for v in vs for k in range(lags)])
        del feats
        res = {f: _r2(per_factor[f][ok], y[ok]) for f in FACTORS}
        drv = DRIVERS[rname]
        res["drivers"] = _r2(np.column_stack([per_factor[f] for f in drv])[ok], y[ok])
        res["non_drivers"] = _r2(np.column_stack([per_factor[f] for f in FACTORS if f not in drv])[ok], y[ok])
        res["all"] = _r2(np.column_stack([per_factor[f] for f in FACTORS])[ok], y[ok])
        if unique:
            res["unique"] = {
                f: res["all"] - _r2(np.column_stack([per_factor[g] for g in FACTORS if g != f])[ok], y[ok])
                for f in FACTORS}
        out[rname] = res
    return out


def format_explained_variance(ev):
    cols = list(FACTORS) + ["drivers", "non_drivers", "all"]
    lines = ["R^2 of SM on 7-day-mean features (t-6..t, t-13..t-7); * = planted driver",
             "region    " + " ".join(f"{c[:11]:>11}" for c in cols)]
    for r, res in ev.items():
        cells = []
        for c in cols:
            mark = "*" if c in DRIVERS[r] else " "
            cells.append(f"{res[c]:10.3f}{mark}")
        lines.append(f"{r:<9} " + " ".join(cells))
    if any("unique" in res for res in ev.values()):
        lines.append("unique share (R^2(all) - R^2(all but the factor))")
        for r, res in ev.items():
            if "unique" in res:
                cells = [f"{res['unique'][c]:10.3f}{'*' if c in DRIVERS[r] else ' '}" for c in FACTORS]
                lines.append(f"{r:<9} " + " ".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI

def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ismoe_qgis.data.demo",
                                 description="Generate the synthetic ISMoE demo region (GeoTIFFs + demo.json); "
                                             "see docs/demo_region.md.")
    ap.add_argument("--out", required=True, help="output folder (created if needed)")
    ap.add_argument("--size", type=int, default=48, help="pixels per side (1 km pixels), default 48")
    ap.add_argument("--years", type=int, default=3, help="years of daily data, default 3")
    ap.add_argument("--seed", type=int, default=42, help="random seed, default 42")
    ap.add_argument("--start", default="2017-01-01", help="first date (ISO), default 2017-01-01")
    ap.add_argument("--report", action="store_true",
                    help="also print the explained variance of SM by each factor, per region (overall and "
                         "per season)")
    args = ap.parse_args(argv)
    t0 = time.time()
    man = generate_demo(args.out, size=args.size, years=args.years, seed=args.seed, start=args.start)
    dt = time.time() - t0
    total = sum(os.path.getsize(p) for p in man["paths"].values())
    print(f"demo region written to {man['out_dir']}: {man['size']}x{man['size']} px, "
          f"{man['n_days']} days ({man['start']} .. {man['end']}), {len(man['paths'])} files, "
          f"{total / 1e6:.1f} MB, {dt:.1f} s")
    if args.report:
        data = load_demo(man["out_dir"])
        print(format_explained_variance(explained_variance(data)))
        for season, months in SEASONS.items():
            print(f"\n{season}: " + format_explained_variance(explained_variance(data, months=months)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
