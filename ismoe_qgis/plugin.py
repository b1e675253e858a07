"""The QGIS plugin object: registers the ISMoE Processing provider and the dock; says when torch is missing."""
import importlib.util

from qgis.core import Qgis, QgsApplication

INSTALLER_ID = "ismoe:installdependencies"


def add_dependency_paths():
    """Put the plugin-private dependency folder of this QGIS profile (where ismoe:installdependencies
    installs torch) at the front of sys.path. Returns the folder added, or None."""
    from ._venv import add_deps_to_path

    try:
        settings = QgsApplication.qgisSettingsDirPath()
    except Exception:  # noqa: BLE001 - no QgsApplication: only $ISMOE_DEPS_DIR counts
        settings = None
    return add_deps_to_path(settings)


def torch_importable():
    return importlib.util.find_spec("torch") is not None


class IsmoePlugin:
    """Created by ``classFactory``; ``iface`` is None when run by qgis_process."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.dock = None
        self.torch_message = None

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
            self.warn_if_torch_missing()

    # -- torch missing: a message-bar warning with a button that opens the installer ---------
    def warn_if_torch_missing(self):
        """Without torch, push a warning with an 'Install PyTorch…' button (ismoe:installdependencies)
        onto the message bar. Returns the message widget, or None when torch is importable."""
        if torch_importable() or self.iface is None:
            return None
        from qgis.PyQt.QtWidgets import QPushButton

        bar = self.iface.messageBar()
        widget = bar.createMessage(
            "ISMoE", "PyTorch is not installed for QGIS's Python; training and prediction need it.")
        button = QPushButton(widget)
        button.setObjectName("IsmoeInstallTorchButton")
        button.setText("Install PyTorch…")
        button.clicked.connect(self.open_installer)
        widget.layout().addWidget(button)
        bar.pushWidget(widget, Qgis.Warning)
        self.torch_message = widget
        return widget

    def open_installer(self):
        """Open the ismoe:installdependencies dialog; drop the warning once torch imports."""
        import processing

        processing.execAlgorithmDialog(INSTALLER_ID, {})
        if torch_importable() and self.torch_message is not None and self.iface is not None:
            try:
                self.iface.messageBar().popWidget(self.torch_message)
            except RuntimeError:  # already closed by the user
                pass
            self.torch_message = None

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
