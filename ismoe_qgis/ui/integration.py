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

    def follow(folder, dates):
        return follow_prediction(folder, dates, plugin, iface)

    from ..algorithms import layers
    plugin.follow_prediction_hook = follow
    layers.ON_PREDICTION_LOADED.append(follow)
    return dock


def unload_dock(plugin):
    """Undo :func:`init_dock` (safe to call twice or without a dock)."""
    iface = getattr(plugin, "iface", None)
    dock = getattr(plugin, "dock", None)
    action = getattr(plugin, "dock_action", None)
    hook = getattr(plugin, "follow_prediction_hook", None)
    if hook is not None:
        from ..algorithms import layers
        if hook in layers.ON_PREDICTION_LOADED:
            layers.ON_PREDICTION_LOADED.remove(hook)
        plugin.follow_prediction_hook = None
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


def follow_prediction(folder, dates, plugin, iface):
    """In the QGIS desktop, once ismoe:predict's layers are loaded (init_dock registers it in
    algorithms/layers.ON_PREDICTION_LOADED, which the layers' post-processor calls):

    - the Temporal Controller spans the prediction's dates in one-day frames and stands on the last date
      (the date the layers show); navigation is switched to "animated" when it was off, so stepping through
      the frames steps through the dates; a user's own range that already covers the dates is kept;
    - the importance dock opens on the prediction folder (shown, chart computed in the background).

    Only the desktop registers it (qgis_process and scripts have no dock). Returns what it did
    ({"temporal": bool, "dock": bool})."""
    done = {"temporal": False, "dock": False}
    if iface is None or not dates:
        return done
    canvas = iface.mapCanvas()
    tc = canvas.temporalController() if canvas is not None and hasattr(canvas, "temporalController") else None
    if tc is not None and hasattr(tc, "setTemporalExtents"):
        from qgis.core import QgsDateTimeRange, QgsInterval, QgsTemporalNavigationObject, QgsUnitTypes
        from qgis.PyQt.QtCore import QDate, QDateTime, QTime
        first = QDate.fromString(str(dates[0])[:10], "yyyy-MM-dd")
        last = QDate.fromString(str(dates[-1])[:10], "yyyy-MM-dd")
        want = QgsDateTimeRange(QDateTime(first, QTime(0, 0)), QDateTime(last.addDays(1), QTime(0, 0)), True, False)
        old = tc.temporalExtents()
        day = QgsInterval(1, QgsUnitTypes.TemporalDays)
        covered = (old.begin().isValid() and old.end().isValid() and old.begin() <= want.begin()
                   and old.end() >= want.end() and abs(tc.frameDuration().seconds() - day.seconds()) < 1)
        if not covered:
            tc.setTemporalExtents(want)
            tc.setFrameDuration(day)
        if tc.navigationMode() == QgsTemporalNavigationObject.NavigationOff:
            tc.setNavigationMode(QgsTemporalNavigationObject.Animated)
        ext = tc.temporalExtents()
        tc.setCurrentFrameNumber(max(0, ext.begin().date().daysTo(last)))
        done["temporal"] = True
    dock = getattr(plugin, "dock", None)
    if dock is not None:
        dock.show()
        dock.raise_()
        done["dock"] = bool(dock.load_source(folder))
    return done
