"""The QGIS plugin object: registers the ISMoE Processing provider (and, later, the dock)."""
from qgis.core import QgsApplication


class IsmoePlugin:
    """Created by ``classFactory``; ``iface`` is None when run by qgis_process."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.dock = None

    # -- Processing (no GUI code: qgis_process calls only this) ----------------------
    def initProcessing(self):  # noqa: N802 (QGIS API name)
        if self.provider is not None:
            return
        from .algorithms.provider import IsmoeProvider

        self.provider = IsmoeProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    # -- GUI ----------------------------------------------------------------------------
    def initGui(self):  # noqa: N802 (QGIS API name)
        self.initProcessing()
        if self.iface is not None:
            self._init_dock()

    def _init_dock(self):
        """Hook: create the weights dock widget and its menu/toolbar action (ui/)."""
        from .ui.integration import init_dock

        init_dock(self.iface, self)

    def _unload_dock(self):
        """Hook: remove what ``_init_dock`` added."""
        if getattr(self, "dock", None) is None:
            return
        from .ui.integration import unload_dock

        unload_dock(self)

    def unload(self):
        self._unload_dock()
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
