"""Base class of the ISMoE Processing algorithms: feedback adapter, torch check, errors.

Subclasses define name/displayName/shortHelpString/initAlgorithm/processAlgorithm and
keep the business logic in the core (ismoe_qgis.data / ismoe_qgis.model), which they
call through ``self.run_core(fn, ..., callbacks=self.callbacks(feedback))``.
Never import torch at module level in an algorithm module: call ``self.require_torch()``
in processAlgorithm (or let the core import it inside ``run_core``).
"""
import os
import sys

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException
from qgis.PyQt.QtCore import QCoreApplication

from ..core_callbacks import Callbacks, Cancelled

TORCH_VERSION = "2.13.0"
_PLUGIN_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
_REPO_DIR = os.path.dirname(_PLUGIN_DIR)


def _numpy_pin():
    try:
        import numpy
    except Exception:  # noqa: BLE001
        return None
    return "numpy==%s" % numpy.__version__


def torch_install_command():
    """The shell command(s) that install torch for this plugin, as one string."""
    pin = _numpy_pin()
    pin_arg = ' "%s"' % pin if pin else ""
    if sys.platform.startswith("win"):
        return 'python -m pip install torch==%s%s   (in the OSGeo4W Shell)' % (TORCH_VERSION, pin_arg)
    if os.path.exists(os.path.join(_REPO_DIR, "Makefile")):
        venv = os.path.join(_REPO_DIR, ".venv")
    else:
        venv = os.path.join(os.path.expanduser("~"), ".local", "share", "ismoe_qgis", "venv")
    cmd = ""
    if not os.path.exists(os.path.join(venv, "bin", "pip")):
        cmd = "/usr/bin/python3 -m venv --system-site-packages %s && " % venv
    return "%s%s/bin/pip install torch==%s%s" % (cmd, venv, TORCH_VERSION, pin_arg)


def torch_missing_message(exc=None):
    """A user-facing explanation of how to install torch (no traceback)."""
    reason = " (%s)" % exc if exc is not None else ""
    pin = _numpy_pin()
    lines = [
        "ISMoE needs PyTorch (torch %s), which QGIS's Python cannot import%s." % (TORCH_VERSION, reason),
        "Install it with:",
        "    " + torch_install_command(),
    ]
    if pin:
        lines.append("The %s constraint keeps the system's numpy: a pip-upgraded numpy 2.x "
                     "breaks the GDAL/rasterio that QGIS uses." % pin)
    if not sys.platform.startswith("win"):
        site = "<venv>/lib/python%d.%d/site-packages" % sys.version_info[:2]
        lines.append("Then restart QGIS with PYTHONPATH=%s (the repository's .venv is found "
                     "automatically; from a clone, `make install` does all of this)." % site)
    return "\n".join(lines)


class IsmoeAlgorithm(QgsProcessingAlgorithm):
    """Common behaviour of the ISMoE algorithms."""

    GROUP = "ISMoE"
    GROUP_ID = "ismoe"

    def createInstance(self):  # noqa: N802 (QGIS API name)
        return type(self)()

    def group(self):
        return self.tr(self.GROUP)

    def groupId(self):  # noqa: N802
        return self.GROUP_ID

    def tr(self, text):
        return QCoreApplication.translate(type(self).__name__, text)

    # -- helpers for processAlgorithm -------------------------------------------------
    @staticmethod
    def callbacks(feedback):
        """Adapt a QgsProcessingFeedback (or None) into core ``Callbacks``."""
        if feedback is None:
            return Callbacks()

        def progress(fraction):
            try:
                value = float(fraction) * 100.0
            except (TypeError, ValueError):
                return
            feedback.setProgress(min(100.0, max(0.0, value)))

        def log(msg):
            msg = str(msg)
            (feedback.pushWarning if msg.startswith("warning:") else feedback.pushInfo)(msg)

        return Callbacks(progress=progress, log=log, is_cancelled=feedback.isCanceled)

    @staticmethod
    def require_torch():
        """Return the torch module, or raise QgsProcessingException saying how to install it."""
        try:
            import torch  # noqa: PLC0415
        except Exception as exc:  # noqa: BLE001 - ImportError, OSError (broken libs), ...
            raise QgsProcessingException(torch_missing_message(exc)) from None
        return torch

    @staticmethod
    def param_error(name, message):
        """A QgsProcessingException whose message names the parameter: 'NAME: message'."""
        return QgsProcessingException("%s: %s" % (name, message))

    @staticmethod
    def run_core(fn, *args, **kwargs):
        """Call a core function; turn its expected errors into QgsProcessingException."""
        try:
            return fn(*args, **kwargs)
        except QgsProcessingException:
            raise
        except Cancelled as exc:
            raise QgsProcessingException(str(exc) or "cancelled by the user") from None
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == "torch":
                raise QgsProcessingException(torch_missing_message(exc)) from None
            raise
        except KeyError as exc:
            raise QgsProcessingException(str(exc.args[0]) if exc.args else repr(exc)) from exc
        except (ValueError, OSError, RuntimeError) as exc:
            raise QgsProcessingException(str(exc) or type(exc).__name__) from exc
