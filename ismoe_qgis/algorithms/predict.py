"""ismoe:predict: model + factor layers -> daily SM GeoTIFF + one routing-weight GeoTIFF per factor."""
import os

from qgis.core import (QgsProcessingException, QgsProcessingOutputNumber,
                       QgsProcessingOutputRasterLayer, QgsProcessingParameterBoolean, QgsProcessingParameterEnum,
                       QgsProcessingParameterExtent, QgsProcessingParameterFile,
                       QgsProcessingParameterFolderDestination, QgsProcessingParameterMultipleLayers,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterLayer, QgsProcessingParameterString)

from ..options import DEVICES
from . import presentation
from .base import IsmoeAlgorithm
from .common import (check_writable, layer_source, layers_by_name, optional_date,
                     raster_layer, raster_layer_list)
from .qgis_compat import NUMBER_INTEGER, PARAM_FLAG_ADVANCED, SOURCE_RASTER, add_param_flags, optional


class PredictAlgorithm(IsmoeAlgorithm):
    MODEL_FILE, FACTORS, EXTENT, REFERENCE = "MODEL_FILE", "FACTORS", "EXTENT", "REFERENCE"
    START_DATE, STEP_DAYS, DATE_FROM, DATE_TO = "START_DATE", "STEP_DAYS", "DATE_FROM", "DATE_TO"
    TILE_SIZE, DEVICE, COG, OUTPUT = "TILE_SIZE", "DEVICE", "COG", "OUTPUT"
    LOAD_OUTPUTS = "LOAD_OUTPUTS"
    SCHEDULER, WORKERS, THREADS = "SCHEDULER", "WORKERS", "THREADS"

    def name(self):
        return "predict"

    def displayName(self):  # noqa: N802
        return self.tr("Predict soil moisture and factor weights")

    def group(self):
        return self.tr(presentation.group(self))

    def groupId(self):  # noqa: N802
        return presentation.group_id(self)

    def tags(self):
        return presentation.tags(self)

    def icon(self):
        return presentation.icon()

    def svgIconPath(self):  # noqa: N802
        return presentation.ICON_PATH

    def helpUrl(self):  # noqa: N802
        return presentation.help_url(self)

    def shortHelpString(self):  # noqa: N802
        return presentation.labelled_help(self, self.tr(
            "Runs a trained model over factor raster layers, tile by tile (bounded memory), and writes into "
            "OUTPUT: sm.tif (daily soil moisture, one band per date, band descriptions = ISO dates), "
            "weight_<factor>.tif (the routing weight of each factor's expert, same bands), dominant_factor.tif "
            "(the top-weighted factor per pixel and date, 1..E in prediction.json's factor order, 0 = nodata) and "
            "prediction.json. Band metadata: DATE=YYYY-MM-DD, unit m3 m-3 on sm.tif; beside each raster a "
            "<name>.qml style that QGIS applies when the file is opened by hand. "
            "The dock widget and ismoe:seasonalimportance read this folder.\n\n"
            "MODEL_FILE: a model from ismoe:train.\n"
            "FACTORS: one raster layer per variable the model was trained on, with the same layer names "
            "(e.g. the same files, or other dates/areas of the same products).\n"
            "REFERENCE: optional layer whose grid the outputs are on (e.g. the REFERENCE used in "
            "ismoe:preparedataset); default: the first factor layer's grid.\n"
            "EXTENT: optional area to predict (default: the whole grid).\n"
            "START_DATE / STEP_DAYS: dates for layers whose files carry none.\n"
            "DATE_FROM / DATE_TO: optional output period (YYYY-MM-DD); each output date needs the SEQ_LEN-1 "
            "days before it as input.\n"
            "TILE_SIZE: pixels per tile side (memory grows with it). DEVICE: auto/cuda/cpu. "
            "COG: write Cloud Optimized GeoTIFFs.\n"
            "SCHEDULER: optional address of a running Dask scheduler (tcp://host:8786): the tiles are predicted "
            "on that cluster's workers, which must see MODEL_FILE and the layers at the same paths. "
            "WORKERS: 0 = auto (a local Dask cluster sized to the machine, one worker per GPU on CUDA, when the "
            "prediction is large enough to pay for starting it; else serial), 1 = serial, n = a local cluster of n "
            "worker processes. The outputs are the same either way.\n"
            "THREADS: torch CPU threads of a serial run; 0 (default) = the CPUs the load average leaves idle, at "
            "least 1 (Dask workers use 1 each).\n"
            "LOAD_OUTPUTS: add the outputs to the project when the run ends: SM styled dry-to-wet showing the last "
            "date, the dominant factor in the dock's factor colours, the weights on a 0-1 ramp, all steppable "
            "with the Temporal Controller (QGIS < 3.38: SM and the dominant factor as groups of one layer per "
            "date, VRT views in by_date/).\n"
            "OUTPUT: the prediction folder. Outputs are written to a temporary folder and moved in at the end: "
            "a cancelled or failed run leaves nothing behind."))

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(self.MODEL_FILE, self.tr("Model file"), extension="pt"))
        self.addParameter(QgsProcessingParameterMultipleLayers(self.FACTORS, self.tr("Factor layers"), SOURCE_RASTER))
        self.addParameter(optional(QgsProcessingParameterRasterLayer(self.REFERENCE, self.tr("Reference grid layer"))))
        self.addParameter(optional(QgsProcessingParameterExtent(self.EXTENT, self.tr("Extent"))))
        self.addParameter(optional(QgsProcessingParameterString(self.START_DATE,
                                                                self.tr("Start date for undated layers (YYYY-MM-DD)"))))
        self.addParameter(QgsProcessingParameterNumber(self.STEP_DAYS, self.tr("Days between bands (undated layers)"),
                                                       NUMBER_INTEGER, 1, False, 1))
        self.addParameter(optional(QgsProcessingParameterString(self.DATE_FROM, self.tr("First output date"))))
        self.addParameter(optional(QgsProcessingParameterString(self.DATE_TO, self.tr("Last output date"))))
        self.addParameter(add_param_flags(QgsProcessingParameterNumber(
            self.TILE_SIZE, self.tr("Tile size (pixels)"), NUMBER_INTEGER, 128, False, 8, 4096), PARAM_FLAG_ADVANCED))
        self.addParameter(QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), DEVICES, defaultValue=0))
        self.addParameter(add_param_flags(QgsProcessingParameterBoolean(
            self.COG, self.tr("Cloud Optimized GeoTIFF"), False), PARAM_FLAG_ADVANCED))
        # issue 15: Dask execution (optional: Model Builder models saved before them stay valid)
        self.addParameter(add_param_flags(optional(QgsProcessingParameterString(
            self.SCHEDULER, self.tr("Dask scheduler address (empty: local)"))), PARAM_FLAG_ADVANCED))
        self.addParameter(add_param_flags(optional(QgsProcessingParameterNumber(
            self.WORKERS, self.tr("Dask workers (0 = auto, 1 = serial)"), NUMBER_INTEGER, 0, False, 0, 4096)),
            PARAM_FLAG_ADVANCED))
        # issue 11 item 5: threads from the load, or as asked (optional: older Model Builder models stay valid)
        self.addParameter(add_param_flags(optional(QgsProcessingParameterNumber(
            self.THREADS, self.tr("CPU threads (0 = from the load)"), NUMBER_INTEGER, 0, False, 0, 4096)),
            PARAM_FLAG_ADVANCED))
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, self.tr("Prediction folder")))
        # optional: a Model Builder model saved before this parameter existed stays valid (default: on)
        self.addParameter(optional(QgsProcessingParameterBoolean(
            self.LOAD_OUTPUTS, self.tr("Add the outputs to the project (styled, time-navigable)"), True)))
        self.addOutput(QgsProcessingOutputRasterLayer("SM", self.tr("Soil moisture")))
        self.addOutput(QgsProcessingOutputNumber("N_DATES", self.tr("Output dates")))

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
