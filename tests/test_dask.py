"""Prediction as a Dask graph (issue 15 item 3, ismoe_qgis/model/parallel.py): the same prediction folder as the
serial tile loop, for windowed and stateful models, on a real local dask.distributed cluster; an unreachable
scheduler is a clear error within the connect timeout; a failing task leaves no output."""
import csv
import json
import os
import socket

import numpy as np
import pytest
import rasterio

pytest.importorskip("torch")
pytest.importorskip("distributed")

from prediction_fixtures import write_stack  # noqa: E402

H, W, DAYS = 40, 36, 30
FACTORS = {"temperature": ["t2m"], "rain": ["rain"], "snow": ["sd"]}
VARIABLES = ["t2m", "rain", "sd"]
START = np.datetime64("2019-01-01")
RASTERS = ["sm.tif", "weight_temperature.tif", "weight_rain.tif", "weight_snow.tif", "dominant_factor.tif"]


def _model(path, seed, **kw):
    import torch
    from ismoe_qgis.model.io import save_model
    from ismoe_qgis.model.networks import ModelConfig, SoilMoistureNet
    cfg = ModelConfig(factors=FACTORS, variables=VARIABLES, patch_size=3, seq_len=4, conv_channels=2, hidden=4,
                      router_hidden=4, x_mean=[0.5] * 3, x_std=[0.3] * 3, y_mean=0.25, y_std=0.05, **kw)
    torch.manual_seed(seed)
    save_model(str(path), SoilMoistureNet(cfg).eval())
    return str(path)


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    """Demo-like small region: three 40 x 36 x 30-day layers in UTM with a nodata corner and a gap day, a windowed
    and a stateful model (random weights: the test is about execution, not skill)."""
    from rasterio.transform import from_origin
    d = tmp_path_factory.mktemp("dask")
    rng = np.random.default_rng(7)
    dates = [str(START + i) for i in range(DAYS)]
    layers = {}
    for v in VARIABLES:
        a = rng.random((DAYS, H, W)).astype(np.float32)
        a[:, :5, :4] = -9999.0             # nodata corner
        a[11, 20:, 10:14] = -9999.0         # a gap on one day
        p = str(d / f"{v}.tif")
        write_stack(p, a, from_origin(500000.0, 4000000.0, 1000.0, 1000.0), dates=dates, tiled=True)
        layers[v] = p
    return {"dir": d, "layers": layers, "window": _model(d / "window.pt", 1),
            "stateful": _model(d / "stateful.pt", 2, memory="stateful", spin_up=6),
            "ensemble": _model(d / "ensemble.pt", 3, members=2, member_seeds=[1, 2])}


def _read(folder):
    out = {}
    for fn in RASTERS:
        with rasterio.open(os.path.join(folder, fn)) as ds:
            out[fn] = ds.read()
    with open(os.path.join(folder, "prediction.json")) as f:
        man = json.load(f)
    return out, man


def _predict(region, kind, out, **kw):
    from ismoe_qgis.core_callbacks import Callbacks
    from ismoe_qgis.model.predict import predict_layers
    logs = []
    man = predict_layers(region[kind], region["layers"], str(out), tile_size=16, time_chunk=7, device="cpu",
                         callbacks=Callbacks(log=logs.append), **kw)
    return man, logs


@pytest.fixture(scope="module")
def cluster():
    """One real local cluster (2 worker processes, 1 thread each) shared by the tests, as predict starts one."""
    from ismoe_qgis.model.parallel import start_local_cluster
    c = start_local_cluster(2)
    yield c
    c.close()


@pytest.mark.parametrize("kind", ["window", "stateful", "ensemble"])
def test_dask_prediction_equals_serial(region, cluster, tmp_path, kind):
    """Serial (WORKERS=1) and the Dask graph on a scheduler address give the same rasters (to 1e-6), the same
    manifest and the same seasonal importance; the logs say which ran."""
    serial_man, serial_logs = _predict(region, kind, tmp_path / "serial", workers=1)
    dask_man, dask_logs = _predict(region, kind, tmp_path / "dask", scheduler=cluster.scheduler_address)
    assert any(m.startswith("execution: serial (WORKERS=1)") for m in serial_logs)
    assert any(m.startswith(f"execution: Dask scheduler {cluster.scheduler_address}") for m in dask_logs)
    a, _ = _read(tmp_path / "serial")
    b, _ = _read(tmp_path / "dask")
    for fn in RASTERS:
        assert a[fn].shape == b[fn].shape == (DAYS - 3, H, W), fn        # SEQ_LEN 4: 3 input days first
        np.testing.assert_allclose(b[fn], a[fn], rtol=0, atol=1e-6, err_msg=fn)
    assert (a["sm.tif"] == -9999.0).any() and (a["sm.tif"] != -9999.0).mean() > 0.8   # nodata corner + real values
    if serial_man["variance_share"] is not None:      # the per-pixel variance shares, merged from chunks in any order
        for fn in serial_man["variance_share"]["files"].values():
            with rasterio.open(tmp_path / "serial" / fn) as x, rasterio.open(tmp_path / "dask" / fn) as y:
                va, vb = x.read(), y.read()
            assert va.shape == (len(serial_man["variance_share"]["bands"]), H, W) and (va[va != -9999.0] > 0).any(), fn
            np.testing.assert_allclose(vb, va, rtol=0, atol=1e-5, err_msg=fn)
        assert dask_man["variance_share"]["area_mean"] == pytest.approx(serial_man["variance_share"]["area_mean"],
                                                                        abs=1e-5)
    for key in ("dates", "factors", "memory", "sm_range", "nodata"):
        assert dask_man[key] == serial_man[key], key
    if kind == "stateful":
        assert serial_man["memory"]["mode"] == "stateful" and serial_man["memory"]["spin_up"] == 6
    if kind == "ensemble":            # the members' spread rasters too
        assert serial_man["ensemble"]["members"] == 2
        for fn in [serial_man["ensemble"]["sm_spread"], *serial_man["ensemble"]["weight_spread"].values()]:
            with rasterio.open(tmp_path / "serial" / fn) as x, rasterio.open(tmp_path / "dask" / fn) as y:
                sa, sb = x.read(), y.read()
            assert (sa[sa != -9999.0] > 0).any(), fn
            np.testing.assert_allclose(sb, sa, rtol=0, atol=1e-6, err_msg=fn)
    imp_a, imp_b = (list(csv.DictReader(open(tmp_path / k / "importance.csv", encoding="utf-8")))
                     for k in ("serial", "dask"))
    assert len(imp_a) == len(imp_b) > 0
    for ra, rb in zip(imp_a, imp_b):
        assert [ra[k] for k in ("region", "period_kind", "period", "factor", "n")] == \
            [rb[k] for k in ("region", "period_kind", "period", "factor", "n")]
        assert float(rb["mean_weight"]) == pytest.approx(float(ra["mean_weight"]), abs=1e-9)


def test_local_cluster_from_workers(region, tmp_path):
    """WORKERS=2 starts its own local cluster (2 processes) and closes it; same output as serial."""
    _predict(region, "window", tmp_path / "serial", workers=1)
    _, logs = _predict(region, "window", tmp_path / "local", workers=2)
    assert any(m.startswith("execution: local Dask cluster of 2 worker processes") for m in logs)
    a, _ = _read(tmp_path / "serial")
    b, _ = _read(tmp_path / "local")
    for fn in RASTERS:
        np.testing.assert_allclose(b[fn], a[fn], rtol=0, atol=1e-6, err_msg=fn)


def test_auto_is_serial_for_a_small_prediction(region, tmp_path):
    """WORKERS=0 (default): this small region does not pay for a cluster: serial, and said so."""
    _, logs = _predict(region, "window", tmp_path / "auto")
    assert any(m.startswith("execution: serial (WORKERS=0 (auto)") or m.startswith("execution: serial (WORKERS=0")
               for m in logs), logs


def test_unreachable_scheduler_is_a_clear_error_within_the_timeout(region, tmp_path):
    """A scheduler address where nothing listens: SchedulerError naming SCHEDULER and the address after the
    connect timeout (dask's distributed.comm.timeouts.connect), no hang and no output folder."""
    import dask
    from ismoe_qgis.model.parallel import SchedulerError
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                             # a free port: connection refused
    addr = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "never"
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        with pytest.raises(SchedulerError) as e:
            _predict(region, "window", out, scheduler=addr)
    msg = str(e.value)
    assert msg.startswith(f"SCHEDULER: could not connect to the Dask scheduler at '{addr}' within 3 s")
    assert not out.exists()


def test_a_failing_task_leaves_no_partial_output(region, cluster, tmp_path):
    """A layer whose last blocks are cut off (a broken copy): the header opens, so predict starts, and the task that
    reads the damaged tile fails on its worker. Its error reaches the caller, the other tasks are cancelled, and
    neither the output folder nor a staging folder is left; an earlier prediction there is kept as it was."""
    import shutil
    d = tmp_path / "broken"
    d.mkdir()
    layers = dict(region["layers"])
    bad = str(d / "rain.tif")
    shutil.copy(layers["rain"], bad)
    size = os.path.getsize(bad)
    with open(bad, "r+b") as f:
        f.truncate(size - size // 3)
    layers["rain"] = bad
    from ismoe_qgis.core_callbacks import Callbacks
    from ismoe_qgis.model.predict import predict_layers
    out = tmp_path / "out"
    with pytest.raises(Exception) as e:
        predict_layers(region["window"], layers, str(out), tile_size=16, time_chunk=7, device="cpu",
                       scheduler=cluster.scheduler_address, callbacks=Callbacks())
    assert "rain.tif" in str(e.value), str(e.value)          # names the damaged layer file
    assert not out.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
    # an earlier prediction in the folder survives a failed run untouched
    _predict(region, "window", out, workers=1)
    before = {fn: os.path.getmtime(out / fn) for fn in RASTERS}
    with pytest.raises(Exception):
        predict_layers(region["window"], layers, str(out), tile_size=16, time_chunk=7, device="cpu",
                       scheduler=cluster.scheduler_address, callbacks=Callbacks())
    assert {fn: os.path.getmtime(out / fn) for fn in RASTERS} == before
    assert "prediction.json" in os.listdir(out)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_cancel_while_tasks_run_leaves_no_output(region, cluster, tmp_path):
    """Cancel (is_cancelled) after the first finished task: Cancelled is raised, the remaining tasks are cancelled,
    and no output folder is left."""
    from ismoe_qgis.core_callbacks import Callbacks, Cancelled
    from ismoe_qgis.model.predict import predict_layers
    seen = []
    cb = Callbacks(progress=seen.append, is_cancelled=lambda: bool(seen))
    out = tmp_path / "cancelled"
    with pytest.raises(Cancelled):
        predict_layers(region["window"], region["layers"], str(out), tile_size=16, time_chunk=7, device="cpu",
                       scheduler=cluster.scheduler_address, callbacks=cb)
    assert len(seen) >= 1 and max(seen) < 1.0
    assert not out.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_workers_must_be_a_count():
    from ismoe_qgis.model.parallel import plan_workers
    with pytest.raises(ValueError, match="WORKERS must be 0"):
        plan_workers(-1)
    assert plan_workers(1).mode == "serial"
    p = plan_workers(0, n_parallel=50, pixel_days=10 ** 9)
    # sized by the idle CPUs (the load average moves, so only the form is checked here)
    assert "WORKERS=0 (auto)" in p.describe() and "idle CPU(s)" in p.describe()
    assert (p.mode, p.workers >= 2) in (("local", True), ("serial", False))
    assert plan_workers(0, n_parallel=1, pixel_days=10 ** 9).mode == "serial"
    assert plan_workers(3, n_parallel=1).workers == 3


@pytest.mark.qgis_process
def test_qgis_process_predict_on_a_local_cluster_and_a_bad_scheduler(region, tmp_path, qgis_process):
    """ismoe:predict in the real qgis_process (whose executable is not a Python: the worker processes must be
    spawned with one) with WORKERS=2 writes the serial prediction; an unreachable SCHEDULER fails the algorithm
    with the message naming SCHEDULER (after the connect timeout given through dask's environment config) and
    leaves no output folder."""
    qgis_process.ensure_enabled()
    _predict(region, "window", tmp_path / "serial", workers=1)
    params = {"MODEL_FILE": region["window"], "FACTORS": [region["layers"][v] for v in VARIABLES], "TILE_SIZE": 16,
              "LOAD_OUTPUTS": False}
    r = qgis_process.run("ismoe:predict", {**params, "WORKERS": 2, "OUTPUT": str(tmp_path / "qp")})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "execution: local Dask cluster of 2 worker processes" in r.stdout + r.stderr
    a, _ = _read(tmp_path / "serial")
    b, _ = _read(tmp_path / "qp")
    for fn in RASTERS:
        np.testing.assert_allclose(b[fn], a[fn], rtol=0, atol=1e-6, err_msg=fn)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    key = "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT"
    old = qgis_process.env.get(key)
    qgis_process.env[key] = "3s"
    try:
        r = qgis_process.run("ismoe:predict", {**params, "SCHEDULER": f"tcp://127.0.0.1:{port}",
                                               "OUTPUT": str(tmp_path / "never")})
    finally:
        if old is None:
            qgis_process.env.pop(key)
        else:
            qgis_process.env[key] = old
    assert r.returncode != 0
    assert f"SCHEDULER: could not connect to the Dask scheduler at 'tcp://127.0.0.1:{port}' within 3 s" in \
        r.stdout + r.stderr
    assert not (tmp_path / "never").exists()


def test_prepare_block_reads_on_dask_write_the_serial_cube(demo_region, cluster, tmp_path):
    """prepare_dataset(out_path=*.zarr) with its factor block reads as Dask tasks (scheduler address) writes the same
    cube as the serial reads: every array and the per-block statistics to the bit (blocks are consumed in order),
    and the same log messages."""
    from ismoe_qgis.core_callbacks import Callbacks
    from ismoe_qgis.data.cube import Cube
    from ismoe_qgis.data.prepare import prepare_dataset
    man = demo_region.manifest
    factors = {f: [(v, str(demo_region.path / man["layers"][v])) for v in vs] for f, vs in man["factors"].items()}
    target = str(demo_region.path / man["target"])
    kw = dict(patch_size=5, seq_len=7, chunks=(1, 100, 10, 16), block_bytes=1)      # many small blocks
    logs_s, logs_d = [], []
    prepare_dataset(factors, target, out_path=str(tmp_path / "s.zarr"), workers=1, callbacks=Callbacks(log=logs_s.append),
                    **kw)
    prepare_dataset(factors, target, out_path=str(tmp_path / "d.zarr"), scheduler=cluster.scheduler_address,
                    callbacks=Callbacks(log=logs_d.append), **kw)
    assert any(m.startswith("block reads: Dask scheduler") for m in logs_d)
    same = [[m.replace(f"{k}.zarr", "cube.zarr") for m in logs if not m.startswith(("block reads:", "Dask scheduler"))]
            for k, logs in (("s", logs_s), ("d", logs_d))]
    assert same[0] == same[1] and any("48 block(s)" in m for m in same[0])
    a, b = Cube.load(str(tmp_path / "s.zarr")), Cube.load(str(tmp_path / "d.zarr"))
    xa = np.asarray(a.x)
    assert np.isfinite(xa).mean() > 0.5
    np.testing.assert_array_equal(np.asarray(b.x), xa)
    np.testing.assert_array_equal(b.y, a.y)
    np.testing.assert_array_equal(b.centre_valid(), a.centre_valid())
    assert list(b.x_mean) == list(a.x_mean) and list(b.x_std) == list(a.x_std)
    assert (b.y_mean, b.y_std) == (a.y_mean, a.y_std)
