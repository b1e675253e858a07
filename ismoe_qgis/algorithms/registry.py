"""The algorithms the ISMoE provider offers: (module, class name) pairs.

Append a line to add an algorithm. Modules are imported lazily by the provider; a module
that is missing (or fails to import) is skipped with a warning in the QGIS message log,
so a partially built tree still loads. Algorithm modules must not import torch at module
import time (call ``self.require_torch()`` inside processAlgorithm instead).
"""

ALGORITHMS = [
    ("ismoe_qgis.algorithms.prepare", "PrepareDatasetAlgorithm"),
    ("ismoe_qgis.algorithms.train", "TrainAlgorithm"),
    ("ismoe_qgis.algorithms.predict", "PredictAlgorithm"),
    ("ismoe_qgis.algorithms.seasonal_importance", "SeasonalImportanceAlgorithm"),
    ("ismoe_qgis.algorithms.evaluate", "EvaluateAlgorithm"),
    ("ismoe_qgis.algorithms.install_deps", "InstallDependenciesAlgorithm"),
]

# Model Builder models (.model3) in this folder of the plugin are offered by the provider too
# (ids 'ismoe:<file name without .model3 and a leading ismoe_>').
MODELS_DIR = "models"
