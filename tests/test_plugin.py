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


def ismoe_algorithms(models=False):
    """The provider's algorithms; without the shipped Model Builder models unless models=True."""
    from qgis.core import QgsProcessingModelAlgorithm

    provider = register_ismoe_provider()
    assert provider is not None, "provider 'ismoe' is not registered"
    return [a for a in provider.algorithms() if models or not isinstance(a, QgsProcessingModelAlgorithm)]


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
    for key in ("name", "description", "about", "version", "author", "category", "icon", "tags"):
        assert meta.get(key, "").strip(), "metadata.txt lacks %s" % key
    assert (PLUGIN_DIR / meta["icon"].strip()).is_file()
    # no invented addresses: empty until a publisher fills them in (README, Publishing)
    for key in ("email", "repository", "tracker", "homepage"):
        assert key in meta
        assert "example" not in meta[key].lower(), "%s is a placeholder: %s" % (key, meta[key])
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
    assert "ismoe:prepare_train_predict" in [a.id() for a in provider.algorithms()], "model chain not offered"
    algs = provider.algorithms()
    assert len(algs) >= 1, "the provider has no algorithms (see the QGIS message log)"
    for alg in algs:  # the shipped model chain too: ismoe:prepare_train_predict
        assert re.fullmatch(r"ismoe:[a-z0-9_]+", alg.id()), alg.id()
        assert alg.name() == alg.name().lower() and " " not in alg.name()
        assert alg.provider() is not None and alg.provider().id() == PROVIDER_ID


def test_algorithms_document_every_parameter(qgis_app):
    algs = ismoe_algorithms()  # the model chain's parameters are Model Builder's (lower case)
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


def test_a_broken_algorithm_module_fails_loudly(qgis_app, monkeypatch):
    """The provider's algorithms are a static list of classes: every one imports, and an algorithm module
    that fails to import raises (and is logged), instead of being skipped behind a shorter list."""
    import sys
    import types

    from ismoe_qgis.algorithms import provider, registry

    assert provider.algorithm_classes() == list(registry.ALGORITHMS)
    assert len(set(c().name() for c in registry.ALGORITHMS)) == len(registry.ALGORITHMS)
    monkeypatch.delitem(sys.modules, "ismoe_qgis.algorithms.registry")         # imported again, afresh
    monkeypatch.delattr(sys.modules["ismoe_qgis.algorithms"], "registry")
    monkeypatch.setitem(sys.modules, "ismoe_qgis.algorithms.predict", None)     # `import` raises ImportError
    with pytest.raises(ImportError):
        provider.algorithm_classes()
    logged = []
    monkeypatch.setattr(provider, "QgsMessageLog", types.SimpleNamespace(logMessage=lambda msg, *a: logged.append(msg)))
    with pytest.raises(ImportError):
        provider.IsmoeProvider().loadAlgorithms()
    assert logged and "could not be imported" in logged[0] and "predict" in logged[0]


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
        from ismoe_qgis.algorithms.provider import IsmoeProvider, algorithm_classes
        warnings = []
        classes = algorithm_classes()
        provider = IsmoeProvider()
        QgsApplication.processingRegistry().addProvider(provider)
        ids = [a.id() for a in provider.algorithms()]
        from ismoe_qgis.algorithms.provider import model_files
        print(json.dumps({"warnings": warnings, "classes": len(classes), "ids": ids, "models": len(model_files()),
                          "torch_loaded": any(m == "torch" or m.startswith("torch.")
                                              for m, v in sys.modules.items() if v is not None)}))
    """
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not [w for w in out["warnings"] if "torch" in w], out["warnings"]
    assert out["torch_loaded"] is False
    assert len(out["ids"]) == out["classes"] + out["models"]


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
        description = res.stdout.split("Arguments\n")[0]
        for param in alg.parameterDefinitions():
            assert param.name() in res.stdout
            # plain text for a terminal: labels and ids, no HTML tags or entities
            assert param.description().rstrip(".:") in description, \
                "%s: help does not name %s by its label" % (alg.id(), param.name())
        assert "&lt;" not in res.stdout and "<b>" not in res.stdout
    assert "weight_<factor>.tif" in qgis_process("help", "ismoe:predict").stdout


# --------------------------------------------------------------------------- found and understood (issue 11 item 6)
WORKFLOW_GROUPS = ["0 Setup", "1 Prepare data", "2 Train", "3 Predict", "4 Evaluate and interpret", "5 Model chains"]


def test_groups_follow_the_workflow(qgis_app):
    groups = {a.name(): a.group() for a in ismoe_algorithms(models=True)}
    assert groups["installdependencies"].startswith("0 ")
    assert groups["preparedataset"].startswith("1 ") and groups["train"].startswith("2 ")
    assert groups["predict"].startswith("3 ") and groups["evaluate"].startswith("4 ")
    assert groups["seasonalimportance"] == groups["evaluate"]
    assert groups["prepare_train_predict"].startswith("5 ")
    assert sorted(set(groups.values())) == [g for g in WORKFLOW_GROUPS if g in groups.values()]
    ids = {a.groupId() for a in ismoe_algorithms(models=True)}
    assert all(re.fullmatch(r"[a-z]+", i) for i in ids) and len(ids) == len(set(groups.values()))


@pytest.mark.parametrize("query,expected", [("deep learning", "train"), ("lstm", "train"),
                                            ("mixture of experts", "predict"), ("soil moisture", "evaluate"),
                                            ("interpretability", "seasonalimportance"),
                                            ("pytorch", "installdependencies")])
def test_tags_find_the_algorithms(qgis_app, query, expected):
    hits = [a.name() for a in ismoe_algorithms(models=True) if query in [t.lower() for t in a.tags()]]
    assert expected in hits, (query, hits)
    for alg in ismoe_algorithms(models=True):
        assert "soil moisture" in alg.tags() and "mixture of experts" in alg.tags(), alg.id()


def test_icons_for_plugin_provider_and_algorithms(qgis_app):
    icon = PLUGIN_DIR / "icons" / "ismoe.svg"
    assert icon.is_file() and b"<svg" in icon.read_bytes()
    provider = register_ismoe_provider()
    assert provider.svgIconPath() == str(icon) and not provider.icon().isNull()
    for alg in ismoe_algorithms(models=True):
        assert alg.svgIconPath() == str(icon), alg.id()
        assert not alg.icon().isNull()


def test_help_names_parameters_by_label_and_keeps_angle_brackets(qgis_app):
    for alg in ismoe_algorithms():
        text = alg.shortHelpString()
        for param in alg.parameterDefinitions():
            label = html_escape(param.description().rstrip(".:"))
            assert "<b>%s</b>" % label in text or "<i>%s</i> (%s" % (label, param.name()) in text, \
                "%s: the help does not name %s by its label %r" % (alg.id(), param.name(), param.description())
        # HTML for the help panel: a literal '<' would start a tag and swallow text
        assert not re.search(r"<(?!/?(b|i)>)", text), alg.id()
    predict = [a for a in ismoe_algorithms() if a.name() == "predict"][0]
    assert "weight_&lt;factor&gt;.tif" in predict.shortHelpString()


def html_escape(text):
    import html
    return html.escape(text, quote=False)


def test_labelled_help_plain_and_html(qgis_app):
    from qgis.core import QgsProcessingAlgorithm, QgsProcessingParameterNumber

    from ismoe_qgis.algorithms.presentation import labelled_help

    class Probe(QgsProcessingAlgorithm):
        def initAlgorithm(self, config=None):  # noqa: N802
            self.addParameter(QgsProcessingParameterNumber("EPOCHS", "Epochs"))
            self.addParameter(QgsProcessingParameterNumber("EPOCHS_MAX", "Most epochs"))

    alg = Probe()
    alg.initAlgorithm()
    text = "EPOCHS: at most EPOCHS_MAX; files a_<x>.tif.\nEPOCHS_MAX (cap): see EPOCHS."
    assert labelled_help(alg, text, as_html=True) == (
        "<b>Epochs</b> (EPOCHS): at most <i>Most epochs</i>; files a_&lt;x&gt;.tif.\n"
        "<b>Most epochs</b> (EPOCHS_MAX, cap): see <i>Epochs</i>.")
    assert labelled_help(alg, text, as_html=False) == (
        "Epochs (EPOCHS): at most EPOCHS_MAX; files a_<x>.tif.\nMost epochs (EPOCHS_MAX, cap): see EPOCHS.")
    # a parameter without its own line is labelled where it first appears
    assert labelled_help(alg, "Runs EPOCHS_MAX times; EPOCHS_MAX is a cap.", as_html=False) == \
        "Runs Most epochs (EPOCHS_MAX) times; EPOCHS_MAX is a cap."
    assert labelled_help(alg, "Runs EPOCHS_MAX times; EPOCHS_MAX.", as_html=True) == \
        "Runs <i>Most epochs</i> (EPOCHS_MAX) times; <i>Most epochs</i>."


def test_help_url_points_into_the_plugin(qgis_app):
    from qgis.PyQt.QtCore import QUrl

    for alg in ismoe_algorithms(models=True):
        url = alg.helpUrl()
        assert url.startswith("file://"), alg.id()
        assert QUrl(url).toLocalFile().startswith(str(PLUGIN_DIR / "help")), url


# --------------------------------------------------------------------------- enum names (MODEL=cnn_lstm)
def test_enum_names_map_to_indices(qgis_app):
    from ismoe_qgis.algorithms.enums import map_enum_names, option_index

    train = [a for a in ismoe_algorithms() if a.name() == "train"][0]
    params = {"MODEL": "cnn_lstm", "DEVICE": "CPU", "MIXTURE": 1, "MEMORY": "2", "EPOCHS": "5"}
    mapped = map_enum_names(train, params)
    assert mapped == {"MODEL": 1, "DEVICE": 2, "MIXTURE": 1, "MEMORY": "2", "EPOCHS": "5"}
    assert params["MODEL"] == "cnn_lstm"  # a copy
    assert map_enum_names(train, {"MODEL": "gru"}) == {"MODEL": "gru"}  # unknown: QGIS refuses it
    evaluate = [a for a in ismoe_algorithms() if a.name() == "evaluate"][0]
    assert map_enum_names(evaluate, {"BASELINES": "persistence,climatology"})["BASELINES"] == [0, 1]
    assert map_enum_names(evaluate, {"BASELINES": ["climatology"]})["BASELINES"] == [1]
    assert option_index(["Month", "Day of year"], "day_of_year") == 1


def test_enum_mixin_accepts_names_and_indices(qgis_app):
    from qgis.core import (QgsProcessingAlgorithm, QgsProcessingContext, QgsProcessingFeedback,
                           QgsProcessingParameterEnum)

    from ismoe_qgis.algorithms.enums import EnumNamesMixin

    class Probe(EnumNamesMixin, QgsProcessingAlgorithm):
        def name(self):
            return "probe"

        def createInstance(self):  # noqa: N802
            return Probe()

        def initAlgorithm(self, config=None):  # noqa: N802
            self.addParameter(QgsProcessingParameterEnum("MODEL", "Model", ["ismoe", "cnn_lstm"], defaultValue=0))

        def checkParameterValues(self, parameters, context):  # noqa: N802 - an override, as predict has
            return QgsProcessingAlgorithm.checkParameterValues(self, parameters, context)

        def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
            return {"MODEL": self.parameterAsEnum(parameters, "MODEL", context)}

    alg = Probe()
    alg.initAlgorithm()
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    for value, want in (("cnn_lstm", 1), ("CNN-LSTM", 1), (1, 1), ("1", 1), ("ismoe", 0)):
        assert alg.checkParameterValues({"MODEL": value}, context)[0], value
        results, ok = alg.run({"MODEL": value}, context, feedback)
        assert ok and results["MODEL"] == want, value
    assert not alg.checkParameterValues({"MODEL": "gru"}, context)[0]


def test_all_algorithms_accept_enum_names(qgis_app):
    """Needs the mixin in the base class: ``class IsmoeAlgorithm(EnumNamesMixin, QgsProcessingAlgorithm)``."""
    from qgis.core import QgsProcessingContext

    from ismoe_qgis.algorithms.base import IsmoeAlgorithm
    from ismoe_qgis.algorithms.enums import EnumNamesMixin

    assert issubclass(IsmoeAlgorithm, EnumNamesMixin), "base.py: IsmoeAlgorithm must mix in EnumNamesMixin"
    context = QgsProcessingContext()
    for alg in ismoe_algorithms():
        for param in alg.parameterDefinitions():
            if param.type() != "enum":
                continue
            last = len(param.options()) - 1
            assert alg.parameterAsEnum({param.name(): param.options()[last]}, param.name(), context) == last
            assert alg.parameterAsEnum({param.name(): last}, param.name(), context) == last


@pytest.mark.qgis_process
def test_qgis_process_takes_enum_names(qgis_process, tmp_path):
    ok = qgis_process.run("ismoe:installdependencies", {"VARIANT": "cuda", "CHECK_ONLY": True,
                                                         "TARGET": str(tmp_path / "d")})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PyTorch build: cuda (chosen" in ok.stdout
    by_index = qgis_process.run("ismoe:installdependencies", {"VARIANT": 1, "CHECK_ONLY": True,
                                                               "TARGET": str(tmp_path / "d")})
    assert by_index.returncode == 0 and "PyTorch build: cpu (chosen" in by_index.stdout
    bad = qgis_process.run("ismoe:installdependencies", {"VARIANT": "rocm", "CHECK_ONLY": True})
    assert bad.returncode != 0 and "VARIANT" in bad.stdout + bad.stderr
