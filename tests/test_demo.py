"""The embedded demo region: files, georeferencing, determinism, planted drivers."""
import datetime as dt
import json
import os

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from ismoe_qgis.data import demo  # noqa: E402

SIZE, YEARS, SEED = 16, 1, 42


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    man = demo.generate_demo(out, size=SIZE, years=YEARS, seed=SEED)
    return out, man


@pytest.fixture(scope="module")
def loaded(generated):
    out, _ = generated
    return demo.load_demo(str(out))


def _expected_dates(start, n):
    d0 = dt.date.fromisoformat(start)
    return [(d0 + dt.timedelta(days=i)).isoformat() for i in range(n)]


def test_manifest(generated):
    out, man = generated
    with open(os.path.join(out, "demo.json"), encoding="utf-8") as fh:
        on_disk = json.load(fh)
    assert "paths" not in on_disk  # relative paths only in the file
    assert on_disk["factors"] == {
        "snow": ["snow_depth", "snow_cover", "snowmelt"],
        "radiation": ["net_solar", "net_thermal"],
        "precipitation": ["precipitation"],
        "wind": ["u10", "v10"],
        "temperature": ["t2m"],
        "lake": ["lake_mix_temp", "lake_mix_depth"],
    }
    variables = [v for vs in on_disk["factors"].values() for v in vs]
    assert len(variables) == 11
    assert on_disk["layers"] == {v: f"{v}.tif" for v in variables}
    assert on_disk["target"] == "soil_moisture.tif"
    assert on_disk["regions"] == "regions.tif"
    assert on_disk["region_names"] == {"1": "arid", "2": "tundra", "3": "monsoon"}
    assert on_disk["drivers"] == {"arid": ["snow", "radiation"], "tundra": ["lake", "precipitation"],
                                  "monsoon": ["wind", "lake"]}
    assert on_disk["start"] == "2017-01-01"
    assert on_disk["n_days"] == 365
    assert (on_disk["size"], on_disk["seed"], on_disk["crs"]) == (SIZE, SEED, "EPSG:32645")
    # the returned manifest adds absolute paths to every file
    for v in variables:
        assert os.path.isabs(man["paths"][v]) and os.path.isfile(man["paths"][v])
    for key in ("soil_moisture", "regions", "manifest"):
        assert os.path.isfile(man["paths"][key])


def test_rasters_are_georeferenced_daily_series(generated):
    out, man = generated
    dates = _expected_dates(man["start"], man["n_days"])
    files = list(man["layers"].values()) + [man["target"]]
    assert len(files) == 12
    for f in files:
        with rasterio.open(os.path.join(out, f)) as ds:
            assert ds.count == man["n_days"]
            assert list(ds.descriptions) == dates
            assert ds.crs.to_epsg() == 32645
            assert ds.nodata == -9999
            assert ds.dtypes[0] == "float32"
            assert (ds.width, ds.height) == (SIZE, SIZE)
            assert ds.res == (1000.0, 1000.0)
            assert ds.profile.get("tiled") is True
            assert (ds.compression.value if ds.compression else "").upper() == "DEFLATE"
            # on the Tibetan Plateau (UTM 45N: 84-90 E), northern hemisphere ~31 N
            x0, y0 = ds.transform.c, ds.transform.f
            assert 166000 < x0 < 834000 and 3.3e6 < y0 < 3.7e6
            assert ds.tags().get("units")


def test_regions_raster(generated, loaded):
    out, man = generated
    with rasterio.open(os.path.join(out, man["regions"])) as ds:
        assert ds.count == 1
        assert ds.dtypes[0] == "uint8"
        assert ds.nodata == 0
        assert ds.crs.to_epsg() == 32645
        reg = ds.read(1)
    assert set(np.unique(reg)) <= {1, 2, 3}
    for rid in (1, 2, 3):
        assert (reg == rid).mean() >= 0.25
        assert _n_components(reg == rid) == 1
    np.testing.assert_array_equal(reg, loaded["regions"])


def _n_components(mask):
    """Number of 4-connected components of a boolean mask."""
    seen = np.zeros_like(mask, dtype=bool)
    n = 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        n += 1
        stack = [start]
        seen[start] = True
        while stack:
            i, j = stack.pop()
            for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if 0 <= a < mask.shape[0] and 0 <= b < mask.shape[1] and mask[a, b] and not seen[a, b]:
                    seen[a, b] = True
                    stack.append((a, b))
    return n


def test_regions_contiguous_other_sizes():
    rng = np.random.default_rng(0)
    for size in (12, 24, 48, 64):
        for _ in range(5):
            reg = demo.make_regions(rng, size)
            for rid in (1, 2, 3):
                assert (reg == rid).mean() >= 0.25
                assert _n_components(reg == rid) == 1


def test_written_equals_simulated(loaded):
    sim = demo.simulate(size=SIZE, years=YEARS, seed=SEED)
    for v in demo.VARIABLES:
        np.testing.assert_array_equal(sim["variables"][v], loaded["variables"][v])
    np.testing.assert_array_equal(sim["soil_moisture"], loaded["soil_moisture"])
    assert [str(d) for d in loaded["dates"]] == [str(d) for d in sim["dates"]]


def test_deterministic_files(tmp_path, loaded):
    man = demo.generate_demo(tmp_path / "again", size=SIZE, years=YEARS, seed=SEED)
    again = demo.load_demo(man["out_dir"])
    for v in demo.VARIABLES:
        np.testing.assert_array_equal(again["variables"][v], loaded["variables"][v])
    np.testing.assert_array_equal(again["soil_moisture"], loaded["soil_moisture"])


def test_different_seed_differs(loaded):
    other = demo.simulate(size=SIZE, years=YEARS, seed=SEED + 1)
    assert not np.array_equal(other["soil_moisture"], loaded["soil_moisture"])
    for v in ("t2m", "net_solar", "precipitation", "u10"):
        assert not np.array_equal(other["variables"][v], loaded["variables"][v])


def test_factors_without_signal(loaded):
    reg = loaded["regions"]
    arid = reg == 1
    for v in demo.FACTORS["snow"]:
        x = loaded["variables"][v]
        assert np.all(x[:, ~arid] == 0.0), v        # no snow outside the arid region, all year
        assert np.all(x[:, arid] >= 0.0), v
        assert x[:, arid].max() > 0.0, v            # ... but there is snow in the arid region
    for v in demo.FACTORS["lake"]:
        x = loaded["variables"][v]
        assert np.all(x[:, arid] == 0.0), v         # no lakes in the arid region
        assert np.all(x[:, ~arid] > 0.0), v         # lakes everywhere in tundra and monsoon
    # the factors present everywhere vary everywhere
    for v in ("t2m", "net_solar", "net_thermal", "precipitation", "u10", "v10"):
        x = loaded["variables"][v]
        for rid in (1, 2, 3):
            assert x[:, reg == rid].std() > 0.0


def test_physical_ranges(loaded):
    v = loaded["variables"]
    assert np.all(np.isfinite(np.stack([v[k] for k in demo.VARIABLES])))
    assert 0.0 <= v["snow_cover"].min() and v["snow_cover"].max() <= 100.0
    assert v["precipitation"].min() >= 0.0 and v["precipitation"].max() < 200.0
    assert -40.0 < v["t2m"].min() and v["t2m"].max() < 35.0
    assert 0.0 < v["net_solar"].min() and v["net_solar"].max() < 400.0
    assert -250.0 < v["net_thermal"].min() and v["net_thermal"].max() < 0.0
    assert np.abs(v["u10"]).max() < 30.0 and np.abs(v["v10"]).max() < 30.0


def test_soil_moisture_range(loaded):
    sm = loaded["soil_moisture"]
    reg = loaded["regions"]
    inside = sm[:, reg > 0]
    assert np.all(np.isfinite(inside))
    assert not np.any(inside == -9999)
    assert inside.min() >= 0.02 and inside.max() <= 0.5
    means = {name: float(sm[:, reg == rid].mean()) for rid, name in demo.REGION_NAMES.items()}
    assert means["arid"] < means["tundra"] < means["monsoon"]
    for rid in (1, 2, 3):
        assert sm[:, reg == rid].std() > 0.02  # a real signal to learn, not just noise


def test_planted_drivers_explain_soil_moisture(loaded):
    ev = demo.explained_variance(loaded)
    for region, res in ev.items():
        drivers = demo.DRIVERS[region]
        others = [f for f in demo.FACTORS if f not in drivers]
        best_other = max(res[f] for f in others)
        for f in drivers:
            # each planted driver alone explains more than any other factor alone...
            assert res[f] > best_other + 0.02, (region, f, res)
            # ... and a substantial share that no other factor can explain
            assert res["unique"][f] > 0.1, (region, f, res["unique"])
        for f in others:
            assert res["unique"][f] < 0.02, (region, f, res["unique"])
        assert res["drivers"] > 0.85, (region, res)
        assert res["drivers"] > res["non_drivers"] + 0.4, (region, res)


def test_process_recorded(generated):
    _, man = generated
    proc = man["process"]
    assert proc["memory_days"] > 0
    for region in ("arid", "tundra", "monsoon"):
        r = proc["regions"][region]
        assert r["inflow_coef"] > 0 and r["loss_coef"] > 0
        assert r["wilting"] < r["s_eq"] < r["porosity"] + 0.3


def test_gaussian_filter_fft():
    a = np.full((10, 12), 3.5)
    np.testing.assert_allclose(demo.gaussian_filter_fft(a, 2.0), a)
    d = np.zeros((32, 32))
    d[5, 7] = 1.0
    f = demo.gaussian_filter_fft(d, 2.0)
    assert abs(f.sum() - 1.0) < 1e-9
    assert np.unravel_index(np.argmax(f), f.shape) == (5, 7)
    # variance of the kernel along rows ~ sigma^2 (wrap-around aware)
    prof = f.sum(axis=1)
    off = (np.arange(32) - 5 + 16) % 32 - 16
    assert abs(np.sum(prof * off ** 2) - 4.0) < 0.05


def test_smooth_noise_unit_variance():
    rng = np.random.default_rng(1)
    f = demo.smooth_noise(rng, 400, 24, 4.0)
    assert abs(f.std() - 1.0) < 0.05
    assert abs(f.mean()) < 0.1
    # spatially smooth: neighbours strongly correlated, far pixels much less
    near = np.corrcoef(f[:, 10, 10], f[:, 10, 11])[0, 1]
    far = np.corrcoef(f[:, 2, 2], f[:, 21, 21])[0, 1]
    assert near > 0.9 and abs(far) < 0.3


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        demo.generate_demo(tmp_path, size=4)
    with pytest.raises(ValueError):
        demo.generate_demo(tmp_path, years=0)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert demo.main(["--out", str(out), "--size", "12", "--years", "1", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    with open(out / "demo.json", encoding="utf-8") as fh:
        man = json.load(fh)
    assert (man["size"], man["seed"], man["n_days"]) == (12, 5, 365)
    with rasterio.open(out / "t2m.tif") as ds:
        assert ds.count == 365 and ds.width == 12


def test_leap_years_and_start(tmp_path):
    sim = demo.simulate(size=8, years=1, seed=0, start="2020-01-01")
    assert len(sim["dates"]) == 366
    assert str(sim["dates"][-1]) == "2020-12-31"
    sim = demo.simulate(size=8, years=2, seed=0, start="2019-07-01")
    assert str(sim["dates"][0]) == "2019-07-01" and str(sim["dates"][-1]) == "2021-06-30"


def test_demo_summary_ranks_by_the_variance_share_when_the_prediction_has_it():
    """The summary's top factors follow the product's importance measure: the variance share (here a factor
    whose weight is high only through a level ranks last by its share), else the mean weight."""
    from ismoe_qgis.demo_summary import format_table, region_summary
    rng = np.random.default_rng(0)
    T, H, W = 40, 2, 4
    dates = np.arange("2019-01-01", T, dtype="datetime64[D]")
    obs = rng.normal(size=(T, H, W))
    est = obs + 0.1 * rng.normal(size=(T, H, W))
    weights = {"lake": np.full((T, H, W), 0.6), "wind": np.full((T, H, W), 0.3), "snow": np.full((T, H, W), 0.1)}
    regions = np.ones((H, W), int)
    bands = ("period", "DJF", "MAM", "JJA", "SON")
    shares = {"lake": {b: np.full((H, W), 0.05) for b in bands}, "wind": {b: np.full((H, W), 0.55) for b in bands},
              "snow": {b: np.full((H, W), 0.40) for b in bands}}
    by_weight = region_summary(obs, est, weights, regions, {1: "r"}, {"r": ["wind", "snow"]}, dates)["r"]
    assert by_weight["importance"] == "weight" and by_weight["ranking"] == ["lake", "wind", "snow"]
    assert not by_weight["planted_are_top"]
    summ = region_summary(obs, est, weights, regions, {1: "r"}, {"r": ["wind", "snow"]}, dates, shares)["r"]
    assert summ["importance"] == "variance_share" and summ["ranking"] == ["wind", "snow", "lake"]
    assert summ["planted_are_top"] and summ["mean_shares"]["lake"] == pytest.approx(0.05)
    assert summ["seasons"]["DJF"]["ranking"] == ["wind", "snow", "lake"]
    assert summ["cc"] > 0.9
    text = format_table({"held_out": ["2019-01-01", "2019-02-09"], "model_type": "ismoe", "mixture": "gated",
                         "regions": {"r": summ}})
    assert "(ismoe, gated)" in text and "variance shares (top 3)" in text and "wind 0.55, snow 0.40, lake 0.05" in text
