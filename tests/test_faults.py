"""Faults and concurrency (issue 13 items 3-6): signals, kill -9, two writers, stale files, a full disk.

Through the real qgis_process where the behaviour is about the process (signals, kill -9, a second run's
exit code); the rest through processing.run and the core. Small synthetic rasters (no ../shared/data).
"""
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

pytest.importorskip("torch")
rasterio = pytest.importorskip("rasterio")

from qgis.core import QgsProcessingException  # noqa: E402

from ismoe_qgis import fileutil  # noqa: E402
from test_input_errors import write_series  # noqa: E402

DAYS = 30


def hidden_leftovers(folder):
    return sorted(f for f in os.listdir(folder) if f.startswith(".ismoe"))


@pytest.fixture(scope="module")
def model_and_layers(tmp_path_factory):
    """A random 2-factor model (patch 3, 5 days) and two 320 x 320 x 30-day layers: a predict through
    qgis_process runs its tile loop long enough (TILE_SIZE 8: 1600 tiles, about 20 s on a 2-core machine;
    a second qgis_process starts and fails in about 3 s) to be signalled in it. With 160 x 160 the loop
    ended while the second run started on a faster CI machine."""
    import torch
    from ismoe_qgis.model.io import save_model
    from ismoe_qgis.model.networks import ModelConfig, SoilMoistureNet
    d = tmp_path_factory.mktemp("faults")
    cfg = ModelConfig(factors={"temperature": ["t2m"], "rain": ["rain"]}, variables=["t2m", "rain"],
                      patch_size=3, seq_len=5, conv_channels=2, hidden=4, router_hidden=4,
                      x_mean=[0.5, 0.5], x_std=[0.3, 0.3], y_mean=0.25, y_std=0.05)
    torch.manual_seed(0)
    path = str(d / "tiny.pt")
    save_model(path, SoilMoistureNet(cfg).eval())
    rng = np.random.default_rng(5)
    layers = [write_series(d / f"{n}.tif", rng.random((DAYS, 320, 320)).astype(np.float32)) for n in cfg.variables]
    # a 3-factor model: its prediction has a weight raster (snow) that the 2-factor model's has not
    cfg3 = ModelConfig(factors={"temperature": ["t2m"], "rain": ["rain"], "snow": ["sd"]},
                       variables=["t2m", "rain", "sd"], patch_size=3, seq_len=5, conv_channels=2, hidden=4,
                       router_hidden=4, x_mean=[0.5] * 3, x_std=[0.3] * 3, y_mean=0.25, y_std=0.05)
    path3 = str(d / "tiny3.pt")
    save_model(path3, SoilMoistureNet(cfg3).eval())
    small = [write_series(d / f"small_{n}.tif", rng.random((12, 16, 16)).astype(np.float32)) for n in cfg3.variables]
    return {"dir": d, "model": path, "layers": layers, "model3": path3, "small": small}


def small_params(m, out, three=False):
    # layer names come from the file names: small_t2m -> rename through a copy named like the variable
    return {"MODEL_FILE": m["model3" if three else "model"], "FACTORS": named_small(m, three), "TILE_SIZE": 8,
            "OUTPUT": str(out), "LOAD_OUTPUTS": False}


def named_small(m, three):
    d = m["dir"] / ("named3" if three else "named2")
    if not d.exists():
        d.mkdir()
        for src in m["small"][:3 if three else 2]:
            name = os.path.basename(src)[len("small_"):]
            os.link(src, d / name)
    return [str(d / n) for n in (["t2m.tif", "rain.tif", "sd.tif"] if three else ["t2m.tif", "rain.tif"])]


def start_predict(qgis_process, m, out, tile=8):
    qgis_process.ensure_enabled()
    args = [qgis_process.binary, "run", "ismoe:predict", "--", f"MODEL_FILE={m['model']}",
            *(f"FACTORS={p}" for p in m["layers"]), f"TILE_SIZE={tile}", f"OUTPUT={out}", "LOAD_OUTPUTS=false"]
    env = dict(qgis_process.env, OMP_NUM_THREADS="1")
    return subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for_staging(proc, parent, name, limit=240):
    """Wait (polling the file system, not the clock of the run) until the run's hidden staging folder beside
    OUTPUT holds its sm.tif: the tile loop is running. Returns the staging folder's name."""
    t_end = time.time() + limit
    while time.time() < t_end:
        for f in os.listdir(parent):
            if f.startswith(f".ismoe-tmp-{proc.pid}-") and f.endswith(name) and \
                    os.path.exists(os.path.join(parent, f, "sm.tif")):
                return f
        if proc.poll() is not None:
            pytest.fail("predict ended before its tile loop could be signalled:\n" + proc.stdout.read())
        time.sleep(0.02)
    proc.kill()
    pytest.fail("predict did not start its tile loop")


# ------------------------------------------------------------------ item 3: signals and kills
@pytest.mark.qgis_process
def test_sigint_during_train_keeps_best_model_and_says_so(qgis_process, tmp_path):
    """SIGINT (Ctrl+C) on a running qgis_process train acts like Cancel within one batch: the run stops
    within the epoch it is in (the log has at most one epoch more than when the signal was sent), the best
    model so far is kept and loads, the exit code is 1 and the message says what is kept."""
    rng = np.random.default_rng(0)
    f = rng.random((60, 12, 12)).astype(np.float32)
    write_series(tmp_path / "t2m.tif", f)
    write_series(tmp_path / "sm.tif", (0.2 + 0.1 * f).astype(np.float32))
    r = qgis_process.run("ismoe:preparedataset", {"FACTORS": str(tmp_path / "t2m.tif"), "TARGET": str(tmp_path / "sm.tif"),
                                                  "PATCH_SIZE": 3, "SEQ_LEN": 5, "OUTPUT": str(tmp_path / "ds.npz")})
    assert r.returncode == 0, r.stdout + r.stderr
    model, log = tmp_path / "m.pt", tmp_path / "train.log"
    args = [qgis_process.binary, "run", "ismoe:train", "--", f"DATASET={tmp_path / 'ds.npz'}",
            f"OUTPUT={model}", f"LOG={log}", "EPOCHS=5000", "PATIENCE=5000", "SAMPLES_PER_EPOCH=2000", "HIDDEN=8",
            "CONV_CHANNELS=4"]
    proc = subprocess.Popen(args, env=dict(qgis_process.env, OMP_NUM_THREADS="1"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sent_at = None
    while proc.poll() is None:          # the LOG is staged beside itself until the run ends
        staged = [p for p in os.listdir(tmp_path) if p.startswith(".ismoe-tmp-") and p.endswith("train.log.log")]
        if staged:
            try:
                n = open(tmp_path / staged[0]).read().count("\n")
            except FileNotFoundError:
                continue
            if n >= 3:
                proc.send_signal(signal.SIGINT)
                sent_at = n
                break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=300)
    assert sent_at is not None, out
    assert proc.returncode == 1, out
    assert "SIGINT received: stopping like Cancel" in out
    assert "interrupted by SIGINT: stopped like Cancel; the best model so far (epoch" in out
    assert f"is kept in {model}" in out and "Traceback" not in out
    epochs = [json.loads(x)["epoch"] for x in log.read_text().splitlines()]
    assert sent_at <= len(epochs) <= sent_at + 1                 # stopped within the epoch it was in
    import torch
    from ismoe_qgis.model.io import load_model
    _, _, info = load_model(str(model), torch.device("cpu"))
    assert info["cancelled"] is True and 1 <= info["best_epoch"] <= len(epochs)
    assert hidden_leftovers(tmp_path) == []                      # no lock, no staged log left


@pytest.mark.qgis_process
def test_second_predict_fails_at_once_and_sigterm_removes_temporaries(qgis_process, model_and_layers, tmp_path):
    """Item 4 and item 3 on one running predict (A, the real qgis_process):
    - a second run (B, another qgis_process) into the same OUTPUT fails at once, exit code 1, with a message
      naming A's PID and start time; A is not disturbed;
    - SIGTERM to A stops it like Cancel within one tile: exit code 1, 'interrupted by SIGTERM', OUTPUT never
      created, and no temporary (staging folder, lock) left beside it."""
    m = model_and_layers
    out = tmp_path / "pred"
    a = start_predict(qgis_process, m, out)
    try:
        staging = wait_for_staging(a, tmp_path, "pred")
        assert not out.exists()                                    # OUTPUT is created by the final move only
        lock = fileutil.read_lock(str(out))
        assert lock["pid"] == a.pid and lock["what"] == "ismoe:predict"
        b = qgis_process.run("ismoe:predict", {"MODEL_FILE": m["model"], "FACTORS": m["layers"], "OUTPUT": str(out),
                                               "LOAD_OUTPUTS": False})
        assert b.returncode == 1
        text = b.stdout + b.stderr
        assert f"OUTPUT: '{out}' is being written by another run (PID {a.pid}" in text, text
        assert f"started {lock['started']}" in text and "choose another OUTPUT" in text
        assert "Traceback" not in text
        assert a.poll() is None and (tmp_path / staging).is_dir()  # A goes on
        a.send_signal(signal.SIGTERM)
        out_a, _ = a.communicate(timeout=300)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 1, out_a
    assert "SIGTERM received: stopping like Cancel" in out_a
    assert "interrupted by SIGTERM: stopped like Cancel; no output was written" in out_a
    assert "Traceback" not in out_a
    assert not out.exists()
    assert hidden_leftovers(tmp_path) == []


@pytest.mark.qgis_process
def test_kill_9_during_predict_leaves_nothing_in_output_and_next_run_cleans(qgis_process, model_and_layers, tmp_path,
                                                                          run_alg):
    """kill -9 cannot be handled: the temporaries are a hidden sibling of OUTPUT, so nothing is visible
    inside OUTPUT (which does not even exist). The next run into the same OUTPUT takes over the dead run's
    lock, removes its staging folder (its owner PID is gone) and says so."""
    m = model_and_layers
    out = tmp_path / "pred"
    a = start_predict(qgis_process, m, out)
    try:
        staging = wait_for_staging(a, tmp_path, "pred")
        a.send_signal(signal.SIGKILL)
        a.communicate(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == -signal.SIGKILL
    assert not out.exists()
    left = hidden_leftovers(tmp_path)
    assert staging in left and fileutil.LOCK_PREFIX + "pred" in left
    assert not fileutil.pid_alive(a.pid)
    res, fb = run_alg("ismoe:predict", {"MODEL_FILE": m["model"], "FACTORS": m["layers"], "TILE_SIZE": 64,
                                        "OUTPUT": str(out), "LOAD_OUTPUTS": False})
    assert f"took over the lock of '{out}' from a run that is gone (PID {a.pid}" in fb.text
    assert f"removed {tmp_path / staging}: a temporary left by an earlier run (PID {a.pid})" in fb.text
    assert hidden_leftovers(tmp_path) == []
    assert sorted(os.listdir(out)) == sorted(["dominant_factor.tif", "importance.csv", "prediction.json", "sm.tif",
                                              "weight_rain.tif", "weight_temperature.tif",
                                              "variance_share_rain.tif", "variance_share_temperature.tif"]
                                             + [f for f in os.listdir(out) if f.endswith((".aux.xml", ".qml"))])


def test_stale_temporary_of_a_live_process_is_reported_not_removed(tmp_path):
    """A staging folder whose owner still runs is left alone and reported; one of a dead PID is removed."""
    out = tmp_path / "pred"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = tmp_path / f".ismoe-tmp-{sleeper.pid}-abcd1234-pred"
        live.mkdir()
        dead_pid = subprocess.Popen(["true"])
        dead_pid.wait()
        dead = tmp_path / f".ismoe-tmp-{dead_pid.pid}-abcd1234-pred"
        dead.mkdir()
        (dead / "sm.tif").write_bytes(b"partial")
        logs = []
        removed = fileutil.clean_stale(str(out), logs.append)
        assert removed == [str(dead)] and not dead.exists() and live.is_dir()
        assert any(f"{live} is a temporary of a run that still runs (PID {sleeper.pid})" in x for x in logs)
    finally:
        sleeper.kill()
        sleeper.wait()


# ------------------------------------------------------------------ item 4: one writer per output
def test_lock_is_exclusive_between_threads_reentrant_in_one_and_released(tmp_path):
    """Two algorithms of one QGIS process (worker threads) writing one output: the second fails at once;
    the same thread may take its own lock again; released, the lock file is gone and the next run gets it."""
    out = str(tmp_path / "model.pt")
    errors = []
    with fileutil.output_lock(out, "OUTPUT", "ismoe:train") as rec:
        with fileutil.output_lock(out, "OUTPUT"):                  # re-entrant (predict_to_folder inside predict)
            pass

        def other():
            try:
                with fileutil.output_lock(out, "OUTPUT"):
                    pass
            except fileutil.OutputBusyError as e:
                errors.append(str(e))
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert os.path.exists(fileutil.lock_path(out))
    assert len(errors) == 1 and "another algorithm of this QGIS process" in errors[0]
    assert f"PID {os.getpid()}" in errors[0] and f"started {rec['started']}" in errors[0]
    assert not os.path.exists(fileutil.lock_path(out))
    with fileutil.output_lock(out, "OUTPUT"):
        pass


# ------------------------------------------------------------------ item 5: outputs replace cleanly
def test_predict_replaces_the_whole_earlier_prediction(run_alg, model_and_layers, tmp_path):
    """A 3-factor prediction, then a 2-factor one into the same folder: the old weight_snow.tif, its style
    and sidecars are gone, every file prediction.json names exists, and seasonalimportance reads the folder."""
    m = model_and_layers
    out = tmp_path / "pred"
    run_alg("ismoe:predict", small_params(m, out, three=True))
    assert (out / "weight_snow.tif").exists() and (out / "weight_snow.qml").exists()
    run_alg("ismoe:predict", small_params(m, out))
    files = set(os.listdir(out))
    assert not [f for f in files if "snow" in f], files
    man = json.loads((out / "prediction.json").read_text())
    assert set(man["weights"]) == {"temperature", "rain"}
    assert {man["sm"], man["dominant_factor"], man["importance"], *man["weights"].values()} <= files
    assert hidden_leftovers(tmp_path) == [] and hidden_leftovers(out) == []
    res, _ = run_alg("ismoe:seasonalimportance", {"INPUT": str(out), "OUTPUT_PNG": str(tmp_path / "s.png"),
                                                   "OUTPUT_CSV": str(tmp_path / "s.csv")})
    assert os.path.getsize(tmp_path / "s.csv") > 0


def test_predict_refuses_a_folder_with_files_it_does_not_own(run_alg, model_and_layers, tmp_path):
    m = model_and_layers
    out = tmp_path / "mixed"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "sm.tif").write_bytes(b"not a prediction")
    with pytest.raises(QgsProcessingException) as e:
        run_alg("ismoe:predict", small_params(m, out))
    msg = str(e.value)
    assert f"OUTPUT: the folder '{out}' holds files that are not outputs of ismoe:predict (notes.txt)" in msg
    assert "choose a new or empty folder" in msg
    assert sorted(os.listdir(out)) == ["notes.txt", "sm.tif"] and (out / "sm.tif").read_bytes() == b"not a prediction"
    assert hidden_leftovers(tmp_path) == []


def test_commit_file_by_file_into_a_folder_that_cannot_be_renamed(tmp_path):
    """OUTPUT a symbolic link to a folder (it must stay a link): the new set goes in file by file, the
    earlier set's files that the new one lacks are removed, the manifest moves last."""
    real = tmp_path / "real"
    real.mkdir()
    for f in ("prediction.json", "sm.tif", "weight_snow.tif", "weight_snow.qml"):
        (real / f).write_text("old")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    from ismoe_qgis.model.outputs import is_prediction_file
    from ismoe_qgis.model.prediction_folder import MANIFEST
    with fileutil.staged_folder(str(link), is_prediction_file, last=(MANIFEST,)) as tmp:
        for f in ("prediction.json", "sm.tif", "weight_rain.tif"):
            (tmp_path / tmp / f).write_text("new")
    assert link.is_symlink()
    assert sorted(os.listdir(real)) == ["prediction.json", "sm.tif", "weight_rain.tif"]
    assert all((real / f).read_text() == "new" for f in os.listdir(real))
    assert hidden_leftovers(tmp_path) == []


# ------------------------------------------------------------------ item 6: disk full
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only; skipped otherwise or where mounting is not allowed)."""
    if os.geteuid() != 0:
        pytest.skip("the disk-full tests mount a tmpfs: root only")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_disk_full_predict_refused_before_work(run_alg, model_and_layers, small_disk):
    """The prediction's size is known: a disk that cannot hold it is refused before the tile loop, naming
    OUTPUT, the size and the free space; nothing is left on the disk."""
    m = model_and_layers
    out = small_disk / "pred"
    with pytest.raises(QgsProcessingException) as e:
        run_alg("ismoe:predict", {"MODEL_FILE": m["model"], "FACTORS": m["layers"], "OUTPUT": str(out),
                                  "LOAD_OUTPUTS": False})
    msg = str(e.value)
    assert f"OUTPUT: not enough free space for the prediction rasters at '{out}'" in msg
    assert "MiB free" in msg and "Errno" not in msg
    assert os.listdir(small_disk) == []


def test_disk_full_train_fails_before_the_first_epoch_and_leaves_no_log(run_alg, tmp_path, small_disk):
    rng = np.random.default_rng(0)
    f = rng.random((40, 12, 12)).astype(np.float32)
    write_series(tmp_path / "t2m.tif", f)
    write_series(tmp_path / "sm.tif", (0.2 + 0.1 * f).astype(np.float32))
    ds = tmp_path / "ds.npz"
    run_alg("ismoe:preparedataset", {"FACTORS": [str(tmp_path / "t2m.tif")], "TARGET": str(tmp_path / "sm.tif"),
                                     "PATCH_SIZE": 3, "SEQ_LEN": 5, "OUTPUT": str(ds)})
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:                 # fill the disk but ~8 KiB
        fh.write(b"\0" * (2 * 2 ** 20 - 8 * 1024))
    model, log = small_disk / "m.pt", small_disk / "train.log"
    with pytest.raises(QgsProcessingException) as e:
        run_alg("ismoe:train", {"DATASET": str(ds), "OUTPUT": str(model), "LOG": str(log), "EPOCHS": 3,
                                "HIDDEN": 32, "CONV_CHANNELS": 8, "SAMPLES_PER_EPOCH": 256})
    msg = str(e.value)
    assert f"OUTPUT: not enough free space for the model file at '{model}'" in msg and "Errno" not in msg
    assert sorted(os.listdir(small_disk)) == ["filler"]             # no model, no log, no temporary
    # a dataset that does not fit: refused before writing, nothing left
    with pytest.raises(QgsProcessingException) as e:
        run_alg("ismoe:preparedataset", {"FACTORS": [str(tmp_path / "t2m.tif")], "TARGET": str(tmp_path / "sm.tif"),
                                         "PATCH_SIZE": 3, "SEQ_LEN": 5, "OUTPUT": str(small_disk / "ds.npz")})
    assert f"OUTPUT: not enough free space for the dataset at '{small_disk / 'ds.npz'}'" in str(e.value)
    assert sorted(os.listdir(small_disk)) == ["filler"]


def test_disk_full_while_writing_names_the_path_and_parameter(small_disk):
    """ENOSPC in the middle of a write (the free-space check passed, then the disk filled): the error names
    the output and the parameter, not '[Errno 28]' alone, and no temporary is left."""
    target = small_disk / "ds.npz"
    with pytest.raises(fileutil.OutputWriteError) as e:
        with fileutil.atomic_output(str(target), ".npz") as tmp, open(tmp, "wb") as fh:
            fh.write(b"\0" * (3 * 2 ** 20))
    msg = str(e.value)
    assert msg.startswith(f"OUTPUT: cannot write '{target}': the disk is full") and "another disk" in msg
    assert os.listdir(small_disk) == []


def test_disk_full_while_gdal_writes_a_geotiff_is_an_error(small_disk):
    """GDAL reports a GeoTIFF write that hits a full disk as an error message and rasterio logs it without
    raising (the file would be silently truncated): the prediction's writer turns it into an error naming
    OUTPUT (fileutil.gdal_write_errors, used by predict_to_folder)."""
    out = small_disk / "pred"
    with pytest.raises(fileutil.OutputWriteError) as e:
        with fileutil.gdal_write_errors(str(out), "OUTPUT"), rasterio.Env(GDAL_CACHEMAX=2 ** 27):
            with rasterio.open(small_disk / "sm.tif", "w", driver="GTiff", width=1000, height=1000, count=2,
                               dtype="float32", tiled=True, blockxsize=256, blockysize=256, crs="EPSG:4326",
                               transform=rasterio.Affine(0.1, 0, 10, 0, -0.1, 50)) as ds:
                ds.write(np.random.default_rng(0).random((2, 1000, 1000)).astype(np.float32))
    assert str(e.value).startswith(f"OUTPUT: cannot write '{out}': the disk is full")
    assert "No space left on device" in str(e.value)


# ------------------------------------------------------------------ item 3 in a script (processing.run)
@pytest.mark.parametrize("times", [1, 2])
def test_signal_in_a_script_running_processing_run(run_alg, recording_feedback, model_and_layers, tmp_path, times):
    """SIGTERM to a Python process running processing.run (here: this one, sent from inside the tile loop):
    once, the run stops like Cancel within the tile; twice, it stops at once. Either way the message says
    which signal, OUTPUT is not created, no temporary is left, and the handlers are put back afterwards."""
    m = model_and_layers
    out = tmp_path / "pred"
    before = signal.getsignal(signal.SIGTERM)

    class Killer(recording_feedback):
        def setProgress(self, value):  # noqa: N802
            super().setProgress(value)
            if value >= 10 and not getattr(self, "sent", False):
                self.sent = True
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGTERM)

    fb = Killer()
    with pytest.raises(QgsProcessingException) as e:
        run_alg("ismoe:predict", {"MODEL_FILE": m["model"], "FACTORS": m["layers"], "TILE_SIZE": 32,
                                  "OUTPUT": str(out), "LOAD_OUTPUTS": False}, feedback=fb)
    msg = str(e.value)
    if times == 1:
        assert msg.startswith("interrupted by SIGTERM: stopped like Cancel; no output was written"), msg
        assert 10 <= max(fb.progress_values) < 100
    else:
        assert msg.startswith("interrupted by SIGTERM twice: stopped at once"), msg
    assert not out.exists() and hidden_leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_staging_inside_output_when_its_parent_is_read_only(tmp_path):
    """A writable OUTPUT folder (here a mount point) in a folder this run may not write to (a read-only bind
    mount, root only): the staging folder goes inside OUTPUT (hidden), the new set replaces the old one file
    by file, and a killed run's staging folder there is cleaned by the next run."""
    if os.geteuid() != 0:
        pytest.skip("needs a read-only bind mount: root only")
    parent, src = tmp_path / "ro", tmp_path / "src"
    out = parent / "pred"
    out.mkdir(parents=True)
    src.mkdir()
    (src / "prediction.json").write_text("old")
    (src / "weight_snow.tif").write_text("old")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (src / f".ismoe-tmp-{dead.pid}-abcd1234-pred").mkdir()          # a killed run's staging folder
    mounted = []
    try:
        for cmd in (["mount", "--bind", str(parent), str(parent)], ["mount", "-o", "remount,bind,ro", str(parent)],
                    ["mount", "--bind", str(src), str(out)]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"cannot bind-mount here: {r.stderr.strip()}")
            if cmd[1] == "--bind":
                mounted.insert(0, cmd[-1])
        with pytest.raises(OSError):
            (parent / "probe").write_text("x")                          # the parent is read-only
        from ismoe_qgis.model.outputs import is_prediction_file
        from ismoe_qgis.model.prediction_folder import MANIFEST
        logs = []
        with fileutil.staged_folder(str(out), is_prediction_file, log=logs.append, last=(MANIFEST,)) as tmp:
            assert os.path.dirname(tmp) == str(out)
            for f in ("prediction.json", "sm.tif"):
                with open(os.path.join(tmp, f), "w") as fh:
                    fh.write("new")
        assert sorted(os.listdir(out)) == ["prediction.json", "sm.tif"]
        assert all((out / f).read_text() == "new" for f in os.listdir(out))
        assert any(f"a temporary left by an earlier run (PID {dead.pid})" in x for x in logs)
    finally:
        for m in mounted:
            subprocess.run(["umount", m], check=False)
