"""Let QGIS's embedded Python find torch from the repository's virtual environment.

`make install` puts torch in `<repo>/.venv` (made with --system-site-packages). QGIS's
Python does not see a venv by itself; the Makefile and scripts set PYTHONPATH, but a QGIS
desktop started from the menu does not. When torch is not importable and the plugin
folder sits next to such a `.venv`, this puts the venv's site-packages at the front of
sys.path, exactly as PYTHONPATH would (torch needs the venv's newer typing_extensions;
numpy is not in the venv, it is pinned to the system's version). No qgis import.

A plugin installed from a ZIP has no such venv: ``ismoe:installdependencies`` (ismoe_qgis/deps.py)
pip-installs torch into a plugin-private folder of the user profile,
``<profile>/python/ismoe_deps/py<X.Y>`` (``deps_dir``), and the plugin puts that folder at the
front of sys.path at every load (``add_deps_to_path``). $ISMOE_DEPS_DIR overrides the folder.
"""
import glob
import importlib.util
import os
import sys


def plugin_venv_site_packages():
    """Site-packages of `<plugin folder>/../.venv` for this Python version, or None."""
    root = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    pattern = os.path.join(root, ".venv", "lib",
                           "python%d.%d" % sys.version_info[:2], "site-packages")
    hits = glob.glob(pattern)
    return hits[0] if hits else None


def add_plugin_venv_to_path():
    """Prepend the repository venv's site-packages to sys.path when torch is missing.

    Returns the path added, or None when nothing was changed.
    """
    if importlib.util.find_spec("torch") is not None:
        return None
    site = plugin_venv_site_packages()
    if site is None or site in sys.path:
        return None
    sys.path.insert(0, site)
    importlib.invalidate_caches()
    return site


DEPS_ENV = "ISMOE_DEPS_DIR"


def deps_dir(settings_dir=None):
    """The plugin-private dependency folder: $ISMOE_DEPS_DIR, else
    ``<settings_dir>/python/ismoe_deps/py<X.Y>`` (settings_dir: QgsApplication.qgisSettingsDirPath(),
    the profile folder). One folder per Python version: wheels such as torch's are built for one.
    None when neither is known."""
    override = os.environ.get(DEPS_ENV)
    if override:
        return os.path.abspath(os.path.expanduser(override))
    if not settings_dir:
        return None
    return os.path.join(os.path.abspath(settings_dir), "python", "ismoe_deps",
                        "py%d.%d" % sys.version_info[:2])


def add_deps_to_path(settings_dir=None, folder=None):
    """Put the dependency folder (``folder``, else ``deps_dir(settings_dir)``) at the front of sys.path
    when it exists, like PYTHONPATH would (torch needs its own newer typing_extensions; the installer
    never puts a numpy there). Returns the path added, or None when nothing was changed."""
    folder = folder or deps_dir(settings_dir)
    if not folder or not os.path.isdir(folder):
        return None
    folder = os.path.abspath(folder)
    if folder in sys.path:
        return None
    sys.path.insert(0, folder)
    importlib.invalidate_caches()
    return folder
