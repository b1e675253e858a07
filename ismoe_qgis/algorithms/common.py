"""Parameter helpers shared by the ISMoE algorithms (QGIS glue only)."""
import math
import os
import re

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException

from ..data import names

def variable_name(layer) -> str:
    """The variable name of a raster layer: its layer name, made safe ('snow depth' -> 'snow_depth')."""
    name = layer.name() or os.path.splitext(os.path.basename(layer.source()))[0]
    return names.safe_name(name)


def layer_source(layer) -> str:
    """What GDAL opens for a raster layer (file path or NETCDF:"f.nc":var)."""
    return layer.source().split("|")[0]


# GDAL dataset strings that QGIS 3.22 Processing does not load from text (it wants an existing
# file path), e.g. NETCDF:"/data/era5land.nc":swvl1 given to qgis_process or processing.run.
_GDAL_STRING = names.GDAL_STRING
_SUBDATASET = names.SUBDATASET


def gdal_string_layer(value):
    """A raster layer for a GDAL dataset string such as NETCDF:"f.nc":var, or None.

    Its name is '<file>_<variable>' (e.g. gldas_noah21_SWE_inst), unique across files."""
    if not isinstance(value, str) or not _GDAL_STRING.match(value.strip()):
        return None
    from qgis.core import QgsRasterLayer
    text = value.strip()
    m = _SUBDATASET.match(text)
    name = (f"{os.path.splitext(os.path.basename(m.group('path')))[0]}_{m.group('var')}" if m
            else os.path.splitext(os.path.basename(text))[0])
    from ..data.rasters import pam_disabled
    with pam_disabled():     # a QGIS raster layer computes statistics: no .aux.xml beside the input
        layer = QgsRasterLayer(text, name, "gdal")
    return layer if layer.isValid() else None


def _with_gdal_layers(alg, parameters):
    """parameters with GDAL dataset strings of raster parameters replaced by layers."""
    out = dict(parameters)
    for p in alg.parameterDefinitions():
        value = out.get(p.name())
        if p.type() not in ("raster", "multilayer") or value is None:
            continue
        if isinstance(value, (list, tuple)):
            out[p.name()] = [gdal_string_layer(v) or v for v in value]
        else:
            out[p.name()] = gdal_string_layer(value) or value
    return out


def check_values_with_gdal_strings(alg, parameters, context):
    """checkParameterValues that also accepts GDAL dataset strings (NETCDF:"f.nc":var) as raster layers."""
    from ..data.rasters import pam_disabled
    with pam_disabled():     # QGIS loads the layers here (statistics): no .aux.xml beside the inputs
        return QgsProcessingAlgorithm.checkParameterValues(alg, _with_gdal_layers(alg, parameters), context)


# --------------------------------------------------------------------------- parameter pre-validation
def _fmt_num(x, integer):
    return str(int(x)) if integer else f"{x:g}"


def _number_problem(p, value):
    from qgis.core import QgsProcessingParameterNumber
    if isinstance(value, bool) or value is None:
        return None
    integer = p.dataType() == QgsProcessingParameterNumber.Integer
    kind = "a whole number" if integer else "a number"
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            x = float(value.strip())
        except ValueError:
            return f"'{value}' is not {kind}"
    elif isinstance(value, (int, float)):
        x = float(value)
    else:
        return None                        # a QgsProperty (data-defined) or the like: QGIS checks it
    lo, hi = p.minimum(), p.maximum()
    lo_set, hi_set = lo > -1e300, hi < 1e300
    if lo_set and hi_set:
        allowed = f"from {_fmt_num(lo, integer)} to {_fmt_num(hi, integer)}"
    elif lo_set:
        allowed = f"{_fmt_num(lo, integer)} or more"
    elif hi_set:
        allowed = f"at most {_fmt_num(hi, integer)}"
    else:
        allowed = "any value"
    default = p.defaultValue()
    tail = f"{kind}, {allowed}" + (f"; default {default}" if default is not None else "")
    if not math.isfinite(x):
        return f"{value} is not a finite number: give {tail}"
    if integer and x != int(x):
        return f"{value} is not a whole number: give {tail}"
    if (lo_set and x < lo) or (hi_set and x > hi):
        return f"{_fmt_num(x, integer) if not integer or x == int(x) else value} is out of range: give {tail}"
    return None


def _enum_problem(p, value):
    if value is None or isinstance(value, bool):
        return None
    opts = list(p.options())
    choices = ", ".join(f"{i} = {o}" for i, o in enumerate(opts))
    values = value if isinstance(value, (list, tuple)) else (
        [v for v in value.split(",")] if isinstance(value, str) and p.allowMultiple() else [value])
    static = p.usesStaticStrings() if hasattr(p, "usesStaticStrings") else False
    for v in values:
        if isinstance(v, str):
            t = v.strip()
            if not t:
                continue
            if t.lstrip("-").isdigit():
                v = int(t)
            elif t in opts and static:
                continue
            else:
                return f"'{t}' is not one of the choices: give the number of one of {choices}"
        if isinstance(v, float) and v == int(v):
            v = int(v)
        if isinstance(v, int):
            if not 0 <= v < len(opts):
                return f"{v} is not one of the choices: give the number of one of {choices}"
        else:
            return None
    return None


def _file_problem(p, value):
    from .qgis_compat import FILE_BEHAVIOR_FOLDER
    if not isinstance(value, str) or not value.strip():
        return None
    path = value.strip()
    if p.behavior() == FILE_BEHAVIOR_FOLDER:
        if not os.path.exists(path):
            return f"folder not found: '{path}'"
        if not os.path.isdir(path):
            return f"'{path}' is a file, not a folder"
        return None
    if not os.path.exists(path):
        return f"file not found: '{path}'"
    if os.path.isdir(path):
        return f"'{path}' is a folder, not a file"
    ext = (p.extension() or "").lstrip(".")
    if ext and not path.lower().endswith("." + ext.lower()):
        return f"'{path}' is not a .{ext} file"
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        return f"'{path}' cannot be read ({err.strerror or err})"
    return None


def _layer_values(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _source_problem(value, context, raster: bool):
    """Why a layer given as text cannot be used: the file is missing, or (rasters) GDAL cannot read it.
    None when it is a layer of the project, a layer object, or fine."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    project = context.project() if context is not None else None
    if project is not None and (project.mapLayer(text) is not None or project.mapLayersByName(text)):
        return None
    if _GDAL_STRING.match(text):
        if raster and gdal_string_layer(text) is None:
            m = _SUBDATASET.match(text)
            f = m.group("path") if m else None
            if f and not os.path.exists(f):
                return f"file not found: '{f}' (in {text})"
            return f"GDAL cannot open '{text}' as a raster: check the file and the variable name"
        return None
    path = text.split("|")[0]
    if not os.path.exists(path):
        if re.match(r"^[A-Za-z][\w+.-]*:", path) and not re.match(r"^[A-Za-z]:[\\/]", path):
            return None                  # another provider's URI (wms:, postgres:, ...): QGIS decides
        return f"file not found: '{path}'"
    if os.path.isdir(path) and raster:
        return f"'{path}' is a folder, not a raster file"
    if raster:
        import rasterio
        from rasterio.errors import RasterioError, RasterioIOError
        from ..data.rasters import pam_disabled
        try:
            with pam_disabled(), rasterio.open(path):
                pass
        except (RasterioIOError, RasterioError) as err:
            reason = (str(err) or type(err).__name__).replace(f"'{path}'", "").replace(f"`{path}'", "").strip()
            return f"'{path}' is not a raster GDAL can read ({reason.rstrip('.')})"
        except OSError as err:
            return f"'{path}' cannot be read ({err.strerror or err})"
    return None


def parameter_problems(alg, parameters, context):
    """Every rejected parameter value of `alg`, each as 'NAME: what is wrong and what is allowed' (the
    range or the choices, the file that is missing or unreadable). An empty list when QGIS's own check
    may run. Called by IsmoeAlgorithm.checkParameterValues before QGIS's check, whose message is a bare
    'Incorrect parameter value for NAME'."""
    problems = []
    for p in alg.parameterDefinitions():
        name = p.name()
        if name not in parameters:
            continue
        value = parameters[name]
        t = p.type()
        try:
            if t == "number":
                msg = _number_problem(p, value)
            elif t == "enum":
                msg = _enum_problem(p, value)
            elif t == "file":
                msg = _file_problem(p, value)
            elif t == "raster":
                msg = _source_problem(value, context, raster=True)
            elif t == "multilayer":
                raster = p.layerType() == _raster_type()
                msg = next((m for m in (_source_problem(v, context, raster) for v in _layer_values(value)) if m),
                           None)
            elif t in ("source", "vector"):
                msg = _source_problem(value, context, raster=False)
            else:
                msg = None
        except Exception:  # noqa: BLE001 - a value we cannot judge is left to QGIS's own check
            msg = None
        if msg:
            problems.append(f"{name}: {msg}")
    return problems


def _raster_type():
    from .qgis_compat import SOURCE_RASTER
    return SOURCE_RASTER


def raster_layer_list(alg, parameters, name, context):
    """parameterAsLayerList that also understands GDAL dataset strings (NETCDF:"f.nc":var)."""
    value = parameters.get(name)
    values = value if isinstance(value, (list, tuple)) else ([] if value is None else [value])
    layers = []
    from ..data.rasters import pam_disabled
    with pam_disabled():     # a QGIS raster layer computes statistics: no .aux.xml beside the input
        for v in values:
            lyr = gdal_string_layer(v)
            layers.extend([lyr] if lyr is not None else alg.parameterAsLayerList({name: v}, name, context))
    return layers


def raster_layer(alg, parameters, name, context):
    """parameterAsRasterLayer that also understands GDAL dataset strings (NETCDF:"f.nc":var)."""
    from ..data.rasters import pam_disabled
    with pam_disabled():     # a QGIS raster layer computes statistics: no .aux.xml beside the input
        return gdal_string_layer(parameters.get(name)) or alg.parameterAsRasterLayer(parameters, name, context)


def parse_groups(text: str, param: str = "FACTOR_GROUPS", what: str = "layer", merge: bool = False):
    """'snow=snow_depth,snow_cover;radiation=net_solar' -> {'snow': ['snow_depth', 'snow_cover'], ...}
    (the core's rule, data/names.py)."""
    try:
        return names.parse_groups(text, param, what, merge)
    except names.InputError as e:
        raise QgsProcessingException(str(e)) from None


def layers_by_name(layers, param_layers: str = "FACTORS") -> dict:
    """{variable name: GDAL source} of the layers; two layers with one name are an error."""
    by_name = {}
    for lyr in layers:
        n = variable_name(lyr)
        if n in by_name:
            raise QgsProcessingException(f"{param_layers}: two layers are named '{n}': rename one (layer names "
                                         f"are the variable names the model remembers)")
        by_name[n] = layer_source(lyr)
    return by_name


def group_layers(layers, groups_text: str, param_layers: str = "FACTORS", param_groups: str = "FACTOR_GROUPS"):
    """Group raster layers into factors: {factor: [(variable, source), ...]} (the core's rule, data/names.py).

    Without groups every layer is its own factor. With groups every layer must be in exactly one.
    """
    if not layers:
        raise QgsProcessingException(f"{param_layers}: no factor layers given: add at least one raster layer "
                                     f"(each band one day)")
    try:
        return names.group_layers(layers_by_name(layers, param_layers), groups_text, param_layers, param_groups)
    except names.InputError as e:
        raise QgsProcessingException(str(e)) from None


def optional_date(text: str, param: str):
    text = (text or "").strip()
    if not text:
        return None
    import numpy as np
    try:
        return str(np.datetime64(text[:10], "D"))
    except ValueError:
        raise QgsProcessingException(f"{param}: '{text}' is not a date; use YYYY-MM-DD") from None


def check_writable(path: str, param: str):
    """Fail early, before any work, when an output location cannot be written (data/names.py)."""
    try:
        names.check_writable(path, param)
    except names.InputError as e:
        raise QgsProcessingException(str(e)) from None
