#!/usr/bin/env python3
"""Render the ISMoE importance dock over a prediction folder, offscreen, to PNG (for the README).

    .venv/bin/python scripts/screenshot_dock.py out/demo/prediction
    .venv/bin/python scripts/screenshot_dock.py PRED --out docs/dock.png --pixel 12,8 --stacked

Writes a QGIS-like window (map canvas showing one date of sm.tif, the dock on the right with
the seasonal-importance chart) to --out, and the same window with the pixel inspector tab
(after a click on --pixel, default the centre pixel) to --inspector-out. Needs no display
(QT_QPA_PLATFORM=offscreen is set when unset).
"""
import argparse
import gc
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="prediction folder (output of ismoe:predict) or seasonal-importance CSV")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "dock.png"), help="chart screenshot (PNG)")
    p.add_argument("--inspector-out", default=None,
                   help="pixel-inspector screenshot (default: <out>_inspector.png; '' to skip)")
    p.add_argument("--pixel", default=None, help="row,col of the pixel to inspect (default: centre)")
    p.add_argument("--period", default="month", choices=["month", "doy", "season"])
    p.add_argument("--stacked", action="store_true", help="stacked areas instead of lines")
    p.add_argument("--size", default="1280x760", help="window size WIDTHxHEIGHT")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the aggregation")
    return p.parse_args(argv)


def wait_for_canvas(canvas, app, timeout=30.0):
    end = time.time() + timeout
    canvas.refreshAllLayers()
    while time.time() < end:
        app.processEvents()
        if not canvas.isDrawing():
            time.sleep(0.05)
            app.processEvents()
            if not canvas.isDrawing():
                return True
        time.sleep(0.02)
    return False


def sm_layer(folder):
    """sm.tif at its middle date, pseudocolour (Viridis) between the 2nd and 98th percentiles."""
    from qgis.core import (QgsColorRampShader, QgsRasterBandStats, QgsRasterLayer, QgsRasterShader,
                           QgsSingleBandPseudoColorRenderer, QgsStyle)

    layer = QgsRasterLayer(folder.sm_path, "soil moisture {}".format(folder.dates[folder.n_dates // 2]))
    if not layer.isValid():
        return None
    band = folder.n_dates // 2 + 1
    stats = layer.dataProvider().bandStatistics(band, QgsRasterBandStats.Min | QgsRasterBandStats.Max)
    ramp = QgsStyle.defaultStyle().colorRamp("Viridis")
    shader_fn = QgsColorRampShader(stats.minimumValue, stats.maximumValue, ramp)
    shader_fn.classifyColorRamp(8, band)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(shader_fn)
    layer.setRenderer(QgsSingleBandPseudoColorRenderer(layer.dataProvider(), band, shader))
    return layer


def main(argv=None):
    args = parse_args(argv)
    from qgis.core import QgsApplication, QgsProject
    from qgis.PyQt.QtCore import QCoreApplication, QEvent

    app = QgsApplication([], True)
    app.initQgis()
    widgets = []
    try:
        return render(args, app, widgets)
    finally:
        # tear down in order (widgets, project, QGIS): a standalone QGIS app that leaves this to
        # the garbage collector crashes at exit
        for w in widgets:
            if hasattr(w, "cleanup"):
                w.cleanup()
            w.close()
            w.deleteLater()
        del widgets[:]
        QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
        gc.collect()
        QgsProject.instance().clear()
        app.exitQgis()


def render(args, app, widgets):
    from qgis.core import QgsProject
    from qgis.gui import QgsMapCanvas
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtWidgets import QMainWindow

    from ismoe_qgis.ui.dock import ImportanceDock

    width, height = (int(v) for v in args.size.lower().split("x"))
    win = QMainWindow()
    win.setWindowTitle("ISMoE seasonal importance")
    canvas = QgsMapCanvas(win)
    canvas.setCanvasColor(Qt.white)
    win.setCentralWidget(canvas)
    dock = ImportanceDock(canvas, win)
    widgets[:] = [dock, win]
    win.addDockWidget(Qt.RightDockWidgetArea, dock)
    win.resize(width, height)
    dock.setMinimumWidth(int(width * 0.5))
    win.show()

    if not dock.load_source(args.source, compute=False):
        print("error: " + dock.message(), file=sys.stderr)
        return 2
    folder = dock.folder
    if folder is not None:
        layer = sm_layer(folder)
        if layer is not None:
            QgsProject.instance().addMapLayer(layer)
            canvas.setDestinationCrs(layer.crs())
            canvas.setLayers([layer])
            canvas.setExtent(layer.extent())
        dock.set_period(args.period)
        dock.set_stacked(args.stacked)
        dock.compute()
        t0 = time.time()
        if not dock.wait(args.timeout):
            print("error: the aggregation did not finish in %.0f s" % args.timeout, file=sys.stderr)
            return 3
        print("aggregated in %.1f s: %s" % (time.time() - t0, dock.message()))
    else:
        dock.set_period(args.period)
        dock.set_stacked(args.stacked)
    if dock.message_level() == "error":
        print("error: " + dock.message(), file=sys.stderr)
        return 2
    wait_for_canvas(canvas, app)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    app.processEvents()
    win.grab().save(args.out)
    print("wrote", args.out)

    inspector_out = args.inspector_out
    if inspector_out is None:
        inspector_out = os.path.splitext(args.out)[0] + "_inspector.png"
    if inspector_out and folder is not None:
        if args.pixel:
            row, col = (int(v) for v in args.pixel.split(","))
        else:
            row, col = folder.height // 2, folder.width // 2
        x, y = folder.transform * (col + 0.5, row + 0.5)
        dock.pick_button.setChecked(True)
        dock.inspect_map_point((x, y), None)       # as a click on the map (raster CRS = canvas CRS here)
        dock.wait(120)
        dock._place_marker(x, y, None)
        dock.tabs.setCurrentIndex(1)
        wait_for_canvas(canvas, app)
        app.processEvents()
        win.grab().save(inspector_out)
        print("wrote", inspector_out, "(pixel row %d, col %d)" % (row, col))
    return 0


if __name__ == "__main__":
    code = main()
    # QGIS has been shut down (exitQgis); skip Python's teardown of the remaining Qt wrappers,
    # which only prints "no QGuiApplication instance" noise (or crashes) in standalone scripts
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
