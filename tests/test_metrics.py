"""Metrics against hand computations; NaN handling; undefined cases; season labels."""
import datetime
import math

import numpy as np
import pytest

from ismoe_qgis.model import metrics as M
from ismoe_qgis.model.metrics import grouped_metrics, metrics, season_of

# any RuntimeWarning (division by zero, mean of empty slice, ...) fails the test
pytestmark = pytest.mark.filterwarnings("error")

KEYS = ("cc", "rmse", "ubrmse", "bias", "kge")


def _assert_all_nan(m):
    for k in KEYS:
        assert math.isnan(m[k]), (k, m)


def test_perfect_estimate():
    o = np.array([0.12, 0.30, 0.25, 0.18, 0.41, 0.22])
    m = metrics(o, o.copy())
    assert m["cc"] == pytest.approx(1.0, abs=1e-12)
    assert m["rmse"] == 0.0
    assert m["ubrmse"] == 0.0
    assert m["bias"] == 0.0
    assert m["kge"] == pytest.approx(1.0, abs=1e-12)
    assert m["n"] == 6
    assert isinstance(m["n"], int)


def test_constant_offset():
    o = np.array([0.10, 0.20, 0.35, 0.15, 0.28])
    m = metrics(o, o + 0.05)
    assert m["bias"] == pytest.approx(0.05, abs=1e-12)
    assert m["rmse"] == pytest.approx(0.05, abs=1e-12)
    assert m["ubrmse"] == pytest.approx(0.0, abs=1e-12)
    assert m["cc"] == pytest.approx(1.0, abs=1e-12)
    beta = (o.mean() + 0.05) / o.mean()
    assert m["kge"] == pytest.approx(1 - abs(beta - 1), abs=1e-12)


def test_hand_computed_permutation():
    # o = 1..5, e a permutation: means 3 and 3; anomalies do = [-2,-1,0,1,2], de = [-2,0,-1,2,1]
    # cov = (4+0+0+2+2)/5 = 1.6, var_o = var_e = 2 -> r = 0.8
    # e - o = [0,1,-1,1,-1] -> MSE = 0.8; bias 0; alpha = beta = 1 -> KGE = 1 - 0.2 = 0.8
    m = metrics([1, 2, 3, 4, 5], [1, 3, 2, 5, 4])
    assert m["cc"] == pytest.approx(0.8)
    assert m["rmse"] == pytest.approx(math.sqrt(0.8))
    assert m["ubrmse"] == pytest.approx(math.sqrt(0.8))
    assert m["bias"] == pytest.approx(0.0, abs=1e-15)
    assert m["kge"] == pytest.approx(0.8)
    assert m["n"] == 5


def test_hand_computed_linear():
    # e = 2 o + 1 with o = 1..5: e = 3,5,7,9,11; r = 1; bias = 7 - 3 = 4
    # e - o = o + 1 = 2..6 -> MSE = (4+9+16+25+36)/5 = 18; ubRMSE = sqrt(18 - 16) = sqrt(2)
    # alpha = 2, beta = 7/3 -> KGE = 1 - sqrt(0 + 1 + (4/3)^2) = 1 - 5/3 = -2/3
    o = np.array([1.0, 2, 3, 4, 5])
    m = metrics(o, 2 * o + 1)
    assert m["cc"] == pytest.approx(1.0)
    assert m["bias"] == pytest.approx(4.0)
    assert m["rmse"] == pytest.approx(math.sqrt(18.0))
    assert m["ubrmse"] == pytest.approx(math.sqrt(2.0))
    assert m["kge"] == pytest.approx(-2.0 / 3.0)


def test_anticorrelated():
    m = metrics([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert m["cc"] == pytest.approx(-1.0)
    # alpha = beta = 1, r = -1 -> KGE = 1 - 2 = -1
    assert m["kge"] == pytest.approx(-1.0)


def test_against_independent_formulas_random():
    rng = np.random.default_rng(42)
    o = rng.uniform(0.05, 0.45, 200)
    e = 0.7 * o + 0.08 + rng.normal(0, 0.03, 200)
    m = metrics(o, e)
    r = np.corrcoef(o, e)[0, 1]
    bias = e.mean() - o.mean()
    rmse = np.sqrt(np.mean((e - o) ** 2))
    alpha = e.std() / o.std()
    beta = e.mean() / o.mean()
    assert m["cc"] == pytest.approx(r, rel=1e-10)
    assert m["bias"] == pytest.approx(bias, rel=1e-10)
    assert m["rmse"] == pytest.approx(rmse, rel=1e-10)
    assert m["ubrmse"] == pytest.approx(np.sqrt(rmse ** 2 - bias ** 2), rel=1e-8)
    assert m["kge"] == pytest.approx(
        1 - np.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2), rel=1e-10)


def test_nan_pairs_ignored():
    o = np.array([1.0, np.nan, 2, 3, 4, 5, 7.0])
    e = np.array([1.0, 9.0, 3, 2, 5, 4, np.nan])
    m = metrics(o, e)
    ref = metrics([1, 2, 3, 4, 5], [1, 3, 2, 5, 4])
    assert m == pytest.approx(ref)
    assert m["n"] == 5
    # infinities count as invalid too
    e2 = e.copy()
    e2[1] = np.inf
    assert metrics(o, e2) == pytest.approx(ref)


def test_two_dimensional_inputs_are_pooled():
    o = np.array([[1.0, 2], [3, 4], [5, np.nan]])
    e = np.array([[1.0, 3], [2, 5], [4, 0.0]])
    assert metrics(o, e) == pytest.approx(metrics([1, 2, 3, 4, 5], [1, 3, 2, 5, 4]))


@pytest.mark.parametrize("o,e,n", [
    ([], [], 0),
    ([0.2], [0.3], 1),
    ([0.2, 0.3], [0.25, 0.31], 2),
    ([0.2, np.nan, 0.3, 0.4], [0.25, 0.3, np.nan, 0.2], 2),
    ([np.nan, np.nan, np.nan], [np.nan, np.nan, np.nan], 0),
])
def test_fewer_than_three_pairs_is_nan_without_warning(o, e, n):
    m = metrics(o, e)
    _assert_all_nan(m)
    assert m["n"] == n


def test_zero_variance_obs():
    # 0.1 + 0.2 is not exactly 0.3: a floating-point "constant" must still count as constant
    o = np.array([0.1 + 0.2] * 5)
    e = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    m = metrics(o, e)
    assert math.isnan(m["cc"]) and math.isnan(m["kge"])
    assert m["bias"] == pytest.approx(0.0, abs=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(0.02))
    assert m["ubrmse"] == pytest.approx(math.sqrt(0.02))


def test_zero_variance_estimate_and_zero_mean_obs():
    m = metrics([0.1, 0.2, 0.3, 0.4], [0.25] * 4)
    assert math.isnan(m["cc"]) and math.isnan(m["kge"])
    assert m["bias"] == pytest.approx(0.0, abs=1e-12)
    # mean(obs) == 0: beta undefined -> KGE NaN, CC still defined
    m = metrics([-1.0, 0.0, 1.0], [-0.9, 0.1, 1.2])
    assert math.isnan(m["kge"])
    assert m["cc"] == pytest.approx(np.corrcoef([-1, 0, 1], [-0.9, 0.1, 1.2])[0, 1])
    # all zeros
    _m = metrics([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert math.isnan(_m["cc"]) and _m["rmse"] == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        metrics([1, 2, 3], [1, 2])


def test_grouped_metrics_match_subsets():
    rng = np.random.default_rng(0)
    T, N = 40, 4
    o = rng.uniform(0.1, 0.4, (T, N))
    e = o + rng.normal(0, 0.03, (T, N))
    o[3, 1] = np.nan
    e[7, 2] = np.nan
    loc = np.array(["a", "b", "c", "d"])
    region = np.array(["north", None, "south", "north"], dtype=object)
    half = np.where(np.arange(T) < 20, "early", "late")[:, None]
    rows = grouped_metrics(o, e, {"location": loc, "region": region, "half": half})
    assert rows[0]["group_kind"] == "overall" and rows[0]["group"] == "all"
    assert {k: rows[0][k] for k in KEYS + ("n",)} == pytest.approx(metrics(o, e))
    kinds = [(r["group_kind"], r["group"]) for r in rows[1:]]
    assert kinds == [("location", "a"), ("location", "b"), ("location", "c"), ("location", "d"),
                     ("region", "north"), ("region", "south"),
                     ("half", "early"), ("half", "late")]
    by = {(r["group_kind"], r["group"]): r for r in rows}
    for j, name in enumerate(loc):
        assert {k: by["location", name][k] for k in KEYS + ("n",)} == pytest.approx(
            metrics(o[:, j], e[:, j]))
    north = metrics(o[:, [0, 3]], e[:, [0, 3]])
    assert {k: by["region", "north"][k] for k in KEYS + ("n",)} == pytest.approx(north)
    assert by["location", "b"]["n"] == T - 1
    assert by["half", "early"]["n"] == 20 * N - 2
    assert by["half", "late"] == pytest.approx(
        {"group_kind": "half", "group": "late", **metrics(o[20:], e[20:])})


def test_grouped_metrics_seasons_in_calendar_order_and_small_groups():
    dates = np.datetime64("2020-06-01") + np.arange(365)  # starts in JJA
    o = np.linspace(0.1, 0.4, 365)
    e = o + 0.01 * np.sin(np.arange(365))
    e[(season_of(dates) == "MAM")] = np.nan  # MAM has no valid pair
    rows = grouped_metrics(o, e, {"season": season_of(dates)}, overall=False)
    assert [r["group"] for r in rows] == ["DJF", "MAM", "JJA", "SON"]
    mam = rows[1]
    assert mam["n"] == 0
    _assert_all_nan(mam)


def test_grouped_metrics_bad_label_shape():
    with pytest.raises(ValueError, match="broadcast"):
        grouped_metrics(np.zeros((5, 3)), np.zeros((5, 3)), {"season": np.array(["DJF"] * 5)})


def test_factorize_vectorised_path_matches_loop(monkeypatch):
    labels = np.array([f"s{i % 7}" if i % 5 else None for i in range(300)], dtype=object)
    codes_loop, names_loop = M._factorize(labels)
    monkeypatch.setattr(M, "_FACTORIZE_LOOP_MAX", 10)
    codes_vec, names_vec = M._factorize(labels)
    assert names_loop == names_vec
    np.testing.assert_array_equal(codes_loop, codes_vec)


def test_season_of():
    d = np.array(["2019-12-01", "2020-01-15", "2020-02-29", "2020-03-01", "2020-05-31",
                  "2020-06-01", "2020-08-31", "2020-09-01", "2020-11-30", "2020-12-31"],
                 dtype="datetime64[D]")
    assert list(season_of(d)) == ["DJF", "DJF", "DJF", "MAM", "MAM",
                                  "JJA", "JJA", "SON", "SON", "DJF"]
    # other representations
    assert list(season_of(d.astype("datetime64[ns]"))) == list(season_of(d))
    assert list(season_of(["2021-07-04", "2021-10-10"])) == ["JJA", "SON"]
    assert list(season_of([datetime.date(2021, 4, 1), datetime.date(2021, 1, 1)])) == ["MAM", "DJF"]
    assert list(season_of(np.array(["NaT", "2020-01-01"], dtype="datetime64[D]"))) == ["", "DJF"]
    # all 12 months
    months = np.arange("2020-01", "2021-01", dtype="datetime64[M]").astype("datetime64[D]")
    assert "".join(s[0] for s in season_of(months)) == "DDMMMJJJSSSD"


def test_grouped_metrics_cell_and_per_kind_paths_agree(monkeypatch):
    rng = np.random.default_rng(7)
    T, N = 60, 9
    o = rng.uniform(0.05, 0.45, (T, N))
    e = 0.8 * o + 0.05 + rng.normal(0, 0.02, (T, N))
    o[rng.random((T, N)) < 0.1] = np.nan
    e[:, 8] = o[:, 8]                          # a perfect location
    dates = np.datetime64("2021-01-01") + np.arange(T) * 6
    groups = {"location": [f"p{j}" for j in range(N)],
              "region": np.array(["a", "b", None] * 3, dtype=object),
              "season": season_of(dates)[:, None]}
    cells = grouped_metrics(o, e, groups)
    monkeypatch.setattr(M, "_MAX_CELLS_MIN", 0)
    monkeypatch.setattr(M, "_MAX_CELLS", 0)
    per_kind = grouped_metrics(o, e, groups)
    assert len(cells) == len(per_kind) == 1 + 9 + 2 + 4
    for a, b in zip(cells, per_kind):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-14, nan_ok=True)
    perfect = next(r for r in cells if r["group"] == "p8")
    assert perfect["cc"] == 1.0 and perfect["kge"] == 1.0 and perfect["rmse"] == 0.0


# ------------------------------------------------------------------------- per-location skill
def _brute_climatology(y, dates, train, window):
    """Day-of-year climatology by explicit loops (independent of metrics.climatology_table)."""
    d = np.asarray(dates).astype("datetime64[D]")
    slot = np.array([(datetime.date(2000, x.month, x.day) - datetime.date(2000, 1, 1)).days
                     for x in d.astype(datetime.date)])
    T, N = y.shape
    h = window // 2
    out = np.full((T, N), np.nan)
    for t in range(T):
        near = np.zeros(T, bool)
        for k in range(-h, window - h):
            near |= slot == (slot[t] + k) % 366
        for n in range(N):
            v = y[near & train, n]
            v = v[np.isfinite(v)]
            if v.size:
                out[t, n] = v.mean()
    return out


def test_climatology_table_matches_loops():
    rng = np.random.default_rng(3)
    dates = np.arange(np.datetime64("2015-12-20"), np.datetime64("2017-03-05"))   # 2016 is a leap year
    y = rng.normal(0.3, 0.05, (len(dates), 2))
    y[rng.random(y.shape) < 0.2] = np.nan
    train = dates < np.datetime64("2016-11-01")
    for window in (1, 4, 15):
        want = _brute_climatology(y, dates, train, window)
        got = M.doy_climatology(y, dates, train, window)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15, equal_nan=True)
    # 29 February is its own slot; 1 March is slot 60 in every year
    assert M.calendar_slot(np.array(["2016-02-29", "2017-03-01", "2016-03-01"], "datetime64[D]")).tolist() == [59, 60, 60]
    # no training value within the window: NaN (Dec-Feb of 2017 only seen after the training period)
    c = M.doy_climatology(y, dates, dates < np.datetime64("2016-06-01"), 15)
    assert np.isnan(c[dates == np.datetime64("2016-08-20")]).all()


def test_per_location_cc_bias_ubrmse_equal_numpy_per_column():
    rng = np.random.default_rng(11)
    T, N = 120, 6
    o = rng.uniform(0.05, 0.45, (T, N)) + np.linspace(0, 0.3, N)        # different mean levels
    e = 0.7 * o + rng.normal(0, 0.03, (T, N)) + np.array([0.0, 0.02, -0.05, 0.1, 0.0, 0.01])
    o[rng.random((T, N)) < 0.15] = np.nan
    e[rng.random((T, N)) < 0.05] = np.nan
    sk = M.per_location_skill(o, e, min_days=30)
    assert sk["n_qualified"] == N and sk["qualified"].all()
    for j in range(N):
        ok = np.isfinite(o[:, j]) & np.isfinite(e[:, j])
        oo, ee = o[ok, j], e[ok, j]
        assert sk["n_days"][j] == ok.sum()
        assert sk["cc"][j] == pytest.approx(np.corrcoef(oo, ee)[0, 1], rel=1e-10)
        bias = ee.mean() - oo.mean()
        rmse = np.sqrt(np.mean((ee - oo) ** 2))
        assert sk["bias"][j] == pytest.approx(bias, rel=1e-10)
        assert sk["rmse"][j] == pytest.approx(rmse, rel=1e-10)
        # ubRMSE^2 = RMSE^2 - bias^2, and ubRMSE is the RMSE of the anomalies about each series' mean
        assert sk["ubrmse"][j] ** 2 == pytest.approx(rmse ** 2 - bias ** 2, rel=1e-9)
        assert sk["ubrmse"][j] == pytest.approx(np.sqrt(np.mean(((ee - ee.mean()) - (oo - oo.mean())) ** 2)),
                                                rel=1e-10)
    # the summary is the median and IQR (numpy's linear percentiles) of the per-location values
    q = sk["summary"]["cc"]
    p25, med, p75 = np.percentile(sk["cc"], [25, 50, 75])
    assert (q["median"], q["p25"], q["p75"], q["n"]) == pytest.approx((med, p25, p75, N), rel=1e-12)
    assert sk["summary"]["bias"]["median"] == pytest.approx(np.median(sk["bias"]), rel=1e-12)
    # no climatology given: anomaly CC undefined for every location, and counted
    assert np.isnan(sk["anomaly_cc"]).all() and sk["n_anomaly"] == 0 and sk["summary"]["anomaly_cc"]["n"] == 0
    # an estimate that gets each location's mean level right but nothing over time: pooled CC is
    # high, the per-location CC is ~0
    level = np.linspace(0.1, 0.4, N)
    o2 = level + rng.normal(0, 0.02, (T, N))
    e2 = level + rng.normal(0, 0.02, (T, N))
    assert metrics(o2, e2)["cc"] > 0.9
    assert abs(M.per_location_skill(o2, e2)["summary"]["cc"]["median"]) < 0.2


def test_locations_with_too_few_days_are_excluded_and_counted():
    rng = np.random.default_rng(5)
    T, N = 100, 5
    o = rng.normal(0.3, 0.05, (T, N))
    e = o + rng.normal(0, 0.03, (T, N))
    o[10:, 1] = np.nan                # 10 days
    e[:71, 3] = np.nan                # 29 days
    o[:, 4] = np.nan                  # none
    sk = M.per_location_skill(o, e, min_days=30)
    assert sk["n_days"].tolist() == [100, 10, 100, 29, 0]
    assert sk["qualified"].tolist() == [True, False, True, False, False]
    assert sk["n_qualified"] == 2 and sk["n_locations"] == 5
    for k in ("cc", "bias", "ubrmse", "rmse", "kge"):
        assert np.isnan(sk[k][[1, 3, 4]]).all() and np.isfinite(sk[k][[0, 2]]).all()
    assert sk["summary"]["cc"]["n"] == 2
    assert sk["summary"]["cc"]["median"] == pytest.approx(np.mean(sk["cc"][[0, 2]]), rel=1e-12)
    # min_days lower: the 29-day location qualifies
    assert M.per_location_skill(o, e, min_days=29)["n_qualified"] == 3
    summary = M.location_skill_summary(sk)
    assert summary["n_qualified"] == 2 and summary["n_locations"] == 5 and summary["min_days"] == 30
    assert summary["anomaly_cc"]["median"] is None
    assert "over 2 of 5 locations with >= 30 days" in M.describe_location_skill(sk)


def test_anomaly_cc_removes_a_pure_seasonal_signal():
    """obs and est = the same seasonal cycle + noise: the raw per-location CC is high (the season),
    the anomaly CC is the correlation of the noises."""
    rng = np.random.default_rng(21)
    dates = np.arange(np.datetime64("2012-01-01"), np.datetime64("2019-01-01"))
    T, N = len(dates), 4
    slot = M.calendar_slot(dates)
    season = 0.25 + 0.1 * np.sin(2 * np.pi * slot / 366.0)[:, None] + np.array([0.0, 0.05, 0.1, -0.05])
    rho = np.array([0.0, 0.3, 0.6, 0.9])
    a = rng.normal(0, 0.01, (T, N))
    b = rho * a + np.sqrt(1 - rho ** 2) * rng.normal(0, 0.01, (T, N))
    obs = season + a
    est = season + b
    train = dates < np.datetime64("2018-01-01")
    test = ~train
    sk = M.per_location_skill(obs, est, dates, train, eval_mask=test)
    assert sk["n_days"].tolist() == [365] * N and sk["n_anomaly"] == N and sk["n_no_climatology"] == 0
    noise_cc = np.array([np.corrcoef(a[test, j], b[test, j])[0, 1] for j in range(N)])
    assert np.all(sk["cc"] > 0.95)                                    # the season alone
    np.testing.assert_allclose(sk["anomaly_cc"], noise_cc, atol=0.03)
    # exactly: the CC of obs and est, each minus its own training climatology (brute force, 15 days)
    clim = _brute_climatology(obs, dates, train, 15)
    clim_e = _brute_climatology(est, dates, train, 15)
    for j in range(N):
        want = np.corrcoef(obs[test, j] - clim[test, j], est[test, j] - clim_e[test, j])[0, 1]
        assert sk["anomaly_cc"][j] == pytest.approx(want, rel=1e-9)
    # the same with the climatologies given on the scored dates
    given = M.per_location_skill(obs[test], est[test], climatology=clim[test], est_climatology=clim_e[test])
    np.testing.assert_allclose(given["anomaly_cc"], sk["anomaly_cc"], rtol=1e-9)
    # a climatology itself as the estimate (its own climatology is itself): anomalies 0, undefined
    only_clim = M.per_location_skill(obs[test], clim[test], climatology=clim[test], est_climatology=clim[test])
    assert np.isnan(only_clim["anomaly_cc"]).all() and np.all(only_clim["cc"] > 0.95)


def test_anomaly_cc_removes_each_series_own_climatology():
    """A constant estimate has no anomaly and so no anomaly CC. Removing the *observed* climatology
    from it too would give it a high anomaly CC (the shared -c term) when the climatology comes from
    one short training year: the reason each series loses its own."""
    rng = np.random.default_rng(4)
    dates = np.arange(np.datetime64("2017-01-01"), np.datetime64("2019-01-01"))
    T = len(dates)
    wet = 0.3 + 0.1 * np.sin(np.arange(T) / 9.0)                     # weather, not a season
    obs = (wet + rng.normal(0, 0.01, T))[:, None]
    const = np.full((T, 1), 0.3)
    train = dates < np.datetime64("2018-01-01")
    own = M.per_location_skill(obs, const, dates, train, eval_mask=~train)
    assert np.isnan(own["anomaly_cc"][0]) and own["n_anomaly"] == 1
    clim = M.doy_climatology(obs, dates, train)
    shared = M.per_location_skill(obs[~train], const[~train], climatology=clim[~train])
    assert shared["anomaly_cc"][0] > 0.4


def test_anomaly_cc_where_the_climatology_is_undefined():
    rng = np.random.default_rng(2)
    dates = np.arange(np.datetime64("2017-01-01"), np.datetime64("2019-01-01"))
    T = len(dates)
    obs = rng.normal(0.3, 0.05, (T, 3))
    est = obs + rng.normal(0, 0.02, (T, 3))
    train = dates < np.datetime64("2018-01-01")
    obs[train, 1] = np.nan                                    # never observed in training
    obs[train & (dates >= np.datetime64("2017-10-01")), 2] = np.nan   # Oct-Dec unseen
    est[train & (dates >= np.datetime64("2017-06-01")) & (dates < np.datetime64("2017-07-01")), 0] = np.nan
    sk = M.per_location_skill(obs, est, dates, train, eval_mask=~train)
    assert sk["qualified"].all() and sk["n_qualified"] == 3
    # location 0: the estimate's own climatology is undefined around June (no estimate then)
    assert 340 < sk["n_anomaly_days"][0] < 365
    assert np.isfinite(sk["anomaly_cc"][0]) and np.isnan(sk["anomaly_cc"][1])
    assert sk["n_anomaly_days"][1] == 0
    # location 2: anomaly days only where a training value lies within the 15-day window
    assert 250 < sk["n_anomaly_days"][2] < 290 and np.isfinite(sk["anomaly_cc"][2])
    assert sk["n_anomaly"] == 2 and sk["n_no_climatology"] == 1
    assert sk["summary"]["anomaly_cc"]["n"] == 2
    assert "1 without a training climatology" in M.describe_location_skill(sk)


def test_location_skill_samples_equals_dense():
    """train's test scoring (1-D samples) equals per_location_skill on the dense (T, N) arrays."""
    rng = np.random.default_rng(8)
    dates = np.arange(np.datetime64("2016-01-01"), np.datetime64("2018-01-01"))
    T, N = len(dates), 5
    y = 0.3 + 0.05 * np.sin(np.arange(T) / 40.0)[:, None] + rng.normal(0, 0.02, (T, N))
    y[rng.random((T, N)) < 0.1] = np.nan
    test = dates >= np.datetime64("2017-06-01")
    tt, nn = np.nonzero(test[:, None] & np.isfinite(y))
    keep = rng.random(tt.size) < 0.7
    tt, nn = tt[keep], nn[keep]
    est = y[tt, nn] + rng.normal(0, 0.02, tt.size)
    a = M.location_skill_samples(y[tt, nn], est, nn, N, min_days=30)
    dense = np.full((T, N), np.nan)
    dense[tt, nn] = est
    b = M.per_location_skill(y, dense)
    for k in ("n_days", "qualified"):
        assert a[k].tolist() == b[k].tolist()
    for k in ("cc", "bias", "ubrmse"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12, equal_nan=True)
    assert a["summary"]["cc"]["median"] == pytest.approx(b["summary"]["cc"]["median"], rel=1e-12)
    assert "anomaly" not in M.describe_location_skill(a)
