"""ismoe:evaluate and its core (ismoe_qgis.model.evaluate) on a small pipeline.

The pipeline (module scope): the demo region is prepared through Processing, then reduced to 12
target pixels (4 per sub-region; the factor grid stays whole) so three tiny models train and
evaluate in seconds; a reference product (the demo target, perturbed) is written as a GeoTIFF
series; the regions raster is vectorised into polygons in EPSG:4326 (reprojected by the
algorithm).
"""
import csv
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
rasterio = pytest.importorskip("rasterio")

from qgis.core import QgsProcessingException  # noqa: E402

FAST_TRAIN = {"EPOCHS": 2, "SAMPLES_PER_EPOCH": 512, "BATCH_SIZE": 128, "HIDDEN": 16, "CONV_CHANNELS": 4,
              "VAL_START": "2018-07-01", "TEST_START": "2018-10-01"}
MODELS = ("ismoe", "cnn_lstm", "mean_expert")
REF = "perturbed_sm"
YEAR = {"DATE_FROM": "2018-01-01", "DATE_TO": "2018-12-31"}


def _factor_params(region):
    man = region.manifest
    layers = [os.path.join(region.path, man["layers"][v]) for f in man["factors"] for v in man["factors"][f]]
    groups = ";".join(f"{f}={','.join(vs)}" for f, vs in man["factors"].items())
    return layers, groups


def _write_like(src, dst, arr, descriptions):
    with rasterio.open(src) as ds:
        prof = ds.profile
    prof.update(count=arr.shape[0], dtype="float32", nodata=-9999.0)
    with rasterio.open(dst, "w", **prof) as ds:
        ds.write(np.where(np.isfinite(arr), arr, -9999.0).astype("float32"))
        for i, d in enumerate(descriptions, 1):
            ds.set_band_description(i, d)
    return str(dst)


def _regions_geojson(region, path):
    """The demo's regions raster as polygons in EPSG:4326 with a 'name' field."""
    from rasterio import features
    from rasterio.warp import transform_geom
    names = region.manifest["region_names"]
    with rasterio.open(os.path.join(region.path, region.manifest["regions"])) as ds:
        reg, transform, crs = ds.read(1), ds.transform, ds.crs
    feats = []
    for geom, value in features.shapes(reg.astype("int32"), transform=transform):
        if str(int(value)) in names:
            feats.append({"type": "Feature", "properties": {"name": names[str(int(value))]},
                          "geometry": transform_geom(crs, "EPSG:4326", geom)})
    with open(path, "w") as fh:
        json.dump({"type": "FeatureCollection", "features": feats}, fh)
    return str(path), reg


def _run(alg, params):
    import processing
    from conftest import recording_feedback_class
    fb = recording_feedback_class()()
    return processing.run(alg, dict(params), feedback=fb), fb


@pytest.fixture(scope="module")
def evpipe(demo_region, qgis_app, tmp_path_factory):
    from ismoe_qgis.data.cube import Cube
    run_alg = _run
    out = tmp_path_factory.mktemp("evaluate")
    layers, groups = _factor_params(demo_region)
    full = str(out / "full.npz")
    run_alg("ismoe:preparedataset", {"FACTORS": layers, "FACTOR_GROUPS": groups,
                                     "TARGET": os.path.join(demo_region.path, demo_region.manifest["target"]),
                                     "PATCH_SIZE": 3, "SEQ_LEN": 7, "OUTPUT": full})
    cube = Cube.load(full)
    geojson, reg = _regions_geojson(demo_region, out / "regions.geojson")
    rng = np.random.default_rng(0)
    sel = []
    for rid in (1, 2, 3):  # 4 pixels per sub-region, away from the border
        rr, cc = np.nonzero(reg == rid)
        inner = (rr > 1) & (rr < reg.shape[0] - 2) & (cc > 1) & (cc < reg.shape[1] - 2)
        k = rng.choice(np.nonzero(inner)[0], 4, replace=False)
        sel += [(int(rr[i]), int(cc[i])) for i in k]
    rows = np.array([r for r, _ in sel], np.int32)
    cols = np.array([c for _, c in sel], np.int32)
    where = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(cube.target_rows, cube.target_cols))}
    small = Cube(x=cube.x, y=cube.y[:, [where[p] for p in sel]],
                 target_rows=rows, target_cols=cols, dates=cube.dates, factors=cube.factors,
                 variables=cube.variables, grid=cube.grid, patch_size=cube.patch_size, seq_len=cube.seq_len,
                 x_mean=cube.x_mean, x_std=cube.x_std, y_mean=cube.y_mean, y_std=cube.y_std)
    ds = str(out / "ds.npz")
    small.save(ds)
    models, trained = {}, {}
    for i, m in enumerate(MODELS):
        models[m] = str(out / f"{m}.pt")
        trained[m] = run_alg("ismoe:train", {"DATASET": ds, "MODEL": i, "OUTPUT": models[m], **FAST_TRAIN})
    # reference product: the demo target, wetter by 0.02 and noisy
    target = os.path.join(demo_region.path, demo_region.manifest["target"])
    with rasterio.open(target) as src:
        sm = src.read(masked=True).filled(np.nan).astype("float32")
        desc = src.descriptions
    noisy = sm + 0.02 + np.random.default_rng(1).normal(0, 0.02, sm.shape).astype("float32")
    ref = _write_like(target, out / f"{REF}.tif", noisy, desc)
    ev = out / "eval"
    res, fb = run_alg("ismoe:evaluate", {"MODELS": [models[m] for m in MODELS], "DATASET": ds, "REFERENCES": [ref],
                                         "REGIONS": geojson, "REGION_FIELD": "name", "OUTPUT": str(ev), **YEAR})
    return dict(out=out, ds=ds, models=models, ref=ref, ev=ev, res=res, fb=fb, cube=small, geojson=geojson,
                reg=reg, target=target, trained=trained)


def _csv_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------- outputs
def test_outputs_written(evpipe):
    res, ev = evpipe["res"], evpipe["ev"]
    for key, name in (("METRICS_CSV", "metrics.csv"), ("METRICS_JSON", "metrics.json"), ("REPORT", "report.html"),
                      ("IMPORTANCE_CSV", "seasonal_importance.csv"), ("LOCATION_CSV", "location_skill.csv"),
                      ("VARIANCE_SHARE_CSV", "seasonal_variance_share.csv")):
        assert res[key] == str(ev / name) and os.path.getsize(res[key]) > 0
    assert sorted(os.listdir(ev)) == ["location_skill.csv", "metrics.csv", "metrics.json", "report.html",
                                      "seasonal_importance.csv", "seasonal_variance_share.csv",
                                      "variance_share.csv"]    # ismoe is gated (the default)
    assert not [p for p in os.listdir(evpipe["out"]) if p.startswith(".ismoe-evaluate")]  # temp folder gone
    assert res["N_SAMPLES"] == 12 * 365


def test_every_estimate_on_the_same_samples(evpipe):
    rows = _csv_rows(evpipe["res"]["METRICS_CSV"])
    names = list(MODELS) + [REF, "persistence", "climatology"]
    assert list(dict.fromkeys(r["model"] for r in rows)) == names
    kinds = {r["group_kind"] for r in rows}
    assert kinds == {"overall", "per_location", "location", "region", "season"}
    by_group = {}
    for r in rows:
        by_group.setdefault((r["group_kind"], r["group"]), {})[r["model"]] = int(r["n"])
    for group, ns in by_group.items():
        assert set(ns) == set(names), group
        assert len(set(ns.values())) == 1, (group, ns)
    assert by_group[("overall", "all")]["ismoe"] == 12 * 365
    assert {g for k, g in by_group if k == "region"} == {"arid", "tundra", "monsoon"}
    assert {g for k, g in by_group if k == "season"} == {"DJF", "MAM", "JJA", "SON"}
    overall = {r["model"]: r for r in rows if r["group_kind"] == "overall"}
    for name in names:
        for m in ("cc", "rmse", "ubrmse", "bias", "kge"):
            assert np.isfinite(float(overall[name][m])), (name, m)
    # the reference is the truth + 0.02 + noise(0.02): bias ~ +0.02, RMSE ~ sqrt(2) * 0.02
    assert abs(float(overall[REF]["bias"]) - 0.02) < 0.003
    assert 0.02 < float(overall[REF]["rmse"]) < 0.035


def test_json_matches_csv(evpipe):
    data = json.load(open(evpipe["res"]["METRICS_JSON"]))
    rows = _csv_rows(evpipe["res"]["METRICS_CSV"])
    assert len(data["rows"]) == len(rows)
    assert set(data.get("references", [])) >= {REF, "persistence", "climatology"}
    first = data["rows"][0]
    assert first["model"] == "ismoe" and first["group_kind"] == "overall" and first["n"] == 12 * 365


def test_html_report(evpipe):
    html = open(evpipe["res"]["REPORT"], encoding="utf-8").read()
    for name in list(MODELS) + [REF, "persistence", "climatology", "arid", "tundra", "monsoon"]:
        assert name in html, name
    assert html.count("<img") >= 5 and html.count("data:image/png;base64,") >= 5
    assert "same 4380 samples" in html
    assert "Seasonal importance" in html


def test_seasonal_importance_csv(evpipe, demo_region):
    rows = _csv_rows(evpipe["res"]["IMPORTANCE_CSV"])
    factors = list(demo_region.manifest["factors"])
    monthly = [r for r in rows if r["region"] == "all" and r["period_kind"] == "month"]
    assert len(monthly) == 12 * len(factors)
    assert {int(r["period"]) for r in monthly} == set(range(1, 13))
    assert {r["factor"] for r in monthly} == set(factors)
    for m in range(1, 13):
        w = [float(r["mean_weight"]) for r in monthly if int(r["period"]) == m]
        assert abs(sum(w) - 1.0) < 1e-4
    assert {r["region"] for r in rows} == {"all", "arid", "tundra", "monsoon"}
    seasons = {r["period"] for r in rows if r["period_kind"] == "season"}
    assert seasons == {"DJF", "MAM", "JJA", "SON"}


def test_progress_and_log(evpipe):
    fb = evpipe["fb"]
    assert fb.progress_values and max(fb.progress_values) == 100
    assert "regions: 12 of 12 target locations in 3 region(s)" in fb.text
    assert "ismoe" in fb.text and "CC" in fb.text


def test_per_location_csv_through_the_algorithm(evpipe):
    """location_skill.csv: each model's and product's CC, bias and ubRMSE per location over time,
    equal to numpy on the common samples of the evaluation arrays; the metrics rows carry the median
    and IQR; the report leads with them."""
    from ismoe_qgis.model.evaluate import climatology, evaluate
    from ismoe_qgis.data.cube import Cube
    ev_rows = _csv_rows(evpipe["res"]["LOCATION_CSV"])
    names = list(MODELS) + [REF, "persistence", "climatology"]
    cube = evpipe["cube"]
    ids = cube.location_labels()
    assert [(r["model"], r["location"]) for r in ev_rows] == [(m, i) for m in names for i in ids]
    # the same evaluation through the core, without writing: the arrays that were scored
    core = evaluate(evpipe["ds"], evpipe["models"], references={REF: evpipe["ref"]},
                    period=(YEAR["DATE_FROM"], YEAR["DATE_TO"]), out_dir=None)
    obs = core["obs"]
    mask = np.isfinite(obs)
    for e in core["estimates"].values():
        mask &= np.isfinite(e)
    full = Cube.load(evpipe["ds"])
    train = full.dates < np.datetime64(FAST_TRAIN["VAL_START"])
    pm = (full.dates >= np.datetime64(YEAR["DATE_FROM"])) & (full.dates <= np.datetime64(YEAR["DATE_TO"]))
    clim = climatology(full.y, full.dates, train)[pm]
    np.testing.assert_allclose(core["climatology"], clim, rtol=1e-6, equal_nan=True)
    # each estimate's own training climatology: a model's from its predictions of the training period
    tr_core = evaluate(evpipe["ds"], {"ismoe": evpipe["models"]["ismoe"]}, baselines=(), out_dir=None,
                       period=(str(full.dates[0]), "2018-06-30"))
    est_tr = np.full(full.y.shape, np.nan, np.float32)
    est_tr[full.dates <= np.datetime64("2018-06-30")] = tr_core["estimates"]["ismoe"]
    np.testing.assert_allclose(core["estimate_climatology"]["ismoe"], climatology(est_tr, full.dates, train)[pm],
                               rtol=1e-5, atol=1e-6)
    from ismoe_qgis.model.evaluate import persistence
    np.testing.assert_allclose(core["estimate_climatology"]["persistence"],
                               climatology(persistence(full.y, full.dates), full.dates, train)[pm], rtol=1e-6)
    by = {(r["model"], r["location"]): r for r in ev_rows}
    for name in names:
        ccs = []
        for j, loc in enumerate(ids):
            r = by[name, loc]
            ok = mask[:, j]
            o, e = obs[ok, j].astype(float), core["estimates"][name][ok, j].astype(float)
            assert int(r["n_days"]) == ok.sum() == 365 and r["qualified"] == "1"
            assert float(r["bias"]) == pytest.approx(e.mean() - o.mean(), rel=1e-6, abs=1e-9)
            assert float(r["rmse"]) ** 2 == pytest.approx(float(r["ubrmse"]) ** 2 + float(r["bias"]) ** 2, rel=1e-9)
            if name == "climatology":     # anomalies of a climatology are 0: no anomaly CC
                assert r["anomaly_cc"] == ""
            else:
                c, ce = clim[ok, j], core["estimate_climatology"][name][ok, j]
                assert float(r["anomaly_cc"]) == pytest.approx(np.corrcoef(o - c, e - ce)[0, 1], rel=1e-5,
                                                               abs=1e-6)
            assert float(r["cc"]) == pytest.approx(np.corrcoef(o, e)[0, 1], rel=1e-5, abs=1e-6)
            ccs.append(float(r["cc"]))
            # the pixel centre of the target, in the dataset CRS
            t = cube.grid["transform"]
            assert float(r["x"]) == pytest.approx(t[0] + (cube.target_cols[j] + 0.5) * t[1])
            assert float(r["y"]) == pytest.approx(t[3] + (cube.target_rows[j] + 0.5) * t[5])
        rows = {r["group"]: r for r in _csv_rows(evpipe["res"]["METRICS_CSV"])
                if r["model"] == name and r["group_kind"] == "per_location"}
        assert float(rows["median"]["cc"]) == pytest.approx(np.median(ccs), rel=1e-9)
        assert float(rows["p25"]["cc"]) == pytest.approx(np.percentile(ccs, 25), rel=1e-9)
        assert int(rows["median"]["n"]) == 12
        assert core["location_skill"][name]["summary"]["cc"]["median"] == pytest.approx(np.median(ccs), rel=1e-5)
    # a reference wetter by 0.02 everywhere: its per-location bias is ~ +0.02 at every pixel
    assert all(abs(float(by[REF, loc]["bias"]) - 0.02) < 0.005 for loc in ids)
    doc = json.load(open(evpipe["res"]["METRICS_JSON"]))
    assert doc["location_skill"]["estimates"]["ismoe"]["n_qualified"] == 12
    html = open(evpipe["res"]["REPORT"], encoding="utf-8").read()
    assert html.index("Per-location skill") < html.index("Overall, pooled over all samples")
    assert "median per-location CC" in evpipe["fb"].text


def test_train_reports_the_median_per_location_test_cc(evpipe):
    """ismoe:train: TEST_CC_MEDIAN_LOCATION beside the pooled TEST_CC, in the log and the model file,
    equal to evaluate's per-location median CC on the test period."""
    from ismoe_qgis.model.evaluate import evaluate
    from ismoe_qgis.model.io import load_model
    for m in MODELS:
        res, fb = evpipe["trained"][m]
        med = res["TEST_CC_MEDIAN_LOCATION"]
        assert np.isfinite(med) and -1 <= med <= 1
        assert np.isfinite(res["TEST_CC"])
        assert "test: pooled CC" in fb.text and "median per-location CC" in fb.text
        _, _, info = load_model(evpipe["models"][m])
        assert info["test_cc_location_median"] == pytest.approx(med, abs=1e-12)
        skill = info["test_location_skill"]
        assert skill["n_locations"] == 12 and skill["n_qualified"] == 12 and skill["min_days"] == 30
        core = evaluate(evpipe["ds"], {m: evpipe["models"][m]}, period="test", baselines=(), out_dir=None)
        assert core["location_skill"][m]["summary"]["cc"]["median"] == pytest.approx(med, abs=0.01)


# ------------------------------------------------------------------------- core
def test_core_test_period_and_arrays(evpipe):
    from ismoe_qgis.model.evaluate import evaluate
    res = evaluate(evpipe["ds"], {"a": evpipe["models"]["ismoe"]}, period="test", out_dir=None,
                   baselines=("persistence",))
    assert res["period"] == ("2018-10-01", "2018-12-31")
    assert res["obs"].shape == res["estimates"]["a"].shape == (92, 12)
    assert np.isfinite(res["estimates"]["a"]).all()
    cube = evpipe["cube"]
    np.testing.assert_array_equal(res["estimates"]["persistence"][1:], cube.y[-92:-1])
    assert res["n_samples"] == 92 * 12 and res["references"] == ["persistence"]
    table = res["importance"]["a"]
    assert table.get("all", "month").periods == [10, 11, 12]


def test_core_matches_predict_samples(evpipe):
    """The evaluation's estimates are the model's own predictions on those samples."""
    from ismoe_qgis.data.cube import Cube, split_masks
    from ismoe_qgis.model.evaluate import evaluate
    from ismoe_qgis.model.io import load_model
    from ismoe_qgis.model.sample_inference import predict_samples
    from ismoe_qgis.model.sampler import WindowSampler
    import torch
    cube = Cube.load(evpipe["ds"])
    model, cfg, info = load_model(evpipe["models"]["cnn_lstm"])
    t, n = cube.sample_index(split_masks(cube.dates, "2018-07-01", "2018-10-01")[2])
    y, _, _ = predict_samples(model, WindowSampler(cube, torch.device("cpu")), t, n)
    res = evaluate(cube, {"m": evpipe["models"]["cnn_lstm"]}, baselines=(), out_dir=None)
    est = res["estimates"]["m"]
    np.testing.assert_allclose(est[t - t.min(), n], y, rtol=1e-5, atol=1e-6)


def test_variance_share_per_location_is_the_share_of_contribution_variance(evpipe, tmp_path):
    """evaluate's variance_share.csv: for each location, each factor's share of the variance of its contribution
    (predict_samples' contributions of the gated model, the default) over the evaluation period; region means in the
    result."""
    from ismoe_qgis.data.cube import Cube, split_masks
    from ismoe_qgis.model.evaluate import evaluate
    from ismoe_qgis.model.io import load_model
    from ismoe_qgis.model.sample_inference import predict_samples
    from ismoe_qgis.model.sampler import WindowSampler
    import torch
    cube = Cube.load(evpipe["ds"])
    model, cfg, _ = load_model(evpipe["models"]["ismoe"])
    assert model.mixture == "gated"           # the default: the gated contributions
    regions = [f"r{i // 4}" for i in range(cube.y.shape[1])]
    res = evaluate(cube, {"m": evpipe["models"]["ismoe"], "c": evpipe["models"]["cnn_lstm"]}, baselines=(),
                   out_dir=str(tmp_path / "ev"), region_labels=regions)
    t, n = cube.sample_index(split_masks(cube.dates, "2018-07-01", "2018-10-01")[2])
    _, _, c = predict_samples(model, WindowSampler(cube, torch.device("cpu")), t, n)
    rows = _csv_rows(res["paths"]["variance_share"])
    assert {r["model"] for r in rows} == {"m"}                       # cnn_lstm has no contributions
    got = {(r["location"], r["factor"]): float(r["variance_share"]) for r in rows}
    ids = cube.location_labels()
    for j in range(cube.y.shape[1]):
        v = c[n == j].astype(np.float64).var(axis=0)
        for e, f in enumerate(model.output_names):
            assert got[(str(ids[j]), f)] == pytest.approx(v[e] / v.sum(), abs=1e-4)
        assert sum(got[(str(ids[j]), f)] for f in model.output_names) == pytest.approx(1.0, abs=1e-4)
    means = res["models"]["m"]["variance_share"]["regions"]
    assert set(means) == {"all", "r0", "r1", "r2"}
    assert means["r0"]["snow"] == pytest.approx(np.mean([got[(str(ids[j]), "snow")] for j in range(4)]), abs=1e-5)
    assert "variance_share" not in res["models"]["c"]
    # by season: each location's share over the season's days, averaged over the region's locations; the report
    # charts these (the chosen definition), the weights stay in seasonal_importance.csv
    from ismoe_qgis.model import importance as imp
    seasonal = imp.read_importance_csv(res["paths"]["seasonal_variance_share"])
    assert seasonal.measure == "variance_share" and set(seasonal.regions) == {"all", "r0", "r1", "r2"}
    assert seasonal.kinds("r0") == ["month", "season"]
    season = seasonal.get("r0", "season")
    son = np.isin(imp.months_of(cube.dates[t]), (9, 10, 11))
    per_loc = []
    for j in range(4):
        v = c[(n == j) & son].astype(np.float64).var(axis=0)
        per_loc.append(v / v.sum())
    np.testing.assert_allclose(season.mean[season.periods.index("SON")], np.mean(per_loc, axis=0), atol=1e-4)
    assert (season.n[season.periods.index("SON")] == 4).all()
    assert res["seasonal_importance"] == res["paths"]["seasonal_variance_share"]
    assert imp.read_importance_csv(res["paths"]["importance"]).measure == "weight"
    html = open(res["paths"]["html"], encoding="utf-8").read()
    assert "Variance share of each factor" in html


def test_persistence_and_climatology():
    from ismoe_qgis.model.evaluate import climatology, persistence
    dates = np.array(["2017-01-01", "2017-01-02", "2017-01-04", "2017-01-05"], dtype="datetime64[D]")
    y = np.array([[1.0], [2.0], [np.nan], [4.0]], np.float32)
    p = persistence(y, dates)
    assert np.isnan(p[0, 0]) and p[1, 0] == 1.0 and np.isnan(p[2, 0]) and np.isnan(p[3, 0])
    d = np.arange(np.datetime64("2016-01-01"), np.datetime64("2019-01-01"))
    doy = (d - d.astype("datetime64[Y]")).astype(int)
    yy = (np.sin(doy / 58.0) + (d.astype("datetime64[Y]").astype(int) - 46) * 0.1)[:, None]  # +0.1 per year
    train = d < np.datetime64("2018-01-01")
    c = climatology(yy, d, train, window=1)
    i = np.nonzero(d == np.datetime64("2018-03-10"))[0][0]
    j = [np.nonzero(d == np.datetime64(f"{y}-03-10"))[0][0] for y in (2016, 2017)]
    assert abs(c[i, 0] - yy[j, 0].mean()) < 1e-6
    k = np.nonzero(d == np.datetime64("2016-02-29"))[0][0]
    assert abs(c[k, 0] - yy[k, 0]) < 1e-6  # 29 February has its own slot
    c15 = climatology(yy, d, train, window=15)
    assert np.isfinite(c15).all() and np.nanmax(np.abs(c15 - c)) < 0.2


def test_region_labels_from_polygons(evpipe):
    from ismoe_qgis.model.evaluate import region_labels_from_polygons
    from rasterio.warp import transform_geom
    cube = evpipe["cube"]
    crs = rasterio.crs.CRS.from_wkt(cube.grid["crs_wkt"])
    feats = json.load(open(evpipe["geojson"]))["features"]
    polys = [(f["properties"]["name"], transform_geom("EPSG:4326", crs, f["geometry"])) for f in feats]
    labels = region_labels_from_polygons(cube, polys)
    names = {1: "arid", 2: "tundra", 3: "monsoon"}
    want = [names[int(evpipe["reg"][r, c])] for r, c in zip(cube.target_rows, cube.target_cols)]
    assert list(labels) == want


# ------------------------------------------------------------------------- bad input
def _expect_error(run_alg, params, *words):
    with pytest.raises(QgsProcessingException) as e:
        run_alg("ismoe:evaluate", params)
    msg = str(e.value)
    for w in words:
        assert w in msg, msg
    return msg


def test_model_from_another_factor_set(evpipe, run_alg, tmp_path):
    from ismoe_qgis.model.io import save_model
    from ismoe_qgis.model.networks import ModelConfig, SoilMoistureNet
    cfg = ModelConfig(factors={"snow": ["snow_depth"], "rain": ["rain_gauge"]}, variables=["snow_depth", "rain_gauge"],
                      patch_size=3, seq_len=7, hidden=8, conv_channels=2, x_mean=[0.0, 0.0], x_std=[1.0, 1.0])
    other = tmp_path / "other.pt"
    save_model(other, SoilMoistureNet(cfg), {})
    out = tmp_path / "ev"
    msg = _expect_error(run_alg, {"MODELS": [evpipe["models"]["ismoe"], str(other)], "DATASET": evpipe["ds"],
                                  "OUTPUT": str(out)}, "other", "rain_gauge", "snowmelt")
    assert "factor set" in msg
    assert not out.exists()


def test_reference_without_overlapping_dates(evpipe, run_alg, tmp_path):
    arr = np.full((5, 24, 24), 0.3, np.float32)
    ref = _write_like(evpipe["target"], tmp_path / "late.tif", arr, [f"2030-01-0{i}" for i in range(1, 6)])
    out = tmp_path / "ev"
    msg = _expect_error(run_alg, {"MODELS": [evpipe["models"]["cnn_lstm"]], "DATASET": evpipe["ds"],
                                  "REFERENCES": [ref], "OUTPUT": str(out)}, "late", "no date")
    assert "2030-01-01" in msg
    assert not out.exists()


def test_empty_evaluation_period(evpipe, run_alg, tmp_path):
    out = tmp_path / "ev"
    _expect_error(run_alg, {"MODELS": [evpipe["models"]["cnn_lstm"]], "DATASET": evpipe["ds"],
                            "DATE_FROM": "2030-01-01", "DATE_TO": "2030-12-31", "OUTPUT": str(out)}, "empty")
    assert not out.exists()


def test_bad_dates_order(evpipe, run_alg, tmp_path):
    _expect_error(run_alg, {"MODELS": [evpipe["models"]["cnn_lstm"]], "DATASET": evpipe["ds"],
                            "DATE_FROM": "2018-05-01", "DATE_TO": "2018-01-01", "OUTPUT": str(tmp_path / "e")},
                  "DATE_FROM")


def test_all_nan_target(evpipe, run_alg, tmp_path):
    import dataclasses
    cube = evpipe["cube"]
    bad = dataclasses.replace(cube, y=np.full_like(cube.y, np.nan))
    ds = tmp_path / "nan.npz"
    bad.save(str(ds))
    out = tmp_path / "ev"
    _expect_error(run_alg, {"MODELS": [evpipe["models"]["cnn_lstm"]], "DATASET": str(ds), "OUTPUT": str(out)},
                  "no valid value", "all NaN")
    assert not out.exists()


def test_nan_target_in_period(evpipe, tmp_path):
    """Missing observations are skipped; a period where all are missing is an error."""
    import dataclasses
    from ismoe_qgis.model.evaluate import evaluate
    cube = evpipe["cube"]
    y = cube.y.copy()
    y[cube.dates >= np.datetime64("2018-10-01")] = np.nan
    y[::3] = np.nan
    part = dataclasses.replace(cube, y=y)
    with pytest.raises(ValueError, match="no valid value in the evaluation period"):
        evaluate(part, [evpipe["models"]["cnn_lstm"]], out_dir=None)
    res = evaluate(part, [evpipe["models"]["cnn_lstm"]], period=("2018-01-01", "2018-06-30"), out_dir=None,
                   baselines=("climatology",))
    assert 0 < res["n_samples"] < 181 * 12


def test_no_model(evpipe, run_alg, tmp_path):
    _expect_error(run_alg, {"MODELS": [], "DATASET": evpipe["ds"], "OUTPUT": str(tmp_path / "e")}, "MODELS")


# ------------------------------------------------------------------------- qgis_process / model builder
def test_qgis_process_multiple_models(evpipe, qgis_process, tmp_path):
    """MODELS given twice on the qgis_process command line (3.22: NAME=value repeated)."""
    out = tmp_path / "ev"
    r = qgis_process.run("ismoe:evaluate", {"MODELS": [evpipe["models"]["ismoe"], evpipe["models"]["mean_expert"]],
                                            "DATASET": evpipe["ds"], "BASELINES": [0], "PERIOD": 0,
                                            "OUTPUT": str(out)})
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert r.json["results"]["N_SAMPLES"] == 92 * 12
    models = {row["model"] for row in _csv_rows(out / "metrics.csv")}
    assert models == {"ismoe", "mean_expert", "persistence"}


def test_model_builder_train_into_evaluate(evpipe, run_alg, tmp_path):
    """A Processing model chains ismoe:train's OUTPUT into ismoe:evaluate's MODELS."""
    from qgis.core import (QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm,
                           QgsProcessingModelChildParameterSource, QgsProcessingModelOutput,
                           QgsProcessingParameterFile, QgsProcessingModelParameter,
                           QgsProcessingParameterFolderDestination)
    model = QgsProcessingModelAlgorithm("train_evaluate", "tests")
    model.addModelParameter(QgsProcessingParameterFile("dataset", "dataset", extension="npz"),
                            QgsProcessingModelParameter("dataset"))
    train = QgsProcessingModelChildAlgorithm("ismoe:train")
    train.setChildId("train")
    train.addParameterSources("DATASET", [QgsProcessingModelChildParameterSource.fromModelParameter("dataset")])
    for k, v in {**FAST_TRAIN, "MODEL": 1, "EPOCHS": 1}.items():
        train.addParameterSources(k, [QgsProcessingModelChildParameterSource.fromStaticValue(v)])
    train.addParameterSources("OUTPUT", [QgsProcessingModelChildParameterSource.fromStaticValue(
        str(tmp_path / "chained.pt"))])
    model.addChildAlgorithm(train)
    ev = QgsProcessingModelChildAlgorithm("ismoe:evaluate")
    ev.setChildId("evaluate")
    ev.addParameterSources("MODELS", [QgsProcessingModelChildParameterSource.fromChildOutput("train", "OUTPUT")])
    ev.addParameterSources("DATASET", [QgsProcessingModelChildParameterSource.fromModelParameter("dataset")])
    ev.addParameterSources("BASELINES", [QgsProcessingModelChildParameterSource.fromStaticValue([1])])
    out = QgsProcessingModelOutput("report_folder")
    out.setChildOutputName("OUTPUT")
    ev.setModelOutputs({"report_folder": out})
    model.addChildAlgorithm(ev)
    model.addModelParameter(QgsProcessingParameterFolderDestination("evaluate:report_folder", "report"),
                            QgsProcessingModelParameter("evaluate:report_folder"))
    import processing
    res = processing.run(model, {"dataset": evpipe["ds"], "evaluate:report_folder": str(tmp_path / "rep")})
    rows = _csv_rows(tmp_path / "rep" / "metrics.csv")
    assert {r["model"] for r in rows} == {"chained", "climatology"}
    assert res


def test_ensemble_trains_predicts_and_evaluates_through_processing(evpipe, demo_region, tmp_path):
    """ENSEMBLE=2 through Processing: one model file with both members, predict writes the mean and the
    spread rasters, evaluate scores the mean and each member on the same samples and reports the spread of
    the metrics, spread-skill and the members' agreement on the top factor per region and season."""
    import rasterio
    from ismoe_qgis.model.io import load_model
    model = str(tmp_path / "ens.pt")
    _run("ismoe:train", {"DATASET": evpipe["ds"], "MODEL": 0, "ENSEMBLE": 2, "OUTPUT": model, **FAST_TRAIN})
    m, cfg, info = load_model(model)
    assert cfg.members == 2 and m.members == 2 and len(cfg.member_seeds) == 2
    unc = info["uncertainty"]                  # the error the members' spread does not cover (validation)
    assert unc["residual_sd"] >= 0 and unc["n"] > 0
    assert unc["inside_2sd_total"] >= unc["inside_2sd_members"]
    layers, _ = _factor_params(demo_region)
    pred = tmp_path / "pred"
    _run("ismoe:predict", {"MODEL_FILE": model, "FACTORS": layers, "DATE_FROM": "2018-12-20", "TILE_SIZE": 16,
                           "LOAD_OUTPUTS": False, "OUTPUT": str(pred)})
    man = json.loads((pred / "prediction.json").read_text())
    assert man["ensemble"]["members"] == 2
    assert man["uncertainty"]["residual_sd"] == pytest.approx(unc["residual_sd"])
    with rasterio.open(pred / "sm_spread.tif") as ds:
        sd = ds.read(masked=True)
    assert sd.count() > 0 and float(sd.min()) >= 0 and float(sd.max()) > 0
    for f in man["factors"]:
        assert (pred / f"weight_spread_{f}.tif").exists()
    ev = tmp_path / "eval"
    res, fb = _run("ismoe:evaluate", {"MODELS": [model], "DATASET": evpipe["ds"], "REGIONS": evpipe["geojson"],
                                      "REGION_FIELD": "name", "OUTPUT": str(ev), **YEAR})
    rows = _csv_rows(ev / "metrics.csv")
    names = {r["model"] for r in rows}
    assert {"ens", "ens [member 1]", "ens [member 2]"} <= names
    meta = json.loads((ev / "metrics.json").read_text())
    es = meta["meta"]["ensemble"]["ens"] if "meta" in meta else meta["ensemble"]["ens"]
    assert es["members"] == 2 and len(es["metric_spread"]["cc"]["members"]) == 2
    overall = {r["model"]: float(r["cc"]) for r in rows if r["group_kind"] == "overall"}
    assert abs(es["metric_spread"]["cc"]["members"][0] - overall["ens [member 1]"]) < 1e-3
    assert abs(es["metric_spread"]["cc"]["ensemble"] - overall["ens"]) < 1e-3
    assert 0.0 <= es["spread_skill"]["inside_2sd"] <= es["spread_skill"]["inside_2sd_predictive"] <= 1.0
    assert es["spread_skill"]["residual_sd"] == pytest.approx(unc["residual_sd"])
    ag = es["agreement"]
    assert "all" in ag and all(v in (0.0, 0.5, 1.0) for row in ag.values() for v in row.values())
    assert set(ag) - {"all"}                                   # the regions too
    html_text = (ev / "report.html").read_text()
    assert "Ensembles: how sure the model is" in html_text
    assert "ensemble of 2" in fb.text
