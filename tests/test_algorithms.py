"""prepare -> train -> predict through Processing (processing.run) and the real qgis_process binary,
plus the bad-input cases of the foundation issue (clear message naming the parameter, no output)."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")
rasterio = pytest.importorskip("rasterio")

from qgis.core import QgsProcessingException  # noqa: E402

FAST_TRAIN = {"EPOCHS": 2, "SAMPLES_PER_EPOCH": 512, "BATCH_SIZE": 128, "HIDDEN": 16, "CONV_CHANNELS": 4,
              "VAL_START": "2018-07-01", "TEST_START": "2018-10-01"}


def factor_params(region, factors=None):
    man = region.manifest
    factors = factors or list(man["factors"])
    layers = [os.path.join(region.path, man["layers"][v]) for f in factors for v in man["factors"][f]]
    groups = ";".join(f"{f}={','.join(man['factors'][f])}" for f in factors)
    return layers, groups


@pytest.fixture(scope="module")
def pipeline(demo_region, run_alg, tmp_path_factory):
    """One prepare -> train -> predict run on the small demo region (size 24, 2 years)."""
    out = tmp_path_factory.mktemp("pipeline")
    layers, groups = factor_params(demo_region)
    ds = str(out / "ds.npz")
    res_p, fb_p = run_alg("ismoe:preparedataset", {
        "FACTORS": layers, "FACTOR_GROUPS": groups,
        "TARGET": os.path.join(demo_region.path, demo_region.manifest["target"]),
        "PATCH_SIZE": 5, "SEQ_LEN": 7, "OUTPUT": ds})
    model = str(out / "model.pt")
    log = str(out / "log.jsonl")
    res_t, fb_t = run_alg("ismoe:train", {"DATASET": ds, "MODEL": 0, "DEVICE": 0, "OUTPUT": model, "LOG": log,
                                          **FAST_TRAIN})
    pred = str(out / "pred")
    res_r, fb_r = run_alg("ismoe:predict", {"MODEL_FILE": model, "FACTORS": layers, "DATE_FROM": "2018-12-01",
                                            "TILE_SIZE": 16, "OUTPUT": pred})
    return dict(out=out, ds=ds, model=model, log=log, pred=pred, layers=layers, groups=groups,
                res_p=res_p, res_t=res_t, res_r=res_r, fb_t=fb_t, fb_r=fb_r)


def test_prepare_writes_aligned_cube(pipeline, demo_region):
    from ismoe_qgis.data.cube import Cube
    cube = Cube.load(pipeline["ds"])
    size = demo_region.manifest["size"]
    assert cube.x.shape == (11, demo_region.manifest["n_days"], size, size)
    assert list(cube.factors) == list(demo_region.manifest["factors"])
    assert cube.patch_size == 5 and cube.seq_len == 7
    assert str(cube.dates[0]) == "2017-01-01"
    assert pipeline["res_p"]["N_SAMPLES"] == int(np.isfinite(cube.y).sum()) == size * size * cube.n_dates


def test_train_logs_epochs_and_metrics(pipeline):
    res = pipeline["res_t"]
    assert os.path.exists(pipeline["model"])
    rows = [json.loads(line) for line in open(pipeline["log"])]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in rows)
    assert -1 <= res["VAL_CC"] <= 1 and res["TEST_RMSE"] > 0
    assert "epoch 2/2" in pipeline["fb_t"].text
    from ismoe_qgis.model.io import load_model
    _, cfg, info = load_model(pipeline["model"])
    assert cfg.factors == {f: v for f, v in cfg.factors.items()} and cfg.patch_size == 5
    assert cfg.version and len(cfg.x_mean) == 11 and info["split"]["test"][0] == "2018-10-01"


def test_predict_writes_sm_and_weights(pipeline, demo_region):
    pred = pipeline["pred"]
    man = json.load(open(os.path.join(pred, "prediction.json")))
    factors = list(demo_region.manifest["factors"])
    assert man["factors"] == factors
    assert man["dates"][0] == "2018-12-01" and man["dates"][-1] == "2018-12-31"
    with rasterio.open(os.path.join(demo_region.path, demo_region.manifest["target"])) as ref:
        crs, transform = ref.crs, ref.transform
    with rasterio.open(os.path.join(pred, "sm.tif")) as ds:
        assert ds.count == 31 and ds.nodata == -9999
        assert ds.descriptions[0] == "2018-12-01"
        assert ds.crs == crs and ds.transform == transform
        sm = ds.read()
    assert np.isfinite(sm).all() and 0.0 < sm.mean() < 0.6
    total = np.zeros_like(sm)
    for f in factors:
        with rasterio.open(os.path.join(pred, f"weight_{f}.tif")) as ds:
            w = ds.read()
        assert w.min() >= 0 and w.max() <= 1
        total += w
    np.testing.assert_allclose(total, 1.0, atol=1e-4)
    assert pipeline["res_r"]["N_DATES"] == 31
    assert pipeline["res_r"]["SM"] == os.path.join(pred, "sm.tif")


def test_qgis_process_json_train_baseline(pipeline, qgis_process):
    """The real qgis_process binary with --json: a cnn_lstm baseline on the same dataset."""
    model = str(pipeline["out"] / "cnn.pt")
    r = qgis_process.run("ismoe:train", {"DATASET": pipeline["ds"], "MODEL": 1, "OUTPUT": model, **FAST_TRAIN})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.json["results"]["OUTPUT"] == model
    assert r.json["results"]["BEST_EPOCH"] in (1, 2)
    from ismoe_qgis.model.io import load_model
    m, cfg, _ = load_model(model)
    assert cfg.model_type == "cnn_lstm" and m.output_names == ["all"]


def torch_any_nonzero(t):
    return bool((t != 0).any())


def test_qgis_process_json_train_each_mixture(pipeline, qgis_process):
    """MIXTURE and LR_SCHEDULE through the real qgis_process binary: the model file records them, and
    the default MIXTURE (gated, ROUTER_INPUT auto = inputs_mean) is the pipeline's model."""
    from ismoe_qgis.model.io import load_model
    m0, cfg0, _ = load_model(pipeline["model"])
    assert cfg0.mixture == "gated" and cfg0.router_input == "inputs_mean" and m0.router is not None
    assert torch_any_nonzero(m0.contrib_ref)     # the reference of the gated contributions is set after training
    man = json.load(open(os.path.join(pipeline["pred"], "prediction.json")))
    assert man["mixture"] == "gated" and man["weights_meaning"].startswith("share of the squared departure")
    assert man["variance_share"]["bands"][:2] == ["period", "1"]
    for idx, name in ((0, "additive"), (1, "convex"), (2, "scaled")):
        model = str(pipeline["out"] / f"{name}.pt")
        r = qgis_process.run("ismoe:train", {"DATASET": pipeline["ds"], "MODEL": 0, "MIXTURE": idx, "LR_SCHEDULE": 1,
                                             "ROUTER_INPUT": 1, "OUTPUT": model, **FAST_TRAIN})
        assert r.returncode == 0, r.stderr[-2000:]
        m, cfg, info = load_model(model)
        assert cfg.mixture == name == m.mixture and info["train"]["schedule"] == "constant"
        assert cfg.router_input == "all_states"
        assert (m.router is not None) == (name != "additive")
        assert hasattr(m, "mu") == (name in ("scaled", "additive"))
        assert hasattr(m, "contrib_ref") == (name == "additive")
        if name == "additive":                   # the reference of the contributions is set after training
            assert torch_any_nonzero(m.contrib_ref)


def test_stateful_memory_through_qgis_process_and_predict(pipeline, qgis_process, run_alg, demo_region):
    """MEMORY=stateful trained by the real qgis_process binary, streamed by ismoe:predict: the model file and
    prediction.json record the mode and the warm-up; a period without enough warm-up days is warned about
    with the number of days there were; SPIN_UP < 0 is refused by name, with no model file written."""
    from ismoe_qgis.model.io import load_model, read_header
    model = str(pipeline["out"] / "stateful.pt")
    r = qgis_process.run("ismoe:train", {"DATASET": pipeline["ds"], "MEMORY": 1, "SPIN_UP": 40, "SUPERVISED_DAYS": 8,
                                         "OUTPUT": model, **FAST_TRAIN})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "stateful experts: sequences of 40 spin-up + 8 supervised days" in r.stdout + r.stderr
    m, cfg, info = load_model(model)
    assert cfg.stateful and cfg.spin_up == 40 and info["train"]["supervised_days"] == 8
    assert read_header(model)[0]["format"] == "ismoe-model/2"
    pred = pipeline["out"] / "pred_stateful"
    res, fb = run_alg("ismoe:predict", {"MODEL_FILE": model, "FACTORS": pipeline["layers"],
                                        "DATE_FROM": "2018-12-01", "TILE_SIZE": 16, "OUTPUT": str(pred)})
    man = json.loads((pred / "prediction.json").read_text())
    assert man["dates"][0] == "2018-12-01" and man["memory"]["mode"] == "stateful"
    assert man["memory"]["warmup_days_available"] == 40 and man["memory"]["short_warmup_dates"] is None
    assert "stateful model: 40 warm-up days" in fb.text
    pred2 = pipeline["out"] / "pred_stateful_short"
    res, fb = run_alg("ismoe:predict", {"MODEL_FILE": model, "FACTORS": pipeline["layers"],
                                        "DATE_FROM": "2017-01-20", "DATE_TO": "2017-03-31", "TILE_SIZE": 16,
                                        "OUTPUT": str(pred2)})
    man = json.loads((pred2 / "prediction.json").read_text())
    assert man["dates"][0] == "2017-01-20" and man["memory"]["warmup_days_available"] == 19
    assert man["memory"]["short_warmup_dates"] == ["2017-01-20", "2017-02-09"]
    assert "asks for 40 warm-up days" in fb.text and "the layers have 19" in fb.text
    bad = pipeline["out"] / "bad_spin.pt"
    r = qgis_process.run("ismoe:train", {"DATASET": pipeline["ds"], "MEMORY": 1, "SPIN_UP": -1, "OUTPUT": str(bad),
                                         **FAST_TRAIN})
    assert r.returncode != 0 and "SPIN_UP must be >= 0" in r.stdout + r.stderr
    assert not bad.exists()


def test_model_builder_chain(demo_region, qgis_process, qgis_app, tmp_path, repo_root):
    """The shipped .model3 (scripts/make_model3.py) loads, validates and chains
    prepare -> train -> predict headless through the real qgis_process binary.

    QGIS 3.22 names a model output's parameter '<child id>:<output name>' ('predict:prediction',
    'train:model'), and qgis_process 3.22 requires every destination parameter that is not optional,
    even one with a default: 'train:model' must be given (a path or TEMPORARY_OUTPUT).
    The demo layers are cut to 6 x 6 pixels and 300 days so that the model's training defaults
    (20000 samples per epoch) reduce to every window there is (a few thousand): about a minute on a CPU.
    """
    from qgis.core import QgsProcessingModelAlgorithm

    model3 = os.path.join(repo_root, "models", "ismoe_prepare_train_predict.model3")
    assert os.path.exists(model3)
    alg = QgsProcessingModelAlgorithm()
    assert alg.fromFile(model3)
    assert alg.name() == "ISMoE: prepare, train, predict" and alg.group() == "ISMoE"
    ok, issues = alg.validate()
    assert ok, issues
    assert {d.name() for d in alg.parameterDefinitions()} == {
        "factors", "factor_groups", "target", "epochs", "patch_size", "seq_len", "predict:prediction", "train:model"}
    assert [c.algorithmId() for c in sorted(alg.childAlgorithms().values(), key=lambda c: c.position().y())] == [
        "ismoe:preparedataset", "ismoe:train", "ismoe:predict"]

    def cut(src, size=6, days=300):
        dst = tmp_path / "in" / os.path.basename(src)
        dst.parent.mkdir(exist_ok=True)
        with rasterio.open(src) as ds:
            window = rasterio.windows.Window(0, 0, size, size)
            arr = ds.read(list(range(1, days + 1)), window=window)
            prof = dict(ds.profile, width=size, height=size, count=days, transform=ds.window_transform(window))
            desc = ds.descriptions[:days]
        with rasterio.open(dst, "w", **prof) as ds:
            ds.write(arr)
            for i, d in enumerate(desc, 1):
                ds.set_band_description(i, d)
        return str(dst)

    layers, groups = factor_params(demo_region)
    pred, model = tmp_path / "pred", tmp_path / "model.pt"
    params = {"factors": [cut(p) for p in layers], "factor_groups": groups,
              "target": cut(os.path.join(demo_region.path, demo_region.manifest["target"])),
              "epochs": 1, "patch_size": 3, "seq_len": 7,
              "predict:prediction": str(pred), "train:model": str(model)}
    r = qgis_process.run(model3, params, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    assert r.json["results"]["predict:prediction"] == str(pred)
    assert r.json["results"]["train:model"] == str(model) and model.exists()
    with rasterio.open(pred / "sm.tif") as ds:
        assert ds.count > 0 and ds.descriptions[0] and ds.width == 6
    assert len([p for p in os.listdir(pred) if p.startswith("weight_") and p.endswith(".tif")]) == 6
    from ismoe_qgis.model.io import load_model
    _, cfg, _ = load_model(str(model))
    assert cfg.patch_size == 3 and cfg.model_type == "ismoe"


# ---------------------------------------------------------------- bad input: one test each
def _expect_error(run_alg, alg, params, *words):
    with pytest.raises(QgsProcessingException) as e:
        run_alg(alg, params)
    msg = str(e.value)
    for w in words:
        assert w in msg, msg
    return msg


def test_no_factor_layers(run_alg, demo_region, tmp_path):
    out = tmp_path / "ds.npz"
    _expect_error(run_alg, "ismoe:preparedataset",
                  {"FACTORS": [], "TARGET": os.path.join(demo_region.path, "soil_moisture.tif"), "OUTPUT": str(out)},
                  "FACTORS")
    assert not out.exists()


def test_band_count_does_not_match_dates(run_alg, demo_region, tmp_path):
    src = os.path.join(demo_region.path, "t2m.tif")
    with rasterio.open(src) as ds:
        prof = ds.profile
        arr = ds.read(list(range(1, 11)))
    bad = tmp_path / "t2m_bad.tif"
    prof.update(count=10)
    with rasterio.open(bad, "w", **prof) as ds:
        ds.write(arr)
        for i in range(1, 10):
            ds.set_band_description(i, f"2017-01-{i:02d}")   # band 10 has no date
    out = tmp_path / "ds.npz"
    _expect_error(run_alg, "ismoe:preparedataset",
                  {"FACTORS": [str(bad)], "TARGET": os.path.join(demo_region.path, "soil_moisture.tif"),
                   "OUTPUT": str(out)}, "t2m_bad")
    assert not out.exists()


def test_no_overlap_in_space(run_alg, demo_region, tmp_path):
    src = os.path.join(demo_region.path, "t2m.tif")
    with rasterio.open(src) as ds:
        prof, arr, desc = ds.profile, ds.read(), ds.descriptions
    far = tmp_path / "far.tif"
    t = prof["transform"]
    prof["transform"] = rasterio.Affine(t.a, t.b, t.c + 1e6, t.d, t.e, t.f)
    with rasterio.open(far, "w", **prof) as ds:
        ds.write(arr)
        for i, d in enumerate(desc, 1):
            ds.set_band_description(i, d)
    out = tmp_path / "ds.npz"
    msg = _expect_error(run_alg, "ismoe:preparedataset",
                        {"FACTORS": [src], "TARGET": str(far), "OUTPUT": str(out)}, "TARGET")
    assert "overlap" in msg.lower()
    assert not out.exists()


def test_no_overlap_in_time(run_alg, demo_region, tmp_path):
    src = os.path.join(demo_region.path, "t2m.tif")
    with rasterio.open(src) as ds:
        prof, arr = ds.profile, ds.read(list(range(1, 31)))
    later = tmp_path / "sm_2030.tif"
    prof.update(count=30)
    with rasterio.open(later, "w", **prof) as ds:
        ds.write(arr)
        for i in range(1, 31):
            ds.set_band_description(i, f"2030-01-{i:02d}")
    out = tmp_path / "ds.npz"
    msg = _expect_error(run_alg, "ismoe:preparedataset",
                        {"FACTORS": [src], "TARGET": str(later), "OUTPUT": str(out)}, "TARGET")
    assert "common" in msg
    assert not out.exists()


@pytest.mark.parametrize("patch", [4, 0, -3])
def test_patch_size_even_or_too_small(run_alg, demo_region, tmp_path, patch):
    out = tmp_path / "ds.npz"
    _expect_error(run_alg, "ismoe:preparedataset",
                  {"FACTORS": [os.path.join(demo_region.path, "t2m.tif")],
                   "TARGET": os.path.join(demo_region.path, "soil_moisture.tif"), "PATCH_SIZE": patch,
                   "OUTPUT": str(out)}, "PATCH_SIZE", "odd")
    assert not out.exists()


def test_sequence_longer_than_series(run_alg, demo_region, tmp_path):
    out = tmp_path / "ds.npz"
    _expect_error(run_alg, "ismoe:preparedataset",
                  {"FACTORS": [os.path.join(demo_region.path, "t2m.tif")],
                   "TARGET": os.path.join(demo_region.path, "soil_moisture.tif"), "SEQ_LEN": 5000,
                   "OUTPUT": str(out)}, "SEQ_LEN", "longer")
    assert not out.exists()


def test_predict_with_other_factor_set(pipeline, run_alg, demo_region, tmp_path):
    layers = [os.path.join(demo_region.path, "t2m.tif"), os.path.join(demo_region.path, "precipitation.tif")]
    out = tmp_path / "pred"
    _expect_error(run_alg, "ismoe:predict", {"MODEL_FILE": pipeline["model"], "FACTORS": layers,
                                             "OUTPUT": str(out)}, "FACTORS", "snow_depth")
    assert not (out / "sm.tif").exists()


def test_train_cancel_keeps_best_model(pipeline, run_alg, recording_feedback, tmp_path):
    """Cancel early in epoch 2: training stops within one batch, the best model so far (epoch 1) is kept,
    the partial epoch and the final scoring are skipped (cancel returns within seconds) and the log says so."""
    model = tmp_path / "m.pt"
    fb = recording_feedback(cancel_at_progress=60)
    res, fb = run_alg("ismoe:train", {"DATASET": pipeline["ds"], "OUTPUT": str(model), **FAST_TRAIN}, feedback=fb)
    assert model.exists() and res["BEST_EPOCH"] == 1
    assert "cancelled" in fb.text.lower() and "keeping the best model" in fb.text
    assert "final validation and test scoring are skipped" in fb.text
    from ismoe_qgis.model.io import load_model
    _, _, info = load_model(str(model))
    assert len(info["history"]) == 1 and info["cancelled"] is True
    assert res["VAL_CC"] == info["history"][0]["val_cc"]


def test_missing_dataset_file(run_alg, tmp_path):
    _expect_error(run_alg, "ismoe:train", {"DATASET": str(tmp_path / "nope.npz"), "OUTPUT": str(tmp_path / "m.pt")},
                  "DATASET")
