"""Tests of ismoe_qgis.data.rasters: dates, grids, alignment, overlap, GeoTIFF writing.

Synthetic rasters are written with GDAL (rasterio / netCDF4) into tmp_path; the real Hawaii
files are read from ../shared/data/hawaii and those tests skip when it is absent.
"""
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.warp
from rasterio.crs import CRS

from ismoe_qgis.data import rasters as R
from ismoe_qgis.data.rasters import Grid

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAWAII = DATA / "hawaii"

WGS84 = CRS.from_epsg(4326).to_wkt()


def hawaii(name):
    p = HAWAII / name
    if not p.exists():
        pytest.skip(f"real data not available: {p}")
    return p


def days(start, n, step=1):
    return np.datetime64(start, "D") + np.arange(n) * np.timedelta64(step, "D")


def write_plain_tif(path, array, grid, nodata=None, descriptions=None, dtype=None, scale=None):
    """A GeoTIFF written straight with rasterio (no date descriptions unless given)."""
    arr = np.asarray(array)
    with rasterio.open(path, "w", driver="GTiff", width=grid.width, height=grid.height, count=arr.shape[0],
                       dtype=dtype or arr.dtype, crs=grid.crs, transform=grid.affine, nodata=nodata) as dst:
        dst.write(arr.astype(dtype or arr.dtype))
        if descriptions:
            for i, d in enumerate(descriptions):
                dst.set_band_description(i + 1, d)
        if scale is not None:
            dst.scales = [scale] * arr.shape[0]
    return str(path)


def write_netcdf(path, data, lats, lons, time_values, units, calendar="standard", extra_level=False):
    import netCDF4

    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", len(time_values))
        if extra_level:
            nc.createDimension("level", 2)
        nc.createDimension("lat", len(lats))
        nc.createDimension("lon", len(lons))
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar, t.standard_name, t.axis = units, calendar, "time", "T"
        t[:] = time_values
        la = nc.createVariable("lat", "f8", ("lat",))
        la.units, la.standard_name = "degrees_north", "latitude"
        la[:] = lats
        lo = nc.createVariable("lon", "f8", ("lon",))
        lo.units, lo.standard_name = "degrees_east", "longitude"
        lo[:] = lons
        if extra_level:
            lv = nc.createVariable("level", "f8", ("level",))
            lv.units = "m"
            lv[:] = [1, 2]
            v = nc.createVariable("sm", "f4", ("time", "level", "lat", "lon"), fill_value=-9999.0)
            v[:] = np.stack([data, data], axis=1)
        else:
            v = nc.createVariable("sm", "f4", ("time", "lat", "lon"), fill_value=-9999.0)
            v[:] = data
        v.units = "m3 m-3"
    return str(path)


# --------------------------------------------------------------------------- Grid
def test_grid_roundtrip_and_extent():
    g = Grid.from_extent("EPSG:4326", -159.75, 18.95, -155.05, 22.25, 0.1)
    assert (g.width, g.height) == (47, 33)
    assert g.transform == (-159.75, 0.1, 0.0, 22.25, 0.0, -0.1)
    np.testing.assert_allclose(g.bounds(), (-159.75, 18.95, -155.05, 22.25))
    g2 = Grid.from_dict(g.to_dict())
    assert g2 == g and g2.same_as(g)
    assert g.rowcol([-159.7], [22.2]) == (np.array([0]), np.array([0]))
    x, y = g.xy([0], [0])
    np.testing.assert_allclose([x[0], y[0]], [-159.7, 22.2])
    with pytest.raises(R.GeoreferenceError):
        Grid.from_extent("EPSG:4326", 1, 1, 0, 2, 0.1)
    with pytest.raises(R.GeoreferenceError):
        Grid.from_extent("EPSG:4326", 0, 0, 1, 1, 0)


def test_grid_from_raster_tif_equals_netcdf():
    g_tif = Grid.from_raster(hawaii("era5land_swvl1.tif"))
    g_nc = Grid.from_raster(hawaii("era5land.nc"), variable="swvl1")
    assert g_tif.same_as(g_nc)
    assert (g_tif.width, g_tif.height) == (47, 33)


def test_open_missing_file_names_it(tmp_path):
    with pytest.raises(R.SourceError, match="does not exist"):
        R.read_dates(tmp_path / "nope.tif")


# --------------------------------------------------------------------------- dates
def test_dates_from_band_descriptions_hawaii():
    d = R.read_dates(hawaii("era5land_swvl1.tif"))
    assert d.dtype == np.dtype("datetime64[D]")
    assert len(d) == 730
    assert d[0] == np.datetime64("2017-01-01") and d[-1] == np.datetime64("2018-12-31")
    assert np.all(np.diff(d) == np.timedelta64(1, "D"))


def test_dates_from_netcdf_time_hawaii():
    ref = days("2017-01-01", 730)
    nc = hawaii("era5land.nc")
    np.testing.assert_array_equal(R.read_dates(f'NETCDF:"{nc}":swvl1'), ref)
    np.testing.assert_array_equal(R.read_dates(nc, variable="swvl1"), ref)
    gl = hawaii("gldas_noah21.nc")
    np.testing.assert_array_equal(R.read_dates((gl, "sm_0_10cm")), ref)
    info = R.open_series(R.netcdf_source(gl, "sm_0_10cm"))
    assert info.count == 730 and info.nodata == -9999 and "time" in info.date_source
    assert info.name == "gldas_noah21.nc:sm_0_10cm"


def test_netcdf_with_several_variables_asks_for_one():
    with pytest.raises(R.SourceError, match="several variables.*sm_0_10cm"):
        R.read_dates(hawaii("gldas_noah21.nc"))


@pytest.mark.filterwarnings("ignore:numpy.ndarray size changed")
def test_dates_from_synthetic_netcdf_hours_and_calendar(tmp_path):
    data = np.random.default_rng(0).random((3, 4, 5)).astype("f4")
    lats, lons = np.arange(4) * 1.0 + 10.5, np.arange(5) * 1.0 + 20.5
    # hours since, with a time of day: 2000-01-01 06:00 + 0 h, 24 h, 48 h
    p = write_netcdf(tmp_path / "h.nc", data, lats, lons, [0, 24, 48], "hours since 2000-01-01 06:00:00")
    np.testing.assert_array_equal(R.read_dates(p), days("2000-01-01", 3))
    # 'noleap' calendar goes through cftime: day 58, 59 of 2001 are Feb 28, Mar 1
    p2 = write_netcdf(tmp_path / "n.nc", data, lats, lons, [58, 59, 60], "days since 2001-01-01", calendar="noleap")
    np.testing.assert_array_equal(R.read_dates(p2), np.array(["2001-02-28", "2001-03-01", "2001-03-02"],
                                                             dtype="datetime64[D]"))


@pytest.mark.filterwarnings("ignore:numpy.ndarray size changed")
def test_netcdf_extra_dimension_gives_duplicate_dates_with_hint(tmp_path):
    data = np.zeros((2, 3, 3), "f4")
    p = write_netcdf(tmp_path / "lev.nc", data, [0.5, 1.5, 2.5], [0.5, 1.5, 2.5], [0, 1], "days since 2010-01-01",
                     extra_level=True)
    with pytest.raises(R.DuplicateDatesError, match="level"):
        R.read_dates(p)


def test_dates_from_start_and_step(tmp_path):
    g = Grid.from_extent("EPSG:4326", 0, 0, 3, 2, 1)
    p = write_plain_tif(tmp_path / "nodates.tif", np.zeros((4, 2, 3), "f4"), g)
    d = R.read_dates(p, start="2020-02-27", step_days=2)
    np.testing.assert_array_equal(d, days("2020-02-27", 4, 2))
    info = R.open_series(p, start="2020-02-27")
    assert info.date_source.startswith("start date") and info.count == 4


def test_no_dates_error_names_layer(tmp_path):
    g = Grid.from_extent("EPSG:4326", 0, 0, 3, 2, 1)
    p = write_plain_tif(tmp_path / "nodates.tif", np.zeros((4, 2, 3), "f4"), g)
    with pytest.raises(R.NoDatesError, match=r"nodates\.tif.*start date"):
        R.read_dates(p)
    with pytest.raises(R.NoDatesError, match="my precip"):
        R.open_series(p, name="my precip")
    assert isinstance(R.NoDatesError("x"), ValueError)


def test_duplicated_dates_error(tmp_path):
    g = Grid.from_extent("EPSG:4326", 0, 0, 3, 2, 1)
    p = R.write_series_geotiff(tmp_path / "dup.tif", np.zeros((3, 2, 3), "f4"), g,
                               ["2019-01-01", "2019-01-02", "2019-01-02"])
    with pytest.raises(R.DuplicateDatesError, match=r"dup\.tif.*2019-01-02.*bands 2, 3"):
        R.read_dates(p)


def test_mixed_descriptions_and_band_count(tmp_path):
    g = Grid.from_extent("EPSG:4326", 0, 0, 3, 2, 1)
    p = write_plain_tif(tmp_path / "mixed.tif", np.zeros((2, 2, 3), "f4"), g, descriptions=["2019-01-01", "rain"])
    with pytest.raises(R.BadDatesError, match="band 2: 'rain'"):
        R.read_dates(p)
    q = write_plain_tif(tmp_path / "n.tif", np.zeros((2, 2, 3), "f4"), g)
    with pytest.raises(R.BandCountError, match="2 band"):
        R.open_series(q, dates=["2019-01-01", "2019-01-02", "2019-01-03"])


def test_write_series_geotiff_roundtrip(tmp_path):
    g = Grid.from_extent("EPSG:3857", 0, 0, 3000, 2000, 1000)
    a = np.arange(2 * 2 * 3, dtype="f4").reshape(2, 2, 3)
    a[1, 0, 0] = np.nan
    p = R.write_series_geotiff(tmp_path / "out.tif", a, g, ["2021-05-01", "2021-05-02"])
    assert not list(tmp_path.glob("*.part*"))
    with rasterio.open(p) as ds:
        assert ds.descriptions == ("2021-05-01", "2021-05-02")
        assert ds.nodata == -9999 and ds.profile["tiled"] and ds.compression is not None
        assert ds.read(2)[0, 0] == -9999
    info = R.open_series(p)
    assert info.grid.same_as(g)
    b = R.read_aligned(info, g, info.dates)
    np.testing.assert_array_equal(np.isnan(b), np.isnan(a))
    np.testing.assert_allclose(b[~np.isnan(b)], a[~np.isnan(a)])
    with pytest.raises(R.InputError, match="does not exist"):
        R.write_series_geotiff(tmp_path / "no" / "x.tif", a, g, ["2021-05-01", "2021-05-02"])


# --------------------------------------------------------------------------- common dates / overlap
def test_common_dates_and_no_overlap_in_time():
    a, b, c = days("2017-01-01", 10), days("2017-01-05", 10), days("2018-01-01", 3)
    np.testing.assert_array_equal(R.common_dates([b, a]), days("2017-01-05", 6))
    with pytest.raises(R.NoOverlapError, match="no common dates between 'era5'.*and 'smap'"):
        R.common_dates([a, b, c], names=["era5", "gldas", "smap"])


def test_check_overlap_and_non_overlapping_layer(tmp_path):
    g = Grid.from_extent("EPSG:4326", -159.75, 18.95, -155.05, 22.25, 0.1)
    inter = R.check_overlap(g, (-156, 19, -150, 20), "box")
    np.testing.assert_allclose(inter, (-156, 19, -155.05, 20))
    # bounds in another CRS (Web Mercator) that overlap
    mb = rasterio.warp.transform_bounds("EPSG:4326", "EPSG:3857", -157, 20, -156, 21)
    R.check_overlap(g, (mb, "EPSG:3857"), "mercator box")
    # a layer over Europe
    ge = Grid.from_extent("EPSG:3857", 1.0e6, 5.0e6, 1.2e6, 5.2e6, 1e4)
    p = R.write_series_geotiff(tmp_path / "europe.tif", np.zeros((1, ge.height, ge.width), "f4"), ge, ["2017-01-01"])
    with pytest.raises(R.NoOverlapError, match="layer 'europe.tif'.*does not overlap"):
        R.check_overlap(g, R.open_series(p).grid, "europe.tif")
    with pytest.raises(R.NoOverlapError, match="europe"):
        R.read_aligned(p, g, days("2017-01-01", 1))


# --------------------------------------------------------------------------- alignment
def _bilinear_reference(src, sgrid, xs, ys):
    """Plain numpy bilinear interpolation on pixel centres; NaN unless all 4 neighbours valid."""
    inv = ~sgrid.affine
    fc = inv.c + xs * inv.a - 0.5
    fr = inv.f + ys * inv.e - 0.5
    c0, r0 = np.floor(fc).astype(int), np.floor(fr).astype(int)
    wc, wr = fc - c0, fr - r0
    ok = (c0 >= 0) & (r0 >= 0) & (c0 + 1 < sgrid.width) & (r0 + 1 < sgrid.height)
    out = np.full(xs.shape, np.nan)
    c0, r0, wc, wr = c0[ok], r0[ok], wc[ok], wr[ok]
    v = (src[r0, c0] * (1 - wc) * (1 - wr) + src[r0, c0 + 1] * wc * (1 - wr)
         + src[r0 + 1, c0] * (1 - wc) * wr + src[r0 + 1, c0 + 1] * wc * wr)
    out[ok] = v
    return out


def test_align_gldas_onto_era5land_grid():
    tif, gl = hawaii("era5land_swvl1.tif"), hawaii("gldas_noah21.nc")
    grid = Grid.from_raster(tif)
    info = R.open_series((gl, "sm_0_10cm"))
    dates = info.dates[::73]  # 10 dates
    logs = []
    out, plan = R.read_aligned(info, grid, dates, log=logs.append, return_plan=True)
    assert out.shape == (10, 33, 47) and out.dtype == np.float32
    assert plan.resampling == "bilinear" and not plan.reprojected and not plan.direct
    assert any("bilinear" in m for m in logs)
    assert np.isfinite(out).sum() > 0
    # compare with an independent bilinear interpolation where all 4 source neighbours are valid
    with rasterio.open(info.path) as ds:
        src = ds.read([info.band_of(d) for d in dates], masked=True).filled(np.nan)
    rows, cols = np.mgrid[0:grid.height, 0:grid.width]
    xs, ys = grid.xy(rows, cols)
    n_checked = 0
    for k in range(len(dates)):
        ref = _bilinear_reference(src[k].astype(float), info.grid, xs, ys)
        m = np.isfinite(ref)
        np.testing.assert_allclose(out[k][m], ref[m], rtol=1e-5, atol=1e-6)
        n_checked += m.sum()
    assert n_checked > 50
    # a larger reference grid: cells outside the GLDAS extent are NaN
    big = Grid.from_extent(grid.crs_wkt, -161.75, 16.95, -153.05, 24.25, 0.1)
    out_big = R.read_aligned(info, big, dates)
    b = info.grid.bounds()
    bx, by = big.xy(*np.mgrid[0:big.height, 0:big.width])
    outside = (bx < b[0]) | (bx > b[2]) | (by < b[1]) | (by > b[3])
    assert outside.sum() > 1000 and np.all(np.isnan(out_big[:, outside]))


def test_bilinear_equals_source_at_coincident_centres(tmp_path):
    rng = np.random.default_rng(1)
    sgrid = Grid.from_extent("EPSG:4326", 10.0, 40.0, 12.4, 41.8, 0.3)  # 8 x 6
    src = rng.random((2, sgrid.height, sgrid.width)).astype("f4")
    src[:, 2, 3] = np.nan
    p = R.write_series_geotiff(tmp_path / "coarse.tif", src, sgrid, ["2020-01-01", "2020-01-02"])
    dgrid = Grid.from_extent("EPSG:4326", 10.0, 40.0, 12.4, 41.8, 0.1)  # centres coincide every 3rd cell
    out, plan = R.read_aligned(p, dgrid, days("2020-01-01", 2), return_plan=True)
    assert plan.resampling == "bilinear"
    sub = out[:, 1::3, 1::3]
    np.testing.assert_allclose(sub, src, rtol=1e-6, equal_nan=True)


def test_coarsening_uses_average(tmp_path):
    rng = np.random.default_rng(2)
    sgrid = Grid.from_extent("EPSG:4326", 0.0, 0.0, 1.2, 0.6, 0.1)  # 12 x 6
    src = rng.random((1, 6, 12)).astype("f4")
    src[0, 0, 0] = np.nan
    p = R.write_series_geotiff(tmp_path / "fine.tif", src, sgrid, ["2020-01-01"])
    dgrid = Grid.from_extent("EPSG:4326", 0.0, 0.0, 1.2, 0.6, 0.3)  # 4 x 2, 3x3 blocks
    logs = []
    out, plan = R.read_aligned(p, dgrid, days("2020-01-01", 1), log=logs.append, return_plan=True)
    assert plan.resampling == "average" and plan.ratio == pytest.approx(3)
    assert "average" in logs[-1]
    expected = np.nanmean(src[0].reshape(2, 3, 4, 3), axis=(1, 3))
    np.testing.assert_allclose(out[0], expected, rtol=1e-5)
    # explicit choice and masks
    assert R.plan_alignment(R.open_series(p), dgrid, "nearest").resampling == "nearest"
    assert R.plan_alignment(R.open_series(p), dgrid, kind="mask").resampling == "nearest"
    with pytest.raises(ValueError, match="unknown resampling"):
        R.plan_alignment(R.open_series(p), dgrid, "fancy")


def test_coarsening_real_era5land_onto_gldas_grid():
    tif, gl = hawaii("era5land_swvl1.tif"), hawaii("gldas_noah21.nc")
    ggrid = Grid.from_raster(gl, variable="sm_0_10cm")
    out, plan = R.read_aligned(tif, ggrid, days("2017-03-01", 5), return_plan=True)
    assert plan.resampling == "average" and plan.ratio == pytest.approx(2.5)
    assert out.shape == (5, 13, 19) and np.isfinite(out).any()
    assert np.nanmin(out) >= 0 and np.nanmax(out) <= 1


def test_same_lattice_is_copied_exactly():
    tif = hawaii("era5land_swvl1.tif")
    grid = Grid.from_raster(tif)
    sub = grid.window_grid(5, 7, 10, 20)
    d = days("2018-06-01", 3)
    out, plan = R.read_aligned(tif, sub, d, return_plan=True)
    assert plan.direct and plan.resampling == "none"
    info = R.open_series(tif)
    with rasterio.open(tif) as ds:
        ref = ds.read([info.band_of(x) for x in d], window=((5, 15), (7, 27)), masked=True).filled(np.nan)
    np.testing.assert_array_equal(out, ref)


def test_netcdf_and_geotiff_give_the_same_cube():
    tif, nc = hawaii("era5land_swvl1.tif"), hawaii("era5land.nc")
    grid = Grid.from_raster(tif)
    d = days("2017-07-01", 4)
    np.testing.assert_array_equal(R.read_aligned(tif, grid, d), R.read_aligned((nc, "swvl1"), grid, d))


def test_different_crs_is_reprojected_and_back(tmp_path):
    g = Grid.from_extent("EPSG:4326", 10.0, 45.0, 11.0, 46.0, 0.02)  # 50 x 50
    xs, ys = g.xy(*np.mgrid[0:g.height, 0:g.width])
    field = np.stack([2 * xs + ys, xs - ys]).astype("f4")
    p = R.write_series_geotiff(tmp_path / "geo.tif", field, g, ["2020-01-01", "2020-01-02"])
    d = days("2020-01-01", 2)
    mb = rasterio.warp.transform_bounds("EPSG:4326", "EPSG:3857", *g.bounds())
    merc = Grid.from_extent("EPSG:3857", *mb, 1500.0)
    logs = []
    out_m, plan = R.read_aligned(p, merc, d, log=logs.append, return_plan=True)
    assert plan.reprojected and "reprojected EPSG:4326 -> EPSG:3857" in logs[-1]
    # values at mercator cell centres match the analytic field at their lon/lat
    mx, my = merc.xy(*np.mgrid[0:merc.height, 0:merc.width])
    lon, lat = rasterio.warp.transform("EPSG:3857", "EPSG:4326", mx.ravel(), my.ravel())
    lon, lat = np.reshape(lon, mx.shape), np.reshape(lat, mx.shape)
    assert np.isfinite(out_m[0]).mean() > 0.8
    # inside the hull of the source pixel centres (GDAL clamps in the outer half pixel)
    ok = (lon > 10.01) & (lon < 10.99) & (lat > 45.01) & (lat < 45.99)
    assert ok.sum() > 1000 and np.isfinite(out_m[0][ok]).all()
    np.testing.assert_allclose(out_m[0][ok], (2 * lon + lat)[ok], atol=2e-3)
    # write the mercator series and align it back onto the original lat/lon grid
    q = R.write_series_geotiff(tmp_path / "merc.tif", out_m, merc, d)
    back, plan2 = R.read_aligned(q, g, d, return_plan=True)
    assert plan2.reprojected
    inner = (slice(None), slice(3, -3), slice(3, -3))
    assert np.isfinite(back[inner]).all()
    np.testing.assert_allclose(back[inner], field[inner], atol=5e-3)


def test_smap_ease_grid_onto_latlon():
    smap = hawaii("smap_l3_am.nc")
    grid = Grid.from_raster(hawaii("era5land_swvl1.tif"))
    info = R.open_series((smap, "soil_moisture"))
    out, plan = R.read_aligned(info, grid, info.dates, return_plan=True)
    assert plan.reprojected and plan.src_crs == "EPSG:6933"
    assert out.shape == (730, 33, 47)
    valid_days = np.isfinite(out).any(axis=(1, 2)).sum()
    assert 100 < valid_days < 400  # README: 268 days with any valid SMAP pixel
    assert np.nanmax(out) <= 1.0


def test_window_reading_equals_slice_of_full_reading():
    tif, gl = hawaii("era5land_swvl1.tif"), hawaii("gldas_noah21.nc")
    grid = Grid.from_raster(tif)
    info = R.open_series((gl, "sm_0_10cm"))
    d = info.dates[100:104]
    full = R.read_aligned(info, grid, d)
    for (r, c, h, w) in [(0, 0, 10, 10), (7, 13, 11, 17), (25, 40, 8, 7), (-3, -3, 12, 12), (30, 44, 6, 6)]:
        win = R.read_window_aligned(info, grid, d, (r, c, h, w))
        assert win.shape == (4, h, w)
        r0, c0 = max(r, 0), max(c, 0)
        r1, c1 = min(r + h, grid.height), min(c + w, grid.width)
        inside = win[:, r0 - r:r1 - r, c0 - c:c1 - c]
        np.testing.assert_allclose(inside, full[:, r0:r1, c0:c1], rtol=1e-6, atol=1e-7, equal_nan=True)
        mask = np.ones((h, w), bool)
        mask[r0 - r:r1 - r, c0 - c:c1 - c] = False
        assert np.all(np.isnan(win[:, mask]))  # outside the grid


def test_window_reading_with_reprojection_and_band_blocks(monkeypatch):
    monkeypatch.setattr(R, "_BLOCK_PIXELS", 1)       # small windows would otherwise read all bands at once
    smap = hawaii("smap_l3_am.nc")
    grid = Grid.from_raster(hawaii("era5land_swvl1.tif"))
    info = R.open_series((smap, "soil_moisture"))
    d = info.dates[:40]
    full = R.read_aligned(info, grid, d, block_bands=64)
    # GDAL's nodata rules differ for one band and several: the result must not depend on blocks
    np.testing.assert_array_equal(R.read_aligned(info, grid, d, block_bands=7), full)
    np.testing.assert_array_equal(R.read_aligned(info, grid, d[:5], block_bands=1), full[:5])
    for (r, c, h, w) in [(5, 30, 16, 16), (20, 35, 13, 12)]:
        win = R.read_window_aligned(info, grid, d, (r, c, h, w), block_bands=9)
        np.testing.assert_allclose(win, full[:, r:r + h, c:c + w], rtol=1e-5, atol=1e-6, equal_nan=True)
    monkeypatch.setattr(R, "_BLOCK_PIXELS", 64 * 256 * 256)
    np.testing.assert_array_equal(R.read_aligned(info, grid, d, block_bands=1), full)   # scaled up: one block


def test_missing_dates_raise_or_fill():
    tif = hawaii("era5land_swvl1.tif")
    grid = Grid.from_raster(tif)
    want = np.array(["2018-12-30", "2018-12-31", "2019-01-01"], dtype="datetime64[D]")
    with pytest.raises(R.MissingDatesError, match=r"era5land_swvl1\.tif.*2019-01-01"):
        R.read_aligned(tif, grid, want)
    out = R.read_aligned(tif, grid, want, allow_missing=True)
    assert np.isfinite(out[1]).any() and np.all(np.isnan(out[2]))


def test_scale_offset_and_nodata_are_applied(tmp_path):
    g = Grid.from_extent("EPSG:4326", 0, 0, 3, 2, 1)
    raw = np.array([[[100, 200, -1], [300, 400, 500]]], dtype="int16")
    p = write_plain_tif(tmp_path / "packed.tif", raw, g, nodata=-1, descriptions=["2020-01-01"], scale=0.001)
    out = R.read_aligned(p, g, days("2020-01-01", 1))
    expected = np.array([[[0.1, 0.2, np.nan], [0.3, 0.4, 0.5]]], dtype="f4")
    np.testing.assert_allclose(out, expected, rtol=1e-6, equal_nan=True)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_ungeoreferenced_raster_error(tmp_path):
    p = tmp_path / "plain.tif"
    with rasterio.open(p, "w", driver="GTiff", width=3, height=2, count=1, dtype="float32") as dst:
        dst.write(np.zeros((1, 2, 3), "f4"))
        dst.set_band_description(1, "2020-01-01")
    with pytest.raises(R.GeoreferenceError, match="plain.tif"):
        R.open_series(p)
