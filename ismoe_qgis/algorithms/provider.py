"""The ISMoE Processing provider (id ``ismoe``)."""
import importlib
import os
import traceback

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..version import __version__
from . import registry

LOG_TAG = "ISMoE"
_PACKAGE_ROOT = __name__.split(".")[0]  # 'ismoe_qgis', whatever the folder is called


def _module_name(name):
    """Registry names are written 'ismoe_qgis.…'; follow the package if it was renamed."""
    if name == "ismoe_qgis" or name.startswith("ismoe_qgis."):
        return _PACKAGE_ROOT + name[len("ismoe_qgis"):]
    return name


def load_algorithm_classes(entries=None, warn=None):
    """Import the registry's algorithm classes; return [(class), ...] and skip failures.

    `warn(msg)` receives one message per skipped entry (default: QGIS message log).
    """
    if warn is None:
        def warn(msg):
            QgsMessageLog.logMessage(msg, LOG_TAG, Qgis.Warning)
    classes = []
    for module_name, class_name in (registry.ALGORITHMS if entries is None else entries):
        module_name = _module_name(module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                warn("ISMoE: algorithm module %s is not available; %s skipped"
                     % (module_name, class_name))
            else:
                warn("ISMoE: cannot import %s (%s); %s skipped"
                     % (module_name, exc, class_name))
            continue
        except Exception:  # noqa: BLE001 - a broken module must not break the provider
            warn("ISMoE: error importing %s; %s skipped\n%s"
                 % (module_name, class_name, traceback.format_exc()))
            continue
        cls = getattr(module, class_name, None)
        if cls is None:
            warn("ISMoE: %s has no class %s; skipped" % (module_name, class_name))
            continue
        classes.append(cls)
    return classes


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
        path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "icon.png")
        if os.path.exists(path):
            return QIcon(path)
        return QgsApplication.getThemeIcon("/processingAlgorithm.svg")

    def loadAlgorithms(self):  # noqa: N802
        for cls in load_algorithm_classes():
            try:
                self.addAlgorithm(cls())
            except Exception:  # noqa: BLE001
                QgsMessageLog.logMessage(
                    "ISMoE: cannot create algorithm %s\n%s" % (cls.__name__, traceback.format_exc()),
                    LOG_TAG, Qgis.Warning)
