"""ismoe:evaluate: models (+ reference products, baselines) on a dataset -> metrics, report, importance."""
import os

from qgis.core import (QgsCoordinateReferenceSystem, QgsProcessingException, QgsProcessingOutputFile,
                       QgsProcessingOutputHtml, QgsProcessingOutputNumber)

from ..options import BASELINES, DEVICES
from ..options import EVAL_PERIODS as PERIODS
from .common import check_writable, layer_source, optional_date, raster_layer_list
from .families import RegionsAlgorithm, TorchAlgorithm
from .regions import check_region_field, layer_polygons
from .qgis_compat import SOURCE_FILE, SOURCE_RASTER


class EvaluateAlgorithm(TorchAlgorithm, RegionsAlgorithm):
    MODELS, REFERENCES, BASELINES = "MODELS", "REFERENCES", "BASELINES"
    PERIOD, DATE_FROM, DATE_TO, OUTPUT = "PERIOD", "DATE_FROM", "DATE_TO", "OUTPUT"

    def name(self):
        return "evaluate"

    def displayName(self):  # noqa: N802
        return self.tr("Evaluate models and reference products")

    def helpIntro(self):  # noqa: N802
        return self.tr(
            "Scores trained models, reference soil-moisture products and simple baselines against the target of "
            "a dataset: CC (Pearson r), RMSE, ubRMSE, bias and KGE (2009), overall, per location, per region and "
            "per season (DJF/MAM/JJA/SON). Every model and product is scored on exactly the same samples (dates "
            "x locations where the observation and every estimate are valid), so the rows compare fairly.")

    def helpOutro(self):  # noqa: N802
        return self.tr(
            "Headline: per-location skill. Each location's series is scored over time (CC, anomaly CC with the "
            "training period's day-of-year climatology removed, bias, ubRMSE) and summarised by the median and "
            "the interquartile range over the locations with at least 30 scored days; a CC pooled over all "
            "locations mostly rewards each location's mean level.")

    def initAlgorithm(self, config=None):  # noqa: N802
        tr = self.tr
        self.addParameterMultipleLayers(self.MODELS, tr("Model files (.pt)"), SOURCE_FILE, help=tr(
            "one or more model files (.pt) from ismoe:train (ismoe, cnn_lstm, mean_expert). Each is named by its "
            "file name in the report. They must have been trained on the dataset's factor set."))
        self.addDatasetParameter(help=tr(          # issue 15: or .zarr
            "the dataset file (.npz) from ismoe:preparedataset; its target is the observation."))
        self.addParameterMultipleLayers(self.REFERENCES, tr("Reference soil-moisture products (raster series)"),
                                        SOURCE_RASTER, optional=True, help=tr(
                                            "optional soil-moisture raster series (e.g. ERA5-Land swvl1, SMAP L3), "
                                            "one band per day with dates; each is read onto the dataset grid and "
                                            "sampled at the target locations. Its layer name is its name in the "
                                            "report. Use the same units as the target (m3/m3)."))
        self.addParameterEnum(self.BASELINES, tr("Baselines"), BASELINES, default=[0, 1], multiple=True,
                              optional=True, help=tr(
                                  "built-in references: persistence (yesterday's observed value; the models never "
                                  "see it, so it is a benchmark, not a competitor) and climatology (the day-of-year "
                                  "mean of the training period, 15-day window)."))
        self.addParameterEnum(self.PERIOD, tr("Evaluation period"), PERIODS, default=0, help=tr(
            "the dates scored: test (default), validation or all, from the training split stored in the first "
            "model file."))
        self.addParameterString(self.DATE_FROM, tr("From date (YYYY-MM-DD)"), optional=True, help=tr(
            "the first date scored (YYYY-MM-DD, inclusive); it overrides PERIOD, as DATE_TO does."))
        self.addParameterString(self.DATE_TO, tr("To date (YYYY-MM-DD)"), optional=True, help=tr(
            "the last date scored (YYYY-MM-DD, inclusive)."))
        self.addRegionsParameters(help=tr(
            "optional polygon layer (any CRS, reprojected to the dataset CRS); target pixels whose centre is "
            "inside a polygon get its name (overlaps: the later feature wins). Adds per-region metrics and "
            "per-region seasonal importance."))
        self.addDeviceParameter(advanced=True)
        self.addParameterFolderDestination(self.OUTPUT, tr("Evaluation folder"), help=tr(
            "a folder that receives metrics.csv, metrics.json, location_skill.csv (every location's skill per "
            "model and product), report.html (led by the per-location table and a map of the per-location CC; "
            "then tables and plots: time series, scatter with the 1:1 line, metrics by season and region, the "
            "factors' importance by month) and seasonal_importance.csv (mean weight of each factor by month, season "
            "and day of year, per region, of the first ISMoE model; further ISMoE models get "
            "seasonal_importance_<name>.csv). For additive and gated models also variance_share.csv (each "
            "location's share of the period's contribution variance per factor) and seasonal_variance_share.csv "
            "(the same by month and season, the region means of the locations' shares: what the report charts). "
            "Files are written to a temporary folder first: a failed or cancelled run leaves nothing behind."))
        self.addOutput(QgsProcessingOutputFile("METRICS_CSV", tr("Metrics (CSV)")))
        self.addOutput(QgsProcessingOutputFile("METRICS_JSON", tr("Metrics (JSON)")))
        self.addOutput(QgsProcessingOutputHtml("REPORT", tr("Evaluation report")))
        self.addOutput(QgsProcessingOutputFile("IMPORTANCE_CSV", tr("Seasonal importance (CSV)")))
        self.addOutput(QgsProcessingOutputFile("LOCATION_CSV", tr("Per-location skill (CSV)")))
        self.addOutput(QgsProcessingOutputFile("VARIANCE_SHARE_CSV", tr("Seasonal variance shares (CSV)")))
        self.addOutput(QgsProcessingOutputNumber("N_SAMPLES", tr("Samples scored (common to all)")))

    # ------------------------------------------------------------------ helpers
    def _model_files(self, parameters, context):
        raw = self.parameterAsFileList(parameters, self.MODELS, context) or []
        if isinstance(raw, str):
            raw = [raw]
        files = [str(f).strip() for f in raw if str(f).strip()]
        if not files:
            raise QgsProcessingException(f"{self.MODELS}: no model file given: add at least one model (.pt) from "
                                         f"ismoe:train")
        for f in files:
            if not os.path.isfile(f):
                raise QgsProcessingException(f"{self.MODELS}: model file not found: '{f}'")
        from ..model.evaluate import model_names
        return model_names(files)

    def _references(self, parameters, context):
        layers = raster_layer_list(self, parameters, self.REFERENCES, context)    # NETCDF:"f.nc":var too
        refs = {}
        for lyr in layers:
            name = lyr.name() or os.path.splitext(os.path.basename(layer_source(lyr)))[0]
            if name in refs:
                raise QgsProcessingException(f"{self.REFERENCES}: two layers are named '{name}': rename one "
                                             f"(layer names are the product names in the report)")
            refs[name] = layer_source(lyr)
        return refs

    def _region_labels(self, parameters, context, feedback, cube):
        source = self.parameterAsSource(parameters, self.REGIONS, context)
        if source is None:
            return None
        field = self.parameterAsString(parameters, self.REGION_FIELD, context)
        check_region_field(source, field, self.REGION_FIELD, self.REGIONS)
        dst = QgsCoordinateReferenceSystem.fromWkt(cube.grid["crs_wkt"])
        if not dst.isValid():
            raise QgsProcessingException(f"{self.DATASET}: the dataset has no valid CRS; cannot place {self.REGIONS}")
        polygons = list(layer_polygons(source, field, feedback, self.REGIONS, dst, context.transformContext(),
                                       precision=12))
        from ..model.evaluate import region_labels_from_polygons
        labels = self.run_core(region_labels_from_polygons, cube, polygons)
        n_in = sum(1 for v in labels if v is not None)
        if n_in == 0:
            raise QgsProcessingException(f"{self.REGIONS}: no target location of the dataset lies inside a polygon "
                                         f"(after reprojection to the dataset CRS): check the layer and its CRS")
        feedback.pushInfo(f"regions: {n_in} of {len(labels)} target locations in {len(set(labels) - {None})} "
                          f"region(s)")
        return labels

    # ------------------------------------------------------------------ run
    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.require_torch()
        p = parameters
        models = self._model_files(p, context)
        path = self.parameterAsFile(p, self.DATASET, context)
        if not path or not os.path.exists(path):
            raise QgsProcessingException(f"{self.DATASET}: file not found: '{path}' (create it with "
                                         f"ismoe:preparedataset)")
        out = self.parameterAsString(p, self.OUTPUT, context)
        check_writable(os.path.join(out, "x"), self.OUTPUT)
        self.lock_output(out, self.OUTPUT, feedback)          # issue 13: one writer per output
        refs = self._references(p, context)
        baselines = [BASELINES[i] for i in (self.parameterAsEnums(p, self.BASELINES, context) or [])]
        date_from = optional_date(self.parameterAsString(p, self.DATE_FROM, context), self.DATE_FROM)
        date_to = optional_date(self.parameterAsString(p, self.DATE_TO, context), self.DATE_TO)
        if date_from and date_to and date_from > date_to:
            raise QgsProcessingException(f"{self.DATE_FROM}: {date_from} is after {self.DATE_TO} {date_to}")
        period = (date_from, date_to) if (date_from or date_to) else PERIODS[self.parameterAsEnum(p, self.PERIOD,
                                                                                                   context)]
        from ..data.cube import Cube
        from ..model.evaluate import evaluate
        cube = self.run_core(Cube.load, path)
        labels = self._region_labels(p, context, feedback, cube)
        feedback.pushInfo(f"evaluating {', '.join(models)}" + (f"; references {', '.join(refs)}" if refs else "")
                          + (f"; baselines {', '.join(baselines)}" if baselines else ""))
        res = self.run_core(evaluate, cube, models, refs, period, labels, out, self.callbacks(feedback),
                            baselines=baselines, device=DEVICES[self.parameterAsEnum(p, self.DEVICE, context)])
        from ..model.metrics import describe_location_skill
        overall = [r for r in res["rows"] if r["group_kind"] == "overall"]
        skills = res.get("location_skill") or {}
        for r in overall:
            feedback.pushInfo(f"{r['model']:>24}: pooled CC {r['cc']:.3f}  RMSE {r['rmse']:.4f}  ubRMSE "
                              f"{r['ubrmse']:.4f}  bias {r['bias']:+.4f}  KGE {r['kge']:.3f}  (n {r['n']})")
            if r["model"] in skills:
                feedback.pushInfo(f"{'':>24}  {describe_location_skill(skills[r['model']])}")
        paths = res["paths"]
        return {self.OUTPUT: out, "METRICS_CSV": paths["csv"], "METRICS_JSON": paths["json"],
                "REPORT": paths["html"], "IMPORTANCE_CSV": paths["importance"], "N_SAMPLES": res["n_samples"],
                "LOCATION_CSV": paths.get("location_csv"),
                "VARIANCE_SHARE_CSV": paths.get("seasonal_variance_share")}
