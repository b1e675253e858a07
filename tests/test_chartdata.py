"""Chart data from prediction folders (model.prediction_folder, model.importance_chart, ui.chartdata): no QGIS, no Qt."""
import json
import os
import re

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_geom

from ismoe_qgis.core_callbacks import Callbacks, Cancelled
from ismoe_qgis.model import importance as imp
from ismoe_qgis.model import importance_chart as ic
from ismoe_qgis.model import prediction_folder as pf
from ismoe_qgis.ui import chartdata as cd
from prediction_fixtures import CRS, NODATA, RES, X0, Y0, make_prediction_folder, write_stack


@pytest.fixture
def pred(tmp_path):
    obs = np.full(365, np.nan)
    obs[::7] = 0.31
    folder = tmp_path / "pred"
    arrays = make_prediction_folder(str(folder), observations={"ST1": (2, 3, obs)}, nodata_pixels=[(3, 4)])
    arrays["path"] = str(folder)
    arrays["obs"] = obs
    return arrays


def box(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]}


def expected_means(arrays, rows, cols):
    """Mean weight per date/factor over pixels (rows, cols), nodata excluded -> (T, E)."""
    w = arrays["weights"][:, :, rows, cols].astype(float)
    w[w == NODATA] = np.nan
    return np.nanmean(w, axis=2)


# --------------------------------------------------------------------------- folder
def test_open_prediction_describes_the_folder(pred):
    f = pf.open_prediction(pred["path"])
    assert f.factors == ["snow", "radiation", "wind"]
    assert f.n_dates == 365 and str(f.dates[0]) == "2019-01-01"
    assert (f.width, f.height) == (5, 4)
    assert f.bounds == (X0, Y0 - 4 * RES, X0 + 5 * RES, Y0)
    assert f.sm_path.endswith("sm.tif") and f.observations_path.endswith("observations.csv")
    assert f.nodata == NODATA and f.warnings == []
    assert "3 factors" in f.describe()
    # the prediction.json path works too
    assert pf.open_prediction(os.path.join(pred["path"], "prediction.json")).factors == f.factors


def test_folder_with_no_weight_rasters(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(pf.ChartDataError, match="No weight rasters .*weight_<factor>.tif"):
        pf.open_prediction(str(tmp_path / "empty"))
    # a baseline's folder: SM only, json without factors
    folder = tmp_path / "baseline"
    make_prediction_folder(str(folder))
    for f in folder.glob("weight_*.tif"):
        f.unlink()
    meta = json.loads((folder / "prediction.json").read_text())
    meta.update(factors=[], weights={}, model_type="cnn_lstm")
    (folder / "prediction.json").write_text(json.dumps(meta))
    with pytest.raises(pf.ChartDataError, match="No weight rasters.*cnn_lstm"):
        pf.open_prediction(str(folder))
    with pytest.raises(pf.ChartDataError, match="not found"):
        pf.open_prediction(str(tmp_path / "missing"))
    with pytest.raises(pf.ChartDataError, match="No source chosen"):
        pf.open_prediction("  ")


def test_factor_mismatch_between_json_and_files(pred):
    folder = pred["path"]
    os.rename(os.path.join(folder, "weight_wind.tif"), os.path.join(folder, "weight_lake.tif"))
    with pytest.raises(pf.ChartDataError) as info:
        pf.open_prediction(folder)
    msg = str(info.value)
    assert "do not match" in msg
    assert "missing: wind (weight_wind.tif)" in msg
    assert "not listed in prediction.json: lake (weight_lake.tif)" in msg


def test_without_json_factors_and_dates_come_from_files(pred):
    os.remove(os.path.join(pred["path"], "prediction.json"))
    f = pf.open_prediction(pred["path"])
    assert sorted(f.factors) == ["radiation", "snow", "wind"]
    assert str(f.dates[-1]) == "2019-12-31"
    assert f.warnings and "prediction.json" in f.warnings[0]


def test_inconsistent_rasters_are_reported(pred, tmp_path):
    folder = pred["path"]
    # band count differs from the json dates
    meta = json.loads(Path(os.path.join(folder, "prediction.json")).read_text())
    meta["dates"] = meta["dates"][:-1]
    Path(os.path.join(folder, "prediction.json")).write_text(json.dumps(meta))
    with pytest.raises(pf.ChartDataError, match="364 dates but the rasters have 365 bands"):
        pf.open_prediction(folder)
    # a weight raster on another grid
    other = tmp_path / "other"
    make_prediction_folder(str(other))
    write_stack(str(other / "weight_wind.tif"), np.zeros((365, 4, 5)), from_origin(X0 + 10, Y0, RES, RES))
    with pytest.raises(pf.ChartDataError, match="weight_wind.tif is not on the same grid"):
        pf.open_prediction(str(other))
    write_stack(str(other / "weight_wind.tif"), np.zeros((365, 3, 5)), from_origin(X0, Y0, RES, RES))
    with pytest.raises(pf.ChartDataError, match="weight_wind.tif is 5x3 pixels"):
        pf.open_prediction(str(other))


# --------------------------------------------------------------------------- regions
def test_whole_area_monthly_means_show_winter_and_summer_drivers(pred):
    f = pf.open_prediction(pred["path"])
    t = pf.region_importance(f)
    month = t.get("all", "month")
    dom = month.dominant()
    assert dom[0] == dom[1] == dom[11] == "snow"
    assert dom[5] == dom[6] == dom[7] == "wind"
    rows, cols = np.nonzero(np.ones((4, 5), bool))
    means = expected_means(pred, rows, cols)                  # (T, E), nodata pixel excluded
    ref = imp.seasonal_importance(pred["dates"], means, f.factors)
    np.testing.assert_allclose(month.mean, ref.get("all", "month").mean, atol=1e-6)
    assert month.n[0, 0] == 31 * 19                           # 20 pixels, one nodata
    season = t.get("all", "season")
    np.testing.assert_allclose(season.mean[0], [0.8, 0.1, 0.1], atol=0.01)


def test_bbox_region_uses_pixel_centres(pred):
    f = pf.open_prediction(pred["path"])
    m = pf.region_mask(f, pf.BBox(X0 + 1000, Y0 - 3000, X0 + 3000, Y0 - 1000))
    assert (m.row_off, m.col_off, m.height, m.width, m.n_pixels) == (1, 1, 2, 2, 4)
    rs = pf.region_sums(f, pf.BBox(X0 + 1000, Y0 - 3000, X0 + 3000, Y0 - 1000))["all"]
    rows, cols = np.meshgrid([1, 2], [1, 2], indexing="ij")
    np.testing.assert_allclose(rs.means(), expected_means(pred, rows.ravel(), cols.ravel()), atol=1e-6)
    with pytest.raises(pf.ChartDataError, match="does not cover any pixel"):
        pf.region_mask(f, pf.BBox(0, 0, 10, 10))


def test_polygon_in_another_crs_is_reprojected(pred):
    f = pf.open_prediction(pred["path"])
    poly = box(X0 + 1000, Y0 - 3000, X0 + 3000, Y0 - 1000)      # pixels rows 1-2, cols 1-2
    in_raster_crs = pf.region_mask(f, pf.PolygonRegion(poly))
    geo = transform_geom(CRS, "EPSG:4326", poly)
    assert abs(geo["coordinates"][0][0][0]) < 180                # really in degrees
    reprojected = pf.region_mask(f, pf.PolygonRegion(geo, "EPSG:4326"))
    full = np.zeros((4, 5), bool)
    full[1:3, 1:3] = True
    for m in (in_raster_crs, reprojected):
        got = np.zeros((4, 5), bool)
        got[m.row_off:m.row_off + m.height, m.col_off:m.col_off + m.width] = m.mask
        np.testing.assert_array_equal(got, full)
    t = pf.region_importance(f, {"geo": pf.PolygonRegion(geo, "EPSG:4326")})
    means = expected_means(pred, [1, 1, 2, 2], [1, 2, 1, 2])
    ref = imp.seasonal_importance(pred["dates"], means, f.factors, region="geo")
    np.testing.assert_allclose(t.get("geo", "month").mean, ref.get("geo", "month").mean, atol=1e-6)
    # a map extent (BBox) in degrees becomes a reprojected polygon too
    xs, ys = warp_transform(CRS, "EPSG:4326", [X0 + 1000, X0 + 3000], [Y0 - 3000, Y0 - 1000])
    m = pf.region_mask(f, pf.BBox(min(xs), min(ys), max(xs), max(ys), "EPSG:4326"))
    assert m.n_pixels == 4


def test_tiny_and_outside_polygons(pred):
    f = pf.open_prediction(pred["path"])
    tiny = box(X0 + 2100, Y0 - 1900, X0 + 2200, Y0 - 1800)     # inside pixel (1, 2), no centre inside
    m = pf.region_mask(f, pf.PolygonRegion(tiny))
    assert m.n_pixels == 1
    assert (m.row_off + np.argwhere(m.mask)[0][0], m.col_off + np.argwhere(m.mask)[0][1]) == (1, 2)
    with pytest.raises(pf.ChartDataError, match="lies outside the prediction raster"):
        pf.region_mask(f, pf.PolygonRegion(box(0, 0, 10, 10)), "far")
    with pytest.raises(pf.ChartDataError, match="not a polygon"):
        pf.region_mask(f, pf.PolygonRegion({"type": "Point", "coordinates": [X0, Y0]}))
    with pytest.raises(pf.ChartDataError, match="Unknown CRS"):
        pf.region_mask(f, pf.PolygonRegion(tiny, "EPSG:999999"))


def test_streaming_many_blocks_many_regions_equals_numpy(tmp_path):
    """A tiled 37x41 stack read in 16x16 windows and 8-band chunks, 3 regions in one pass."""
    rng = np.random.default_rng(3)
    dates = np.arange(np.datetime64("2020-01-01"), np.datetime64("2020-03-10"))
    w = rng.random((len(dates), 2, 37, 41)).astype("float32")
    w[:, :, 5, 7] = NODATA
    w[3, 1, 10:20, 10:20] = np.nan
    arrays = make_prediction_folder(str(tmp_path / "big"), factors=("lake", "wind"), dates=dates, weights=w,
                                    tiled=True)
    f = pf.open_prediction(str(tmp_path / "big"))
    assert f.block_shape == (16, 16)
    poly = box(X0 + 3500, Y0 - 30500, X0 + 25500, Y0 - 2500)
    regions = {"whole": None, "poly": pf.PolygonRegion(poly), "bbox": pf.BBox(X0 + 20000, Y0 - 37000, X0 + 41000,
                                                                             Y0 - 20000)}
    seen = []
    rs = pf.region_sums(f, regions, Callbacks(progress=seen.append), max_bytes=16 * 16 * 4 * 8)
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    data = arrays["weights"].astype(float)
    data[data == NODATA] = np.nan
    for name, reg in regions.items():
        m = pf.region_mask(f, reg, name)
        mask = np.zeros((37, 41), bool)
        mask[m.row_off:m.row_off + m.height, m.col_off:m.col_off + m.width] = True if m.mask is None else m.mask
        vals = data[:, :, mask]
        np.testing.assert_allclose(rs[name].means(), np.nanmean(vals, axis=2), rtol=1e-5)
        np.testing.assert_array_equal(rs[name].counts, np.isfinite(vals).sum(axis=2))
    # one month only
    jan = pf.region_sums(f, None, bands=range(31))["all"]
    np.testing.assert_allclose(jan.means(), np.nanmean(data[:31].reshape(31, 2, -1), axis=2), rtol=1e-5)


def test_cancel_stops_the_stream(pred):
    f = pf.open_prediction(pred["path"])
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        pf.region_sums(f, None, Callbacks(is_cancelled=cancelled))


def test_whole_area_uses_the_folders_importance_csv(pred):
    f = pf.open_prediction(pred["path"])
    fake = imp.seasonal_importance(pred["dates"], np.full((365, 3), 1 / 3), f.factors)
    imp.write_importance_csv(fake, os.path.join(pred["path"], "importance.csv"))
    f = pf.open_prediction(pred["path"])
    assert f.importance_path
    t = pf.whole_area_importance(f)
    np.testing.assert_allclose(t.get("all", "month").mean, 1 / 3, atol=1e-6)
    t = pf.whole_area_importance(f, use_cache=False)
    assert t.get("all", "month").dominant()[0] == "snow"


# --------------------------------------------------------------------------- pixels
def test_pixel_series_equals_the_known_values(pred):
    f = pf.open_prediction(pred["path"])
    row, col = pf.pixel_at(f, X0 + 3500, Y0 - 2500)
    assert (row, col) == (2, 3)
    px = pf.pixel_series(f, row, col)
    np.testing.assert_allclose(px.weights, pred["weights"][:, :, 2, 3], rtol=1e-6)
    np.testing.assert_allclose(px.sm, pred["sm"][:, 2, 3], rtol=1e-6)
    assert (px.x, px.y) == (X0 + 3500, Y0 - 2500)
    assert px.station_id == "ST1"
    np.testing.assert_allclose(px.observations, pred["obs"], rtol=1e-5, equal_nan=True)
    assert pf.pixel_series(f, 0, 0).observations is None
    nod = pf.pixel_series(f, 3, 4)
    assert np.isnan(nod.weights).all() and np.isnan(nod.sm).all() and not nod.has_data


def test_pixel_from_other_crs_and_outside(pred):
    f = pf.open_prediction(pred["path"])
    xs, ys = warp_transform(CRS, "EPSG:4326", [X0 + 1500], [Y0 - 3500])
    assert pf.pixel_at(f, xs[0], ys[0], "EPSG:4326") == (3, 1)
    with pytest.raises(pf.OutsideRasterError, match="outside the prediction raster.*Click inside it"):
        pf.pixel_at(f, X0 - 1, Y0 - 10)
    with pytest.raises(pf.OutsideRasterError):
        pf.pixel_at(f, X0 + 10, Y0 + 1)
    with pytest.raises(pf.OutsideRasterError):
        pf.pixel_series(f, 4, 0)


def test_pixel_read_is_a_window_not_a_full_read(pred, monkeypatch):
    f = pf.open_prediction(pred["path"])
    windows = []
    real_open = rasterio.open

    class Spy:
        def __init__(self, ds):
            self.ds = ds

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.ds.close()

        def read(self, *a, **kw):
            windows.append(kw.get("window"))
            return self.ds.read(*a, **kw)

    monkeypatch.setattr(pf.rasterio, "open", lambda p, *a, **kw: Spy(real_open(p, *a, **kw)))
    pf.pixel_series(f, 1, 1)
    assert len(windows) == 4 and all(w is not None and (w.width, w.height) == (1, 1) for w in windows)


# --------------------------------------------------------------------------- chart series / headless chart
def test_chart_series_lines_and_stacks(pred):
    f = pf.open_prediction(pred["path"])
    s = pf.region_importance(f).get("all", "month")
    lines = ic.chart_series(s)
    assert [c.factor for c in lines] == f.factors and all(c.lower is None for c in lines)
    assert lines[0].colour == imp.FACTOR_COLOURS["snow"]
    stacks = ic.chart_series(s, stacked=True)
    np.testing.assert_allclose(stacks[-1].upper, 1.0, atol=1e-5)
    np.testing.assert_allclose(stacks[1].lower, stacks[0].upper)
    assert [lab for _, lab in ic.period_ticks("month")][:2] == ["Jan", "Feb"]
    assert len(ic.period_ticks("doy")) == 12 and len(ic.period_ticks("season")) == 4


def test_open_source_reads_csv(pred, tmp_path):
    t = pf.region_importance(pf.open_prediction(pred["path"]))
    path = imp.write_importance_csv(t, str(tmp_path / "i.csv"))
    got = pf.open_source(path)
    assert isinstance(got, imp.ImportanceTable) and got.factors == t.factors
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(pf.ChartDataError, match="not a seasonal-importance CSV"):
        pf.open_source(str(tmp_path / "bad.csv"))


def test_matplotlib_chart_png_svg_html(pred, tmp_path):
    f = pf.open_prediction(pred["path"])
    t = pf.region_importance(f, {"a": None, "b": pf.BBox(X0, Y0 - 2000, X0 + 2000, Y0)})
    fig = ic.importance_figure(t, "month")
    png = ic.save_figure(fig, str(tmp_path / "c.png"))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = ic.save_figure(ic.importance_figure(t, "doy", stacked=True), str(tmp_path / "c.svg"))
    assert "<svg" in Path(svg).read_text()
    page = ic.write_html(t, fig, str(tmp_path / "c.html"))
    text = Path(page).read_text()
    assert "<svg" in text and "snow" in text
    assert re.search(r"<td class='l'>Jan</td><td><b>0\.[78]\d\d</b></td>", text)  # snow dominant in January
    with pytest.raises(pf.ChartDataError):
        ic.importance_figure(t, "month", regions=["nope"])


def test_zone_regions_from_a_label_raster(pred, tmp_path):
    f = pf.open_prediction(pred["path"])
    labels = np.array([[1, 1, 2, 2, 0]] * 4, dtype="int16")
    same = str(tmp_path / "zones.tif")
    with rasterio.open(same, "w", driver="GTiff", width=5, height=4, count=1, dtype="int16", crs=CRS,
                       transform=pred["transform"]) as dst:
        dst.write(labels, 1)
        dst.update_tags(region_1="arid")
    z = pf.zone_regions(f, same)
    assert list(z) == ["arid", "zone 2"]                      # tag name, default name; 0 is no zone
    assert int(z["arid"].mask.sum()) == 8
    assert list(pf.zone_regions(f, same, {2: "tundra", 0: "rest"})) == ["rest", "arid", "tundra"]
    t = pf.region_importance(f, z)
    w = pred["weights"][:, :, :, :2].astype(float)
    w[w == NODATA] = np.nan
    ref = imp.seasonal_importance(pred["dates"], np.nanmean(w.reshape(365, 3, -1), axis=2), f.factors)
    np.testing.assert_allclose(t.get("arid", "month").mean, ref.get("all", "month").mean, atol=1e-6)
    # the same zones on a finer grid in another CRS are resampled onto the prediction grid
    from rasterio.warp import Resampling, calculate_default_transform, reproject
    dst_t, w2, h2 = calculate_default_transform(CRS, "EPSG:4326", 5, 4, *f.bounds, resolution=0.002)
    fine = np.zeros((h2, w2), "int16")
    reproject(labels, fine, src_transform=pred["transform"], src_crs=CRS, dst_transform=dst_t,
              dst_crs="EPSG:4326", resampling=Resampling.nearest)
    other = str(tmp_path / "zones_4326.tif")
    with rasterio.open(other, "w", driver="GTiff", width=w2, height=h2, count=1, dtype="int16",
                       crs="EPSG:4326", transform=dst_t, nodata=-1) as dst:
        dst.write(fine, 1)
    z2 = pf.zone_regions(f, other, pf.parse_zone_names("1=arid; 2=tundra"))
    np.testing.assert_array_equal(z2["arid"].mask, z["arid"].mask)
    with pytest.raises(pf.ChartDataError, match="value=name"):
        pf.parse_zone_names("1 arid")
    with pytest.raises(pf.ChartDataError, match="could not be read"):
        pf.zone_regions(f, str(tmp_path / "none.tif"))


# --------------------------------------------------------------------------- ensemble spread
def make_ensemble(arrays, members=3):
    """Turn a prediction folder into an ensemble's: prediction.json "ensemble" and an importance.csv with
    the members' spread (members = the mean weights scaled by 0.9, 1.0, 1.1, ...)."""
    folder = arrays["path"]
    w = arrays["weights"].astype(float)
    w[w == NODATA] = np.nan
    sums, counts = np.nansum(w, axis=(2, 3)), np.isfinite(w).sum(axis=(2, 3))
    scale = 1.0 + 0.1 * (np.arange(members) - (members - 1) / 2)
    t = imp.importance_from_sums(arrays["dates"], sums, counts, arrays["factors"],
                                 member_sums=scale[:, None, None] * sums[None])
    imp.write_importance_csv(t, os.path.join(folder, "importance.csv"))
    meta = json.loads(Path(folder, "prediction.json").read_text())
    meta["ensemble"] = {"members": members, "seeds": list(range(members)), "sm_spread": "sm_spread.tif",
                        "weight_spread": {f: "weight_spread_%s.tif" % f for f in arrays["factors"]},
                        "spread_meaning": "standard deviation over the ensemble's members (ddof 0)"}
    meta["importance"] = "importance.csv"
    Path(folder, "prediction.json").write_text(json.dumps(meta))
    return t


def test_ensemble_spread_becomes_a_band_around_each_line(pred):
    single = pf.open_prediction(pred["path"])
    assert single.ensemble is None and single.members is None
    assert all(not c.has_band for c in ic.chart_series(pf.whole_area_importance(single).get("all", "month")))
    ref = make_ensemble(pred)
    f = pf.open_prediction(pred["path"])
    assert f.members == 3 and f.ensemble["weight_spread"]["snow"] == "weight_spread_snow.tif"
    assert pf.ensemble_members(f.importance_path) == 3 and pf.ensemble_members(pred["path"]) == 3
    for kind in ("month", "season", "doy"):
        s = pf.whole_area_importance(f).get("all", kind)    # from importance.csv, spread included
        want = ref.get("all", kind)
        assert s.spread is not None and (s.spread > 0).all()
        np.testing.assert_allclose(s.spread, want.spread, atol=2e-6)
        lines = ic.chart_series(s)
        assert [c.factor for c in lines] == f.factors and all(c.has_band for c in lines)
        for j, c in enumerate(lines):
            np.testing.assert_allclose(c.band_lower, s.mean[:, j] - s.spread[:, j])
            np.testing.assert_allclose(c.band_upper, s.mean[:, j] + s.spread[:, j])
        assert not any(c.has_band for c in ic.chart_series(s, stacked=True))
    # a region streamed from the rasters has no member spread: no band
    s = pf.region_importance(f, pf.BBox(X0, Y0 - 2000, X0 + 2000, Y0)).get("all", "month")
    assert s.spread is None and not any(c.has_band for c in ic.chart_series(s))
    assert ic.spread_label(3) == "± member sd (3 members)" and ic.spread_label(None) == "± member sd"


def test_matplotlib_chart_draws_the_spread_band(pred, tmp_path):
    from matplotlib.collections import PolyCollection

    make_ensemble(pred)
    f = pf.open_prediction(pred["path"])
    t = pf.whole_area_importance(f)
    s = t.get("all", "month")
    fig = ic.importance_figure(t, "month", members=3)
    ax = fig.axes[0]
    bands = {c.get_gid(): c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid()}
    assert sorted(bands) == sorted("spread-" + x for x in f.factors)
    for j, name in enumerate(f.factors):
        verts = bands["spread-" + name].get_paths()[0].vertices
        assert verts[:, 1].max() == pytest.approx(np.nanmax(s.mean[:, j] + s.spread[:, j]), abs=1e-9)
        assert verts[:, 1].min() == pytest.approx(np.nanmin(s.mean[:, j] - s.spread[:, j]), abs=1e-9)
        assert bands["spread-" + name].get_alpha() == pytest.approx(ic.BAND_ALPHA)
    legend = [tx.get_text() for lg in fig.legends for tx in lg.get_texts()]
    assert "± member sd (3 members)" in legend
    assert Path(ic.save_figure(fig, str(tmp_path / "band.png"))).stat().st_size > 1000
    # stacked areas and a table without spread: no band, no legend entry
    for fig in (ic.importance_figure(t, "month", stacked=True),
                ic.importance_figure(pf.region_importance(f), "month")):
        assert not [c for c in fig.axes[0].collections if c.get_gid()]
        assert not any("member sd" in tx.get_text() for lg in fig.legends for tx in lg.get_texts())


def test_date_positions_on_the_chart_axes():
    d = np.datetime64("2019-07-16")
    assert cd.date_position("month", d) == pytest.approx(7.0, abs=0.02)      # mid-July = 7
    assert cd.date_position("month", "2019-07-01") == pytest.approx(6.5 + 0.5 / 31)
    assert cd.date_position("doy", d) == 197
    assert cd.date_position("season", "2019-07-16") == pytest.approx(3.0, abs=0.02)   # JJA, its middle month
    assert 0.5 < cd.date_position("season", "2019-12-01") < 1.0 < cd.date_position("season", "2019-02-10") < 1.5
    assert cd.date_position("time", d) == float(np.datetime64("2019-07-16T00:00:00", "s").astype(np.int64))
    with pytest.raises(pf.ChartDataError):
        cd.date_position("week", d)
    # inverse: every day of a year comes back from its position
    days = np.arange(np.datetime64("2019-01-01"), np.datetime64("2020-01-01"))
    for kind in ("month", "season", "doy", "time"):
        back = [cd.date_at_position(kind, cd.date_position(kind, x), near="2019-05-05") for x in days[::7]]
        assert back == list(days[::7]), kind
    # snapped to the prediction's dates in the same period, in the year of `near`
    two_years = np.arange(np.datetime64("2019-01-01"), np.datetime64("2021-01-01"), 10)
    assert cd.date_at_position("month", 3.0, two_years, near="2020-08-01").astype(object).month == 3
    assert str(cd.date_at_position("month", 3.0, two_years, near="2020-08-01"))[:4] == "2020"
    assert str(cd.date_at_position("doy", 100, None, near="2020-08-01")) == "2020-04-09"
    assert cd.date_at_position("time", cd.date_position("time", "2019-01-04"), two_years) == np.datetime64(
        "2019-01-01")
