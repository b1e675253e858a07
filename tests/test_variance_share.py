"""Variance-share importance (model/contribution_stats.py): the streamed per-pixel statistics equal numpy's
variance in any chunk order, and a prediction folder's variance_share.tif is each factor's share of the variance
of its contribution over the prediction period, for windowed, stateful and ensemble models."""
import json

import numpy as np
import pytest

from ismoe_qgis.model import contribution_stats as cs

torch = pytest.importorskip("torch")

from ismoe_qgis.model import inference  # noqa: E402
from ismoe_qgis.model import prediction_folder as pf  # noqa: E402

from test_model import FACTORS, make_model, small_cube  # noqa: E402

NAMES = list(FACTORS)


def test_chunk_statistics_merged_in_any_order_are_numpys_variance():
    rng = np.random.default_rng(3)
    E, T, h, w = 3, 41, 4, 5
    c = rng.normal(size=(E, T, h, w)) * np.array([1.0, 0.1, 3.0])[:, None, None, None] + 5.0
    valid = rng.random((T, h, w)) > 0.3
    valid[:, 0, 0] = False                       # no valid day
    valid[:, 0, 1] = False
    valid[7, 0, 1] = True                        # one valid day: no variance
    bounds = [0, 3, 4, 17, 30, 41]
    parts = [cs.chunk_stats(c[:, a:b], valid[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = None
    for i in rng.permutation(len(parts)):
        merged = cs.merge(merged, parts[i])
    cm = np.where(valid[None], c, np.nan)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        var = np.nanvar(cm, axis=1)
    np.testing.assert_array_equal(merged["n"], valid.sum(0))
    ok = valid.sum(0) >= 2
    np.testing.assert_allclose((merged["m2"] / np.maximum(merged["n"], 1))[:, ok], var[:, ok], rtol=1e-10)
    sh = cs.shares(merged)
    assert sh.shape == (E, h, w) and sh.dtype == np.float32
    assert np.isnan(sh[:, 0, 0]).all() and np.isnan(sh[:, 0, 1]).all()
    np.testing.assert_allclose(sh[:, ok].sum(0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(sh[:, ok], var[:, ok] / var[:, ok].sum(0), rtol=1e-5)
    assert (sh[2][ok] > sh[1][ok]).all()        # the factor with 30x the spread has the larger share


def test_accumulator_hands_a_tile_back_when_its_chunks_are_in():
    rng = np.random.default_rng(0)
    acc = cs.ShareAccumulator(["a", "b"], chunks_per_tile=2)
    c = rng.normal(size=(2, 10, 2, 2))
    ok = np.ones((10, 2, 2), bool)
    dates = np.arange("2020-01-01", "2020-01-11", dtype="datetime64[D]")
    assert acc.add(0, 0, cs.monthly_stats(c[:, :4], ok[:4], dates[:4])) is None and acc.incomplete == 1
    sh = acc.add(0, 0, cs.monthly_stats(c[:, 4:], ok[4:], dates[4:]))
    assert acc.incomplete == 0 and sh.shape == (len(cs.SHARE_BANDS), 2, 2, 2)
    whole = cs.shares(cs.chunk_stats(c, ok))
    np.testing.assert_allclose(sh[0], whole, rtol=1e-6)
    np.testing.assert_allclose(sh[cs.SHARE_BANDS.index("1")], whole, rtol=1e-6)     # all in January
    np.testing.assert_allclose(sh[cs.SHARE_BANDS.index("DJF")], whole, rtol=1e-6)
    assert np.isnan(sh[cs.SHARE_BANDS.index("7")]).all() and np.isnan(sh[cs.SHARE_BANDS.index("JJA")]).all()
    mean = acc.area_mean()
    assert mean["a"] == pytest.approx(float(sh[0, 0].mean()), abs=1e-6)
    assert mean["a"] + mean["b"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        cs.chunk_stats(c, ok[:3])
    with pytest.raises(ValueError, match="3 dates for a chunk of 10 days"):
        cs.monthly_stats(c, ok, dates[:3])


def test_seasonal_shares_are_each_periods_share_whatever_the_chunks():
    """A factor that moves SM only in summer has the summer's share, the other the winter's; the months and
    seasons merged from chunks that straddle month ends equal numpy's variance over the period's days."""
    dates = np.arange("2019-11-15", "2020-09-10", dtype="datetime64[D]")
    T = len(dates)
    rng = np.random.default_rng(5)
    months = (dates.astype("datetime64[M]").astype(int) % 12) + 1
    summer = np.isin(months, (6, 7, 8))
    c = np.stack([np.where(summer, 3.0, 0.1)[:, None, None] * rng.normal(size=(T, 2, 3)),
                  np.where(summer, 0.1, 2.0)[:, None, None] * rng.normal(size=(T, 2, 3))])
    ok = rng.random((T, 2, 3)) > 0.1
    acc = cs.ShareAccumulator(["x", "y"], chunks_per_tile=5)
    bounds = np.linspace(0, T, 6).astype(int)
    order = [3, 0, 4, 2, 1]
    for i in order:
        a, b = bounds[i], bounds[i + 1]
        sh = acc.add(0, 0, cs.monthly_stats(c[:, a:b], ok[a:b], dates[a:b]))
    assert sh is not None

    def expect(sel):
        cm = np.where(ok[sel][None], c[:, sel], np.nan)
        var = np.nanvar(cm, axis=1)
        return var / var.sum(0)
    np.testing.assert_allclose(sh[0], expect(slice(None)), rtol=1e-5)
    for band in ("JJA", "DJF", "1", "7", "11"):
        if band in ("JJA", "DJF"):
            sel = np.isin(months, cs.SEASON_MONTHS[band])
        else:
            sel = months == int(band)
        np.testing.assert_allclose(sh[cs.SHARE_BANDS.index(band)], expect(sel), rtol=1e-5)
    assert (sh[cs.SHARE_BANDS.index("JJA"), 0] > 0.9).all() and (sh[cs.SHARE_BANDS.index("DJF"), 1] > 0.9).all()
    assert np.isnan(sh[cs.SHARE_BANDS.index("10")]).all()          # no October in the period


def _folder_shares(out, names):
    import rasterio
    bands = []
    for f in names:
        with rasterio.open(out / pf.variance_share_file(f)) as ds:
            assert ds.count == len(cs.SHARE_BANDS) and ds.descriptions[0].startswith(f"{f} variance share ")
            assert ds.descriptions[cs.SHARE_BANDS.index("JJA")].startswith(f"{f} variance share JJA (")
            bands.append(ds.read(1))
            nodata = ds.nodata
    return np.stack(bands), nodata


def _expected_shares(model, cube, t_from):
    sm, c = inference.predict_cube(model, cube, t_from=t_from, tile_size=3, time_chunk=4, contributions=True)
    c = np.where(np.isfinite(sm)[None], c, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.nanvar(c.astype(np.float64), axis=1)
        return var / var.sum(0), sm


@pytest.mark.parametrize("mixture,memory,members", [("additive", "window", 1), ("gated", "window", 1),
                                                    ("additive", "stateful", 1), ("additive", "window", 2)])
def test_prediction_folder_writes_each_factors_share_of_the_contribution_variance(tmp_path, mixture, memory,
                                                                                  members):
    cube = small_cube(T=30)
    opts = {"mixture": mixture}
    if memory == "stateful":
        opts.update(memory="stateful", spin_up=5)
    if members > 1:
        opts.update(members=2, member_seeds=[1, 2])
    model = make_model(cube, **opts)
    first = 12 if memory == "stateful" else None
    out = tmp_path / "pred"
    man = inference.predict_to_folder(model, inference.cube_block_reader(cube), cube.grid, cube.dates, str(out),
                                      tile_size=4, time_chunk=5, first_output=first)
    shares, nodata = _folder_shares(out, NAMES)
    assert shares.shape == (len(NAMES), cube.grid["height"], cube.grid["width"])
    expected, sm = _expected_shares(model, cube, first if first is not None else cube.seq_len - 1)
    ok = shares[0] != nodata
    assert ok.mean() > 0.9
    np.testing.assert_allclose(shares[:, ok], expected[:, ok], rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(shares[:, ok].sum(0), 1.0, rtol=1e-5)
    snow = NAMES.index("snow")
    assert np.all(shares[snow, :3][ok[:3]] == 0.0)        # silent in the top rows: contributes nothing there
    meta = json.loads((out / "prediction.json").read_text())
    vs = meta["variance_share"]
    assert vs == man["variance_share"] and vs["files"] == {f: f"variance_share_{f}.tif" for f in NAMES}
    assert "Var_t(c_e)" in vs["meaning"]
    for e, f in enumerate(NAMES):
        assert vs["area_mean"][f] == pytest.approx(float(shares[e][ok].mean()), abs=1e-5)
    pf.read_manifest(str(out))                            # the reader accepts the new item


def test_convex_and_baseline_models_write_no_variance_share(tmp_path):
    cube = small_cube()
    for name, model in (("convex", make_model(cube, mixture="convex")), ("cnn", make_model(cube, "cnn_lstm"))):
        out = tmp_path / name
        man = inference.predict_to_folder(model, inference.cube_block_reader(cube), cube.grid, cube.dates, str(out),
                                          tile_size=4, time_chunk=5)
        assert man["variance_share"] is None
        assert not list(out.glob("variance_share*"))


def test_region_importance_of_the_variance_share_is_the_mean_of_the_pixels_seasonal_bands(tmp_path):
    import rasterio

    from ismoe_qgis.model import importance as imp
    cube = small_cube(T=30)
    model = make_model(cube, mixture="gated")
    out = tmp_path / "pred"
    inference.predict_to_folder(model, inference.cube_block_reader(cube), cube.grid, cube.dates, str(out),
                                tile_size=4, time_chunk=5)
    folder = pf.open_prediction(str(out))
    assert folder.has_seasonal_shares and folder.default_measure == "variance_share"
    assert folder.share_bands == list(cs.SHARE_BANDS)
    table = pf.region_importance(folder, None, measure="auto")
    assert table.measure == "variance_share" and table.kinds() == ["month", "season"]
    assert table.title == "variance share of the contributions"
    months = sorted(set(imp.months_of(cube.dates[cube.seq_len - 1:]).tolist()))
    season = table.get(imp.DEFAULT_REGION, "season")
    month = table.get(imp.DEFAULT_REGION, "month")
    assert month.periods == months
    for e, f in enumerate(NAMES):
        with rasterio.open(out / pf.variance_share_file(f)) as ds:
            for kind, series in (("month", month), ("season", season)):
                for i, p in enumerate(series.periods):
                    band = ds.read(cs.SHARE_BANDS.index(str(p)) + 1)
                    valid = band != ds.nodata
                    assert series.n[i, e] == valid.sum()
                    assert series.mean[i, e] == pytest.approx(float(band[valid].mean()), abs=1e-6)
    np.testing.assert_allclose(np.nansum(month.mean, axis=1), 1.0, atol=1e-5)   # shares of each month sum to 1
    whole = pf.whole_area_importance(folder, measure="auto")
    np.testing.assert_allclose(whole.get(imp.DEFAULT_REGION, "month").mean, month.mean)
    # the CSV keeps the measure; the weights stay chartable on the same folder
    path = imp.write_importance_csv(table, str(tmp_path / "shares.csv"))
    back = imp.read_importance_csv(path)
    assert back.measure == "variance_share"
    np.testing.assert_allclose(back.get(imp.DEFAULT_REGION, "month").mean, month.mean, atol=1e-6)
    weights = pf.region_importance(folder, None, measure="weight")
    assert weights.measure == "weight" and "doy" in weights.kinds()
    with pytest.raises(imp.ImportanceError, match="mixes measures"):
        imp.table_from_rows([{"region": "all", "period_kind": "month", "period": "1", "factor": "a",
                              "mean_weight": "0.5", "n": "3", "measure": m} for m in ("weight", "variance_share")])


def test_a_folder_without_seasonal_shares_says_why_the_variance_share_cannot_be_charted(tmp_path):
    cube = small_cube()
    out = tmp_path / "convex"
    inference.predict_to_folder(make_model(cube, mixture="convex"), inference.cube_block_reader(cube), cube.grid,
                                cube.dates, str(out), tile_size=4, time_chunk=5)
    folder = pf.open_prediction(str(out))
    assert folder.default_measure == "weight" and pf.region_importance(folder, None, measure="auto").measure == "weight"
    with pytest.raises(pf.ChartDataError, match="no seasonal variance shares: its model's mixture"):
        pf.region_importance(folder, None, measure="variance_share")
