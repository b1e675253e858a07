"""The installable plugin (issue 11 item 7): `make zip`, its layout, and a fresh profile that lists it.

The zip is what the Plugin Manager's "Install from ZIP" takes: one folder ismoe_qgis/ at the root
with metadata.txt inside. The test unzips it into the plugins folder of an empty QGIS profile (as the
Plugin Manager does), enables it there and runs `qgis_process list` with that profile only: no
QGIS_PLUGINPATH to the clone, no PYTHONPATH to its venv.
"""
import configparser
import os
import re
import subprocess
import zipfile

import pytest

from conftest import PLUGIN_NAME, REPO_ROOT, find_qgis_process

MODEL_ID = "ismoe:prepare_train_predict"


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory):
    """The zip `make zip` builds: `make zip` = `make helppages` (rewrites ismoe_qgis/help/, which a test
    must not do to the tree it checks) + scripts/make_zip.py, run here as the Makefile runs it."""
    out = tmp_path_factory.mktemp("zip") / "ismoe_qgis.zip"
    dry = subprocess.run(["make", "-n", "zip", "ZIP=%s" % out], cwd=str(REPO_ROOT), capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0 and "scripts/build_help.py" in dry.stdout and "scripts/make_zip.py" in dry.stdout
    proc = subprocess.run(["/usr/bin/python3", str(REPO_ROOT / "scripts" / "make_zip.py"), str(out)],
                          cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    return out


def test_zip_layout(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as zf:
        names = zf.namelist()
        meta_text = zf.read("%s/metadata.txt" % PLUGIN_NAME).decode("utf-8")
        license_text = zf.read("%s/LICENSE" % PLUGIN_NAME).decode("utf-8")
    assert {n.split("/")[0] for n in names} == {PLUGIN_NAME}, "one plugin folder at the zip root"
    # the Plugin Manager takes the folder of the shortest metadata.txt path as the plugin's name
    assert sorted((n for n in names if n.endswith("metadata.txt")), key=len)[0] == "%s/metadata.txt" % PLUGIN_NAME
    for needed in ("__init__.py", "LICENSE", "README.md", "icons/ismoe.svg", "help/index.html",
                   "help/train.html", "styles/sm.qml", "styles/weight.qml", "styles/dominant_factor.qml",
                   "models/ismoe_prepare_train_predict.model3", "deps.py", "algorithms/install_deps.py"):
        assert "%s/%s" % (PLUGIN_NAME, needed) in names, needed
    assert any(n.startswith("%s/docs/" % PLUGIN_NAME) and n.endswith(".md") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]
    assert "GNU GENERAL PUBLIC LICENSE" in license_text and "any later version" in license_text

    meta = configparser.ConfigParser(interpolation=None)
    meta.read_string(meta_text)
    general = meta["general"]
    assert "%s/%s" % (PLUGIN_NAME, general["icon"]) in names
    assert "example" not in meta_text.lower() and "@" not in meta_text.replace("author=", "")
    for key in ("email", "tracker", "repository", "homepage"):  # empty rather than invented
        assert key in general
        value = general[key].strip()
        assert value == "" or re.match(r"https://|[^@\s]+@[^@\s]+\.[a-z]+$", value), (key, value)


def test_help_pages_are_current_and_shipped(qgis_app, ismoe_provider):
    """Each algorithm's helpUrl is a file:// page inside the plugin folder naming every parameter by its
    label (a page without a new parameter's label is stale: `make helppages`)."""
    import html

    from qgis.PyQt.QtCore import QUrl

    for alg in ismoe_provider.algorithms():
        url = alg.helpUrl()
        assert url.startswith("file://"), alg.id()
        path = QUrl(url).toLocalFile()
        assert os.path.isfile(path) and path.startswith(str(REPO_ROOT / PLUGIN_NAME / "help")), (alg.id(), url)
        with open(path, encoding="utf-8") as f:
            page = html.unescape(f.read())
        for param in alg.parameterDefinitions():
            assert param.description() in page and param.name() in page, \
                "%s: %s missing from %s (run make helppages)" % (alg.id(), param.name(), path)


@pytest.mark.qgis_process
def test_zip_installs_into_a_fresh_profile(plugin_zip, tmp_path):
    binary = find_qgis_process()
    if binary is None:
        pytest.skip("qgis_process is not installed")
    config = tmp_path / "config"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as zf:  # what "Install from ZIP" does
        zf.extractall(plugins)
    env = {k: v for k, v in os.environ.items()
           if k not in ("QGIS_PLUGINPATH", "PYTHONPATH", "ISMOE_DEPS_DIR", "QGIS_CUSTOM_CONFIG_PATH")}
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(config))

    def qp(*args):
        proc = subprocess.run([binary, *args], env=env, cwd=str(tmp_path), capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout

    qp("plugins", "enable", PLUGIN_NAME)
    listing = qp("list")
    assert "ISMoE soil moisture" in listing
    for alg_id in ("ismoe:preparedataset", "ismoe:train", "ismoe:predict", "ismoe:evaluate",
                   "ismoe:seasonalimportance", "ismoe:installdependencies", MODEL_ID):
        assert re.search(r"^\s*%s\s" % re.escape(alg_id), listing, re.M), "%s not listed" % alg_id
    # the plugin ran from the unzipped copy: the installer names this profile's private folder
    helptext = qp("help", "ismoe:installdependencies")
    assert str(config) in helptext and "ismoe_deps" in helptext
    assert str(REPO_ROOT) not in qp("help", MODEL_ID)
