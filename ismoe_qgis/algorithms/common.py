"""Parameter helpers shared by the ISMoE algorithms (QGIS glue only)."""
import os
import re
import tempfile

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException

_SAFE = re.compile(r"[^A-Za-z0-9_]+")


def variable_name(layer) -> str:
    """The variable name of a raster layer: its layer name, made safe ('snow depth' -> 'snow_depth')."""
    name = layer.name() or os.path.splitext(os.path.basename(layer.source()))[0]
    return _SAFE.sub("_", name).strip("_") or "layer"


def layer_source(layer) -> str:
    """What GDAL opens for a raster layer (file path or NETCDF:"f.nc":var)."""
    return layer.source().split("|")[0]


# GDAL dataset strings that QGIS 3.22 Processing does not load from text (it wants an existing
# file path), e.g. NETCDF:"/data/era5land.nc":swvl1 given to qgis_process or processing.run.
_GDAL_STRING = re.compile(r'^(NETCDF|HDF5|HDF4_SDS|HDF4_EOS|GRIB|ZARR):|^/vsi', re.IGNORECASE)
_SUBDATASET = re.compile(r'^\w+:"?(?P<path>[^"]*?)"?:(?P<var>[^:"]+)$')


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
    return QgsProcessingAlgorithm.checkParameterValues(alg, _with_gdal_layers(alg, parameters), context)


def raster_layer_list(alg, parameters, name, context):
    """parameterAsLayerList that also understands GDAL dataset strings (NETCDF:"f.nc":var)."""
    value = parameters.get(name)
    values = value if isinstance(value, (list, tuple)) else ([] if value is None else [value])
    layers = []
    for v in values:
        lyr = gdal_string_layer(v)
        layers.extend([lyr] if lyr is not None else alg.parameterAsLayerList({name: v}, name, context))
    return layers


def raster_layer(alg, parameters, name, context):
    """parameterAsRasterLayer that also understands GDAL dataset strings (NETCDF:"f.nc":var)."""
    return gdal_string_layer(parameters.get(name)) or alg.parameterAsRasterLayer(parameters, name, context)


def parse_groups(text: str, param: str = "FACTOR_GROUPS"):
    """'snow=snow_depth,snow_cover;radiation=net_solar' -> {'snow': ['snow_depth', 'snow_cover'], ...}."""
    groups = {}
    for part in (text or "").replace("\n", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise QgsProcessingException(
                f"{param}: '{part}' is not of the form factor=layer1,layer2 (groups separated by ';')")
        fname, names = part.split("=", 1)
        fname = fname.strip()
        members = [n.strip() for n in names.split(",") if n.strip()]
        if not fname or not members:
            raise QgsProcessingException(f"{param}: '{part}' needs a factor name and at least one layer name")
        if fname in groups:
            raise QgsProcessingException(f"{param}: factor '{fname}' is listed twice")
        groups[fname] = members
    return groups


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
    """Group raster layers into factors: {factor: [(variable, source), ...]}.

    Without groups every layer is its own factor. With groups every layer must be in exactly one.
    """
    if not layers:
        raise QgsProcessingException(f"{param_layers}: no factor layers given: add at least one raster layer "
                                     f"(each band one day)")
    by_name = layers_by_name(layers, param_layers)
    groups = parse_groups(groups_text, param_groups)
    if not groups:
        return {n: [(n, s)] for n, s in by_name.items()}
    out, used = {}, set()
    for fname, members in groups.items():
        out[fname] = []
        for m in members:
            key = _SAFE.sub("_", m).strip("_")
            if key not in by_name:
                raise QgsProcessingException(
                    f"{param_groups}: factor '{fname}' names layer '{m}', which is not among {param_layers} "
                    f"({', '.join(by_name)})")
            if key in used:
                raise QgsProcessingException(f"{param_groups}: layer '{m}' is in two factors")
            used.add(key)
            out[fname].append((key, by_name[key]))
    left = [n for n in by_name if n not in used]
    if left:
        raise QgsProcessingException(f"{param_groups}: layer(s) {', '.join(left)} belong to no factor: add them "
                                     f"to a group or remove them from {param_layers}")
    return out


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
    """Fail early, before any work, when an output location cannot be written.

    Probes by creating (and deleting) a temporary file in the nearest existing folder:
    os.access says yes to root on read-only file systems and /proc."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    probe = d
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise QgsProcessingException(f"{param}: cannot write '{path}': '{probe}' is a file, not a folder: "
                                     f"choose another output path")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise QgsProcessingException(f"{param}: cannot write to '{d}' ({err.strerror or err}): choose a folder "
                                     f"you can write to") from None
