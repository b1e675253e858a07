"""The plugin version, read from metadata.txt (the single source of truth).

No qgis import: the core (data/, model/) uses this to stamp dataset and model files.
"""
import configparser
import os

METADATA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metadata.txt")


def read_metadata(path=METADATA_PATH):
    """Return the [general] section of metadata.txt as a plain dict (empty if unreadable)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error):
        return {}
    return dict(parser["general"]) if parser.has_section("general") else {}


__version__ = read_metadata().get("version", "0.0.0")
VERSION = __version__
