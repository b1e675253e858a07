"""A headless QGIS for the repository's scripts (scripts/build_help.py, scripts/make_model3.py): one owner of
starting QgsApplication offscreen, initialising Processing and registering the 'ismoe' provider."""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_qgis():
    """A QgsApplication (no GUI, offscreen) with Processing initialised and the 'ismoe' provider registered:
    (app, provider). Keep the provider referenced: QGIS 3.22 does not keep the Python object alive."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    from qgis.core import QgsApplication

    app = QgsApplication.instance()
    if app is None:
        app = QgsApplication([], False)
        app.initQgis()
    plugins_dir = os.path.join(QgsApplication.pkgDataPath(), "python", "plugins")
    if plugins_dir not in sys.path:
        sys.path.append(plugins_dir)
    from processing.core.Processing import Processing

    Processing.initialize()
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("ismoe")
    if provider is None:
        from ismoe_qgis.algorithms.provider import IsmoeProvider

        provider = IsmoeProvider()
        registry.addProvider(provider)
    return app, provider
