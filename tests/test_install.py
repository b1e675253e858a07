"""Dependencies from inside QGIS (issue 11 item 3): ismoe:installdependencies and the plugin-private folder.

No network: the packages are tiny wheels written by hand here (METADATA, WHEEL, RECORD in a zip) and
installed with --no-index --find-links through the installer's core (ismoe_qgis.deps.install) and the
algorithm; a fresh process then finds them the way the plugin does at load.
"""
import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

from conftest import REPO_ROOT

DUMMY = "ismoe-dummy-dep"
DUMMY_MODULE = "ismoe_dummy_dep"


def make_wheel(folder, dist, version, module=None, body="", requires=()):
    """Write <dist>-<version>-py3-none-any.whl by hand; returns its path."""
    module = module or dist.replace("-", "_")
    stem = "%s-%s" % (dist.replace("-", "_"), version)
    info = stem + ".dist-info"
    meta = "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (dist, version)
    meta += "".join("Requires-Dist: %s\n" % r for r in requires)
    files = {"%s/__init__.py" % module: "__version__ = %r\n%s" % (version, body),
             info + "/METADATA": meta,
             info + "/WHEEL": "Wheel-Version: 1.0\nGenerator: ismoe-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             info + "/top_level.txt": module + "\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (name, digest, len(text.encode())))
    record.append(info + "/RECORD,,")
    files[info + "/RECORD"] = "\n".join(record) + "\n"
    path = os.path.join(str(folder), "%s-py3-none-any.whl" % stem)
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """A find-links folder: the dummy package (which requires numpy) and two fake numpy wheels, one of
    them the version QGIS has (the constraint must pick that one, and the installer must drop it)."""
    import numpy

    folder = tmp_path_factory.mktemp("wheels")
    make_wheel(folder, DUMMY, "0.1", body="VALUE = 42\n", requires=["numpy"])
    make_wheel(folder, "numpy", numpy.__version__, body="FAKE = True\n")
    make_wheel(folder, "numpy", "99.0.0", body="FAKE = True\n")
    return folder


def offline_args(wheelhouse):
    return ["--isolated", "--no-index", "--find-links", str(wheelhouse)]


def leftovers(parent):
    return [p for p in os.listdir(parent) if "installing" in p]


def fresh_import(folder, module=DUMMY_MODULE):
    """Import `module` in a fresh Python after the plugin's path function added `folder`."""
    code = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, %r)
        from ismoe_qgis._venv import add_deps_to_path
        added = add_deps_to_path(folder=%r)
        import numpy
        mod = __import__(%r)
        print(json.dumps({"added": added, "file": mod.__file__, "value": getattr(mod, "VALUE", None),
                          "numpy": numpy.__file__, "numpy_fake": hasattr(numpy, "FAKE")}))
    """ % (str(REPO_ROOT), str(folder), module))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ISMOE_DEPS_DIR")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- core (no QGIS)
def test_install_offline_wheel_into_the_private_folder(wheelhouse, tmp_path):
    from ismoe_qgis import deps
    from ismoe_qgis.core_callbacks import Callbacks

    logs, progress = [], []
    target = tmp_path / "profile" / "python" / "ismoe_deps" / "py3"
    result = deps.install(str(target), [DUMMY], extra_args=offline_args(wheelhouse), python=sys.executable,
                          callbacks=Callbacks(log=logs.append, progress=progress.append))
    assert result["target"] == str(target)
    assert result["installed"] == {"ismoe_dummy_dep": "0.1"}
    # pip had to take numpy (a requirement) at the constrained version, and it was taken out again
    import numpy
    assert result["removed"] == ["numpy %s" % numpy.__version__]
    assert not any(p.startswith("numpy") for p in os.listdir(target))
    assert "--constraint" in result["command"] and "--target" in result["command"]
    assert any("removed numpy" in line for line in logs)
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 4
    assert leftovers(target.parent) == []

    found = fresh_import(target)
    assert found["added"] == str(target) and found["value"] == 42
    assert found["file"].startswith(str(target))
    assert not found["numpy_fake"] and not found["numpy"].startswith(str(target))  # QGIS's numpy stays


def test_no_network_leaves_nothing_half_installed(tmp_path):
    from ismoe_qgis import deps

    target = tmp_path / "deps"
    target.mkdir()
    (target / "old.txt").write_text("the previous install")
    with pytest.raises(deps.InstallError) as info:
        deps.install(str(target), ["ismoe-dummy-not-there"], python=sys.executable,
                     extra_args=["--isolated", "--index-url", "http://127.0.0.1:9/simple", "--retries", "1",
                                 "--timeout", "2"])
    message = str(info.value)
    assert "no network connection" in message and "Nothing was installed" in message
    assert "--find-links" in message  # says how to install offline
    assert sorted(os.listdir(target)) == ["old.txt"]  # unchanged
    assert leftovers(tmp_path) == []


def test_cancel_stops_pip_and_installs_nothing(wheelhouse, tmp_path):
    from ismoe_qgis import deps
    from ismoe_qgis.core_callbacks import Callbacks, Cancelled

    target = tmp_path / "deps"
    with pytest.raises(Cancelled, match="nothing was installed"):
        deps.install(str(target), [DUMMY], extra_args=offline_args(wheelhouse), python=sys.executable,
                     callbacks=Callbacks(is_cancelled=lambda: True))
    assert not target.exists() and leftovers(tmp_path) == []


def test_reinstall_replaces_the_folder_as_a_whole(wheelhouse, tmp_path):
    from ismoe_qgis import deps

    target = tmp_path / "deps"
    target.mkdir()
    (target / "stale.txt").write_text("x")
    deps.install(str(target), [DUMMY], extra_args=offline_args(wheelhouse), python=sys.executable)
    assert "stale.txt" not in os.listdir(target) and (target / DUMMY_MODULE / "__init__.py").exists()
    assert leftovers(tmp_path) == []


def test_variant_choice_follows_nvidia_smi(monkeypatch):
    from ismoe_qgis import deps

    if sys.platform.startswith("linux"):
        assert deps.recommended_variant(gpus=["GPU 0: NVIDIA H200 (UUID: x)"])[0] == "cuda"
        assert "H200" in deps.recommended_variant(gpus=["GPU 0: NVIDIA H200 (UUID: x)"])[1]
        variant, why = deps.recommended_variant(gpus=[])
        assert variant == "cpu" and "no NVIDIA GPU" in why
        assert deps.variant_index_args("cpu") == ["--index-url", deps.CPU_INDEX]
        assert deps.variant_index_args("cuda") == []  # PyPI's Linux torch is the CUDA build
    monkeypatch.setenv("PATH", "/nonexistent")
    assert deps.nvidia_gpus() == []
    with pytest.raises(ValueError, match="VARIANT"):
        deps.variant_index_args("rocm")


def test_deps_dir_is_per_profile_and_python():
    from ismoe_qgis import _venv

    folder = _venv.deps_dir("/p/profiles/default")
    assert folder == os.path.join("/p/profiles/default", "python", "ismoe_deps", "py%d.%d" % sys.version_info[:2])
    assert _venv.deps_dir(None) is None
    assert _venv.add_deps_to_path(folder="/nonexistent/ismoe_deps") is None


def test_torch_message_has_no_lost_placeholder():
    """The QGIS log panels render HTML: '<venv>' vanished from 'PYTHONPATH=<venv>/lib/...'."""
    from ismoe_qgis import deps

    message = deps.torch_missing_message(ModuleNotFoundError("No module named 'torch'"), "/p/profiles/default")
    assert "<" not in message and ">" not in message.replace(" > ", "")
    assert "ismoe:installdependencies" in message
    assert "pip install torch==2.13.0" in message and "numpy==" in message
    assert os.path.join("/p/profiles/default", "python", "ismoe_deps") in message
    if (REPO_ROOT / "Makefile").exists():  # from a clone: the real venv path, not a placeholder
        assert "PYTHONPATH=%s" % os.path.join(str(REPO_ROOT), ".venv", "lib") in message


# --------------------------------------------------------------------------- QGIS
def test_installer_algorithm_and_next_plugin_load(qgis_app, run_alg, wheelhouse, tmp_path):
    """Through processing.run into the profile's own folder (no TARGET), then a fresh QGIS process
    whose plugin load (classFactory) puts that folder on sys.path and imports the package."""
    from qgis.core import QgsApplication

    from ismoe_qgis import _venv

    expected = _venv.deps_dir(QgsApplication.qgisSettingsDirPath())
    results, feedback = run_alg("ismoe:installdependencies", {
        "VARIANT": "cpu", "PACKAGES": DUMMY, "PIP_ARGS": " ".join(offline_args(wheelhouse))})
    assert results["FOLDER"] == expected and "ismoe_dummy_dep==0.1" in results["INSTALLED"]
    assert "PyTorch build: cpu (chosen" in feedback.text
    assert any("Successfully installed" in m for m in feedback.of_kind("info") + feedback.of_kind("console"))
    assert feedback.progress_values and max(feedback.progress_values) == 100.0
    assert expected in sys.path  # usable at once, no restart

    code = textwrap.dedent("""
        import json, os, sys
        sys.path.insert(0, %r)
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        from qgis.core import QgsApplication
        app = QgsApplication([], False)
        app.initQgis()
        import ismoe_qgis
        ismoe_qgis.classFactory(None)           # what QGIS does at plugin load
        import ismoe_dummy_dep
        print(json.dumps({"settings": QgsApplication.qgisSettingsDirPath(), "file": ismoe_dummy_dep.__file__}))
    """ % str(REPO_ROOT))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ISMOE_DEPS_DIR")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(expected)


def test_installer_check_only_and_bad_variant(qgis_app, run_alg, tmp_path):
    from qgis.core import QgsProcessingException

    results, feedback = run_alg("ismoe:installdependencies", {"VARIANT": 2, "CHECK_ONLY": True,
                                                               "TARGET": str(tmp_path / "none")})
    assert results["INSTALLED"] == "" and "PyTorch build: cuda (chosen" in feedback.text
    assert not (tmp_path / "none").exists()
    with pytest.raises(QgsProcessingException):
        run_alg("ismoe:installdependencies", {"VARIANT": "rocm", "CHECK_ONLY": True})


def test_message_bar_offers_the_installer_when_torch_is_missing(qgis_app, monkeypatch):
    from qgis.gui import QgsMessageBar
    from qgis.PyQt.QtWidgets import QPushButton

    import processing
    from ismoe_qgis import plugin as plugin_mod

    class Iface:
        def __init__(self):
            self.bar = QgsMessageBar()

        def messageBar(self):  # noqa: N802
            return self.bar

    opened = []
    monkeypatch.setattr(processing, "execAlgorithmDialog", lambda alg_id, params=None: opened.append(alg_id))
    iface = Iface()
    plugin = plugin_mod.IsmoePlugin(iface)
    monkeypatch.setattr(plugin_mod, "torch_importable", lambda: True)
    assert plugin.warn_if_torch_missing() is None and iface.bar.currentItem() is None

    monkeypatch.setattr(plugin_mod, "torch_importable", lambda: False)
    widget = plugin.warn_if_torch_missing()
    assert widget is not None and iface.bar.currentItem() is widget
    assert "PyTorch is not installed" in widget.text()
    button = widget.findChild(QPushButton, "IsmoeInstallTorchButton")
    assert button is not None and "Install PyTorch" in button.text()
    monkeypatch.setattr(plugin_mod, "torch_importable", lambda: True)  # as after a successful install
    button.click()
    assert opened == ["ismoe:installdependencies"]
    assert plugin.torch_message is None


def test_qgis_python_is_found_when_sys_executable_is_qgis(monkeypatch):
    """Inside QGIS sys.executable is the qgis binary: pip must run with a Python of the same version."""
    from ismoe_qgis import deps

    monkeypatch.setattr(sys, "executable", "/usr/bin/qgis")
    python = deps.qgis_python()
    assert python is not None and os.path.basename(python).startswith("python")
    out = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert out.stdout.strip() == str(tuple(sys.version_info[:2]))
