"""Names of input layers and their grouping into factors: one rule for the Processing algorithms and the CLI
(no qgis import). Errors are InputError (a ValueError) naming the parameter; the callers turn them into a
QgsProcessingException or the CLI's exit status 2."""
import os
import re
import tempfile

_SAFE = re.compile(r"[^A-Za-z0-9_]+")


class InputError(ValueError):
    """A parameter value that cannot be used; the message names the parameter and what to do."""


def safe_name(text: str) -> str:
    """A variable name from a layer or file name: 'snow depth' -> 'snow_depth' ('layer' when nothing is left)."""
    return _SAFE.sub("_", text or "").strip("_") or "layer"


def parse_groups(text: str, param: str, what: str = "layer", merge: bool = False) -> dict:
    """'snow=snow_depth,snow_cover;radiation=net_solar' -> {'snow': ['snow_depth', 'snow_cover'], ...}.
    Groups are separated by ';' or new lines; a factor listed twice is an error, or (merge) extends its list."""
    groups = {}
    for part in (text or "").replace("\n", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise InputError(f"{param}: '{part}' is not factor={what}[,{what}...] (e.g. snow=snow_depth,snow_cover; "
                             f"groups separated by ';')")
        fname, names = (t.strip() for t in part.split("=", 1))
        members = [n.strip() for n in names.split(",") if n.strip()]
        if not fname or not members:
            raise InputError(f"{param}: '{part}' needs a factor name and at least one {what} name")
        if fname in groups and not merge:
            raise InputError(f"{param}: factor '{fname}' is listed twice")
        groups.setdefault(fname, []).extend(members)
    return groups


def group_layers(by_name: dict, groups_text: str, param_layers: str = "FACTORS",
                 param_groups: str = "FACTOR_GROUPS") -> dict:
    """{variable: source} + groups text -> {factor: [(variable, source), ...]}. Without groups every layer is its
    own factor; with groups every layer must be in exactly one."""
    if not by_name:
        raise InputError(f"{param_layers}: no factor layers given: add at least one raster layer (each band one day)")
    groups = parse_groups(groups_text, param_groups)
    if not groups:
        return {n: [(n, s)] for n, s in by_name.items()}
    out, used = {}, set()
    for fname, members in groups.items():
        out[fname] = []
        for m in members:
            key = safe_name(m)
            if key not in by_name:
                raise InputError(f"{param_groups}: factor '{fname}' names layer '{m}', which is not among "
                                 f"{param_layers} ({', '.join(by_name)})")
            if key in used:
                raise InputError(f"{param_groups}: layer '{m}' is in two factors")
            used.add(key)
            out[fname].append((key, by_name[key]))
    left = [n for n in by_name if n not in used]
    if left:
        raise InputError(f"{param_groups}: layer(s) {', '.join(left)} belong to no factor: add them to a group or "
                         f"remove them from {param_layers}")
    return out


def check_writable(path: str, param: str):
    """Fail early, before any work, when an output location cannot be written. Probes by creating (and
    deleting) a temporary file in the nearest existing folder: os.access says yes to root on read-only file
    systems and /proc."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    probe = d
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise InputError(f"{param}: cannot write '{path}': '{probe}' is a file, not a folder: choose another "
                         f"output path")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise InputError(f"{param}: cannot write to '{d}' ({err.strerror or err}): choose a folder you can write "
                         f"to") from None


# a GDAL source string that is not a plain file path (subdatasets, virtual file systems)
GDAL_STRING = re.compile(r'^(NETCDF|HDF5|HDF4_SDS|HDF4_EOS|GRIB|ZARR):|^/vsi', re.IGNORECASE)
# 'NETCDF:"file.nc":var' -> path, var
SUBDATASET = re.compile(r'^\w+:"?(?P<path>[^"]*?)"?:(?P<var>[^:"]+)$')
