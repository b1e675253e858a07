"""ismoe_qgis checked as a person sees it: run inside the real QGIS desktop by ``qgis --code``.

    xvfb-run -a qgis --profiles-path PROFILES --nologo --noversioncheck --code scripts/desktop_check.py

with ISMOE_DESKTOP_CHECK=<config.json> in the environment (tests/test_desktop.py writes it; the
profile must have the plugin enabled). The config:

    {"predict": {ismoe:predict parameters}, "result": "<result.json>",
     "screenshots": "<folder or null>", "timeout": 300, "size": [1280, 800]}

What it does, the way a user would: opens ismoe:predict's algorithm dialog with the parameters, presses
Run (the dialog's own runAlgorithm, in a background task when the algorithm allows it), waits for the
dialog to finish and load the results, then reads what the desktop shows: the layers in the project
(group, names, renderers, visibility, temporal properties), the Temporal Controller's range and frame
count, the dock (visible, its source folder, whether its chart has data). It then steps the Temporal Controller to
the first and the last date and records which date each SM layer shows on the rendered canvas.
With "screenshots", it saves the main window with the SM map, with the dominant-factor map and the dock
on the same date. The result JSON holds everything read plus "errors" (exceptions, with tracebacks);
QGIS is then closed without saving (os._exit after the result is written).
"""
import json
import os
import time
import traceback

CFG = json.load(open(os.environ["ISMOE_DESKTOP_CHECK"], encoding="utf-8"))
RESULT = {"errors": [], "steps": []}


def _write():
    tmp = CFG["result"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(RESULT, f, indent=1, default=str)
    os.replace(tmp, CFG["result"])


def _pump(seconds=0.05):
    from qgis.PyQt.QtCore import QCoreApplication
    end = time.time() + seconds
    while True:
        QCoreApplication.processEvents()
        if time.time() >= end:
            return
        time.sleep(0.01)


def _wait(cond, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        _pump(0.05)
        if cond():
            return True
    RESULT["errors"].append(f"timeout after {timeout} s waiting for {what}")
    return False


def _wait_canvas(canvas, timeout=30.0):
    canvas.refresh()
    _pump(0.2)
    return _wait(lambda: not canvas.isDrawing(), timeout, "the map canvas to render")


def _layer_record(project, layer):
    from qgis.core import QgsRasterLayer
    node = project.layerTreeRoot().findLayer(layer.id())
    rec = {"name": layer.name(), "source": layer.source(), "valid": layer.isValid(),
           "visible": bool(node.isVisible()) if node is not None else None,
           "group": node.parent().name() if node is not None and node.parent() is not None else None}
    if isinstance(layer, QgsRasterLayer):
        r = layer.renderer()
        rec["renderer"] = type(r).__name__ if r is not None else None
        band = getattr(r, "inputBand", None) or getattr(r, "band", None)
        rec["band"] = band() if band else None
        tp = layer.temporalProperties()
        rec["temporal"] = bool(tp.isActive())
        if tp.isActive() and hasattr(tp, "fixedTemporalRange"):
            rng = tp.fixedTemporalRange()
            rec["range"] = [rng.begin().toString("yyyy-MM-dd"), rng.end().toString("yyyy-MM-dd")]
    return rec


def _visible_sm_dates(project, canvas):
    """The dates (layer names of the SM group's per-date layers, or the band of a per-band layer) drawn on
    the canvas at its current temporal frame."""
    from qgis.core import QgsRasterLayer
    drawn = []
    rng = canvas.temporalRange()
    for layer in canvas.layers():
        if not isinstance(layer, QgsRasterLayer):
            continue
        node = project.layerTreeRoot().findLayer(layer.id())
        if node is None or not in_group(node, "Soil moisture"):
            continue
        tp = layer.temporalProperties()
        if tp.isActive() and not tp.isVisibleInTemporalRange(rng):
            continue
        drawn.append(layer.name())
    return drawn


def screenshot(name):
    folder = CFG.get("screenshots")
    if not folder:
        return None
    from qgis.utils import iface
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    _wait_canvas(iface.mapCanvas())
    _pump(0.5)
    iface.mainWindow().grab().save(path)
    RESULT.setdefault("screenshots", []).append(path)
    return path


def set_visible(project, predicate, visible):
    for node in project.layerTreeRoot().findLayers():
        if predicate(node):
            node.setItemVisibilityChecked(visible)
            p = node.parent()
            while visible and p is not None and p != project.layerTreeRoot():
                p.setItemVisibilityChecked(True)
                p = p.parent()


def in_group(node, prefix):
    p = node.parent()
    while p is not None:
        if p.name().startswith(prefix):
            return True
        p = p.parent()
    return node.name().startswith(prefix)


def main():
    import processing
    from qgis.core import QgsApplication, QgsProject
    from qgis.utils import iface, plugins

    def on_message(msg, tag, level):
        RESULT.setdefault("messages", []).append(f"[{tag}] {msg}")
    QgsApplication.messageLog().messageReceived.connect(on_message)
    main_window = iface.mainWindow()
    w, h = CFG.get("size", [1280, 800])
    main_window.resize(w, h)
    main_window.show()
    RESULT["qgis"] = __import__("qgis.core", fromlist=["Qgis"]).Qgis.QGIS_VERSION
    if not _wait(lambda: QgsApplication.processingRegistry().algorithmById("ismoe:predict") is not None, 60,
                 "the ismoe provider's algorithms"):
        return
    RESULT["plugin_loaded"] = "ismoe_qgis" in plugins

    # ---- predict from its algorithm dialog, as a user presses Run
    dlg = processing.createAlgorithmDialog("ismoe:predict", CFG["predict"])
    dlg.show()
    _pump(0.3)
    RESULT["steps"].append("dialog opened")
    project = QgsProject.instance()
    n_before = len(project.mapLayers())
    dlg.runAlgorithm()
    RESULT["steps"].append("run pressed")
    out = CFG["predict"]["OUTPUT"]
    seen = {"n": -1, "since": time.time()}

    def settled():
        n = len(project.mapLayers())
        if n != seen["n"]:
            seen.update(n=n, since=time.time())
        return n > n_before and time.time() - seen["since"] > 2.0 and os.path.exists(os.path.join(out, "prediction.json"))

    done = _wait(settled, CFG.get("timeout", 300), "the prediction's layers")
    try:
        RESULT["dialog_log"] = dlg.textLog.toPlainText()
    except Exception:  # noqa: BLE001 - the widget name differs between versions; the log is a convenience
        pass
    if not done:
        return
    with open(os.path.join(out, "prediction.json"), encoding="utf-8") as f:
        man = json.load(f)
    RESULT["dates"] = man["dates"]
    RESULT["layers"] = [_layer_record(project, lyr) for lyr in project.mapLayers().values()]
    RESULT["groups"] = [g.name() for g in project.layerTreeRoot().findGroups()]
    dlg.close()

    # ---- the Temporal Controller
    canvas = iface.mapCanvas()
    tc = canvas.temporalController()
    ext = tc.temporalExtents()
    RESULT["temporal_controller"] = {
        "begin": ext.begin().toString("yyyy-MM-dd") if ext.begin().isValid() else None,
        "end": ext.end().toString("yyyy-MM-dd") if ext.end().isValid() else None,
        "frames": int(tc.totalFrameCount()) if hasattr(tc, "totalFrameCount") else None,
        "mode": int(tc.navigationMode()) if hasattr(tc, "navigationMode") else None,
    }
    ts = project.timeSettings().temporalRange()
    RESULT["project_time"] = [ts.begin().toString("yyyy-MM-dd"), ts.end().toString("yyyy-MM-dd")]

    # ---- the dock
    plugin = plugins.get("ismoe_qgis")
    dock = getattr(plugin, "dock", None)
    if dock is not None:
        _wait(lambda: getattr(dock, "table", None) is not None or not dock.isVisible(), 120, "the dock's chart")
        RESULT["dock"] = {"visible": dock.isVisible(), "source": getattr(dock, "source_path", None),
                          "has_table": getattr(dock, "table", None) is not None}

    # ---- step through time: first and last date
    from qgis.core import QgsTemporalNavigationObject
    tc.setNavigationMode(QgsTemporalNavigationObject.Animated)
    frames = {}
    for which, idx in (("first", 0), ("last", max(int(tc.totalFrameCount()) - 1, 0))):
        tc.setCurrentFrameNumber(idx)
        _wait_canvas(canvas)
        frames[which] = {"frame": idx, "canvas_range": canvas.temporalRange().begin().toString("yyyy-MM-dd"),
                         "sm_drawn": _visible_sm_dates(project, canvas)}
    RESULT["frames"] = frames

    # ---- screenshots on the last date: SM map (+ dock), dominant factor (+ dock)
    if CFG.get("screenshots"):
        from qgis.PyQt.QtWidgets import QDockWidget
        for d in main_window.findChildren(QDockWidget):     # the Temporal Controller panel, to show the date
            if "temporal" in (d.objectName() + d.windowTitle()).lower():
                d.show()
        canvas.zoomToFullExtent()
        screenshot("desktop_sm.png")
        set_visible(project, lambda n: in_group(n, "Soil moisture"), False)
        set_visible(project, lambda n: in_group(n, "Dominant factor"), True)
        screenshot("desktop_dominant.png")


try:
    main()
except Exception:  # noqa: BLE001 - everything goes into the result for the test to report
    RESULT["errors"].append(traceback.format_exc())
finally:
    _write()
    os._exit(0)
