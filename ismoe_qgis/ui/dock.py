"""ImportanceDock: seasonal expert importance chart + pixel inspector (pyqtgraph).

The widget stays thin: every number comes from the core (:mod:`ismoe_qgis.model.prediction_folder`,
:mod:`ismoe_qgis.model.importance_chart`, :mod:`ismoe_qgis.model.importance`) and the date cursor from
:mod:`ismoe_qgis.ui.chartdata`, all tested without Qt. Heavy reads run in QgsTasks that only see plain
data (paths, GeoJSON dicts, CRS strings); QGIS objects (layers, canvas) are read here, in the GUI thread. Every bad input ends as a
message line in the dock, never as a traceback dialog (details go to the message log).
"""
import os
import time
import traceback

os.environ.setdefault("PYQTGRAPH_QT_LIB", "PyQt5")  # QGIS is PyQt5; never let pyqtgraph pick PyQt6

import numpy as np
from qgis.core import (Qgis, QgsApplication, QgsCoordinateReferenceSystem, QgsCoordinateTransform,
                       QgsExpression, QgsExpressionContext, QgsExpressionContextUtils, QgsFeatureRequest,
                       QgsMapLayerProxyModel, QgsMessageLog, QgsPointXY, QgsProject, QgsTask, QgsWkbTypes)
from qgis.gui import QgsDockWidget, QgsMapLayerComboBox, QgsMapToolEmitPoint, QgsVertexMarker
from qgis.PyQt.QtCore import QCoreApplication, QDate, QDateTime, Qt, QTime, pyqtSignal
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QProgressBar,
                                 QPushButton, QSizePolicy, QTabWidget, QToolButton, QVBoxLayout, QWidget)

import pyqtgraph as pg  # noqa: E402  (after the Qt binding is fixed)

from ..options import CHART_PERIODS as PERIODS
from ..algorithms.regions import crs_for_core, feature_geojson
from ..core_callbacks import Callbacks, Cancelled
from ..model import importance as imp
from ..model import importance_chart as ic
from ..model import prediction_folder as pf
from . import chartdata as cd

LOG_TAG = "ISMoE"
PROJECT_SCOPE = "ismoe_qgis"
PROJECT_KEY_SOURCE = "dock/source"
MODE_WHOLE, MODE_EXTENT, MODE_FEATURE, MODE_ZONE = "whole", "extent", "feature", "zone"
MAX_FEATURES = 5000
FILL_ALPHA = 190  # stacked areas
BAND_ALPHA = ic.BAND_ALPHA  # ensemble spread band (0..1)
CURSOR_COLOUR = "#333333"


def _fmt_coord(v):
    """Map coordinate for display: metres to 0.1, degrees to 1e-5."""
    return "{:.1f}".format(v) if abs(v) >= 1000 else "{:.5f}".format(v)


def _epoch_seconds(dates):
    return np.asarray(dates).astype("datetime64[s]").astype(np.int64).astype(float)


def legend_html(entries):
    """HTML legend: [(name, colour, marker)] -> coloured swatches with names."""
    return "&nbsp;&nbsp;".join(
        "<span style='color:{}; font-size:13pt'>{}</span>&nbsp;{}".format(c, m, n) for n, c, m in entries)


def _plot_item():
    """A pyqtgraph PlotDataItem that draws its line as one path: pyqtgraph 0.13.1 (Debian 12) draws pens wider
    than 1 px as line segments and raises TypeError in paint() for a curve without a segment (one point, or
    no two neighbouring finite points), which QGIS then logs on every repaint."""
    item = pg.PlotDataItem()
    curve = getattr(item, "curve", None)
    if curve is not None and hasattr(curve, "setSegmentedLineMode"):
        curve.setSegmentedLineMode("off")
    return item


def _has_segment(y) -> bool:
    """Whether a line through y has at least one segment (two neighbouring finite values)."""
    ok = np.isfinite(np.asarray(y, dtype=float))
    return bool((ok[1:] & ok[:-1]).any())


class _CurvePool:
    """Named curves on one pyqtgraph plot that are reused, never removed.

    Removing a pyqtgraph item inside QGIS raises "unable to convert a QVariant back to
    a Python object" in pyqtgraph's itemChange (QGIS's sip registers QGraphicsItem
    conversions), which QGIS reports as a Python error. So curves are created once per
    name, updated with setData and hidden when unused.
    """

    def __init__(self, plot):
        self.plot = plot
        self.items = {}          # name -> (curve, lower curve, fill)
        self.bands = {}          # name -> (band lower curve, band upper curve, fill): an ensemble's spread
        self.visible = []        # names shown, in drawing order
        self.visible_bands = []  # names whose band is shown

    def hide_all(self):
        for curve, lower, fill in self.items.values():
            curve.setVisible(False)
            lower.setVisible(False)
            fill.setVisible(False)
        for items in self.bands.values():
            for item in items:
                item.setVisible(False)
        self.visible = []
        self.visible_bands = []

    def show_band(self, name, x, lower, upper, colour, alpha=BAND_ALPHA):
        """A translucent band lower..upper in ``colour`` behind curve ``name`` (mean +- spread)."""
        if name not in self.bands:
            lo, hi = _plot_item(), _plot_item()
            fill = pg.FillBetweenItem(lo, hi)
            fill.setZValue(-5)
            for item in (fill, lo, hi):
                self.plot.addItem(item)
            self.bands[name] = (lo, hi, fill)
        lo, hi, fill = self.bands[name]
        x = np.asarray(x, dtype=float)
        for item, y in ((lo, lower), (hi, upper)):
            item.setData(x, np.asarray(y, dtype=float), pen=pg.mkPen(None), connect="finite")
            item.setVisible(True)
        brush = QColor(colour)
        brush.setAlpha(int(round(255 * alpha)))
        fill.setBrush(pg.mkBrush(brush))
        fill.setVisible(True)
        self.visible_bands.append(name)
        return fill

    def band_data(self, name):
        """(x, lower, upper) of a shown band."""
        lo, hi, _fill = self.bands[name]
        x, ylo = lo.getData()
        return x, ylo, hi.getData()[1]

    def show(self, name, x, y, colour, width=2.0, symbol=None, symbol_size=6, lower=None, line=True):
        if name not in self.items:
            curve = _plot_item()
            low = _plot_item()
            fill = pg.FillBetweenItem(low, curve)
            fill.setZValue(-10)
            for item in (fill, low, curve):
                self.plot.addItem(item)
            self.items[name] = (curve, low, fill)
        curve, low, fill = self.items[name]
        colour = QColor(colour)
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if line and symbol is None and not _has_segment(y):   # a lone point (e.g. one month): draw it as a dot
            symbol = "o"
        curve.setData(x, y, pen=pg.mkPen(colour, width=width) if line else None, connect="finite",
                      symbol=symbol, symbolSize=symbol_size, symbolBrush=pg.mkBrush(colour) if symbol else None,
                      symbolPen=None)
        curve.setVisible(True)
        if lower is not None:
            low.setData(x, np.asarray(lower, dtype=float), pen=pg.mkPen(None))  # NoPen: None would skip the path
            brush = QColor(colour)
            brush.setAlpha(FILL_ALPHA)
            fill.setBrush(pg.mkBrush(brush))
            low.setVisible(True)
            fill.setVisible(True)
        else:
            low.setVisible(False)
            fill.setVisible(False)
        self.visible.append(name)
        return curve

    def data(self, name):
        curve = self.items[name][0]
        return curve.getData()


class _ChartTask(QgsTask):
    """Runs ``fn(callbacks)`` in a worker thread; ``on_done(task)`` runs in the GUI thread."""

    def __init__(self, description, fn, on_done):
        super().__init__(description, QgsTask.CanCancel)
        self.fn = fn
        self.on_done = on_done
        self.result = None
        self.error = None
        self.details = ""
        self.cancelled = False

    def run(self):
        cb = Callbacks(progress=lambda f: self.setProgress(max(0.0, min(100.0, 100.0 * float(f)))),
                       is_cancelled=self.isCanceled)
        try:
            self.result = self.fn(cb)
            return True
        except Cancelled:
            self.cancelled = True
            return False
        except Exception as exc:  # noqa: BLE001 - reported in the dock
            self.error = exc
            self.details = traceback.format_exc()
            return False

    def finished(self, ok):  # noqa: D401 - QgsTask API, GUI thread
        if self.isCanceled():
            self.cancelled = True
        try:
            self.on_done(self)
        except Exception:  # noqa: BLE001 - never let a slot exception reach Qt
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.Warning)


def _select_data(combo, value, message):
    """Select the item of `combo` whose data is `value`; ChartDataError(message.format(value)) if none is."""
    i = combo.findData(value)
    if i < 0:
        raise pf.ChartDataError(message.format(value))
    combo.setCurrentIndex(i)


class ImportanceDock(QgsDockWidget):
    """Dock with the seasonal-importance chart, a region selector and a pixel inspector."""

    sourceLoaded = pyqtSignal(str)
    chartUpdated = pyqtSignal()
    pixelInspected = pyqtSignal(int, int)

    def __init__(self, canvas=None, parent=None, iface=None, project=None):
        super().__init__("ISMoE seasonal importance", parent)
        self.setObjectName("IsmoeImportanceDock")
        self.canvas = canvas
        self.iface = iface
        self._project = project
        self.source_path = ""
        self.folder = None            # pf.PredictionFolder
        self.csv_table = None         # imp.ImportanceTable of a CSV source
        self.table = None             # table on the chart
        self.pixel = None             # pf.PixelSeries in the inspector
        self._cache = {}
        self._tasks = {}              # purpose -> running task
        self._message = ("", "info")
        self._chart_title = ""
        self._marker = None
        self._members = None          # ensemble members of the source (None: single model / unknown)
        self._cursor_date = None      # np.datetime64[D] of the date cursor (Temporal Controller), or None
        self.temporal_controller = None
        self._build_ui()
        self.map_tool = None
        if canvas is not None:
            self.map_tool = QgsMapToolEmitPoint(canvas)
            self.map_tool.canvasClicked.connect(self._on_canvas_clicked)
            self.map_tool.deactivated.connect(lambda: self.pick_button.setChecked(False))
        self.project().readProject.connect(self._on_project_read)
        self.set_temporal_controller(self._canvas_temporal_controller())
        self._update_region_widgets()
        self._update_measure_widget()
        self.show_message("Choose a prediction folder (output of ismoe:predict) or a seasonal-importance CSV.")

    # ------------------------------------------------------------------ UI
    def _build_ui(self):
        root = QWidget(self)
        lay = QVBoxLayout(root)
        lay.setContentsMargins(4, 4, 4, 4)

        src = QHBoxLayout()
        self.source_edit = QLineEdit(root)
        self.source_edit.setPlaceholderText("prediction folder or importance CSV")
        self.source_edit.returnPressed.connect(lambda: self._safe(self.load_source, self.source_edit.text()))
        self.folder_button = QToolButton(root)
        self.folder_button.setText("Folder…")
        self.folder_button.setToolTip("Choose a prediction folder (sm.tif + weight_<factor>.tif + prediction.json)")
        self.folder_button.clicked.connect(lambda: self._safe(self._browse_folder))
        self.csv_button = QToolButton(root)
        self.csv_button.setText("CSV…")
        self.csv_button.setToolTip("Choose a seasonal-importance CSV (evaluation or ismoe:seasonalimportance)")
        self.csv_button.clicked.connect(lambda: self._safe(self._browse_csv))
        src.addWidget(QLabel("Source", root))
        src.addWidget(self.source_edit, 1)
        src.addWidget(self.folder_button)
        src.addWidget(self.csv_button)
        lay.addLayout(src)

        self.info_label = QLabel("", root)
        self.info_label.setWordWrap(True)
        self.info_label.setStyleSheet("color:#555")
        lay.addWidget(self.info_label)
        self.message_label = QLabel("", root)
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        lay.addWidget(self.message_label)

        self.tabs = QTabWidget(root)
        lay.addWidget(self.tabs, 1)

        # --- seasonal importance tab
        tab = QWidget()
        tl = QVBoxLayout(tab)
        tl.setContentsMargins(2, 2, 2, 2)
        row = QHBoxLayout()
        row.addWidget(QLabel("Region", tab))
        self.region_combo = QComboBox(tab)
        self.region_combo.currentIndexChanged.connect(lambda _i: self._safe(self._on_region_changed))
        row.addWidget(self.region_combo, 1)
        self.compute_button = QPushButton("Compute", tab)
        self.compute_button.setToolTip("Average the weight rasters over the region (runs in the background)")
        self.compute_button.clicked.connect(lambda: self._safe(self.compute))
        row.addWidget(self.compute_button)
        tl.addLayout(row)

        row = QHBoxLayout()
        self.layer_combo = QgsMapLayerComboBox(tab)
        self.layer_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.layer_combo.setAllowEmptyLayer(True)
        self.layer_combo.setLayer(None)
        self.layer_combo.layerChanged.connect(lambda _l: self._safe(self._fill_features))
        self.feature_combo = QComboBox(tab)
        self.feature_combo.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.feature_combo.currentIndexChanged.connect(lambda _i: self._safe(self._on_region_changed))
        row.addWidget(self.layer_combo, 1)
        row.addWidget(self.feature_combo, 1)
        self.zone_layer_combo = QgsMapLayerComboBox(tab)
        self.zone_layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.zone_layer_combo.setAllowEmptyLayer(True)
        self.zone_layer_combo.setLayer(None)
        self.zone_layer_combo.setToolTip("A raster of zone numbers (e.g. regions.tif); nodata and 0 are no zone")
        self.zone_layer_combo.layerChanged.connect(lambda _l: self._safe(self._fill_zones))
        self.zone_combo = QComboBox(tab)
        self.zone_combo.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        row.addWidget(self.zone_layer_combo, 1)
        row.addWidget(self.zone_combo, 1)
        self._zones = {}
        tl.addLayout(row)

        row = QHBoxLayout()
        self.period_combo = QComboBox(tab)
        for label, kind in PERIODS:
            self.period_combo.addItem(label, kind)
        self.period_combo.currentIndexChanged.connect(lambda _i: self._safe(self.redraw))
        self.style_combo = QComboBox(tab)
        self.style_combo.addItem("Lines", False)
        self.style_combo.addItem("Stacked areas", True)
        self.style_combo.currentIndexChanged.connect(lambda _i: self._safe(self.redraw))
        self.measure_combo = QComboBox(tab)
        self.measure_combo.addItem("Variance share", imp.VARIANCE_SHARE)
        self.measure_combo.addItem("Daily weight", imp.WEIGHT)
        self.measure_combo.setToolTip(
            "Variance share: each factor's share of the variance of what it contributes to SM in the period, "
            "averaged over the region's pixels (additive and gated models; by month or season). Daily weight: the "
            "mean of the weight rasters (what prediction.json's weights_meaning says they hold)")
        self.measure_combo.currentIndexChanged.connect(lambda _i: self._safe(self._on_measure_changed))
        row.addWidget(QLabel("Show", tab))
        row.addWidget(self.measure_combo)
        row.addWidget(QLabel("by", tab))
        row.addWidget(self.period_combo)
        row.addWidget(self.style_combo)
        row.addStretch(1)
        self.cancel_button = QPushButton("Cancel", tab)
        self.cancel_button.clicked.connect(lambda: self._safe(self.cancel))
        self.cancel_button.setEnabled(False)
        row.addWidget(self.cancel_button)
        tl.addLayout(row)
        self.progress = QProgressBar(tab)
        self.progress.setRange(0, 100)
        self.progress.setMaximumHeight(14)
        self.progress.setTextVisible(False)
        self.progress.setVisible(False)
        tl.addWidget(self.progress)

        self.importance_plot = pg.PlotWidget(tab)
        self.importance_plot.setBackground("w")
        self.importance_plot.showGrid(x=True, y=True, alpha=0.25)
        self.importance_plot.setLabel("left", "mean factor weight")
        self.importance_plot.setMouseEnabled(x=False, y=False)
        self.importance_plot.setMenuEnabled(False)
        self.importance_plot.setMinimumHeight(220)
        self.importance_curves = _CurvePool(self.importance_plot)
        self.importance_plot.setToolTip("Click to move the map's Temporal Controller to that date")
        tl.addWidget(self.importance_plot, 1)
        self.importance_legend = QLabel("", tab)
        self.importance_legend.setWordWrap(True)
        tl.addWidget(self.importance_legend)
        self.summary_label = QLabel("", tab)
        self.summary_label.setWordWrap(True)
        tl.addWidget(self.summary_label)
        self.tabs.addTab(tab, "Seasonal importance")

        # --- pixel inspector tab
        tab = QWidget()
        pl = QVBoxLayout(tab)
        pl.setContentsMargins(2, 2, 2, 2)
        row = QHBoxLayout()
        self.pick_button = QPushButton("Pick pixel on map", tab)
        self.pick_button.setCheckable(True)
        self.pick_button.setToolTip("Click the map to show that pixel's SM and per-factor weight series")
        self.pick_button.toggled.connect(lambda on: self._safe(self._set_picking, on))
        row.addWidget(self.pick_button)
        self.pixel_label = QLabel("No pixel yet: press the button and click the map.", tab)
        self.pixel_label.setWordWrap(True)
        row.addWidget(self.pixel_label, 1)
        pl.addLayout(row)
        self.sm_plot = pg.PlotWidget(tab, axisItems={"bottom": pg.DateAxisItem(utcOffset=0)})
        self.sm_plot.setBackground("w")
        self.sm_plot.showGrid(x=True, y=True, alpha=0.25)
        self.sm_plot.setLabel("left", "soil moisture")
        self.sm_curves = _CurvePool(self.sm_plot)
        self.weight_plot = pg.PlotWidget(tab, axisItems={"bottom": pg.DateAxisItem(utcOffset=0)})
        self.weight_plot.setBackground("w")
        self.weight_plot.showGrid(x=True, y=True, alpha=0.25)
        self.weight_plot.setLabel("left", "factor weight")
        self.weight_plot.setXLink(self.sm_plot)
        self.weight_curves = _CurvePool(self.weight_plot)
        pl.addWidget(self.sm_plot, 1)
        self.sm_legend = QLabel("", tab)
        pl.addWidget(self.sm_legend)
        pl.addWidget(self.weight_plot, 1)
        self.weight_legend = QLabel("", tab)
        self.weight_legend.setWordWrap(True)
        pl.addWidget(self.weight_legend)
        self.tabs.addTab(tab, "Pixel inspector")

        # date cursors (the Temporal Controller's date) and clicks that move it; created once, never removed
        self._cursors = {}
        for name, plot in (("importance", self.importance_plot), ("sm", self.sm_plot), ("weight", self.weight_plot)):
            line = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen(CURSOR_COLOUR, width=1, style=Qt.DashLine),
                                   label="", labelOpts={"position": 0.93, "color": CURSOR_COLOUR,
                                                        "fill": (255, 255, 255, 200)})
            line.setZValue(20)
            line.setVisible(False)
            plot.addItem(line, ignoreBounds=True)
            self._cursors[name] = line
            plot.scene().sigMouseClicked.connect(self._click_handler(name, plot))

        self.setWidget(root)
        self.setMinimumWidth(340)

    # ------------------------------------------------------------------ messages
    def show_message(self, text, level="info"):
        colours = {"info": "#444", "success": "#1b7f2a", "warning": "#b36b00", "error": "#c0392b"}
        self._message = (str(text), level)
        self.message_label.setText(str(text))
        self.message_label.setStyleSheet("color:{};{}".format(colours.get(level, "#444"),
                                                             "font-weight:bold" if level == "error" else ""))

    def message(self):
        """The text of the message line (tests, scripts)."""
        return self._message[0]

    def message_level(self):
        return self._message[1]

    def _safe(self, fn, *args):
        """Run a slot; any error becomes a message in the dock (details in the message log)."""
        try:
            return fn(*args)
        except pf.ChartDataError as exc:
            self.show_message(str(exc), "error")
        except imp.ImportanceError as exc:
            self.show_message(str(exc), "error")
        except Exception as exc:  # noqa: BLE001 - never a traceback dialog
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.Warning)
            self.show_message("Unexpected error: {} (details in the ISMoE message log)".format(exc), "error")
        return None

    # ------------------------------------------------------------------ source
    def project(self):
        return self._project or QgsProject.instance()

    def _browse_folder(self):
        start = self.source_path if os.path.isdir(self.source_path) else os.path.dirname(self.source_path or "")
        path = QFileDialog.getExistingDirectory(self, "Prediction folder", start)
        if path:
            self.load_source(path)

    def _browse_csv(self):
        path, _ = QFileDialog.getOpenFileName(self, "Seasonal-importance CSV",
                                              os.path.dirname(self.source_path or ""), "CSV files (*.csv)")
        if path:
            self.load_source(path)

    def load_source(self, path, compute=True):
        """Open a prediction folder or an importance CSV; True on success.

        Bad input leaves the dock empty with a message. A folder starts the whole-area
        computation in the background (``compute=False`` to skip).
        """
        path = (path or "").strip()
        self.source_edit.setText(path)
        self.cancel()
        self.folder = self.csv_table = self.table = self.pixel = None
        self._members = None
        self._cache = {}   # a (re)load reads the folder again: it may have been predicted anew
        self._zones = {}
        self._clear_importance_plot()
        self._clear_pixel_plots()
        self.info_label.setText("")
        try:
            source = pf.open_source(path)
        except (pf.ChartDataError, imp.ImportanceError) as exc:
            self.source_path = ""
            self._update_region_widgets()
            self._update_measure_widget()
            self.show_message(str(exc), "error")
            return False
        self.source_path = os.path.abspath(path)
        if isinstance(source, imp.ImportanceTable):
            self.csv_table = source
            self._members = pf.ensemble_members(self.source_path)   # a prediction's importance.csv
            self.info_label.setText("CSV: {} regions ({}), factors {}".format(
                len(source.regions), ", ".join(source.regions[:6]) + ("…" if len(source.regions) > 6 else ""),
                ", ".join(source.factors)))
            self.show_message("Loaded {}. Pick a region; the pixel inspector needs a prediction folder.".format(
                os.path.basename(path)), "success")
        else:
            self.folder = source
            self._members = source.members
            self.info_label.setText(source.describe() + (", ensemble of {} members".format(source.members)
                                                         if source.members else ""))
            note = (" Note: " + "; ".join(source.warnings)) if source.warnings else ""
            self.show_message("Loaded {}.{}".format(os.path.basename(self.source_path), note),
                              "warning" if source.warnings else "success")
        self._update_region_widgets()
        self._update_measure_widget()
        # writePath: relative to the project file when the project saves relative paths
        self.project().writeEntry(PROJECT_SCOPE, PROJECT_KEY_SOURCE, self.project().writePath(self.source_path))
        self.sourceLoaded.emit(self.source_path)
        if self.csv_table is not None:
            self._show_table(self.csv_table)
        elif compute:
            self.compute()
        return True

    def _on_project_read(self, *_args):
        path, ok = self.project().readEntry(PROJECT_SCOPE, PROJECT_KEY_SOURCE, "")
        if ok and path:
            path = self.project().readPath(path)
            if os.path.exists(path):
                self._safe(self.load_source, path)
            else:
                self.show_message("The project's ISMoE source {} no longer exists.".format(path), "warning")

    def restore_from_project(self):
        """Load the source remembered in the current project, if any."""
        self._on_project_read()

    # ------------------------------------------------------------------ regions
    def current_measure(self):
        """What the chart shows: 'variance_share' or 'weight' (a CSV's own measure)."""
        if self.csv_table is not None:
            return self.csv_table.measure
        return self.measure_combo.currentData()

    def set_measure(self, measure):
        _select_data(self.measure_combo, measure, "Unknown measure {!r}")

    def _update_measure_widget(self):
        """The measure of a new source: a folder's default (the variance share where it has one by season),
        a CSV's own; the choice is offered only where both exist."""
        self.measure_combo.blockSignals(True)
        if self.csv_table is not None:
            measure, enabled = self.csv_table.measure, False
        elif self.folder is not None:
            measure, enabled = self.folder.default_measure, self.folder.has_seasonal_shares
        else:
            measure, enabled = imp.WEIGHT, False
        self.measure_combo.setCurrentIndex(max(0, self.measure_combo.findData(measure)))
        self.measure_combo.setEnabled(enabled)
        self.measure_combo.blockSignals(False)

    def _on_measure_changed(self):
        if self.folder is not None:
            self.compute()

    def _update_region_widgets(self):
        self.region_combo.blockSignals(True)
        self.region_combo.clear()
        if self.csv_table is not None:
            for r in self.csv_table.regions:
                self.region_combo.addItem(r, r)
        else:
            self.region_combo.addItem("Whole area", MODE_WHOLE)
            self.region_combo.addItem("Current map extent", MODE_EXTENT)
            self.region_combo.addItem("Feature of a polygon layer", MODE_FEATURE)
            self.region_combo.addItem("Zone of a raster layer", MODE_ZONE)
        self.region_combo.blockSignals(False)
        self._on_region_changed(recompute=False)

    def region_mode(self):
        return self.region_combo.currentData() if self.csv_table is None else None

    def set_region_mode(self, mode):
        _select_data(self.region_combo, mode, "No region {!r} in this source")

    def _on_region_changed(self, recompute=False):
        is_feature = self.csv_table is None and self.region_combo.currentData() == MODE_FEATURE
        is_zone = self.csv_table is None and self.region_combo.currentData() == MODE_ZONE
        self.layer_combo.setVisible(is_feature)
        self.feature_combo.setVisible(is_feature)
        self.zone_layer_combo.setVisible(is_zone)
        self.zone_combo.setVisible(is_zone)
        if is_zone and not self._zones and self.zone_layer_combo.currentLayer() is not None:
            self._fill_zones()
        self.compute_button.setEnabled(self.folder is not None)
        if self.csv_table is not None and self.region_combo.currentData():
            self._show_table(self.csv_table)

    def _fill_features(self):
        self.feature_combo.blockSignals(True)
        self.feature_combo.clear()
        layer = self.layer_combo.currentLayer()
        if layer is not None:
            expr = QgsExpression(layer.displayExpression())
            ctx = QgsExpressionContext()
            ctx.appendScopes(QgsExpressionContextUtils.globalProjectLayerScopes(layer))
            req = QgsFeatureRequest().setLimit(MAX_FEATURES)
            for feat in layer.getFeatures(req):
                ctx.setFeature(feat)
                label = expr.evaluate(ctx) if expr.isValid() else None
                name = str(label) if label not in (None, "") else "feature {}".format(feat.id())
                self.feature_combo.addItem(name, feat.id())
        self.feature_combo.blockSignals(False)

    def _fill_zones(self):
        """Zones of the chosen raster on the prediction grid (read once per layer, GUI thread)."""
        self.zone_combo.clear()
        self._zones = {}
        layer = self.zone_layer_combo.currentLayer()
        if layer is None or self.folder is None:
            return
        self._zones = pf.zone_regions(self.folder, layer.source().split("|")[0])
        for name, zone in self._zones.items():
            self.zone_combo.addItem("{} ({} px)".format(name, int(zone.mask.sum())), name)

    def set_zone(self, layer, name=None):
        """Select 'zone of a raster layer' with this layer and zone (first one when None)."""
        self.set_region_mode(MODE_ZONE)
        self.zone_layer_combo.setLayer(layer)
        self._fill_zones()
        if name is not None:
            i = self.zone_combo.findData(name)
            if i < 0:
                raise pf.ChartDataError("No zone {!r} in {}".format(name, layer.name()))
            self.zone_combo.setCurrentIndex(i)

    def set_polygon_feature(self, layer, fid=None):
        """Select 'feature of a polygon layer' with this layer and feature (first one when None)."""
        self.set_region_mode(MODE_FEATURE)
        self.layer_combo.setLayer(layer)
        self._fill_features()
        if fid is not None:
            i = self.feature_combo.findData(fid)
            if i < 0:
                raise pf.ChartDataError("Feature {} not found in {}".format(fid, layer.name()))
            self.feature_combo.setCurrentIndex(i)

    def current_region(self):
        """(cache key, display name, prediction_folder region) for the selected region (GUI thread)."""
        mode = self.region_combo.currentData()
        if mode == MODE_EXTENT:
            if self.canvas is None:
                raise pf.ChartDataError("No map canvas: the current map extent is not available")
            ext = self.canvas.extent()
            crs = crs_for_core(self.canvas.mapSettings().destinationCrs())
            if ext.isEmpty():
                raise pf.ChartDataError("The map extent is empty")
            bbox = pf.BBox(ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum(), crs)
            key = ("extent", round(bbox.xmin, 6), round(bbox.ymin, 6), round(bbox.xmax, 6), round(bbox.ymax, 6), crs)
            return key, "map extent", bbox
        if mode == MODE_ZONE:
            layer = self.zone_layer_combo.currentLayer()
            if layer is None:
                raise pf.ChartDataError("Choose a raster layer of zone numbers (and a zone) for the region")
            name = self.zone_combo.currentData()
            if name is None or name not in self._zones:
                raise pf.ChartDataError("{} has no zone on the prediction grid".format(layer.name()))
            return ("zone", layer.id(), name), "{}: {}".format(layer.name(), name), self._zones[name]
        if mode == MODE_FEATURE:
            layer = self.layer_combo.currentLayer()
            if layer is None:
                raise pf.ChartDataError("Choose a polygon layer (and a feature) for the region")
            if layer.geometryType() != QgsWkbTypes.PolygonGeometry:
                raise pf.ChartDataError("{} is not a polygon layer".format(layer.name()))
            fid = self.feature_combo.currentData()
            if fid is None:
                raise pf.ChartDataError("{} has no feature to use as region".format(layer.name()))
            feat = layer.getFeature(fid)
            geojson = feature_geojson(feat)
            if geojson is None:
                raise pf.ChartDataError("Feature {} of {} has no geometry".format(fid, layer.name()))
            name = self.feature_combo.currentText()
            key = ("feature", layer.id(), fid, feat.geometry().asWkt())
            return key, "{}: {}".format(layer.name(), name), pf.PolygonRegion(geojson, crs_for_core(layer.crs()))
        return ("whole",), "whole area", None

    # ------------------------------------------------------------------ importance
    def compute(self):
        """Compute the importance of the selected region in the background (cached)."""
        if self.folder is None:
            if self.csv_table is not None:
                self._show_table(self.csv_table)
                return
            raise pf.ChartDataError("Load a prediction folder first")
        key, name, region = self.current_region()
        measure = self.folder.resolve_measure(self.current_measure())
        key = (self.source_path, measure) + key
        if key in self._cache:
            self._show_table(self._cache[key], name)
            return
        folder = self.folder
        if region is None:
            def fn(cb):
                return pf.whole_area_importance(folder, cb, measure=measure)
        else:
            # validate in the GUI thread (cheap: mask only) so a bad region is a message now
            pf.region_mask(folder, region, name)

            def fn(cb):
                t = pf.region_importance(folder, {imp.DEFAULT_REGION: region}, cb, measure=measure)
                return t

        def done(task):
            if self._tasks.get("importance") is not task:
                return  # superseded
            self._tasks.pop("importance", None)
            self._set_busy(False)
            if task.cancelled:
                self.show_message("Cancelled.", "warning")
            elif task.error is not None:
                self._report_task_error(task)
            else:
                self._cache[key] = task.result
                self._show_table(task.result, name)
                self.show_message("{} of the {} ({} dates).{}".format(
                    "Variance shares" if measure == imp.VARIANCE_SHARE else "Importance", name,
                    self.folder.n_dates if self.folder else "?", self._spread_note(region, task.result)),
                    "success")
        self._start_task("importance", "ISMoE: seasonal importance of the {}".format(name), fn, done)
        self.show_message("Computing the importance of the {}…".format(name))

    def _start_task(self, purpose, description, fn, done):
        old = self._tasks.pop(purpose, None)
        if old is not None:
            old.cancel()
        task = _ChartTask(description, fn, done)
        self._tasks[purpose] = task
        if purpose == "importance":
            self._set_busy(True)
            task.progressChanged.connect(lambda v: self.progress.setValue(int(v)))
        QgsApplication.taskManager().addTask(task)
        return task

    def _set_busy(self, busy):
        self.progress.setVisible(busy)
        self.progress.setValue(0)
        self.cancel_button.setEnabled(busy)
        self.compute_button.setEnabled(not busy and self.folder is not None)

    def cancel(self):
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()
        self._set_busy(False)

    def is_busy(self):
        return bool(self._tasks)

    def wait(self, timeout=60.0):
        """Process events until the background tasks are done (tests, scripts); True if done."""
        end = time.time() + timeout
        while self._tasks and time.time() < end:
            QCoreApplication.processEvents()
            time.sleep(0.01)
        QCoreApplication.processEvents()
        return not self._tasks

    def _report_task_error(self, task):
        exc = task.error
        if isinstance(exc, (pf.ChartDataError, imp.ImportanceError)):
            self.show_message(str(exc), "error")
        else:
            QgsMessageLog.logMessage(task.details, LOG_TAG, Qgis.Warning)
            self.show_message("Could not read the rasters: {} (details in the ISMoE message log)".format(exc),
                              "error")

    def _show_table(self, table, name=None):
        self.table = table
        if name:
            self._chart_title = name
        self.redraw()

    def current_kind(self):
        return self.period_combo.currentData()

    def set_period(self, kind):
        _select_data(self.period_combo, kind, "Unknown period {!r}")

    def set_stacked(self, stacked):
        self.style_combo.setCurrentIndex(1 if stacked else 0)

    def redraw(self):
        """Draw the current table for the selected region/period/style."""
        self._clear_importance_plot()
        if self.table is None:
            return
        region = self.region_combo.currentData() if self.csv_table is not None else imp.DEFAULT_REGION
        if region is None or region not in self.table.regions:
            region = self.table.regions[0] if self.table.regions else None
        kind = self.current_kind()
        plot = self.importance_plot
        plot.setLabel("left", self.table.title)
        if region is not None and kind == "doy" and self.table.measure == imp.VARIANCE_SHARE:
            self.show_message("Variance shares are by month and season (a share needs the days of a period): "
                              "choose Month or Season, or show the daily weights.", "warning")
            return
        if region is None or kind not in self.table.kinds(region):
            self.show_message("The source has no {} values for {}".format(ic.PERIOD_TITLES[kind], region), "warning")
            return
        series = self.table.get(region, kind)
        stacked = bool(self.style_combo.currentData())
        symbol = "o" if kind != "doy" and not stacked else None
        entries = []
        banded = False
        for it in ic.chart_series(series, stacked):
            if it.has_band:
                self.importance_curves.show_band(it.factor, it.x, it.band_lower, it.band_upper, it.colour)
                banded = True
            self.importance_curves.show(it.factor, it.x, it.upper, it.colour, symbol=symbol, lower=it.lower)
            entries.append((it.factor, it.colour, "■" if stacked else "━"))
        if banded:
            entries.append((ic.spread_label(self._members), "#999999", "▒"))
        self.importance_legend.setText(legend_html(entries))
        self.importance_legend.setToolTip(self._band_tooltip() if banded else "")
        ax = plot.getAxis("bottom")
        ax.setTicks([ic.period_ticks(kind), []])
        lo, hi = ic.period_range(kind)
        plot.setXRange(lo, hi, padding=0.01)
        if stacked:
            plot.setYRange(0, 1.02, padding=0)
        else:
            plot.enableAutoRange(axis="y")
        plot.setLabel("bottom", ic.PERIOD_TITLES[kind])
        plot.setTitle(region if self.csv_table is not None else self._chart_title, color="k", size="9pt")
        self.summary_label.setText(self._summary(region))
        self._update_cursors()
        self.chartUpdated.emit()

    def _band_tooltip(self):
        return ("Band: the line's mean weight ± the standard deviation of that mean over the ensemble's {}members "
                "(the 'spread' column of importance.csv, whole area)".format(
                    "{} ".format(self._members) if self._members else ""))

    def _spread_note(self, region, table):
        """Status text about the spread band for a computed table ('' when nothing to say)."""
        if self.folder is None or self.folder.ensemble is None:
            return ""
        if any(getattr(s, "spread", None) is not None for s in
               (table.get(r, k) for r in table.regions for k in table.kinds(r))):
            return " Band: ± member sd ({} members).".format(self.folder.members or "?")
        if region is not None:
            return (" No spread band for this region: the band is the whole-area member spread from importance.csv "
                    "only (a region's member spread cannot be computed from the per-pixel spread rasters).")
        return (" No spread band: the folder's importance.csv with the ensemble's 'spread' column is missing or "
                "does not match the factors.")

    def _summary(self, region):
        if "season" not in self.table.kinds(region):
            return ""
        s = self.table.get(region, "season")
        parts = ["{}: <b style='color:{}'>{}</b>".format(p, imp.factor_colour(f), f)
                 for p, f in zip(s.periods, s.dominant()) if f]
        return "Dominant factor: " + ", ".join(parts) if parts else ""

    def _clear_importance_plot(self):
        self.importance_curves.hide_all()
        self._cursors["importance"].setVisible(False)
        self.importance_legend.setText("")
        self.summary_label.setText("")

    def series_names(self):
        """Factors drawn on the importance chart, in drawing order."""
        return list(self.importance_curves.visible)

    def series_data(self, factor):
        """(x, y) of one factor's curve on the importance chart."""
        if factor not in self.importance_curves.visible:
            raise KeyError(factor)
        return self.importance_curves.data(factor)

    # ------------------------------------------------------------------ pixel inspector
    def _set_picking(self, on):
        if self.map_tool is None:
            if on:
                self.pick_button.setChecked(False)
                raise pf.ChartDataError("No map canvas: the pixel inspector needs one")
            return
        if on:
            self.canvas.setMapTool(self.map_tool)
            self.tabs.setCurrentIndex(1)
        elif self.canvas.mapTool() is self.map_tool:
            self.canvas.unsetMapTool(self.map_tool)

    def _on_canvas_clicked(self, point, button=None):
        crs = self.canvas.mapSettings().destinationCrs() if self.canvas is not None else None
        self._safe(self.inspect_map_point, point, crs)

    def inspect_map_point(self, point, crs=None):
        """Show the pixel under map point ``point`` (QgsPointXY or (x, y)) given in ``crs``
        (QgsCoordinateReferenceSystem or string; None = raster CRS)."""
        if self.folder is None:
            raise pf.ChartDataError("The pixel inspector needs a prediction folder (a CSV has no rasters)")
        x, y = (point.x(), point.y()) if hasattr(point, "x") else point
        core_crs = crs_for_core(crs) if isinstance(crs, QgsCoordinateReferenceSystem) else crs
        try:
            row, col = pf.pixel_at(self.folder, x, y, core_crs)
        except pf.OutsideRasterError as exc:
            self.pixel = None
            self._clear_pixel_plots()
            self.pixel_label.setText("No pixel: outside the raster.")
            self.show_message(str(exc), "error")
            return
        self._place_marker(x, y, crs)
        self.inspect_pixel(row, col)

    def inspect_pixel(self, row, col):
        """Read one pixel's series in the background and show them."""
        if self.folder is None:
            raise pf.ChartDataError("The pixel inspector needs a prediction folder")
        folder = self.folder
        self.pixel_label.setText("Reading pixel row {}, col {}…".format(row, col))

        def done(task):
            if self._tasks.get("pixel") is not task:
                return
            self._tasks.pop("pixel", None)
            if task.cancelled:
                return
            if task.error is not None:
                self._report_task_error(task)
                return
            self._show_pixel(task.result)

        self._start_task("pixel", "ISMoE: pixel {} {}".format(row, col),
                         lambda cb: pf.pixel_series(folder, row, col), done)

    def _show_pixel(self, px):
        self.pixel = px
        self._clear_pixel_plots()
        t = _epoch_seconds(px.dates)
        txt = "Pixel row {}, col {} (x {}, y {})".format(px.row, px.col, _fmt_coord(px.x), _fmt_coord(px.y))
        if px.station_id:
            txt += ", station {}".format(px.station_id)
        if not px.has_data:
            txt += ": nodata"
            self.show_message("This pixel holds no data (nodata).", "warning")
        else:
            self.show_message("Pixel row {}, col {}.".format(px.row, px.col), "success")
        self.pixel_label.setText(txt)
        sm_entries = []
        if px.sm is not None:
            self.sm_curves.show("SM estimate", t, px.sm, "#222222", width=1.5)
            sm_entries.append(("SM estimate", "#222222", "━"))
        if px.observations is not None and np.isfinite(px.observations).any():
            ok = np.isfinite(px.observations)
            self.sm_curves.show("observed", t[ok], px.observations[ok], "#c0392b", symbol="o", symbol_size=4,
                                line=False)
            sm_entries.append(("observed ({})".format(px.station_id), "#c0392b", "●"))
        self.sm_legend.setText(legend_html(sm_entries))
        w_entries = []
        for j, f in enumerate(px.factors):
            colour = imp.factor_colour(f)
            self.weight_curves.show(f, t, px.weights[:, j], colour, width=1.5)
            w_entries.append((f, colour, "━"))
        self.weight_legend.setText(legend_html(w_entries))
        self.weight_plot.setYRange(0, 1.0, padding=0.02)
        self.pixelInspected.emit(px.row, px.col)

    def _clear_pixel_plots(self):
        for pool, legend in ((self.sm_curves, self.sm_legend), (self.weight_curves, self.weight_legend)):
            pool.hide_all()
            legend.setText("")

    def _place_marker(self, x, y, crs):
        if self.canvas is None:
            return
        if self._marker is None:
            self._marker = QgsVertexMarker(self.canvas)
            self._marker.setColor(QColor("#c0392b"))
            self._marker.setIconType(QgsVertexMarker.ICON_CROSS)
            self._marker.setIconSize(14)
            self._marker.setPenWidth(2)
        pt = QgsPointXY(x, y)
        dest = self.canvas.mapSettings().destinationCrs()
        if isinstance(crs, QgsCoordinateReferenceSystem) and crs.isValid() and dest.isValid() and crs != dest:
            try:
                pt = QgsCoordinateTransform(crs, dest, self.project()).transform(pt)
            except Exception:  # noqa: BLE001 - the marker is cosmetic
                return
        self._marker.setCenter(pt)
        self._marker.show()

    def pixel_plot_items(self):
        """{name: (x, y)} of the curves shown in the pixel inspector (tests)."""
        out = {}
        for pool in (self.sm_curves, self.weight_curves):
            for name in pool.visible:
                out[name] = pool.data(name)
        return out

    # ------------------------------------------------------------------ time: the Temporal Controller
    def _canvas_temporal_controller(self):
        """The canvas's temporal controller (QGIS desktop: the Temporal Controller panel's
        QgsTemporalNavigationObject); None without a canvas or controller."""
        getter = getattr(self.canvas, "temporalController", None) if self.canvas is not None else None
        try:
            return getter() if getter is not None else None
        except RuntimeError:   # canvas already deleted
            return None

    def set_temporal_controller(self, controller):
        """Follow ``controller`` (a QgsTemporalController, e.g. QgsTemporalNavigationObject; None = none):
        its updateTemporalRange moves the date cursor, and chart clicks move its frame."""
        old = self.temporal_controller
        if old is controller:
            return
        if old is not None:
            try:
                old.updateTemporalRange.disconnect(self._on_temporal_range)
            except (TypeError, RuntimeError):
                pass
        self.temporal_controller = controller
        if controller is None:
            return
        controller.updateTemporalRange.connect(self._on_temporal_range)
        # start on the date the map shows now
        rng = None
        if self.canvas is not None and hasattr(self.canvas, "temporalRange"):
            rng = self.canvas.temporalRange()
        if (rng is None or not rng.begin().isValid()) and hasattr(controller, "navigationMode"):
            if controller.navigationMode() == controller.Animated:
                rng = controller.dateTimeRangeForFrameNumber(controller.currentFrameNumber())
        if rng is not None and rng.begin().isValid():
            self._on_temporal_range(rng)

    def _navigation(self):
        """The QgsTemporalNavigationObject to move (looked up again when the canvas got one later)."""
        if self.temporal_controller is None:
            self.set_temporal_controller(self._canvas_temporal_controller())
        ctrl = self.temporal_controller
        return ctrl if ctrl is not None and hasattr(ctrl, "setCurrentFrameNumber") else None

    def _on_temporal_range(self, rng):
        """Slot of updateTemporalRange: the cursor goes to the frame's date (none when time is off)."""
        try:
            self.set_cursor_date(self._range_date(rng))
        except Exception:  # noqa: BLE001 - never let a slot exception reach Qt
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.Warning)

    def _range_date(self, rng):
        """The day a temporal range stands for: its first day (a cumulative range: its last day);
        None for an infinite range (the Temporal Controller off)."""
        if rng is None:
            return None
        begin, end = rng.begin(), rng.end()
        ctrl = self.temporal_controller
        cumulative = bool(getattr(ctrl, "temporalRangeCumulative", lambda: False)())
        if cumulative and end.isValid():
            dt = end.addSecs(-1) if not rng.includeEnd() else end
        elif begin.isValid():
            dt = begin
        else:
            return None
        return np.datetime64(dt.date().toString("yyyy-MM-dd"), "D")

    def set_cursor_date(self, date):
        """Put the date cursor of every chart on ``date`` (ISO string / datetime64; None hides it)."""
        self._cursor_date = None if date is None else np.datetime64(str(date)[:10], "D")
        self._update_cursors()

    def cursor_date(self):
        """The date of the cursor (np.datetime64[D]) or None."""
        return self._cursor_date

    def cursor_position(self, name="importance"):
        """x of the cursor line on chart ``name`` (importance | sm | weight), None when hidden (tests)."""
        line = self._cursors[name]
        return float(line.value()) if line.isVisible() else None

    def _update_cursors(self):
        d = self._cursor_date
        for name, line in self._cursors.items():
            if d is None or (name == "importance" and self.table is None):
                line.setVisible(False)
                continue
            kind = self.current_kind() if name == "importance" else "time"
            line.setValue(cd.date_position(kind, d))
            line.label.setFormat(str(d))
            line.setVisible(True)

    def _click_handler(self, name, plot):
        def handler(ev):
            try:
                if ev.button() != Qt.LeftButton or ev.double():
                    return
                vb = plot.getPlotItem().getViewBox()
                pos = ev.scenePos()
                if not vb.sceneBoundingRect().contains(pos):
                    return
                if name == "importance" and self.table is None:
                    return
                if name != "importance" and self.pixel is None:
                    return
                x = vb.mapSceneToView(pos).x()
            except Exception:  # noqa: BLE001
                QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.Warning)
                return
            self._safe(self.chart_clicked, self.current_kind() if name == "importance" else "time", x)
        return handler

    def chart_clicked(self, kind, x):
        """A click at ``x`` on a chart axis of ``kind`` (month | season | doy | time): move the map there.

        On a period axis the date is taken in the year of the cursor (else of the Temporal
        Controller's range) and snapped to the prediction's nearest date in that period."""
        near = self._cursor_date
        nav = self._navigation()
        if near is None and nav is not None and nav.temporalExtents().begin().isValid():
            near = nav.temporalExtents().begin().date().toString("yyyy-MM-dd")
        dates = self.folder.dates if self.folder is not None else None
        date = cd.date_at_position(kind, x, dates, near)
        return self.set_map_date(date)

    def set_map_date(self, date):
        """Move the Temporal Controller to the frame holding ``date`` (ISO string / datetime64 / QDate);
        True when it moved there. Without a controller only the chart's cursor moves."""
        if isinstance(date, QDate):
            date = date.toString("yyyy-MM-dd")
        day = np.datetime64(str(date)[:10], "D")
        nav = self._navigation()
        if nav is None:
            self.set_cursor_date(day)
            self.show_message("{}: the map has no Temporal Controller, so only the chart's cursor moved.".format(day),
                              "warning")
            return False
        qdate = QDate.fromString(str(day), "yyyy-MM-dd")
        noon = QDateTime(qdate, QTime(12, 0))     # local time, like the layers' day ranges (algorithms/layers.py)
        ext = nav.temporalExtents()
        if not (ext.begin().isValid() and ext.end().isValid()):
            self.show_message("The Temporal Controller has no time range: load the prediction's layers (ismoe:predict "
                              "does) or set the project's time range, then click again.", "warning")
            return False
        frame = nav.findBestFrameNumberForFrameStart(noon)
        if not nav.dateTimeRangeForFrameNumber(frame).contains(noon):
            self.show_message("{} is outside the Temporal Controller's range {} .. {}.".format(
                day, ext.begin().toString("yyyy-MM-dd"), ext.end().toString("yyyy-MM-dd")), "warning")
            return False
        note = ""
        if nav.navigationMode() != nav.Animated:
            nav.setNavigationMode(nav.Animated)   # the panel follows (navigationModeChanged)
            note = " (Temporal Controller switched to animated navigation)"
        nav.setCurrentFrameNumber(frame)
        self.show_message("Map date {}{}.".format(day, note), "success")
        return True

    # ------------------------------------------------------------------ teardown
    def cleanup(self):
        """Cancel tasks, release the map tool and the marker (call before deleting)."""
        self.cancel()
        self.set_temporal_controller(None)
        try:
            self.project().readProject.disconnect(self._on_project_read)
        except (TypeError, RuntimeError):
            pass
        if self.canvas is not None and self.map_tool is not None and self.canvas.mapTool() is self.map_tool:
            self.canvas.unsetMapTool(self.map_tool)
        if self._marker is not None and self.canvas is not None:
            self.canvas.scene().removeItem(self._marker)
            self._marker = None

    def closeEvent(self, event):
        if self.pick_button.isChecked():
            self.pick_button.setChecked(False)
        super().closeEvent(event)
