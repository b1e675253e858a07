"""A prediction folder as styled, time-navigable layers in a QGIS project (glue of ismoe:predict).

``queue_prediction_layers(context, folder, manifest)`` registers the outputs with Processing's own
mechanism (``context.addLayerToLoadOnCompletion`` + a layer post-processor), so they are loaded and
styled wherever Processing loads results: the algorithm dialog, the Model Builder,
``processing.runAndLoadResults`` (or ``processing.run(..., onFinish=handleAlgorithmResults)``).
``qgis_process`` loads nothing.

What the project gets, in one group "ISMoE prediction <folder>":
- "Soil moisture (m3/m3)": single-band pseudocolour, dry (brown) to wet (blue) over the prediction's SM
  range (prediction.json "sm_range", the same for every date), showing the last date;
- "Dominant factor": paletted, one class per factor in the dock's factor colours (unchecked);
- "Weight: <factor>": 0-1 ramp, last date (unchecked);
- "Variance share: <factor>" (additive and gated models): 0-1 ramp, variance_share_<factor>.tif, the factor's
  share of the period's contribution variance at each pixel (unchecked, not temporal: one value per pixel).
Styles come from the QML files in ``ismoe_qgis/styles`` (edit them to change ramps); a missing or
broken QML file gives a warning and the same renderer built in code.

Time: on QGIS >= 3.38 every layer gets per-band temporal ranges (band i = date i, one day long); on
3.22-3.36 SM and the dominant factor become groups with one fixed-range layer per date, each a
single-band VRT view of the GeoTIFF (``<folder>/by_date/*.vrt``, no data copied), newest on top; the
weights stay single layers showing the last date there (E x T layers would swamp the project; the dock
charts them). The project's time range is set to the prediction's dates, stepping by one day.
"""
import bisect
import collections
import os

from qgis.core import (Qgis, QgsColorRampShader, QgsDateTimeRange, QgsLayerTreeLayer, QgsPalettedRasterRenderer,
                       QgsProcessingContext, QgsProcessingLayerPostProcessorInterface, QgsProcessingUtils, QgsProject,
                       QgsRasterLayer, QgsRasterShader, QgsSingleBandPseudoColorRenderer)
from qgis.PyQt.QtCore import QDate, QDateTime, QTime
from qgis.PyQt.QtGui import QColor

from ..fileutil import atomic_output
from ..model import outputs

STYLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "styles")
PER_BAND_TEMPORAL = Qgis.QGIS_VERSION_INT >= 33800      # QgsRasterLayerTemporalProperties FixedRangePerBand

# dry -> wet, positions in 0..1 of the display range
SM_RAMP = [(0.0, "#8c510a"), (0.2, "#d8b365"), (0.4, "#f0e6b2"), (0.6, "#7fcdbb"), (0.8, "#2c7fb8"),
           (1.0, "#0c2c84")]
WEIGHT_RAMP = [(0.0, "#fcfbfd"), (0.25, "#dadaeb"), (0.5, "#9e9ac8"), (0.75, "#6a51a3"), (1.0, "#3f007d")]

SM_NAME = "Soil moisture (m3/m3)"
DOMINANT_NAME = "Dominant factor"
VARIANCE_SHARE_NAME = "Variance share: "

# Called with (folder, dates) once a prediction's SM layer is loaded into QgsProject.instance(): the plugin's
# desktop part (ui/integration.init_dock) registers the Temporal Controller and dock follow-up here, so this glue
# needs no ui import.
ON_PREDICTION_LOADED = []

# Post-processors must outlive the algorithm instance (a Model Builder child is deleted after its step):
# Processing owns the C++ side, these references keep the Python side alive.
_KEEP = collections.deque(maxlen=4096)


# --------------------------------------------------------------------------- styles
def _warn(feedback, msg):
    if feedback is not None:
        feedback.pushWarning(msg)


def load_style(layer, kind, feedback=None) -> bool:
    """Load STYLE_DIR/<kind>.qml into the layer; False (and a warning) when missing or unreadable."""
    path = os.path.join(STYLE_DIR, kind + ".qml")
    if not os.path.exists(path):
        _warn(feedback, f"warning: style file {path} is missing from the plugin: '{layer.name()}' is loaded with "
                        f"the built-in style (reinstall the plugin to restore the file)")
        return False
    msg, ok = layer.loadNamedStyle(path)
    if not ok:
        _warn(feedback, f"warning: style file {path} could not be read ({msg}): '{layer.name()}' is loaded with "
                        f"the built-in style")
    return bool(ok)


def _set_band(renderer, band):
    if hasattr(renderer, "setInputBand"):          # 3.38+
        renderer.setInputBand(band)
    else:
        renderer.setBand(band)


def _renderer_band(renderer):
    return renderer.inputBand() if hasattr(renderer, "inputBand") else renderer.band()


def pseudocolor(provider, band, lo, hi, stops, suffix=""):
    """A QgsSingleBandPseudoColorRenderer, interpolated over [lo, hi] with stops [(0..1, '#rrggbb')]."""
    fn = QgsColorRampShader(lo, hi)
    fn.setColorRampType(QgsColorRampShader.Interpolated)
    values = [(lo + p * (hi - lo), c) for p, c in stops]
    fn.setColorRampItemList([QgsColorRampShader.ColorRampItem(v, QColor(c), "%.3g" % v) for v, c in values])
    if suffix and hasattr(fn, "legendSettings"):
        settings = fn.legendSettings()
        settings.setSuffix(suffix)
        fn.setLegendSettings(settings)
    shader = QgsRasterShader(lo, hi)
    shader.setRasterShaderFunction(fn)
    r = QgsSingleBandPseudoColorRenderer(provider, band, shader)
    r.setClassificationMin(lo)
    r.setClassificationMax(hi)
    return r


def _rescale(renderer, lo, hi):
    """Move a pseudocolour renderer's ramp (from a QML file) onto [lo, hi], keeping its relative stops."""
    fn = renderer.shader().rasterShaderFunction()
    a, b = fn.minimumValue(), fn.maximumValue()
    span = (b - a) or 1.0
    items = []
    for it in fn.colorRampItemList():
        v = lo + (it.value - a) / span * (hi - lo)
        items.append(QgsColorRampShader.ColorRampItem(v, it.color, "%.3g" % v))
    fn.setColorRampItemList(items)
    fn.setMinimumValue(lo)
    fn.setMaximumValue(hi)
    renderer.shader().setMinimumValue(lo)
    renderer.shader().setMaximumValue(hi)
    renderer.setClassificationMin(lo)
    renderer.setClassificationMax(hi)


def dominant_renderer(provider, band, factors):
    classes = [QgsPalettedRasterRenderer.Class(v, QColor(c), n) for v, n, c in outputs.dominant_classes(factors)]
    return QgsPalettedRasterRenderer(provider, band, classes)


def style_layer(layer, kind, band, factors=(), sm_range=None, feedback=None):
    """Style a prediction raster: kind 'sm' | 'weight' | 'dominant_factor', showing `band`."""
    from_qml = load_style(layer, kind, feedback)
    r = layer.renderer()
    if kind == "dominant_factor":
        new = dominant_renderer(layer.dataProvider(), band, factors)   # the classes depend on the factors
        if from_qml and r is not None:
            new.setOpacity(r.opacity())
        layer.setRenderer(new)
    else:
        lo, hi = (sm_range or outputs.DEFAULT_SM_RANGE) if kind == "sm" else (0.0, 1.0)
        if from_qml and isinstance(r, QgsSingleBandPseudoColorRenderer):
            _rescale(r, float(lo), float(hi))
            _set_band(r, band)
        else:
            if from_qml:
                _warn(feedback, f"warning: {kind}.qml does not hold a single-band pseudocolour style: "
                                f"'{layer.name()}' is loaded with the built-in style")
            layer.setRenderer(pseudocolor(layer.dataProvider(), band, float(lo), float(hi),
                                          SM_RAMP if kind == "sm" else WEIGHT_RAMP,
                                          " m³/m³" if kind == "sm" else ""))
    layer.triggerRepaint()


def write_default_styles(folder=STYLE_DIR, template=None):
    """Write sm.qml, weight.qml and dominant_factor.qml (the built-in styles) into `folder`, using
    `template` (any single-band raster path) as the layer they are saved from."""
    from qgis.core import QgsMapLayer
    os.makedirs(folder, exist_ok=True)
    cats = QgsMapLayer.Symbology | QgsMapLayer.Rendering | QgsMapLayer.Legend
    for kind in ("sm", "weight", "dominant_factor"):
        layer = QgsRasterLayer(template, kind, "gdal")
        p = layer.dataProvider()
        if kind == "sm":
            layer.setRenderer(pseudocolor(p, 1, *outputs.DEFAULT_SM_RANGE, SM_RAMP, " m³/m³"))
        elif kind == "weight":
            layer.setRenderer(pseudocolor(p, 1, 0.0, 1.0, WEIGHT_RAMP))
        else:
            layer.setRenderer(QgsPalettedRasterRenderer(p, 1, []))
        with atomic_output(os.path.join(folder, kind + ".qml"), ".qml") as tmp:
            msg, ok = layer.saveNamedStyle(tmp, cats)
            if not ok:
                raise RuntimeError(msg)


def write_sidecar_styles(folder, manifest, feedback=None):
    """Save each raster's style as <name>.qml beside it, the file QGIS applies by itself when the raster is
    opened by hand (Add Raster Layer, drag and drop): SM and weights as pseudocolour showing the last date
    instead of a colour composite of the first three, the dominant factor with its factor classes."""
    from qgis.core import QgsMapLayer
    cats = QgsMapLayer.Symbology | QgsMapLayer.Rendering | QgsMapLayer.Legend
    last = len(manifest["dates"])
    items = [("sm", manifest["sm"], last)] + [("weight", fn, last) for fn in manifest["weights"].values()]
    if manifest.get("dominant_factor"):
        items.append(("dominant_factor", manifest["dominant_factor"], last))
    items += [("weight", fn, 1) for fn in ((manifest.get("variance_share") or {}).get("files") or {}).values()]
    from osgeo import gdal
    # opening a multi-band raster makes QGIS compute a histogram for its default colour composite, which GDAL
    # would cache in <raster>.aux.xml: not for these throw-away layers (thread-local: this thread only)
    old_pam = gdal.GetThreadLocalConfigOption("GDAL_PAM_ENABLED", None)
    gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", "NO")
    try:
        for kind, fn, band in items:
            path = os.path.join(folder, fn)
            layer = QgsRasterLayer(path, os.path.splitext(fn)[0], "gdal")
            if not layer.isValid():
                continue
            style_layer(layer, kind, band, manifest["factors"], manifest.get("sm_range"))
            try:
                with atomic_output(os.path.splitext(path)[0] + ".qml", ".qml") as tmp:
                    msg, ok = layer.saveNamedStyle(tmp, cats)
                    if not ok:
                        raise RuntimeError(msg)
            except (RuntimeError, OSError) as exc:
                _warn(feedback, f"warning: could not write the style beside {path}: {exc}")
            del layer
    finally:
        gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", old_pam)


# --------------------------------------------------------------------------- time
def day_range(iso):
    """[date 00:00, next day 00:00) in local time, the Temporal Controller's default spec."""
    d = QDate.fromString(str(iso), "yyyy-MM-dd")
    return QgsDateTimeRange(QDateTime(d, QTime(0, 0)), QDateTime(d.addDays(1), QTime(0, 0)), True, False)


def inset_day_range(iso):
    """[date 00:00:01, date 23:59:59]: the time range of one date's layer or band. QgsTemporalRange.overlaps
    (3.22 and later) ignores the other range's excluded end: a layer on [d+1, d+2) counts as visible in the
    Temporal Controller's frame [d, d+1), so with exact day ranges two dates would match every frame;
    inset by a second, exactly one does."""
    r = day_range(iso)
    return QgsDateTimeRange(r.begin().addSecs(1), r.end().addSecs(-1), True, True)


def _fixed_range_mode():
    try:
        return Qgis.RasterTemporalMode.FixedTemporalRange
    except AttributeError:
        from qgis.core import QgsRasterLayerTemporalProperties
        return QgsRasterLayerTemporalProperties.ModeFixedTemporalRange


def set_fixed_range(layer, iso):
    tp = layer.temporalProperties()
    tp.setMode(_fixed_range_mode())
    tp.setFixedTemporalRange(inset_day_range(iso))
    tp.setIsActive(True)


def set_per_band_ranges(layer, dates):
    """QGIS >= 3.38: band i shows on dates[i - 1] (the renderer switches bands with the time)."""
    tp = layer.temporalProperties()
    tp.setMode(Qgis.RasterTemporalMode.FixedRangePerBand)
    tp.setFixedRangePerBand({i: inset_day_range(d) for i, d in enumerate(dates, start=1)})
    tp.setIsActive(True)


def extend_project_time(project, dates):
    """Make the project's time range cover the dates (one-day steps), keeping a wider range already set."""
    if not dates:
        return
    ts = project.timeSettings()
    new = QgsDateTimeRange(day_range(dates[0]).begin(), day_range(dates[-1]).end(), True, False)
    old = ts.temporalRange()
    if old.begin().isValid() and old.end().isValid():
        new = QgsDateTimeRange(min(old.begin(), new.begin()), max(old.end(), new.end()), True, False)
    ts.setTemporalRange(new)
    if hasattr(ts, "setTimeStep"):
        from qgis.core import QgsUnitTypes
        ts.setTimeStepUnit(QgsUnitTypes.TemporalDays)
        ts.setTimeStep(1.0)


# --------------------------------------------------------------------------- loading
class PredictionLoad:
    """What the post-processors of one prediction share: its project group and the order in it."""

    def __init__(self, folder, manifest, per_band):
        self.folder, self.manifest, self.per_band = folder, manifest, per_band
        self.project = None          # set by each post-processor from its context: no reference kept after
        self.dates = [str(d) for d in manifest["dates"]]
        self.factors = list(manifest["factors"])
        self.sm_range = manifest.get("sm_range")
        self.group_name = "ISMoE prediction " + os.path.basename(os.path.normpath(folder))
        self.group = None
        self._ranks = []

    def _slot(self, rank):
        pos = bisect.bisect(self._ranks, rank)
        self._ranks.insert(pos, rank)
        return pos

    def _ensure_group(self, layer):
        if self.group is not None:
            return self.group
        root = self.project.layerTreeRoot()
        node = root.findLayer(layer.id())
        parent = node.parent() if node is not None else root
        idx = 0
        for i, child in enumerate(parent.children()):
            if isinstance(child, QgsLayerTreeLayer) and child.layerId() == layer.id():
                idx = i
                break
        self.group = parent.insertGroup(idx, self.group_name)
        return self.group

    def _move(self, layer, parent, index):
        """Put the layer's tree node at parent[index], moved from where Processing put it. The copy is inserted
        before the original node is removed: a project's layer-tree bridge (QgsProject.instance() in the
        desktop) removes a layer from the project when its last tree node goes."""
        node = self.project.layerTreeRoot().findLayer(layer.id())
        if node is None:
            return parent.insertLayer(index, layer)
        clone = node.clone()
        old_parent = node.parent()
        parent.insertChildNode(index, clone)
        old_parent.removeChildNode(node)
        return clone

    def place(self, layer, rank, visible=True):
        group = self._ensure_group(layer)
        node = self._move(layer, group, self._slot(rank))
        node.setItemVisibilityChecked(visible)
        return node

    def place_date_group(self, layer, rank, name, kind, views, visible=True):
        """QGIS < 3.38: a group of one fixed-range layer per date (newest on top); `layer` (the last date's
        view, loaded by Processing) becomes its top layer."""
        group = self._ensure_group(layer)
        sub = group.insertGroup(self._slot(rank), name)
        sub.setItemVisibilityChecked(visible)
        sub.setExpanded(False)
        for iso, path in zip(self.dates[:-1], views[:-1]):
            lyr = QgsRasterLayer(path, iso, "gdal")
            style_layer(lyr, kind, 1, self.factors, self.sm_range)
            set_fixed_range(lyr, iso)
            self.project.addMapLayer(lyr, False)
            sub.insertLayer(0, lyr)
        layer.setName(self.dates[-1])
        set_fixed_range(layer, self.dates[-1])
        self._move(layer, sub, 0)
        return sub


class PredictionLayerStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles one loaded prediction raster and puts it (and its per-date layers) in the project."""

    def __init__(self, load: PredictionLoad, kind, rank, name, views=None, visible=True, band=None):
        super().__init__()
        self.load, self.kind, self.rank, self.name, self.views, self.visible = load, kind, rank, name, views, visible
        self.band = band

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS API name)
        ld = self.load
        ld.project = context.project()
        try:
            if self.band is not None:                          # a raster of one value per pixel: no time
                style_layer(layer, "weight", self.band, ld.factors, ld.sm_range, feedback)
                layer.setName(self.name)
                ld.place(layer, self.rank, self.visible)
            elif self.views:                                   # QGIS < 3.38: one layer per date
                style_layer(layer, self.kind, 1, ld.factors, ld.sm_range, feedback)
                ld.place_date_group(layer, self.rank, self.name, self.kind, self.views, self.visible)
            else:
                style_layer(layer, self.kind, len(ld.dates), ld.factors, ld.sm_range, feedback)
                layer.setName(self.name)
                if ld.per_band:
                    set_per_band_ranges(layer, ld.dates)
                ld.place(layer, self.rank, self.visible)
            if ld.per_band or self.views:
                extend_project_time(ld.project, ld.dates)
            if self.kind == "sm" and ld.project is QgsProject.instance():   # desktop: Temporal Controller, dock
                for hook in list(ON_PREDICTION_LOADED):
                    hook(ld.folder, ld.dates)
        except Exception as exc:  # noqa: BLE001 - a styling failure must not lose the loaded layer
            _warn(feedback, f"warning: could not style '{layer.name()}': {type(exc).__name__}: {exc}")
        finally:
            ld.project = None


def prediction_layer_specs(folder, manifest, per_band=PER_BAND_TEMPORAL):
    """[(kind, rank, name, path to load, per-date views or None, visible, band or None)] of a prediction folder
    (band: the band a per-factor raster shows, None for the date series).
    Writes the per-date VRT views of SM and the dominant factor when QGIS has no per-band time (< 3.38)."""
    dates = [str(d) for d in manifest["dates"]]
    specs = []
    entries = [("sm", SM_NAME, manifest["sm"], True)]
    if manifest.get("dominant_factor") and os.path.exists(os.path.join(folder, manifest["dominant_factor"])):
        entries.append(("dominant_factor", DOMINANT_NAME, manifest["dominant_factor"], False))
    for rank, (kind, name, fn, visible) in enumerate(entries):
        path = os.path.join(folder, fn)
        if per_band:
            specs.append((kind, rank, name, path, None, visible, None))
        else:
            views = outputs.band_views(path, dates)
            specs.append((kind, rank, name + " by date", views[-1], views, visible, None))
    for i, f in enumerate(manifest["factors"]):
        specs.append(("weight", 10 + i, "Weight: " + f, os.path.join(folder, manifest["weights"][f]), None, False,
                      None))
    for i, (f, fn) in enumerate(((manifest.get("variance_share") or {}).get("files") or {}).items()):
        if os.path.exists(os.path.join(folder, fn)):
            specs.append(("variance_share", 1000 + i, VARIANCE_SHARE_NAME + f, os.path.join(folder, fn), None, False,
                          1))
    return specs


def queue_prediction_layers(context, folder, manifest=None, feedback=None, per_band=PER_BAND_TEMPORAL) -> int:
    """Register the prediction's rasters to load (styled, time-aware) when Processing finishes.
    Returns the number of layers queued (0 when the context has no project, e.g. qgis_process)."""
    project = context.project()
    if project is None:
        return 0
    if manifest is None:
        from ..model.prediction_folder import read_manifest
        manifest = read_manifest(folder)
    load = PredictionLoad(folder, manifest, per_band)
    n = 0
    for kind, rank, name, path, views, visible, band in prediction_layer_specs(folder, manifest, per_band):
        details = QgsProcessingContext.LayerDetails(name, project, kind.upper(), QgsProcessingUtils.LayerHint.Raster)
        details.forceName = True
        styler = PredictionLayerStyler(load, kind, rank, name, views, visible, band)
        _KEEP.append(styler)
        details.setPostProcessor(styler)
        context.addLayerToLoadOnCompletion(path, details)
        n += 1
    if feedback is not None and not per_band:
        feedback.pushInfo(f"QGIS {Qgis.QGIS_VERSION.split('-')[0]} has no per-band time ranges (3.38+): SM and the "
                          f"dominant factor load as groups of one layer per date for the Temporal Controller "
                          f"({len(manifest['dates'])} dates, VRT views in "
                          f"{os.path.join(folder, outputs.BAND_VIEW_DIR)})")
    return n
