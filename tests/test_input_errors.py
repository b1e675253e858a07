"""Bad input through Processing: one test each (issue 4).

Every error must name the layer or parameter, say what to do, and leave no output behind;
the cases that are handled instead of refused (another CRS, an all-nodata area) must be logged.
Also: predict streaming (cancel leaves nothing behind, COG output).

All inputs are small synthetic rasters/vectors written to tmp_path, so this runs in CI without
../shared/data. Models are tiny random networks (no training).
"""
import json
import os

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from qgis.core import QgsProcessingException  # noqa: E402

DAYS = 20
SIZE = 12
RES = 0.1
ORIGIN = (10.0, 50.0)      # x0 (lon), y0 (lat) of the top-left corner
START = np.datetime64("2017-01-01")


def transform(origin=ORIGIN, res=RES):
    return rasterio.Affine(res, 0.0, origin[0], 0.0, -res, origin[1])


def write_series(path, data=None, *, dates="iso", crs="EPSG:4326", origin=ORIGIN, res=RES, nodata=-9999.0,
                 seed=0):
    """A dated multiband GeoTIFF: one band per day. dates: 'iso' (band descriptions from START),
    None (no dates at all) or a list of ISO strings."""
    if data is None:
        rng = np.random.default_rng(seed)
        data = (rng.random((DAYS, SIZE, SIZE)) + np.arange(DAYS)[:, None, None] * 0.05).astype(np.float32)
    data = np.asarray(data, np.float32)
    count, h, w = data.shape
    prof = dict(driver="GTiff", width=w, height=h, count=count, dtype="float32", crs=crs,
                transform=transform(origin, res), nodata=nodata)
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(np.where(np.isnan(data), nodata, data).astype(np.float32))
        if dates is not None:
            iso = [str(START + i) for i in range(count)] if dates == "iso" else list(dates)
            for i, d in enumerate(iso, start=1):
                ds.set_band_description(i, d)
    return str(path)


def write_geojson(path, features):
    with open(path, "w") as f:
        json.dump({"type": "FeatureCollection", "features": features}, f)
    return str(path)


def point(sid, x, y):
    return {"type": "Feature", "properties": {"station_id": sid}, "geometry": {"type": "Point", "coordinates": [x, y]}}


def write_table(path, rows):
    with open(path, "w") as f:
        f.write("station_id,date,sm\n")
        for sid, d, v in rows:
            f.write(f"{sid},{d},{v}\n")
    return str(path)


@pytest.fixture
def inputs(tmp_path):
    """A factor layer and a target on the same 12 x 12 grid, 20 days."""
    return {"factor": write_series(tmp_path / "t2m.tif", seed=1),
            "target": write_series(tmp_path / "sm.tif", seed=2)}


def expect_error(run_alg, alg, params, *words):
    """Run, expect a QgsProcessingException whose message holds every word (case-insensitive)."""
    with pytest.raises(QgsProcessingException) as e:
        run_alg(alg, params)
    msg = str(e.value)
    for w in words:
        assert w.lower() in msg.lower(), f"{w!r} not in: {msg}"
    return msg


def prepare_params(factor, out, **kw):
    return {"FACTORS": [factor], "PATCH_SIZE": 3, "SEQ_LEN": 5, "OUTPUT": str(out), **kw}


def no_output(path):
    """Nothing left behind: neither the file nor temporary files next to it."""
    path = str(path)
    d = os.path.dirname(path)
    left = [p for p in os.listdir(d) if p.startswith(os.path.basename(path)) or p.startswith(".ismoe")] \
        if os.path.isdir(d) else []
    return not os.path.exists(path) and not left


# ------------------------------------------------------------------ grids and dates
def test_extents_do_not_overlap(run_alg, inputs, tmp_path):
    far = write_series(tmp_path / "far_away.tif", origin=(100.0, -20.0))
    out = tmp_path / "ds.npz"
    msg = expect_error(run_alg, "ismoe:preparedataset",
                       prepare_params(inputs["factor"], out, FACTORS=[inputs["factor"], far], TARGET=inputs["target"]),
                       "far_away", "does not overlap", "choose layers that cover the same area")
    assert "EPSG:4326" in msg
    assert no_output(out)


def test_different_crs_is_reprojected_and_logged(run_alg, inputs, tmp_path):
    """A factor in Web Mercator over the same area: warped onto the reference grid, and the log says so."""
    from rasterio.warp import transform as tr
    (x0, x1), (y0, y1) = tr("EPSG:4326", "EPSG:3857", [ORIGIN[0], ORIGIN[0] + SIZE * RES],
                            [ORIGIN[1], ORIGIN[1] - SIZE * RES])
    res = (x1 - x0) / SIZE
    merc = write_series(tmp_path / "t2m_mercator.tif", crs="EPSG:3857", origin=(x0, y0), res=res, seed=3)
    out = tmp_path / "ds.npz"
    res_, fb = run_alg("ismoe:preparedataset", prepare_params(merc, out, FACTORS=[inputs["factor"], merc],
                                                              TARGET=inputs["target"]))
    assert "t2m_mercator: reprojected EPSG:3857 -> EPSG:4326; resampling bilinear" in fb.text
    from ismoe_qgis.data.cube import Cube
    cube = Cube.load(str(out))
    assert cube.x.shape == (2, DAYS, SIZE, SIZE)
    assert np.isfinite(cube.x[1]).mean() > 0.6          # the warped layer covers the grid (edges may be NaN)


def test_layer_without_dates_needs_start_date(run_alg, inputs, tmp_path):
    undated = write_series(tmp_path / "undated.tif", dates=None)
    out = tmp_path / "ds.npz"
    expect_error(run_alg, "ismoe:preparedataset", prepare_params(undated, out, TARGET=inputs["target"]),
                 "undated", "no dates", "start date", "band descriptions")
    assert no_output(out)
    # with START_DATE the same layer is used, and the log says where its dates come from
    _, fb = run_alg("ismoe:preparedataset", prepare_params(undated, out, TARGET=inputs["target"],
                                                           START_DATE="2017-01-01"))
    assert "start date 2017-01-01 + 1 day(s) per band" in fb.text and out.exists()


def test_duplicated_dates(run_alg, inputs, tmp_path):
    dates = [str(START + i) for i in range(DAYS)]
    dates[5] = dates[4]
    dup = write_series(tmp_path / "dup_dates.tif", dates=dates)
    out = tmp_path / "ds.npz"
    expect_error(run_alg, "ismoe:preparedataset", prepare_params(dup, out, TARGET=inputs["target"]),
                 "dup_dates", "duplicated dates", "2017-01-05", "bands 5, 6", "one band per day")
    assert no_output(out)


def test_target_all_nodata(run_alg, inputs, tmp_path):
    empty = write_series(tmp_path / "sm_empty.tif", np.full((DAYS, SIZE, SIZE), np.nan, np.float32))
    out = tmp_path / "ds.npz"
    expect_error(run_alg, "ismoe:preparedataset", prepare_params(inputs["factor"], out, TARGET=empty),
                 "TARGET", "no valid soil-moisture value", "check its extent, dates and nodata")
    assert no_output(out)


# ------------------------------------------------------------------ stations
def test_station_missing_from_table(run_alg, inputs, tmp_path):
    pts = write_geojson(tmp_path / "stations.geojson",
                        [point("A", 10.25, 49.75), point("B", 10.55, 49.55), point("C", 10.85, 49.25)])
    table = write_table(tmp_path / "obs.csv", [(s, str(START + i), 0.2) for s in "AB" for i in range(DAYS)])
    out = tmp_path / "ds.npz"
    expect_error(run_alg, "ismoe:preparedataset",
                 prepare_params(inputs["factor"], out, STATIONS=pts, STATION_TABLE=table),
                 "station(s) C", "STATION_TABLE", "its stations: A, B", "check the id field")
    assert no_output(out)


def test_empty_station_table(run_alg, inputs, tmp_path):
    pts = write_geojson(tmp_path / "stations.geojson", [point("A", 10.25, 49.75)])
    table = write_table(tmp_path / "obs.csv", [])
    out = tmp_path / "ds.npz"
    expect_error(run_alg, "ismoe:preparedataset",
                 prepare_params(inputs["factor"], out, STATIONS=pts, STATION_TABLE=table),
                 "STATION_TABLE", "no rows", "station_id, date, sm")
    assert no_output(out)


def test_stations_of_the_wrong_kind(run_alg, inputs, tmp_path):
    """A polygon layer as STATIONS is refused (by QGIS or by us); an empty point layer too, clearly."""
    poly = write_geojson(tmp_path / "basins.geojson", [{
        "type": "Feature", "properties": {"station_id": "A"},
        "geometry": {"type": "Polygon", "coordinates": [[[10.1, 49.9], [10.5, 49.9], [10.5, 49.5], [10.1, 49.9]]]}}])
    table = write_table(tmp_path / "obs.csv", [("A", str(START + i), 0.2) for i in range(DAYS)])
    out = tmp_path / "ds.npz"
    msg = expect_error(run_alg, "ismoe:preparedataset",
                       prepare_params(inputs["factor"], out, STATIONS=poly, STATION_TABLE=table), "STATIONS")
    # QGIS 3.22 lets a polygon layer through the parameter check; the algorithm refuses it
    assert "Polygon geometries, not points: give a point layer" in msg or "Incorrect parameter value" in msg
    assert no_output(out)

    from osgeo import ogr, osr
    gpkg = str(tmp_path / "empty_points.gpkg")
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(gpkg)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    lyr = ds.CreateLayer("stations", srs, ogr.wkbPoint)
    lyr.CreateField(ogr.FieldDefn("station_id", ogr.OFTString))
    ds = None
    expect_error(run_alg, "ismoe:preparedataset",
                 prepare_params(inputs["factor"], out, STATIONS=gpkg, STATION_TABLE=table),
                 "STATIONS", "no point", "one point per station")
    assert no_output(out)


# ------------------------------------------------------------------ outputs
def test_unwritable_output_path(run_alg, inputs, tmp_path, tiny_model):
    not_a_folder = tmp_path / "a_file.txt"
    not_a_folder.write_text("x")
    for bad in ("/proc/ismoe_test/ds.npz", str(not_a_folder / "ds.npz")):
        expect_error(run_alg, "ismoe:preparedataset", prepare_params(inputs["factor"], bad, TARGET=inputs["target"]),
                     "OUTPUT", "cannot write", "choose")
    assert not os.path.exists("/proc/ismoe_test")
    model, layers = tiny_model
    for bad in ("/proc/ismoe_pred", str(not_a_folder / "pred")):
        expect_error(run_alg, "ismoe:predict", {"MODEL_FILE": model, "FACTORS": layers, "OUTPUT": bad},
                     "OUTPUT", "cannot write", "choose")
    assert not_a_folder.read_text() == "x"


# ------------------------------------------------------------------ predict: nodata, cancel, COG
@pytest.fixture
def tiny_model(tmp_path):
    """A random 2-factor model (patch 3, 5 days) saved with model.io, and its two 24 x 24 layers.
    The left 12 columns of both layers are nodata (the 'ocean')."""
    torch = pytest.importorskip("torch")
    from ismoe_qgis.model.io import save_model
    from ismoe_qgis.model.networks import ModelConfig, SoilMoistureNet
    cfg = ModelConfig(factors={"temperature": ["t2m"], "rain": ["rain"]}, variables=["t2m", "rain"],
                      patch_size=3, seq_len=5, conv_channels=2, hidden=4, router_hidden=4,
                      x_mean=[0.5, 0.5], x_std=[0.3, 0.3], y_mean=0.25, y_std=0.05)
    torch.manual_seed(0)
    path = str(tmp_path / "tiny.pt")
    save_model(path, SoilMoistureNet(cfg).eval())
    rng = np.random.default_rng(5)
    layers = []
    for name in cfg.variables:
        data = rng.random((DAYS, 24, 24)).astype(np.float32)
        data[:, :, :12] = np.nan
        layers.append(write_series(tmp_path / f"{name}.tif", data))
    return path, layers


def test_predict_over_all_nodata_area_writes_nodata_and_warns(run_alg, tiny_model, tmp_path):
    """Documented handling (docs/inputs.md): an area with no data in the factor layers is not an error
    (ocean tiles are normal); the outputs are nodata there, and when NO pixel has data the log warns."""
    model, layers = tiny_model
    out = tmp_path / "pred"
    # the left half (x 10.0 .. 11.2) is nodata in every layer
    res, fb = run_alg("ismoe:predict", {"MODEL_FILE": model, "FACTORS": layers, "TILE_SIZE": 8,
                                        "EXTENT": "10.05,11.05,48.0,49.5 [EPSG:4326]", "OUTPUT": str(out)})
    with rasterio.open(out / "sm.tif") as ds:
        sm = ds.read()
        assert ds.nodata == -9999 and ds.width == 11 and ds.descriptions[0] == str(START + 4)
    assert (sm == -9999).all()
    for f in ("temperature", "rain"):
        with rasterio.open(out / f"weight_{f}.tif") as ds:
            assert (ds.read() == -9999).all()
    assert "every output pixel is nodata" in fb.text and "EXTENT" in fb.text
    # the whole grid: the right half has values, weights sum to one there, no warning
    out2 = tmp_path / "pred_all"
    res, fb = run_alg("ismoe:predict", {"MODEL_FILE": model, "FACTORS": layers, "TILE_SIZE": 8, "OUTPUT": str(out2)})
    with rasterio.open(out2 / "sm.tif") as ds:
        sm = ds.read()
    assert (sm[:, :, :12] == -9999).all() and (sm[:, :, 13:] != -9999).all()
    wsum = 0
    for f in ("temperature", "rain"):
        with rasterio.open(out2 / f"weight_{f}.tif") as ds:
            wsum = wsum + ds.read()
    np.testing.assert_allclose(wsum[:, :, 13:], 1.0, atol=1e-5)
    assert "every output pixel is nodata" not in fb.text


def test_predict_cancel_leaves_nothing(run_alg, tiny_model, tmp_path, recording_feedback):
    model, layers = tiny_model
    out = tmp_path / "pred"
    fb = recording_feedback(cancel_at_progress=20)
    with pytest.raises(QgsProcessingException):
        run_alg("ismoe:predict", {"MODEL_FILE": model, "FACTORS": layers, "TILE_SIZE": 8, "OUTPUT": str(out)},
                feedback=fb)
    assert fb.isCanceled() and 20 <= max(fb.progress_values) < 100      # stopped within the tile loop
    assert "cancel" in fb.text.lower() or fb.isCanceled()
    assert not out.exists()                                             # not even an empty folder
    assert [p for p in os.listdir(tmp_path) if p.startswith(".ismoe") or p.endswith(".part.tif")] == []


def test_predict_cog(run_alg, tiny_model, tmp_path):
    model, layers = tiny_model
    out = tmp_path / "pred"
    res, _ = run_alg("ismoe:predict", {"MODEL_FILE": model, "FACTORS": layers, "COG": True, "OUTPUT": str(out)})
    with open(out / "prediction.json") as f:
        man = json.load(f)
    assert man["dates"][0] == str(START + 4) and len(man["dates"]) == DAYS - 4
    for fn in ["sm.tif"] + list(man["weights"].values()):
        with rasterio.open(out / fn) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", fn
            assert ds.descriptions == tuple(man["dates"])
            assert ds.nodata == -9999 and ds.crs.to_epsg() == 4326
    files = os.listdir(out)
    assert {"prediction.json", "sm.tif", "weight_temperature.tif", "weight_rain.tif"} <= set(files)
    assert not [f for f in files if f.startswith(".") or ".part" in f or f.endswith(".cog.tif")]   # no leftovers


def test_predict_warns_on_another_resolution_than_training(run_alg, tiny_model, tmp_path):
    """The model file keeps the training grid; predicting on another pixel size is allowed (the user
    may mean it) but warned about, with the way out (REFERENCE). The same resolution: no warning."""
    torch = pytest.importorskip("torch")
    from ismoe_qgis.model.io import load_model, save_model
    path, layers = tiny_model
    model, _, _ = load_model(path, torch.device("cpu"))
    for res, warned in ((0.5, True), (RES, False)):
        grid = {"crs_wkt": rasterio.crs.CRS.from_epsg(4326).to_wkt(), "transform": list(transform(res=res).to_gdal()),
                "width": 8, "height": 8}
        trained = str(tmp_path / f"trained_{res}.pt")
        save_model(trained, model, {"grid": grid})
        _, fb = run_alg("ismoe:predict", {"MODEL_FILE": trained, "FACTORS": layers, "TILE_SIZE": 8,
                                          "OUTPUT": str(tmp_path / f"pred_{res}")})
        warnings = [w for w in fb.of_kind("warning") if "trained on" in w]
        assert bool(warnings) == warned, fb.text
        if warned:
            assert "0.5 x 0.5 pixels" in warnings[0] and "0.1 x 0.1" in warnings[0] and "REFERENCE" in warnings[0]
            assert "0.2 x 0.2 times" in warnings[0]
