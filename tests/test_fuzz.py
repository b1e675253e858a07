"""Fuzz test of the inputs (issue 13 item 9): a seeded generator of corrupted inputs, run through
processing.run (and a few through the real qgis_process).

Each case takes a valid input (factor/target GeoTIFFs, a dataset file, a model file, a prediction folder),
corrupts it one way (random truncation, byte flips, another dtype, NaN/inf sprinkles, another band count,
the CRS stripped) and runs the algorithm that reads it. Every case must end in success (the outputs
complete, nothing hidden left) or in a QgsProcessingException whose text has no traceback, with no partial
output (the output folder of the case stays empty).

The seed and the case count are in the test names: ``test_fuzz_processing_seed1313_cases24[case07-...]`` is
reproduced by ``pytest tests/test_fuzz.py -k case07``; cases are independent (case i draws from
numpy's default_rng([SEED, i])).
"""
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
rasterio = pytest.importorskip("rasterio")

from qgis.core import QgsProcessingException  # noqa: E402

SEED = 1313
N_CASES = 24
N_QGIS_PROCESS = 3
DAYS, SIZE, RES, ORIGIN = 60, 12, 0.1, (10.0, 50.0)
START = np.datetime64("2017-01-01")
KINDS = ["truncate", "flip", "dtype", "nonfinite", "bands", "nocrs"]
TARGETS = {  # what is corrupted -> the kinds that apply to it
    "factor": KINDS, "target": KINDS, "dataset": ["truncate", "flip"], "model": ["truncate", "flip"],
    "manifest": ["truncate", "flip"]}


def write_raster(path, data, crs="EPSG:4326", dtype="float32", nodata=-9999.0):
    count, h, w = data.shape
    prof = dict(driver="GTiff", width=w, height=h, count=count, dtype=dtype,
                transform=rasterio.Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1]))
    if crs:
        prof["crs"] = crs
    if nodata is not None and not np.issubdtype(np.dtype(dtype), np.complexfloating):
        prof["nodata"] = nodata if np.issubdtype(np.dtype(dtype), np.floating) else 0
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data.astype(dtype))
        for i in range(count):
            ds.set_band_description(i + 1, str(START + i))
    return str(path)


def base_data(seed=0):
    rng = np.random.default_rng(seed)
    f = rng.random((DAYS, SIZE, SIZE)).astype(np.float32) * 30 + 270       # t2m in K
    sm = (0.2 + 0.004 * (f - 270) + 0.01 * rng.random((DAYS, SIZE, SIZE))).astype(np.float32)
    return f, sm


@pytest.fixture(scope="module")
def base(tmp_path_factory, run_alg):
    """Valid inputs: t2m.tif and sm.tif, the dataset from them, a tiny model of t2m, a prediction folder."""
    import torch
    from ismoe_qgis.model.io import save_model
    from ismoe_qgis.model.networks import ModelConfig, SoilMoistureNet
    d = tmp_path_factory.mktemp("fuzz_base")
    f, sm = base_data()
    write_raster(d / "t2m.tif", f)
    write_raster(d / "sm.tif", sm)
    run_alg("ismoe:preparedataset", {"FACTORS": [str(d / "t2m.tif")], "TARGET": str(d / "sm.tif"), "PATCH_SIZE": 3,
                                     "SEQ_LEN": 5, "OUTPUT": str(d / "ds.npz")})
    cfg = ModelConfig(factors={"temperature": ["t2m"]}, variables=["t2m"], patch_size=3, seq_len=5, conv_channels=2,
                      hidden=4, router_hidden=4, x_mean=[285.0], x_std=[9.0], y_mean=0.25, y_std=0.05)
    torch.manual_seed(0)
    save_model(str(d / "m.pt"), SoilMoistureNet(cfg).eval())
    run_alg("ismoe:predict", {"MODEL_FILE": str(d / "m.pt"), "FACTORS": [str(d / "t2m.tif")], "OUTPUT": str(d / "pred"),
                              "LOAD_OUTPUTS": False})
    return d


def corrupt_bytes(path, kind, rng):
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    if kind == "truncate":
        data = data[:int(rng.integers(0, len(data)))]
    else:                                   # flip 1..32 random bytes
        for pos in rng.integers(0, len(data), int(rng.integers(1, 33))):
            data[pos] ^= int(rng.integers(1, 256))
    with open(path, "wb") as fh:
        fh.write(bytes(data))
    return f"{kind} ({len(data)} bytes)"


def corrupt_raster(path, which, kind, rng):
    """Rewrite the factor or target raster at `path` corrupted by `kind`; returns a description."""
    f, sm = base_data()
    data = f if which == "factor" else sm
    if kind in ("truncate", "flip"):
        write_raster(path, data)
        return corrupt_bytes(path, kind, rng)
    if kind == "dtype":
        dtype = str(rng.choice(["uint8", "int16", "int32", "float64", "complex64"]))
        write_raster(path, data * (100 if dtype.startswith(("int", "uint")) else 1), dtype=dtype)
        return f"dtype {dtype}"
    if kind == "nonfinite":
        data = data.copy()
        frac = float(rng.choice([0.001, 0.05, 0.5, 1.0]))
        hit = rng.random(data.shape) < frac
        vals = rng.choice(np.array([np.nan, np.inf, -np.inf, 3.4e38], np.float32), hit.sum())
        data[hit] = vals
        write_raster(path, data, nodata=None)
        return f"non-finite sprinkle {frac}"
    if kind == "bands":
        n = int(rng.choice([1, 3, 4, 7, 80]))
        reps = np.resize(data, (n,) + data.shape[1:])
        write_raster(path, reps)
        return f"{n} bands"
    write_raster(path, data, crs=None)
    return "CRS stripped"


def make_case(i, root, base_dir):
    """(algorithm, parameters, output paths, description) of case i; inputs written under root/'in',
    outputs go to root/'out' (empty)."""
    rng = np.random.default_rng([SEED, i])
    which = str(rng.choice(list(TARGETS)))
    kind = str(rng.choice(TARGETS[which]))
    src, out = root / "in", root / "out"
    src.mkdir()
    out.mkdir()
    for fn in ("t2m.tif", "sm.tif", "ds.npz", "m.pt"):
        shutil.copy(base_dir / fn, src / fn)
    shutil.copytree(base_dir / "pred", src / "pred")
    if which in ("factor", "target"):
        desc = corrupt_raster(str(src / ("t2m.tif" if which == "factor" else "sm.tif")), which, kind, rng)
        return ("ismoe:preparedataset", {"FACTORS": [str(src / "t2m.tif")], "TARGET": str(src / "sm.tif"),
                                         "PATCH_SIZE": 3, "SEQ_LEN": 5, "OUTPUT": str(out / "ds.npz")},
                [out / "ds.npz"], f"{which}: {desc}")
    if which == "dataset":
        desc = corrupt_bytes(src / "ds.npz", kind, rng)
        return ("ismoe:train", {"DATASET": str(src / "ds.npz"), "OUTPUT": str(out / "m.pt"), "LOG": str(out / "log"),
                                "EPOCHS": 1, "SAMPLES_PER_EPOCH": 64, "HIDDEN": 4, "CONV_CHANNELS": 2},
                [out / "m.pt", out / "log"], f"dataset: {desc}")
    if which == "model":
        desc = corrupt_bytes(src / "m.pt", kind, rng)
        return ("ismoe:predict", {"MODEL_FILE": str(src / "m.pt"), "FACTORS": [str(src / "t2m.tif")],
                                  "OUTPUT": str(out / "pred"), "LOAD_OUTPUTS": False},
                [out / "pred"], f"model: {desc}")
    desc = corrupt_bytes(src / "pred" / "prediction.json", kind, rng)
    return ("ismoe:seasonalimportance", {"INPUT": str(src / "pred"), "OUTPUT_PNG": str(out / "s.png"),
                                         "OUTPUT_CSV": str(out / "s.csv")},
            [out / "s.png", out / "s.csv"], f"prediction.json: {desc}")


def check_outcome(ok, message, outputs, out_dir, what):
    """Success: every output is there, nothing hidden beside them. Failure: a message without a traceback,
    and the case's output folder is empty."""
    left = sorted(os.listdir(out_dir))
    if ok:
        assert all(os.path.exists(p) for p in outputs), f"{what}: succeeded without its outputs ({left})"
        assert not [f for f in left if f.startswith(".")], f"{what}: hidden leftovers {left}"
    else:
        assert message.strip(), f"{what}: empty error message"
        assert "Traceback" not in message and 'File "' not in message, f"{what}: traceback in\n{message}"
        assert left == [], f"{what}: failed but left {left}\n{message}"


@pytest.mark.parametrize("case", range(N_CASES), ids=lambda i: f"case{i:02d}")
def test_fuzz_processing_seed1313_cases24(case, base, run_alg, tmp_path):
    alg, params, outputs, what = make_case(case, tmp_path, base)
    try:
        run_alg(alg, params)
        ok, message = True, ""
    except QgsProcessingException as e:
        ok, message = False, str(e)
    check_outcome(ok, message, outputs, tmp_path / "out", f"case {case} ({alg}, {what})")


@pytest.mark.qgis_process
@pytest.mark.parametrize("case", range(N_QGIS_PROCESS), ids=lambda i: f"case{i:02d}")
def test_fuzz_qgis_process_seed1313_cases3(case, base, qgis_process, tmp_path):
    """The first cases of another stream (case index N_CASES + i) through the real qgis_process: exit code 0
    with the outputs, or 1 with an error and no traceback, and nothing left."""
    alg, params, outputs, what = make_case(N_CASES + case, tmp_path, base)
    r = qgis_process.run(alg, params, timeout=300)
    text = r.stdout + r.stderr
    assert r.returncode in (0, 1), f"{what}: exit code {r.returncode}\n{text}"
    check_outcome(r.returncode == 0, text if r.returncode else "", outputs, tmp_path / "out",
                  f"qgis_process case {case} ({alg}, {what})")
    if r.returncode == 0:
        assert r.json is not None and "results" in r.json
