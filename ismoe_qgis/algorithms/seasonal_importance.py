"""ismoe:seasonalimportance: the dock's seasonal-importance chart, headless (PNG + HTML/SVG + CSV).

Thin glue: the numbers come from ismoe_qgis.model.prediction_folder / ismoe_qgis.model.importance,
the chart from ismoe_qgis.model.importance_chart (matplotlib Figure + Agg, no pyplot, no QWidget:
safe in the Processing worker thread).
"""
import json
import os

from qgis.core import QgsProcessingException, QgsProcessingOutputNumber, QgsProcessingOutputString

from ..options import CHART_PERIODS as PERIOD_OPTIONS
from ..options import CHART_STYLES as STYLE_OPTIONS
from ..options import IMPORTANCE_MEASURES
from .families import RegionsAlgorithm
from .regions import check_region_field, crs_for_core, layer_polygons
from .qgis_compat import FILE_BEHAVIOR_FILE, FILE_BEHAVIOR_FOLDER


class SeasonalImportanceAlgorithm(RegionsAlgorithm):
    INPUT, INPUT_CSV = "INPUT", "INPUT_CSV"
    ZONES, ZONE_NAMES = "ZONES", "ZONE_NAMES"
    PERIOD, STYLE, MEASURE = "PERIOD", "STYLE", "MEASURE"
    OUTPUT_PNG, OUTPUT_HTML, OUTPUT_CSV = "OUTPUT_PNG", "OUTPUT_HTML", "OUTPUT_CSV"

    def name(self):
        return "seasonalimportance"

    def displayName(self):  # noqa: N802
        return self.tr("Seasonal expert importance chart")

    def helpIntro(self):  # noqa: N802
        return self.tr(
            "Charts which environmental factor drives soil moisture when: each factor's importance (its variance "
            "share or its mean weight, MEASURE) by month (or day of year, or season), the same chart as the ISMoE "
            "dock, written as files so Model Builder chains and qgis_process users get it too.")

    def initAlgorithm(self, config=None):  # noqa: N802
        tr = self.tr
        self.addParameterFile(self.INPUT, tr("Prediction folder (output of ismoe:predict)"),
                              behavior=FILE_BEHAVIOR_FOLDER, optional=True, help=tr(
                                  "a prediction folder written by ismoe:predict (sm.tif, weight_<factor>.tif, "
                                  "prediction.json). The weight rasters are streamed block by block (bounded "
                                  "memory). A seasonal-importance CSV may be given here as well."))
        self.addParameterFile(self.INPUT_CSV, tr("…or a seasonal-importance CSV"), behavior=FILE_BEHAVIOR_FILE,
                              extension="csv", optional=True, help=tr(
                                  "instead of INPUT, a seasonal-importance CSV (columns region, period_kind, "
                                  "period, factor, mean_weight, n), e.g. from the evaluation or an earlier run: it "
                                  "is charted as is."))
        self.addRegionsParameters(help=tr(
            "optional polygon layer (any CRS, reprojected to the rasters'): one chart panel and one set of CSV rows "
            "per feature. Without it the whole raster is one region named 'all'. Features outside the rasters are "
            "skipped with a warning. Ignored for a CSV input."))
        self.addParameterRasterLayer(self.ZONES, tr("Zones (raster of zone numbers)"), optional=True, help=tr(
            "optional raster of zone numbers (e.g. the demo's regions.tif), read on the prediction grid (nearest "
            "neighbour when on another grid): one region per zone value; nodata and 0 are no zone. May be combined "
            "with REGIONS."))
        self.addParameterString(self.ZONE_NAMES, tr("Zone names (1=name;2=name)"), optional=True, help=tr(
            "optional names of the zones, e.g. '1=arid;2=tundra;3=monsoon' (default: the raster's region_<value> "
            "tags, else 'zone <value>')."))
        self.addParameterEnum(self.PERIOD, tr("Chart period"), [label for label, _ in PERIOD_OPTIONS], default=0,
                              help=tr("x axis of the chart: Month (1-12), Day of year (1-366) or Season (DJF, MAM, "
                                      "JJA, SON). The CSV always holds all three."))
        self.addParameterEnum(self.STYLE, tr("Chart style"), STYLE_OPTIONS, default=0, help=tr(
            "Lines (one line per factor) or Stacked areas (weights stacked, they sum to 1)."))
        self.addParameterEnum(self.MEASURE, tr("Importance measure"), IMPORTANCE_MEASURES, default=0, help=tr(
            "auto (default): the variance share where the prediction folder has it (additive and gated models: "
            "variance_share_<factor>.tif), else the daily weights; weight: the mean of the daily weight rasters; "
            "variance_share: each pixel's share of the variance of what the factor contributes to SM within the "
            "month or season, averaged over the region's pixels (by month or season only: a share needs the days "
            "of a period, so Day of year is refused). A CSV input is charted in its own measure."))
        self.addParameterFileDestination(self.OUTPUT_PNG, tr("Chart (PNG)"), tr("PNG files (*.png)"), help=tr(
            "the chart as PNG (one panel per region, at most 12; every region is in the CSV)."))
        self.addParameterFileDestination(self.OUTPUT_HTML, tr("Chart page (HTML or SVG)"),
                                         tr("HTML files (*.html);;SVG files (*.svg)"), createByDefault=False,
                                         optional=True, help=tr(
                                             "optional; .html writes a page with the chart (SVG) and tables of the "
                                             "mean weights (dominant factor in bold); .svg writes the chart as SVG."))
        self.addParameterFileDestination(self.OUTPUT_CSV, tr("Seasonal importance table (CSV)"),
                                         tr("CSV files (*.csv)"), help=tr(
                                             "mean weight per region, period kind, period and factor, with n = "
                                             "number of valid pixel-days averaged."))
        self.addOutput(QgsProcessingOutputNumber("N_REGIONS", tr("Regions charted")))
        self.addOutput(QgsProcessingOutputString("DOMINANT", tr("Dominant factor per season (JSON)")))

    def extra_parameter_problems(self, parameters, context):
        """A prediction folder's prediction.json is validated before use (model.prediction_folder.read_manifest):
        its file names must stay inside the folder."""
        from ..model.prediction_folder import MANIFEST, read_manifest
        folder = parameters.get(self.INPUT)
        if isinstance(folder, str) and folder.strip():
            folder = os.path.abspath(os.path.expanduser(folder.strip()))
            if os.path.basename(folder).lower() == MANIFEST:
                folder = os.path.dirname(folder)
            if os.path.isfile(os.path.join(folder, MANIFEST)):
                try:
                    read_manifest(folder)
                except (ValueError, OSError) as exc:
                    return ["%s: %s" % (self.INPUT, exc)]
        return []

    # ------------------------------------------------------------------ helpers
    def _source(self, parameters, context):
        folder = (self.parameterAsFile(parameters, self.INPUT, context) or "").strip()
        csv_path = (self.parameterAsFile(parameters, self.INPUT_CSV, context) or "").strip()
        if folder and csv_path:
            raise QgsProcessingException("%s and %s: give one source, not both" % (self.INPUT, self.INPUT_CSV))
        if not folder and not csv_path:
            raise QgsProcessingException("%s: give a prediction folder (output of ismoe:predict) or %s a "
                                         "seasonal-importance CSV" % (self.INPUT, self.INPUT_CSV))
        return folder or csv_path, (self.INPUT if folder else self.INPUT_CSV)

    def _regions(self, parameters, context, feedback, folder):
        from ..model import prediction_folder as pf

        source = self.parameterAsSource(parameters, self.REGIONS, context)
        if source is None:
            return None
        field = self.parameterAsString(parameters, self.REGION_FIELD, context)
        check_region_field(source, field, self.REGION_FIELD, self.REGIONS)
        crs_text = crs_for_core(source.sourceCrs())
        regions, used = {}, set()
        for name, geojson in layer_polygons(source, field, feedback, self.REGIONS):
            base, k = name, 2
            while name in used:
                name = "%s (%d)" % (base, k)
                k += 1
            region = pf.PolygonRegion(geojson, crs_text)
            try:
                pf.region_mask(folder, region, name)
            except pf.ChartDataError as exc:
                feedback.pushWarning("%s: %s; skipped" % (self.REGIONS, exc))
                continue
            used.add(name)
            regions[name] = region
        if not regions:
            raise QgsProcessingException("%s: no feature overlaps the prediction rasters (extent %s in the raster "
                                         "CRS)" % (self.REGIONS, pf._fmt_bounds(folder.bounds)))
        return regions

    def _zones(self, parameters, context, folder):
        from ..model import prediction_folder as pf

        layer = self.parameterAsRasterLayer(parameters, self.ZONES, context)
        if layer is None:
            return None
        try:
            names = pf.parse_zone_names(self.parameterAsString(parameters, self.ZONE_NAMES, context))
            return pf.zone_regions(folder, layer.source().split("|")[0], names)
        except pf.ChartDataError as exc:
            raise QgsProcessingException("%s: %s" % (self.ZONES, exc)) from None

    # ------------------------------------------------------------------ run
    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from ..model import importance as imp
        from ..model import importance_chart as chart
        from ..model import prediction_folder as pf

        path, param = self._source(parameters, context)
        kind = PERIOD_OPTIONS[self.parameterAsEnum(parameters, self.PERIOD, context)][1]
        stacked = self.parameterAsEnum(parameters, self.STYLE, context) == 1
        measure = IMPORTANCE_MEASURES[self.parameterAsEnum(parameters, self.MEASURE, context)]
        png = self.parameterAsFileOutput(parameters, self.OUTPUT_PNG, context)
        page = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context)
        out_csv = self.parameterAsFileOutput(parameters, self.OUTPUT_CSV, context)
        cb = self.callbacks(feedback)
        try:
            source = pf.open_source(path)
        except (pf.ChartDataError, imp.ImportanceError) as exc:
            raise QgsProcessingException("%s: %s" % (param, exc)) from None

        if isinstance(source, imp.ImportanceTable):
            table = source
            if parameters.get(self.REGIONS) or parameters.get(self.ZONES):
                feedback.pushWarning("%s and %s are ignored for a CSV input (its regions are charted as they are)"
                                     % (self.REGIONS, self.ZONES))
            feedback.pushInfo("read %d region(s) from %s" % (len(table.regions), path))
        else:
            folder = source
            for w in folder.warnings:
                feedback.pushWarning(w)
            feedback.pushInfo(folder.describe())
            try:
                measure = folder.resolve_measure(measure)
            except pf.ChartDataError as exc:
                raise QgsProcessingException("%s: %s" % (self.MEASURE, exc)) from None
            if measure == imp.VARIANCE_SHARE and kind == "doy":
                raise QgsProcessingException(
                    "%s: variance shares are by month and season (a share needs the days of a period); choose "
                    "Month or Season, or MEASURE weight for the day of year" % self.PERIOD)
            feedback.pushInfo("measure: %s" % imp.MEASURE_TITLES[measure])
            regions = self._regions(parameters, context, feedback, folder)
            zones = self._zones(parameters, context, folder)
            if zones:
                regions = dict(regions or {})
                for name, zone in zones.items():
                    key, k = name, 2
                    while key in regions:
                        key = "%s (%d)" % (name, k)
                        k += 1
                    regions[key] = zone
            if regions is None:
                table = self.run_core(pf.whole_area_importance, folder, cb, measure=measure)
            else:
                feedback.pushInfo("%d region(s): %s" % (len(regions), ", ".join(list(regions)[:10])
                                                        + (", …" if len(regions) > 10 else "")))
                table = self.run_core(pf.region_importance, folder, regions, cb, measure=measure)
        if feedback.isCanceled():
            raise QgsProcessingException("cancelled by the user")

        regions_shown = [r for r in table.regions if kind in table.kinds(r)]
        if not regions_shown:
            raise QgsProcessingException("%s: the source has no %s values to chart" % (self.PERIOD, kind))
        if len(regions_shown) > chart.MAX_PANELS:
            feedback.pushWarning("%d regions: the chart shows the first %d, the CSV holds all"
                                 % (len(regions_shown), chart.MAX_PANELS))
        imp.write_importance_csv(table, out_csv)
        fig = self.run_core(chart.importance_figure, table, kind, stacked, regions_shown,
                            members=pf.ensemble_members(path))
        chart.save_figure(fig, png)
        results = {self.OUTPUT_PNG: png, self.OUTPUT_CSV: out_csv}
        if page:
            if page.lower().endswith(".svg"):
                chart.save_figure(fig, page)
            else:
                if not page.lower().endswith((".html", ".htm")):
                    page += ".html"
                chart.write_html(table, fig, page, kind, source=os.path.abspath(path))
            results[self.OUTPUT_HTML] = page
        dominant = {}
        for r in table.regions:
            if "season" in table.kinds(r):
                s = table.get(r, "season")
                dominant[r] = {p: f for p, f in zip(s.periods, s.dominant()) if f}
        for r, d in list(dominant.items())[:10]:
            feedback.pushInfo("%s, dominant factor: %s" % (r, ", ".join("%s %s" % kv for kv in d.items())))
        results["N_REGIONS"] = len(table.regions)
        results["DOMINANT"] = json.dumps(dominant)
        return results
