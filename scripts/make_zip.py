#!/usr/bin/env python3
"""Build the plugin ZIP that QGIS's Plugin Manager installs ("Install from ZIP").

    python3 scripts/make_zip.py [OUT.zip]        (or: make zip; default dist/ismoe_qgis-<version>.zip)

Layout (what the Plugin Manager expects: one folder at the root, metadata.txt inside it):

    ismoe_qgis/metadata.txt, __init__.py, ...    the plugin package (code, styles/, icons/, help/,
                                                 models/*.model3 offered by the provider)
    ismoe_qgis/LICENSE                           GPL-2.0-or-later (the repository's LICENSE)
    ismoe_qgis/README.md, ismoe_qgis/docs/       the repository's README and docs/

Left out: __pycache__, *.pyc, editor/OS droppings. Symlinks are followed (the zip holds files).
Plain Python, no QGIS: `make zip` regenerates help/ first (scripts/build_help.py needs QGIS).
Prints the zip's path.
"""
import configparser
import os
import sys
import zipfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = "ismoe_qgis"
PLUGIN_DIR = os.path.join(REPO_ROOT, PLUGIN)
EXTRA_FILES = {"LICENSE": "LICENSE", "README.md": "README.md"}  # repository file -> name in the plugin folder
EXTRA_DIRS = {"docs": "docs"}
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".git"}
SKIP_SUFFIXES = (".pyc", ".pyo", "~", ".swp", ".orig", ".rej")
SKIP_NAMES = {".DS_Store", "Thumbs.db"}
# fixed timestamp: the same tree gives the same zip
DATE_TIME = (2025, 1, 1, 0, 0, 0)


def plugin_version():
    parser = configparser.ConfigParser(interpolation=None)
    with open(os.path.join(PLUGIN_DIR, "metadata.txt"), encoding="utf-8") as f:
        parser.read_file(f)
    return parser["general"]["version"].strip()


def _files(folder):
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info"))
        for name in sorted(files):
            if name in SKIP_NAMES or name.endswith(SKIP_SUFFIXES) or name.startswith(".#"):
                continue
            yield os.path.join(root, name)


def entries():
    """[(path on disk, name in the zip)], sorted by name."""
    out = {}
    for path in _files(PLUGIN_DIR):
        out[PLUGIN + "/" + os.path.relpath(path, PLUGIN_DIR).replace(os.sep, "/")] = path
    for src, dst in EXTRA_FILES.items():
        path = os.path.join(REPO_ROOT, src)
        if os.path.isfile(path):
            out["%s/%s" % (PLUGIN, dst)] = path
    for src, dst in EXTRA_DIRS.items():
        folder = os.path.join(REPO_ROOT, src)
        for path in _files(folder):
            out["%s/%s/%s" % (PLUGIN, dst, os.path.relpath(path, folder).replace(os.sep, "/"))] = path
    return sorted((path, name) for name, path in out.items())


def build(out=None):
    out = out or os.path.join(REPO_ROOT, "dist", "%s-%s.zip" % (PLUGIN, plugin_version()))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".part"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, name in sorted(entries(), key=lambda e: e[1]):
            info = zipfile.ZipInfo(name, DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with open(path, "rb") as f:
                zf.writestr(info, f.read())
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else None))
