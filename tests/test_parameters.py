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
