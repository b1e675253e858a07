"""Names that moved between QGIS 3.22 (the minimum) and later 3.x releases.

3.22 has the flags/enums as class attributes (``QgsProcessingAlgorithm.FlagNoThreading``,
``QgsProcessing.TypeRaster``, ...). Later releases moved them into ``Qgis`` enums
(``Qgis.ProcessingAlgorithmFlag.NoThreading``, ``Qgis.ProcessingSourceType.Raster``, ...)
and deprecate the old names. Import the constants from here instead of spelling either.

    from .qgis_compat import ALG_FLAG_NO_THREADING, PARAM_FLAG_OPTIONAL, add_param_flags
    def flags(self):
        return super().flags() | ALG_FLAG_NO_THREADING
"""
from qgis import core as _core


def _pick(*candidates):
    """Return the first attribute path ('Qgis.ProcessingAlgorithmFlag.NoThreading') that exists."""
    for path in candidates:
        obj = _core
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    raise AttributeError("none of %s exists in this QGIS" % (candidates,))


# Algorithm flags (QgsProcessingAlgorithm.flags()).
ALG_FLAG_NO_THREADING = _pick("Qgis.ProcessingAlgorithmFlag.NoThreading",
                              "QgsProcessingAlgorithm.FlagNoThreading")
ALG_FLAG_CAN_CANCEL = _pick("Qgis.ProcessingAlgorithmFlag.CanCancel",
                            "QgsProcessingAlgorithm.FlagCanCancel")
ALG_FLAG_SUPPORTS_BATCH = _pick("Qgis.ProcessingAlgorithmFlag.SupportsBatch",
                                "QgsProcessingAlgorithm.FlagSupportsBatch")
ALG_FLAG_HIDE_FROM_MODELER = _pick("Qgis.ProcessingAlgorithmFlag.HideFromModeler",
                                   "QgsProcessingAlgorithm.FlagHideFromModeler")

# Parameter flags (QgsProcessingParameterDefinition.setFlags()).
PARAM_FLAG_OPTIONAL = _pick("Qgis.ProcessingParameterFlag.Optional",
                            "QgsProcessingParameterDefinition.FlagOptional")
PARAM_FLAG_ADVANCED = _pick("Qgis.ProcessingParameterFlag.Advanced",
                            "QgsProcessingParameterDefinition.FlagAdvanced")
PARAM_FLAG_HIDDEN = _pick("Qgis.ProcessingParameterFlag.Hidden",
                          "QgsProcessingParameterDefinition.FlagHidden")

# QgsProcessingParameterNumber types.
NUMBER_INTEGER = _pick("Qgis.ProcessingNumberParameterType.Integer",
                       "QgsProcessingParameterNumber.Integer")
NUMBER_DOUBLE = _pick("Qgis.ProcessingNumberParameterType.Double",
                      "QgsProcessingParameterNumber.Double")

# QgsProcessingParameterFile behaviour.
FILE_BEHAVIOR_FILE = _pick("Qgis.ProcessingFileParameterBehavior.File",
                           "QgsProcessingParameterFile.File")
FILE_BEHAVIOR_FOLDER = _pick("Qgis.ProcessingFileParameterBehavior.Folder",
                             "QgsProcessingParameterFile.Folder")

# Layer / source types (QgsProcessingParameterMultipleLayers, feature sources).
SOURCE_RASTER = _pick("Qgis.ProcessingSourceType.Raster", "QgsProcessing.TypeRaster")
SOURCE_VECTOR_ANY = _pick("Qgis.ProcessingSourceType.VectorAnyGeometry",
                          "QgsProcessing.TypeVectorAnyGeometry")
SOURCE_VECTOR_POINT = _pick("Qgis.ProcessingSourceType.VectorPoint",
                            "QgsProcessing.TypeVectorPoint")
SOURCE_VECTOR_POLYGON = _pick("Qgis.ProcessingSourceType.VectorPolygon",
                              "QgsProcessing.TypeVectorPolygon")
SOURCE_VECTOR = _pick("Qgis.ProcessingSourceType.Vector",        # any vector layer, tables without geometry too
                      "QgsProcessing.TypeVector")
SOURCE_FILE = _pick("Qgis.ProcessingSourceType.File", "QgsProcessing.TypeFile")


def add_param_flags(param, *flags):
    """OR `flags` into a parameter definition's flags; returns the parameter."""
    value = param.flags()
    for flag in flags:
        value = value | flag
    param.setFlags(value)
    return param


def optional(param):
    """Mark a parameter optional (works on 3.22 and later)."""
    return add_param_flags(param, PARAM_FLAG_OPTIONAL)


def advanced(param):
    """Show a parameter under 'Advanced Parameters' (works on 3.22 and later)."""
    return add_param_flags(param, PARAM_FLAG_ADVANCED)
