"""The plugin as a person sees it (issue 11 item 8): the real QGIS desktop under Xvfb, a fresh profile with
the plugin enabled, ismoe:predict run from its algorithm dialog (scripts/desktop_check.py, started with
``qgis --code``). Checks that the results load styled into the project, that the Temporal Controller spans
the prediction's dates in one-day frames and steps the SM map through them, and that the importance dock
opens on the prediction folder. No mocks: the QGIS binary, its Processing dialog and its Temporal Controller.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("torch")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prediction_fixtures import TINY_DAYS, TINY_SEQ, TINY_START, make_tiny_model  # noqa: E402

pytestmark = pytest.mark.skipif(not (shutil.which("xvfb-run") and shutil.which("xauth") and shutil.which("qgis")),
                                reason="needs the QGIS desktop (qgis), xvfb-run and xauth")


def fresh_profile(root):
    """A profiles folder with one profile 'default' that enables ismoe_qgis (found via QGIS_PLUGINPATH)."""
    d = os.path.join(root, "profiles", "default", "QGIS")
    os.makedirs(d)
    with open(os.path.join(d, "QGIS3.ini"), "w") as f:
        f.write("[PythonPlugins]\nismoe_qgis=true\nprocessing=true\n")
    return str(root)


def run_desktop(tmp_path, predict, screenshots=None, timeout=300):
    profiles = fresh_profile(tmp_path / "qgis_profiles")
    result = str(tmp_path / "desktop_result.json")
    cfg = str(tmp_path / "desktop_check.json")
    with open(cfg, "w") as f:
        json.dump({"predict": predict, "result": result, "screenshots": screenshots, "timeout": timeout - 60}, f)
    env = dict(os.environ, ISMOE_DESKTOP_CHECK=cfg)
    env.pop("QT_QPA_PLATFORM", None)                   # the desktop on the Xvfb display, not offscreen
    cmd = ["xvfb-run", "-a", "-s", "-screen 0 1400x900x24", "qgis", "--profiles-path", profiles, "--nologo",
           "--noversioncheck", "--code", os.path.join(REPO, "scripts", "desktop_check.py")]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                          cwd=str(tmp_path))
    assert os.path.exists(result), proc.stdout.decode(errors="replace")[-3000:]
    with open(result, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def desktop(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("desktop")
    model, layers = make_tiny_model(tmp)
    out = str(tmp / "pred")
    r = run_desktop(tmp, {"MODEL_FILE": model, "FACTORS": layers, "TILE_SIZE": 8, "OUTPUT": out})
    return r, out


def test_predict_dialog_loads_styled_layers(desktop):
    r, out = desktop
    assert r["errors"] == [], r["errors"]
    assert r["plugin_loaded"]
    dates = [str(TINY_START + i) for i in range(TINY_SEQ - 1, TINY_DAYS)]   # the first SEQ_LEN-1 days are warm-up
    assert r["dates"] == dates
    layers = r["layers"]
    assert all(x["valid"] for x in layers)
    sm = [x for x in layers if x["group"] == "Soil moisture (m3/m3) by date" or x["group"] == "Soil moisture (m3/m3)"
          or x["name"] == "Soil moisture (m3/m3)"]
    dom = [x for x in layers if (x["group"] or "").startswith("Dominant factor") or x["name"] == "Dominant factor"]
    weights = [x for x in layers if x["name"].startswith("Weight: ")]
    assert sorted(x["name"] for x in weights) == ["Weight: rain", "Weight: snow", "Weight: wind"]
    assert all(x["renderer"] == "QgsSingleBandPseudoColorRenderer" for x in sm + weights)
    assert all(x["renderer"] == "QgsPalettedRasterRenderer" for x in dom)
    if len(sm) > 1:                                     # QGIS < 3.38: one fixed-range layer per date
        assert sorted(x["name"] for x in sm) == dates and sorted(x["name"] for x in dom) == dates
        assert all(x["temporal"] and x["range"] == [x["name"], x["name"]] for x in sm + dom)
    else:                                               # per-band ranges
        assert sm[0]["temporal"] and dom[0]["temporal"]
    assert all(x["visible"] for x in sm) and not any(x["visible"] for x in dom + weights)
    assert r["groups"][0] == "ISMoE prediction " + os.path.basename(out)
    no_logged_errors = [m for m in r.get("messages", []) if "Traceback" in m or "rror" in m]
    assert no_logged_errors == [], no_logged_errors[:3]


def test_temporal_controller_steps_through_the_dates(desktop):
    r, _ = desktop
    dates = r["dates"]
    tc = r["temporal_controller"]
    assert (tc["begin"], tc["end"]) == (dates[0], str(__import__("numpy").datetime64(dates[-1]) + 1))
    assert tc["frames"] == len(dates)
    assert tc["mode"] != 0                               # navigation on: the frames select dates
    assert r["frames"]["first"]["canvas_range"] == dates[0]
    assert r["frames"]["last"]["canvas_range"] == dates[-1]
    # the canvas draws exactly the SM layer (or band) of the frame's date
    drawn_first, drawn_last = r["frames"]["first"]["sm_drawn"], r["frames"]["last"]["sm_drawn"]
    if len(drawn_first) == 1 and drawn_first[0] in dates:
        assert drawn_first == [dates[0]] and drawn_last == [dates[-1]]
    else:
        assert len(drawn_first) == len(drawn_last) == 1


def test_dock_opens_on_the_prediction(desktop):
    r, out = desktop
    assert r["dock"]["visible"]
    assert os.path.realpath(r["dock"]["source"]) == os.path.realpath(out)
    assert r["dock"]["has_table"]
