"""ISMoE soil moisture: a QGIS Processing plugin (interpretable Mixture-of-Experts).

This module must stay importable without QGIS: the core packages (ismoe_qgis.data,
ismoe_qgis.model) live under it and are used from plain Python as well. Everything that
needs QGIS is imported inside classFactory().
"""
from .version import __version__  # noqa: F401


def classFactory(iface):  # noqa: N802 (QGIS API name)
    """QGIS entry point: return the plugin object. `iface` is None under qgis_process."""
    from ._venv import add_plugin_venv_to_path
    from .threads import passive_openmp_wait

    passive_openmp_wait()         # before torch is first imported: waiting OpenMP threads sleep, not spin
    from .plugin import IsmoePlugin, add_dependency_paths

    add_dependency_paths()        # <profile>/python/ismoe_deps/pyX.Y: where ismoe:installdependencies puts torch
    add_plugin_venv_to_path()     # a clone's .venv (make install), when torch is still missing

    return IsmoePlugin(iface)
