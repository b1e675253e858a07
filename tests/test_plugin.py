"""The plugin as QGIS sees it: metadata, provider, algorithms' help, core purity, qgis_process."""
import ast
import configparser
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import PLUGIN_NAME, PROVIDER_ID, REPO_ROOT, register_ismoe_provider

PLUGIN_DIR = REPO_ROOT / PLUGIN_NAME
# Code that must run without QGIS/Qt: the core, plus the chart-data functions of the dock.
CORE_PACKAGES = ["ismoe_qgis.data", "ismoe_qgis.model"]
CORE_MODULES = ["ismoe_qgis", "ismoe_qgis.core_callbacks", "ismoe_qgis.version",
                "ismoe_qgis._venv", "ismoe_qgis.ui.chartdata"]
FORBIDDEN_TOPLEVEL = ("qgis", "PyQt5", "PyQt6", "processing")


def read_metadata(path):
    parser = configparser.ConfigParser(interpolation=None)
    with open(path, encoding="utf-8") as f:
        parser.read_file(f)
    return parser["general"]


def ismoe_algorithms():
    provider = register_ismoe_provider()
    assert provider is not None, "provider 'ismoe' is not registered"
    return provider.algorithms()


# --------------------------------------------------------------------------- metadata
def test_metadata_single_source_of_truth():
    inner = PLUGIN_DIR / "metadata.txt"
    assert inner.is_file(), "QGIS reads metadata.txt from inside the plugin folder"
    root = REPO_ROOT / "metadata.txt"
    if root.exists() or root.is_symlink():
        assert root.resolve() == inner.resolve() or root.read_bytes() == inner.read_bytes(), \
            "root metadata.txt must be the plugin's metadata.txt (symlink), not a second copy"


def test_metadata_fields():
    meta = read_metadata(PLUGIN_DIR / "metadata.txt")
    assert meta["hasProcessingProvider"].strip().lower() == "yes"
    assert meta["qgisMinimumVersion"].strip() == "3.22"
    for key in ("name", "description", "about", "version", "author", "email",
                "repository", "tracker", "category"):
        assert meta.get(key, "").strip(), "metadata.txt lacks %s" % key
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"].strip())
    assert len(meta["about"]) > len(meta["description"]) > 20


def test_version_reads_metadata():
    import ismoe_qgis
    from ismoe_qgis.version import __version__

    meta = read_metadata(PLUGIN_DIR / "metadata.txt")
    assert __version__ == ismoe_qgis.__version__ == meta["version"].strip()


def test_qgis_finds_the_plugin_folder(qgis_app):
    """QGIS's own plugin discovery, over the folder QGIS_PLUGINPATH points at."""
    from qgis import utils

    found = dict(utils.findPlugins(str(REPO_ROOT)))
    assert PLUGIN_NAME in found, "QGIS does not see %s under %s" % (PLUGIN_NAME, REPO_ROOT)
    parser = found[PLUGIN_NAME]
    assert parser is not None
    assert parser.get("general", "hasProcessingProvider") == "yes"


# --------------------------------------------------------------------------- provider
def test_provider_registered(qgis_app):
    provider = register_ismoe_provider()
    assert provider.id() == PROVIDER_ID
    assert provider.name()
    algs = provider.algorithms()
    assert len(algs) >= 1, "the provider has no algorithms (see the QGIS message log)"
    for alg in algs:
        assert re.fullmatch(r"ismoe:[a-z0-9_]+", alg.id()), alg.id()
        assert alg.name() == alg.name().lower() and " " not in alg.name()
        assert alg.provider() is not None and alg.provider().id() == PROVIDER_ID


def test_algorithms_document_every_parameter(qgis_app):
    algs = ismoe_algorithms()
    assert len(algs) >= 1
    for alg in algs:
        assert alg.displayName().strip(), alg.id()
        assert alg.group().strip() and alg.groupId().strip(), alg.id()
        assert type(alg.createInstance()) is type(alg)
        help_text = alg.shortHelpString() or ""
        assert help_text.strip(), "%s has no shortHelpString" % alg.id()
        for param in alg.parameterDefinitions():
            name = param.name()
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*", name), \
                "%s: parameter name %r is not usable from the command line (A-Z, 0-9, _)" % (alg.id(), name)
            assert name in help_text or param.description().lower() in help_text.lower(), \
                "%s: shortHelpString does not explain parameter %s" % (alg.id(), name)


def test_provider_skips_missing_modules(qgis_app):
    from ismoe_qgis.algorithms.provider import load_algorithm_classes

    warnings = []
    classes = load_algorithm_classes(
        [("ismoe_qgis.algorithms.does_not_exist", "Nothing"),
         ("ismoe_qgis.algorithms.base", "NoSuchClass"),
         ("ismoe_qgis.algorithms.base", "IsmoeAlgorithm")],
        warn=warnings.append)
    assert [c.__name__ for c in classes] == ["IsmoeAlgorithm"]
    assert len(warnings) == 2
    assert "does_not_exist" in warnings[0] and "NoSuchClass" in warnings[1]


def test_plugin_lifecycle_registers_and_removes_provider(qgis_app):
    from qgis.core import QgsApplication

    import ismoe_qgis

    registry = QgsApplication.processingRegistry()
    if registry.providerById(PROVIDER_ID) is not None:
        registry.removeProvider(registry.providerById(PROVIDER_ID))
    try:
        plugin = ismoe_qgis.classFactory(None)  # iface is None under qgis_process
        plugin.initProcessing()
        plugin.initProcessing()  # idempotent (initGui calls it as well)
        assert registry.providerById(PROVIDER_ID) is not None
        assert sum(p.id() == PROVIDER_ID for p in registry.providers()) == 1
        plugin.initGui()  # without iface: no dock, no error
        plugin.unload()
        assert registry.providerById(PROVIDER_ID) is None
    finally:
        register_ismoe_provider()


# --------------------------------------------------------------------------- base helpers
def test_callbacks_adapt_feedback(qgis_app, recording_feedback):
    from ismoe_qgis.algorithms.base import IsmoeAlgorithm
    from ismoe_qgis.core_callbacks import Cancelled

    feedback = recording_feedback()
    cb = IsmoeAlgorithm.callbacks(feedback)
    cb.progress(0.5)
    assert feedback.progress() == pytest.approx(50.0)
    cb.progress(1.7)
    assert feedback.progress() == pytest.approx(100.0)
    cb.log("epoch 1: loss 0.1")
    assert "epoch 1: loss 0.1" in feedback.of_kind("info")
    assert cb.is_cancelled() is False
    feedback.cancel()
    assert cb.is_cancelled() is True
    with pytest.raises(Cancelled):
        cb.check_cancel()
    silent = IsmoeAlgorithm.callbacks(None)
    silent.progress(0.3)
    silent.log("nothing")
    assert silent.is_cancelled() is False


def test_run_core_turns_core_errors_into_processing_exceptions(qgis_app):
    from qgis.core import QgsProcessingException

    from ismoe_qgis.algorithms.base import IsmoeAlgorithm
    from ismoe_qgis.core_callbacks import Cancelled

    def raiser(exc):
        def fn(*_a, **_kw):
            raise exc
        return fn

    assert IsmoeAlgorithm.run_core(lambda a, b=0: a + b, 1, b=2) == 3
    cases = [(ValueError("PATCH_SIZE: must be odd"), "PATCH_SIZE: must be odd"),
             (KeyError("FACTORS: unknown factor 'x'"), "FACTORS: unknown factor 'x'"),
             (FileNotFoundError("no such dataset"), "no such dataset"),
             (RuntimeError("CUDA out of memory"), "CUDA out of memory"),
             (Cancelled("cancelled by the user"), "cancelled")]
    for exc, text in cases:
        with pytest.raises(QgsProcessingException) as info:
            IsmoeAlgorithm.run_core(raiser(exc))
        assert text in str(info.value)
        assert not str(info.value).startswith('"')
    missing = ModuleNotFoundError("No module named 'torch'", name="torch")
    with pytest.raises(QgsProcessingException, match="pip install torch==2.13.0"):
        IsmoeAlgorithm.run_core(raiser(missing))
    with pytest.raises(TypeError):  # programming errors keep their traceback
        IsmoeAlgorithm.run_core(raiser(TypeError("bug")))


def test_require_torch_gives_the_install_command(qgis_app, monkeypatch):
    from qgis.core import QgsProcessingException

    from ismoe_qgis.algorithms.base import IsmoeAlgorithm

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(QgsProcessingException) as info:
        IsmoeAlgorithm.require_torch()
    message = str(info.value)
    assert "pip install torch==2.13.0" in message
    assert "numpy==" in message
    assert "Traceback" not in message


def test_qgis_compat_flags(qgis_app):
    from qgis.core import QgsProcessingParameterNumber

    from ismoe_qgis.algorithms import qgis_compat as qc

    param = QgsProcessingParameterNumber("EPOCHS", "Epochs", qc.NUMBER_INTEGER, 5)
    assert not (param.flags() & qc.PARAM_FLAG_OPTIONAL)
    qc.optional(param)
    qc.advanced(param)
    assert param.flags() & qc.PARAM_FLAG_OPTIONAL
    assert param.flags() & qc.PARAM_FLAG_ADVANCED
    assert param.dataType() == qc.NUMBER_INTEGER
    for name in ("ALG_FLAG_NO_THREADING", "ALG_FLAG_CAN_CANCEL", "SOURCE_RASTER",
                 "FILE_BEHAVIOR_FILE", "FILE_BEHAVIOR_FOLDER", "NUMBER_DOUBLE"):
        assert getattr(qc, name) is not None


# --------------------------------------------------------------------------- purity
def _run_python(code, timeout=300):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(REPO_ROOT),
                          capture_output=True, text=True, timeout=timeout)


def test_algorithm_modules_do_not_import_torch():
    """With torch unimportable the provider still loads every algorithm."""
    code = """
        import json, os, sys
        sys.modules["torch"] = None          # `import torch` raises ImportError
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
        from qgis.core import QgsApplication
        app = QgsApplication([], False)
        app.initQgis()
        from ismoe_qgis.algorithms import registry
        from ismoe_qgis.algorithms.provider import IsmoeProvider, load_algorithm_classes
        warnings = []
        classes = load_algorithm_classes(warn=warnings.append)
        provider = IsmoeProvider()
        QgsApplication.processingRegistry().addProvider(provider)
        ids = [a.id() for a in provider.algorithms()]
        print(json.dumps({"warnings": warnings, "classes": len(classes), "ids": ids,
                          "torch_loaded": any(m == "torch" or m.startswith("torch.")
                                              for m, v in sys.modules.items() if v is not None)}))
    """
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [w for w in out["warnings"] if "torch" in w], out["warnings"]
    assert out["torch_loaded"] is False
    assert len(out["ids"]) == out["classes"]


def _core_module_names():
    names = []
    for pkg in CORE_PACKAGES:
        pkg_dir = REPO_ROOT / Path(*pkg.split("."))
        for path in sorted(pkg_dir.rglob("*.py")):
            rel = path.relative_to(REPO_ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    for mod in CORE_MODULES:
        if (REPO_ROOT / Path(*mod.split("."))).with_suffix(".py").exists() or mod == "ismoe_qgis":
            names.append(mod)
    return names


def test_core_imports_no_qgis_or_qt():
    names = _core_module_names()
    assert "ismoe_qgis.data" in names and "ismoe_qgis.model" in names
    code = """
        import importlib, json, sys
        names = %r
        for name in names:
            importlib.import_module(name)
        bad = sorted(m for m, v in sys.modules.items() if v is not None
                     and m.split(".")[0] in %r)
        print(json.dumps(bad))
    """ % (names, FORBIDDEN_TOPLEVEL)
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    bad = json.loads(proc.stdout.strip().splitlines()[-1])
    assert bad == [], "the core imported %s" % bad


def test_core_source_has_no_qgis_imports():
    offenders = []
    for name in _core_module_names():
        path = REPO_ROOT / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                if mod.split(".")[0] in FORBIDDEN_TOPLEVEL:
                    offenders.append("%s:%d imports %s" % (path.relative_to(REPO_ROOT), node.lineno, mod))
    assert offenders == []


# --------------------------------------------------------------------------- qgis_process
@pytest.mark.qgis_process
def test_qgis_process_loads_the_plugin(qgis_process, qgis_app):
    res = qgis_process("plugins")
    assert res.returncode == 0, res.stderr
    assert re.search(r"^\* %s\s*$" % PLUGIN_NAME, res.stdout, re.M), res.stdout

    res = qgis_process("list")
    assert res.returncode == 0, res.stderr
    assert "ISMoE soil moisture" in res.stdout
    ids = [alg.id() for alg in ismoe_algorithms()]
    assert len(ids) >= 1
    for alg_id in ids:
        assert alg_id in res.stdout, "%s missing from qgis_process list" % alg_id


@pytest.mark.qgis_process
def test_qgis_process_help_for_each_algorithm(qgis_process, qgis_app):
    algs = ismoe_algorithms()
    assert len(algs) >= 1
    for alg in algs:
        res = qgis_process("help", alg.id())
        assert res.returncode == 0, res.stderr
        for param in alg.parameterDefinitions():
            assert param.name() in res.stdout
