"""Issue 13, items 1, 2, 7, 8: bad numbers, bad parameter values, bad files, no writes next to inputs.

One test per class, through processing.run where the behaviour is the algorithm's. Every error must name
the parameter or file and leave no output behind. Small synthetic inputs (tests/test_input_errors.py
helpers), so this runs without ../shared/data.
"""
import json
import os
import pickle
import subprocess

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from test_input_errors import (DAYS, SIZE, START, expect_error, no_output, point,  # noqa: E402,F401
                               prepare_params, tiny_model, write_geojson, write_series, write_table)


def plausible(seed, lo=0.1, hi=0.4):
    rng = np.random.default_rng(seed)
    return (lo + (hi - lo) * rng.random((DAYS, SIZE, SIZE))).astype(np.float32)


def with_units(path, units):
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(units=units)
    return path


@pytest.fixture
def good(tmp_path):
    """A temperature factor in K and a soil-moisture target in m3/m3, both plausible, in their own folder."""
    d = tmp_path / "inputs"
    d.mkdir()
    t2m = with_units(write_series(d / "t2m.tif", 270 + 20 * plausible(1, 0, 1)), "K")
    sm = write_series(d / "sm.tif", plausible(2))
    return {"dir": d, "t2m": t2m, "sm": sm}


def sidecars(folder):
    return sorted(str(p) for p in folder.rglob("*.aux.xml"))


# ------------------------------------------------------------------ 1. one validation layer for numbers
def test_non_finite_and_implausible_values_become_nodata_with_a_warning_or_fail_in_strict_mode(run_alg, tmp_path):
    t = 270 + 20 * plausible(1, 0, 1)
    t[2, 0, :2] = np.inf                      # 2017-01-03: 2 x inf
    t[4, 5, 5] = 3.4e38                       # 2017-01-05: a float32 fill value
    t[6, 1, 1] = 21.5                         # 2017-01-07: degC in a K layer
    factor = with_units(write_series(tmp_path / "t2m.tif", t), "K")
    y = plausible(2)
    y[1, 3, 3] = 1.7                          # 2017-01-02: 1.7 m3/m3
    target = write_series(tmp_path / "sm.tif", y)
    out = tmp_path / "ds.npz"
    _, fb = run_alg("ismoe:preparedataset", prepare_params(factor, out, TARGET=target))
    warnings = fb.of_kind("warning")
    w = next(x for x in warnings if "'t2m'" in x)
    assert "FACTORS" in w and "3 non-finite" in w and "2017-01-03 (band 3): 2" in w and "2017-01-05 (band 5): 1" in w
    assert "1 value(s) outside the plausible range of temperature (150..350, K)" in w and "2017-01-07" in w
    assert "read as nodata" in w
    wt = next(x for x in warnings if x.startswith("warning: TARGET"))
    assert "0..1, m3/m3" in wt and "2017-01-02 (band 2): 1" in wt and "1.7" in wt
    from ismoe_qgis.data.cube import Cube
    cube = Cube.load(str(out))
    assert np.isnan(cube.x[0, 2, 0, :2]).all() and np.isnan(cube.x[0, 4, 5, 5]) and np.isnan(cube.x[0, 6, 1, 1])
    assert np.isfinite(cube.x[0, 3]).all()                        # neighbours of bad pixels are untouched
    assert all(np.isfinite(v) for v in cube.x_mean + cube.x_std + [cube.y_mean, cube.y_std])
    assert 270 < cube.x_mean[0] < 290

    # STRICT: the same inputs are an error naming the layer and the dates; no file is written
    out2 = tmp_path / "strict.npz"
    expect_error(run_alg, "ismoe:preparedataset", prepare_params(factor, out2, TARGET=target, STRICT=True),
                 "FACTORS", "'t2m'", "non-finite", "2017-01-03", "STRICT is on")
    assert no_output(out2)

    # a layer that is mostly out of range is in another unit: an error in both modes
    pct = write_series(tmp_path / "sm_percent.tif", plausible(3) * 100)
    out3 = tmp_path / "pct.npz"
    expect_error(run_alg, "ismoe:preparedataset", prepare_params(factor, out3, TARGET=pct),
                 "TARGET", "outside the plausible range of soil moisture", "another unit", "divide percent by 100")
    assert no_output(out3)


def test_station_values_are_screened_and_named_by_station(run_alg, good, tmp_path):
    pts = write_geojson(tmp_path / "stations.geojson", [point("A", 10.25, 49.75), point("B", 10.55, 49.55)])
    rows = [(s, str(START + i), 0.2 + 0.01 * i) for s in "AB" for i in range(DAYS)]
    rows[3] = ("A", str(START + 3), 23.0)              # percent in an m3/m3 table
    rows[DAYS + 5] = ("B", str(START + 5), "inf")
    table = write_table(tmp_path / "obs.csv", rows)
    out = tmp_path / "ds.npz"
    _, fb = run_alg("ismoe:preparedataset", prepare_params(good["t2m"], out, STATIONS=pts, STATION_TABLE=table))
    w = next(x for x in fb.of_kind("warning") if "STATION_TABLE" in x)
    assert "1 non-finite value(s)" in w and "station B: 1" in w
    assert "outside the plausible range of soil moisture (0..1, m3/m3)" in w and "station A: 1" in w and "23" in w
    from ismoe_qgis.data.cube import Cube
    cube = Cube.load(str(out))
    assert np.isnan(cube.y[3, cube.station_ids.index("A")]) and np.isnan(cube.y[5, cube.station_ids.index("B")])
    out2 = tmp_path / "strict.npz"
    expect_error(run_alg, "ismoe:preparedataset", prepare_params(good["t2m"], out2, STATIONS=pts,
                                                                 STATION_TABLE=table, STRICT=True),
                 "STATION_TABLE", "station A", "STRICT is on")
    assert no_output(out2)


def test_statistics_are_float64_and_never_nan_or_inf():
    from ismoe_qgis.data.cube import Cube
    x = np.full((2, 6, 3, 3), 3.0e38, np.float32)     # float32 sums and squares overflow
    x[1] = np.nan
    x[0, 0, 0, 0] = np.inf
    y = np.full((6, 1), 0.2, np.float32)
    cube = Cube(x=x, y=y, target_rows=[1], target_cols=[1], dates=np.arange(START, START + 6),
                factors={"a": ["a"], "b": ["b"]}, variables=["a", "b"], grid={}, patch_size=1, seq_len=2)
    assert cube.x_mean[0] == pytest.approx(3.0e38, rel=1e-6) and cube.x_std[0] == 1.0   # constant: std 1
    assert (cube.x_mean[1], cube.x_std[1]) == (0.0, 1.0)                                 # no finite value
    assert cube.y_mean == pytest.approx(0.2) and cube.y_std == 1.0


# ------------------------------------------------------------------ 2. parameter checks with useful words
def test_rejected_parameter_values_say_what_is_allowed(run_alg, good, tmp_path):
    out = tmp_path / "ds.npz"
    base = prepare_params(good["t2m"], out, TARGET=good["sm"])
    expect_error(run_alg, "ismoe:preparedataset", {**base, "STEP_DAYS": 0}, "STEP_DAYS", "0 is out of range",
                 "1 or more")
    missing = str(tmp_path / "missing.tif")
    expect_error(run_alg, "ismoe:preparedataset", {**base, "FACTORS": [good["t2m"], missing]}, "FACTORS",
                 "file not found", missing)
    text = tmp_path / "notes.txt"
    text.write_text("not a raster\n")
    expect_error(run_alg, "ismoe:preparedataset", {**base, "FACTORS": [str(text)]}, "FACTORS", str(text),
                 "is not a raster GDAL can read")
    assert no_output(out)
    # a patch larger than the raster
    expect_error(run_alg, "ismoe:preparedataset", {**base, "PATCH_SIZE": 15}, "PATCH_SIZE (15)",
                 f"larger than the reference grid ({SIZE} x {SIZE} pixels)", f"PATCH_SIZE <= {SIZE - 1}")
    assert no_output(out)

    run_alg("ismoe:preparedataset", base)
    model = tmp_path / "m.pt"
    train = {"DATASET": str(out), "EPOCHS": 1, "OUTPUT": str(model)}
    expect_error(run_alg, "ismoe:train", {**train, "EPOCHS": 0}, "EPOCHS", "0 is out of range", "1 or more",
                 "default 30")
    expect_error(run_alg, "ismoe:train", {**train, "DEVICE": 9}, "DEVICE", "9 is not one of the choices",
                 "0 = auto, 1 = cuda, 2 = cpu")
    expect_error(run_alg, "ismoe:train", {**train, "DATASET": str(tmp_path / "nope.npz")}, "DATASET",
                 "file not found", "nope.npz")
    assert not model.exists()


def test_dates_in_the_wrong_order_and_ranges_cut_at_the_data(run_alg, tiny_model, tmp_path):
    path, layers = tiny_model
    out = tmp_path / "pred"
    params = {"MODEL_FILE": path, "FACTORS": layers, "TILE_SIZE": 8, "OUTPUT": str(out)}
    expect_error(run_alg, "ismoe:predict", {**params, "DATE_FROM": "2017-01-15", "DATE_TO": "2017-01-10"},
                 "DATE_FROM (2017-01-15) is after DATE_TO (2017-01-10)")
    assert not out.exists()
    expect_error(run_alg, "ismoe:predict", {**params, "DATE_FROM": "2018-01-01"}, "DATE_FROM (2018-01-01)",
                 "after the last day", str(START + DAYS - 1))
    assert not out.exists()
    _, fb = run_alg("ismoe:predict", {**params, "DATE_FROM": "2016-12-01", "DATE_TO": "2017-03-01"})
    w = fb.of_kind("warning")
    assert any("DATE_FROM 2016-12-01" in x and f"outputs start on {START + 4}" in x for x in w), w
    assert any("DATE_TO 2017-03-01" in x and f"outputs end on {START + DAYS - 1}" in x for x in w), w
    man = json.loads((out / "prediction.json").read_text())
    assert man["dates"][0] == str(START + 4) and man["dates"][-1] == str(START + DAYS - 1)


def test_a_test_period_without_data_is_refused_before_training(run_alg, good, tmp_path):
    y = plausible(2)
    y[14:] = np.nan                            # no observation from 2017-01-15
    target = write_series(tmp_path / "sm_short.tif", y)
    ds = tmp_path / "ds.npz"
    run_alg("ismoe:preparedataset", prepare_params(good["t2m"], ds, TARGET=target))
    model, log = tmp_path / "m.pt", tmp_path / "train.jsonl"
    train = {"DATASET": str(ds), "EPOCHS": 1, "OUTPUT": str(model), "LOG": str(log), "VAL_START": "2017-01-10"}
    expect_error(run_alg, "ismoe:train", {**train, "TEST_START": "2017-01-16"}, "TEST_START",
                 "holds no soil-moisture value", "2017-01-16..2017-01-20")
    expect_error(run_alg, "ismoe:train", {**train, "TEST_START": "2018-06-01"}, "TEST_START (2018-06-01)",
                 "outside the dataset's dates", "2017-01-01..2017-01-20")
    assert not model.exists() and not log.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".") or ".part" in p or p.endswith(".tmp")] == []


# ------------------------------------------------------------------ 7. every file read is validated
def test_truncated_or_foreign_dataset_files_are_named(run_alg, good, tiny_model, tmp_path):
    ds = tmp_path / "ds.npz"
    run_alg("ismoe:preparedataset", prepare_params(good["t2m"], ds, TARGET=good["sm"]))
    raw = ds.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(raw[:len(raw) // 2])
    model = tmp_path / "m.pt"
    msg = expect_error(run_alg, "ismoe:train", {"DATASET": str(cut), "EPOCHS": 1, "OUTPUT": str(model)},
                       str(cut), "is truncated or damaged", "ismoe:preparedataset")
    assert "Traceback" not in msg and not model.exists()
    junk = tmp_path / "junk.npz"
    junk.write_bytes(os.urandom(2048))
    expect_error(run_alg, "ismoe:train", {"DATASET": str(junk), "EPOCHS": 1, "OUTPUT": str(model)},
                 str(junk), "is not an ismoe dataset file", "not a .npz archive")
    ev = tmp_path / "eval"
    expect_error(run_alg, "ismoe:evaluate", {"MODELS": [tiny_model[0]], "DATASET": str(cut), "OUTPUT": str(ev)},
                 str(cut), "truncated")
    assert not model.exists() and not ev.exists()


def test_model_files_are_checked_before_their_weights_are_loaded(run_alg, tiny_model, tmp_path):
    torch = pytest.importorskip("torch")
    path, layers = tiny_model
    out = tmp_path / "pred"
    params = {"FACTORS": layers, "TILE_SIZE": 8, "OUTPUT": str(out)}
    blob = torch.load(path, weights_only=True)
    key = next(k for k, v in blob["state_dict"].items() if v.ndim >= 2)
    shape = tuple(blob["state_dict"][key].shape)
    blob["state_dict"][key] = torch.zeros((shape[0] + 1,) + shape[1:])
    bad = tmp_path / "wrong_shapes.pt"
    torch.save(blob, bad)
    msg = expect_error(run_alg, "ismoe:predict", {**params, "MODEL_FILE": str(bad)}, str(bad), f"'{key}'",
                       f"has shape ({shape[0] + 1}, ", "configuration in its header needs")
    assert "size mismatch" not in msg
    noise = tmp_path / "noise.pt"
    noise.write_bytes(os.urandom(4096))
    msg = expect_error(run_alg, "ismoe:predict", {**params, "MODEL_FILE": str(noise)}, str(noise),
                       "is not a model file of this plugin", "neither a torch file nor a pickle")
    assert "weights_only" not in msg and "file an issue" not in msg
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    evil = tmp_path / "evil.pt"
    torch.save({"header": "{}", "state_dict": Payload()}, evil)
    msg = expect_error(run_alg, "ismoe:predict", {**params, "MODEL_FILE": str(evil)}, str(evil),
                       "is not a model file of this plugin", "nothing in it was run")
    assert "weights_only" not in msg and not marker.exists()
    with open(tmp_path / "plain.pt", "wb") as f:
        pickle.dump({"header": json.dumps({"format": "ismoe-model/1"}), "state_dict": {}}, f)
    expect_error(run_alg, "ismoe:predict", {**params, "MODEL_FILE": str(tmp_path / "plain.pt")},
                 "plain.pt", "is not a model file of this plugin", "pickle")
    assert not out.exists()


def test_prediction_json_paths_stay_inside_their_folder(run_alg, tiny_model, tmp_path):
    from ismoe_qgis.model.prediction_folder import ManifestError, read_manifest
    path, layers = tiny_model
    pred = tmp_path / "pred"
    run_alg("ismoe:predict", {"MODEL_FILE": path, "FACTORS": layers, "TILE_SIZE": 8, "OUTPUT": str(pred)})
    assert read_manifest(str(pred))["factors"] == ["temperature", "rain"]
    good_json = (pred / "prediction.json").read_text()
    png, csv = tmp_path / "chart.png", tmp_path / "chart.csv"
    params = {"INPUT": str(pred), "OUTPUT_PNG": str(png), "OUTPUT_CSV": str(csv)}
    for rel, words in (("../../../etc/passwd", ("'weights.temperature'", "points outside the prediction folder")),
                       ("/etc/passwd", ("'weights.temperature'", "absolute path"))):
        man = json.loads(good_json)
        man["weights"]["temperature"] = rel
        (pred / "prediction.json").write_text(json.dumps(man))
        expect_error(run_alg, "ismoe:seasonalimportance", params, "INPUT", "prediction.json", *words)
        assert not png.exists() and not csv.exists()
    os.symlink("/etc", pred / "escape")                   # a link out of the folder is refused as well
    man = json.loads(good_json)
    man["sm"] = "escape/passwd"
    (pred / "prediction.json").write_text(json.dumps(man))
    with pytest.raises(ManifestError, match="'sm' .*points outside the prediction folder"):
        read_manifest(str(pred))
    (pred / "prediction.json").write_text("[1, 2")
    with pytest.raises(ManifestError, match="prediction.json could not be read"):
        read_manifest(str(pred))


# ------------------------------------------------------------------ 8. no writes next to inputs
def test_reading_inputs_writes_nothing_next_to_them(run_alg, good, tiny_model, tmp_path):
    """Loading a raster layer in QGIS computes statistics, which GDAL keeps in <file>.aux.xml (PAM): prepare
    and predict load their inputs with PAM off, so the input folders are left as they were."""
    before = sorted(os.listdir(good["dir"]))
    run_alg("ismoe:preparedataset", prepare_params(good["t2m"], tmp_path / "ds.npz", TARGET=good["sm"],
                                                   REFERENCE=good["t2m"]))
    assert sidecars(good["dir"]) == [] and sorted(os.listdir(good["dir"])) == before
    path, layers = tiny_model
    run_alg("ismoe:predict", {"MODEL_FILE": path, "FACTORS": layers, "REFERENCE": layers[0], "TILE_SIZE": 8,
                              "OUTPUT": str(tmp_path / "pred")})
    assert [p for p in os.listdir(tmp_path) if p.endswith(".aux.xml")] == []


def test_read_only_input_folder(run_alg, good, tmp_path):
    """On a read-only input folder prepare works and writes nothing there. Made read-only by chmod (non-root)
    or a read-only bind mount (root); skipped when neither is possible."""
    folder = str(good["dir"])
    mounted = False
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
    else:
        rc = subprocess.run(["mount", "--bind", "-o", "ro", folder, folder], capture_output=True).returncode
        if rc != 0:
            pytest.skip("running as root without permission to bind-mount: a read-only folder cannot be made "
                        "(test_reading_inputs_writes_nothing_next_to_them checks that nothing is written)")
        mounted = True
    try:
        with pytest.raises(OSError):
            open(os.path.join(folder, "probe"), "w").close()
        out = tmp_path / "ds.npz"
        run_alg("ismoe:preparedataset", prepare_params(good["t2m"], out, TARGET=good["sm"]))
        assert out.exists() and sidecars(good["dir"]) == []
    finally:
        if mounted:
            subprocess.run(["umount", folder], check=False)
        else:
            os.chmod(folder, 0o755)
