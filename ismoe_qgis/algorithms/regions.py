"""QGIS polygon layers and features as core regions (QGIS glue, used by the algorithms and the dock).

The one place where a QGIS feature becomes what the core rasterises (``data.rasters.rasterize_polygons``):
a name and a GeoJSON-like dict, in the layer's CRS (the core reprojects, ``model.prediction_folder``) or
reprojected here onto a dataset's CRS (``model.evaluate.region_labels_from_polygons``).
"""
import json

from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProcessingException


def crs_for_core(qcrs):
    """A QgsCoordinateReferenceSystem as a string rasterio understands (None if invalid)."""
    if qcrs is None or not qcrs.isValid():
        return None
    auth = qcrs.authid()
    if auth.upper().startswith("EPSG:"):
        return auth
    return qcrs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED_GDAL)


def feature_geojson(feature, xform=None, precision: int = 17):
    """The feature's geometry as a GeoJSON-like dict (reprojected with ``xform`` when given); None when it has
    no geometry."""
    geom = feature.geometry()
    if geom is None or geom.isEmpty():
        return None
    if xform is not None:
        geom.transform(xform)
    return json.loads(geom.asJson(precision))


def feature_name(feature, field=None) -> str:
    """The region name of a feature: the value of ``field`` when it has one, else 'feature <id>'."""
    if field:
        value = feature[field]
        if value not in (None, "") and str(value) != "NULL":
            return str(value)
    return "feature %s" % feature.id()


def check_region_field(source, field, field_param="REGION_FIELD", layer_param="REGIONS"):
    """QgsProcessingException when ``field`` is given but is not a field of ``source``."""
    if field and source.fields().indexOf(field) < 0:
        raise QgsProcessingException("%s: no field '%s' in %s (fields: %s)" % (
            field_param, field, layer_param, ", ".join(source.fields().names())))


def layer_polygons(source, field=None, feedback=None, param="REGIONS", dst_crs=None, transform_context=None,
                   precision: int = 17):
    """Yield ``(name, GeoJSON dict)`` for every feature of a polygon source or layer: in its own CRS, or in
    ``dst_crs`` (a QgsCoordinateReferenceSystem) when given. A feature without geometry is skipped with a
    warning on ``feedback``; the loop stops when ``feedback`` is cancelled."""
    xform = None
    if dst_crs is not None:
        src = source.sourceCrs()
        if src.isValid() and src != dst_crs:
            xform = QgsCoordinateTransform(src, dst_crs, transform_context)
    for feat in source.getFeatures():
        if feedback is not None and feedback.isCanceled():
            break
        name = feature_name(feat, field)
        geojson = feature_geojson(feat, xform, precision)
        if geojson is None:
            if feedback is not None:
                feedback.pushWarning("%s: %s has no geometry; skipped" % (param, name))
            continue
        yield name, geojson
