"""ismoe:preparedataset: factor raster layers + target -> dataset cube file."""
from qgis.core import QgsProcessingException, QgsProcessingOutputNumber

from ..options import RESAMPLINGS
from .common import (check_writable, group_layers, layer_source, optional_date, parse_groups,
                     raster_layer, raster_layer_list)
from .families import FactorLayersAlgorithm
from .qgis_compat import SOURCE_VECTOR, SOURCE_VECTOR_POINT


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


class PrepareDatasetAlgorithm(FactorLayersAlgorithm):
    FACTOR_GROUPS, TARGET = "FACTOR_GROUPS", "TARGET"
    STATIONS, STATION_ID_FIELD = "STATIONS", "STATION_ID_FIELD"
    STATION_TABLE, TABLE_ID_FIELD, TABLE_DATE_FIELD, TABLE_VALUE_FIELD = (
        "STATION_TABLE", "TABLE_ID_FIELD", "TABLE_DATE_FIELD", "TABLE_VALUE_FIELD")
    DROP_OUTSIDE = "DROP_OUTSIDE"
    STATION_FACTORS = "STATION_FACTORS"
    PATCH_SIZE, SEQ_LEN, RESAMPLING, OUTPUT = "PATCH_SIZE", "SEQ_LEN", "RESAMPLING", "OUTPUT"
    STRICT = "STRICT"

    def name(self):
        return "preparedataset"

    def displayName(self):  # noqa: N802
        return self.tr("Prepare dataset")

    def helpIntro(self):  # noqa: N802
        return self.tr(
            "Aligns factor raster layers and a soil-moisture target into a dataset cube (one grid, one daily "
            "calendar) for ismoe:train. Windows are cut from the cube while training; nothing is pre-cut.")

    def initAlgorithm(self, config=None):  # noqa: N802
        tr = self.tr
        self.addFactorLayersParameter(help=tr(
            "raster layers (GeoTIFF, NetCDF variable, ...), each band one day. Dates come from the band "
            "descriptions (ISO dates), from NetCDF time metadata, or from START_DATE + STEP_DAYS."))
        self.addParameterString(self.FACTOR_GROUPS, tr("Factor groups (factor=layer1,layer2;...)"), multiLine=True,
                                optional=True, help=tr(
                                    "which layers form each environmental factor (one expert per factor), e.g. "
                                    "'snow=snow_depth,snow_cover;radiation=net_solar,net_thermal'. Layer names are "
                                    "the variable names. Empty: every layer is its own factor."))
        self.addParameterRasterLayer(self.TARGET, tr("Target soil moisture series"), optional=True, help=tr(
            "a soil-moisture raster series (gridded target), e.g. ERA5-Land swvl1 or SMAP L3."))
        self.addParameterFeatureSource(self.STATIONS, tr("Stations (points)"), [SOURCE_VECTOR_POINT], optional=True,
                                       help=tr("instead of TARGET, in-situ stations as a point layer."))
        self.addParameterField(self.STATION_ID_FIELD, tr("Station id field"), self.STATIONS, "station_id",
                               optional=True, help=tr("the id field of the stations."))
        self.addParameterFeatureSource(self.STATION_TABLE, tr("Station observations table"), [SOURCE_VECTOR],
                                       optional=True, help=tr(
                                           "with TABLE_ID_FIELD, TABLE_DATE_FIELD, TABLE_VALUE_FIELD, holds the "
                                           "stations' daily soil moisture (a CSV or a table layer)."))
        self.addParameterString(self.TABLE_ID_FIELD, tr("Table: station id field"), "station_id")
        self.addParameterString(self.TABLE_DATE_FIELD, tr("Table: date field"), "date")
        self.addParameterString(self.STATION_FACTORS, tr("Station-table columns as factors (factor=column,...;...)"),
                                optional=True, help=tr(
                                    "numeric columns of the station table measured at the stations (rain, soil "
                                    "temperature) as factor variables, e.g. "
                                    "'station_rain=precip_mm;soil_temperature=soil_temp_c' (a factor of that name "
                                    "may also hold raster layers). They are known at the station pixels only, so "
                                    "such a model predicts at the stations (ismoe:evaluate), not whole rasters; "
                                    "stations only."))
        self.addParameterString(self.TABLE_VALUE_FIELD, tr("Table: soil moisture field"), "sm")
        self.addParameterBool(self.DROP_OUTSIDE, tr("Drop stations outside the grid"), False, help=tr(
            "drops stations outside the grid (with a warning) instead of failing."))
        self.addReferenceGridParameter(help=tr(
            "the layer whose grid everything is aligned to (default: the first factor layer). Continuous inputs "
            "are resampled bilinearly, or averaged when coarsened more than 1.5x; RESAMPLING overrides this."))
        self.addUndatedLayersParameters()
        self.addParameterInt(self.PATCH_SIZE, tr("Patch size (odd, pixels)"), 7, help=tr(
            "odd k, the k x k pixel neighbourhood each expert sees (default 7)."))
        self.addParameterInt(self.SEQ_LEN, tr("Sequence length (days)"), 14, help=tr(
            "days of input per estimate (default 14)."))
        self.addParameterEnum(self.RESAMPLING, tr("Resampling"), RESAMPLINGS, default=0, advanced=True)
        self.addParameterBool(self.STRICT, tr("Strict: implausible or non-finite values are an error"), False,
                              advanced=True, help=tr(
                                  "off (default): values that cannot be data (inf, fill values such as 3.4e38) and "
                                  "values outside the variable's plausible physical range (e.g. soil moisture "
                                  "outside 0..1 m3/m3, a temperature outside 150..350 K) are read as nodata, with a "
                                  "warning naming the layer, the dates and the count; on: they are an error."))
        self.addParameterFileDestination(self.OUTPUT, tr("Dataset file"),
                                         tr("ISMoE dataset (*.npz);;ISMoE Zarr dataset folder (*.zarr)"), help=tr(
                                             "the dataset file: .npz (one file, loaded whole), or a name ending in "
                                             ".zarr: a chunked Zarr folder written block by block with bounded "
                                             "memory whatever the region size, which ismoe:train reads lazily (for "
                                             "cubes larger than the memory; xarray.open_zarr opens it with named "
                                             "dimensions)."))
        self.addOutput(QgsProcessingOutputNumber("N_SAMPLES", tr("Target values")))

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
