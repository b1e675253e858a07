"""``python -m ismoe_qgis prepare|train|predict|evaluate ...`` (and ``torchrun -m ismoe_qgis train ...``):
the command line of ismoe_qgis/cli.py, without QGIS."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
