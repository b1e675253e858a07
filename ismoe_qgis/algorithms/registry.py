"""The algorithms the ISMoE provider offers: a static list of classes.

Add an algorithm by importing its class here and appending it to ``ALGORITHMS``. The imports are plain,
so a broken algorithm module fails loudly: importing this module raises (the tests see it), and the
provider logs the traceback to the QGIS message log instead of offering a partial set. Algorithm modules
must not import torch at module import time (call ``self.require_torch()`` inside processAlgorithm instead).
"""
from .evaluate import EvaluateAlgorithm
from .install_deps import InstallDependenciesAlgorithm
from .predict import PredictAlgorithm
from .prepare import PrepareDatasetAlgorithm
from .seasonal_importance import SeasonalImportanceAlgorithm
from .train import TrainAlgorithm

ALGORITHMS = (
    PrepareDatasetAlgorithm,
    TrainAlgorithm,
    PredictAlgorithm,
    SeasonalImportanceAlgorithm,
    EvaluateAlgorithm,
    InstallDependenciesAlgorithm,
)
