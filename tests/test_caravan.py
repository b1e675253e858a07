"""Table series -> 1x1-pixel rasters (ismoe_qgis.data.tables) and the Caravan 1x1-patch case.

The Caravan tests read ../shared/data/caravan and skip cleanly without it; the table tests use
small synthetic CSVs.
"""
import csv
import os

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from ismoe_qgis.data import tables  # noqa: E402

BASIN = "camelsch_4001"
SUBSET = ("2014-01-01", "2018-12-31")   # 5 years keep the test quick


# ------------------------------------------------------------------------- tables (no shared data)
def _write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def test_read_table_fills_gaps_and_nan(tmp_path):
    p = _write_csv(tmp_path / "t.csv", ["date", "a", "b"],
                   [["2020-01-01", "1.5", ""], ["2020-01-02", "2", "x"], ["2020-01-04", "4", "7"]])
    dates, vals = tables.read_table(p, ["b", "a"])
    assert [str(d) for d in dates] == ["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04"]
    np.testing.assert_array_equal(vals["a"], np.array([1.5, 2, np.nan, 4], np.float32))
    assert np.isnan(vals["b"][:3]).all() and vals["b"][3] == 7
    d2, _ = tables.read_table(p, ["a"], start="2020-01-02", end="2020-01-03")
    assert [str(d) for d in d2] == ["2020-01-02"]


def test_read_table_errors(tmp_path):
    p = _write_csv(tmp_path / "t.csv", ["date", "a"], [["2020-01-02", "1"], ["2020-01-01", "2"]])
    with pytest.raises(tables.TableError, match="dates must increase"):
        tables.read_table(p)
    with pytest.raises(tables.TableError, match="no column.*zz.*columns: date, a"):
        tables.read_table(p, ["zz"])
    with pytest.raises(tables.TableError, match="no date column 'day'"):
        tables.read_table(p, date_column="day")
    bad = _write_csv(tmp_path / "b.csv", ["date", "a"], [["01/02/2020", "1"]])
    with pytest.raises(tables.TableError, match="line 2.*not an ISO date"):
        tables.read_table(bad)


def test_site_location_reads_columns_by_name(tmp_path):
    a = _write_csv(tmp_path / "a.csv", ["gauge_id", "gauge_lon", "gauge_lat"], [["x_1", "-6.5", "43.3"]])
    b = _write_csv(tmp_path / "b.csv", ["gauge_id", "gauge_lat", "gauge_lon"], [["x_2", "47.7", "7.8"]])
    assert tables.site_location([a, b], "x_1") == (-6.5, 43.3)
    assert tables.site_location([a, b], "x_2") == (7.8, 47.7)
    with pytest.raises(tables.TableError, match="x_3"):
        tables.site_location([a, b], "x_3")


def test_point_series_geotiff(tmp_path):
    from ismoe_qgis.data import rasters
    grid = tables.point_grid(7.79, 47.72, 0.1)
    dates = np.arange(np.datetime64("2000-01-01"), np.datetime64("2000-01-11"))
    v = np.arange(10, dtype=np.float32)
    v[3] = np.nan
    path = tables.write_point_series(tmp_path / "s.tif", v, dates, grid)
    info = rasters.open_series(path)
    assert info.count == 10 and str(info.dates[0]) == "2000-01-01" and info.date_source
    arr = rasters.read_aligned(info, info.grid, dates)
    assert arr.shape == (10, 1, 1) and np.isnan(arr[3, 0, 0]) and arr[9, 0, 0] == 9
    with rasterio.open(path) as ds:
        assert ds.crs.to_epsg() == 4326 and (ds.width, ds.height) == (1, 1)
        cx, cy = ds.xy(0, 0)
        assert abs(cx - 7.79) < 1e-9 and abs(cy - 47.72) < 1e-9
        assert ds.nodata == -9999 and ds.descriptions[3] == "2000-01-04"
    assert not os.path.exists(str(path) + ".part.tif")


# ------------------------------------------------------------------------- Caravan (shared data)
@pytest.fixture(scope="module")
def caravan(tmp_path_factory):
    from conftest import SHARED_DATA
    root = SHARED_DATA / "caravan"
    if not root.is_dir():
        pytest.skip(f"Caravan data not present at {root}")
    out = tmp_path_factory.mktemp("caravan")
    conv = tables.caravan_to_rasters(root, BASIN, out / "rasters", start=SUBSET[0], end=SUBSET[1])
    return dict(root=root, out=out, conv=conv)


def test_caravan_conversion(caravan):
    conv = caravan["conv"]
    assert (conv["lon"], conv["lat"]) == (7.79, 47.72)
    assert conv["start"] == SUBSET[0] and conv["end"] == SUBSET[1] and conv["n_days"] == 1826
    assert list(conv["factors"]) == ["temperature", "radiation", "wind", "precipitation", "snow"]
    assert len(conv["layers"]) == 9
    for path in list(conv["layers"].values()) + [conv["target_path"]]:
        with rasterio.open(path) as ds:
            assert ds.count == 1826 and (ds.width, ds.height) == (1, 1) and ds.crs.to_epsg() == 4326
            assert ds.xy(0, 0) == pytest.approx((7.79, 47.72))
            assert ds.res == pytest.approx((0.1, 0.1))
            assert ds.descriptions[0] == SUBSET[0] and ds.descriptions[-1] == SUBSET[1]
    with rasterio.open(conv["target_path"]) as ds:
        sm = ds.read(masked=True).filled(np.nan).ravel()
    assert np.isfinite(sm).all() and 0.05 < sm.mean() < 0.6


def test_caravan_other_basin_column_order(caravan):
    """camelses' attribute file has lon before lat: read by name."""
    files = tables.caravan_files(caravan["root"], "camelses_1414")
    assert tables.site_location(files["attributes"], "camelses_1414") == (-6.5235, 43.3143)


def test_caravan_one_by_one_pipeline(caravan, run_alg):
    pytest.importorskip("torch")
    from ismoe_qgis.data.cube import Cube
    conv, out = caravan["conv"], caravan["out"]
    ds = str(out / "ds.npz")
    run_alg("ismoe:preparedataset", {"FACTORS": list(conv["layers"].values()), "FACTOR_GROUPS": conv["factor_groups"],
                                     "TARGET": conv["target_path"], "PATCH_SIZE": 1, "SEQ_LEN": 14, "OUTPUT": ds})
    cube = Cube.load(ds)
    assert cube.x.shape == (9, 1826, 1, 1) and cube.y.shape == (1826, 1)
    assert cube.patch_size == 1 and list(cube.factors) == list(conv["factors"])
    models = []
    for i, m in enumerate(("ismoe", "cnn_lstm")):
        path = str(out / f"{m}.pt")
        run_alg("ismoe:train", {"DATASET": ds, "MODEL": i, "OUTPUT": path, "EPOCHS": 1, "SAMPLES_PER_EPOCH": 512,
                                "BATCH_SIZE": 128, "HIDDEN": 16, "CONV_CHANNELS": 4, "VAL_START": "2017-01-01",
                                "TEST_START": "2018-01-01"})
        models.append(path)
    ev = out / "eval"
    res, _ = run_alg("ismoe:evaluate", {"MODELS": models, "DATASET": ds, "OUTPUT": str(ev)})
    assert res["N_SAMPLES"] == 365
    with open(ev / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["group_kind"] == "overall"]
    assert [r["model"] for r in rows] == ["ismoe", "cnn_lstm", "persistence", "climatology"]
    for r in rows:
        assert int(r["n"]) == 365
        for k in ("cc", "rmse", "kge"):
            assert np.isfinite(float(r[k])), (r["model"], k)
    # persistence of a daily ERA5-Land layer-1 series is strong
    assert float(rows[2]["cc"]) > 0.8
    with open(ev / "seasonal_importance.csv", newline="") as fh:
        imp = [r for r in csv.DictReader(fh) if r["period_kind"] == "season"]
    assert {r["factor"] for r in imp} == set(conv["factors"])
    for s in ("DJF", "MAM", "JJA", "SON"):
        assert abs(sum(float(r["mean_weight"]) for r in imp if r["period"] == s) - 1) < 1e-4
