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
