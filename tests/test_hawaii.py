"""Real, messy inputs: ../shared/data/hawaii through Processing, in both target modes (issue 4).

prepare -> a short train -> predict, checking alignment (output grid = reference grid), dates,
nodata and the station target, not accuracy:

(a) gridded target ERA5-Land swvl1 (0.1 deg GeoTIFF, 730 dated bands) with factors from other
    products given as NetCDF subdataset strings: GLDAS 0.25 deg soil temperature, SWE (0 everywhere:
    a silent factor) and 0-10 cm soil moisture, ERA5 0.25 deg soil temperature; REFERENCE = the
    ERA5-Land grid, for prepare and predict.
(b) ISMN stations (GeoPackage points + daily CSV) with factors from ERA5-Land (NetCDF) and GLDAS.
One prediction also runs through the real qgis_process binary with NETCDF:"file.nc":var layers.

Skips cleanly when ../shared/data is absent.
"""
import csv
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
rasterio = pytest.importorskip("rasterio")

FAST = {"EPOCHS": 2, "SAMPLES_PER_EPOCH": 256, "BATCH_SIZE": 128, "HIDDEN": 8, "CONV_CHANNELS": 4,
        "VAL_START": "2018-07-01", "TEST_START": "2018-10-01", "DEVICE": 2}   # DEVICE 2 = cpu
PRED_FROM, PRED_TO = "2018-12-10", "2018-12-31"
NODATA = -9999


@pytest.fixture(scope="module")
def run(qgis_app):
    """processing.run with a recording feedback, usable from module-scoped fixtures."""
    import processing
    from conftest import recording_feedback_class

    def _run(alg_id, params):
        fb = recording_feedback_class()()
        return processing.run(alg_id, dict(params), feedback=fb), fb
    return _run


@pytest.fixture(scope="module")
def hawaii(shared_data):
    d = shared_data / "hawaii"
    if not (d / "era5land_swvl1.tif").exists():
        pytest.skip(f"Hawaii data not present in {d}")
    return d


def nc(hawaii, fname, var):
    return f'NETCDF:"{hawaii / fname}":{var}'


def grid_of(path):
    with rasterio.open(path) as ds:
        return ds.crs, ds.transform, ds.width, ds.height


def iso_days(first, last):
    return [str(d) for d in np.arange(np.datetime64(first), np.datetime64(last) + 1)]


def read_pred(folder):
    with open(os.path.join(folder, "prediction.json")) as f:
        man = json.load(f)
    with rasterio.open(os.path.join(folder, man["sm"])) as ds:
        sm, meta = ds.read(), (ds.crs, ds.transform, ds.width, ds.height, ds.nodata, ds.descriptions)
    weights = {}
    for f, fn in man["weights"].items():
        with rasterio.open(os.path.join(folder, fn)) as ds:
            weights[f] = ds.read()
    return man, sm, weights, meta


# ------------------------------------------------------------------ (a) gridded target
@pytest.fixture(scope="module")
def gridded(hawaii, run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hawaii_grid")
    factors = [nc(hawaii, "gldas_noah21.nc", "SoilTMP0_10cm_inst"), nc(hawaii, "era5.nc", "stl1"),
               nc(hawaii, "gldas_noah21.nc", "SWE_inst"), nc(hawaii, "gldas_noah21.nc", "sm_0_10cm")]
    groups = ("temperature=gldas_noah21_SoilTMP0_10cm_inst,era5_stl1;snow=gldas_noah21_SWE_inst;"
              "moisture=gldas_noah21_sm_0_10cm")
    ref = str(hawaii / "era5land_swvl1.tif")
    ds = str(out / "ds.npz")
    res_p, fb_p = run("ismoe:preparedataset", {
        "FACTORS": factors, "FACTOR_GROUPS": groups, "TARGET": ref, "REFERENCE": ref,
        "PATCH_SIZE": 3, "SEQ_LEN": 7, "OUTPUT": ds})
    model = str(out / "model.pt")
    res_t, fb_t = run("ismoe:train", {"DATASET": ds, "OUTPUT": model, **FAST})
    pred = str(out / "pred")
    res_r, fb_r = run("ismoe:predict", {"MODEL_FILE": model, "FACTORS": factors, "REFERENCE": ref,
                                            "DATE_FROM": PRED_FROM, "DATE_TO": PRED_TO, "TILE_SIZE": 16,
                                            "DEVICE": 2, "OUTPUT": pred})
    return dict(out=out, factors=factors, ref=ref, ds=ds, model=model, pred=pred, fb_p=fb_p, fb_r=fb_r,
                res_p=res_p, res_r=res_r)


def test_gridded_cube_is_on_the_reference_grid(gridded, hawaii):
    from ismoe_qgis.data.cube import Cube
    from ismoe_qgis.data.rasters import Grid
    cube = Cube.load(gridded["ds"])
    assert Grid.from_dict(cube.grid).same_as(Grid.from_raster(gridded["ref"]))
    assert cube.x.shape == (4, 730, 33, 47) and cube.target_kind == "grid"
    assert str(cube.dates[0]) == "2017-01-01" and str(cube.dates[-1]) == "2018-12-31"
    assert (np.diff(cube.dates) == np.timedelta64(1, "D")).all()
    # the target is ERA5-Land swvl1 itself at its 136 land cells, unchanged (same lattice: copied)
    with rasterio.open(gridded["ref"]) as r:
        assert r.descriptions[100] == str(cube.dates[100])
        band = r.read([1, 101, 730])
    assert len(cube.target_rows) == 136 == int((band[0] != NODATA).sum())
    np.testing.assert_allclose(cube.y[[0, 100, 729]], band[:, cube.target_rows, cube.target_cols])
    # ocean is NaN in every factor; GLDAS/ERA5 (0.25 deg) were resampled bilinearly onto the 0.1 deg grid
    assert np.isnan(cube.x[:, :, 32, 0]).all()               # south-west corner: ocean
    assert all(0.03 < np.isfinite(cube.x[v, 0]).mean() < 0.2 for v in range(4))
    text = gridded["fb_p"].text
    assert "gldas_noah21_SoilTMP0_10cm_inst': 730 bands, 2017-01-01..2018-12-31 (dates from NetCDF time" in text
    assert "era5_stl1: same CRS (EPSG:4326); resampling bilinear" in text
    assert "TARGET: same grid lattice as the reference: copied without resampling" in text
    assert gridded["res_p"]["N_SAMPLES"] == 136 * 730


def test_gridded_prediction_grid_dates_nodata_weights(gridded):
    from ismoe_qgis.data.cube import Cube
    man, sm, weights, (crs, transform, width, height, nodata, desc) = read_pred(gridded["pred"])
    assert (crs, transform, width, height) == grid_of(gridded["ref"])       # the reference grid, exactly
    days = iso_days(PRED_FROM, PRED_TO)
    assert man["dates"] == days and list(desc) == days and nodata == NODATA
    assert gridded["res_r"]["N_DATES"] == len(days)
    # nodata exactly where an input is missing on that day (ocean, cells the 0.25 deg products lack)
    cube = Cube.load(gridded["ds"])
    t = np.searchsorted(cube.dates, np.array(days, dtype="datetime64[D]"))
    valid = np.isfinite(cube.x[:, t]).all(axis=0)
    assert 20 < valid[0].sum() < 136
    np.testing.assert_array_equal(sm != NODATA, valid)
    assert np.isfinite(sm).all() and (sm[valid] > 0).all() and (sm[valid] < 1).all()
    total = np.zeros(sm.shape)
    for f, w in weights.items():
        assert w.shape == sm.shape and np.isfinite(w).all(), f       # no NaN anywhere (nodata is -9999)
        np.testing.assert_array_equal(w != NODATA, valid)
        assert (w[valid] >= 0).all() and (w[valid] <= 1).all()
        total += np.where(valid, w, 0)
    np.testing.assert_allclose(total[valid], 1.0, atol=1e-4)
    assert weights["snow"][valid].max() < 1e-6                              # SWE is 0: no signal, no weight
    assert "gldas_noah21_SWE_inst: same CRS (EPSG:4326); resampling bilinear" in gridded["fb_r"].text


def test_qgis_process_predict_with_netcdf_layers(gridded, qgis_process):
    """The real qgis_process binary, NETCDF:"file.nc":var strings as FACTORS: same outputs as in process."""
    pred = str(gridded["out"] / "pred_qgis_process")
    r = qgis_process.run("ismoe:predict", {"MODEL_FILE": gridded["model"], "FACTORS": gridded["factors"],
                                           "REFERENCE": gridded["ref"], "DATE_FROM": "2018-12-25",
                                           "DATE_TO": PRED_TO, "TILE_SIZE": 16, "DEVICE": 2, "OUTPUT": pred},
                         timeout=300)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert r.json["results"]["N_DATES"] == 7
    man, sm, weights, meta = read_pred(pred)
    _, sm_ref, w_ref, meta_ref = read_pred(gridded["pred"])
    assert meta[:5] == meta_ref[:5] and man["dates"] == iso_days("2018-12-25", PRED_TO)
    np.testing.assert_allclose(sm, sm_ref[-7:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights["temperature"], w_ref["temperature"][-7:], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ (b) station target
@pytest.fixture(scope="module")
def stations(hawaii, run, tmp_path_factory):
    out = tmp_path_factory.mktemp("hawaii_stations")
    factors = [nc(hawaii, "era5land.nc", "stl1"), nc(hawaii, "gldas_noah21.nc", "sm_0_10cm")]
    ds = str(out / "ds.npz")
    res_p, fb_p = run("ismoe:preparedataset", {
        "FACTORS": factors, "STATIONS": str(hawaii / "ismn_stations.gpkg"),
        "STATION_TABLE": str(hawaii / "ismn_daily.csv"), "PATCH_SIZE": 3, "SEQ_LEN": 7, "OUTPUT": ds})
    model = str(out / "model.pt")
    res_t, fb_t = run("ismoe:train", {"DATASET": ds, "OUTPUT": model, **FAST})
    pred = str(out / "pred")
    run("ismoe:predict", {"MODEL_FILE": model, "FACTORS": factors, "DATE_FROM": "2018-12-20",
                              "DATE_TO": PRED_TO, "DEVICE": 2, "OUTPUT": pred})
    return dict(ds=ds, pred=pred, model=model, res_p=res_p, fb_p=fb_p, fb_t=fb_t, res_t=res_t)


def read_points(hawaii):
    from osgeo import ogr
    ds = ogr.Open(str(hawaii / "ismn_stations.gpkg"))
    pts = [(f.GetField("station_id"), f.GetGeometryRef().GetX(), f.GetGeometryRef().GetY()) for f in ds.GetLayer(0)]
    ds = None
    return pts


def test_station_target_locations_and_values(stations, hawaii):
    from ismoe_qgis.data.cube import Cube
    from ismoe_qgis.data.rasters import Grid
    cube = Cube.load(stations["ds"])
    grid = Grid.from_dict(cube.grid)
    assert grid.same_as(Grid.from_raster(hawaii / "era5land_swvl1.tif"))   # first factor: ERA5-Land 0.1 deg
    assert cube.target_kind == "stations"
    pts = read_points(hawaii)
    inside = []
    for sid, x, y in pts:
        r, c = grid.rowcol([x], [y])
        if 0 <= r[0] < grid.height and 0 <= c[0] < grid.width:
            inside.append((sid, int(r[0]), int(c[0])))
    assert len(inside) == 8                                               # all on Hawai'i island
    assert cube.station_ids == [s for s, _, _ in inside]
    np.testing.assert_array_equal(cube.target_rows, [r for _, r, _ in inside])
    np.testing.assert_array_equal(cube.target_cols, [c for _, _, c in inside])
    # values equal the CSV, NaN where the CSV is empty
    table = {}
    with open(hawaii / "ismn_daily.csv") as f:
        for row in csv.DictReader(f):
            table[(row["station_id"], row["date"])] = float(row["sm"]) if row["sm"] else np.nan
    checked = 0
    for t in (0, 200, 400, 729):
        for j, sid in enumerate(cube.station_ids):
            want = table.get((sid, str(cube.dates[t])), np.nan)
            np.testing.assert_allclose(cube.y[t, j], want, rtol=1e-6, equal_nan=True)
            checked += np.isfinite(want)
    assert checked > 20
    assert stations["res_p"]["N_SAMPLES"] == int(np.isfinite(cube.y).sum()) == sum(
        np.isfinite(v) for (s, _), v in table.items() if s in cube.station_ids)


def test_station_model_predicts_on_the_factor_grid(stations, hawaii):
    man, sm, weights, (crs, transform, width, height, nodata, desc) = read_pred(stations["pred"])
    rcrs, rtransform, rwidth, rheight = grid_of(hawaii / "era5land_swvl1.tif")
    # the grid of era5land.nc:stl1 (GDAL computes 0.09999999999999988 from the NetCDF coordinates)
    assert (crs, width, height) == (rcrs, rwidth, rheight) and transform.almost_equals(rtransform, 1e-9)
    assert list(desc) == iso_days("2018-12-20", PRED_TO) and nodata == NODATA
    valid = sm != NODATA
    assert np.isfinite(sm).all() and 20 < valid[0].sum() < 136 and not valid[:, 32, 0].any()
    total = sum(np.where(valid, w, 0) for w in weights.values())
    np.testing.assert_allclose(total[valid], 1.0, atol=1e-4)


def test_station_without_training_samples_is_warned_by_name(stations):
    """No silent drops: a station with no training sample gets a QGIS warning that names it and the
    layer that has no data at its pixel; the model file keeps every station's sample counts."""
    from ismoe_qgis.data.cube import Cube, split_masks
    from ismoe_qgis.model.io import load_model
    cube = Cube.load(stations["ds"])
    tr, va, te = split_masks(cube.dates, FAST["VAL_START"], FAST["TEST_START"])
    counts = cube.location_sample_counts({"train": tr}, "skip")["train"]
    dropped = [cube.station_ids[n] for n in np.nonzero(counts == 0)[0]]
    assert dropped, "the Hawaii stations include some without training samples under GAP_POLICY=skip"
    warnings = stations["fb_t"].of_kind("warning")
    for sid in dropped:
        hits = [w for w in warnings if f"station {sid} has no training sample" in w]
        assert len(hits) == 1, warnings
        assert "layer '" in hits[0] and "(factor " in hits[0]
    kept = [s for s in cube.station_ids if s not in dropped]
    assert not [w for w in warnings for s in kept if f"station {s} has" in w]
    _, _, info = load_model(stations["model"])
    per = info["split"]["per_location"]
    assert per["locations"] == cube.station_ids and per["train"] == counts.tolist()
    assert per["no_train"] == len(dropped) and len(per["val"]) == len(per["test"]) == len(cube.station_ids)


def test_station_evaluation_per_location_skill(stations, hawaii, run, tmp_path):
    """ismoe:evaluate on the stations: location_skill.csv names every station at its pixel centre;
    stations the model has no sample for are excluded from the median and counted; the report leads
    with the per-location table and draws the stations coloured by CC; train gives the median
    per-location test CC."""
    from ismoe_qgis.data.cube import Cube
    cube = Cube.load(stations["ds"])
    out = tmp_path / "ev"
    res, fb = run("ismoe:evaluate", {"MODELS": [stations["model"]], "DATASET": stations["ds"],
                                     "REFERENCES": [str(hawaii / "era5land_swvl1.tif")], "DEVICE": 2,
                                     "OUTPUT": str(out)})
    with open(res["LOCATION_CSV"], newline="") as f:
        rows = list(csv.DictReader(f))
    models = list(dict.fromkeys(r["model"] for r in rows))
    assert models == ["model", "era5land_swvl1", "persistence", "climatology"]
    assert [r["location"] for r in rows if r["model"] == "model"] == cube.station_ids
    t = cube.grid["transform"]
    for r, row, col in zip(rows, cube.target_rows, cube.target_cols):
        assert float(r["x"]) == pytest.approx(t[0] + (col + 0.5) * t[1])
        assert float(r["y"]) == pytest.approx(t[3] + (row + 0.5) * t[5])
    mine = [r for r in rows if r["model"] == "model"]
    qualified = [r for r in mine if r["qualified"] == "1"]
    assert all(int(r["n_days"]) >= 30 for r in qualified)
    assert all(r["cc"] == "" for r in mine if r["qualified"] == "0")
    doc = json.load(open(res["METRICS_JSON"]))
    summary = doc["location_skill"]["estimates"]
    for name in models:
        # climatology is scored where it is defined (months without a training observation are not), so it
        # can qualify at fewer stations; every other estimate is scored on the same samples as the model
        if name == "climatology":
            assert 0 < summary[name]["n_qualified"] <= len(qualified)
        else:
            assert summary[name]["n_qualified"] == len(qualified)
    ccs = [float(r["cc"]) for r in qualified]
    assert summary["model"]["cc"]["median"] == pytest.approx(float(np.median(ccs)), rel=1e-9)
    html = open(res["REPORT"], encoding="utf-8").read()
    assert html.index("Per-location skill") < html.index("Overall, pooled over all samples")
    assert 'alt="map of the per-location CC"' in html
    med = stations["res_t"]["TEST_CC_MEDIAN_LOCATION"]
    assert np.isfinite(med) or len(qualified) == 0
    print("\nhawaii stations, test period (a 2-epoch model):")
    for name in models:
        s = summary[name]
        print(f"  {name:>16}: median per-location CC {s['cc']['median']}, IQR {s['cc']['p25']}..{s['cc']['p75']}, "
              f"anomaly CC {s['anomaly_cc']['median']} ({s['n_anomaly']}), bias {s['bias']['median']}, "
              f"ubRMSE {s['ubrmse']['median']}, {s['n_qualified']} of {s['n_locations']} stations")
    pooled = {r["model"]: r["cc"] for r in csv.DictReader(open(res["METRICS_CSV"])) if r["group_kind"] == "overall"}
    print("  pooled CC:", pooled, "; train TEST_CC", stations["res_t"]["TEST_CC"], "TEST_CC_MEDIAN_LOCATION", med)


def test_stations_held_out_by_a_fold_field_and_scored_out_of_fold(stations, hawaii, run, tmp_path):
    """SPLIT=locations with FOLD_LAYER/FOLD_FIELD through Processing: the folds come from the station
    layer's field, every station is held out by exactly one fold model, the log names each fold's stations,
    and evaluate scores every station with the model of its fold (out of fold). A field that does not form
    FOLDS folds is refused by name, and no model is written."""
    from osgeo import ogr
    from ismoe_qgis.data.cube import Cube
    from ismoe_qgis.model.io import load_model
    cube = Cube.load(stations["ds"])
    # a copy of the station layer with a fold field: stations alternate between folds A and B
    src = ogr.Open(str(hawaii / "ismn_stations.gpkg"))
    drv = ogr.GetDriverByName("GPKG")
    path = str(tmp_path / "stations_folds.gpkg")
    dst = drv.CopyDataSource(src, path)
    lyr = dst.GetLayer(0)
    lyr.CreateField(ogr.FieldDefn("fold", ogr.OFTString))
    ids = []
    for i, f in enumerate(lyr):
        f.SetField("fold", "A" if i % 2 == 0 else "B")
        lyr.SetFeature(f)
        ids.append(f.GetField("station_id"))
    dst = None
    want = {sid: ("A" if i % 2 == 0 else "B") for i, sid in enumerate(ids)}
    model = str(tmp_path / "cv.pt")
    res, fb = run("ismoe:train", {"DATASET": stations["ds"], "OUTPUT": model, "SPLIT": 1, "FOLDS": 2,
                                  "FOLD_LAYER": path, "FOLD_ID_FIELD": "station_id", "FOLD_FIELD": "fold", **FAST})
    m, cfg, info = load_model(model)
    assert cfg.member_kind == "folds" and cfg.members == 2
    cv = info["cv"]
    assert cv["locations"] == cube.station_ids
    assert [sorted({want[s] for s, f in zip(cv["locations"], cv["fold_of"]) if f == k}) for k in (0, 1)] == [["A"], ["B"]]
    assert "fold 1 holds out: " in fb.text and "out of fold" in fb.text
    out = tmp_path / "ev"
    res, fb = run("ismoe:evaluate", {"MODELS": [model], "DATASET": stations["ds"], "DEVICE": 2, "OUTPUT": str(out)})
    assert "out-of-fold estimates" in fb.text
    bad = tmp_path / "bad.pt"
    with pytest.raises(Exception) as e:
        run("ismoe:train", {"DATASET": stations["ds"], "OUTPUT": str(bad), "SPLIT": 1, "FOLDS": 3,
                            "FOLD_LAYER": path, "FOLD_ID_FIELD": "station_id", "FOLD_FIELD": "fold", **FAST})
    assert "FOLDS is 3" in str(e.value) and not bad.exists()


def test_station_table_columns_as_factors(hawaii, run, tmp_path):
    """STATION_FACTORS: the station table's measured rain and soil temperature become factor variables
    beside a gridded one, known at the station pixels only; a model trains on them; a column that is absent
    or not numeric, or station columns with a gridded target, are refused by name with no dataset written."""
    from ismoe_qgis.data.cube import Cube
    factors = [nc(hawaii, "era5land.nc", "stl1")]
    ds = str(tmp_path / "ds.npz")
    base = {"FACTORS": factors, "STATIONS": str(hawaii / "ismn_stations.gpkg"),
            "STATION_TABLE": str(hawaii / "ismn_daily.csv"), "PATCH_SIZE": 3, "SEQ_LEN": 7}
    res, fb = run("ismoe:preparedataset", {**base, "STATION_FACTORS": "station_rain=precip_mm;"
                                                                        "soil_temperature=soil_temp_c",
                                           "OUTPUT": ds})
    cube = Cube.load(ds)
    assert cube.factors["station_rain"] == ["precip_mm"] and cube.factors["soil_temperature"] == ["soil_temp_c"]
    v = cube.variables.index("precip_mm")
    rows, cols = cube.target_rows, cube.target_cols
    at = cube.x[v][:, rows, cols]
    assert np.isfinite(at).any()
    off = np.ones(cube.x.shape[2:], bool)
    off[rows, cols] = False
    assert not np.isfinite(cube.x[v][:, off]).any()            # known at the station pixels only
    table = {}
    with open(hawaii / "ismn_daily.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["precip_mm"]:
                table[(row["station_id"], row["date"])] = float(row["precip_mm"])
    n_checked = 0
    for j, sid in enumerate(cube.station_ids):
        for t in range(0, cube.n_dates, 37):
            key = (sid, str(cube.dates[t]))
            if key in table:
                assert at[t, j] == pytest.approx(table[key], rel=1e-5)
                n_checked += 1
    assert n_checked > 20
    assert "station-table column, values at" in fb.text
    model = str(tmp_path / "m.pt")
    res, fb = run("ismoe:train", {"DATASET": ds, "OUTPUT": model, "GAP_POLICY": 1, **FAST})
    assert np.isfinite(res["VAL_CC"])
    for bad, words in (("rain=no_such_column", "no column 'no_such_column'"),
                       ("rain=station_id", "is not a number"), ("rain", "is not factor=column")):
        out = tmp_path / "bad.npz"
        with pytest.raises(Exception) as e:
            run("ismoe:preparedataset", {**base, "STATION_FACTORS": bad, "OUTPUT": str(out)})
        assert words in str(e.value), str(e.value)
        assert not out.exists()
    with pytest.raises(Exception) as e:
        run("ismoe:preparedataset", {"FACTORS": factors, "TARGET": str(hawaii / "era5land_swvl1.tif"),
                                     "STATION_FACTORS": "rain=precip_mm", "OUTPUT": str(tmp_path / "g.npz")})
    assert "only with station targets" in str(e.value)


def test_references_as_netcdf_strings_and_climatology_scored_where_defined(stations, hawaii, run, tmp_path):
    """REFERENCES accepts NETCDF:"file.nc":var as FACTORS does; the climatology baseline no longer removes
    the samples where it is undefined from every other estimate: it is scored where it is defined and its
    coverage is reported."""
    from ismoe_qgis.model.evaluate import evaluate
    out = tmp_path / "ev"
    smap = nc(hawaii, "smap_l3_am.nc", "soil_moisture")
    res, fb = run("ismoe:evaluate", {"MODELS": [stations["model"]], "DATASET": stations["ds"], "DEVICE": 2,
                                     "REFERENCES": [str(hawaii / "era5land_swvl1.tif"), smap], "OUTPUT": str(out)})
    with open(res["METRICS_CSV"], newline="") as f:
        rows = list(csv.DictReader(f))
    names = {r["model"] for r in rows}
    assert "soil_moisture" in names or any("smap" in n for n in names), names
    assert "climatology: defined on" in fb.text and "coverage" in fb.text
    # the same evaluation with and without the climatology baseline scores the model on the same samples
    a = evaluate(stations["ds"], {"m": stations["model"]}, period="test", baselines=("climatology",))
    b = evaluate(stations["ds"], {"m": stations["model"]}, period="test", baselines=())
    assert a["n_samples"] == b["n_samples"]
    ra = [r for r in a["rows"] if r["model"] == "m" and r["group_kind"] == "overall"][0]
    rb = [r for r in b["rows"] if r["model"] == "m" and r["group_kind"] == "overall"][0]
    assert ra["n"] == rb["n"] and ra["cc"] == pytest.approx(rb["cc"])
    rc = [r for r in a["rows"] if r["model"] == "climatology" and r["group_kind"] == "overall"][0]
    assert 0 < rc["n"] <= ra["n"]
