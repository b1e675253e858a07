"""Parameter snapshot (issue 12 item 7): every algorithm's parameter definitions, in order, as QGIS sees them.

The algorithms declare their parameters through IsmoeAlgorithm's typed helpers (addParameterInt, ...). What
reaches QGIS (names, types, labels, defaults, flags, ranges, options, filters, ...) is what qgis_process,
processing.run, saved Model Builder models and scripts rely on, so it must not change by accident: this test
compares it with tests/data/parameters.json.

After an intended change, regenerate the snapshot and review the diff:

    source scripts/env.sh && ISMOE_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest -q tests/test_parameters.py
"""
import json
import os
from pathlib import Path

import pytest

SNAPSHOT = Path(__file__).resolve().parent / "data" / "parameters.json"


def plain(value):
    """A QVariant-ish value as JSON (NULL -> None, enums -> int, tuples -> lists)."""
    from qgis.PyQt.QtCore import QVariant
    if isinstance(value, QVariant):
        return None if value.isNull() else plain(value.value())
    if value is None or isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    try:
        return int(value)                       # sip enums and flags
    except (TypeError, ValueError):
        return str(value)


def _call(definition, method):
    fn = getattr(definition, method, None)
    return plain(fn()) if callable(fn) else None


# type() -> the accessors that describe that kind of parameter (beyond name, description, default, flags)
KIND_FIELDS = {
    "number": ("dataType", "minimum", "maximum"),
    "enum": ("options", "allowMultiple", "usesStaticStrings"),
    "file": ("behavior", "extension", "fileFilter"),
    "fileDestination": ("fileFilter", "defaultFileExtension", "createByDefault", "supportsNonFileBasedOutput"),
    "folderDestination": ("createByDefault", "supportsNonFileBasedOutput", "defaultFileExtension"),
    "multilayer": ("layerType", "minimumNumberInputs"),
    "source": ("dataTypes",),
    "field": ("parentLayerParameterName", "dataType", "allowMultiple", "defaultToAllFields"),
    "string": ("multiLine",),
    "boolean": (),
    "raster": (),
    "extent": (),
}


def describe(definition):
    from ismoe_qgis.algorithms.qgis_compat import PARAM_FLAG_ADVANCED, PARAM_FLAG_HIDDEN, PARAM_FLAG_OPTIONAL
    flags = definition.flags()
    kind = definition.type()
    out = {
        "name": definition.name(),
        "type": kind,
        "class": type(definition).__name__,
        "description": definition.description(),
        "defaultValue": plain(definition.defaultValue()),
        "flags": int(flags),
        "optional": bool(flags & PARAM_FLAG_OPTIONAL),
        "advanced": bool(flags & PARAM_FLAG_ADVANCED),
        "hidden": bool(flags & PARAM_FLAG_HIDDEN),
        "isDestination": bool(definition.isDestination()),
        "metadata": plain(definition.metadata()),
        "dependsOnOtherParameters": plain(definition.dependsOnOtherParameters()),
    }
    if kind not in KIND_FIELDS:
        raise AssertionError("%s: no snapshot fields for parameter type %r (add them to KIND_FIELDS)"
                             % (definition.name(), kind))
    for method in KIND_FIELDS[kind]:
        out[method] = _call(definition, method)
    return out


def snapshot():
    from qgis.core import Qgis

    from ismoe_qgis.algorithms.registry import ALGORITHMS
    algs = {}
    for cls in ALGORITHMS:
        alg = cls()
        alg.initAlgorithm({})
        algs[alg.name()] = {
            "parameters": [describe(d) for d in alg.parameterDefinitions()],
            "variant_maps": [plain(d.toVariantMap()) for d in alg.parameterDefinitions()],
            "outputs": [[o.name(), o.type(), o.description()] for o in alg.outputDefinitions()],
        }
    return {"qgis": ".".join(Qgis.QGIS_VERSION.split("-")[0].split(".")[:2]), "algorithms": algs}


@pytest.fixture(scope="module")
def current(qgis_app):
    return snapshot()


def test_snapshot_file(current):
    if os.environ.get("ISMOE_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
                            encoding="utf-8")
    assert SNAPSHOT.is_file(), "no snapshot: run with ISMOE_UPDATE_SNAPSHOT=1"


def test_every_algorithm_is_in_the_snapshot(current):
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    assert sorted(current["algorithms"]) == sorted(expected["algorithms"])


@pytest.mark.parametrize("alg_name", ["preparedataset", "train", "predict", "seasonalimportance", "evaluate",
                                      "installdependencies"])
def test_parameters_match_the_snapshot(current, alg_name):
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))["algorithms"][alg_name]
    got = json.loads(json.dumps(current["algorithms"][alg_name]))      # the same JSON round trip
    assert [p["name"] for p in got["parameters"]] == [p["name"] for p in expected["parameters"]], \
        "%s: parameter names or order changed" % alg_name
    for g, e in zip(got["parameters"], expected["parameters"]):
        # as JSON text: 30 and 30.0 differ (an integer default that became a float would pass ==)
        assert json.dumps(g, sort_keys=True) == json.dumps(e, sort_keys=True), \
            "%s: %s changed:\n got %s\nwant %s" % (alg_name, e["name"], g, e)
    assert got["outputs"] == expected["outputs"]


def test_variant_maps_match_the_snapshot(current):
    """QGIS's own serialisation of each definition (what a saved Model Builder model or a project stores);
    its keys differ between QGIS releases, so it is compared on the release that wrote the snapshot."""
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    if expected["qgis"] != current["qgis"]:
        pytest.skip("snapshot written by QGIS %s, this is %s" % (expected["qgis"], current["qgis"]))
    got = json.loads(json.dumps(current))
    for name, alg in expected["algorithms"].items():
        assert json.dumps(got["algorithms"][name]["variant_maps"], sort_keys=True) == \
            json.dumps(alg["variant_maps"], sort_keys=True), name


# --------------------------------------------------------------------------- the helpers and the help they build
def test_family_parameters_are_declared_once(current):
    """A parameter of a family (families.py) is the same definition in every algorithm of the family."""
    from ismoe_qgis.algorithms.families import FactorLayersAlgorithm, RegionsAlgorithm, TorchAlgorithm
    from ismoe_qgis.algorithms.registry import ALGORITHMS
    families = {FactorLayersAlgorithm: ("FACTORS", "REFERENCE", "START_DATE", "STEP_DAYS"),
                TorchAlgorithm: ("DEVICE", "DATASET"), RegionsAlgorithm: ("REGIONS", "REGION_FIELD")}
    for family, names in families.items():
        members = [cls().name() for cls in ALGORITHMS if issubclass(cls, family)]
        assert len(members) >= 2, family
        for name in names:
            seen = [dict(p) for m in members for p in current["algorithms"][m]["parameters"] if p["name"] == name]
            for p in seen:
                p.pop("flags"), p.pop("advanced")      # evaluate shows DEVICE under the advanced parameters
            assert len(seen) >= 2 and all(p == seen[0] for p in seen), (family.__name__, name)


def probe_class():
    from ismoe_qgis.algorithms.base import IsmoeAlgorithm

    class Probe(IsmoeAlgorithm):
        def name(self):
            return "probe"

        def helpIntro(self):  # noqa: N802
            return "Intro mentions EPOCHS and a_<x>.tif."

        def helpOutro(self):  # noqa: N802
            return "Outro."

        def initAlgorithm(self, config=None):  # noqa: N802
            self.addParameterInt("EPOCHS", "Epochs", 30, min=1, help="at most EPOCHS_MAX; see MODE=fast.")
            self.addParameterInt("EPOCHS_MAX", "Most epochs", 50, advanced=True)
            self.addParameterEnum("MODE", "Mode", ["fast", "slow"], default=1, optional=True,
                                  help=lambda alg: "chosen by %s." % alg.name())

    return Probe


def test_helpers_set_flags_and_keep_qgis_defaults(qgis_app):
    from ismoe_qgis.algorithms.qgis_compat import PARAM_FLAG_ADVANCED, PARAM_FLAG_OPTIONAL
    alg = probe_class()()
    alg.initAlgorithm()
    epochs, most, mode = alg.parameterDefinitions()
    assert (epochs.minimum(), epochs.defaultValue(), int(epochs.flags())) == (1, 30, 0)
    assert epochs.maximum() > 1e300 and most.minimum() < -1e300
    assert most.flags() & PARAM_FLAG_ADVANCED and not most.flags() & PARAM_FLAG_OPTIONAL
    assert mode.flags() & PARAM_FLAG_OPTIONAL and mode.options() == ["fast", "slow"] and mode.defaultValue() == 1


def test_help_is_built_from_the_declarations(qgis_app):
    alg = probe_class()()
    alg.initAlgorithm()
    assert alg.helpParameters() == [("Epochs", "at most EPOCHS_MAX; see MODE=fast."), ("Mode", "chosen by probe.")]
    from ismoe_qgis.algorithms.presentation import parameter_help
    entries = [("EPOCHS", "at most EPOCHS_MAX; see MODE=fast."), ("MODE", "chosen by probe.")]
    intro, outro = alg.helpIntro(), alg.helpOutro()
    assert parameter_help(alg, intro, entries, outro, as_html=True) == (
        "Intro mentions <i>Epochs</i> and a_&lt;x&gt;.tif.\n\n"
        "<b>Epochs</b> (EPOCHS): at most <i>Most epochs</i> (EPOCHS_MAX); see MODE=fast.\n"
        "<b>Mode</b> (MODE): chosen by probe.\n\nOutro.")
    assert parameter_help(alg, intro, entries, outro, as_html=False) == (
        "Intro mentions EPOCHS and a_<x>.tif.\n\n"
        "Epochs (EPOCHS): at most Most epochs (EPOCHS_MAX); see MODE=fast.\n"
        "Mode (MODE): chosen by probe.\n\nOutro.")
    assert alg.shortHelpString() in (parameter_help(alg, intro, entries, outro, as_html=True),
                                     parameter_help(alg, intro, entries, outro, as_html=False))
    # an instance initAlgorithm has not run on (QGIS always runs it) still gets the whole help
    assert probe_class()().shortHelpString().count("(EPOCHS)") == 1


def test_every_algorithm_help_follows_its_declarations(current):
    """shortHelpString: the intro, then one entry per parameter declared with help, in declaration order."""
    from ismoe_qgis.algorithms.registry import ALGORITHMS
    for cls in ALGORITHMS:
        alg = cls()
        alg.initAlgorithm({})
        text = alg.shortHelpString()
        labels = [label for label, _ in alg.helpParameters()]
        assert labels, alg.name()
        positions = [text.find("<b>%s</b> (" % label.replace("<", "&lt;").replace(">", "&gt;")) for label in labels]
        assert -1 not in positions and positions == sorted(positions), alg.name()
        assert text.startswith(alg.helpIntro()[:40].replace("<", "&lt;")), alg.name()
