"""The command line (python -m ismoe_qgis prepare|train|predict|evaluate, issue 15 item 5), run as a user runs it:
in subprocesses, on the demo region, with an import guard that makes any qgis/PyQt import fail the command."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs `python -m ismoe_qgis ARGS` with qgis, PyQt and sip made unimportable; exit 99 if one got imported anyway.
GUARD = textwrap.dedent(r'''
    import sys
    BLOCKED = ("qgis", "PyQt5", "PyQt6", "sip")
    class NoQgis:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"the CLI imported {name}: it must run without QGIS")
            return None
    sys.meta_path.insert(0, NoQgis())
    import runpy
    sys.argv = ["ismoe_qgis"] + sys.argv[1:]
    try:
        runpy.run_module("ismoe_qgis", run_name="__main__", alter_sys=True)
    finally:
        bad = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        if bad:
            print("QGIS modules were imported: " + ", ".join(bad), file=sys.stderr)
            sys.exit(99)
''')


def cli_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def cli(*args, cwd=None, timeout=600):
    """(returncode, stdout, stderr) of the guarded CLI."""
    p = subprocess.run([sys.executable, "-c", GUARD, *map(str, args)], cwd=cwd, env=cli_env(),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def last_line(text):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def factor_args(region):
    man = region.manifest
    return [f"{v}={region.path / man['layers'][v]}" for vs in man["factors"].values() for v in vs]


def groups_text(region):
    return ";".join(f"{f}={','.join(vs)}" for f, vs in region.manifest["factors"].items())


TRAIN_TINY = ["--epochs", "2", "--samples-per-epoch", "512", "--batch-size", "64", "--hidden", "8",
              "--conv-channels", "4", "--threads", "1", "--device", "cpu", "--val-start", "2018-07-01",
              "--test-start", "2018-10-01"]


@pytest.fixture(scope="module")
def chain(demo_region, tmp_path_factory):
    """prepare -> train through the CLI; predict and evaluate are run by the tests that check them."""
    out = tmp_path_factory.mktemp("cli_chain")
    cfg = out / "run.toml"
    # TOML: top-level keys and the [prepare] table; --seq-len on the command line wins over seq_len here
    cfg.write_text(textwrap.dedent(f'''
        tile_size = 64          # top level: for predict only; prepare and train pass over it
        [prepare]
        target = "{demo_region.path / demo_region.manifest['target']}"
        factor_groups = "{groups_text(demo_region)}"
        patch_size = 5
        seq_len = 9
        [train]
        epochs = 50
    '''))
    res = {"dir": out, "config": cfg}
    res["prepare"] = cli("prepare", "--config", cfg, "--factor", *factor_args(demo_region), "--seq-len", "7",
                         "--output", out / "dataset.npz")
    res["train"] = cli("train", "--dataset", out / "dataset.npz", "--output", out / "model.pt",
                       "--log", out / "train.jsonl", *TRAIN_TINY)
    return res


def test_prepare_through_the_cli(chain, demo_region):
    rc, stdout, stderr = chain["prepare"]
    assert rc == 0, stderr
    assert "prepare: 100%" in stderr                      # progress on stderr
    summary = json.loads(stdout)                          # the result on stdout
    from ismoe_qgis.data.cube import Cube
    cube = Cube.load(chain["dir"] / "dataset.npz")
    assert cube.patch_size == 5                           # from the TOML file
    assert cube.seq_len == 7                              # the command line beat the file's 9
    assert cube.factors == demo_region.manifest["factors"]
    assert summary["n_samples"] == int(np.isfinite(cube.y).sum()) > 0
    import rasterio
    with rasterio.open(demo_region.path / demo_region.manifest["layers"]["net_solar"]) as ds:
        raw = ds.read().astype(np.float32)
    np.testing.assert_allclose(cube.x[cube.variables.index("net_solar")], raw, rtol=1e-6)


def test_train_through_the_cli(chain, demo_region):
    rc, stdout, stderr = chain["train"]
    assert rc == 0, stderr
    res = json.loads(stdout)
    assert res["cancelled"] is False and [h["epoch"] for h in res["history"]] == [1, 2]
    assert 0 < res["val_cc"] <= 1 and np.isfinite(res["test_rmse"])
    assert "epoch 2/2" in stderr and "train: 100%" in stderr
    from ismoe_qgis.model.io import load_model
    model, cfg, info = load_model(str(chain["dir"] / "model.pt"), "cpu")
    assert (cfg.hidden, cfg.conv_channels, cfg.patch_size, cfg.seq_len) == (8, 4, 5, 7)
    assert cfg.factors == demo_region.manifest["factors"]
    assert info["train"]["epochs"] == 2                   # the command line beat [train] epochs = 50
    lines = (chain["dir"] / "train.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_predict_and_evaluate_through_the_cli(chain, demo_region, tmp_path):
    assert chain["train"][0] == 0, chain["train"][2]
    d = chain["dir"]
    rc, stdout, stderr = cli("predict", "--model-file", d / "model.pt", "--factor", *factor_args(demo_region),
                             "--date-from", "2018-12-20", "--date-to", "2018-12-31", "--device", "cpu",
                             "--threads", "1", "--output", tmp_path / "pred")
    assert rc == 0, stderr
    res = json.loads(stdout)
    assert res["n_dates"] == 12 and res["dates"] == ["2018-12-20", "2018-12-31"]
    man = json.loads((tmp_path / "pred" / "prediction.json").read_text())
    assert set(man["weights"]) == set(demo_region.manifest["factors"])
    import rasterio
    with rasterio.open(tmp_path / "pred" / "sm.tif") as ds:
        sm = ds.read(masked=True)
        assert (ds.count, ds.height, ds.width) == (12, 24, 24)
        assert list(ds.descriptions) == [str(np.datetime64("2018-12-20") + i) for i in range(12)]
    assert sm.count() > 0.9 * sm.size and -0.2 < float(sm.min()) and float(sm.max()) < 1.2
    total = 0
    for f in man["weights"].values():
        with rasterio.open(tmp_path / "pred" / f) as ds:
            total = total + ds.read(masked=True)
    np.testing.assert_allclose(np.ma.filled(total, 1.0), 1.0, atol=1e-4)   # the weights are shares

    rc, stdout, stderr = cli("evaluate", "--models", d / "model.pt", "--dataset", d / "dataset.npz",
                             "--date-from", "2018-12-01", "--device", "cpu", "--baselines", "climatology",
                             "--output", tmp_path / "eval")
    assert rc == 0, stderr
    res = json.loads(stdout)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (tmp_path / "eval" / "report.html").is_file()
    overall = {r["model"]: r for r in res["overall"]}
    assert set(overall) == {"model", "climatology"}
    assert -1 <= overall["model"]["cc"] <= 1 and overall["model"]["n"] == res["n_samples"] > 0
    assert "model" in json.dumps(metrics)


# --------------------------------------------------------------------------- bad input, exit codes
def test_unknown_config_key_is_refused_by_name(tmp_path, demo_region):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[train]\nepochz = 3\n')
    rc, stdout, stderr = cli("train", "--config", cfg, "--dataset", "x.npz", "--output", tmp_path / "m.pt")
    assert rc == 2 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and "'epochz'" in stderr and "[train]" in stderr
    cfg.write_text('epochz = 3\n')
    rc, _, stderr = cli("prepare", "--config", cfg)
    assert rc == 2 and "'epochz' (top level)" in stderr
    cfg.write_text('epochs = "three"\n')
    rc, _, stderr = cli("train", "--config", cfg, "--dataset", "x.npz", "--output", tmp_path / "m.pt")
    assert rc == 2 and "'epochs' must be a whole number" in stderr
    cfg.write_text('[trian]\nepochs = 3\n')
    rc, _, stderr = cli("train", "--config", cfg)
    assert rc == 2 and "[trian]" in stderr
    cfg.write_text('epochs = [')
    rc, _, stderr = cli("train", "--config", cfg)
    assert rc == 2 and "not valid TOML" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.pt").exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path, demo_region):
    out = tmp_path / "ds.npz"
    rc, _, stderr = cli("prepare", "--factor", tmp_path / "missing.tif", "--target", "t.tif", "--output", out)
    assert rc == 2 and stderr.strip() == f"python -m ismoe_qgis prepare: error: --factor: file not found: " \
                                         f"'{tmp_path / 'missing.tif'}'"
    rc, _, stderr = cli("prepare", "--factor", *factor_args(demo_region), "--output", out)
    assert rc == 2 and "--target" in last_line(stderr)
    # a core error (PATCH_SIZE must be odd) keeps the core's words
    rc, _, stderr = cli("prepare", "--factor", *factor_args(demo_region)[:2], "--target",
                        demo_region.path / demo_region.manifest["target"], "--patch-size", "4", "--output", out)
    assert rc == 2 and "PATCH_SIZE" in last_line(stderr) and "odd" in last_line(stderr)
    assert not out.exists()
    rc, _, stderr = cli("train", "--dataset", tmp_path / "none.npz", "--output", tmp_path / "m.pt")
    assert rc == 2 and "--dataset: file not found" in stderr
    rc, _, stderr = cli("train", "--epochs", "two")
    assert rc == 2 and "'two' is not a whole number" in stderr and len(stderr.strip().splitlines()) == 1
    rc, _, stderr = cli("train", "--mixture", "linear")
    assert rc == 2 and "invalid choice: 'linear'" in stderr
    rc, _, stderr = cli("train", "--epochs", "3")
    assert rc == 2 and "--dataset is required" in stderr
    rc, _, stderr = cli("fit")
    assert rc == 2 and "unknown command 'fit'" in stderr
    rc, stdout, _ = cli("--help")
    assert rc == 0 and all(c in stdout for c in ("prepare", "train", "predict", "evaluate"))


def test_sigint_stops_training_with_exit_130(chain, tmp_path):
    assert chain["prepare"][0] == 0, chain["prepare"][2]
    args = ["train", "--dataset", chain["dir"] / "dataset.npz", "--output", tmp_path / "m.pt",
            *TRAIN_TINY, "--epochs", "1000", "--patience", "1000"]
    p = subprocess.Popen([sys.executable, "-c", GUARD, *map(str, args)], env=cli_env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = p.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("epoch 1/1000"):
                p.send_signal(signal.SIGINT)
                break
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    err = "".join(lines) + err
    assert p.returncode == 130, err
    assert "SIGINT received" in err and "interrupted" in err
    from ismoe_qgis.model.io import load_model
    _, _, info = load_model(str(tmp_path / "m.pt"), "cpu")    # the best model so far is kept
    assert info["best_epoch"] >= 1 and info.get("cancelled") is True


# --------------------------------------------------------------------------- options follow the core
def test_options_come_from_the_core():
    from ismoe_qgis import cli as c
    from ismoe_qgis.model.train import TrainConfig
    opts = {o.dest: o for o in c.command_options("train")}
    plain = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "fold_labels"
             and c._kind(c._hints(TrainConfig).get(f.name), f.default) not in (None, "list")]
    assert set(plain) <= set(opts)                        # every plain TrainConfig field is an option
    assert opts["lr"].flag == "--learning-rate" and opts["lr"].default == TrainConfig().lr
    assert opts["members"].flag == "--ensemble" and opts["model_type"].flag == "--model"
    from ismoe_qgis.model.networks import MIXTURES
    assert opts["mixture"].choices == tuple(MIXTURES)

    @dataclasses.dataclass
    class Later:                                          # a field someone adds later becomes an option
        resume: Optional[str] = None
        warm_restarts: int = 3
        amp: bool = True
        labels: Optional[list] = None                     # not a plain value: no option
        restart: Union[bool, str] = False                 # a flag or a value: --restart, --restart PATH
    got = {o.dest: (o.flag, o.kind, o.default) for o in c.options_from_dataclass(Later, "cfg")}
    assert got == {"resume": ("--resume", "str", None), "warm_restarts": ("--warm-restarts", "int", 3),
                   "amp": ("--amp", "bool", True), "restart": ("--restart", "bool_or_str", False)}

    def core_fn(a, b, *, scheduler=None, workers: int = 2, grid=None, callbacks=None):
        return a
    got = {o.dest: o.kind for o in c.options_from_signature(core_fn, "call", skip={"grid", "callbacks"})}
    assert got == {"scheduler": "str", "workers": "int"}
