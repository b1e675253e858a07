"""Tests of ismoe_qgis.data.stations: station table, points, pixels and the target matrix."""
from pathlib import Path

import numpy as np
import pytest
import rasterio.warp

from ismoe_qgis.data import rasters as R
from ismoe_qgis.data import stations as S
from ismoe_qgis.data.rasters import Grid

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAWAII = DATA / "hawaii"

ISMN_IDS = ["SCAN_IslandDairy", "SCAN_Kainaliu", "SCAN_KemoleGulch", "SCAN_Kukuihaele", "SCAN_ManaHouse",
            "SCAN_PuaAkala", "SCAN_SilverSword", "SCAN_WaimeaPlain"]


def hawaii(name):
    p = HAWAII / name
    if not p.exists():
        pytest.skip(f"real data not available: {p}")
    return p


def hawaii_grid():
    return Grid.from_extent("EPSG:4326", -159.75, 18.95, -155.05, 22.25, 0.1)


# --------------------------------------------------------------------------- table
def test_read_ismn_daily_csv():
    logs = []
    table = S.read_station_table(hawaii("ismn_daily.csv"), log=logs.append)
    assert sorted(table) == ISMN_IDS
    for sid, (d, v) in table.items():
        assert d.dtype == np.dtype("datetime64[D]") and len(d) == 730 and len(v) == 730
        assert d[0] == np.datetime64("2017-01-01") and d[-1] == np.datetime64("2018-12-31")
        assert np.all(np.diff(d) > np.timedelta64(0, "D"))
        assert np.nanmin(v) > 0 and np.nanmax(v) < 1
    n_nan = sum(int(np.isnan(v).sum()) for _, v in table.values())
    assert 0 < n_nan < 0.3 * 8 * 730
    # README: SilverSword has data from 2018-01-24 only, 342 valid days
    d, v = table["SCAN_SilverSword"]
    assert np.isfinite(v).sum() == 342 and np.all(np.isnan(v[d < np.datetime64("2018-01-24")]))
    assert "8 station(s)" in logs[-1]
    # other value column of the same file
    temp = S.read_station_table(hawaii("ismn_daily.csv"), value_field="soil_temp_c")
    assert 10 < np.nanmean(temp["SCAN_Kainaliu"][1]) < 35


def test_rows_semicolon_csv_and_missing_values(tmp_path):
    rows = [{"id": 7, "day": "2020-01-02", "val": "0.2"}, {"id": 7.0, "day": "2020-01-01", "val": ""},
            {"id": "B", "day": "2020-01-01T06:00:00", "val": 0.3}]
    t = S.read_station_table(rows, id_field="id", date_field="day", value_field="val")
    assert set(t) == {"7", "B"}
    np.testing.assert_array_equal(t["7"][0], np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[D]"))
    assert np.isnan(t["7"][1][0]) and t["7"][1][1] == pytest.approx(0.2)
    t2 = S.read_station_table([("A", "2020-01-01", None), ("A", "2020-01-02", "0.1")])
    assert np.isnan(t2["A"][1][0])
    p = tmp_path / "semi.csv"
    p.write_text("Station_ID;Date;SM\nA;2020-01-01;0,25\nA;2020-01-02;NA\n", encoding="utf-8")
    t3 = S.read_station_table(p)  # column names matched case-insensitively, decimal comma
    assert t3["A"][1][0] == pytest.approx(0.25) and np.isnan(t3["A"][1][1])


def test_empty_table_error(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("station_id,date,sm\n")
    with pytest.raises(S.EmptyTableError, match="empty.csv.*no rows"):
        S.read_station_table(p)
    (tmp_path / "nothing.csv").write_text("")
    with pytest.raises(S.EmptyTableError, match="nothing.csv"):
        S.read_station_table(tmp_path / "nothing.csv")
    with pytest.raises(S.EmptyTableError):
        S.read_station_table([])
    assert issubclass(S.EmptyTableError, ValueError)


def test_duplicated_station_date_error_and_mean():
    rows = [("A", "2020-01-01", 0.1), ("A", "2020-01-01", 0.3), ("A", "2020-01-02", 0.2)]
    with pytest.raises(S.DuplicateStationDateError, match="station A.*2020-01-01"):
        S.read_station_table(rows, name="obs.csv")
    t = S.read_station_table(rows, on_duplicate="mean")
    np.testing.assert_allclose(t["A"][1], [0.2, 0.2])


def test_bad_columns_dates_values(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("station,date,sm\nA,2020-01-01,0.1\n")
    with pytest.raises(S.StationTableError, match="no id column 'station_id'.*station, date, sm"):
        S.read_station_table(p)
    with pytest.raises(S.StationTableError, match="'x', row 1.*'01/02/2020'.*YYYY-MM-DD"):
        S.read_station_table([("A", "01/02/2020", 0.1)], name="x")
    p.write_text("station_id,date,sm\nA,01/02/2020,0.1\n")
    with pytest.raises(S.StationTableError, match="line 2.*'01/02/2020'"):
        S.read_station_table(p)
    p.write_text("station_id,date,sm\nA,2020-01-01,wet\n")
    with pytest.raises(S.StationTableError, match="'wet' is not a number"):
        S.read_station_table(p)


# --------------------------------------------------------------------------- points / pixels
def test_points_from_gpkg_and_csv(tmp_path):
    pts, crs = S.read_points_vector(hawaii("ismn_stations.gpkg"))
    assert sorted(p[0] for p in pts) == ISMN_IDS and "WGS 84" in crs
    csvp = tmp_path / "pts.csv"
    csvp.write_text("station_id,Latitude,Longitude\n" + "".join(f"{i},{y},{x}\n" for i, x, y in pts))
    pts2 = S.read_points_csv(csvp)
    assert [(i, pytest.approx(x), pytest.approx(y)) for i, x, y in pts] == pts2
    csvp.write_text("name,lat,lon\nA,1,2\n")
    with pytest.raises(S.PointsError, match="no id column"):
        S.read_points_csv(csvp)


def test_station_pixels_hawaii_and_target():
    pts, crs = S.read_points_vector(hawaii("ismn_stations.gpkg"))
    grid = hawaii_grid()
    ids, rows, cols = S.station_pixels(grid, pts, crs)
    assert ids == [p[0] for p in pts] and rows.dtype == np.int32
    for sid, r, c, (_, x, y) in zip(ids, rows, cols, pts):
        x0, y0 = grid.xy(r, c)
        assert abs(x0 - x) <= 0.05 + 1e-9 and abs(y0 - y) <= 0.05 + 1e-9
    # the same stations given in Web Mercator land on the same pixels
    mx, my = rasterio.warp.transform("EPSG:4326", "EPSG:3857", [p[1] for p in pts], [p[2] for p in pts])
    ids3, rows3, cols3 = S.station_pixels(grid, list(zip(ids, mx, my)), "EPSG:3857")
    np.testing.assert_array_equal(rows3, rows)
    np.testing.assert_array_equal(cols3, cols)
    # target matrix on the factor dates
    table = S.read_station_table(hawaii("ismn_daily.csv"))
    dates = R.read_dates(hawaii("era5land_swvl1.tif"))
    y = S.stations_to_target(table, ids, dates)
    assert y.shape == (730, 8) and y.dtype == np.float32
    j = ids.index("SCAN_SilverSword")
    assert np.isfinite(y[:, j]).sum() == 342
    np.testing.assert_allclose(y[:, ids.index("SCAN_Kainaliu")], table["SCAN_Kainaliu"][1], rtol=1e-6)


def test_missing_station_id_error():
    table = S.read_station_table([("A", "2020-01-01", 0.1), ("B", "2020-01-01", 0.2)])
    dates = np.array(["2020-01-01"], dtype="datetime64[D]")
    with pytest.raises(S.MissingStationError, match=r"station\(s\) C of the point layer.*A, B"):
        S.stations_to_target(table, ["A", "C"], dates)
    # numeric ids from a point layer match string ids in the table
    t2 = S.read_station_table([("12", "2020-01-01", 0.5)])
    np.testing.assert_allclose(S.stations_to_target(t2, [12], dates), [[0.5]])
    with pytest.raises(R.NoOverlapError, match="no value on the dates"):
        S.stations_to_target(table, ["A"], np.array(["2021-01-01"], dtype="datetime64[D]"))


def test_station_outside_grid_error_and_drop():
    grid = hawaii_grid()
    pts = [("in", -155.5, 19.7), ("far", -150.0, 19.7), ("south", -155.5, 10.0)]
    with pytest.raises(S.StationOutsideGridError, match=r"2 station\(s\).*far .*south"):
        S.station_pixels(grid, pts, "EPSG:4326")
    logs = []
    ids, rows, cols = S.station_pixels(grid, pts, "EPSG:4326", drop_outside=True, log=logs.append)
    assert ids == ["in"] and len(rows) == 1 and "dropped" in logs[0]
    with pytest.raises(S.StationOutsideGridError, match="no station"):
        S.station_pixels(grid, pts[1:], "EPSG:4326", drop_outside=True)


def test_bad_points():
    grid = hawaii_grid()
    with pytest.raises(S.PointsError, match="no points"):
        S.station_pixels(grid, [], "EPSG:4326")
    with pytest.raises(S.PointsError, match="A appear more than once"):
        S.station_pixels(grid, [("A", -155.5, 19.7), ("A", -155.4, 19.7)])
    with pytest.raises(S.PointsError, match="B have no coordinates"):
        S.station_pixels(grid, [("B", None, None)])
