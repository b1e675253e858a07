"""Let QGIS's embedded Python find torch from the repository's virtual environment.

`make install` puts torch in `<repo>/.venv` (made with --system-site-packages). QGIS's
Python does not see a venv by itself; the Makefile and scripts set PYTHONPATH, but a QGIS
desktop started from the menu does not. When torch is not importable and the plugin
folder sits next to such a `.venv`, this puts the venv's site-packages at the front of
sys.path, exactly as PYTHONPATH would (torch needs the venv's newer typing_extensions;
numpy is not in the venv, it is pinned to the system's version). No qgis import.
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
