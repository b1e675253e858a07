"""ismoe:predict: model + factor layers -> daily SM GeoTIFF + one routing-weight GeoTIFF per factor."""
import os

from qgis.core import QgsProcessingException, QgsProcessingOutputNumber, QgsProcessingOutputRasterLayer

from ..options import DEVICES
from .common import (check_writable, layer_source, layers_by_name, optional_date,
                     raster_layer, raster_layer_list)
from .families import FactorLayersAlgorithm, TorchAlgorithm


class PredictAlgorithm(FactorLayersAlgorithm, TorchAlgorithm):
    MODEL_FILE, EXTENT, DATE_FROM, DATE_TO = "MODEL_FILE", "EXTENT", "DATE_FROM", "DATE_TO"
    TILE_SIZE, COG, OUTPUT = "TILE_SIZE", "COG", "OUTPUT"
    LOAD_OUTPUTS = "LOAD_OUTPUTS"
    SCHEDULER, WORKERS, THREADS = "SCHEDULER", "WORKERS", "THREADS"

    def name(self):
        return "predict"

    def displayName(self):  # noqa: N802
        return self.tr("Predict soil moisture and factor weights")

    def helpIntro(self):  # noqa: N802
        return self.tr(
            "Runs a trained model over factor raster layers, tile by tile (bounded memory), and writes into "
            "OUTPUT: sm.tif (daily soil moisture, one band per date, band descriptions = ISO dates), "
            "weight_<factor>.tif (the routing weight of each factor's expert, same bands), dominant_factor.tif "
            "(the top-weighted factor per pixel and date, 1..E in prediction.json's factor order, 0 = nodata) and "
            "prediction.json. Band metadata: DATE=YYYY-MM-DD, unit m3 m-3 on sm.tif; beside each raster a "
            "<name>.qml style that QGIS applies when the file is opened by hand. "
            "The dock widget and ismoe:seasonalimportance read this folder.")

    def initAlgorithm(self, config=None):  # noqa: N802
        tr = self.tr
        self.addParameterFile(self.MODEL_FILE, tr("Model file"), extension="pt", help=tr(
            "a model from ismoe:train."))
        self.addFactorLayersParameter(help=tr(
            "one raster layer per variable the model was trained on, with the same layer names (e.g. the same "
            "files, or other dates/areas of the same products)."))
        self.addReferenceGridParameter(help=tr(
            "optional layer whose grid the outputs are on (e.g. the REFERENCE used in ismoe:preparedataset); "
            "default: the first factor layer's grid."))
        self.addParameterExtent(self.EXTENT, tr("Extent"), optional=True, help=tr(
            "optional area to predict (default: the whole grid)."))
        self.addUndatedLayersParameters()
        self.addParameterString(self.DATE_FROM, tr("First output date"), optional=True, help=tr(
            "optional first date of the output period (YYYY-MM-DD); each output date needs the SEQ_LEN-1 days "
            "before it as input."))
        self.addParameterString(self.DATE_TO, tr("Last output date"), optional=True, help=tr(
            "optional last date of the output period (YYYY-MM-DD)."))
        self.addParameterInt(self.TILE_SIZE, tr("Tile size (pixels)"), 128, min=8, max=4096, advanced=True,
                             help=tr("pixels per tile side (memory grows with it)."))
        self.addDeviceParameter()
        self.addParameterBool(self.COG, tr("Cloud Optimized GeoTIFF"), False, advanced=True, help=tr(
            "write Cloud Optimized GeoTIFFs."))
        # issue 15: Dask execution (optional: Model Builder models saved before them stay valid)
        self.addParameterString(self.SCHEDULER, tr("Dask scheduler address (empty: local)"), optional=True,
                                advanced=True, help=tr(
                                    "optional address of a running Dask scheduler (tcp://host:8786): the tiles are "
                                    "predicted on that cluster's workers, which must see MODEL_FILE and the layers "
                                    "at the same paths."))
        self.addParameterInt(self.WORKERS, tr("Dask workers (0 = auto, 1 = serial)"), 0, min=0, max=4096,
                             optional=True, advanced=True, help=tr(
                                 "0 = auto (a local Dask cluster sized to the machine, one worker per GPU on CUDA, "
                                 "when the prediction is large enough to pay for starting it; else serial), 1 = "
                                 "serial, n = a local cluster of n worker processes. The outputs are the same "
                                 "either way."))
        # issue 11 item 5: threads from the load, or as asked (optional: older Model Builder models stay valid)
        self.addParameterInt(self.THREADS, tr("CPU threads (0 = from the load)"), 0, min=0, max=4096, optional=True,
                             advanced=True, help=tr(
                                 "torch CPU threads of a serial run; 0 (default) = the CPUs the load average leaves "
                                 "idle, at least 1 (Dask workers use 1 each)."))
        self.addParameterFolderDestination(self.OUTPUT, tr("Prediction folder"), help=tr(
            "the prediction folder. Outputs are written to a temporary folder and moved in at the end: a cancelled "
            "or failed run leaves nothing behind."))
        # optional: a Model Builder model saved before this parameter existed stays valid (default: on)
        self.addParameterBool(self.LOAD_OUTPUTS, tr("Add the outputs to the project (styled, time-navigable)"), True,
                              optional=True, help=tr(
                                  "add the outputs to the project when the run ends: SM styled dry-to-wet showing "
                                  "the last date, the dominant factor in the dock's factor colours, the weights on a "
                                  "0-1 ramp, all steppable with the Temporal Controller (QGIS < 3.38: SM and the "
                                  "dominant factor as groups of one layer per date, VRT views in by_date/)."))
        self.addOutput(QgsProcessingOutputRasterLayer("SM", tr("Soil moisture")))
        self.addOutput(QgsProcessingOutputNumber("N_DATES", tr("Output dates")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        self.require_torch()
        from ..model.predict import predict_layers
        p = parameters
        model_path = self.parameterAsFile(p, self.MODEL_FILE, context)
        if not model_path or not os.path.exists(model_path):
            raise QgsProcessingException(f"{self.MODEL_FILE}: file not found: '{model_path}' (train one with "
                                         f"ismoe:train)")
        layers = raster_layer_list(self, p, self.FACTORS, context)
        if not layers:
            raise QgsProcessingException(f"{self.FACTORS}: no factor layers given: add one raster layer per model "
                                         f"variable")
        sources = layers_by_name(layers, self.FACTORS)
        out = self.parameterAsString(p, self.OUTPUT, context)
        check_writable(os.path.join(out, "x"), self.OUTPUT)
        # issue 13: one writer per folder, and a folder holding files not of a prediction is refused, at once
        self.lock_output(out, self.OUTPUT, feedback)
        from ..fileutil import check_replaceable
        from ..model.outputs import is_prediction_file
        self.run_core(check_replaceable, out, is_prediction_file, self.OUTPUT, "outputs of ismoe:predict")
        ref = raster_layer(self, p, self.REFERENCE, context)
        grid = None
        if ref is not None:
            from ..data.rasters import Grid
            grid = self.run_core(Grid.from_raster, layer_source(ref), name=self.REFERENCE)
        extent = None
        if p.get(self.EXTENT):
            crs = (ref or layers[0]).crs()
            rect = self.parameterAsExtent(p, self.EXTENT, context, crs)
            if not rect.isNull() and not rect.isEmpty():
                extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
        man = self.run_core(
            predict_layers, model_path, sources, out, extent=extent, grid=grid,
            start=optional_date(self.parameterAsString(p, self.START_DATE, context), self.START_DATE),
            step_days=self.parameterAsInt(p, self.STEP_DAYS, context),
            date_from=optional_date(self.parameterAsString(p, self.DATE_FROM, context), self.DATE_FROM),
            date_to=optional_date(self.parameterAsString(p, self.DATE_TO, context), self.DATE_TO),
            tile_size=self.parameterAsInt(p, self.TILE_SIZE, context),
            device=DEVICES[self.parameterAsEnum(p, self.DEVICE, context)],
            cog=self.parameterAsBoolean(p, self.COG, context),
            scheduler=self.parameterAsString(p, self.SCHEDULER, context).strip() or None,
            workers=self.parameterAsInt(p, self.WORKERS, context),
            threads=self.parameterAsInt(p, self.THREADS, context),
            callbacks=self.callbacks(feedback))
        sm = os.path.join(out, man["sm"])
        feedback.pushInfo(f"wrote {sm} and {len(man['weights'])} weight rasters ({len(man['dates'])} dates)")
        from .layers import queue_prediction_layers, write_sidecar_styles
        write_sidecar_styles(out, man, feedback)        # <name>.qml beside each raster: styled when opened by hand
        if self.parameterAsBoolean(p, self.LOAD_OUTPUTS, context):
            self.run_core(queue_prediction_layers, context, out, man, feedback)
        return {self.OUTPUT: out, "SM": sm, "N_DATES": len(man["dates"])}
