#!/usr/bin/env python3
"""Build the Model Builder model ismoe_qgis/models/ismoe_prepare_train_predict.model3 (PyQGIS API).

The provider offers every .model3 in ismoe_qgis/models/ as ismoe:<file stem without ismoe_>, so this one
is ismoe:prepare_train_predict in the Toolbox (group 5 Model chains); models/ at the root is a link.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/make_model3.py [OUT.model3]

The model 'ISMoE: prepare, train, predict' (group 'ISMoE') chains
ismoe:preparedataset -> ismoe:train -> ismoe:predict:

  inputs   factors (multiple raster layers), factor_groups (string, optional),
           target (raster layer), epochs (integer, 10), patch_size (integer, 7),
           seq_len (integer, 14)
  children prepare  ismoe:preparedataset  FACTORS=factors FACTOR_GROUPS=factor_groups TARGET=target
                                          PATCH_SIZE=patch_size SEQ_LEN=seq_len OUTPUT=<temporary .npz>
           train    ismoe:train           DATASET=prepare.OUTPUT EPOCHS=epochs OUTPUT=<model output 'model'>
           predict  ismoe:predict         MODEL_FILE=train.OUTPUT FACTORS=factors OUTPUT=<model output 'prediction'>
  outputs  prediction (predict's OUTPUT folder), model (train's model file; default
           TEMPORARY_OUTPUT, see below)

QGIS 3.22 names a model output's destination parameter '<childId>:<output name>', so the
parameters (and the --json result keys) are 'predict:prediction' and 'train:model'. 3.22 keeps
the child's non-optional flag on a model output's parameter even when the output is not
mandatory: qgis_process and processing.run refuse a run without 'train:model' (give a path or
TEMPORARY_OUTPUT; the designer's dialog pre-fills TEMPORARY_OUTPUT, the default set here):

    qgis_process.bin run /abs/models/ismoe_prepare_train_predict.model3 -- \
        factors=a.tif factors=b.tif factor_groups='f1=a;f2=b' target=sm.tif epochs=1 \
        predict:prediction=/tmp/pred train:model=TEMPORARY_OUTPUT

3.22's validate() also wants a source for every mandatory child parameter, so the children's
remaining mandatory parameters are stored as static values (the algorithms' current defaults,
as the designer does): regenerate the model when an algorithm's defaults or parameters change.

Exits non-zero when the saved model does not load back or does not validate.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qgis_headless import start_qgis  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "ismoe_qgis", "models", "ismoe_prepare_train_predict.model3")  # shipped in the plugin

MODEL_NAME = "ISMoE: prepare, train, predict"
MODEL_GROUP = "ISMoE"

# Child ids: they become part of the model output parameter names ('predict:prediction').
PREPARE, TRAIN, PREDICT = "prepare", "train", "predict"

HELP = (
    "Prepares a dataset cube from the factor raster layers and the target soil-moisture series "
    "(ismoe:preparedataset), trains an ISMoE model on it (ismoe:train, default settings except the "
    "number of epochs) and predicts daily soil moisture and the routing weight of each factor over "
    "the factor layers' grid (ismoe:predict). The dataset is a temporary file; save the 'model' "
    "output to a file to keep the trained model.\n\n"
    "factors: one raster layer per variable (each band one day).\n"
    "factor_groups: which layers form each factor, e.g. 'snow=snow_depth,snow_cover;radiation=net_solar'. "
    "Empty: every layer is its own factor.\n"
    "target: the soil-moisture raster series.\n"
    "epochs, patch_size (odd), seq_len (days): training settings.\n"
    "prediction: the output folder (sm.tif, weight_<factor>.tif, prediction.json).\n"
    "model: where to keep the trained model file (.pt); a temporary file by default.")


def build_model():
    """The QgsProcessingModelAlgorithm (the 'ismoe' provider must be registered)."""
    from qgis.core import (QgsProcessing, QgsProcessingModelAlgorithm, QgsProcessingModelChildAlgorithm,
                           QgsProcessingModelChildParameterSource as Src, QgsProcessingModelOutput,
                           QgsProcessingModelParameter, QgsProcessingParameterMultipleLayers,
                           QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer,
                           QgsProcessingParameterString)
    from qgis.PyQt.QtCore import QPointF, QSizeF

    from ismoe_qgis.algorithms.qgis_compat import NUMBER_INTEGER, PARAM_FLAG_OPTIONAL, SOURCE_RASTER, optional

    model = QgsProcessingModelAlgorithm(MODEL_NAME, MODEL_GROUP, MODEL_GROUP)
    model.setHelpContent({"ALG_DESC": HELP, "ALG_CREATOR": "ismoe_qgis",
                          "ALG_HELP_CREATOR": "ismoe_qgis"})

    # ------------------------------------------------------------------ inputs
    inputs = [
        QgsProcessingParameterMultipleLayers("factors", "Factor layers", SOURCE_RASTER),
        optional(QgsProcessingParameterString("factor_groups", "Factor groups (factor=layer1,layer2;...)",
                                              multiLine=False)),
        QgsProcessingParameterRasterLayer("target", "Target soil moisture series"),
        QgsProcessingParameterNumber("epochs", "Epochs", NUMBER_INTEGER, 10, False, 1),
        QgsProcessingParameterNumber("patch_size", "Patch size (odd, pixels)", NUMBER_INTEGER, 7, False, 1),
        QgsProcessingParameterNumber("seq_len", "Sequence length (days)", NUMBER_INTEGER, 14, False, 1),
    ]
    for i, definition in enumerate(inputs):
        component = QgsProcessingModelParameter(definition.name())
        component.setPosition(QPointF(120.0, 60.0 + 70.0 * i))
        component.setSize(QSizeF(60.0, 30.0))
        model.addModelParameter(definition, component)
    model.setParameterOrder([d.name() for d in inputs])

    def child(alg_id, child_id, description, x, y, sources, outputs=()):
        c = QgsProcessingModelChildAlgorithm(alg_id)
        if c.algorithm() is None:
            raise RuntimeError("algorithm %s is not registered" % alg_id)
        c.setChildId(child_id)
        c.setDescription(description)
        c.setPosition(QPointF(x, y))
        c.setSize(QSizeF(200.0, 50.0))
        for name, src in sources.items():
            c.addParameterSources(name, [src])
        # 3.22's validate() wants a source for every mandatory child parameter (the designer
        # stores each one as a static value): fill the rest with the algorithm's defaults.
        for definition in c.algorithm().parameterDefinitions():
            if (definition.name() in sources or definition.isDestination()
                    or definition.flags() & PARAM_FLAG_OPTIONAL):
                continue
            c.addParameterSources(definition.name(), [Src.fromStaticValue(definition.defaultValue())])
        model_outputs = {}
        for j, (name, child_output, description_, mandatory) in enumerate(outputs):
            out = QgsProcessingModelOutput(name, description_)
            out.setChildId(child_id)
            out.setChildOutputName(child_output)
            out.setMandatory(mandatory)
            if not mandatory:
                # 3.22 keeps the child's non-optional flag on the model's destination
                # parameter (qgis_process and processing.run still want a value); the
                # default pre-fills the designer's dialog with a temporary output.
                out.setDefaultValue(QgsProcessing.TEMPORARY_OUTPUT)
            out.setPosition(QPointF(x + 200.0, y + 60.0 + 40.0 * j))
            out.setSize(QSizeF(60.0, 30.0))
            model_outputs[name] = out
        c.setModelOutputs(model_outputs)
        model.addChildAlgorithm(c)
        return c

    # ------------------------------------------------------------------ children
    child("ismoe:preparedataset", PREPARE, "Prepare dataset", 420.0, 120.0, {
        "FACTORS": Src.fromModelParameter("factors"),
        "FACTOR_GROUPS": Src.fromModelParameter("factor_groups"),
        "TARGET": Src.fromModelParameter("target"),
        "PATCH_SIZE": Src.fromModelParameter("patch_size"),
        "SEQ_LEN": Src.fromModelParameter("seq_len"),
    })  # OUTPUT (the dataset) is not a model output: a temporary .npz
    child("ismoe:train", TRAIN, "Train model", 420.0, 260.0, {
        "DATASET": Src.fromChildOutput(PREPARE, "OUTPUT"),
        "MODEL": Src.fromStaticValue(0),    # ismoe
        "DEVICE": Src.fromStaticValue(0),   # auto
        "EPOCHS": Src.fromModelParameter("epochs"),
    }, outputs=[("model", "OUTPUT", "Model file", False)])
    child("ismoe:predict", PREDICT, "Predict soil moisture and factor weights", 420.0, 400.0, {
        "MODEL_FILE": Src.fromChildOutput(TRAIN, "OUTPUT"),
        "FACTORS": Src.fromModelParameter("factors"),
        "DEVICE": Src.fromStaticValue(0),   # auto
    }, outputs=[("prediction", "OUTPUT", "Prediction folder", True)])
    model.updateDestinationParameters()
    return model


def check_model(path):
    """Load `path` back; return a list of problems (empty when it loads and validates)."""
    from qgis.core import QgsProcessingModelAlgorithm

    loaded = QgsProcessingModelAlgorithm()
    if not loaded.fromFile(path):
        return ["%s does not load as a model" % path]
    problems = []
    ok, issues = loaded.validate()
    if not ok:
        problems.extend(issues)
    for child_id in (PREPARE, TRAIN, PREDICT):
        if loaded.childAlgorithm(child_id).algorithm() is None:
            problems.append("child %s: algorithm %s is not available"
                            % (child_id, loaded.childAlgorithm(child_id).algorithmId()))
    names = sorted(d.name() for d in loaded.parameterDefinitions())
    expected = sorted(["factors", "factor_groups", "target", "epochs", "patch_size", "seq_len",
                       PREDICT + ":prediction", TRAIN + ":model"])
    if names != expected:
        problems.append("parameters %s, expected %s" % (names, expected))
    outputs = sorted(d.name() for d in loaded.outputDefinitions())
    if outputs != sorted([PREDICT + ":prediction", TRAIN + ":model"]):
        problems.append("outputs %s" % outputs)
    return problems


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    out = os.path.abspath(argv[0] if argv else DEFAULT_OUT)
    app, _provider = start_qgis()
    model = build_model()
    ok, issues = model.validate()
    if not ok:
        print("model does not validate:\n  " + "\n  ".join(issues), file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if not model.toFile(out):
        print("cannot write %s" % out, file=sys.stderr)
        return 1
    problems = check_model(out)
    if problems:
        print("%s written but:\n  %s" % (out, "\n  ".join(problems)), file=sys.stderr)
        return 1
    print("wrote %s" % out)
    print("parameters: %s" % ", ".join(d.name() for d in model.parameterDefinitions()))
    print("outputs: %s" % ", ".join(d.name() for d in model.outputDefinitions()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
