"""The ISMoE Processing provider (id ``ismoe``)."""
import glob
import os
import traceback

from qgis.core import Qgis, QgsMessageLog, QgsProcessingModelAlgorithm, QgsProcessingProvider

from ..version import __version__
from . import presentation

LOG_TAG = "ISMoE"
MODELS_DIR = "models"   # the shipped Model Builder models (.model3), inside the plugin folder


def algorithm_classes():
    """The provider's algorithm classes (registry.ALGORITHMS, a static list). An algorithm module that fails
    to import raises here: the error is not hidden behind a shorter list of algorithms."""
    from . import registry
    return list(registry.ALGORITHMS)


def model_files(folder=None):
    """The .model3 files the plugin ships (``<plugin>/models``), sorted."""
    folder = folder or os.path.join(presentation.PLUGIN_DIR, MODELS_DIR)
    return sorted(glob.glob(os.path.join(folder, "*.model3")))


def model_id_name(path):
    """'ismoe_prepare_train_predict.model3' -> 'prepare_train_predict' (the part after 'ismoe:')."""
    stem = os.path.splitext(os.path.basename(path))[0]
    stem = stem[len("ismoe_"):] if stem.startswith("ismoe_") else stem
    return "".join(c if c.isalnum() else "_" for c in stem.lower()).strip("_") or "model"


class IsmoeModelAlgorithm(presentation.Presented, QgsProcessingModelAlgorithm):
    """A shipped Model Builder model, offered by the provider: id ``ismoe:<file stem>``, display name
    the model's own name, group '5 Model chains', the plugin's icon."""

    def __init__(self, path=None):
        super().__init__()
        self._path = path
        if path is not None and not self.fromFile(path):
            raise ValueError("cannot read the model %s" % path)

    def name(self):
        return model_id_name(self._path or "model")

    def displayName(self):  # noqa: N802
        return super().name() or self.name()

    def tags(self):
        return ["model", "model builder", "chain", "workflow"] + presentation.tags("train")

    def createInstance(self):  # noqa: N802
        return IsmoeModelAlgorithm(self._path)


class IsmoeProvider(QgsProcessingProvider):
    """Processing provider for the ISMoE soil-moisture algorithms."""

    def id(self):  # noqa: A003 (QGIS API name)
        return "ismoe"

    def name(self):
        return "ISMoE soil moisture"

    def longName(self):  # noqa: N802
        return "ISMoE soil moisture (interpretable Mixture-of-Experts) %s" % __version__

    def versionInfo(self):  # noqa: N802
        return __version__

    def icon(self):
        return presentation.icon()

    def svgIconPath(self):  # noqa: N802
        return presentation.ICON_PATH

    def loadAlgorithms(self):  # noqa: N802
        try:
            classes = algorithm_classes()
        except Exception:
            QgsMessageLog.logMessage("ISMoE: the Processing algorithms could not be imported; the plugin "
                                     "installation is broken (reinstall it):\n%s" % traceback.format_exc(),
                                     LOG_TAG, Qgis.Critical)
            raise
        for cls in classes:
            try:
                self.addAlgorithm(cls())
            except Exception:  # noqa: BLE001
                QgsMessageLog.logMessage(
                    "ISMoE: cannot create algorithm %s\n%s" % (cls.__name__, traceback.format_exc()),
                    LOG_TAG, Qgis.Warning)
        for path in model_files():
            try:
                self.addAlgorithm(IsmoeModelAlgorithm(path))
            except Exception:  # noqa: BLE001 - a broken model must not break the provider
                QgsMessageLog.logMessage("ISMoE: cannot load the model %s\n%s" % (path, traceback.format_exc()),
                                         LOG_TAG, Qgis.Warning)
