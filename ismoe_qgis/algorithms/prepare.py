"""ismoe:preparedataset: factor raster layers + target -> dataset cube file."""
from qgis.core import (QgsProcessingException, QgsProcessingParameterEnum, QgsProcessingParameterFeatureSource,
                       QgsProcessingParameterField, QgsProcessingParameterFileDestination,
                       QgsProcessingParameterMultipleLayers, QgsProcessingParameterNumber,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString, QgsProcessingParameterBoolean,
                       QgsProcessingOutputNumber)

from ..options import RESAMPLINGS
from . import presentation
from .base import IsmoeAlgorithm
from .common import (check_writable, group_layers, layer_source, optional_date, parse_groups,
                     raster_layer, raster_layer_list)
from .qgis_compat import NUMBER_INTEGER, SOURCE_RASTER, SOURCE_VECTOR_POINT, optional, add_param_flags, \
    PARAM_FLAG_ADVANCED

try:  # 3.22 name
    from qgis.core import QgsProcessing
    SOURCE_VECTOR = QgsProcessing.TypeVector
except AttributeError:  # pragma: no cover - later releases
    from qgis.core import Qgis
    SOURCE_VECTOR = Qgis.ProcessingSourceType.Vector


def _plain(value):
    """A QGIS attribute value as a plain Python value (QDate -> ISO string, NULL -> None)."""
    if value is None:
        return None
    if hasattr(value, "isNull") and value.isNull():
        return None
    if hasattr(value, "toString") and type(value).__name__ in ("QDate", "QDateTime"):
        return value.toString("yyyy-MM-dd")
    return value


def parse_station_factors(text: str, param: str) -> dict:
    """'precipitation=precip_mm;soil_temperature=soil_temp_c,other' -> {factor: [columns]}."""
    return parse_groups(text, param, what="column", merge=True)


class PrepareDatasetAlgorithm(IsmoeAlgorithm):
    FACTORS, FACTOR_GROUPS, TARGET = "FACTORS", "FACTOR_GROUPS", "TARGET"
    STATIONS, STATION_ID_FIELD = "STATIONS", "STATION_ID_FIELD"
    STATION_TABLE, TABLE_ID_FIELD, TABLE_DATE_FIELD, TABLE_VALUE_FIELD = (
        "STATION_TABLE", "TABLE_ID_FIELD", "TABLE_DATE_FIELD", "TABLE_VALUE_FIELD")
    DROP_OUTSIDE = "DROP_OUTSIDE"
    STATION_FACTORS = "STATION_FACTORS"
    REFERENCE, START_DATE, STEP_DAYS = "REFERENCE", "START_DATE", "STEP_DAYS"
    PATCH_SIZE, SEQ_LEN, RESAMPLING, OUTPUT = "PATCH_SIZE", "SEQ_LEN", "RESAMPLING", "OUTPUT"
    STRICT = "STRICT"

    def name(self):
        return "preparedataset"

    def displayName(self):  # noqa: N802
        return self.tr("Prepare dataset")

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
            "Aligns factor raster layers and a soil-moisture target into a dataset cube (one grid, one daily "
            "calendar) for ismoe:train. Windows are cut from the cube while training; nothing is pre-cut.\n\n"
            "FACTORS: raster layers (GeoTIFF, NetCDF variable, ...), each band one day. Dates come from the band "
            "descriptions (ISO dates), from NetCDF time metadata, or from START_DATE + STEP_DAYS.\n"
            "FACTOR_GROUPS: which layers form each environmental factor (one expert per factor), e.g. "
            "'snow=snow_depth,snow_cover;radiation=net_solar,net_thermal'. Layer names are the variable names. "
            "Empty: every layer is its own factor.\n"
            "TARGET: a soil-moisture raster series (gridded target), e.g. ERA5-Land swvl1 or SMAP L3.\n"
            "STATIONS / STATION_ID_FIELD: instead of TARGET, in-situ stations as a point layer and its id field; "
            "STATION_TABLE with TABLE_ID_FIELD, TABLE_DATE_FIELD, TABLE_VALUE_FIELD holds their daily soil "
            "moisture (a CSV or a table layer). DROP_OUTSIDE drops stations outside the grid (with a warning) "
            "instead of failing.\n"
            "STATION_FACTORS: numeric columns of the station table measured at the stations (rain, soil "
            "temperature) as factor variables, e.g. 'station_rain=precip_mm;soil_temperature=soil_temp_c' "
            "(a factor of that name may also hold raster layers). They are known at the station pixels only, so "
            "such a model predicts at the stations (ismoe:evaluate), not whole rasters; stations only.\n"
            "REFERENCE: the layer whose grid everything is aligned to (default: the first factor layer). "
            "Continuous inputs are resampled bilinearly, or averaged when coarsened more than 1.5x; RESAMPLING "
            "overrides this.\n"
            "START_DATE / STEP_DAYS: dates for layers whose files carry none.\n"
            "PATCH_SIZE: odd k, the k x k pixel neighbourhood each expert sees (default 7). "
            "SEQ_LEN: days of input per estimate (default 14).\n"
            "STRICT: off (default): values that cannot be data (inf, fill values such as 3.4e38) and values "
            "outside the variable's plausible physical range (e.g. soil moisture outside 0..1 m3/m3, a "
            "temperature outside 150..350 K) are read as nodata, with a warning naming the layer, the dates and "
            "the count; on: they are an error.\n"
            "OUTPUT: the dataset file: .npz (one file, loaded whole), or a name ending in .zarr: a chunked Zarr "
            "folder written block by block with bounded memory whatever the region size, which ismoe:train reads "
            "lazily (for cubes larger than the memory; xarray.open_zarr opens it with named dimensions)."))

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(self.FACTORS, self.tr("Factor layers"),
                                                               SOURCE_RASTER))
        self.addParameter(optional(QgsProcessingParameterString(
            self.FACTOR_GROUPS, self.tr("Factor groups (factor=layer1,layer2;...)"), multiLine=True)))
        self.addParameter(optional(QgsProcessingParameterRasterLayer(self.TARGET, self.tr("Target soil moisture series"))))
        self.addParameter(optional(QgsProcessingParameterFeatureSource(
            self.STATIONS, self.tr("Stations (points)"), [SOURCE_VECTOR_POINT])))
        self.addParameter(optional(QgsProcessingParameterField(
            self.STATION_ID_FIELD, self.tr("Station id field"), "station_id", self.STATIONS)))
        self.addParameter(optional(QgsProcessingParameterFeatureSource(
            self.STATION_TABLE, self.tr("Station observations table"), [SOURCE_VECTOR])))
        self.addParameter(QgsProcessingParameterString(self.TABLE_ID_FIELD, self.tr("Table: station id field"),
                                                       "station_id"))
        self.addParameter(QgsProcessingParameterString(self.TABLE_DATE_FIELD, self.tr("Table: date field"), "date"))
        self.addParameter(optional(QgsProcessingParameterString(
            self.STATION_FACTORS, self.tr("Station-table columns as factors (factor=column,...;...)"))))
        self.addParameter(QgsProcessingParameterString(self.TABLE_VALUE_FIELD, self.tr("Table: soil moisture field"),
                                                       "sm"))
        self.addParameter(QgsProcessingParameterBoolean(self.DROP_OUTSIDE, self.tr("Drop stations outside the grid"),
                                                        False))
        self.addParameter(optional(QgsProcessingParameterRasterLayer(self.REFERENCE, self.tr("Reference grid layer"))))
        self.addParameter(optional(QgsProcessingParameterString(self.START_DATE,
                                                                self.tr("Start date for undated layers (YYYY-MM-DD)"))))
        self.addParameter(QgsProcessingParameterNumber(self.STEP_DAYS, self.tr("Days between bands (undated layers)"),
                                                       NUMBER_INTEGER, 1, False, 1))
        self.addParameter(QgsProcessingParameterNumber(self.PATCH_SIZE, self.tr("Patch size (odd, pixels)"),
                                                       NUMBER_INTEGER, 7))
        self.addParameter(QgsProcessingParameterNumber(self.SEQ_LEN, self.tr("Sequence length (days)"),
                                                       NUMBER_INTEGER, 14))
        self.addParameter(add_param_flags(QgsProcessingParameterEnum(self.RESAMPLING, self.tr("Resampling"),
                                                                     RESAMPLINGS, defaultValue=0),
                                          PARAM_FLAG_ADVANCED))
        self.addParameter(add_param_flags(QgsProcessingParameterBoolean(
            self.STRICT, self.tr("Strict: implausible or non-finite values are an error"), False),
            PARAM_FLAG_ADVANCED))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT, self.tr("Dataset file"),
                                                                self.tr("ISMoE dataset (*.npz);;ISMoE Zarr dataset "
                                                                        "folder (*.zarr)")))
        self.addOutput(QgsProcessingOutputNumber("N_SAMPLES", self.tr("Target values")))

    def _stations(self, parameters, context):
        points = self.parameterAsSource(parameters, self.STATIONS, context)
        if points is None:
            return None
        table = self.parameterAsSource(parameters, self.STATION_TABLE, context)
        if table is None:
            raise QgsProcessingException(f"{self.STATION_TABLE}: stations were given but no observation table "
                                         f"(station id, date, soil moisture)")
        from qgis.core import QgsWkbTypes
        if QgsWkbTypes.geometryType(points.wkbType()) != QgsWkbTypes.PointGeometry:
            raise QgsProcessingException(
                f"{self.STATIONS}: the layer holds {QgsWkbTypes.displayString(points.wkbType()) or 'no'} geometries, "
                f"not points: give a point layer with one point per station (e.g. the centroids of polygons)")
        id_field = self.parameterAsString(parameters, self.STATION_ID_FIELD, context) or "station_id"
        if points.fields().indexOf(id_field) < 0:
            raise QgsProcessingException(f"{self.STATION_ID_FIELD}: the stations layer has no field '{id_field}' "
                                         f"(fields: {', '.join(points.fields().names())})")
        pts = []
        for f in points.getFeatures():
            g = f.geometry()
            if g is None or g.isEmpty():
                continue
            p = g.asPoint() if not g.isMultipart() else g.asMultiPoint()[0]
            pts.append((str(_plain(f[id_field])), p.x(), p.y()))
        if not pts:
            raise QgsProcessingException(f"{self.STATIONS}: the layer has no point feature: give a point layer with "
                                         f"one point per station")
        fields = {k: self.parameterAsString(parameters, k, context)
                  for k in (self.TABLE_ID_FIELD, self.TABLE_DATE_FIELD, self.TABLE_VALUE_FIELD)}
        names = table.fields().names()
        lower = {n.lower(): n for n in names}
        for k, v in fields.items():
            if v.lower() not in lower:
                raise QgsProcessingException(f"{k}: the station table has no field '{v}' (fields: {', '.join(names)})")
        fid, fdate, fval = (lower[fields[k].lower()] for k in
                            (self.TABLE_ID_FIELD, self.TABLE_DATE_FIELD, self.TABLE_VALUE_FIELD))
        feats = list(table.getFeatures())
        rows = [(_plain(f[fid]), _plain(f[fdate]), _plain(f[fval])) for f in feats]
        from ..data import stations as st
        tbl = self.run_core(st.read_station_table, rows, name=self.STATION_TABLE)
        columns = {}
        for fname, cols in parse_station_factors(self.parameterAsString(parameters, self.STATION_FACTORS, context),
                                                 self.STATION_FACTORS).items():
            for col in cols:
                if col.lower() not in lower:
                    raise QgsProcessingException(f"{self.STATION_FACTORS}: the station table has no column '{col}' "
                                                 f"(fields: {', '.join(names)})")
                real = lower[col.lower()]
                crow = [(_plain(f[fid]), _plain(f[fdate]), _plain(f[real])) for f in feats]
                columns.setdefault(fname, {})[real] = self.run_core(
                    st.read_station_table, crow, name=f"{self.STATION_FACTORS} column '{real}'", on_duplicate="mean")
        return {"points": pts, "crs_wkt": points.sourceCrs().toWkt(), "table": tbl, "columns": columns,
                "drop_outside": self.parameterAsBoolean(parameters, self.DROP_OUTSIDE, context),
                "points_name": self.STATIONS, "table_name": self.STATION_TABLE}

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layers = raster_layer_list(self, parameters, self.FACTORS, context)
        groups = self.parameterAsString(parameters, self.FACTOR_GROUPS, context)
        factors = group_layers(layers, groups)
        out = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        check_writable(out, self.OUTPUT)
        self.lock_output(out, self.OUTPUT, feedback)          # issue 13: one writer per output
        patch = self.parameterAsInt(parameters, self.PATCH_SIZE, context)
        seq = self.parameterAsInt(parameters, self.SEQ_LEN, context)
        if seq < 1:
            raise QgsProcessingException(f"{self.SEQ_LEN}: must be >= 1, got {seq}")
        target_layer = raster_layer(self, parameters, self.TARGET, context)
        stations = self._stations(parameters, context)
        if stations is None and (self.parameterAsString(parameters, self.STATION_FACTORS, context) or "").strip():
            raise QgsProcessingException(f"{self.STATION_FACTORS}: columns of a station table can be factors only "
                                         f"with station targets ({self.STATIONS} + {self.STATION_TABLE}); with a "
                                         f"{self.TARGET} raster there is no station to measure them at")
        if target_layer is None and stations is None:
            raise QgsProcessingException(f"{self.TARGET}: give a soil-moisture raster series, or {self.STATIONS} "
                                         f"with a {self.STATION_TABLE}")
        if target_layer is not None and stations is not None:
            raise QgsProcessingException(f"{self.TARGET} and {self.STATIONS} are both given: choose one target")
        ref = raster_layer(self, parameters, self.REFERENCE, context)
        start = optional_date(self.parameterAsString(parameters, self.START_DATE, context), self.START_DATE)
        cb = self.callbacks(feedback)
        from ..data.prepare import prepare_dataset
        zarr_out = out.rstrip("/\\").lower().endswith(".zarr")     # issue 15: written block by block by the core
        cube = self.run_core(
            prepare_dataset, factors, layer_source(target_layer) if target_layer else None, stations=stations,
            reference=layer_source(ref) if ref else None, start=start,
            step_days=self.parameterAsInt(parameters, self.STEP_DAYS, context), patch_size=patch, seq_len=seq,
            resampling=RESAMPLINGS[self.parameterAsEnum(parameters, self.RESAMPLING, context)],
            strict=self.parameterAsBoolean(parameters, self.STRICT, context), callbacks=cb,
            out_path=out if zarr_out else None)
        if not zarr_out:        # a .zarr cube is written (and its folder moved in place) by prepare_dataset
            from ..fileutil import check_free_space    # issue 13: the disk first; a write error names the file
            self.run_core(check_free_space, out, int(cube.x.nbytes + cube.y.nbytes) + (1 << 20), self.OUTPUT,
                          "the dataset")
            self.run_core(cube.save, out)
        import numpy as np
        n = int(np.isfinite(cube.y).sum())
        feedback.pushInfo(f"dataset written to {out}")
        return {self.OUTPUT: out, "N_SAMPLES": n}
