"""Plugin glue for the importance dock: View > Panels, a toolbar button and a menu entry.

``IsmoePlugin._init_dock`` calls :func:`init_dock`, ``_unload_dock`` calls :func:`unload_dock`.
Only used with a QGIS desktop (``iface`` not None); qgis_process never gets here.
"""
import os

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

MENU = "&ISMoE soil moisture"
ICON = os.path.join(os.path.dirname(__file__), "importance.svg")


def init_dock(iface, plugin):
    """Create the dock (hidden), add it to the main window (hence View > Panels) and add a
    checkable action (toolbar + Plugins menu) that shows/hides it. Stores ``plugin.dock``
    and ``plugin.dock_action``; returns the dock (None without iface)."""
    if iface is None:
        return None
    if getattr(plugin, "dock", None) is not None:
        return plugin.dock
    try:
        from .dock import ImportanceDock
    except ImportError as exc:  # e.g. python3-pyqtgraph missing: keep the Processing provider working
        from qgis.core import Qgis, QgsMessageLog
        QgsMessageLog.logMessage("ISMoE: the importance dock is not available ({}); install pyqtgraph "
                                 "(Debian/Ubuntu: apt install python3-pyqtgraph)".format(exc), "ISMoE", Qgis.Warning)
        return None

    main = iface.mainWindow()
    dock = ImportanceDock(iface.mapCanvas(), main, iface=iface)
    iface.addDockWidget(Qt.RightDockWidgetArea, dock)
    dock.hide()
    action = QAction(QIcon(ICON), "ISMoE seasonal importance", main)
    action.setObjectName("IsmoeImportanceDockAction")
    action.setToolTip("Show the ISMoE seasonal expert importance chart and pixel inspector")
    action.setCheckable(True)
    dock.setToggleVisibilityAction(action)  # keeps the check state and the dock visibility in sync
    iface.addPluginToMenu(MENU, action)
    iface.addToolBarIcon(action)
    plugin.dock = dock
    plugin.dock_action = action
    dock.restore_from_project()  # a project already open when the plugin loads
    return dock


def unload_dock(plugin):
    """Undo :func:`init_dock` (safe to call twice or without a dock)."""
    iface = getattr(plugin, "iface", None)
    dock = getattr(plugin, "dock", None)
    action = getattr(plugin, "dock_action", None)
    if action is not None and iface is not None:
        iface.removePluginMenu(MENU, action)
        iface.removeToolBarIcon(action)
    if dock is not None:
        dock.cleanup()
        if iface is not None:
            iface.removeDockWidget(dock)
        dock.hide()
        dock.deleteLater()
    if action is not None:
        action.deleteLater()
    plugin.dock = None
    plugin.dock_action = None
